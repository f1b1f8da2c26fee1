//! The extent tree: `struct ext4_extent_header`, `struct ext4_extent_idx` and
//! `struct ext4_extent`, rooted in `i_block` with interior and leaf nodes in whole blocks.
//!
//! Every node visited is validated before use: magic, `eh_entries <= eh_max <=` what fits,
//! `eh_depth` exactly one less than its parent's (so a lookup descends at most
//! [`EXT4_MAX_EXTENT_DEPTH`] levels and a cycle cannot loop), keys strictly increasing and
//! inside the parent's key range, extents not overlapping and inside the filesystem.

use vdisk_block::{Error, Result};

use super::bytes::{le16, le32, put};
use super::checksum::crc32c_raw;
use super::Run;

/// `eh_magic`.
pub const EXT4_EXT_MAGIC: u16 = 0xF30A;
/// The deepest tree the kernel builds or accepts (EXT4_MAX_EXTENT_DEPTH).
pub const EXT4_MAX_EXTENT_DEPTH: u16 = 5;
/// `ee_len` above this marks an unwritten (preallocated) extent of `ee_len - 32768` blocks.
pub const EXT_INIT_MAX_LEN: u16 = 32768;
/// Size of the header and of each entry.
const ENTRY: usize = 12;

/// `struct ext4_extent_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtentHeader {
    /// Magic number, 0xF30A.
    pub eh_magic: u16,
    /// Number of valid entries following the header.
    pub eh_entries: u16,
    /// Maximum number of entries that could follow the header.
    pub eh_max: u16,
    /// Depth of this node in the tree; 0 means the entries are leaves (extents).
    pub eh_depth: u16,
    /// Generation of the tree (unused by Linux).
    pub eh_generation: u32,
}

/// `struct ext4_extent_idx`: an interior node entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtentIdx {
    /// This index node covers file blocks from `ei_block` onward.
    pub ei_block: u32,
    /// Block of the next level down (`ei_leaf_lo` + `ei_leaf_hi`).
    pub ei_leaf: u64,
}

/// `struct ext4_extent`: a leaf entry mapping a run of file blocks to disk blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First file block number that this extent covers.
    pub ee_block: u32,
    /// Number of blocks covered (the unwritten marker removed).
    pub len: u32,
    /// True when the extent is unwritten: allocated, but reads as zeros.
    pub unwritten: bool,
    /// First disk block (`ee_start_lo` + `ee_start_hi`).
    pub ee_start: u64,
}

/// One validated node.
#[derive(Debug, Clone)]
pub enum Node {
    /// An interior node (`eh_depth > 0`).
    Index(ExtentHeader, Vec<ExtentIdx>),
    /// A leaf node (`eh_depth == 0`).
    Leaf(ExtentHeader, Vec<Extent>),
}

/// What a node must satisfy, from where it was found.
pub struct Expect {
    /// The depth it must have (None for the root, which sets the depth).
    pub depth: Option<u16>,
    /// Its first key must be at least this (the parent index's `ei_block`).
    pub min_block: u32,
    /// Its keys and extents must end at or before this (the parent's next key), as u64 so
    /// 2^32 means "no bound".
    pub end_bound: u64,
    /// The filesystem's block count: every pointer must be below it.
    pub blocks_count: u64,
    /// The first block that may hold data (s_first_data_block).
    pub first_data_block: u64,
}

