//! The guest-facing write path: `write_at`, zero writes, discard and compressed clusters.
//!
//! Each request is split at cluster boundaries. A cluster that is already a standard data
//! cluster with OFLAG_COPIED (and, with extended L2, whose touched subclusters are allocated)
//! is overwritten in place under a *shared* claim on the guest cluster; everything else takes
//! an *exclusive* claim: allocate (under the metadata lock), write the data and the
//! copy-on-write bytes (outside it), then point the L2 entry at the new cluster (under it
//! again) and schedule the old storage to be freed. Claims are per guest cluster, so writers
//! to different clusters never wait for each other's data I/O.

use std::sync::{Arc, MutexGuard};

use vdisk_block::{BlockDevice, BlockDeviceExt, Discard, Error, Result, WriteZeroes};

use crate::alloc::{ImageFile, Meta, Rw};
use crate::header::{autoclear, compatible, incompatible, CompressionType};
use crate::l2::{L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO};
use crate::Qcow2;

/// The most bytes one fresh-run write covers (a conversion's window).
const MAX_FRESH_RUN_BYTES: u64 = 2 << 20;

/// Every subcluster of an extended L2 entry.
const ALL_SUBCLUSTERS: u64 = 0xffff_ffff;

/// Bits `a..b` (b <= 32) of a subcluster mask.
fn sc_mask(a: u64, b: u64) -> u64 {
    if b <= a {
        0
    } else {
        (ALL_SUBCLUSTERS >> (32 - (b - a))) << a
    }
}

