//! A hosted sparse extent: header, grain directory (GD, and its redundant copy), grain
//! tables (GT) and grains, plain or deflated behind grain markers.
//!
//! ```text
//!   guest offset in extent -> grain g = off / grain_bytes
//!   GD[g / gtes] -> sector of GT;  GT[g % gtes] -> 0 unallocated | 1 zeroed | sector of grain
//! ```
//!
//! Grain tables load on first use into atomics, so readers on many threads look entries up
//! without locks; an allocating write takes the allocation mutex, and the tables it changed
//! are written back (to both directories' tables) on flush. Stream-optimized extents take
//! whole grains: a grain is deflated once all its bytes have been written.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use vdisk_block::{BlockDevice, Error, MapKind, Preallocation, Resize, Result};
use vdisk_raw::RawFile;

use crate::header::{self, SparseExtentHeader};
use crate::SECTOR;

/// Grain table entry meaning "reads as zeros" when the zeroed-grain flag is set.
const GTE_ZEROED: u32 = 1;
/// The largest grain directory we read into memory, in entries (qemu's limit).
const MAX_GD_ENTRIES: u64 = 32 * 1024 * 1024;
/// Stream grains waiting for the rest of their bytes; more than this many means the writer
/// is not streaming, and the oldest are written out as they are.
const MAX_PENDING_GRAINS: usize = 64;
/// Size of a grain marker before its deflated bytes: lba (u64) and size (u32).
const MARKER_HEAD: usize = 12;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A grain being filled by stream writes.
#[derive(Debug)]
struct Pending {
    data: Vec<u8>,
    filled: u64,
}

/// An open sparse extent.
#[derive(Debug)]
pub struct Sparse {
    file: Arc<RawFile>,
    h: SparseExtentHeader,
    grain_bytes: u64,
    gd: Vec<u32>,
    rgd: Option<Vec<u32>>,
    gts: Vec<OnceLock<Box<[AtomicU32]>>>,
    dirty: Mutex<BTreeSet<usize>>,
    /// The next free sector; taken with the allocation lock held.
    next_sector: Mutex<u64>,
    last_grain: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Serializes allocating writes of plain grains.
    alloc_lock: Mutex<()>,
    writable: bool,
}

