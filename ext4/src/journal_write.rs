//! Metadata through the jbd2 journal: every write operation of [`super::Ext4Rw`] is one
//! transaction, so the kernel's (or e2fsck's) recovery after a crash makes it atomic.
//!
//! During an operation, metadata blocks ([`Ext4::put_block`]) collect in memory (reads see
//! them first); file data goes to its home at once, as in the kernel's data=ordered mode. At
//! the end of the operation the transaction is committed and checkpointed:
//!
//! 1. descriptor blocks, the blocks' copies and a commit block are written into the log from
//!    its first block, with the sequence number the journal superblock says comes next;
//! 2. the journal superblock gets `s_start` = first log block: this single block write is the
//!    commit point (before it, recovery finds an empty journal; after it, the transaction);
//! 3. the blocks are written home;
//! 4. the journal superblock is marked empty again with the next sequence number.
//!
//! The filesystem superblock carries needs_recovery from the first change until
//! [`FileSystemMut::flush`](vdisk_fs::FileSystemMut::flush), as while the kernel has it
//! mounted (without it the kernel would wipe the journal instead of replaying it). Since each
//! transaction is checkpointed before the next begins, no older transaction is ever replayed
//! over a newer write, so revoke records are never needed. A transaction that outgrows the log
//! is committed in parts (each part a consistent prefix of the operation's writes, the same
//! state the write ordering of the engine leaves after a crash).
//!
//! Journals this module does not write (external, v1 superblock, checksum v1 or v2, async
//! commit, fast commits) leave the engine on its ordering alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use vdisk_block::Result;

use super::bytes::{be32, put};
use super::checksum::crc32c_raw;
use super::journal::{
    JBD2_COMMIT_BLOCK, JBD2_DESCRIPTOR_BLOCK, JBD2_FEATURE_INCOMPAT_64BIT,
    JBD2_FEATURE_INCOMPAT_CSUM_V3, JBD2_FEATURE_INCOMPAT_REVOKE, JBD2_FLAG_ESCAPE,
    JBD2_FLAG_LAST_TAG, JBD2_FLAG_SAME_UUID, JBD2_MAGIC_NUMBER, JBD2_SUPERBLOCK_V2,
};
use super::superblock::compat;
use super::{Ext4, Run};

/// The longest journal (in blocks) whose map vdisk keeps in memory (1 GiB at 4 KiB blocks,
/// four times the largest journal mke2fs makes).
const MAX_JOURNAL_BLOCKS: u64 = 1 << 18;
/// Offset of `s_checksum` in the journal superblock.
const JSB_CHECKSUM: usize = 0xFC;
/// Bytes of the journal superblock the checksum covers.
const JSB_SIZE: usize = 1024;
/// Offset of `h_chksum[0]` in a commit block.
const COMMIT_CHKSUM: usize = 0x10;

/// The journal as the writer uses it.
pub(crate) struct JournalWriter {
    /// Physical block of each journal block.
    phys: Vec<u64>,
    /// First and one-past-last block of the log.
    first: u32,
    last: u32,
    /// Sequence number of the next transaction.
    seq: u32,
    csum_v3: bool,
    bit64: bool,
    uuid: [u8; 16],
    /// jbd2's checksum seed: crc32c of the journal UUID.
    seed: u32,
    /// The journal superblock's block, as on disk.
    jsb: Vec<u8>,
}

/// The journal writer and the transaction being built.
#[derive(Default)]
pub(crate) struct JState {
    pub writer: Option<JournalWriter>,
    /// Flush the device at the transaction's ordering points (see
    /// [`super::Ext4Rw::set_write_barriers`]).
    pub barriers: bool,
    /// Metadata blocks of the open transaction, by block number.
    pub txn: Option<BTreeMap<u64, Arc<[u8]>>>,
}

/// The journal state behind its lock, with a flag readers check without taking it (a
/// transaction is only open while the engine's write lock is held, so no reader runs then;
/// the flag keeps concurrent readers off the mutex).
#[derive(Default)]
pub(crate) struct JournalState {
    state: std::sync::Mutex<JState>,
    txn_open: std::sync::atomic::AtomicBool,
}

