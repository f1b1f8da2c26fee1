//! VDI: header and block map, opened with -f vdi, read and written. (The body is `vdisk_fuzz::vdi_open_rw`.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk_fuzz::vdi_open_rw(data));
