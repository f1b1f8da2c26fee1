//! VMDK images: a text descriptor (in its own file or embedded in a sparse extent) listing
//! extents that together make the guest disk.
//!
//! ```text
//!   disk.vmdk (descriptor)          guest bytes
//!     RW 4194304 SPARSE "disk-s001.vmdk"  [0, 2 GiB)    header -> GD -> GT -> grain
//!     RW 2097152 FLAT   "disk-f002.vmdk"  [2 GiB, 3 GiB) bytes as they are
//!     RW 1024    ZERO                      reads as zeros
//! ```
//!
//! Subformats: monolithicSparse and streamOptimized (one sparse file, descriptor embedded;
//! stream-optimized grains are deflated behind grain markers), monolithicFlat,
//! twoGbMaxExtentSparse, twoGbMaxExtentFlat (a descriptor file plus extent files). Reads
//! go through `&self` from any number of threads. [`Vmdk::map`](vdisk_block::Image::map)
//! describes each range (data at an offset in an extent file, compressed, zeroed grain,
//! unallocated: ask the parent named by `parentFileNameHint`).
//!
//! Extent files are opened only next to the descriptor: a name that is absolute or climbs
//! out with `..` is refused unless the caller lists it in
//! [`OpenOptions::allowed_extent_files`], so a hostile descriptor cannot make us read
//! `/etc/passwd` into a guest.
//!
//! ```no_run
//! use vdisk_block::BlockDevice;
//! let vmdk = vdisk_vmdk::Vmdk::open_path("app.vmdk", &vdisk_vmdk::OpenOptions::default())?;
//! let mut mbr = [0u8; 512];
//! vmdk.read_at(&mut mbr, 0)?;
//! # Ok::<(), vdisk_block::Error>(())
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod descriptor;
pub mod header;
mod sparse;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use vdisk_block::{
    BlockDevice, BlockDeviceExt, Error, Image, MapKind, Mapping, Preallocation, Resize, Result,
};
use vdisk_raw::RawFile;

use descriptor::{Descriptor, ExtentLine, ExtentType};
use header::SparseExtentHeader;
pub use sparse::Sparse;

/// Size of a sector, the unit of every VMDK offset.
pub const SECTOR: u64 = 512;
/// qemu's split size for twoGbMaxExtent subformats.
pub const SPLIT_SIZE: u64 = 0x8000_0000;
/// The largest guest size we accept (qemu's VMDK limit is 2 TiB per sparse extent; a
/// descriptor can list many: 64 TiB is the most any VMware product makes).
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// How to open a VMDK image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Open for reading only.
    pub read_only: bool,
    /// Share the files with writers in other processes (qemu's `-U`).
    pub force_share: bool,
    /// Extent files the caller names explicitly, which may lie outside the descriptor's
    /// directory (compared as written in the descriptor and as resolved).
    pub allowed_extent_files: Vec<PathBuf>,
}

/// What an extent holds.
#[derive(Debug)]
pub enum ExtentData {
    /// Guest bytes at `start` (bytes) in `file`.
    Flat {
        /// The extent file.
        file: Arc<RawFile>,
        /// Byte offset of the extent in the file.
        start: u64,
    },
    /// Reads as zeros.
    Zero,
    /// A hosted sparse extent.
    Sparse(Box<Sparse>),
}

/// One extent of the guest disk.
#[derive(Debug)]
pub struct Extent {
    /// First guest byte.
    pub guest_start: u64,
    /// Length in bytes.
    pub len: u64,
    /// The extent type as the descriptor names it ("" for the extent of a monolithic
    /// sparse file, which has no extent line qemu reads).
    pub type_name: String,
    /// The extent file's path as opened.
    pub file_name: Option<PathBuf>,
    /// Whether the extent is stored in the image file itself (not a separate file).
    pub in_image_file: bool,
    /// Its contents.
    pub data: ExtentData,
}

