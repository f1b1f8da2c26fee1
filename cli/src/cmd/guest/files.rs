//! The small FUSE-less edit commands, as guestfish names them: `rm [-r] [-f]`, `mkdir [-p]`,
//! `chmod MODE`, `chown UID:GID`, `ln [-s] TARGET LINKNAME`. Each takes `-a/-m/-i` as the
//! read commands do, changes the guest through the write engine, and flushes before exit.

use std::ffi::OsString;

use vdisk_guestfs::fs::SetAttr;
use vdisk_guestfs::ops::{self, absolute, Remove};

use vdisk::guest::{self, Access};

use super::rw::Edit;
use super::{open_disks, warn_scan, DiskArgs, MountSelect};
use crate::{CmdResult, Failure};

/// `vdisk rm -a IMAGE… (-m DEV… | -i) [-r] [-f] PATH…`.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    #[command(flatten)]
    disks: DiskArgs,
    #[command(flatten)]
    select: MountSelect,
    /// Remove directories and everything in them.
    #[arg(short = 'r', short_alias = 'R', long = "recursive")]
    recursive: bool,
    /// Ignore paths that do not exist.
    #[arg(short = 'f', long = "force")]
    force: bool,
    /// Guest paths to remove (a symlink is removed, not what it points to).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<OsString>,
}

/// `vdisk mkdir -a IMAGE… (-m DEV… | -i) [-p] [-m MODE] PATH…`.
#[derive(Debug, clap::Args)]
pub struct MkdirArgs {
    #[command(flatten)]
    disks: DiskArgs,
    #[command(flatten)]
    select: MountSelect,
    /// Make parent directories as needed; no error if the directory exists.
    #[arg(short = 'p', long = "parents")]
    parents: bool,
    /// Permission bits of the new directories (octal).
    #[arg(long = "mode", value_name = "MODE", default_value = "755")]
    mode: String,
    /// Guest directories to make.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<OsString>,
}

/// `vdisk chmod -a IMAGE… (-m DEV… | -i) MODE PATH…`.
#[derive(Debug, clap::Args)]
pub struct ChmodArgs {
    #[command(flatten)]
    disks: DiskArgs,
    #[command(flatten)]
    select: MountSelect,
    /// Octal permission bits (0644, 4755, ...).
    #[arg(value_name = "MODE")]
    mode: String,
    /// Guest paths (symlinks followed inside the guest).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<OsString>,
}

/// `vdisk chown -a IMAGE… (-m DEV… | -i) UID[:GID] PATH…`.
#[derive(Debug, clap::Args)]
pub struct ChownArgs {
    #[command(flatten)]
    disks: DiskArgs,
    #[command(flatten)]
    select: MountSelect,
    /// Numeric owner and group, UID:GID (or UID alone, or :GID).
    #[arg(value_name = "UID:GID")]
    owner: String,
    /// Guest paths (the symlink itself with -h, else what it points to).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<OsString>,
    /// Change a symlink itself rather than what it points to.
    #[arg(long = "no-dereference")]
    no_dereference: bool,
}

/// `vdisk ln -a IMAGE… (-m DEV… | -i) [-s] TARGET LINKNAME`.
#[derive(Debug, clap::Args)]
pub struct LnArgs {
    #[command(flatten)]
    disks: DiskArgs,
    #[command(flatten)]
    select: MountSelect,
    /// Make a symbolic link (TARGET is stored as given); without it, a hard link to the
    /// guest file TARGET.
    #[arg(short = 's', long = "symbolic")]
    symbolic: bool,
    /// What the link points to.
    #[arg(value_name = "TARGET")]
    target: OsString,
    /// The new link (inside it, when it names an existing directory).
    #[arg(value_name = "LINKNAME")]
    link: OsString,
}

/// Removes each path.
pub fn rm(a: RmArgs) -> CmdResult {
    let edit = Edit::open(&a.disks, &a.select)?;
    let how = Remove {
        recursive: a.recursive,
        force: a.force,
    };
    let r = a
        .paths
        .iter()
        .try_for_each(|p| ops::remove(&*edit.tree, &absolute(p), how))
        .map_err(Failure::from);
    edit.close(r).map(|()| 0)
}