impl JournalWriter {
    fn tag_bytes(&self) -> usize {
        if self.csum_v3 {
            16
        } else if self.bit64 {
            12
        } else {
            8
        }
    }

    /// Tags one descriptor block holds (the first tag is followed by the UUID).
    fn tags_per_desc(&self, bs: usize) -> usize {
        let tail = if self.csum_v3 { 4 } else { 0 };
        (bs - 12 - 16 - tail) / self.tag_bytes()
    }

    /// The most blocks one transaction can carry in the log.
    fn capacity(&self, bs: usize) -> usize {
        let log = (self.last - self.first) as usize;
        let k = self.tags_per_desc(bs);
        // n copies + ceil(n / k) descriptors + 1 commit <= log.
        let n = (log.saturating_sub(1)) * k / (k + 1);
        n.saturating_sub(1)
    }

    fn seal_jsb(&mut self) {
        if self.csum_v3 {
            put(&mut self.jsb, JSB_CHECKSUM, [0; 4]);
            let c = crc32c_raw(!0, &self.jsb[..JSB_SIZE]);
            put(&mut self.jsb, JSB_CHECKSUM, c.to_be_bytes());
        }
    }
}

impl Ext4 {
    /// Sets up journaled writes when the filesystem has a journal vdisk can write (called
    /// after any recovery, so the journal is empty).
    pub(crate) fn journal_setup(&mut self) -> Result<()> {
        let w = self.journal_writer()?;
        self.jstate().writer = w;
        Ok(())
    }

    fn journal_writer(&self) -> Result<Option<JournalWriter>> {
        if !self.sb.has_compat(compat::HAS_JOURNAL) || self.sb.s_journal_inum == 0 {
            return Ok(None);
        }
        let bs = self.bs();
        let j = self.inode(self.sb.s_journal_inum)?;
        let nblocks = j.i_size / bs;
        if !(64..=MAX_JOURNAL_BLOCKS).contains(&nblocks) {
            return Ok(None);
        }
        let mut phys = Vec::with_capacity(nblocks as usize);
        while (phys.len() as u64) < nblocks {
            match self.map(&j, phys.len() as u64)? {
                Run::Data { start, len } => {
                    let n = len.min(nblocks - phys.len() as u64);
                    phys.extend((0..n).map(|i| start + i));
                }
                Run::Zero { .. } => return Ok(None),
            }
        }
        let mut jsb = vec![0u8; bs as usize];
        self.dev.read_at(&mut jsb, phys[0] * bs)?;
        let compat_f = be32(&jsb, 0x24);
        let incompat = be32(&jsb, 0x28);
        let known = JBD2_FEATURE_INCOMPAT_REVOKE
            | JBD2_FEATURE_INCOMPAT_64BIT
            | JBD2_FEATURE_INCOMPAT_CSUM_V3;
        let (first, maxlen, start) = (be32(&jsb, 0x14), be32(&jsb, 0x10), be32(&jsb, 0x1C));
        if be32(&jsb, 0) != JBD2_MAGIC_NUMBER
            || be32(&jsb, 4) != JBD2_SUPERBLOCK_V2
            || be32(&jsb, 0xC) != self.sb.block_size
            || compat_f != 0
            || incompat & !known != 0
            || start != 0
            || first == 0
            || u64::from(maxlen) > nblocks
            || first + 16 > maxlen
            || be32(&jsb, 0x40) > 1
        {
            return Ok(None);
        }
        let csum_v3 = incompat & JBD2_FEATURE_INCOMPAT_CSUM_V3 != 0;
        if csum_v3 && jsb[0x50] != 4 {
            return Ok(None);
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&jsb[0x30..0x40]);
        Ok(Some(JournalWriter {
            phys,
            first,
            last: maxlen,
            seq: be32(&jsb, 0x18),
            csum_v3,
            bit64: incompat & JBD2_FEATURE_INCOMPAT_64BIT != 0,
            uuid,
            seed: crc32c_raw(!0, &uuid),
            jsb,
        }))
    }

