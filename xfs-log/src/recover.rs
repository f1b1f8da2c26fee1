//! Replaying committed transactions: into an in-memory [`Overlay`] for a read-only open, or
//! written home followed by an unmount record so the log is clean again ([`recover_home`]).
//!
//! This follows the kernel's `xlog_recover_commit_trans` (pass 1 builds the table of
//! cancelled buffers, pass 2 replays each transaction's items in the kernel's order: buffers
//! and ICREATE, then inode and intent items, then inode-buffer items, then cancel records):
//!
//! - Buffers (`xlog_recover_do_reg_buffer`): each dirty-map run filled from the next region. A
//!   buffer with a cancel record later in the log is not replayed before that record. On v5
//!   filesystems the on-disk LSN is found by the buffer's magic ([`crate::verify`]) and a
//!   buffer at or past the transaction is skipped; once every transaction is replayed, each
//!   replayed buffer gets the LSN of the last transaction that touched it and its CRC
//!   recomputed, as the write verifier of its logged type does.
//! - Inode buffers (`XFS_BLF_INODE_BUF`): only the `di_next_unlinked` fields are replayed, and
//!   the CRC of each inode changed.
//! - Inode items (v3 cores): the logged host-order `xfs_log_dinode` converted to the big-endian
//!   dinode (`di_next_unlinked` kept from disk), the data and attribute forks copied (extents,
//!   local data, device number) or converted (B+tree roots, in-core `xfs_btree_block` to
//!   on-disk `xfs_bmdr_block`), LSN and CRC set; skipped when the on-disk inode is newer.
//! - ICREATE: the inode chunk's clusters initialised as `xfs_ialloc_inode_init` does.
//! - Intents (EFI, RUI, CUI, BUI, ATTRI, XMI and the realtime ones) are paired with their done
//!   items; one left without its done item means work the kernel would finish after replay
//!   (freeing extents, B+tree edits), which is refused by name.
//! - Quota (dquot items and buffers), realtime bitmap buffers, v1/v2 inode cores and B+tree
//!   owner changes are refused by name.
//!
//! As the kernel does after replaying a log that was not clean, the superblock's summary
//! counters (inodes, free inodes, free blocks) are recomputed from the AG headers.

use crate::record::{be32, be64, Lsn, BBSIZE};
use crate::trans::{Item, Transaction};
use crate::verify::{self, blft, Uuids};
use crate::writer::{XFS_BLF_CHUNK, XFS_LI_BUF};
use crate::{Log, LogState, XFS_LOG, XLOG_UNMOUNT_TRANS};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use vdisk_block::{BlockDevice, Error, Result};

/// `XFS_BLF_INODE_BUF`: an inode buffer whose only logged fields are `di_next_unlinked`.
pub const XFS_BLF_INODE_BUF: u16 = 0x1;
/// `XFS_BLF_CANCEL`: the buffer was freed; earlier log items for it must not be replayed.
pub const XFS_BLF_CANCEL: u16 = 0x2;
/// `XFS_BLF_UDQUOT_BUF | XFS_BLF_PDQUOT_BUF | XFS_BLF_GDQUOT_BUF`: quota buffers.
const XFS_BLF_DQUOT_BUFS: u16 = 0x4 | 0x8 | 0x10;
/// `XLOG_UNMOUNT_TYPE`: the payload of an unmount record.
pub const XLOG_UNMOUNT_TYPE: u16 = 0x556e;
/// `XFS_LI_ICREATE`.
pub const XFS_LI_ICREATE: u16 = 0x123f;
/// `XFS_LI_DQUOT`.
const XFS_LI_DQUOT: u16 = 0x123d;
/// `XFS_LI_QUOTAOFF`.
const XFS_LI_QUOTAOFF: u16 = 0x123e;
/// Intent item types with their done items (`XFS_LI_EFI`/`XFS_LI_EFD`, ...) and what an
/// unfinished one asks for.
const INTENTS: &[(u16, u16, &str, &str)] = &[
    (0x1236, 0x1237, "EFI", "freeing extents"),
    (0x1240, 0x1241, "RUI", "reverse-mapping B+tree updates"),
    (0x1242, 0x1243, "CUI", "reference-count B+tree updates"),
    (0x1244, 0x1245, "BUI", "file block mapping updates"),
    (0x1246, 0x1247, "ATTRI", "extended attribute updates"),
    (0x1248, 0x1249, "XMI", "file mapping exchanges"),
    (0x124a, 0x124b, "EFI_RT", "freeing realtime extents"),
    (0x124c, 0x124d, "RUI_RT", "realtime reverse-mapping updates"),
    (0x124e, 0x124f, "CUI_RT", "realtime reference-count updates"),
];
/// Bound on a logged buffer's length in sectors (twice the largest XFS logs).
const MAX_BUF_BBS: u16 = 272;
/// `NULLAGINO`.
const NULLAGINO: u32 = u32::MAX;
/// `XFS_INODES_PER_CHUNK`.
const INODES_PER_CHUNK: u32 = 64;

/// Sectors written over a base device, kept in memory.
#[derive(Default)]
struct Sectors(Mutex<BTreeMap<u64, Box<[u8; BBSIZE]>>>);

impl Sectors {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Box<[u8; BBSIZE]>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self, base: &dyn BlockDevice, buf: &mut [u8], offset: u64) -> Result<()> {
        base.read_at(buf, offset)?;
        let map = self.lock();
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

