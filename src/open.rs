//! Opening an image by name: the format policy, probing, and the backing chain.
//!
//! ```text
//!   open("test.qcow2")
//!     RawFile (protocol: the host file, locked)
//!       -> format: given by the caller, else probed (qcow2 magic -> qcow2, else raw)
//!       -> Qcow2 over the file
//!            -> backing "template.raw" (resolved against test.qcow2's directory,
//!               format from the image's backing-format extension) -> open(...) again
//! ```
//!
//! The rules that keep hostile images from reaching files nobody named:
//! - a format the caller gives is never second-guessed;
//! - a probe is reported ([`OpenedImage::probed`]) so the caller can warn;
//! - [`OpenOptions::backing`] can refuse every file the caller did not name;
//! - chains are at most [`MAX_BACKING_DEPTH`] deep and may not loop.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use vdisk_block::{BlockDevice, Error, Image, Result};
use vdisk_qcow2::Qcow2;
use vdisk_raw::RawFile;

use crate::protocol::{self, Protocol};
use crate::registry::{self, FormatImage};

/// The longest backing chain we follow. Real chains (snapshots stacked by libvirt, build
/// layers) are a handful deep; a longer chain is far more likely a hostile image trying to
/// exhaust descriptors or stack.
pub const MAX_BACKING_DEPTH: usize = 64;

/// The image formats vdisk reads. Each has an entry in the [format registry](crate::registry),
/// which gives its name, its probe and, for formats outside raw and qcow2, how it is opened
/// and created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// A plain file or block device holding the guest's bytes.
    Raw,
    /// QEMU copy-on-write version 2 (and 3).
    Qcow2,
    /// VMware's virtual disk: descriptor plus flat, sparse, zero and stream extents.
    Vmdk,
    /// Virtual PC / Hyper-V's VHD (qemu's `vpc`): fixed, dynamic and differencing disks.
    Vpc,
    /// VirtualBox's VDI: dynamic and static disks.
    Vdi,
    /// Hyper-V's VHDX: fixed, dynamic and differencing disks.
    Vhdx,
    /// QEMU Enhanced Disk: two-level tables, backing files.
    Qed,
}

impl Format {
    /// The name qemu-img uses.
    pub fn name(self) -> &'static str {
        registry::entry(self).name
    }

    /// Guesses the format from the first bytes of a file (at most
    /// [`registry::PROBE_BUF_SIZE`]): the registered format whose probe is surest, else raw.
    pub fn probe(head: &[u8]) -> Format {
        let n = head.len().min(registry::PROBE_BUF_SIZE);
        registry::probe(&head[..n], Path::new(""))
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Format> {
        registry::by_name(s)
            .map(|e| e.format)
            .ok_or_else(|| Error::invalid(format!("Unknown driver '{s}'")))
    }
}

/// Which files besides the one named may be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackingPolicy {
    /// Follow backing files and external data files the image names (qemu's behaviour).
    #[default]
    Follow,
    /// Open the image alone: reads of unallocated ranges return zeros, as
    /// `qemu-img info` and `-u` operations see it. External data files are still required.
    Ignore,
    /// Refuse to open any file the caller did not name: an image with a backing file or an
    /// external data file fails to open.
    Refuse,
}

/// How to open an image.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The format; `None` probes.
    pub format: Option<Format>,
    /// Open for reading only.
    pub read_only: bool,
    /// Share the image with writers in other processes (qemu's `-U`); requires `read_only`.
    pub force_share: bool,
    /// What to do with files the image names.
    pub backing: BackingPolicy,
    /// Read the content as of this internal snapshot (id or name); implies `read_only`.
    pub snapshot: Option<String>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            format: None,
            read_only: true,
            force_share: false,
            backing: BackingPolicy::Follow,
            snapshot: None,
        }
    }
}

/// The format-specific object behind an [`OpenedImage`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Driver {
    /// A raw image: the protocol node itself (a host file or an NBD export).
    Raw(Arc<Protocol>),
    /// A qcow2 image over the protocol file.
    Qcow2(Arc<Qcow2>),
    /// An image of another registered format, opened through the registry.
    Other(Arc<dyn FormatImage>),
}

impl Driver {
    /// The driver's image (guest bytes, backing chain included), without path context.
    pub fn image(&self) -> Arc<dyn Image> {
        match self {
            Driver::Raw(r) => r.clone(),
            Driver::Qcow2(q) => q.clone(),
            Driver::Other(o) => o.clone().into_image(),
        }
    }

