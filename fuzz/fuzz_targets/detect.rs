//! Filesystem and volume signature detection. (The body is `vdisk_fuzz::detect_fs`.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk_fuzz::detect_fs(data));
