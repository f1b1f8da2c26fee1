//! File data: writes (in place over blocks the file owns, into new blocks for holes and
//! growth), truncation, and the extent list in the inode's data fork.
//!
//! New blocks are written whole (zeros around the data) before the metadata that maps them;
//! bytes past the end of file in the last block are kept zero (on shrink and before growth),
//! as the kernel keeps them. Unwritten extents, and data forks in B+tree form that would need
//! new or freed blocks, are refused by name.

use vdisk_block::{Error, Result};
use vdisk_fs::{errno, errno_error};

use super::inode::{check_writable, put16, put32, put64, CORE, FMT_BTREE, FMT_EXTENTS};
use super::tx::{Kind, Tx};
use crate::fork::{decode_extent, Extent, Fork, XFS_BMAP_CRC_MAGIC};
use crate::inode::{ForkFormat, Inode};
use crate::{be32, be64};

/// Size of a v5 long-form B+tree block header.
pub const LBLOCK_HDR: usize = 72;
/// `MAXEXTLEN`: the longest extent a record holds (21 bits).
pub const MAXEXTLEN: u64 = (1 << 21) - 1;
/// The largest file size we write (XFS's s_maxbytes on 64-bit hosts is 8 EiB - 1).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// Encodes an extent record.
pub fn encode_extent(e: &Extent) -> [u8; 16] {
    let l0 = (u64::from(e.unwritten) << 63) | (e.startoff << 9) | (e.startblock >> 43);
    let l1 = (e.startblock << 21) | e.blockcount;
    let mut o = [0u8; 16];
    o[..8].copy_from_slice(&l0.to_be_bytes());
    o[8..].copy_from_slice(&l1.to_be_bytes());
    o
}

