//! Guest filesystems inside disk images: partition tables, LVM2 and ext2/3/4, behind one
//! path-level API.
//!
//! Each module owns one layer; every layer is a [`vdisk_block::BlockDevice`] over the one
//! below (a partition is a window on a disk, an LV a list of windows on PVs).
#![warn(missing_docs)]
pub mod ext4;
pub mod fs;
pub mod fuse;
pub mod ops;
pub mod stack;

// Partition tables, LVM and detection live in the volume crate; re-exported so that
// `vdisk_guestfs::lvm::...` and friends keep working for callers.
pub use vdisk_volume::{detect, devices, lvm, partition};
