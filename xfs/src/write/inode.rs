//! Editing v3 inode cores in place, inside a transaction's inode block buffer.
//!
//! Offsets follow `struct xfs_dinode` in the kernel's `xfs_format.h`.

use vdisk_block::{Error, Result};

use super::tx::{set_crc, Kind, Tx};
use crate::inode::{parse_inode, Inode, XfsTime, XFS_BIGTIME_EPOCH_OFFSET, XFS_DIFLAG2_BIGTIME};
use crate::Xfs;

/// Size of the v3 inode core: the data fork starts here.
pub const CORE: usize = 176;
/// `NULLAGINO`: the end of an unlinked list.
pub const NULLAGINO: u32 = u32::MAX;
/// `XFS_DINODE_FMT_DEV`.
pub const FMT_DEV: u8 = 0;
/// `XFS_DINODE_FMT_LOCAL`.
pub const FMT_LOCAL: u8 = 1;
/// `XFS_DINODE_FMT_EXTENTS`.
pub const FMT_EXTENTS: u8 = 2;
/// `XFS_DINODE_FMT_BTREE`.
pub const FMT_BTREE: u8 = 3;

pub(crate) fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_be_bytes());
}
pub(crate) fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_be_bytes());
}
pub(crate) fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_be_bytes());
}

/// Where inode `ino` lives: (byte offset of its filesystem block, offset inside the block).
pub fn inode_loc(fs: &Xfs, ino: u64) -> Result<(u64, usize)> {
    let off = fs.inode_offset(ino)?;
    let bs = u64::from(fs.sb.sb_blocksize);
    Ok((off / bs * bs, (off % bs) as usize))
}

/// Encodes `t` as an inode timestamp (bigtime or seconds + nanoseconds).
pub fn encode_time(t: XfsTime, bigtime: bool) -> [u8; 8] {
    if bigtime {
        let secs = (t.secs + XFS_BIGTIME_EPOCH_OFFSET).max(0) as u64;
        (secs * 1_000_000_000 + u64::from(t.nanos)).to_be_bytes()
    } else {
        let s = t.secs.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        let mut o = [0u8; 8];
        o[..4].copy_from_slice(&s.to_be_bytes());
        o[4..].copy_from_slice(&t.nanos.to_be_bytes());
        o
    }
}

/// The current time.
pub fn now() -> XfsTime {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    XfsTime {
        secs: d.as_secs() as i64,
        nanos: d.subsec_nanos(),
    }
}

/// Which timestamp field.
#[derive(Debug, Clone, Copy)]
pub enum TimeField {
    /// `di_atime`.
    Atime = 32,
    /// `di_mtime`.
    Mtime = 40,
    /// `di_ctime`.
    Ctime = 48,
    /// `di_crtime`.
    Crtime = 144,
}

impl Tx<'_> {
    /// The bytes of inode `ino`, marked changed.
    pub fn inode_mut(&mut self, ino: u64) -> Result<&mut [u8]> {
        let (boff, ioff) = inode_loc(self.fs, ino)?;
        let bs = self.fs.sb.sb_blocksize as usize;
        let isz = usize::from(self.fs.sb.sb_inodesize);
        self.buf(boff, bs, Kind::Inodes)?;
        self.inode_touched(boff, ioff);
        let b = self.buf(boff, bs, Kind::Inodes)?;
        Ok(&mut b[ioff..ioff + isz])
    }

    /// Inode `ino` as it stands in this transaction, parsed.
    pub fn inode(&mut self, ino: u64) -> Result<Inode> {
        let (boff, ioff) = inode_loc(self.fs, ino)?;
        let isz = usize::from(self.fs.sb.sb_inodesize);
        if self.has_buf(boff) {
            let bs = self.fs.sb.sb_blocksize as usize;
            let mut copy = self.buf(boff, bs, Kind::Inodes)?[ioff..ioff + isz].to_vec();
            set_crc(&mut copy, 100);
            parse_inode(&copy, ino, true)
        } else {
            self.fs.inode(ino)
        }
    }

    /// Sets timestamp `f` of inode `ino` to `t`.
    pub fn set_time(&mut self, ino: u64, f: TimeField, t: XfsTime) -> Result<()> {
        let b = self.inode_mut(ino)?;
        let big = u64::from_be_bytes(b[120..128].try_into().unwrap_or_default())
            & XFS_DIFLAG2_BIGTIME
            != 0;
        let o = f as usize;
        b[o..o + 8].copy_from_slice(&encode_time(t, big));
        Ok(())
    }

    /// Bumps `di_changecount` and sets ctime (and mtime when `mtime`) to now.
    pub fn touch(&mut self, ino: u64, mtime: bool) -> Result<()> {
        let t = now();
        self.set_time(ino, TimeField::Ctime, t)?;
        if mtime {
            self.set_time(ino, TimeField::Mtime, t)?;
        }
        let b = self.inode_mut(ino)?;
        let c = u64::from_be_bytes(b[104..112].try_into().unwrap_or_default());
        put64(b, 104, c.wrapping_add(1));
        Ok(())
    }

    /// Sets `di_nlink`.
    pub fn set_nlink(&mut self, ino: u64, n: u32) -> Result<()> {
        let b = self.inode_mut(ino)?;
        put32(b, 16, n);
        put16(b, 6, 0);
        Ok(())
    }
}

/// Refuses inode features the writer does not maintain.
pub fn check_writable(i: &Inode) -> Result<()> {
    if i.di_version != 3 {
        return Err(Error::unsupported(format!(
            "XFS inode {}: writing version {} inodes is not supported",
            i.ino, i.di_version
        )));
    }
    if i.di_flags2 & crate::inode::XFS_DIFLAG2_NREXT64 != 0 {
        return Err(Error::unsupported(format!(
            "XFS inode {}: writing inodes with 64-bit extent counters (nrext64) is not supported yet",
            i.ino
        )));
    }
    if i.di_flags & crate::inode::XFS_DIFLAG_REALTIME != 0 {
        return Err(Error::unsupported(format!(
            "XFS inode {}: realtime files are not supported",
            i.ino
        )));
    }
    Ok(())
}