    /// The backing file name the image records, if any.
    pub fn backing_file_name(&self) -> Option<&str> {
        match self {
            Driver::Raw(_) => None,
            Driver::Qcow2(q) => q.backing_file_name(),
            Driver::Other(o) => o.backing_file_name(),
        }
    }
}

/// An open image with what the caller may want to report about it.
#[derive(Debug, Clone)]
pub struct OpenedImage {
    /// The name as given; for a backing file, the name recorded in the overlay resolved
    /// against the overlay's directory (what qemu reports).
    pub filename: PathBuf,
    /// The format in use.
    pub format: Format,
    /// True when the format was guessed rather than given or recorded.
    pub probed: bool,
    /// What holds the image (qemu's "file" child node): a host file or an NBD export.
    pub file: Arc<Protocol>,
    /// The format driver.
    pub driver: Driver,
    /// The opened backing image, when there is one and the policy followed it.
    pub backing: Option<Box<OpenedImage>>,
    /// The external data file, for a qcow2 image that has one.
    pub data_file: Option<Arc<Protocol>>,
    /// Whether qemu would treat this image as preallocated with metadata only; computed on
    /// first use (see [`OpenedImage::metadata_preallocated`]).
    metadata_prealloc: OnceLock<bool>,
}

impl OpenedImage {
    /// The image as a device of guest bytes, backing chain included. Its errors name this
    /// image's file (a layer below names its own).
    pub fn image(&self) -> Arc<dyn Image> {
        Arc::new(Named {
            inner: self.driver_image(),
            path: self.filename.clone(),
        })
    }

    fn driver_image(&self) -> Arc<dyn Image> {
        self.driver.image()
    }

    /// The file guest data offsets refer to: the external data file, else the image file.
    pub fn data_file(&self) -> &Arc<Protocol> {
        self.data_file.as_ref().unwrap_or(&self.file)
    }

    /// qemu's metadata-preallocation test (`qcow2_detect_metadata_preallocation`): a qcow2
    /// image whose refcounts claim clearly more clusters than the file really occupies. For
    /// such an image without a backing file, qemu asks the host file whether each data
    /// cluster is a hole, and reports holes as zero. Errors count as "no", as in qemu.
    pub fn metadata_preallocated(&self) -> bool {
        *self.metadata_prealloc.get_or_init(|| {
            let Driver::Qcow2(q) = &self.driver else {
                return false;
            };
            let cluster_size = q.header().cluster_size();
            let (Ok(Some(allocated)), file_length) = (self.file.allocated_size(), self.file.size())
            else {
                return false;
            };
            let end_cluster = file_length.div_ceil(cluster_size);
            let Ok(referenced) = q.referenced_clusters(end_cluster) else {
                return false;
            };
            if referenced == 0 {
                return false;
            }
            let real = allocated / cluster_size;
            referenced > (real * 10 / 9).max(real + 2)
        })
    }

    /// The images from this one down to the base.
    pub fn chain(&self) -> impl Iterator<Item = &OpenedImage> {
        std::iter::successors(Some(self), |i| i.backing.as_deref())
    }
}

/// An image whose errors name its file: formats report what is wrong and where inside the
/// file, and this layer adds which file, so an error deep in a backing chain names the
/// backing file rather than the overlay the caller opened.
struct Named {
    inner: Arc<dyn Image>,
    path: PathBuf,
}

impl BlockDevice for Named {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner
            .read_at(buf, offset)
            .map_err(|e| e.with_path(&self.path))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.inner
            .write_at(buf, offset)
            .map_err(|e| e.with_path(&self.path))
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush().map_err(|e| e.with_path(&self.path))
    }
    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }
}

impl Image for Named {
    fn format_name(&self) -> &'static str {
        self.inner.format_name()
    }
    fn map(&self, offset: u64, max_len: u64) -> Result<vdisk_block::Mapping> {
        self.inner
            .map(offset, max_len)
            .map_err(|e| e.with_path(&self.path))
    }
    fn backing(&self) -> Option<&Arc<dyn Image>> {
        self.inner.backing()
    }
    fn as_write_zeroes(&self) -> Option<&(dyn vdisk_block::WriteZeroes + Send + Sync)> {
        self.inner
            .as_write_zeroes()
            .map(|_| self as &(dyn vdisk_block::WriteZeroes + Send + Sync))
    }
    fn as_discard(&self) -> Option<&(dyn vdisk_block::Discard + Send + Sync)> {
        self.inner
            .as_discard()
            .map(|_| self as &(dyn vdisk_block::Discard + Send + Sync))
    }
    fn as_resize(&self) -> Option<&(dyn vdisk_block::Resize + Send + Sync)> {
        self.inner
            .as_resize()
            .map(|_| self as &(dyn vdisk_block::Resize + Send + Sync))
    }
}

