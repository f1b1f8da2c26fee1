//! The format registry: one entry per image format, holding how to recognise it (probe), how
//! to open it and how to create it. [`Format`]'s name, parsing and probing go through it, and
//! the formats that live outside this crate's built-in paths (everything but raw and qcow2)
//! are opened and created through it alone, so adding a format is a new crate, one adapter
//! file under `src/formats/` and one line in [`FORMATS`].
//!
//! ```text
//!   open(path) --probe(first 2 KiB)--> FormatEntry { open } --> Box<dyn FormatImage>
//!   create -f NAME                 --> FormatEntry { create } --> Box<dyn FormatImage>
//! ```
//!
//! raw and qcow2 predate the registry and keep their own open paths (data files, internal
//! snapshots, metadata preallocation); they are listed here for naming and probing.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use vdisk_block::{Error, Image, Result};
use vdisk_raw::RawFile;

use crate::open::Format;

/// How many bytes of a file the probes see (qemu's `BLOCK_PROBE_BUF_SIZE`).
pub const PROBE_BUF_SIZE: usize = 2048;

/// An open image of a registered format: an [`Image`] plus what the open path and `info`
/// need to ask of it.
pub trait FormatImage: Image + fmt::Debug {
    /// This image as a plain [`Image`].
    fn into_image(self: Arc<Self>) -> Arc<dyn Image>;

    /// The backing file name the image records, as recorded.
    fn backing_file_name(&self) -> Option<&str> {
        None
    }

    /// The backing file's format, when the image records one.
    fn backing_format(&self) -> Option<&str> {
        None
    }

    /// Attaches the opened backing image (called once, before the image is shared).
    fn set_backing(&mut self, _backing: Arc<dyn Image>) -> Result<()> {
        Err(Error::unsupported("this format has no backing files"))
    }

    /// `info`'s `cluster-size`, for formats that have one.
    fn cluster_size(&self) -> Option<u64> {
        None
    }

    /// `info`'s `format-specific` member (`{"type": ..., "data": {...}}`), if the format has
    /// one.
    fn format_specific(&self) -> Option<Value> {
        None
    }

    /// The file holding the guest bytes at `offset` when it is not the image's own file
    /// (VMDK extents), as `map` names it.
    fn data_file_name(&self, _offset: u64) -> Option<String> {
        None
    }

    /// The file to ask about holes for the data at `offset` (qemu's `BDRV_BLOCK_RECURSE`,
    /// which VMDK flat extents set): holes there read as zeros.
    fn recurse_file(&self, _offset: u64) -> Option<Arc<RawFile>> {
        None
    }

    /// Files besides the image file that hold guest data (VMDK extent files), with the
    /// child name qemu gives them (`extents.0`), for `info`.
    fn extra_files(&self) -> Vec<(String, Arc<RawFile>)> {
        Vec::new()
    }

    /// qemu-img check, for formats that have one: the number of corruptions found and the
    /// lines qemu prints on stderr while checking. `None`: the format has no check.
    fn check(&self) -> Option<Result<(u64, Vec<String>)>> {
        None
    }

    /// qemu-img check -r, for formats whose check repairs (opened read-write): the
    /// corruptions left, the corruptions repaired (while opening, as a VHDX log replay) and
    /// the lines printed. `None`: the format repairs nothing.
    fn check_repair(&self) -> Option<Result<(u64, u64, Vec<String>)>> {
        None
    }

    /// Whether `map` and `measure` should see the image as qemu does when its driver reports
    /// no block status: everything data, allocated at this layer, at no known offset.
    fn opaque_block_status(&self) -> bool {
        false
    }

    /// Writes back what the image holds in memory and closes it for good (a stream-optimized
    /// VMDK writes its tables and footer). Called once after the last write.
    fn finish(&self) -> Result<()> {
        self.flush()
    }
}

/// What a format's open function is given.
pub struct OpenContext<'a> {
    /// The image's name as given or as resolved from an overlay.
    pub path: &'a Path,
    /// The host file, open and locked.
    pub file: Arc<RawFile>,
    /// Open for reading only.
    pub read_only: bool,
    /// Share with writers in other processes.
    pub force_share: bool,
}

