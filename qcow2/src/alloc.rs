//! The write side's metadata: host cluster allocation, refcounts, L1/L2 updates and their
//! ordered write-back.
//!
//! # Internal API (for check, snapshots, resize, amend)
//!
//! Everything that changes metadata runs under one mutex, [`Meta`], taken with
//! [`Qcow2::lock_meta`] (fails on a read-only image). Data cluster I/O happens outside it.
//!
//! | call (all on `&self` with the guard `m`)        | what it does                                     |
//! |-------------------------------------------------|--------------------------------------------------|
//! | `alloc_clusters(m, n) -> host_offset`           | `n` contiguous free clusters, refcount 1 each (grows refcount blocks/table as needed; extends the file) |
//! | `refcount(m, cluster_index) -> u64`             | current (in-memory) refcount                     |
//! | `update_refcount(m, host_off, len, delta)`      | immediate +/- on every cluster touching the range (snapshot create/delete) |
//! | `free_clusters(m, host_off, len)`               | deferred -1: applied after the next metadata flush, because on-disk tables may still point there |
//! | `l2_for_write(m, l1_index) -> l2_offset`        | the active L2 table for an L1 slot, allocated or copied (OFLAG_COPIED) as needed |
//! | `l2_entry(m, l2_offset, index) -> (entry, bitmap)` / `set_l2_entry(m, l2_offset, index, entry, bitmap)` | read / change one entry (cached, written back on flush) |
//! | `set_l1_entry(m, index, value)`                 | change the active L1 (written back on flush)     |
//! | `flush_meta(m)`                                 | safe-order write-back: data file, refcount blocks, fsync, L2 tables, L1, fsync, deferred frees, fsync |
//! | `write_header(m)`                               | rewrites the header cluster from `self.header` (+ extensions, backing name) with the live refcount-table/L1 fields |
//! | `grow_l1(&mut self, min_entries)`               | new, larger active L1 (flushes first; header switched atomically) |
//! | `reload_refcounts(m)`                           | drop cached refcount blocks and re-read the table from `self.header` (after rewriting refcounts on disk) |
//! | `invalidate_caches()`                           | forget cached L2 tables and compressed clusters (after flush, when tables were rewritten behind the cache) |
//!
//! A dirty image (lazy refcounts, not closed cleanly) has its refcounts rebuilt by
//! `crate::check::rebuild_refcounts` in `open_rw` before any of this runs.
//!
//! # Crash safety
//!
//! - A cluster's refcount is raised (in memory) before any table points to it, and refcount
//!   blocks are written and fsynced before any L2 or L1 table that may reference the new
//!   clusters: L2 tables stay pinned in the cache until [`Qcow2::flush_meta`].
//! - Data is written before its L2 entry is changed in memory (so before it can reach disk).
//! - Decrements are deferred until the tables no longer referencing a cluster are on disk:
//!   a crash leaks, never frees something still in use, and a freed cluster is not reused
//!   before that.
//! - New refcount blocks and a grown refcount table are written and fsynced before anything
//!   points to them; the header switch to a new table is one write.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use vdisk_block::{BlockDevice, Error, Preallocation, Resize, Result, WriteZeroes};

use crate::header::{incompatible, Header};
use crate::l2::decode_table;
use crate::refcount::{get_refcount, set_refcount, REFT_OFFSET_MASK};
use crate::util::read_vec;
use crate::Qcow2;

/// A file a qcow2 image can be written to: positional I/O that can also grow, and zero
/// ranges cheaply (used for `preallocation=falloc`).
pub trait ImageFile: BlockDevice + Resize + WriteZeroes {}
impl<T: BlockDevice + Resize + WriteZeroes + ?Sized> ImageFile for T {}

/// More dirty L2 tables than this force a metadata flush (they are pinned in the cache).
const MAX_DIRTY_L2_BYTES: u64 = 4 << 20;
/// Deferred frees kept before a metadata flush applies them.
const MAX_PENDING_FREES: usize = 4096;

/// One cached refcount block.
#[derive(Debug)]
struct RefBlock {
    offset: u64,
    data: Vec<u8>,
    dirty: bool,
}

