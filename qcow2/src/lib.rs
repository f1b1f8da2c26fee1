//! The qcow2 image format (docs/interop/qcow2.rst in QEMU), read side: versions 2 and 3,
//! extended L2 entries, zero clusters, zlib and zstd compressed clusters, external data files,
//! backing images and internal snapshots.
//!
//! A guest offset is found in two table lookups:
//!
//! ```text
//!  image file
//!  +---------------------+
//!  | header              |  l1_table_offset, l1_size, cluster_bits, ...
//!  | header extensions   |  backing format, feature names, bitmaps, data file name
//!  +---------------------+
//!            |
//!            v   guest offset / (cluster_size * l2_entries)
//!  +---------------------+
//!  | L1 table            |  one 64-bit entry per L2 table (0 = unallocated)
//!  +---------------------+
//!            |
//!            v   (guest offset / cluster_size) % l2_entries
//!  +---------------------+
//!  | L2 table (1 cluster)|  64-bit entries (128-bit with extended L2: + subcluster bitmaps)
//!  +---------------------+
//!       |         |          \___________________  zero flag / unallocated: no data read
//!       v         v                              \
//!  +---------+ +-----------------------+     backing image (or zeros)
//!  | cluster | | compressed bytes      |
//!  | (data)  | | (sector granular,     |
//!  +---------+ |  inflated to 1 cluster)|
//!   in the     +-----------------------+
//!   data file
//! ```
//!
//! [`Qcow2`] answers [`Image::map`] from the tables and builds [`BlockDevice::read_at`] on the
//! same lookup: reads of data clusters go straight to the file, outside any lock, so many
//! threads can read one open image. L2 tables are kept in a small shared LRU cache.
//!
//! Images are hostile input: every table is checked to be aligned and inside the file, sizes
//! are bounded by named `MAX_*` limits, compressed clusters inflate to exactly one cluster, and
//! unknown incompatible features and encryption are refused. As in qemu, data clusters (and the
//! last sector of a compressed cluster) that reach past the end of their file read as zeros:
//! preallocated images legitimately point there.
//!
//! Errors carry the offset in the image file but no path; the caller that opened the file adds
//! it with [`Error::with_path`].
//!
//! ```
//! use std::sync::Arc;
//! use vdisk_block::{BlockDevice, Image, MapKind, MemDevice};
//! use vdisk_qcow2::Qcow2;
//!
//! // A tiny version 3 image with 512-byte clusters: header, L1 table, L2 table, one data
//! // cluster holding "hello" at guest offset 0.
//! let mut img = vec![0u8; 4 * 512];
//! img[0..4].copy_from_slice(b"QFI\xfb");
//! img[4..8].copy_from_slice(&3u32.to_be_bytes()); // version
//! img[20..24].copy_from_slice(&9u32.to_be_bytes()); // cluster_bits
//! img[24..32].copy_from_slice(&1024u64.to_be_bytes()); // size
//! img[36..40].copy_from_slice(&1u32.to_be_bytes()); // l1_size
//! img[40..48].copy_from_slice(&512u64.to_be_bytes()); // l1_table_offset
//! img[96..100].copy_from_slice(&4u32.to_be_bytes()); // refcount_order
//! img[100..104].copy_from_slice(&104u32.to_be_bytes()); // header_length
//! img[512..520].copy_from_slice(&(1024u64 | (1 << 63)).to_be_bytes()); // L1[0] -> L2
//! img[1024..1032].copy_from_slice(&(1536u64 | (1 << 63)).to_be_bytes()); // L2[0] -> data
//! img[1536..1541].copy_from_slice(b"hello");
//!
//! let q = Qcow2::open(Arc::new(MemDevice::from_vec(img))).unwrap();
//! let mut buf = [0u8; 5];
//! q.read_at(&mut buf, 0).unwrap();
//! assert_eq!(&buf, b"hello");
//! assert_eq!(q.map(0, 1024).unwrap().kind, MapKind::Data { host_offset: 1536 });
//! assert_eq!(q.map(512, 512).unwrap().kind, MapKind::Unallocated { host_offset: None });
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod alloc;
pub mod amend;
pub mod bitmap;
pub mod check;
mod compressed;
mod create;
pub mod extension;
pub mod header;
mod info;
mod l2;
mod refcount;
mod resize;
pub mod snapshot;
mod snapshot_write;
mod util;
mod write;

