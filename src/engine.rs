//! The engine shared by `map`, `compare` and `convert`: what each guest range of a whole
//! backing chain is, found from the formats' mappings without reading guest data.
//!
//! The walk follows qemu's block-status rules so that `vdisk map` prints what `qemu-img map`
//! prints:
//!
//! ```text
//!   depth 0  overlay.qcow2   data / zero  -> answer here (present)
//!                            unallocated  -> ask the backing image, depth + 1
//!                            past the backing file's end -> zeros here (not present)
//!   depth n  base.raw        data / hole  -> answer (present)
//!   no backing left          unallocated  -> zeros (not present)
//! ```

use vdisk_block::{Image, MapKind, Result};

use crate::open::OpenedImage;

/// One extent of the chain's guest bytes that share one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainExtent {
    /// First guest byte.
    pub start: u64,
    /// Length in bytes (never zero).
    pub length: u64,
    /// How many backing links down the answer came from (0 is the top image).
    pub depth: usize,
    /// Some layer allocated the range (qemu's `present`): false when no layer holds it.
    pub present: bool,
    /// The range reads as zeros.
    pub zero: bool,
    /// A layer holds data for the range.
    pub data: bool,
    /// The data is stored compressed.
    pub compressed: bool,
    /// Where the bytes are in the file of that layer, when known.
    pub offset: Option<u64>,
    /// The file holding the bytes at `offset`, when known.
    pub file: Option<String>,
}

impl ChainExtent {
    /// The guest offset one past the extent.
    pub fn end(&self) -> u64 {
        self.start + self.length
    }

    /// Whether `next` continues this extent with the same status (qemu-img map's merge rule).
    pub fn can_merge(&self, next: &ChainExtent) -> bool {
        self.end() == next.start
            && self.depth == next.depth
            && self.present == next.present
            && self.zero == next.zero
            && self.data == next.data
            && self.compressed == next.compressed
            && self.file == next.file
            && match (self.offset, next.offset) {
                (None, None) => true,
                (Some(a), Some(b)) => a + self.length == b,
                _ => false,
            }
    }
}

/// The status of the chain at `offset`, for at most `max_len` bytes (clipped to the image).
/// Returns `None` at or past the end of the image.
pub fn chain_status(top: &OpenedImage, offset: u64, max_len: u64) -> Result<Option<ChainExtent>> {
    status(top, offset, max_len, false)
}

/// The status `qemu-img map` and `measure` report: as [`chain_status`], except that a layer
/// whose qemu driver has no block status (vhdx) reads as data allocated at that layer, at no
/// known offset, wherever the walk reaches it.
pub fn reported_status(
    top: &OpenedImage,
    offset: u64,
    max_len: u64,
) -> Result<Option<ChainExtent>> {
    status(top, offset, max_len, true)
}

