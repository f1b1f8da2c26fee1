//! `struct ext4_inode`: one file's metadata, `s_inode_size` bytes in its group's inode table.
//! The first 128 bytes are the original ext2 inode; `i_extra_isize` more bytes carry the
//! nanosecond timestamps, creation time and the checksum's high half; the rest of the slot is
//! in-inode extended attribute space.

use vdisk_block::{Error, Result};

use super::bytes::{le16, le32, put};
use super::checksum::crc32c_raw;
use super::superblock::{ro_compat, Superblock};

/// The root directory's inode number.
pub const EXT4_ROOT_INO: u32 = 2;
/// Size of the original (ext2) inode.
pub const EXT4_GOOD_OLD_INODE_SIZE: usize = 128;
/// Size of `i_block`, the 15 words of block map, extent root or inline data.
pub const I_BLOCK_SIZE: usize = 60;
/// Offset of `i_block`.
pub const I_BLOCK: usize = 0x28;

/// `i_flags`: the directory has an htree index.
pub const EXT4_INDEX_FL: u32 = 0x1000;
/// `i_flags`: the file is encrypted.
pub const EXT4_ENCRYPT_FL: u32 = 0x800;
/// `i_flags`: `i_blocks` counts filesystem blocks, not 512-byte sectors.
pub const EXT4_HUGE_FILE_FL: u32 = 0x40000;
/// `i_flags`: `i_block` holds an extent tree.
pub const EXT4_EXTENTS_FL: u32 = 0x80000;
/// `i_flags`: the file is protected by fs-verity.
pub const EXT4_VERITY_FL: u32 = 0x100000;
/// `i_flags`: the inode stores a large extended attribute value.
pub const EXT4_EA_INODE_FL: u32 = 0x200000;
/// `i_flags`: the data lives in `i_block` and the `system.data` xattr.
pub const EXT4_INLINE_DATA_FL: u32 = 0x1000_0000;
/// `i_flags`: the directory is case-insensitive.
pub const EXT4_CASEFOLD_FL: u32 = 0x4000_0000;

/// The file type bits of `i_mode`.
pub const S_IFMT: u16 = 0xF000;
/// Socket.
pub const S_IFSOCK: u16 = 0xC000;
/// Symbolic link.
pub const S_IFLNK: u16 = 0xA000;
/// Regular file.
pub const S_IFREG: u16 = 0x8000;
/// Block device.
pub const S_IFBLK: u16 = 0x6000;
/// Directory.
pub const S_IFDIR: u16 = 0x4000;
/// Character device.
pub const S_IFCHR: u16 = 0x2000;
/// FIFO.
pub const S_IFIFO: u16 = 0x1000;

/// A timestamp as the inode records it: seconds since the epoch (with the extra epoch bits
/// applied) and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InodeTime {
    /// Seconds since 1970-01-01 UTC.
    pub secs: i64,
    /// Nanoseconds, below 1e9.
    pub nanos: u32,
}

impl InodeTime {
    /// Decodes a 32-bit seconds field and, when present, its `_extra` word: the low two bits
    /// extend the epoch, the rest are nanoseconds.
    fn decode(secs: u32, extra: Option<u32>) -> InodeTime {
        // The base field is signed: times before 1970 are negative.
        let mut s = i64::from(secs as i32);
        let mut nanos = 0;
        if let Some(x) = extra {
            s += i64::from(x & 3) << 32;
            nanos = (x >> 2).min(999_999_999);
        }
        InodeTime { secs: s, nanos }
    }
}

