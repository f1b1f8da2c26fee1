//! Guest filesystems inside disk images: partition tables, LVM2 and ext2/3/4, behind one
//! path-level API.
//!
//! Each module owns one layer; every layer is a [`vdisk_block::BlockDevice`] over the one
//! below (a partition is a window on a disk, an LV a list of windows on PVs).
#![warn(missing_docs)]
pub mod detect;
pub mod devices;
pub mod ext4;
pub mod fs;
pub mod fuse;
pub mod lvm;
pub mod partition;
pub mod stack;
