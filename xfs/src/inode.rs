//! On-disk inodes (`struct xfs_dinode`), core versions 1, 2 and 3.

use vdisk_block::{Error, Result};

use crate::{be16, be32, be64, verify_crc, Xfs};

/// "IN".
pub const XFS_DINODE_MAGIC: u16 = 0x494e;
/// `di_flags`: the file's data lives on the realtime device.
pub const XFS_DIFLAG_REALTIME: u16 = 1 << 0;
/// `di_flags2`: timestamps are 64-bit nanosecond counters.
pub const XFS_DIFLAG2_BIGTIME: u64 = 1 << 3;
/// `di_flags2`: 64-bit extent counters.
pub const XFS_DIFLAG2_NREXT64: u64 = 1 << 4;
/// Seconds between the bigtime epoch and the Unix epoch (-(S32_MIN)).
pub const XFS_BIGTIME_EPOCH_OFFSET: i64 = 1 << 31;

/// Fork formats (`enum xfs_dinode_fmt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkFormat {
    /// Device number (special files).
    Dev,
    /// Data inside the inode.
    Local,
    /// An extent list inside the inode.
    Extents,
    /// The root of a B+tree of extents inside the inode.
    Btree,
}

impl ForkFormat {
    fn from_u8(v: u8, ino: u64) -> Result<ForkFormat> {
        Ok(match v {
            0 => ForkFormat::Dev,
            1 => ForkFormat::Local,
            2 => ForkFormat::Extents,
            3 => ForkFormat::Btree,
            _ => {
                return Err(Error::corrupt(format!(
                    "XFS inode {ino}: unknown fork format {v}"
                )))
            }
        })
    }
}

/// A timestamp as seconds since the Unix epoch and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct XfsTime {
    /// Seconds since 1970.
    pub secs: i64,
    /// Nanoseconds.
    pub nanos: u32,
}

/// A parsed inode: the core fields and the raw fork bytes.
#[derive(Debug, Clone)]
pub struct Inode {
    /// The inode number.
    pub ino: u64,
    /// Type and permission bits.
    pub di_mode: u16,
    /// 1, 2 or 3.
    pub di_version: u8,
    /// Data fork format.
    pub di_format: ForkFormat,
    /// Owner.
    pub di_uid: u32,
    /// Group.
    pub di_gid: u32,
    /// Link count.
    pub di_nlink: u32,
    /// Project id.
    pub di_projid: u32,
    /// Last access.
    pub di_atime: XfsTime,
    /// Last data change.
    pub di_mtime: XfsTime,
    /// Last inode change.
    pub di_ctime: XfsTime,
    /// Creation (v3 only).
    pub di_crtime: Option<XfsTime>,
    /// Size in bytes.
    pub di_size: u64,
    /// Blocks used (data and attribute forks, B+tree blocks included).
    pub di_nblocks: u64,
    /// Data fork extents.
    pub di_nextents: u64,
    /// Attribute fork extents.
    pub di_anextents: u64,
    /// Attribute fork format, when there is an attribute fork.
    pub di_aformat: Option<ForkFormat>,
    /// Flags.
    pub di_flags: u16,
    /// v3 flags.
    pub di_flags2: u64,
    /// Data fork bytes.
    pub data_fork: Vec<u8>,
    /// Attribute fork bytes (empty when there is none).
    pub attr_fork: Vec<u8>,
}

fn time(b: &[u8], off: usize, bigtime: bool) -> XfsTime {
    if bigtime {
        let ns = be64(b, off);
        XfsTime {
            secs: (ns / 1_000_000_000) as i64 - XFS_BIGTIME_EPOCH_OFFSET,
            nanos: (ns % 1_000_000_000) as u32,
        }
    } else {
        XfsTime {
            secs: i64::from(be32(b, off) as i32),
            nanos: be32(b, off + 4).min(999_999_999),
        }
    }
}

impl Xfs {
    /// The byte offset of inode `ino` (agno / agbno / offset in block).
    pub fn inode_offset(&self, ino: u64) -> Result<u64> {
        let sb = &self.sb;
        let agino_bits = u32::from(sb.sb_agblklog) + u32::from(sb.sb_inopblog);
        let agno = ino >> agino_bits;
        let agino = ino & ((1u64 << agino_bits) - 1);
        let agbno = agino >> sb.sb_inopblog;
        let slot = agino & ((1u64 << sb.sb_inopblog) - 1);
        if agno >= u64::from(sb.sb_agcount) || agbno >= u64::from(sb.sb_agblocks) || agbno == 0 {
            return Err(Error::corrupt(format!(
                "XFS: inode number {ino} lies outside the filesystem"
            )));
        }
        let fsb = (agno << sb.sb_agblklog) | agbno;
        let base = self.fsb_to_byte(fsb)?;
        Ok(base + slot * u64::from(sb.sb_inodesize))
    }

