//! The XFS metadata log, read over any [`BlockDevice`]: where its head and tail are, and whether
//! it is clean (ends in an unmount record) or holds transactions a mount must replay.
//!
//! ```text
//!   data device:  | sb | ... AGs ... | internal log (sb_logstart, sb_logblocks) | ... |
//!   log:          [rec hdr|data...][rec hdr|data...] ... head -> older cycle ...
//!                  every 512-byte block starts with its cycle number (h_cycle_data keeps
//!                  the words that were there)
//! ```
//!
//! The head is found as the kernel's `xlog_find_head` does: the cycle number of the first and
//! last basic blocks, then a binary search for the block where the cycle drops. The last record
//! header before the head names the tail (`h_tail_lsn`); a log whose last record is a lone
//! unmount record right before the head is clean.
//!
//! The API, in the order an engine uses it:
//!
//! - [`Log::open`] reads the superblock's log fields ([`LogGeometry`]); [`Log::state`] finds
//!   head and tail ([`LogState`], with `clean`).
//! - [`Log::transactions`] walks tail to head and returns every [`Transaction`] (committed or
//!   not); [`Transaction::items`] splits one into log items.
//! - [`recover::recover`] replays the committed ones onto a target: a [`recover::Overlay`]
//!   (read-only open: the base device is never written) or the device itself (write home),
//!   after which [`Log::write_unmount`] makes the log clean. Superblock buffers and v3 inode
//!   items so far; other v5 buffer types (their CRCs are not recomputed yet), ICREATE, EFI/EFD
//!   and the other items are refused by name. [`recover::replay`] replays given transactions.
//! - [`Log::write_buffers`] logs one transaction of [`writer::BufUpdate`]s at the head of a
//!   clean log without writing them home; after the caller writes them home,
//!   [`Log::write_unmount`] moves the tail past them.
//!
//! ```
//! use vdisk_block::{BlockDevice, MemDevice};
//! use vdisk_xfs_log::recover::Overlay;
//!
//! let base = MemDevice::new(4096);
//! let ov = Overlay::new(&base);
//! ov.write_at(b"replayed", 1020).unwrap(); // spans sectors 1 and 2
//! let mut b = [0u8; 8];
//! ov.read_at(&mut b, 1020).unwrap();
//! assert_eq!(&b, b"replayed");
//! base.read_at(&mut b, 1020).unwrap();
//! assert_eq!(b, [0; 8]); // the base is untouched
//! assert_eq!(ov.dirty_sectors(), vec![1, 2]);
//! ```
//!
//! This crate parses the superblock fields it needs itself ([`LogGeometry`]), so it does not
//! depend on the XFS reader.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod crc;
pub mod record;
pub mod recover;
pub mod superblock;
pub mod trans;
pub mod txwrite;
pub mod writer;

pub use record::{Lsn, RecordHeader};
pub use superblock::LogGeometry;
pub use trans::Transaction;

use record::{be32, record_crc, BBSIZE, XLOG_HEADER_MAGIC_NUM};
use vdisk_block::{BlockDevice, Error, Result};

/// `XLOG_UNMOUNT_TRANS`: the op-header flag of an unmount record.
pub const XLOG_UNMOUNT_TRANS: u8 = 0x20;
/// `XFS_LOG`: the client id of log-internal ops (unmount records).
pub const XFS_LOG: u8 = 0xaa;
/// Size of `struct xlog_op_header`.
pub const OP_HEADER_SIZE: usize = 12;

/// Where the log's head and tail are, and whether it needs recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogState {
    /// The basic block the next record would be written at.
    pub head_blk: u64,
    /// The cycle of the last record written (the head's cycle).
    pub head_cycle: u32,
    /// The basic block of the last record header before the head.
    pub last_record_blk: u64,
    /// The last record's header.
    pub last_record: RecordHeader,
    /// The oldest LSN still needed: where recovery starts.
    pub tail: Lsn,
    /// True when the log ends in an unmount record and nothing needs replay.
    pub clean: bool,
}

/// The log of one XFS filesystem on a device.
pub struct Log<'a> {
    dev: &'a dyn BlockDevice,
    geo: LogGeometry,
}