    pub(crate) fn jstate(&self) -> std::sync::MutexGuard<'_, JState> {
        self.journal_state
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn txn_open(&self) -> bool {
        self.journal_state
            .txn_open
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_txn_open(&self, open: bool) {
        self.journal_state
            .txn_open
            .store(open, std::sync::atomic::Ordering::Release);
    }

    /// True when writes go through the journal.
    pub(crate) fn journaled(&self) -> bool {
        self.jstate().writer.is_some()
    }

    /// Opens a transaction (when the journal is writable).
    pub(crate) fn begin_txn(&self) {
        let mut j = self.jstate();
        if j.writer.is_some() {
            j.txn = Some(BTreeMap::new());
            self.set_txn_open(true);
        }
    }

    /// The open transaction's copy of block `nr`.
    pub(crate) fn txn_block(&self, nr: u64) -> Option<Arc<[u8]>> {
        if !self.txn_open() {
            return None;
        }
        self.jstate().txn.as_ref()?.get(&nr).cloned()
    }

    /// Lays the open transaction's blocks over `buf`, read from device offset `offset`.
    pub(crate) fn txn_overlay(&self, buf: &mut [u8], offset: u64) {
        if !self.txn_open() {
            return;
        }
        let j = self.jstate();
        let Some(t) = j.txn.as_ref() else { return };
        if t.is_empty() || buf.is_empty() {
            return;
        }
        let bs = self.bs();
        let first = offset / bs;
        let last = (offset + buf.len() as u64 - 1) / bs;
        for (&nr, data) in t.range(first..=last) {
            let bstart = nr * bs;
            let from = bstart.max(offset);
            let to = (bstart + bs).min(offset + buf.len() as u64);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&data[(from - bstart) as usize..(to - bstart) as usize]);
        }
    }

    /// Puts metadata block `nr` into the open transaction; false when there is none (the
    /// caller writes it home). A transaction that fills the log is committed first.
    pub(crate) fn txn_put(&self, nr: u64, data: &Arc<[u8]>) -> Result<bool> {
        let mut j = self.jstate();
        let bs = self.bs() as usize;
        let cap = match j.writer.as_ref() {
            Some(w) => w.capacity(bs),
            None => return Ok(false),
        };
        let Some(t) = j.txn.as_mut() else {
            return Ok(false);
        };
        if t.len() >= cap && !t.contains_key(&nr) {
            let blocks = std::mem::take(t);
            self.commit_blocks(&mut j, blocks)?;
        }
        if let Some(t) = j.txn.as_mut() {
            t.insert(nr, data.clone());
        }
        Ok(true)
    }

    /// File data is being written over blocks `first..=last`: older metadata copies of them
    /// in the open transaction must not be replayed over it.
    pub(crate) fn txn_forget(&self, first: u64, last: u64) {
        let mut j = self.jstate();
        if let Some(t) = j.txn.as_mut() {
            let doomed: Vec<u64> = t.range(first..=last).map(|(&k, _)| k).collect();
            for k in doomed {
                t.remove(&k);
            }
        }
    }

    /// Commits and checkpoints the open transaction, and closes it.
    pub(crate) fn commit_txn(&self) -> Result<()> {
        let mut j = self.jstate();
        self.set_txn_open(false);
        let Some(blocks) = j.txn.take() else {
            return Ok(());
        };
        self.commit_blocks(&mut j, blocks)
    }