use std::fmt;
use std::sync::Arc;

use crossbeam_utils::sync::ShardedLock;

use vdisk_block::{BlockDevice, BlockDeviceExt, Error, Image, MapKind, Mapping, Result};

pub use alloc::ImageFile;
pub use amend::AmendOptions;
pub use bitmap::Bitmap;
pub use create::CreateOptions;
pub use extension::{Extensions, FeatureName, FeatureType};
pub use header::{CompressionType, Header};
pub use info::{BitmapInfo, Qcow2Info};
pub use snapshot::Snapshot;
pub use snapshot_write::SnapshotInfo;

use header::{autoclear, compatible, incompatible, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS};
use l2::{decode_table, Geometry, Run, L1E_OFFSET_MASK};
use util::{read_vec, read_zero_padded};
use vdisk_block::cache::Lru;

/// Memory the L2 cache may hold per open image.
pub const L2_CACHE_BYTES: u64 = 8 << 20;
/// The L2 cache holds at least this many tables (2 MiB clusters), so sequential reads that
/// cross a table boundary do not thrash.
const MIN_L2_CACHE_TABLES: u64 = 4;
/// And at most this many (512-byte clusters), to keep eviction cheap.
const MAX_L2_CACHE_TABLES: u64 = 4096;
/// Decompressed clusters kept, so that small sequential reads do not inflate a cluster again
/// for every request.
const COMPRESSED_CACHE_CLUSTERS: usize = 4;

/// Which L1 table reads go through: the active one, or a snapshot's.
#[derive(Debug)]
struct View {
    /// The L1 table; writers change entries under the metadata lock.
    l1: ShardedLock<Vec<u64>>,
    l1_table_offset: u64,
    /// The guest-visible size.
    size: u64,
    /// The snapshot loaded with [`Qcow2::load_snapshot`], if any.
    snapshot: Option<usize>,
}

/// An open qcow2 image, read-only.
///
/// `Send + Sync`: one open image serves reads from many threads.
pub struct Qcow2 {
    file: Arc<dyn BlockDevice>,
    header: Header,
    extensions: Extensions,
    backing_file_name: Option<String>,
    bitmaps: Vec<Bitmap>,
    snapshots: Vec<Snapshot>,
    geom: Geometry,
    view: View,
    l2_cache: Lru<[u64]>,
    compressed_cache: Lru<[u8]>,
    backing: Option<Arc<dyn Image>>,
    data_file: Option<Arc<dyn BlockDevice>>,
    /// The write side; `None` for a read-only image.
    rw: Option<Box<alloc::Rw>>,
}

impl fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2")
            .field("header", &self.header)
            .field("backing_file_name", &self.backing_file_name)
            .field("extensions", &self.extensions)
            .field("snapshots", &self.snapshots.len())
            .field("view_size", &self.view.size)
            .field("snapshot", &self.view.snapshot)
            .field("has_backing", &self.backing.is_some())
            .field("has_data_file", &self.data_file.is_some())
            .finish_non_exhaustive()
    }
}

impl Qcow2 {
    /// Parses and validates the header, extensions, L1 table location and snapshot table of the
    /// image in `file`. Does not open backing or data files.
    pub fn open(file: Arc<dyn BlockDevice>) -> Result<Qcow2> {
        Qcow2::open_with(file, false)
    }

    /// As [`Qcow2::open`], for `check`: an active or snapshot L1 table lying (partly) past the
    /// end of the file is accepted and its missing part reads as zeros, as qemu opens such an
    /// image, so the check can count what is wrong with it (and `-r all` repair the rest)
    /// instead of refusing it.
    pub fn open_for_check(file: Arc<dyn BlockDevice>) -> Result<Qcow2> {
        Qcow2::open_with(file, true)
    }

