//! Consistency check and repair, as `qemu-img check` does it.
//!
//! The check rebuilds every cluster's refcount in memory from the references the image makes
//! (header, active and snapshot L1 tables, their L2 tables and data clusters, compressed
//! sector ranges, the refcount table and blocks, the snapshot table, the bitmap directory and
//! tables) and compares the result with the refcounts on disk:
//!
//! ```text
//!   references (walk of every table)        refcounts on disk
//!   +----------------------------+          +----------------------+
//!   | in-memory refcount array   |  <---->  | refcount table/blocks|
//!   +----------------------------+ compare  +----------------------+
//!     on disk > references: leak (-r leaks frees it)
//!     on disk < references: corruption (-r all raises it)
//!     on disk == 0 < references, bad refcount blocks: rebuild all refcount structures
//! ```
//!
//! then checks that OFLAG_COPIED is set exactly on the active L1/L2 entries whose cluster has
//! refcount 1. Counts, messages and repairs follow qemu's `qcow2_check_refcounts`, so our report
//! on an image is the one qemu-img prints for it; the messages qemu writes to stderr are
//! collected in [`CheckResult::messages`].
//!
//! Repairs write through the image file given as an [`ImageFile`], in qemu's order; the
//! [`Qcow2`] passed in is not updated (its caches may be stale afterwards: reopen it).

use std::collections::HashMap;

use vdisk_block::{BlockDevice, Error, Preallocation, Result};

use crate::alloc::ImageFile;

use crate::header::{incompatible, MAX_L1_BYTES};
use crate::l2::{
    decode_table, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO,
};
use crate::refcount::get_refcount;
use crate::Qcow2;

/// Bits 9-63 of a refcount table entry.
const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// "Bits 0-8: Reserved (set to 0)" of a refcount table entry.
const REFT_RESERVED_MASK: u64 = 0x1ff;
/// Reserved bits of an L1 entry (bits 0-8 and 56-62).
const L1E_RESERVED_MASK: u64 = 0x7f00_0000_0000_01ff;
/// Reserved bits of a standard cluster descriptor (bits 1-8 and 56-61).
const L2E_STD_RESERVED_MASK: u64 = 0x3f00_0000_0000_01fe;
/// The allocation half of an extended L2 bitmap.
const L2_BITMAP_ALL_ALLOC: u64 = 0xffff_ffff;
/// The zero half of an extended L2 bitmap.
const L2_BITMAP_ALL_ZEROES: u64 = 0xffff_ffff << 32;
/// Bitmap table entry: "Bits 9-55: Host cluster offset".
const BME_TABLE_ENTRY_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bitmap table entry reserved bits.
const BME_TABLE_ENTRY_RESERVED_MASK: u64 = 0xff00_0000_0000_01fe;
/// Bitmap table entry bit 0: "all bits are set" when there is no cluster.
const BME_TABLE_ENTRY_FLAG_ALL_ONES: u64 = 1;

/// qemu refuses to check files of more clusters than this (`INT_MAX`): the in-memory array
/// grows with the file.
pub const MAX_CHECK_CLUSTERS: u64 = i32::MAX as u64;

/// What `-r` allows the check to repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// `-r leaks`: free clusters whose refcount is higher than their references.
    Leaks,
    /// `-r all`: leaks, refcounts that are too low (rebuilding the refcount structures when
    /// needed) and OFLAG_COPIED errors.
    All,
}

impl Repair {
    fn leaks(self) -> bool {
        true
    }
    fn errors(self) -> bool {
        self == Repair::All
    }
}

/// What a check found (qemu's `BdrvCheckResult` and `BlockFragInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckResult {
    /// Errors that could corrupt data (refcounts too low, broken tables, wrong flags).
    pub corruptions: u64,
    /// Clusters whose refcount is higher than their references.
    pub leaks: u64,
    /// Failures of the check itself (I/O errors, unreadable structures).
    pub check_errors: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// One past the last cluster in use (referenced or with a refcount).
    pub image_end_offset: u64,
    /// Guest clusters (virtual size / cluster size, rounded up).
    pub total_clusters: u64,
    /// Guest clusters with storage in the active tables.
    pub allocated_clusters: u64,
    /// Allocated clusters not following the previous one in the same L2 table.
    pub fragmented_clusters: u64,
    /// Compressed guest clusters.
    pub compressed_clusters: u64,
    /// The lines qemu prints on stderr while checking, in order.
    pub messages: Vec<String>,
    /// Why the check stopped before completing (qemu's "Check failed: ..."), if it did; the
    /// counts are then partial and qemu prints no report.
    pub failure: Option<String>,
}

impl CheckResult {
    /// `qemu-img check`'s exit status for this result: 1 when the check could not complete,
    /// 2 for corruptions, 3 for leaks, else 0.
    pub fn exit_code(&self) -> u8 {
        if self.check_errors > 0 {
            1
        } else if self.corruptions > 0 {
            2
        } else if self.leaks > 0 {
            3
        } else {
            0
        }
    }
}

/// Checks `q` and, with `repair`, fixes what it may in `file` (the image file `q` was opened
/// from, open for writing). Returns what was found; `Err` only when the check could not run
/// (qemu's "Check failed").
pub fn check(q: &Qcow2, repair: Option<(Repair, &dyn ImageFile)>) -> Result<CheckResult> {
    let mut c = Checker::new(q, repair)?;
    let ret = c.run();
    // Whatever was repaired is on disk before we report.
    if let Some(w) = c.wfile {
        w.flush()?;
    }
    ret.map(|()| c.res)
}

