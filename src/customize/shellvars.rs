//! `KEY=value` files read by the shell or by shell-like parsers: /etc/sysconfig/network,
//! ifcfg-*, /etc/machine-info, /etc/default/*. Edits keep every other line as it was.

/// The value as the file should hold it: bare when it has only characters the shell reads
/// literally, else in double quotes with `"`, `\`, `$` and `` ` `` escaped.
pub fn quote(v: &str) -> String {
    if !v.is_empty()
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._:/@%+-,=".contains(&c))
    {
        return v.to_string();
    }
    let mut s = String::from("\"");
    for c in v.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// The key a `KEY=...` line sets (after optional `export `), None for other lines.
pub fn key_of(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let t = t.strip_prefix("export ").unwrap_or(t).trim_start();
    let (k, _) = t.split_once('=')?;
    (!k.is_empty() && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')).then_some(k)
}

/// The value of `key` (the last assignment wins, as in the shell), quotes removed.
pub fn get(text: &str, key: &str) -> Option<String> {
    let mut out = None;
    for l in super::lines(text) {
        if key_of(l) == Some(key) {
            let v = l.split_once('=').map(|x| x.1).unwrap_or_default().trim();
            out = Some(unquote(v));
        }
    }
    out
}

fn unquote(v: &str) -> String {
    if let Some(s) = v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        return s.to_string();
    }
    if let Some(s) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        let mut out = String::new();
        let mut esc = false;
        for c in s.chars() {
            if esc {
                out.push(c);
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else {
                out.push(c);
            }
        }
        return out;
    }
    v.to_string()
}

/// Sets each `(key, Some(value))` and removes each `(key, None)`: the first assignment of a
/// key is rewritten where it stands, later duplicates dropped, and keys not yet in the file
/// appended in the order given.
pub fn edit(old: &str, changes: &[(&str, Option<&str>)]) -> String {
    let mut done = vec![false; changes.len()];
    let mut out: Vec<String> = Vec::new();
    for l in super::lines(old) {
        match key_of(l).and_then(|k| changes.iter().position(|(ck, _)| *ck == k)) {
            Some(i) => {
                if !done[i] {
                    done[i] = true;
                    if let Some(v) = changes[i].1 {
                        out.push(format!("{}={}", changes[i].0, quote(v)));
                    }
                }
            }
            None => out.push(l.to_string()),
        }
    }
    for (i, (k, v)) in changes.iter().enumerate() {
        if let (false, Some(v)) = (done[i], v) {
            out.push(format!("{k}={}", quote(v)));
        }
    }
    super::join_lines(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_keep_other_lines() {
        let old = "# comment\nNETWORKING=yes\nHOSTNAME=old\nHOSTNAME=old2\nexport X=1";
        let new = edit(
            old,
            &[("HOSTNAME", Some("new")), ("GATEWAY", Some("10.0.0.1"))],
        );
        assert_eq!(
            new,
            "# comment\nNETWORKING=yes\nHOSTNAME=new\nexport X=1\nGATEWAY=10.0.0.1\n"
        );
        assert_eq!(edit(&new, &[("X", None)]).matches("X=").count(), 0);
        assert_eq!(get("A=\"b c\"\nA='d'\n", "A").as_deref(), Some("d"));
        assert_eq!(get("A=\"q\\\"x\"\n", "A").as_deref(), Some("q\"x"));
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("x$y"), "\"x\\$y\"");
        assert_eq!(quote(""), "\"\"");
    }
}
