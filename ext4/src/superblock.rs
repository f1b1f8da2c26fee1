//! `struct ext4_super_block`: the 1024 bytes at byte 1024 of the filesystem that describe its
//! geometry and features.
//!
//! Parsing is two steps: [`Superblock::parse`] reads the raw fields (named as the spec names
//! them) and validates every one the engine will compute with, so the rest of the engine can do
//! its arithmetic on trusted geometry. The raw bytes are kept for the write side, which will
//! change a field and recompute [`Superblock::compute_checksum`].

use vdisk_block::{Error, Result};

use super::bytes::{le16, le32, le64, u8_at};
use super::checksum::crc32c_raw;

/// Byte offset of the primary superblock from the start of the filesystem.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// Size of the superblock structure.
pub const SUPERBLOCK_SIZE: usize = 1024;
/// `s_magic`.
pub const EXT4_SUPER_MAGIC: u16 = 0xEF53;

/// The largest `s_log_block_size`: 1024 << 6 = 64 KiB, the largest block size Linux mounts.
pub const MAX_LOG_BLOCK_SIZE: u32 = 6;
/// The largest `s_log_groups_per_flex` the kernel accepts (it refuses 31 and above).
pub const MAX_LOG_GROUPS_PER_FLEX: u8 = 30;
/// The largest group descriptor: the kernel's EXT4_MAX_DESC_SIZE (= the minimum block size).
pub const MAX_DESC_SIZE: u16 = 1024;

/// Compatible features (`s_feature_compat`): safe to ignore when unknown.
pub mod compat {
    /// COMPAT_DIR_PREALLOC.
    pub const DIR_PREALLOC: u32 = 0x1;
    /// COMPAT_IMAGIC_INODES.
    pub const IMAGIC_INODES: u32 = 0x2;
    /// COMPAT_HAS_JOURNAL: the filesystem has a jbd2 journal.
    pub const HAS_JOURNAL: u32 = 0x4;
    /// COMPAT_EXT_ATTR: extended attributes are supported.
    pub const EXT_ATTR: u32 = 0x8;
    /// COMPAT_RESIZE_INODE: reserved GDT blocks for online growth.
    pub const RESIZE_INODE: u32 = 0x10;
    /// COMPAT_DIR_INDEX: htree directory indexes.
    pub const DIR_INDEX: u32 = 0x20;
    /// COMPAT_SPARSE_SUPER2: backups only in the two groups of `s_backup_bgs`.
    pub const SPARSE_SUPER2: u32 = 0x200;
    /// COMPAT_FAST_COMMIT: fast commits are supported.
    pub const FAST_COMMIT: u32 = 0x400;
    /// COMPAT_STABLE_INODES.
    pub const STABLE_INODES: u32 = 0x800;
    /// COMPAT_ORPHAN_FILE.
    pub const ORPHAN_FILE: u32 = 0x1000;
}

/// Incompatible features (`s_feature_incompat`): a reader that does not know one must refuse.
pub mod incompat {
    /// INCOMPAT_COMPRESSION.
    pub const COMPRESSION: u32 = 0x1;
    /// INCOMPAT_FILETYPE: directory entries record the file type.
    pub const FILETYPE: u32 = 0x2;
    /// INCOMPAT_RECOVER: the filesystem needs journal recovery.
    pub const RECOVER: u32 = 0x4;
    /// INCOMPAT_JOURNAL_DEV: this is an external journal device.
    pub const JOURNAL_DEV: u32 = 0x8;
    /// INCOMPAT_META_BG: meta block groups.
    pub const META_BG: u32 = 0x10;
    /// INCOMPAT_EXTENTS: files use extent trees.
    pub const EXTENTS: u32 = 0x40;
    /// INCOMPAT_64BIT: 64-bit block numbers and group descriptors of `s_desc_size`.
    pub const BIT64: u32 = 0x80;
    /// INCOMPAT_MMP: multiple mount protection.
    pub const MMP: u32 = 0x100;
    /// INCOMPAT_FLEX_BG: flexible block groups.
    pub const FLEX_BG: u32 = 0x200;
    /// INCOMPAT_EA_INODE: large xattr values live in their own inodes.
    pub const EA_INODE: u32 = 0x400;
    /// INCOMPAT_DIRDATA: data in directory entries.
    pub const DIRDATA: u32 = 0x1000;
    /// INCOMPAT_CSUM_SEED: the metadata checksum seed is `s_checksum_seed`.
    pub const CSUM_SEED: u32 = 0x2000;
    /// INCOMPAT_LARGEDIR: directories over 2 GiB and 3-level htrees.
    pub const LARGEDIR: u32 = 0x4000;
    /// INCOMPAT_INLINE_DATA: data in the inode.
    pub const INLINE_DATA: u32 = 0x8000;
    /// INCOMPAT_ENCRYPT: encrypted inodes may be present.
    pub const ENCRYPT: u32 = 0x10000;
    /// INCOMPAT_CASEFOLD: case-insensitive directories may be present.
    pub const CASEFOLD: u32 = 0x20000;

