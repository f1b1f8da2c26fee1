//! `--ssh-inject USER[:file:KEYFILE|:string:KEY]`: a public key added to the user's
//! `~/.ssh/authorized_keys`, with the modes and owners sshd's StrictModes accepts (`.ssh`
//! 0700 and `authorized_keys` 0600, both owned by the user).

use std::path::{Path, PathBuf};

use vdisk_block::{Error, Result};

use super::{GuestFiles, Kind, NewFile, MAX_FILE};

/// Where the key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// No selector: the newest `~/.ssh/id*.pub` of the user running vdisk, as ssh-copy-id
    /// picks it.
    Default,
    /// `file:FILENAME`.
    File(PathBuf),
    /// `string:KEY`.
    String(String),
}

impl KeySource {
    /// Parses the part after `USER:`, if any.
    pub fn parse(sel: Option<&str>) -> Result<KeySource> {
        match sel {
            None => Ok(KeySource::Default),
            Some(s) => {
                if let Some(f) = s.strip_prefix("file:") {
                    Ok(KeySource::File(PathBuf::from(f)))
                } else if let Some(k) = s.strip_prefix("string:") {
                    Ok(KeySource::String(k.to_string()))
                } else {
                    Err(Error::invalid(format!(
                        "--ssh-inject selector '{s}': expected file:FILENAME or string:KEY"
                    )))
                }
            }
        }
    }

    /// The key text (one line, without its newline).
    pub fn read(&self) -> Result<String> {
        let text = match self {
            KeySource::String(k) => k.clone(),
            KeySource::File(f) => read_host(f)?,
            KeySource::Default => {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .ok_or_else(|| Error::invalid("--ssh-inject: HOME is not set"))?;
                let dir = home.join(".ssh");
                let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
                if let Ok(rd) = std::fs::read_dir(&dir) {
                    for e in rd.flatten() {
                        let n = e.file_name();
                        let n = n.to_string_lossy();
                        if n.starts_with("id") && n.ends_with(".pub") {
                            let t = e
                                .metadata()
                                .and_then(|m| m.modified())
                                .unwrap_or(std::time::UNIX_EPOCH);
                            if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                                best = Some((t, e.path()));
                            }
                        }
                    }
                }
                let (_, p) = best.ok_or_else(|| {
                    Error::invalid(format!(
                        "--ssh-inject: no {}/id*.pub key; give one with file: or string:",
                        dir.display()
                    ))
                })?;
                read_host(&p)?
            }
        };
        let line = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .trim();
        if line.is_empty() || line.contains('\0') {
            return Err(Error::invalid("--ssh-inject: the key is empty"));
        }
        Ok(line.to_string())
    }
}

fn read_host(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).map_err(|e| Error::io("read", None, e).with_path(p))
}

/// An /etc/passwd entry's fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// Finds `user` in /etc/passwd text.
pub fn lookup(passwd: &str, user: &str) -> Option<Account> {
    super::lines(passwd).find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && f[0] == user).then(|| {
            Some(Account {
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })?
    })
}

/// authorized_keys with `key` added (unless a line already holds it).
pub fn authorized_keys(old: Option<&str>, key: &str) -> String {
    let mut t = old.unwrap_or_default().to_string();
    if super::lines(&t).any(|l| l.trim() == key) {
        return t;
    }
    if !t.is_empty() && !t.ends_with('\n') {
        t.push('\n');
    }
    t.push_str(key);
    t.push('\n');
    t
}

/// Adds `key` for `user`; returns the authorized_keys path.
pub fn inject(g: &mut dyn GuestFiles, user: &str, key: &str) -> Result<String> {
    let passwd = g
        .read("/etc/passwd", MAX_FILE)?
        .ok_or_else(|| Error::invalid("/etc/passwd: not found in the guest"))?;
    let acct = lookup(&String::from_utf8_lossy(&passwd), user)
        .ok_or_else(|| Error::invalid(format!("--ssh-inject: no user '{user}' in /etc/passwd")))?;
    if !acct.home.starts_with('/') || acct.home == "/" {
        return Err(Error::invalid(format!(
            "--ssh-inject: user '{user}' has home directory '{}'",
            acct.home
        )));
    }
    let own = NewFile {
        mode: 0o700,
        uid: acct.uid,
        gid: acct.gid,
    };
    if g.stat(&acct.home, true)?.is_none() {
        g.mkdir_p(&acct.home, own)?;
    }
    let dir = format!("{}/.ssh", acct.home);
    match g.stat(&dir, false)?.map(|m| m.kind) {
        None => g.mkdir_p(&dir, own)?,
        Some(Kind::Dir) => {}
        Some(_) => {
            return Err(Error::invalid(format!(
                "{dir}: exists and is not a directory"
            )))
        }
    }
    g.chmod(&dir, 0o700)?;
    g.chown(&dir, acct.uid, acct.gid)?;
    let path = format!("{dir}/authorized_keys");
    let old = super::read_text(g, &path)?;
    g.write(
        &path,
        authorized_keys(old.as_deref(), key).as_bytes(),
        NewFile { mode: 0o600, ..own },
    )?;
    g.chmod(&path, 0o600)?;
    g.chown(&path, acct.uid, acct.gid)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customize::mem::MemGuest;

    #[test]
    fn injects_with_modes_and_owner() {
        let mut g = MemGuest::new();
        g.add_file(
            "/etc/passwd",
            b"root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1001:Alice:/home/alice:/bin/bash\n",
            0o644,
        );
        g.add_dir("/home/alice", 0o700);
        g.chown("/home/alice", 1000, 1001).unwrap();
        let p = inject(&mut g, "alice", "ssh-ed25519 AAAA alice@host").unwrap();
        assert_eq!(p, "/home/alice/.ssh/authorized_keys");
        let d = g.stat("/home/alice/.ssh", false).unwrap().unwrap();
        assert_eq!((d.mode, d.uid, d.gid), (0o700, 1000, 1001));
        let f = g.stat(&p, false).unwrap().unwrap();
        assert_eq!((f.mode, f.uid, f.gid), (0o600, 1000, 1001));
        inject(&mut g, "alice", "ssh-ed25519 AAAA alice@host").unwrap();
        inject(&mut g, "alice", "ssh-rsa BBBB second").unwrap();
        assert_eq!(
            g.text(&p).unwrap(),
            "ssh-ed25519 AAAA alice@host\nssh-rsa BBBB second\n"
        );
        assert!(inject(&mut g, "bob", "k").is_err());
        assert_eq!(
            KeySource::parse(Some("string:ssh-rsa X"))
                .unwrap()
                .read()
                .unwrap(),
            "ssh-rsa X"
        );
        assert!(KeySource::parse(Some("frob")).is_err());
    }
}
