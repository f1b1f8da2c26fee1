//! QED images (qemu's "QEMU Enhanced Disk"): read, write, create, backing files.
//!
//! ```text
//!   cluster 0: [header 64 bytes][backing file name]
//!   L1 table (table_size clusters of u64 LE) --> L2 tables (same size) --> data clusters
//!   L2 entry: 0 = unallocated (backing file, else zeros), 1 = zero cluster, else the
//!   cluster's byte offset in the file
//! ```
//!
//! New clusters are appended at the end of the file (data first, then a new L2 table if one
//! is needed, then the L1 entry, as qemu orders them). Before the first allocating write
//! the header's `QED_F_NEED_CHECK` is set; a flush clears it again once everything it
//! covers is on disk, so a crash in between leaves an image qemu checks before use.
//!
//! ```no_run
//! use vdisk_block::BlockDevice;
//! let qed = vdisk_qed::Qed::open_path("disk.qed", true)?;
//! let mut mbr = [0u8; 512];
//! qed.read_at(&mut mbr, 0)?;
//! # Ok::<(), vdisk_block::Error>(())
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod header;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use vdisk_block::{
    BlockDevice, BlockDeviceExt, Error, Image, MapKind, Mapping, Preallocation, Resize, Result,
};
use vdisk_raw::RawFile;

pub use header::Header;
use header::{
    HEADER_LEN, QED_F_BACKING_FILE, QED_F_BACKING_FORMAT_NO_PROBE, QED_F_NEED_CHECK, QED_MAGIC,
};

/// The L2 entry of a cluster that reads as zeros (`qed_offset_is_zero_cluster`).
pub const QED_CLUSTER_ZERO: u64 = 1;
/// The most L1 bytes we hold in memory. An image needs 8 bytes per L2 table covering its
/// size; 64 MiB covers every image up to 2 PiB at the default geometry. A larger count comes
/// from a hostile header.
pub const MAX_L1_BYTES: u64 = 64 << 20;
/// L2 tables up to this size are read whole and cached; larger ones (big clusters times big
/// tables, up to 1 GiB each) are read one entry at a time.
pub const MAX_CACHED_TABLE: u64 = 4 << 20;
/// The cached L2 tables' total bytes before the cache is emptied.
pub const L2_CACHE_BYTES: usize = 32 << 20;
/// The most bytes of new clusters gathered into one write.
const MAX_BATCH: usize = 8 << 20;

/// qemu's probe: the magic at offset 0 of a full header.
pub fn probe(head: &[u8]) -> u32 {
    if Header::has_magic(head) {
        100
    } else {
        0
    }
}

/// Where one cluster's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cluster {
    /// Not in this image: the backing file, else zeros.
    Unallocated,
    /// Reads as zeros.
    Zero,
    /// At this offset in the file.
    Data(u64),
}

#[derive(Debug)]
struct State {
    l1: Vec<u64>,
    l2: HashMap<u64, Arc<Vec<u64>>>,
    l2_bytes: usize,
    /// The end of the last whole cluster of the file: where the next cluster goes.
    file_size: u64,
}

/// An open QED image.
pub struct Qed {
    file: Arc<RawFile>,
    header: Mutex<Header>,
    cluster_size: u64,
    /// Entries per table.
    nelems: u64,
    size: u64,
    backing_name: Option<String>,
    backing: Option<Arc<dyn Image>>,
    read_only: bool,
    /// Pass flushes to the host (off for a conversion's target, qemu's cache=unsafe).
    sync: bool,
    /// We set QED_F_NEED_CHECK and clear it at the next flush.
    need_check_ours: Mutex<bool>,
    alloc: Mutex<()>,
    state: RwLock<State>,
}

impl std::fmt::Debug for Qed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qed")
            .field("header", &self.header())
            .field("backing_name", &self.backing_name)
            .field("has_backing", &self.backing.is_some())
            .field("read_only", &self.read_only)
            .finish()
    }
}

fn lock_err() -> Error {
    Error::corrupt("a thread panicked while holding the QED metadata lock")
}

