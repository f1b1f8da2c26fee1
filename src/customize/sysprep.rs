//! virt-sysprep's operations that are file edits, under virt-sysprep's names: what a guest
//! carries that belongs to one machine (host keys, machine id, leases, logs, histories, MAC
//! bindings) removed or reset so that clones of a template start out distinct.
//!
//! Operations run in name order, as virt-sysprep runs them, and before the customize
//! operations of the same run (so `--mac` after `net-hwaddr` sets the new binding).
//! virt-sysprep operations that are not file edits (`lvm-uuids`, `fs-uuids`, `script`,
//! `user-account`, ...) are refused by name when asked for.

use vdisk_block::{Error, Result};

use super::{glob, shellvars, GuestFiles, GuestOs, Kind, NewFile};

/// What an operation does.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Remove every path these globs match (recursively).
    Remove(&'static [&'static str]),
    /// One of the operations below that edit rather than remove.
    Special(Special),
}

/// The operations that edit files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// Empty /etc/machine-id (systemd makes a new one at boot); remove a stand-alone
    /// /var/lib/dbus/machine-id.
    MachineId,
    /// Remove `HWADDR=` from ifcfg files.
    NetHwaddr,
    /// Remove `HOSTNAME=` and `DHCP_HOSTNAME=` from ifcfg files.
    NetHostname,
    /// Remove process accounting logs, leaving an empty `pacct`.
    PacctLog,
    /// Remove the package manager's cached packages and metadata.
    PackageManagerCache,
    /// Editor backup files (`*~`, `*.bak`) under /etc, /root, /home, /srv and /var.
    BackupFiles,
    /// Touch `/.unconfigured` (Red Hat's reconfiguration at next boot).
    FlagReconfiguration,
}

/// One operation.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// virt-sysprep's name.
    pub name: &'static str,
    /// Run when no --operations/--enable is given.
    pub default: bool,
    /// One line saying what it does.
    pub heading: &'static str,
    /// What it does.
    pub action: Action,
}

use Action::{Remove, Special as S};

