//! `commit`: write an overlay's data down into its backing file, as `qemu-img commit` does.
//!
//! ```text
//!   top.qcow2   (read-write)  --.
//!   mid.qcow2   (read-only)   --+-- what any of these holds is copied ...
//!   base.raw    (read-write)  <-'   ... into the base, at the same guest offsets
//!   (base's own backing files, read-only)
//! ```
//!
//! Only ranges some layer above the base allocates are read and written; the rest already
//! reads from the base. Without `-b`, the base is the top image's backing file and, unless
//! `-d`, the top image is emptied afterwards (its clusters discarded, so it reads through to
//! the base again). With `-b` the top image is left alone (qemu: `-b` implies `-d`), since
//! the images between it and the base no longer describe what it reads.
//!
//! The layers above the base are opened one by one without their backing files, so the base
//! is opened once, read-write, and never through a read-only chain that would hold its lock.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use vdisk_block::{BlockDevice, BlockDeviceExt, Error, Image, MapKind, Preallocation, Result};
use vdisk_qcow2::Qcow2;

use crate::open::{
    open, resolve_backing, BackingPolicy, Driver, Format, OpenOptions, OpenedImage,
    MAX_BACKING_DEPTH,
};

/// Guest bytes copied per step.
const CHUNK: u64 = 2 << 20;

/// What `qemu-img commit` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// The top image's format; `None` probes.
    pub format: Option<Format>,
    /// `-b`: the image of the chain to commit into, named as qemu takes it (a relative name
    /// is relative to the top image's directory). `None`: the top image's backing file.
    pub base: Option<String>,
    /// `-d`: leave the top image as it is instead of emptying it.
    pub drop: bool,
}

/// The images a commit works on.
pub struct CommitPlan {
    /// The top image, read-write, without its backing chain, then the layers between it and
    /// the base, read-only, each without its backing chain.
    layers: Vec<OpenedImage>,
    /// The base, read-write (its own backing chain read-only).
    base: OpenedImage,
    /// Whether the top image is emptied afterwards.
    empty_top: bool,
}

impl CommitPlan {
    /// Every image that was opened, top first, for callers that report probed formats.
    pub fn images(&self) -> impl Iterator<Item = &OpenedImage> {
        self.layers.iter().chain(std::iter::once(&self.base))
    }

