//! Guest filesystems inside disk images: partition tables, LVM2 and ext2/3/4, behind one
//! path-level API.
//!
//! Each module owns one layer; every layer is a [`vdisk_block::BlockDevice`] over the one
//! below (a partition is a window on a disk, an LV a list of windows on PVs).
#![warn(missing_docs)]
pub mod fuse;
pub mod stack;

// The seam (traits and guest operations) and the ext4 engine are crates of their own;
// re-exported so that `vdisk_guestfs::fs::...`, `vdisk_guestfs::ops::...` and
// `vdisk_guestfs::ext4::...` keep working for callers.
pub use vdisk_ext4 as ext4;
pub use vdisk_fs as fs;
pub use vdisk_fs::ops;

// Partition tables, LVM and detection live in the volume crate; re-exported so that
// `vdisk_guestfs::lvm::...` and friends keep working for callers.
pub use vdisk_volume::{detect, devices, lvm, partition};
