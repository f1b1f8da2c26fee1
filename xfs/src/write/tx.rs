//! One operation's changes as one XFS log transaction.
//!
//! Every metadata block an operation changes is read into the transaction once ([`Tx::buf`])
//! and edited there; file data an operation writes is queued ([`Tx::write_data`]). At
//! [`Tx::commit`]:
//!
//! 1. file data goes home (and the device is flushed): nothing maps it yet, or it overwrites
//!    blocks the file already owns, as the kernel's buffered writes do;
//! 2. each changed buffer gets the LSN of the record about to carry it and its CRC32C (the
//!    kernel stamps both at write-back; recovery skips a buffer whose LSN is not older than
//!    the transaction, so an LSN equal to the record's is never ahead of the log);
//! 3. the buffers are logged as one committed transaction at the head of the (clean) log;
//! 4. they are written home and flushed;
//! 5. an unmount record makes the log clean again.
//!
//! A crash before 3 leaves the old metadata (the data, if any, in blocks still free or the
//! file's own); between 3 and 5 the kernel's recovery replays the whole transaction.

use std::collections::BTreeMap;

use vdisk_block::{Error, Result};
use vdisk_xfs_log::writer::BufUpdate;
use vdisk_xfs_log::Log;

use crate::Xfs;

/// `XFS_BLFT_*`: the buffer types recovery uses to pick a verifier.
pub mod blft {
    /// `XFS_BLFT_BTREE_BUF`.
    pub const BTREE: u16 = 4;
    /// `XFS_BLFT_AGF_BUF`.
    pub const AGF: u16 = 5;
    /// `XFS_BLFT_AGFL_BUF`.
    pub const AGFL: u16 = 6;
    /// `XFS_BLFT_AGI_BUF`.
    pub const AGI: u16 = 7;
    /// `XFS_BLFT_DINO_BUF`.
    pub const DINO: u16 = 8;
    /// `XFS_BLFT_SYMLINK_BUF`.
    pub const SYMLINK: u16 = 9;
    /// `XFS_BLFT_DIR_BLOCK_BUF`.
    pub const DIR_BLOCK: u16 = 10;
    /// `XFS_BLFT_DIR_DATA_BUF`.
    pub const DIR_DATA: u16 = 11;
    /// `XFS_BLFT_DIR_FREE_BUF`.
    pub const DIR_FREE: u16 = 12;
    /// `XFS_BLFT_DIR_LEAF1_BUF`.
    pub const DIR_LEAF1: u16 = 13;
    /// `XFS_BLFT_DIR_LEAFN_BUF`.
    pub const DIR_LEAFN: u16 = 14;
    /// `XFS_BLFT_DA_NODE_BUF`.
    pub const DA_NODE: u16 = 15;
    /// `XFS_BLFT_SB_BUF`.
    pub const SB: u16 = 18;
}

/// What a buffer holds: where its CRC and LSN live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The primary superblock sector.
    Sb,
    /// An AGF sector.
    Agf,
    /// An AGI sector.
    Agi,
    /// An AGFL sector.
    Agfl,
    /// A short-form (AG) B+tree block.
    ShortBtree,
    /// A long-form (bmbt) B+tree block.
    LongBtree,
    /// A block of inodes; only the inodes marked with [`Tx::inode_touched`] are restamped.
    Inodes,
    /// A v5 directory block or data block (`xfs_dir3_blk_hdr`).
    DirBlock,
    /// A v5 directory data block of a leaf or node directory.
    DirData,
    /// A v5 directory leaf block (`xfs_da3_blkinfo` header).
    DirLeaf,
    /// A v5 leaf block of a node directory.
    DirLeafN,
    /// A v5 da B+tree node block.
    DaNode,
    /// A v5 directory free index block.
    DirFree,
    /// A remote symlink block.
    Symlink,
}

impl Kind {
    fn blft(self) -> u16 {
        match self {
            Kind::Sb => blft::SB,
            Kind::Agf => blft::AGF,
            Kind::Agi => blft::AGI,
            Kind::Agfl => blft::AGFL,
            Kind::ShortBtree | Kind::LongBtree => blft::BTREE,
            Kind::Inodes => blft::DINO,
            Kind::DirBlock => blft::DIR_BLOCK,
            Kind::DirLeaf => blft::DIR_LEAF1,
            Kind::DirData => blft::DIR_DATA,
            Kind::DirLeafN => blft::DIR_LEAFN,
            Kind::DaNode => blft::DA_NODE,
            Kind::DirFree => blft::DIR_FREE,
            Kind::Symlink => blft::SYMLINK,
        }
    }

