//! qcow2 internal snapshots: load every snapshot in the table and read through each.
//! (The body is `vdisk_fuzz::qcow2_snapshot`.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk_fuzz::qcow2_snapshot(data));
