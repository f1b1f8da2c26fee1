//! Creating images with qemu-img's options, shared by `create`, `convert` and `measure`.
//!
//! ```text
//!   -o "k=v,k=v" + -b/-F + SIZE  --parse_create_options-->  CreateRequest
//!   CreateRequest --resolve_backing (opens the backing file, fills size/backing_fmt)-->
//!   CreateRequest --create_image-->  CreatedImage (open read-write: raw file or qcow2)
//! ```
//!
//! [`parse_create_options`] turns the `-o` strings into a [`CreateRequest`] and refuses what
//! qemu-img refuses, with its messages; `measure` only needs that step (the qcow2 layout is
//! in [`CreateRequest::qcow2`]). [`create_image`] writes the new image and hands it back open
//! read-write, so `convert` writes into it without opening it again.
//!
//! ```no_run
//! use vdisk::create::{create_image, parse_create_options};
//! use vdisk::Format;
//!
//! let mut req = parse_create_options(Format::Qcow2, &["cluster_size=2M,compat=1.1"])?;
//! req.set_size(Some("10G"))?;
//! let img = create_image("disk.qcow2", &req)?; // open read-write; dropping it closes it
//! # drop(img);
//! # Ok::<(), vdisk_block::Error>(())
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use vdisk_block::{BlockDevice, Error, Preallocation, Resize, Result, WriteZeroes};
use vdisk_qcow2::{CompressionType, CreateOptions, Qcow2};
use vdisk_raw::RawFile;

use crate::open::{resolve_backing, Format, OpenOptions};
use crate::options::{parse_opts, parse_size};

/// A parsed image creation request: what `qemu-img create -f FMT -o OPTIONS [-b B -F F]
/// [SIZE]` asks for.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// The format to create.
    pub format: Format,
    /// Virtual size in bytes, when known (`-o size=`, the SIZE argument, or the backing
    /// file's size after [`CreateRequest::resolve_backing`]). Not yet rounded to sectors.
    pub size: Option<u64>,
    /// The size as the user spelled it in `-o size=` (the "Formatting" line repeats it).
    size_text: Option<String>,
    /// A raw image's preallocation (`-o preallocation=off|falloc|full`).
    pub raw_preallocation: Preallocation,
    /// The qcow2 layout and features (its `size`, backing file and format are filled by
    /// [`create_image`] from the fields of this request). Defaults for raw requests.
    pub qcow2: CreateOptions,
    /// The backing file name to record (`-b` or `-o backing_file=`), as given.
    pub backing_file: Option<String>,
    /// The backing file's format (`-F` or `-o backing_fmt=`).
    pub backing_format: Option<String>,
    /// Options as the user spelled them, for the "Formatting" line.
    given: HashMap<&'static str, String>,
    /// For formats created through the [registry](crate::registry): their `-o` options
    /// (size and backing options excluded), checked by the format, in the order given.
    pub format_options: Vec<(String, String)>,
}

/// Whether `opts` (the raw `-o` strings) ask for the option list (`-o help` or `-o ?`).
pub fn wants_help(opts: &[impl AsRef<str>]) -> Result<bool> {
    for o in opts {
        if parse_opts(o.as_ref())?
            .iter()
            .any(|(k, _)| k == "help" || k == "?")
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The text `qemu-img create -f FMT -o help` prints.
pub fn create_help(format: Format) -> &'static str {
    let entry = crate::registry::entry(format);
    if entry.check_option.is_some() {
        return entry.create_help;
    }
    match format {
        Format::Raw => "Supported raw options:\n  \
             preallocation=<str (off, falloc, full)> - Preallocation mode (allowed values: off, falloc, full)\n  \
             size=<size>            - Virtual disk size\n",
        Format::Qcow2 => "Supported qcow2 options:\n  \
             backing_file=<str>     - File name of a base image\n  \
             backing_fmt=<str>      - Image format of the base image\n  \
             cluster_size=<size>    - qcow2 cluster size\n  \
             compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])\n  \
             compression_type=<str> - Compression method used for image cluster compression\n  \
             data_file=<str>        - File name of an external data file\n  \
             data_file_raw=<bool (on/off)> - The external data file must stay valid as a raw image\n  \
             extended_l2=<bool (on/off)> - Extended L2 tables\n  \
             lazy_refcounts=<bool (on/off)> - Postpone refcount updates\n  \
             preallocation=<str>    - Preallocation mode (allowed values: off, metadata, falloc, full)\n  \
             refcount_bits=<num>    - Width of a reference count entry in bits\n  \
             size=<size>            - Virtual disk size\n",
        _ => entry.create_help,
    }
}

/// A qemu boolean option value.
fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(Error::invalid(format!(
            "Parameter '{key}' expects 'on' or 'off'"
        ))),
    }
}