    /// The incompatible features this engine reads, each with its spec name.
    pub const KNOWN: &[(u32, &str)] = &[
        (FILETYPE, "filetype"),
        (RECOVER, "needs_recovery"),
        (META_BG, "meta_bg"),
        (EXTENTS, "extent"),
        (BIT64, "64bit"),
        (MMP, "mmp"),
        (FLEX_BG, "flex_bg"),
        (EA_INODE, "ea_inode"),
        (CSUM_SEED, "metadata_csum_seed"),
        (LARGEDIR, "large_dir"),
        (INLINE_DATA, "inline_data"),
        (ENCRYPT, "encrypt"),
        (CASEFOLD, "casefold"),
    ];

    /// Incompatible features known by name but not implemented.
    pub const REFUSED: &[(u32, &str)] = &[
        (COMPRESSION, "compression"),
        (
            JOURNAL_DEV,
            "journal_dev (this is an external journal, not a filesystem)",
        ),
        (DIRDATA, "dirdata"),
    ];
}

/// Read-only compatible features (`s_feature_ro_compat`): unknown ones still allow reading.
pub mod ro_compat {
    /// RO_COMPAT_SPARSE_SUPER: backups only in groups 0, 1 and powers of 3, 5, 7.
    pub const SPARSE_SUPER: u32 = 0x1;
    /// RO_COMPAT_LARGE_FILE.
    pub const LARGE_FILE: u32 = 0x2;
    /// RO_COMPAT_BTREE_DIR.
    pub const BTREE_DIR: u32 = 0x4;
    /// RO_COMPAT_HUGE_FILE: `i_blocks` may count filesystem blocks.
    pub const HUGE_FILE: u32 = 0x8;
    /// RO_COMPAT_GDT_CSUM: crc16 group descriptor checksums.
    pub const GDT_CSUM: u32 = 0x10;
    /// RO_COMPAT_DIR_NLINK.
    pub const DIR_NLINK: u32 = 0x20;
    /// RO_COMPAT_EXTRA_ISIZE.
    pub const EXTRA_ISIZE: u32 = 0x40;
    /// RO_COMPAT_HAS_SNAPSHOT.
    pub const HAS_SNAPSHOT: u32 = 0x80;
    /// RO_COMPAT_QUOTA.
    pub const QUOTA: u32 = 0x100;
    /// RO_COMPAT_BIGALLOC: allocation in clusters.
    pub const BIGALLOC: u32 = 0x200;
    /// RO_COMPAT_METADATA_CSUM: crc32c checksums on all metadata.
    pub const METADATA_CSUM: u32 = 0x400;
    /// RO_COMPAT_READONLY.
    pub const READONLY: u32 = 0x1000;
    /// RO_COMPAT_PROJECT.
    pub const PROJECT: u32 = 0x2000;
    /// RO_COMPAT_SHARED_BLOCKS.
    pub const SHARED_BLOCKS: u32 = 0x4000;
    /// RO_COMPAT_VERITY.
    pub const VERITY: u32 = 0x8000;
    /// RO_COMPAT_ORPHAN_PRESENT.
    pub const ORPHAN_PRESENT: u32 = 0x10000;

    /// Features a writer may keep consistent without knowing more than the read side does.
    /// Anything else makes the filesystem read-only for vdisk.
    pub const WRITABLE: u32 =
        SPARSE_SUPER | LARGE_FILE | HUGE_FILE | GDT_CSUM | DIR_NLINK | EXTRA_ISIZE | METADATA_CSUM;
}

