//! `vdisk cat`: print guest files (virt-cat).

use std::ffi::OsString;
use std::io::Write;
use vdisk::guest::Access;
use vdisk_guestfs::fs::FileSystem;

use vdisk_guestfs::fs::{errno, errno_error, FileKind};

use super::{
    guest_path, open_disks, open_tree, output_result, path_error, stdout, DiskArgs, MountSelect,
};
use crate::CmdResult;

/// Bytes read from the guest per call.
const CHUNK: usize = 1 << 20;

/// `vdisk cat -a IMAGE… (-m DEV… | -i) PATH…`.
#[derive(Debug, clap::Args)]
pub struct CatArgs {
    #[command(flatten)]
    disks: DiskArgs,
    #[command(flatten)]
    select: MountSelect,
    /// Guest files to print, in order (symlinks are followed inside the guest tree).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<OsString>,
}

/// Streams each file to stdout. Without -m, inspects the guest as virt-cat does.
pub fn run(a: CatArgs) -> CmdResult {
    let disks = open_disks(&a.disks, Access::ReadOnly)?;
    let fs = open_tree(&disks, &a.select, true, Access::ReadOnly)?;
    let mut out = stdout();
    let mut buf = vec![0u8; CHUNK];
    for p in &a.paths {
        let path = guest_path(p);
        let ino = fs
            .resolve(&path, true)
            .and_then(|i| match fs.getattr(i)?.kind {
                FileKind::Dir => Err(errno_error("cat", errno::EISDIR)),
                _ => Ok(i),
            })
            .map_err(|e| path_error(&path, e))?;
        let mut off = 0u64;
        loop {
            let n = fs
                .read(ino, off, &mut buf)
                .map_err(|e| path_error(&path, e))?;
            if n == 0 {
                break;
            }
            if let Err(e) = out.write_all(&buf[..n]) {
                return output_result(Err(e));
            }
            off += n as u64;
        }
    }
    output_result(out.flush())
}
