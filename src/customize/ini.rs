//! `[Section]` / `key=value` files: NetworkManager keyfiles and systemd units and .network
//! files. Edits keep comments, order and every key they do not touch.

/// One change: in `section`, every `key` line is removed and `values` (possibly none) are
/// written in its place (for keys systemd allows several times, such as `DNS=`, each value
/// is its own line).
#[derive(Debug, Clone)]
pub struct Set<'a> {
    /// Section name, without brackets.
    pub section: &'a str,
    /// Key.
    pub key: &'a str,
    /// New values, in order; empty removes the key.
    pub values: Vec<String>,
}

impl<'a> Set<'a> {
    /// A key set to one value.
    pub fn one(section: &'a str, key: &'a str, value: impl Into<String>) -> Set<'a> {
        Set {
            section,
            key,
            values: vec![value.into()],
        }
    }

    /// A key removed.
    pub fn remove(section: &'a str, key: &'a str) -> Set<'a> {
        Set {
            section,
            key,
            values: Vec::new(),
        }
    }
}

fn section_name(line: &str) -> Option<&str> {
    let t = line.trim();
    t.strip_prefix('[')?.strip_suffix(']')
}

fn key_of(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.starts_with('#') || t.starts_with(';') {
        return None;
    }
    Some(t.split_once('=')?.0.trim())
}

/// The values of `key` in the first `[section]`.
pub fn get(text: &str, section: &str, key: &str) -> Vec<String> {
    let mut cur = None;
    let mut seen_section = false;
    let mut out = Vec::new();
    for l in super::lines(text) {
        if let Some(s) = section_name(l) {
            if cur == Some(section) {
                seen_section = true;
            }
            cur = Some(s).filter(|_| !seen_section || s != section);
            continue;
        }
        if cur == Some(section) && key_of(l) == Some(key) {
            out.push(
                l.split_once('=')
                    .map(|x| x.1.trim())
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    out
}

/// The keys (in order, without repeats) of the first `[section]`.
pub fn keys(text: &str, section: &str) -> Vec<String> {
    let mut cur: Option<&str> = None;
    let mut done = false;
    let mut out: Vec<String> = Vec::new();
    for l in super::lines(text) {
        if let Some(s) = section_name(l) {
            if cur == Some(section) {
                done = true;
            }
            cur = Some(s);
            continue;
        }
        if !done && cur == Some(section) {
            if let Some(k) = key_of(l) {
                if !out.iter().any(|o| o == k) {
                    out.push(k.to_string());
                }
            }
        }
    }
    out
}

/// Applies `sets` to `old`. Only the first section of a name is edited (systemd allows
/// repeated `[Address]` sections; the keys we set live in sections that occur once). A
/// missing section is appended, separated by a blank line.
pub fn edit(old: &str, sets: &[Set<'_>]) -> String {
    // Split into (section name, lines) blocks; block 0 is the text before any header.
    let mut blocks: Vec<(Option<String>, Vec<String>)> = vec![(None, Vec::new())];
    for l in super::lines(old) {
        if let Some(s) = section_name(l) {
            blocks.push((Some(s.to_string()), vec![l.to_string()]));
        } else if let Some(b) = blocks.last_mut() {
            b.1.push(l.to_string());
        }
    }
    for set in sets {
        let idx = match blocks
            .iter()
            .position(|(n, _)| n.as_deref() == Some(set.section))
        {
            Some(i) => i,
            None => {
                if set.values.is_empty() {
                    continue;
                }
                if let Some(last) = blocks.last_mut() {
                    if last.1.last().is_some_and(|l| !l.trim().is_empty()) {
                        last.1.push(String::new());
                    }
                }
                blocks.push((
                    Some(set.section.to_string()),
                    vec![format!("[{}]", set.section)],
                ));
                blocks.len() - 1
            }
        };
        let lines = &mut blocks[idx].1;
        let first = lines.iter().position(|l| key_of(l) == Some(set.key));
        lines.retain(|l| key_of(l) != Some(set.key));
        let at = match first {
            Some(i) => i,
            None => {
                // After the section's last non-blank line.
                let mut i = lines.len();
                while i > 1 && lines[i - 1].trim().is_empty() {
                    i -= 1;
                }
                i
            }
        };
        for (k, v) in set.values.iter().enumerate() {
            lines.insert(at + k, format!("{}={v}", set.key));
        }
    }
    let mut out = Vec::new();
    for (_, ls) in blocks {
        out.extend(ls);
    }
    super::join_lines(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_in_place() {
        let old = "[connection]\nid=eth0\n# keep\nuuid=1\n\n[ipv4]\nmethod=auto\n";
        let new = edit(
            old,
            &[
                Set::one("ipv4", "method", "manual"),
                Set::one("ipv4", "address1", "10.0.0.2/24,10.0.0.1"),
                Set::one("connection", "uuid", "2"),
                Set::one("ethernet", "mac-address", "52:54:00:00:00:01"),
                Set::remove("ipv6", "method"),
            ],
        );
        assert_eq!(
            new,
            "[connection]\nid=eth0\n# keep\nuuid=2\n\n[ipv4]\nmethod=manual\naddress1=10.0.0.2/24,10.0.0.1\n\n[ethernet]\nmac-address=52:54:00:00:00:01\n"
        );
        assert_eq!(get(&new, "ipv4", "method"), vec!["manual"]);
        let n = edit(
            "[Match]\nName=eth0\n\n[Network]\nDNS=1.1.1.1\nDHCP=yes\nDNS=8.8.8.8\n",
            &[Set {
                section: "Network",
                key: "DNS",
                values: vec!["9.9.9.9".into(), "1.0.0.1".into()],
            }],
        );
        assert_eq!(
            n,
            "[Match]\nName=eth0\n\n[Network]\nDNS=9.9.9.9\nDNS=1.0.0.1\nDHCP=yes\n"
        );
    }
}
