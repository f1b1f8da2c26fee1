//! SELinux labels for the files a run creates, from the guest's own policy: the
//! `file_contexts` files of the policy /etc/selinux/config names, matched as libselinux
//! matches them (each spec an anchored regular expression with an optional file type; specs
//! without regex characters take precedence, then the last matching spec in file order;
//! `file_contexts`, then `.homedirs`, then `.local`). A created file the policy does not
//! cover, or a guest without the files, falls back to `/.autorelabel` (the guest relabels
//! itself at next boot).

use regex::Regex;
use vdisk_block::{Error, Result};

use super::{shellvars, GuestFiles, Kind};

/// Specs read from one policy's files at most (a real targeted policy has about 6,000).
pub const MAX_SPECS: usize = 200_000;

/// The xattr holding a file's label.
pub const XATTR: &str = "security.selinux";

#[derive(Debug)]
struct Spec {
    re: Regex,
    /// `--` file, `-d` directory, `-l` symlink, ... or any.
    kind: Option<char>,
    /// None for `<<none>>` (leave unlabelled).
    context: Option<String>,
}

/// A policy's file contexts.
#[derive(Debug, Default)]
pub struct Contexts {
    /// Regex specs, in file order.
    regex: Vec<Spec>,
    /// Specs without regex characters, in file order (they win over the others).
    exact: Vec<Spec>,
}

fn has_meta(s: &str) -> bool {
    s.contains(['.', '^', '$', '?', '*', '+', '|', '[', '(', '{', '\\'])
}

impl Contexts {
    /// Adds the specs of one file_contexts text; lines that do not parse or compile are
    /// skipped (libselinux refuses the whole policy; we only lose those entries, and a file
    /// they would have labelled gets the autorelabel fallback).
    pub fn add(&mut self, text: &str) -> Result<()> {
        for line in super::lines(text) {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = t.split_whitespace().collect();
            let (pat, kind, ctx) = match f.as_slice() {
                [p, c] => (*p, None, *c),
                [p, k, c] if k.starts_with('-') && k.len() == 2 => (*p, k.chars().nth(1), *c),
                _ => continue,
            };
            let Ok(re) = Regex::new(&format!("^(?:{pat})$")) else {
                continue;
            };
            let spec = Spec {
                re,
                kind,
                context: (ctx != "<<none>>").then(|| ctx.to_string()),
            };
            if has_meta(pat) {
                self.regex.push(spec);
            } else {
                self.exact.push(spec);
            }
            if self.regex.len() + self.exact.len() > MAX_SPECS {
                return Err(Error::invalid(format!(
                    "file_contexts: more than {MAX_SPECS} specs"
                )));
            }
        }
        Ok(())
    }

    /// The label for `path` of kind `kind`: Some(Some(ctx)), Some(None) for `<<none>>`, None
    /// when no spec matches.
    pub fn lookup(&self, path: &str, kind: Kind) -> Option<Option<&str>> {
        let k = match kind {
            Kind::File => '-',
            Kind::Dir => 'd',
            Kind::Symlink => 'l',
            Kind::Other => '?',
        };
        self.exact
            .iter()
            .rev()
            .chain(self.regex.iter().rev())
            .find(|s| s.kind.is_none_or(|sk| sk == k) && s.re.is_match(path))
            .map(|s| s.context.as_deref())
    }

    /// Whether any spec was read.
    pub fn is_empty(&self) -> bool {
        self.regex.is_empty() && self.exact.is_empty()
    }
}

/// The guest's file contexts, None when it has no SELinux policy files.
pub fn load(g: &dyn GuestFiles) -> Result<Option<Contexts>> {
    let ty = match super::read_text(g, "/etc/selinux/config")? {
        Some(t) => shellvars::get(&t, "SELINUXTYPE").unwrap_or_else(|| "targeted".into()),
        None => return Ok(None),
    };
    if ty.is_empty() || ty.contains('/') || ty.starts_with('.') {
        return Ok(None);
    }
    let dir = format!("/etc/selinux/{ty}/contexts/files");
    let mut c = Contexts::default();
    for f in [
        "file_contexts",
        "file_contexts.homedirs",
        "file_contexts.local",
    ] {
        if let Some(t) = super::read_text(g, &format!("{dir}/{f}"))? {
            c.add(&t)?;
        }
    }
    Ok((!c.is_empty()).then_some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libselinux_precedence() {
        let mut c = Contexts::default();
        c.add(
            "/.*\t\tsystem_u:object_r:default_t:s0\n\
             /etc(/.*)?\t\tsystem_u:object_r:etc_t:s0\n\
             /etc/hostname\t--\tsystem_u:object_r:hostname_etc_t:s0\n\
             /etc/machine-info\t--\tsystem_u:object_r:hostname_etc_t:s0\n\
             /root(/.*)?\t\tsystem_u:object_r:admin_home_t:s0\n\
             /root/\\.ssh(/.*)?\t\tsystem_u:object_r:ssh_home_t:s0\n\
             /etc/sysconfig/network-scripts(/.*)?\tsystem_u:object_r:net_conf_t:s0\n\
             /tmp/.*\t<<none>>\n\
             bad(regex\tsystem_u:object_r:x_t:s0\n",
        )
        .unwrap();
        c.add("/home/[^/]+/\\.ssh(/.*)?\tunconfined_u:object_r:ssh_home_t:s0\n")
            .unwrap();
        let l = |p: &str, k: Kind| c.lookup(p, k).map(|o| o.map(str::to_string));
        assert_eq!(
            l("/etc/motd", Kind::File),
            Some(Some("system_u:object_r:etc_t:s0".into()))
        );
        assert_eq!(
            l("/etc/machine-info", Kind::File),
            Some(Some("system_u:object_r:hostname_etc_t:s0".into()))
        );
        // A type-restricted spec does not match other kinds.
        assert_eq!(
            l("/etc/hostname", Kind::Dir),
            Some(Some("system_u:object_r:etc_t:s0".into()))
        );
        assert_eq!(
            l("/root/.ssh/authorized_keys", Kind::File),
            Some(Some("system_u:object_r:ssh_home_t:s0".into()))
        );
        assert_eq!(
            l("/home/alice/.ssh", Kind::Dir),
            Some(Some("unconfined_u:object_r:ssh_home_t:s0".into()))
        );
        assert_eq!(
            l("/etc/sysconfig/network-scripts/ifcfg-eth1", Kind::File),
            Some(Some("system_u:object_r:net_conf_t:s0".into()))
        );
        assert_eq!(l("/tmp/x", Kind::File), Some(None));
        let mut empty = Contexts::default();
        empty.add("/etc/x\tsystem_u:object_r:etc_t:s0\n").unwrap();
        assert_eq!(empty.lookup("/srv/y", Kind::File), None);
    }
}
