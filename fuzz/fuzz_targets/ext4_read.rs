//! ext4: open (journal replay included), walk the tree with bounded depth and entries, stat,
//! read files, symlinks and xattrs; differential with ext4-view: when both read a regular file
//! by the same path, the bytes must agree. (The body is `vdisk_fuzz::ext4_read_differential`.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk_fuzz::ext4_read_differential(data));
