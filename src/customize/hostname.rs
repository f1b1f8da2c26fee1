//! `--hostname`: the files each distribution family reads its hostname from, as
//! virt-customize writes them.
//!
//! - Fedora ≥ 18, RHEL/CentOS (and rebuilds) ≥ 7: `/etc/hostname`, and `PRETTY_HOSTNAME` in
//!   `/etc/machine-info`.
//! - Older Red Hat family (RHEL/CentOS 6): `HOSTNAME=` in `/etc/sysconfig/network`.
//! - Debian, Ubuntu: `/etc/hostname`, and the old name replaced by the new one in
//!   `/etc/hosts` (the Debian installer's `127.0.1.1 host` line). If no line names the new
//!   host afterwards, we add `127.0.1.1 FQDN SHORT` as the Debian installer writes it (so
//!   `sudo` and `hostname -f` resolve), which virt-customize does not; and where the old
//!   name was short and the new one is not, the line gets the full name before the short.
//! - openSUSE/SLES: `/etc/HOSTNAME`.
//! - Any other Linux guest: `/etc/hostname`.

use vdisk_block::{Error, Result};

use super::{shellvars, Family, GuestFiles, GuestOs, NewFile};

/// Checks a hostname (RFC 1123: dot-separated labels of letters, digits and inner hyphens,
/// 1–63 bytes each, 253 in all).
pub fn check(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        });
    if ok {
        Ok(name.to_string())
    } else {
        Err(Error::invalid(format!(
            "--hostname '{name}': not a valid hostname (letters, digits, '-' and '.')"
        )))
    }
}

/// Rewrites /etc/hosts for a hostname change from `old` (the guest's previous
/// /etc/hostname) to `new`: a name field equal to the old full name becomes the new full
/// name, one equal to the old short name (or Debian's `unassigned-hostname`) the new short
/// name, `unassigned-hostname.unassigned-domain` the new full name when it has a domain;
/// and (beyond virt-customize, which leaves it) a name whose first label is the old short
/// name with some domain ("tmpl.lan" when /etc/hostname said "tmpl") becomes the new full
/// name, or the new short name with that domain.
/// (An old name without a domain is a short name: it becomes the new short name, preceded
/// by the new full name when the line would not name that otherwise.)
/// Addresses, comments and lines that do not change are kept byte for byte. With
/// `add_if_missing`, a `127.0.1.1` line for the new name is added when none names it.
pub fn hosts(text: &str, old: Option<&str>, new: &str, add_if_missing: bool) -> String {
    let short = |h: &str| h.split('.').next().unwrap_or(h).to_string();
    let new_short = short(new);
    let old_short = old.map(short);
    let mut out = Vec::new();
    let mut named = false;
    for line in super::lines(text) {
        let (body, comment) = match line.find('#') {
            Some(i) => (&line[..i], &line[i..]),
            None => (line, ""),
        };
        let mut fields = body.split_whitespace();
        let Some(ip) = fields.next() else {
            out.push(line.to_string());
            continue;
        };
        let names: Vec<&str> = fields.collect();
        let mut changed = false;
        let mut new_names: Vec<String> = names
            .iter()
            .map(|&n| {
                let field_short = n.split_once('.').map(|(s, _)| s);
                let r = if Some(n) == old && n.contains('.') {
                    new.to_string()
                } else if Some(n) == old_short.as_deref() || n == "unassigned-hostname" {
                    new_short.clone()
                } else if n == "unassigned-hostname.unassigned-domain" && new.contains('.') {
                    new.to_string()
                } else if field_short.is_some() && field_short == old_short.as_deref() {
                    // "tmpl.lan" when /etc/hostname said only "tmpl".
                    match n.split_once('.') {
                        Some((_, dom)) if !new.contains('.') => format!("{new_short}.{dom}"),
                        _ => new.to_string(),
                    }
                } else {
                    return n.to_string();
                };
                changed |= r != n;
                r
            })
            .collect();
        // Debian's kernel hostname is /etc/hostname's whole text: when the old name was
        // short and the new one has a domain, the line that named the host names the new
        // full name too (`127.0.1.1 FQDN SHORT`, as the installer writes it), or `sudo` and
        // `hostname -f` would not resolve it.
        if changed && new != new_short && !new_names.iter().any(|n| n == new) {
            if let Some(i) = new_names.iter().position(|n| *n == new_short) {
                new_names.insert(i, new.to_string());
            }
        }
        if new_names.iter().any(|n| *n == new || *n == new_short) {
            named = true;
        }
        if changed {
            let mut l = format!("{ip}\t{}", new_names.join(" "));
            if !comment.is_empty() {
                l.push(' ');
                l.push_str(comment);
            }
            out.push(l);
        } else {
            out.push(line.to_string());
        }
    }
    if add_if_missing && !named {
        let entry = if new == new_short {
            format!("127.0.1.1\t{new}")
        } else {
            format!("127.0.1.1\t{new} {new_short}")
        };
        // After the loopback line, as the Debian installer places it.
        let at = out
            .iter()
            .position(|l| l.split_whitespace().next() == Some("127.0.0.1"))
            .map_or(out.len(), |i| i + 1);
        out.insert(at, entry);
    }
    super::join_lines(out)
}