/// A parsed inode. The fields keep the spec's names; `_lo`/`_hi` halves are joined.
#[derive(Debug, Clone)]
pub struct Inode {
    /// The inode number.
    pub ino: u32,
    /// The `s_inode_size` bytes as read, for the write side and the xattr area.
    pub raw: Vec<u8>,
    /// File mode: type and permission bits.
    pub i_mode: u16,
    /// Owner user id (lo + high).
    pub i_uid: u32,
    /// Owner group id (lo + high).
    pub i_gid: u32,
    /// Size in bytes (i_size_lo + i_size_high).
    pub i_size: u64,
    /// Last access time.
    pub i_atime: InodeTime,
    /// Last inode change time.
    pub i_ctime: InodeTime,
    /// Last data modification time.
    pub i_mtime: InodeTime,
    /// Creation time, when the inode is large enough to hold it.
    pub i_crtime: Option<InodeTime>,
    /// Deletion time.
    pub i_dtime: u32,
    /// Hard link count.
    pub i_links_count: u16,
    /// Block count (lo + high), in the unit `i_flags` and the features say.
    pub i_blocks: u64,
    /// Inode flags (EXT4_*_FL).
    pub i_flags: u32,
    /// The 60 bytes of block map, extent tree root, inline data or fast symlink target.
    pub i_block: [u8; I_BLOCK_SIZE],
    /// File version (for NFS).
    pub i_generation: u32,
    /// Extended attribute block (lo + high).
    pub i_file_acl: u64,
    /// Bytes beyond the original 128 that are in use.
    pub i_extra_isize: u16,
    /// Inode checksum (lo, plus hi when the inode is large enough).
    pub i_checksum: u32,
}

impl Inode {
    /// Parses inode `ino` from its raw slot (`s_inode_size` bytes) at device offset `at`,
    /// verifying its checksum with metadata_csum.
    pub fn parse(sb: &Superblock, ino: u32, raw: &[u8], at: u64) -> Result<Inode> {
        let b = raw;
        if b.len() < EXT4_GOOD_OLD_INODE_SIZE {
            return Err(Error::corrupt_at(
                at,
                format!("inode {ino}: slot is too short"),
            ));
        }
        let large = b.len() > EXT4_GOOD_OLD_INODE_SIZE;
        let i_extra_isize = if large { le16(b, 0x80) } else { 0 };
        let inode_end = EXT4_GOOD_OLD_INODE_SIZE + usize::from(i_extra_isize);
        if inode_end > b.len() || i_extra_isize % 4 != 0 {
            return Err(Error::corrupt_at(
                at + 0x80,
                format!("inode {ino}: i_extra_isize {i_extra_isize} is impossible"),
            ));
        }
        // A field of the extra area exists when i_extra_isize covers it.
        let fits = |off: usize, len: usize| off + len <= inode_end;
        let extra = |off: usize| fits(off, 4).then(|| le32(b, off));

        let has_hi = fits(0x82, 2);
        let i_checksum = u32::from(le16(b, 0x7C))
            | if has_hi {
                u32::from(le16(b, 0x82)) << 16
            } else {
                0
            };
        if let Some(seed) = sb.csum_seed {
            // All-zero slots (never used) carry no checksum.
            if sb.s_creator_os == 0 && b.iter().any(|&x| x != 0) {
                let want = compute_checksum(seed, ino, raw, has_hi);
                let mask = if has_hi { u32::MAX } else { 0xFFFF };
                if want & mask != i_checksum {
                    return Err(Error::corrupt_at(
                        at,
                        format!(
                            "inode {ino}: checksum {i_checksum:#010x} does not match contents ({:#010x})",
                            want & mask
                        ),
                    ));
                }
            }
        }

        // The kernel's ext4_iget refuses a size that is negative as a loff_t ("bad i_size
        // value"); accepting one would let `cat` stream zeros for 2^64 bytes.
        let i_size = u64::from(le32(b, 0x4)) | (u64::from(le32(b, 0x6C)) << 32);
        if i_size > i64::MAX as u64 {
            return Err(Error::corrupt_at(
                at + 0x4,
                format!("inode {ino}: bad i_size value {i_size}"),
            ));
        }
        let i_flags = le32(b, 0x20);
        let huge = sb.has_ro_compat(ro_compat::HUGE_FILE);
        let i_blocks_lo = u64::from(le32(b, 0x1C));
        let i_blocks = if huge {
            i_blocks_lo | (u64::from(le16(b, 0x74)) << 32)
        } else {
            i_blocks_lo
        };
        let bit64 = sb.desc_size >= 64;
        let i_file_acl = u64::from(le32(b, 0x68))
            | if bit64 {
                u64::from(le16(b, 0x76)) << 32
            } else {
                0
            };
        let mut i_block = [0u8; I_BLOCK_SIZE];
        i_block.copy_from_slice(&b[I_BLOCK..I_BLOCK + I_BLOCK_SIZE]);
        Ok(Inode {
            ino,
            raw: raw.to_vec(),
            i_mode: le16(b, 0x0),
            i_uid: u32::from(le16(b, 0x2)) | (u32::from(le16(b, 0x78)) << 16),
            i_gid: u32::from(le16(b, 0x18)) | (u32::from(le16(b, 0x7A)) << 16),
            i_size,
            i_atime: InodeTime::decode(le32(b, 0x8), extra(0x8C)),
            i_ctime: InodeTime::decode(le32(b, 0xC), extra(0x84)),
            i_mtime: InodeTime::decode(le32(b, 0x10), extra(0x88)),
            i_crtime: extra(0x90).map(|s| InodeTime::decode(s, extra(0x94))),
            i_dtime: le32(b, 0x14),
            i_links_count: le16(b, 0x1A),
            i_blocks,
            i_flags,
            i_block,
            i_generation: le32(b, 0x64),
            i_file_acl,
            i_extra_isize,
            i_checksum,
        })
    }

