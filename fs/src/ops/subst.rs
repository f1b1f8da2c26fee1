//! virt-edit's `-e` expressions: a Perl expression run on each line (`$_`), of which we take
//! what it is used for: `s/RE/REPL/FLAGS` (any delimiter, flags `g`, `i`, `m`, `s`, `x`),
//! several joined by `;`, with Perl's spelling of captures in the replacement (`$1`, `${1}`,
//! `\1`, `$&`) and Rust's regex syntax (no look-around or back-references in patterns).

use regex::bytes::{Regex, RegexBuilder};

/// One `s/RE/REPL/FLAGS`.
#[derive(Debug)]
pub struct Subst {
    re: Regex,
    /// In the regex crate's replacement syntax.
    repl: String,
    global: bool,
}

/// Parses `s/a/b/g; s|x|y|` into substitutions.
pub fn parse_expr(expr: &str) -> Result<Vec<Subst>, String> {
    let mut out = Vec::new();
    let mut rest = expr.trim_start();
    while !rest.is_empty() {
        let mut chars = rest.chars();
        if chars.next() != Some('s') {
            return Err(format!(
                "-e '{expr}': only s/REGEX/REPLACEMENT/FLAGS substitutions are supported"
            ));
        }
        let delim = chars
            .next()
            .filter(|c| !c.is_alphanumeric() && !c.is_whitespace() && *c != '\\')
            .ok_or_else(|| format!("-e '{expr}': expected a delimiter after 's'"))?;
        let body = chars.as_str();
        let (pat, after) =
            split_field(body, delim).ok_or_else(|| format!("-e '{expr}': unterminated pattern"))?;
        let (rep, after) = split_field(after, delim)
            .ok_or_else(|| format!("-e '{expr}': unterminated replacement"))?;
        let flags_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (flags, tail) = after.split_at(flags_end);
        let mut b = RegexBuilder::new(&pat);
        let mut global = false;
        for f in flags.chars() {
            match f {
                'g' => global = true,
                'i' => {
                    b.case_insensitive(true);
                }
                'm' => {
                    b.multi_line(true);
                }
                's' => {
                    b.dot_matches_new_line(true);
                }
                'x' => {
                    b.ignore_whitespace(true);
                }
                other => return Err(format!("-e '{expr}': unknown flag '{other}'")),
            }
        }
        let re = b.build().map_err(|e| {
            let first = e.to_string();
            let last = first.lines().last().unwrap_or_default().trim().to_string();
            format!("-e '{expr}': {last}")
        })?;
        out.push(Subst {
            re,
            repl: perl_replacement(&rep),
            global,
        });
        rest = tail.trim_start();
        if let Some(r) = rest.strip_prefix(';') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(format!("-e '{expr}': unexpected '{rest}'"));
        }
    }
    if out.is_empty() {
        return Err("-e: empty expression".into());
    }
    Ok(out)
}

/// The text up to the next unescaped `delim` (an escaped delimiter becomes the delimiter
/// itself, kept escaped when it means something to the regex), and what follows it.
fn split_field(s: &str, delim: char) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut it = s.char_indices();
    while let Some((i, c)) = it.next() {
        if c == '\\' {
            match it.next() {
                Some((_, n)) if n == delim => {
                    if "\\.+*?()|[]{}^$#&-~".contains(n) {
                        out.push('\\');
                    }
                    out.push(n);
                }
                Some((_, n)) => {
                    out.push('\\');
                    out.push(n);
                }
                None => return None,
            }
        } else if c == delim {
            return Some((out, &s[i + c.len_utf8()..]));
        } else {
            out.push(c);
        }
    }
    None
}

/// Perl's replacement spelling → the regex crate's: `$1` `\1` `${1}` `$&`, `\n` `\t`, `\\`;
/// any other `$` is literal.
fn perl_replacement(r: &str) -> String {
    let mut out = String::new();
    let b: Vec<char> = r.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            '\\' if i + 1 < b.len() => {
                let n = b[i + 1];
                i += 2;
                if n.is_ascii_digit() {
                    out.push_str(&format!("${{{n}}}"));
                } else {
                    match n {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        '$' => out.push_str("$$"),
                        other => out.push(other),
                    }
                }
                continue;
            }
            '$' if i + 1 < b.len() && b[i + 1] == '&' => {
                out.push_str("${0}");
                i += 2;
                continue;
            }
            '$' if i + 1 < b.len() && b[i + 1].is_ascii_digit() => {
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                let num: String = b[i + 1..j].iter().collect();
                out.push_str(&format!("${{{num}}}"));
                i = j;
                continue;
            }
            '$' if i + 1 < b.len() && b[i + 1] == '{' => {
                if let Some(end) = b[i..].iter().position(|&x| x == '}') {
                    let inner: String = b[i + 2..i + end].iter().collect();
                    if inner.chars().all(|x| x.is_ascii_digit()) && !inner.is_empty() {
                        out.push_str(&format!("${{{inner}}}"));
                        i += end + 1;
                        continue;
                    }
                }
                out.push_str("$$");
            }
            '$' => out.push_str("$$"),
            other => out.push(other),
        }
        i += 1;
    }
    out
}

/// Applies `subs` to each line of `text` as `perl -pe` does. The line is matched without its
/// newline, which is put back after, so `$` matches at the end of the line as Perl's does.
/// Bytes that are not UTF-8 pass through untouched.
pub fn apply(subs: &[Subst], text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|&c| c == b'\n') {
        let (body, nl): (&[u8], &[u8]) = match line.strip_suffix(b"\n") {
            Some(b) => (b, b"\n"),
            None => (line, b""),
        };
        let mut cur = body.to_vec();
        for sub in subs {
            cur = if sub.global {
                sub.re.replace_all(&cur, sub.repl.as_bytes()).into_owned()
            } else {
                sub.re.replace(&cur, sub.repl.as_bytes()).into_owned()
            };
        }
        out.extend_from_slice(&cur);
        out.extend_from_slice(nl);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(expr: &str, text: &str) -> String {
        String::from_utf8(apply(&parse_expr(expr).unwrap(), text.as_bytes())).unwrap()
    }

    #[test]
    fn substitutions_as_perl_pe() {
        assert_eq!(run("s/a/b/", "aaa\naa\n"), "baa\nba\n");
        assert_eq!(run("s/a/b/g", "aaa\naa\n"), "bbb\nbb\n");
        assert_eq!(run("s/A/b/gi", "aA\n"), "bb\n");
        assert_eq!(
            run("s/^IPADDR=.*/IPADDR=10.0.0.5/", "X=1\nIPADDR=192.168.1.2\n"),
            "X=1\nIPADDR=10.0.0.5\n"
        );
        assert_eq!(run(r"s|(\w+)=(\w+)|$2=$1|", "a=b\n"), "b=a\n");
        assert_eq!(run(r"s/(\w+)/\1\1/", "ab\n"), "abab\n");
        assert_eq!(run(r"s/x/[$&]/; s#/#\##g", "x/y/\n"), "[x]#y#\n");
        assert_eq!(run(r"s/\/etc/\/opt/", "/etc/x\n"), "/opt/x\n");
        assert_eq!(run("s/a/$HOME/", "a\n"), "$HOME\n");
        assert_eq!(run("s/$/ # end/", "a\nb"), "a # end\nb # end");
    }

    #[test]
    fn bad_expressions() {
        for e in ["", "y/a/b/", "s/a/b", "s/(/x/", "s/a/b/q", "s/a/b/ junk"] {
            assert!(parse_expr(e).is_err(), "{e}");
        }
    }
}