fn le64_vec(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

impl Qed {
    /// Opens the image at `path`.
    pub fn open_path(path: impl AsRef<Path>, read_only: bool) -> Result<Qed> {
        let path = path.as_ref();
        let file = RawFile::open(
            path,
            &vdisk_raw::OpenOptions {
                read_only,
                force_share: false,
            },
        )?;
        Qed::open(Arc::new(file), read_only).map_err(|e| e.with_path(path))
    }

    /// Opens the QED image in `file`, checking every header field before use.
    pub fn open(file: Arc<RawFile>, read_only: bool) -> Result<Qed> {
        let len = file.file_length()?;
        if len < HEADER_LEN as u64 {
            return Err(Error::corrupt("Image not in QED format"));
        }
        let mut hb = [0u8; HEADER_LEN];
        file.read_at(&mut hb, 0)?;
        let mut h = Header::parse(&hb);
        if h.magic != QED_MAGIC {
            return Err(Error::corrupt("Image not in QED format"));
        }
        // Round down to the last whole cluster, as qemu does (a valid cluster size first).
        let file_size = if header::cluster_size_valid(h.cluster_size) {
            len & !(u64::from(h.cluster_size) - 1)
        } else {
            0
        };
        h.validate(file_size)?;
        let cs = u64::from(h.cluster_size);
        let nelems = h.table_bytes() / 8;
        let backing_name = if h.features & QED_F_BACKING_FILE != 0 {
            // validate() bounds the size by MAX_BACKING_NAME and the header area.
            let mut b = vec![0u8; h.backing_filename_size as usize];
            let off = u64::from(h.backing_filename_offset);
            if off + b.len() as u64 > len {
                return Err(Error::corrupt(
                    "Failed to read backing filename (it lies past the end of the file)",
                ));
            }
            file.read_at(&mut b, off)?;
            let s = String::from_utf8(b)
                .map_err(|_| Error::unsupported("the QED backing file name is not valid UTF-8"))?;
            // qemu reads it as a C string.
            let s = s.split('\0').next().unwrap_or("").to_string();
            Some(s)
        } else {
            None
        };
        // Only the L1 entries that cover image_size are ever used.
        let per_l1 = nelems * cs;
        let n_l1 = h.image_size.div_ceil(per_l1).min(nelems);
        if n_l1 * 8 > MAX_L1_BYTES {
            return Err(Error::unsupported(format!(
                "a QED image needing {} bytes of L1 table (the limit is {MAX_L1_BYTES})",
                n_l1 * 8
            )));
        }
        let mut raw = vec![0u8; (n_l1 * 8) as usize];
        file.read_at(&mut raw, h.l1_table_offset)?;
        let l1 = le64_vec(&raw);
        if h.autoclear_features != 0 && !read_only {
            // qemu knows no autoclear bits and clears them all on a writable open.
            h.autoclear_features = 0;
            file.write_at(&h.to_bytes(), 0)?;
            file.flush()?;
        }
        Ok(Qed {
            file,
            header: Mutex::new(h),
            cluster_size: cs,
            nelems,
            size: h.image_size,
            backing_name,
            backing: None,
            read_only,
            sync: true,
            need_check_ours: Mutex::new(false),
            alloc: Mutex::new(()),
            state: RwLock::new(State {
                l1,
                l2: HashMap::new(),
                l2_bytes: 0,
                file_size,
            }),
        })
    }

    /// The header as it is now.
    pub fn header(&self) -> Header {
        self.header
            .lock()
            .map(|h| *h)
            .unwrap_or_else(|e| *e.into_inner())
    }

    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    /// The backing file name the header records.
    pub fn backing_file_name(&self) -> Option<&str> {
        self.backing_name.as_deref()
    }

    /// The backing file's format when the header fixes it (`QED_F_BACKING_FORMAT_NO_PROBE`:
    /// raw); `None` means probe.
    pub fn backing_format(&self) -> Option<&'static str> {
        let f = self.header().features;
        (self.backing_name.is_some() && f & QED_F_BACKING_FORMAT_NO_PROBE != 0).then_some("raw")
    }

    /// Whether the image needs a check (`QED_F_NEED_CHECK`: not closed cleanly).
    pub fn is_dirty(&self) -> bool {
        self.header().features & QED_F_NEED_CHECK != 0
    }

    /// Attaches the backing image the header names.
    pub fn set_backing(&mut self, backing: Arc<dyn Image>) {
        self.backing = Some(backing);
    }

    /// The host file.
    pub fn file(&self) -> &Arc<RawFile> {
        &self.file
    }

    /// Whether flushes reach the host (`fdatasync`); off is qemu's `cache=unsafe`, for a
    /// conversion's new target that is thrown away if the conversion fails.
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    /// Whether unallocated clusters read from a backing file (one is named, opened or not:
    /// zeros written there must be recorded).
    fn has_backing(&self) -> bool {
        self.backing.is_some() || self.backing_name.is_some()
    }

    fn table_bytes(&self) -> u64 {
        self.nelems * 8
    }

    /// The L2 table at `l2` (cached), or `None` when tables are too big to cache.
    fn l2_table(&self, l2: u64) -> Result<Option<Arc<Vec<u64>>>> {
        if self.table_bytes() > MAX_CACHED_TABLE {
            return Ok(None);
        }
        if let Some(t) = self.state.read().map_err(|_| lock_err())?.l2.get(&l2) {
            return Ok(Some(t.clone()));
        }
        // Loaded under the write lock: a writer updates a table's entries on disk and in
        // the cache under the same lock, so no stale copy can be cached after its update.
        let mut s = self.state.write().map_err(|_| lock_err())?;
        if let Some(t) = s.l2.get(&l2) {
            return Ok(Some(t.clone()));
        }
        // table_bytes <= MAX_CACHED_TABLE.
        let mut raw = vec![0u8; self.table_bytes() as usize];
        self.file.read_at(&mut raw, l2)?;
        let t = Arc::new(le64_vec(&raw));
        if s.l2_bytes + raw.len() > L2_CACHE_BYTES {
            s.l2.clear();
            s.l2_bytes = 0;
        }
        s.l2_bytes += raw.len();
        s.l2.insert(l2, t.clone());
        Ok(Some(t))
    }

    /// Where cluster `ci` lives, every offset checked as qemu's `qed_find_cluster` does.
    fn cluster(&self, ci: u64) -> Result<Cluster> {
        let (l1i, l2i) = (ci / self.nelems, ci % self.nelems);
        let (l2, file_size) = {
            let s = self.state.read().map_err(|_| lock_err())?;
            let l2 = usize::try_from(l1i)
                .ok()
                .and_then(|i| s.l1.get(i).copied())
                .unwrap_or(0);
            (l2, s.file_size)
        };
        if l2 == 0 {
            return Ok(Cluster::Unallocated);
        }
        let h = self.header();
        if !h.table_offset_valid(l2, file_size) {
            return Err(Error::corrupt_at(
                h.l1_table_offset + 8 * l1i,
                format!("L1 entry {l1i} points to an invalid L2 table offset {l2:#x}"),
            ));
        }
        let e = match self.l2_table(l2)? {
            // l2i < nelems = t.len().
            Some(t) => t[l2i as usize],
            None => {
                let mut b = [0u8; 8];
                self.file.read_at(&mut b, l2 + 8 * l2i)?;
                u64::from_le_bytes(b)
            }
        };
        match e {
            0 => Ok(Cluster::Unallocated),
            QED_CLUSTER_ZERO => Ok(Cluster::Zero),
            off if h.cluster_offset_valid(off, file_size) => Ok(Cluster::Data(off)),
            off => Err(Error::corrupt_at(
                l2 + 8 * l2i,
                format!(
                    "L2 entry for guest offset {:#x} points to an invalid cluster offset {off:#x}",
                    ci * self.cluster_size
                ),
            )),
        }
    }

    /// The run of like clusters from `pos` (at most `max` bytes, within one L2 table):
    /// its length and where `pos` lives.
    fn run(&self, pos: u64, max: u64) -> Result<(u64, Cluster)> {
        let cs = self.cluster_size;
        let ci = pos / cs;
        let in_c = pos % cs;
        let first = self.cluster(ci)?;
        let mut len = (cs - in_c).min(max);
        let mut next = ci + 1;
        while len < max && next % self.nelems != 0 {
            let c = self.cluster(next)?;
            let same = match (first, c) {
                (Cluster::Data(a), Cluster::Data(b)) => b == a + (next - ci) * cs,
                (a, b) => a == b,
            };
            if !same {
                break;
            }
            len = (len + cs).min(max);
            next += 1;
        }
        let at = match first {
            Cluster::Data(h) => Cluster::Data(h + in_c),
            c => c,
        };
        Ok((len, at))
    }

    fn read_backing(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.backing {
            None => {
                buf.fill(0);
                Ok(())
            }
            Some(b) => {
                let n = b.size().saturating_sub(offset).min(buf.len() as u64) as usize;
                if n > 0 {
                    b.read_at(&mut buf[..n], offset)?;
                }
                buf[n..].fill(0);
                Ok(())
            }
        }
    }

    /// Sets QED_F_NEED_CHECK before the first allocating write since the last flush.
    fn mark_need_check(&self) -> Result<()> {
        let mut ours = self.need_check_ours.lock().map_err(|_| lock_err())?;
        let mut h = self.header.lock().map_err(|_| lock_err())?;
        if h.features & QED_F_NEED_CHECK == 0 {
            h.features |= QED_F_NEED_CHECK;
            self.file.write_at(&h.to_bytes(), 0)?;
            if self.sync {
                self.file.flush()?;
            }
            *ours = true;
        }
        Ok(())
    }

    /// Appends the `n` clusters in `data` for guest clusters `first..first + n` and points
    /// the tables at them: data, then a new L2 table if needed, then the L1 entry.
    fn append_clusters(&self, first: u64, data: &[u8]) -> Result<()> {
        let cs = self.cluster_size;
        let n = data.len() as u64 / cs;
        if n == 0 {
            return Ok(());
        }
        self.mark_need_check()?;
        let host = self.state.read().map_err(|_| lock_err())?.file_size;
        if self.file.file_length()? < host + n * cs {
            self.file.resize(host + n * cs, Preallocation::Off)?;
        }
        self.file.write_at(data, host)?;
        self.state.write().map_err(|_| lock_err())?.file_size = host + n * cs;
        let mut i = 0;
        while i < n {
            let ci = first + i;
            let (l1i, l2i) = (ci / self.nelems, ci % self.nelems);
            let k = (self.nelems - l2i).min(n - i);
            let entries: Vec<u64> = (0..k).map(|j| host + (i + j) * cs).collect();
            self.set_l2_entries(l1i, l2i, &entries)?;
            i += k;
        }
        Ok(())
    }

    /// Writes `entries` into L2 table `l1i` from index `l2i`, allocating the table first.
    fn set_l2_entries(&self, l1i: u64, l2i: u64, entries: &[u64]) -> Result<()> {
        let mut raw = Vec::with_capacity(entries.len() * 8);
        for e in entries {
            raw.extend_from_slice(&e.to_le_bytes());
        }
        // l1i < l1.len(): guest offsets below image_size, which the L1 covers.
        let l2 = self.state.read().map_err(|_| lock_err())?.l1[l1i as usize];
        let cached = self.table_bytes() <= MAX_CACHED_TABLE;
        if l2 == 0 {
            // A new table at the end of the file, read as zeros but for these entries.
            let at = self.state.read().map_err(|_| lock_err())?.file_size;
            let end = at + self.table_bytes();
            if self.file.file_length()? < end {
                self.file.resize(end, Preallocation::Off)?;
            }
            self.file.write_at(&raw, at + 8 * l2i)?;
            let h = self.header();
            self.file
                .write_at(&at.to_le_bytes(), h.l1_table_offset + 8 * l1i)?;
            let mut s = self.state.write().map_err(|_| lock_err())?;
            s.file_size = end;
            s.l1[l1i as usize] = at;
            if cached {
                let mut t = vec![0u64; self.nelems as usize];
                t[l2i as usize..l2i as usize + entries.len()].copy_from_slice(entries);
                if s.l2_bytes + self.table_bytes() as usize > L2_CACHE_BYTES {
                    s.l2.clear();
                    s.l2_bytes = 0;
                }
                s.l2_bytes += self.table_bytes() as usize;
                s.l2.insert(at, Arc::new(t));
            }
        } else {
            let mut s = self.state.write().map_err(|_| lock_err())?;
            self.file.write_at(&raw, l2 + 8 * l2i)?;
            if let Some(t) = s.l2.get_mut(&l2) {
                let t = Arc::make_mut(t);
                t[l2i as usize..l2i as usize + entries.len()].copy_from_slice(entries);
            }
        }
        Ok(())
    }

    /// Clears the QED_F_NEED_CHECK we set, once the writes it covered are on disk.
    fn clear_need_check(&self) -> Result<()> {
        let mut ours = self.need_check_ours.lock().map_err(|_| lock_err())?;
        if !*ours {
            return Ok(());
        }
        let mut h = self.header.lock().map_err(|_| lock_err())?;
        h.features &= !QED_F_NEED_CHECK;
        self.file.write_at(&h.to_bytes(), 0)?;
        if self.sync {
            self.file.flush()?;
        }
        *ours = false;
        Ok(())
    }
}