fn status(
    top: &OpenedImage,
    offset: u64,
    max_len: u64,
    as_qemu: bool,
) -> Result<Option<ChainExtent>> {
    let size = top.image().size();
    if offset >= size || max_len == 0 {
        return Ok(None);
    }
    let mut len = max_len.min(size - offset);
    let mut layer = top;
    let mut depth = 0;
    loop {
        let image = layer.image();
        if as_qemu {
            if let crate::open::Driver::Other(o) = &layer.driver {
                if o.opaque_block_status() {
                    return Ok(Some(ChainExtent {
                        start: offset,
                        length: len,
                        depth,
                        present: true,
                        zero: false,
                        data: true,
                        compressed: false,
                        offset: None,
                        file: None,
                    }));
                }
            }
        }
        let m = image.map(offset, len)?;
        len = m.len.min(len).max(1);
        let here = |present, zero, data, compressed, host: Option<u64>| ChainExtent {
            start: offset,
            length: len,
            depth,
            present,
            zero,
            data,
            compressed,
            offset: host,
            file: host.map(|_| data_file_name(layer, offset)),
        };
        match m.kind {
            MapKind::Data { host_offset } => {
                let mut ext = here(true, false, true, false, Some(host_offset));
                let recurse = if let crate::open::Driver::Other(o) = &layer.driver {
                    o.recurse_file(offset)
                        .map(|f| std::sync::Arc::new(crate::protocol::Protocol::File(f)))
                } else if layer.backing.is_none()
                    && !has_backing_name(layer)
                    && layer.metadata_preallocated()
                {
                    Some(layer.data_file().clone())
                } else {
                    None
                };
                if let Some(file) = recurse {
                    // qemu's BDRV_BLOCK_RECURSE: ask the host file whether the cluster is a
                    // hole; a hole (or the file's end) reads as zeros.
                    let fm = Image::map(&*file, host_offset, ext.length)?;
                    match fm.kind {
                        MapKind::Eof => ext.zero = true,
                        kind => {
                            ext.length = fm.len.clamp(1, ext.length);
                            ext.zero = kind.is_zero();
                        }
                    }
                }
                return Ok(Some(ext));
            }
            MapKind::Zero { host_offset } => {
                return Ok(Some(here(true, true, false, false, host_offset)))
            }
            MapKind::Compressed => return Ok(Some(here(true, false, true, true, None))),
            MapKind::Eof => {
                // The format said the range ends early; it reads as zeros.
                return Ok(Some(here(false, true, false, false, None)));
            }
            MapKind::Unallocated { host_offset } => match layer.backing.as_deref() {
                // No backing image: zeros, with the reserved storage qemu still reports.
                None => return Ok(Some(here(false, true, false, false, host_offset))),
                Some(b) => {
                    let bsize = b.image().size();
                    if offset >= bsize {
                        // Past the backing file's end the overlay reads zeros.
                        return Ok(Some(here(false, true, false, false, None)));
                    }
                    len = len.min(bsize - offset);
                    layer = b;
                    depth += 1;
                }
            },
            // A kind this engine does not know yet: data of this layer, read through it.
            _ => return Ok(Some(here(true, false, true, false, None))),
        }
    }
}

/// Whether the image names a backing file (opened or not): qemu recurses into the host file
/// only for images without one.
fn has_backing_name(layer: &OpenedImage) -> bool {
    layer.driver.backing_file_name().is_some()
}

/// The file a layer's data offsets refer to, named as it was opened (qemu prints the
/// resolved name of a backing file, and the data file's name for external data).
fn data_file_name(layer: &OpenedImage, offset: u64) -> String {
    if let crate::open::Driver::Other(o) = &layer.driver {
        if let Some(name) = o.data_file_name(offset) {
            return name;
        }
    }
    layer.data_file().path().to_string_lossy().into_owned()
}

/// Iterates merged extents over `[start, start + length)` of the chain.
pub fn chain_extents(
    top: &OpenedImage,
    start: u64,
    length: u64,
) -> impl Iterator<Item = Result<ChainExtent>> + '_ {
    let end = start.saturating_add(length).min(top.image().size());
    let mut pos = start;
    let mut pending: Option<ChainExtent> = None;
    let mut failed = false;
    std::iter::from_fn(move || loop {
        if failed {
            return None;
        }
        if pos >= end {
            return pending.take().map(Ok);
        }
        // Ask for large ranges; the formats clip to what shares one status.
        match reported_status(top, pos, end - pos) {
            Err(e) => {
                failed = true;
                return Some(Err(e));
            }
            Ok(None) => {
                pos = end;
            }
            Ok(Some(ext)) => {
                pos = ext.end();
                match pending.take() {
                    None => pending = Some(ext),
                    Some(mut p) if p.can_merge(&ext) => {
                        p.length += ext.length;
                        pending = Some(p);
                    }
                    Some(p) => {
                        pending = Some(ext);
                        return Some(Ok(p));
                    }
                }
            }
        }
    })
}
