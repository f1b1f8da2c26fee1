//! `measure`: how large a new image file must be, as `qemu-img measure` computes it.
//!
//! ```text
//!   required size        = the target's metadata for a fully allocated image
//!                          + the data clusters the source really needs
//!                            (all of them with preallocation=falloc|full, or a backing file)
//!   fully allocated size = header + L2 tables + L1 table + refcount table and blocks + data
//!   bitmaps size         = clusters for the source's persistent bitmaps, their tables and
//!                          directory (qcow2 v3 source and target only)
//! ```
//!
//! The formulas are qemu's (`qcow2_measure`, `qcow2_calc_prealloc_size`,
//! `qcow2_refcount_metadata_size`, `qcow2_get_persistent_dirty_bitmap_size`, `raw_measure`),
//! so the numbers agree with qemu-img's to the byte. Source ranges are classified by the
//! chain's mappings; no guest data is read.

use serde_json::{Map, Value};
use vdisk_block::{BlockDevice, Error, Preallocation, Result};

use crate::create::CreateRequest;
use crate::engine::reported_status;
use crate::open::{Driver, Format, OpenedImage};

/// qcow2's largest L1 table in bytes (qemu's `QCOW_MAX_L1_SIZE`).
const MAX_L1_SIZE: u64 = 32 << 20;
/// Bytes per L1 entry and per refcount table entry.
const ENTRY: u64 = 8;
/// qemu's sector: raw sizes are rounded up to it.
const SECTOR: u64 = 512;
/// Bytes of a bitmap directory entry before its name (`Qcow2BitmapDirEntry`).
const BITMAP_DIR_ENTRY: u64 = 24;

/// What `qemu-img measure` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// Bytes the new file needs for what the source holds ("required size").
    pub required: u64,
    /// Bytes of the file when every cluster is allocated ("fully allocated size").
    pub fully_allocated: u64,
    /// Bytes the source's persistent bitmaps need in a qcow2 target, when both support them.
    pub bitmaps: Option<u64>,
}

impl Measurement {
    /// The text `qemu-img measure` prints.
    pub fn human(&self) -> String {
        let mut s = format!(
            "required size: {}\nfully allocated size: {}\n",
            self.required, self.fully_allocated
        );
        if let Some(b) = self.bitmaps {
            s.push_str(&format!("bitmaps size: {b}\n"));
        }
        s
    }

    /// qemu's `BlockMeasureInfo` as JSON (members in schema order; print it with
    /// [`crate::qapi::to_json`]).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("required".into(), self.required.into());
        m.insert("fully-allocated".into(), self.fully_allocated.into());
        if let Some(b) = self.bitmaps {
            m.insert("bitmaps".into(), b.into());
        }
        Value::Object(m)
    }
}

/// Measures a new image of `req.format` with `req`'s options (its `size`, for `--size`), or
/// holding the content of `source` when given.
pub fn measure(req: &CreateRequest, source: Option<&OpenedImage>) -> Result<Measurement> {
    match req.format {
        Format::Raw => Ok(measure_raw(req, source)),
        Format::Qcow2 => measure_qcow2(req, source),
        other => Err(Error::unsupported(format!(
            "Block driver '{other}' does not support size measurement"
        ))),
    }
}

/// `raw_measure`: the whole virtual size, allocated or not.
fn measure_raw(req: &CreateRequest, source: Option<&OpenedImage>) -> Measurement {
    let required = match source {
        Some(s) => s.image().size(),
        None => req.size.unwrap_or(0).next_multiple_of(SECTOR),
    };
    Measurement {
        required,
        fully_allocated: required,
        bitmaps: None,
    }
}

