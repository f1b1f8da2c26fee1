//! Shell-style globs over guest paths (`/var/log/*.log*`, `/home/*/.ssh`), as glob(3)
//! expands them: `*`, `?` and `[...]` (with ranges and `!`/`^` negation) inside one path
//! component, and a leading `.` matched only by a pattern that starts with one.

use vdisk_block::{Error, Result};

use super::GuestFiles;

/// The most paths one pattern expands to (a guest directory with millions of entries is not
/// a reason to hold them all).
pub const MAX_MATCHES: usize = 1 << 20;

/// True when `name` (one path component) matches `pat`.
pub fn matches(pat: &str, name: &str) -> bool {
    if name.starts_with('.') && !pat.starts_with('.') {
        return false;
    }
    match_from(pat.as_bytes(), name.as_bytes())
}

fn match_from(pat: &[u8], name: &[u8]) -> bool {
    // Iterative matching with one backtrack point for the last `*` (linear enough for
    // component-sized inputs, and no recursion a hostile name could deepen).
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star = Some((p, n));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                b'[' => {
                    if let Some((ok, next)) = class(&pat[p..], name[n]) {
                        if ok {
                            p += next;
                            n += 1;
                            continue;
                        }
                    } else if name[n] == b'[' {
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pat.len() => {
                    if pat[p + 1] == name[n] {
                        p += 2;
                        n += 1;
                        continue;
                    }
                }
                c => {
                    if c == name[n] {
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, sn)) => {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the bracket expression at the start of `pat`: Some((matched, length
/// of the expression)), None when the bracket is not closed (then it is a literal `[`).
fn class(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pat.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let lo = *pat.get(i)?;
        if lo == b']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if pat.get(i + 1) == Some(&b'-') && pat.get(i + 2).is_some_and(|&h| h != b']') {
            let hi = pat[i + 2];
            if lo <= c && c <= hi {
                hit = true;
            }
            i += 3;
        } else {
            if lo == c {
                hit = true;
            }
            i += 1;
        }
    }
}

fn has_magic(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The existing guest paths `pattern` (absolute) names, sorted. A pattern without wildcards
/// gives itself if it exists (symlinks not followed), else nothing.
pub fn expand(g: &dyn GuestFiles, pattern: &str) -> Result<Vec<String>> {
    if !pattern.starts_with('/') {
        return Err(Error::invalid(format!(
            "{pattern}: a guest path must be absolute"
        )));
    }
    let mut found: Vec<String> = vec![String::new()];
    for comp in pattern.split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        for base in &found {
            let dir = if base.is_empty() { "/" } else { base.as_str() };
            if has_magic(comp) {
                let Some(names) = g.list(dir)? else { continue };
                for name in names {
                    if matches(comp, &name) {
                        next.push(format!("{base}/{name}"));
                        if next.len() > MAX_MATCHES {
                            return Err(Error::invalid(format!(
                                "{pattern}: more than {MAX_MATCHES} matches"
                            )));
                        }
                    }
                }
            } else {
                next.push(format!("{base}/{comp}"));
            }
        }
        // Keep only what exists (a literal component under a matched directory may not).
        found = next
            .into_iter()
            .filter_map(|p| match g.stat(&p, false) {
                Ok(Some(_)) => Some(Ok(p)),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>>>()?;
        if found.is_empty() {
            return Ok(found);
        }
    }
    if found == [String::new()] {
        return Ok(vec!["/".into()]);
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customize::mem::MemGuest;

    #[test]
    fn component_matching() {
        assert!(matches("*.log*", "boot.log"));
        assert!(matches("*.log*", "yum.log-2020"));
        assert!(!matches("*.log*", "messages"));
        assert!(matches("messages*", "messages"));
        assert!(matches("ssh_host_*", "ssh_host_rsa_key.pub"));
        assert!(matches("*_host_*", "ssh_host_ed25519_key"));
        assert!(!matches("*", ".bash_history"));
        assert!(matches(".*", ".bash_history"));
        assert!(matches("__db.[0-9]*", "__db.001"));
        assert!(!matches("__db.[!0-9]*", "__db.001"));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "ac"));
        assert!(matches("[", "["));
        assert!(matches("a\\*", "a*"));
        assert!(!matches("a\\*", "ab"));
        assert!(matches("*a*a*a*", "xaxxaxxxa"));
        assert!(!matches("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
    }

    #[test]
    fn expansion_over_a_tree() {
        let mut g = MemGuest::new();
        g.add_dir("/var/log/audit", 0o700);
        g.add_file("/var/log/boot.log", b"x", 0o600);
        g.add_file("/var/log/messages", b"x", 0o600);
        g.add_file("/var/log/audit/audit.log", b"x", 0o600);
        g.add_dir("/home/alice/.ssh", 0o700);
        g.add_dir("/home/bob", 0o700);
        assert_eq!(
            expand(&g, "/var/log/*.log*").unwrap(),
            vec!["/var/log/boot.log"]
        );
        assert_eq!(
            expand(&g, "/var/log/audit/*").unwrap(),
            vec!["/var/log/audit/audit.log"]
        );
        assert_eq!(
            expand(&g, "/home/*/.ssh").unwrap(),
            vec!["/home/alice/.ssh"]
        );
        assert!(expand(&g, "/nonexistent/*").unwrap().is_empty());
        assert_eq!(expand(&g, "/var/log/messages").unwrap().len(), 1);
        assert!(expand(&g, "relative/*").is_err());
    }
}
