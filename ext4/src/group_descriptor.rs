//! `struct ext4_group_desc`: where one block group keeps its bitmaps and inode table, with its
//! free counts and flags. 32 bytes, or `s_desc_size` (64 or more) with the 64bit feature.

use vdisk_block::{Error, Result};

use super::bytes::{le16, le32, put};
use super::checksum::{crc16, crc32c_raw};
use super::superblock::{ro_compat, Superblock};

/// `bg_flags`: the inode table and bitmap are not initialized.
pub const EXT4_BG_INODE_UNINIT: u16 = 0x1;
/// `bg_flags`: the block bitmap is not initialized.
pub const EXT4_BG_BLOCK_UNINIT: u16 = 0x2;
/// `bg_flags`: the inode table is zeroed.
pub const EXT4_BG_INODE_ZEROED: u16 = 0x4;

/// Offset of `bg_checksum` inside the descriptor.
const BG_CHECKSUM: usize = 0x1E;

/// One group descriptor, with the `_lo`/`_hi` halves joined.
#[derive(Debug, Clone)]
pub struct GroupDesc {
    /// The group's number.
    pub group: u32,
    /// The descriptor's bytes as read (desc_size long), for the write side.
    pub raw: Vec<u8>,
    /// Location of the block bitmap.
    pub bg_block_bitmap: u64,
    /// Location of the inode bitmap.
    pub bg_inode_bitmap: u64,
    /// Location of the inode table.
    pub bg_inode_table: u64,
    /// Free block count.
    pub bg_free_blocks_count: u32,
    /// Free inode count.
    pub bg_free_inodes_count: u32,
    /// Directory count.
    pub bg_used_dirs_count: u32,
    /// Block group flags (EXT4_BG_*).
    pub bg_flags: u16,
    /// Unused inode count at the end of the inode table.
    pub bg_itable_unused: u32,
    /// Group descriptor checksum.
    pub bg_checksum: u16,
}

impl GroupDesc {
    /// Parses descriptor `group` from its `sb.desc_size` bytes at device offset `at`, verifying
    /// its checksum when the filesystem has one and the inode table's position.
    pub fn parse(sb: &Superblock, group: u32, raw: &[u8], at: u64) -> Result<GroupDesc> {
        let b = raw;
        let big = sb.desc_size >= 64;
        let hi32 = |off: usize| {
            if big {
                u64::from(le32(b, off)) << 32
            } else {
                0
            }
        };
        let hi16 = |off: usize| {
            if big {
                u32::from(le16(b, off)) << 16
            } else {
                0
            }
        };
        let d = GroupDesc {
            group,
            raw: raw.to_vec(),
            bg_block_bitmap: u64::from(le32(b, 0x0)) | hi32(0x20),
            bg_inode_bitmap: u64::from(le32(b, 0x4)) | hi32(0x24),
            bg_inode_table: u64::from(le32(b, 0x8)) | hi32(0x28),
            bg_free_blocks_count: u32::from(le16(b, 0xC)) | hi16(0x2C),
            bg_free_inodes_count: u32::from(le16(b, 0xE)) | hi16(0x2E),
            bg_used_dirs_count: u32::from(le16(b, 0x10)) | hi16(0x30),
            bg_flags: le16(b, 0x12),
            bg_itable_unused: u32::from(le16(b, 0x1C)) | hi16(0x32),
            bg_checksum: le16(b, BG_CHECKSUM),
        };
        if let Some(want) = compute_checksum(sb, group, raw) {
            if want != d.bg_checksum {
                return Err(Error::corrupt_at(
                    at,
                    format!(
                        "group descriptor {group}: checksum {:#06x} does not match contents ({want:#06x})",
                        d.bg_checksum
                    ),
                ));
            }
        }
        let itb = u64::from(sb.s_inodes_per_group).div_ceil(u64::from(sb.inodes_per_block()));
        let table_ok = d.bg_inode_table >= u64::from(sb.s_first_data_block)
            && d.bg_inode_table
                .checked_add(itb)
                .is_some_and(|end| end <= sb.s_blocks_count);
        if !table_ok {
            return Err(Error::corrupt_at(
                at,
                format!(
                    "group descriptor {group}: inode table at block {} lies outside the filesystem",
                    d.bg_inode_table
                ),
            ));
        }
        Ok(d)
    }

