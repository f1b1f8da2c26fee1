//! The XFS superblock (`struct xfs_dsb`), versions 4 and 5.

use vdisk_block::{Error, Result};

use crate::{be16, be32, be64, verify_crc};

/// "XFSB".
pub const XFS_SB_MAGIC: u32 = 0x5846_5342;

/// v4 `sb_versionnum` bit: more feature bits in `sb_features2`.
pub const XFS_SB_VERSION_MOREBITSBIT: u16 = 0x8000;
/// v4 `sb_versionnum` bit: version 2 directories (the only kind the kernel still reads).
pub const XFS_SB_VERSION_DIRV2BIT: u16 = 0x2000;
/// `sb_features2`: directory entries record the file type.
pub const XFS_SB_VERSION2_FTYPE: u32 = 0x200;

/// v5 incompat: directory entries record the file type.
pub const XFS_SB_FEAT_INCOMPAT_FTYPE: u32 = 1 << 0;
/// v5 incompat: sparse inode chunks.
pub const XFS_SB_FEAT_INCOMPAT_SPINODES: u32 = 1 << 1;
/// v5 incompat: metadata UUID differs from sb_uuid.
pub const XFS_SB_FEAT_INCOMPAT_META_UUID: u32 = 1 << 2;
/// v5 incompat: timestamps beyond 2038.
pub const XFS_SB_FEAT_INCOMPAT_BIGTIME: u32 = 1 << 3;
/// v5 incompat: the filesystem needs xfs_repair.
pub const XFS_SB_FEAT_INCOMPAT_NEEDSREPAIR: u32 = 1 << 4;
/// v5 incompat: 64-bit extent counters.
pub const XFS_SB_FEAT_INCOMPAT_NREXT64: u32 = 1 << 5;

/// Incompat features this reader knows, with their names; any other bit is refused.
const KNOWN_INCOMPAT: &[(u32, &str)] = &[
    (XFS_SB_FEAT_INCOMPAT_FTYPE, "ftype"),
    (XFS_SB_FEAT_INCOMPAT_SPINODES, "sparse inodes"),
    (XFS_SB_FEAT_INCOMPAT_META_UUID, "meta_uuid"),
    (XFS_SB_FEAT_INCOMPAT_BIGTIME, "bigtime"),
    (XFS_SB_FEAT_INCOMPAT_NREXT64, "nrext64"),
];

/// Incompat bits known but not read by this engine, with their names.
const REFUSED_INCOMPAT: &[(u32, &str)] = &[
    (
        XFS_SB_FEAT_INCOMPAT_NEEDSREPAIR,
        "needsrepair (run xfs_repair first)",
    ),
    (1 << 6, "exchange-range"),
    (1 << 7, "parent pointers"),
    (1 << 8, "metadir"),
    (1 << 9, "zoned"),
];

/// The fields of the superblock this engine uses; names as in `xfs_format.h`.
#[derive(Debug, Clone)]
pub struct Superblock {
    /// Filesystem block size in bytes.
    pub sb_blocksize: u32,
    /// Blocks in the data device.
    pub sb_dblocks: u64,
    /// Blocks in the realtime device.
    pub sb_rblocks: u64,
    /// Filesystem UUID.
    pub sb_uuid: [u8; 16],
    /// First block of an internal log (0 for an external log).
    pub sb_logstart: u64,
    /// Root directory inode.
    pub sb_rootino: u64,
    /// Blocks per allocation group.
    pub sb_agblocks: u32,
    /// Number of allocation groups.
    pub sb_agcount: u32,
    /// Blocks in the log.
    pub sb_logblocks: u32,
    /// Version number and v4 feature bits.
    pub sb_versionnum: u16,
    /// Sector size.
    pub sb_sectsize: u16,
    /// Inode size.
    pub sb_inodesize: u16,
    /// Inodes per block.
    pub sb_inopblock: u16,
    /// log2 of the block size.
    pub sb_blocklog: u8,
    /// log2 of the inode size.
    pub sb_inodelog: u8,
    /// log2 of inodes per block.
    pub sb_inopblog: u8,
    /// log2 of agblocks, rounded up.
    pub sb_agblklog: u8,
    /// Allocated inodes.
    pub sb_icount: u64,
    /// Free inodes.
    pub sb_ifree: u64,
    /// Free data blocks.
    pub sb_fdblocks: u64,
    /// log2 of directory blocks in filesystem blocks.
    pub sb_dirblklog: u8,
    /// More v4 feature bits.
    pub sb_features2: u32,
    /// v5 read-only-compatible features.
    pub sb_features_ro_compat: u32,
    /// v5 incompatible features.
    pub sb_features_incompat: u32,
    /// v5 log incompatible features.
    pub sb_features_log_incompat: u32,
    /// The UUID stamped in metadata (sb_uuid unless meta_uuid is set).
    pub sb_meta_uuid: [u8; 16],
}