    fn commit_blocks(&self, j: &mut JState, blocks: BTreeMap<u64, Arc<[u8]>>) -> Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        let Some(w) = j.writer.as_mut() else {
            for (nr, b) in &blocks {
                self.dev.write_at(b, nr * self.bs())?;
            }
            return Ok(());
        };
        let bs = self.bs();
        let bsu = bs as usize;
        let seq = w.seq;
        let k = w.tags_per_desc(bsu);
        let tb = w.tag_bytes();
        let list: Vec<(&u64, &Arc<[u8]>)> = blocks.iter().collect();
        let mut pos = w.first;
        let write_log = |w: &JournalWriter, pos: u32, b: &[u8]| -> Result<()> {
            self.dev.write_at(b, w.phys[pos as usize] * bs)
        };
        let header = |b: &mut [u8], kind: u32| {
            put(b, 0, JBD2_MAGIC_NUMBER.to_be_bytes());
            put(b, 4, kind.to_be_bytes());
            put(b, 8, seq.to_be_bytes());
        };
        for chunk in list.chunks(k) {
            let mut desc = vec![0u8; bsu];
            header(&mut desc, JBD2_DESCRIPTOR_BLOCK);
            let mut off = 12;
            let mut copies = Vec::with_capacity(chunk.len());
            for (i, &(&nr, data)) in chunk.iter().enumerate() {
                let mut copy = data.to_vec();
                let mut flags = 0u32;
                if be32(&copy, 0) == JBD2_MAGIC_NUMBER {
                    put(&mut copy, 0, [0; 4]);
                    flags |= JBD2_FLAG_ESCAPE;
                }
                if i > 0 {
                    flags |= JBD2_FLAG_SAME_UUID;
                }
                if i + 1 == chunk.len() {
                    flags |= JBD2_FLAG_LAST_TAG;
                }
                let t = &mut desc[off..off + tb];
                put(t, 0, (nr as u32).to_be_bytes());
                if w.csum_v3 {
                    let c = crc32c_raw(crc32c_raw(w.seed, &seq.to_be_bytes()), &copy);
                    put(t, 4, flags.to_be_bytes());
                    put(t, 8, ((nr >> 32) as u32).to_be_bytes());
                    put(t, 12, c.to_be_bytes());
                } else {
                    put(t, 6, (flags as u16).to_be_bytes());
                    if w.bit64 {
                        put(t, 8, ((nr >> 32) as u32).to_be_bytes());
                    }
                }
                off += tb;
                if i == 0 {
                    desc[off..off + 16].copy_from_slice(&w.uuid);
                    off += 16;
                }
                copies.push(copy);
            }
            if w.csum_v3 {
                let c = crc32c_raw(w.seed, &desc);
                put(&mut desc, bsu - 4, c.to_be_bytes());
            }
            write_log(w, pos, &desc)?;
            pos += 1;
            for c in copies {
                write_log(w, pos, &c)?;
                pos += 1;
            }
        }
        let mut commit = vec![0u8; bsu];
        header(&mut commit, JBD2_COMMIT_BLOCK);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        put(&mut commit, 0x30, now.as_secs().to_be_bytes());
        put(&mut commit, 0x38, now.subsec_nanos().to_be_bytes());
        if w.csum_v3 {
            let c = crc32c_raw(w.seed, &commit);
            put(&mut commit, COMMIT_CHKSUM, c.to_be_bytes());
        }
        write_log(w, pos, &commit)?;
        let barriers = j.barriers;
        let Some(w) = j.writer.as_mut() else {
            return Ok(());
        };
        let barrier = || if barriers { self.dev.flush() } else { Ok(()) };
        // File data and the log before the commit point, the commit point before the blocks
        // go home, the blocks home before the journal is emptied.
        barrier()?;
        // The commit point: the journal now holds the transaction.
        put(&mut w.jsb, 0x18, seq.to_be_bytes());
        put(&mut w.jsb, 0x1C, w.first.to_be_bytes());
        w.seal_jsb();
        write_log(w, 0, &w.jsb)?;
        barrier()?;
        // Checkpoint.
        for (&nr, b) in &list {
            self.dev.write_at(b, nr * bs)?;
        }
        barrier()?;
        w.seq = seq.wrapping_add(1);
        put(&mut w.jsb, 0x18, w.seq.to_be_bytes());
        put(&mut w.jsb, 0x1C, [0; 4]);
        w.seal_jsb();
        write_log(w, 0, &w.jsb)
    }
}
