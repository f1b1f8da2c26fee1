//! `vdisk customize`: virt-customize's file-edit operations (and `--network-static`,
//! `--network-dhcp`, `--mac`), applied in one open of the image by [`vdisk::customize`].
//! This file only splits the command line and prints; `sysprep` and `clone` share it.

use std::path::PathBuf;
use std::time::Instant;

use vdisk::customize::apply::Report;
use vdisk::customize::ops::{Extra, Plan};
use vdisk::customize::session::{Mounts, Session};
use vdisk::customize::sysprep::Operation;
use vdisk::guest::MountSpec;
use vdisk::Format;

use super::guest::warn;
use super::parse_format;
use crate::{CmdResult, Failure};

/// `vdisk customize -a IMAGE [--format FMT] [-m DEV… | -i] OPERATIONS…`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Options as virt-customize takes them, applied in command-line order: \
    --hostname, --root-password, --password USER:SELECTOR, --ssh-inject, --timezone, \
    --write, --append-line, --upload, --copy-in, --mkdir, --delete, --scrub, --edit, \
    --chmod, --chown, --link, --touch, --truncate, --move, --copy, --firstboot, \
    --firstboot-command, --firstboot-install, --selinux-relabel, --commands-from-file, \
    -n/--dry-run, -q; and --network-static IFACE=ADDR/PREFIX[,gw=GW][,dns=DNS,..], \
    --network-dhcp IFACE, --mac IFACE=MAC|random.\n\
    The disks: -a IMAGE (repeatable), --format FMT, -m DEV[:MOUNTPOINT] (repeatable) or -i \
    (inspect, the default)."
)]
pub struct CustomizeArgs {
    /// -a IMAGE, --format, -m/-i and the operations, in order.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        num_args = 0..,
        value_name = "OPTIONS"
    )]
    pub args: Vec<String>,
}

/// The disk options every customization command takes.
pub const DISK_OPTIONS: &[(&str, bool)] = &[
    ("-a", true),
    ("--add", true),
    ("--format", true),
    ("-m", true),
    ("--mount", true),
    ("-i", false),
    ("--inspector", false),
];

/// What the command line says besides the operations.
#[derive(Debug, Default)]
pub struct Common {
    /// `-a` images.
    pub images: Vec<PathBuf>,
    /// `--format`.
    pub format: Option<Format>,
    /// `-m` specs.
    pub mounts: Vec<MountSpec>,
    /// Options and positionals the caller asked for beyond [`DISK_OPTIONS`].
    pub rest: Vec<Extra>,
}

impl Common {
    /// The mounts: `-m` specs, else inspection.
    pub fn mounts(&self) -> Mounts {
        if self.mounts.is_empty() {
            Mounts::Inspect
        } else {
            Mounts::Specs(self.mounts.clone())
        }
    }
}

/// Splits the command line: the plan, the disk options, and `more` (the caller's own).
pub fn split(args: &[String], more: &[(&str, bool)]) -> Result<(Plan, Common), Failure> {
    let mut known: Vec<(&str, bool)> = DISK_OPTIONS.to_vec();
    known.extend_from_slice(more);
    let (plan, extra) = Plan::parse_with(args, &known)?;
    let mut c = Common::default();
    for e in extra {
        let v = e.value.clone().unwrap_or_default();
        match e.name.as_str() {
            "-a" | "--add" => c.images.push(PathBuf::from(v)),
            "--format" => c.format = Some(parse_format(&v)?),
            "-m" | "--mount" => c.mounts.push(v.parse()?),
            "-i" | "--inspector" => {}
            _ => c.rest.push(e),
        }
    }
    Ok((plan, c))
}

/// Prints the run's messages as virt-customize does (`[  0.1] Setting the hostname: ...`).
pub fn print_report(r: &Report, t0: Instant, quiet: bool) {
    if quiet {
        // The values the user could not know otherwise are printed even so.
        for (user, pw) in &r.random_passwords {
            println!("Setting random password of {user} to {pw}");
        }
        for (iface, mac) in &r.macs {
            println!("{iface}: MAC address {mac}");
        }
        return;
    }
    let secs = t0.elapsed().as_secs_f64();
    for m in &r.messages {
        println!("[{secs:6.1}] {m}");
    }
    for (iface, mac) in &r.macs {
        println!("[{secs:6.1}] {iface}: MAC address {mac} (give the VM's NIC this address)");
    }
}

/// Opens the session (a throw-away overlay for a dry run), runs, closes, prints.
pub fn run_session(
    images: &[PathBuf],
    format: Option<Format>,
    mounts: &Mounts,
    plan: &Plan,
    sysprep: &[&Operation],
) -> Result<(), Failure> {
    let t0 = Instant::now();
    let s = if plan.dry_run {
        Session::open_dry_run(images, format, mounts)?
    } else {
        Session::open(images, format, mounts, false)?
    };
    for w in &s.warnings {
        warn(w);
    }
    let r = s.run(plan, sysprep);
    // A failed operation still leaves a consistent image with what was done before it.
    let closed = s.close();
    let r = r?;
    closed?;
    print_report(&r, t0, plan.quiet);
    Ok(())
}

/// Runs `vdisk customize`.
pub fn run(a: CustomizeArgs) -> CmdResult {
    let (plan, c) = split(&a.args, &[])?;
    if let Some(e) = c.rest.first() {
        return Err(Failure::new(format!(
            "customize: unexpected argument '{}'",
            e.value.as_deref().unwrap_or(&e.name)
        )));
    }
    if c.images.is_empty() {
        return Err(Failure::new("customize: give the disk image with -a IMAGE"));
    }
    run_session(&c.images, c.format, &c.mounts(), &plan, &[])?;
    Ok(0)
}
