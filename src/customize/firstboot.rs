//! `--firstboot`, `--firstboot-command`, `--firstboot-install`: scripts that run once, at the
//! guest's next boot, installed where virt-customize installs them so that guests prepared
//! by either tool behave alike:
//!
//! ```text
//!   /usr/lib/virt-sysprep/firstboot.sh            the runner (0755)
//!   /usr/lib/virt-sysprep/scripts/NNNN-NAME       each script (0755), run in name order,
//!                                                 moved to scripts-done/ before it runs
//!   /usr/lib/systemd/system/guestfs-firstboot.service
//!   /etc/systemd/system/multi-user.target.wants/guestfs-firstboot.service -> the unit
//!   SysV (guests with /etc/rc.d or /etc/init.d): S99guestfs-firstboot links in rc2/3/5.d
//! ```
//!
//! Output goes to the console (the unit sends it there too) and to
//! `~root/virt-sysprep-firstboot.log`.

use vdisk_block::{Error, Result};

use super::{Family, GuestFiles, GuestOs, Kind, NewFile};

/// Where the runner and the scripts live.
pub const DIR: &str = "/usr/lib/virt-sysprep";
/// The systemd unit.
pub const UNIT: &str = "/usr/lib/systemd/system/guestfs-firstboot.service";

/// The runner script.
pub fn runner() -> String {
    format!(
        r#"#!/bin/sh -
### BEGIN INIT INFO
# Provides:          guestfs-firstboot
# Required-Start:    $null
# Should-Start:      $all
# Required-Stop:     $null
# Should-Stop:       $all
# Default-Start:     2 3 5
# Default-Stop:      0 1 6
# Short-Description: Run first-boot scripts once
### END INIT INFO
#
# Installed by vdisk customize. On "start", each executable file in scripts/ is moved to
# scripts-done/ (so that it never runs twice, even if it reboots the guest) and then run,
# in name order. Output goes to the console and to ~root/virt-sysprep-firstboot.log.

dir={DIR}
log=~root/virt-sysprep-firstboot.log

[ "$1" = start ] || exit 0
mkdir -p "$dir/scripts-done"
for script in "$dir"/scripts/*; do
  [ -f "$script" ] && [ -x "$script" ] || continue
  name=${{script##*/}}
  mv "$script" "$dir/scripts-done/$name"
  echo "=== Running $name ===" 2>&1 | tee -a "$log"
  "$dir/scripts-done/$name" 2>&1 | tee -a "$log"