impl Drop for Qed {
    fn drop(&mut self) {
        if !self.read_only {
            // A clean close, as qemu's: data on disk, then the flag cleared.
            let _ = self.flush();
        }
    }
}

impl BlockDevice for Qed {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = self.check_range(offset, buf.len() as u64)?;
        let mut pos = offset;
        while pos < end {
            let (n, c) = self.run(pos, end - pos)?;
            // pos - offset and n are bounded by buf.len().
            let b = &mut buf[(pos - offset) as usize..(pos - offset + n) as usize];
            match c {
                Cluster::Data(h) => self.file.read_at(b, h)?,
                Cluster::Zero => b.fill(0),
                Cluster::Unallocated => self.read_backing(b, pos)?,
            }
            pos += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::invalid("the image is open read-only"));
        }
        let end = self.check_range(offset, buf.len() as u64)?;
        let _g = self.alloc.lock().map_err(|_| lock_err())?;
        let cs = self.cluster_size;
        let mut batch: Vec<u8> = Vec::new();
        let mut batch_first = 0u64;
        let mut pos = offset;
        while pos < end {
            let ci = pos / cs;
            let in_c = pos % cs;
            let n = (cs - in_c).min(end - pos);
            let b = &buf[(pos - offset) as usize..(pos - offset + n) as usize];
            let c = self.cluster(ci)?;
            let pending = batch.len() as u64 / cs;
            match c {
                Cluster::Data(h) => {
                    self.append_clusters(batch_first, &batch)?;
                    batch.clear();
                    self.file.write_at(b, h + in_c)?;
                }
                Cluster::Zero | Cluster::Unallocated
                    if (c == Cluster::Zero || !self.has_backing()) && b.iter().all(|&x| x == 0) =>
                {
                    // Zeros where the image reads zeros change nothing.
                    self.append_clusters(batch_first, &batch)?;
                    batch.clear();
                }
                Cluster::Unallocated if n == cs && b.iter().all(|&x| x == 0) => {
                    // A whole cluster of zeros over a backing file: a zero cluster.
                    self.append_clusters(batch_first, &batch)?;
                    batch.clear();
                    self.mark_need_check()?;
                    self.set_l2_entries(ci / self.nelems, ci % self.nelems, &[QED_CLUSTER_ZERO])?;
                }
                _ => {
                    if pending > 0 && batch_first + pending != ci {
                        self.append_clusters(batch_first, &batch)?;
                        batch.clear();
                    }
                    if batch.is_empty() {
                        batch_first = ci;
                    }
                    let start = batch.len();
                    // cs <= 64 MiB.
                    batch.resize(start + cs as usize, 0);
                    if c == Cluster::Unallocated && n < cs {
                        // The rest of the cluster comes from the backing file.
                        self.read_backing(&mut batch[start..], ci * cs)?;
                    }
                    let at = start + in_c as usize;
                    batch[at..at + b.len()].copy_from_slice(b);
                    if batch.len() >= MAX_BATCH {
                        self.append_clusters(batch_first, &batch)?;
                        batch.clear();
                    }
                }
            }
            pos += n;
        }
        self.append_clusters(batch_first, &batch)
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        if self.sync {
            self.file.flush()?;
        }
        self.clear_need_check()
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }
}

