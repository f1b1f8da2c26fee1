//! The customize operations, parsed from virt-customize's command-line flags (same names,
//! same `:`-separated arguments) or from a `--commands-from-file` file, kept in command-line
//! order.
//!
//! Operations that need the guest's own programs to run (`--run`, `--run-command`,
//! `--install`, `--update`, ...) are refused: vdisk never starts the guest, so it can only
//! arrange for them to run at the guest's first boot (`--firstboot`, `--firstboot-command`,
//! `--firstboot-install`).

use std::net::IpAddr;
use std::path::PathBuf;

use vdisk_block::{Error, Result};

use super::network::{MacSpec, StaticNet};
use super::password::Selector;
use super::ssh::KeySource;

/// One customization, in virt-customize's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// `--append-line FILE:LINE`: add LINE (and a newline before it if the file does not end
    /// with one); the file is created if missing.
    AppendLine {
        /// Guest file.
        file: String,
        /// The line, without its newline.
        line: String,
    },
    /// `--chmod PERMISSIONS:FILE` (octal).
    Chmod {
        /// Permission bits.
        mode: u32,
        /// Guest path.
        path: String,
    },
    /// `--chown UID:GID:PATH`.
    Chown {
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// Guest path.
        path: String,
    },
    /// `--copy SOURCE:DEST`: copy inside the guest (recursively for a directory).
    Copy {
        /// Guest source.
        src: String,
        /// Guest destination.
        dest: String,
    },
    /// `--copy-in LOCALPATH:REMOTEDIR`: copy a host file or tree into a guest directory.
    CopyIn {
        /// Host path.
        local: PathBuf,
        /// Guest directory (created if missing).
        remote_dir: String,
    },
    /// `--delete PATH`: remove files or trees (globs allowed).
    Delete(String),
    /// `--edit FILE:EXPR`: a virt-edit expression applied to each line.
    Edit {
        /// Guest file.
        file: String,
        /// The expression (`s/RE/REPL/FLAGS`).
        expr: String,
    },
    /// `--firstboot SCRIPT`: a host script installed to run once at first boot.
    FirstbootScript(PathBuf),
    /// `--firstboot-command 'CMD+ARGS'`.
    FirstbootCommand(String),
    /// `--firstboot-install PKG,PKG..`: packages installed at first boot by the guest's
    /// package manager.
    FirstbootInstall(Vec<String>),
    /// `--hostname HOSTNAME`.
    Hostname(String),
    /// `--link TARGET:LINK[:LINK..]`.
    Link {
        /// What the links point to.
        target: String,
        /// The links made.
        links: Vec<String>,
    },
    /// `--mkdir DIR` (with parents).
    Mkdir(String),
    /// `--move SOURCE:DEST`.
    Move {
        /// Guest source.
        src: String,
        /// Guest destination.
        dest: String,
    },
    /// `--password USER:SELECTOR`; `--root-password SELECTOR` is this with user root.
    /// Applied after all other operations, as virt-customize does.
    Password {
        /// Account name.
        user: String,
        /// How the password is chosen.
        selector: Selector,
    },
    /// `--scrub FILE`: overwrite the file's data, then remove it.
    Scrub(String),
    /// `--ssh-inject USER[:SELECTOR]`.
    SshInject {
        /// Account name.
        user: String,
        /// Where the key comes from.
        key: KeySource,
    },
    /// `--timezone TIMEZONE`.
    Timezone(String),
    /// `--touch FILE`.
    Touch(String),
    /// `--truncate FILE`: cut to zero length.
    Truncate(String),
    /// `--truncate-recursive PATH`: every regular file below PATH cut to zero length.
    TruncateRecursive(String),
    /// `--upload FILE:DEST`: a host file into the guest (mode and owner copied).
    Upload {
        /// Host file.
        local: PathBuf,
        /// Guest file or directory.
        dest: String,
    },
    /// `--write FILE:CONTENT`.
    Write {
        /// Guest file.
        file: String,
        /// The whole new content.
        content: String,
    },
    /// `--network-static IFACE=ADDR/PREFIX[,gw=GW][,dns=DNS[,DNS..]]` (vdisk's own).
    NetworkStatic(StaticNet),
    /// `--network-dhcp IFACE` (vdisk's own).
    NetworkDhcp(String),
    /// `--mac IFACE=MAC|random` (vdisk's own).
    Mac {
        /// Interface name.
        iface: String,
        /// The address, or a random one.
        mac: MacSpec,
    },
}

