//! Data and attribute forks: extent records (`xfs_bmbt_rec`), the B+tree of extents (bmbt,
//! any depth), and reading a fork's logical bytes (holes and unwritten extents read as zeros).

use vdisk_block::{Error, Result};

use crate::inode::{ForkFormat, Inode};
use crate::{be16, be32, be64, verify_crc, Xfs};

/// "BMAP": a v4 bmbt block.
pub const XFS_BMAP_MAGIC: u32 = 0x424d_4150;
/// "BMA3": a v5 bmbt block.
pub const XFS_BMAP_CRC_MAGIC: u32 = 0x424d_4133;
/// Deepest bmbt accepted (the kernel's limit for 64-bit extent counts is well below).
pub const MAX_BMBT_DEPTH: u16 = 16;
/// Most extents collected from one fork: bounds memory on hostile trees.
pub const MAX_EXTENTS: usize = 1 << 22;

/// One mapping of a fork: logical blocks [startoff, startoff+blockcount) at startblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First logical block.
    pub startoff: u64,
    /// First filesystem block.
    pub startblock: u64,
    /// Length in blocks.
    pub blockcount: u64,
    /// Preallocated, never written: reads as zeros.
    pub unwritten: bool,
}

/// Decodes the 16-byte packed extent record at `b[off..]`.
pub fn decode_extent(b: &[u8], off: usize) -> Extent {
    let l0 = be64(b, off);
    let l1 = be64(b, off + 8);
    Extent {
        unwritten: l0 >> 63 != 0,
        startoff: (l0 & ((1u64 << 63) - 1)) >> 9,
        startblock: ((l0 & 0x1ff) << 43) | (l1 >> 21),
        blockcount: l1 & 0x1f_ffff,
    }
}

/// Which fork of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork {
    /// The data fork.
    Data,
    /// The attribute fork.
    Attr,
}

impl Xfs {
    /// The extents of `fork` of inode `i`, sorted by logical offset, non-overlapping.
    pub fn extents(&self, i: &Inode, fork: Fork) -> Result<Vec<Extent>> {
        let (fmt, bytes, n) = match fork {
            Fork::Data => (Some(i.di_format), &i.data_fork, i.di_nextents),
            Fork::Attr => (i.di_aformat, &i.attr_fork, i.di_anextents),
        };
        let ino = i.ino;
        let mut out = Vec::new();
        match fmt {
            Some(ForkFormat::Extents) => {
                let count = usize::try_from(n).unwrap_or(usize::MAX);
                if count > bytes.len() / 16 {
                    return Err(Error::corrupt(format!(
                        "XFS inode {ino}: {n} extents do not fit in the inode fork"
                    )));
                }
                for k in 0..count {
                    out.push(decode_extent(bytes, k * 16));
                }
            }
            Some(ForkFormat::Btree) => {
                let level = be16(bytes, 0);
                let numrecs = usize::from(be16(bytes, 2));
                if level == 0 || level > MAX_BMBT_DEPTH {
                    return Err(Error::corrupt(format!(
                        "XFS inode {ino}: bmbt root level {level} is out of range"
                    )));
                }
                let maxrecs = bytes.len().saturating_sub(4) / 16;
                if numrecs == 0 || numrecs > maxrecs {
                    return Err(Error::corrupt(format!(
                        "XFS inode {ino}: bmbt root has {numrecs} records (at most {maxrecs})"
                    )));
                }
                let ptrs = 4 + maxrecs * 8;
                for k in 0..numrecs {
                    let p = be64(bytes, ptrs + k * 8);
                    self.bmbt_walk(ino, p, level - 1, &mut out)?;
                }
            }
            Some(ForkFormat::Local) | Some(ForkFormat::Dev) | None => return Ok(out),
        }
        let mut next = 0u64;
        for e in &out {
            if e.startoff < next || e.blockcount == 0 {
                return Err(Error::corrupt(format!(
                    "XFS inode {ino}: extents overlap or are out of order at logical block {}",
                    e.startoff
                )));
            }
            next = e
                .startoff
                .checked_add(e.blockcount)
                .ok_or_else(|| Error::corrupt(format!("XFS inode {ino}: extent overflows")))?;
        }
        Ok(out)
    }

