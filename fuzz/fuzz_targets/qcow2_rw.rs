//! qcow2 write path: a fuzzed image opened read-write in memory, writes, zero writes,
//! discards, compressed writes, resizes and reads decoded from the input's tail, then our
//! check, which must find no corruption after our own writes to an image it found clean.
//! (The body is `vdisk_fuzz::qcow2_rw`.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk_fuzz::qcow2_rw(data));