/// The SHA-crypt variant `--password-crypto` chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Crypto {
    /// `$5$` SHA-256 crypt.
    Sha256,
    /// `$6$` SHA-512 crypt (the default, as virt-customize's on current guests).
    #[default]
    Sha512,
}

/// A parsed command line: the operations in order, and the flags that change how they run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Operations in command-line order.
    pub ops: Vec<Op>,
    /// `-n`/`--dry-run`: do everything, write nothing.
    pub dry_run: bool,
    /// `--selinux-relabel` (Some(true)), `--no-selinux-relabel` (Some(false)), or neither.
    pub selinux_relabel: Option<bool>,
    /// `--password-crypto`.
    pub crypto: Crypto,
    /// `-q`/`--quiet`.
    pub quiet: bool,
}

/// An argument the plan does not know, handed back to the caller in order: `name` is the
/// option as given ("-a", "--format"), or "" for a positional argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extra {
    /// The option name, or "" for a positional argument.
    pub name: String,
    /// Its value, if it takes one (always, for a positional).
    pub value: Option<String>,
}

/// How an option's argument is used.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arity {
    Flag,
    Value,
}

/// virt-customize's operations that run guest programs, with what to use instead.
const REFUSED: &[(&str, &str)] = &[
    ("run", "--firstboot SCRIPT"),
    ("run-command", "--firstboot-command 'CMD+ARGS'"),
    ("install", "--firstboot-install PKG,PKG.."),
    (
        "uninstall",
        "--firstboot-command 'yum -y remove PKG' (or apt-get, dnf, ...)",
    ),
    (
        "update",
        "--firstboot-command 'yum -y update' (or apt-get, dnf, ...)",
    ),
    (
        "sm-register",
        "--firstboot-command 'subscription-manager register ...'",
    ),
    (
        "sm-unregister",
        "--firstboot-command 'subscription-manager unregister'",
    ),
    (
        "sm-attach",
        "--firstboot-command 'subscription-manager attach ...'",
    ),
    (
        "sm-remove",
        "--firstboot-command 'subscription-manager remove --all'",
    ),
    ("inject-qemu-ga", "--upload and --firstboot-command"),
    ("inject-virtio-win", "--upload and --firstboot-command"),
    ("inject-blnsvr", "--upload and --firstboot-command"),
];

/// Options of virt-customize that take a value and are refused for another reason.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "tar-in",
        "not supported yet; unpack on the host and use --copy-in",
    ),
    (
        "sm-credentials",
        "goes with --sm-register, which runs guest programs",
    ),
    ("attach", "there is no appliance to attach a disk to"),
    ("attach-format", "there is no appliance to attach a disk to"),
    ("smp", "there is no appliance to give CPUs to"),
    ("memsize", "there is no appliance to give memory to"),
];

fn arity(name: &str) -> Option<Arity> {
    Some(match name {
        "dry-run" | "selinux-relabel" | "no-selinux-relabel" | "no-logfile" | "quiet"
        | "verbose" | "network" | "no-network" => Arity::Flag,
        "append-line" | "chmod" | "chown" | "commands-from-file" | "copy" | "copy-in"
        | "delete" | "edit" | "firstboot" | "firstboot-command" | "firstboot-install"
        | "hostname" | "link" | "mkdir" | "move" | "password" | "root-password" | "scrub"
        | "ssh-inject" | "timezone" | "touch" | "truncate" | "truncate-recursive" | "upload"
        | "write" | "password-crypto" | "network-static" | "network-dhcp" | "mac" => Arity::Value,
        _ => return None,
    })
}