    /// The file type bits of `i_mode`.
    pub fn file_type(&self) -> u16 {
        self.i_mode & S_IFMT
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type() == S_IFDIR
    }

    /// True for a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.file_type() == S_IFLNK
    }

    /// True when `flag` is set in `i_flags`.
    pub fn has_flag(&self, flag: u32) -> bool {
        self.i_flags & flag != 0
    }

    /// True when the inode is in use: a mode and at least one link (the kernel refuses
    /// `i_links_count == 0` outside orphan recovery).
    pub fn in_use(&self) -> bool {
        self.i_mode != 0 && self.i_links_count != 0
    }

    /// `i_blocks` converted to 512-byte sectors, as stat reports.
    pub fn sectors(&self, sb: &Superblock) -> u64 {
        if sb.has_ro_compat(ro_compat::HUGE_FILE) && self.has_flag(EXT4_HUGE_FILE_FL) {
            self.i_blocks.saturating_mul(u64::from(sb.block_size / 512))
        } else {
            self.i_blocks
        }
    }

    /// The per-inode checksum seed of metadata_csum: crc32c(fs seed, ino, generation). Extent
    /// blocks, directory blocks and the inode itself start from it.
    pub fn csum_seed(&self, fs_seed: u32) -> u32 {
        inode_csum_seed(fs_seed, self.ino, self.i_generation)
    }

    /// The in-inode extended attribute area: the slot after the inode's extra fields.
    pub fn xattr_area(&self) -> &[u8] {
        let start = EXT4_GOOD_OLD_INODE_SIZE + usize::from(self.i_extra_isize);
        if self.raw.len() > EXT4_GOOD_OLD_INODE_SIZE {
            self.raw.get(start..).unwrap_or(&[])
        } else {
            &[]
        }
    }

    /// The device number of a character or block device: (major, minor). Old encoding in
    /// `i_block[0]`, new encoding in `i_block[1]`.
    pub fn device_number(&self) -> (u32, u32) {
        let old = le32(&self.i_block, 0);
        if old != 0 {
            return ((old >> 8) & 0xFF, old & 0xFF);
        }
        let new = le32(&self.i_block, 4);
        ((new & 0xFFF00) >> 8, (new & 0xFF) | ((new >> 12) & 0xFFF00))
    }
}

/// crc32c(fs seed, le32 ino, le32 generation): the seed of an inode's checksums.
pub fn inode_csum_seed(fs_seed: u32, ino: u32, generation: u32) -> u32 {
    let c = crc32c_raw(fs_seed, &ino.to_le_bytes());
    crc32c_raw(c, &generation.to_le_bytes())
}

