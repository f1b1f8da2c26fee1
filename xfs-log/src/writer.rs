//! Writing one transaction of buffer log items as a log record the kernel's recovery replays,
//! without writing the buffers home: a mount (ours or the kernel's) applies it.
//!
//! The record has the layout the kernel writes from its CIL: a start op, the transaction
//! header, one buffer log format (`xfs_buf_log_format`) per buffer followed by its dirty
//! regions in 128-byte chunks (`XFS_BLF_CHUNK`), and a commit op. Each data sector's first
//! word is moved into `h_cycle_data` and replaced by the cycle, and the CRC covers the whole.

use crate::record::{record_crc, Lsn, BBSIZE, XLOG_HEADER_CYCLE_SIZE, XLOG_HEADER_MAGIC_NUM};
use crate::trans::{XFS_TRANSACTION, XFS_TRANS_HEADER_MAGIC, XLOG_COMMIT_TRANS, XLOG_START_TRANS};
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
    /// Appends one committed transaction logging `bufs` at the head of a clean log, and
    /// returns the new state. Buffers are compared with the device to find their dirty chunks;
    /// the device's metadata is not changed.
    pub fn write_buffers(&self, st: &LogState, tid: u32, bufs: &[BufUpdate]) -> Result<LogState> {
        if !st.clean {
            return Err(Error::unsupported(
                "appending to an XFS log that needs recovery",
            ));
        }
        if !self.geo.log_v2 {
            return Err(Error::unsupported("writing v1 XFS logs"));
        }
        let mut data = Vec::new();
        let mut nops = 0u32;
        op(&mut data, tid, XLOG_START_TRANS, &[]);
        let mut th = Vec::new();
        th.extend_from_slice(&XFS_TRANS_HEADER_MAGIC.to_le_bytes());
        th.extend_from_slice(&XFS_TRANS_CHECKPOINT.to_le_bytes());
        th.extend_from_slice(&tid.to_le_bytes());
        th.extend_from_slice(&(bufs.len() as u32).to_le_bytes());
        op(&mut data, tid, 0, &th);
        nops += 2;
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
            op(&mut data, tid, 0, &blf);
            nops += 1;
            for (s, e) in runs {
                op(
                    &mut data,
                    tid,
                    0,
                    &b.data[s * XFS_BLF_CHUNK..e * XFS_BLF_CHUNK],
                );
                nops += 1;
            }
        }
        op(&mut data, tid, XLOG_COMMIT_TRANS, &[]);
        nops += 1;
        let h_len = data.len();
        if h_len > XLOG_HEADER_CYCLE_SIZE as usize {
            return Err(Error::unsupported(
                "XFS log transactions over 32 KiB (extended record headers)",
            ));
        }
        data.resize(h_len.div_ceil(BBSIZE) * BBSIZE, 0);
        let blk = st.head_blk;
        let dblks = (data.len() / BBSIZE) as u64;
        if blk + 1 + dblks > self.geo.log_bbs {
            return Err(Error::unsupported(
                "writing an XFS log record across the end of the log",
            ));
        }
        // A head that wrapped to block 0 starts the next cycle.
        let cycle = if blk == 0 {
            st.head_cycle
                .checked_add(1)
                .ok_or_else(|| Error::corrupt("XFS log cycle number overflows"))?
        } else {
            st.head_cycle
        };
        let lsn = Lsn::new(cycle, blk as u32);
        let mut hdr = vec![0u8; BBSIZE];
        hdr[0..4].copy_from_slice(&XLOG_HEADER_MAGIC_NUM.to_be_bytes());
        hdr[4..8].copy_from_slice(&cycle.to_be_bytes());
        hdr[8..12].copy_from_slice(&2u32.to_be_bytes());
        hdr[12..16].copy_from_slice(&(h_len as u32).to_be_bytes());
        hdr[16..24].copy_from_slice(&lsn.0.to_be_bytes());
        // Nothing older is needed: the log was clean, so the tail is this record.
        hdr[24..32].copy_from_slice(&lsn.0.to_be_bytes());
        hdr[36..40].copy_from_slice(&(st.last_record_blk as u32).to_be_bytes());
        hdr[40..44].copy_from_slice(&nops.to_be_bytes());
        for (i, sector) in data.chunks_mut(BBSIZE).enumerate() {
            hdr[44 + 4 * i..48 + 4 * i].copy_from_slice(&sector[..4]);
            sector[..4].copy_from_slice(&cycle.to_be_bytes());
        }
        hdr[300..304].copy_from_slice(&XLOG_FMT_LINUX_LE.to_be_bytes());
        hdr[304..320].copy_from_slice(&self.geo.uuid);
        hdr[320..324].copy_from_slice(&XLOG_HEADER_CYCLE_SIZE.to_be_bytes());
        let crc = record_crc(&hdr, &[], &data[..h_len]);
        hdr[32..36].copy_from_slice(&crc.to_le_bytes());
        let base = self.geo.log_offset + blk * BBSIZE as u64;
        self.dev.write_at(&data, base + BBSIZE as u64)?;
        self.dev.write_at(&hdr, base)?;
        self.dev.flush()?;
        self.state()
    }
}