/// The validated superblock.
///
/// Field names follow `struct ext4_super_block`; the `_lo`/`_hi` halves are joined where the
/// feature set says the high half is meaningful.
#[derive(Debug, Clone)]
pub struct Superblock {
    /// The 1024 bytes as read, for the write side.
    pub raw: Box<[u8; SUPERBLOCK_SIZE]>,
    /// Total inode count.
    pub s_inodes_count: u32,
    /// Total block count (`s_blocks_count_lo`, plus `_hi` with 64bit).
    pub s_blocks_count: u64,
    /// Blocks reserved for the superuser (lo + hi).
    pub s_r_blocks_count: u64,
    /// Free block count (lo + hi).
    pub s_free_blocks_count: u64,
    /// Free inode count.
    pub s_free_inodes_count: u32,
    /// First data block: 1 for 1 KiB-block filesystems, else 0.
    pub s_first_data_block: u32,
    /// Block size is 2 ^ (10 + s_log_block_size).
    pub s_log_block_size: u32,
    /// Blocks per group.
    pub s_blocks_per_group: u32,
    /// Inodes per group.
    pub s_inodes_per_group: u32,
    /// Mount time, seconds since the epoch.
    pub s_mtime: u32,
    /// Write time, seconds since the epoch.
    pub s_wtime: u32,
    /// File system state (1 = cleanly unmounted, 2 = errors detected).
    pub s_state: u16,
    /// Creator OS (0 = Linux).
    pub s_creator_os: u32,
    /// Revision level (0 = original, 1 = dynamic inode sizes).
    pub s_rev_level: u32,
    /// First non-reserved inode.
    pub s_first_ino: u32,
    /// Size of an inode structure in bytes.
    pub s_inode_size: u16,
    /// Compatible feature set.
    pub s_feature_compat: u32,
    /// Incompatible feature set.
    pub s_feature_incompat: u32,
    /// Read-only compatible feature set.
    pub s_feature_ro_compat: u32,
    /// 128-bit UUID of the volume.
    pub s_uuid: [u8; 16],
    /// Volume label, NUL-padded.
    pub s_volume_name: [u8; 16],
    /// Number of GDT blocks reserved for growth.
    pub s_reserved_gdt_blocks: u16,
    /// UUID of the journal superblock.
    pub s_journal_uuid: [u8; 16],
    /// Inode number of the journal file.
    pub s_journal_inum: u32,
    /// Device number of an external journal.
    pub s_journal_dev: u32,
    /// Start of the list of orphaned inodes to delete.
    pub s_last_orphan: u32,
    /// HTREE hash seed.
    pub s_hash_seed: [u32; 4],
    /// Default hash algorithm for directory hashes.
    pub s_def_hash_version: u8,
    /// Size of group descriptors (32 without 64bit).
    pub s_desc_size: u16,
    /// First metablock block group, with meta_bg.
    pub s_first_meta_bg: u32,
    /// Backup copy of the journal inode's i_block[] and i_size (s_jnl_blocks).
    pub s_jnl_blocks: [u32; 17],
    /// Miscellaneous flags (signed/unsigned directory hash).
    pub s_flags: u32,
    /// Multi-mount protection data block.
    pub s_mmp_block: u64,
    /// Flexible block group size is 2 ^ s_log_groups_per_flex.
    pub s_log_groups_per_flex: u8,
    /// Metadata checksum algorithm (1 = crc32c).
    pub s_checksum_type: u8,
    /// Block groups holding backups with sparse_super2.
    pub s_backup_bgs: [u32; 2],
    /// Checksum seed with metadata_csum_seed.
    pub s_checksum_seed: u32,
    /// Filename charset encoding (casefold).
    pub s_encoding: u16,
    /// Superblock checksum (crc32c of the first 1020 bytes).
    pub s_checksum: u32,

    /// Derived: the block size in bytes.
    pub block_size: u32,
    /// Derived: the number of block groups.
    pub group_count: u32,
    /// Derived: the size of a group descriptor in bytes (32, or s_desc_size with 64bit).
    pub desc_size: u32,
    /// Derived: the seed of every metadata_csum checksum, when that feature is on.
    pub csum_seed: Option<u32>,
    /// Derived: the unknown read-only-compatible features, when any (writes must be refused).
    pub unknown_ro_compat: u32,
}