    /// True when the group's inode table is uninitialized (and so holds no inodes in use).
    pub fn inode_uninit(&self, sb: &Superblock) -> bool {
        sb.has_group_csum() && self.bg_flags & EXT4_BG_INODE_UNINIT != 0
    }
}

/// The checksum a descriptor should carry, or `None` when the filesystem has none: the low 16
/// bits of crc32c(seed, group, desc) with metadata_csum, else crc16(uuid, group, desc) with
/// gdt_csum, `bg_checksum` itself counted as zero.
pub fn compute_checksum(sb: &Superblock, group: u32, raw: &[u8]) -> Option<u16> {
    let size = (sb.desc_size as usize).min(raw.len());
    let mut d = raw[..size].to_vec();
    put(&mut d, BG_CHECKSUM, [0, 0]);
    let le_group = group.to_le_bytes();
    if let Some(seed) = sb.csum_seed {
        let c = crc32c_raw(seed, &le_group);
        // The low half is what the descriptor stores.
        return Some((crc32c_raw(c, &d) & 0xFFFF) as u16);
    }
    if !sb.has_ro_compat(ro_compat::GDT_CSUM) {
        return None;
    }
    let mut c = crc16(!0, &sb.s_uuid);
    c = crc16(c, &le_group);
    c = crc16(c, &d[..BG_CHECKSUM]);
    // crc16 skips the checksum field itself, then covers the 64-bit half if present.
    if size > BG_CHECKSUM + 2 {
        c = crc16(c, &d[BG_CHECKSUM + 2..]);
    }
    Some(c)
}

impl GroupDesc {
    /// Writes the counts, flags and location fields back into `raw` and re-seals the
    /// descriptor checksum.
    pub fn serialize(&mut self, sb: &Superblock) {
        let big = sb.desc_size >= 64;
        let b = &mut self.raw;
        let lo16 = |v: u32| (v as u16).to_le_bytes();
        let hi16 = |v: u32| ((v >> 16) as u16).to_le_bytes();
        put(b, 0xC, lo16(self.bg_free_blocks_count));
        put(b, 0xE, lo16(self.bg_free_inodes_count));
        put(b, 0x10, lo16(self.bg_used_dirs_count));
        put(b, 0x12, self.bg_flags.to_le_bytes());
        put(b, 0x1C, lo16(self.bg_itable_unused));
        if big {
            put(b, 0x2C, hi16(self.bg_free_blocks_count));
            put(b, 0x2E, hi16(self.bg_free_inodes_count));
            put(b, 0x30, hi16(self.bg_used_dirs_count));
            put(b, 0x32, hi16(self.bg_itable_unused));
        }
        if let Some(c) = compute_checksum(sb, self.group, &self.raw) {
            self.bg_checksum = c;
            put(&mut self.raw, BG_CHECKSUM, c.to_le_bytes());
        }
    }

    /// Records the metadata_csum checksum of the block bitmap `bitmap` (the first
    /// blocks-per-group / 8 bytes count).
    pub fn set_block_bitmap_csum(&mut self, sb: &Superblock, bitmap: &[u8]) {
        if let Some(seed) = sb.csum_seed {
            let n = (sb.s_blocks_per_group as usize / 8).min(bitmap.len());
            let c = crc32c_raw(seed, &bitmap[..n]);
            put(&mut self.raw, 0x18, (c as u16).to_le_bytes());
            if sb.desc_size >= 64 {
                put(&mut self.raw, 0x38, ((c >> 16) as u16).to_le_bytes());
            }
        }
    }

    /// Records the metadata_csum checksum of the inode bitmap `bitmap` (the first
    /// inodes-per-group / 8 bytes count).
    pub fn set_inode_bitmap_csum(&mut self, sb: &Superblock, bitmap: &[u8]) {
        if let Some(seed) = sb.csum_seed {
            let n = (sb.s_inodes_per_group as usize / 8).min(bitmap.len());
            let c = crc32c_raw(seed, &bitmap[..n]);
            put(&mut self.raw, 0x1A, (c as u16).to_le_bytes());
            if sb.desc_size >= 64 {
                put(&mut self.raw, 0x3A, ((c >> 16) as u16).to_le_bytes());
            }
        }
    }
}