impl Tx<'_> {
    /// The byte size of inode `i`'s data fork area.
    pub fn data_fork_room(&self, i: &Inode) -> usize {
        i.data_fork.len()
    }

    /// The data fork extents of `i` (extent list or B+tree).
    pub fn file_extents(&mut self, i: &Inode) -> Result<Vec<Extent>> {
        match i.di_format {
            ForkFormat::Extents => Ok((0..i.di_nextents as usize)
                .map(|k| decode_extent(&i.data_fork, k * 16))
                .collect()),
            ForkFormat::Btree => match self.bmbt_leaves(i)? {
                Some(leaves) => {
                    let mut out = Vec::new();
                    for off in leaves {
                        let bs = self.fs.sb.sb_blocksize as usize;
                        let b = self.buf(off, bs, Kind::LongBtree)?;
                        let n = usize::from(u16::from_be_bytes([b[6], b[7]]));
                        if be32(b, 0) != XFS_BMAP_CRC_MAGIC || LBLOCK_HDR + n * 16 > bs {
                            return Err(Error::corrupt(format!(
                                "XFS inode {}: bmbt leaf at {off:#x} is not valid",
                                i.ino
                            )));
                        }
                        out.extend((0..n).map(|k| decode_extent(b, LBLOCK_HDR + k * 16)));
                    }
                    Ok(out)
                }
                None => self.fs.extents(i, Fork::Data),
            },
            _ => Ok(Vec::new()),
        }
    }

    /// The byte offsets of the leaves of a B+tree data fork whose root (in the inode) points
    /// straight at leaves; None for deeper trees.
    fn bmbt_leaves(&self, i: &Inode) -> Result<Option<Vec<u64>>> {
        let r = &i.data_fork;
        let level = u16::from_be_bytes([r[0], r[1]]);
        let n = usize::from(u16::from_be_bytes([r[2], r[3]]));
        let maxrecs = r.len().saturating_sub(4) / 16;
        if level != 1 {
            return Ok(None);
        }
        if n == 0 || n > maxrecs {
            return Err(Error::corrupt(format!(
                "XFS inode {}: bmbt root has {n} records",
                i.ino
            )));
        }
        (0..n)
            .map(|k| self.fs.fsb_to_byte(be64(r, 4 + maxrecs * 8 + k * 8)))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Stores `ex` as inode `ino`'s block map: an extent list in the inode while it fits,
    /// else a B+tree whose root in the inode points at leaf blocks (re-laid whole; its blocks
    /// reused, allocated or freed as needed, and counted in `di_nblocks`).
    pub fn put_extents(&mut self, ino: u64, ex: &[Extent]) -> Result<()> {
        let i = self.inode(ino)?;
        let room = self.data_fork_room(&i);
        let old_leaves = if i.di_format == ForkFormat::Btree {
            self.bmbt_leaves(&i)?.ok_or_else(|| {
                Error::unsupported(format!(
                    "XFS inode {ino}: changing the block map of a B+tree data fork deeper than two levels is not supported yet"
                ))
            })?
        } else {
            Vec::new()
        };
        let bs = self.fs.sb.sb_blocksize as usize;
        if ex.len() * 16 <= room {
            for off in &old_leaves {
                self.drop_buf(*off);
                let fsb = self.byte_to_fsb_data(*off);
                self.free_blocks(fsb, 1);
            }
            self.add_nblocks(ino, -(old_leaves.len() as i64))?;
            let b = self.inode_mut(ino)?;
            b[5] = FMT_EXTENTS;
            let area = &mut b[CORE..CORE + room];
            area.fill(0);
            for (k, e) in ex.iter().enumerate() {
                area[k * 16..k * 16 + 16].copy_from_slice(&encode_extent(e));
            }
            put32(b, 76, ex.len() as u32);
            return Ok(());
        }
        let per = (bs - LBLOCK_HDR) / 16;
        let nleaves = ex.len().div_ceil(per);
        let maxrecs = (room - 4) / 16;
        if nleaves > maxrecs {
            return Err(Error::unsupported(format!(
                "XFS inode {ino}: {} extents need a block map B+tree deeper than two levels, which is not supported yet",
                ex.len()
            )));
        }
        // Leaf blocks: the old ones first, then new ones near the file's data.
        let mut leaves: Vec<u64> = old_leaves
            .iter()
            .map(|&o| self.byte_to_fsb_data(o))
            .collect();
        let mut allocated = 0i64;
        while leaves.len() < nleaves {
            let near = ex.first().map(|e| e.startblock);
            let (fsb, _) = self.alloc_blocks(1, near, 1)?;
            leaves.push(fsb);
            allocated += 1;
        }
        for &fsb in &leaves[nleaves..] {
            let off = self.fs.fsb_to_byte(fsb)?;
            self.drop_buf(off);
            self.free_blocks(fsb, 1);
            allocated -= 1;
        }
        leaves.truncate(nleaves);
        let uuid = super::alloc::meta_uuid(self.fs);
        // Records spread evenly, so every leaf is at least half full.
        let each = ex.len().div_ceil(nleaves);
        for (k, chunk) in ex.chunks(each).enumerate() {
            let off = self.fs.fsb_to_byte(leaves[k])?;
            let b = self.new_buf(off, bs, Kind::LongBtree);
            put32(b, 0, XFS_BMAP_CRC_MAGIC);
            put16(b, 4, 0);
            put16(b, 6, chunk.len() as u16);
            put64(b, 8, if k == 0 { u64::MAX } else { leaves[k - 1] });
            put64(
                b,
                16,
                if k + 1 == nleaves {
                    u64::MAX
                } else {
                    leaves[k + 1]
                },
            );
            put64(b, 24, off / 512);
            b[40..56].copy_from_slice(&uuid);
            put64(b, 56, ino);
            for (j, e) in chunk.iter().enumerate() {
                b[LBLOCK_HDR + j * 16..LBLOCK_HDR + j * 16 + 16].copy_from_slice(&encode_extent(e));
            }
        }
        self.add_nblocks(ino, allocated)?;
        let b = self.inode_mut(ino)?;
        b[5] = FMT_BTREE;
        let area = &mut b[CORE..CORE + room];
        area.fill(0);
        put16(area, 0, 1);
        put16(area, 2, nleaves as u16);
        for (k, chunk) in ex.chunks(each).enumerate() {
            put64(area, 4 + k * 8, chunk[0].startoff);
            put64(area, 4 + maxrecs * 8 + k * 8, leaves[k]);
        }
        put32(b, 76, ex.len() as u32);
        Ok(())
    }

    /// The filesystem block of byte offset `off`.
    fn byte_to_fsb_data(&self, off: u64) -> u64 {
        let bno = off / u64::from(self.fs.sb.sb_blocksize);
        let agb = u64::from(self.fs.sb.sb_agblocks);
        ((bno / agb) << self.fs.sb.sb_agblklog) | (bno % agb)
    }

    fn add_nblocks(&mut self, ino: u64, delta: i64) -> Result<()> {
        let b = self.inode_mut(ino)?;
        let n = u64::from_be_bytes(b[64..72].try_into().unwrap_or_default());
        let n = n
            .checked_add_signed(delta)
            .ok_or_else(|| Error::corrupt(format!("XFS inode {ino}: block count underflows")))?;
        put64(b, 64, n);
        Ok(())
    }

    fn block_byte(&self, fsb: u64) -> Result<u64> {
        self.fs.fsb_to_byte(fsb)
    }

    /// Zeroes bytes `[from, end of its block)` of the file if that block is mapped.
    fn zero_tail(&mut self, ex: &[Extent], from: u64) -> Result<()> {
        let bs = u64::from(self.fs.sb.sb_blocksize);
        if from % bs == 0 {
            return Ok(());
        }
        let lblk = from / bs;
        if let Some(e) = ex
            .iter()
            .find(|e| e.startoff <= lblk && lblk < e.startoff + e.blockcount)
        {
            if e.unwritten {
                return Ok(());
            }
            let phys = self.block_byte(e.startblock + (lblk - e.startoff))? + from % bs;
            self.write_data(phys, vec![0u8; (bs - from % bs) as usize]);
        }
        Ok(())
    }

    /// Writes `data` at `off` of regular file `ino`.
    pub fn write_file(&mut self, ino: u64, off: u64, data: &[u8]) -> Result<()> {
        let i = self.inode(ino)?;
        if i.di_mode == 0 {
            return Err(errno_error("write", errno::ENOENT));
        }
        if i.is_dir() {
            return Err(errno_error("write", errno::EISDIR));
        }
        if !i.is_file() {
            return Err(errno_error("write", errno::EINVAL));
        }
        check_writable(&i)?;
        let end = off
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or_else(|| errno_error("write", errno::EFBIG))?;
        let bs = u64::from(self.fs.sb.sb_blocksize);
        let mut ex = self.file_extents(&i)?;
        if off > i.di_size {
            self.zero_tail(&ex, i.di_size)?;
        }
        let first = off / bs;
        let last = (end - 1) / bs;
        let mut l = first;
        let mut allocated = 0i64;
        let mut new_ex = Vec::new();
        while l <= last {
            if let Some(e) = ex
                .iter()
                .find(|e| e.startoff <= l && l < e.startoff + e.blockcount)
                .copied()
            {
                if e.unwritten {
                    return Err(Error::unsupported(format!(
                        "XFS inode {ino}: writing into unwritten (preallocated) extents is not supported yet"
                    )));
                }
                // Mapped: overwrite in place, up to the extent's end.
                let run_end = (e.startoff + e.blockcount - 1).min(last);
                let lo = off.max(l * bs);
                let hi = end.min((run_end + 1) * bs);
                let phys = self.block_byte(e.startblock + (l - e.startoff))? + (lo - l * bs);
                self.write_data(
                    phys,
                    data[(lo - off) as usize..(hi - off) as usize].to_vec(),
                );
                l = run_end + 1;
                continue;
            }
            // A hole: up to the next extent or the end of the write.
            let next = ex
                .iter()
                .map(|e| e.startoff)
                .filter(|&s| s > l)
                .min()
                .unwrap_or(u64::MAX);
            let hole_end = last.min(next - 1);
            let want = (hole_end - l + 1).min(MAXEXTLEN) as u32;
            let near = ex
                .iter()
                .chain(new_ex.iter())
                .filter(|e| e.startoff + e.blockcount <= l)
                .max_by_key(|e| e.startoff)
                .map(|e| e.startblock + e.blockcount - 1);
            let (fsb, got) = self.alloc_blocks(want, near, 1)?;
            allocated += i64::from(got);
            let mut buf = vec![0u8; (u64::from(got) * bs) as usize];
            let lo = off.max(l * bs);
            let hi = end.min((l + u64::from(got)) * bs);
            buf[(lo - l * bs) as usize..(hi - l * bs) as usize]
                .copy_from_slice(&data[(lo - off) as usize..(hi - off) as usize]);
            self.write_data(self.block_byte(fsb)?, buf);
            new_ex.push(Extent {
                startoff: l,
                startblock: fsb,
                blockcount: u64::from(got),
                unwritten: false,
            });
            l += u64::from(got);
        }
        if !new_ex.is_empty() {
            ex.extend(new_ex);
            ex.sort_by_key(|e| e.startoff);
            let ex = merge(ex);
            self.put_extents(ino, &ex)?;
            self.add_nblocks(ino, allocated)?;
        }
        if end > i.di_size {
            let b = self.inode_mut(ino)?;
            put64(b, 56, end);
        }
        self.touch(ino, true)
    }

    /// Sets the size of regular file `ino`: shrinking frees whole blocks past the new end
    /// and zeroes the rest of the last block; growing leaves a hole.
    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<()> {
        if size > MAX_FILE_SIZE {
            return Err(errno_error("truncate", errno::EFBIG));
        }
        let i = self.inode(ino)?;
        let bs = u64::from(self.fs.sb.sb_blocksize);
        let ex = self.file_extents(&i)?;
        if size > i.di_size {
            self.zero_tail(&ex, i.di_size)?;
        } else {
            self.zero_tail(&ex, size)?;
            let keep = size.div_ceil(bs);
            if ex.iter().any(|e| e.startoff + e.blockcount > keep) {
                let mut kept = Vec::new();
                let mut freed = 0i64;
                for e in ex {
                    if e.startoff >= keep {
                        self.free_blocks(e.startblock, e.blockcount as u32);
                        freed += e.blockcount as i64;
                    } else if e.startoff + e.blockcount > keep {
                        let n = keep - e.startoff;
                        self.free_blocks(e.startblock + n, (e.blockcount - n) as u32);
                        freed += (e.blockcount - n) as i64;
                        kept.push(Extent { blockcount: n, ..e });
                    } else {
                        kept.push(e);
                    }
                }
                self.put_extents(ino, &kept)?;
                self.add_nblocks(ino, -freed)?;
            }
        }
        let b = self.inode_mut(ino)?;
        put64(b, 56, size);
        Ok(())
    }

    /// Frees every data block of `i` (an inode being freed); returns how many.
    pub fn free_all_data(&mut self, i: &Inode) -> Result<u64> {
        let ex = self.file_extents(i)?;
        let mut n = 0;
        for e in ex {
            self.free_blocks(e.startblock, e.blockcount as u32);
            n += e.blockcount;
        }
        if i.di_format == ForkFormat::Btree {
            let leaves = self.bmbt_leaves(i)?.ok_or_else(|| {
                Error::unsupported(format!(
                    "XFS inode {}: freeing a block map B+tree deeper than two levels is not supported yet",
                    i.ino
                ))
            })?;
            for off in leaves {
                self.drop_buf(off);
                self.free_blocks(self.byte_to_fsb_data(off), 1);
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Joins extents that continue each other on disk.
fn merge(ex: Vec<Extent>) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::with_capacity(ex.len());
    for e in ex {
        if let Some(p) = out.last_mut() {
            if p.startoff + p.blockcount == e.startoff
                && p.startblock + p.blockcount == e.startblock
                && p.unwritten == e.unwritten
                && p.blockcount + e.blockcount <= MAXEXTLEN
            {
                p.blockcount += e.blockcount;
                continue;
            }
        }
        out.push(e);
    }
    out
}