fn bad(field_off: usize, what: String) -> Error {
    Error::corrupt_at(
        SUPERBLOCK_OFFSET + field_off as u64,
        format!("superblock: {what}"),
    )
}

impl Superblock {
    /// Parses and validates the superblock bytes of a filesystem on a device of `device_size`
    /// bytes. Unknown incompatible features are refused by name; checksums are verified.
    pub fn parse(raw: &[u8; SUPERBLOCK_SIZE], device_size: u64) -> Result<Superblock> {
        let b = &raw[..];
        let s_magic = le16(b, 0x38);
        if s_magic != EXT4_SUPER_MAGIC {
            return Err(bad(
                0x38,
                format!("bad magic {s_magic:#06x} (not an ext2/3/4 filesystem)"),
            ));
        }
        let s_feature_compat = le32(b, 0x5C);
        let s_feature_incompat = le32(b, 0x60);
        let s_feature_ro_compat = le32(b, 0x64);
        let s_rev_level = le32(b, 0x4C);
        if s_rev_level > 1 {
            return Err(Error::unsupported(format!(
                "ext4 superblock revision {s_rev_level} is newer than any known (1)"
            )));
        }
        // Features only mean something from revision 1 on; the kernel ignores them on rev 0.
        let (compat, incompat, ro) = if s_rev_level == 0 {
            (0, 0, 0)
        } else {
            (s_feature_compat, s_feature_incompat, s_feature_ro_compat)
        };
        for &(bit, name) in incompat::REFUSED {
            if incompat & bit != 0 {
                return Err(Error::unsupported(format!(
                    "ext4 incompatible feature {name} is not supported"
                )));
            }
        }
        let known = incompat::KNOWN.iter().fold(0, |m, &(bit, _)| m | bit);
        let unknown = incompat & !known;
        if unknown != 0 {
            return Err(Error::unsupported(format!(
                "ext4 unknown incompatible feature bits {unknown:#x}"
            )));
        }
        let known_ro = ro_compat::WRITABLE
            | ro_compat::BTREE_DIR
            | ro_compat::HAS_SNAPSHOT
            | ro_compat::QUOTA
            | ro_compat::BIGALLOC
            | ro_compat::READONLY
            | ro_compat::PROJECT
            | ro_compat::SHARED_BLOCKS
            | ro_compat::VERITY
            | ro_compat::ORPHAN_PRESENT;
        let unknown_ro_compat = ro & !known_ro;

        let s_log_block_size = le32(b, 0x18);
        if s_log_block_size > MAX_LOG_BLOCK_SIZE {
            return Err(bad(
                0x18,
                format!("s_log_block_size {s_log_block_size} is out of range (at most {MAX_LOG_BLOCK_SIZE})"),
            ));
        }
        let block_size: u32 = 1024 << s_log_block_size;
        let bit64 = incompat & incompat::BIT64 != 0;
        let hi = |off: usize| {
            if bit64 {
                u64::from(le32(b, off)) << 32
            } else {
                0
            }
        };
        let s_blocks_count = u64::from(le32(b, 0x4)) | hi(0x150);
        let s_r_blocks_count = u64::from(le32(b, 0x8)) | hi(0x154);
        let s_free_blocks_count = u64::from(le32(b, 0xC)) | hi(0x158);
        let s_first_data_block = le32(b, 0x14);
        let s_blocks_per_group = le32(b, 0x20);
        let s_inodes_per_group = le32(b, 0x28);
        let s_inodes_count = le32(b, 0x0);

        if s_blocks_count == 0 {
            return Err(bad(0x4, "s_blocks_count is zero".into()));
        }
        if u64::from(s_first_data_block) >= s_blocks_count || s_first_data_block > 1 {
            return Err(bad(
                0x14,
                format!("s_first_data_block {s_first_data_block} is impossible"),
            ));
        }
        let bits_per_block = block_size * 8;
        // With bigalloc the bitmap counts clusters: a group holds at most 8 x block size
        // clusters of 2 ^ (s_log_cluster_size - s_log_block_size) blocks each.
        let cluster_shift = if ro & ro_compat::BIGALLOC != 0 {
            let s_log_cluster_size = le32(b, 0x1C);
            if s_log_cluster_size < s_log_block_size || s_log_cluster_size - s_log_block_size > 16 {
                return Err(bad(
                    0x1C,
                    format!("s_log_cluster_size {s_log_cluster_size} is out of range"),
                ));
            }
            let s_clusters_per_group = le32(b, 0x24);
            let shift = s_log_cluster_size - s_log_block_size;
            if u64::from(s_clusters_per_group) << shift != u64::from(s_blocks_per_group) {
                return Err(bad(
                    0x24,
                    format!("s_clusters_per_group {s_clusters_per_group} disagrees with s_blocks_per_group {s_blocks_per_group}"),
                ));
            }
            shift
        } else {
            0
        };
        let max_bpg = u64::from(bits_per_block) << cluster_shift;
        if s_blocks_per_group == 0 || u64::from(s_blocks_per_group) > max_bpg {
            return Err(bad(
                0x20,
                format!("s_blocks_per_group {s_blocks_per_group} is out of range (1..={max_bpg})"),
            ));
        }
        if s_inodes_per_group == 0 || s_inodes_per_group > bits_per_block {
            return Err(bad(
                0x28,
                format!("s_inodes_per_group {s_inodes_per_group} is out of range (1..={bits_per_block})"),
            ));
        }
        let fs_bytes = s_blocks_count
            .checked_mul(u64::from(block_size))
            .ok_or_else(|| bad(0x4, format!("s_blocks_count {s_blocks_count} overflows")))?;
        if fs_bytes > device_size {
            return Err(bad(
                0x4,
                format!(
                    "filesystem of {s_blocks_count} blocks of {block_size} bytes is larger than its device ({device_size} bytes)"
                ),
            ));
        }
        let groups = (s_blocks_count - u64::from(s_first_data_block))
            .div_ceil(u64::from(s_blocks_per_group));
        let group_count = u32::try_from(groups)
            .map_err(|_| bad(0x20, format!("{groups} block groups is too many")))?;
        if u64::from(s_inodes_count) != groups * u64::from(s_inodes_per_group) {
            return Err(bad(
                0x0,
                format!(
                    "s_inodes_count {s_inodes_count} is not {group_count} groups x {s_inodes_per_group} inodes"
                ),
            ));
        }

        let (s_first_ino, s_inode_size) = if s_rev_level == 0 {
            (11, 128)
        } else {
            (le32(b, 0x54), le16(b, 0x58))
        };
        if s_first_ino < 11 || s_first_ino > s_inodes_count {
            return Err(bad(
                0x54,
                format!("s_first_ino {s_first_ino} is out of range"),
            ));
        }
        if s_inode_size < 128
            || !s_inode_size.is_power_of_two()
            || u32::from(s_inode_size) > block_size
        {
            return Err(bad(
                0x58,
                format!("s_inode_size {s_inode_size} is not a power of two in 128..={block_size}"),
            ));
        }
        let s_desc_size = le16(b, 0xFE);
        let desc_size = if bit64 {
            if !(64..=MAX_DESC_SIZE).contains(&s_desc_size) || !s_desc_size.is_power_of_two() {
                return Err(bad(
                    0xFE,
                    format!(
                        "s_desc_size {s_desc_size} is not a power of two in 64..={MAX_DESC_SIZE}"
                    ),
                ));
            }
            u32::from(s_desc_size)
        } else {
            32
        };
        let descs_per_block = block_size / desc_size;
        let desc_blocks = group_count.div_ceil(descs_per_block);
        let s_first_meta_bg = le32(b, 0x104);
        if incompat & incompat::META_BG != 0 && s_first_meta_bg > desc_blocks {
            return Err(bad(
                0x104,
                format!(
                    "s_first_meta_bg {s_first_meta_bg} is past the {desc_blocks} descriptor blocks"
                ),
            ));
        }
        let s_reserved_gdt_blocks = le16(b, 0xCE);
        if u32::from(s_reserved_gdt_blocks) > block_size / 4 {
            return Err(bad(
                0xCE,
                format!("s_reserved_gdt_blocks {s_reserved_gdt_blocks} is impossibly large"),
            ));
        }
        let s_log_groups_per_flex = u8_at(b, 0x174);
        if incompat & incompat::FLEX_BG != 0 && s_log_groups_per_flex > MAX_LOG_GROUPS_PER_FLEX {
            return Err(bad(
                0x174,
                format!("s_log_groups_per_flex {s_log_groups_per_flex} is out of range"),
            ));
        }

        let s_checksum_type = u8_at(b, 0x175);
        let s_checksum = le32(b, 0x3FC);
        let s_checksum_seed = le32(b, 0x270);
        let mut s_uuid = [0u8; 16];
        s_uuid.copy_from_slice(&b[0x68..0x78]);
        let csum_seed = if ro & ro_compat::METADATA_CSUM != 0 {
            if s_checksum_type != 1 {
                return Err(Error::unsupported(format!(
                    "ext4 metadata checksum type {s_checksum_type} is not crc32c"
                )));
            }
            let want = compute_checksum(raw);
            if want != s_checksum {
                return Err(bad(
                    0x3FC,
                    format!("checksum {s_checksum:#010x} does not match contents ({want:#010x})"),
                ));
            }
            Some(if incompat & incompat::CSUM_SEED != 0 {
                s_checksum_seed
            } else {
                crc32c_raw(!0, &s_uuid)
            })
        } else {
            None
        };

        let mut s_volume_name = [0u8; 16];
        s_volume_name.copy_from_slice(&b[0x78..0x88]);
        let mut s_journal_uuid = [0u8; 16];
        s_journal_uuid.copy_from_slice(&b[0xD0..0xE0]);
        let mut s_jnl_blocks = [0u32; 17];
        for (i, v) in s_jnl_blocks.iter_mut().enumerate() {
            *v = le32(b, 0x10C + 4 * i);
        }
        Ok(Superblock {
            raw: Box::new(*raw),
            s_inodes_count,
            s_blocks_count,
            s_r_blocks_count,
            s_free_blocks_count,
            s_free_inodes_count: le32(b, 0x10),
            s_first_data_block,
            s_log_block_size,
            s_blocks_per_group,
            s_inodes_per_group,
            s_mtime: le32(b, 0x2C),
            s_wtime: le32(b, 0x30),
            s_state: le16(b, 0x3A),
            s_creator_os: le32(b, 0x48),
            s_rev_level,
            s_first_ino,
            s_inode_size,
            s_feature_compat: compat,
            s_feature_incompat: incompat,
            s_feature_ro_compat: ro,
            s_uuid,
            s_volume_name,
            s_reserved_gdt_blocks,
            s_journal_uuid,
            s_journal_inum: le32(b, 0xE0),
            s_journal_dev: le32(b, 0xE4),
            s_last_orphan: le32(b, 0xE8),
            s_hash_seed: [le32(b, 0xEC), le32(b, 0xF0), le32(b, 0xF4), le32(b, 0xF8)],
            s_def_hash_version: u8_at(b, 0xFC),
            s_desc_size,
            s_first_meta_bg,
            s_jnl_blocks,
            s_flags: le32(b, 0x160),
            s_mmp_block: le64(b, 0x168),
            s_log_groups_per_flex,
            s_checksum_type,
            s_backup_bgs: [le32(b, 0x24C), le32(b, 0x250)],
            s_checksum_seed,
            s_encoding: le16(b, 0x27C),
            s_checksum,
            block_size,
            group_count,
            desc_size,
            csum_seed,
            unknown_ro_compat,
        })
    }