/// Every operation we perform, sorted by name.
pub const OPERATIONS: &[Operation] = &[
    Operation {
        name: "abrt-data",
        default: true,
        heading: "Remove the crash reports ABRT collected",
        action: Remove(&["/var/spool/abrt/*", "/var/tmp/abrt/*"]),
    },
    Operation {
        name: "backup-files",
        default: true,
        heading: "Remove editor backup files (*~, *.bak)",
        action: S(Special::BackupFiles),
    },
    Operation {
        name: "bash-history",
        default: true,
        heading: "Remove the bash history of root and users",
        action: Remove(&["/root/.bash_history", "/home/*/.bash_history"]),
    },
    Operation {
        name: "blkid-tab",
        default: true,
        heading: "Remove blkid's device cache",
        action: Remove(&[
            "/var/run/blkid.tab",
            "/var/run/blkid.tab.old",
            "/etc/blkid/blkid.tab",
            "/etc/blkid/blkid.tab.old",
            "/etc/blkid.tab",
            "/etc/blkid.tab.old",
            "/dev/.blkid.tab",
            "/dev/.blkid.tab.old",
        ]),
    },
    Operation {
        name: "crash-data",
        default: true,
        heading: "Remove kdump's kernel crash dumps",
        action: Remove(&["/var/crash/*", "/var/log/dump/*"]),
    },
    Operation {
        name: "cron-spool",
        default: true,
        heading: "Remove users' cron and at jobs",
        action: Remove(&[
            "/var/spool/cron/*",
            "/var/spool/at/*",
            "/var/spool/atjobs/*",
            "/var/spool/atspool/*",
        ]),
    },
    Operation {
        name: "dhcp-client-state",
        default: true,
        heading: "Remove DHCP client leases",
        action: Remove(&[
            "/var/lib/dhclient/*",
            "/var/lib/dhcp/*",
            "/var/lib/dhcpcd/*",
            "/var/lib/NetworkManager/dhclient-*",
            "/var/lib/NetworkManager/internal-*",
            "/var/lib/NetworkManager/*.lease",
        ]),
    },
    Operation {
        name: "dhcp-server-state",
        default: true,
        heading: "Remove DHCP server leases",
        action: Remove(&["/var/lib/dhcpd/*"]),
    },
    Operation {
        name: "dovecot-data",
        default: true,
        heading: "Remove Dovecot's mail data",
        action: Remove(&["/var/lib/dovecot/*"]),
    },
    Operation {
        name: "firewall-rules",
        default: false,
        heading: "Remove the firewall rules",
        action: Remove(&[
            "/etc/sysconfig/iptables",
            "/etc/firewalld/services/*",
            "/etc/firewalld/zones/*",
        ]),
    },
    Operation {
        name: "flag-reconfiguration",
        default: false,
        heading: "Ask the guest to reconfigure itself at next boot",
        action: S(Special::FlagReconfiguration),
    },
    Operation {
        name: "ipa-client",
        default: true,
        heading: "Remove the FreeIPA client enrolment files",
        action: Remove(&[
            "/etc/ipa/ca.crt",
            "/etc/ipa/default.conf",
            "/var/lib/ipa-client/sysrestore/*",
            "/var/lib/ipa-client/pki/*",
        ]),
    },
    Operation {
        name: "kerberos-hostkeytab",
        default: true,
        heading: "Remove the Kerberos host keytab",
        action: Remove(&["/etc/krb5.keytab"]),
    },
    Operation {
        name: "logfiles",
        default: true,
        heading: "Remove log files and installer leftovers",
        action: Remove(LOGFILES),
    },
    Operation {
        name: "lvm-system-devices",
        default: true,
        heading: "Remove LVM's system.devices list",
        action: Remove(&["/etc/lvm/devices/system.devices"]),
    },
    Operation {
        name: "machine-id",
        default: true,
        heading: "Empty the machine ID (a new one is made at boot)",
        action: S(Special::MachineId),
    },
    Operation {
        name: "mail-spool",
        default: true,
        heading: "Remove mail from the local spool",
        action: Remove(&["/var/spool/mail/*", "/var/mail/*"]),
    },
    Operation {
        name: "net-hostname",
        default: true,
        heading: "Remove HOSTNAME and DHCP_HOSTNAME from ifcfg files",
        action: S(Special::NetHostname),
    },
    Operation {
        name: "net-hwaddr",
        default: true,
        heading: "Remove HWADDR (the MAC binding) from ifcfg files",
        action: S(Special::NetHwaddr),
    },
    Operation {
        name: "net-nmconn",
        default: true,
        heading: "Remove NetworkManager's local connection profiles",
        action: Remove(&["/etc/NetworkManager/system-connections/*.nmconnection"]),
    },
    Operation {
        name: "pacct-log",
        default: true,
        heading: "Remove process accounting logs",
        action: S(Special::PacctLog),
    },
    Operation {
        name: "package-manager-cache",
        default: true,
        heading: "Remove the package manager's cache",
        action: S(Special::PackageManagerCache),
    },
    Operation {
        name: "pam-data",
        default: true,
        heading: "Remove PAM's per-boot state",
        action: Remove(&[
            "/var/run/console/*",
            "/var/run/faillock/*",
            "/var/run/sepermit/*",
        ]),
    },
    Operation {
        name: "passwd-backups",
        default: true,
        heading: "Remove /etc/passwd- and the other account file backups",
        action: Remove(&[
            "/etc/group-",
            "/etc/gshadow-",
            "/etc/passwd-",
            "/etc/shadow-",
            "/etc/subuid-",
            "/etc/subgid-",
        ]),
    },
    Operation {
        name: "puppet-data-log",
        default: true,
        heading: "Remove Puppet's data and logs",
        action: Remove(&["/var/log/puppet/*", "/var/lib/puppet/*/*"]),
    },
    Operation {
        name: "rh-subscription-manager",
        default: true,
        heading: "Remove Red Hat subscription certificates",
        action: Remove(&["/etc/pki/consumer/*", "/etc/pki/entitlement/*"]),
    },
    Operation {
        name: "rhn-systemid",
        default: true,
        heading: "Remove the RHN system ID",
        action: Remove(&[
            "/etc/sysconfig/rhn/systemid",
            "/etc/sysconfig/rhn/osad-auth.conf",
        ]),
    },
    Operation {
        name: "rpm-db",
        default: true,
        heading: "Remove the RPM database's host-specific environment files",
        action: Remove(&["/var/lib/rpm/__db.*"]),
    },
    Operation {
        name: "samba-db-log",
        default: true,
        heading: "Remove Samba's databases and logs",
        action: Remove(&[
            "/var/log/samba/old/*",
            "/var/log/samba/*",
            "/var/lib/samba/*/*",
            "/var/lib/samba/*",
        ]),
    },
    Operation {
        name: "smolt-uuid",
        default: true,
        heading: "Remove the Smolt hardware UUID",
        action: Remove(&[
            "/etc/sysconfig/hw-uuid",
            "/etc/smolt/uuid",
            "/etc/smolt/hw-uuid",
        ]),
    },
    Operation {
        name: "ssh-hostkeys",
        default: true,
        heading: "Remove the SSH host keys (sshd makes new ones)",
        action: Remove(&["/etc/ssh/*_host_*"]),
    },
    Operation {
        name: "ssh-userdir",
        default: true,
        heading: "Remove users' .ssh directories",
        action: Remove(&["/root/.ssh", "/home/*/.ssh"]),
    },
    Operation {
        name: "sssd-db-log",
        default: true,
        heading: "Remove SSSD's caches and logs",
        action: Remove(&["/var/log/sssd/*", "/var/lib/sss/db/*"]),
    },
    Operation {
        name: "tmp-files",
        default: true,
        heading: "Remove temporary files",
        action: Remove(&["/tmp/*", "/tmp/.*", "/var/tmp/*", "/var/tmp/.*"]),
    },
    Operation {
        name: "udev-persistent-net",
        default: true,
        heading: "Remove udev's persistent network rules",
        action: Remove(&["/etc/udev/rules.d/70-persistent-net.rules"]),
    },
    Operation {
        name: "utmp",
        default: true,
        heading: "Remove the utmp login records",
        action: Remove(&["/var/run/utmp"]),
    },
    Operation {
        name: "yum-uuid",
        default: true,
        heading: "Remove yum's installation UUID",
        action: Remove(&["/var/lib/yum/uuid"]),
    },
    Operation {
        name: "zsh-history",
        default: true,
        heading: "Remove the zsh history of root and users",
        action: Remove(&["/root/.zsh_history", "/home/*/.zsh_history"]),
    },
];

