//! VHDX: a template image patched by the input (headers, region table, metadata, BAT, log),
//! opened with -f vhdx, read and written. (The body is `vdisk_fuzz::vhdx_open_rw`.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk_fuzz::vhdx_open_rw(data));
