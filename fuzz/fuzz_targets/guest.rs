//! A guest over one or two fuzzed disks: partitions, LVM, device names, filesystem listing,
//! reads. (The body is `vdisk_fuzz::guest`.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk_fuzz::guest(data));