/// The sector size recorded in a superblock's first 512 bytes (to read the whole sector).
pub fn peek_sectsize(b: &[u8]) -> Result<u16> {
    if be32(b, 0) != XFS_SB_MAGIC {
        return Err(Error::corrupt("XFS superblock: bad magic (not XFSB)"));
    }
    let s = be16(b, 102);
    if !s.is_power_of_two() || !(512..=32768).contains(&s) {
        return Err(Error::corrupt(format!(
            "XFS superblock: bad sector size {s}"
        )));
    }
    Ok(s)
}

impl Superblock {
    /// Parses and validates the superblock sector `b`.
    pub fn parse(b: &[u8]) -> Result<Superblock> {
        peek_sectsize(b)?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[32..48]);
        let mut meta = [0u8; 16];
        meta.copy_from_slice(&b[248..264]);
        let sb = Superblock {
            sb_blocksize: be32(b, 4),
            sb_dblocks: be64(b, 8),
            sb_rblocks: be64(b, 16),
            sb_uuid: uuid,
            sb_logstart: be64(b, 48),
            sb_rootino: be64(b, 56),
            sb_agblocks: be32(b, 84),
            sb_agcount: be32(b, 88),
            sb_logblocks: be32(b, 96),
            sb_versionnum: be16(b, 100),
            sb_sectsize: be16(b, 102),
            sb_inodesize: be16(b, 104),
            sb_inopblock: be16(b, 106),
            sb_blocklog: b[120],
            sb_inodelog: b[122],
            sb_inopblog: b[123],
            sb_agblklog: b[124],
            sb_icount: be64(b, 128),
            sb_ifree: be64(b, 136),
            sb_fdblocks: be64(b, 144),
            sb_dirblklog: b[192],
            sb_features2: be32(b, 200),
            sb_features_ro_compat: be32(b, 212),
            sb_features_incompat: be32(b, 216),
            sb_features_log_incompat: be32(b, 220),
            sb_meta_uuid: meta,
        };
        let v = sb.version();
        if v != 4 && v != 5 {
            return Err(Error::unsupported(format!(
                "XFS superblock: version {v} is not supported (only 4 and 5)"
            )));
        }
        if v == 5 {
            verify_crc(b, 224, &|| "XFS superblock".to_string())?;
            let mut unknown = sb.sb_features_incompat;
            for (bit, _) in KNOWN_INCOMPAT {
                unknown &= !bit;
            }
            for (bit, name) in REFUSED_INCOMPAT {
                if sb.sb_features_incompat & bit != 0 {
                    return Err(Error::unsupported(format!(
                        "XFS: incompatible feature {name} is not supported"
                    )));
                }
            }
            if unknown != 0 {
                return Err(Error::unsupported(format!(
                    "XFS: unknown incompatible features {unknown:#x}"
                )));
            }
        } else if sb.sb_versionnum & XFS_SB_VERSION_DIRV2BIT == 0 {
            return Err(Error::unsupported(
                "XFS v4 without version 2 directories is not supported",
            ));
        }
        let bs = sb.sb_blocksize;
        if !bs.is_power_of_two()
            || !(512..=65536).contains(&bs)
            || 1u32.checked_shl(u32::from(sb.sb_blocklog)) != Some(bs)
            || bs < u32::from(sb.sb_sectsize)
        {
            return Err(Error::corrupt(format!(
                "XFS superblock: bad block size {bs}"
            )));
        }
        let is = sb.sb_inodesize;
        if !is.is_power_of_two()
            || !(256..=2048).contains(&is)
            || 1u16.checked_shl(u32::from(sb.sb_inodelog)) != Some(is)
            || u32::from(sb.sb_inopblock) * u32::from(is) != bs
            || 1u16.checked_shl(u32::from(sb.sb_inopblog)) != Some(sb.sb_inopblock)
        {
            return Err(Error::corrupt(format!(
                "XFS superblock: bad inode size {is} / inodes per block {}",
                sb.sb_inopblock
            )));
        }
        if sb.sb_agcount == 0
            || sb.sb_agblocks < 5
            || sb.sb_agblklog > 31
            || u64::from(sb.sb_agblocks) > 1u64 << sb.sb_agblklog
            || (sb.sb_agblklog > 0 && u64::from(sb.sb_agblocks) <= 1u64 << (sb.sb_agblklog - 1))
        {
            return Err(Error::corrupt(format!(
                "XFS superblock: bad AG geometry ({} AGs of {} blocks, agblklog {})",
                sb.sb_agcount, sb.sb_agblocks, sb.sb_agblklog
            )));
        }
        let max = u64::from(sb.sb_agcount) * u64::from(sb.sb_agblocks);
        if sb.sb_dblocks > max || sb.sb_dblocks == 0 {
            return Err(Error::corrupt(format!(
                "XFS superblock: {} data blocks do not fit {} AGs of {} blocks",
                sb.sb_dblocks, sb.sb_agcount, sb.sb_agblocks
            )));
        }
        if u32::from(sb.sb_dirblklog) + u32::from(sb.sb_blocklog) > 16 {
            return Err(Error::corrupt(format!(
                "XFS superblock: directory blocks of 2^{} fs blocks are too large",
                sb.sb_dirblklog
            )));
        }
        if u32::from(sb.sb_agblklog) + u32::from(sb.sb_inopblog) > 32 {
            return Err(Error::corrupt(
                "XFS superblock: AG inode numbers overflow 32 bits",
            ));
        }
        if sb.sb_rblocks != 0 {
            return Err(Error::unsupported(
                "XFS: realtime volumes are not supported",
            ));
        }
        if sb.sb_logstart == 0 {
            return Err(Error::unsupported("XFS: external logs are not supported"));
        }
        Ok(sb)
    }

    /// 4 or 5.
    pub fn version(&self) -> u16 {
        self.sb_versionnum & 0xf
    }

    /// True for v5 (CRC-protected metadata).
    pub fn has_crc(&self) -> bool {
        self.version() == 5
    }

    /// True when directory entries carry a file type byte.
    pub fn has_ftype(&self) -> bool {
        if self.has_crc() {
            self.sb_features_incompat & XFS_SB_FEAT_INCOMPAT_FTYPE != 0
        } else {
            self.sb_versionnum & XFS_SB_VERSION_MOREBITSBIT != 0
                && self.sb_features2 & XFS_SB_VERSION2_FTYPE != 0
        }
    }

    /// Bytes covered by the data device.
    pub fn fs_bytes(&self) -> u64 {
        // Bounded in parse: dblocks <= agcount * agblocks < 2^63 / blocksize is not checked
        // there, so saturate.
        self.sb_dblocks.saturating_mul(u64::from(self.sb_blocksize))
    }

    /// Directory block size in bytes.
    pub fn dir_block_size(&self) -> u32 {
        self.sb_blocksize << self.sb_dirblklog
    }
}
