//! Linear directories: `struct ext4_dir_entry_2` records packed in directory blocks (or in
//! inline data), each with its length, and with metadata_csum a 12-byte
//! `struct ext4_dir_entry_tail` faking an empty entry at the end of each block.

use vdisk_block::{Error, Result};

use super::bytes::{le16, le32, put, u8_at};
use super::checksum::crc32c_raw;

/// Size of `struct ext4_dir_entry_tail`.
pub const DIR_TAIL_SIZE: usize = 12;
/// `det_reserved_ft` of the checksum tail.
pub const EXT4_FT_DIR_CSUM: u8 = 0xDE;
/// The longest name an entry can hold.
pub const EXT4_NAME_LEN: usize = 255;
/// The smallest record the kernel accepts (EXT4_DIR_REC_LEN(1)).
const MIN_REC_LEN: usize = 12;

/// `file_type` values of `ext4_dir_entry_2`.
pub mod ft {
    /// Unknown.
    pub const UNKNOWN: u8 = 0;
    /// Regular file.
    pub const REG_FILE: u8 = 1;
    /// Directory.
    pub const DIR: u8 = 2;
    /// Character device.
    pub const CHRDEV: u8 = 3;
    /// Block device.
    pub const BLKDEV: u8 = 4;
    /// FIFO.
    pub const FIFO: u8 = 5;
    /// Socket.
    pub const SOCK: u8 = 6;
    /// Symbolic link.
    pub const SYMLINK: u8 = 7;
}

/// One live directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry2 {
    /// Number of the inode this entry points to.
    pub inode: u32,
    /// Length of this record.
    pub rec_len: u32,
    /// File type code (0 when the filesystem lacks the filetype feature).
    pub file_type: u8,
    /// The name, as bytes.
    pub name: Vec<u8>,
    /// Offset of the record in the buffer it was parsed from.
    pub offset: usize,
}

/// Decodes `rec_len` as the kernel's `ext4_rec_len_from_disk`: 64 KiB blocks store 65536 as
/// 0 or 65535, and larger lengths use the low two bits as bits 16-17.
pub fn rec_len_from_disk(v: u16, block_size: usize) -> usize {
    let v = usize::from(v);
    if block_size < 65536 {
        return v;
    }
    if v == 65535 || v == 0 {
        return 65536;
    }
    (v & 65532) | ((v & 3) << 16)
}

/// Walks the records of one block (or inline area) `b`, calling `f` for each live entry
/// (inode != 0). `filetype` says whether the FILETYPE feature is on (else the name length is
/// 16 bits and there is no type byte). Stops early when `f` returns false.
pub fn parse_entries(
    b: &[u8],
    filetype: bool,
    block_size: usize,
    at: u64,
    what: &dyn Fn() -> String,
    f: &mut dyn FnMut(DirEntry2) -> bool,
) -> Result<()> {
    let mut pos = 0usize;
    while pos < b.len() {
        let bad = |msg: String| {
            Error::corrupt_at(
                at + pos as u64,
                format!("{}: entry at {pos}: {msg}", what()),
            )
        };
        if pos + 8 > b.len() {
            return Err(bad("record header runs past the end of the block".into()));
        }
        let inode = le32(b, pos);
        let rec_len = rec_len_from_disk(le16(b, pos + 4), block_size);
        let (name_len, file_type) = if filetype {
            (usize::from(u8_at(b, pos + 6)), u8_at(b, pos + 7))
        } else {
            (usize::from(le16(b, pos + 6)), 0)
        };
        if rec_len < MIN_REC_LEN.min(b.len() - pos) || rec_len % 4 != 0 {
            return Err(bad(format!("rec_len {rec_len} is invalid")));
        }
        if pos + rec_len > b.len() {
            return Err(bad(format!(
                "rec_len {rec_len} runs past the end of the block"
            )));
        }
        if name_len > EXT4_NAME_LEN || 8 + name_len > rec_len {
            return Err(bad(format!(
                "name_len {name_len} does not fit rec_len {rec_len}"
            )));
        }
        if inode != 0 {
            if name_len == 0 {
                return Err(bad("live entry has an empty name".into()));
            }
            let e = DirEntry2 {
                inode,
                rec_len: rec_len as u32,
                file_type,
                name: b[pos + 8..pos + 8 + name_len].to_vec(),
                offset: pos,
            };
            if !f(e) {
                return Ok(());
            }
        }
        pos += rec_len;
    }
    Ok(())
}

/// True when the block ends with a metadata_csum tail record.
pub fn has_tail(b: &[u8]) -> bool {
    let n = b.len();
    n >= DIR_TAIL_SIZE && {
        let t = &b[n - DIR_TAIL_SIZE..];
        le32(t, 0) == 0
            && le16(t, 4) == DIR_TAIL_SIZE as u16
            && u8_at(t, 6) == 0
            && u8_at(t, 7) == EXT4_FT_DIR_CSUM
    }
}

/// The checksum a leaf block's tail should carry: crc32c(inode seed, block before the tail).
pub fn compute_checksum(inode_seed: u32, b: &[u8]) -> u32 {
    crc32c_raw(inode_seed, &b[..b.len().saturating_sub(DIR_TAIL_SIZE)])
}

/// Verifies a leaf block's tail checksum.
pub fn verify_checksum(
    inode_seed: u32,
    b: &[u8],
    at: u64,
    what: &dyn Fn() -> String,
) -> Result<()> {
    if !has_tail(b) {
        return Err(Error::corrupt_at(
            at,
            format!("{}: directory block has no checksum tail", what()),
        ));
    }
    let stored = le32(b, b.len() - 4);
    let want = compute_checksum(inode_seed, b);
    if stored != want {
        return Err(Error::corrupt_at(
            at,
            format!("{}: directory block checksum {stored:#010x} does not match contents ({want:#010x})", what()),
        ));
    }
    Ok(())
}

/// Sets a leaf block's tail checksum (for the write side and for tests).
pub fn set_checksum(inode_seed: u32, b: &mut [u8]) {
    let c = compute_checksum(inode_seed, b);
    let n = b.len();
    put(b, n - 4, c.to_le_bytes());
}
