//! `vdisk copy-in`: virt-copy-in. Copy host files and directories (recursively) into a guest
//! directory, keeping modes, owners, times, symlinks, hard links among the copied files,
//! device nodes and FIFOs, as `tar` does in the libguestfs appliance. An existing guest file
//! of the same name is replaced; an existing directory is merged into.

use std::path::{Path, PathBuf};

use vdisk_guestfs::ops::{self, absolute, OpError};

use super::rw::Edit;
use super::{DiskArgs, MountSelect};
use crate::{CmdResult, Failure};

/// `vdisk copy-in -a IMAGE… (-m DEV… | -i) HOSTPATH… GUESTDIR`.
#[derive(Debug, clap::Args)]
pub struct CopyInArgs {
    #[command(flatten)]
    disks: DiskArgs,
    #[command(flatten)]
    select: MountSelect,
    /// Host files or directories, then the guest directory to copy them into.
    #[arg(required = true, num_args = 2.., value_name = "HOSTPATH… GUESTDIR")]
    paths: Vec<PathBuf>,
}

/// Copies, then flushes and closes the images.
pub fn run(a: CopyInArgs) -> CmdResult {
    let (dest, sources) = a.paths.split_last().expect("clap requires two paths");
    // A missing source fails before the images are opened.
    for s in sources {
        std::fs::symlink_metadata(s).map_err(|e| Failure::from(OpError::host(s, e)))?;
    }
    let edit = Edit::open(&a.disks, &a.select)?;
    let sources: Vec<&Path> = sources.iter().map(PathBuf::as_path).collect();
    let r = ops::copy_in(&*edit.tree, &sources, &absolute(dest.as_os_str())).map_err(Failure::from);
    edit.close(r).map(|()| 0)
}