    /// (crc offset, lsn offset) inside the buffer.
    fn crc_lsn(self) -> (usize, usize) {
        match self {
            Kind::Sb => (224, 240),
            Kind::Agf => (216, 208),
            Kind::Agi => (312, 320),
            Kind::Agfl => (32, 24),
            Kind::ShortBtree => (52, 24),
            Kind::LongBtree => (64, 32),
            Kind::Inodes => (100, 112),
            Kind::DirBlock | Kind::DirData => (4, 16),
            Kind::DirLeaf | Kind::DirLeafN | Kind::DaNode => (12, 24),
            Kind::DirFree => (4, 16),
            Kind::Symlink => (12, 48),
        }
    }
}

struct Buf {
    data: Vec<u8>,
    /// The bytes on disk when the buffer was read (None: a new block, not read).
    orig: Option<Vec<u8>>,
    kind: Kind,
    /// Byte offsets (inside `data`) of inodes changed, for [`Kind::Inodes`].
    inodes: Vec<usize>,
}

/// Stores the XFS CRC32C of `b` (with the checksum field at `off` taken as zero) at `off`.
pub fn set_crc(b: &mut [u8], off: usize) {
    b[off..off + 4].fill(0);
    let c = crc32c::crc32c(b);
    b[off..off + 4].copy_from_slice(&c.to_le_bytes());
}

/// One operation's metadata and data changes.
pub struct Tx<'a> {
    pub(crate) fs: &'a Xfs,
    bufs: BTreeMap<u64, Buf>,
    data: Vec<(u64, Vec<u8>)>,
    /// Extents to free when the transaction finishes: (filesystem block, count).
    pub(crate) frees: Vec<(u64, u32)>,
    /// Each AG's records as this transaction changes them.
    pub(crate) ags: BTreeMap<u32, super::alloc::AgMem>,
    /// Changes to the superblock's free block count.
    pub(crate) fdblocks_delta: i64,
    /// Changes to the superblock's inode count.
    pub(crate) icount_delta: i64,
    /// Changes to the superblock's free inode count.
    pub(crate) ifree_delta: i64,
}