fn text(g: &dyn GuestFiles, path: &str) -> Result<Option<String>> {
    super::read_text(g, path)
}

/// Sets the hostname in `g` for `os`; returns the files written.
pub fn set(g: &mut dyn GuestFiles, os: &GuestOs, name: &str) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let mut put = |g: &mut dyn GuestFiles, path: &str, data: String| -> Result<()> {
        g.write(path, data.as_bytes(), NewFile::root(0o644))?;
        written.push(path.to_string());
        Ok(())
    };
    let redhat_new = match os.distro.as_str() {
        "fedora" => os.major_version >= 18,
        _ => os.major_version >= 7,
    };
    match os.family() {
        Family::RedHat if !redhat_new => {
            let old = text(g, "/etc/sysconfig/network")?.unwrap_or_default();
            put(
                g,
                "/etc/sysconfig/network",
                shellvars::edit(&old, &[("HOSTNAME", Some(name))]),
            )?;
        }
        Family::RedHat => {
            put(g, "/etc/hostname", format!("{name}\n"))?;
            let old = text(g, "/etc/machine-info")?.unwrap_or_default();
            put(
                g,
                "/etc/machine-info",
                shellvars::edit(&old, &[("PRETTY_HOSTNAME", Some(name))]),
            )?;
        }
        Family::Debian => {
            let old = text(g, "/etc/hostname")?
                .and_then(|t| t.lines().next().map(|l| l.trim().to_string()))
                .filter(|l| !l.is_empty());
            put(g, "/etc/hostname", format!("{name}\n"))?;
            if let Some(h) = text(g, "/etc/hosts")? {
                let new = hosts(&h, old.as_deref(), name, true);
                if new != h {
                    put(g, "/etc/hosts", new)?;
                }
            }
        }
        Family::Suse => put(g, "/etc/HOSTNAME", format!("{name}\n"))?,
        Family::Other => {
            if os.os_type != "linux" && !os.os_type.is_empty() {
                return Err(Error::unsupported(format!(
                    "--hostname: not supported for {} guests",
                    os.os_type
                )));
            }
            put(g, "/etc/hostname", format!("{name}\n"))?;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customize::mem::MemGuest;

    #[test]
    fn names() {
        assert!(check("test02").is_ok());
        assert!(check("web-1.example.com").is_ok());
        for bad in ["", "-a", "a-", "a..b", "a_b", "a b", &"x".repeat(64)] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debian_hosts() {
        let old = "127.0.0.1\tlocalhost\n127.0.1.1\ttemplate.example.com\ttemplate\n\n# The following lines are desirable for IPv6 capable hosts\n::1     localhost ip6-localhost ip6-loopback\n";
        let new = hosts(
            old,
            Some("template.example.com"),
            "test02.example.com",
            true,
        );
        assert_eq!(
            new,
            "127.0.0.1\tlocalhost\n127.0.1.1\ttest02.example.com test02\n\n# The following lines are desirable for IPv6 capable hosts\n::1     localhost ip6-localhost ip6-loopback\n"
        );
        let new = hosts(
            "127.0.0.1 localhost\n127.0.1.1 unassigned-hostname.unassigned-domain unassigned-hostname # x\n",
            None,
            "vm.lan",
            true,
        );
        assert_eq!(new, "127.0.0.1 localhost\n127.0.1.1\tvm.lan vm # x\n");
        // /etc/hostname held the short name; the hosts line has the long one too.
        assert_eq!(
            hosts(
                "127.0.1.1\ttmpl.lan\ttmpl\n",
                Some("tmpl"),
                "web1.lan",
                true
            ),
            "127.0.1.1\tweb1.lan web1\n"
        );
        assert_eq!(
            hosts("127.0.1.1 tmpl.lan tmpl\n", Some("tmpl"), "web1", true),
            "127.0.1.1\tweb1.lan web1\n"
        );
        // A debootstrapped template: short name in /etc/hostname and /etc/hosts, a full new
        // name. The full name must resolve, since it is what the kernel hostname becomes.
        assert_eq!(
            hosts(
                "127.0.0.1\tlocalhost\n127.0.1.1\tdebian-template\n",
                Some("debian-template"),
                "deb01.example.com",
                true
            ),
            "127.0.0.1\tlocalhost\n127.0.1.1\tdeb01.example.com deb01\n"
        );
        // No line for the host: one is added after the loopback line.
        let new = hosts(
            "127.0.0.1 localhost\n::1 localhost\n",
            Some("gone"),
            "vm",
            true,
        );
        assert_eq!(new, "127.0.0.1 localhost\n127.0.1.1\tvm\n::1 localhost\n");
        assert_eq!(
            hosts("127.0.0.1 localhost\n", None, "vm", false),
            "127.0.0.1 localhost\n"
        );
    }

    fn os(distro: &str, major: u32) -> GuestOs {
        GuestOs {
            os_type: "linux".into(),
            distro: distro.into(),
            major_version: major,
            package_management: None,
        }
    }

    #[test]
    fn per_family_files() {
        let mut g = MemGuest::new();
        g.add_file(
            "/etc/sysconfig/network",
            b"NETWORKING=yes\nHOSTNAME=tmpl\n",
            0o644,
        );
        set(&mut g, &os("centos", 6), "c6").unwrap();
        assert_eq!(
            g.text("/etc/sysconfig/network").unwrap(),
            "NETWORKING=yes\nHOSTNAME=c6\n"
        );
        assert!(g.file("/etc/hostname").is_none());

        let mut g = MemGuest::new();
        g.add_file("/etc/hostname", b"tmpl\n", 0o644);
        let w = set(&mut g, &os("centos", 7), "c7").unwrap();
        assert_eq!(w, vec!["/etc/hostname", "/etc/machine-info"]);
        assert_eq!(g.text("/etc/hostname").unwrap(), "c7\n");
        assert_eq!(g.text("/etc/machine-info").unwrap(), "PRETTY_HOSTNAME=c7\n");

        let mut g = MemGuest::new();
        g.add_file("/etc/hostname", b"tmpl\n", 0o644);
        g.add_file(
            "/etc/hosts",
            b"127.0.0.1 localhost\n127.0.1.1 tmpl\n",
            0o644,
        );
        set(&mut g, &os("debian", 12), "deb").unwrap();
        assert_eq!(g.text("/etc/hostname").unwrap(), "deb\n");
        assert_eq!(
            g.text("/etc/hosts").unwrap(),
            "127.0.0.1 localhost\n127.0.1.1\tdeb\n"
        );

        let mut g = MemGuest::new();
        g.add_dir("/etc", 0o755);
        set(&mut g, &os("sles", 15), "suse").unwrap();
        assert_eq!(g.text("/etc/HOSTNAME").unwrap(), "suse\n");
    }
}