/// Parses the `-o` option strings (each `key=value,key=value`; `-o` may repeat) for a new
/// image of `format`, refusing unknown keys and bad values with qemu-img's messages. Errors
/// carry no path: the caller names the image (`Error::with_path`), except size errors, which
/// qemu-img prints without it.
pub fn parse_create_options(format: Format, opts: &[impl AsRef<str>]) -> Result<CreateRequest> {
    let mut pairs = Vec::new();
    for o in opts {
        pairs.extend(parse_opts(o.as_ref())?);
    }
    let mut req = CreateRequest {
        format,
        size: None,
        size_text: None,
        raw_preallocation: Preallocation::Off,
        qcow2: CreateOptions::default(),
        backing_file: None,
        backing_format: None,
        given: HashMap::new(),
        format_options: Vec::new(),
    };
    let entry = crate::registry::entry(format);
    for (k, v) in &pairs {
        match (format, entry.check_option) {
            (Format::Raw, _) => req.raw_option(k, v)?,
            (Format::Qcow2, _) => req.qcow2_option(k, v)?,
            (_, Some(check)) => match k.as_str() {
                "size" => {
                    req.size = Some(parse_size(v)?);
                    req.size_text = Some(v.to_string());
                }
                "backing_file" if entry.supports_backing => req.backing_file = Some(v.to_string()),
                "backing_fmt" if entry.supports_backing => req.backing_format = Some(v.to_string()),
                _ => {
                    check(k, v)?;
                    req.format_options.push((k.to_string(), v.to_string()));
                }
            },
            (_, None) => {
                return Err(Error::unsupported(format!(
                    "Format driver '{}' does not support image creation",
                    entry.name
                )))
            }
        }
    }
    Ok(req)
}

/// `-o extent_size_hint=SIZE`, an option of qemu's file protocol (any format over a host
/// file): the allocation size hint it gives XFS. Checked as qemu checks it and otherwise not
/// applied: it changes where a filesystem allocates, never what the image holds. qemu's
/// `Formatting` line leaves it out too.
fn check_extent_size_hint(v: &str) -> Result<()> {
    let n = parse_size(v)?;
    if n > u64::from(u32::MAX) {
        return Err(Error::invalid(
            "Extent size hint is too large (maximum 4294967295)",
        ));
    }
    Ok(())
}

impl CreateRequest {
    fn raw_option(&mut self, k: &str, v: &str) -> Result<()> {
        match k {
            "size" => {
                self.size = Some(parse_size(v)?);
                self.size_text = Some(v.to_string());
            }
            "preallocation" => {
                let p: Preallocation = v.parse()?;
                if p == Preallocation::Metadata {
                    return Err(Error::invalid(
                        "Invalid parameter 'metadata' (raw images support off, falloc, full)",
                    ));
                }
                self.raw_preallocation = p;
                self.given.insert("preallocation", v.to_string());
            }
            "extent_size_hint" => check_extent_size_hint(v)?,
            _ => {
                return Err(Error::invalid(format!(
                    "Invalid parameter '{k}' for format raw (see 'vdisk create -f raw -o help')"
                )))
            }
        }
        Ok(())
    }

