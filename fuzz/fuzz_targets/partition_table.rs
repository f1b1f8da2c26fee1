//! MBR (extended/logical chains) and GPT: read the table, open and read every partition.
//! (The body is `vdisk_fuzz::partition_table`.)
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk_fuzz::partition_table(data));