done
rm -f "$dir"/scripts-done/*
"#
    )
}

/// The systemd unit that runs the runner once per boot (it finds nothing to do after the
/// first).
pub fn unit() -> String {
    format!(
        "[Unit]\n\
         Description=Run the first-boot scripts installed by vdisk customize\n\
         After=network.target\n\
         Before=prefdm.service\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={DIR}/firstboot.sh start\n\
         RemainAfterExit=yes\n\
         StandardOutput=journal+console\n\
         StandardError=inherit\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// A script's file name from the operation's text: characters other than letters, digits
/// and `_` become `-`, cut at 60 bytes, after a 4-digit sequence number.
pub fn script_name(seq: u32, name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(60);
    format!("{seq:04}-{s}")
}

/// The shell command that installs `pkgs` with the guest's package manager.
pub fn install_command(os: &GuestOs, pkgs: &[String]) -> Result<String> {
    let quoted: Vec<String> = pkgs.iter().map(|p| sh_quote(p)).collect();
    let q = quoted.join(" ");
    Ok(match os.package_management.as_deref() {
        Some("apt") => format!(
            "export DEBIAN_FRONTEND=noninteractive\napt-get -q -y update\napt-get -q -y -o Dpkg::Options::=--force-confnew install {q}\n"
        ),
        Some("dnf") => format!("dnf -y install {q}\n"),
        Some("yum") => format!("yum -y install {q}\n"),
        Some("zypper") => format!("zypper -n in {q}\n"),
        Some("pacman") => format!("pacman -S --noconfirm {q}\n"),
        Some("apk") => format!("apk add {q}\n"),
        other => {
            return Err(Error::unsupported(format!(
                "--firstboot-install: no known package manager in this guest ({})",
                other.unwrap_or("none found")
            )))
        }
    })
}

/// Single-quotes a word for sh.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-+/=:@,".contains(&c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn is_dir(g: &dyn GuestFiles, p: &str) -> Result<bool> {
    Ok(g.stat(p, true)?.map(|m| m.kind) == Some(Kind::Dir))
}

/// Installs the runner, the systemd unit and (where the guest has SysV directories) the
/// init links. Returns what was written.
pub fn install_service(g: &mut dyn GuestFiles, os: &GuestOs) -> Result<Vec<String>> {
    let mut out = Vec::new();
    g.mkdir_p(&format!("{DIR}/scripts"), NewFile::root(0o755))?;
    let sh = format!("{DIR}/firstboot.sh");
    g.write(&sh, runner().as_bytes(), NewFile::root(0o755))?;
    g.chmod(&sh, 0o755)?;
    out.push(sh.clone());
    let mut any = false;
    if is_dir(g, "/etc/systemd/system")? {
        g.mkdir_p("/usr/lib/systemd/system", NewFile::root(0o755))?;
        g.write(UNIT, unit().as_bytes(), NewFile::root(0o644))?;
        let wants = "/etc/systemd/system/multi-user.target.wants";
        g.mkdir_p(wants, NewFile::root(0o755))?;
        let link = format!("{wants}/guestfs-firstboot.service");
        g.symlink(UNIT, &link)?;
        out.push(UNIT.into());
        out.push(link);
        any = true;
    }
    let rc_d = is_dir(g, "/etc/rc.d")?;
    let init_d = is_dir(g, "/etc/init.d")?;
    if rc_d || init_d {
        match os.family() {
            Family::RedHat if rc_d => {
                for n in [2, 3, 5] {
                    let d = format!("/etc/rc.d/rc{n}.d");
                    g.mkdir_p(&d, NewFile::root(0o755))?;
                    let l = format!("{d}/S99guestfs-firstboot");
                    g.symlink(&sh, &l)?;
                    out.push(l);
                }
                any = true;
            }
            Family::Debian | Family::Suse | Family::RedHat => {
                let base = if os.family() == Family::Suse {
                    "/etc/init.d"
                } else {
                    "/etc"
                };
                g.mkdir_p("/etc/init.d", NewFile::root(0o755))?;
                g.symlink(&sh, "/etc/init.d/guestfs-firstboot")?;
                out.push("/etc/init.d/guestfs-firstboot".into());
                let rel = if base == "/etc" {
                    "../init.d/guestfs-firstboot"
                } else {
                    "../guestfs-firstboot"
                };
                for n in [2, 3, 5] {
                    let d = format!("{base}/rc{n}.d");
                    g.mkdir_p(&d, NewFile::root(0o755))?;
                    let l = format!("{d}/S99guestfs-firstboot");
                    g.symlink(rel, &l)?;
                    out.push(l);
                }
                any = true;
            }
            Family::Other => {}
        }
    }
    if !any {
        return Err(Error::unsupported(
            "firstboot: the guest has neither /etc/systemd/system nor SysV init directories",
        ));
    }
    Ok(out)
}

/// Adds one script (after installing the service); returns the script's path. Scripts are
/// numbered after those already waiting in the guest, so they run in the order added.
pub fn add_script(
    g: &mut dyn GuestFiles,
    os: &GuestOs,
    name: &str,
    content: &[u8],
) -> Result<String> {
    install_service(g, os)?;
    let dir = format!("{DIR}/scripts");
    let next = g
        .list(&dir)?
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n.get(..4).and_then(|d| d.parse::<u32>().ok()))
        .max()
        .map_or(1, |m| m.saturating_add(1));
    let path = format!("{dir}/{}", script_name(next, name));
    let mut body = Vec::with_capacity(content.len() + 10);
    if !content.starts_with(b"#!") {
        body.extend_from_slice(b"#!/bin/sh\n");
    }
    body.extend_from_slice(content);
    g.write(&path, &body, NewFile::root(0o755))?;
    g.chmod(&path, 0o755)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customize::mem::MemGuest;

    fn os(d: &str, pm: &str) -> GuestOs {
        GuestOs {
            os_type: "linux".into(),
            distro: d.into(),
            major_version: 7,
            package_management: Some(pm.into()),
        }
    }

    #[test]
    fn systemd_and_sysv() {
        let mut g = MemGuest::new();
        g.add_dir("/etc/systemd/system", 0o755);
        g.add_dir("/etc/rc.d/init.d", 0o755);
        let p1 = add_script(
            &mut g,
            &os("centos", "yum"),
            "echo hello > /dev/console",
            b"echo hello\n",
        )
        .unwrap();
        let p2 = add_script(
            &mut g,
            &os("centos", "yum"),
            "second",
            b"#!/bin/bash\ntrue\n",
        )
        .unwrap();
        assert_eq!(
            p1,
            "/usr/lib/virt-sysprep/scripts/0001-echo-hello----dev-console"
        );
        assert_eq!(p2, "/usr/lib/virt-sysprep/scripts/0002-second");
        assert_eq!(g.text(&p1).unwrap(), "#!/bin/sh\necho hello\n");
        assert_eq!(g.stat(&p1, true).unwrap().unwrap().mode, 0o755);
        assert_eq!(
            g.read_link("/etc/systemd/system/multi-user.target.wants/guestfs-firstboot.service")
                .unwrap()
                .as_deref(),
            Some(UNIT)
        );
        assert_eq!(
            g.read_link("/etc/rc.d/rc3.d/S99guestfs-firstboot")
                .unwrap()
                .as_deref(),
            Some("/usr/lib/virt-sysprep/firstboot.sh")
        );
        assert!(g
            .text(UNIT)
            .unwrap()
            .contains("ExecStart=/usr/lib/virt-sysprep/firstboot.sh start"));

        let mut g = MemGuest::new();
        g.add_dir("/etc/init.d", 0o755);
        add_script(&mut g, &os("debian", "apt"), "x", b"true").unwrap();
        assert_eq!(
            g.read_link("/etc/rc2.d/S99guestfs-firstboot")
                .unwrap()
                .as_deref(),
            Some("../init.d/guestfs-firstboot")
        );
        assert!(add_script(&mut MemGuest::new(), &os("debian", "apt"), "x", b"y").is_err());
    }

    #[test]
    fn install_commands() {
        let c = install_command(&os("centos", "yum"), &["vim".into(), "a b".into()]).unwrap();
        assert_eq!(c, "yum -y install vim 'a b'\n");
        assert!(install_command(&GuestOs::default(), &["x".into()]).is_err());
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }

    /// The runner is valid sh and does what it says: runs each script once, in order.
    #[test]
    fn runner_runs_scripts_once() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("vs");
        std::fs::create_dir_all(dir.join("scripts")).unwrap();
        let script = runner()
            .replace(DIR, dir.to_str().unwrap())
            .replace("~root", t.path().to_str().unwrap());
        let runner_path = t.path().join("firstboot.sh");
        std::fs::write(&runner_path, script).unwrap();
        let out = t.path().join("out");
        for (n, body) in [("0002-b", "echo b >> OUT"), ("0001-a", "echo a >> OUT")] {
            let p = dir.join("scripts").join(n);
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\n{}\n",
                    body.replace("OUT", out.to_str().unwrap())
                ),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for _ in 0..2 {
            let st = std::process::Command::new("sh")
                .arg(&runner_path)
                .arg("start")
                .output()
                .unwrap();
            assert!(st.status.success(), "{st:?}");
        }
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "a\nb\n");
        assert_eq!(std::fs::read_dir(dir.join("scripts")).unwrap().count(), 0);
    }
}
