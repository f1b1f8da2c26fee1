//! The header section (the file's first 1 MiB): file type identifier, the two headers and
//! the region table, each parsed from bytes and written back beside its parser.
//!
//! ```text
//!   0      64K        128K       192K          256K          1M
//!   [ident][header 1 ][header 2 ][region tbl 1][region tbl 2][reserved]
//! ```

use vdisk_block::bytes::{le16, le32, le64, put};
use vdisk_block::{Error, Result};

use crate::guid::Guid;

/// "vhdxfile": the first eight bytes of every VHDX file.
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
/// Size of each structure of the header section.
pub const HEADER_BLOCK_SIZE: u64 = 64 * 1024;
/// Offset of the first header.
pub const HEADER1_OFFSET: u64 = 64 * 1024;
/// Offset of the second header.
pub const HEADER2_OFFSET: u64 = 128 * 1024;
/// Offset of the region table (the one qemu reads).
pub const REGION_TABLE_OFFSET: u64 = 192 * 1024;
/// Offset of the region table's copy.
pub const REGION_TABLE2_OFFSET: u64 = 256 * 1024;
/// End of the header section: every object lies at or after it.
pub const HEADER_SECTION_END: u64 = 1024 * 1024;
/// The header checksum covers this many bytes (the rest of the 64 KiB is reserved).
pub const HEADER_SIZE: usize = 4096;
/// "head".
pub const HEADER_SIGNATURE: u32 = 0x6461_6568;
/// "regi".
pub const REGION_SIGNATURE: u32 = 0x6967_6572;
/// The spec's limit on region table entries.
pub const MAX_REGION_ENTRIES: u32 = 2047;
/// A region entry's flag: the parser must understand the region to open the file.
pub const REGION_REQUIRED: u32 = 1;

/// The CRC-32C of `buf` with the four bytes at `crc_at` taken as zero (how every VHDX
/// checksum is computed).
pub fn checksum(buf: &[u8], crc_at: usize) -> u32 {
    let head = buf.get(..crc_at).unwrap_or(buf);
    let tail = buf.get(crc_at + 4..).unwrap_or(&[]);
    let c = crc32c::crc32c_append(crc32c::crc32c(head), &[0; 4]);
    crc32c::crc32c_append(c, tail)
}

/// Stores the checksum of `buf` at `crc_at`.
pub fn seal(buf: &mut [u8], crc_at: usize) {
    let c = checksum(buf, crc_at);
    put(buf, crc_at, c.to_le_bytes());
}

/// One of the two headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// "Sequence Number": the header with the larger one is current.
    pub sequence_number: u64,
    /// "FileWriteGuid": changed before the first write to the file in a session.
    pub file_write_guid: Guid,
    /// "DataWriteGuid": changed before the first write that changes what the disk reads.
    pub data_write_guid: Guid,
    /// "LogGuid": zero when the log is empty; otherwise entries carrying it are valid.
    pub log_guid: Guid,
    /// "LogVersion": 0.
    pub log_version: u16,
    /// "Version": 1.
    pub version: u16,
    /// "LogLength": bytes of the log, a multiple of 1 MiB.
    pub log_length: u32,
    /// "LogOffset": where the log starts, a multiple of 1 MiB.
    pub log_offset: u64,
}

impl Header {
    /// Parses a 4 KiB header block; `None` when its signature, checksum or version is wrong
    /// (the other header is then used).
    pub fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER_SIZE || le32(b, 0) != HEADER_SIGNATURE {
            return None;
        }
        if checksum(&b[..HEADER_SIZE], 4) != le32(b, 4) {
            return None;
        }
        let h = Header {
            sequence_number: le64(b, 8),
            file_write_guid: Guid::from_slice(b, 16),
            data_write_guid: Guid::from_slice(b, 32),
            log_guid: Guid::from_slice(b, 48),
            log_version: le16(b, 64),
            version: le16(b, 66),
            log_length: le32(b, 68),
            log_offset: le64(b, 72),
        };
        (h.version == 1).then_some(h)
    }

    /// The 4 KiB block, checksummed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        put(&mut b, 0, HEADER_SIGNATURE.to_le_bytes());
        put(&mut b, 8, self.sequence_number.to_le_bytes());
        put(&mut b, 16, self.file_write_guid.0);
        put(&mut b, 32, self.data_write_guid.0);
        put(&mut b, 48, self.log_guid.0);
        put(&mut b, 64, self.log_version.to_le_bytes());
        put(&mut b, 66, self.version.to_le_bytes());
        put(&mut b, 68, self.log_length.to_le_bytes());
        put(&mut b, 72, self.log_offset.to_le_bytes());
        seal(&mut b, 4);
        b
    }
}

