//! A logical volume as a [`BlockDevice`]: LV bytes map through segments to PV extents.

use std::sync::Arc;

use vdisk_block::{BlockDevice, BlockDeviceExt, Error, Result};

use super::metadata::{LvMeta, SegmentKind, VgMetadata};

/// A segment resolved to byte offsets on PV devices.
#[derive(Clone)]
struct Mapped {
    /// First LV byte covered.
    start: u64,
    /// Bytes covered.
    len: u64,
    /// Chunk size; equal to `len` for a linear segment.
    chunk: u64,
    /// Per stripe: the PV device and the byte offset of the area on it.
    areas: Vec<(Arc<dyn BlockDevice>, u64)>,
}

impl Mapped {
    /// Where segment byte `off` lives: (area index, byte on that PV, bytes contiguous there).
    fn locate(&self, off: u64) -> (usize, u64, u64) {
        // Invariants from LogicalVolume::new: chunk > 0, len is a multiple of
        // chunk * areas.len(), and every area offset plus len / areas fits its device.
        let n = self.areas.len() as u64;
        let chunk_no = off / self.chunk;
        let within = off % self.chunk;
        let stripe = (chunk_no % n) as usize;
        let row = chunk_no / n;
        let pv_off = self.areas[stripe].1 + row * self.chunk + within;
        (stripe, pv_off, self.chunk - within)
    }
}

/// A logical volume whose reads and writes go to the extents of its PVs.
pub struct LogicalVolume {
    vg: String,
    name: String,
    size: u64,
    segments: Vec<Mapped>,
    read_only: bool,
}

impl std::fmt::Debug for LogicalVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalVolume")
            .field("vg", &self.vg)
            .field("name", &self.name)
            .field("size", &self.size)
            .field("segments", &self.segments.len())
            .finish()
    }
}

impl LogicalVolume {
    /// Builds the LV `lv` of `vg`; `pv_devs[i]` is the device of `vg.pvs[i]`, `None` when no
    /// disk given holds it. Every extent is checked to lie on its PV.
    pub fn new(
        vg: &VgMetadata,
        lv: &LvMeta,
        pv_devs: &[Option<Arc<dyn BlockDevice>>],
    ) -> Result<LogicalVolume> {
        let ctx = format!("LV {}/{}", vg.name, lv.name);
        let bad = |what: String| Error::corrupt(format!("{ctx}: {what}"));
        let es = vg.extent_size;
        let mut segs: Vec<_> = lv.segments.iter().collect();
        segs.sort_by_key(|s| s.start_extent);
        let mut next_extent = 0u64;
        let mut segments = Vec::with_capacity(segs.len());
        let mut read_only = false;
        for seg in segs {
            let sname = &seg.name;
            if seg.start_extent != next_extent {
                return Err(bad(format!(
                    "{sname} starts at extent {} but the previous segments end at extent \
                     {next_extent}",
                    seg.start_extent
                )));
            }
            let (stripe_size, stripes) = match &seg.kind {
                SegmentKind::Striped {
                    stripe_size,
                    stripes,
                } => (*stripe_size, stripes),
                SegmentKind::Unsupported(ty) => {
                    return Err(Error::unsupported(format!(
                        "{ctx}: {sname} has segment type {ty:?} (only linear and striped are \
                         mapped)"
                    )))
                }
            };
            let n = stripes.len() as u64;
            if seg.extent_count == 0 || seg.extent_count % n != 0 {
                return Err(bad(format!(
                    "{sname}: {} extents cannot be split across {n} stripes",
                    seg.extent_count
                )));
            }
            let area_extents = seg.extent_count / n;
            let len = seg
                .extent_count
                .checked_mul(es)
                .ok_or_else(|| bad(format!("{sname}: {} extents overflow", seg.extent_count)))?;
            let start = next_extent
                .checked_mul(es)
                .ok_or_else(|| bad(format!("{sname}: start overflows")))?;
            let chunk = if n == 1 { len } else { stripe_size };
            if chunk == 0 || (len / n) % chunk != 0 {
                return Err(bad(format!(
                    "{sname}: each stripe's {} bytes are not a whole number of {chunk}-byte chunks",
                    len / n
                )));
            }
            let mut areas = Vec::with_capacity(stripes.len());
            for area in stripes {
                let pv = &vg.pvs[area.pv];
                let end_extent = area.start_extent.checked_add(area_extents);
                if end_extent.is_none_or(|e| e > pv.pe_count) {
                    return Err(bad(format!(
                        "{sname}: extents {}..{} of {} lie past its {} extents",
                        area.start_extent,
                        area.start_extent.saturating_add(area_extents),
                        pv.name,
                        pv.pe_count
                    )));
                }
                let Some(dev) = pv_devs.get(area.pv).cloned().flatten() else {
                    return Err(Error::corrupt(format!(
                        "{ctx}: PV {} (UUID {}) is missing: no disk given holds it",
                        pv.name,
                        super::label::dashed_uuid(&pv.id)
                    )));
                };
                let off = area
                    .start_extent
                    .checked_mul(es)
                    .and_then(|o| o.checked_add(pv.pe_start));
                let area_len = area_extents * es; // <= len, no overflow
                match off.and_then(|o| o.checked_add(area_len)) {
                    Some(end) if end <= dev.size() => {}
                    _ => {
                        return Err(bad(format!(
                            "{sname}: extents {}..{} of {} reach past the end of its device \
                             ({} bytes)",
                            area.start_extent,
                            area.start_extent + area_extents,
                            pv.name,
                            dev.size()
                        )))
                    }
                }
                read_only |= dev.is_read_only();
                areas.push((dev, off.unwrap_or(0)));
            }
            segments.push(Mapped {
                start,
                len,
                chunk,
                areas,
            });
            next_extent = next_extent
                .checked_add(seg.extent_count)
                .filter(|e| e.checked_mul(es).is_some())
                .ok_or_else(|| bad(format!("{sname}: the LV's size overflows")))?;
        }
        Ok(LogicalVolume {
            vg: vg.name.clone(),
            name: lv.name.clone(),
            size: next_extent * es,
            segments,
            read_only,
        })
    }

    /// The VG name.
    pub fn vg_name(&self) -> &str {
        &self.vg
    }

    /// The LV name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls `f(device, device_offset, lv_range_start, len)` for each contiguous piece of
    /// `[offset, offset + len)`.
    fn each_piece(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(&dyn BlockDevice, u64, usize, usize) -> Result<()>,
    ) -> Result<()> {
        self.check_range(offset, len as u64)?;
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let idx = self.segments.partition_point(|s| s.start + s.len <= pos);
            let seg = &self.segments[idx];
            let (stripe, pv_off, run) = seg.locate(pos - seg.start);
            let n = usize::try_from(run).unwrap_or(usize::MAX).min(len - done);
            f(&*seg.areas[stripe].0, pv_off, done, n)?;
            done += n;
        }
        Ok(())
    }
}

impl BlockDevice for LogicalVolume {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.each_piece(offset, buf.len(), |dev, off, at, n| {
            dev.read_at(&mut buf[at..at + n], off)
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::invalid("the device is read-only"));
        }
        self.each_piece(offset, buf.len(), |dev, off, at, n| {
            dev.write_at(&buf[at..at + n], off)
        })
    }

    fn flush(&self) -> Result<()> {
        let mut done: Vec<*const ()> = Vec::new();
        for s in &self.segments {
            for (d, _) in &s.areas {
                let p = Arc::as_ptr(d) as *const ();
                if !done.contains(&p) {
                    done.push(p);
                    d.flush()?;
                }
            }
        }
        Ok(())
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }
}
