//! The dynamic disk header: 1024 bytes at the footer's `Data Offset` of dynamic and
//! differencing disks, naming the block allocation table, the block size and (for
//! differencing disks) the parent. All fields are big-endian.

use vdisk_block::{Error, Result};

use crate::footer::{be32, be64, checksum};

/// Size of the header on disk.
pub const HEADER_SIZE: usize = 1024;
/// The header's cookie.
pub const COOKIE: &[u8; 8] = b"cxsparse";
/// How many parent locator entries the header has.
pub const LOCATORS: usize = 8;
/// Platform code of a locator holding a relative Windows path in UTF-16LE.
pub const PLATFORM_W2RU: u32 = u32::from_be_bytes(*b"W2ru");
/// Platform code of a locator holding an absolute Windows path in UTF-16LE.
pub const PLATFORM_W2KU: u32 = u32::from_be_bytes(*b"W2ku");
/// Platform code of a locator holding a Mac OS X file URL in UTF-8.
pub const PLATFORM_MACX: u32 = u32::from_be_bytes(*b"MacX");

/// One "Parent Locator Entry".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParentLocator {
    /// "Platform Code: describes which platform-specific format is used for the file
    /// locator" (0 = none).
    pub platform_code: u32,
    /// "Platform Data Space: the number of 512-byte sectors needed to store the parent hard
    /// disk locator".
    pub platform_data_space: u32,
    /// "Platform Data Length: the actual length of the parent hard disk locator in bytes".
    pub platform_data_length: u32,
    /// "Platform Data Offset: the absolute file offset in bytes where the platform specific
    /// file locator data is stored".
    pub platform_data_offset: u64,
}

/// The dynamic disk header, as the VHD specification names its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    /// "Data Offset: unused, should be set to 0xFFFFFFFF" (qemu writes 64 ones).
    pub data_offset: u64,
    /// "Table Offset: the absolute byte offset of the Block Allocation Table (BAT)".
    pub table_offset: u64,
    /// "Header Version" (0x00010000).
    pub header_version: u32,
    /// "Max Table Entries: the maximum entries present in the BAT".
    pub max_table_entries: u32,
    /// "Block Size: a block is a unit of expansion for dynamic and differencing hard disks",
    /// in bytes (2 MiB by default).
    pub block_size: u32,
    /// "Checksum: the one's complement of the sum of all the bytes in the header without the
    /// checksum field".
    pub checksum: u32,
    /// "Parent Unique ID": the parent's footer `Unique Id` (differencing disks).
    pub parent_unique_id: [u8; 16],
    /// "Parent Time Stamp: the modification time stamp of the parent hard disk".
    pub parent_time_stamp: u32,
    /// "Parent Unicode Name: the file name of the parent hard disk" (UTF-16BE, 512 bytes).
    pub parent_unicode_name: [u8; 512],
    /// "Parent Locator Entries".
    pub parent_locators: [ParentLocator; LOCATORS],
}

impl DynamicHeader {
    /// Parses a header, checking its cookie and checksum.
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Result<DynamicHeader> {
        if !b.starts_with(COOKIE) {
            return Err(Error::corrupt(
                "the dynamic disk header has no 'cxsparse' cookie",
            ));
        }
        let mut parent_unicode_name = [0u8; 512];
        parent_unicode_name.copy_from_slice(&b[64..576]);
        let mut parent_locators = [ParentLocator::default(); LOCATORS];
        for (i, l) in parent_locators.iter_mut().enumerate() {
            let at = 576 + 24 * i;
            *l = ParentLocator {
                platform_code: be32(b, at),
                platform_data_space: be32(b, at + 4),
                platform_data_length: be32(b, at + 8),
                platform_data_offset: be64(b, at + 16),
            };
        }
        let mut parent_unique_id = [0u8; 16];
        parent_unique_id.copy_from_slice(&b[40..56]);
        let h = DynamicHeader {
            data_offset: be64(b, 8),
            table_offset: be64(b, 16),
            header_version: be32(b, 24),
            max_table_entries: be32(b, 28),
            block_size: be32(b, 32),
            checksum: be32(b, 36),
            parent_unique_id,
            parent_time_stamp: be32(b, 56),
            parent_unicode_name,
            parent_locators,
        };
        let want = checksum(b, 36);
        if h.checksum != want {
            return Err(Error::corrupt(format!(
                "the dynamic disk header checksum is {:#010x}, but the header sums to {want:#010x}",
                h.checksum
            )));
        }
        Ok(h)
    }

    /// The header's bytes, with its checksum computed afresh.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..8].copy_from_slice(COOKIE);
        b[8..16].copy_from_slice(&self.data_offset.to_be_bytes());
        b[16..24].copy_from_slice(&self.table_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.header_version.to_be_bytes());
        b[28..32].copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[32..36].copy_from_slice(&self.block_size.to_be_bytes());
        b[40..56].copy_from_slice(&self.parent_unique_id);
        b[56..60].copy_from_slice(&self.parent_time_stamp.to_be_bytes());
        b[64..576].copy_from_slice(&self.parent_unicode_name);
        for (i, l) in self.parent_locators.iter().enumerate() {
            let at = 576 + 24 * i;
            b[at..at + 4].copy_from_slice(&l.platform_code.to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&l.platform_data_space.to_be_bytes());
            b[at + 8..at + 12].copy_from_slice(&l.platform_data_length.to_be_bytes());
            b[at + 16..at + 24].copy_from_slice(&l.platform_data_offset.to_be_bytes());
        }
        let sum = checksum(&b, 36);
        b[36..40].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// The parent's name from `Parent Unicode Name` (UTF-16BE up to the first NUL), if any.
    pub fn parent_name(&self) -> Option<String> {
        let units: Vec<u16> = self
            .parent_unicode_name
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        if units.is_empty() {
            return None;
        }
        Some(String::from_utf16_lossy(&units))
    }
}

/// Encodes `name` as `Parent Unicode Name` (UTF-16BE, NUL-padded; too long names are refused).
pub fn encode_parent_name(name: &str) -> Result<[u8; 512]> {
    let mut out = [0u8; 512];
    let units: Vec<u16> = name.encode_utf16().collect();
    if units.len() > 255 {
        return Err(Error::invalid(format!(
            "the parent name '{name}' is longer than the 255 UTF-16 units a VHD header holds"
        )));
    }
    for (i, u) in units.iter().enumerate() {
        out[2 * i..2 * i + 2].copy_from_slice(&u.to_be_bytes());
    }
    Ok(out)
}

/// Decodes a W2ru/W2ku locator's UTF-16LE bytes into a path with `/` separators.
pub fn decode_windows_locator(data: &[u8]) -> String {
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units).replace('\\', "/")
}

/// Encodes a path as a W2ru/W2ku locator (UTF-16LE, `\` separators).
pub fn encode_windows_locator(path: &str) -> Vec<u8> {
    path.replace('/', "\\")
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect()
}
