//! Replaying committed transactions: into an in-memory [`Overlay`] for a read-only open, or
//! written home followed by an unmount record so the log is clean again.
//!
//! Buffer items are replayed as `xlog_recover_do_reg_buffer` does (each dirty-map run filled
//! from the next region), with cancellation as the kernel's two passes do: a buffer with a
//! cancel record later in the log is not replayed before that record. On v5 filesystems a
//! superblock buffer whose on-disk LSN is at or past the transaction's is skipped, and its LSN
//! and CRC are set as the kernel's write verifier does; other v5 buffer types are refused (their
//! CRCs would need each type's layout). Inode items (v3 cores) are converted from the logged
//! host-order `xfs_log_dinode` to the big-endian dinode, forks copied, LSN and CRC set, and
//! skipped when the on-disk inode's LSN is newer. Any other item type (EFI/EFD, ICREATE, ...)
//! is refused by name: not replayed yet.

use crate::record::{Lsn, BBSIZE, XLOG_HEADER_MAGIC_NUM};
use crate::trans::Transaction;
use crate::writer::{XFS_BLF_CHUNK, XFS_LI_BUF, XLOG_FMT_LINUX_LE};
use crate::{Log, LogState, XFS_LOG, XLOG_UNMOUNT_TRANS};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use vdisk_block::{BlockDevice, Error, Result};

/// `XFS_BLF_CANCEL`: the buffer was freed; earlier log items for it must not be replayed.
pub const XFS_BLF_CANCEL: u16 = 0x2;
/// `XLOG_UNMOUNT_TYPE`: the payload of an unmount record.
pub const XLOG_UNMOUNT_TYPE: u16 = 0x556e;
/// Offset of `sb_lsn` in the superblock.
const SB_LSN_OFFSET: usize = 240;
/// Offset of `sb_crc` in the superblock.
const SB_CRC_OFFSET: usize = 224;

/// A device whose writes land in memory, over a device that is only read.
pub struct Overlay<'a> {
    base: &'a dyn BlockDevice,
    sectors: Mutex<BTreeMap<u64, Box<[u8; BBSIZE]>>>,
}

impl<'a> Overlay<'a> {
    /// An empty overlay over `base`.
    pub fn new(base: &'a dyn BlockDevice) -> Overlay<'a> {
        Overlay {
            base,
            sectors: Mutex::new(BTreeMap::new()),
        }
    }

    /// The sectors (by 512-byte index) the overlay holds, in order.
    pub fn dirty_sectors(&self) -> Vec<u64> {
        self.sectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }
}

impl BlockDevice for Overlay<'_> {
    fn size(&self) -> u64 {
        self.base.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.base.read_at(buf, offset)?;
        let map = self.sectors.lock().unwrap_or_else(|e| e.into_inner());
        let end = offset + buf.len() as u64;
        for (&s, data) in map.range(offset / BBSIZE as u64..end.div_ceil(BBSIZE as u64)) {
            let so = s * BBSIZE as u64;
            let from = offset.max(so);
            let to = end.min(so + BBSIZE as u64);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&data[(from - so) as usize..(to - so) as usize]);
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size())
            .ok_or_else(|| Error::invalid("overlay write past the end of the device"))?;
        let mut map = self.sectors.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = offset / BBSIZE as u64;
        while s * (BBSIZE as u64) < end {
            let so = s * BBSIZE as u64;
            let sec = match map.entry(s) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let mut sec = Box::new([0u8; BBSIZE]);
                    self.base.read_at(&mut sec[..], so)?;
                    v.insert(sec)
                }
            };
            let from = offset.max(so);
            let to = end.min(so + BBSIZE as u64);
            sec[(from - so) as usize..(to - so) as usize]
                .copy_from_slice(&buf[(from - offset) as usize..(to - offset) as usize]);
            s += 1;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