    pub(crate) fn open_with(file: Arc<dyn BlockDevice>, tables_past_eof: bool) -> Result<Qcow2> {
        let file_size = file.size();
        // The header is read in two steps: enough to learn the cluster size, then the first
        // cluster, which holds the extensions and the backing file name.
        let head_len = file_size.min(112);
        let head = read_vec(&*file, 0, head_len, "qcow2 header")?;
        let cluster_bits = util::be32(&head, 20);
        let first = if head.starts_with(&header::MAGIC)
            && (MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits)
        {
            read_vec(&*file, 0, file_size.min(1 << cluster_bits), "qcow2 header")?
        } else {
            head
        };
        let header = Header::parse_with(&first, file_size, tables_past_eof)?;
        if header.incompatible_features & !incompatible::KNOWN != 0 {
            // Name the features from the table if it can be read at all.
            let names = Extensions::parse(&first, &header)
                .map(|e| e.incompatible_names())
                .unwrap_or_default();
            header.check_incompatible_features(&names)?;
        }
        let extensions = Extensions::parse(&first, &header)?;

        let backing_file_name = if header.backing_file_offset != 0 && header.backing_file_size > 0 {
            // Header::parse checked that the name lies inside `first`.
            let start = header.backing_file_offset as usize;
            let end = start + header.backing_file_size as usize;
            let bytes = first.get(start..end).ok_or_else(|| {
                Error::corrupt_at(8, "the backing file name lies beyond the end of the file")
            })?;
            Some(util::utf8_name(
                bytes,
                header.backing_file_offset,
                "backing file name",
            )?)
        } else {
            None
        };

        let bitmaps = match &extensions.bitmaps {
            // "If the bitmaps extension is present but this bit is unset, the bitmaps extension
            // data must be considered inconsistent." qemu then ignores the bitmaps.
            Some(b) if header.autoclear_features & autoclear::BITMAPS != 0 => {
                bitmap::read_directory(&*file, b)?
            }
            _ => Vec::new(),
        };

        let snapshots = snapshot::read_table(&*file, &header, tables_past_eof)?;

        let l1_len = u64::from(header.l1_size) * 8;
        let l1 = if header.l1_size == 0 {
            Vec::new()
        } else if tables_past_eof {
            // Header::parse bounded the size; what lies past the end reads as zeros.
            let mut buf = vec![0u8; l1_len as usize];
            let avail = file_size.saturating_sub(header.l1_table_offset).min(l1_len) as usize;
            if avail > 0 {
                file.read_at(&mut buf[..avail], header.l1_table_offset)?;
            }
            decode_table(&buf)
        } else {
            decode_table(&read_vec(
                &*file,
                header.l1_table_offset,
                l1_len,
                "L1 table",
            )?)
        };

        let geom = Geometry::new(&header);
        let tables = (L2_CACHE_BYTES / header.cluster_size())
            .clamp(MIN_L2_CACHE_TABLES, MAX_L2_CACHE_TABLES) as usize;
        let view = View {
            l1: ShardedLock::new(l1),
            l1_table_offset: header.l1_table_offset,
            size: header.size,
            snapshot: None,
        };
        Ok(Qcow2 {
            file,
            header,
            extensions,
            backing_file_name,
            bitmaps,
            snapshots,
            geom,
            view,
            l2_cache: Lru::new(tables),
            compressed_cache: Lru::new(COMPRESSED_CACHE_CLUSTERS),
            backing: None,
            data_file: None,
            rw: None,
        })
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The parsed header extensions.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// The backing file name as stored in the image (not resolved against any directory).
    pub fn backing_file_name(&self) -> Option<&str> {
        self.backing_file_name.as_deref()
    }

    /// The backing file format, from the backing format header extension.
    pub fn backing_format(&self) -> Option<&str> {
        self.extensions.backing_format.as_deref()
    }

    /// The external data file name, from its header extension.
    pub fn data_file_name(&self) -> Option<&str> {
        self.extensions.data_file.as_deref()
    }

    /// Whether guest data lives in an external data file (incompatible feature bit 2); reads of
    /// data clusters fail until [`set_data_file`](Qcow2::set_data_file) attaches it.
    pub fn needs_data_file(&self) -> bool {
        self.header.has_data_file()
    }

    /// Whether the external data file is a raw image of the guest disk (autoclear bit 1).
    pub fn data_file_raw(&self) -> bool {
        self.needs_data_file() && self.header.autoclear_features & autoclear::DATA_FILE_RAW != 0
    }

    /// Attaches the backing image, opened by the caller (which resolves names, probes formats,
    /// limits depth and detects cycles). Unallocated ranges read from it; bytes past its end
    /// read as zeros.
    pub fn set_backing(&mut self, backing: Arc<dyn Image>) {
        self.backing = Some(backing);
    }

    /// Attaches the external data file.
    pub fn set_data_file(&mut self, file: Arc<dyn BlockDevice>) {
        self.data_file = Some(file);
    }

    /// The internal snapshots, in table order.
    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    /// The persistent bitmaps listed in the bitmap directory.
    pub fn bitmaps(&self) -> &[Bitmap] {
        &self.bitmaps
    }

    /// Counts the host clusters `0..end_cluster` whose refcount is not zero. qemu compares
    /// this with the file's real allocation to decide whether an image was preallocated with
    /// metadata only (and then asks the host file whether data clusters are holes).
    pub fn referenced_clusters(&self, end_cluster: u64) -> Result<u64> {
        refcount::count_referenced(&*self.file, &self.header, end_cluster)
    }

    /// The snapshot loaded with [`load_snapshot`](Qcow2::load_snapshot), if any.
    pub fn loaded_snapshot(&self) -> Option<&Snapshot> {
        self.view.snapshot.and_then(|i| self.snapshots.get(i))
    }

    /// Switches this open image to read the content as of an internal snapshot: by
    /// "snapshot.id=ID", "snapshot.name=NAME" (or both, comma-separated), or a bare string
    /// matched against the IDs first, then the names, as `qemu-img convert -l`/`-s` accept.
    ///
    /// The image keeps its current size, as qemu's temporary snapshot load does: a snapshot
    /// of a smaller disk reads as zeros past its end, one of a larger disk is cut. It stays
    /// read-only.
    pub fn load_snapshot(&mut self, id_or_name: &str) -> Result<()> {
        let sn = snapshot::find(&self.snapshots, id_or_name)?;
        let index = self
            .snapshots
            .iter()
            .position(|s| std::ptr::eq(s, sn))
            .unwrap_or_default();
        let l1 = if sn.l1_size > 0 {
            decode_table(&read_vec(
                &*self.file,
                sn.l1_table_offset,
                u64::from(sn.l1_size) * 8,
                "snapshot L1 table",
            )?)
        } else {
            Vec::new()
        };
        if self.rw.is_some() {
            return Err(Error::unsupported(
                "cannot load a snapshot into an image open read-write",
            ));
        }
        self.view = View {
            l1: ShardedLock::new(l1),
            l1_table_offset: sn.l1_table_offset,
            size: self.view.size,
            snapshot: Some(index),
        };
        self.l2_cache.clear();
        self.compressed_cache.clear();
        Ok(())
    }

    /// What `qemu-img info` prints in its format-specific section.
    pub fn info(&self) -> Qcow2Info {
        let h = &self.header;
        let v3 = h.version >= 3;
        Qcow2Info {
            compat: if v3 { "1.1" } else { "0.10" },
            compression_type: h.compression_type,
            lazy_refcounts: v3.then_some(h.compatible_features & compatible::LAZY_REFCOUNTS != 0),
            refcount_bits: h.refcount_bits(),
            corrupt: v3.then_some(h.incompatible_features & incompatible::CORRUPT != 0),
            extended_l2: v3.then_some(h.extended_l2()),
            data_file: self.extensions.data_file.clone(),
            data_file_raw: self.needs_data_file().then_some(self.data_file_raw()),
            bitmaps: self
                .bitmaps
                .iter()
                .map(|b| BitmapInfo {
                    name: b.name.clone(),
                    granularity: b.granularity(),
                    flags: b.flag_names(),
                })
                .collect(),
            cluster_size: h.cluster_size(),
            dirty: h.incompatible_features & incompatible::DIRTY != 0,
        }
    }

    /// The L2 table at `l2_offset`, from the cache or the file.
    fn l2_table(&self, l2_offset: u64) -> Result<Arc<[u64]>> {
        if let Some(t) = self.l2_cache.get(l2_offset) {
            return Ok(t);
        }
        // A writer may have changed and written back this table while we read it: then the
        // copy is not cached (see cache.rs).
        let epoch = self.l2_cache.epoch();
        let bytes = read_vec(&*self.file, l2_offset, self.geom.cluster_size(), "L2 table")?;
        let table: Arc<[u64]> = decode_table(&bytes).into();
        Ok(self.l2_cache.insert_if_absent(l2_offset, table, epoch))
    }

    /// Describes the guest bytes from `pos`: one run of at most `max_len` bytes sharing a
    /// [`Run`], never crossing an L2 table. `None` at or past the end.
    fn lookup(&self, pos: u64, max_len: u64) -> Result<Option<(u64, Run)>> {
        let size = self.view.size;
        if pos >= size {
            return Ok(None);
        }
        let g = &self.geom;
        let cluster_size = g.cluster_size();
        let max_len = max_len.min(size - pos);
        let cluster = pos >> g.cluster_bits;
        let l2_entries_mask = (1u64 << g.l2_bits) - 1;
        let l1_index = cluster >> g.l2_bits;
        // End of the guest range this L1 entry covers; may be 2^64, hence u128.
        let span_end = (u128::from(l1_index) + 1) << (g.cluster_bits + g.l2_bits);
        let limit = u64::try_from(span_end - u128::from(pos))
            .unwrap_or(u64::MAX)
            .min(max_len);

        let l1 = self.view.l1.read().unwrap_or_else(|e| e.into_inner());
        let l1_entry = usize::try_from(l1_index)
            .ok()
            .and_then(|i| l1.get(i).copied())
            .unwrap_or(0);
        let l2_offset = l1_entry & L1E_OFFSET_MASK;
        if l2_offset == 0 {
            // Extend over the following empty L1 entries too, so that a sparse image with small
            // clusters maps in a few extents rather than one per L2 table.
            let span = 1u64 << (g.cluster_bits + g.l2_bits);
            let mut len = limit;
            let mut next = l1_index.saturating_add(1);
            while len < max_len {
                let entry = usize::try_from(next).ok().and_then(|i| l1.get(i).copied());
                match entry {
                    Some(e) if e & L1E_OFFSET_MASK == 0 => {
                        len = len.saturating_add(span).min(max_len);
                        next += 1;
                    }
                    Some(_) => break,
                    // Past the table: nothing more is allocated.
                    None => {
                        len = max_len;
                        break;
                    }
                }
            }
            return Ok(Some((len, Run::Unallocated { host: None })));
        }
        if l2_offset & (cluster_size - 1) != 0 {
            return Err(Error::corrupt_at(
                self.view.l1_table_offset.saturating_add(l1_index * 8),
                format!("L2 table offset {l2_offset:#x} is not cluster aligned"),
            ));
        }
        drop(l1);
        let run = |table: &[u64]| -> Result<(u64, Run)> {
            // Both fit in usize: the index is below the table's entry count.
            let mut index = (cluster & l2_entries_mask) as usize;
            let in_cluster = pos & (cluster_size - 1);
            let (first, end) = g.classify(table, index, in_cluster, l2_offset)?;
            let mut len = (end - in_cluster).min(limit);
            let mut next_in_cluster = end;
            if matches!(first, Run::Compressed(_)) {
                return Ok((len, first));
            }
            while len < limit {
                if next_in_cluster >= cluster_size {
                    index += 1;
                    next_in_cluster = 0;
                }
                let (next, end) = g.classify(table, index, next_in_cluster, l2_offset)?;
                if !first.continued_by(len, &next) {
                    break;
                }
                len = len.saturating_add(end - next_in_cluster).min(limit);
                next_in_cluster = end;
            }
            Ok((len, first))
        };
        // A hit classifies in place, without touching the table's reference count: random
        // reads from many threads then share every cache line they read.
        if let Some(hit) = self.l2_cache.with(l2_offset, |t| run(t)) {
            return hit.map(Some);
        }
        let table = self.l2_table(l2_offset)?;
        run(&table).map(Some)
    }

    /// The device holding guest clusters.
    fn data_device(&self) -> Result<&dyn BlockDevice> {
        if self.needs_data_file() {
            self.data_file.as_deref().ok_or_else(|| {
                Error::invalid(match self.data_file_name() {
                    Some(n) => format!("the image's external data file '{n}' is not attached"),
                    None => "the image needs an external data file and none is attached".into(),
                })
            })
        } else {
            Ok(&*self.file)
        }
    }

    /// One compressed cluster, decompressed.
    fn compressed_cluster(&self, d: l2::CompressedDescriptor) -> Result<Arc<[u8]>> {
        if let Some(c) = self.compressed_cache.get(d.offset) {
            return Ok(c);
        }
        let file_size = self.file.size();
        if d.offset >= file_size {
            return Err(Error::corrupt_at(
                d.offset,
                "compressed cluster lies beyond the end of the file",
            ));
        }
        // The last sector may reach past the end of the file; qemu reads zeros there.
        let avail = (file_size - d.offset).min(d.size);
        let input = read_vec(&*self.file, d.offset, avail, "compressed cluster")?;
        let mut out = vec![0u8; self.geom.cluster_size() as usize];
        compressed::decompress(self.header.compression_type, &input, &mut out)
            .map_err(|bad| Error::corrupt_at(d.offset, bad.message()))?;
        let out: Arc<[u8]> = out.into();
        self.compressed_cache.insert(d.offset, Arc::clone(&out));
        Ok(out)
    }

    /// Fills `buf` with unallocated guest bytes at `pos`: the backing image's, zeros past it.
    fn read_unallocated(&self, buf: &mut [u8], pos: u64) -> Result<()> {
        let Some(backing) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let avail = backing.size().saturating_sub(pos);
        let n = usize::try_from(avail).unwrap_or(usize::MAX).min(buf.len());
        let (head, tail) = buf.split_at_mut(n);
        if !head.is_empty() {
            backing.read_at(head, pos)?;
        }
        tail.fill(0);
        Ok(())
    }
}

impl BlockDevice for Qcow2 {
    fn size(&self) -> u64 {
        self.view.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let want = (buf.len() - done) as u64;
            let Some((len, run)) = self.lookup(pos, want)? else {
                return Err(Error::invalid("read past the end of the image"));
            };
            // len <= want, which came from a usize.
            let len = len as usize;
            let chunk = &mut buf[done..done + len];
            match run {
                Run::Data { host } => read_zero_padded(self.data_device()?, chunk, host)?,
                Run::Zero { .. } => chunk.fill(0),
                Run::Unallocated { .. } => self.read_unallocated(chunk, pos)?,
                Run::Compressed(d) => {
                    let cluster = self.compressed_cluster(d)?;
                    let start = (pos & (self.geom.cluster_size() - 1)) as usize;
                    chunk.copy_from_slice(&cluster[start..start + len]);
                }
            }
            done += len;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let r = self.write_impl(buf, offset);
        self.write_through_point()?;
        r
    }

