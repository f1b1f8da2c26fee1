//! Space and inodes: the AG free-space B+trees (bnobt by block, cntbt by length, kept exact
//! complements of used space), the inode B+trees (inobt, and finobt when the filesystem has
//! one), the AGF/AGI counters and the superblock's.
//!
//! A transaction loads an AG's records on first use (free extents by block, inode chunk
//! records), changes them in memory, and [`Tx::finish`] writes them back as B+trees of any
//! depth (`btree.rs`: blocks split, merged, roots grown and shrunk). The inode trees take their
//! blocks from free space; the free-space trees take theirs from the AGFL, which is refilled
//! from free space or drained back into it to the kernel's minimum for the new heights
//! ([`min_freelist`]). Free-space and AGFL blocks are both counted free in the superblock
//! (as the kernel counts them), tree blocks past the roots in `agf_btreeblks`.

use vdisk_block::{Error, Result};

use super::btree::{self, Dry, Geo, Shape, Source, Top};
use super::inode::{put16, put32, put64, CORE, FMT_EXTENTS, NULLAGINO};
use super::tx::{set_crc, Kind, Tx};
use super::{RO_COMPAT_FINOBT, RO_COMPAT_INOBTCNT};
use crate::superblock::XFS_SB_FEAT_INCOMPAT_SPINODES;
use crate::{be16, be32, be64, Xfs};

/// "AB3B": v5 bnobt blocks.
pub const XFS_ABTB_CRC_MAGIC: u32 = 0x4142_3342;
/// "AB3C": v5 cntbt blocks.
pub const XFS_ABTC_CRC_MAGIC: u32 = 0x4142_3343;
/// "IAB3": v5 inobt blocks.
pub const XFS_IBT_CRC_MAGIC: u32 = 0x4941_4233;
/// "FIB3": v5 finobt blocks.
pub const XFS_FIBT_CRC_MAGIC: u32 = 0x4649_4233;
/// "R3FC": v5 refcount B+tree blocks.
pub const XFS_REFC_CRC_MAGIC: u32 = 0x5233_4643;
/// Size of a v5 short-form B+tree block header.
pub const SBLOCK_HDR: usize = 56;
/// Inodes per chunk.
pub const XFS_INODES_PER_CHUNK: u32 = 64;

/// Byte offset of AG `agno`'s block `agbno`.
pub fn agb_byte(fs: &Xfs, agno: u32, agbno: u32) -> u64 {
    (u64::from(agno) * u64::from(fs.sb.sb_agblocks) + u64::from(agbno))
        * u64::from(fs.sb.sb_blocksize)
}

/// Byte offset of AG header sector `n` (1 AGF, 2 AGI, 3 AGFL).
fn ag_hdr(fs: &Xfs, agno: u32, n: u64) -> u64 {
    agb_byte(fs, agno, 0) + n * u64::from(fs.sb.sb_sectsize)
}

/// Splits a filesystem block number into (agno, agbno).
pub fn fsb_split(fs: &Xfs, fsb: u64) -> (u32, u32) {
    (
        (fsb >> fs.sb.sb_agblklog) as u32,
        (fsb & ((1u64 << fs.sb.sb_agblklog) - 1)) as u32,
    )
}

/// Joins (agno, agbno) into a filesystem block number.
pub fn fsb_join(fs: &Xfs, agno: u32, agbno: u32) -> u64 {
    (u64::from(agno) << fs.sb.sb_agblklog) | u64::from(agbno)
}

/// True when AG `agno`'s refcount B+tree holds no record (no shared extent, no CoW staging).
pub fn refcount_empty(fs: &Xfs, agno: u32) -> Result<bool> {
    let mut agf = vec![0u8; usize::from(fs.sb.sb_sectsize)];
    fs.read_bytes(&mut agf, ag_hdr(fs, agno, 1))?;
    let root = be32(&agf, 88);
    let level = be32(&agf, 92);
    if level != 1 {
        return Ok(false);
    }
    let b = fs.read_bytes_vec(agb_byte(fs, agno, root), fs.sb.sb_blocksize as usize)?;
    Ok(be32(&b, 0) == XFS_REFC_CRC_MAGIC && be16(&b, 6) == 0)
}

impl Xfs {
    pub(crate) fn read_bytes_vec(&self, off: u64, len: usize) -> Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        self.read_bytes(&mut b, off)?;
        Ok(b)
    }
}

/// One of the AG B+trees edited here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tree {
    Bno,
    Cnt,
    Ino,
    Fino,
}

impl Tree {
    fn name(self) -> &'static str {
        match self {
            Tree::Bno => "free-space (by block)",
            Tree::Cnt => "free-space (by size)",
            Tree::Ino => "inode",
            Tree::Fino => "free-inode",
        }
    }
    fn magic(self) -> u32 {
        match self {
            Tree::Bno => XFS_ABTB_CRC_MAGIC,
            Tree::Cnt => XFS_ABTC_CRC_MAGIC,
            Tree::Ino => XFS_IBT_CRC_MAGIC,
            Tree::Fino => XFS_FIBT_CRC_MAGIC,
        }
    }
    fn recsize(self) -> usize {
        match self {
            Tree::Bno | Tree::Cnt => 8,
            Tree::Ino | Tree::Fino => 16,
        }
    }
    /// (header sector, root offset, level offset) in the AGF or AGI.
    fn root_at(self) -> (u64, usize, usize) {
        match self {
            Tree::Bno => (1, 16, 28),
            Tree::Cnt => (1, 20, 32),
            Tree::Ino => (2, 20, 24),
            Tree::Fino => (2, 328, 332),
        }
    }
}