impl<'a> Tx<'a> {
    /// An empty transaction on `fs`.
    pub fn new(fs: &'a Xfs) -> Tx<'a> {
        Tx {
            fs,
            bufs: BTreeMap::new(),
            data: Vec::new(),
            frees: Vec::new(),
            ags: BTreeMap::new(),
            fdblocks_delta: 0,
            icount_delta: 0,
            ifree_delta: 0,
        }
    }

    /// The buffer of `len` bytes at byte `off`, read on first use; edits go to the
    /// transaction's copy.
    pub fn buf(&mut self, off: u64, len: usize, kind: Kind) -> Result<&mut Vec<u8>> {
        if !self.bufs.contains_key(&off) {
            let mut data = vec![0u8; len];
            self.fs.read_bytes(&mut data, off)?;
            // A write into corrupt metadata is refused rather than making it worse (inodes
            // are checked one by one as they are parsed).
            if kind != Kind::Inodes {
                let (crc, _) = kind.crc_lsn();
                crate::verify_crc(&data, crc, &|| {
                    format!("XFS {kind:?} metadata at byte {off:#x}")
                })?;
            }
            self.bufs.insert(
                off,
                Buf {
                    orig: Some(data.clone()),
                    data,
                    kind,
                    inodes: Vec::new(),
                },
            );
        }
        let b = self
            .bufs
            .get_mut(&off)
            .ok_or_else(|| Error::invalid("tx"))?;
        if b.data.len() != len || b.kind != kind {
            return Err(Error::corrupt(format!(
                "XFS: metadata at {off:#x} is used as two different structures"
            )));
        }
        Ok(&mut b.data)
    }

    /// A buffer that starts over (a newly allocated block): `len` zero bytes, not read.
    pub fn new_buf(&mut self, off: u64, len: usize, kind: Kind) -> &mut Vec<u8> {
        let b = self.bufs.entry(off).or_insert(Buf {
            data: Vec::new(),
            orig: None,
            kind,
            inodes: Vec::new(),
        });
        b.data = vec![0u8; len];
        b.kind = kind;
        &mut b.data
    }

    /// Forgets a queued buffer (a block freed in this transaction that was new in it).
    pub fn drop_buf(&mut self, off: u64) {
        self.bufs.remove(&off);
    }

    /// True when the transaction already holds the buffer at `off`.
    pub fn has_buf(&self, off: u64) -> bool {
        self.bufs.contains_key(&off)
    }

    /// Marks the inode at byte `inode_off` of inode block buffer `buf_off` as changed.
    pub fn inode_touched(&mut self, buf_off: u64, inode_off: usize) {
        if let Some(b) = self.bufs.get_mut(&buf_off) {
            if !b.inodes.contains(&inode_off) {
                b.inodes.push(inode_off);
            }
        }
    }

    /// Queues file data to go home at byte `off` before the metadata commits.
    pub fn write_data(&mut self, off: u64, data: Vec<u8>) {
        self.data.push((off, data));
    }

    /// Reads bytes at `off`, seeing queued data writes and buffers of this transaction.
    pub fn read(&self, off: u64, out: &mut [u8]) -> Result<()> {
        self.fs.read_bytes(out, off)?;
        let end = off + out.len() as u64;
        for (o, d) in &self.data {
            overlay(out, off, end, *o, d);
        }
        for (o, b) in &self.bufs {
            overlay(out, off, end, *o, &b.data);
        }
        Ok(())
    }

    /// Writes everything: data, log record, metadata home, unmount record.
    pub fn commit(mut self) -> Result<()> {
        let dev = &*self.fs.dev;
        for (off, d) in &self.data {
            dev.write_at(d, *off)?;
        }
        if !self.data.is_empty() {
            dev.flush()?;
        }
        if self.bufs.is_empty() {
            return Ok(());
        }
        let log = Log::open(dev)?;
        let st = log.state()?;
        if !st.clean {
            return Err(Error::unsupported(crate::log::DIRTY));
        }
        let lsn = log.next_lsn(&st)?;
        let cycle = lsn.cycle();
        let mut ups = Vec::with_capacity(self.bufs.len());
        // Buffers read but left as they were are neither logged nor written.
        let mut unchanged = Vec::new();
        // (Nothing writes metadata before this point, so what was read is what is on disk.)
        for (off, b) in &self.bufs {
            let same = match &b.orig {
                Some(o) => *o == b.data,
                None => {
                    let mut disk = vec![0u8; b.data.len()];
                    dev.read_at(&mut disk, *off)?;
                    disk == b.data
                }
            };
            if same {
                unchanged.push(*off);
            }
        }
        for off in unchanged {
            self.bufs.remove(&off);
        }
        if self.bufs.is_empty() {
            return Ok(());
        }
        for (off, b) in &mut self.bufs {
            let (crc, lsn_off) = b.kind.crc_lsn();
            if b.kind == Kind::Inodes {
                let isz = usize::from(self.fs.sb.sb_inodesize);
                for &io in &b.inodes {
                    let ino = &mut b.data[io..io + isz];
                    ino[lsn_off..lsn_off + 8].copy_from_slice(&lsn.0.to_be_bytes());
                    set_crc(ino, crc);
                }
            } else {
                b.data[lsn_off..lsn_off + 8].copy_from_slice(&lsn.0.to_be_bytes());
                set_crc(&mut b.data, crc);
            }
            ups.push(BufUpdate {
                daddr: off / 512,
                data: b.data.clone(),
                blft: b.kind.blft(),
            });
        }
        let tid = (lsn.0 as u32) ^ 0x5846_5300 ^ cycle.rotate_left(16);
        if std::env::var_os("XFS_TX_DEBUG").is_some() {
            for u in &ups {
                eprintln!("buf daddr {} len {} blft {}", u.daddr, u.data.len(), u.blft);
            }
        }
        let st2 = log.write_transaction(&st, tid, &ups, &[])?;
        for (off, b) in &self.bufs {
            dev.write_at(&b.data, *off)?;
        }
        dev.flush()?;
        log.write_unmount(&st2)?;
        Ok(())
    }
}

/// Copies the part of `src` (at byte `so`) that overlaps `[off, end)` into `out`.
fn overlay(out: &mut [u8], off: u64, end: u64, so: u64, src: &[u8]) {
    let se = so + src.len() as u64;
    let (a, b) = (off.max(so), end.min(se));
    if a < b {
        out[(a - off) as usize..(b - off) as usize]
            .copy_from_slice(&src[(a - so) as usize..(b - so) as usize]);
    }
}