impl Extent {
    /// The host file holding the extent, if any.
    pub fn file(&self) -> Option<&Arc<RawFile>> {
        match &self.data {
            ExtentData::Flat { file, .. } => Some(file),
            ExtentData::Sparse(s) => Some(s.file()),
            ExtentData::Zero => None,
        }
    }
}

/// An open VMDK image.
pub struct Vmdk {
    extents: Vec<Extent>,
    size: u64,
    descriptor: Descriptor,
    create_type: String,
    read_only: bool,
    backing: Option<Arc<dyn Image>>,
}

impl std::fmt::Debug for Vmdk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmdk")
            .field("create_type", &self.create_type)
            .field("size", &self.size)
            .field("extents", &self.extents)
            .field("has_backing", &self.backing.is_some())
            .finish()
    }
}

/// Where a descriptor's extent name leads, or why it may not be opened.
pub fn resolve_extent(descriptor: &Path, name: &str, allowed: &[PathBuf]) -> Result<PathBuf> {
    let p = Path::new(name);
    // qemu names an extent next to a descriptor given without a directory as written.
    let joined = match descriptor.parent() {
        Some(d) if !d.as_os_str().is_empty() && !p.is_absolute() => d.join(p),
        _ => p.to_path_buf(),
    };
    if allowed
        .iter()
        .any(|a| a.as_path() == p || a.as_path() == joined)
    {
        return Ok(joined);
    }
    let inside = !p.is_absolute() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !inside {
        return Err(Error::invalid(format!(
            "refusing the extent file '{name}': it lies outside the descriptor's directory \
             (name it explicitly to allow it)"
        )));
    }
    Ok(joined)
}

fn raw_opts(o: &OpenOptions) -> vdisk_raw::OpenOptions {
    vdisk_raw::OpenOptions {
        read_only: o.read_only,
        force_share: o.force_share,
    }
}

/// Reads `len` bytes at `offset` of `file`, clipped to the file.
fn read_clipped(file: &RawFile, offset: u64, len: u64) -> Result<Vec<u8>> {
    let end = offset.saturating_add(len).min(file.size());
    let n = end.saturating_sub(offset);
    let n = usize::try_from(n).map_err(|_| Error::invalid("read too large"))?;
    let mut buf = vec![0u8; n];
    if n > 0 {
        file.read_at(&mut buf, offset)?;
    }
    Ok(buf)
}

/// qemu's probe: the sparse magic, or descriptor text starting with `version=N`.
pub fn probe(head: &[u8]) -> u32 {
    if head.starts_with(header::MAGIC)
        || head.starts_with(header::VMDK3_MAGIC)
        || descriptor::looks_like_descriptor(head)
    {
        100
    } else {
        0
    }
}