    /// True when `bit` of `s_feature_incompat` is set.
    pub fn has_incompat(&self, bit: u32) -> bool {
        self.s_feature_incompat & bit != 0
    }

    /// True when `bit` of `s_feature_ro_compat` is set.
    pub fn has_ro_compat(&self, bit: u32) -> bool {
        self.s_feature_ro_compat & bit != 0
    }

    /// True when `bit` of `s_feature_compat` is set.
    pub fn has_compat(&self, bit: u32) -> bool {
        self.s_feature_compat & bit != 0
    }

    /// True when group descriptors carry a checksum (metadata_csum or gdt_csum).
    pub fn has_group_csum(&self) -> bool {
        self.has_ro_compat(ro_compat::METADATA_CSUM) || self.has_ro_compat(ro_compat::GDT_CSUM)
    }

    /// Group descriptors per descriptor block.
    pub fn descs_per_block(&self) -> u32 {
        self.block_size / self.desc_size
    }

    /// Inodes per inode-table block.
    pub fn inodes_per_block(&self) -> u32 {
        self.block_size / u32::from(self.s_inode_size)
    }

    /// The first block of group `g`.
    pub fn group_first_block(&self, g: u32) -> u64 {
        u64::from(self.s_first_data_block) + u64::from(g) * u64::from(self.s_blocks_per_group)
    }