impl Qcow2 {
    /// Opens an image for reading and writing. Refuses images flagged corrupt and images with
    /// persistent bitmaps. A dirty image (lazy refcounts, not closed cleanly) first has its
    /// refcounts rebuilt from its tables, as qemu does on a read-write open.
    pub fn open_rw<F: ImageFile + 'static>(file: Arc<F>) -> Result<Qcow2> {
        let mut q = Qcow2::open(file.clone() as Arc<dyn BlockDevice>)?;
        let h = &q.header;
        if h.incompatible_features & incompatible::DIRTY != 0
            && h.incompatible_features & incompatible::CORRUPT == 0
            && !file.is_read_only()
        {
            crate::check::rebuild_refcounts(&q, &*file)?;
            // The repair rewrote refcounts and cleared the dirty bit on disk: start afresh.
            q = Qcow2::open(file.clone() as Arc<dyn BlockDevice>)?;
        }
        q.enable_writes(file)?;
        Ok(q)
    }

    /// Turns an image opened with [`Qcow2::open`] on `file` into a read-write one.
    pub(crate) fn enable_writes(&mut self, file: Arc<dyn ImageFile>) -> Result<()> {
        if file.is_read_only() {
            return Err(Error::invalid("the image file is open read-only"));
        }
        let h = &self.header;
        if h.incompatible_features & incompatible::CORRUPT != 0 {
            return Err(Error::corrupt(
                "the image is marked corrupt and must not be written; repair it with 'vdisk check -r all'",
            ));
        }
        if h.incompatible_features & incompatible::DIRTY != 0 {
            // open_rw rebuilds the refcounts of a dirty image first; reaching here means the
            // repair left the bit set.
            return Err(Error::unsupported(
                "the image is dirty (its refcounts may be stale); repair it with 'vdisk check -r all' before writing",
            ));
        }
        if h.autoclear_features & autoclear::BITMAPS != 0 {
            return Err(Error::unsupported(
                "writing to images with persistent dirty bitmaps is not supported",
            ));
        }
        let mut meta = Meta::load(&*self.file, h)?;
        meta.lazy_refcounts = h.compatible_features & compatible::LAZY_REFCOUNTS != 0;
        // "An implementation may only write to an image with unknown auto-clear features if
        // it clears the respective bits from this field first."
        let unknown_autoclear = h.autoclear_features & !autoclear::DATA_FILE_RAW;
        self.rw = Some(Box::new(Rw {
            file,
            data_file: None,
            meta: std::sync::Mutex::new(meta),
            cond: std::sync::Condvar::new(),
            write_through: std::sync::atomic::AtomicBool::new(false),
        }));
        if unknown_autoclear != 0 {
            self.header.autoclear_features &= !unknown_autoclear;
            let m = self.lock_meta()?;
            self.write_header(&m)?;
        }
        Ok(())
    }

    /// Attaches the external data file of a read-write image.
    pub fn set_data_file_rw<F: ImageFile + 'static>(&mut self, file: Arc<F>) {
        self.data_file = Some(file.clone() as Arc<dyn BlockDevice>);
        if let Some(rw) = self.rw.as_deref_mut() {
            rw.data_file = Some(file);
        }
    }

    /// The device data clusters are written to, grown to hold `end` bytes when it is the
    /// external data file.
    fn data_target(&self, end: u64) -> Result<&dyn ImageFile> {
        let rw = self.rw()?;
        if !self.needs_data_file() {
            return Ok(&*rw.file);
        }
        let d = rw
            .data_file
            .as_deref()
            .ok_or_else(|| Error::invalid("the image's external data file is not attached"))?;
        if d.size() < end {
            d.resize(end, vdisk_block::Preallocation::Off)?;
        }
        Ok(d)
    }

    /// Waits for another writer to give up a claim.
    fn wait<'a>(&'a self, mut m: MutexGuard<'a, Meta>) -> Result<MutexGuard<'a, Meta>> {
        m.waiters += 1;
        let mut m = self.rw()?.cond.wait(m).unwrap_or_else(|e| e.into_inner());
        m.waiters -= 1;
        Ok(m)
    }

    /// Releases the metadata lock after giving up claims, waking the writers waiting for one.
    fn wake(&self, m: MutexGuard<'_, Meta>) -> Result<()> {
        let waiting = m.waiters > 0;
        drop(m);
        if waiting {
            self.rw()?.cond.notify_all();
        }
        Ok(())
    }

    /// Waits for and takes the exclusive claim on guest cluster `cluster`.
    fn claim(&self, cluster: u64) -> Result<MutexGuard<'_, Meta>> {
        let mut m = self.lock_meta()?;
        while m.busy.get(&cluster).copied().unwrap_or(0) != 0 {
            m = self.wait(m)?;
        }
        m.busy.insert(cluster, -1);
        Ok(m)
    }

    /// Gives up a claim (shared or exclusive) on `cluster`.
    fn unclaim(&self, cluster: u64) -> Result<()> {
        let mut m = self.lock_meta()?;
        match m.busy.get(&cluster).copied() {
            Some(n) if n > 1 => {
                m.busy.insert(cluster, n - 1);
            }
            _ => {
                m.busy.remove(&cluster);
            }
        }
        self.wake(m)
    }

    /// Runs `f` holding the exclusive claim on `cluster`, releasing it afterwards.
    fn exclusive<T>(
        &self,
        cluster: u64,
        f: impl FnOnce(MutexGuard<'_, Meta>) -> Result<T>,
    ) -> Result<T> {
        let m = self.claim(cluster)?;
        let r = f(m);
        self.unclaim(cluster)?;
        r
    }

    /// (L1 index, L2 index) of a guest cluster.
    fn indexes(&self, cluster: u64) -> (u64, u64) {
        let g = &self.geom;
        (cluster >> g.l2_bits, cluster & ((1 << g.l2_bits) - 1))
    }

    /// The current L2 entry and bitmap of a guest cluster, (0, 0) when it has no L2 table.
    fn current_entry(&self, cluster: u64) -> Result<(u64, u64)> {
        let (l1i, l2i) = self.indexes(cluster);
        let l1e = self.l1_entry(l1i);
        let l2 = l1e & L1E_OFFSET_MASK;
        if l2 == 0 {
            return Ok((0, 0));
        }
        self.l2_entry(l2, l2i)
    }

    /// Whether an entry holds a standard cluster with a host offset (not compressed).
    fn standard_host(&self, e: u64) -> Option<u64> {
        if e & OFLAG_COMPRESSED != 0 {
            return None;
        }
        let host = e & L2E_OFFSET_MASK;
        (host != 0 || (self.geom.external_data && e & OFLAG_COPIED != 0)).then_some(host)
    }

    /// Schedules the storage an entry holds to be freed (nothing for an external data file).
    fn release_entry(&self, m: &mut Meta, e: u64) {
        if e & OFLAG_COMPRESSED != 0 {
            let g = &self.geom;
            let offset = e & g.coffset_mask;
            let sectors = ((e >> g.csize_shift) & g.csize_mask) + 1;
            let size = sectors * 512 - (offset % 512);
            self.free_clusters(m, offset, size);
        } else if !self.geom.external_data {
            let host = e & L2E_OFFSET_MASK;
            if host != 0 {
                self.free_clusters(m, host, self.geom.cluster_size());
            }
        }
    }

    /// Guest bytes of cluster `cluster` that lie inside the image.
    fn cluster_len(&self, cluster: u64) -> u64 {
        let start = cluster << self.geom.cluster_bits;
        self.geom.cluster_size().min(self.view.size - start)
    }

    pub(crate) fn write_impl(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.rw()?;
        self.check_range(offset, buf.len() as u64)?;
        let cs = self.geom.cluster_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            if pos & (cs - 1) == 0 && (buf.len() - done) as u64 >= 2 * cs {
                let n = self.write_fresh_run(pos, &buf[done..])?;
                if n > 0 {
                    done += n;
                    continue;
                }
            }
            let n = ((cs - (pos & (cs - 1))) as usize).min(buf.len() - done);
            self.write_piece(pos, &buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// The fast path of a long write (a conversion into a new image): a run of whole guest
    /// clusters from `pos` (cluster aligned) that hold nothing yet gets contiguous host
    /// clusters, one data write and its L2 entries, instead of an allocation and a write per
    /// cluster. Returns the bytes written; 0 when the first clusters do not qualify (then
    /// the caller takes the general path).
    fn write_fresh_run(&self, pos: u64, data: &[u8]) -> Result<usize> {
        let g = self.geom;
        if g.extended || g.external_data {
            return Ok(0);
        }
        let cs = g.cluster_size();
        let first = pos >> g.cluster_bits;
        let (l1i, l2i) = self.indexes(first);
        // Within one L2 table, whole clusters inside the image, and few enough for first-fit
        // allocation next to self-describing refcount blocks.
        let rb_entries = 1u64 << (g.cluster_bits + 3 - self.header.refcount_order);
        let max = (data.len() as u64 / cs)
            .min((1u64 << g.l2_bits) - l2i)
            .min((self.view.size - pos) / cs)
            .min((rb_entries / 4).max(1))
            .min(MAX_FRESH_RUN_BYTES / cs);
        if max < 2 {
            return Ok(0);
        }
        let mut m = self.lock_meta()?;
        let mut n = 0;
        while n < max {
            let c = first + n;
            if m.busy.contains_key(&c) || self.current_entry(c)? != (0, 0) {
                break;
            }
            n += 1;
        }
        if n < 2 {
            return Ok(0);
        }
        for c in first..first + n {
            m.busy.insert(c, -1);
        }
        let result = (|| -> Result<()> {
            self.mark_dirty(&mut m)?;
            m.data_written = true;
            let l2 = self.l2_for_write(&mut m, l1i)?;
            let host = self.alloc_clusters(&mut m, n)?;
            drop(m);
            let len = n * cs;
            self.data_target(host + len)?
                .write_at(&data[..len as usize], host)?;
            let mut m = self.lock_meta()?;
            for i in 0..n {
                self.set_l2_entry(&mut m, l2, l2i + i, (host + i * cs) | OFLAG_COPIED, 0)?;
            }
            self.maybe_flush_meta(&mut m)
        })();
        let mut m = self.lock_meta()?;
        for c in first..first + n {
            m.busy.remove(&c);
        }
        self.wake(m)?;
        result.map(|()| (n * cs) as usize)
    }

    /// Writes `data`, which lies inside one cluster, at guest offset `pos`.
    fn write_piece(&self, pos: u64, data: &[u8]) -> Result<()> {
        let g = self.geom;
        let cluster = pos >> g.cluster_bits;
        let in_c = pos & (g.cluster_size() - 1);
        let mut m = self.lock_meta()?;
        loop {
            let busy = m.busy.get(&cluster).copied().unwrap_or(0);
            if busy < 0 {
                m = self.wait(m)?;
                continue;
            }
            if let Some(host) = self.in_place(cluster, in_c, data.len() as u64)? {
                *m.busy.entry(cluster).or_insert(0) += 1;
                m.data_written = true;
                drop(m);
                let r = self
                    .data_target(host + data.len() as u64)
                    .and_then(|d| d.write_at(data, host));
                self.unclaim(cluster)?;
                return r;
            }
            if busy > 0 {
                m = self.wait(m)?;
                continue;
            }
            m.busy.insert(cluster, -1);
            break;
        }
        let r = self.write_alloc(m, cluster, in_c, data);
        self.unclaim(cluster)?;
        r
    }

    /// The host offset for `len` bytes at `in_c` in `cluster` when they can be overwritten
    /// where they are.
    fn in_place(&self, cluster: u64, in_c: u64, len: u64) -> Result<Option<u64>> {
        let (l1i, _) = self.indexes(cluster);
        if self.l1_entry(l1i) & OFLAG_COPIED == 0 {
            return Ok(None);
        }
        let (e, bm) = self.current_entry(cluster)?;
        if e & OFLAG_COPIED == 0 {
            return Ok(None);
        }
        let Some(host) = self.standard_host(e) else {
            return Ok(None);
        };
        let g = &self.geom;
        if g.extended {
            let s0 = in_c >> g.subcluster_bits;
            let s1 = (in_c + len).div_ceil(1 << g.subcluster_bits);
            let mask = sc_mask(s0, s1);
            if bm & mask != mask {
                return Ok(None);
            }
        } else if e & OFLAG_ZERO != 0 {
            return Ok(None);
        }
        Ok(Some(host + in_c))
    }

    /// Reads the current guest content of `[start, start + len)` into a new buffer.
    fn current(&self, start: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.read_at(&mut buf, start)?;
        Ok(buf)
    }

    /// The allocating write: holds the exclusive claim on `cluster`.
    fn write_alloc(
        &self,
        mut m: MutexGuard<'_, Meta>,
        cluster: u64,
        in_c: u64,
        data: &[u8],
    ) -> Result<()> {
        let g = self.geom;
        let cs = g.cluster_size();
        let cstart = cluster << g.cluster_bits;
        let clen = self.cluster_len(cluster);
        let (l1i, l2i) = self.indexes(cluster);
        self.mark_dirty(&mut m)?;
        m.data_written = true;
        let l2 = self.l2_for_write(&mut m, l1i)?;
        let (e, bm) = self.l2_entry(l2, l2i)?;
        let old_host = self.standard_host(e);
        let len = data.len() as u64;

        if g.extended {
            let scb = g.subcluster_bits;
            let s0 = in_c >> scb;
            let s1 = (in_c + len).div_ceil(1 << scb);
            let span = sc_mask(s0, s1);
            let span_start = s0 << scb;
            let span_end = (s1 << scb).min(clen);
            if let (Some(host), true) = (old_host, e & OFLAG_COPIED != 0) {
                // Our own cluster: fill the touched subclusters in place.
                drop(m);
                let mut buf = if span_start == in_c && span_end == in_c + len {
                    Vec::new()
                } else {
                    self.current(cstart + span_start, span_end - span_start)?
                };
                buf.resize((span_end - span_start) as usize, 0);
                let at = (in_c - span_start) as usize;
                buf[at..at + data.len()].copy_from_slice(data);
                self.data_target(host + span_end)?
                    .write_at(&buf, host + span_start)?;
                let mut m = self.lock_meta()?;
                let (e, bm) = self.l2_entry(l2, l2i)?;
                let bm = (bm | span) & !(span << 32);
                return self.set_l2_entry(&mut m, l2, l2i, e, bm);
            }
            if old_host.is_none() && e & OFLAG_COMPRESSED == 0 {
                // Nothing stored yet: a new cluster holding only the touched subclusters.
                let host = self.new_host(&mut m, cstart)?;
                drop(m);
                let mut buf = if span_start == in_c && span_end == in_c + len {
                    Vec::new()
                } else {
                    self.current(cstart + span_start, span_end - span_start)?
                };
                buf.resize((span_end - span_start) as usize, 0);
                let at = (in_c - span_start) as usize;
                buf[at..at + data.len()].copy_from_slice(data);
                self.data_target(host + span_end)?
                    .write_at(&buf, host + span_start)?;
                let mut m = self.lock_meta()?;
                let bm = (bm & !(span << 32) & !ALL_SUBCLUSTERS) | span;
                return self.set_l2_entry(&mut m, l2, l2i, host | OFLAG_COPIED, bm);
            }
            // Compressed or shared with a snapshot: copy the whole cluster.
            let host = self.new_host(&mut m, cstart)?;
            drop(m);
            let mut buf = self.current(cstart, clen)?;
            buf[in_c as usize..(in_c + len) as usize].copy_from_slice(data);
            self.data_target(host + clen)?.write_at(&buf, host)?;
            let mut m = self.lock_meta()?;
            let bm = if e & OFLAG_COMPRESSED != 0 {
                ALL_SUBCLUSTERS
            } else {
                ((bm & ALL_SUBCLUSTERS) | span) | ((bm >> 32) & !span) << 32
            };
            self.set_l2_entry(&mut m, l2, l2i, host | OFLAG_COPIED, bm)?;
            if old_host != Some(host) {
                self.release_entry(&mut m, e);
            }
            return self.maybe_flush_meta(&mut m);
        }

        // A cluster the allocation placed past the end of the file is a hole, zeros already:
        // only the part of the new content that is not zero needs writing. (qemu gets the
        // same effect by zeroing the cluster with fallocate.) A 4 KiB write into an empty
        // image then writes 4 KiB, not a whole cluster.
        let eof = if g.external_data {
            u64::MAX
        } else {
            self.rw()?.file.size()
        };
        let host = self.new_host(&mut m, cstart)?;
        let fresh = host >= eof;
        drop(m);
        let mut buf = if in_c == 0 && len == clen {
            Vec::new()
        } else {
            self.current(cstart, clen)?
        };
        buf.resize(clen as usize, 0);
        let (a, b) = (in_c as usize, (in_c + len) as usize);
        buf[a..b].copy_from_slice(data);
        let (a, b) = if fresh {
            let first = buf[..a].iter().position(|&x| x != 0).unwrap_or(a);
            let last = buf[b..]
                .iter()
                .rposition(|&x| x != 0)
                .map_or(b, |i| b + i + 1);
            (first, last)
        } else {
            (0, clen as usize)
        };
        let _ = cs;
        self.data_target(host + clen)?
            .write_at(&buf[a..b], host + a as u64)?;
        let mut m = self.lock_meta()?;
        self.set_l2_entry(&mut m, l2, l2i, host | OFLAG_COPIED, 0)?;
        if old_host != Some(host) || e & OFLAG_COMPRESSED != 0 {
            self.release_entry(&mut m, e);
        }
        self.maybe_flush_meta(&mut m)
    }

    /// A host cluster for guest cluster starting at `cstart`: allocated in the image file, or
    /// the same offset in an external data file.
    fn new_host(&self, m: &mut Meta, cstart: u64) -> Result<u64> {
        if self.geom.external_data {
            Ok(cstart)
        } else {
            self.alloc_clusters(m, 1)
        }
    }

    /// Zero writes by writing zeros.
    fn write_real_zeros(&self, pos: u64, len: u64) -> Result<()> {
        self.write_impl(&vec![0u8; len as usize], pos)
    }

    /// Makes the subclusters in `mask` of `cluster` (all of them for a plain L2 entry) read
    /// as zeros. Returns false when that needs real zeros written instead.
    fn zero_entry(&self, cluster: u64, mask: u64, may_unmap: bool) -> Result<bool> {
        let g = self.geom;
        self.exclusive(cluster, |mut m| {
            let (l1i, l2i) = self.indexes(cluster);
            let (e, bm) = self.current_entry(cluster)?;
            let host = self.standard_host(e);
            let own = host.is_some() && e & OFLAG_COPIED != 0;
            let (ne, nbm, release) = if !g.extended {
                if own && !may_unmap {
                    (e & (L2E_OFFSET_MASK | OFLAG_COPIED) | OFLAG_ZERO, 0, false)
                } else {
                    (OFLAG_ZERO, 0, true)
                }
            } else if mask == ALL_SUBCLUSTERS && (may_unmap || !own) {
                (0, ALL_SUBCLUSTERS << 32, true)
            } else if own {
                (e, (bm & !mask) | (mask << 32), false)
            } else if host.is_none() && e & OFLAG_COMPRESSED == 0 {
                (e, bm | (mask << 32), false)
            } else {
                return Ok(false);
            };
            if (ne, nbm) == (e, bm) {
                return Ok(true);
            }
            self.mark_dirty(&mut m)?;
            let l2 = self.l2_for_write(&mut m, l1i)?;
            self.set_l2_entry(&mut m, l2, l2i, ne, nbm)?;
            if release {
                self.release_entry(&mut m, e);
            }
            self.maybe_flush_meta(&mut m)?;
            Ok(true)
        })
    }

    /// Deallocates `cluster`: it reads from the backing file (or as zeros) afterwards.
    fn discard_cluster(&self, cluster: u64) -> Result<()> {
        self.exclusive(cluster, |mut m| {
            let (e, bm) = self.current_entry(cluster)?;
            if e == 0 && bm == 0 {
                return Ok(());
            }
            let (l1i, l2i) = self.indexes(cluster);
            self.mark_dirty(&mut m)?;
            let l2 = self.l2_for_write(&mut m, l1i)?;
            self.set_l2_entry(&mut m, l2, l2i, 0, 0)?;
            self.release_entry(&mut m, e);
            self.maybe_flush_meta(&mut m)
        })
    }

    /// Stores one guest cluster compressed (what `convert -c` writes). `data` is the whole
    /// cluster, or the part of the last cluster inside the image. When compression does not
    /// make it smaller the cluster is written uncompressed, as qemu does.
    pub fn write_compressed(&self, cluster_index: u64, data: &[u8]) -> Result<()> {
        let z = self.compress_cluster(cluster_index, data)?;
        self.write_compressed_prepared(cluster_index, data, z.as_deref())?;
        self.write_through_point()
    }

    /// The first half of [`Qcow2::write_compressed`], which needs no lock and may run on
    /// many threads at once: checks the request and compresses `data` (cluster
    /// `cluster_index`, whole or the image's last, short one) with the image's compression
    /// type. `None` when compression does not make the cluster smaller.
    pub fn compress_cluster(&self, cluster_index: u64, data: &[u8]) -> Result<Option<Vec<u8>>> {
        let g = self.geom;
        let cs = g.cluster_size();
        cluster_index
            .checked_mul(cs)
            .filter(|&s| s < self.view.size)
            .ok_or_else(|| Error::invalid(format!("cluster {cluster_index} is past the end")))?;
        let clen = self.cluster_len(cluster_index);
        if data.len() as u64 != clen {
            return Err(Error::invalid(format!(
                "a compressed write takes a whole cluster ({clen} bytes), not {}",
                data.len()
            )));
        }
        if g.external_data {
            return Err(Error::unsupported(
                "compression is not supported with an external data file",
            ));
        }
        self.rw()?;
        if data.len() as u64 == cs {
            return compress(self.header.compression_type, data, cs as usize - 1);
        }
        let mut padded = data.to_vec();
        padded.resize(cs as usize, 0);
        compress(self.header.compression_type, &padded, cs as usize - 1)
    }

    /// The second half of [`Qcow2::write_compressed`]: stores cluster `cluster_index` as the
    /// bytes `compressed` returned by [`Qcow2::compress_cluster`] for `data`, or, when that
    /// was `None`, `data` uncompressed.
    pub fn write_compressed_prepared(
        &self,
        cluster_index: u64,
        data: &[u8],
        compressed: Option<&[u8]>,
    ) -> Result<()> {
        let g = self.geom;
        let cs = g.cluster_size();
        let cstart = cluster_index
            .checked_mul(cs)
            .filter(|&s| s < self.view.size)
            .ok_or_else(|| Error::invalid(format!("cluster {cluster_index} is past the end")))?;
        let Some(z) = compressed else {
            return self.write_impl(data, cstart);
        };
        if z.is_empty() || z.len() as u64 >= cs || g.external_data {
            return Err(Error::invalid(
                "a prepared compressed cluster must be shorter than a cluster",
            ));
        }
        self.exclusive(cluster_index, |mut m| {
            let (l1i, l2i) = self.indexes(cluster_index);
            self.mark_dirty(&mut m)?;
            m.data_written = true;
            let l2 = self.l2_for_write(&mut m, l1i)?;
            let off = self.alloc_bytes(&mut m, z.len() as u64)?;
            drop(m);
            self.compressed_cache.remove(off);
            self.rw()?.file.write_at(z, off)?;
            let mut m = self.lock_meta()?;
            let (e, _) = self.l2_entry(l2, l2i)?;
            let sectors = ((off + z.len() as u64 - 1) >> 9) - (off >> 9);
            let entry = OFLAG_COMPRESSED | (sectors << g.csize_shift) | off;
            self.set_l2_entry(&mut m, l2, l2i, entry, 0)?;
            self.release_entry(&mut m, e);
            self.maybe_flush_meta(&mut m)
        })
    }

    /// Calls `f(cluster, in_cluster, len)` for each cluster piece of `[offset, +len)`.
    fn for_each_piece(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, u64, u64) -> Result<()>,
    ) -> Result<()> {
        let cs = self.geom.cluster_size();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let in_c = pos & (cs - 1);
            let n = (cs - in_c).min(end - pos);
            f(pos >> self.geom.cluster_bits, in_c, n)?;
            pos += n;
        }
        Ok(())
    }
}

