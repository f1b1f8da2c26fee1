//! Changing the virtual size of an image (`qemu-img resize`, qcow2's `qcow2_co_truncate`).
//!
//! Growing makes the active L1 table large enough for the new size (a new, larger table
//! replaces the old one) and rewrites the size field. Shrinking first deallocates every
//! guest cluster past the new end (entries cleared, storage released), frees the L2 tables
//! of L1 entries past it, rewrites the size, then cuts the file after its last cluster in use.
//! When the attached backing file reaches past the old end, the grown range is zeroed (zero
//! clusters and subclusters, explicit zeros for a partial head) so nothing old shows through.
//! Snapshots keep their own L1 tables and sizes; the active L1 is never made smaller, so
//! applying a larger snapshot later only grows it again.

use vdisk_block::{BlockDevice, Error, Preallocation, Result};

use crate::header::{l1_entries_for, MAX_L1_BYTES};
use crate::l2::{L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED};
use crate::Qcow2;

impl Qcow2 {
    /// Whether any guest cluster at or past `offset` holds data in the active tables
    /// (allocated, compressed or zero with storage): what a shrink to `offset` would drop.
    pub fn has_data_beyond(&self, offset: u64) -> Result<bool> {
        let mut pos = offset.next_multiple_of(self.geom.cluster_size());
        let size = self.view.size;
        while pos < size {
            let Some((len, run)) = self.lookup(pos, size - pos)? else {
                break;
            };
            if !matches!(
                run,
                crate::l2::Run::Unallocated { host: None } | crate::l2::Run::Zero { host: None }
            ) {
                return Ok(true);
            }
            pos += len;
        }
        Ok(false)
    }