/// Parses an octal mode ("644", "0755", "4755").
fn parse_mode(s: &str) -> Result<u32, Failure> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777 && !s.is_empty())
        .ok_or_else(|| Failure::new(format!("'{s}': expected an octal mode (0644, 4755, ...)")))
}

/// Makes each directory.
pub fn mkdir(a: MkdirArgs) -> CmdResult {
    let mode = parse_mode(&a.mode)?;
    let edit = Edit::open(&a.disks, &a.select)?;
    let r = a
        .paths
        .iter()
        .try_for_each(|p| ops::mkdir(&*edit.tree, &absolute(p), mode, a.parents).map(|_| ()))
        .map_err(Failure::from);
    edit.close(r).map(|()| 0)
}

/// Changes each path's permission bits.
pub fn chmod(a: ChmodArgs) -> CmdResult {
    let mode = parse_mode(&a.mode)?;
    set_each(
        &a.disks,
        &a.select,
        &a.paths,
        true,
        SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        },
    )
}

/// Changes each path's owner and group.
pub fn chown(a: ChownArgs) -> CmdResult {
    let bad = || Failure::new(format!("'{}': expected UID:GID (numbers)", a.owner));
    let (u, g) = match a.owner.split_once(':') {
        Some((u, g)) => (u, g),
        None => (a.owner.as_str(), ""),
    };
    let num = |s: &str| -> Result<Option<u32>, Failure> {
        if s.is_empty() {
            Ok(None)
        } else {
            s.parse().map(Some).map_err(|_| bad())
        }
    };
    let (uid, gid) = (num(u)?, num(g)?);
    if uid.is_none() && gid.is_none() {
        return Err(bad());
    }
    set_each(
        &a.disks,
        &a.select,
        &a.paths,
        !a.no_dereference,
        SetAttr {
            uid,
            gid,
            ..SetAttr::default()
        },
    )
}

fn set_each(
    d: &DiskArgs,
    sel: &MountSelect,
    paths: &[OsString],
    follow: bool,
    c: SetAttr,
) -> CmdResult {
    let edit = Edit::open(d, sel)?;
    let r = paths
        .iter()
        .try_for_each(|p| ops::set_attr(&*edit.tree, &absolute(p), follow, &c))
        .map_err(Failure::from);
    edit.close(r).map(|()| 0)
}

/// Makes the link.
pub fn ln(a: LnArgs) -> CmdResult {
    let edit = Edit::open(&a.disks, &a.select)?;
    let r = ops::ln(&*edit.tree, &a.target, &absolute(&a.link), a.symbolic).map_err(Failure::from);
    edit.close(r).map(|()| 0)
}

/// `vdisk set-label -a IMAGE… DEVICE LABEL`: guestfish's `set-label`.
#[derive(Debug, clap::Args)]
pub struct SetLabelArgs {
    #[command(flatten)]
    disks: DiskArgs,
    /// The guest device holding the filesystem (/dev/sda1, /dev/VG/LV).
    #[arg(value_name = "DEVICE")]
    device: String,
    /// The new label; an empty string clears it. Refused, not truncated, when the
    /// filesystem cannot hold it (16 bytes on ext2/3/4, 12 on XFS, 11 on FAT).
    #[arg(value_name = "LABEL")]
    label: String,
}

/// Sets the filesystem label on one device, then flushes and closes the images.
pub fn set_label(a: SetLabelArgs) -> CmdResult {
    let disks = open_disks(&a.disks, Access::ReadWrite)?;
    warn_scan(&disks, &[a.device.as_str()]);
    let fs = guest::open_filesystem(&disks.guest, &a.device, None, Access::ReadWrite)?;
    let r = match fs.writable() {
        Some(w) => w
            .set_label(&a.label)
            .and_then(|()| w.flush())
            .map_err(|e| Failure::from(e.with_path(&a.device))),
        None => Err(Failure::new(format!(
            "{}: this filesystem is opened read-only",
            a.device
        ))),
    };
    drop(fs);
    let flushed = disks.flush().map_err(Failure::from);
    r?;
    flushed.map(|()| 0)
}