/// Compresses one cluster as qemu does: raw deflate with a 4 KiB window (qemu inflates with
/// `inflateInit2(-12)`), or a zstd frame. `None` when the result would exceed `max`.
fn compress(kind: CompressionType, data: &[u8], max: usize) -> Result<Option<Vec<u8>>> {
    // One compressor per thread, reset between clusters: setting up a zlib or zstd context
    // costs more than compressing a small cluster (conversions compress on every core).
    thread_local! {
        static DEFLATE: std::cell::RefCell<Option<flate2::Compress>> =
            const { std::cell::RefCell::new(None) };
        static ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let out = match kind {
        CompressionType::Zlib => DEFLATE.with(|cell| {
            let mut slot = cell.borrow_mut();
            let c = slot.get_or_insert_with(|| {
                flate2::Compress::new_with_window_bits(flate2::Compression::default(), false, 12)
            });
            c.reset();
            deflate_with(c, data)
        })?,
        CompressionType::Zstd => ZSTD.with(|cell| {
            let mut slot = cell.borrow_mut();
            let c = match &mut *slot {
                Some(c) => c,
                None => slot.insert(
                    zstd::bulk::Compressor::new(0).map_err(|e| Error::io("compress", None, e))?,
                ),
            };
            c.compress(data).map_err(|e| Error::io("compress", None, e))
        })?,
    };
    Ok((out.len() <= max).then_some(out))
}

fn deflate_with(c: &mut flate2::Compress, data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() + 64);
    loop {
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&data[consumed..], &mut out, flate2::FlushCompress::Finish)
            .map_err(|e| Error::io("compress", None, std::io::Error::other(e)))?;
        match status {
            flate2::Status::StreamEnd => return Ok(out),
            _ => out.reserve(out.capacity().max(4096)),
        }
    }
}

