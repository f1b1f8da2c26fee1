//! `vdisk write`: replace (or create) a guest file with what stdin or `--from HOSTFILE` holds
//! (guestfish's `upload`/`write`, without FUSE).
//!
//! An existing file keeps its inode, mode, owner and extended attributes (its SELinux label);
//! only its content changes. A new file is created mode 0644, owned by root, as the
//! libguestfs appliance creates it.

use std::ffi::OsString;
use std::io::Read;
use std::path::PathBuf;
use vdisk_guestfs::ops::os_text;

use vdisk_guestfs::ops::{self, absolute};

use super::rw::Edit;
use super::{DiskArgs, MountSelect};
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
    let r = ops::write_file(&*edit.tree, &path, &mut *input).map_err(Failure::from);
    edit.close(r).map(|_| 0)
}