// The abilities forwarded with this layer's path added to their errors. Each is offered by
// `as_*` above only when the inner image has it, so the `expect`-free fallbacks never run.
impl vdisk_block::WriteZeroes for Named {
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        match self.inner.as_write_zeroes() {
            Some(w) => w.write_zeroes(offset, len, may_unmap),
            None => Err(Error::unsupported("write-zeroes is not supported")),
        }
        .map_err(|e| e.with_path(&self.path))
    }
}

impl vdisk_block::Discard for Named {
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        match self.inner.as_discard() {
            Some(d) => d.discard(offset, len),
            None => Err(Error::unsupported("discard is not supported")),
        }
        .map_err(|e| e.with_path(&self.path))
    }
}

impl vdisk_block::Resize for Named {
    fn resize(&self, new_size: u64, prealloc: vdisk_block::Preallocation) -> Result<()> {
        match self.inner.as_resize() {
            Some(r) => r.resize(new_size, prealloc),
            None => Err(Error::unsupported("resizing is not supported")),
        }
        .map_err(|e| e.with_path(&self.path))
    }
}

/// Opens the image at `path` with `opts`, following its backing chain as the policy allows.
pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<OpenedImage> {
    let mut seen = Vec::new();
    open_at_depth(path.as_ref(), opts, opts.format, &mut seen, false)
}