    /// True when group `g` holds a superblock backup (and, without meta_bg, a GDT copy).
    pub fn group_has_super(&self, g: u32) -> bool {
        if g == 0 {
            return true;
        }
        if self.has_compat(compat::SPARSE_SUPER2) {
            return g == self.s_backup_bgs[0] || g == self.s_backup_bgs[1];
        }
        if g <= 1 || !self.has_ro_compat(ro_compat::SPARSE_SUPER) {
            return true;
        }
        if g % 2 == 0 {
            return false;
        }
        [3u32, 5, 7].iter().any(|&base| {
            let mut p = base;
            while p < g {
                match p.checked_mul(base) {
                    Some(n) => p = n,
                    None => return false,
                }
            }
            p == g
        })
    }

    /// The block holding group descriptor block number `nr` (counting from 0), following
    /// meta_bg when on: the kernel's `descriptor_loc()`.
    pub fn descriptor_block(&self, nr: u32) -> u64 {
        // The block holding the superblock: 1 with 1 KiB blocks (even when bigalloc makes
        // s_first_data_block 0), else 0.
        let sb_block = SUPERBLOCK_OFFSET / u64::from(self.block_size);
        if !self.has_incompat(incompat::META_BG) || nr < self.s_first_meta_bg {
            return sb_block + u64::from(nr) + 1;
        }
        let bg = nr.saturating_mul(self.descs_per_block());
        let mut has_super = u64::from(self.group_has_super(bg));
        if self.block_size == 1024 && nr == 0 && self.s_first_data_block == 0 {
            has_super += 1;
        }
        self.group_first_block(bg) + has_super
    }

