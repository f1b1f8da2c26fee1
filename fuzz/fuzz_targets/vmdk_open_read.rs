//! VMDK: sparse headers, grain directories and tables, stream grains, and descriptors,
//! opened with -f vmdk and read. (The body is `vdisk_fuzz::vmdk_open_read`.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk_fuzz::vmdk_open_read(data));
