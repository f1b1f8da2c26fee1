//! Volumes inside disk images: partition tables (MBR, GPT), LVM2 logical volumes, and the
//! detection of what a volume holds.
//!
//! Each module owns one layer; every layer is a [`vdisk_block::BlockDevice`] over the one
//! below (a partition is a window on a disk, an LV a list of windows on PVs). Filesystem
//! engines sit above this crate; nothing here knows how to read a filesystem beyond its
//! magic numbers.
#![warn(missing_docs)]
pub mod detect;
pub mod devices;
pub mod lvm;
pub mod partition;