    fn flush(&self) -> Result<()> {
        if self.rw.is_none() {
            return Ok(());
        }
        let mut m = self.lock_meta()?;
        self.flush_meta(&mut m)
    }

    fn is_read_only(&self) -> bool {
        self.rw.is_none()
    }
}

impl Image for Qcow2 {
    fn format_name(&self) -> &'static str {
        "qcow2"
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let Some((len, run)) = self.lookup(offset, max_len)? else {
            return Ok(Mapping {
                offset,
                len: 0,
                kind: MapKind::Eof,
            });
        };
        let kind = match run {
            Run::Data { host } => MapKind::Data { host_offset: host },
            Run::Zero { host } => MapKind::Zero { host_offset: host },
            Run::Unallocated { host } => MapKind::Unallocated { host_offset: host },
            Run::Compressed(_) => MapKind::Compressed,
        };
        Ok(Mapping { offset, len, kind })
    }

    fn backing(&self) -> Option<&Arc<dyn Image>> {
        self.backing.as_ref()
    }

    fn as_write_zeroes(&self) -> Option<&(dyn vdisk_block::WriteZeroes + Send + Sync)> {
        Some(self)
    }
    fn as_discard(&self) -> Option<&(dyn vdisk_block::Discard + Send + Sync)> {
        Some(self)
    }
}

#[cfg(test)]
mod tests;
