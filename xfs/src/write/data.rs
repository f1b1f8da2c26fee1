//! File data: writes (in place over blocks the file owns, into new blocks for holes and
//! growth), truncation, and the extent list in the inode's data fork.
//!
//! New blocks are written whole (zeros around the data) before the metadata that maps them;
//! bytes past the end of file in the last block are kept zero (on shrink and before growth),
//! as the kernel keeps them. The block map is an extent list in the inode while it fits and a
//! B+tree of any depth beyond (`btree.rs`), converted both ways as it grows and shrinks.
//! Unwritten extents are refused by name.

use vdisk_block::{Error, Result};
use vdisk_fs::{errno, errno_error};

use super::btree::{self, Geo, Shape, Source, Top};
use super::inode::{check_writable, put16, put32, put64, CORE, FMT_BTREE, FMT_EXTENTS};
use super::tx::Tx;
use crate::be64;
use crate::fork::{decode_extent, Extent, XFS_BMAP_CRC_MAGIC};
use crate::inode::{ForkFormat, Inode};

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

    /// The data fork extents of `i` (extent list or B+tree of any depth), as this
    /// transaction has them.
    pub fn file_extents(&mut self, i: &Inode) -> Result<Vec<Extent>> {
        match i.di_format {
            ForkFormat::Extents => {
                let n = i.di_nextents as usize;
                if n > i.data_fork.len() / 16 {
                    return Err(Error::corrupt(format!(
                        "XFS inode {}: {n} extents do not fit in the inode fork",
                        i.ino
                    )));
                }
                Ok((0..n)
                    .map(|k| decode_extent(&i.data_fork, k * 16))
                    .collect())
            }
            ForkFormat::Btree => {
                let shape = self.bmbt_shape(i)?;
                let ex: Vec<Extent> = shape
                    .records()
                    .iter()
                    .map(|r| decode_extent(r, 0))
                    .collect();
                let mut next = 0u64;
                for e in &ex {
                    if e.startoff < next || e.blockcount == 0 {
                        return Err(Error::corrupt(format!(
                            "XFS inode {}: extents overlap or are out of order at logical block {}",
                            i.ino, e.startoff
                        )));
                    }
                    next = e.startoff + e.blockcount;
                }
                Ok(ex)
            }
            _ => Ok(Vec::new()),
        }
    }

    fn bmbt_geo(&self, ino: u64) -> Geo {
        Geo {
            magic: XFS_BMAP_CRC_MAGIC,
            long: true,
            recsize: 16,
            keysize: 8,
            bs: self.fs.sb.sb_blocksize as usize,
            owner: ino,
            uuid: super::alloc::meta_uuid(self.fs),
            agno: 0,
            key_of: bmbt_key,
            what: format!("inode {ino} block map B+tree"),
        }
    }

    /// The block map B+tree of `i` (whose data fork is in B+tree form), read from the root
    /// in the inode down.
    fn bmbt_shape(&mut self, i: &Inode) -> Result<Shape> {
        let r = &i.data_fork;
        if r.len() < 20 {
            return Err(Error::corrupt(format!(
                "XFS inode {}: a B+tree data fork of {} bytes",
                i.ino,
                r.len()
            )));
        }
        let level = usize::from(u16::from_be_bytes([r[0], r[1]]));
        let n = usize::from(u16::from_be_bytes([r[2], r[3]]));
        let rootmax = (r.len() - 4) / 16;
        if level == 0 || level > 9 || n == 0 || n > rootmax {
            return Err(Error::corrupt(format!(
                "XFS inode {}: bmbt root of level {level} has {n} records",
                i.ino
            )));
        }
        let ptrs: Vec<u64> = (0..n).map(|k| be64(r, 4 + rootmax * 8 + k * 8)).collect();
        let g = self.bmbt_geo(i.ino);
        btree::walk(self, &g, &ptrs, level - 1)
    }

    /// Stores `ex` as inode `ino`'s block map: an extent list in the inode while it fits,
    /// else a B+tree of whatever depth it needs under a root in the inode (only the blocks
    /// whose contents change are rewritten; blocks allocated or freed as needed and counted
    /// in `di_nblocks`).
    pub fn put_extents(&mut self, ino: u64, ex: &[Extent]) -> Result<()> {
        let i = self.inode(ino)?;
        let room = self.data_fork_room(&i);
        let old = if i.di_format == ForkFormat::Btree {
            self.bmbt_shape(&i)?
        } else {
            Shape::default()
        };
        if ex.len() * 16 <= room {
            let blocks = old.blocks();
            let g = self.bmbt_geo(ino);
            for &p in &blocks {
                let off = g.byte_of(self, p)?;
                self.drop_buf(off);
                self.free_blocks(p, 1);
            }
            self.add_nblocks(ino, -(blocks.len() as i64))?;
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
        if room < 20 {
            return Err(Error::unsupported(format!(
                "XFS inode {ino}: a data fork of {room} bytes cannot hold a B+tree root"
            )));
        }
        let rootmax = (room - 4) / 16;
        let g = self.bmbt_geo(ino);
        let recs: Vec<Vec<u8>> = ex.iter().map(|e| encode_extent(e).to_vec()).collect();
        let mut src = BmSrc {
            near: ex.first().map(|e| e.startblock),
            allocs: 0,
            frees: 0,
        };
        let out = btree::relayout(self, &g, &old, recs, Top::Inode(rootmax), &mut src, true)?;
        self.add_nblocks(ino, src.allocs - src.frees)?;
        let b = self.inode_mut(ino)?;
        b[5] = FMT_BTREE;
        let area = &mut b[CORE..CORE + room];
        area.fill(0);
        put16(area, 0, out.height as u16);
        put16(area, 2, out.top.len() as u16);
        for (k, e) in out.top.iter().enumerate() {
            area[4 + k * 8..12 + k * 8].copy_from_slice(&e[..8]);
            area[4 + rootmax * 8 + k * 8..12 + rootmax * 8 + k * 8].copy_from_slice(&e[8..16]);
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
            let g = self.bmbt_geo(i.ino);
            for p in self.bmbt_shape(i)?.blocks() {
                let off = g.byte_of(self, p)?;
                self.drop_buf(off);
                self.free_blocks(p, 1);
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Where a block map B+tree's blocks come from: near the file's data.
struct BmSrc {
    near: Option<u64>,
    allocs: i64,
    frees: i64,
}

impl Source for BmSrc {
    fn alloc(&mut self, tx: &mut Tx<'_>) -> Result<u64> {
        let (fsb, _) = tx.alloc_blocks(1, self.near, 1)?;
        self.near = Some(fsb);
        self.allocs += 1;
        Ok(fsb)
    }
    fn free(&mut self, tx: &mut Tx<'_>, ptr: u64) -> Result<()> {
        tx.free_blocks(ptr, 1);
        self.frees += 1;
        Ok(())
    }
}

/// The key of a bmbt record: its first logical block.
fn bmbt_key(r: &[u8]) -> Vec<u8> {
    ((be64(r, 0) & ((1u64 << 63) - 1)) >> 9)
        .to_be_bytes()
        .to_vec()
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