fn split1<'a>(opt: &str, v: &'a str, what: &str) -> Result<(&'a str, &'a str)> {
    v.split_once(':')
        .ok_or_else(|| Error::invalid(format!("--{opt} '{v}': expected {what}")))
}

fn guest_path(opt: &str, p: &str) -> Result<String> {
    if !p.starts_with('/') {
        return Err(Error::invalid(format!(
            "--{opt} '{p}': the guest path must be absolute"
        )));
    }
    if p.contains('\0') {
        return Err(Error::invalid(format!("--{opt}: a path cannot hold NUL")));
    }
    Ok(p.to_string())
}

/// Parses a mode as virt-customize's --chmod reads it: octal with a leading `0` ("0755"),
/// decimal without one ("493"), as OCaml's int_of_string after its "0" to "0o" rewrite.
pub fn parse_mode(opt: &str, s: &str) -> Result<u32> {
    let v = match s.strip_prefix('0') {
        Some("") => Some(0),
        Some(oct) => u32::from_str_radix(oct.strip_prefix('o').unwrap_or(oct), 8).ok(),
        None => s.parse::<u32>().ok(),
    };
    v.filter(|m| *m <= 0o7777).ok_or_else(|| {
        Error::invalid(format!(
            "--{opt} '{s}': expected a mode (octal with a leading 0, such as 0755)"
        ))
    })
}

