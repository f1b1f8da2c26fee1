//! Writing a transaction of buffer updates as log records the kernel accepts (each up to
//! `XLOG_MAX_RECORD_BSIZE`, with extended record headers past 32 KiB; a larger transaction
//! continues in further records, ops never split), at any head
//! position: a record that runs past the end of the log continues at block 0, its blocks
//! there stamped with the next cycle, as the kernel's `xlog_sync` splits an iclog. The
//! unmount record that follows wraps the same way.
//!
//! ```text
//!   [hdr][ext hdr]..[data 0..64 sectors][data 64..128]..  (one ext header per 32 KiB of data)
//!   ... end of log | block 0: cycle + 1 ...
//! ```

use crate::record::{
    record_crc, Lsn, BBSIZE, XLOG_HEADER_CYCLE_SIZE, XLOG_HEADER_MAGIC_NUM, XLOG_MAX_RECORD_BSIZE,
};
use crate::trans::{XFS_TRANSACTION, XFS_TRANS_HEADER_MAGIC, XLOG_COMMIT_TRANS, XLOG_START_TRANS};
use crate::writer::{
    BufUpdate, XFS_BLFT_SHIFT, XFS_BLF_CHUNK, XFS_LI_BUF, XFS_TRANS_CHECKPOINT, XLOG_FMT_LINUX_LE,
};
use crate::{Log, LogState, XFS_LOG, XLOG_UNMOUNT_TRANS};
use vdisk_block::{Error, Result};

/// `XFS_BLF_DATAMAP_SIZE`: the largest dirty map, for buffers up to 64 KiB.
const XFS_BLF_DATAMAP_SIZE: usize = 17;
/// `XLOG_UNMOUNT_TYPE`: the body of an unmount record.
const XLOG_UNMOUNT_TYPE: u16 = 0x556e;