/// Chooses the current header of the two (qemu's and the spec's rule): the valid one, or of
/// two valid ones the larger sequence number; equal numbers are allowed only for identical
/// headers. Returns the index (0 or 1) and the header.
pub fn current(h1: Option<Header>, h2: Option<Header>) -> Result<(usize, Header)> {
    match (h1, h2) {
        (Some(a), None) => Ok((0, a)),
        (None, Some(b)) => Ok((1, b)),
        (None, None) => Err(Error::corrupt(
            "No valid VHDX header found (both headers have a bad signature, checksum or version)",
        )),
        (Some(a), Some(b)) => {
            if a.sequence_number > b.sequence_number {
                Ok((0, a))
            } else if b.sequence_number > a.sequence_number {
                Ok((1, b))
            } else if a == b {
                Ok((0, a))
            } else {
                Err(Error::corrupt(
                    "No valid VHDX header found (two different headers have the same sequence number)",
                ))
            }
        }
    }
}

/// One region table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionEntry {
    /// "Guid": what the region holds.
    pub guid: Guid,
    /// "FileOffset": a multiple of 1 MiB.
    pub file_offset: u64,
    /// "Length": a multiple of 1 MiB.
    pub length: u32,
    /// "Required": the parser must understand the region.
    pub required: bool,
}

/// Parses the 64 KiB region table block into its entries, checking signature, checksum and
/// count.
pub fn parse_region_table(b: &[u8]) -> Result<Vec<RegionEntry>> {
    let n = HEADER_BLOCK_SIZE as usize;
    if b.len() < n || le32(b, 0) != REGION_SIGNATURE {
        return Err(Error::corrupt_at(
            REGION_TABLE_OFFSET,
            "the VHDX region table has a bad signature",
        ));
    }
    if checksum(&b[..n], 4) != le32(b, 4) {
        return Err(Error::corrupt_at(
            REGION_TABLE_OFFSET,
            "the VHDX region table checksum is wrong",
        ));
    }
    let count = le32(b, 8);
    if count > MAX_REGION_ENTRIES {
        return Err(Error::corrupt_at(
            REGION_TABLE_OFFSET,
            format!("the VHDX region table has {count} entries, more than {MAX_REGION_ENTRIES}"),
        ));
    }
    Ok((0..count as usize)
        .map(|i| {
            let o = 16 + 32 * i;
            RegionEntry {
                guid: Guid::from_slice(b, o),
                file_offset: le64(b, o + 16),
                length: le32(b, o + 24),
                required: le32(b, o + 28) & REGION_REQUIRED != 0,
            }
        })
        .collect())
}

/// The 64 KiB region table block holding `entries`, checksummed.
pub fn region_table_bytes(entries: &[RegionEntry]) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_BLOCK_SIZE as usize];
    put(&mut b, 0, REGION_SIGNATURE.to_le_bytes());
    put(&mut b, 8, (entries.len() as u32).to_le_bytes());
    for (i, e) in entries.iter().enumerate() {
        let o = 16 + 32 * i;
        put(&mut b, o, e.guid.0);
        put(&mut b, o + 16, e.file_offset.to_le_bytes());
        put(&mut b, o + 24, e.length.to_le_bytes());
        put(&mut b, o + 28, u32::from(e.required).to_le_bytes());
    }
    seal(&mut b, 4);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli() {
        // The check value of CRC-32C.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let mut b = *b"1234\xff\xff\xff\xff56789";
        seal(&mut b, 4);
        assert_eq!(checksum(&b, 4), le32(&b, 4));
    }

    #[test]
    fn header_roundtrip_and_choice() {
        let h = Header {
            sequence_number: 7,
            file_write_guid: Guid([1; 16]),
            data_write_guid: Guid([2; 16]),
            log_guid: Guid::ZERO,
            log_version: 0,
            version: 1,
            log_length: 1 << 20,
            log_offset: 1 << 20,
        };
        let b = h.to_bytes();
        assert_eq!(Header::parse(&b), Some(h));
        let mut bad = b.clone();
        bad[100] ^= 1;
        assert_eq!(Header::parse(&bad), None);
        let h2 = Header {
            sequence_number: 8,
            ..h
        };
        assert_eq!(current(Some(h), Some(h2)).unwrap().0, 1);
        assert!(current(
            Some(h),
            Some(Header {
                log_length: 2 << 20,
                ..h
            })
        )
        .is_err());
    }
}
