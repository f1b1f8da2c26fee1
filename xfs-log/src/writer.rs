//! Writing one transaction of buffer log items as log records the kernel's recovery replays,
//! without writing the buffers home: a mount (ours or the kernel's) applies it.
//!
//! The records have the layout the kernel writes from its CIL: a start op, the transaction
//! header, one buffer log format (`xfs_buf_log_format`) per buffer followed by its dirty
//! regions in 128-byte chunks (`XFS_BLF_CHUNK`), and a commit op. A transaction larger than
//! one record (32 KiB of op data, so no extended headers are needed) goes on in the next,
//! a region split across two records with `XLOG_CONTINUE_TRANS` / `XLOG_WAS_CONT_TRANS`. Each
//! data sector's first word is moved into `h_cycle_data` and replaced by the cycle; a record
//! that runs past the end of the log goes on at block 0, those sectors stamped with the next
//! cycle (as `xlog_split_iclog`). The CRC covers the whole.

use crate::record::{record_crc, Lsn, BBSIZE, XLOG_HEADER_CYCLE_SIZE, XLOG_HEADER_MAGIC_NUM};
use crate::trans::{
    XFS_TRANSACTION, XFS_TRANS_HEADER_MAGIC, XLOG_COMMIT_TRANS, XLOG_CONTINUE_TRANS,
    XLOG_END_TRANS, XLOG_START_TRANS, XLOG_WAS_CONT_TRANS,
};
use crate::{Log, LogState};
use vdisk_block::{Error, Result};

/// `XFS_LI_BUF`.
pub const XFS_LI_BUF: u16 = 0x123c;
/// `XFS_BLF_CHUNK`: the granularity of the dirty map.
pub const XFS_BLF_CHUNK: usize = 128;
/// `XFS_BLFT_SHIFT`: where the buffer type sits in `blf_flags`.
pub const XFS_BLFT_SHIFT: u16 = 11;
/// `XFS_BLFT_SB_BUF`: the superblock's buffer type.
pub const XFS_BLFT_SB_BUF: u16 = 18;
/// `XFS_TRANS_CHECKPOINT`: the transaction type of a CIL checkpoint.
pub const XFS_TRANS_CHECKPOINT: u32 = 40;
/// `XLOG_FMT_LINUX_LE`: the record format of a little-endian Linux host.
pub const XLOG_FMT_LINUX_LE: u32 = 1;
/// `XFS_BLF_DATAMAP_SIZE`: the largest dirty map, for buffers up to 64 KiB.
const XFS_BLF_DATAMAP_SIZE: usize = 17;

/// A metadata buffer's new contents.
#[derive(Debug, Clone)]
pub struct BufUpdate {
    /// The buffer's first 512-byte sector on the data device.
    pub daddr: u64,
    /// The whole buffer, a multiple of 512 bytes.
    pub data: Vec<u8>,
    /// The `XFS_BLFT_*` buffer type, so recovery attaches the right verifier.
    pub blft: u16,
}