fn le16(b: &[u8], o: usize) -> Result<u16> {
    b.get(o..o + 2)
        .map(|x| u16::from_le_bytes([x[0], x[1]]))
        .ok_or_else(|| Error::corrupt("XFS buffer log format is truncated"))
}
fn le32(b: &[u8], o: usize) -> Result<u32> {
    b.get(o..o + 4)
        .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
        .ok_or_else(|| Error::corrupt("XFS buffer log format is truncated"))
}
fn le64(b: &[u8], o: usize) -> Result<u64> {
    Ok(u64::from(le32(b, o)?) | (u64::from(le32(b, o + 4)?) << 32))
}

/// A decoded `xfs_buf_log_format`.
struct Blf {
    flags: u16,
    len_bbs: u16,
    blkno: u64,
    map: Vec<u32>,
}

fn parse_blf(r: &[u8]) -> Result<Blf> {
    let map_size = le32(r, 16)? as usize;
    if map_size > 17 {
        return Err(Error::corrupt(format!(
            "XFS buffer log format has a dirty map of {map_size} words"
        )));
    }
    let map = (0..map_size)
        .map(|i| le32(r, 20 + 4 * i))
        .collect::<Result<_>>()?;
    Ok(Blf {
        flags: le16(r, 4)?,
        len_bbs: le16(r, 6)?,
        blkno: le64(r, 8)?,
        map,
    })
}

/// `XFS_LI_INODE`.
pub const XFS_LI_INODE: u16 = 0x123b;
const XFS_DINODE_MAGIC: u16 = 0x494e;
const XFS_ILOG_CORE: u32 = 0x001;
const XFS_ILOG_DDATA: u32 = 0x002;
const XFS_ILOG_DEXT: u32 = 0x004;
const XFS_ILOG_DBROOT: u32 = 0x008;
const XFS_ILOG_DEV: u32 = 0x010;
const XFS_ILOG_ADATA: u32 = 0x040;
const XFS_ILOG_AEXT: u32 = 0x080;
const XFS_ILOG_ABROOT: u32 = 0x100;
const XFS_DIFLAG2_BIGTIME: u64 = 1 << 3;
/// `sizeof(struct xfs_log_dinode)` for v3 inodes, also the v3 dinode's core size.
const LOG_DINODE_SIZE: usize = 176;
/// Scalar fields of `struct xfs_log_dinode` (host order) and `struct xfs_dinode` (big-endian),
/// as (offset, width); timestamps (32, 40, 48, 144) and the UUID are handled apart.
const DINODE_SCALARS: &[(usize, usize)] = &[
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
];

/// Converts a logged v3 inode core (little-endian host order) to the on-disk layout.
fn log_dinode_to_disk(from: &[u8], to: &mut [u8], lsn: Lsn) {
    for &(o, w) in DINODE_SCALARS {
        let mut f = from[o..o + w].to_vec();
        f.reverse();
        to[o..o + w].copy_from_slice(&f);
    }
    let flags2 = u64::from_le_bytes(from[120..128].try_into().unwrap_or([0; 8]));
    for o in [32, 40, 48, 144] {
        if flags2 & XFS_DIFLAG2_BIGTIME != 0 {
            let mut f = from[o..o + 8].to_vec();
            f.reverse();
            to[o..o + 8].copy_from_slice(&f);
        } else {
            // struct xfs_log_legacy_timestamp: two host-order int32 (seconds, nanoseconds).
            for h in [o, o + 4] {
                let mut f = from[h..h + 4].to_vec();
                f.reverse();
                to[h..h + 4].copy_from_slice(&f);
            }
        }
    }
    to[132..144].copy_from_slice(&from[132..144]);
    to[160..176].copy_from_slice(&from[160..176]);
    // The logged LSN is not recovered: the inode takes the recovering transaction's.
    to[112..120].copy_from_slice(&lsn.0.to_be_bytes());
}