impl Plan {
    /// Parses virt-customize options; any other argument is an error.
    pub fn parse<I, S>(args: I) -> Result<Plan>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let (plan, extra) = Plan::parse_with(args, &[])?;
        if let Some(e) = extra.first() {
            return Err(Error::invalid(if e.name.is_empty() {
                format!(
                    "unexpected argument '{}'",
                    e.value.as_deref().unwrap_or_default()
                )
            } else {
                format!("unknown option '{}'", e.name)
            }));
        }
        Ok(plan)
    }

    /// Parses virt-customize options, handing back in order the caller's own options
    /// (`known`: name as written, e.g. "-a" or "--format", and whether it takes a value) and
    /// positional arguments. Options neither side knows are errors.
    pub fn parse_with<I, S>(args: I, known: &[(&str, bool)]) -> Result<(Plan, Vec<Extra>)>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let args: Vec<String> = args.into_iter().map(|s| s.as_ref().to_string()).collect();
        let mut plan = Plan::default();
        let mut extra = Vec::new();
        let mut i = 0;
        let mut only_positional = false;
        while i < args.len() {
            let a = &args[i];
            i += 1;
            if only_positional || a == "-" || !a.starts_with('-') {
                extra.push(Extra {
                    name: String::new(),
                    value: Some(a.clone()),
                });
                continue;
            }
            if a == "--" {
                only_positional = true;
                continue;
            }
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
                _ => (a.clone(), None),
            };
            if let Some(&(_, takes)) = known.iter().find(|(k, _)| *k == name) {
                let value = if takes {
                    match inline {
                        Some(v) => Some(v),
                        None => {
                            let v = args.get(i).cloned().ok_or_else(|| {
                                Error::invalid(format!("option '{name}' needs an argument"))
                            })?;
                            i += 1;
                            Some(v)
                        }
                    }
                } else {
                    None
                };
                extra.push(Extra { name, value });
                continue;
            }
            let long = match name.as_str() {
                "-n" => "dry-run".to_string(),
                "-q" => "quiet".to_string(),
                "-v" | "-x" => "verbose".to_string(),
                n if n.starts_with("--") => n[2..].to_string(),
                n => return Err(Error::invalid(format!("unknown option '{n}'"))),
            };
            if let Some((_, instead)) = REFUSED.iter().find(|(n, _)| *n == long) {
                return Err(Error::unsupported(format!(
                    "--{long} runs programs inside the guest, which vdisk never starts; \
                     to run it at the guest's first boot use {instead}"
                )));
            }
            if let Some((_, why)) = UNSUPPORTED.iter().find(|(n, _)| *n == long) {
                return Err(Error::unsupported(format!("--{long}: {why}")));
            }
            let Some(ar) = arity(&long) else {
                return Err(Error::invalid(format!("unknown option '{name}'")));
            };
            let value = match ar {
                Arity::Flag => {
                    if inline.is_some() {
                        return Err(Error::invalid(format!("option '--{long}' takes no value")));
                    }
                    None
                }
                Arity::Value => match inline {
                    Some(v) => Some(v),
                    None => {
                        let v = args.get(i).cloned().ok_or_else(|| {
                            Error::invalid(format!("option '--{long}' needs an argument"))
                        })?;
                        i += 1;
                        Some(v)
                    }
                },
            };
            plan.add(&long, value.as_deref(), 0)?;
        }
        Ok((plan, extra))
    }

    /// Applies one option (without its dashes) to the plan. `depth` counts nested
    /// --commands-from-file.
    fn add(&mut self, name: &str, value: Option<&str>, depth: u32) -> Result<()> {
        let v = value.unwrap_or_default();
        let op = match name {
            "dry-run" => {
                self.dry_run = true;
                return Ok(());
            }
            "selinux-relabel" => {
                self.selinux_relabel = Some(true);
                return Ok(());
            }
            "no-selinux-relabel" => {
                self.selinux_relabel = Some(false);
                return Ok(());
            }
            "quiet" => {
                self.quiet = true;
                return Ok(());
            }
            // No log file is written (nothing runs in the guest), and there is no appliance
            // network: these change nothing.
            "no-logfile" | "verbose" | "network" | "no-network" => return Ok(()),
            "password-crypto" => {
                self.crypto = match v {
                    "sha512" => Crypto::Sha512,
                    "sha256" => Crypto::Sha256,
                    "md5" => {
                        return Err(Error::unsupported(
                            "--password-crypto md5: MD5 crypt is not supported (use sha512)",
                        ))
                    }
                    other => {
                        return Err(Error::invalid(format!(
                            "--password-crypto '{other}': expected sha512, sha256 or md5"
                        )))
                    }
                };
                return Ok(());
            }
            "commands-from-file" => {
                if depth >= 8 {
                    return Err(Error::invalid(format!(
                        "--commands-from-file {v}: nested too deeply"
                    )));
                }
                let text = std::fs::read_to_string(v)
                    .map_err(|e| Error::io("read", None, e).with_path(v))?;
                return self
                    .add_commands(&text, depth + 1)
                    .map_err(|e| e.with_path(v));
            }
            "append-line" => {
                let (f, l) = split1(name, v, "FILE:LINE")?;
                Op::AppendLine {
                    file: guest_path(name, f)?,
                    line: l.to_string(),
                }
            }
            "chmod" => {
                let (m, p) = split1(name, v, "PERMISSIONS:FILE")?;
                Op::Chmod {
                    mode: parse_mode(name, m)?,
                    path: guest_path(name, p)?,
                }
            }
            "chown" => {
                let mut it = v.splitn(3, ':');
                let (Some(u), Some(g), Some(p)) = (it.next(), it.next(), it.next()) else {
                    return Err(Error::invalid(format!(
                        "--chown '{v}': expected UID:GID:PATH"
                    )));
                };
                let num = |s: &str| {
                    s.parse::<u32>().map_err(|_| {
                        Error::invalid(format!("--chown '{v}': '{s}' is not a numeric id"))
                    })
                };
                Op::Chown {
                    uid: num(u)?,
                    gid: num(g)?,
                    path: guest_path(name, p)?,
                }
            }
            "copy" | "move" => {
                let (s, d) = split1(name, v, "SOURCE:DEST")?;
                let (src, dest) = (guest_path(name, s)?, guest_path(name, d)?);
                if name == "copy" {
                    Op::Copy { src, dest }
                } else {
                    Op::Move { src, dest }
                }
            }
            "copy-in" => {
                let (l, r) = split1(name, v, "LOCALPATH:REMOTEDIR")?;
                Op::CopyIn {
                    local: PathBuf::from(l),
                    remote_dir: guest_path(name, r)?,
                }
            }
            "delete" => Op::Delete(guest_path(name, v)?),
            "edit" => {
                let (f, e) = split1(name, v, "FILE:EXPR")?;
                Op::Edit {
                    file: guest_path(name, f)?,
                    expr: e.to_string(),
                }
            }
            "firstboot" => Op::FirstbootScript(PathBuf::from(v)),
            "firstboot-command" => Op::FirstbootCommand(v.to_string()),
            "firstboot-install" => {
                let pkgs: Vec<String> = v
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect();
                if pkgs.is_empty() {
                    return Err(Error::invalid("--firstboot-install: no packages given"));
                }
                Op::FirstbootInstall(pkgs)
            }
            "hostname" => Op::Hostname(super::hostname::check(v)?),
            "link" => {
                let mut parts = v.split(':');
                let target = parts.next().unwrap_or_default().to_string();
                let links = parts
                    .map(|l| guest_path(name, l))
                    .collect::<Result<Vec<_>>>()?;
                if target.is_empty() || links.is_empty() {
                    return Err(Error::invalid(format!(
                        "--link '{v}': expected TARGET:LINK[:LINK..]"
                    )));
                }
                Op::Link { target, links }
            }
            "mkdir" => Op::Mkdir(guest_path(name, v)?),
            "password" => {
                let (u, s) = split1(name, v, "USER:SELECTOR")?;
                Op::Password {
                    user: super::password::check_user(u)?,
                    selector: s.parse()?,
                }
            }
            "root-password" => Op::Password {
                user: "root".into(),
                selector: v.parse()?,
            },
            "scrub" => Op::Scrub(guest_path(name, v)?),
            "ssh-inject" => {
                let (u, sel) = match v.split_once(':') {
                    Some((u, s)) => (u, Some(s)),
                    None => (v, None),
                };
                Op::SshInject {
                    user: super::password::check_user(u)?,
                    key: KeySource::parse(sel)?,
                }
            }
            "timezone" => Op::Timezone(super::timezone::check(v)?),
            "touch" => Op::Touch(guest_path(name, v)?),
            "truncate" => Op::Truncate(guest_path(name, v)?),
            "truncate-recursive" => Op::TruncateRecursive(guest_path(name, v)?),
            "upload" => {
                let (l, d) = split1(name, v, "FILE:DEST")?;
                Op::Upload {
                    local: PathBuf::from(l),
                    dest: guest_path(name, d)?,
                }
            }
            "write" => {
                let (f, c) = split1(name, v, "FILE:CONTENT")?;
                Op::Write {
                    file: guest_path(name, f)?,
                    content: c.to_string(),
                }
            }
            "network-static" => Op::NetworkStatic(v.parse()?),
            "network-dhcp" => Op::NetworkDhcp(super::network::check_iface(v)?),
            "mac" => {
                let (iface, mac) = v.split_once('=').ok_or_else(|| {
                    Error::invalid(format!("--mac '{v}': expected IFACE=MAC or IFACE=random"))
                })?;
                Op::Mac {
                    iface: super::network::check_iface(iface)?,
                    mac: mac.parse()?,
                }
            }
            other => {
                if let Some((_, instead)) = REFUSED.iter().find(|(n, _)| *n == other) {
                    return Err(Error::unsupported(format!(
                        "{other} runs programs inside the guest, which vdisk never starts; \
                         to run it at the guest's first boot use {instead}"
                    )));
                }
                return Err(Error::invalid(format!("unknown operation '{other}'")));
            }
        };
        self.ops.push(op);
        Ok(())
    }

    /// Adds the operations of a `--commands-from-file` text: one `NAME ARGUMENT` per line
    /// (the option's name without its dashes, then one space, then the argument exactly as
    /// on the command line, spaces included); `#` starts a comment line, blank lines are
    /// skipped, and a line ending in `\` continues on the next.
    pub fn add_commands(&mut self, text: &str, depth: u32) -> Result<()> {
        let mut pending = String::new();
        let mut first_line = 0usize;
        for (n, raw) in super::lines(text).enumerate() {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if pending.is_empty() {
                first_line = n + 1;
                let t = line.trim_start();
                if t.is_empty() || t.starts_with('#') {
                    continue;
                }
            }
            if let Some(cont) = line.strip_suffix('\\') {
                pending.push_str(cont);
                pending.push('\n');
                continue;
            }
            pending.push_str(line);
            let cmd = std::mem::take(&mut pending);
            let cmd = cmd.trim_start();
            let (name, arg) = match cmd.split_once([' ', '\t']) {
                Some((n, a)) => (n, Some(a)),
                None => (cmd, None),
            };
            let name = name.trim_start_matches('-');
            let at = |e: Error| Error::invalid(format!("line {first_line}: {}", e.message()));
            match arity(name) {
                Some(Arity::Flag) => {
                    if arg.is_some_and(|a| !a.trim().is_empty()) {
                        return Err(at(Error::invalid(format!("'{name}' takes no argument"))));
                    }
                    self.add(name, None, depth).map_err(at)?;
                }
                Some(Arity::Value) => {
                    let Some(a) = arg else {
                        return Err(at(Error::invalid(format!("'{name}' needs an argument"))));
                    };
                    self.add(name, Some(a), depth).map_err(at)?;
                }
                None => self.add(name, arg, depth).map_err(at)?,
            }
        }
        if !pending.is_empty() {
            return Err(Error::invalid(format!(
                "line {first_line}: the file ends inside a continued line"
            )));
        }
        Ok(())
    }

    /// The operations whose results depend on the guest's programs being able to run at
    /// boot (firstboot), for callers that want to warn about SysV-less guests.
    pub fn has_firstboot(&self) -> bool {
        self.ops.iter().any(|o| {
            matches!(
                o,
                Op::FirstbootScript(_) | Op::FirstbootCommand(_) | Op::FirstbootInstall(_)
            )
        })
    }
}

