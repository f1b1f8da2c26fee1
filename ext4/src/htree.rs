//! Hash tree directories: `struct dx_root` in the directory's first block, `struct dx_node`
//! interior blocks, each ending (with metadata_csum) in a `struct dx_tail`.
//!
//! Interior blocks look like one empty directory record spanning the block, so a linear walk
//! of an indexed directory's blocks sees exactly its entries. The engine reads indexed
//! directories that way (lookup scans the leaves), and uses this module to recognise interior
//! blocks and verify their checksums.

use vdisk_block::{Error, Result};

use super::bytes::{le16, le32, put, u8_at};
use super::checksum::crc32c_raw;
use super::dir_entry::rec_len_from_disk;

/// Offset of `dx_root_info` in the root block (after the "." and ".." records).
const DX_ROOT_INFO: usize = 0x18;
/// Offset of the count/limit header in the root block.
const DX_ROOT_COUNT: usize = 0x20;
/// Offset of the count/limit header in an interior block.
const DX_NODE_COUNT: usize = 0x8;

/// What kind of directory block this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DxKind {
    /// The `dx_root` (block 0 of an indexed directory).
    Root,
    /// A `dx_node` interior block.
    Node,
    /// A leaf of directory records.
    Leaf,
}

/// Classifies block `index` of a directory with EXT4_INDEX_FL.
pub fn classify(b: &[u8], index: u64) -> DxKind {
    let bs = b.len();
    if index == 0 {
        // "." of length 12, then ".." covering the rest, then dx_root_info of length 8.
        let dotdot_len = rec_len_from_disk(le16(b, 12 + 4), bs);
        if le16(b, 4) == 12 && dotdot_len == bs - 12 && u8_at(b, DX_ROOT_INFO + 5) == 8 {
            return DxKind::Root;
        }
        return DxKind::Leaf;
    }
    if le32(b, 0) == 0 && rec_len_from_disk(le16(b, 4), bs) == bs && u8_at(b, 6) == 0 {
        return DxKind::Node;
    }
    DxKind::Leaf
}

/// Verifies the `dx_tail` checksum of a root or interior block: crc32c(inode seed, the block up
/// to the end of the used entries, then the whole `dx_tail` with `dt_checksum` counted as zero).
pub fn verify_checksum(
    inode_seed: u32,
    b: &[u8],
    kind: DxKind,
    at: u64,
    what: &dyn Fn() -> String,
) -> Result<()> {
    let count_off = match kind {
        DxKind::Root => DX_ROOT_COUNT,
        DxKind::Node => DX_NODE_COUNT,
        DxKind::Leaf => return Ok(()),
    };
    let limit = usize::from(le16(b, count_off));
    let count = usize::from(le16(b, count_off + 2));
    let tail = count_off + limit * 8;
    if count > limit || tail + 8 > b.len() {
        return Err(Error::corrupt_at(
            at,
            format!(
                "{}: htree node count {count} / limit {limit} do not fit the block",
                what()
            ),
        ));
    }
    let want = compute_checksum(inode_seed, b, count_off, count, tail);
    let stored = le32(b, tail + 4);
    if want != stored {
        return Err(Error::corrupt_at(
            at,
            format!(
                "{}: htree node checksum {stored:#010x} does not match contents ({want:#010x})",
                what()
            ),
        ));
    }
    Ok(())
}

fn compute_checksum(seed: u32, b: &[u8], count_off: usize, count: usize, tail: usize) -> u32 {
    let c = crc32c_raw(seed, &b[..count_off + count * 8]);
    let c = crc32c_raw(c, &b[tail..tail + 4]);
    crc32c_raw(c, &[0; 4])
}

/// Sets the `dx_tail` checksum (for the write side and for tests).
pub fn set_checksum(inode_seed: u32, b: &mut [u8], kind: DxKind) {
    let count_off = match kind {
        DxKind::Root => DX_ROOT_COUNT,
        DxKind::Node => DX_NODE_COUNT,
        DxKind::Leaf => return,
    };
    let limit = usize::from(le16(b, count_off));
    let count = usize::from(le16(b, count_off + 2));
    let tail = count_off + limit * 8;
    if count <= limit && tail + 8 <= b.len() {
        let c = compute_checksum(inode_seed, b, count_off, count, tail);
        put(b, tail + 4, c.to_le_bytes());
    }
}