impl Vmdk {
    /// Opens the image at `path`.
    pub fn open_path(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Vmdk> {
        let path = path.as_ref();
        let file = Arc::new(RawFile::open(path, &raw_opts(opts))?);
        Vmdk::open(path, file, opts)
    }

    /// Opens the image whose first file (descriptor or monolithic sparse file) is `file`,
    /// named `path` (extent names resolve next to it).
    pub fn open(path: &Path, file: Arc<RawFile>, opts: &OpenOptions) -> Result<Vmdk> {
        if file.size() < 4 {
            return Err(Error::corrupt("File is too small, not a valid image"));
        }
        let head = read_clipped(&file, 0, 512)?;
        if head.starts_with(header::MAGIC) || head.starts_with(header::VMDK3_MAGIC) {
            let h = SparseExtentHeader::parse(&head)?;
            if h.capacity == 0 && h.descriptor_offset != 0 {
                // A sparse file whose header only points at a descriptor (ESX style).
                let off = h
                    .descriptor_offset
                    .checked_mul(SECTOR)
                    .ok_or_else(|| Error::corrupt("descriptor offset out of range"))?;
                let text = read_clipped(&file, off, descriptor::MAX_DESCRIPTOR_SIZE as u64)?;
                return Vmdk::from_descriptor_text(path, &text, opts);
            }
            let sparse = Sparse::open(file.clone(), !opts.read_only)?;
            let h = *sparse.header();
            let text = if h.descriptor_offset != 0 && h.descriptor_size != 0 {
                let off = h.descriptor_offset.saturating_mul(SECTOR);
                let len = h
                    .descriptor_size
                    .saturating_mul(SECTOR)
                    .min(descriptor::MAX_DESCRIPTOR_SIZE as u64);
                read_clipped(&file, off, len)?
            } else {
                Vec::new()
            };
            // The descriptor is a C string: it ends at the first NUL, whatever follows.
            let text = String::from_utf8_lossy(until_nul(&text));
            let text = text.as_ref();
            let descriptor = if text.is_empty() {
                Descriptor {
                    version: 1,
                    cid: 0,
                    parent_cid: u32::MAX,
                    create_type: "monolithicSparse".into(),
                    ..Default::default()
                }
            } else {
                descriptor::parse(text)?
            };
            let create_type = if sparse.compressed() {
                "streamOptimized"
            } else {
                "monolithicSparse"
            };
            let len = sparse.len();
            if len > MAX_VIRTUAL_SIZE {
                return Err(Error::unsupported(format!(
                    "virtual size {len} is larger than {MAX_VIRTUAL_SIZE}"
                )));
            }
            return Ok(Vmdk {
                extents: vec![Extent {
                    guest_start: 0,
                    len,
                    type_name: String::new(),
                    file_name: Some(path.to_path_buf()),
                    in_image_file: true,
                    data: ExtentData::Sparse(Box::new(sparse)),
                }],
                size: len,
                descriptor,
                create_type: create_type.into(),
                read_only: opts.read_only,
                backing: None,
            });
        }
        if file.size() > descriptor::MAX_DESCRIPTOR_SIZE as u64 {
            return Err(Error::corrupt(
                "not a VMDK sparse file, and too large for a descriptor",
            ));
        }
        let text = read_clipped(&file, 0, file.size())?;
        Vmdk::from_descriptor_text(path, &text, opts)
    }

    fn from_descriptor_text(path: &Path, text: &[u8], opts: &OpenOptions) -> Result<Vmdk> {
        let text = std::str::from_utf8(until_nul(text))
            .map_err(|_| Error::corrupt("invalid VMDK image descriptor (not text)"))?;
        let d = descriptor::parse(text)?;
        match d.create_type.as_str() {
            "monolithicFlat"
            | "vmfs"
            | "twoGbMaxExtentSparse"
            | "twoGbMaxExtentFlat"
            | "vmfsSparse"
            | "monolithicSparse"
            | "streamOptimized" => {}
            other => {
                return Err(Error::unsupported(format!(
                    "Unsupported image type '{other}'"
                )))
            }
        }
        if d.extents.is_empty() {
            return Err(Error::corrupt("the descriptor lists no extents"));
        }
        let mut extents = Vec::with_capacity(d.extents.len());
        let mut pos: u64 = 0;
        for line in &d.extents {
            let ext = open_extent(path, line, pos, opts)?;
            pos = pos
                .checked_add(ext.len)
                .filter(|&p| p <= MAX_VIRTUAL_SIZE)
                .ok_or_else(|| {
                    Error::unsupported(format!(
                        "the extents add up to more than {MAX_VIRTUAL_SIZE} bytes"
                    ))
                })?;
            extents.push(ext);
        }
        Ok(Vmdk {
            extents,
            size: pos,
            create_type: d.create_type.clone(),
            descriptor: d,
            read_only: opts.read_only,
            backing: None,
        })
    }

    /// The extents in guest order.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// The parsed descriptor.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// The subformat as qemu reports it (`create-type`).
    pub fn create_type(&self) -> &str {
        &self.create_type
    }

    /// The parent (backing) file the descriptor names.
    pub fn parent_file_name(&self) -> Option<&str> {
        self.descriptor.parent_file_name_hint.as_deref()
    }

    /// Attaches the parent image that unallocated grains read from.
    pub fn set_backing(&mut self, backing: Arc<dyn Image>) {
        self.backing = Some(backing);
    }

    /// The grain size of the first extent, when it is sparse and all extents agree (qemu's
    /// `cluster-size`).
    pub fn cluster_size(&self) -> Option<u64> {
        let first = self.extents.first()?;
        let grain = |e: &Extent| match &e.data {
            ExtentData::Sparse(s) => Some((s.grain_bytes(), s.compressed())),
            _ => None,
        };
        let g = grain(first)?;
        self.extents
            .iter()
            .all(|e| grain(e) == Some(g))
            .then_some(g.0)
    }

    fn extent_at(&self, offset: u64) -> Option<&Extent> {
        let i = self
            .extents
            .partition_point(|e| e.guest_start.saturating_add(e.len) <= offset);
        self.extents.get(i).filter(|e| offset >= e.guest_start)
    }

    fn read_backing(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.backing {
            None => {
                buf.fill(0);
                Ok(())
            }
            Some(b) => {
                let bsize = b.size();
                let n = bsize.saturating_sub(offset).min(buf.len() as u64);
                // n <= buf.len()
                let n = n as usize;
                if n > 0 {
                    b.read_at(&mut buf[..n], offset)?;
                }
                buf[n..].fill(0);
                Ok(())
            }
        }
    }

    /// Writes back what is held in memory: pending stream grains, grain tables.
    pub fn finish(&self) -> Result<()> {
        for e in &self.extents {
            if let ExtentData::Sparse(s) = &e.data {
                s.flush_pending(e.len)?;
                s.write_tables()?;
            }
        }
        Ok(())
    }
}

fn open_extent(path: &Path, line: &ExtentLine, pos: u64, opts: &OpenOptions) -> Result<Extent> {
    let len = line
        .sectors
        .checked_mul(SECTOR)
        .ok_or_else(|| Error::corrupt("extent size out of range"))?;
    let (data, file_name, len) = match line.kind {
        ExtentType::Zero => (ExtentData::Zero, None, len),
        ExtentType::Flat | ExtentType::Vmfs | ExtentType::Sparse => {
            let name = line.file.as_deref().unwrap_or_default();
            let p = resolve_extent(path, name, &opts.allowed_extent_files)?;
            let read_only = opts.read_only || line.access != "RW";
            let ro = vdisk_raw::OpenOptions {
                read_only,
                force_share: opts.force_share,
            };
            let file = Arc::new(RawFile::open(&p, &ro).map_err(|e| e.with_path(&p))?);
            if line.kind == ExtentType::Sparse {
                let s = Sparse::open(file, !read_only).map_err(|e| e.with_path(&p))?;
                // qemu sizes a sparse extent by its header's capacity.
                let l = s.len();
                (ExtentData::Sparse(Box::new(s)), Some(p), l)
            } else {
                let start = line
                    .offset
                    .checked_mul(SECTOR)
                    .ok_or_else(|| Error::corrupt("flat extent offset out of range"))?;
                (ExtentData::Flat { file, start }, Some(p), len)
            }
        }
    };
    Ok(Extent {
        guest_start: pos,
        len,
        type_name: line.kind.as_str().to_string(),
        file_name,
        in_image_file: false,
        data,
    })
}

impl BlockDevice for Vmdk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = self.check_range(offset, buf.len() as u64)?;
        let mut pos = offset;
        while pos < end {
            let e = self
                .extent_at(pos)
                .ok_or_else(|| Error::corrupt(format!("no extent holds offset {pos}")))?;
            let in_ext = pos - e.guest_start;
            let n = (e.len - in_ext).min(end - pos);
            // pos - offset and n are bounded by buf.len()
            let b = &mut buf[(pos - offset) as usize..(pos - offset + n) as usize];
            match &e.data {
                ExtentData::Zero => b.fill(0),
                ExtentData::Flat { file, start } => {
                    let host = start.saturating_add(in_ext);
                    let avail = file.size().saturating_sub(host).min(n) as usize;
                    if avail > 0 {
                        file.read_at(&mut b[..avail], host)?;
                    }
                    b[avail..].fill(0);
                }
                ExtentData::Sparse(s) => s.read(b, in_ext, e.len, |buf, rel| {
                    self.read_backing(buf, e.guest_start + rel)
                })?,
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
        let mut pos = offset;
        while pos < end {
            let e = self
                .extent_at(pos)
                .ok_or_else(|| Error::corrupt(format!("no extent holds offset {pos}")))?;
            let in_ext = pos - e.guest_start;
            let n = (e.len - in_ext).min(end - pos);
            let b = &buf[(pos - offset) as usize..(pos - offset + n) as usize];
            match &e.data {
                ExtentData::Zero => {
                    return Err(Error::unsupported("writing to a ZERO extent"));
                }
                ExtentData::Flat { file, start } => {
                    let host = start.saturating_add(in_ext);
                    let need = host.saturating_add(n);
                    if need > file.size() {
                        file.resize(need, Preallocation::Off)?;
                    }
                    file.write_at(b, host)?;
                }
                ExtentData::Sparse(s) => s.write(b, in_ext, e.len, |buf, rel| {
                    self.read_backing(buf, e.guest_start + rel)
                })?,
            }
            pos += n;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        for e in &self.extents {
            match &e.data {
                ExtentData::Sparse(s) => {
                    s.write_tables()?;
                    s.file().flush()?;
                }
                ExtentData::Flat { file, .. } => file.flush()?,
                ExtentData::Zero => {}
            }
        }
        Ok(())
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }
}

impl Image for Vmdk {
    fn format_name(&self) -> &'static str {
        "vmdk"
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let Some(e) = self.extent_at(offset) else {
            return Ok(Mapping {
                offset,
                len: 0,
                kind: MapKind::Eof,
            });
        };
        let in_ext = offset - e.guest_start;
        let limit = (e.len - in_ext).min(max_len);
        let (len, kind) = match &e.data {
            ExtentData::Zero => (limit, MapKind::Zero { host_offset: None }),
            ExtentData::Flat { start, .. } => (
                limit,
                MapKind::Data {
                    host_offset: start.saturating_add(in_ext),
                },
            ),
            ExtentData::Sparse(s) => s.map(in_ext, limit)?,
        };
        Ok(Mapping {
            offset,
            len: len.max(1).min(limit),
            kind,
        })
    }

    fn backing(&self) -> Option<&Arc<dyn Image>> {
        self.backing.as_ref()
    }
}

/// The subformats qemu-img creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subformat {
    /// One sparse file with the descriptor embedded (qemu's default).
    #[default]
    MonolithicSparse,
    /// A descriptor file and one flat file.
    MonolithicFlat,
    /// A descriptor file and sparse files of at most 2 GiB.
    TwoGbMaxExtentSparse,
    /// A descriptor file and flat files of at most 2 GiB.
    TwoGbMaxExtentFlat,
    /// One sparse file of deflated grains, for streaming (ESXi imports).
    StreamOptimized,
}