    fn qcow2_option(&mut self, k: &str, v: &str) -> Result<()> {
        let o = &mut self.qcow2;
        match k {
            "size" => {
                self.size = Some(parse_size(v)?);
                self.size_text = Some(v.to_string());
            }
            "compat" => {
                o.version = match v {
                    "0.10" | "v2" => 2,
                    "1.1" | "v3" => 3,
                    _ => {
                        return Err(Error::invalid(format!(
                            "Parameter 'version' does not accept value '{v}'"
                        )))
                    }
                };
                self.given.insert("compat", v.to_string());
            }
            "cluster_size" => o.cluster_size = parse_size(v)?,
            "refcount_bits" => {
                // qemu reads a negative number as a huge one, which is no power of two.
                o.refcount_bits = match (v.parse(), v.parse::<i64>()) {
                    (Ok(n), _) => n,
                    (Err(_), Ok(_)) => {
                        return Err(Error::invalid(
                            "Refcount width must be a power of two and may not exceed 64 bits",
                        ))
                    }
                    _ => return Err(Error::invalid("Parameter 'refcount_bits' expects a number")),
                };
            }
            "lazy_refcounts" => {
                o.lazy_refcounts = parse_bool(k, v)?;
                self.given.insert("lazy_refcounts", v.to_string());
            }
            "extended_l2" => {
                o.extended_l2 = parse_bool(k, v)?;
                self.given.insert("extended_l2", v.to_string());
            }
            "data_file_raw" => {
                o.data_file_raw = parse_bool(k, v)?;
                self.given.insert("data_file_raw", v.to_string());
            }
            "compression_type" => {
                o.compression_type = match v {
                    "zlib" => CompressionType::Zlib,
                    "zstd" => CompressionType::Zstd,
                    _ => {
                        return Err(Error::invalid(format!(
                            "Parameter 'compression-type' does not accept value '{v}'"
                        )))
                    }
                };
                self.given.insert("compression_type", v.to_string());
            }
            "preallocation" => {
                o.preallocation = v.parse()?;
                self.given.insert("preallocation", v.to_string());
            }
            "extent_size_hint" => check_extent_size_hint(v)?,
            "backing_file" => self.backing_file = Some(v.to_string()),
            "backing_fmt" => self.backing_format = Some(v.to_string()),
            "data_file" => o.data_file = Some(v.to_string()),
            k if k == "encryption" || k.starts_with("encrypt.") => {
                return Err(Error::unsupported("encrypted images are not supported"))
            }
            _ => {
                return Err(Error::invalid(format!(
                    "Invalid parameter '{k}' for format qcow2 (see 'vdisk create -f qcow2 -o help')"
                )))
            }
        }
        Ok(())
    }

    /// Takes the SIZE argument. Giving it as well as `-o size=` is an error for qcow2 (as in
    /// qemu-img); for raw the argument wins.
    pub fn set_size(&mut self, size: Option<&str>) -> Result<()> {
        let Some(s) = size else { return Ok(()) };
        if self.format == Format::Qcow2 && self.size.is_some() {
            return Err(Error::invalid("The image size must be specified only once"));
        }
        self.size = Some(parse_size(s)?);
        self.size_text = None;
        Ok(())
    }

    /// Takes `-b BACKING` and `-F FMT` (each overrides `-o backing_file=`/`backing_fmt=`).
    pub fn set_backing(&mut self, backing: Option<&str>, format: Option<&str>) {
        if let Some(b) = backing {
            self.backing_file = Some(b.to_string());
        }
        if let Some(f) = format {
            self.backing_format = Some(f.to_string());
        }
    }

    /// Sets the virtual size (convert: the sources' total), replacing any size given.
    pub fn set_size_bytes(&mut self, size: u64) {
        self.size = Some(size);
        self.size_text = None;
    }

