//! ext4 write operations (Ext4Rw over a MemDevice) on a fuzzed filesystem, decoded from the
//! input's tail: never a panic or a hang; errors are fine. (The body is `vdisk_fuzz::ext4_write`.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk_fuzz::ext4_write(data));