impl Image for Qed {
    fn format_name(&self) -> &'static str {
        "qed"
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        if offset >= self.size {
            return Ok(Mapping {
                offset,
                len: 0,
                kind: MapKind::Eof,
            });
        }
        let max = (self.size - offset).min(max_len).max(1);
        let (len, c) = self.run(offset, max)?;
        let kind = match c {
            Cluster::Data(h) => MapKind::Data { host_offset: h },
            Cluster::Zero => MapKind::Zero { host_offset: None },
            Cluster::Unallocated => MapKind::Unallocated { host_offset: None },
        };
        Ok(Mapping { offset, len, kind })
    }

    fn backing(&self) -> Option<&Arc<dyn Image>> {
        self.backing.as_ref()
    }
}

/// A new image's parameters (qemu-img's `-o` options for qed).
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Virtual size in bytes (a multiple of 512).
    pub size: u64,
    /// Cluster size in bytes.
    pub cluster_size: u32,
    /// L1/L2 table size in clusters.
    pub table_size: u32,
    /// The backing file name to record.
    pub backing_file: Option<String>,
    /// The backing file is raw (`QED_F_BACKING_FORMAT_NO_PROBE`).
    pub backing_raw: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            cluster_size: header::QED_DEFAULT_CLUSTER_SIZE,
            table_size: header::QED_DEFAULT_TABLE_SIZE,
            backing_file: None,
            backing_raw: false,
        }
    }
}