/// virt-sysprep operations we do not perform, with the reason given when one is asked for.
pub const NOT_PERFORMED: &[(&str, &str)] = &[
    (
        "lvm-uuids",
        "changes LVM metadata on the disk, not files; not supported yet",
    ),
    (
        "fs-uuids",
        "changes filesystem superblocks, not files; not supported yet",
    ),
    (
        "script",
        "runs host scripts on a mounted guest; use vdisk mount and run them yourself",
    ),
    (
        "customize",
        "give the customize options (--hostname, ...) directly to vdisk sysprep",
    ),
    ("user-account", "not supported yet"),
    ("ca-certificates", "not supported yet"),
    ("kerberos-data", "not supported yet"),
];

/// The logfiles operation's globs.
pub const LOGFILES: &[&str] = &[
    "/root/anaconda-ks.cfg",
    "/root/anaconda-post.log",
    "/root/initial-setup-ks.cfg",
    "/root/install.log",
    "/root/install.log.syslog",
    "/root/original-ks.cfg",
    "/var/log/anaconda/*",
    "/var/log/anaconda.*",
    "/var/log/installer/*",
    "/var/log/*.log*",
    "/var/log/apt/*",
    "/var/log/audit/*",
    "/var/log/btmp*",
    "/var/log/cron*",
    "/var/log/daemon.log*",
    "/var/log/debug*",
    "/var/log/dmesg*",
    "/var/log/dnf*",
    "/var/log/faillog*",
    "/var/log/firewalld*",
    "/var/log/grubby*",
    "/var/log/httpd/*log",
    "/var/log/journal/*",
    "/var/log/lastlog*",
    "/var/log/libvirt/libvirtd.log",
    "/var/log/libvirt/qemu/*.log",
    "/var/log/maillog*",
    "/var/log/mail/*",
    "/var/log/messages*",
    "/var/log/ntpstats/*",
    "/var/log/sa/*",
    "/var/log/secure*",
    "/var/log/spooler*",
    "/var/log/syslog*",
    "/var/log/tallylog*",
    "/var/log/tuned/tuned.log",
    "/var/log/up2date*",
    "/var/log/wtmp*",
    "/var/log/Xorg.*",
    "/var/log/xferlog*",
];