/// The checksum an inode slot should carry: crc32c over the whole slot with the checksum
/// fields counted as zero, from the inode's seed.
pub fn compute_checksum(fs_seed: u32, ino: u32, raw: &[u8], has_hi: bool) -> u32 {
    let mut r = raw.to_vec();
    put(&mut r, 0x7C, [0, 0]);
    if has_hi {
        put(&mut r, 0x82, [0, 0]);
    }
    let seed = inode_csum_seed(fs_seed, ino, le32(raw, 0x64));
    crc32c_raw(seed, &r)
}

impl InodeTime {
    /// Encodes as the 32-bit seconds field and the `_extra` word (epoch bits, nanoseconds).
    pub fn encode(self) -> (u32, u32) {
        let lo = self.secs as i32;
        let epoch = ((self.secs - i64::from(lo)) >> 32) as u32 & 3;
        (lo as u32, epoch | (self.nanos.min(999_999_999) << 2))
    }

    /// The current time.
    pub fn now() -> InodeTime {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        InodeTime {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }
}

impl Inode {
    /// Writes the parsed fields back into `raw` and re-seals the checksum (metadata_csum):
    /// the write side changes fields, then calls this before storing the slot.
    pub fn serialize(&mut self, sb: &Superblock) {
        let large = self.raw.len() > EXT4_GOOD_OLD_INODE_SIZE;
        if large {
            let extra = self.i_extra_isize.to_le_bytes();
            put(&mut self.raw, 0x80, extra);
        }
        let inode_end = EXT4_GOOD_OLD_INODE_SIZE + usize::from(self.i_extra_isize);
        let fits = |off: usize| large && off + 4 <= inode_end;
        let b = &mut self.raw;
        put(b, 0x0, self.i_mode.to_le_bytes());
        put(b, 0x2, (self.i_uid as u16).to_le_bytes());
        put(b, 0x78, ((self.i_uid >> 16) as u16).to_le_bytes());
        put(b, 0x18, (self.i_gid as u16).to_le_bytes());
        put(b, 0x7A, ((self.i_gid >> 16) as u16).to_le_bytes());
        put(b, 0x4, (self.i_size as u32).to_le_bytes());
        put(b, 0x6C, ((self.i_size >> 32) as u32).to_le_bytes());
        for (t, base, extra) in [
            (self.i_atime, 0x8, 0x8C),
            (self.i_ctime, 0xC, 0x84),
            (self.i_mtime, 0x10, 0x88),
        ] {
            let (s, x) = t.encode();
            put(b, base, s.to_le_bytes());
            if fits(extra) {
                put(b, extra, x.to_le_bytes());
            }
        }
        if let Some(t) = self.i_crtime {
            let (s, x) = t.encode();
            if fits(0x90) {
                put(b, 0x90, s.to_le_bytes());
            }
            if fits(0x94) {
                put(b, 0x94, x.to_le_bytes());
            }
        }
        put(b, 0x14, self.i_dtime.to_le_bytes());
        put(b, 0x1A, self.i_links_count.to_le_bytes());
        put(b, 0x1C, (self.i_blocks as u32).to_le_bytes());
        if sb.has_ro_compat(ro_compat::HUGE_FILE) {
            put(b, 0x74, ((self.i_blocks >> 32) as u16).to_le_bytes());
        }
        put(b, 0x20, self.i_flags.to_le_bytes());
        b[I_BLOCK..I_BLOCK + I_BLOCK_SIZE].copy_from_slice(&self.i_block);
        put(b, 0x64, self.i_generation.to_le_bytes());
        put(b, 0x68, (self.i_file_acl as u32).to_le_bytes());
        if sb.desc_size >= 64 {
            put(b, 0x76, ((self.i_file_acl >> 32) as u16).to_le_bytes());
        }
        if let Some(seed) = sb.csum_seed {
            let has_hi = large && 0x84 <= inode_end;
            let c = compute_checksum(seed, self.ino, &self.raw, has_hi);
            put(&mut self.raw, 0x7C, (c as u16).to_le_bytes());
            if has_hi {
                put(&mut self.raw, 0x82, ((c >> 16) as u16).to_le_bytes());
            }
            self.i_checksum = if has_hi { c } else { c & 0xFFFF };
        }
    }
}