/// Parses and validates one node from `b` (60 bytes of `i_block`, or a whole block). `what`
/// names it in errors ("inode 12 extent root", "inode 12 extent block 5000").
pub fn parse_node(b: &[u8], e: &Expect, at: u64, what: &dyn Fn() -> String) -> Result<Node> {
    let corrupt = |msg: String| Error::corrupt_at(at, format!("{}: {msg}", what()));
    let h = ExtentHeader {
        eh_magic: le16(b, 0),
        eh_entries: le16(b, 2),
        eh_max: le16(b, 4),
        eh_depth: le16(b, 6),
        eh_generation: le32(b, 8),
    };
    if h.eh_magic != EXT4_EXT_MAGIC {
        return Err(corrupt(format!(
            "bad extent header magic {:#06x}",
            h.eh_magic
        )));
    }
    let capacity = b.len().saturating_sub(ENTRY) / ENTRY;
    if usize::from(h.eh_max) > capacity || h.eh_max == 0 {
        return Err(corrupt(format!(
            "eh_max {} does not fit the node ({capacity} entries)",
            h.eh_max
        )));
    }
    if h.eh_entries > h.eh_max {
        return Err(corrupt(format!(
            "eh_entries {} exceeds eh_max {}",
            h.eh_entries, h.eh_max
        )));
    }
    match e.depth {
        None if h.eh_depth > EXT4_MAX_EXTENT_DEPTH => {
            return Err(corrupt(format!(
                "extent tree depth {} exceeds {EXT4_MAX_EXTENT_DEPTH}",
                h.eh_depth
            )))
        }
        Some(d) if d != h.eh_depth => {
            return Err(corrupt(format!(
                "eh_depth {} where {d} was expected (a cycle or a damaged tree)",
                h.eh_depth
            )))
        }
        _ => {}
    }
    let n = usize::from(h.eh_entries);
    let entry = |i: usize| &b[ENTRY * (i + 1)..ENTRY * (i + 2)];
    let mut prev_end: u64 = u64::from(e.min_block);
    let mut prev_key: Option<u32> = None;
    if h.eh_depth > 0 {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            let x = entry(i);
            let idx = ExtentIdx {
                ei_block: le32(x, 0),
                ei_leaf: u64::from(le32(x, 4)) | (u64::from(le16(x, 8)) << 32),
            };
            // The first key is not checked against the parent's: lookups treat it as the
            // start of the node's range whatever it says (the kernel's binary search does),
            // and e2fsprogs writes first keys above their parent's.
            let key_ok = prev_key.is_none_or(|p| idx.ei_block > p);
            if !key_ok || u64::from(idx.ei_block) >= e.end_bound {
                return Err(corrupt(format!(
                    "index {i} key {} is out of order",
                    idx.ei_block
                )));
            }
            if idx.ei_leaf < e.first_data_block || idx.ei_leaf >= e.blocks_count {
                return Err(corrupt(format!(
                    "index {i} points to block {} outside the filesystem",
                    idx.ei_leaf
                )));
            }
            prev_key = Some(idx.ei_block);
            v.push(idx);
        }
        Ok(Node::Index(h, v))
    } else {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            let x = entry(i);
            let raw_len = le16(x, 4);
            let (len, unwritten) = if raw_len > EXT_INIT_MAX_LEN {
                (raw_len - EXT_INIT_MAX_LEN, true)
            } else {
                (raw_len, false)
            };
            let ext = Extent {
                ee_block: le32(x, 0),
                len: u32::from(len),
                unwritten,
                ee_start: u64::from(le32(x, 8)) | (u64::from(le16(x, 6)) << 32),
            };
            let end = u64::from(ext.ee_block) + u64::from(ext.len);
            if ext.len == 0 {
                return Err(corrupt(format!("extent {i} has zero length")));
            }
            if u64::from(ext.ee_block) < prev_end || end > e.end_bound {
                return Err(corrupt(format!(
                    "extent {i} (file blocks {}..{end}) overlaps its neighbours or lies outside its index",
                    ext.ee_block
                )));
            }
            let phys_end = ext.ee_start.checked_add(u64::from(ext.len));
            if ext.ee_start < e.first_data_block || phys_end.is_none_or(|pe| pe > e.blocks_count) {
                return Err(corrupt(format!(
                    "extent {i} maps to blocks {}+{} outside the filesystem",
                    ext.ee_start, ext.len
                )));
            }
            prev_end = end;
            v.push(ext);
        }
        Ok(Node::Leaf(h, v))
    }
}