impl Subformat {
    /// The name in `subformat=` and `createType=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::MonolithicFlat => "monolithicFlat",
            Subformat::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            Subformat::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            Subformat::StreamOptimized => "streamOptimized",
        }
    }

    /// Parses qemu's names.
    pub fn parse(s: &str) -> Result<Subformat> {
        Ok(match s {
            "monolithicSparse" => Subformat::MonolithicSparse,
            "monolithicFlat" => Subformat::MonolithicFlat,
            "twoGbMaxExtentSparse" => Subformat::TwoGbMaxExtentSparse,
            "twoGbMaxExtentFlat" => Subformat::TwoGbMaxExtentFlat,
            "streamOptimized" => Subformat::StreamOptimized,
            _ => return Err(Error::invalid(format!("Invalid parameter '{s}'"))),
        })
    }

    fn flat(self) -> bool {
        matches!(
            self,
            Subformat::MonolithicFlat | Subformat::TwoGbMaxExtentFlat
        )
    }

    fn split(self) -> bool {
        matches!(
            self,
            Subformat::TwoGbMaxExtentSparse | Subformat::TwoGbMaxExtentFlat
        )
    }
}

/// The adapter types qemu-img accepts.
pub const ADAPTER_TYPES: &[&str] = &["ide", "buslogic", "lsilogic", "legacyESX"];