    /// The volume label, without its NUL padding.
    pub fn label(&self) -> &[u8] {
        let end = self
            .s_volume_name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(16);
        &self.s_volume_name[..end]
    }

    /// The names of the read-only-compatible features that forbid writing, if any: unknown
    /// bits, and known features a writer would have to maintain but vdisk does not.
    pub fn read_only_reason(&self) -> Option<String> {
        let blocking = self.s_feature_ro_compat & !ro_compat::WRITABLE;
        (blocking != 0).then(|| format!("read-only compatible features {blocking:#x}"))
    }
}

/// The superblock checksum the spec defines: crc32c(~0, bytes before `s_checksum`).
pub fn compute_checksum(raw: &[u8; SUPERBLOCK_SIZE]) -> u32 {
    crc32c_raw(!0, &raw[..0x3FC])
}

/// `s_state`: cleanly unmounted.
pub const EXT4_VALID_FS: u16 = 0x1;

impl Superblock {
    /// Writes the fields the write side changes (free counts, state, write time, features)
    /// back into `raw` and re-seals the checksum with metadata_csum.
    pub fn serialize(&mut self) {
        use super::bytes::put;
        let b = &mut self.raw[..];
        put(b, 0xC, (self.s_free_blocks_count as u32).to_le_bytes());
        if self.s_feature_incompat & incompat::BIT64 != 0 {
            put(
                b,
                0x158,
                ((self.s_free_blocks_count >> 32) as u32).to_le_bytes(),
            );
        }
        put(b, 0x10, self.s_free_inodes_count.to_le_bytes());
        put(b, 0x3A, self.s_state.to_le_bytes());
        put(b, 0x30, self.s_wtime.to_le_bytes());
        put(b, 0xE8, self.s_last_orphan.to_le_bytes());
        if self.s_rev_level >= 1 {
            put(b, 0x5C, self.s_feature_compat.to_le_bytes());
            put(b, 0x60, self.s_feature_incompat.to_le_bytes());
            put(b, 0x64, self.s_feature_ro_compat.to_le_bytes());
        }
        if self.csum_seed.is_some() {
            self.s_checksum = compute_checksum(&self.raw);
            put(&mut self.raw[..], 0x3FC, self.s_checksum.to_le_bytes());
        }
    }

    /// Blocks (or clusters) in group `g`: `s_blocks_per_group`, less for the last group.
    pub fn blocks_in_group(&self, g: u32) -> u64 {
        let first = self.group_first_block(g);
        (self.s_blocks_count - first).min(u64::from(self.s_blocks_per_group))
    }
}