/// A free extent: (agbno, length).
type Free = (u32, u32);

/// An inobt record (`xfs_inobt_rec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InoRec {
    /// `ir_startino`.
    pub startino: u32,
    /// `ir_holemask` (sparse inode filesystems; 0 otherwise).
    pub holemask: u16,
    /// `ir_count`.
    pub count: u8,
    /// `ir_freecount`.
    pub freecount: u32,
    /// `ir_free`: bit i set when inode startino + i is free (holes count as free).
    pub free: u64,
}

/// Blocks an AG keeps back from ordinary allocations so that its AGFL can always be refilled
/// (the kernel withholds `XFS_ALLOCBT_AGFL_RESERVE` plus 4 for a block map split per AG).
const AG_RESERVE: u64 = 8;

/// One AG's records as this transaction has them, loaded on first use and written back (as
/// B+trees of whatever shape they need) by [`Tx::finish`].
#[derive(Debug, Default)]
pub struct AgMem {
    free: Option<Vec<Free>>,
    free_dirty: bool,
    ino: Option<Vec<InoRec>>,
    ino_dirty: bool,
    fino: Option<Vec<InoRec>>,
    fino_dirty: bool,
}

/// The AGFL as the block source of the free-space trees (as the kernel's
/// `xfs_allocbt_alloc_block` and `xfs_allocbt_free_block` use it).
struct AgflSrc {
    pool: Vec<u32>,
    freed: Vec<u32>,
}

impl Source for AgflSrc {
    fn alloc(&mut self, _tx: &mut Tx<'_>) -> Result<u64> {
        self.pool
            .pop()
            .map(u64::from)
            .ok_or_else(|| Error::invalid("XFS: the AGFL ran out under a free-space B+tree"))
    }
    fn free(&mut self, _tx: &mut Tx<'_>, ptr: u64) -> Result<()> {
        self.freed.push(ptr as u32);
        Ok(())
    }
}

/// The AG's free space as the block source of the inode B+trees.
struct AgSrc {
    agno: u32,
    hint: u32,
}

impl Source for AgSrc {
    fn alloc(&mut self, tx: &mut Tx<'_>) -> Result<u64> {
        match tx.alloc_in_ag(self.agno, 1, Some(self.hint), 1, false, 0)? {
            Some((b, _)) => Ok(u64::from(b)),
            None => Err(vdisk_fs::errno_error(
                "XFS inode B+tree block",
                vdisk_fs::errno::ENOSPC,
            )),
        }
    }
    fn free(&mut self, tx: &mut Tx<'_>, ptr: u64) -> Result<()> {
        let fsb = fsb_join(tx.fs, self.agno, ptr as u32);
        tx.free_blocks(fsb, 1);
        Ok(())
    }
}

fn enc_free(&(s, c): &Free) -> Vec<u8> {
    let mut r = vec![0u8; 8];
    put32(&mut r, 0, s);
    put32(&mut r, 4, c);
    r
}

fn key_whole(r: &[u8]) -> Vec<u8> {
    r.to_vec()
}

fn key_ino(r: &[u8]) -> Vec<u8> {
    r[..4].to_vec()
}

/// The kernel's `xfs_alloc_min_freelist` (current kernels): for each free-space tree, room
/// for a split of every level plus a new root, and for the splits of the AGFL refill itself:
/// `2 * min(height + 1, maxlevels) - 2`.
pub fn min_freelist(bno_height: usize, cnt_height: usize, maxlevels: u32) -> usize {
    let one = |h: usize| (h as u32 + 1).min(maxlevels) as usize * 2 - 2;
    one(bno_height) + one(cnt_height)
}

