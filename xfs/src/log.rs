//! The log at open: [`replay`] asks the log crate (`vdisk_xfs_log`) whether the log is dirty
//! and replays it into memory if so. [`check_clean`] is the older, self-contained test of a
//! clean log: the head is found by the cycle numbers stamped in every 512-byte log block, and a
//! clean log ends in a record whose only operation is an unmount record.

use std::sync::Arc;

use vdisk_block::{BlockDevice, Error, Result};
use vdisk_xfs_log::recover::ReplayedDevice;

use crate::{be32, Xfs};

/// Log record header magic.
pub const XLOG_HEADER_MAGIC_NUM: u32 = 0xfeed_babe;
/// Op header flag: an unmount record.
pub const XLOG_UNMOUNT_TRANS: u8 = 0x20;
/// The largest log XFS makes (XFS_MAX_LOG_BYTES): bounds what the head search reads.
pub const MAX_LOG_BYTES: u64 = 2 << 30;
/// The message [`check_clean`] gives for a log that needs recovery.
pub const DIRTY: &str = "XFS log is dirty; replay not supported yet";

/// Replays a dirty log of the filesystem on `dev` into memory; None when the log is clean.
/// Items the replay cannot handle are refused by name.
pub fn replay(dev: &Arc<dyn BlockDevice>) -> Result<Option<Arc<ReplayedDevice>>> {
    Ok(ReplayedDevice::replay(dev.clone())?.map(Arc::new))
}

impl Xfs {
    fn log_bb(&self, start: u64, bb: u64, buf: &mut [u8]) -> Result<()> {
        self.read_bytes(buf, start + bb * 512)
    }
}

/// Refuses a filesystem whose log needs recovery.
pub fn check_clean(fs: &Xfs) -> Result<()> {
    let sb = &fs.sb;
    let start = fs.fsb_to_byte(sb.sb_logstart)?;
    let nbb = u64::from(sb.sb_logblocks) * u64::from(sb.sb_blocksize) / 512;
    if !(2..=MAX_LOG_BYTES / 512).contains(&nbb) {
        return Err(Error::corrupt(format!(
            "XFS log: {} blocks is not a log size XFS makes",
            sb.sb_logblocks
        )));
    }
    // The whole log lies inside the filesystem.
    fs.fsb_to_byte(sb.sb_logstart + u64::from(sb.sb_logblocks) - 1)?;
    // Read the cycle number of every block, a chunk at a time.
    let chunk = 2048u64;
    let mut cycles = Vec::with_capacity(nbb as usize);
    let mut buf = vec![0u8; (chunk * 512) as usize];
    let mut bb = 0;
    while bb < nbb {
        let n = chunk.min(nbb - bb);
        let b = &mut buf[..(n * 512) as usize];
        fs.log_bb(start, bb, b)?;
        for k in 0..n as usize {
            // Every block starts with its cycle, except record headers (magic, then cycle).
            let w = be32(b, k * 512);
            cycles.push(if w == XLOG_HEADER_MAGIC_NUM {
                be32(b, k * 512 + 4)
            } else {
                w
            });
        }
        bb += n;
    }
    let first = cycles[0];
    if first == 0 {
        // Never written: mkfs writes an unmount record, so this is not an XFS log we know.
        return Err(Error::corrupt("XFS log: block 0 has cycle 0"));
    }
    // The head is the first block whose cycle is below block 0's (or the end of the log).
    let head = cycles
        .iter()
        .position(|&c| c != first)
        .unwrap_or(cycles.len()) as u64;
    // Find the last record header before the head.
    let mut hb = [0u8; 512];
    let mut b = head;
    let mut found = None;
    for _ in 0..nbb {
        b = if b == 0 { nbb - 1 } else { b - 1 };
        fs.log_bb(start, b, &mut hb)?;
        if be32(&hb, 0) == XLOG_HEADER_MAGIC_NUM {
            found = Some(b);
            break;
        }
    }
    let rec = found.ok_or_else(|| Error::corrupt("XFS log: no record header found"))?;
    let version = be32(&hb, 8);
    let num_logops = be32(&hb, 40);
    let h_size = be32(&hb, 320);
    let hdr_bbs = if version & 2 != 0 && h_size > 32768 {
        u64::from(h_size.div_ceil(32768))
    } else {
        1
    };
    let len = u64::from(be32(&hb, 12));
    let mut ob = [0u8; 512];
    fs.log_bb(start, (rec + hdr_bbs) % nbb, &mut ob)?;
    let end = (rec + hdr_bbs + len.div_ceil(512)) % nbb;
    if num_logops == 1 && ob[9] & XLOG_UNMOUNT_TRANS != 0 && end == head % nbb {
        Ok(())
    } else {
        Err(Error::unsupported(DIRTY))
    }
}