    /// Checks the backing file of a new image at `path` as qemu-img does: unless `unsafe_`
    /// (`-u`), opens it (resolved next to `path`), takes its size when none was given and its
    /// probed format when `-F` was not given. Returns a warning to print when the format had
    /// to be probed. Errors name `path`.
    pub fn resolve_backing(
        &mut self,
        path: impl AsRef<Path>,
        unsafe_: bool,
    ) -> Result<Option<String>> {
        let path = path.as_ref();
        let Some(b) = self.backing_file.clone() else {
            return Ok(None);
        };
        if self.format == Format::Raw {
            return Err(
                Error::invalid("Backing file not supported for file format 'raw'").with_path(path),
            );
        }
        if unsafe_ {
            if self.backing_format.is_none() {
                return Err(Error::invalid(
                    "Backing file specified without backing format (give -F with -u)",
                )
                .with_path(path));
            }
            return Ok(None);
        }
        let format = match &self.backing_format {
            Some(f) => Some(
                f.parse::<Format>()
                    .map_err(|e| Error::invalid(e.message()).with_path(path))?,
            ),
            None => None,
        };
        let opened = crate::open(
            resolve_backing(path, &b),
            &OpenOptions {
                format,
                read_only: true,
                force_share: true,
                ..Default::default()
            },
        )
        .map_err(|e| {
            Error::invalid(format!("{e}\nCould not open backing image.")).with_path(path)
        })?;
        let mut warning = None;
        if self.backing_format.is_none() {
            warning = Some(format!(
                "vdisk: warning: backing file '{b}' specified without backing format; \
                 probing detected {} and it is recorded as backing_fmt={}",
                opened.format, opened.format
            ));
            self.backing_format = Some(opened.format.name().to_string());
        }
        if self.size.is_none() {
            self.size = Some(opened.image().size());
        }
        Ok(warning)
    }

    /// The size of the new image: the size asked for, rounded up to 512-byte sectors (qemu's
    /// block layer works in sectors). Errors (naming `path`) when no size is known.
    pub fn rounded_size(&self, path: impl AsRef<Path>) -> Result<u64> {
        let size = self.size.ok_or_else(|| {
            Error::invalid("Image creation needs a size parameter").with_path(path.as_ref())
        })?;
        Ok(size.div_ceil(512).saturating_mul(512))
    }

    /// The qcow2 options with size, backing file and format filled in, validated (qemu's
    /// messages). Errors name `path`.
    pub fn qcow2_options(&self, path: impl AsRef<Path>) -> Result<CreateOptions> {
        let path = path.as_ref();
        let mut o = self.qcow2.clone();
        o.size = self.rounded_size(path)?;
        o.backing_file = self.backing_file.clone();
        o.backing_format = self.backing_format.clone();
        o.validate().map_err(|e| e.with_path(path))?;
        Ok(o)
    }