/// The mutable metadata state of a read-write image; see the module documentation.
#[derive(Debug)]
pub(crate) struct Meta {
    cluster_bits: u32,
    refcount_order: u32,
    /// Offset of the refcount table (authoritative; the header copy may be stale).
    pub reftable_offset: u64,
    /// Its size in clusters.
    pub reftable_clusters: u32,
    /// Its entries (refcount block offsets, reserved bits included).
    pub reftable: Vec<u64>,
    /// Cached refcount blocks by refcount table index.
    refblocks: HashMap<u64, RefBlock>,
    /// No free cluster lies below this cluster index.
    free_hint: u64,
    /// Deferred decrements: (host offset, bytes); every cluster the range touches loses one.
    pending_frees: Vec<(u64, u64)>,
    /// Where the next compressed cluster may go inside a partly used host cluster (0: none).
    compressed_next: u64,
    /// Host clusters the image's tables name as metadata (built when first needed, dropped
    /// whenever a cluster is freed or a table moves): see `Qcow2::check_not_metadata`.
    pub(crate) metadata: Option<MetadataMap>,
    /// The active L1 table changed since the last flush.
    pub l1_dirty: bool,
    /// L2 tables (by offset) changed since the last flush; pinned in the cache.
    pub dirty_l2: BTreeSet<u64>,
    /// The incompatible DIRTY bit is set on disk.
    pub dirty_bit_on_disk: bool,
    /// Lazy refcounts: set the dirty bit before the first change after a flush.
    pub lazy_refcounts: bool,
    /// Guest clusters in use by writers: > 0 shared (in-place data writes), -1 exclusive.
    pub(crate) busy: HashMap<u64, i64>,
    /// Data was written since the last flush.
    pub data_written: bool,
    /// Writers waiting on [`Rw::cond`] for a claim: a claim is given up without a wake-up
    /// call (a futex system call) when nobody waits.
    pub waiters: usize,
}

/// The read-write half of an open image.
pub(crate) struct Rw {
    pub file: Arc<dyn ImageFile>,
    pub data_file: Option<Arc<dyn ImageFile>>,
    pub meta: Mutex<Meta>,
    pub cond: Condvar,
    /// Write metadata back (without syncing) at the end of every write request: see
    /// [`Qcow2::set_write_through`]. Outside the metadata lock, so that a request that finds
    /// it off does not take the lock again.
    pub write_through: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Rw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rw").finish_non_exhaustive()
    }
}