    fn write(&self, base: &dyn BlockDevice, buf: &[u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= base.size())
            .ok_or_else(|| Error::invalid("overlay write past the end of the device"))?;
        let mut map = self.lock();
        let mut s = offset / BBSIZE as u64;
        while s * (BBSIZE as u64) < end {
            let so = s * BBSIZE as u64;
            let sec = match map.entry(s) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let mut sec = Box::new([0u8; BBSIZE]);
                    base.read_at(&mut sec[..], so)?;
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

    fn keys(&self) -> Vec<u64> {
        self.lock().keys().copied().collect()
    }

    /// Writes every held sector to `base`, runs of adjacent sectors in one write each.
    fn write_home(&self, base: &dyn BlockDevice) -> Result<()> {
        let map = self.lock();
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u64;
        let mut next = None;
        for (&s, data) in map.iter() {
            if next != Some(s) || run.len() >= 1 << 20 {
                if !run.is_empty() {
                    base.write_at(&run, run_start * BBSIZE as u64)?;
                }
                run.clear();
                run_start = s;
            }
            run.extend_from_slice(&data[..]);
            next = Some(s + 1);
        }
        if !run.is_empty() {
            base.write_at(&run, run_start * BBSIZE as u64)?;
        }
        Ok(())
    }
}

/// A device whose writes land in memory, over a device that is only read.
pub struct Overlay<'a> {
    base: &'a dyn BlockDevice,
    sectors: Sectors,
}

impl<'a> Overlay<'a> {
    /// An empty overlay over `base`.
    pub fn new(base: &'a dyn BlockDevice) -> Overlay<'a> {
        Overlay {
            base,
            sectors: Sectors::default(),
        }
    }

    /// The sectors (by 512-byte index) the overlay holds, in order.
    pub fn dirty_sectors(&self) -> Vec<u64> {
        self.sectors.keys()
    }

    /// Writes what the overlay holds to the base device (not flushed).
    pub fn write_home(&self) -> Result<()> {
        self.sectors.write_home(self.base)
    }
}

impl BlockDevice for Overlay<'_> {
    fn size(&self) -> u64 {
        self.base.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.sectors.read(self.base, buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.sectors.write(self.base, buf, offset)
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// An [`Overlay`] that owns a shared handle on its base: what a read-only open of a filesystem
/// with a dirty log reads through ([`ReplayedDevice::replay`]).
pub struct ReplayedDevice {
    base: Arc<dyn BlockDevice>,
    sectors: Sectors,
    stats: RecoveryStats,
}

impl ReplayedDevice {
    /// Replays the log of the XFS filesystem on `base` into memory. Returns None when the log
    /// is clean (read `base` itself then); `base` is never written.
    pub fn replay(base: Arc<dyn BlockDevice>) -> Result<Option<ReplayedDevice>> {
        let (sectors, stats) = {
            let log = Log::open(&*base)?;
            let (st, _) = log.recovery_state()?;
            if st.clean {
                return Ok(None);
            }
            let ov = Overlay::new(&*base);
            let stats = recover(&log, &st, &ov)?;
            (ov.sectors, stats)
        };
        Ok(Some(ReplayedDevice {
            base,
            sectors,
            stats,
        }))
    }

    /// The device under the overlay.
    pub fn base(&self) -> &Arc<dyn BlockDevice> {
        &self.base
    }

    /// What the replay did.
    pub fn stats(&self) -> &RecoveryStats {
        &self.stats
    }

    /// The sectors (by 512-byte index) the replay changed, in order.
    pub fn dirty_sectors(&self) -> Vec<u64> {
        self.sectors.keys()
    }
}

impl BlockDevice for ReplayedDevice {
    fn size(&self) -> u64 {
        self.base.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.sectors.read(&*self.base, buf, offset)
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(Error::unsupported(
            "writing through an XFS log replay held in memory (replay it home first)",
        ))
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// Replays the log of the XFS filesystem on `dev` and writes the result home: the replay is
/// built in memory first (so a log that cannot be replayed leaves `dev` untouched), then
/// written, flushed, and an unmount record appended so the log reads clean. What a writer
/// calls before its first write. Returns None when the log was clean already.
pub fn recover_home(dev: &dyn BlockDevice) -> Result<Option<RecoveryStats>> {
    let log = Log::open(dev)?;
    let (st, stamped_head) = log.recovery_state()?;
    if st.clean && stamped_head == st.head_blk {
        return Ok(None);
    }
    let ov = Overlay::new(dev);
    let stats = recover(&log, &st, &ov)?;
    ov.write_home()?;
    dev.flush()?;
    if stamped_head != st.head_blk {
        log.clear_stale(&st, stamped_head)?;
    }
    let after = log.write_unmount(&st)?;
    if !after.clean {
        return Err(Error::corrupt(
            "the XFS log does not read clean after writing its unmount record",
        ));
    }
    Ok(Some(stats))
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
fn be32_of(b: &[u8], o: usize, what: &str) -> Result<u32> {
    if b.len() < o + 4 {
        return Err(Error::corrupt(format!("XFS {what} is truncated")));
    }
    Ok(be32(b, o))
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

impl Blf {
    fn bit(&self, c: usize) -> bool {
        self.map
            .get(c / 32)
            .is_some_and(|w| w & (1 << (c % 32)) != 0)
    }

    /// The logged regions as (byte offset in the buffer, bytes), in the kernel's walk: each
    /// run of set bits is filled from the next region, trimmed to that region's length.
    fn runs<'r>(&self, regions: &'r [Vec<u8>], len: usize) -> Result<Vec<(usize, &'r [u8])>> {
        let bits = self.map.len() * 32;
        let mut out = Vec::new();
        let mut region = 1;
        let mut c = 0;
        while c < bits {
            if !self.bit(c) {
                c += 1;
                continue;
            }
            let mut n = 0;
            while c + n < bits && self.bit(c + n) {
                n += 1;
            }
            let data = regions.get(region).ok_or_else(|| {
                Error::corrupt(format!(
                    "XFS buffer item for daddr {} has fewer regions than its map",
                    self.blkno
                ))
            })?;
            region += 1;
            let n = n.min(data.len() / XFS_BLF_CHUNK);
            if n == 0 {
                return Err(Error::corrupt(format!(
                    "XFS buffer item for daddr {}: a region is shorter than a chunk",
                    self.blkno
                )));
            }
            if (c + n) * XFS_BLF_CHUNK > len {
                return Err(Error::corrupt(format!(
                    "XFS buffer item for daddr {}: its dirty map reaches past the buffer",
                    self.blkno
                )));
            }
            out.push((c * XFS_BLF_CHUNK, &data[..n * XFS_BLF_CHUNK]));
            c += n;
        }
        Ok(out)
    }
}

/// The superblock fields replay needs beyond the log's own.
struct Fs {
    v5: bool,
    sectsize: u64,
    inodesize: usize,
    blocksize: u64,
    agblocks: u64,
    agcount: u64,
    agblklog: u8,
    inopblog: u8,
    inoalignmt: u64,
    lazy_count: bool,
    /// False when the superblock could not be read (synthetic test targets): ICREATE and
    /// the counter recount are refused or skipped then.
    known: bool,
    uuids: Uuids,
}

impl Fs {
    fn read(v5: bool, inodesize: u16, target: &dyn BlockDevice) -> Fs {
        let mut sb = [0u8; 512];
        let ok =
            target.read_at(&mut sb, 0).is_ok() && be32(&sb, 0) == crate::superblock::XFS_SB_MAGIC;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&sb[32..48]);
        let incompat = be32(&sb, 216);
        let has_meta_uuid = v5 && incompat & 0x4 != 0;
        let mut meta_uuid = uuid;
        if has_meta_uuid {
            meta_uuid.copy_from_slice(&sb[248..264]);
        }
        let blocksize = u64::from(be32(&sb, 4));
        let agblocks = u64::from(be32(&sb, 84));
        let agcount = u64::from(be32(&sb, 88));
        let features2 = be32(&sb, 200);
        let known = ok
            && (512..=65536).contains(&blocksize)
            && agblocks > 0
            && agcount > 0
            && sb[124] < 32
            && sb[123] < 8
            // The last AG may be short: the filesystem's own length must fit the device,
            // and the AGs must cover it.
            && be64(&sb, 8)
                .checked_mul(blocksize)
                .is_some_and(|end| end <= target.size())
            && agcount
                .checked_sub(1)
                .and_then(|n| n.checked_mul(agblocks))
                .is_some_and(|full| full < be64(&sb, 8));
        Fs {
            v5,
            sectsize: u64::from(u16::from_be_bytes([sb[102], sb[103]]).max(512)),
            inodesize: usize::from(inodesize),
            blocksize,
            agblocks,
            agcount,
            agblklog: sb[124],
            inopblog: sb[123],
            inoalignmt: u64::from(be32(&sb, 180)),
            lazy_count: v5 || features2 & 0x2 != 0,
            known,
            uuids: Uuids {
                uuid,
                meta_uuid,
                has_meta_uuid,
            },
        }
    }

    /// `XFS_AGB_TO_DADDR`.
    fn agb_to_daddr(&self, agno: u64, agbno: u64) -> u64 {
        (agno * self.agblocks + agbno) * (self.blocksize / BBSIZE as u64)
    }
}

/// `XFS_LI_INODE`.
pub const XFS_LI_INODE: u16 = 0x123b;
const XFS_DINODE_MAGIC: u16 = 0x494e;
const XFS_ILOG_DDATA: u32 = 0x002;
const XFS_ILOG_DEXT: u32 = 0x004;
const XFS_ILOG_DBROOT: u32 = 0x008;
const XFS_ILOG_DEV: u32 = 0x010;
const XFS_ILOG_ADATA: u32 = 0x040;
const XFS_ILOG_AEXT: u32 = 0x080;
const XFS_ILOG_ABROOT: u32 = 0x100;
const XFS_ILOG_DOWNER: u32 = 0x200;
const XFS_ILOG_AOWNER: u32 = 0x400;
const XFS_ILOG_DFORK: u32 = XFS_ILOG_DDATA | XFS_ILOG_DEXT | XFS_ILOG_DBROOT;
const XFS_ILOG_AFORK: u32 = XFS_ILOG_ADATA | XFS_ILOG_AEXT | XFS_ILOG_ABROOT;
const XFS_DIFLAG2_BIGTIME: u64 = 1 << 3;
const XFS_DIFLAG2_NREXT64: u64 = 1 << 4;
/// `sizeof(struct xfs_log_dinode)` for v3 inodes, also the v3 dinode's core size.
const LOG_DINODE_SIZE: usize = 176;
/// Scalar fields of `struct xfs_log_dinode` (host order) copied to `struct xfs_dinode`
/// (big-endian) as (offset, width), as `xfs_log_dinode_to_disk` does: not `di_onlink` (6,
/// zeroed), `di_next_unlinked` (96, kept from disk), `di_crc` (100), the LSN (112), the
/// timestamps (32, 40, 48, 144), the pads and the UUID, which are handled apart.
const DINODE_SCALARS: &[(usize, usize)] = &[
    (0, 2),
    (2, 2),
    (4, 1),
    (5, 1),
    (8, 4),
    (12, 4),
    (16, 4),
    (20, 2),
    (22, 2),
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
    (104, 8),
    (120, 8),
    (128, 4),
    (152, 8),
];

fn swap_into(from: &[u8], to: &mut [u8], o: usize, w: usize) {
    for i in 0..w {
        to[o + i] = from[o + w - 1 - i];
    }
}

/// Converts a logged v3 inode core (little-endian host order) to the on-disk layout.
fn log_dinode_to_disk(from: &[u8], to: &mut [u8], lsn: Lsn) {
    for &(o, w) in DINODE_SCALARS {
        swap_into(from, to, o, w);
    }
    to[6..8].fill(0);
    let flags2 = u64::from_le_bytes(from[120..128].try_into().unwrap_or([0; 8]));
    for o in [32, 40, 48, 144] {
        if flags2 & XFS_DIFLAG2_BIGTIME != 0 {
            swap_into(from, to, o, 8);
        } else {
            // struct xfs_log_legacy_timestamp: two host-order int32 (seconds, nanoseconds).
            swap_into(from, to, o, 4);
            swap_into(from, to, o + 4, 4);
        }
    }
    if flags2 & XFS_DIFLAG2_NREXT64 != 0 {
        swap_into(from, to, 24, 8); // di_big_nextents
    } else {
        to[24..32].fill(0); // di_v3_pad
    }
    to[132..144].fill(0);
    to[160..176].copy_from_slice(&from[160..176]);
    // The logged LSN is not recovered: the inode takes the recovering transaction's.
    to[112..120].copy_from_slice(&lsn.0.to_be_bytes());
}

/// `xfs_bmbt_to_bmdr`: an in-core B+tree root (a whole `xfs_btree_block` header, keys and
/// pointers placed for `src.len()` bytes) into the on-disk root of `dst.len()` bytes.
fn bmbt_to_bmdr(src: &[u8], dst: &mut [u8], v5: bool, ino: u64) -> Result<()> {
    let hdr = if v5 { 72 } else { 24 };
    let bad = || Error::corrupt(format!("XFS inode {ino}: logged B+tree root does not fit"));
    if src.len() < hdr || dst.len() < 4 {
        return Err(bad());
    }
    let numrecs = usize::from(u16::from_be_bytes([src[6], src[7]]));
    let rmax = (src.len() - hdr) / 16;
    let dmax = (dst.len() - 4) / 16;
    if numrecs > rmax || numrecs > dmax {
        return Err(bad());
    }
    dst[0..4].copy_from_slice(&src[4..8]);
    let k = numrecs * 8;
    dst[4..4 + k].copy_from_slice(&src[hdr..hdr + k]);
    let (sp, dp) = (hdr + rmax * 8, 4 + dmax * 8);
    dst[dp..dp + k].copy_from_slice(&src[sp..sp + k]);
    Ok(())
}

/// Replays one inode item (v3 inodes) as `xlog_recover_inode_commit_pass2` does. Returns
/// false when the item is skipped (its buffer cancelled, or the on-disk inode is newer).
fn replay_inode(
    regions: &[Vec<u8>],
    lsn: Lsn,
    fs: &Fs,
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
    let size = le16(ilf, 2)?;
    let fields = le32(ilf, 4)?;
    let ino = le64(ilf, 16)?;
    let rdev = le32(ilf, 24)?;
    let blkno = le64(ilf, 40)?;
    let len = le32(ilf, 48)?;
    let boffset = le32(ilf, 52)? as usize;
    if fields & (XFS_ILOG_DOWNER | XFS_ILOG_AOWNER) != 0 {
        return Err(Error::unsupported(format!(
            "XFS log recovery of inode {ino}: B+tree owner changes (swapext) are not supported yet"
        )));
    }
    let len16 =
        u16::try_from(len).map_err(|_| Error::corrupt("XFS inode item buffer length is bad"))?;
    if cancels.get(&(blkno, len16)).is_some_and(|&n| n > 0) {
        return Ok(false);
    }
    let isize = fs.inodesize;
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
    // Equal LSNs replay: several checkpoints may start in the same record.
    let on_disk = Lsn(be64(&di, 112));
    if di[4] >= 3 && on_disk.0 != 0 && on_disk.0 != u64::MAX && on_disk > lsn {
        return Ok(false);
    }
    let forkoff = usize::from(core[82]) * 8;
    let lit = isize - LOG_DINODE_SIZE;
    if forkoff > lit {
        return Err(Error::corrupt(format!(
            "XFS inode {ino}: logged fork offset {forkoff} is past the inode"
        )));
    }
    log_dinode_to_disk(core, &mut di, lsn);
    if fields & XFS_ILOG_DEV != 0 {
        di[LOG_DINODE_SIZE..LOG_DINODE_SIZE + 4].copy_from_slice(&rdev.to_be_bytes());
    }
    let (dsize, asize) = if forkoff == 0 {
        (lit, 0)
    } else {
        (forkoff, lit - forkoff)
    };
    if size > 2 {
        if fields & XFS_ILOG_DFORK != 0 {
            let r = regions
                .get(2)
                .ok_or_else(|| Error::corrupt(format!("XFS inode {ino}: no data fork region")))?;
            match fields & XFS_ILOG_DFORK {
                XFS_ILOG_DDATA | XFS_ILOG_DEXT => {
                    if r.len() > lit {
                        return Err(Error::corrupt(format!(
                            "XFS inode {ino}: data fork of {} bytes does not fit",
                            r.len()
                        )));
                    }
                    di[LOG_DINODE_SIZE..LOG_DINODE_SIZE + r.len()].copy_from_slice(r);
                }
                XFS_ILOG_DBROOT => bmbt_to_bmdr(
                    r,
                    &mut di[LOG_DINODE_SIZE..LOG_DINODE_SIZE + dsize],
                    fs.v5,
                    ino,
                )?,
                _ => {} // more than one data fork flag: the kernel copies nothing either
            }
        }
        if fields & XFS_ILOG_AFORK != 0 {
            let idx = if fields & XFS_ILOG_DFORK != 0 { 3 } else { 2 };
            let r = regions
                .get(idx)
                .ok_or_else(|| Error::corrupt(format!("XFS inode {ino}: no attr fork region")))?;
            let at = LOG_DINODE_SIZE + forkoff;
            match fields & XFS_ILOG_AFORK {
                XFS_ILOG_ADATA | XFS_ILOG_AEXT => {
                    if forkoff == 0 || at + r.len() > isize {
                        return Err(Error::corrupt(format!(
                            "XFS inode {ino}: attr fork of {} bytes does not fit",
                            r.len()
                        )));
                    }
                    di[at..at + r.len()].copy_from_slice(r);
                }
                XFS_ILOG_ABROOT => {
                    if forkoff == 0 {
                        return Err(Error::corrupt(format!(
                            "XFS inode {ino}: attr fork root without an attr fork"
                        )));
                    }
                    bmbt_to_bmdr(r, &mut di[at..at + asize], fs.v5, ino)?
                }
                _ => {
                    return Err(Error::corrupt(format!(
                        "XFS inode {ino}: more than one attr fork flag logged"
                    )))
                }
            }
        }
    }
    verify::dinode_crc(&mut di);
    target.write_at(&di, off)?;
    Ok(true)
}

/// Replays an `XFS_BLF_INODE_BUF` item (`xlog_recover_do_inode_buffer`): only the
/// `di_next_unlinked` fields the item logs, each changed inode's CRC recomputed (v5).
fn replay_inode_buffer(b: &Blf, regions: &[Vec<u8>], buf: &mut [u8], fs: &Fs) -> Result<()> {
    let runs = b.runs(regions, buf.len())?;
    if fs.inodesize < LOG_DINODE_SIZE.min(256) || fs.inodesize == 0 {
        return Err(Error::corrupt("XFS inode size is bad"));
    }
    for i in 0..buf.len() / fs.inodesize {
        let o = i * fs.inodesize + 96;
        let Some((start, data)) = runs.iter().find(|(s, d)| *s <= o && o + 4 <= s + d.len()) else {
            continue;
        };
        let v = &data[o - start..o - start + 4];
        if v == [0; 4] {
            return Err(Error::corrupt(format!(
                "XFS inode buffer item for daddr {} logs a di_next_unlinked of 0",
                b.blkno
            )));
        }
        buf[o..o + 4].copy_from_slice(v);
        if fs.v5 {
            verify::dinode_crc(&mut buf[i * fs.inodesize..(i + 1) * fs.inodesize]);
        }
    }
    Ok(())
}

/// Replays an ICREATE item (`xlog_recover_icreate_commit_pass2`): initialises the inode
/// chunk's cluster buffers unless one of them was cancelled. Returns false when skipped.
fn replay_icreate(
    r: &[u8],
    fs: &Fs,
    cancels: &HashMap<(u64, u16), u32>,
    target: &dyn BlockDevice,
) -> Result<bool> {
    if !fs.known {
        return Err(Error::unsupported(
            "XFS log recovery of ICREATE items without a readable superblock",
        ));
    }
    let what = "ICREATE item";
    if le16(r, 2)? != 1 {
        return Err(Error::corrupt("XFS ICREATE item has a bad size"));
    }
    let agno = u64::from(be32_of(r, 4, what)?);
    let agbno = u64::from(be32_of(r, 8, what)?);
    let count = be32_of(r, 12, what)?;
    let isize = be32_of(r, 16, what)? as usize;
    let length = u64::from(be32_of(r, 20, what)?);
    let gen = be32_of(r, 24, what)?;
    if agno >= fs.agcount
        || agbno == 0
        || agbno >= fs.agblocks
        || isize != fs.inodesize
        || count == 0
        || count > INODES_PER_CHUNK
        || length == 0
        || agbno + length > fs.agblocks
        || u64::from(count >> fs.inopblog) != length
    {
        return Err(Error::corrupt(format!(
            "XFS ICREATE item (AG {agno}, block {agbno}, {count} inodes, {length} blocks) is bad"
        )));
    }
    // Inode cluster size (xfs_ialloc_setup_geometry): 8 KiB, scaled with the inode size on
    // v5 when the chunk alignment allows.
    let mut cluster = 8192u64;
    if fs.v5 {
        let big = cluster * (fs.inodesize as u64 / 256).max(1);
        if fs.inoalignmt >= big / fs.blocksize {
            cluster = big;
        }
    }
    let bpc = (cluster / fs.blocksize).max(1);
    let nbufs = length / bpc;
    let bb_per_cluster = u16::try_from(bpc * fs.blocksize / BBSIZE as u64)
        .map_err(|_| Error::corrupt("XFS inode cluster is too large"))?;
    if nbufs == 0 {
        return Err(Error::corrupt(format!(
            "XFS ICREATE item of {length} blocks is smaller than an inode cluster"
        )));
    }
    let cancelled = (0..nbufs)
        .filter(|i| {
            let d = fs.agb_to_daddr(agno, agbno + i * bpc);
            cancels.get(&(d, bb_per_cluster)).is_some_and(|&n| n > 0)
        })
        .count();
    if cancelled > 0 {
        return Ok(false);
    }
    let mut ino =
        (agno << (u32::from(fs.agblklog) + u32::from(fs.inopblog))) | (agbno << fs.inopblog);
    let bytes = (bpc * fs.blocksize) as usize;
    for j in 0..nbufs {
        let mut buf = vec![0u8; bytes];
        for di in buf.chunks_mut(fs.inodesize) {
            di[0..2].copy_from_slice(&XFS_DINODE_MAGIC.to_be_bytes());
            di[4] = if fs.v5 { 3 } else { 2 };
            di[92..96].copy_from_slice(&gen.to_be_bytes());
            di[96..100].copy_from_slice(&NULLAGINO.to_be_bytes());
            if fs.v5 {
                di[152..160].copy_from_slice(&ino.to_be_bytes());
                ino += 1;
                di[160..176].copy_from_slice(&fs.uuids.meta_uuid);
                verify::dinode_crc(di);
            }
        }
        let daddr = fs.agb_to_daddr(agno, agbno + j * bpc);
        target.write_at(&buf, daddr * BBSIZE as u64)?;
    }
    Ok(true)
}

/// What [`recover`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Committed transactions replayed.
    pub transactions: usize,
    /// Buffer items applied (ICREATE items, which initialise inode buffers, counted here).
    pub buffers: usize,
    /// Inode items applied.
    pub inodes: usize,
    /// Buffer and inode items skipped: cancelled, or older than the buffer on disk.
    pub skipped: usize,
}

/// Replays every committed transaction between tail and head of `log` onto `target`, which
/// reads as the filesystem (an [`Overlay`] over the log's device, or the device itself to
/// write home), then recomputes the superblock's summary counters.
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
    let fs = Fs::read(g.v5, g.inodesize, target);
    let stats = replay_fs(&txs, &fs, target)?;
    if fs.known && fs.lazy_count {
        recount(&fs, target)?;
    }
    Ok(stats)
}

/// Replays committed transactions `txs` (in log order) onto `target`; `v5`, `sectsize` and
/// `inodesize` come from the superblock (the rest is read from `target`'s). [`recover`] calls
/// it with the log's transactions.
pub fn replay(
    txs: &[Transaction],
    v5: bool,
    _sectsize: u16,
    inodesize: u16,
    target: &dyn BlockDevice,
) -> Result<RecoveryStats> {
    let fs = Fs::read(v5, inodesize, target);
    replay_fs(txs, &fs, target)
}

/// `xfs_initialize_perag_data`: with lazy superblock counters the superblock's inode, free
/// inode and free block counts are only right after a clean unmount, so after replay they are
/// summed from the AG headers.
fn recount(fs: &Fs, target: &dyn BlockDevice) -> Result<()> {
    let sectsize = fs.sectsize;
    let (mut icount, mut ifree, mut fdblocks) = (0u64, 0u64, 0u64);
    let mut hdr = [0u8; 512];
    for ag in 0..fs.agcount {
        let base = ag * fs.agblocks * fs.blocksize;
        target.read_at(&mut hdr, base + sectsize)?;
        if be32(&hdr, 0) != 0x5841_4746 {
            return Err(Error::corrupt(format!(
                "XFS AG {ag}: bad AGF magic after replay"
            )));
        }
        fdblocks +=
            u64::from(be32(&hdr, 52)) + u64::from(be32(&hdr, 48)) + u64::from(be32(&hdr, 60));
        target.read_at(&mut hdr, base + 2 * sectsize)?;
        if be32(&hdr, 0) != 0x5841_4749 {
            return Err(Error::corrupt(format!(
                "XFS AG {ag}: bad AGI magic after replay"
            )));
        }
        icount += u64::from(be32(&hdr, 16));
        ifree += u64::from(be32(&hdr, 28));
    }
    let mut sb = vec![0u8; sectsize as usize];
    target.read_at(&mut sb, 0)?;
    let dblocks = be64(&sb, 8);
    if fdblocks > dblocks || ifree > icount {
        return Err(Error::corrupt(
            "XFS AG headers after replay count more free space or inodes than exist",
        ));
    }
    if (be64(&sb, 128), be64(&sb, 136), be64(&sb, 144)) == (icount, ifree, fdblocks) {
        return Ok(());
    }
    sb[128..136].copy_from_slice(&icount.to_be_bytes());
    sb[136..144].copy_from_slice(&ifree.to_be_bytes());
    sb[144..152].copy_from_slice(&fdblocks.to_be_bytes());
    if fs.v5 {
        sb[224..228].fill(0);
        let crc = crate::crc::crc32c(&sb);
        sb[224..228].copy_from_slice(&crc.to_le_bytes());
    }
    target.write_at(&sb, 0)
}

/// The inodes on the AGI unlinked lists of the filesystem on `dev` (read after replay: through
/// a [`ReplayedDevice`], or the device after [`recover_home`]), in AG and bucket order.
///
/// After replaying a dirty log the kernel frees these (`xlog_recover_process_iunlinks`:
/// files unlinked while still open, or whose inactivation the crash interrupted); replay here
/// leaves them on their lists, so a writer must free them (truncate, free the inode) before
/// `xfs_repair -n` reads the filesystem as clean. A read-only view is unaffected: no
/// directory names them.
pub fn unlinked_inodes(dev: &dyn BlockDevice) -> Result<Vec<u64>> {
    let g = crate::superblock::LogGeometry::read(dev)?;
    let fs = Fs::read(g.v5, g.inodesize, dev);
    if !fs.known || fs.inodesize == 0 {
        return Err(Error::corrupt("XFS superblock geometry is bad"));
    }
    let inopblock = fs.blocksize / fs.inodesize as u64;
    let mut out = Vec::new();
    let mut agi = [0u8; 512];
    let mut di = [0u8; 128];
    for ag in 0..fs.agcount {
        let base = ag * fs.agblocks * fs.blocksize;
        dev.read_at(&mut agi, base + 2 * fs.sectsize)?;
        if be32(&agi, 0) != 0x5841_4749 {
            return Err(Error::corrupt(format!("XFS AG {ag}: bad AGI magic")));
        }
        // Each inode once: a list that comes back to an inode is a loop.
        let mut seen = std::collections::HashSet::new();
        for bucket in 0..64 {
            let mut agino = be32(&agi, 40 + 4 * bucket);
            while agino != NULLAGINO {
                let agbno = u64::from(agino) >> fs.inopblog;
                if !seen.insert(agino) || agbno >= fs.agblocks {
                    return Err(Error::corrupt(format!(
                        "XFS AG {ag}: unlinked list of bucket {bucket} is bad"
                    )));
                }
                out.push(
                    (ag << (u32::from(fs.agblklog) + u32::from(fs.inopblog))) | u64::from(agino),
                );
                let off = base
                    + agbno * fs.blocksize
                    + (u64::from(agino) % inopblock) * fs.inodesize as u64;
                dev.read_at(&mut di, off)?;
                if u16::from_be_bytes([di[0], di[1]]) != XFS_DINODE_MAGIC {
                    return Err(Error::corrupt(format!(
                        "XFS AG {ag}: unlinked inode {agino} has no inode magic"
                    )));
                }
                agino = be32(&di, 96);
            }
        }
    }
    Ok(out)
}

fn intent_of(kind: u16) -> Option<(usize, bool)> {
    INTENTS.iter().enumerate().find_map(|(i, &(a, d, _, _))| {
        if kind == a {
            Some((i, true))
        } else if kind == d {
            Some((i, false))
        } else {
            None
        }
    })
}

fn replay_fs(txs: &[Transaction], fs: &Fs, target: &dyn BlockDevice) -> Result<RecoveryStats> {
    let v5 = fs.v5;
    let mut stats = RecoveryStats::default();
    // Pass 1: count cancel records per buffer; refuse what cannot be replayed.
    let mut cancels: HashMap<(u64, u16), u32> = HashMap::new();
    for t in txs {
        for it in t.items()? {
            match it.kind {
                XFS_LI_BUF => {
                    let b = parse_blf(&it.regions[0])?;
                    if b.flags & XFS_BLF_CANCEL != 0 {
                        *cancels.entry((b.blkno, b.len_bbs)).or_default() += 1;
                    } else if b.flags & XFS_BLF_DQUOT_BUFS != 0 {
                        return Err(Error::unsupported(
                            "XFS log recovery of quota buffers is not supported yet",
                        ));
                    } else if v5
                        && matches!(
                            b.flags >> crate::writer::XFS_BLFT_SHIFT,
                            blft::RTBITMAP | blft::RTSUMMARY
                        )
                    {
                        return Err(Error::unsupported(
                            "XFS log recovery of realtime bitmap and summary buffers is not supported",
                        ));
                    } else if v5 && b.flags >> crate::writer::XFS_BLFT_SHIFT > blft::RTSUMMARY {
                        return Err(Error::unsupported(format!(
                            "XFS log recovery of buffers of type {} is not supported yet",
                            b.flags >> crate::writer::XFS_BLFT_SHIFT
                        )));
                    }
                }
                XFS_LI_INODE if !v5 => {
                    return Err(Error::unsupported(
                        "XFS log recovery of inode items on v4 filesystems is not supported yet",
                    ))
                }
                XFS_LI_INODE => {}
                XFS_LI_ICREATE | XFS_LI_QUOTAOFF => {}
                k if intent_of(k).is_some() => {}
                XFS_LI_DQUOT => {
                    return Err(Error::unsupported(
                        "XFS log recovery of DQUOT items (quota) is not supported yet",
                    ))
                }
                k => {
                    return Err(match it.name() {
                        Some(n) => Error::unsupported(format!(
                            "XFS log recovery of {n} items is not supported yet"
                        )),
                        None => Error::corrupt(format!("XFS log item of unknown type {k:#x}")),
                    })
                }
            }
        }
    }
    // Pass 2: replay in log order, each transaction's items in the kernel's order.
    let mut pending: BTreeMap<(usize, u64), ()> = BTreeMap::new();
    let mut replayed: BTreeMap<(u64, u16), (u16, Lsn)> = BTreeMap::new();
    for t in txs {
        let items = t.items()?;
        let class = |it: &Item<'_>| -> Result<u8> {
            Ok(match it.kind {
                XFS_LI_BUF => {
                    let f = parse_blf(&it.regions[0])?.flags;
                    if f & XFS_BLF_CANCEL != 0 {
                        3
                    } else if f & XFS_BLF_INODE_BUF != 0 {
                        2
                    } else {
                        0
                    }
                }
                XFS_LI_ICREATE => 0,
                _ => 1,
            })
        };
        let mut ordered: Vec<(u8, &Item<'_>)> = Vec::with_capacity(items.len());
        for it in &items {
            ordered.push((class(it)?, it));
        }
        // Stable: log order inside each class, as the kernel's list moves keep it (the
        // order of inode-buffer and cancel items among themselves does not matter).
        ordered.sort_by_key(|(c, _)| *c);
        for (_, it) in ordered {
            match it.kind {
                XFS_LI_INODE => {
                    if replay_inode(it.regions, t.lsn, fs, &cancels, target)? {
                        stats.inodes += 1;
                    } else {
                        stats.skipped += 1;
                    }
                }
                XFS_LI_ICREATE => {
                    if replay_icreate(&it.regions[0], fs, &cancels, target)? {
                        stats.buffers += 1;
                    } else {
                        stats.skipped += 1;
                    }
                }
                XFS_LI_BUF => {
                    if replay_buffer(it, t.lsn, fs, &mut cancels, &mut replayed, target)? {
                        stats.buffers += 1;
                    } else {
                        stats.skipped += 1;
                    }
                }
                XFS_LI_QUOTAOFF => {}
                k => {
                    if let Some((i, intent)) = intent_of(k) {
                        let id = le64(&it.regions[0], 8)?;
                        if intent {
                            pending.insert((i, id), ());
                        } else {
                            pending.remove(&(i, id));
                        }
                    }
                }
            }
        }
        stats.transactions += 1;
    }
    if let Some(&(i, _)) = pending.keys().next() {
        let (_, _, name, work) = INTENTS[i];
        let n = pending.keys().filter(|k| k.0 == i).count();
        return Err(Error::unsupported(format!(
            "XFS log recovery: {n} {name} intent item(s) without their done item ({work} left \
             to finish) is not supported yet"
        )));
    }
    // The write verifiers' work: each replayed v5 buffer stamped with the LSN of the last
    // transaction that replayed it, and its CRC recomputed.
    if v5 {
        for (&(blkno, len), &(ty, lsn)) in &replayed {
            let mut buf = vec![0u8; usize::from(len) * BBSIZE];
            let off = blkno * BBSIZE as u64;
            target.read_at(&mut buf, off)?;
            if verify::finish(&mut buf, ty, lsn, fs.blocksize as usize) {
                target.write_at(&buf, off)?;
            }
        }
    }
    Ok(stats)
}

/// Replays one buffer item (`xlog_recover_buf_commit_pass2`). Returns false when skipped.
fn replay_buffer(
    it: &Item<'_>,
    lsn: Lsn,
    fs: &Fs,
    cancels: &mut HashMap<(u64, u16), u32>,
    replayed: &mut BTreeMap<(u64, u16), (u16, Lsn)>,
    target: &dyn BlockDevice,
) -> Result<bool> {
    let b = parse_blf(&it.regions[0])?;
    let key = (b.blkno, b.len_bbs);
    if let Some(n) = cancels.get_mut(&key) {
        if *n > 0 {
            if b.flags & XFS_BLF_CANCEL != 0 {
                *n -= 1;
            }
            return Ok(false);
        }
    }
    if b.flags & XFS_BLF_CANCEL != 0 {
        return Ok(false);
    }
    // The largest buffer XFS logs is a 64 KiB block with its remote-value headers.
    if b.len_bbs == 0 || b.len_bbs > MAX_BUF_BBS {
        return Err(Error::corrupt(format!(
            "XFS buffer item for daddr {} has length {} sectors",
            b.blkno, b.len_bbs
        )));
    }
    let len = usize::from(b.len_bbs) * BBSIZE;
    let off = b
        .blkno
        .checked_mul(BBSIZE as u64)
        .ok_or_else(|| Error::corrupt("XFS buffer address overflows"))?;
    let mut buf = vec![0u8; len];
    target.read_at(&mut buf, off)?;
    if fs.v5 {
        if let Some(on_disk) = verify::buf_lsn(&buf, &fs.uuids) {
            if on_disk.0 != 0 && on_disk.0 != u64::MAX && on_disk >= lsn {
                return Ok(false);
            }
        }
    }
    if b.flags & XFS_BLF_INODE_BUF != 0 {
        replay_inode_buffer(&b, it.regions, &mut buf, fs)?;
    } else {
        for (o, data) in b.runs(it.regions, len)? {
            buf[o..o + data.len()].copy_from_slice(data);
        }
        if fs.v5 {
            replayed.insert(key, (b.flags >> crate::writer::XFS_BLFT_SHIFT, lsn));
        }
    }
    target.write_at(&buf, off)?;
    Ok(true)
}

impl Log<'_> {
    /// Stamps the blocks from the head of `st` up to `stamped_head` (what a torn or unfinished
    /// write left, cut off by [`Log::recovery_state`]) with the cycle before theirs, so that
    /// they read as old log and the head is found at `st`'s again (`xlog_clear_stale_blocks`).
    pub fn clear_stale(&self, st: &LogState, stamped_head: u64) -> Result<()> {
        let n = self.geo.log_bbs;
        let (head, cycle) = self.next_record_at(st)?;
        let count = (stamped_head + n - head) % n;
        let mut b = head;
        for _ in 0..count {
            // Past the end of the log the blocks belong to the next pass.
            let c = if b >= head {
                cycle
            } else {
                cycle.saturating_add(1)
            };
            let mut blk = [0u8; BBSIZE];
            blk[..4].copy_from_slice(&c.saturating_sub(1).to_be_bytes());
            self.dev
                .write_at(&blk, self.geo.log_offset + b * BBSIZE as u64)?;
            b = (b + 1) % n;
        }
        self.dev.flush()
    }

    /// Writes an unmount record at the head, so the log reads clean (after replayed metadata
    /// went home). Returns the new state.
    pub fn write_unmount(&self, st: &LogState) -> Result<LogState> {
        let (blk, cycle) = self.next_record_at(st)?;
        let lsn = Lsn::new(cycle, blk as u32);
        // Op header: tid, len 8, client XFS_LOG, flags UNMOUNT; then struct xlog_unmount.
        let mut data = vec![0u8; 20];
        data[0..4].copy_from_slice(&0xb0c0_d0d0u32.to_be_bytes());
        data[4..8].copy_from_slice(&8u32.to_be_bytes());
        data[8] = XFS_LOG;
        data[9] = XLOG_UNMOUNT_TRANS;
        data[12..14].copy_from_slice(&XLOG_UNMOUNT_TYPE.to_le_bytes());
        self.put_record(blk, cycle, lsn, st.last_record_blk, 1, &data)?;
        self.dev.flush()?;
        self.state()
    }
}

#[cfg(test)]
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
        item[0][4..6].copy_from_slice(&(21u16 << 11).to_le_bytes());
        let e = replay(&[tx(1, 1, item)], true, 512, 512, &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("buffers of type 21"), "{e}");
        // An intent without its done item is refused by name; with it, nothing to do.
        let efi = |kind: u16, id: u64| {
            let mut r = kind.to_le_bytes().to_vec();
            r.extend_from_slice(&1u16.to_le_bytes());
            r.extend_from_slice(&0u32.to_le_bytes());
            r.extend_from_slice(&id.to_le_bytes());
            vec![r]
        };
        let e = replay(&[tx(1, 1, efi(0x1236, 7))], true, 512, 512, &dev)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 EFI intent item(s) without their done item"),
            "{e}"
        );
        let st = replay(
            &[tx(1, 1, efi(0x1236, 7)), tx(2, 2, efi(0x1237, 7))],
            true,
            512,
            512,
            &dev,
        )
        .unwrap();
        assert_eq!(st.transactions, 2);
        let e = replay(&[tx(1, 1, efi(0x1244, 9))], true, 512, 512, &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("BUI") && e.contains("file block mapping"), "{e}");
    }
}