    /// The line qemu-img prints before creating: `Formatting 'NAME', fmt=qcow2 ...`, options
    /// in qemu's order, as the user spelled them.
    pub fn formatting_line(&self, path: impl AsRef<Path>) -> String {
        let name = path.as_ref().display();
        let size = self.size.unwrap_or(0);
        let size_text = self.size_text.clone().unwrap_or_else(|| size.to_string());
        let given = |k: &str| self.given.get(k).map(String::as_str);
        let entry = crate::registry::entry(self.format);
        if let Some(line) = entry.formatting_line {
            return line(path.as_ref(), &self.params(size), &size_text);
        }
        match self.format {
            Format::Raw => {
                let mut line = format!("Formatting '{name}', fmt=raw size={size}");
                if given("preallocation").is_some() {
                    line.push_str(&format!(
                        " preallocation={}",
                        self.raw_preallocation.as_str()
                    ));
                }
                line
            }
            Format::Qcow2 => {
                let o = &self.qcow2;
                let mut line = format!(
                    "Formatting '{name}', fmt=qcow2 cluster_size={} extended_l2={}",
                    o.cluster_size,
                    given("extended_l2").unwrap_or("off")
                );
                if let Some(p) = given("preallocation") {
                    line.push_str(&format!(" preallocation={p}"));
                }
                line.push_str(&format!(
                    " compression_type={} size={size_text}",
                    given("compression_type").unwrap_or("zlib"),
                ));
                if let Some(c) = given("compat") {
                    line.push_str(&format!(" compat={c}"));
                }
                if let Some(b) = &self.backing_file {
                    line.push_str(&format!(" backing_file={b}"));
                }
                if let Some(f) = &self.backing_format {
                    line.push_str(&format!(" backing_fmt={f}"));
                }
                if let Some(d) = &o.data_file {
                    line.push_str(&format!(" data_file={d}"));
                }
                if let Some(r) = given("data_file_raw") {
                    line.push_str(&format!(" data_file_raw={r}"));
                }
                line.push_str(&format!(
                    " lazy_refcounts={} refcount_bits={}",
                    given("lazy_refcounts").unwrap_or("off"),
                    o.refcount_bits
                ));
                line
            }
            _ => format!("Formatting '{name}', fmt={} size={size}", entry.name),
        }
    }

    /// The parameters a registered format's create function and Formatting line take.
    pub fn params(&self, size: u64) -> crate::registry::CreateParams<'_> {
        crate::registry::CreateParams {
            size,
            options: &self.format_options,
            backing_file: self.backing_file.as_deref(),
            backing_format: self.backing_format.as_deref(),
            unsafe_cache: false,
        }
    }
}

/// A new image, open read-write. Dropping it closes it.
pub enum CreatedImage {
    /// A raw image.
    Raw(RawFile),
    /// A qcow2 image (with its external data file attached, if it has one).
    Qcow2(Box<Qcow2>),
    /// An image of a format created through the registry.
    Other(Arc<dyn crate::registry::FormatImage>),
}

impl CreatedImage {
    /// The image as a device (guest bytes).
    pub fn device(&self) -> &dyn BlockDevice {
        match self {
            CreatedImage::Raw(r) => r,
            CreatedImage::Qcow2(q) => &**q,
            CreatedImage::Other(o) => &**o,
        }
    }
}

/// When a new qcow2 image's writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Metadata is written back in crash-safe order with fsyncs between the steps.
    #[default]
    Writeback,
    /// qemu's `cache=unsafe`, what `qemu-img convert` uses for its target: the same write
    /// order but no fsync at all (a crash halfway leaves an image to throw away, which a
    /// conversion does anyway).
    Unsafe,
}

/// Creates the image `req` describes at `path` (replacing a file there) and returns it open
/// read-write. The size must be known ([`CreateRequest::set_size`],
/// [`CreateRequest::resolve_backing`] or [`CreateRequest::set_size_bytes`]). On failure the
/// files this call created are removed. Errors name `path`.
pub fn create_image(path: impl AsRef<Path>, req: &CreateRequest) -> Result<CreatedImage> {
    create_image_with(path, req, CacheMode::Writeback)
}