/// Replays one inode item (v3 inodes) as `xlog_recover_inode_commit_pass2` does. Returns
/// false when the item is skipped (its buffer cancelled, or the on-disk inode is newer).
fn replay_inode(
    regions: &[Vec<u8>],
    lsn: Lsn,
    inodesize: u16,
    cancels: &HashMap<(u64, u16), u32>,
    target: &dyn BlockDevice,
) -> Result<bool> {
    let ilf = &regions[0];
    if ilf.len() != 56 {
        return Err(Error::unsupported(format!(
            "XFS inode log format of {} bytes (32-bit hosts' layout)",
            ilf.len()
        )));
    }
    let fields = le32(ilf, 4)?;
    let asize = usize::from(le16(ilf, 8)?);
    let dsize = usize::from(le16(ilf, 10)?);
    let ino = le64(ilf, 16)?;
    let rdev = le32(ilf, 24)?;
    let blkno = le64(ilf, 40)?;
    let len = le32(ilf, 48)?;
    let boffset = le32(ilf, 52)? as usize;
    if fields & (XFS_ILOG_DBROOT | XFS_ILOG_ABROOT) != 0 {
        return Err(Error::unsupported(
            "XFS log recovery of B+tree fork roots is not supported yet",
        ));
    }
    let len16 =
        u16::try_from(len).map_err(|_| Error::corrupt("XFS inode item buffer length is bad"))?;
    if cancels.get(&(blkno, len16)).is_some_and(|&n| n > 0) {
        return Ok(false);
    }
    let isize = usize::from(inodesize);
    let blen = usize::from(len16) * BBSIZE;
    if isize < LOG_DINODE_SIZE || boffset.checked_add(isize).is_none_or(|e| e > blen) {
        return Err(Error::corrupt(format!(
            "XFS inode item for inode {ino} lies outside its buffer"
        )));
    }
    let core = regions
        .get(1)
        .filter(|r| r.len() == LOG_DINODE_SIZE)
        .ok_or_else(|| Error::corrupt(format!("XFS inode item for inode {ino} has no v3 core")))?;
    if le16(core, 0)? != XFS_DINODE_MAGIC || core[4] != 3 {
        return Err(Error::unsupported(format!(
            "XFS log recovery of inode {ino}: only v3 inode cores"
        )));
    }
    let off = blkno
        .checked_mul(BBSIZE as u64)
        .and_then(|o| o.checked_add(boffset as u64))
        .ok_or_else(|| Error::corrupt("XFS inode address overflows"))?;
    let mut di = vec![0u8; isize];
    target.read_at(&mut di, off)?;
    if u16::from_be_bytes([di[0], di[1]]) != XFS_DINODE_MAGIC {
        return Err(Error::corrupt(format!(
            "XFS inode {ino}: the inode buffer has no inode magic"
        )));
    }
    let on_disk = Lsn(crate::record::be64(&di, 112));
    if on_disk.0 != 0 && on_disk.0 != u64::MAX && on_disk >= lsn {
        return Ok(false);
    }
    let _ = XFS_ILOG_CORE;
    log_dinode_to_disk(core, &mut di, lsn);
    let mut next = 2;
    let lit = isize - LOG_DINODE_SIZE;
    if dsize > 0 && fields & (XFS_ILOG_DDATA | XFS_ILOG_DEXT) != 0 {
        let r = regions
            .get(next)
            .ok_or_else(|| Error::corrupt("XFS inode item lacks its data fork"))?;
        next += 1;
        if dsize > lit || r.len() < dsize {
            return Err(Error::corrupt(format!(
                "XFS inode {ino}: data fork of {dsize} bytes does not fit"
            )));
        }
        di[LOG_DINODE_SIZE..LOG_DINODE_SIZE + dsize].copy_from_slice(&r[..dsize]);
    } else if fields & XFS_ILOG_DEV != 0 {
        di[LOG_DINODE_SIZE..LOG_DINODE_SIZE + 4].copy_from_slice(&rdev.to_be_bytes());
    }
    if asize > 0 && fields & (XFS_ILOG_ADATA | XFS_ILOG_AEXT) != 0 {
        let r = regions
            .get(next)
            .ok_or_else(|| Error::corrupt("XFS inode item lacks its attr fork"))?;
        let at = LOG_DINODE_SIZE + usize::from(di[82]) * 8;
        if at + asize > isize || r.len() < asize {
            return Err(Error::corrupt(format!(
                "XFS inode {ino}: attr fork of {asize} bytes does not fit"
            )));
        }
        di[at..at + asize].copy_from_slice(&r[..asize]);
    }
    di[100..104].fill(0);
    let crc = crate::crc::crc32c(&di);
    di[100..104].copy_from_slice(&crc.to_le_bytes());
    target.write_at(&di, off)?;
    Ok(true)
}

