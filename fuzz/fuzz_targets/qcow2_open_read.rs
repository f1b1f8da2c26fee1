//! qcow2: open an image from arbitrary bytes, attach a small backing image, then map and
//! read. (The body is `vdisk_fuzz::qcow2_open_read`.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk_fuzz::qcow2_open_read(data));