    fn bmbt_walk(&self, ino: u64, fsb: u64, level: u16, out: &mut Vec<Extent>) -> Result<()> {
        let b = self.read_blocks(fsb, 1)?;
        let crc = self.sb.has_crc();
        let what = || format!("XFS inode {ino}: bmbt block {fsb:#x}");
        let (magic, hdr) = if crc {
            (XFS_BMAP_CRC_MAGIC, 72)
        } else {
            (XFS_BMAP_MAGIC, 24)
        };
        if be32(&b, 0) != magic {
            return Err(Error::corrupt(format!("{}: bad magic", what())));
        }
        if crc {
            verify_crc(&b, 64, &what)?;
            if be64(&b, 56) != ino {
                return Err(Error::corrupt(format!(
                    "{}: belongs to another inode",
                    what()
                )));
            }
        }
        if be16(&b, 4) != level {
            return Err(Error::corrupt(format!(
                "{}: level {} where {level} was expected",
                what(),
                be16(&b, 4)
            )));
        }
        let numrecs = usize::from(be16(&b, 6));
        let maxrecs = (b.len() - hdr) / 16;
        if numrecs > maxrecs {
            return Err(Error::corrupt(format!("{}: {numrecs} records", what())));
        }
        if level == 0 {
            for k in 0..numrecs {
                if out.len() >= MAX_EXTENTS {
                    return Err(Error::unsupported(format!(
                        "XFS inode {ino}: more than {MAX_EXTENTS} extents"
                    )));
                }
                out.push(decode_extent(&b, hdr + k * 16));
            }
        } else {
            let ptrs = hdr + maxrecs * 8;
            for k in 0..numrecs {
                self.bmbt_walk(ino, be64(&b, ptrs + k * 8), level - 1, out)?;
            }
        }
        Ok(())
    }

    /// Reads bytes [offset, offset+buf.len()) of a fork through its extents; holes and
    /// unwritten extents read as zeros.
    pub fn read_mapped(&self, extents: &[Extent], offset: u64, buf: &mut [u8]) -> Result<()> {
        buf.fill(0);
        let bs = u64::from(self.sb.sb_blocksize);
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| Error::invalid("XFS: read range overflows"))?;
        let first =
            extents.partition_point(|e| (e.startoff + e.blockcount).saturating_mul(bs) <= offset);
        for e in &extents[first..] {
            let es = e.startoff.saturating_mul(bs);
            if es >= end {
                break;
            }
            if e.unwritten {
                continue;
            }
            let ee = es.saturating_add(e.blockcount.saturating_mul(bs));
            let s = es.max(offset);
            let t = ee.min(end);
            if s >= t {
                continue;
            }
            let disk = self
                .fsb_to_byte(e.startblock)?
                .checked_add(s - es)
                .ok_or_else(|| Error::corrupt("XFS: extent overflows"))?;
            // The whole extent must lie in its AG's range of the device.
            self.fsb_to_byte(e.startblock + (t - es - 1) / bs)?;
            let dst = &mut buf[(s - offset) as usize..(t - offset) as usize];
            self.read_bytes(dst, disk)?;
        }
        Ok(())
    }

    /// Reads file data of `i` at `offset` into `buf`; returns the count (short at EOF).
    pub fn read_data(&self, i: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if i.di_flags & crate::inode::XFS_DIFLAG_REALTIME != 0 {
            return Err(Error::unsupported(format!(
                "XFS inode {}: realtime files are not supported",
                i.ino
            )));
        }
        if offset >= i.di_size {
            return Ok(0);
        }
        let n = (i.di_size - offset).min(buf.len() as u64) as usize;
        let buf = &mut buf[..n];
        match i.di_format {
            ForkFormat::Local => {
                buf.fill(0);
                let src = i.data_fork.get(offset as usize..).unwrap_or(&[]);
                let m = src.len().min(n);
                buf[..m].copy_from_slice(&src[..m]);
            }
            ForkFormat::Extents | ForkFormat::Btree => {
                let ex = self.extents(i, Fork::Data)?;
                self.read_mapped(&ex, offset, buf)?;
            }
            ForkFormat::Dev => {
                return Err(Error::corrupt(format!(
                    "XFS inode {}: a regular file with a device fork",
                    i.ino
                )))
            }
        }
        Ok(n)
    }
}
