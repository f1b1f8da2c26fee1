//! Walking the log from tail to head: records unpacked (each sector's first word restored from
//! `h_cycle_data`), op headers (`struct xlog_op_header`) read, and regions reassembled into
//! transactions as the kernel's `xlog_recover_process_data` does.
//!
//! Op headers are big-endian; the regions they carry (transaction header, log item formats)
//! are in the writing host's byte order, which for a Linux x86/arm64 log is little-endian.

use crate::record::{be32, RecordHeader, BBSIZE, XLOG_HEADER_CYCLE_SIZE};
use crate::{Log, LogState, Lsn, OP_HEADER_SIZE, XFS_LOG};
use std::collections::BTreeMap;
use vdisk_block::{Error, Result};

/// `XLOG_START_TRANS`.
pub const XLOG_START_TRANS: u8 = 0x01;
/// `XLOG_COMMIT_TRANS`.
pub const XLOG_COMMIT_TRANS: u8 = 0x02;
/// `XLOG_CONTINUE_TRANS`: this region continues in the next op.
pub const XLOG_CONTINUE_TRANS: u8 = 0x04;
/// `XLOG_WAS_CONT_TRANS`: this op continues the previous region.
pub const XLOG_WAS_CONT_TRANS: u8 = 0x08;
/// `XLOG_END_TRANS`: the end of a continued region.
pub const XLOG_END_TRANS: u8 = 0x10;
/// `XFS_TRANSACTION`: the client id of transaction ops.
pub const XFS_TRANSACTION: u8 = 0x69;

/// Bound on the bytes of open (uncommitted) transactions held at once: more than any log.
const MAX_OPEN_BYTES: usize = crate::superblock::MAX_LOG_BYTES as usize;

/// One transaction read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// `oh_tid`.
    pub tid: u32,
    /// LSN of the record holding the transaction's start.
    pub lsn: Lsn,
    /// The regions in order (the first is the transaction header).
    pub regions: Vec<Vec<u8>>,
    /// True when a commit op was seen.
    pub committed: bool,
}

/// Restores the words the cycle stamping replaced in `data` (`xlog_unpack_data`).
pub fn unpack(h: &RecordHeader, ext: &[u8], data: &mut [u8]) -> Result<()> {
    let per = (XLOG_HEADER_CYCLE_SIZE as usize) / BBSIZE;
    for (i, sector) in data.chunks_mut(BBSIZE).enumerate() {
        let word = if i < per {
            h.h_cycle_data[i]
        } else {
            let j = i / per - 1;
            let o = j * BBSIZE + 4 + 4 * (i % per);
            if o + 4 > ext.len() {
                return Err(Error::corrupt(
                    "XFS log record has too few extended headers",
                ));
            }
            be32(ext, o)
        };
        sector[..4].copy_from_slice(&word.to_be_bytes());
    }
    Ok(())
}