impl Tx<'_> {
    fn hdr_buf(&mut self, agno: u32, n: u64) -> Result<&mut Vec<u8>> {
        let kind = match n {
            1 => Kind::Agf,
            2 => Kind::Agi,
            _ => Kind::Agfl,
        };
        let off = ag_hdr(self.fs, agno, n);
        let len = usize::from(self.fs.sb.sb_sectsize);
        self.buf(off, len, kind)
    }

    /// The AGF of `agno` (validated on first read).
    fn agf(&mut self, agno: u32) -> Result<&mut Vec<u8>> {
        let b = self.hdr_buf(agno, 1)?;
        if be32(b, 0) != 0x5841_4746 || be32(b, 8) != agno {
            return Err(Error::corrupt(format!(
                "XFS AGF {agno}: bad magic or number"
            )));
        }
        Ok(b)
    }

    fn agi(&mut self, agno: u32) -> Result<&mut Vec<u8>> {
        let b = self.hdr_buf(agno, 2)?;
        if be32(b, 0) != 0x5841_4749 || be32(b, 8) != agno {
            return Err(Error::corrupt(format!(
                "XFS AGI {agno}: bad magic or number"
            )));
        }
        Ok(b)
    }

    fn geo(&self, agno: u32, t: Tree) -> Geo {
        let rs = t.recsize();
        Geo {
            magic: t.magic(),
            long: false,
            recsize: rs,
            keysize: if rs == 16 { 4 } else { 8 },
            bs: self.fs.sb.sb_blocksize as usize,
            owner: u64::from(agno),
            uuid: meta_uuid(self.fs),
            agno,
            key_of: if rs == 16 { key_ino } else { key_whole },
            what: format!("AG {agno} {} B+tree", t.name()),
        }
    }

    /// Tree `t` of `agno` as it stands (any depth).
    fn read_tree(&mut self, agno: u32, t: Tree) -> Result<Shape> {
        let (n, ro, lo) = t.root_at();
        let h = if n == 1 {
            self.agf(agno)?
        } else {
            self.agi(agno)?
        };
        let root = be32(h, ro);
        let levels = be32(h, lo);
        if levels == 0 || levels > 9 {
            return Err(Error::corrupt(format!(
                "XFS AG {agno}: {} B+tree has {levels} levels",
                t.name()
            )));
        }
        let g = self.geo(agno, t);
        btree::walk(self, &g, &[u64::from(root)], levels as usize - 1)
    }

    /// The blocks of AG `agno` (the last AG may be short).
    fn ag_len(&mut self, agno: u32) -> Result<u32> {
        let len = be32(self.agf(agno)?, 12);
        if len == 0 || len > self.fs.sb.sb_agblocks {
            return Err(Error::corrupt(format!("XFS AGF {agno}: length {len}")));
        }
        Ok(len)
    }

    fn mem(&mut self, agno: u32) -> &mut AgMem {
        self.ags.entry(agno).or_default()
    }

    /// The free extents of `agno`, by block, taken out of the transaction's state (put back
    /// with [`Tx::put_frees`]).
    fn take_frees(&mut self, agno: u32) -> Result<Vec<Free>> {
        if let Some(v) = self.mem(agno).free.take() {
            return Ok(v);
        }
        let agblocks = self.ag_len(agno)?;
        let bno = self.read_tree(agno, Tree::Bno)?.records();
        let cnt = self.read_tree(agno, Tree::Cnt)?.records();
        let mut v: Vec<Free> = Vec::with_capacity(bno.len());
        let mut next = 0u32;
        for r in &bno {
            let (s, c) = (be32(r, 0), be32(r, 4));
            let end = s.checked_add(c).filter(|&e| e <= agblocks && c > 0);
            match end {
                Some(e) if s >= next => {
                    v.push((s, c));
                    next = e;
                }
                _ => {
                    return Err(Error::corrupt(format!(
                        "XFS AG {agno}: free-space record {s}+{c} overlaps, is out of order or past the AG"
                    )))
                }
            }
        }
        let by_cnt: Vec<Vec<u8>> = {
            let mut c = v.clone();
            c.sort_by_key(|&(s, c)| (c, s));
            c.iter().map(enc_free).collect()
        };
        if by_cnt != cnt {
            return Err(Error::corrupt(format!(
                "XFS AG {agno}: the free-space B+trees by block and by size disagree"
            )));
        }
        Ok(v)
    }

    fn put_frees(&mut self, agno: u32, v: Vec<Free>, dirty: bool) {
        let m = self.mem(agno);
        m.free = Some(v);
        m.free_dirty |= dirty;
    }

    fn inos_of(&mut self, agno: u32, t: Tree) -> Result<&mut Vec<InoRec>> {
        let loaded = match t {
            Tree::Fino => self.mem(agno).fino.is_some(),
            _ => self.mem(agno).ino.is_some(),
        };
        if !loaded {
            let recs = self.read_tree(agno, t)?.records();
            let mut v: Vec<InoRec> = Vec::with_capacity(recs.len());
            for r in &recs {
                let rec = self.decode_irec(r);
                if v.last().is_some_and(|p| p.startino + 64 > rec.startino) {
                    return Err(Error::corrupt(format!(
                        "XFS AG {agno}: {} B+tree record {} overlaps or is out of order",
                        t.name(),
                        rec.startino
                    )));
                }
                v.push(rec);
            }
            let m = self.mem(agno);
            match t {
                Tree::Fino => m.fino = Some(v),
                _ => m.ino = Some(v),
            }
        }
        let m = self.mem(agno);
        let v = match t {
            Tree::Fino => {
                m.fino_dirty = true;
                m.fino.as_mut()
            }
            _ => {
                m.ino_dirty = true;
                m.ino.as_mut()
            }
        };
        v.ok_or_else(|| Error::invalid("XFS: inode records not loaded"))
    }

    /// Allocates up to `want` contiguous blocks (at least 1), preferring `near` (a filesystem
    /// block: the block right after it, then its AG); `align` > 1 asks for a start aligned to
    /// it and exactly `want` blocks. Returns (first filesystem block, count).
    pub fn alloc_blocks(&mut self, want: u32, near: Option<u64>, align: u32) -> Result<(u64, u32)> {
        self.alloc_some(want, near, align, false)
    }

    /// Allocates exactly `want` contiguous blocks, preferring `near`; returns the first.
    pub fn alloc_exact(&mut self, want: u32, near: Option<u64>) -> Result<u64> {
        Ok(self.alloc_some(want, near, 1, true)?.0)
    }

    fn alloc_some(
        &mut self,
        want: u32,
        near: Option<u64>,
        align: u32,
        exact: bool,
    ) -> Result<(u64, u32)> {
        let agcount = self.fs.sb.sb_agcount;
        let (near_ag, near_bno) = near.map_or((0, None), |f| {
            let (a, b) = fsb_split(self.fs, f);
            (a, Some(b))
        });
        for k in 0..agcount {
            let agno = (near_ag + k) % agcount;
            let hint = if k == 0 { near_bno } else { None };
            if let Some((start, len)) =
                self.alloc_in_ag(agno, want, hint, align, exact, AG_RESERVE)?
            {
                return Ok((fsb_join(self.fs, agno, start), len));
            }
        }
        Err(vdisk_fs::errno_error("alloc", vdisk_fs::errno::ENOSPC))
    }

    /// Allocates in AG `agno` only, leaving at least `reserve` blocks free: (agbno, count), or
    /// None when it has no room.
    fn alloc_in_ag(
        &mut self,
        agno: u32,
        want: u32,
        near_bno: Option<u32>,
        align: u32,
        exact: bool,
        reserve: u64,
    ) -> Result<Option<(u32, u32)>> {
        let exact = exact || align > 1;
        let mut frees = self.take_frees(agno)?;
        let total: u64 = frees.iter().map(|&(_, c)| u64::from(c)).sum();
        let room = total.saturating_sub(reserve);
        let pick = pick_extent(&frees, want, near_bno, align, exact).and_then(|(i, s, l)| {
            if u64::from(l) <= room {
                Some((i, s, l))
            } else if !exact && room > 0 {
                Some((i, s, room as u32))
            } else {
                None
            }
        });
        let Some((idx, start, len)) = pick else {
            self.put_frees(agno, frees, false);
            return Ok(None);
        };
        carve(&mut frees, idx, start, len);
        self.put_frees(agno, frees, true);
        self.fdblocks_delta -= i64::from(len);
        Ok(Some((start, len)))
    }

    /// Frees `len` blocks from filesystem block `fsb` when the transaction finishes (so no
    /// block freed here is reused by the same transaction).
    pub fn free_blocks(&mut self, fsb: u64, len: u32) {
        self.frees.push((fsb, len));
    }

    /// Puts blocks `bno..bno+len` of `agno` back into its free extents.
    fn give_back(&mut self, agno: u32, bno: u32, len: u32) -> Result<()> {
        let agblocks = self.ag_len(agno)?;
        let mut frees = self.take_frees(agno)?;
        let end = bno
            .checked_add(len)
            .filter(|&e| e <= agblocks && len > 0)
            .ok_or_else(|| Error::corrupt(format!("XFS: freeing blocks past AG {agno}")))?;
        let pos = frees.partition_point(|&(s, _)| s < bno);
        if pos > 0 && frees[pos - 1].0 + frees[pos - 1].1 > bno
            || pos < frees.len() && frees[pos].0 < end
        {
            self.put_frees(agno, frees, false);
            return Err(Error::corrupt(format!(
                "XFS AG {agno}: blocks {bno}+{len} freed twice (already in the free-space tree)"
            )));
        }
        let mut new = (bno, len);
        let mut lo = pos;
        let mut hi = pos;
        if pos > 0 && frees[pos - 1].0 + frees[pos - 1].1 == bno {
            new = (frees[pos - 1].0, frees[pos - 1].1 + len);
            lo = pos - 1;
        }
        if pos < frees.len() && frees[pos].0 == end {
            new.1 += frees[pos].1;
            hi = pos + 1;
        }
        frees.splice(lo..hi, [new]);
        self.put_frees(agno, frees, true);
        Ok(())
    }

    fn free_now(&mut self, fsb: u64, len: u32) -> Result<()> {
        let (agno, bno) = fsb_split(self.fs, fsb);
        if agno >= self.fs.sb.sb_agcount {
            return Err(Error::corrupt(format!(
                "XFS: freeing block {fsb:#x} past the last AG"
            )));
        }
        self.give_back(agno, bno, len)?;
        self.fdblocks_delta += i64::from(len);
        Ok(())
    }

    /// Takes `n` blocks of `agno` out of its free extents for the AGFL (from the smallest
    /// extent that holds them all, else the largest, as the kernel's refill does).
    fn take_for_agfl(&mut self, agno: u32, mut n: usize) -> Result<Vec<u32>> {
        let mut frees = self.take_frees(agno)?;
        let mut got = Vec::new();
        while n > 0 {
            let pick = frees
                .iter()
                .enumerate()
                .filter(|(_, &(_, c))| c as usize >= n)
                .min_by_key(|(_, &(s, c))| (c, s))
                .or_else(|| frees.iter().enumerate().max_by_key(|(_, &(s, c))| (c, s)))
                .map(|(i, &(s, c))| (i, s, c));
            let Some((i, s, c)) = pick else {
                self.put_frees(agno, frees, true);
                return Err(vdisk_fs::errno_error(
                    "XFS AGFL refill",
                    vdisk_fs::errno::ENOSPC,
                ));
            };
            let k = (c as usize).min(n) as u32;
            carve(&mut frees, i, s, k);
            got.extend(s..s + k);
            n -= k as usize;
        }
        self.put_frees(agno, frees, true);
        Ok(got)
    }

    /// The AGFL of `agno`, first to last.
    fn read_agfl(&mut self, agno: u32) -> Result<Vec<u32>> {
        let size = agfl_size(self.fs);
        let agblocks = self.ag_len(agno)?;
        let agf = self.agf(agno)?;
        let (first, last, count) = (be32(agf, 40), be32(agf, 44), be32(agf, 48));
        let _ = last;
        if first as usize >= size || count as usize > size {
            return Err(Error::corrupt(format!(
                "XFS AGF {agno}: free list {first}/{last}/{count} does not fit an AGFL of {size}"
            )));
        }
        let b = self.hdr_buf(agno, 3)?;
        if be32(b, 0) != 0x5841_464c || be32(b, 4) != agno {
            return Err(Error::corrupt(format!(
                "XFS AGFL {agno}: bad magic or number"
            )));
        }
        let mut v = Vec::with_capacity(count as usize);
        for k in 0..count as usize {
            let slot = (first as usize + k) % size;
            let bno = be32(b, 36 + 4 * slot);
            if bno == 0 || bno >= agblocks {
                return Err(Error::corrupt(format!(
                    "XFS AGFL {agno}: entry {bno} is outside the AG"
                )));
            }
            v.push(bno);
        }
        Ok(v)
    }

    /// Writes `list` as the AGFL of `agno`, from slot 0 (as mkfs and the kernel's reset lay
    /// it out), and its first/last/count in the AGF.
    fn write_agfl(&mut self, agno: u32, list: &[u32]) -> Result<()> {
        let size = agfl_size(self.fs);
        if list.len() > size {
            return Err(Error::unsupported(format!(
                "XFS AG {agno}: {} blocks do not fit the AGFL ({size})",
                list.len()
            )));
        }
        let b = self.hdr_buf(agno, 3)?;
        for k in 0..size {
            put32(b, 36 + 4 * k, list.get(k).copied().unwrap_or(u32::MAX));
        }
        let agf = self.agf(agno)?;
        put32(agf, 40, 0);
        put32(
            agf,
            44,
            if list.is_empty() {
                size as u32 - 1
            } else {
                list.len() as u32 - 1
            },
        );
        put32(agf, 48, list.len() as u32);
        Ok(())
    }

    fn alloc_maxlevels(&self) -> u32 {
        let g = self.geo(0, Tree::Bno);
        btree::max_levels(
            g.leaf_max() / 2,
            g.node_max() / 2,
            u64::from(self.fs.sb.sb_agblocks).div_ceil(2),
        )
    }

    /// Writes the inode B+tree `t` of `agno` from the transaction's records.
    fn flush_ino(&mut self, agno: u32, t: Tree) -> Result<()> {
        let recs: Vec<Vec<u8>> = {
            let v = self.inos_of(agno, t)?.clone();
            v.iter().map(|r| self.encode_irec(r)).collect()
        };
        let m = self.mem(agno);
        match t {
            Tree::Fino => m.fino_dirty = false,
            _ => m.ino_dirty = false,
        }
        let shape = self.read_tree(agno, t)?;
        let g = self.geo(agno, t);
        let hint = shape
            .levels
            .last()
            .and_then(|l| l.first())
            .map_or(0, |(p, _)| *p as u32);
        let mut src = AgSrc { agno, hint };
        let out = btree::relayout(self, &g, &shape, recs, Top::Block, &mut src, true)?;
        let (_, ro, lo) = t.root_at();
        let inobtcnt = self.fs.sb.sb_features_ro_compat & RO_COMPAT_INOBTCNT != 0;
        let agi = self.agi(agno)?;
        put32(agi, ro, out.root as u32);
        put32(agi, lo, out.height as u32);
        if inobtcnt {
            put32(
                agi,
                if t == Tree::Fino { 340 } else { 336 },
                out.blocks as u32,
            );
        }
        Ok(())
    }

    /// Writes both free-space trees of `agno` from the transaction's free extents, with the
    /// AGFL refilled or drained to the kernel's minimum for the trees' new heights, and the
    /// AGF's counters.
    fn flush_free(&mut self, agno: u32) -> Result<()> {
        let mut agfl = self.read_agfl(agno)?;
        let bno_shape = self.read_tree(agno, Tree::Bno)?;
        let cnt_shape = self.read_tree(agno, Tree::Cnt)?;
        let gb = self.geo(agno, Tree::Bno);
        let gc = self.geo(agno, Tree::Cnt);
        let maxlev = self.alloc_maxlevels();
        let size = agfl_size(self.fs);
        let recs = |v: &[Free]| -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
            let b = v.iter().map(enc_free).collect();
            let mut c = v.to_vec();
            c.sort_by_key(|&(s, c)| (c, s));
            (b, c.iter().map(enc_free).collect())
        };
        let mut settled = false;
        for iter in 0..48 {
            let frees = self.take_frees(agno)?;
            let (rb, rc) = recs(&frees);
            self.put_frees(agno, frees, false);
            let mut d1 = Dry::default();
            let o1 = btree::relayout(self, &gb, &bno_shape, rb, Top::Block, &mut d1, false)?;
            let mut d2 = Dry::default();
            let o2 = btree::relayout(self, &gc, &cnt_shape, rc, Top::Block, &mut d2, false)?;
            let allocs = d1.allocs + d2.allocs;
            let after = (agfl.len() + d1.frees + d2.frees) as i64 - allocs as i64;
            let minfl = min_freelist(o1.height, o2.height, maxlev) as i64;
            let short = (allocs as i64 - agfl.len() as i64).max(minfl - after);
            if short > 0 {
                let got = self.take_for_agfl(agno, short as usize)?;
                // Refilled at the front: the trees take blocks from the back.
                agfl.splice(0..0, got);
                continue;
            }
            let drainable = agfl.len() - allocs;
            let over_cap = after - size as i64;
            let surplus = if iter < 32 { after - minfl } else { over_cap };
            if surplus > 0 && drainable > 0 {
                let n = (surplus as usize).min(drainable);
                for b in agfl.drain(..n).collect::<Vec<_>>() {
                    self.give_back(agno, b, 1)?;
                }
                continue;
            }
            settled = over_cap <= 0;
            break;
        }
        if !settled {
            return Err(Error::unsupported(format!(
                "XFS AG {agno}: the free list and free-space B+trees did not settle"
            )));
        }
        let frees = self.take_frees(agno)?;
        let (rb, rc) = recs(&frees);
        let total: u64 = frees.iter().map(|&(_, c)| u64::from(c)).sum();
        let longest = frees.iter().map(|&(_, c)| c).max().unwrap_or(0);
        self.put_frees(agno, frees, false);
        self.mem(agno).free_dirty = false;
        let mut src = AgflSrc {
            pool: agfl,
            freed: Vec::new(),
        };
        let o1 = btree::relayout(self, &gb, &bno_shape, rb, Top::Block, &mut src, true)?;
        let o2 = btree::relayout(self, &gc, &cnt_shape, rc, Top::Block, &mut src, true)?;
        let mut agfl = src.pool;
        agfl.extend(src.freed);
        self.write_agfl(agno, &agfl)?;
        let agf = self.agf(agno)?;
        put32(agf, 16, o1.root as u32);
        put32(agf, 20, o2.root as u32);
        put32(agf, 28, o1.height as u32);
        put32(agf, 32, o2.height as u32);
        put32(agf, 52, total as u32);
        put32(agf, 56, longest);
        put32(agf, 60, (o1.blocks - 1 + o2.blocks - 1) as u32);
        Ok(())
    }

    /// Applies deferred frees, writes every tree the transaction changed and the superblock
    /// counters; returns the new (icount, ifree, fdblocks) when they changed.
    pub fn finish(&mut self) -> Result<Option<(u64, u64, u64)>> {
        for _ in 0..64 {
            for (fsb, len) in std::mem::take(&mut self.frees) {
                self.free_now(fsb, len)?;
            }
            let dirty: Vec<(u32, Tree)> = self
                .ags
                .iter()
                .flat_map(|(&a, m)| {
                    let mut v = Vec::new();
                    if m.ino_dirty {
                        v.push((a, Tree::Ino));
                    }
                    if m.fino_dirty {
                        v.push((a, Tree::Fino));
                    }
                    v
                })
                .collect();
            if dirty.is_empty() && self.frees.is_empty() {
                break;
            }
            for (a, t) in dirty {
                self.flush_ino(a, t)?;
            }
        }
        if !self.frees.is_empty() {
            return Err(Error::invalid("XFS: inode B+tree blocks did not settle"));
        }
        let dirty: Vec<u32> = self
            .ags
            .iter()
            .filter(|(_, m)| m.free_dirty)
            .map(|(&a, _)| a)
            .collect();
        for a in dirty {
            self.flush_free(a)?;
        }
        if self.fdblocks_delta == 0 && self.icount_delta == 0 && self.ifree_delta == 0 {
            return Ok(None);
        }
        let len = usize::from(self.fs.sb.sb_sectsize);
        let (dfd, dic, dif) = (self.fdblocks_delta, self.icount_delta, self.ifree_delta);
        let sb = self.buf(0, len, Kind::Sb)?;
        let add = |v: u64, d: i64| {
            v.checked_add_signed(d)
                .ok_or_else(|| Error::corrupt("XFS superblock counter underflows"))
        };
        let icount = add(be64(sb, 128), dic)?;
        let ifree = add(be64(sb, 136), dif)?;
        let fdblocks = add(be64(sb, 144), dfd)?;
        put64(sb, 128, icount);
        put64(sb, 136, ifree);
        put64(sb, 144, fdblocks);
        Ok(Some((icount, ifree, fdblocks)))
    }

    fn sparse(&self) -> bool {
        self.fs.sb.sb_features_incompat & XFS_SB_FEAT_INCOMPAT_SPINODES != 0
    }

    fn finobt(&self) -> bool {
        self.fs.sb.sb_features_ro_compat & RO_COMPAT_FINOBT != 0
    }

    fn decode_irec(&self, r: &[u8]) -> InoRec {
        if self.sparse() {
            InoRec {
                startino: be32(r, 0),
                holemask: be16(r, 4),
                count: r[6],
                freecount: u32::from(r[7]),
                free: be64(r, 8),
            }
        } else {
            InoRec {
                startino: be32(r, 0),
                holemask: 0,
                count: 64,
                freecount: be32(r, 4),
                free: be64(r, 8),
            }
        }
    }

    fn encode_irec(&self, i: &InoRec) -> Vec<u8> {
        let mut r = vec![0u8; 16];
        put32(&mut r, 0, i.startino);
        if self.sparse() {
            put16(&mut r, 4, i.holemask);
            r[6] = i.count;
            r[7] = i.freecount as u8;
        } else {
            put32(&mut r, 4, i.freecount);
        }
        put64(&mut r, 8, i.free);
        r
    }

    /// Sets (or, with `remove`, deletes) the record for `rec.startino` in tree `t`.
    fn put_irec(&mut self, agno: u32, t: Tree, rec: &InoRec, remove: bool) -> Result<()> {
        let v = self.inos_of(agno, t)?;
        let pos = v.partition_point(|r| r.startino < rec.startino);
        let exists = pos < v.len() && v[pos].startino == rec.startino;
        match (exists, remove) {
            (true, true) => {
                v.remove(pos);
            }
            (true, false) => v[pos] = *rec,
            (false, false) => v.insert(pos, *rec),
            (false, true) => {}
        }
        Ok(())
    }

    /// Allocates an inode, preferring AG `near_ag`; returns its number. The inode's bytes are
    /// left as they were (free inodes are initialised: see [`Tx::init_inode`]).
    pub fn alloc_inode(&mut self, near_ag: u32) -> Result<u64> {
        let agcount = self.fs.sb.sb_agcount;
        for pass in 0..2 {
            for k in 0..agcount {
                let agno = (near_ag + k) % agcount;
                let agi = self.agi(agno)?;
                let freecount = be32(agi, 28);
                if pass == 0 && freecount == 0 {
                    continue;
                }
                if pass == 1 && !self.new_chunk(agno)? {
                    continue;
                }
                let recs = self.inos_of(agno, Tree::Ino)?;
                let Some(mut rec) = recs.iter().find(|r| r.freecount > 0).copied() else {
                    if pass == 0 {
                        return Err(Error::corrupt(format!(
                            "XFS AGI {agno}: free count {freecount} but no inobt record has a free inode"
                        )));
                    }
                    continue;
                };
                let holes = hole_bits(rec.holemask);
                let avail = rec.free & !holes;
                if avail == 0 {
                    return Err(Error::corrupt(format!(
                        "XFS AG {agno}: inobt record {} counts free inodes but has none",
                        rec.startino
                    )));
                }
                let bit = avail.trailing_zeros();
                rec.free &= !(1u64 << bit);
                rec.freecount -= 1;
                self.put_irec(agno, Tree::Ino, &rec, false)?;
                if self.finobt() {
                    self.put_irec(agno, Tree::Fino, &rec, rec.freecount == 0)?;
                }
                let agi = self.agi(agno)?;
                let fc = be32(agi, 28);
                put32(agi, 28, fc.saturating_sub(1));
                self.ifree_delta -= 1;
                let agino = u64::from(rec.startino + bit);
                let bits = u32::from(self.fs.sb.sb_agblklog) + u32::from(self.fs.sb.sb_inopblog);
                return Ok((u64::from(agno) << bits) | agino);
            }
        }
        Err(vdisk_fs::errno_error("create", vdisk_fs::errno::ENOSPC))
    }

    /// Allocates a new chunk of 64 inodes in `agno` (false when it has no room).
    fn new_chunk(&mut self, agno: u32) -> Result<bool> {
        let sb = &self.fs.sb;
        let isz = u32::from(sb.sb_inodesize);
        let bs = sb.sb_blocksize;
        let blocks = (XFS_INODES_PER_CHUNK * isz).div_ceil(bs);
        let mut raw = vec![0u8; 512];
        self.fs.read_bytes(&mut raw, 0)?;
        let align = be32(&raw, 180).max(1);
        let Some((agbno, n)) = self.alloc_in_ag(agno, blocks, None, align, true, AG_RESERVE)?
        else {
            return Ok(false);
        };
        if n != blocks {
            return Err(Error::invalid("XFS inode chunk allocation went astray"));
        }
        let inopblog = self.fs.sb.sb_inopblog;
        let startino = agbno << inopblog;
        let bits = u32::from(self.fs.sb.sb_agblklog) + u32::from(inopblog);
        let gen = inode_gen();
        let uuid = meta_uuid(self.fs);
        for b in 0..blocks {
            let off = agb_byte(self.fs, agno, agbno + b);
            let buf = self.new_buf(off, bs as usize, Kind::Inodes);
            let per = (bs / isz) as usize;
            let mut ioffs = Vec::new();
            for k in 0..per {
                let agino = startino + b * (bs / isz) + k as u32;
                let ino = (u64::from(agno) << bits) | u64::from(agino);
                let io = k * isz as usize;
                init_free_inode(&mut buf[io..io + isz as usize], ino, &uuid, gen);
                ioffs.push(io);
            }
            for io in ioffs {
                self.inode_touched(off, io);
            }
        }
        let rec = InoRec {
            startino,
            holemask: 0,
            count: 64,
            freecount: 64,
            free: u64::MAX,
        };
        self.put_irec(agno, Tree::Ino, &rec, false)?;
        if self.finobt() {
            self.put_irec(agno, Tree::Fino, &rec, false)?;
        }
        let agi = self.agi(agno)?;
        let c = be32(agi, 16);
        put32(agi, 16, c + 64);
        let fc = be32(agi, 28);
        put32(agi, 28, fc + 64);
        put32(agi, 32, startino);
        self.icount_delta += 64;
        self.ifree_delta += 64;
        Ok(true)
    }

    /// Marks inode `ino` free in the inode B+trees and counts (its core already cleared).
    pub fn free_inode(&mut self, ino: u64) -> Result<()> {
        let bits = u32::from(self.fs.sb.sb_agblklog) + u32::from(self.fs.sb.sb_inopblog);
        let agno = (ino >> bits) as u32;
        let agino = (ino & ((1u64 << bits) - 1)) as u32;
        if agno >= self.fs.sb.sb_agcount {
            return Err(Error::corrupt(format!(
                "XFS: inode {ino} is past the last AG"
            )));
        }
        let recs = self.inos_of(agno, Tree::Ino)?;
        let pos = recs.partition_point(|r| r.startino <= agino);
        let mut rec = pos
            .checked_sub(1)
            .map(|p| recs[p])
            .filter(|r| agino < r.startino + 64)
            .ok_or_else(|| Error::corrupt(format!("XFS: inode {ino} is in no inobt record")))?;
        let bit = agino - rec.startino;
        if rec.free & (1u64 << bit) != 0 {
            return Err(Error::corrupt(format!("XFS: inode {ino} is already free")));
        }
        rec.free |= 1u64 << bit;
        rec.freecount += 1;
        self.put_irec(agno, Tree::Ino, &rec, false)?;
        if self.finobt() {
            self.put_irec(agno, Tree::Fino, &rec, false)?;
        }
        let agi = self.agi(agno)?;
        let fc = be32(agi, 28);
        put32(agi, 28, fc + 1);
        self.ifree_delta += 1;
        Ok(())
    }
}

