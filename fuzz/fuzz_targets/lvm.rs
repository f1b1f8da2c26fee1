//! LVM2 label, metadata areas, scan and LVs; and metadata text parsed and built over
//! stand-in PVs. (The body is `vdisk_fuzz::lvm`.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk_fuzz::lvm(data));