/// Rebuilds the refcount structures of `q` from its references (qemu's repair with
/// `BDRV_FIX_ERRORS | BDRV_FIX_LEAKS`, run when a dirty image with lazy refcounts is opened
/// for writing), writing through `file`, and clears the dirty bit when the result is
/// consistent. The caller reloads its refcount state afterwards.
pub fn rebuild_refcounts(q: &Qcow2, file: &dyn ImageFile) -> Result<CheckResult> {
    let res = check(q, Some((Repair::All, file)))?;
    if res.corruptions > 0 || res.check_errors > 0 {
        return Err(Error::corrupt(format!(
            "could not repair the refcounts of a dirty image ({} corruptions, {} check errors left)",
            res.corruptions, res.check_errors
        )));
    }
    Ok(res)
}

/// Rewrites the refcount structures of `q` with entries of `1 << new_order` bits
/// (`qemu-img amend -o refcount_bits=N`), writing through `file`; the old structures are
/// freed afterwards by a leak repair on the reopened image (done by the caller). Refuses an
/// image whose references are inconsistent, and a width too small for some refcount.
pub fn change_refcount_order(q: &Qcow2, file: &dyn ImageFile, new_order: u32) -> Result<()> {
    if new_order > crate::header::MAX_REFCOUNT_ORDER {
        return Err(Error::invalid(
            "Refcount width must be a power of two and may not exceed 64 bits",
        ));
    }
    let mut c = Checker::new(q, Some((Repair::All, file)))?;
    // Count at full width first, so that no count overflows.
    c.refcount_order = 6;
    c.refcount_max = u64::MAX;
    let mut wide = RefArray::new(6, c.cluster_bits);
    wide.resize(c.file.size().div_ceil(c.cluster_size()))?;
    let mut rebuild = false;
    c.calculate_refcounts(&mut wide, &mut rebuild)?;
    if c.res.corruptions > 0 || c.res.check_errors > 0 || rebuild {
        return Err(Error::corrupt(
            "the image has inconsistent metadata; repair it with 'check -r all' before changing the refcount width",
        ));
    }
    let max = if new_order == 6 {
        u64::MAX
    } else {
        (1u64 << (1u32 << new_order)) - 1
    };
    let mut narrow = RefArray::new(new_order, c.cluster_bits);
    narrow.resize(wide.len)?;
    for k in 0..wide.len {
        let r = wide.get(k);
        if r > max {
            return Err(Error::invalid(format!(
                "Cannot decrease refcount entry width to {} bits: Cluster at offset {:#x} has a refcount of {r}",
                1u32 << new_order,
                k << c.cluster_bits
            )));
        }
        narrow.set(k, r);
    }
    c.refcount_order = new_order;
    c.refcount_max = max;
    c.rebuild_with_order(&mut narrow, Some(new_order))?;
    file.flush()
}

/// The refcounts as the image stores them, with the blocks read so far (and changed by
/// repairs).
struct DiskRefcounts {
    table_offset: u64,
    table: Vec<u64>,
    /// Refcount blocks by table index: contents and whether they must be written back.
    blocks: HashMap<u64, (Vec<u8>, bool)>,
}

/// The in-memory refcount array, packed as refcount blocks are so that slices of it can be
/// written as blocks (qemu's "IMRT").
struct RefArray {
    bytes: Vec<u8>,
    /// Number of clusters it covers.
    len: u64,
    order: u32,
    cluster_bits: u32,
}

impl RefArray {
    fn new(order: u32, cluster_bits: u32) -> RefArray {
        RefArray {
            bytes: Vec::new(),
            len: 0,
            order,
            cluster_bits,
        }
    }

    fn get(&self, k: u64) -> u64 {
        if k >= self.len {
            return 0;
        }
        get_refcount(&self.bytes, k, self.order)
    }

    fn set(&mut self, k: u64, v: u64) {
        if k < self.len {
            set_packed(&mut self.bytes, k, self.order, v);
        }
    }

    /// Makes the array cover `len` clusters; its byte size stays a whole number of clusters.
    fn resize(&mut self, len: u64) -> Result<()> {
        if len >= MAX_CHECK_CLUSTERS * 2 {
            return Err(Error::unsupported("image too large to check"));
        }
        let cs = 1u64 << self.cluster_bits;
        let bytes = ((len << self.order).div_ceil(8)).div_ceil(cs) * cs;
        let bytes =
            usize::try_from(bytes).map_err(|_| Error::unsupported("image too large to check"))?;
        if bytes > self.bytes.len() {
            self.bytes.resize(bytes, 0);
        }
        self.len = len;
        Ok(())
    }

    /// The packed entries of refcount block `index` (one cluster).
    fn block(&self, index: u64) -> &[u8] {
        let cs = 1usize << self.cluster_bits;
        let start = index as usize * cs;
        &self.bytes[start..start + cs]
    }
}

/// Writes entry `index` of a packed refcount array.
fn set_packed(block: &mut [u8], index: u64, order: u32, value: u64) {
    let bits = 1u64 << order;
    if order <= 2 {
        let per_byte = 8 / bits;
        let shift = (index % per_byte) * bits;
        let mask = (((1u64 << bits) - 1) << shift) as u8;
        if let Some(b) = block.get_mut((index / per_byte) as usize) {
            *b = (*b & !mask) | (((value << shift) as u8) & mask);
        }
    } else {
        let width = (bits / 8) as usize;
        let start = index as usize * width;
        if let Some(b) = block.get_mut(start..start + width) {
            b.copy_from_slice(&value.to_be_bytes()[8 - width..]);
        }
    }
}

struct Checker<'a> {
    q: &'a Qcow2,
    file: &'a dyn BlockDevice,
    wfile: Option<&'a dyn ImageFile>,
    repair: Option<Repair>,
    cluster_bits: u32,
    refcount_order: u32,
    refcount_max: u64,
    /// Entries per L2 table.
    l2_size: u64,
    extended: bool,
    data_file: bool,
    csize_shift: u32,
    csize_mask: u64,
    coffset_mask: u64,
    disk: DiskRefcounts,
    res: CheckResult,
}