/// What [`recover`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Committed transactions replayed.
    pub transactions: usize,
    /// Buffer items applied.
    pub buffers: usize,
    /// Inode items applied.
    pub inodes: usize,
    /// Buffer and inode items skipped: cancelled, or older than the buffer on disk.
    pub skipped: usize,
}

/// Replays every committed transaction between tail and head of `log` onto `target`, which
/// reads as the filesystem (an [`Overlay`] over the log's device, or the device itself to
/// write home).
pub fn recover(log: &Log<'_>, st: &LogState, target: &dyn BlockDevice) -> Result<RecoveryStats> {
    if st.clean {
        return Ok(RecoveryStats::default());
    }
    let txs: Vec<Transaction> = log
        .transactions(st)?
        .into_iter()
        .filter(|t| t.committed)
        .collect();
    let g = log.geometry();
    replay(&txs, g.v5, g.sectsize, g.inodesize, target)
}

/// Replays committed transactions `txs` (in log order) onto `target`; `v5` and `sectsize` come
/// from the superblock. [`recover`] calls it with the log's transactions.
pub fn replay(
    txs: &[Transaction],
    v5: bool,
    sectsize: u16,
    inodesize: u16,
    target: &dyn BlockDevice,
) -> Result<RecoveryStats> {
    let mut stats = RecoveryStats::default();
    // Pass 1: count cancel records per buffer.
    let mut cancels: HashMap<(u64, u16), u32> = HashMap::new();
    for t in txs {
        for it in t.items()? {
            if it.kind == XFS_LI_BUF {
                let b = parse_blf(&it.regions[0])?;
                if b.flags & XFS_BLF_CANCEL != 0 {
                    *cancels.entry((b.blkno, b.len_bbs)).or_default() += 1;
                }
            } else if !(it.kind == XFS_LI_INODE && v5) {
                return Err(Error::unsupported(format!(
                    "XFS log recovery of {} items is not supported yet",
                    it.name().unwrap_or("unknown")
                )));
            }
        }
    }
    // Pass 2: replay in log order.
    for t in txs {
        for it in t.items()? {
            if it.kind == XFS_LI_INODE {
                if replay_inode(it.regions, t.lsn, inodesize, &cancels, target)? {
                    stats.inodes += 1;
                } else {
                    stats.skipped += 1;
                }
                continue;
            }
            let b = parse_blf(&it.regions[0])?;
            if let Some(n) = cancels.get_mut(&(b.blkno, b.len_bbs)) {
                if *n > 0 {
                    if b.flags & XFS_BLF_CANCEL != 0 {
                        *n -= 1;
                    }
                    stats.skipped += 1;
                    continue;
                }
            }
            if b.flags & XFS_BLF_CANCEL != 0 {
                stats.skipped += 1;
                continue;
            }
            let blft = b.flags >> crate::writer::XFS_BLFT_SHIFT;
            if v5 && blft != crate::writer::XFS_BLFT_SB_BUF {
                // The kernel logs v5 buffers with stale CRCs and LSNs and lets each type's write
                // verifier fix them; only the superblock's is done here so far.
                return Err(Error::unsupported(format!(
                    "XFS log recovery of buffers of type {blft} (CRC recomputation) is not supported yet"
                )));
            }
            let len = usize::from(b.len_bbs) * BBSIZE;
            let off = b
                .blkno
                .checked_mul(BBSIZE as u64)
                .ok_or_else(|| Error::corrupt("XFS buffer address overflows"))?;
            let mut buf = vec![0u8; len];
            target.read_at(&mut buf, off)?;
            if v5
                && b.blkno == 0
                && buf.get(..4) == Some(&crate::superblock::XFS_SB_MAGIC.to_be_bytes()[..])
            {
                let on_disk = Lsn(crate::record::be64(&buf, SB_LSN_OFFSET));
                if on_disk.0 != 0 && on_disk.0 != u64::MAX && on_disk >= t.lsn {
                    stats.skipped += 1;
                    continue;
                }
            }
            let chunks = len / XFS_BLF_CHUNK;
            let mut region = 1;
            let mut c = 0;
            while c < chunks && c / 32 < b.map.len() {
                if b.map[c / 32] & (1 << (c % 32)) == 0 {
                    c += 1;
                    continue;
                }
                let s = c;
                while c < chunks && c / 32 < b.map.len() && b.map[c / 32] & (1 << (c % 32)) != 0 {
                    c += 1;
                }
                let data = it.regions.get(region).ok_or_else(|| {
                    Error::corrupt(format!(
                        "XFS buffer item for daddr {} has fewer regions than its map",
                        b.blkno
                    ))
                })?;
                region += 1;
                let want = (c - s) * XFS_BLF_CHUNK;
                let n = want.min(data.len());
                buf[s * XFS_BLF_CHUNK..s * XFS_BLF_CHUNK + n].copy_from_slice(&data[..n]);
            }
            if v5 && b.blkno == 0 && buf.len() >= usize::from(sectsize) {
                // As the kernel's superblock write verifier: stamp the LSN, recompute the CRC
                // over the sector with the CRC field as zero (stored little-endian).
                buf[SB_LSN_OFFSET..SB_LSN_OFFSET + 8].copy_from_slice(&t.lsn.0.to_be_bytes());
                let sect = usize::from(sectsize).max(BBSIZE);
                buf[SB_CRC_OFFSET..SB_CRC_OFFSET + 4].fill(0);
                let crc = crate::crc::crc32c(&buf[..sect]);
                buf[SB_CRC_OFFSET..SB_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
            }
            target.write_at(&buf, off)?;
            stats.buffers += 1;
        }
        stats.transactions += 1;
    }
    Ok(stats)
}

impl Log<'_> {
    /// Writes an unmount record at the head, so the log reads clean (after replayed metadata
    /// went home). Returns the new state.
    pub fn write_unmount(&self, st: &LogState) -> Result<LogState> {
        let blk = st.head_blk;
        if blk + 2 > self.geo.log_bbs {
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
        let mut data = vec![0u8; BBSIZE];
        // Op header: tid, len 8, client XFS_LOG, flags UNMOUNT; then struct xlog_unmount.
        data[0..4].copy_from_slice(&0xb0c0_d0d0u32.to_be_bytes());
        data[4..8].copy_from_slice(&8u32.to_be_bytes());
        data[8] = XFS_LOG;
        data[9] = XLOG_UNMOUNT_TRANS;
        data[12..14].copy_from_slice(&XLOG_UNMOUNT_TYPE.to_le_bytes());
        let h_len = 20usize;
        let mut hdr = vec![0u8; BBSIZE];
        hdr[0..4].copy_from_slice(&XLOG_HEADER_MAGIC_NUM.to_be_bytes());
        hdr[4..8].copy_from_slice(&cycle.to_be_bytes());
        hdr[8..12].copy_from_slice(&(if self.geo.log_v2 { 2u32 } else { 1 }).to_be_bytes());
        hdr[12..16].copy_from_slice(&(h_len as u32).to_be_bytes());
        hdr[16..24].copy_from_slice(&lsn.0.to_be_bytes());
        hdr[24..32].copy_from_slice(&lsn.0.to_be_bytes());
        hdr[36..40].copy_from_slice(&(st.last_record_blk as u32).to_be_bytes());
        hdr[40..44].copy_from_slice(&1u32.to_be_bytes());
        hdr[44..48].copy_from_slice(&data[..4]);
        data[..4].copy_from_slice(&cycle.to_be_bytes());
        hdr[300..304].copy_from_slice(&XLOG_FMT_LINUX_LE.to_be_bytes());
        hdr[304..320].copy_from_slice(&self.geo.uuid);
        hdr[320..324].copy_from_slice(&crate::record::XLOG_HEADER_CYCLE_SIZE.to_be_bytes());
        let crc = crate::record::record_crc(&hdr, &[], &data[..h_len]);
        hdr[32..36].copy_from_slice(&crc.to_le_bytes());
        let base = self.geo.log_offset + blk * BBSIZE as u64;
        self.dev.write_at(&data, base + BBSIZE as u64)?;
        self.dev.write_at(&hdr, base)?;
        self.dev.flush()?;
        self.state()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdisk_block::MemDevice;

    fn buf_item(daddr: u64, flags: u16, fill: u8) -> Vec<Vec<u8>> {
        let mut blf = Vec::new();
        blf.extend_from_slice(&XFS_LI_BUF.to_le_bytes());
        blf.extend_from_slice(&2u16.to_le_bytes());
        blf.extend_from_slice(
            &(flags | crate::writer::XFS_BLFT_SB_BUF << crate::writer::XFS_BLFT_SHIFT)
                .to_le_bytes(),
        );
        blf.extend_from_slice(&1u16.to_le_bytes());
        blf.extend_from_slice(&daddr.to_le_bytes());
        blf.extend_from_slice(&1u32.to_le_bytes());
        blf.extend_from_slice(&0b10u32.to_le_bytes()); // chunk 1: bytes 128..256
        vec![blf, vec![fill; XFS_BLF_CHUNK]]
    }

    fn tx(tid: u32, lsn: u64, item: Vec<Vec<u8>>) -> Transaction {
        let mut th = crate::trans::XFS_TRANS_HEADER_MAGIC.to_le_bytes().to_vec();
        th.extend_from_slice(&[0; 12]);
        let mut regions = vec![th];
        regions.extend(item);
        Transaction {
            tid,
            lsn: Lsn(lsn),
            regions,
            committed: true,
        }
    }

    #[test]
    fn cancelled_buffers_replay_only_after_the_cancel() {
        let dev = MemDevice::new(8192);
        let txs = [
            tx(1, 10, buf_item(8, 0, 0xaa)),
            tx(2, 11, buf_item(8, XFS_BLF_CANCEL, 0xcc)),
            tx(3, 12, buf_item(8, 0, 0xbb)),
            tx(4, 13, buf_item(9, 0, 0xdd)),
        ];
        let st = replay(&txs, true, 512, 512, &dev).unwrap();
        assert_eq!(
            st,
            RecoveryStats {
                transactions: 4,
                buffers: 2,
                inodes: 0,
                skipped: 2
            }
        );
        let mut b = [0u8; 1024];
        dev.read_at(&mut b, 8 * 512).unwrap();
        assert!(b[..128].iter().all(|&x| x == 0));
        assert!(b[128..256].iter().all(|&x| x == 0xbb));
        assert!(b[512 + 128..512 + 256].iter().all(|&x| x == 0xdd));
    }

    #[test]
    fn hostile_items_are_refused() {
        let dev = MemDevice::new(8192);
        let mut item = buf_item(8, 0, 1);
        item[0][16..20].copy_from_slice(&1000u32.to_le_bytes());
        let e = replay(&[tx(1, 1, item)], true, 512, 512, &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dirty map of 1000 words"), "{e}");
        let e = replay(&[tx(1, 1, buf_item(100, 0, 1))], true, 512, 512, &dev).unwrap_err();
        assert!(e.to_string().contains("past the end"), "{e}");
        let mut item = buf_item(8, 0, 1);
        item[0][0..2].copy_from_slice(&0x123bu16.to_le_bytes());
        let e = replay(&[tx(1, 1, item)], true, 512, 512, &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("XFS inode log format of 24 bytes"), "{e}");
        let mut item = buf_item(8, 0, 1);
        item[0][4..6].copy_from_slice(&(5u16 << 11).to_le_bytes());
        let e = replay(&[tx(1, 1, item)], true, 512, 512, &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("buffers of type 5"), "{e}");
    }
}