fn op(out: &mut Vec<u8>, tid: u32, client: u8, flags: u8, body: &[u8]) {
    out.extend_from_slice(&tid.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.push(client);
    out.push(flags);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(body);
}

impl Log<'_> {
    /// The LSN the next record written at the head of `st` will carry.
    pub fn next_lsn(&self, st: &LogState) -> Result<Lsn> {
        let cycle = if st.head_blk == 0 {
            st.head_cycle
                .checked_add(1)
                .ok_or_else(|| Error::corrupt("XFS log cycle number overflows"))?
        } else {
            st.head_cycle
        };
        Ok(Lsn::new(cycle, st.head_blk as u32))
    }

    /// Appends one committed transaction logging `bufs` at the head of a clean log (any
    /// size up to 256 KiB of log data, wrapping at the end of the log), and returns the new
    /// state. Buffers are compared with the device to find their dirty 128-byte chunks; the
    /// device's metadata is not changed.
    pub fn write_transaction(
        &self,
        st: &LogState,
        tid: u32,
        bufs: &[BufUpdate],
    ) -> Result<LogState> {
        if !st.clean {
            return Err(Error::unsupported(
                "appending to an XFS log that needs recovery",
            ));
        }
        if !self.geo.log_v2 {
            return Err(Error::unsupported("writing v1 XFS logs"));
        }
        // Each op whole; a transaction larger than one record continues in the next records
        // (recovery gathers ops by transaction id; no op is split, so no continuation flags).
        let mut ops: Vec<Vec<u8>> = Vec::new();
        let mut data = Vec::new();
        op(&mut data, tid, XFS_TRANSACTION, XLOG_START_TRANS, &[]);
        ops.push(std::mem::take(&mut data));
        let mut th = Vec::new();
        th.extend_from_slice(&XFS_TRANS_HEADER_MAGIC.to_le_bytes());
        th.extend_from_slice(&XFS_TRANS_CHECKPOINT.to_le_bytes());
        th.extend_from_slice(&tid.to_le_bytes());
        th.extend_from_slice(&(bufs.len() as u32).to_le_bytes());
        op(&mut data, tid, XFS_TRANSACTION, 0, &th);
        ops.push(std::mem::take(&mut data));
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
            let mut map = vec![0u32; chunks.div_ceil(32)];
            let mut runs = Vec::new();
            let mut c = 0;
            while c < chunks {
                let dirty = |c: usize| {
                    old[c * XFS_BLF_CHUNK..][..XFS_BLF_CHUNK]
                        != b.data[c * XFS_BLF_CHUNK..][..XFS_BLF_CHUNK]
                };
                if dirty(c) {
                    let s = c;
                    while c < chunks && dirty(c) {
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
            op(&mut data, tid, XFS_TRANSACTION, 0, &blf);
            ops.push(std::mem::take(&mut data));
            for (s, e) in runs {
                op(
                    &mut data,
                    tid,
                    XFS_TRANSACTION,
                    0,
                    &b.data[s * XFS_BLF_CHUNK..e * XFS_BLF_CHUNK],
                );
                ops.push(std::mem::take(&mut data));
            }
        }
        op(&mut data, tid, XFS_TRANSACTION, XLOG_COMMIT_TRANS, &[]);
        ops.push(data);
        let total: usize = ops.iter().map(Vec::len).sum();
        if (total as u64) / BBSIZE as u64 >= self.geo.log_bbs / 2 {
            return Err(Error::unsupported(
                "XFS transaction larger than half the log",
            ));
        }
        let max = XLOG_MAX_RECORD_BSIZE as usize;
        // Group whole ops into records.
        let mut recs: Vec<(Vec<u8>, u32)> = vec![(Vec::new(), 0)];
        for o in ops {
            if o.len() > max {
                return Err(Error::unsupported("an XFS log op larger than a record"));
            }
            let last = recs.last().map_or(0, |r| r.0.len());
            if last + o.len() > max {
                recs.push((Vec::new(), 0));
            }
            if let Some(r) = recs.last_mut() {
                r.0.extend_from_slice(&o);
                r.1 += 1;
            }
        }
        // Recovery reads every record of a pass with the header size of the first: all
        // records of the transaction carry the same h_size.
        let biggest = recs.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let h_size = (biggest.div_ceil(XLOG_HEADER_CYCLE_SIZE as usize).max(1)
            * XLOG_HEADER_CYCLE_SIZE as usize) as u32;
        let tail = self.next_lsn(st)?;
        let mut pos = (st.head_blk, tail.cycle());
        let mut prev = st.last_record_blk;
        for (data, n) in recs {
            let at = pos.0;
            pos = self.put_record(pos, tail, prev, data, n, h_size)?;
            prev = at;
        }
        self.state()
    }

    /// Writes an unmount record at the head (wrapping at the end of the log), so the log reads
    /// clean. Returns the new state.
    pub fn write_unmount_record(&self, st: &LogState) -> Result<LogState> {
        let mut body = [0u8; 8];
        body[..2].copy_from_slice(&XLOG_UNMOUNT_TYPE.to_le_bytes());
        let mut data = Vec::new();
        op(&mut data, 0xb0c0_d0d0, XFS_LOG, XLOG_UNMOUNT_TRANS, &body);
        let lsn = self.next_lsn(st)?;
        self.put_record(
            (st.head_blk, lsn.cycle()),
            lsn,
            st.last_record_blk,
            data,
            1,
            XLOG_HEADER_CYCLE_SIZE,
        )?;
        self.state()
    }

    /// Writes `data` (op headers and bodies, `nops` of them) as one record at block `pos.0`
    /// of cycle `pos.1`, with tail `tail` and previous record `prev`; returns where the next
    /// record goes.
    fn put_record(
        &self,
        pos: (u64, u32),
        tail: Lsn,
        prev: u64,
        mut data: Vec<u8>,
        nops: u32,
        h_size: u32,
    ) -> Result<(u64, u32)> {
        let h_len = data.len();
        if h_len > XLOG_MAX_RECORD_BSIZE as usize {
            return Err(Error::unsupported(format!(
                "XFS log transactions over {} KiB (several records) are not supported yet",
                XLOG_MAX_RECORD_BSIZE / 1024
            )));
        }
        data.resize(h_len.div_ceil(BBSIZE).max(1) * BBSIZE, 0);
        if h_len > h_size as usize || h_size > XLOG_MAX_RECORD_BSIZE {
            return Err(Error::invalid("XFS log record larger than its h_size"));
        }
        let hblks = (h_size / XLOG_HEADER_CYCLE_SIZE) as usize;
        let dblks = data.len() / BBSIZE;
        let total = (hblks + dblks) as u64;
        if total >= self.geo.log_bbs / 2 {
            return Err(Error::unsupported(
                "XFS log record larger than half the log",
            ));
        }
        let (blk, cycle) = pos;
        let lsn = Lsn::new(cycle, blk as u32);
        // Header blocks: the record header, then one extended header per further 32 KiB.
        let mut hdrs = vec![vec![0u8; BBSIZE]; hblks];
        {
            let hdr = &mut hdrs[0];
            hdr[0..4].copy_from_slice(&XLOG_HEADER_MAGIC_NUM.to_be_bytes());
            hdr[4..8].copy_from_slice(&cycle.to_be_bytes());
            hdr[8..12].copy_from_slice(&2u32.to_be_bytes());
            hdr[12..16].copy_from_slice(&(h_len as u32).to_be_bytes());
            hdr[16..24].copy_from_slice(&lsn.0.to_be_bytes());
            // The log was clean: nothing older than this transaction's first record is needed.
            hdr[24..32].copy_from_slice(&tail.0.to_be_bytes());
            hdr[36..40].copy_from_slice(&(prev as u32).to_be_bytes());
            hdr[40..44].copy_from_slice(&nops.to_be_bytes());
            hdr[300..304].copy_from_slice(&XLOG_FMT_LINUX_LE.to_be_bytes());
            hdr[304..320].copy_from_slice(&self.geo.uuid);
            hdr[320..324].copy_from_slice(&h_size.to_be_bytes());
        }
        for x in hdrs.iter_mut().skip(1) {
            x[0..4].copy_from_slice(&cycle.to_be_bytes());
        }
        // Each data sector's first word moves into the cycle data; the cycle takes its place.
        let per = XLOG_HEADER_CYCLE_SIZE as usize / BBSIZE;
        for (i, sector) in data.chunks_mut(BBSIZE).enumerate() {
            let (h, slot) = (i / per, i % per);
            let at = if h == 0 { 44 + 4 * slot } else { 4 + 4 * slot };
            hdrs[h][at..at + 4].copy_from_slice(&sector[..4]);
            sector[..4].copy_from_slice(&cycle.to_be_bytes());
        }
        // Blocks that land past the end of the log carry the next cycle.
        let room = (self.geo.log_bbs - blk) as usize;
        let next = cycle
            .checked_add(1)
            .ok_or_else(|| Error::corrupt("XFS log cycle number overflows"))?;
        for k in room..hblks + dblks {
            let w = if k < hblks {
                &mut hdrs[k][..4]
            } else {
                &mut data[(k - hblks) * BBSIZE..][..4]
            };
            w.copy_from_slice(&next.to_be_bytes());
        }
        // The kernel's xlog_cksum covers the extended headers the data needs (by h_len), not
        // every one h_size provides.
        let used = h_len.div_ceil(XLOG_HEADER_CYCLE_SIZE as usize).max(1);
        let exts: Vec<&[u8]> = hdrs[1..used.min(hblks)].iter().map(Vec::as_slice).collect();
        let crc = record_crc(&hdrs[0], &exts, &data[..h_len]);
        hdrs[0][32..36].copy_from_slice(&crc.to_le_bytes());
        let mut image = Vec::with_capacity((hblks + dblks) * BBSIZE);
        for h in &hdrs[1..] {
            image.extend_from_slice(h);
        }
        image.extend_from_slice(&data);
        // Data and extended headers first, the record header last: a torn write leaves no
        // record header pointing at missing data.
        let first = (room - 1).min(image.len() / BBSIZE);
        let base = self.geo.log_offset;
        let (a, b) = image.split_at(first * BBSIZE);
        if !a.is_empty() {
            self.dev.write_at(a, base + (blk + 1) * BBSIZE as u64)?;
        }
        if !b.is_empty() {
            self.dev.write_at(b, base)?;
        }
        self.dev.flush()?;
        self.dev.write_at(&hdrs[0], base + blk * BBSIZE as u64)?;
        self.dev.flush()?;
        let end = blk + total;
        Ok(if end >= self.geo.log_bbs {
            (end - self.geo.log_bbs, next)
        } else {
            (end, cycle)
        })
    }
}