    /// Changes the virtual size to `new_size` bytes (a multiple of 512). Growing with a
    /// preallocation mode other than `Off` allocates metadata and data for the new range
    /// (`Metadata` writes tables only; `Falloc` and `Full` also reserve the clusters in the
    /// file). Shrinking discards everything past the new end; it needs `Off`.
    pub fn resize_image(
        &mut self,
        new_size: u64,
        prealloc: Preallocation,
        _shrink: bool,
    ) -> Result<()> {
        self.rw()?;
        if new_size % 512 != 0 {
            return Err(Error::invalid("The new size must be a multiple of 512"));
        }
        let old = self.view.size;
        if new_size == old {
            return Ok(());
        }
        if !self.snapshots.is_empty() && self.header.version < 3 {
            return Err(Error::unsupported(
                "Can't resize a v2 image which has snapshots",
            ));
        }
        let g = self.geom;
        let cs = g.cluster_size();
        let new_l1 = l1_entries_for(new_size, g.cluster_bits, g.l2_bits);
        if new_l1 * 8 > MAX_L1_BYTES {
            return Err(Error::invalid("The new size is too large for the L1 table"));
        }
        if new_size < old {
            if prealloc != Preallocation::Off {
                return Err(Error::invalid(
                    "Preallocation can't be used for shrinking an image",
                ));
            }
            self.discard_tail(new_size.next_multiple_of(cs), old)?;
            self.shrink_l1(new_l1)?;
            self.write_size(new_size)?;
            self.truncate_tail()?;
        } else {
            self.grow_l1(new_l1)?;
            self.write_size(new_size)?;
            if prealloc != Preallocation::Off {
                self.preallocate_range(old, new_size, prealloc)?;
            }
            // As qemu's bdrv_co_truncate: a backing file reaching past the old end would show
            // through the grown range (and a cluster kept by an earlier shrink still holds its
            // old bytes there), so the new range is made to read as zeros.
            let backing_len = match &self.backing {
                Some(b) => b.size(),
                None => 0,
            };
            if backing_len > old {
                use vdisk_block::WriteZeroes;
                self.write_zeroes(old, new_size - old, false)?;
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Writes the size field and adopts it.
    fn write_size(&mut self, size: u64) -> Result<()> {
        let mut m = self.lock_meta()?;
        self.flush_meta(&mut m)?;
        let file = &self.rw()?.file;
        file.write_at(&size.to_be_bytes(), 24)?;
        file.flush()?;
        drop(m);
        self.header.size = size;
        self.view.size = size;
        Ok(())
    }

    /// Deallocates the guest clusters `[from, to)` (full discard: entries become 0).
    fn discard_tail(&self, from: u64, to: u64) -> Result<()> {
        let g = self.geom;
        let cs = g.cluster_size();
        let mut m = self.lock_meta()?;
        let mut cluster = from / cs;
        let end = to.div_ceil(cs);
        let per_l2 = 1u64 << g.l2_bits;
        while cluster < end {
            let l1i = cluster >> g.l2_bits;
            let l2_end = ((l1i + 1) * per_l2).min(end);
            let l1e = self.l1_entry(l1i);
            if l1e & L1E_OFFSET_MASK == 0 {
                cluster = l2_end;
                continue;
            }
            let mut l2 = l1e & L1E_OFFSET_MASK;
            let mut own = l1e & OFLAG_COPIED != 0;
            for c in cluster..l2_end {
                let idx = c & (per_l2 - 1);
                let (e, bm) = self.l2_entry(l2, idx)?;
                if e == 0 && bm == 0 {
                    continue;
                }
                if !own {
                    l2 = self.l2_for_write(&mut m, l1i)?;
                    own = true;
                }
                self.set_l2_entry(&mut m, l2, idx, 0, 0)?;
                if e & OFLAG_COMPRESSED != 0 {
                    let off = e & g.coffset_mask;
                    let sectors = ((e >> g.csize_shift) & g.csize_mask) + 1;
                    self.free_clusters(&mut m, off, sectors * 512 - (off % 512));
                } else if !g.external_data && e & L2E_OFFSET_MASK != 0 {
                    self.free_clusters(&mut m, e & L2E_OFFSET_MASK, cs);
                }
            }
            cluster = l2_end;
            self.maybe_flush_meta(&mut m)?;
        }
        self.flush_meta(&mut m)
    }

    /// Frees the L2 tables of the active L1 entries from `new_l1_size` on and clears them
    /// (`qcow2_shrink_l1_table`).
    fn shrink_l1(&self, new_l1_size: u64) -> Result<()> {
        let cs = self.geom.cluster_size();
        let mut m = self.lock_meta()?;
        let len = self.view.l1.read().unwrap_or_else(|e| e.into_inner()).len() as u64;
        for i in new_l1_size..len {
            let e = self.l1_entry(i);
            if e & L1E_OFFSET_MASK != 0 {
                self.set_l1_entry(&mut m, i, 0)?;
                self.free_clusters(&mut m, e & L1E_OFFSET_MASK, cs);
            }
        }
        self.flush_meta(&mut m)
    }

    /// Empties the image, as `qemu-img commit` empties the top image once its data is in the
    /// base: every guest cluster is discarded (reads fall through to the backing file) and
    /// the file is cut after the last cluster still in use. qemu rewrites the image from
    /// scratch where it can (`make_completely_empty`); this keeps the L2 tables, which the
    /// discard leaves allocated, but gives the data clusters' space back to the host.
    pub fn make_empty(&self) -> Result<()> {
        use vdisk_block::Discard;
        self.discard(0, self.view.size)?;
        self.truncate_tail()
    }

    /// Cuts the image file after the last cluster with a non-zero refcount.
    fn truncate_tail(&self) -> Result<()> {
        let cs = self.geom.cluster_size();
        let mut m = self.lock_meta()?;
        self.flush_meta(&mut m)?;
        let file = &self.rw()?.file;
        let clusters = file.size().div_ceil(cs);
        let mut last = clusters;
        while last > 0 && self.refcount(&mut m, last - 1)? == 0 {
            last -= 1;
        }
        if last * cs < file.size() {
            file.resize(last * cs, Preallocation::Off)?;
        }
        Ok(())
    }

    /// Allocates data clusters for the unallocated guest clusters of `[from, to)`.
    fn preallocate_range(&self, from: u64, to: u64, mode: Preallocation) -> Result<()> {
        let g = self.geom;
        let cs = g.cluster_size();
        let per_l2 = 1u64 << g.l2_bits;
        let mut m = self.lock_meta()?;
        for cluster in from.div_ceil(cs)..to.div_ceil(cs) {
            let l1i = cluster >> g.l2_bits;
            let idx = cluster & (per_l2 - 1);
            let l2 = self.l2_for_write(&mut m, l1i)?;
            let (e, bm) = self.l2_entry(l2, idx)?;
            if e != 0 || bm & 0xffff_ffff != 0 {
                continue;
            }
            let host = if g.external_data {
                cluster * cs
            } else {
                self.alloc_clusters(&mut m, 1)?
            };
            if mode == Preallocation::Full && !g.external_data {
                self.rw()?.file.write_at(&vec![0u8; cs as usize], host)?;
            }
            let bm = if g.extended { 0xffff_ffff } else { 0 };
            self.set_l2_entry(&mut m, l2, idx, host | OFLAG_COPIED, bm)?;
            self.maybe_flush_meta(&mut m)?;
        }
        self.flush_meta(&mut m)
    }
}
