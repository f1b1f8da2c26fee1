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
