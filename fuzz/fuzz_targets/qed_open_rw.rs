//! QED: header, L1 and L2 tables, opened with -f qed, read and written. (The body is `vdisk_fuzz::qed_open_rw`.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk_fuzz::qed_open_rw(data));