/// A new image's parameters, as a registered format's create function receives them.
#[derive(Debug, Clone)]
pub struct CreateParams<'a> {
    /// Virtual size in bytes, already rounded to 512.
    pub size: u64,
    /// `-o` options other than size, backing_file and backing_fmt, in the order given.
    pub options: &'a [(String, String)],
    /// The backing file to record.
    pub backing_file: Option<&'a str>,
    /// Its format.
    pub backing_format: Option<&'a str>,
    /// qemu's `cache=unsafe`, what `qemu-img convert` gives its target: the returned image
    /// need not pass flushes to the host (a crash leaves an image to throw away, which a
    /// conversion does anyway). Formats may ignore it.
    pub unsafe_cache: bool,
}

/// A registered format's open function.
pub type OpenFn = fn(&OpenContext<'_>) -> Result<Box<dyn FormatImage>>;

/// A registered format's create function: creates the image and returns it open read-write.
pub type CreateFn = fn(&Path, &CreateParams<'_>) -> Result<Box<dyn FormatImage>>;

/// One registered format.
pub struct FormatEntry {
    /// The enum value callers use.
    pub format: Format,
    /// qemu's driver name.
    pub name: &'static str,
    /// A score as qemu's `bdrv_probe` gives (0 = not this format, 100 = certain); the
    /// highest score wins, raw (score 1) when nothing else claims the file.
    pub probe: fn(head: &[u8], path: &Path) -> u32,
    /// Opens an image of this format; `None` for raw and qcow2, which open.rs opens itself.
    pub open: Option<OpenFn>,
    /// Checks one `-o key=value` for a new image (size, backing_file, backing_fmt excluded),
    /// with qemu-img's message for a bad one.
    pub check_option: Option<fn(&str, &str) -> Result<()>>,
    /// Creates the image and returns it open read-write.
    pub create: Option<CreateFn>,
    /// qemu-img's `Formatting '…'` line for a new image.
    pub formatting_line: Option<fn(&Path, &CreateParams<'_>, &str) -> String>,
    /// The text `create -f NAME -o help` prints.
    pub create_help: &'static str,
    /// Whether the format can record a backing file (`-b` accepted).
    pub supports_backing: bool,
}

fn probe_qcow2(head: &[u8], _: &Path) -> u32 {
    if head.starts_with(b"QFI\xfb") {
        100
    } else {
        0
    }
}

fn probe_raw(_: &[u8], _: &Path) -> u32 {
    1
}

/// Every format vdisk knows, in qemu's probing order for ties.
pub static FORMATS: &[FormatEntry] = &[
    FormatEntry {
        format: Format::Raw,
        name: "raw",
        probe: probe_raw,
        open: None,
        check_option: None,
        create: None,
        formatting_line: None,
        create_help: "",
        supports_backing: false,
    },
    FormatEntry {
        format: Format::Qcow2,
        name: "qcow2",
        probe: probe_qcow2,
        open: None,
        check_option: None,
        create: None,
        formatting_line: None,
        create_help: "",
        supports_backing: true,
    },
    crate::formats::vmdk::ENTRY,
    crate::formats::vpc::ENTRY,
    crate::formats::vdi::ENTRY,
    crate::formats::vhdx::ENTRY,
    crate::formats::qed::ENTRY,
];

/// The entry of `format`.
pub fn entry(format: Format) -> &'static FormatEntry {
    FORMATS
        .iter()
        .find(|e| e.format == format)
        .expect("every Format has a registry entry")
}

/// The entry named `name` (qemu's driver name).
pub fn by_name(name: &str) -> Option<&'static FormatEntry> {
    FORMATS.iter().find(|e| e.name == name)
}

/// The format whose probe scores `head` highest (raw when none claims it).
pub fn probe(head: &[u8], path: &Path) -> Format {
    let mut best = (0, Format::Raw);
    for e in FORMATS {
        let score = (e.probe)(head, path);
        if score > best.0 {
            best = (score, e.format);
        }
    }
    best.1
}

/// The names of every registered format, for messages.
pub fn names() -> impl Iterator<Item = &'static str> {
    FORMATS.iter().map(|e| e.name)
}