fn op(out: &mut Vec<u8>, tid: u32, flags: u8, body: &[u8]) {
    out.extend_from_slice(&tid.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.push(XFS_TRANSACTION);
    out.push(flags);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(body);
}

impl Log<'_> {
    /// Appends one committed transaction logging `bufs` at the head of a clean log (in as
    /// many records as it takes, wrapping at the end of the log), and returns the new state.
    /// Buffers are compared with the device to find their dirty chunks; the device's metadata
    /// is not changed.
    pub fn write_buffers(&self, st: &LogState, tid: u32, bufs: &[BufUpdate]) -> Result<LogState> {
        self.write_transaction(st, tid, bufs, &[])
    }

    /// As [`Log::write_buffers`], also logging `inodes` as inode items (the kernel's way of
    /// logging an inode: core and forks, not its whole cluster buffer). The inodes' cluster
    /// buffers must not be among `bufs`.
    pub fn write_transaction(
        &self,
        st: &LogState,
        tid: u32,
        bufs: &[BufUpdate],
        inodes: &[InodeUpdate],
    ) -> Result<LogState> {
        if !st.clean {
            return Err(Error::unsupported(
                "appending to an XFS log that needs recovery",
            ));
        }
        if !self.geo.log_v2 {
            return Err(Error::unsupported("writing v1 XFS logs"));
        }
        let mut ops: Vec<(u8, Vec<u8>)> = vec![(XLOG_START_TRANS, Vec::new())];
        let mut th = Vec::new();
        th.extend_from_slice(&XFS_TRANS_HEADER_MAGIC.to_le_bytes());
        th.extend_from_slice(&XFS_TRANS_CHECKPOINT.to_le_bytes());
        th.extend_from_slice(&tid.to_le_bytes());
        th.extend_from_slice(&(bufs.len() as u32).to_le_bytes());
        ops.push((0, th));
        for b in bufs {
            let len = b.data.len();
            if len == 0 || len % BBSIZE != 0 || len > XFS_BLF_DATAMAP_SIZE * 32 * XFS_BLF_CHUNK {
                return Err(Error::invalid(format!(
                    "buffer of {len} bytes cannot be logged"
                )));
            }
            let mut old = vec![0u8; len];
            let off = b
                .daddr
                .checked_mul(512)
                .ok_or_else(|| Error::invalid("daddr overflows"))?;
            self.dev.read_at(&mut old, off)?;
            let chunks = len / XFS_BLF_CHUNK;
            let dirty: Vec<bool> = (0..chunks)
                .map(|c| {
                    old[c * XFS_BLF_CHUNK..][..XFS_BLF_CHUNK]
                        != b.data[c * XFS_BLF_CHUNK..][..XFS_BLF_CHUNK]
                })
                .collect();
            let mut map = vec![0u32; chunks.div_ceil(32)];
            let mut runs = Vec::new();
            let mut c = 0;
            while c < chunks {
                if dirty[c] {
                    let s = c;
                    while c < chunks && dirty[c] {
                        map[c / 32] |= 1 << (c % 32);
                        c += 1;
                    }
                    runs.push((s, c));
                } else {
                    c += 1;
                }
            }
            if runs.is_empty() {
                continue;
            }
            let mut blf = Vec::new();
            blf.extend_from_slice(&XFS_LI_BUF.to_le_bytes());
            blf.extend_from_slice(&((1 + runs.len()) as u16).to_le_bytes());
            blf.extend_from_slice(&(b.blft << XFS_BLFT_SHIFT).to_le_bytes());
            blf.extend_from_slice(&((len / BBSIZE) as u16).to_le_bytes());
            blf.extend_from_slice(&b.daddr.to_le_bytes());
            blf.extend_from_slice(&(map.len() as u32).to_le_bytes());
            for w in &map {
                blf.extend_from_slice(&w.to_le_bytes());
            }
            ops.push((0, blf));
            for (s, e) in runs {
                ops.push((0, b.data[s * XFS_BLF_CHUNK..e * XFS_BLF_CHUNK].to_vec()));
            }
        }
        for ino in inodes {
            ops.extend(inode_item(ino, self.geo.v5)?.into_iter().map(|r| (0, r)));
        }
        // th_num_items: the items actually logged (unchanged buffers are left out).
        let items = ops[2..]
            .iter()
            .filter(|(_, r)| {
                r.len() >= 2
                    && matches!(u16::from_le_bytes([r[0], r[1]]), XFS_LI_BUF | XFS_LI_INODE)
            })
            .count() as u32;
        ops[1].1[12..16].copy_from_slice(&items.to_le_bytes());
        ops.push((XLOG_COMMIT_TRANS, Vec::new()));
        let records = pack_records(tid, &ops);
        // Nothing older is needed: the log was clean, so the tail is the first record.
        let total: u64 = records
            .iter()
            .map(|(_, d)| 1 + d.len().div_ceil(BBSIZE) as u64)
            .sum();
        if total > self.geo.log_bbs / 2 {
            return Err(Error::unsupported(format!(
                "an XFS log transaction of {total} blocks in a log of {}",
                self.geo.log_bbs
            )));
        }
        let (mut blk, mut cycle) = self.next_record_at(st)?;
        let tail = Lsn::new(cycle, blk as u32);
        let mut prev = st.last_record_blk;
        for (nops, data) in &records {
            let at = blk;
            (blk, cycle) = self.put_record(blk, cycle, tail, prev, *nops, data)?;
            prev = at;
        }
        self.dev.flush()?;
        self.state()
    }

    /// The LSN the next record written at the head of `st` will carry (what a writer stamps
    /// into the metadata the transaction logs).
    pub fn next_lsn(&self, st: &LogState) -> Result<Lsn> {
        let (blk, cycle) = self.next_record_at(st)?;
        Ok(Lsn::new(cycle, blk as u32))
    }

    /// Where the next record goes after the head of `st`, and its cycle: a head that wrapped to
    /// block 0 starts the next cycle.
    pub(crate) fn next_record_at(&self, st: &LogState) -> Result<(u64, u32)> {
        let blk = st.head_blk;
        let cycle = if blk == 0 {
            st.head_cycle
                .checked_add(1)
                .ok_or_else(|| Error::corrupt("XFS log cycle number overflows"))?
        } else {
            st.head_cycle
        };
        Ok((blk, cycle))
    }

    /// Writes one record of at most 32 KiB of op data at basic block `blk` of cycle `cycle`,
    /// wrapping at the end of the log as the kernel's `xlog_split_iclog` does (sectors past the
    /// end stamped with the next cycle), and returns where the next record goes and its cycle.
    pub(crate) fn put_record(
        &self,
        blk: u64,
        cycle: u32,
        tail: Lsn,
        prev: u64,
        nops: u32,
        ops: &[u8],
    ) -> Result<(u64, u32)> {
        let n = self.geo.log_bbs;
        let h_len = ops.len();
        if h_len > XLOG_HEADER_CYCLE_SIZE as usize || blk >= n {
            return Err(Error::invalid(
                "XFS log record too large or outside the log",
            ));
        }
        let next_cycle = cycle
            .checked_add(1)
            .ok_or_else(|| Error::corrupt("XFS log cycle number overflows"))?;
        let mut data = ops.to_vec();
        data.resize(h_len.div_ceil(BBSIZE).max(1) * BBSIZE, 0);
        let mut hdr = vec![0u8; BBSIZE];
        hdr[0..4].copy_from_slice(&XLOG_HEADER_MAGIC_NUM.to_be_bytes());
        hdr[4..8].copy_from_slice(&cycle.to_be_bytes());
        hdr[8..12].copy_from_slice(&(if self.geo.log_v2 { 2u32 } else { 1 }).to_be_bytes());
        hdr[12..16].copy_from_slice(&(h_len as u32).to_be_bytes());
        hdr[16..24].copy_from_slice(&Lsn::new(cycle, blk as u32).0.to_be_bytes());
        hdr[24..32].copy_from_slice(&tail.0.to_be_bytes());
        hdr[36..40].copy_from_slice(&(prev as u32).to_be_bytes());
        hdr[40..44].copy_from_slice(&nops.to_be_bytes());
        for (i, sector) in data.chunks_mut(BBSIZE).enumerate() {
            hdr[44 + 4 * i..48 + 4 * i].copy_from_slice(&sector[..4]);
            let stamp = if blk + 1 + i as u64 >= n {
                next_cycle
            } else {
                cycle
            };
            sector[..4].copy_from_slice(&stamp.to_be_bytes());
        }
        hdr[300..304].copy_from_slice(&XLOG_FMT_LINUX_LE.to_be_bytes());
        hdr[304..320].copy_from_slice(&self.geo.uuid);
        hdr[320..324].copy_from_slice(&XLOG_HEADER_CYCLE_SIZE.to_be_bytes());
        let crc = record_crc(&hdr, &[], &data[..h_len]);
        hdr[32..36].copy_from_slice(&crc.to_le_bytes());
        let base = self.geo.log_offset;
        let dblks = (data.len() / BBSIZE) as u64;
        let first = (blk + 1) % n;
        let room = (n - first).min(dblks) as usize * BBSIZE;
        self.dev
            .write_at(&data[..room], base + first * BBSIZE as u64)?;
        if room < data.len() {
            self.dev.write_at(&data[room..], base)?;
        }
        self.dev.write_at(&hdr, base + blk * BBSIZE as u64)?;
        let next = blk + 1 + dblks;
        Ok(if next >= n {
            (next - n, next_cycle)
        } else {
            (next, cycle)
        })
    }
}