impl WriteZeroes for Qcow2 {
    /// v3: whole clusters get the zero flag (extended L2: whole subclusters get zero bits),
    /// with `may_unmap` their storage is freed; partial pieces are written as zeros. v2 has
    /// no zero flag: without a backing file whole clusters are deallocated, with one zeros are
    /// written.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.rw()?;
        self.check_range(offset, len)?;
        let g = self.geom;
        let size = self.view.size;
        let r = self.for_each_piece(offset, len, |cluster, in_c, n| {
            let pos = (cluster << g.cluster_bits) + in_c;
            let to_end = pos + n == size;
            let whole = in_c == 0 && (n == g.cluster_size() || to_end);
            if g.version < 3 {
                if whole && self.backing.is_none() {
                    return self.discard_cluster(cluster);
                }
                return self.write_real_zeros(pos, n);
            }
            if !g.extended {
                if whole && self.zero_entry(cluster, ALL_SUBCLUSTERS, may_unmap)? {
                    return Ok(());
                }
                return self.write_real_zeros(pos, n);
            }
            let scs = 1u64 << g.subcluster_bits;
            let a = in_c.div_ceil(scs);
            let b = if to_end { 32 } else { (in_c + n) / scs };
            if b > a && self.zero_entry(cluster, sc_mask(a, b), may_unmap)? {
                let head_end = (a * scs).min(in_c + n);
                if head_end > in_c {
                    self.write_real_zeros(pos, head_end - in_c)?;
                }
                let tail = (b * scs).max(in_c);
                if !to_end && in_c + n > tail {
                    self.write_real_zeros(pos - in_c + tail, in_c + n - tail)?;
                }
                return Ok(());
            }
            self.write_real_zeros(pos, n)
        });
        self.write_through_point()?;
        r
    }
}