impl<'a> Log<'a> {
    /// Reads the superblock of `dev` and opens its internal log.
    pub fn open(dev: &'a dyn BlockDevice) -> Result<Log<'a>> {
        let geo = LogGeometry::read(dev)?;
        Ok(Log { dev, geo })
    }

    /// The geometry taken from the superblock.
    pub fn geometry(&self) -> &LogGeometry {
        &self.geo
    }

    fn read_bbs(&self, blk: u64, buf: &mut [u8]) -> Result<()> {
        let n = (buf.len() / BBSIZE) as u64;
        if blk.checked_add(n).is_none_or(|e| e > self.geo.log_bbs) {
            return Err(Error::corrupt(format!(
                "XFS log block {blk} (+{n}) lies outside the log"
            )));
        }
        self.dev
            .read_at(buf, self.geo.log_offset + blk * BBSIZE as u64)
    }

    /// The cycle number of basic block `blk` (`xlog_get_cycle`): a header's `h_cycle`, or the
    /// stamped first word of a data block.
    pub fn cycle_of(&self, blk: u64) -> Result<u32> {
        let mut b = [0u8; BBSIZE];
        self.read_bbs(blk, &mut b)?;
        Ok(if be32(&b, 0) == XLOG_HEADER_MAGIC_NUM {
            be32(&b, 4)
        } else {
            be32(&b, 0)
        })
    }

    /// Finds the head: the first block whose cycle is older than block 0's.
    pub fn find_head(&self) -> Result<(u64, u32)> {
        let last = self.geo.log_bbs - 1;
        let first_cycle = self.cycle_of(0)?;
        let last_cycle = self.cycle_of(last)?;
        if first_cycle == 0 {
            return Err(Error::corrupt("the XFS log is empty (block 0 has cycle 0)"));
        }
        if first_cycle == last_cycle {
            // The whole log carries one cycle: the head wrapped to block 0 exactly.
            return Ok((0, first_cycle));
        }
        if last_cycle.checked_add(1) != Some(first_cycle) && last_cycle != 0 {
            return Err(Error::corrupt(format!(
                "XFS log cycles {first_cycle} at the start and {last_cycle} at the end cannot be"
            )));
        }
        // Invariant: cycle(lo) == first_cycle, cycle(hi) != first_cycle. At most 32 rounds.
        let (mut lo, mut hi) = (0u64, last);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.cycle_of(mid)? == first_cycle {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok((hi, first_cycle))
    }

    /// Reads the record header at `blk` and checks its CRC (v5 logs) and UUID.
    pub fn read_record(&self, blk: u64) -> Result<(RecordHeader, Vec<u8>)> {
        let (h, _, data) = self.read_record_parts(blk)?;
        Ok((h, data))
    }

    /// As [`Log::read_record`], also returning the extended header blocks.
    pub(crate) fn read_record_parts(&self, blk: u64) -> Result<(RecordHeader, Vec<u8>, Vec<u8>)> {
        let mut hb = vec![0u8; BBSIZE];
        self.read_bbs(blk, &mut hb)?;
        let h = RecordHeader::parse(&hb, blk)?;
        let at = self.geo.log_offset + blk * BBSIZE as u64;
        if h.h_fs_uuid != self.geo.uuid {
            return Err(Error::corrupt_at(
                at,
                "XFS log record belongs to another filesystem (UUID)",
            ));
        }
        let hblks = h.header_blocks();
        let mut ext = vec![0u8; (hblks as usize - 1) * BBSIZE];
        let data_start = (blk + hblks) % self.geo.log_bbs;
        if hblks > 1 {
            self.read_wrapped(blk + 1, &mut ext)?;
        }
        let mut data = vec![0u8; h.data_blocks() as usize * BBSIZE];
        self.read_wrapped(data_start, &mut data)?;
        // mkfs.xfs writes its unmount record with h_crc 0 and the kernel accepts it (it checks
        // CRCs only over records it replays); a zero CRC is taken as "not computed".
        if self.geo.v5 && h.h_crc != 0 {
            // xlog_cksum covers the extended headers h_len needs, not all h_size provides.
            let used = (h.h_len as usize)
                .div_ceil(record::XLOG_HEADER_CYCLE_SIZE as usize)
                .max(1)
                - 1;
            let exts: Vec<&[u8]> = ext.chunks(BBSIZE).take(used).collect();
            let want = record_crc(&hb, &exts, &data[..h.h_len as usize]);
            if want != h.h_crc {
                return Err(Error::corrupt_at(
                    at,
                    format!(
                        "XFS log record CRC mismatch (stored {:#x}, computed {want:#x})",
                        h.h_crc
                    ),
                ));
            }
        }
        Ok((h, ext, data))
    }

    /// Reads `buf.len()` bytes of log from `blk`, wrapping at the log's end.
    fn read_wrapped(&self, blk: u64, buf: &mut [u8]) -> Result<()> {
        let blk = blk % self.geo.log_bbs;
        let room = ((self.geo.log_bbs - blk) as usize).saturating_mul(BBSIZE);
        if buf.len() <= room {
            self.read_bbs(blk, buf)
        } else {
            let (a, b) = buf.split_at_mut(room);
            self.read_bbs(blk, a)?;
            if b.len() as u64 > self.geo.log_bbs * BBSIZE as u64 {
                return Err(Error::corrupt("XFS log record is longer than the log"));
            }
            self.read_bbs(0, b)
        }
    }

    /// Searches back from `head` (wrapping once around the log) for the last record header.
    fn find_last_record(&self, head: u64) -> Result<u64> {
        let n = self.geo.log_bbs;
        let mut blk = head;
        let mut b = [0u8; BBSIZE];
        for _ in 0..n {
            blk = if blk == 0 { n - 1 } else { blk - 1 };
            self.read_bbs(blk, &mut b)?;
            if be32(&b, 0) == XLOG_HEADER_MAGIC_NUM {
                return Ok(blk);
            }
        }
        Err(Error::corrupt("the XFS log holds no record header"))
    }

    /// Finds head and tail and decides whether the log is clean.
    pub fn state(&self) -> Result<LogState> {
        let (head_blk, head_cycle) = self.find_head()?;
        let last_record_blk = self.find_last_record(head_blk)?;
        let (h, data) = self.read_record(last_record_blk)?;
        let after = (last_record_blk + h.header_blocks() + h.data_blocks()) % self.geo.log_bbs;
        let mut clean = false;
        if after == head_blk && h.h_num_logops == 1 && data.len() >= OP_HEADER_SIZE {
            let clientid = data[8];
            let flags = data[9];
            clean = clientid == XFS_LOG && flags & XLOG_UNMOUNT_TRANS != 0;
        }
        let tail = if clean {
            Lsn::new(head_cycle, head_blk as u32)
        } else {
            h.h_tail_lsn
        };
        if u64::from(tail.block()) >= self.geo.log_bbs {
            return Err(Error::corrupt(format!(
                "XFS log tail {tail} lies outside the log"
            )));
        }
        Ok(LogState {
            head_blk,
            head_cycle,
            last_record_blk,
            last_record: h,
            tail,
            clean,
        })
    }
}
