//! VHD: footer, dynamic header, BAT, sector bitmaps, parent locators, opened with -f vpc,
//! read and written. (The body is `vdisk_fuzz::vhd_open_rw`.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk_fuzz::vhd_open_rw(data));