impl Log<'_> {
    /// Reads every transaction between the tail and the head, committed or not, in log order.
    pub fn transactions(&self, st: &LogState) -> Result<Vec<Transaction>> {
        let n = self.geo.log_bbs;
        let mut blk = u64::from(st.tail.block());
        let mut open: BTreeMap<u32, Transaction> = BTreeMap::new();
        let mut done = Vec::new();
        let mut held = 0usize;
        let mut walked = 0u64;
        while blk != st.head_blk {
            let (h, ext, mut data) = self.read_record_parts(blk)?;
            let span = h.header_blocks() + h.data_blocks();
            walked += span;
            if walked > n {
                return Err(Error::corrupt(
                    "XFS log records from tail to head overrun the log",
                ));
            }
            unpack(&h, &ext, &mut data)?;
            let data = &data[..h.h_len as usize];
            let mut off = 0usize;
            for _ in 0..h.h_num_logops {
                if off == data.len() {
                    break;
                }
                if off + OP_HEADER_SIZE > data.len() {
                    return Err(Error::corrupt(format!(
                        "XFS log record at block {blk}: op header runs past the record"
                    )));
                }
                let tid = be32(data, off);
                let len = be32(data, off + 4) as usize;
                let client = data[off + 8];
                let flags = data[off + 9];
                off += OP_HEADER_SIZE;
                let body = data.get(off..off + len).ok_or_else(|| {
                    Error::corrupt(format!(
                        "XFS log record at block {blk}: op of {len} bytes runs past the record"
                    ))
                })?;
                off += len;
                if client == XFS_LOG {
                    continue; // an unmount record
                }
                if client != XFS_TRANSACTION {
                    return Err(Error::corrupt(format!(
                        "XFS log op has unknown client id {client:#x}"
                    )));
                }
                let t = open.entry(tid).or_insert_with(|| Transaction {
                    tid,
                    lsn: h.h_lsn,
                    regions: Vec::new(),
                    committed: false,
                });
                if flags & XLOG_COMMIT_TRANS != 0 {
                    t.committed = true;
                    if let Some(t) = open.remove(&tid) {
                        held = held.saturating_sub(t.regions.iter().map(Vec::len).sum());
                        done.push(t);
                    }
                    continue;
                }
                if flags & XLOG_START_TRANS != 0 && len == 0 {
                    continue;
                }
                held = held.saturating_add(len);
                if held > MAX_OPEN_BYTES {
                    return Err(Error::corrupt(
                        "XFS log holds more open transaction data than fits in a log",
                    ));
                }
                match (flags & XLOG_WAS_CONT_TRANS != 0, t.regions.last_mut()) {
                    (true, Some(last)) => last.extend_from_slice(body),
                    _ => t.regions.push(body.to_vec()),
                }
            }
            blk = (blk + span) % n;
        }
        done.extend(open.into_values());
        Ok(done)
    }
}

/// `XFS_TRANS_HEADER_MAGIC`: "TRAN", the first region of every transaction.
pub const XFS_TRANS_HEADER_MAGIC: u32 = 0x5452_414e;

/// Log item types (`XFS_LI_*` in `xfs_log_format.h`), with the names `xfs_logprint -t` uses.
pub const ITEM_TYPES: &[(u16, &str)] = &[
    (0x1236, "EFI"),
    (0x1237, "EFD"),
    (0x1238, "IUNLINK"),
    (0x123b, "INO"),
    (0x123c, "BUF"),
    (0x123d, "DQUOT"),
    (0x123e, "QOFF"),
    (0x123f, "ICR"),
    (0x1240, "RUI"),
    (0x1241, "RUD"),
    (0x1242, "CUI"),
    (0x1243, "CUD"),
    (0x1244, "BUI"),
    (0x1245, "BUD"),
    (0x1246, "ATTRI"),
    (0x1247, "ATTRD"),
    (0x1248, "XMI"),
    (0x1249, "XMD"),
];

/// One log item of a transaction: its type and its regions (the format structure first).
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    /// The `XFS_LI_*` type.
    pub kind: u16,
    /// The regions of the item, the item format structure first.
    pub regions: &'a [Vec<u8>],
}

impl Item<'_> {
    /// The item type's short name, or None for a type we do not know.
    pub fn name(&self) -> Option<&'static str> {
        ITEM_TYPES
            .iter()
            .find(|(k, _)| *k == self.kind)
            .map(|(_, n)| *n)
    }
}

fn le16(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(o)?, *b.get(o + 1)?]))
}

impl Transaction {
    /// Splits the regions after the transaction header into items, by each format's
    /// `ilf_size` (the region count at offset 2), as `xlog_recover_add_to_trans` does.
    pub fn items(&self) -> Result<Vec<Item<'_>>> {
        let Some(first) = self.regions.first() else {
            return Ok(Vec::new());
        };
        let magic = first
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if magic != Some(XFS_TRANS_HEADER_MAGIC) {
            return Err(Error::corrupt(format!(
                "XFS log transaction {:#x} has no transaction header",
                self.tid
            )));
        }
        let mut items = Vec::new();
        let mut i = 1;
        while i < self.regions.len() {
            let r = &self.regions[i];
            let (Some(kind), Some(size)) = (le16(r, 0), le16(r, 2)) else {
                return Err(Error::corrupt(format!(
                    "XFS log transaction {:#x}: item format too short",
                    self.tid
                )));
            };
            // ilf_size counts the format region itself; 0 is nonsense, treat as 1 region.
            let size = usize::from(size.max(1));
            let end = i.saturating_add(size).min(self.regions.len());
            items.push(Item {
                kind,
                regions: &self.regions[i..end],
            });
            i = end;
        }
        Ok(items)
    }
}