/// A new image's parameters (qemu-img's `-o` options for vmdk).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Virtual size in bytes (a multiple of 512).
    pub size: u64,
    /// The layout.
    pub subformat: Subformat,
    /// `ddb.adapterType` (default `ide`).
    pub adapter_type: Option<String>,
    /// `ddb.virtualHWVersion` (default 4; 6 with `compat6`).
    pub hwversion: Option<String>,
    /// `ddb.toolsVersion` (default 2147483647).
    pub toolsversion: Option<String>,
    /// VMDK version 6.
    pub compat6: bool,
    /// Enable zeroed-grain grain table entries.
    pub zeroed_grain: bool,
    /// The parent to record (`parentFileNameHint`).
    pub backing_file: Option<String>,
    /// The parent's CID (ffffffff without a parent).
    pub parent_cid: Option<u32>,
}

fn random_u32() -> u32 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    // Truncation keeps 32 well-mixed bits.
    h.finish() as u32
}

/// The file names of a new image's extents: qemu's `prefix-s001.vmdk`, `prefix-flat.vmdk`.
fn extent_name(path: &Path, idx: usize, sub: Subformat) -> PathBuf {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (prefix, postfix) = match file.rfind('.') {
        Some(i) => (file[..i].to_string(), file[i..].to_string()),
        None => (file.clone(), String::new()),
    };
    let name = if sub.split() {
        format!(
            "{prefix}-{}{idx:03}{postfix}",
            if sub.flat() { 'f' } else { 's' }
        )
    } else {
        format!("{prefix}-flat{postfix}")
    };
    path.with_file_name(name)
}

