//! `vdisk edit`: virt-edit. Edit one guest file with sed-style substitutions (`-e`) or with
//! `$EDITOR` on a host copy.
//!
//! virt-edit's `-e` takes a Perl expression run on each line (`$_`); we support what it is
//! used for: `s/RE/REPL/FLAGS` (any delimiter, flags `g`, `i`, `m`, `s`, `x`), several joined
//! by `;`, with Perl's spelling of captures in the replacement (`$1`, `${1}`, `\1`, `$&`) and
//! Rust's regex syntax (no look-around or back-references in patterns).
//!
//! As virt-edit does, the new content goes to a new file beside the old one, which receives
//! the old file's mode, owner and extended attributes (so the SELinux label survives), and is
//! then renamed over it: a crash leaves the old file or the new one, never half of either.

use std::ffi::{OsStr, OsString};
use std::io::Write;

use regex::bytes::{Regex, RegexBuilder};
use std::os::unix::ffi::OsStrExt;

use vdisk_guestfs::fs::{
    errno, errno_error, FileKind, FileSystem, FileSystemMut, Ino, SetAttr, TimeSet,
};
use vdisk_guestfs::stack::Stack;

use super::rw::{absolute, parent_and_name, read_all, write_all, Edit};
use super::{path_error, DiskArgs, MountSelect};
use crate::{CmdResult, Failure};

/// The largest file edited (it is held in memory).
pub const MAX_EDIT_SIZE: u64 = 256 << 20;

/// `vdisk edit -a IMAGE… (-m DEV… | -i) [-e EXPR] GUESTPATH`.
#[derive(Debug, clap::Args)]
pub struct EditArgs {
    #[command(flatten)]
    disks: DiskArgs,
    #[command(flatten)]
    select: MountSelect,
    /// Substitutions applied to each line: s/RE/REPL/[gimsx], several joined by ';'.
    #[arg(short = 'e', long = "expr", value_name = "EXPR")]
    expr: Option<String>,
    /// The guest file to edit (symlinks followed inside the guest).
    #[arg(value_name = "GUESTPATH")]
    path: OsString,
}

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

/// Edits the file, then flushes and closes the images.
pub fn run(a: EditArgs) -> CmdResult {
    let subs = match &a.expr {
        Some(e) => Some(parse_expr(e).map_err(Failure::new)?),
        None => None,
    };
    let edit = Edit::open(&a.disks, &a.select)?;
    let path = absolute(&a.path);
    let r = edit_file(&edit.tree, &path, |old| match &subs {
        Some(s) => Ok(apply(s, old)),
        None => run_editor(old, &path),
    });
    edit.close(r).map(|()| 0)
}

/// Replaces guest file `path` with `change(old content)`, virt-edit's way (a new file with
/// the old one's mode, owner, times-now and extended attributes, renamed over it). Nothing is
/// written when the content does not change.
pub fn edit_file(
    fs: &Stack,
    path: &[u8],
    change: impl FnOnce(&[u8]) -> Result<Vec<u8>, Failure>,
) -> Result<(), Failure> {
    let ino = fs.resolve(path, true).map_err(|e| path_error(path, e))?;
    let old = read_all(fs, ino, MAX_EDIT_SIZE, path)?;
    let new = change(&old)?;
    if new == old {
        return Ok(());
    }
    let attr = fs.getattr(ino).map_err(|e| path_error(path, e))?;
    // The resolved file's own directory and name (the path may go through symlinks).
    let real = real_path(fs, path)?;
    let (dir, name) = parent_and_name(fs, &real)?;
    let tmp_name = temp_name(fs, dir, &name);
    let tmp = fs
        .create(dir, &tmp_name, attr.mode & 0o7777, attr.uid, attr.gid)
        .map_err(|e| path_error(path, e))?;
    let r = (|| {
        for x in fs.listxattr(ino).map_err(|e| path_error(path, e))? {
            if let Some(v) = fs.getxattr(ino, &x).map_err(|e| path_error(path, e))? {
                fs.setxattr(tmp.ino, &x, &v, 0)
                    .map_err(|e| path_error(path, e))?;
            }
        }
        let mut src = &new[..];
        write_all(
            fs,
            tmp.ino,
            |b| {
                let n = b.len().min(src.len());
                b[..n].copy_from_slice(&src[..n]);
                src = &src[n..];
                Ok(n)
            },
            path,
        )?;
        // A set-ID bit is kept as it was (a write would not clear it here: we are root).
        let c = SetAttr {
            mode: Some(attr.mode & 0o7777),
            atime: Some(TimeSet::Now),
            mtime: Some(TimeSet::Now),
            ..SetAttr::default()
        };
        fs.setattr(tmp.ino, &c).map_err(|e| path_error(path, e))?;
        fs.rename(dir, &tmp_name, dir, &name, 0)
            .map_err(|e| path_error(path, e))
    })();
    if r.is_err() {
        let _ = fs.unlink(dir, &tmp_name);
    }
    r
}

/// `path` with a symlink in its last component replaced by its target, until the last
/// component names no symlink (at most 40 times, as the kernel's ELOOP limit).
fn real_path(fs: &Stack, path: &[u8]) -> Result<Vec<u8>, Failure> {
    let mut cur = path.to_vec();
    for _ in 0..vdisk_guestfs::fs::MAX_SYMLINK_FOLLOWS {
        let ino = fs.resolve(&cur, false).map_err(|e| path_error(path, e))?;
        if fs.getattr(ino).map_err(|e| path_error(path, e))?.kind != FileKind::Symlink {
            return Ok(cur);
        }
        let target = fs.readlink(ino).map_err(|e| path_error(path, e))?;
        let target = target.as_bytes();
        cur = if target.starts_with(b"/") {
            target.to_vec()
        } else {
            let end = cur.iter().rposition(|&c| c == b'/').unwrap_or(0);
            let mut p = cur[..end].to_vec();
            p.push(b'/');
            p.extend_from_slice(target);
            p
        };
    }
    Err(path_error(path, errno_error("resolve", errno::ELOOP)))
}

/// A name for the new file that `dir` does not hold yet.
fn temp_name(fs: &Stack, dir: Ino, name: &OsStr) -> OsString {
    let pid = std::process::id();
    for i in 0u32.. {
        let mut n = OsString::from(".vdisk-edit-");
        n.push(format!("{pid}-{i}-"));
        // Short enough for any name (255 bytes).
        let keep = name.as_bytes().len().min(200);
        n.push(OsStr::from_bytes(&name.as_bytes()[..keep]));
        if !matches!(fs.lookup(dir, &n), Ok(Some(_))) {
            return n;
        }
    }
    unreachable!("u32 names run out")
}

/// Runs `$EDITOR` (else `vi`) on a host copy of `old`, as virt-edit does, and returns what
/// the editor saved.
fn run_editor(old: &[u8], path: &[u8]) -> Result<Vec<u8>, Failure> {
    let dir = std::env::temp_dir();
    let base = String::from_utf8_lossy(path)
        .rsplit('/')
        .next()
        .unwrap_or("file")
        .replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
            "_",
        );
    let tmp = dir.join(format!("vdisk-edit-{}-{base}", std::process::id()));
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(old)?;
        drop(f);
        let editor = std::env::var("EDITOR")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| "vi".into());
        // $EDITOR may carry arguments ("code --wait"): the shell splits it.
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(&tmp)
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "the editor ({editor}) failed: {status}"
            )));
        }
        std::fs::read(&tmp)
    })();
    let _ = std::fs::remove_file(&tmp);
    r.map_err(|e| Failure::new(format!("{}: {e}", String::from_utf8_lossy(path))))
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
