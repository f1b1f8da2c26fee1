//! Probing and opening by name through the library (vdisk::open): probed, -f raw and
//! -f qcow2. (The body is `vdisk_fuzz::probe_open`.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk_fuzz::probe_open(data));
