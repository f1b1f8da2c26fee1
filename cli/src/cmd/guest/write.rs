//! `vdisk write`: replace (or create) a guest file with what stdin or `--from HOSTFILE` holds
//! (guestfish's `upload`/`write`, without FUSE).
//!
//! An existing file keeps its inode, mode, owner and extended attributes (its SELinux label);
//! only its content changes. A new file is created mode 0644, owned by root, as the
//! libguestfs appliance creates it.

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;

use vdisk_guestfs::fs::{errno, errno_error, FileKind, FileSystem, FileSystemMut, SetAttr};
use vdisk_guestfs::stack::Stack;

use super::rw::{absolute, parent_and_name, write_all, Edit};
use super::{path_error, DiskArgs, MountSelect};
use crate::{CmdResult, Failure};

/// `vdisk write -a IMAGE… (-m DEV… | -i) [--from HOSTFILE] GUESTPATH`.
#[derive(Debug, clap::Args)]
pub struct WriteArgs {
    #[command(flatten)]
    disks: DiskArgs,
    #[command(flatten)]
    select: MountSelect,
    /// Read the content from this host file instead of standard input.
    #[arg(long, value_name = "HOSTFILE")]
    from: Option<PathBuf>,
    /// The guest file to write (symlinks followed inside the guest).
    #[arg(value_name = "GUESTPATH")]
    path: OsString,
}

/// Writes the file, then flushes and closes the images.
pub fn run(a: WriteArgs) -> CmdResult {
    let mut input: Box<dyn Read> = match &a.from {
        Some(p) => Box::new(
            std::fs::File::open(p)
                .map_err(|e| Failure::new(format!("{}: {}", p.display(), os_text(&e))))?,
        ),
        None => Box::new(std::io::stdin().lock()),
    };
    let edit = Edit::open(&a.disks, &a.select)?;
    let path = absolute(&a.path);
    let r = write_file(&edit.tree, &path, &mut *input);
    edit.close(r).map(|_| 0)
}

/// Replaces the content of guest file `path` (creating it) with everything `input` gives.
pub fn write_file(fs: &Stack, path: &[u8], input: &mut dyn Read) -> Result<u64, Failure> {
    let ino = match fs.resolve(path, true) {
        Ok(ino) => {
            let attr = fs.getattr(ino).map_err(|e| path_error(path, e))?;
            match attr.kind {
                FileKind::File => {}
                FileKind::Dir => return Err(path_error(path, errno_error("write", errno::EISDIR))),
                _ => return Err(path_error(path, errno_error("write", errno::EINVAL))),
            }
            if attr.size != 0 {
                let c = SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                };
                fs.setattr(ino, &c).map_err(|e| path_error(path, e))?;
            }
            ino
        }
        Err(e) if vdisk_guestfs::fs::errno(&e) == errno::ENOENT => {
            let (dir, name) = parent_and_name(fs, path)?;
            fs.create(dir, &name, 0o644, 0, 0)
                .map_err(|e| path_error(path, e))?
                .ino
        }
        Err(e) => return Err(path_error(path, e)),
    };
    write_all(fs, ino, |b| input.read(b), path)
}

pub(crate) fn os_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}