/// As [`open`], for `check`: a qcow2 image whose active or snapshot L1 table lies past the end
/// of the file opens (the missing part reads as zeros), as qemu opens it, so that the check
/// can count the corruption rather than refuse the image. Backing files open as usual.
pub fn open_for_check(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<OpenedImage> {
    let mut seen = Vec::new();
    open_at_depth(path.as_ref(), opts, opts.format, &mut seen, true)
}

fn open_at_depth(
    path: &Path,
    opts: &OpenOptions,
    format: Option<Format>,
    seen: &mut Vec<(u64, u64)>,
    for_check: bool,
) -> Result<OpenedImage> {
    let read_only = opts.read_only || opts.snapshot.is_some() || !seen.is_empty();
    let raw_opts = vdisk_raw::OpenOptions {
        read_only,
        force_share: opts.force_share,
    };
    let file = Arc::new(Protocol::open(path, &raw_opts)?);

    // A host file is known by device and inode; an export by its name (device 0 is no host
    // file's, and the hash keeps one export apart from another).
    let id = match &*file {
        Protocol::File(_) => {
            let meta =
                std::fs::metadata(path).map_err(|e| Error::io("stat", None, e).with_path(path))?;
            (meta.dev(), meta.ino())
        }
        Protocol::Nbd { .. } | Protocol::Http(_) => {
            let name = file.path();
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            name.hash(&mut h);
            (0, h.finish())
        }
    };
    if seen.contains(&id) {
        return Err(Error::corrupt(format!(
            "backing chain loops back to '{}'",
            path.display()
        )));
    }
    if seen.len() >= MAX_BACKING_DEPTH {
        return Err(Error::unsupported(format!(
            "backing chain is deeper than {MAX_BACKING_DEPTH} images"
        ))
        .with_path(path));
    }
    seen.push(id);

    let (format, probed) = match format {
        Some(f) => (f, false),
        None => {
            let mut head = [0u8; registry::PROBE_BUF_SIZE];
            // min() with a small constant: fits in usize
            let n = file.size().min(registry::PROBE_BUF_SIZE as u64) as usize;
            file.read_at(&mut head[..n], 0)
                .map_err(|e| e.with_path(path))?;
            (registry::probe(&head[..n], path), true)
        }
    };

    let mut data_file = None;
    let (driver, backing) = match format {
        Format::Raw => (Driver::Raw(file.clone()), None),
        Format::Qcow2 => {
            // The image itself may be written; backing files never are (read_only is
            // forced below the top of the chain).
            let mut q = match (read_only, for_check) {
                (true, false) => Qcow2::open(file.clone()),
                (false, false) => Qcow2::open_rw(file.clone()),
                // A check repairs through the file itself, and must see a dirty image as it
                // is (a read-write open would rebuild its refcounts first).
                (_, true) => Qcow2::open_for_check(file.clone()),
            }
            .map_err(|e| e.with_path(path))?;
            if for_check && !read_only {
                q.clear_unknown_autoclear(&*file)
                    .map_err(|e| e.with_path(path))?;
            }
            if let Some(name) = q.data_file_name().map(str::to_owned) {
                if opts.backing == BackingPolicy::Refuse {
                    return Err(Error::invalid(format!(
                        "refusing to open the external data file '{name}' that the image names"
                    ))
                    .with_path(path));
                }
                // qemu resolves a relative data file name against the current directory,
                // not the image's (unlike backing files); we open the same file it would.
                let data = Arc::new(Protocol::open(Path::new(&name), &raw_opts)?);
                if read_only {
                    q.set_data_file(data.clone());
                } else {
                    q.set_data_file_rw(data.clone());
                }
                data_file = Some(data);
            } else if q.needs_data_file() {
                return Err(Error::corrupt(
                    "the image needs an external data file but does not name one",
                )
                .with_path(path));
            }
            let backing =
                open_backing(path, q.backing_file_name(), q.backing_format(), opts, seen)?;
            if let Some(b) = &backing {
                q.set_backing(b.image());
            }
            if let Some(snap) = &opts.snapshot {
                q.load_snapshot(snap).map_err(|e| e.with_path(path))?;
            }
            (Driver::Qcow2(Arc::new(q)), backing)
        }
        _ => {
            let Protocol::File(host) = &*file else {
                let over = if let Protocol::Http(_) = &*file {
                    "HTTP"
                } else {
                    "NBD"
                };
                return Err(Error::unsupported(format!(
                    "the {format} format cannot be opened over {over}"
                ))
                .with_path(path));
            };
            open_registered(path, opts, format, host, read_only, seen)?
        }
    };
    if opts.snapshot.is_some() && format != Format::Qcow2 {
        return Err(Error::unsupported(format!(
            "internal snapshots are not supported by the {format} format"
        ))
        .with_path(path));
    }
    seen.pop();
    // qemu names an export by its normalized URI.
    let filename = match &*file {
        Protocol::Nbd { name, .. } => name.clone(),
        Protocol::File(_) | Protocol::Http(_) => path.to_path_buf(),
    };
    Ok(OpenedImage {
        filename,
        format,
        probed,
        file,
        driver,
        backing,
        data_file,
        metadata_prealloc: OnceLock::new(),
    })
}

/// Opens an image of a format the registry opens, and its backing chain as the policy says.
fn open_registered(
    path: &Path,
    opts: &OpenOptions,
    format: Format,
    file: &Arc<RawFile>,
    read_only: bool,
    seen: &mut Vec<(u64, u64)>,
) -> Result<(Driver, Option<Box<OpenedImage>>)> {
    let entry = registry::entry(format);
    let open = entry
        .open
        .ok_or_else(|| Error::unsupported(format!("the {} format cannot be opened", entry.name)))?;
    let ctx = registry::OpenContext {
        path,
        file: file.clone(),
        read_only,
        force_share: opts.force_share,
    };
    let mut img = open(&ctx).map_err(|e| e.with_path(path))?;
    let name = img.backing_file_name().map(str::to_owned);
    let fmt = img.backing_format().map(str::to_owned);
    let backing = open_backing(path, name.as_deref(), fmt.as_deref(), opts, seen)?;
    if let Some(b) = &backing {
        img.set_backing(b.image()).map_err(|e| e.with_path(path))?;
    }
    Ok((Driver::Other(Arc::from(img)), backing))
}

/// Opens the backing file an image at `path` names (`name`, recorded format `fmt`) as the
/// policy allows: `None` when there is none or it is ignored, an error when it is refused.
fn open_backing(
    path: &Path,
    name: Option<&str>,
    fmt: Option<&str>,
    opts: &OpenOptions,
    seen: &mut Vec<(u64, u64)>,
) -> Result<Option<Box<OpenedImage>>> {
    let name = match (name, opts.backing) {
        (None, _) | (Some(_), BackingPolicy::Ignore) => return Ok(None),
        (Some(name), BackingPolicy::Refuse) => {
            return Err(Error::invalid(format!(
                "refusing to open the backing file '{name}' that the image names"
            ))
            .with_path(path))
        }
        (Some(name), BackingPolicy::Follow) => name,
    };
    if protocol::is_nbd_name(path) && !protocol::is_nbd_name(Path::new(name)) {
        return Err(Error::unsupported(format!(
            "the backing file '{name}' of an NBD export is not an NBD URI: \
             resolving it is not supported"
        ))
        .with_path(path));
    }
    if protocol::is_http_name(path) {
        let base = path.to_string_lossy();
        if vdisk_http::resolve(&base, name).is_none() {
            return Err(Error::unsupported(format!(
                "the backing file '{name}' of an image read over HTTP is a host path: \
                 a remote image may not name files on this machine"
            ))
            .with_path(path));
        }
    }
    let bpath = resolve_backing(path, name);
    let bfmt = match fmt {
        Some(f) => Some(f.parse::<Format>().map_err(|e| e.with_path(path))?),
        None => None,
    };
    let mut bopts = opts.clone();
    bopts.snapshot = None;
    Ok(Some(Box::new(open_at_depth(
        &bpath, &bopts, bfmt, seen, false,
    )?)))
}

/// Where qemu looks for a backing file: an absolute name as is, a relative name next to the
/// image that names it; for an image read over HTTP, a relative name next to its URL.
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    if protocol::is_remote_name(Path::new(name)) {
        return PathBuf::from(name);
    }
    if protocol::is_http_name(image) {
        if let Some(url) = vdisk_http::resolve(&image.to_string_lossy(), name) {
            return PathBuf::from(url);
        }
    }
    let name = Path::new(name);
    if name.is_absolute() {
        return name.to_path_buf();
    }
    match image.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
        _ => name.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_and_parse() {
        assert_eq!(Format::probe(b"QFI\xfb\0\0\0\x03"), Format::Qcow2);
        assert_eq!(Format::probe(b"QFI"), Format::Raw);
        assert_eq!(Format::probe(b""), Format::Raw);
        assert_eq!("qcow2".parse::<Format>().unwrap(), Format::Qcow2);
        assert_eq!("vmdk".parse::<Format>().unwrap(), Format::Vmdk);
        assert_eq!(Format::probe(b"KDMV\x01\0\0\0"), Format::Vmdk);
        let mut qed = [0u8; 64];
        qed[..4].copy_from_slice(b"QED\0");
        assert_eq!(Format::probe(&qed), Format::Qed);
        assert_eq!(
            Format::probe(b"QED\0"),
            Format::Raw,
            "shorter than a header"
        );
        assert_eq!("qed".parse::<Format>().unwrap(), Format::Qed);
        assert_eq!(
            Format::probe(b"# Disk DescriptorFile\nversion=1\n"),
            Format::Vmdk
        );
        assert_eq!(
            "nosuchfmt".parse::<Format>().unwrap_err().to_string(),
            "Unknown driver 'nosuchfmt'"
        );
    }

    #[test]
    fn wrappers_forward_abilities_and_name_the_file() {
        let mem = Arc::new(vdisk_block::MemDevice::from_vec(vec![0xff; 4096]));
        let named = Named {
            inner: mem.clone(),
            path: PathBuf::from("disk.img"),
        };
        let z = named.as_write_zeroes().expect("MemDevice writes zeroes");
        z.write_zeroes(0, 512, false).unwrap();
        let mut b = [1u8; 512];
        mem.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [0u8; 512]);
        named
            .as_resize()
            .unwrap()
            .resize(8192, vdisk_block::Preallocation::Off)
            .unwrap();
        assert_eq!(named.size(), 8192);
        assert!(named.as_discard().is_some());
        // An image without an ability is not offered one by its wrapper.
        let plain = Named {
            inner: Arc::new(Plain),
            path: PathBuf::from("p"),
        };
        assert!(plain.as_write_zeroes().is_none() && plain.as_resize().is_none());
    }

    struct Plain;
    impl BlockDevice for Plain {
        fn size(&self) -> u64 {
            0
        }
        fn read_at(&self, _: &mut [u8], _: u64) -> Result<()> {
            Ok(())
        }
        fn write_at(&self, _: &[u8], _: u64) -> Result<()> {
            Ok(())
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
    }
    impl Image for Plain {
        fn format_name(&self) -> &'static str {
            "plain"
        }
        fn map(&self, offset: u64, _: u64) -> Result<vdisk_block::Mapping> {
            Ok(vdisk_block::Mapping {
                offset,
                len: 0,
                kind: vdisk_block::MapKind::Eof,
            })
        }
    }

    #[test]
    fn backing_names_resolve_next_to_the_overlay() {
        assert_eq!(
            resolve_backing(Path::new("/kvm/vdisks/test.qcow2"), "template.raw"),
            Path::new("/kvm/vdisks/template.raw")
        );
        assert_eq!(
            resolve_backing(Path::new("dir/o.qcow2"), "../b.raw"),
            Path::new("dir/../b.raw")
        );
        assert_eq!(
            resolve_backing(Path::new("o.qcow2"), "b.raw"),
            Path::new("b.raw")
        );
        assert_eq!(
            resolve_backing(Path::new("dir/o.qcow2"), "/abs/b"),
            Path::new("/abs/b")
        );
    }
}
