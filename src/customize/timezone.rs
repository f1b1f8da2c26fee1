//! `--timezone ZONE`: `/etc/localtime` made a symlink to `/usr/share/zoneinfo/ZONE` (which
//! must exist in the guest), plus `/etc/timezone` on Debian and `ZONE=` in
//! `/etc/sysconfig/clock` where a Red Hat guest has that file.

use vdisk_block::{Error, Result};

use super::{shellvars, Family, GuestFiles, GuestOs, Kind, NewFile};

/// Checks a zone name ("Europe/Paris", "UTC", "Etc/GMT+5").
pub fn check(tz: &str) -> Result<String> {
    let ok = !tz.is_empty()
        && tz.len() <= 255
        && !tz.starts_with('/')
        && tz
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && tz
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"/_+-".contains(&c));
    if ok {
        Ok(tz.to_string())
    } else {
        Err(Error::invalid(format!(
            "--timezone '{tz}': not a time zone name"
        )))
    }
}

/// Sets the zone; returns the paths written.
pub fn set(g: &mut dyn GuestFiles, os: &GuestOs, tz: &str) -> Result<Vec<String>> {
    let target = format!("/usr/share/zoneinfo/{tz}");
    if g.stat(&target, true)?.map(|m| m.kind) != Some(Kind::File) {
        return Err(Error::invalid(format!(
            "--timezone {tz}: the guest has no {target}"
        )));
    }
    g.remove_all("/etc/localtime")?;
    g.symlink(&target, "/etc/localtime")?;
    let mut out = vec!["/etc/localtime".to_string()];
    if os.family() == Family::Debian {
        g.write(
            "/etc/timezone",
            format!("{tz}\n").as_bytes(),
            NewFile::root(0o644),
        )?;
        out.push("/etc/timezone".into());
    }
    if os.family() == Family::RedHat {
        if let Some(old) = super::read_text(g, "/etc/sysconfig/clock")? {
            let new = shellvars::edit(&old, &[("ZONE", Some(tz))]);
            g.write("/etc/sysconfig/clock", new.as_bytes(), NewFile::root(0o644))?;
            out.push("/etc/sysconfig/clock".into());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customize::mem::MemGuest;

    #[test]
    fn zones() {
        let mut g = MemGuest::new();
        g.add_file("/usr/share/zoneinfo/Europe/Paris", b"TZif2", 0o644);
        g.add_file("/etc/localtime", b"TZif-old", 0o644);
        let os = GuestOs {
            distro: "debian".into(),
            ..GuestOs::default()
        };
        set(&mut g, &os, "Europe/Paris").unwrap();
        assert_eq!(
            g.read_link("/etc/localtime").unwrap().as_deref(),
            Some("/usr/share/zoneinfo/Europe/Paris")
        );
        assert_eq!(g.text("/etc/timezone").unwrap(), "Europe/Paris\n");
        assert!(set(&mut g, &os, "Mars/Olympus").is_err());
        for bad in ["../etc/passwd", "/UTC", "a//b", "a b"] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
