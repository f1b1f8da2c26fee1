//! Extended attributes: `struct ext4_xattr_entry` lists in the inode's spare space (after a
//! 4-byte `ext4_xattr_ibody_header`) and in an external block (after a 32-byte
//! `ext4_xattr_header`), with values stored in the same area, or with ea_inode in an inode of
//! their own.

use vdisk_block::{Error, Result};

use super::bytes::{le16, le32, put, u8_at};
use super::checksum::crc32c_raw;

/// `h_magic` of both headers.
pub const EXT4_XATTR_MAGIC: u32 = 0xEA02_0000;
/// Size of the external block header; entries follow it.
const BLOCK_HEADER: usize = 32;
/// Offset of `h_checksum` in the block header.
const H_CHECKSUM: usize = 0x10;
/// Size of an entry before its name.
const ENTRY_HEADER: usize = 16;
/// The largest value Linux reads or writes (XATTR_SIZE_MAX).
pub const XATTR_SIZE_MAX: u32 = 65536;

/// `e_name_index` values and the prefix each stands for.
pub const NAME_INDEXES: &[(u8, &str)] = &[
    (1, "user."),
    (2, "system.posix_acl_access"),
    (3, "system.posix_acl_default"),
    (4, "trusted."),
    (6, "security."),
    (7, "system."),
    (8, "system.richacl"),
];
/// `e_name_index` of `system.data` (inline data), hidden from listings as the kernel does.
pub const EXT4_XATTR_INDEX_SYSTEM: u8 = 7;

/// Where an attribute's value lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XattrValue {
    /// In the same area as the entry.
    Inline(Vec<u8>),
    /// In inode `inum` (ea_inode), `size` bytes.
    Inode {
        /// The inode holding the value.
        inum: u32,
        /// The value's length.
        size: u32,
    },
}

/// One attribute entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XattrEntry {
    /// `e_name_index`: the name's prefix.
    pub e_name_index: u8,
    /// The name after the prefix.
    pub name: Vec<u8>,
    /// The value.
    pub value: XattrValue,
}

impl XattrEntry {
    /// The full name ("user.foo"), or None for an index Linux does not expose.
    pub fn full_name(&self) -> Option<Vec<u8>> {
        let (_, prefix) = NAME_INDEXES.iter().find(|(i, _)| *i == self.e_name_index)?;
        let mut n = prefix.as_bytes().to_vec();
        n.extend_from_slice(&self.name);
        Some(n)
    }

    /// True for the entry holding inline data (`system.data`).
    pub fn is_system_data(&self) -> bool {
        self.e_name_index == EXT4_XATTR_INDEX_SYSTEM && self.name == b"data"
    }
}

/// Parses the in-inode attribute area (starting with the ibody header's magic). An area
/// without the magic holds no attributes.
pub fn parse_ibody(area: &[u8], at: u64, what: &dyn Fn() -> String) -> Result<Vec<XattrEntry>> {
    if area.len() < 4 || le32(area, 0) != EXT4_XATTR_MAGIC {
        return Ok(Vec::new());
    }
    // In-inode value offsets count from the first entry.
    parse_entries(&area[4..], 0, at + 4, what)
}

/// Parses an external attribute block, verifying its header and (with a seed) its checksum.
pub fn parse_block(
    b: &[u8],
    block_nr: u64,
    csum_seed: Option<u32>,
    at: u64,
    what: &dyn Fn() -> String,
) -> Result<Vec<XattrEntry>> {
    let bad = |m: String| Error::corrupt_at(at, format!("{}: xattr block {block_nr}: {m}", what()));
    if le32(b, 0) != EXT4_XATTR_MAGIC {
        return Err(bad(format!("bad magic {:#010x}", le32(b, 0))));
    }
    if le32(b, 8) != 1 {
        return Err(bad(format!("h_blocks is {}, not 1", le32(b, 8))));
    }
    if let Some(seed) = csum_seed {
        let want = compute_block_checksum(seed, block_nr, b);
        let stored = le32(b, H_CHECKSUM);
        if want != stored {
            return Err(bad(format!(
                "checksum {stored:#010x} does not match contents ({want:#010x})"
            )));
        }
    }
    parse_entries(b, BLOCK_HEADER, at, what)
}