/// [`create_image`] with a choice of [`CacheMode`] for the returned image.
pub fn create_image_with(
    path: impl AsRef<Path>,
    req: &CreateRequest,
    cache: CacheMode,
) -> Result<CreatedImage> {
    let path = path.as_ref();
    if crate::protocol::is_http_name(path) {
        return Err(vdisk_http::read_only().with_path(path));
    }
    match req.format {
        Format::Raw => {
            if req.backing_file.is_some() || req.backing_format.is_some() {
                return Err(
                    Error::invalid("Backing file not supported for file format 'raw'")
                        .with_path(path),
                );
            }
            let size = req.rounded_size(path)?;
            Ok(CreatedImage::Raw(new_file(
                path,
                size,
                req.raw_preallocation,
                cache,
            )?))
        }
        Format::Qcow2 => {
            let o = req.qcow2_options(path)?;
            create_qcow2(path, &o, cache).map(|q| CreatedImage::Qcow2(Box::new(q)))
        }
        format => {
            let entry = crate::registry::entry(format);
            let create = entry.create.ok_or_else(|| {
                Error::unsupported(format!(
                    "Format driver '{}' does not support image creation",
                    entry.name
                ))
                .with_path(path)
            })?;
            if !entry.supports_backing && req.backing_file.is_some() {
                return Err(Error::invalid(format!(
                    "Backing file not supported for file format '{}'",
                    entry.name
                ))
                .with_path(path));
            }
            let size = req.rounded_size(path)?;
            let mut params = req.params(size);
            params.unsafe_cache = cache == CacheMode::Unsafe;
            let img = create(path, &params).map_err(|e| e.with_path(path))?;
            Ok(CreatedImage::Other(Arc::from(img)))
        }
    }
}

/// Creates (empties) the file at `path` with `size` bytes. For a conversion ([`CacheMode::Unsafe`])
/// the file is closed and opened again before anything is written, as qemu-img does: ext4
/// starts writing back all of a file that was truncated to zero when it is closed
/// (`auto_da_alloc`), which would make the final close wait for the whole image to reach
/// the disk.
fn new_file(path: &Path, size: u64, prealloc: Preallocation, cache: CacheMode) -> Result<RawFile> {
    let file = RawFile::create(path, size, prealloc)?;
    if cache == CacheMode::Writeback {
        return Ok(file);
    }
    drop(file);
    RawFile::open(
        path,
        &vdisk_raw::OpenOptions {
            read_only: false,
            force_share: false,
        },
    )
}

/// Formats a new qcow2 image at `path` with validated options `o`, creating its external
/// data file (named relative to the current directory, as qemu does) when it has one.
fn create_qcow2(path: &Path, o: &CreateOptions, cache: CacheMode) -> Result<Qcow2> {
    let existed_data = o.data_file.as_ref().is_some_and(|d| Path::new(d).exists());
    // Which files this call has taken over (locked and emptied): only those are removed when
    // it fails. A file it could not take — held by another process, unreadable — is someone
    // else's image and stays as it was.
    let (mut owned, mut owned_data) = (false, false);
    let result = (|| -> Result<Qcow2> {
        let lazy = cache == CacheMode::Unsafe;
        let file = Arc::new(NoFlush::new(
            new_file(path, 0, Preallocation::Off, cache)?,
            lazy,
        ));
        owned = true;
        let data = match &o.data_file {
            Some(d) => {
                let f = new_file(Path::new(d), o.size, Preallocation::Off, cache)?;
                owned_data = !existed_data;
                Some(Arc::new(NoFlush::new(f, lazy)))
            }
            None => None,
        };
        let mut q = Qcow2::create(file, o)?;
        if let (Some(b), Some(f)) = (&o.backing_file, &o.backing_format) {
            // Writes that fill part of a cluster copy the rest from the backing file, so a
            // caller that writes into the new image (convert -B) needs it attached. `create -u`
            // may name one that does not exist (yet): then nothing reads through it here.
            let opened = f.parse::<Format>().ok().and_then(|format| {
                crate::open(
                    resolve_backing(path, b),
                    &OpenOptions {
                        format: Some(format),
                        read_only: true,
                        force_share: true,
                        ..Default::default()
                    },
                )
                .ok()
            });
            if let Some(opened) = opened {
                q.set_backing(opened.image());
            }
        }
        if let Some(d) = data {
            q.set_data_file_rw(d);
            // qemu maps the whole disk up front when the data file must stay a valid raw
            // image (every guest cluster at its own offset in the data file).
            let prealloc = if o.data_file_raw && o.preallocation == Preallocation::Off {
                Preallocation::Metadata
            } else {
                o.preallocation
            };
            q.preallocate(prealloc)?;
        }
        q.flush()?;
        Ok(q)
    })();
    match result {
        Ok(q) => Ok(q),
        Err(e) => {
            if owned {
                let _ = std::fs::remove_file(path);
            }
            if let (Some(d), true) = (&o.data_file, owned_data) {
                let _ = std::fs::remove_file(d);
            }
            Err(e.with_path(path))
        }
    }
}