fn measure_qcow2(req: &CreateRequest, source: Option<&OpenedImage>) -> Result<Measurement> {
    let o = &req.qcow2;
    // The checks qcow2_measure makes, in its order and with its messages.
    let cs = o.cluster_size;
    if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
        return Err(Error::invalid(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    if o.extended_l2 && cs < 16384 {
        return Err(Error::invalid(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
        ));
    }
    if !o.refcount_bits.is_power_of_two() || o.refcount_bits > 64 {
        return Err(Error::invalid(
            "Refcount width must be a power of two and may not exceed 64 bits",
        ));
    }
    if o.version < 3 && o.refcount_bits != 16 {
        return Err(Error::invalid(
            "Different refcount widths than 16 bits require compatibility level 1.1 or above \
             (use compat=1.1 or greater)",
        ));
    }
    let l2e_size: u64 = if o.extended_l2 { 16 } else { 8 };
    let refcount_order = o.refcount_bits.trailing_zeros();

    let too_large =
        || Error::invalid("The image size is too large (try using a larger cluster size)");
    let mut virtual_size = req
        .size
        .unwrap_or(0)
        .checked_next_multiple_of(cs)
        .ok_or_else(too_large)?;
    let l2_tables = (virtual_size / cs).div_ceil(cs / l2e_size);
    if l2_tables.checked_mul(ENTRY).is_none_or(|b| b > MAX_L1_SIZE) {
        return Err(too_large());
    }

    let mut required = 0;
    if let Some(src) = source {
        let ssize = src.image().size();
        virtual_size = ssize.checked_next_multiple_of(cs).ok_or_else(too_large)?;
        if req.backing_file.is_some() {
            // What the new image's backing file shares with the source is unknown: qemu
            // assumes nothing and counts every cluster.
            required = virtual_size;
        } else {
            required = allocated_bytes(src, cs)?;
        }
    }
    if matches!(o.preallocation, Preallocation::Full | Preallocation::Falloc) {
        required = virtual_size;
    }
    let fully_allocated =
        prealloc_size(virtual_size, cs, refcount_order, l2e_size).ok_or_else(too_large)?;
    let bitmaps = match source {
        Some(src) if o.version >= 3 => source_bitmaps_size(src, cs),
        _ => None,
    };
    Ok(Measurement {
        required: fully_allocated - virtual_size + required,
        fully_allocated,
        bitmaps,
    })
}

/// The bytes of whole clusters (of size `cs`) that hold data somewhere in the source's chain:
/// ranges reading as zeros need none.
fn allocated_bytes(src: &OpenedImage, cs: u64) -> Result<u64> {
    let ssize = src.image().size();
    let mut required = 0;
    let mut offset = 0;
    while offset < ssize {
        let ext = reported_status(src, offset, ssize - offset)?
            .ok_or_else(|| Error::invalid("measure ran past the end of the source"))?;
        let mut pnum = ext.length;
        if ext.zero {
            // Skipped: nothing to store.
        } else if ext.data && ext.present {
            // Whole clusters: up to the end of the one the extent ends in, counted from the
            // start of the one it begins in.
            pnum = (offset + pnum).next_multiple_of(cs) - offset;
            required += offset % cs + pnum;
        }
        offset += pnum;
    }
    Ok(required)
}

/// `qcow2_calc_prealloc_size`: the file size of a fully allocated image of `total` bytes.
fn prealloc_size(total: u64, cs: u64, refcount_order: u32, l2e_size: u64) -> Option<u64> {
    let aligned = total.checked_next_multiple_of(cs)?;
    // The header cluster.
    let mut meta = cs;
    // L2 tables, whole ones.
    let nl2e = (aligned / cs).checked_next_multiple_of(cs / l2e_size)?;
    meta = meta.checked_add(nl2e.checked_mul(l2e_size)?)?;
    // The L1 table, whole clusters.
    let nl1e = (nl2e * l2e_size / cs).checked_next_multiple_of(cs / ENTRY)?;
    meta = meta.checked_add(nl1e.checked_mul(ENTRY)?)?;
    // Refcount table and blocks covering everything, themselves included.
    let clusters = meta.checked_add(aligned)? / cs;
    meta = meta.checked_add(refcount_metadata_size(clusters, cs, refcount_order)?)?;
    meta.checked_add(aligned)
}

/// `qcow2_refcount_metadata_size` (without the generous increase): the refcount table and
/// blocks needed to count `clusters` clusters plus themselves, found as a fixed point.
fn refcount_metadata_size(clusters: u64, cs: u64, refcount_order: u32) -> Option<u64> {
    let blocks_per_table_cluster = cs / ENTRY;
    let refcounts_per_block = (cs * 8) >> refcount_order;
    let (mut table, mut blocks, mut n) = (0u64, 0u64, 0u64);
    loop {
        let last = n;
        blocks = clusters
            .checked_add(table)?
            .checked_add(blocks)?
            .div_ceil(refcounts_per_block);
        table = blocks.div_ceil(blocks_per_table_cluster);
        n = clusters.checked_add(blocks)?.checked_add(table)?;
        if n == last {
            return blocks.checked_add(table)?.checked_mul(cs);
        }
    }
}

/// `qcow2_get_persistent_dirty_bitmap_size`: every persistent bitmap of a qcow2 v3 source,
/// fully allocated, with its table and directory entry; `None` when the source cannot hold
/// persistent bitmaps (raw, qcow2 v2).
fn source_bitmaps_size(src: &OpenedImage, cs: u64) -> Option<u64> {
    let Driver::Qcow2(q) = &src.driver else {
        return None;
    };
    if q.header().version < 3 {
        return None;
    }
    let size = q.header().size;
    let mut total = 0u64;
    let mut dir = 0u64;
    for bm in q.bitmaps() {
        let granularity = bm.granularity().max(1);
        let bytes = size.div_ceil(granularity).div_ceil(8);
        let clusters = bytes.div_ceil(cs);
        total = total
            .saturating_add(clusters.saturating_mul(cs))
            .saturating_add(clusters.saturating_mul(ENTRY).next_multiple_of(cs));
        dir += (BITMAP_DIR_ENTRY + bm.name.len() as u64).next_multiple_of(8);
    }
    Some(total.saturating_add(dir.next_multiple_of(cs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fully_allocated_sizes_are_qemus() {
        // qemu-img measure --size 1G -O qcow2 (-o ...) on this machine.
        assert_eq!(prealloc_size(1 << 30, 65536, 4, 8), Some(1074135040));
        assert_eq!(prealloc_size(1 << 30, 65536, 4, 16), Some(1074266112));
        assert_eq!(prealloc_size(1 << 30, 2 << 20, 4, 8), Some(1084227584));
        assert_eq!(prealloc_size(1 << 30, 65536, 0, 8), Some(1074135040));
        assert_eq!(prealloc_size(0, 65536, 4, 8), Some(196608));
    }

    #[test]
    fn huge_sizes_do_not_overflow() {
        assert_eq!(prealloc_size(u64::MAX - 10, 512, 6, 16), None);
        assert!(refcount_metadata_size(u64::MAX / 2, 512, 6).is_none());
    }
}