/// Flags for the L1/L2 walk: count allocation and fragmentation (active tables only).
const CHECK_FRAG_INFO: u32 = 2;

impl<'a> Checker<'a> {
    fn new(q: &'a Qcow2, repair: Option<(Repair, &'a dyn ImageFile)>) -> Result<Checker<'a>> {
        let h = &q.header;
        let disk = load_reftable(
            &*q.file,
            h.refcount_table_offset,
            h.refcount_table_clusters,
            h.cluster_bits,
        )?;
        let csize_shift = 62 - (h.cluster_bits - 8);
        Ok(Checker {
            q,
            file: match repair {
                Some((_, w)) => w as &dyn BlockDevice,
                None => &*q.file,
            },
            wfile: repair.map(|(_, w)| w),
            repair: repair.map(|(r, _)| r),
            cluster_bits: h.cluster_bits,
            refcount_order: h.refcount_order,
            refcount_max: if h.refcount_order == 6 {
                u64::MAX
            } else {
                (1u64 << (1u32 << h.refcount_order)) - 1
            },
            l2_size: 1u64 << h.l2_bits(),
            extended: h.extended_l2(),
            data_file: h.has_data_file(),
            csize_shift,
            csize_mask: (1u64 << (h.cluster_bits - 8)) - 1,
            coffset_mask: (1u64 << csize_shift) - 1,
            disk,
            res: CheckResult::default(),
        })
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn fix_leaks(&self) -> bool {
        self.repair.is_some_and(Repair::leaks)
    }

    fn fix_errors(&self) -> bool {
        self.repair.is_some_and(Repair::errors)
    }

    fn msg(&mut self, m: String) {
        self.res.messages.push(m);
    }

    fn wfile(&self) -> Result<&'a dyn ImageFile> {
        self.wfile
            .ok_or_else(|| Error::invalid("repair without a writable image file"))
    }

    /// Writes `buf` at `offset`, growing the file first when it ends before.
    fn write_grow(&self, buf: &[u8], offset: u64) -> Result<()> {
        let w = self.wfile()?;
        let end = offset + buf.len() as u64;
        if end > w.size() {
            w.resize(end, Preallocation::Off)?;
        }
        w.write_at(buf, offset)
    }

    /// qemu's `qcow2_check_refcounts` plus the dirty/corrupt bit handling of `qcow2_co_check`.
    fn run(&mut self) -> Result<()> {
        let q = self.q;
        let file_size = self.file.size();
        let mut nb_clusters = file_size.div_ceil(self.cluster_size());
        if nb_clusters > MAX_CHECK_CLUSTERS {
            self.res.check_errors += 1;
            return Err(Error::unsupported("image file too large to check"));
        }
        self.res.total_clusters = q.header.size.div_ceil(self.cluster_size());

        let mut refs = RefArray::new(self.refcount_order, self.cluster_bits);
        refs.resize(nb_clusters)?;
        let mut rebuild = false;
        self.calculate_refcounts(&mut refs, &mut rebuild)?;
        nb_clusters = refs.len;

        let pre_compare = self.res.clone();
        let mut highest = 0;
        self.compare_refcounts(&refs, None, &mut rebuild, &mut highest)?;

        if rebuild && self.fix_errors() {
            let old = self.res.clone();
            let mut fresh_leaks = 0;
            self.msg("Rebuilding refcount structure".into());
            self.rebuild_refcount_structure(&mut refs)?;
            self.res.corruptions = 0;
            self.res.leaks = 0;

            // The old refcount table was exchanged for a new one: count again.
            rebuild = false;
            let mut fresh = RefArray::new(self.refcount_order, self.cluster_bits);
            fresh.resize(refs.len)?;
            let saved_frag = (
                self.res.allocated_clusters,
                self.res.fragmented_clusters,
                self.res.compressed_clusters,
            );
            let repair = self.repair.take();
            let r = self.calculate_refcounts(&mut fresh, &mut rebuild);
            self.repair = repair;
            r?;
            // qemu counts the fragmentation info twice here (its second walk adds to the
            // first); keep the first count.
            (
                self.res.allocated_clusters,
                self.res.fragmented_clusters,
                self.res.compressed_clusters,
            ) = saved_frag;
            refs = fresh;

            if self.fix_leaks() {
                // The old refcount structures are now leaked: free them. Only leaks made by
                // the rebuild itself remain to report.
                let saved = std::mem::take(&mut self.res);
                self.compare_refcounts(&refs, Some(Repair::Leaks), &mut rebuild, &mut highest)?;
                if rebuild {
                    self.msg("ERROR rebuilt refcount structure is still broken".into());
                }
                fresh_leaks = self.res.leaks;
                let msgs = std::mem::take(&mut self.res.messages);
                self.res = saved;
                self.res.messages.extend(msgs);
            }
            if self.res.corruptions < old.corruptions {
                self.res.corruptions_fixed += old.corruptions - self.res.corruptions;
            }
            if self.res.leaks < old.leaks {
                self.res.leaks_fixed += old.leaks - self.res.leaks;
            }
            self.res.leaks += fresh_leaks;
        } else if self.repair.is_some() {
            if rebuild {
                self.msg("ERROR need to rebuild refcount structures".into());
                self.res.check_errors += 1;
                self.res.failure = Some("Input/output error".into());
                return Ok(());
            }
            if self.res.leaks > 0 || self.res.corruptions > 0 {
                let msgs = std::mem::take(&mut self.res.messages);
                self.res = pre_compare;
                self.res.messages = msgs;
                self.compare_refcounts(&refs, self.repair, &mut rebuild, &mut highest)?;
            }
        }
        let _ = nb_clusters;
        self.flush_refblocks()?;

        self.check_oflag_copied()?;
        self.res.image_end_offset = (highest + 1) << self.cluster_bits;

        if self.repair.is_some() && self.res.check_errors == 0 && self.res.corruptions == 0 {
            self.mark_clean_and_consistent()?;
        }
        Ok(())
    }

    /// Clears the dirty and corrupt bits of a version 3 image.
    fn mark_clean_and_consistent(&mut self) -> Result<()> {
        let h = &self.q.header;
        if h.version < 3 {
            return Ok(());
        }
        let mut buf = [0u8; 8];
        self.file.read_at(&mut buf, 72)?;
        let bits = u64::from_be_bytes(buf);
        let clean = bits & !(incompatible::DIRTY | incompatible::CORRUPT);
        if clean != bits {
            let w = self.wfile()?;
            w.flush()?;
            w.write_at(&clean.to_be_bytes(), 72)?;
            w.flush()?;
        }
        Ok(())
    }

    /// Adds one reference to every cluster touching `[offset, offset + size)`
    /// (`qcow2_inc_refcounts_imrt`).
    fn inc_refcounts(&mut self, refs: &mut RefArray, offset: u64, size: u64) -> Result<()> {
        if size == 0 {
            return Ok(());
        }
        let file_len = self.file.size();
        // "Last cluster of qcow2 image may be semi-allocated, so it may be OK to reference
        // some space after file end but it should be less than one cluster."
        if i128::from(offset) + i128::from(size) - i128::from(file_len)
            >= i128::from(self.cluster_size())
        {
            self.msg(format!(
                "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset {offset:#x} size {size:#x}"
            ));
            self.res.corruptions += 1;
            return Ok(());
        }
        let first = offset >> self.cluster_bits;
        let last = (offset + size - 1) >> self.cluster_bits;
        for k in first..=last {
            if k >= refs.len {
                refs.resize(k + 1)?;
            }
            let r = refs.get(k);
            if r == self.refcount_max {
                self.msg(format!(
                    "ERROR: overflow cluster offset={:#x}",
                    k << self.cluster_bits
                ));
                self.msg("Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing".into());
                self.res.corruptions += 1;
                continue;
            }
            refs.set(k, r + 1);
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset`; bytes past the end of the file read as zeros.
    fn read_padded(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let n = usize::try_from(len).map_err(|_| Error::corrupt_at(offset, "table too large"))?;
        let mut buf = vec![0u8; n];
        let size = self.file.size();
        if offset < size {
            let avail = usize::try_from(size - offset).unwrap_or(usize::MAX).min(n);
            self.file.read_at(&mut buf[..avail], offset)?;
        }
        Ok(buf)
    }

    /// Every reference the image makes (`calculate_refcounts`).
    fn calculate_refcounts(&mut self, refs: &mut RefArray, rebuild: &mut bool) -> Result<()> {
        let q = self.q;
        let h = &q.header;
        let cs = self.cluster_size();
        // header
        self.inc_refcounts(refs, 0, cs)?;
        // active L1
        self.check_refcounts_l1(refs, h.l1_table_offset, h.l1_size, CHECK_FRAG_INFO, true)?;
        // snapshots
        if self.data_file && !q.snapshots.is_empty() {
            self.msg(format!(
                "ERROR {} snapshots in image with data file",
                q.snapshots.len()
            ));
            self.res.corruptions += 1;
        }
        for sn in &q.snapshots {
            if sn.l1_table_offset & (cs - 1) != 0 {
                self.msg(format!(
                    "ERROR snapshot {} ({}) l1_offset={:#x}: L1 table is not cluster aligned; snapshot table entry corrupted",
                    sn.id_str, sn.name, sn.l1_table_offset
                ));
                self.res.corruptions += 1;
                continue;
            }
            if u64::from(sn.l1_size) * 8 > MAX_L1_BYTES {
                self.msg(format!(
                    "ERROR snapshot {} ({}) l1_size={:#x}: L1 table is too large; snapshot table entry corrupted",
                    sn.id_str, sn.name, sn.l1_size
                ));
                self.res.corruptions += 1;
                continue;
            }
            self.check_refcounts_l1(refs, sn.l1_table_offset, sn.l1_size, 0, false)?;
        }
        let sn_size = crate::snapshot_write::table_size(&*q.file, h)?;
        self.inc_refcounts(refs, h.snapshots_offset, sn_size)?;
        // refcount table
        let table_offset = self.disk.table_offset;
        let table_bytes = self.disk.table.len() as u64 * 8;
        self.inc_refcounts(refs, table_offset, table_bytes)?;
        // bitmaps
        self.check_bitmaps_refcounts(refs)?;
        // refcount blocks
        self.check_refblocks(refs, rebuild)
    }

    /// References of one L1 table and everything below it (`check_refcounts_l1`).
    fn check_refcounts_l1(
        &mut self,
        refs: &mut RefArray,
        l1_offset: u64,
        l1_size: u32,
        flags: u32,
        active: bool,
    ) -> Result<()> {
        if l1_size == 0 {
            return Ok(());
        }
        let bytes = u64::from(l1_size) * 8;
        self.inc_refcounts(refs, l1_offset, bytes)?;
        let l1 = decode_table(&self.read_padded(l1_offset, bytes)?);
        for e in l1 {
            if e == 0 {
                continue;
            }
            if e & L1E_RESERVED_MASK != 0 {
                self.msg(format!(
                    "ERROR found L1 entry with reserved bits set: {e:x}"
                ));
                self.res.corruptions += 1;
            }
            let l2_offset = e & L1E_OFFSET_MASK;
            self.inc_refcounts(refs, l2_offset, self.cluster_size())?;
            if l2_offset & (self.cluster_size() - 1) != 0 {
                self.msg(format!(
                    "ERROR l2_offset={l2_offset:x}: Table is not cluster aligned; L1 entry corrupted"
                ));
                self.res.corruptions += 1;
            }
            self.check_refcounts_l2(refs, l2_offset, flags, active)?;
        }
        Ok(())
    }

    /// References of one L2 table (`check_refcounts_l2`).
    fn check_refcounts_l2(
        &mut self,
        refs: &mut RefArray,
        l2_offset: u64,
        flags: u32,
        active: bool,
    ) -> Result<()> {
        let cs = self.cluster_size();
        let table = decode_table(&self.read_padded(l2_offset, cs)?);
        let words = if self.extended { 2 } else { 1 };
        let mut next_contiguous = 0u64;
        for i in 0..self.l2_size as usize {
            let entry = table[i * words];
            let bitmap = if self.extended {
                table[i * words + 1]
            } else {
                0
            };
            let kind = self.cluster_type(entry);
            if kind != Kind::Compressed && entry & L2E_STD_RESERVED_MASK != 0 {
                self.msg(format!(
                    "ERROR found l2 entry with reserved bits set: {entry:x}"
                ));
                self.res.corruptions += 1;
            }
            match kind {
                Kind::Compressed => {
                    if entry & OFLAG_COPIED != 0 {
                        self.msg(format!(
                            "ERROR: coffset={:#x}: copied flag must never be set for compressed clusters",
                            entry & self.coffset_mask
                        ));
                        self.res.corruptions += 1;
                    }
                    if self.data_file {
                        self.msg(format!(
                            "ERROR compressed cluster {i} with data file, entry={entry:#x}"
                        ));
                        self.res.corruptions += 1;
                        continue;
                    }
                    if bitmap != 0 {
                        self.msg(format!(
                            "ERROR compressed cluster {i} with non-zero subcluster allocation bitmap, entry={entry:#x}"
                        ));
                        self.res.corruptions += 1;
                        continue;
                    }
                    let coffset = entry & self.coffset_mask;
                    let sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1;
                    let csize = sectors * 512 - (coffset & 511);
                    self.inc_refcounts(refs, coffset, csize)?;
                    if flags & CHECK_FRAG_INFO != 0 {
                        self.res.allocated_clusters += 1;
                        self.res.compressed_clusters += 1;
                        // "Compressed clusters are fragmented by nature."
                        self.res.fragmented_clusters += 1;
                    }
                }
                Kind::ZeroAlloc | Kind::Normal => {
                    let offset = entry & L2E_OFFSET_MASK;
                    if (bitmap >> 32) & bitmap != 0 {
                        self.res.corruptions += 1;
                        self.msg(format!(
                            "ERROR offset={offset:x}: Allocated cluster has corrupted subcluster allocation bitmap"
                        ));
                    }
                    if offset & (cs - 1) != 0 {
                        self.res.corruptions += 1;
                        let contains_data = if self.extended {
                            bitmap & L2_BITMAP_ALL_ALLOC != 0
                        } else {
                            entry & OFLAG_ZERO == 0
                        };
                        if !contains_data {
                            let fix = self.fix_errors();
                            self.msg(format!(
                                "{} offset={offset:x}: Preallocated cluster is not properly aligned; L2 entry corrupted.",
                                if fix { "Repairing" } else { "ERROR" }
                            ));
                            if fix
                                && self.fix_l2_entry_by_zero(l2_offset, i as u64, bitmap, active)?
                            {
                                continue;
                            }
                        } else {
                            self.msg(format!(
                                "ERROR offset={offset:x}: Data cluster is not properly aligned; L2 entry corrupted."
                            ));
                        }
                    }
                    if flags & CHECK_FRAG_INFO != 0 {
                        self.res.allocated_clusters += 1;
                        if next_contiguous != 0 && offset != next_contiguous {
                            self.res.fragmented_clusters += 1;
                        }
                        next_contiguous = offset + cs;
                    }
                    if !self.data_file {
                        self.inc_refcounts(refs, offset, cs)?;
                    }
                }
                Kind::ZeroPlain => {}
                Kind::Unallocated => {
                    if bitmap & L2_BITMAP_ALL_ALLOC != 0 {
                        self.res.corruptions += 1;
                        self.msg(
                            "ERROR: Unallocated cluster has non-zero subcluster allocation map"
                                .into(),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Turns an unaligned preallocated zero cluster into a plain zero cluster on disk.
    fn fix_l2_entry_by_zero(
        &mut self,
        l2_offset: u64,
        index: u64,
        bitmap: u64,
        _active: bool,
    ) -> Result<bool> {
        let (entry_size, bytes) = if self.extended {
            let mut b = bitmap | (bitmap << 32);
            b &= L2_BITMAP_ALL_ZEROES;
            let mut v = 0u64.to_be_bytes().to_vec();
            v.extend_from_slice(&b.to_be_bytes());
            (16, v)
        } else {
            (8, OFLAG_ZERO.to_be_bytes().to_vec())
        };
        let at = l2_offset + index * entry_size;
        let w = self.wfile()?;
        if let Err(e) = w.write_at(&bytes, at).and_then(|()| w.flush()) {
            self.msg(format!("ERROR: Failed to overwrite L2 table entry: {e}"));
            self.res.check_errors += 1;
            return Ok(false);
        }
        self.res.corruptions -= 1;
        self.res.corruptions_fixed += 1;
        Ok(true)
    }

    /// `qcow2_get_cluster_type`.
    fn cluster_type(&self, entry: u64) -> Kind {
        if entry & OFLAG_COMPRESSED != 0 {
            Kind::Compressed
        } else if entry & OFLAG_ZERO != 0 && !self.extended {
            if entry & L2E_OFFSET_MASK != 0 {
                Kind::ZeroAlloc
            } else {
                Kind::ZeroPlain
            }
        } else if entry & L2E_OFFSET_MASK == 0 {
            // Offset 0 is valid in an external data file; OFLAG_COPIED tells it apart there.
            if self.data_file && entry & OFLAG_COPIED != 0 {
                Kind::Normal
            } else {
                Kind::Unallocated
            }
        } else {
            Kind::Normal
        }
    }

    /// References of the bitmap directory and the bitmap tables and data.
    fn check_bitmaps_refcounts(&mut self, refs: &mut RefArray) -> Result<()> {
        let q = self.q;
        if q.bitmaps.is_empty() {
            return Ok(());
        }
        let Some(ext) = &q.extensions.bitmaps else {
            return Ok(());
        };
        self.inc_refcounts(refs, ext.bitmap_directory_offset, ext.bitmap_directory_size)?;
        let cs = self.cluster_size();
        for bm in &q.bitmaps {
            let bytes = u64::from(bm.bitmap_table_size) * 8;
            self.inc_refcounts(refs, bm.bitmap_table_offset, bytes)?;
            // qemu bounds the table by its own limit; ours is the L1 limit.
            if bytes > MAX_L1_BYTES {
                self.res.corruptions += 1;
                continue;
            }
            let table = decode_table(&self.read_padded(bm.bitmap_table_offset, bytes)?);
            for e in table {
                let offset = e & BME_TABLE_ENTRY_OFFSET_MASK;
                let bad = e & BME_TABLE_ENTRY_RESERVED_MASK != 0
                    || (offset != 0
                        && (e & BME_TABLE_ENTRY_FLAG_ALL_ONES != 0 || offset % cs != 0));
                if bad {
                    self.res.corruptions += 1;
                    continue;
                }
                if offset != 0 {
                    self.inc_refcounts(refs, offset, cs)?;
                }
            }
        }
        Ok(())
    }

    /// References of the refcount blocks, which must be exactly one each (`check_refblocks`).
    fn check_refblocks(&mut self, refs: &mut RefArray, rebuild: &mut bool) -> Result<()> {
        let cs = self.cluster_size();
        for i in 0..self.disk.table.len() {
            let e = self.disk.table[i];
            let offset = e & REFT_OFFSET_MASK;
            let cluster = offset >> self.cluster_bits;
            if e & REFT_RESERVED_MASK != 0 {
                self.msg(format!(
                    "ERROR refcount table entry {i} has reserved bits set"
                ));
                self.res.corruptions += 1;
                *rebuild = true;
                continue;
            }
            if offset & (cs - 1) != 0 {
                self.msg(format!(
                    "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
                ));
                self.res.corruptions += 1;
                *rebuild = true;
                continue;
            }
            if cluster >= refs.len {
                self.res.corruptions += 1;
                let fix = self.fix_errors();
                self.msg(format!(
                    "{} refcount block {i} is outside image",
                    if fix { "Repairing" } else { "ERROR" }
                ));
                if fix {
                    let grown = offset
                        .checked_add(cs)
                        .ok_or_else(|| Error::corrupt("refcount block offset out of range"))
                        .and_then(|end| self.wfile()?.resize(end, Preallocation::Off));
                    match grown {
                        Ok(()) => {
                            let new_nb = self.file.size().div_ceil(cs);
                            refs.resize(new_nb.max(refs.len))?;
                            if cluster < refs.len {
                                self.res.corruptions -= 1;
                                self.res.corruptions_fixed += 1;
                                self.inc_refcounts(refs, offset, cs)?;
                                continue;
                            }
                            *rebuild = true;
                            self.msg("ERROR could not resize image: Invalid argument".into());
                        }
                        Err(e) => {
                            *rebuild = true;
                            self.msg(format!("ERROR could not resize image: {e}"));
                        }
                    }
                }
                continue;
            }
            if offset != 0 {
                self.inc_refcounts(refs, offset, cs)?;
                let r = refs.get(cluster);
                if r != 1 {
                    self.msg(format!("ERROR refcount block {i} refcount={r}"));
                    self.res.corruptions += 1;
                    *rebuild = true;
                }
            }
        }
        Ok(())
    }

    /// The refcount of `cluster` on disk (`qcow2_get_refcount`).
    fn disk_refcount(&mut self, cluster: u64) -> Result<u64> {
        let rb_bits = self.cluster_bits + 3 - self.refcount_order;
        let t = cluster >> rb_bits;
        let Some(&entry) = usize::try_from(t).ok().and_then(|i| self.disk.table.get(i)) else {
            return Ok(0);
        };
        let offset = entry & REFT_OFFSET_MASK;
        if offset == 0 {
            return Ok(0);
        }
        if offset & (self.cluster_size() - 1) != 0 {
            return Err(Error::corrupt_at(
                offset,
                format!("Refblock offset {offset:#x} unaligned (reftable index: {t:#x})"),
            ));
        }
        if !self.disk.blocks.contains_key(&t) {
            let b = self.read_padded(offset, self.cluster_size())?;
            self.disk.blocks.insert(t, (b, false));
        }
        let (b, _) = &self.disk.blocks[&t];
        Ok(get_refcount(
            b,
            cluster & ((1 << rb_bits) - 1),
            self.refcount_order,
        ))
    }

    /// Changes the on-disk refcount of `cluster` (its block exists: its refcount was read).
    fn set_disk_refcount(&mut self, cluster: u64, value: u64) {
        let rb_bits = self.cluster_bits + 3 - self.refcount_order;
        let t = cluster >> rb_bits;
        if let Some((b, dirty)) = self.disk.blocks.get_mut(&t) {
            set_packed(
                b,
                cluster & ((1 << rb_bits) - 1),
                self.refcount_order,
                value,
            );
            *dirty = true;
        }
    }

    /// Writes back the refcount blocks changed by repairs.
    fn flush_refblocks(&mut self) -> Result<()> {
        let mut dirty: Vec<u64> = self
            .disk
            .blocks
            .iter()
            .filter(|(_, (_, d))| *d)
            .map(|(&t, _)| t)
            .collect();
        dirty.sort_unstable();
        for t in dirty {
            let offset = self.disk.table[t as usize] & REFT_OFFSET_MASK;
            let data = self.disk.blocks[&t].0.clone();
            self.write_grow(&data, offset)?;
            if let Some((_, d)) = self.disk.blocks.get_mut(&t) {
                *d = false;
            }
        }
        if let Some(w) = self.wfile {
            w.flush()?;
        }
        Ok(())
    }

    /// Compares the references with the refcounts on disk (`compare_refcounts`), repairing
    /// what `fix` allows.
    fn compare_refcounts(
        &mut self,
        refs: &RefArray,
        fix: Option<Repair>,
        rebuild: &mut bool,
        highest: &mut u64,
    ) -> Result<()> {
        *highest = 0;
        for i in 0..refs.len {
            let r1 = match self.disk_refcount(i) {
                Ok(r) => r,
                Err(e) => {
                    self.msg(format!(
                        "Can't get refcount for cluster {i}: {}",
                        e.message()
                    ));
                    self.res.check_errors += 1;
                    continue;
                }
            };
            let r2 = refs.get(i);
            if r1 > 0 || r2 > 0 {
                *highest = i;
            }
            if r1 == r2 {
                continue;
            }
            #[derive(PartialEq)]
            enum Fixed {
                No,
                Leak,
                Corruption,
            }
            let fixing = if r1 == 0 {
                *rebuild = true;
                Fixed::No
            } else if r1 > r2 && fix.is_some_and(Repair::leaks) {
                Fixed::Leak
            } else if r1 < r2 && fix.is_some_and(Repair::errors) {
                Fixed::Corruption
            } else {
                Fixed::No
            };
            self.msg(format!(
                "{} cluster {i} refcount={r1} reference={r2}",
                if fixing != Fixed::No {
                    "Repairing"
                } else if r1 < r2 {
                    "ERROR"
                } else {
                    "Leaked"
                }
            ));
            match fixing {
                Fixed::Leak => {
                    self.set_disk_refcount(i, r2);
                    self.res.leaks_fixed += 1;
                }
                Fixed::Corruption => {
                    self.set_disk_refcount(i, r2);
                    self.res.corruptions_fixed += 1;
                }
                Fixed::No => {
                    if r1 < r2 {
                        self.res.corruptions += 1;
                    } else {
                        self.res.leaks += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks OFLAG_COPIED on the active L1 and L2 entries against the refcounts on disk
    /// (`check_oflag_copied`).
    fn check_oflag_copied(&mut self) -> Result<()> {
        let repair = if self.fix_errors() {
            true
        } else if self.fix_leaks() {
            // Safe only when the refcounts are known good by now.
            self.res.check_errors == 0 && self.res.corruptions == 0 && self.res.leaks == 0
        } else {
            false
        };
        let h = &self.q.header;
        let cs = self.cluster_size();
        let l1_offset = h.l1_table_offset;
        let l1 = decode_table(&self.read_padded(l1_offset, u64::from(h.l1_size) * 8)?);
        let words = if self.extended { 2 } else { 1 };
        for (i, &l1_entry) in l1.iter().enumerate() {
            let l2_offset = l1_entry & L1E_OFFSET_MASK;
            if l2_offset == 0 {
                continue;
            }
            let Ok(refcount) = self.disk_refcount(l2_offset >> self.cluster_bits) else {
                continue;
            };
            if (refcount == 1) != (l1_entry & OFLAG_COPIED != 0) {
                self.res.corruptions += 1;
                self.msg(format!(
                    "{} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1_entry:x} refcount={refcount}",
                    if repair { "Repairing" } else { "ERROR" }
                ));
                if repair {
                    let fixed = if refcount == 1 {
                        l1_entry | OFLAG_COPIED
                    } else {
                        l1_entry & !OFLAG_COPIED
                    };
                    let w = self.wfile()?;
                    if let Err(e) = w
                        .write_at(&fixed.to_be_bytes(), l1_offset + i as u64 * 8)
                        .and_then(|()| w.flush())
                    {
                        self.res.check_errors += 1;
                        return Err(e);
                    }
                    self.res.corruptions -= 1;
                    self.res.corruptions_fixed += 1;
                }
            }
            let mut table = decode_table(&self.read_padded(l2_offset, cs)?);
            let mut dirty = 0u64;
            for j in 0..self.l2_size as usize {
                let e = table[j * words];
                let kind = self.cluster_type(e);
                if kind != Kind::Normal && kind != Kind::ZeroAlloc {
                    continue;
                }
                let refcount = if self.data_file {
                    1
                } else {
                    match self.disk_refcount((e & L2E_OFFSET_MASK) >> self.cluster_bits) {
                        Ok(r) => r,
                        Err(_) => continue,
                    }
                };
                if (refcount == 1) != (e & OFLAG_COPIED != 0) {
                    self.res.corruptions += 1;
                    self.msg(format!(
                        "{} OFLAG_COPIED data cluster: l2_entry={e:x} refcount={refcount}",
                        if repair { "Repairing" } else { "ERROR" }
                    ));
                    if repair {
                        table[j * words] = if refcount == 1 {
                            e | OFLAG_COPIED
                        } else {
                            e & !OFLAG_COPIED
                        };
                        dirty += 1;
                    }
                }
            }
            if dirty > 0 {
                let bytes: Vec<u8> = table.iter().flat_map(|w| w.to_be_bytes()).collect();
                if let Err(e) = self.write_grow(&bytes, l2_offset) {
                    self.msg(format!("ERROR: Could not write L2 table: {e}"));
                    self.res.check_errors += 1;
                    return Err(e);
                }
                self.res.corruptions -= dirty;
                self.res.corruptions_fixed += dirty;
            }
        }
        Ok(())
    }

    /// Writes new refcount blocks and a new refcount table from the references
    /// (`rebuild_refcount_structure`), then switches the header to them. The old structures
    /// become leaks, which the caller frees.
    fn rebuild_refcount_structure(&mut self, refs: &mut RefArray) -> Result<()> {
        self.rebuild_with_order(refs, None)
    }

    /// [`rebuild_refcount_structure`](Self::rebuild_refcount_structure), switching the header
    /// to refcount order `new_order` in the same write when given.
    fn rebuild_with_order(&mut self, refs: &mut RefArray, new_order: Option<u32>) -> Result<()> {
        let mut reftable: Vec<u64> = Vec::new();
        let end = refs.len;
        let grown = self.write_refblocks(refs, 0, end, &mut reftable)?;
        debug_assert!(grown);
        let cs = self.cluster_size();
        let (mut offset, mut clusters);
        loop {
            let len = reftable.len() as u64 * 8;
            clusters = len.div_ceil(cs);
            let mut first_free = 0;
            offset = alloc_clusters_imrt(refs, clusters, &mut first_free)?;
            let start = offset >> self.cluster_bits;
            if !self.write_refblocks(refs, start, start + clusters, &mut reftable)? {
                break;
            }
        }
        let bytes: Vec<u8> = reftable.iter().flat_map(|w| w.to_be_bytes()).collect();
        self.write_grow(&bytes, offset)?;
        let w = self.wfile()?;
        w.flush()?;
        let mut fields = offset.to_be_bytes().to_vec();
        fields.extend_from_slice(&(clusters as u32).to_be_bytes());
        if let Some(order) = new_order {
            // Bytes 60..96 as they are, then refcount_order: one write switches both.
            let mut rest = vec![0u8; 36];
            self.file.read_at(&mut rest, 60)?;
            fields.extend_from_slice(&rest);
            fields.extend_from_slice(&order.to_be_bytes());
        }
        w.write_at(&fields, 48)?;
        w.flush()?;
        self.disk = DiskRefcounts {
            table_offset: offset,
            table: reftable,
            blocks: HashMap::new(),
        };
        Ok(())
    }

    /// Writes the refcount blocks covering clusters `[first, end)` that hold a non-zero
    /// refcount, allocating them in `refs` (`rebuild_refcounts_write_refblocks`). Returns
    /// whether the refcount table had to grow.
    fn write_refblocks(
        &mut self,
        refs: &mut RefArray,
        first: u64,
        mut end: u64,
        reftable: &mut Vec<u64>,
    ) -> Result<bool> {
        let rb_bits = self.cluster_bits + 3 - self.refcount_order;
        let per_table_cluster = self.cluster_size() / 8;
        let mut first_free = 0u64;
        let mut grown = false;
        let mut cluster = first;
        while cluster < end {
            if refs.get(cluster) == 0 {
                cluster += 1;
                continue;
            }
            let index = cluster >> rb_bits;
            let start = index << rb_bits;
            let block_offset = match reftable.get(index as usize) {
                Some(&o) if o != 0 => o,
                _ => {
                    // Never allocate inside a refblock already written.
                    first_free = first_free.max(start);
                    let o = alloc_clusters_imrt(refs, 1, &mut first_free)?;
                    let oc = o >> self.cluster_bits;
                    if oc >= end {
                        // The block holding this block's refcount must be written too.
                        end = oc + 1;
                    }
                    if reftable.len() as u64 <= index {
                        let n = (index + 1).div_ceil(per_table_cluster) * per_table_cluster;
                        reftable.resize(n as usize, 0);
                        grown = true;
                    }
                    reftable[index as usize] = o;
                    o
                }
            };
            let data = refs.block(index).to_vec();
            self.write_grow(&data, block_offset)?;
            cluster = start + (1 << rb_bits);
        }
        Ok(grown)
    }
}

/// Finds `count` contiguous clusters free in `refs` from `*first_free` on (growing the array
/// past the end when needed), gives them refcount 1 and returns their offset
/// (`alloc_clusters_imrt`).
fn alloc_clusters_imrt(refs: &mut RefArray, count: u64, first_free: &mut u64) -> Result<u64> {
    let mut cluster = *first_free;
    let mut run = 0u64;
    let mut first_gap = true;
    while cluster < refs.len && run < count {
        if refs.get(cluster) == 0 {
            run += 1;
            if first_gap {
                *first_free = cluster;
                first_gap = false;
            }
        } else {
            run = 0;
        }
        cluster += 1;
    }
    if run < count {
        refs.resize(cluster + count - run)?;
    }
    let start = cluster - run;
    for k in start..start + count {
        refs.set(k, 1);
    }
    Ok(start << refs.cluster_bits)
}

/// The kinds of L2 entries qemu's check tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Compressed,
    ZeroPlain,
    ZeroAlloc,
    Normal,
    Unallocated,
}

/// Reads the refcount table (bounded by the header limit, which the header parser checked).
fn load_reftable(
    file: &dyn BlockDevice,
    offset: u64,
    clusters: u32,
    cluster_bits: u32,
) -> Result<DiskRefcounts> {
    let len = u64::from(clusters) << cluster_bits;
    let mut buf = vec![0u8; len as usize];
    let size = file.size();
    if offset < size {
        let avail = usize::try_from(size - offset)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        file.read_at(&mut buf[..avail], offset)?;
    }
    Ok(DiskRefcounts {
        table_offset: offset,
        table: decode_table(&buf),
        blocks: HashMap::new(),
    })
}
