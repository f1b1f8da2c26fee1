//! The small FUSE-less edit commands, as guestfish names them: `rm [-r] [-f]`, `mkdir [-p]`,
//! `chmod MODE`, `chown UID:GID`, `ln [-s] TARGET LINKNAME`. Each takes `-a/-m/-i` as the
//! read commands do, changes the guest through the write engine, and flushes before exit.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use vdisk_guestfs::fs::{errno, errno_error, FileKind, FileSystem, FileSystemMut, Ino, SetAttr};
use vdisk_guestfs::stack::Stack;

use super::rw::{absolute, parent_and_name, Edit};
use super::{path_error, DiskArgs, MountSelect};
use crate::{CmdResult, Failure};

/// Directory levels `rm -r` descends, a bound against corrupt (looping) trees.
const MAX_DEPTH: usize = 4096;

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
    let r = a.paths.iter().try_for_each(|p| {
        let path = absolute(p);
        let fs = &*edit.tree;
        if a.force {
            // -f: a path that does not resolve (its directory included) is nothing to do.
            if let Err(e) = fs.resolve(&path, false) {
                if vdisk_guestfs::fs::errno(&e) == errno::ENOENT {
                    return Ok(());
                }
            }
        }
        let (dir, name) = parent_and_name(fs, &path)?;
        let Some(ino) = fs.lookup(dir, &name).map_err(|e| path_error(&path, e))? else {
            if a.force {
                return Ok(());
            }
            return Err(path_error(&path, errno_error("rm", errno::ENOENT)));
        };
        if fs.getattr(ino).map_err(|e| path_error(&path, e))?.kind == FileKind::Dir {
            if !a.recursive {
                return Err(Failure::new(format!(
                    "{}: is a directory (use -r)",
                    String::from_utf8_lossy(&path)
                )));
            }
            remove_tree(fs, ino, &path, 0)?;
            fs.rmdir(dir, &name).map_err(|e| path_error(&path, e))
        } else {
            fs.unlink(dir, &name).map_err(|e| path_error(&path, e))
        }
    });
    edit.close(r).map(|()| 0)
}

/// Empties directory `dir` (depth first).
fn remove_tree(fs: &Stack, dir: Ino, path: &[u8], depth: usize) -> Result<(), Failure> {
    if depth >= MAX_DEPTH {
        return Err(Failure::new(format!(
            "{}: more than {MAX_DEPTH} directory levels",
            String::from_utf8_lossy(path)
        )));
    }
    for e in fs.readdir_all(dir).map_err(|e| path_error(path, e))? {
        if e.name == "." || e.name == ".." {
            continue;
        }
        let mut child = path.to_vec();
        child.push(b'/');
        child.extend_from_slice(e.name.as_bytes());
        if e.kind == FileKind::Dir {
            remove_tree(fs, e.ino, &child, depth + 1)?;
            fs.rmdir(dir, &e.name).map_err(|x| path_error(&child, x))?;
        } else {
            fs.unlink(dir, &e.name).map_err(|x| path_error(&child, x))?;
        }
    }
    Ok(())
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
    let r = a.paths.iter().try_for_each(|p| {
        let path = absolute(p);
        let fs = &*edit.tree;
        if a.parents {
            let mut cur = fs.root_ino();
            let mut sofar = Vec::new();
            for comp in path.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
                sofar.push(b'/');
                sofar.extend_from_slice(comp);
                let name = OsStr::from_bytes(comp);
                cur = match fs.resolve(&sofar, true) {
                    Ok(ino) => {
                        if fs.getattr(ino).map_err(|e| path_error(&sofar, e))?.kind != FileKind::Dir
                        {
                            return Err(path_error(&sofar, errno_error("mkdir", errno::ENOTDIR)));
                        }
                        ino
                    }
                    Err(e) if vdisk_guestfs::fs::errno(&e) == errno::ENOENT => {
                        fs.mkdir(cur, name, mode, 0, 0)
                            .map_err(|e| path_error(&sofar, e))?
                            .ino
                    }
                    Err(e) => return Err(path_error(&sofar, e)),
                };
            }
            Ok(())
        } else {
            let (dir, name) = parent_and_name(fs, &path)?;
            fs.mkdir(dir, &name, mode, 0, 0)
                .map(|_| ())
                .map_err(|e| path_error(&path, e))
        }
    });
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
    let r = paths.iter().try_for_each(|p| {
        let path = absolute(p);
        let fs = &*edit.tree;
        let ino = fs
            .resolve(&path, follow)
            .map_err(|e| path_error(&path, e))?;
        fs.setattr(ino, &c)
            .map(|_| ())
            .map_err(|e| path_error(&path, e))
    });
    edit.close(r).map(|()| 0)
}

/// Makes the link.
pub fn ln(a: LnArgs) -> CmdResult {
    let edit = Edit::open(&a.disks, &a.select)?;
    let r = (|| {
        let fs = &*edit.tree;
        let mut link = absolute(&a.link);
        // "ln -s TARGET DIR" makes DIR/basename(TARGET), as ln(1).
        if let Ok(ino) = fs.resolve(&link, true) {
            if fs
                .getattr(ino)
                .map(|x| x.kind == FileKind::Dir)
                .unwrap_or(false)
            {
                let t = a.target.as_bytes();
                let base = t
                    .rsplit(|&c| c == b'/')
                    .find(|c| !c.is_empty())
                    .unwrap_or(t);
                if !link.ends_with(b"/") {
                    link.push(b'/');
                }
                link.extend_from_slice(base);
            }
        }
        let (dir, name) = parent_and_name(fs, &link)?;
        if a.symbolic {
            fs.symlink(dir, &name, &a.target, 0, 0)
                .map(|_| ())
                .map_err(|e| path_error(&link, e))
        } else {
            let target = absolute(&a.target);
            let ino = fs
                .resolve(&target, false)
                .map_err(|e| path_error(&target, e))?;
            fs.link(ino, dir, &name)
                .map(|_| ())
                .map_err(|e| path_error(&link, e))
        }
    })();
    edit.close(r).map(|()| 0)
}