fn read_u32s(file: &RawFile, sector: u64, count: u64, what: &str) -> Result<Vec<u32>> {
    let off = sector
        .checked_mul(SECTOR)
        .ok_or_else(|| Error::corrupt(format!("{what} offset out of range")))?;
    let bytes = count
        .checked_mul(4)
        .ok_or_else(|| Error::corrupt(format!("{what} size out of range")))?;
    if off.checked_add(bytes).is_none_or(|e| e > file.size()) {
        return Err(Error::corrupt_at(
            off,
            format!("{what} at 0x{off:x} lies beyond the end of the file"),
        ));
    }
    let n = usize::try_from(bytes).map_err(|_| Error::corrupt(format!("{what} too large")))?;
    let mut buf = vec![0u8; n];
    file.read_at(&mut buf, off)?;
    Ok(buf
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

impl Sparse {
    /// Opens the sparse extent in `file`, checking the header and reading the grain
    /// directory.
    pub fn open(file: Arc<RawFile>, writable: bool) -> Result<Sparse> {
        let mut head = [0u8; header::HEADER_SIZE];
        if file.size() < header::HEADER_SIZE as u64 {
            return Err(Error::corrupt("File is too small, not a valid image"));
        }
        file.read_at(&mut head, 0)?;
        let mut h = SparseExtentHeader::parse(&head)?;
        let mut at_end = false;
        if h.gd_offset == header::GD_AT_END {
            // The footer (3 sectors before the end: footer marker, header, end-of-stream
            // marker) holds the real header.
            let end = file.size();
            let start = end
                .checked_sub(3 * SECTOR)
                .ok_or_else(|| Error::corrupt("Invalid footer"))?;
            let mut f = vec![0u8; 3 * SECTOR as usize];
            file.read_at(&mut f, start)?;
            let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let footer_ok = le32(&f[8..12]) == 0
                && le32(&f[12..16]) == 3
                && f[1024..1032].iter().all(|&b| b == 0)
                && le32(&f[1032..1036]) == 0
                && le32(&f[1036..1040]) == 0;
            if !footer_ok {
                return Err(Error::corrupt("Invalid footer"));
            }
            h = SparseExtentHeader::parse(&f[512..1024])?;
            if h.gd_offset == header::GD_AT_END {
                return Err(Error::corrupt("Invalid footer"));
            }
            at_end = true;
        }
        h.validate(file.size())?;
        if h.version == 3 && writable && !h.compressed() {
            return Err(Error::unsupported("VMDK version 3 must be read only"));
        }
        let gd_entries = h.gd_entries();
        if gd_entries > MAX_GD_ENTRIES {
            return Err(Error::unsupported("L1 size too big"));
        }
        let gd = read_u32s(&file, h.gd_offset, gd_entries, "grain directory")?;
        let rgd = if h.flags & header::FLAG_RGD != 0 && h.rgd_offset != 0 && !at_end {
            Some(read_u32s(
                &file,
                h.rgd_offset,
                gd_entries,
                "redundant grain directory",
            )?)
        } else {
            None
        };
        let grain_bytes = h.grain_size * SECTOR;
        let next = file.size().div_ceil(SECTOR).next_multiple_of(h.grain_size);
        let gts = (0..gd.len()).map(|_| OnceLock::new()).collect();
        Ok(Sparse {
            file,
            h,
            grain_bytes,
            gd,
            rgd,
            gts,
            dirty: Mutex::new(BTreeSet::new()),
            next_sector: Mutex::new(next),
            last_grain: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            alloc_lock: Mutex::new(()),
            writable: writable && !at_end,
        })
    }

    /// The extent file.
    pub fn file(&self) -> &Arc<RawFile> {
        &self.file
    }

    /// The header in use (the footer's, for a stream with its directory at the end).
    pub fn header(&self) -> &SparseExtentHeader {
        &self.h
    }

    /// The extent's length in bytes (its capacity).
    pub fn len(&self) -> u64 {
        self.h.capacity.saturating_mul(SECTOR)
    }

    /// True when the extent has no sectors.
    pub fn is_empty(&self) -> bool {
        self.h.capacity == 0
    }

    /// Grain size in bytes.
    pub fn grain_bytes(&self) -> u64 {
        self.grain_bytes
    }

    /// True for deflated grains.
    pub fn compressed(&self) -> bool {
        self.h.compressed()
    }

    fn gtes(&self) -> u64 {
        u64::from(self.h.num_gtes_per_gt)
    }

    /// The grain table of directory entry `i`, loaded on first use; `None` when the
    /// directory entry is 0 (no table: every grain unallocated).
    fn table(&self, i: usize) -> Result<Option<&[AtomicU32]>> {
        let sector = self.gd[i];
        if sector == 0 {
            return Ok(None);
        }
        if let Some(t) = self.gts[i].get() {
            return Ok(Some(t));
        }
        let v = read_u32s(&self.file, u64::from(sector), self.gtes(), "grain table")?;
        let t: Box<[AtomicU32]> = v.into_iter().map(AtomicU32::new).collect();
        // Another thread may have loaded it meanwhile; both read the same bytes.
        let _ = self.gts[i].set(t);
        Ok(self.gts[i].get().map(|b| &**b))
    }

    /// The grain table entry of grain `g`.
    fn entry(&self, g: u64) -> Result<u32> {
        let i = usize::try_from(g / self.gtes()).map_err(|_| Error::corrupt("grain index"))?;
        if i >= self.gd.len() {
            return Err(Error::corrupt(format!(
                "grain {g} is beyond the grain directory"
            )));
        }
        Ok(match self.table(i)? {
            None => 0,
            // g % gtes < gtes = table length
            Some(t) => t[(g % self.gtes()) as usize].load(Ordering::Acquire),
        })
    }

    fn zeroed(&self, e: u32) -> bool {
        e == GTE_ZEROED && self.h.flags & header::FLAG_ZERO_GRAIN != 0
    }

    /// Where a grain's bytes start in the file, checked against the file.
    fn grain_host(&self, e: u32) -> Result<u64> {
        let host = u64::from(e) * SECTOR;
        let need = if self.compressed() {
            MARKER_HEAD as u64
        } else {
            self.grain_bytes
        };
        if host.saturating_add(need) > self.file.size() {
            return Err(Error::corrupt_at(
                host,
                format!("grain at 0x{host:x} lies beyond the end of the file"),
            ));
        }
        Ok(host)
    }

    /// Describes `[off, off + limit)` of the extent (offsets inside the extent).
    pub fn map(&self, off: u64, limit: u64) -> Result<(u64, MapKind)> {
        let g = off / self.grain_bytes;
        let in_grain = off % self.grain_bytes;
        let first = self.kind_of(g, in_grain)?;
        let mut len = (self.grain_bytes - in_grain).min(limit);
        // Extend over the following grains of the same table while they continue the run.
        let mut next = g + 1;
        while len < limit && next % self.gtes() != 0 {
            let k = self.kind_of(next, 0)?;
            let cont = match (first, k) {
                (MapKind::Data { host_offset: a }, MapKind::Data { host_offset: b }) => {
                    a.checked_add(len) == Some(b)
                }
                (a, b) => a == b,
            };
            if !cont {
                break;
            }
            len = len.saturating_add(self.grain_bytes).min(limit);
            next += 1;
        }
        Ok((len, first))
    }

    fn kind_of(&self, g: u64, in_grain: u64) -> Result<MapKind> {
        let e = self.entry(g)?;
        Ok(if e == 0 {
            MapKind::Unallocated { host_offset: None }
        } else if self.zeroed(e) {
            MapKind::Zero { host_offset: None }
        } else if self.compressed() {
            self.grain_host(e)?;
            MapKind::Compressed
        } else {
            MapKind::Data {
                host_offset: self.grain_host(e)? + in_grain,
            }
        })
    }

    /// Inflates the grain whose marker is at sector `e`.
    fn inflate(&self, e: u32) -> Result<Arc<Vec<u8>>> {
        if let Some((s, g)) = lock(&self.last_grain).as_ref() {
            if *s == u64::from(e) {
                return Ok(g.clone());
            }
        }
        let host = self.grain_host(e)?;
        let gb = usize::try_from(self.grain_bytes).map_err(|_| Error::corrupt("grain size"))?;
        let (data_off, data_len) = if self.h.flags & header::FLAG_MARKER != 0 {
            let mut m = [0u8; MARKER_HEAD];
            self.file.read_at(&mut m, host)?;
            let size = u32::from_le_bytes([m[8], m[9], m[10], m[11]]);
            (host + MARKER_HEAD as u64, u64::from(size))
        } else {
            (host, self.grain_bytes)
        };
        if data_len == 0 || data_len > 2 * self.grain_bytes {
            return Err(Error::corrupt_at(
                host,
                format!("compressed grain at 0x{host:x} has an invalid size {data_len}"),
            ));
        }
        let avail = self.file.size().saturating_sub(data_off).min(data_len);
        let mut comp = vec![0u8; avail as usize];
        self.file.read_at(&mut comp, data_off)?;
        let mut out = Vec::with_capacity(gb);
        // take() bounds the output: a deflate bomb stops at one grain.
        ZlibDecoder::new(&comp[..])
            .take(self.grain_bytes)
            .read_to_end(&mut out)
            .map_err(|_| {
                Error::corrupt_at(
                    host,
                    format!("compressed grain at 0x{host:x} does not inflate"),
                )
            })?;
        out.resize(gb, 0);
        let out = Arc::new(out);
        *lock(&self.last_grain) = Some((u64::from(e), out.clone()));
        Ok(out)
    }

    /// Reads `buf.len()` bytes at `off` inside the extent; `backing(buf, off)` fills
    /// unallocated ranges.
    pub fn read(
        &self,
        buf: &mut [u8],
        off: u64,
        _extent_len: u64,
        backing: impl Fn(&mut [u8], u64) -> Result<()>,
    ) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let g = pos / self.grain_bytes;
            let in_grain = pos % self.grain_bytes;
            let n = ((self.grain_bytes - in_grain) as usize).min(buf.len() - done);
            let b = &mut buf[done..done + n];
            let e = self.entry(g)?;
            if e == 0 {
                if let Some(p) = lock(&self.pending).get(&g) {
                    // A stream grain not yet written out reads as what was written.
                    b.copy_from_slice(&p.data[in_grain as usize..in_grain as usize + n]);
                } else {
                    backing(b, pos)?;
                }
            } else if self.zeroed(e) {
                b.fill(0);
            } else if self.compressed() {
                let grain = self.inflate(e)?;
                b.copy_from_slice(&grain[in_grain as usize..in_grain as usize + n]);
            } else {
                self.file.read_at(b, self.grain_host(e)? + in_grain)?;
            }
            done += n;
        }
        Ok(())
    }

    fn set_entry(&self, g: u64, value: u32) -> Result<()> {
        let i = usize::try_from(g / self.gtes()).map_err(|_| Error::corrupt("grain index"))?;
        let t = self.table(i)?.ok_or_else(|| {
            Error::unsupported("allocating a grain table is not supported (directory entry is 0)")
        })?;
        t[(g % self.gtes()) as usize].store(value, Ordering::Release);
        lock(&self.dirty).insert(i);
        Ok(())
    }

    /// Takes `sectors` sectors at the end of the file (grain-aligned for plain grains).
    fn allocate(&self, sectors: u64) -> Result<u64> {
        let mut next = lock(&self.next_sector);
        let s = *next;
        let end = s
            .checked_add(sectors)
            .filter(|&e| e < header::MAX_EXTENT_SECTORS)
            .ok_or_else(|| Error::unsupported("the extent file is full (2 TiB of sectors)"))?;
        *next = if self.compressed() {
            end
        } else {
            end.next_multiple_of(self.h.grain_size)
        };
        Ok(s)
    }

    /// Writes `buf` at `off` inside the extent of `extent_len` bytes; `backing` supplies
    /// the rest of a newly allocated grain.
    pub fn write(
        &self,
        buf: &[u8],
        off: u64,
        extent_len: u64,
        backing: impl Fn(&mut [u8], u64) -> Result<()>,
    ) -> Result<()> {
        if !self.writable {
            return Err(Error::unsupported("this VMDK extent cannot be written"));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let g = pos / self.grain_bytes;
            let in_grain = pos % self.grain_bytes;
            let n = ((self.grain_bytes - in_grain) as usize).min(buf.len() - done);
            let b = &buf[done..done + n];
            if self.compressed() {
                self.stream_write(g, in_grain, b, extent_len)?;
            } else {
                self.plain_write(g, in_grain, b, &backing)?;
            }
            done += n;
        }
        Ok(())
    }

    fn plain_write(
        &self,
        g: u64,
        in_grain: u64,
        b: &[u8],
        backing: &impl Fn(&mut [u8], u64) -> Result<()>,
    ) -> Result<()> {
        let e = self.entry(g)?;
        if e != 0 && !self.zeroed(e) {
            return self.file.write_at(b, self.grain_host(e)? + in_grain);
        }
        let alloc = lock(&self.alloc_lock);
        let e = self.entry(g)?;
        if e != 0 && !self.zeroed(e) {
            drop(alloc);
            return self.file.write_at(b, self.grain_host(e)? + in_grain);
        }
        let gb = self.grain_bytes as usize;
        let mut grain = vec![0u8; gb];
        if e == 0 {
            backing(&mut grain, g * self.grain_bytes)?;
        }
        grain[in_grain as usize..in_grain as usize + b.len()].copy_from_slice(b);
        let s = self.allocate(self.h.grain_size)?;
        let host = s * SECTOR;
        let end = host + self.grain_bytes;
        if end > self.file.size() {
            self.file.resize(end, Preallocation::Off)?;
        }
        self.file.write_at(&grain, host)?;
        let v = u32::try_from(s).map_err(|_| Error::unsupported("extent file is full"))?;
        self.set_entry(g, v)?;
        drop(alloc);
        Ok(())
    }

    fn stream_write(&self, g: u64, in_grain: u64, b: &[u8], extent_len: u64) -> Result<()> {
        let e = self.entry(g)?;
        if e != 0 && !self.zeroed(e) {
            return Err(Error::invalid(
                "Could not write to allocated cluster for streamOptimized",
            ));
        }
        let grain_start = g * self.grain_bytes;
        let want = (extent_len - grain_start).min(self.grain_bytes);
        let ready = {
            let mut p = lock(&self.pending);
            let slot = p.entry(g).or_insert_with(|| Pending {
                data: vec![0u8; want as usize],
                filled: 0,
            });
            slot.data[in_grain as usize..in_grain as usize + b.len()].copy_from_slice(b);
            slot.filled += b.len() as u64;
            if slot.filled >= want {
                p.remove(&g)
            } else if p.len() > MAX_PENDING_GRAINS {
                let oldest = *p.keys().min().unwrap_or(&g);
                let d = p.remove(&oldest);
                drop(p);
                if let Some(d) = d {
                    self.emit(oldest, &d.data)?;
                }
                None
            } else {
                None
            }
        };
        if let Some(d) = ready {
            self.emit(g, &d.data)?;
        }
        Ok(())
    }

    /// Deflates grain `g` and appends it behind a grain marker (all-zero grains stay
    /// unallocated).
    fn emit(&self, g: u64, data: &[u8]) -> Result<()> {
        if data.iter().all(|&x| x == 0) {
            return Ok(());
        }
        let mut enc = ZlibEncoder::new(Vec::with_capacity(data.len() / 2), Compression::default());
        enc.write_all(data)
            .map_err(|e| Error::io("deflate", None, e))?;
        let comp = enc.finish().map_err(|e| Error::io("deflate", None, e))?;
        let mut rec = Vec::with_capacity(MARKER_HEAD + comp.len() + SECTOR as usize);
        rec.extend_from_slice(&(g * self.h.grain_size).to_le_bytes());
        rec.extend_from_slice(&(comp.len() as u32).to_le_bytes());
        rec.extend_from_slice(&comp);
        rec.resize((rec.len() as u64).next_multiple_of(SECTOR) as usize, 0);
        let s = self.allocate(rec.len() as u64 / SECTOR)?;
        let host = s * SECTOR;
        let end = host + rec.len() as u64;
        {
            // Grow under the allocation lock so two writers never shrink each other's end.
            let _n = lock(&self.next_sector);
            if end > self.file.size() {
                self.file.resize(end, Preallocation::Off)?;
            }
        }
        self.file.write_at(&rec, host)?;
        let v = u32::try_from(s).map_err(|_| Error::unsupported("extent file is full"))?;
        self.set_entry(g, v)
    }

    /// Writes out stream grains still waiting for bytes (their missing bytes are zeros).
    pub fn flush_pending(&self, _extent_len: u64) -> Result<()> {
        let all: Vec<(u64, Pending)> = lock(&self.pending).drain().collect();
        let mut all = all;
        all.sort_by_key(|(g, _)| *g);
        for (g, p) in all {
            self.emit(g, &p.data)?;
        }
        Ok(())
    }

    /// Writes the changed grain tables back, to both directories' copies.
    pub fn write_tables(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        if self.compressed() {
            self.flush_pending(0)?;
        }
        let dirty: Vec<usize> = std::mem::take(&mut *lock(&self.dirty))
            .into_iter()
            .collect();
        for i in dirty {
            let Some(t) = self.gts[i].get() else { continue };
            let mut bytes = Vec::with_capacity(t.len() * 4);
            for e in t.iter() {
                bytes.extend_from_slice(&e.load(Ordering::Acquire).to_le_bytes());
            }
            self.file.write_at(&bytes, u64::from(self.gd[i]) * SECTOR)?;
            if let Some(r) = &self.rgd {
                if r[i] != 0 {
                    self.file.write_at(&bytes, u64::from(r[i]) * SECTOR)?;
                }
            }
        }
        Ok(())
    }
}