impl Meta {
    /// The state for an image whose header is `h`, reading its refcount table from `file`.
    pub fn load(file: &dyn BlockDevice, h: &Header) -> Result<Meta> {
        let len = u64::from(h.refcount_table_clusters) << h.cluster_bits;
        let reftable = decode_table(&read_vec(
            file,
            h.refcount_table_offset,
            len,
            "refcount table",
        )?);
        Ok(Meta {
            cluster_bits: h.cluster_bits,
            refcount_order: h.refcount_order,
            reftable_offset: h.refcount_table_offset,
            reftable_clusters: h.refcount_table_clusters,
            reftable,
            refblocks: HashMap::new(),
            free_hint: 0,
            pending_frees: Vec::new(),
            compressed_next: 0,
            metadata: None,
            l1_dirty: false,
            dirty_l2: BTreeSet::new(),
            dirty_bit_on_disk: h.incompatible_features & incompatible::DIRTY != 0,
            lazy_refcounts: false,
            busy: HashMap::new(),
            data_written: false,
            waiters: 0,
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// log2 of the entries per refcount block.
    fn rb_bits(&self) -> u32 {
        self.cluster_bits + 3 - self.refcount_order
    }

    fn refcount_max(&self) -> u64 {
        if self.refcount_order == 6 {
            u64::MAX
        } else {
            (1u64 << (1u32 << self.refcount_order)) - 1
        }
    }
}

/// Encodes table words big-endian.
pub(crate) fn encode_table(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

impl Qcow2 {
    pub(crate) fn rw(&self) -> Result<&Rw> {
        self.rw
            .as_deref()
            .ok_or_else(|| Error::unsupported("the image is open read-only"))
    }

    /// Takes the metadata lock of a read-write image.
    pub(crate) fn lock_meta(&self) -> Result<MutexGuard<'_, Meta>> {
        Ok(self.rw()?.meta.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Makes the image file at least `end` bytes long.
    pub(crate) fn ensure_file_len(&self, end: u64) -> Result<()> {
        let rw = self.rw()?;
        if rw.file.size() < end {
            rw.file.resize(end, Preallocation::Off)?;
        }
        Ok(())
    }

    /// The cached refcount block for table index `t`, loading it; `None` when unallocated.
    fn refblock<'m>(&self, m: &'m mut Meta, t: u64) -> Result<Option<&'m mut RefBlock>> {
        let Some(&entry) = usize::try_from(t).ok().and_then(|i| m.reftable.get(i)) else {
            return Ok(None);
        };
        let offset = entry & REFT_OFFSET_MASK;
        if offset == 0 {
            return Ok(None);
        }
        if !m.refblocks.contains_key(&t) {
            let cs = m.cluster_size();
            if offset & (cs - 1) != 0 {
                return Err(Error::corrupt_at(
                    m.reftable_offset + t * 8,
                    format!("refcount block offset {offset:#x} is not cluster aligned"),
                ));
            }
            let data = read_vec(&*self.file, offset, cs, "refcount block")?;
            m.refblocks.insert(
                t,
                RefBlock {
                    offset,
                    data,
                    dirty: false,
                },
            );
        }
        Ok(m.refblocks.get_mut(&t))
    }

    /// The refcount of host cluster `cluster` (in-memory state).
    pub(crate) fn refcount(&self, m: &mut Meta, cluster: u64) -> Result<u64> {
        let rb = m.rb_bits();
        let order = m.refcount_order;
        let t = cluster >> rb;
        Ok(match self.refblock(m, t)? {
            Some(b) => get_refcount(&b.data, cluster & ((1 << rb) - 1), order),
            None => 0,
        })
    }

    /// Sets the refcount of a cluster whose refcount block exists.
    fn set_refcount(&self, m: &mut Meta, cluster: u64, value: u64) -> Result<()> {
        let rb = m.rb_bits();
        let order = m.refcount_order;
        let Some(b) = self.refblock(m, cluster >> rb)? else {
            return Err(Error::corrupt(format!(
                "no refcount block for cluster {cluster:#x}"
            )));
        };
        set_refcount(&mut b.data, cluster & ((1 << rb) - 1), order, value);
        b.dirty = true;
        Ok(())
    }

    /// Adds `delta` to the refcount of every cluster touching `[host_offset, +len)`, now.
    /// Increments need the refcount blocks to exist (clusters from
    /// [`alloc_clusters`](Qcow2::alloc_clusters) always have one).
    pub(crate) fn update_refcount(
        &self,
        m: &mut Meta,
        host_offset: u64,
        len: u64,
        delta: i64,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let first = host_offset >> m.cluster_bits;
        let last = (host_offset + len - 1) >> m.cluster_bits;
        for c in first..=last {
            let old = self.refcount(m, c)?;
            let new = if delta >= 0 {
                old.checked_add(delta.unsigned_abs())
                    .filter(|&v| v <= m.refcount_max())
            } else {
                old.checked_sub(delta.unsigned_abs())
            }
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "refcount of cluster {:#x} would go out of range ({old} {delta:+})",
                    c << m.cluster_bits
                ))
            })?;
            self.set_refcount(m, c, new)?;
            if new == 0 {
                m.free_hint = m.free_hint.min(c);
                let off = c << m.cluster_bits;
                self.l2_cache.remove(off);
                if m.compressed_next >> m.cluster_bits == c {
                    m.compressed_next = 0;
                }
                m.metadata = None;
            }
        }
        Ok(())
    }

    /// Schedules `-1` on every cluster touching `[host_offset, +len)`, applied by the next
    /// [`flush_meta`](Qcow2::flush_meta) once no table on disk points there any more.
    pub(crate) fn free_clusters(&self, m: &mut Meta, host_offset: u64, len: u64) {
        if len > 0 {
            m.pending_frees.push((host_offset, len));
        }
    }

    /// Refuses host clusters `[start, start + n)` when they hold metadata: the header, the
    /// refcount table or a refcount block, the active L1 table or one of its L2 tables, the
    /// snapshot table or a snapshot's L1 table. The allocator only hands out clusters whose
    /// refcount is 0, so this fires only on refcounts that lie, and writing there would
    /// destroy the image. qemu's default metadata overlap checks ("cached") refuse the same
    /// writes; a snapshot's L2 tables are not checked, as there.
    fn check_not_metadata(&self, m: &mut Meta, start: u64, n: u64) -> Result<()> {
        let cb = m.cluster_bits;
        let (a, b) = (start << cb, (start + n) << cb);
        let h = &self.header;
        let tables = [
            ("header", 0, 1u64 << cb),
            (
                "refcount table",
                m.reftable_offset,
                u64::from(m.reftable_clusters) << cb,
            ),
            ("L1 table", h.l1_table_offset, u64::from(h.l1_size) * 8),
        ];
        for (what, off, len) in tables {
            if len > 0 && off < b && a < off.saturating_add(len) {
                return Err(metadata_overlap(a, what));
            }
        }
        if m.metadata.is_none() {
            m.metadata = Some(self.metadata_map(m));
        }
        match m
            .metadata
            .as_ref()
            .and_then(|map| map.find(start, start + n))
        {
            Some(what) => Err(metadata_overlap(a, what)),
            None => Ok(()),
        }
    }

    /// The clusters the active L1 table, the refcount table and the snapshot table name.
    fn metadata_map(&self, m: &Meta) -> MetadataMap {
        let cb = m.cluster_bits;
        let cs = 1u64 << cb;
        let mut ranges = Vec::new();
        let mut bytes = |off: u64, len: u64, what: &'static str| {
            if off != 0 && len > 0 {
                let end = off.saturating_add(len).div_ceil(cs);
                ranges.push((off >> cb, end, what));
            }
        };
        for &e in self
            .view
            .l1
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            bytes(e & crate::l2::L1E_OFFSET_MASK, cs, "an L2 table");
        }
        for &e in &m.reftable {
            bytes(e & REFT_OFFSET_MASK, cs, "a refcount block");
        }
        let snapshots = &self.snapshots;
        let table: u64 = snapshots.iter().map(|s| s.entry_len).sum();
        bytes(self.header.snapshots_offset, table, "snapshot table");
        for s in snapshots {
            bytes(
                s.l1_table_offset,
                u64::from(s.l1_size) * 8,
                "L1 table of a snapshot",
            );
        }
        MetadataMap::new(ranges)
    }

    /// Creates the refcount block for table index `t` at the first cluster it covers (so it
    /// describes itself), writes it and points the table to it.
    fn create_refblock(&self, m: &mut Meta, t: u64) -> Result<()> {
        let cs = m.cluster_size();
        let rb = m.rb_bits();
        let cluster = t << rb;
        self.check_not_metadata(m, cluster, 1)?;
        let offset = cluster << m.cluster_bits;
        let mut data = vec![0u8; cs as usize];
        set_refcount(&mut data, 0, m.refcount_order, 1);
        self.ensure_file_len(offset + cs)?;
        let file = &self.rw()?.file;
        file.write_at(&data, offset)?;
        file.flush()?;
        file.write_at(&offset.to_be_bytes(), m.reftable_offset + t * 8)?;
        m.reftable[t as usize] = offset;
        m.metadata = None;
        m.refblocks.insert(
            t,
            RefBlock {
                offset,
                data,
                dirty: false,
            },
        );
        Ok(())
    }

    /// First cluster index of the unallocated space at the end of the file.
    fn end_cluster(&self) -> Result<u64> {
        Ok(self
            .rw()?
            .file
            .size()
            .div_ceil(1 << self.header.cluster_bits))
    }

    /// Replaces the refcount table with one of at least `min_entries` entries, placed after
    /// everything allocated, and switches the header to it.
    fn grow_reftable(&self, m: &mut Meta, min_entries: u64) -> Result<()> {
        let cs = m.cluster_size();
        let per_cluster = cs / 8;
        let rb = m.rb_bits();
        let old_clusters = u64::from(m.reftable_clusters);
        let mut k = min_entries
            .div_ceil(per_cluster)
            .max(old_clusters + old_clusters.div_ceil(2))
            .max(1);
        let mut start = self.end_cluster()?;
        // Find a place where the table's own clusters do not collide with the refcount
        // blocks that must be created to describe them (each at the start of its range).
        let missing = loop {
            if k * cs > crate::header::MAX_REFCOUNT_TABLE_BYTES {
                return Err(Error::unsupported(
                    "the refcount table would exceed its maximum size",
                ));
            }
            let first_t = start >> rb;
            let last_t = (start + k - 1) >> rb;
            let missing: Vec<u64> = (first_t..=last_t)
                .filter(|&t| {
                    usize::try_from(t)
                        .ok()
                        .and_then(|i| m.reftable.get(i))
                        .is_none_or(|e| e & REFT_OFFSET_MASK == 0)
                })
                .collect();
            if let Some(&t) = missing
                .iter()
                .find(|&&t| (t << rb) >= start && (t << rb) < start + k)
            {
                start = (t << rb) + 1;
                continue;
            }
            let need_entries = missing.iter().max().map_or(0, |t| t + 1).max(min_entries);
            if need_entries > k * per_cluster {
                k = need_entries.div_ceil(per_cluster);
                continue;
            }
            break missing;
        };
        let mut table = m.reftable.clone();
        table.resize((k * per_cluster) as usize, 0);
        let mut end = start + k;
        for &t in &missing {
            let c = t << rb;
            let mut data = vec![0u8; cs as usize];
            set_refcount(&mut data, 0, m.refcount_order, 1);
            table[t as usize] = c << m.cluster_bits;
            end = end.max(c + 1);
            m.refblocks.insert(
                t,
                RefBlock {
                    offset: c << m.cluster_bits,
                    data,
                    dirty: true,
                },
            );
        }
        self.ensure_file_len(end << m.cluster_bits)?;
        // The refcount blocks count through the new table from now on.
        let old_table = std::mem::replace(&mut m.reftable, table);
        let old = (m.reftable_offset, old_clusters);
        for c in start..start + k {
            let v = self.refcount(m, c)?;
            self.set_refcount(m, c, v + 1)?;
        }
        let written = (|| -> Result<()> {
            self.write_refblocks(m)?;
            let file = &self.rw()?.file;
            file.write_at(&encode_table(&m.reftable), start << m.cluster_bits)?;
            file.flush()?;
            let mut fields = (start << m.cluster_bits).to_be_bytes().to_vec();
            fields.extend_from_slice(&(k as u32).to_be_bytes());
            file.write_at(&fields, 48)?;
            file.flush()
        })();
        if let Err(e) = written {
            m.reftable = old_table;
            m.metadata = None;
            m.refblocks.retain(|t, _| !missing.contains(t));
            return Err(e);
        }
        m.reftable_offset = start << m.cluster_bits;
        m.reftable_clusters = k as u32;
        self.free_clusters(m, old.0, old.1 << m.cluster_bits);
        Ok(())
    }

    /// Allocates `n` contiguous host clusters with refcount 1 and returns the first one's
    /// offset. The file is extended to hold them.
    pub(crate) fn alloc_clusters(&self, m: &mut Meta, n: u64) -> Result<u64> {
        if n == 0 {
            return Err(Error::invalid("allocation of zero clusters"));
        }
        let rb = m.rb_bits();
        if n > (1u64 << rb) / 4 {
            return self.alloc_large(m, n);
        }
        'search: loop {
            // First-fit from the hint.
            while self.refcount(m, m.free_hint)? != 0 {
                m.free_hint += 1;
            }
            let mut start = m.free_hint;
            let mut c = start;
            while c < start + n {
                c += 1;
                if self.refcount(m, c - 1)? != 0 {
                    start = c;
                }
            }
            self.check_not_metadata(m, start, n)?;
            for t in (start >> rb)..=((start + n - 1) >> rb) {
                if t >= m.reftable.len() as u64 {
                    self.grow_reftable(m, t + 1)?;
                    continue 'search;
                }
                if m.reftable[t as usize] & REFT_OFFSET_MASK == 0 {
                    self.create_refblock(m, t)?;
                    continue 'search;
                }
            }
            for c in start..start + n {
                self.set_refcount(m, c, 1)?;
            }
            if start == m.free_hint {
                m.free_hint = start + n;
            }
            let cs_bits = m.cluster_bits;
            self.ensure_file_len((start + n) << cs_bits)?;
            return Ok(start << cs_bits);
        }
    }

    /// Allocates a run too long for first-fit with self-describing refcount blocks: at the
    /// end of the file, followed by the refcount blocks that describe it.
    fn alloc_large(&self, m: &mut Meta, n: u64) -> Result<u64> {
        let rb = m.rb_bits();
        loop {
            let start = self.end_cluster()?;
            // New blocks go right after the run; they may need blocks of their own.
            let mut k = 0u64;
            let missing = loop {
                let last_t = (start + n + k - 1) >> rb;
                let missing: Vec<u64> = ((start >> rb)..=last_t)
                    .filter(|&t| {
                        usize::try_from(t)
                            .ok()
                            .and_then(|i| m.reftable.get(i))
                            .is_none_or(|e| e & REFT_OFFSET_MASK == 0)
                    })
                    .collect();
                if missing.len() as u64 == k {
                    break missing;
                }
                k = missing.len() as u64;
            };
            if let Some(&t) = missing.last() {
                if t >= m.reftable.len() as u64 {
                    self.grow_reftable(m, t + 1)?;
                    continue;
                }
            }
            let cs = m.cluster_size();
            let file = Arc::clone(&self.rw()?.file);
            self.ensure_file_len((start + n + k) << m.cluster_bits)?;
            for (i, &t) in missing.iter().enumerate() {
                let off = (start + n + i as u64) << m.cluster_bits;
                m.reftable[t as usize] = off;
                m.metadata = None;
                m.refblocks.insert(
                    t,
                    RefBlock {
                        offset: off,
                        data: vec![0u8; cs as usize],
                        dirty: true,
                    },
                );
            }
            for c in start..start + n + k {
                self.set_refcount(m, c, 1)?;
            }
            self.write_refblocks(m)?;
            file.flush()?;
            for &t in &missing {
                file.write_at(
                    &m.reftable[t as usize].to_be_bytes(),
                    m.reftable_offset + t * 8,
                )?;
            }
            return Ok(start << m.cluster_bits);
        }
    }

    /// Room for `size` bytes of compressed data (less than a cluster), packed as qemu packs
    /// it: right after the previous compressed data, running over into the next host
    /// cluster when that is the one the allocator hands out next, so that a conversion's
    /// compressed clusters form one contiguous byte stream. Each compressed cluster adds one
    /// reference to every host cluster it touches.
    ///
    /// Before this ran over, data that did not fit the rest of a cluster started a new one:
    /// a 2 GiB conversion whose text compressed to ~37 KiB per 64 KiB cluster came out
    /// 108 MB (16%) larger than qemu-img's.
    pub(crate) fn alloc_bytes(&self, m: &mut Meta, size: u64) -> Result<u64> {
        let cs = m.cluster_size();
        let bits = m.cluster_bits;
        let after = |end: u64| if end & (cs - 1) == 0 { 0 } else { end };
        let next = m.compressed_next;
        if next != 0 && size < cs {
            let c = next >> bits;
            let rc = self.refcount(m, c)?;
            if rc > 0 && rc < m.refcount_max() {
                let room = cs - (next & (cs - 1));
                if size <= room {
                    self.set_refcount(m, c, rc + 1)?;
                    m.compressed_next = after(next + size);
                    return Ok(next);
                }
                let fresh = self.alloc_clusters(m, 1)?;
                if fresh == (c + 1) << bits {
                    // The data runs over into the fresh cluster (whose one reference is
                    // this data's).
                    self.set_refcount(m, c, rc + 1)?;
                    m.compressed_next = after(next + size);
                    return Ok(next);
                }
                m.compressed_next = after(fresh + size);
                return Ok(fresh);
            }
        }
        let off = self.alloc_clusters(m, 1)?;
        m.compressed_next = if size >= cs { 0 } else { after(off + size) };
        Ok(off)
    }

    /// Writes every dirty refcount block (no fsync).
    fn write_refblocks(&self, m: &mut Meta) -> Result<()> {
        let file = &self.rw()?.file;
        let mut keys: Vec<u64> = m
            .refblocks
            .iter()
            .filter(|(_, b)| b.dirty)
            .map(|(&t, _)| t)
            .collect();
        keys.sort_unstable();
        for t in keys {
            if let Some(b) = m.refblocks.get_mut(&t) {
                file.write_at(&b.data, b.offset)?;
                b.dirty = false;
            }
        }
        Ok(())
    }

    /// Sets the DIRTY bit on disk before the first change after a flush (lazy refcounts).
    pub(crate) fn mark_dirty(&self, m: &mut Meta) -> Result<()> {
        if !m.lazy_refcounts || m.dirty_bit_on_disk {
            return Ok(());
        }
        let file = &self.rw()?.file;
        let bits = self.header.incompatible_features | incompatible::DIRTY;
        file.write_at(&bits.to_be_bytes(), 72)?;
        file.flush()?;
        m.dirty_bit_on_disk = true;
        Ok(())
    }

    /// Writes back dirty metadata in the crash-safe order and fsyncs; see the module docs.
    pub(crate) fn flush_meta(&self, m: &mut Meta) -> Result<()> {
        self.write_back_meta(m, true)
    }

    /// [`Qcow2::flush_meta`]'s write-back in the same order, syncing the files between the
    /// steps only with `sync`. Without, the order still holds for anything reading the file
    /// later through the page cache — a killed process loses nothing it wrote back — but not
    /// across a power loss; the lazy-refcounts dirty bit stays set until a synced flush.
    pub(crate) fn write_back_meta(&self, m: &mut Meta, sync: bool) -> Result<()> {
        let rw = self.rw()?;
        if sync {
            if let Some(d) = &rw.data_file {
                d.flush()?;
            }
        }
        self.write_refblocks(m)?;
        if sync {
            rw.file.flush()?;
        }
        let tables = m.dirty_l2.len() + usize::from(m.l1_dirty);
        for &off in &m.dirty_l2 {
            let Some(t) = self.l2_cache.get(off) else {
                return Err(Error::corrupt_at(off, "dirty L2 table lost from the cache"));
            };
            rw.file.write_at(&encode_table(&t), off)?;
        }
        if m.l1_dirty {
            let l1 = self.view.l1.read().unwrap_or_else(|e| e.into_inner());
            rw.file
                .write_at(&encode_table(&l1), self.view.l1_table_offset)?;
        }
        if tables > 0 && sync {
            rw.file.flush()?;
        }
        for off in std::mem::take(&mut m.dirty_l2) {
            self.l2_cache.unpin(off);
        }
        m.l1_dirty = false;
        let frees = std::mem::take(&mut m.pending_frees);
        if !frees.is_empty() {
            for (off, len) in frees {
                self.update_refcount(m, off, len, -1)?;
                self.compressed_cache.remove(off);
            }
            self.write_refblocks(m)?;
            if sync {
                rw.file.flush()?;
            }
        }
        if !sync {
            return Ok(());
        }
        if m.dirty_bit_on_disk && m.lazy_refcounts {
            let bits = self.header.incompatible_features & !incompatible::DIRTY;
            rw.file.write_at(&bits.to_be_bytes(), 72)?;
            rw.file.flush()?;
            m.dirty_bit_on_disk = false;
        }
        m.data_written = false;
        Ok(())
    }

    /// Flushes when the pinned tables or the deferred frees grow too many.
    pub(crate) fn maybe_flush_meta(&self, m: &mut Meta) -> Result<()> {
        if m.dirty_l2.len() as u64 * self.geom.cluster_size() > MAX_DIRTY_L2_BYTES
            || m.pending_frees.len() > MAX_PENDING_FREES
        {
            self.flush_meta(m)?;
        }
        Ok(())
    }

    /// Rewrites the header cluster: `self.header` with the live refcount table fields,
    /// the extensions and the backing file name. One write, then fsync.
    pub(crate) fn write_header(&self, m: &Meta) -> Result<()> {
        let mut h = self.header.clone();
        h.refcount_table_offset = m.reftable_offset;
        h.refcount_table_clusters = m.reftable_clusters;
        if m.dirty_bit_on_disk {
            h.incompatible_features |= incompatible::DIRTY;
        }
        let bytes = crate::create::header_cluster(
            &mut h,
            &self.extensions,
            self.backing_file_name.as_deref(),
        )?;
        let file = &self.rw()?.file;
        file.write_at(&bytes, 0)?;
        file.flush()
    }

    /// Drops the cached refcount blocks and re-reads the refcount table named by
    /// `self.header` (after the refcounts were rewritten on disk).
    #[allow(dead_code)] // for check/repair
    pub(crate) fn reload_refcounts(&self, m: &mut Meta) -> Result<()> {
        let fresh = Meta::load(&*self.file, &self.header)?;
        m.reftable = fresh.reftable;
        m.metadata = None;
        m.reftable_offset = fresh.reftable_offset;
        m.reftable_clusters = fresh.reftable_clusters;
        m.refblocks.clear();
        m.free_hint = 0;
        m.compressed_next = 0;
        Ok(())
    }

    /// Forgets cached L2 tables and compressed clusters. Dirty tables must have been flushed.
    #[allow(dead_code)] // for snapshots
    pub(crate) fn invalidate_caches(&self) {
        self.l2_cache.clear();
        self.compressed_cache.clear();
    }

    /// Makes the active L1 table hold at least `min_entries` entries: flushes, writes a new
    /// table after the allocated space, switches the header to it (one write) and frees the
    /// old one. Does not change the virtual size.
    pub(crate) fn grow_l1(&mut self, min_entries: u64) -> Result<()> {
        let old_len = self.view.l1.read().unwrap_or_else(|e| e.into_inner()).len() as u64;
        if min_entries <= old_len {
            return Ok(());
        }
        if min_entries * 8 > crate::header::MAX_L1_BYTES {
            return Err(Error::unsupported(
                "the L1 table would exceed its maximum size",
            ));
        }
        let cs = self.geom.cluster_size();
        let mut m = self.lock_meta()?;
        self.flush_meta(&mut m)?;
        let bytes = (min_entries * 8).next_multiple_of(cs);
        let new_off = self.alloc_clusters(&mut m, bytes / cs)?;
        let mut l1 = self
            .view
            .l1
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        l1.resize(min_entries as usize, 0);
        let file = Arc::clone(&self.rw()?.file);
        file.write_at(&encode_table(&l1), new_off)?;
        self.flush_meta(&mut m)?;
        let mut fields = (min_entries as u32).to_be_bytes().to_vec();
        fields.extend_from_slice(&new_off.to_be_bytes());
        file.write_at(&fields, 36)?;
        file.flush()?;
        let old_off = self.view.l1_table_offset;
        let old_bytes = (old_len * 8).next_multiple_of(cs);
        if old_len > 0 {
            self.free_clusters(&mut m, old_off, old_bytes);
        }
        drop(m);
        self.header.l1_size = min_entries as u32;
        self.header.l1_table_offset = new_off;
        self.view.l1_table_offset = new_off;
        *self.view.l1.write().unwrap_or_else(|e| e.into_inner()) = l1;
        let mut m = self.lock_meta()?;
        m.metadata = None;
        self.flush_meta(&mut m)
    }

    /// The active L1 entry `index` (0 past the table).
    pub(crate) fn l1_entry(&self, index: u64) -> u64 {
        let l1 = self.view.l1.read().unwrap_or_else(|e| e.into_inner());
        usize::try_from(index)
            .ok()
            .and_then(|i| l1.get(i).copied())
            .unwrap_or(0)
    }

    /// Changes the active L1 entry `index` (in memory; written back by `flush_meta`).
    pub(crate) fn set_l1_entry(&self, m: &mut Meta, index: u64, value: u64) -> Result<()> {
        let mut l1 = self.view.l1.write().unwrap_or_else(|e| e.into_inner());
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| l1.get_mut(i))
            .ok_or_else(|| Error::invalid(format!("L1 index {index} is beyond the table")))?;
        *slot = value;
        m.l1_dirty = true;
        m.metadata = None;
        Ok(())
    }

    /// The entry (and extended-L2 bitmap, 0 otherwise) at `index` of the L2 table at
    /// `l2_offset`.
    pub(crate) fn l2_entry(&self, l2_offset: u64, index: u64) -> Result<(u64, u64)> {
        let w = index as usize * self.geom.words_per_entry();
        let pick = |t: &[u64]| -> Result<(u64, u64)> {
            let e = t
                .get(w)
                .copied()
                .ok_or_else(|| Error::corrupt_at(l2_offset, "L2 index outside its table"))?;
            let b = if self.geom.extended {
                t.get(w + 1).copied().unwrap_or(0)
            } else {
                0
            };
            Ok((e, b))
        };
        if let Some(hit) = self.l2_cache.with(l2_offset, pick) {
            return hit;
        }
        pick(&self.l2_table(l2_offset)?)
    }

    /// Changes one L2 entry (in the cache, pinned; written back by `flush_meta`).
    pub(crate) fn set_l2_entry(
        &self,
        m: &mut Meta,
        l2_offset: u64,
        index: u64,
        entry: u64,
        bitmap: u64,
    ) -> Result<()> {
        let t = self.l2_table(l2_offset)?;
        let w = index as usize * self.geom.words_per_entry();
        let ext = self.geom.extended;
        if w + usize::from(ext) >= t.len() {
            return Err(Error::corrupt_at(l2_offset, "L2 index outside its table"));
        }
        self.l2_cache.modify_pinned(l2_offset, t, |t| {
            t[w] = entry;
            if ext {
                t[w + 1] = bitmap;
            }
        });
        m.dirty_l2.insert(l2_offset);
        Ok(())
    }

    /// The L2 table for L1 slot `l1_index`, ready to be changed: allocated (zeroed) when the
    /// slot is empty, copied when it is shared with a snapshot (no OFLAG_COPIED).
    pub(crate) fn l2_for_write(&self, m: &mut Meta, l1_index: u64) -> Result<u64> {
        let entry = self.l1_entry(l1_index);
        let old = entry & crate::l2::L1E_OFFSET_MASK;
        if old != 0 && entry & crate::l2::OFLAG_COPIED != 0 {
            return Ok(old);
        }
        self.mark_dirty(m)?;
        let cs = self.geom.cluster_size();
        let new = self.alloc_clusters(m, 1)?;
        let table: Arc<[u64]> = if old == 0 {
            vec![0u64; (cs / 8) as usize].into()
        } else {
            self.l2_table(old)?
        };
        // Pinned in the cache, so nobody reads the cluster's stale bytes; the table and the
        // L1 entry pointing to it reach disk only after the refcounts do (flush_meta).
        self.l2_cache.insert_pinned(new, table);
        m.dirty_l2.insert(new);
        self.set_l1_entry(m, l1_index, new | crate::l2::OFLAG_COPIED)?;
        if old != 0 {
            self.free_clusters(m, old, cs);
        }
        Ok(new)
    }
}

/// "The refcounts call this cluster free, but it holds the {what}."
fn metadata_overlap(at: u64, what: &str) -> Error {
    Error::corrupt_at(
        at,
        format!("the refcounts call this cluster free, but it holds the {what}"),
    )
}

/// Cluster ranges `[start, end)` holding metadata, sorted by start, for overlap queries.
#[derive(Debug)]
pub(crate) struct MetadataMap {
    ranges: Vec<(u64, u64, &'static str)>,
    /// The longest range, so a query knows how far back a range covering it may start.
    longest: u64,
}

impl MetadataMap {
    fn new(mut ranges: Vec<(u64, u64, &'static str)>) -> MetadataMap {
        ranges.sort_unstable();
        let longest = ranges.iter().map(|r| r.1 - r.0).max().unwrap_or(0);
        MetadataMap { ranges, longest }
    }

    /// What some range overlapping clusters `[a, b)` holds.
    fn find(&self, a: u64, b: u64) -> Option<&'static str> {
        let from = self
            .ranges
            .partition_point(|r| r.0 < a.saturating_sub(self.longest));
        self.ranges[from..]
            .iter()
            .take_while(|r| r.0 < b)
            .find(|r| r.1 > a)
            .map(|r| r.2)
    }
}
