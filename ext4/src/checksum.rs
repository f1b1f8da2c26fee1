//! The two checksums ext4 uses: crc32c for `metadata_csum` (and jbd2 csum v2/v3) and the
//! crc16 of `gdt_csum`/`uninit_bg` group descriptors.
//!
//! The kernel's `ext4_chksum()` is crc32c *without* the final inversion, seeded by the caller,
//! so chained calls feed each other's raw state. The `crc32c` crate inverts on entry and exit;
//! [`crc32c_raw`] undoes both.

/// crc32c continuing from the raw state `seed`, returning the raw state (no final xor), as
/// the kernel's `ext4_chksum(sbi, seed, data, len)` and `jbd2_chksum()`.
pub fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// crc16 with the reflected polynomial 0x8005 (0xA001), no final xor: the kernel's `crc16()`
/// from lib/crc16.c, used for group descriptor checksums without `metadata_csum`.
pub fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Standard CRC-32C check value, through the raw form.
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xE306_9283);
        // CRC-16/ARC check value (init 0) is the same polynomial and reflection.
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
        // Chaining equals one pass.
        let a = crc32c_raw(!0, b"1234");
        assert_eq!(crc32c_raw(a, b"56789"), crc32c_raw(!0, b"123456789"));
    }
}