/// Entries in an AGFL sector (v5: after its 36-byte header).
pub fn agfl_size(fs: &Xfs) -> usize {
    (usize::from(fs.sb.sb_sectsize) - 36) / 4
}

/// Removes `[start, start + len)` from free extent `idx` (which holds it).
fn carve(frees: &mut Vec<Free>, idx: usize, start: u32, len: u32) {
    let (s, c) = frees[idx];
    let mut repl = Vec::new();
    if start > s {
        repl.push((s, start - s));
    }
    if start + len < s + c {
        repl.push((start + len, s + c - start - len));
    }
    frees.splice(idx..=idx, repl);
}

/// The `ir_free` bits that are holes of a sparse chunk (each holemask bit covers 4 inodes).
fn hole_bits(holemask: u16) -> u64 {
    let mut m = 0u64;
    for i in 0..16 {
        if holemask & (1 << i) != 0 {
            m |= 0xf << (4 * i);
        }
    }
    m
}

/// Picks (index, start, len) from `frees` for an allocation of `want` blocks.
fn pick_extent(
    frees: &[Free],
    want: u32,
    near: Option<u32>,
    align: u32,
    exact: bool,
) -> Option<(usize, u32, u32)> {
    if align > 1 {
        for (i, &(s, c)) in frees.iter().enumerate() {
            let a = s.div_ceil(align) * align;
            if a >= s && a - s < c && c - (a - s) >= want {
                return Some((i, a, want));
            }
        }
        return None;
    }
    if let Some(n) = near {
        if let Some(i) = frees
            .iter()
            .position(|&(s, c)| s == n.wrapping_add(1) && (!exact || c >= want))
        {
            return Some((i, frees[i].0, frees[i].1.min(want)));
        }
        if let Some(i) = frees.iter().position(|&(s, c)| s > n && c >= want) {
            return Some((i, frees[i].0, want));
        }
    }
    if let Some(i) = frees.iter().position(|&(_, c)| c >= want) {
        return Some((i, frees[i].0, want));
    }
    if exact {
        return None;
    }
    let (i, &(s, c)) = frees.iter().enumerate().max_by_key(|(_, &(_, c))| c)?;
    (c > 0).then_some((i, s, c.min(want)))
}

/// The UUID v5 metadata carries.
pub fn meta_uuid(fs: &Xfs) -> [u8; 16] {
    if fs.sb.sb_features_incompat & crate::superblock::XFS_SB_FEAT_INCOMPAT_META_UUID != 0 {
        fs.sb.sb_meta_uuid
    } else {
        fs.sb.sb_uuid
    }
}

/// A generation number for new inodes.
pub fn inode_gen() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u32).rotate_left(13) ^ 0x9e37_79b9
}

/// Writes a free v3 inode into `b`: magic, version, extent formats, no unlinked successor,
/// its number and the filesystem's UUID, with a CRC.
pub fn init_free_inode(b: &mut [u8], ino: u64, uuid: &[u8; 16], gen: u32) {
    b.fill(0);
    put16(b, 0, crate::inode::XFS_DINODE_MAGIC);
    b[4] = 3;
    b[5] = FMT_EXTENTS;
    b[83] = FMT_EXTENTS;
    put32(b, 92, gen);
    put32(b, 96, NULLAGINO);
    put64(b, 152, ino);
    b[160..176].copy_from_slice(uuid);
    let _ = CORE;
    set_crc(b, 100);
}
