//! Space and inodes: the AG free-space B+trees (bnobt by block, cntbt by length, kept exact
//! complements of used space), the inode B+trees (inobt, and finobt when the filesystem has
//! one), the AGF/AGI counters and the superblock's.
//!
//! Trees are edited as whole leaves: a tree whose root is a leaf (`level` 1 in the AG
//! header) is read into memory, its records changed, and the leaf written back. Deeper trees,
//! and a leaf that would overflow, are refused by name (splits are not written yet). The AGFL
//! is therefore never needed (no tree changes shape) and left as it is.

use vdisk_block::{Error, Result};

use super::inode::{put16, put32, put64, CORE, FMT_EXTENTS, NULLAGINO};
use super::tx::{set_crc, Kind, Tx};
use super::RO_COMPAT_FINOBT;
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

    /// The byte offset of the root leaf of `t` in `agno`, and its records.
    fn leaf(&mut self, agno: u32, t: Tree) -> Result<(u64, Vec<Vec<u8>>)> {
        let (n, ro, lo) = t.root_at();
        let h = if n == 1 {
            self.agf(agno)?
        } else {
            self.agi(agno)?
        };
        let root = be32(h, ro);
        let level = be32(h, lo);
        if level != 1 {
            return Err(Error::unsupported(format!(
                "XFS AG {agno}: editing a {} B+tree of {level} levels is not supported yet (only single-block trees)",
                t.name()
            )));
        }
        if root == 0 || root >= self.fs.sb.sb_agblocks {
            return Err(Error::corrupt(format!(
                "XFS AG {agno}: {} B+tree root {root} is out of range",
                t.name()
            )));
        }
        let off = agb_byte(self.fs, agno, root);
        let bs = self.fs.sb.sb_blocksize as usize;
        let b = self.buf(off, bs, Kind::ShortBtree)?;
        let numrecs = usize::from(be16(b, 6));
        let rs = t.recsize();
        if be32(b, 0) != t.magic() || be16(b, 4) != 0 || SBLOCK_HDR + numrecs * rs > bs {
            return Err(Error::corrupt(format!(
                "XFS AG {agno}: {} B+tree root block {root} is not a valid leaf",
                t.name()
            )));
        }
        let recs = (0..numrecs)
            .map(|k| b[SBLOCK_HDR + k * rs..SBLOCK_HDR + (k + 1) * rs].to_vec())
            .collect();
        Ok((off, recs))
    }

    fn put_leaf(&mut self, agno: u32, t: Tree, off: u64, recs: &[Vec<u8>]) -> Result<()> {
        let bs = self.fs.sb.sb_blocksize as usize;
        let rs = t.recsize();
        if SBLOCK_HDR + recs.len() * rs > bs {
            return Err(Error::unsupported(format!(
                "XFS AG {agno}: the {} B+tree leaf is full; splitting B+tree blocks is not supported yet",
                t.name()
            )));
        }
        let b = self.buf(off, bs, Kind::ShortBtree)?;
        put16(b, 6, recs.len() as u16);
        b[SBLOCK_HDR..].fill(0);
        for (k, r) in recs.iter().enumerate() {
            b[SBLOCK_HDR + k * rs..SBLOCK_HDR + (k + 1) * rs].copy_from_slice(r);
        }
        Ok(())
    }

    fn free_list(&mut self, agno: u32) -> Result<(u64, Vec<Free>)> {
        let (off, recs) = self.leaf(agno, Tree::Bno)?;
        Ok((off, recs.iter().map(|r| (be32(r, 0), be32(r, 4))).collect()))
    }

    /// Writes `frees` (sorted by block) as both free-space trees of `agno`, and the AGF.
    fn put_free(&mut self, agno: u32, bno_off: u64, frees: &[Free]) -> Result<()> {
        let enc = |&(s, c): &Free| {
            let mut r = vec![0u8; 8];
            put32(&mut r, 0, s);
            put32(&mut r, 4, c);
            r
        };
        let by_bno: Vec<Vec<u8>> = frees.iter().map(enc).collect();
        let mut by_cnt = frees.to_vec();
        by_cnt.sort_by_key(|&(s, c)| (c, s));
        let by_cnt: Vec<Vec<u8>> = by_cnt.iter().map(enc).collect();
        let (cnt_off, _) = self.leaf(agno, Tree::Cnt)?;
        self.put_leaf(agno, Tree::Bno, bno_off, &by_bno)?;
        self.put_leaf(agno, Tree::Cnt, cnt_off, &by_cnt)?;
        let total: u64 = frees.iter().map(|&(_, c)| u64::from(c)).sum();
        let longest = frees.iter().map(|&(_, c)| c).max().unwrap_or(0);
        let agf = self.agf(agno)?;
        put32(agf, 52, total as u32);
        put32(agf, 56, longest);
        Ok(())
    }

    /// Allocates up to `want` contiguous blocks (at least 1), preferring `near` (a filesystem
    /// block: the block right after it, then its AG); `align` > 1 asks for a start aligned to
    /// it and exactly `want` blocks. Returns (first filesystem block, count).
    pub fn alloc_blocks(&mut self, want: u32, near: Option<u64>, align: u32) -> Result<(u64, u32)> {
        let agcount = self.fs.sb.sb_agcount;
        let (near_ag, near_bno) = near.map_or((0, None), |f| {
            let (a, b) = fsb_split(self.fs, f);
            (a, Some(b))
        });
        let mut refused = None;
        for k in 0..agcount {
            let agno = (near_ag + k) % agcount;
            let hint = if k == 0 { near_bno } else { None };
            match self.alloc_in_ag(agno, want, hint, align) {
                Ok(Some((start, len))) => return Ok((fsb_join(self.fs, agno, start), len)),
                Ok(None) => {}
                // An AG whose trees this writer cannot edit (found before anything changed)
                // is passed over for the others.
                Err(e @ Error::Unsupported { .. }) => refused = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(refused.unwrap_or_else(|| vdisk_fs::errno_error("alloc", vdisk_fs::errno::ENOSPC)))
    }

    /// Allocates in AG `agno` only: (agbno, count), or None when it has no room. An
    /// Unsupported error means nothing was changed.
    fn alloc_in_ag(
        &mut self,
        agno: u32,
        want: u32,
        near_bno: Option<u32>,
        align: u32,
    ) -> Result<Option<(u32, u32)>> {
        let (off, mut frees) = self.free_list(agno)?;
        self.leaf(agno, Tree::Cnt)?;
        let Some((idx, start, len)) = pick_extent(&frees, want, near_bno, align) else {
            return Ok(None);
        };
        let (s, c) = frees[idx];
        // Carve [start, start + len) out of (s, c).
        let mut repl = Vec::new();
        if start > s {
            repl.push((s, start - s));
        }
        if start + len < s + c {
            repl.push((start + len, s + c - start - len));
        }
        frees.splice(idx..=idx, repl);
        // A leaf that would overflow is refused before either tree is changed (both have
        // as many records).
        self.put_free(agno, off, &frees)?;
        self.fdblocks_delta -= i64::from(len);
        Ok(Some((start, len)))
    }

    /// Frees `len` blocks from filesystem block `fsb` when the transaction finishes (so no
    /// block freed here is reused by the same transaction).
    pub fn free_blocks(&mut self, fsb: u64, len: u32) {
        self.frees.push((fsb, len));
    }

    fn free_now(&mut self, fsb: u64, len: u32) -> Result<()> {
        let (agno, bno) = fsb_split(self.fs, fsb);
        let (off, mut frees) = self.free_list(agno)?;
        let end = bno
            .checked_add(len)
            .filter(|&e| e <= self.fs.sb.sb_agblocks)
            .ok_or_else(|| Error::corrupt(format!("XFS: freeing blocks past AG {agno}")))?;
        let pos = frees.partition_point(|&(s, _)| s < bno);
        if pos > 0 && frees[pos - 1].0 + frees[pos - 1].1 > bno
            || pos < frees.len() && frees[pos].0 < end
        {
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
        self.put_free(agno, off, &frees)?;
        self.fdblocks_delta += i64::from(len);
        Ok(())
    }

    /// Applies deferred frees and writes the superblock counters; returns the new
    /// (icount, ifree, fdblocks) when they changed.
    pub fn finish(&mut self) -> Result<Option<(u64, u64, u64)>> {
        for (fsb, len) in std::mem::take(&mut self.frees) {
            self.free_now(fsb, len)?;
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

    /// The levels of tree `t` in `agno` (from the AGF or AGI).
    fn levels(&mut self, agno: u32, t: Tree) -> Result<u32> {
        let (n, _, lo) = t.root_at();
        let h = if n == 1 {
            self.agf(agno)?
        } else {
            self.agi(agno)?
        };
        Ok(be32(h, lo))
    }

    /// Every record of tree `t` in `agno`, walked from the root (any depth): (leaf byte
    /// offset, index in the leaf, record bytes), in key order.
    fn all_records(&mut self, agno: u32, t: Tree) -> Result<Vec<(u64, usize, Vec<u8>)>> {
        let (n, ro, lo) = t.root_at();
        let h = if n == 1 {
            self.agf(agno)?
        } else {
            self.agi(agno)?
        };
        let root = be32(h, ro);
        let levels = be32(h, lo);
        if levels == 0 || levels > 8 {
            return Err(Error::corrupt(format!(
                "XFS AG {agno}: {} B+tree has {levels} levels",
                t.name()
            )));
        }
        let bs = self.fs.sb.sb_blocksize as usize;
        let rs = t.recsize();
        // Keys are the first 4 bytes of a record for inode trees, 8 for free space.
        let ks = if rs == 16 { 4 } else { 8 };
        let mut out = Vec::new();
        let mut stack = vec![(root, levels - 1)];
        let mut visited = 0usize;
        while let Some((agbno, level)) = stack.pop() {
            visited += 1;
            if visited > 1 << 20 || agbno == 0 || agbno >= self.fs.sb.sb_agblocks {
                return Err(Error::corrupt(format!(
                    "XFS AG {agno}: {} B+tree points outside the AG or loops",
                    t.name()
                )));
            }
            let off = agb_byte(self.fs, agno, agbno);
            let b = self.buf(off, bs, Kind::ShortBtree)?;
            let nrec = usize::from(be16(b, 6));
            if be32(b, 0) != t.magic() || u32::from(be16(b, 4)) != level {
                return Err(Error::corrupt(format!(
                    "XFS AG {agno}: {} B+tree block {agbno} is not a level {level} block",
                    t.name()
                )));
            }
            if level == 0 {
                if SBLOCK_HDR + nrec * rs > bs {
                    return Err(Error::corrupt(format!(
                        "XFS AG {agno}: B+tree leaf {agbno} overflows"
                    )));
                }
                for k in 0..nrec {
                    out.push((
                        off,
                        k,
                        b[SBLOCK_HDR + k * rs..SBLOCK_HDR + (k + 1) * rs].to_vec(),
                    ));
                }
            } else {
                let maxrecs = (bs - SBLOCK_HDR) / (ks + 4);
                if nrec > maxrecs {
                    return Err(Error::corrupt(format!(
                        "XFS AG {agno}: B+tree node {agbno} overflows"
                    )));
                }
                // Children pushed last first, so they pop in key order.
                for k in (0..nrec).rev() {
                    let p = be32(b, SBLOCK_HDR + maxrecs * ks + k * 4);
                    stack.push((p, level - 1));
                }
            }
        }
        Ok(out)
    }

    /// Updates the record for `rec.startino` in `t` (inserting or, when `remove`, deleting).
    /// Trees deeper than one block take in-place updates only.
    fn put_irec(&mut self, agno: u32, t: Tree, rec: &InoRec, remove: bool) -> Result<()> {
        if self.levels(agno, t)? > 1 {
            let all = self.all_records(agno, t)?;
            let hit = all.iter().find(|(_, _, r)| be32(r, 0) == rec.startino);
            return match (hit, remove) {
                (Some((off, idx, _)), false) => {
                    let (off, idx) = (*off, *idx);
                    let enc = self.encode_irec(rec);
                    let bs = self.fs.sb.sb_blocksize as usize;
                    let b = self.buf(off, bs, Kind::ShortBtree)?;
                    b[SBLOCK_HDR + idx * 16..SBLOCK_HDR + (idx + 1) * 16].copy_from_slice(&enc);
                    Ok(())
                }
                _ => Err(Error::unsupported(format!(
                    "XFS AG {agno}: inserting into or deleting from a {} B+tree deeper than one block is not supported yet",
                    t.name()
                ))),
            };
        }
        let (off, mut recs) = self.leaf(agno, t)?;
        let pos = recs.partition_point(|r| be32(r, 0) < rec.startino);
        let exists = pos < recs.len() && be32(&recs[pos], 0) == rec.startino;
        match (exists, remove) {
            (true, true) => {
                recs.remove(pos);
            }
            (true, false) => recs[pos] = self.encode_irec(rec),
            (false, false) => recs.insert(pos, self.encode_irec(rec)),
            (false, true) => {}
        }
        self.put_leaf(agno, t, off, &recs)
    }

    /// Allocates an inode, preferring AG `near_ag`; returns its number. The inode's bytes are
    /// left as they were (free inodes are initialised: see [`Tx::init_inode`]).
    pub fn alloc_inode(&mut self, near_ag: u32) -> Result<u64> {
        let agcount = self.fs.sb.sb_agcount;
        let mut refused = None;
        for pass in 0..2 {
            for k in 0..agcount {
                let agno = (near_ag + k) % agcount;
                let agi = self.agi(agno)?;
                let freecount = be32(agi, 28);
                if pass == 0 && freecount == 0 {
                    continue;
                }
                // AGs whose inode trees this writer cannot edit are passed over (checked
                // before anything changes).
                let check = if pass == 1 {
                    self.leaf(agno, Tree::Ino).map(|_| ())
                } else {
                    self.all_records(agno, Tree::Ino).map(|_| ())
                };
                match check.and_then(|_| {
                    if self.finobt() {
                        self.leaf(agno, Tree::Fino).map(|_| ())
                    } else {
                        Ok(())
                    }
                }) {
                    Ok(_) => {}
                    Err(e @ Error::Unsupported { .. }) => {
                        refused = Some(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                if pass == 1 && !self.new_chunk(agno)? {
                    continue;
                }
                let recs = self.all_records(agno, Tree::Ino)?;
                let Some(mut rec) = recs
                    .iter()
                    .map(|(_, _, r)| self.decode_irec(r))
                    .find(|r| r.freecount > 0)
                else {
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
                put32(agi, 28, fc - 1);
                self.ifree_delta -= 1;
                let agino = u64::from(rec.startino + bit);
                let bits = u32::from(self.fs.sb.sb_agblklog) + u32::from(self.fs.sb.sb_inopblog);
                return Ok((u64::from(agno) << bits) | agino);
            }
        }
        Err(refused.unwrap_or_else(|| vdisk_fs::errno_error("create", vdisk_fs::errno::ENOSPC)))
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
        let Some((agbno, n)) = self.alloc_in_ag(agno, blocks, None, align)? else {
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
        let recs = self.all_records(agno, Tree::Ino)?;
        let mut rec = recs
            .iter()
            .map(|(_, _, r)| self.decode_irec(r))
            .find(|r| r.startino <= agino && agino < r.startino + 64)
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
        if let Some(i) = frees.iter().position(|&(s, _)| s == n.wrapping_add(1)) {
            return Some((i, frees[i].0, frees[i].1.min(want)));
        }
        if let Some(i) = frees.iter().position(|&(s, c)| s > n && c >= want) {
            return Some((i, frees[i].0, want));
        }
    }
    if let Some(i) = frees.iter().position(|&(_, c)| c >= want) {
        return Some((i, frees[i].0, want));
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
