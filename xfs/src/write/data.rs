//! File data: writes (in place over blocks the file owns, into new blocks for holes and
//! growth), truncation, and the extent list in the inode's data fork.
//!
//! New blocks are written whole (zeros around the data) before the metadata that maps them;
//! bytes past the end of file in the last block are kept zero (on shrink and before growth),
//! as the kernel keeps them. Unwritten extents, and data forks in B+tree form that would need
//! new or freed blocks, are refused by name.

use vdisk_block::{Error, Result};
use vdisk_guestfs::fs::{errno, errno_error};

use super::inode::{check_writable, put32, put64, CORE, FMT_BTREE, FMT_EXTENTS};
use super::tx::Tx;
use crate::fork::{decode_extent, Extent, Fork};
use crate::inode::{ForkFormat, Inode};

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
    pub fn file_extents(&self, i: &Inode) -> Result<Vec<Extent>> {
        match i.di_format {
            ForkFormat::Extents => Ok((0..i.di_nextents as usize)
                .map(|k| decode_extent(&i.data_fork, k * 16))
                .collect()),
            ForkFormat::Btree => self.fs.extents(i, Fork::Data),
            _ => Ok(Vec::new()),
        }
    }

    /// Stores `ex` as inode `ino`'s extent list (refusing when it does not fit).
    pub fn put_extents(&mut self, ino: u64, ex: &[Extent]) -> Result<()> {
        let i = self.inode(ino)?;
        if i.di_format == ForkFormat::Btree {
            return Err(Error::unsupported(format!(
                "XFS inode {ino}: changing the block map of a B+tree data fork is not supported yet"
            )));
        }
        let room = self.data_fork_room(&i);
        if ex.len() * 16 > room {
            return Err(Error::unsupported(format!(
                "XFS inode {ino}: {} extents do not fit in the inode; converting the data fork to a B+tree is not supported yet",
                ex.len()
            )));
        }
        let b = self.inode_mut(ino)?;
        b[5] = FMT_EXTENTS;
        let area = &mut b[CORE..CORE + room];
        area.fill(0);
        for (k, e) in ex.iter().enumerate() {
            area[k * 16..k * 16 + 16].copy_from_slice(&encode_extent(e));
        }
        put32(b, 76, ex.len() as u32);
        Ok(())
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
            if i.di_format == ForkFormat::Btree || i.di_format as u8 == FMT_BTREE {
                return Err(Error::unsupported(format!(
                    "XFS inode {ino}: adding blocks to a B+tree data fork is not supported yet"
                )));
            }
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
                if i.di_format == ForkFormat::Btree {
                    return Err(Error::unsupported(format!(
                        "XFS inode {ino}: shrinking a file with a B+tree data fork is not supported yet"
                    )));
                }
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
        if i.di_format == ForkFormat::Btree {
            return Err(Error::unsupported(format!(
                "XFS inode {}: freeing a B+tree data fork is not supported yet",
                i.ino
            )));
        }
        let ex = self.file_extents(i)?;
        let mut n = 0;
        for e in ex {
            self.free_blocks(e.startblock, e.blockcount as u32);
            n += e.blockcount;
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