/// The checksum an external block should carry: crc32c(fs seed, le64 block number, block with
/// `h_checksum` zeroed).
pub fn compute_block_checksum(seed: u32, block_nr: u64, b: &[u8]) -> u32 {
    let mut copy = b.to_vec();
    put(&mut copy, H_CHECKSUM, [0; 4]);
    crc32c_raw(crc32c_raw(seed, &block_nr.to_le_bytes()), &copy)
}

/// Parses entries starting at `first` in `area`; value offsets are relative to `area`'s start.
fn parse_entries(
    area: &[u8],
    first: usize,
    at: u64,
    what: &dyn Fn() -> String,
) -> Result<Vec<XattrEntry>> {
    let mut v = Vec::new();
    let mut pos = first;
    // Each entry takes at least 16 bytes, so the area's length bounds the loop.
    loop {
        let bad = |m: String| {
            Error::corrupt_at(
                at + pos as u64,
                format!("{}: xattr entry at {pos}: {m}", what()),
            )
        };
        if pos + 4 > area.len() {
            return Err(bad("entry list runs past the end of its area".into()));
        }
        if le32(area, pos) == 0 {
            return Ok(v);
        }
        if pos + ENTRY_HEADER > area.len() {
            return Err(bad("entry runs past the end of its area".into()));
        }
        let name_len = usize::from(u8_at(area, pos));
        let e_name_index = u8_at(area, pos + 1);
        let value_offs = usize::from(le16(area, pos + 2));
        let value_inum = le32(area, pos + 4);
        let value_size = le32(area, pos + 8);
        let name_end = pos + ENTRY_HEADER + name_len;
        if name_end > area.len() {
            return Err(bad("name runs past the end of its area".into()));
        }
        if value_size > XATTR_SIZE_MAX {
            return Err(bad(format!(
                "value size {value_size} exceeds {XATTR_SIZE_MAX}"
            )));
        }
        let name = area[pos + ENTRY_HEADER..name_end].to_vec();
        let value = if value_inum != 0 {
            XattrValue::Inode {
                inum: value_inum,
                size: value_size,
            }
        } else {
            let end = value_offs + value_size as usize;
            if end > area.len() {
                return Err(bad(format!(
                    "value at {value_offs}+{value_size} runs past the end of its area"
                )));
            }
            XattrValue::Inline(area[value_offs..end].to_vec())
        };
        v.push(XattrEntry {
            e_name_index,
            name,
            value,
        });
        pos = (name_end + 3) & !3;
    }
}

/// Converts an ACL from ext4's compact disk form (`ext4_acl_header` version 1, short entries
/// for the owner/group/mask/other tags) to the `posix_acl_xattr` form (version 2, every entry
/// 8 bytes) that getxattr returns.
pub fn acl_to_xattr(disk: &[u8]) -> Result<Vec<u8>> {
    const ACL_USER: u16 = 0x02;
    const ACL_GROUP: u16 = 0x08;
    const ACL_UNDEFINED_ID: u32 = u32::MAX;
    let bad = || Error::corrupt("posix ACL attribute is malformed");
    if disk.len() < 4 || le32(disk, 0) != 1 {
        return Err(bad());
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut pos = 4;
    while pos < disk.len() {
        if pos + 4 > disk.len() {
            return Err(bad());
        }
        let tag = le16(disk, pos);
        let perm = le16(disk, pos + 2);
        let id = if tag == ACL_USER || tag == ACL_GROUP {
            if pos + 8 > disk.len() {
                return Err(bad());
            }
            let id = le32(disk, pos + 4);
            pos += 8;
            id
        } else {
            pos += 4;
            ACL_UNDEFINED_ID
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}