/// Where the checksum tail of a block node lives: right after `eh_max` entries.
pub fn tail_offset(eh_max: u16) -> usize {
    ENTRY * (usize::from(eh_max) + 1)
}

/// The checksum a block node should carry in its tail: crc32c(inode seed, bytes before it).
pub fn compute_checksum(inode_seed: u32, block: &[u8], eh_max: u16) -> Option<u32> {
    let off = tail_offset(eh_max);
    block.get(..off).map(|b| crc32c_raw(inode_seed, b))
}

/// Verifies a block node's tail checksum.
pub fn verify_checksum(
    inode_seed: u32,
    block: &[u8],
    at: u64,
    what: &dyn Fn() -> String,
) -> Result<()> {
    let eh_max = le16(block, 4);
    let off = tail_offset(eh_max);
    let stored = le32(block, off);
    match compute_checksum(inode_seed, block, eh_max) {
        Some(want) if off + 4 <= block.len() && want == stored => Ok(()),
        Some(want) if off + 4 <= block.len() => Err(Error::corrupt_at(
            at,
            format!(
                "{}: extent block checksum {stored:#010x} does not match contents ({want:#010x})",
                what()
            ),
        )),
        _ => Err(Error::corrupt_at(
            at,
            format!("{}: extent block has no room for its checksum", what()),
        )),
    }
}

/// Finds the run of file blocks starting at `logical` in a validated tree. `read` fetches a
/// child node: it is given the child's block number and what it must satisfy.
pub fn lookup(
    root: Node,
    logical: u32,
    mut e: Expect,
    read: &mut dyn FnMut(u64, &Expect) -> Result<Node>,
) -> Result<Run> {
    let mut node = root;
    // Depth strictly decreases at each step and is at most EXT4_MAX_EXTENT_DEPTH.
    loop {
        match node {
            Node::Index(h, idx) => {
                if idx.is_empty() {
                    return Ok(hole(logical, e.end_bound));
                }
                // The last index whose key is <= logical; the first one covers everything
                // before the second key, as in the kernel's ext4_ext_binsearch_idx().
                let pos = idx.partition_point(|x| x.ei_block <= logical).max(1);
                let chosen = idx[pos - 1];
                let next = idx.get(pos).map_or(e.end_bound, |x| u64::from(x.ei_block));
                e = Expect {
                    depth: Some(h.eh_depth - 1),
                    min_block: if pos == 1 {
                        e.min_block
                    } else {
                        chosen.ei_block
                    },
                    end_bound: next.min(e.end_bound),
                    ..e
                };
                node = read(chosen.ei_leaf, &e)?;
            }
            Node::Leaf(_, ext) => {
                let pos = ext.partition_point(|x| x.ee_block <= logical);
                if pos > 0 {
                    let x = ext[pos - 1];
                    let end = u64::from(x.ee_block) + u64::from(x.len);
                    if u64::from(logical) < end {
                        let off = logical - x.ee_block;
                        let len = end - u64::from(logical);
                        return Ok(if x.unwritten {
                            Run::Zero { len }
                        } else {
                            Run::Data {
                                start: x.ee_start + u64::from(off),
                                len,
                            }
                        });
                    }
                }
                let to = ext.get(pos).map_or(e.end_bound, |x| u64::from(x.ee_block));
                return Ok(hole(logical, to.min(e.end_bound)));
            }
        }
    }
}

fn hole(logical: u32, to: u64) -> Run {
    Run::Zero {
        len: to.saturating_sub(u64::from(logical)).max(1),
    }
}

/// Sets the tail checksum of a block node (for the write side and for tests).
pub fn set_checksum(inode_seed: u32, block: &mut [u8]) {
    let eh_max = le16(block, 4);
    if let Some(c) = compute_checksum(inode_seed, block, eh_max) {
        put(block, tail_offset(eh_max), c.to_le_bytes());
    }
}
