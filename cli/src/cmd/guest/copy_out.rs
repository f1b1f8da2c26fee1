//! `vdisk copy-out`: copy guest files and directories to the host (virt-copy-out).
//!
//! Guest paths are resolved inside the guest tree. What is copied is never followed on the
//! host: a guest symlink becomes a host symlink with the same target (even `/etc/passwd`),
//! files are created with `O_EXCL | O_NOFOLLOW` after removing whatever non-directory was in
//! the way, and a directory is entered only when it is a real directory — so neither a guest
//! symlink nor a hostile image with duplicate names can make us write outside HOSTDIR.

use std::ffi::OsString;
use std::path::PathBuf;
use vdisk::guest::Access;

use vdisk_guestfs::ops;

use super::{guest_path, open_disks, open_tree, DiskArgs, MountSelect};
use crate::{CmdResult, Failure};

/// `vdisk copy-out -a IMAGE… (-m DEV… | -i) GUESTPATH… HOSTDIR`.
#[derive(Debug, clap::Args)]
pub struct CopyOutArgs {
    #[command(flatten)]
    disks: DiskArgs,
    #[command(flatten)]
    select: MountSelect,
    /// Guest files or directories (directories are copied recursively), then the host
    /// directory to copy them into.
    #[arg(required = true, num_args = 2.., value_name = "GUESTPATH… HOSTDIR")]
    paths: Vec<OsString>,
}

/// Copies each guest path into HOSTDIR, keeping modes, times, symlink targets and (as root)
/// owners.
pub fn run(mut a: CopyOutArgs) -> CmdResult {
    let host = PathBuf::from(a.paths.pop().unwrap_or_default());
    if !std::fs::metadata(&host)
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        return Err(Failure::new(format!(
            "{}: the host directory does not exist or is not a directory",
            host.display()
        )));
    }
    let disks = open_disks(&a.disks, Access::ReadOnly)?;
    let tree = open_tree(&disks, &a.select, true, Access::ReadOnly)?;
    let paths: Vec<Vec<u8>> = a.paths.iter().map(|p| guest_path(p)).collect();
    let paths: Vec<&[u8]> = paths.iter().map(Vec::as_slice).collect();
    ops::copy_out(&*tree, &paths, &host, &mut |w| super::warn(&w))?;
    Ok(0)
}