/// An inode's new on-disk contents, logged as an inode item by [`Log::write_transaction`].
#[derive(Debug, Clone)]
pub struct InodeUpdate {
    /// The inode number.
    pub ino: u64,
    /// The first sector of the inode cluster buffer that holds it.
    pub cluster_daddr: u64,
    /// The length of that cluster buffer in sectors (as the kernel maps inode clusters).
    pub cluster_bbs: u16,
    /// The inode's byte offset in the cluster buffer.
    pub offset: u32,
    /// The whole on-disk (big-endian) v3 inode, `sb_inodesize` bytes; its LSN and CRC are
    /// set by recovery.
    pub dinode: Vec<u8>,
}

/// `XFS_LI_INODE`.
pub const XFS_LI_INODE: u16 = 0x123b;
const DINODE_CORE: usize = 176;

fn swap(from: &[u8], to: &mut [u8], o: usize, w: usize) {
    for i in 0..w {
        to[o + i] = from[o + w - 1 - i];
    }
}

/// The regions of one inode item: `xfs_inode_log_format`, the host-order `xfs_log_dinode`,
/// then the data and attribute forks as they lie in the inode (a B+tree root given in the
/// in-core form recovery converts back).
fn inode_item(u: &InodeUpdate, v5: bool) -> Result<Vec<Vec<u8>>> {
    let d = &u.dinode;
    let bad = |what: &str| Error::invalid(format!("inode {} cannot be logged: {what}", u.ino));
    if !v5 || d.len() < 256 || d.len() % 256 != 0 || d[0..2] != [0x49, 0x4e] || d[4] != 3 {
        return Err(bad("not a v3 inode"));
    }
    let isize = d.len();
    let lit = isize - DINODE_CORE;
    let forkoff = usize::from(d[82]) * 8;
    if forkoff > lit {
        return Err(bad("fork offset past the inode"));
    }
    // Host-order (little-endian) log dinode.
    let mut ld = vec![0u8; DINODE_CORE];
    for (o, w) in [
        (0, 2),
        (2, 2),
        (4, 1),
        (5, 1),
        (6, 2),
        (8, 4),
        (12, 4),
        (16, 4),
        (20, 2),
        (22, 2),
        (24, 8),
        (56, 8),
        (64, 8),
        (72, 4),
        (76, 4),
        (80, 2),
        (82, 1),
        (83, 1),
        (84, 4),
        (88, 2),
        (90, 2),
        (92, 4),
        (96, 4),
        (104, 8),
        (120, 8),
        (128, 4),
        (152, 8),
    ] {
        swap(d, &mut ld, o, w);
    }
    let bigtime = u64::from_be_bytes(d[120..128].try_into().unwrap_or([0; 8])) & (1 << 3) != 0;
    for o in [32, 40, 48, 144] {
        if bigtime {
            swap(d, &mut ld, o, 8);
        } else {
            swap(d, &mut ld, o, 4);
            swap(d, &mut ld, o + 4, 4);
        }
    }
    ld[160..176].copy_from_slice(&d[160..176]);
    let (dsize, asize) = if forkoff == 0 {
        (lit, 0)
    } else {
        (forkoff, lit - forkoff)
    };
    let mut fields = 0x1u32; // XFS_ILOG_CORE
    let mut regions = vec![Vec::new(), ld];
    let mut rdev = 0u32;
    let fork =
        |area: &[u8], format: u8, local: u32, ext: u32, broot: u32| -> Option<(u32, Vec<u8>)> {
            match format {
                1 => Some((local, area.to_vec())),
                2 => Some((ext, area.to_vec())),
                3 => {
                    // In-core root: a whole long-form block header, then keys and pointers
                    // placed for exactly numrecs records (xfs_bmap_broot_space_calc).
                    let numrecs = usize::from(u16::from_be_bytes([area[2], area[3]]));
                    let dmax = (area.len() - 4) / 16;
                    let n = numrecs.min(dmax);
                    let mut r = vec![0u8; 72 + n * 16];
                    r[0..4].copy_from_slice(&0x424d_4133u32.to_be_bytes());
                    r[4..8].copy_from_slice(&area[0..4]);
                    r[72..72 + n * 8].copy_from_slice(&area[4..4 + n * 8]);
                    let p = 4 + dmax * 8;
                    r[72 + n * 8..].copy_from_slice(&area[p..p + n * 8]);
                    Some((broot, r))
                }
                _ => None,
            }
        };
    let data = &d[DINODE_CORE..DINODE_CORE + dsize];
    if d[5] == 0 {
        fields |= 0x10; // XFS_ILOG_DEV
        rdev = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    } else if let Some((f, r)) = fork(data, d[5], 0x2, 0x4, 0x8) {
        fields |= f;
        regions.push(r);
    } else {
        return Err(bad("unknown data fork format"));
    }
    let mut logged_asize = 0;
    if forkoff != 0 {
        let area = &d[DINODE_CORE + forkoff..DINODE_CORE + forkoff + asize];
        if let Some((f, r)) = fork(area, d[83], 0x40, 0x80, 0x100) {
            fields |= f;
            logged_asize = r.len();
            regions.push(r);
        }
    }
    let logged_dsize = if fields & 0xe != 0 {
        regions[2].len()
    } else {
        0
    };
    let mut ilf = vec![0u8; 56];
    ilf[0..2].copy_from_slice(&XFS_LI_INODE.to_le_bytes());
    ilf[2..4].copy_from_slice(&(regions.len() as u16).to_le_bytes());
    ilf[4..8].copy_from_slice(&fields.to_le_bytes());
    ilf[8..10].copy_from_slice(&(logged_asize as u16).to_le_bytes());
    ilf[10..12].copy_from_slice(&(logged_dsize as u16).to_le_bytes());
    ilf[16..24].copy_from_slice(&u.ino.to_le_bytes());
    ilf[24..28].copy_from_slice(&rdev.to_le_bytes());
    ilf[40..48].copy_from_slice(&u.cluster_daddr.to_le_bytes());
    ilf[48..52].copy_from_slice(&u32::from(u.cluster_bbs).to_le_bytes());
    ilf[52..56].copy_from_slice(&u.offset.to_le_bytes());
    if (u.offset as usize)
        .checked_add(isize)
        .is_none_or(|e| e > usize::from(u.cluster_bbs) * BBSIZE)
    {
        return Err(bad("it lies outside its cluster buffer"));
    }
    regions[0] = ilf;
    Ok(regions)
}