/// `--list-operations`, in virt-sysprep's format: `NAME * HEADING` for an operation run by
/// default, `NAME   HEADING` for one run only when asked.
pub fn list_operations() -> String {
    let mut s = String::new();
    for op in OPERATIONS {
        s.push_str(&format!(
            "{} {} {}\n",
            op.name,
            if op.default { "*" } else { " " },
            op.heading
        ));
    }
    s
}

fn find(name: &str) -> Result<&'static Operation> {
    if let Some(op) = OPERATIONS.iter().find(|o| o.name == name) {
        return Ok(op);
    }
    if let Some((_, why)) = NOT_PERFORMED.iter().find(|(n, _)| *n == name) {
        return Err(Error::unsupported(format!(
            "sysprep operation {name}: {why}"
        )));
    }
    Err(Error::invalid(format!(
        "sysprep operation '{name}' does not exist (see --list-operations)"
    )))
}

/// The operations to run, from virt-sysprep's `--operations` list (each item `defaults`,
/// `all`, `NAME` to add or `-NAME` to take away, applied left to right starting from
/// nothing) or, with none given, the defaults. `--enable` is a list of plain names.
pub fn select(operations: &[String]) -> Result<Vec<&'static Operation>> {
    let mut set: Vec<&'static str> = Vec::new();
    if operations.is_empty() {
        set = OPERATIONS
            .iter()
            .filter(|o| o.default)
            .map(|o| o.name)
            .collect();
    }
    for list in operations {
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item {
                "defaults" => set.extend(OPERATIONS.iter().filter(|o| o.default).map(|o| o.name)),
                "all" => set.extend(OPERATIONS.iter().map(|o| o.name)),
                "none" => set.clear(),
                _ => match item.strip_prefix('-') {
                    Some(n) => {
                        // Taking away an operation we never perform is no error.
                        if !NOT_PERFORMED.iter().any(|(x, _)| *x == n) {
                            find(n)?;
                        }
                        set.retain(|s| *s != n);
                    }
                    None => set.push(find(item)?.name),
                },
            }
        }
    }
    set.sort_unstable();
    set.dedup();
    Ok(OPERATIONS
        .iter()
        .filter(|o| set.contains(&o.name))
        .collect())
}

fn edit_ifcfg(g: &mut dyn GuestFiles, keys: &[&str]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for f in glob::expand(g, "/etc/sysconfig/network-scripts/ifcfg-*")? {
        if g.stat(&f, false)?.map(|m| m.kind) != Some(Kind::File) {
            continue;
        }
        let Some(old) = super::read_text(g, &f)? else {
            continue;
        };
        let changes: Vec<(&str, Option<&str>)> = keys.iter().map(|k| (*k, None)).collect();
        let new = shellvars::edit(&old, &changes);
        if new != old {
            g.write(&f, new.as_bytes(), NewFile::root(0o644))?;
            out.push(f);
        }
    }
    Ok(out)
}

/// Bounds for backup-files' walk.
const MAX_WALK: usize = 1_000_000;