    /// Reads and validates inode `ino`.
    pub fn inode(&self, ino: u64) -> Result<Inode> {
        let off = self.inode_offset(ino)?;
        let mut b = vec![0u8; usize::from(self.sb.sb_inodesize)];
        self.read_bytes(&mut b, off)?;
        parse_inode(&b, ino, self.sb.has_crc())
    }
}

/// Parses the inode bytes `b` of inode `ino`.
pub fn parse_inode(b: &[u8], ino: u64, crc: bool) -> Result<Inode> {
    if be16(b, 0) != XFS_DINODE_MAGIC {
        return Err(Error::corrupt(format!("XFS inode {ino}: bad magic")));
    }
    let version = b[4];
    let core = match (version, crc) {
        (1 | 2, false) => 100,
        (3, true) => 176,
        _ => {
            return Err(Error::corrupt(format!(
                "XFS inode {ino}: version {version} does not match the superblock"
            )))
        }
    };
    if version == 3 {
        verify_crc(b, 100, &|| format!("XFS inode {ino}"))?;
        if be64(b, 152) != ino {
            return Err(Error::corrupt(format!(
                "XFS inode {ino}: records inode number {}",
                be64(b, 152)
            )));
        }
    }
    let flags2 = if version == 3 { be64(b, 120) } else { 0 };
    let bigtime = flags2 & XFS_DIFLAG2_BIGTIME != 0;
    let nrext64 = flags2 & XFS_DIFLAG2_NREXT64 != 0;
    let (nextents, anextents) = if nrext64 {
        (be64(b, 24), u64::from(be32(b, 76)))
    } else {
        (u64::from(be32(b, 76)), u64::from(be16(b, 80)))
    };
    let forkoff = usize::from(b[82]) * 8;
    let format = ForkFormat::from_u8(b[5], ino)?;
    let size = b.len();
    let (data_end, aformat) = if forkoff != 0 {
        if core + forkoff >= size {
            return Err(Error::corrupt(format!(
                "XFS inode {ino}: attribute fork offset {forkoff} is beyond the inode"
            )));
        }
        (core + forkoff, Some(ForkFormat::from_u8(b[83], ino)?))
    } else {
        (size, None)
    };
    let nlink = if version == 1 {
        u32::from(be16(b, 6))
    } else {
        be32(b, 16)
    };
    let di_size = be64(b, 56);
    if di_size > i64::MAX as u64 {
        return Err(Error::corrupt(format!(
            "XFS inode {ino}: size {di_size} is negative"
        )));
    }
    Ok(Inode {
        ino,
        di_mode: be16(b, 2),
        di_version: version,
        di_format: format,
        di_uid: be32(b, 8),
        di_gid: be32(b, 12),
        di_nlink: nlink,
        di_projid: if version == 1 {
            0
        } else {
            u32::from(be16(b, 20)) | (u32::from(be16(b, 22)) << 16)
        },
        di_atime: time(b, 32, bigtime),
        di_mtime: time(b, 40, bigtime),
        di_ctime: time(b, 48, bigtime),
        di_crtime: (version == 3).then(|| time(b, 144, bigtime)),
        di_size,
        di_nblocks: be64(b, 64),
        di_nextents: nextents,
        di_anextents: anextents,
        di_aformat: aformat,
        di_flags: be16(b, 90),
        di_flags2: flags2,
        data_fork: b[core..data_end].to_vec(),
        attr_fork: if forkoff != 0 {
            b[data_end..].to_vec()
        } else {
            Vec::new()
        },
    })
}

impl Inode {
    /// The file type bits.
    pub fn file_type(&self) -> u16 {
        self.di_mode & 0o170000
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type() == 0o040000
    }

    /// True for a symlink.
    pub fn is_symlink(&self) -> bool {
        self.file_type() == 0o120000
    }

    /// True for a regular file.
    pub fn is_file(&self) -> bool {
        self.file_type() == 0o100000
    }

    /// The device number of a special file as (major, minor).
    pub fn device(&self) -> (u32, u32) {
        let d = be32(&self.data_fork, 0);
        ((d >> 18) & 0x1ff, d & 0x3ffff)
    }
}