impl Discard for Qcow2 {
    /// Deallocates the whole clusters in the range (the last, partial cluster of the image
    /// counts as whole): they read from the backing file, or as zeros without one. Partial
    /// clusters are left alone, as qemu does.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.rw()?;
        self.check_range(offset, len)?;
        let g = self.geom;
        let size = self.view.size;
        let r = self.for_each_piece(offset, len, |cluster, in_c, n| {
            let pos = (cluster << g.cluster_bits) + in_c;
            if in_c == 0 && (n == g.cluster_size() || pos + n == size) {
                self.discard_cluster(cluster)?;
            }
            Ok(())
        });
        self.write_through_point()?;
        r
    }
}

impl Qcow2 {
    /// Metadata write-through: with `on`, every write request (data, zeroes, discard,
    /// compressed) ends by writing the metadata it changed back to the image file, in the
    /// crash-safe order, without syncing. A process killed at any instant then leaves an
    /// image holding every write request that returned — what a filesystem engine layered
    /// on top needs for its own write ordering to survive a kill. (Durability across a power
    /// loss still comes from [`BlockDevice::flush`].) Off by default: a VMM flushes when its
    /// guest asks, and batching the write-back is faster.
    pub fn set_write_through(&self, on: bool) -> Result<()> {
        let mut m = self.lock_meta()?;
        self.rw()?
            .write_through
            .store(on, std::sync::atomic::Ordering::Release);
        if on {
            self.write_back_meta(&mut m, false)?;
        }
        Ok(())
    }

    /// The end of a write request: the write-back [`Qcow2::set_write_through`] asks for.
    pub(crate) fn write_through_point(&self) -> Result<()> {
        let Some(rw) = self.rw.as_deref() else {
            return Ok(());
        };
        if rw.write_through.load(std::sync::atomic::Ordering::Acquire) {
            let mut m = rw.meta.lock().unwrap_or_else(|e| e.into_inner());
            self.write_back_meta(&mut m, false)?;
        }
        Ok(())
    }
}

impl Drop for Qcow2 {
    /// A read-write image is flushed when closed (errors cannot be reported here: call
    /// [`BlockDevice::flush`] first to see them).
    fn drop(&mut self) {
        if self.rw.is_some() {
            if let Ok(mut m) = self.lock_meta() {
                let _ = self.flush_meta(&mut m);
            }
        }
    }
}