fn walk_backups(
    g: &mut dyn GuestFiles,
    dir: &str,
    depth: usize,
    seen: &mut usize,
    out: &mut Vec<String>,
) -> Result<()> {
    if depth > 64 {
        return Ok(());
    }
    let Some(names) = g.list(dir)? else {
        return Ok(());
    };
    for n in names {
        *seen += 1;
        if *seen > MAX_WALK {
            return Err(Error::invalid(format!(
                "backup-files: more than {MAX_WALK} entries under {dir}"
            )));
        }
        let p = if dir == "/" {
            format!("/{n}")
        } else {
            format!("{dir}/{n}")
        };
        match g.stat(&p, false)?.map(|m| m.kind) {
            Some(Kind::Dir) => walk_backups(g, &p, depth + 1, seen, out)?,
            Some(Kind::File) if n.ends_with('~') || n.ends_with(".bak") => {
                g.remove_all(&p)?;
                out.push(p);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs one operation; returns the paths removed or changed.
pub fn perform(g: &mut dyn GuestFiles, os: &GuestOs, op: &Operation) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let remove_globs =
        |g: &mut dyn GuestFiles, globs: &[&str], out: &mut Vec<String>| -> Result<()> {
            for pat in globs {
                for p in glob::expand(g, pat)? {
                    if g.remove_all(&p)? {
                        out.push(p);
                    }
                }
            }
            Ok(())
        };
    match op.action {
        Action::Remove(globs) => remove_globs(g, globs, &mut out)?,
        Action::Special(s) => match s {
            Special::MachineId => {
                if g.stat("/etc/machine-id", false)?.map(|m| m.kind) == Some(Kind::File) {
                    g.truncate("/etc/machine-id", 0)?;
                    out.push("/etc/machine-id".into());
                }
                if g.stat("/var/lib/dbus/machine-id", false)?.map(|m| m.kind) == Some(Kind::File) {
                    g.remove_all("/var/lib/dbus/machine-id")?;
                    out.push("/var/lib/dbus/machine-id".into());
                }
            }
            Special::NetHwaddr => out = edit_ifcfg(g, &["HWADDR"])?,
            Special::NetHostname => out = edit_ifcfg(g, &["HOSTNAME", "DHCP_HOSTNAME"])?,
            Special::PacctLog => {
                for dir in ["/var/account", "/var/log/account"] {
                    if g.stat(dir, true)?.map(|m| m.kind) != Some(Kind::Dir) {
                        continue;
                    }
                    let before = out.len();
                    remove_globs(g, &[&format!("{dir}/pacct*")], &mut out)?;
                    if out.len() > before {
                        let p = format!("{dir}/pacct");
                        g.write(&p, b"", NewFile::root(0o600))?;
                    }
                }
            }
            Special::PackageManagerCache => {
                let globs: &[&str] = match os.package_management.as_deref() {
                    Some("yum") => &["/var/cache/yum/*"],
                    Some("dnf") => &["/var/cache/dnf/*"],
                    Some("apt") => &["/var/cache/apt/archives/*.deb", "/var/cache/apt/*.bin"],
                    Some("zypper") => &["/var/cache/zypp/*"],
                    Some("pacman") => &["/var/cache/pacman/pkg/*"],
                    Some("apk") => &["/var/cache/apk/*"],
                    _ => &[],
                };
                remove_globs(g, globs, &mut out)?;
            }
            Special::BackupFiles => {
                let mut seen = 0;
                for d in ["/etc", "/root", "/home", "/srv", "/var"] {
                    if g.stat(d, false)?.map(|m| m.kind) == Some(Kind::Dir) {
                        walk_backups(g, d, 0, &mut seen, &mut out)?;
                    }
                }
            }
            Special::FlagReconfiguration => {
                g.touch("/.unconfigured", NewFile::root(0o644))?;
                out.push("/.unconfigured".into());
            }
        },
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customize::mem::MemGuest;

    #[test]
    fn listing_and_selection() {
        let l = list_operations();
        assert!(l.contains("machine-id * "), "{l}");
        assert!(l.contains("flag-reconfiguration   "), "{l}");
        let names: Vec<&str> = OPERATIONS.iter().map(|o| o.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "kept in name order");
        assert_eq!(
            select(&[]).unwrap().len(),
            OPERATIONS.iter().filter(|o| o.default).count()
        );
        let s = select(&["defaults,-ssh-hostkeys,flag-reconfiguration,-lvm-uuids".into()]).unwrap();
        assert!(s.iter().all(|o| o.name != "ssh-hostkeys"));
        assert!(s.iter().any(|o| o.name == "flag-reconfiguration"));
        assert!(s.iter().any(|o| o.name == "abrt-data"));
        let s = select(&["machine-id".into()]).unwrap();
        assert_eq!(s.len(), 1);
        let e = select(&["lvm-uuids".into()]).unwrap_err();
        assert!(e.message().contains("lvm-uuids"), "{e}");
        assert!(select(&["frob".into()]).is_err());
    }

    #[test]
    fn defaults_on_a_centos_like_tree() {
        let mut g = MemGuest::new();
        g.add_file(
            "/etc/machine-id",
            b"0123456789abcdef0123456789abcdef\n",
            0o444,
        );
        g.add_file("/etc/ssh/ssh_host_rsa_key", b"k", 0o600);
        g.add_file("/etc/ssh/ssh_host_rsa_key.pub", b"k", 0o644);
        g.add_file("/etc/ssh/sshd_config", b"c", 0o600);
        g.add_file(
            "/etc/sysconfig/network-scripts/ifcfg-eth0",
            b"DEVICE=eth0\nHWADDR=52:54:00:01:02:03\nONBOOT=yes\n",
            0o644,
        );
        g.add_file("/etc/udev/rules.d/70-persistent-net.rules", b"r", 0o644);
        g.add_file("/var/lib/dhclient/dhclient-eth0.leases", b"l", 0o644);
        g.add_file("/var/log/messages", b"m", 0o600);
        g.add_file("/var/log/yum.log", b"y", 0o600);
        g.add_dir("/var/log/audit", 0o700);
        g.add_file("/var/log/audit/audit.log", b"a", 0o600);
        g.add_file("/root/.bash_history", b"h", 0o600);
        g.add_file("/tmp/.X0-lock", b"x", 0o644);
        g.add_file("/tmp/junk", b"x", 0o644);
        g.add_file("/var/lib/yum/uuid", b"u", 0o644);
        g.add_file("/var/cache/yum/x86_64/7/base/repomd.xml", b"r", 0o644);
        g.add_file("/var/run/utmp", b"u", 0o664);
        g.add_file("/etc/sysconfig/rhn/systemid", b"s", 0o600);
        g.add_file("/var/crash/127.0.0.1-2020/vmcore", b"c", 0o600);
        g.add_file("/etc/hosts~", b"old", 0o644);
        g.add_file("/etc/passwd-", b"old", 0o644);
        let os = GuestOs {
            os_type: "linux".into(),
            distro: "centos".into(),
            major_version: 7,
            package_management: Some("yum".into()),
        };
        for op in select(&[]).unwrap() {
            perform(&mut g, &os, op).unwrap();
        }
        assert_eq!(g.file("/etc/machine-id").unwrap(), b"");
        assert_eq!(
            g.stat("/etc/machine-id", false).unwrap().unwrap().mode,
            0o444
        );
        assert_eq!(
            g.text("/etc/sysconfig/network-scripts/ifcfg-eth0").unwrap(),
            "DEVICE=eth0\nONBOOT=yes\n"
        );
        for gone in [
            "/etc/ssh/ssh_host_rsa_key",
            "/etc/ssh/ssh_host_rsa_key.pub",
            "/etc/udev/rules.d/70-persistent-net.rules",
            "/var/lib/dhclient/dhclient-eth0.leases",
            "/var/log/messages",
            "/var/log/yum.log",
            "/var/log/audit/audit.log",
            "/root/.bash_history",
            "/tmp/.X0-lock",
            "/tmp/junk",
            "/var/lib/yum/uuid",
            "/var/cache/yum/x86_64",
            "/var/run/utmp",
            "/etc/sysconfig/rhn/systemid",
            "/var/crash/127.0.0.1-2020",
            "/etc/hosts~",
            "/etc/passwd-",
        ] {
            assert!(g.stat(gone, false).unwrap().is_none(), "{gone} still there");
        }
        for kept in [
            "/etc/ssh/sshd_config",
            "/var/log/audit",
            "/tmp",
            "/var/cache/yum",
        ] {
            assert!(g.stat(kept, false).unwrap().is_some(), "{kept} removed");
        }
    }
}