/// The host file of a new image. With `lazy` (qemu's `cache=unsafe`, for conversions):
/// flushes are skipped, and growth is reserved in large steps so that allocating cluster
/// after cluster does not cost an `ftruncate` each; the file is cut back to the length the
/// image uses when flushed.
struct NoFlush {
    inner: RawFile,
    lazy: bool,
    /// The length the image uses (what `size` reports); the file may be longer while `lazy`.
    len: std::sync::atomic::AtomicU64,
}

/// How far ahead a lazily grown file is extended.
const GROWTH_STEP: u64 = 64 << 20;

impl NoFlush {
    fn new(inner: RawFile, lazy: bool) -> NoFlush {
        let len = inner.size();
        NoFlush {
            inner,
            lazy,
            len: std::sync::atomic::AtomicU64::new(len),
        }
    }
}

impl BlockDevice for NoFlush {
    fn size(&self) -> u64 {
        self.len.load(std::sync::atomic::Ordering::Acquire)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        if !self.lazy {
            return self.inner.flush();
        }
        let len = self.size();
        if self.inner.size() > len {
            self.inner.resize(len, Preallocation::Off)?;
        }
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }
}

impl Resize for NoFlush {
    fn resize(&self, new_size: u64, prealloc: Preallocation) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.lazy && prealloc == Preallocation::Off && new_size >= self.size() {
            if new_size > self.inner.size() {
                let ahead = new_size.saturating_add(GROWTH_STEP) / GROWTH_STEP * GROWTH_STEP;
                self.inner.resize(ahead, Preallocation::Off)?;
            }
            self.len.fetch_max(new_size, Ordering::AcqRel);
            return Ok(());
        }
        self.inner.resize(new_size, prealloc)?;
        self.len.store(new_size, Ordering::Release);
        Ok(())
    }
}

impl WriteZeroes for NoFlush {
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.inner.write_zeroes(offset, len, may_unmap)
    }
}

/// Removes what [`create_image`] created at `path` (and the external data file `req` names,
/// when it did not exist before): for a conversion that failed halfway, so no short image is
/// left looking valid.
pub fn remove_image(path: impl AsRef<Path>, req: &CreateRequest) {
    let _ = std::fs::remove_file(path.as_ref());
    if let (Format::Qcow2, Some(d)) = (req.format, &req.qcow2.data_file) {
        let _ = std::fs::remove_file(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_options_parse() {
        let r = parse_create_options(
            Format::Qcow2,
            &["cluster_size=4k,compat=0.10", "lazy_refcounts=off"],
        )
        .unwrap();
        assert_eq!(r.qcow2.cluster_size, 4096);
        assert_eq!(r.qcow2.version, 2);
        assert!(!r.qcow2.lazy_refcounts);
        let e = parse_create_options(Format::Qcow2, &["compat=9"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Parameter 'version' does not accept value '9'"
        );
        let e = parse_create_options(Format::Raw, &["cluster_size=4k"]).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("Invalid parameter 'cluster_size'"));
        assert!(wants_help(&["size=1,help"]).unwrap());
    }

    #[test]
    fn size_once() {
        let mut r = parse_create_options(Format::Qcow2, &["size=1M"]).unwrap();
        assert!(r.set_size(Some("2M")).is_err());
        let mut r = parse_create_options(Format::Raw, &["size=1M"]).unwrap();
        r.set_size(Some("1000")).unwrap();
        assert_eq!(r.rounded_size("x").unwrap(), 1024);
        assert_eq!(r.formatting_line("x"), "Formatting 'x', fmt=raw size=1000");
    }
}
