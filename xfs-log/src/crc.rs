//! CRC32C (Castagnoli), the checksum XFS uses for log records and metadata.

/// Continues a CRC32C over `data` from the raw (not inverted) state `crc`.
pub fn update(crc: u32, data: &[u8]) -> u32 {
    // The crc32c crate (hardware instructions where there are some) continues from a
    // finished value; the raw state is its complement.
    !crc32c::crc32c_append(!crc, data)
}

/// The CRC32C of `data`, as iSCSI and XFS define it.
pub fn crc32c(data: &[u8]) -> u32 {
    ::crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_value() {
        // RFC 3720 check value.
        assert_eq!(super::crc32c(b"123456789"), 0xe306_9283);
        // In pieces, through the raw state, as the record CRC is built.
        let raw = super::update(super::update(!0, b"1234"), b"56789");
        assert_eq!(!raw, 0xe306_9283);
    }
}
