//! Guest filesystems inside disk images: partition tables, LVM2 and ext2/3/4, behind one
//! path-level API. Nothing is implemented yet; the guest read and write issues fill this crate.
#![warn(missing_docs)]
