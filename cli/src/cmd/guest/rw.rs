//! What the FUSE-less edit commands (`write`, `edit`, `copy-in`, `rm`, `mkdir`, `chmod`,
//! `chown`, `ln`) share: the guest opened read-write and the close that makes everything
//! durable. The operations themselves are the library's ([`vdisk_guestfs::ops`]).
//!
//! ```text
//!   -a IMAGE (top writable, backing read-only) -> -m / -i -> Stack (Ext4Rw layers)
//!     op(s) through FileSystemMut ... -> close: filesystems flushed, then images
//! ```

use std::sync::Arc;

use vdisk::guest::{Access, GuestDisks};
use vdisk_guestfs::fs::FileSystemMut;
use vdisk_guestfs::stack::Stack;

use super::{open_disks, open_tree, DiskArgs, MountSelect};
use crate::Failure;

/// The guest, open for changes.
pub struct Edit {
    disks: GuestDisks,
    /// The tree the `-m`/`-i` filesystems make.
    pub tree: Arc<Stack>,
}

impl Edit {
    /// Opens the images read-write and mounts the tree (without `-m`, inspects, as virt-edit
    /// and virt-copy-in do).
    pub fn open(d: &DiskArgs, sel: &MountSelect) -> Result<Edit, Failure> {
        let disks = open_disks(d, Access::ReadWrite)?;
        let tree = open_tree(&disks, sel, true, Access::ReadWrite)?;
        Ok(Edit { disks, tree })
    }

    /// Makes every change durable (the filesystems' state, then the images' metadata and
    /// the host files) and closes the images. `result` is the command's outcome so far: it is
    /// returned first when it is an error, after the close (a failed command still leaves
    /// a consistent image with what it did).
    pub fn close<T>(self, result: Result<T, Failure>) -> Result<T, Failure> {
        let flushed = self
            .tree
            .flush()
            .and_then(|()| self.disks.flush())
            .map_err(Failure::from);
        let v = result?;
        flushed?;
        Ok(v)
    }
}