/// Creates a VMDK image at `path` as qemu-img does, and returns it open read-write.
pub fn create(path: &Path, o: &CreateOptions) -> Result<Vmdk> {
    if o.size % SECTOR != 0 {
        return Err(Error::invalid("Image size must be a multiple of 512 bytes"));
    }
    if o.size > MAX_VIRTUAL_SIZE {
        return Err(Error::invalid(format!(
            "virtual size {} is larger than {MAX_VIRTUAL_SIZE}",
            o.size
        )));
    }
    let hw = match (o.compat6, &o.hwversion) {
        (true, Some(_)) => {
            return Err(Error::invalid(
                "compat6 cannot be enabled with hwversion set",
            ))
        }
        (true, None) => "6".to_string(),
        (false, Some(h)) => h.clone(),
        (false, None) => "4".to_string(),
    };
    let adapter = o.adapter_type.clone().unwrap_or_else(|| "ide".into());
    if !ADAPTER_TYPES.contains(&adapter.as_str()) {
        return Err(Error::invalid(format!("Invalid parameter '{adapter}'")));
    }
    let sub = o.subformat;
    if sub.flat() && o.backing_file.is_some() {
        return Err(Error::unsupported("Flat image can't have backing file"));
    }
    if sub.flat() && o.zeroed_grain {
        return Err(Error::unsupported("Flat image can't enable zeroed grain"));
    }
    let heads: u64 = if adapter == "ide" { 16 } else { 255 };
    let compress = sub == Subformat::StreamOptimized;
    let mut lines = Vec::new();
    let raw = |p: &Path| RawFile::create(p, 0, Preallocation::Off).map_err(|e| e.with_path(p));
    let basename = |p: &Path| {
        p.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let desc_file = raw(path)?;
    if !sub.flat() && !sub.split() {
        sparse::init_extent(&desc_file, o.size, compress, o.zeroed_grain)?;
        lines.push(ExtentLine {
            access: "RW".into(),
            sectors: o.size / SECTOR,
            kind: ExtentType::Sparse,
            file: Some(basename(path)),
            offset: 0,
        });
    } else {
        let step = if sub.split() { SPLIT_SIZE } else { o.size };
        let mut done = 0;
        let mut idx = 1;
        while done < o.size {
            let cur = (o.size - done).min(step);
            let p = extent_name(path, idx, sub);
            let f = raw(&p)?;
            if sub.flat() {
                f.resize(cur, Preallocation::Off)?;
            } else {
                sparse::init_extent(&f, cur, false, o.zeroed_grain)?;
            }
            lines.push(ExtentLine {
                access: "RW".into(),
                sectors: cur.div_ceil(SECTOR),
                kind: if sub.flat() {
                    ExtentType::Flat
                } else {
                    ExtentType::Sparse
                },
                file: Some(basename(&p)),
                offset: 0,
            });
            done += cur;
            idx += 1;
        }
    }
    let d = Descriptor {
        version: 1,
        cid: random_u32(),
        parent_cid: o.parent_cid.unwrap_or(u32::MAX),
        create_type: sub.as_str().into(),
        parent_file_name_hint: o.backing_file.clone(),
        extents: lines,
        ddb: vec![
            ("ddb.virtualHWVersion".into(), hw),
            (
                "ddb.geometry.cylinders".into(),
                (o.size / (63 * heads * SECTOR)).to_string(),
            ),
            ("ddb.geometry.heads".into(), heads.to_string()),
            ("ddb.geometry.sectors".into(), "63".into()),
            ("ddb.adapterType".into(), adapter),
            (
                "ddb.toolsVersion".into(),
                o.toolsversion
                    .clone()
                    .unwrap_or_else(|| "2147483647".into()),
            ),
        ],
    };
    let text = descriptor::render(&d);
    if !sub.flat() && !sub.split() {
        if text.len() as u64 > 20 * SECTOR {
            return Err(Error::invalid(
                "the descriptor is larger than its 20 sectors",
            ));
        }
        desc_file.write_at(text.as_bytes(), SECTOR)?;
    } else {
        // qemu's descriptor files are the text padded with zeros to a whole sector.
        let mut bytes = text.into_bytes();
        bytes.resize((bytes.len() as u64).next_multiple_of(SECTOR) as usize, 0);
        desc_file.resize(bytes.len() as u64, Preallocation::Off)?;
        desc_file.write_at(&bytes, 0)?;
    }
    desc_file.flush()?;
    drop(desc_file);
    Vmdk::open_path(path, &OpenOptions::default())
}

/// Reads the CID of the VMDK image at `path` (for a new child's `parentCID`).
pub fn read_cid(path: &Path) -> Result<u32> {
    let v = Vmdk::open_path(
        path,
        &OpenOptions {
            read_only: true,
            force_share: true,
            allowed_extent_files: Vec::new(),
        },
    )?;
    Ok(v.descriptor.cid)
}

impl Drop for Vmdk {
    /// A writable image writes back what it holds (stream grains, grain tables) when it is
    /// closed; errors here cannot be reported, which is why writers call `flush` first.
    fn drop(&mut self) {
        if !self.read_only {
            let _ = self.finish();
        }
    }
}

/// The bytes before the first NUL: qemu reads a descriptor as a C string, so whatever follows
/// its terminator in the descriptor area is not part of it.
fn until_nul(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |n| &b[..n])
}