/// Lays out a new sparse extent of `size` bytes in `file` as qemu's `vmdk_init_extent`
/// does: header, 20 descriptor sectors, redundant GD and its tables, GD and its tables,
/// grains from the next 64 KiB boundary.
pub fn init_extent(file: &RawFile, size: u64, compress: bool, zeroed_grain: bool) -> Result<()> {
    let grain_size = 128u64;
    let gtes = 512u64;
    let capacity = size / SECTOR;
    let grains = capacity.div_ceil(grain_size);
    let gt_size = (gtes * 4).div_ceil(SECTOR);
    let gt_count = grains.div_ceil(gtes);
    let gd_sectors = (gt_count * 4).div_ceil(SECTOR);
    let rgd_offset = 21u64;
    let gd_offset = rgd_offset + gd_sectors + gt_size * gt_count;
    let overhead = (gd_offset + gd_sectors + gt_size * gt_count).next_multiple_of(grain_size);
    let h = SparseExtentHeader {
        version: if compress {
            3
        } else if zeroed_grain {
            2
        } else {
            1
        },
        flags: header::FLAG_RGD
            | header::FLAG_NL_DETECT
            | if compress {
                header::FLAG_COMPRESS | header::FLAG_MARKER
            } else {
                0
            }
            | if zeroed_grain {
                header::FLAG_ZERO_GRAIN
            } else {
                0
            },
        capacity,
        grain_size,
        descriptor_offset: 1,
        descriptor_size: 20,
        num_gtes_per_gt: gtes as u32,
        rgd_offset,
        gd_offset,
        overhead,
        unclean_shutdown: 0,
        check_bytes: [0xa, 0x20, 0xd, 0xa],
        compress_algorithm: if compress {
            header::COMPRESSION_DEFLATE
        } else {
            0
        },
    };
    if gd_offset + gd_sectors + gt_size * gt_count >= header::MAX_EXTENT_SECTORS {
        return Err(Error::invalid("the extent is too large for a sparse VMDK"));
    }
    file.resize(overhead * SECTOR, Preallocation::Off)?;
    file.write_at(&h.to_bytes(), 0)?;
    for (dir, first_gt) in [
        (rgd_offset, rgd_offset + gd_sectors),
        (gd_offset, gd_offset + gd_sectors),
    ] {
        let mut gd = Vec::with_capacity((gd_sectors * SECTOR) as usize);
        for i in 0..gt_count {
            gd.extend_from_slice(&((first_gt + i * gt_size) as u32).to_le_bytes());
        }
        gd.resize((gd_sectors * SECTOR) as usize, 0);
        file.write_at(&gd, dir * SECTOR)?;
    }
    Ok(())
}