/// Op header plus body.
const fn op_len(body: usize) -> usize {
    12 + body
}

/// Packs a transaction's ops into records of at most 32 KiB (one header sector each, no
/// extended headers), splitting a region across records with `XLOG_CONTINUE_TRANS` and
/// `XLOG_WAS_CONT_TRANS` as the kernel's `xlog_write` does. Returns (ops, bytes) per record.
fn pack_records(tid: u32, ops: &[(u8, Vec<u8>)]) -> Vec<(u32, Vec<u8>)> {
    let cap = XLOG_HEADER_CYCLE_SIZE as usize;
    let mut records: Vec<(u32, Vec<u8>)> = vec![(0, Vec::new())];
    for (flags, body) in ops {
        let mut rest: &[u8] = body;
        let mut cont = false;
        loop {
            let cur = records.last_mut().expect("one record");
            let room = cap - cur.1.len();
            // Small ops (and the transaction header) are never split: a new record instead.
            if room < op_len(rest.len()) && (room < op_len(64) || rest.len() <= 64) {
                records.push((0, Vec::new()));
                continue;
            }
            let take = rest.len().min(room - 12);
            let last = take == rest.len();
            let mut f = *flags;
            if cont {
                f |= XLOG_WAS_CONT_TRANS;
            }
            if !last {
                f |= XLOG_CONTINUE_TRANS;
            } else if cont {
                f |= XLOG_END_TRANS;
            }
            op(&mut cur.1, tid, f, &rest[..take]);
            cur.0 += 1;
            rest = &rest[take..];
            cont = true;
            if last {
                break;
            }
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records stay within 32 KiB, small ops are never split, a split region is continued
    /// with the kernel's flags and its pieces join back to the whole.
    #[test]
    fn records_split_regions_with_continuation_flags() {
        let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let ops = vec![
            (XLOG_START_TRANS, Vec::new()),
            (0, vec![1; 16]),
            (0, big.clone()),
            (0, vec![2; 40]),
            (XLOG_COMMIT_TRANS, Vec::new()),
        ];
        let recs = pack_records(7, &ops);
        assert!(recs.len() >= 3);
        let mut pieces = Vec::new();
        for (nops, data) in &recs {
            assert!(data.len() <= XLOG_HEADER_CYCLE_SIZE as usize);
            let mut o = 0;
            for _ in 0..*nops {
                let len = u32::from_be_bytes(data[o + 4..o + 8].try_into().unwrap()) as usize;
                pieces.push((data[o + 9], data[o + 12..o + 12 + len].to_vec()));
                o += 12 + len;
            }
            assert_eq!(o, data.len());
        }
        let joined: Vec<u8> = pieces
            .iter()
            .filter(|(_, b)| b.len() > 40)
            .flat_map(|(_, b)| b.clone())
            .collect();
        assert_eq!(joined, big);
        let flags: Vec<u8> = pieces.iter().map(|p| p.0).collect();
        assert_eq!(flags[0], XLOG_START_TRANS);
        assert_eq!(flags[2], XLOG_CONTINUE_TRANS);
        let n = flags.len();
        assert_eq!(flags[n - 3], XLOG_WAS_CONT_TRANS | XLOG_END_TRANS);
        assert_eq!(flags[n - 1], XLOG_COMMIT_TRANS);
    }
}