/// Checks `o` as qemu's `bdrv_qed_co_create` does, with its messages.
pub fn check_create_options(o: &CreateOptions) -> Result<()> {
    if !header::cluster_size_valid(o.cluster_size) {
        return Err(Error::invalid(format!(
            "QED cluster size must be within range [{}, {}] and power of 2",
            header::QED_MIN_CLUSTER_SIZE,
            header::QED_MAX_CLUSTER_SIZE
        )));
    }
    if !header::table_size_valid(o.table_size) {
        return Err(Error::invalid(format!(
            "QED table size must be within range [{}, {}] and power of 2",
            header::QED_MIN_TABLE_SIZE,
            header::QED_MAX_TABLE_SIZE
        )));
    }
    let max = header::max_image_size(o.cluster_size, o.table_size);
    if o.size % 512 != 0 || o.size > max {
        return Err(Error::invalid(format!(
            "QED image size must be a non-zero multiple of cluster size and less than {max} bytes"
        )));
    }
    if let Some(b) = &o.backing_file {
        if HEADER_LEN as u64 + b.len() as u64 > u64::from(o.cluster_size) {
            return Err(Error::invalid(format!(
                "the backing file name ({} bytes) does not fit in the QED header cluster",
                b.len()
            )));
        }
    }
    Ok(())
}