    /// The top image's virtual size: the bytes a commit covers.
    pub fn size(&self) -> u64 {
        self.layers[0].image().size()
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The backing file name and format a layer records.
fn backing_of(layer: &OpenedImage) -> Option<(String, Option<String>)> {
    match &layer.driver {
        Driver::Qcow2(q) => q
            .backing_file_name()
            .map(|n| (n.to_string(), q.backing_format().map(str::to_string))),
        Driver::Other(o) => o
            .backing_file_name()
            .map(|n| (n.to_string(), o.backing_format().map(str::to_string))),
        _ => None,
    }
}

/// Opens the top image at `path`, the layers down to the base, and the base.
pub fn open_commit(path: &Path, opts: &CommitOptions) -> Result<CommitPlan> {
    let top = open(
        path,
        &OpenOptions {
            format: opts.format,
            read_only: false,
            force_share: false,
            backing: BackingPolicy::Ignore,
            snapshot: None,
        },
    )?;
    if backing_of(&top).is_none() {
        return Err(Error::invalid("Image does not have a backing file").with_path(path));
    }
    let wanted = opts
        .base
        .as_ref()
        .map(|b| (b, file_id(&resolve_backing(path, b))));
    let mut seen = vec![file_id(path)];
    let mut layers = vec![top];
    loop {
        let layer = layers.last().expect("the top is there");
        let Some((name, fmt)) = backing_of(layer) else {
            // The chain ended without meeting the requested base.
            let b = wanted.map(|(b, _)| b.as_str()).unwrap_or_default();
            return Err(Error::invalid(format!(
                "Did not find '{b}' in the backing chain of '{}'",
                path.display()
            )));
        };
        let bpath = resolve_backing(&layer.filename, &name);
        let id = file_id(&bpath);
        if id.is_some() && seen.contains(&id) {
            return Err(Error::corrupt(format!(
                "backing chain loops back to '{}'",
                bpath.display()
            ))
            .with_path(&layer.filename));
        }
        if seen.len() > MAX_BACKING_DEPTH {
            return Err(Error::unsupported(format!(
                "backing chain is deeper than {MAX_BACKING_DEPTH} images"
            ))
            .with_path(path));
        }
        seen.push(id);
        let format = fmt
            .map(|f| {
                f.parse::<Format>()
                    .map_err(|e| e.with_path(&layer.filename))
            })
            .transpose()?;
        let is_base = match &wanted {
            None => true,
            Some((b, want_id)) => *b == &name || (want_id.is_some() && *want_id == id),
        };
        if is_base {
            let top_size = layers[0].image().size();
            grow_base(&bpath, format, top_size)?;
            let base = open(
                &bpath,
                &OpenOptions {
                    format,
                    read_only: false,
                    force_share: false,
                    backing: BackingPolicy::Follow,
                    snapshot: None,
                },
            )?;
            return Ok(CommitPlan {
                layers,
                base,
                empty_top: opts.base.is_none() && !opts.drop,
            });
        }
        let next = open(
            &bpath,
            &OpenOptions {
                format,
                read_only: true,
                force_share: false,
                backing: BackingPolicy::Ignore,
                snapshot: None,
            },
        )?;
        layers.push(next);
    }
}

/// Grows the base to the top image's size when it is smaller, as qemu's commit job does.
fn grow_base(path: &Path, format: Option<Format>, size: u64) -> Result<()> {
    let img = open(
        path,
        &OpenOptions {
            format,
            read_only: false,
            force_share: false,
            backing: BackingPolicy::Ignore,
            snapshot: None,
        },
    )?;
    if img.image().size() >= size {
        return Ok(());
    }
    match &img.driver {
        Driver::Raw(f) => {
            vdisk_block::Resize::resize(&**f, size, Preallocation::Off)?;
            f.flush()
        }
        Driver::Qcow2(_) => {
            let file = img.file.clone();
            drop(img);
            let mut q = Qcow2::open_rw(file)?;
            q.resize_image(size.next_multiple_of(512), Preallocation::Off, false)
                .map_err(|e| e.with_path(path))?;
            q.flush().map_err(|e| e.with_path(path))
        }
        _ => Err(Error::unsupported(format!(
            "Cannot grow the {} image to the top's size",
            img.format
        ))
        .with_path(path)),
    }
}

/// What the layers above the base say about one range.
enum Above {
    /// No layer above the base holds it: the base already supplies it.
    Base,
    /// It reads as zeros.
    Zero,
    /// This layer holds data for it.
    Data(usize),
}

/// The status of `[pos, pos + max)` above the base, and how far it holds.
fn status_above(layers: &[OpenedImage], pos: u64, max: u64) -> Result<(Above, u64)> {
    let mut len = max;
    for (i, layer) in layers.iter().enumerate() {
        let img = layer.image();
        if pos >= img.size() {
            // A layer shorter than the top reads zeros past its end, hiding what is below.
            return Ok((Above::Zero, len));
        }
        len = len.min(img.size() - pos);
        let m = img.map(pos, len)?;
        len = m.len.clamp(1, len);
        match m.kind {
            MapKind::Data { .. } | MapKind::Compressed => return Ok((Above::Data(i), len)),
            MapKind::Zero { .. } => return Ok((Above::Zero, len)),
            MapKind::Unallocated { .. } | MapKind::Eof => {}
            // A kind this code does not know: copy it, which is always right.
            _ => return Ok((Above::Data(i), len)),
        }
    }
    Ok((Above::Base, len))
}

/// Makes `[pos, pos + len)` of `img` read as zeros: its fast way if it has one, else by
/// writing zeros.
fn write_zeroes(img: &dyn Image, pos: u64, len: u64) -> Result<()> {
    match img.as_write_zeroes() {
        Some(z) => z.write_zeroes(pos, len, true),
        None => img.write_zeroes_by_writing(pos, len),
    }
}

/// Copies what the layers above the base hold into the base, then empties the top image
/// when asked. `progress(done, total)` reports the guest bytes covered.
pub fn commit(plan: CommitPlan, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
    let size = plan.size();
    let base = plan.base.image();
    let mut buf = vdisk_block::AlignedBuf::new(CHUNK as usize);
    let mut pos = 0;
    while pos < size {
        let (what, len) = status_above(&plan.layers, pos, (size - pos).min(CHUNK))?;
        match what {
            Above::Base => {}
            Above::Zero => write_zeroes(&*base, pos, len)?,
            Above::Data(i) => {
                let b = &mut buf[..len as usize];
                plan.layers[i].image().read_at(b, pos)?;
                base.write_at(b, pos)?;
            }
        }
        pos += len;
        progress(pos, size);
    }
    base.flush()?;
    let top = &plan.layers[0];
    if plan.empty_top {
        let Driver::Qcow2(q) = &top.driver else {
            return Err(Error::unsupported(format!(
                "emptying a {} image after a commit is not supported",
                top.format
            ))
            .with_path(&top.filename));
        };
        // Every cluster discarded, reading through to the base that now holds its data, and
        // the file cut after the last cluster in use, as qemu's qcow2_make_empty leaves it.
        q.make_empty()
            .and_then(|()| q.flush())
            .map_err(|e| e.with_path(&top.filename))?;
    }
    progress(size, size);
    Ok(())
}

/// Opens and commits in one call.
pub fn commit_path(
    path: &Path,
    opts: &CommitOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    commit(open_commit(path, opts)?, progress)
}