/// Parses an IP address with a prefix length ("192.168.1.5/24", "fd00::5/64").
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8)> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| Error::invalid(format!("'{s}': expected ADDRESS/PREFIX")))?;
    let addr: IpAddr = a
        .parse()
        .map_err(|_| Error::invalid(format!("'{a}' is not an IP address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = p
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| Error::invalid(format!("'{p}': expected a prefix length 0-{max}")))?;
    Ok((addr, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customize::network::Mac;

    #[test]
    fn order_and_argument_splitting() {
        let p = Plan::parse([
            "--hostname",
            "test02",
            "--write=/etc/motd:hello: world",
            "--chmod",
            "0640:/etc/motd",
            "--link",
            "/usr/share/zoneinfo/UTC:/etc/localtime:/etc/lt2",
            "--chown",
            "1000:100:/home/a:b",
            "--root-password",
            "password:s3cret:x",
            "-n",
            "--mac",
            "eth0=random",
        ])
        .unwrap();
        assert!(p.dry_run);
        assert_eq!(
            p.ops,
            vec![
                Op::Hostname("test02".into()),
                Op::Write {
                    file: "/etc/motd".into(),
                    content: "hello: world".into()
                },
                Op::Chmod {
                    mode: 0o640,
                    path: "/etc/motd".into()
                },
                Op::Link {
                    target: "/usr/share/zoneinfo/UTC".into(),
                    links: vec!["/etc/localtime".into(), "/etc/lt2".into()]
                },
                Op::Chown {
                    uid: 1000,
                    gid: 100,
                    path: "/home/a:b".into()
                },
                Op::Password {
                    user: "root".into(),
                    selector: Selector::Password("s3cret:x".into())
                },
                Op::Mac {
                    iface: "eth0".into(),
                    mac: MacSpec::Random
                },
            ]
        );
    }

    #[test]
    fn guest_programs_are_refused_naming_firstboot() {
        for (args, want) in [
            (vec!["--run-command", "echo hi"], "--firstboot-command"),
            (vec!["--run", "x.sh"], "--firstboot SCRIPT"),
            (vec!["--install", "vim"], "--firstboot-install"),
            (vec!["--update"], "--firstboot-command"),
            (vec!["--uninstall", "vim"], "--firstboot-command"),
        ] {
            let e = Plan::parse(args.clone()).unwrap_err();
            assert!(matches!(e, Error::Unsupported { .. }), "{args:?}: {e}");
            let m = e.message();
            assert!(m.contains(want), "{args:?}: {m}");
            assert!(m.contains(args[0]), "{args:?}: {m}");
        }
        let e = Plan::parse(["--tar-in", "a.tar:/"]).unwrap_err();
        assert!(e.message().contains("--tar-in"), "{e}");
    }

    #[test]
    fn bad_arguments() {
        for args in [
            vec!["--chmod", "0999:/x"],
            vec!["--chmod", "9999:/x"],
            vec!["--chmod", "0644"],
            vec!["--write", "relative:x"],
            vec!["--hostname"],
            vec!["--frobnicate"],
            vec!["--mac", "eth0"],
            vec!["--mac", "eth0=01:02:03:04:05:06"],
            vec!["--network-static", "eth0=10.0.0.1"],
            vec!["--network-static", "eth0=10.0.0.1/33"],
            vec!["--hostname", "bad_name!"],
            vec!["--password", "root:frob"],
            vec!["--password-crypto", "md5"],
            vec!["stray"],
        ] {
            assert!(Plan::parse(args.clone()).is_err(), "{args:?}");
        }
    }

    #[test]
    fn chmod_modes_read_as_virt_customize_reads_them() {
        assert_eq!(parse_mode("chmod", "0755").unwrap(), 0o755);
        assert_eq!(parse_mode("chmod", "0").unwrap(), 0);
        assert_eq!(parse_mode("chmod", "493").unwrap(), 0o755);
        assert_eq!(parse_mode("chmod", "0o640").unwrap(), 0o640);
        assert!(parse_mode("chmod", "rwx").is_err());
    }

    #[test]
    fn caller_options_come_back_in_order() {
        let (p, extra) = Plan::parse_with(
            [
                "-a",
                "t.qcow2",
                "--hostname",
                "h",
                "-i",
                "--format=raw",
                "new.qcow2",
            ],
            &[("-a", true), ("-i", false), ("--format", true)],
        )
        .unwrap();
        assert_eq!(p.ops, vec![Op::Hostname("h".into())]);
        let names: Vec<(&str, Option<&str>)> = extra
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("-a", Some("t.qcow2")),
                ("-i", None),
                ("--format", Some("raw")),
                ("", Some("new.qcow2"))
            ]
        );
    }

    #[test]
    fn commands_from_file() {
        let mut p = Plan::default();
        p.add_commands(
            "# a comment\n\nhostname test02\nwrite /etc/motd:two  spaces \\\nand a second line\n\
             selinux-relabel\n--mkdir /srv/x\nnetwork-static eth0=192.168.174.13/24,gw=192.168.174.1,dns=8.8.8.8,1.1.1.1\n",
            0,
        )
        .unwrap();
        assert_eq!(p.selinux_relabel, Some(true));
        assert_eq!(p.ops.len(), 4);
        assert_eq!(
            p.ops[1],
            Op::Write {
                file: "/etc/motd".into(),
                content: "two  spaces \nand a second line".into()
            }
        );
        match &p.ops[3] {
            Op::NetworkStatic(s) => {
                assert_eq!(s.dns.len(), 2);
                assert_eq!(s.gateway, Some("192.168.174.1".parse().unwrap()));
            }
            o => panic!("{o:?}"),
        }
        let mut p = Plan::default();
        let e = p
            .add_commands("hostname ok\nrun-command ls\n", 0)
            .unwrap_err();
        assert!(e.message().contains("line 2"), "{e}");
        assert!(e.message().contains("--firstboot-command"), "{e}");
        let e = Plan::default().add_commands("write /x:a\\", 0).unwrap_err();
        assert!(e.message().contains("continued"), "{e}");
        let _ = Mac([0; 6]);
    }
}