/// Creates a QED image at `path` as qemu-img does (the file replaced), and returns it open
/// read-write.
pub fn create(path: &Path, o: &CreateOptions) -> Result<Qed> {
    check_create_options(o)?;
    let mut h = Header {
        magic: QED_MAGIC,
        cluster_size: o.cluster_size,
        table_size: o.table_size,
        header_size: 1,
        features: 0,
        compat_features: 0,
        autoclear_features: 0,
        l1_table_offset: u64::from(o.cluster_size),
        image_size: o.size,
        backing_filename_offset: 0,
        backing_filename_size: 0,
    };
    if let Some(b) = &o.backing_file {
        h.features |= QED_F_BACKING_FILE;
        h.backing_filename_offset = HEADER_LEN as u32;
        // Fits in a cluster (checked above).
        h.backing_filename_size = b.len() as u32;
        if o.backing_raw {
            h.features |= QED_F_BACKING_FORMAT_NO_PROBE;
        }
    }
    let f = RawFile::create(path, 0, Preallocation::Off)?;
    f.resize(h.l1_table_offset + h.table_bytes(), Preallocation::Off)?;
    f.write_at(&h.to_bytes(), 0)?;
    if let Some(b) = &o.backing_file {
        f.write_at(b.as_bytes(), HEADER_LEN as u64)?;
    }
    // The L1 table written as zeros, as qemu writes it (the file's length says what is
    // allocated).
    let zeros = vec![0u8; o.cluster_size as usize];
    for i in 0..u64::from(o.table_size) {
        f.write_at(&zeros, h.l1_table_offset + i * u64::from(o.cluster_size))?;
    }
    f.flush()?;
    drop(f);
    Qed::open_path(path, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(dir: &Path, o: &CreateOptions) -> std::path::PathBuf {
        let p = dir.join("d.qed");
        drop(create(&p, o).unwrap());
        p
    }

    #[test]
    fn roundtrip_across_tables() {
        let t = tempfile::tempdir().unwrap();
        let o = CreateOptions {
            size: 64 << 20,
            cluster_size: 4096,
            table_size: 2,
            ..Default::default()
        };
        let p = new(t.path(), &o);
        let q = Qed::open_path(&p, false).unwrap();
        // One L2 table covers 1024 * 4 KiB = 4 MiB: cross a table boundary.
        let data: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8 + 1).collect();
        q.write_at(&data, (3 << 20) + 100).unwrap();
        assert!(q.is_dirty());
        // On disk before the data: a crash from here on leaves an image qemu checks.
        assert_eq!(std::fs::read(&p).unwrap()[16] & 2, 2);
        q.flush().unwrap();
        assert!(!q.is_dirty());
        assert_eq!(std::fs::read(&p).unwrap()[16] & 2, 0);
        drop(q);
        let q = Qed::open_path(&p, true).unwrap();
        let mut b = vec![0u8; data.len() + 200];
        q.read_at(&mut b, 3 << 20).unwrap();
        assert!(b[..100].iter().all(|&x| x == 0));
        assert!(b[100..100 + data.len()] == data[..]);
        assert!(b[100 + data.len()..].iter().all(|&x| x == 0));
    }

    #[test]
    fn backing_copy_on_write_and_zero_clusters() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("ov.qed");
        let o = CreateOptions {
            size: 1 << 20,
            cluster_size: 4096,
            table_size: 2,
            backing_file: Some("base.raw".into()),
            backing_raw: true,
        };
        let mut q = create(&p, &o).unwrap();
        let base: Vec<u8> = (0..1 << 20).map(|i| (i % 241) as u8 | 1).collect();
        q.set_backing(Arc::new(vdisk_block::MemDevice::from_vec(base.clone())));
        // Part of a cluster: the rest comes from the base. A whole cluster of zeros: a
        // zero cluster, no data. Zeros inside a cluster: allocated, the rest from the base.
        q.write_at(&[0xee; 100], 4096 + 10).unwrap();
        q.write_at(&[0; 4096], 8192).unwrap();
        q.write_at(&[0; 512], 16384).unwrap();
        assert_eq!(
            q.map(8192, 4096).unwrap().kind,
            MapKind::Zero { host_offset: None }
        );
        assert_eq!(
            q.map(12288, 4096).unwrap().kind,
            MapKind::Unallocated { host_offset: None }
        );
        let mut want = base.clone();
        want[4106..4206].fill(0xee);
        want[8192..12288].fill(0);
        want[16384..16896].fill(0);
        let mut got = vec![0u8; 1 << 20];
        q.read_at(&mut got, 0).unwrap();
        assert!(got == want);
        // Two data clusters, an L2 table, the zero cluster in the table: nothing more.
        q.flush().unwrap();
        assert_eq!(
            q.file().file_length().unwrap(),
            3 * 4096 + 2 * 4096 + 2 * 4096
        );
    }

    #[test]
    fn concurrent_readers_see_every_write() {
        let t = tempfile::tempdir().unwrap();
        let o = CreateOptions {
            size: 8 << 20,
            cluster_size: 4096,
            table_size: 2,
            ..Default::default()
        };
        let p = new(t.path(), &o);
        let q = Arc::new(Qed::open_path(&p, false).unwrap());
        std::thread::scope(|s| {
            for w in 0..2u64 {
                let q = q.clone();
                s.spawn(move || {
                    for i in 0..512u64 {
                        let at = (i * 2 + w) * 4096;
                        q.write_at(&[(i % 200) as u8 + 1; 4096], at).unwrap();
                        let mut b = [0u8; 4096];
                        q.read_at(&mut b, at).unwrap();
                        assert_eq!(b[0], (i % 200) as u8 + 1, "write at {at} not seen");
                    }
                });
            }
            let q = q.clone();
            s.spawn(move || {
                let mut b = vec![0u8; 1 << 20];
                for i in 0..64u64 {
                    q.read_at(&mut b, (i % 4) << 20).unwrap();
                }
            });
        });
    }

    fn patched(f: impl Fn(&mut Vec<u8>)) -> String {
        let t = tempfile::tempdir().unwrap();
        let p = new(
            t.path(),
            &CreateOptions {
                size: 1 << 20,
                ..Default::default()
            },
        );
        let mut bytes = std::fs::read(&p).unwrap();
        f(&mut bytes);
        std::fs::write(&p, &bytes).unwrap();
        match Qed::open_path(&p, true) {
            Ok(q) => {
                let mut b = vec![0u8; 1 << 20];
                q.read_at(&mut b, 0)
                    .map(|_| String::new())
                    .unwrap_or_else(|e| e.to_string())
            }
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn hostile_headers() {
        let put32 = |at: usize, v: u32| {
            move |b: &mut Vec<u8>| b[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        let put64 = |at: usize, v: u64| {
            move |b: &mut Vec<u8>| b[at..at + 8].copy_from_slice(&v.to_le_bytes())
        };
        assert!(patched(|b| b[0] = b'X').contains("Image not in QED format"));
        assert!(patched(put64(16, 0x100)).contains("Unsupported QED features: 100"));
        assert!(patched(put32(4, 65537)).contains("QED cluster size is invalid"));
        assert!(patched(put32(4, 1 << 30)).contains("QED cluster size is invalid"));
        assert!(patched(put32(8, 0)).contains("QED table size is invalid"));
        assert!(patched(put32(8, 1 << 31)).contains("QED table size is invalid"));
        assert!(patched(put32(8, 1)).contains("QED table offset is invalid"));
        assert!(patched(put64(48, !511)).contains("QED image size is invalid"));
        assert!(patched(put64(40, 1 << 40)).contains("QED table offset is invalid"));
        assert!(patched(put32(12, u32::MAX)).contains("QED table offset is invalid"));
        assert!(patched(|b| {
            b[16] = 1;
            b[56..60].copy_from_slice(&64u32.to_le_bytes());
            b[60..64].copy_from_slice(&65536u32.to_le_bytes());
        })
        .contains("QED backing filename offset is invalid"));
        // An L1 entry past the end of the file, an L2 entry likewise.
        assert!(patched(put64(65536, 1 << 40)).contains("L1 entry 0 points to an invalid L2"));
        assert!(patched(|b| {
            b[65536..65544].copy_from_slice(&65536u64.to_le_bytes());
            b[65536 + 8..65536 + 16].copy_from_slice(&(7u64 << 40).to_le_bytes());
        })
        .contains("points to an invalid cluster offset 0x70000000000"));
        assert_eq!(patched(|_| {}), "");
    }
}
