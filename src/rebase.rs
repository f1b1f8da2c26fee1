//! `rebase`: give a qcow2 overlay a new backing file (or none) without changing what the
//! guest reads, as `qemu-img rebase` does.
//!
//! ```text
//!   safe mode:  overlay range unallocated in the overlay itself
//!                 old chain reads X, new backing reads Y
//!                 X == Y (cluster by cluster)  -> leave it unallocated
//!                 X != Y                       -> write X into the overlay
//!               then record the new backing name and format in the header
//!   unsafe (-u): only the header changes
//! ```
//!
//! Ranges that read as zeros in both the old chain and the new backing are never read, and
//! the backing files are only ever opened read-only: a rebase writes the overlay alone.

use std::path::Path;

use vdisk_block::{BlockDevice, Error, Image, MapKind, Result, WriteZeroes};
use vdisk_qcow2::amend::{amend, AmendOptions};
use vdisk_qcow2::Qcow2;

use crate::engine::chain_status;
use crate::open::{open, resolve_backing, BackingPolicy, Driver, Format, OpenOptions, OpenedImage};

/// Guest bytes compared per step. Whole clusters of every size fit (qcow2's largest is 2 MiB).
const CHUNK: u64 = 2 << 20;

/// What `qemu-img rebase` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct RebaseOptions {
    /// The overlay's format; `None` probes.
    pub format: Option<Format>,
    /// The new backing file name as it will be recorded; empty makes the image standalone.
    /// A relative name is opened relative to the overlay's directory, as qemu resolves it.
    pub backing: String,
    /// The new backing file's format, recorded with its name (qemu requires it).
    pub backing_format: Option<Format>,
    /// `-u`: change the header only; the old backing file need not exist.
    pub unsafe_mode: bool,
    /// `-U`: open the backing files without taking their locks.
    pub force_share: bool,
    /// `-c`: write the clusters copied into the overlay compressed (whole clusters, as qemu
    /// does even where only one subcluster differs).
    pub compress: bool,
}

/// Opens the overlay as a rebase of it needs: read-write, with its old chain unless `-u`.
/// Refuses formats without backing files with qemu's message.
pub fn open_overlay(path: &Path, opts: &RebaseOptions) -> Result<OpenedImage> {
    let img = open(
        path,
        &OpenOptions {
            format: opts.format,
            read_only: false,
            force_share: false,
            backing: if opts.unsafe_mode {
                BackingPolicy::Ignore
            } else {
                BackingPolicy::Follow
            },
            snapshot: None,
        },
    )?;
    if opts.compress && !matches!(img.driver, Driver::Qcow2(_)) {
        return Err(Error::unsupported(
            "Compression not supported for this file format",
        ));
    }
    if !matches!(img.driver, Driver::Qcow2(_)) {
        return Err(Error::unsupported(format!(
            "Could not change the backing file to '{}': Operation not supported",
            opts.backing
        ))
        .with_path(path));
    }
    if !opts.backing.is_empty() && opts.backing_format.is_none() {
        // qemu 10 checks this only after copying; nothing is written here before it fails.
        return Err(Error::invalid(format!(
            "Could not change the backing file to '{}': backing format must be specified",
            opts.backing
        ))
        .with_path(path));
    }
    Ok(img)
}

/// Rebases `img`, opened by [`open_overlay`] with the same `opts`. `progress(done, total)`
/// reports the guest bytes covered.
pub fn rebase(
    img: OpenedImage,
    opts: &RebaseOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let path = img.filename.clone();
    if !opts.unsafe_mode {
        let new_backing = if opts.backing.is_empty() {
            None
        } else {
            Some(open(
                resolve_backing(&path, &opts.backing),
                &OpenOptions {
                    format: opts.backing_format,
                    read_only: true,
                    force_share: opts.force_share,
                    backing: BackingPolicy::Follow,
                    snapshot: None,
                },
            )?)
        };
        let Driver::Qcow2(q) = &img.driver else {
            unreachable!("open_overlay refuses other formats");
        };
        copy_differences(&img, q, new_backing.as_ref(), opts.compress, progress)?;
        img.image().flush()?;
    }
    let file = img.file.clone();
    // Close the overlay (and both chains) before its header is rewritten through the file.
    drop(img);
    amend(
        file,
        &AmendOptions {
            backing_file: Some(opts.backing.clone()),
            backing_fmt: (!opts.backing.is_empty())
                .then(|| opts.backing_format.map(|f| f.name().to_string()))
                .flatten(),
            ..AmendOptions::default()
        },
    )
    .map_err(|e| e.with_path(&path))
}

/// Writes into the overlay every cluster (subcluster, with extended L2 entries) of its
/// unallocated ranges whose content through the old chain differs from the new backing's
/// (zeros past either backing's end, or for no new backing at all).
fn copy_differences(
    img: &OpenedImage,
    q: &Qcow2,
    new: Option<&OpenedImage>,
    compress: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let top = img.image();
    let size = top.size();
    let header = q.header();
    let cs = header.cluster_size();
    // qemu compares and copies in subclusters, so a rebase allocates no more than differs;
    // compressed clusters are written whole.
    let grain = if header.extended_l2() && !compress {
        cs / 32
    } else {
        cs
    };
    let mut bufs = Buffers {
        old: vdisk_block::AlignedBuf::new(CHUNK as usize),
        new: vdisk_block::AlignedBuf::new(CHUNK as usize),
        out: Vec::new(),
        compress,
        cluster_size: cs,
    };
    let mut pos = 0;
    while pos < size {
        let want = (size - pos).min(CHUNK);
        // The overlay's own mapping: only what it does not hold can change with the backing.
        let m = Image::map(q, pos, want)?;
        let len = m.len.clamp(1, want);
        if matches!(m.kind, MapKind::Unallocated { .. } | MapKind::Eof) {
            rebase_range(img, q, new, pos, len, grain, &mut bufs)?;
        }
        pos += len;
        progress(pos, size);
    }
    progress(size, size);
    Ok(())
}

struct Buffers {
    old: vdisk_block::AlignedBuf,
    new: vdisk_block::AlignedBuf,
    out: Vec<u8>,
    /// Write the runs compressed, cluster by cluster.
    compress: bool,
    cluster_size: u64,
}

/// One range the overlay leaves to its backing (at most [`CHUNK`] bytes): walk the old and
/// new statuses together, skip what both read as zeros, compare the rest in pieces of `cs`
/// bytes (a cluster or a subcluster).
fn rebase_range(
    img: &OpenedImage,
    q: &Qcow2,
    new: Option<&OpenedImage>,
    start: u64,
    len: u64,
    cs: u64,
    bufs: &mut Buffers,
) -> Result<()> {
    let top = img.image();
    let new_dev = new.map(|n| n.image());
    let new_size = new_dev.as_ref().map_or(0, |d| d.size());
    let end = start + len;
    let mut pos = start;
    // Clusters found different, as a run [first byte, end) waiting to be written.
    let mut dirty: Option<(u64, u64)> = None;
    while pos < end {
        let old_ext = chain_status(img, pos, end - pos)?
            .ok_or_else(|| Error::invalid("rebase ran past the end of the image"))?;
        let (new_len, new_zero) = match new {
            Some(n) if pos < new_size => {
                let e = chain_status(n, pos, (end - pos).min(new_size - pos))?
                    .ok_or_else(|| Error::invalid("rebase ran past the new backing's end"))?;
                (e.length, e.zero && !e.data)
            }
            _ => (end - pos, true),
        };
        let seg = old_ext.length.min(new_len).clamp(1, end - pos);
        let old_zero = old_ext.zero && !old_ext.data;
        if !(old_zero && new_zero) {
            let n = seg as usize;
            if old_zero {
                bufs.old[..n].fill(0);
            } else {
                top.read_at(&mut bufs.old[..n], pos)?;
            }
            match &new_dev {
                Some(d) if !new_zero => {
                    // The part past the new backing's end reads as zeros.
                    let inside = (new_size.saturating_sub(pos)).min(seg) as usize;
                    d.read_at(&mut bufs.new[..inside], pos)?;
                    bufs.new[inside..n].fill(0);
                }
                _ => bufs.new[..n].fill(0),
            }
            // Compare piece by piece, each piece inside one cluster.
            let mut p = pos;
            while p < pos + seg {
                let cluster = p - p % cs;
                let piece_end = (cluster + cs).min(pos + seg);
                let r = (p - pos) as usize..(piece_end - pos) as usize;
                if bufs.old[r.clone()] != bufs.new[r] {
                    let c_end = (cluster + cs).min(top.size());
                    dirty = match dirty {
                        Some((a, b)) if b >= cluster => Some((a, b.max(c_end))),
                        Some(run) => {
                            write_run(img, q, run, bufs)?;
                            Some((cluster, c_end))
                        }
                        None => Some((cluster, c_end)),
                    };
                }
                p = piece_end;
            }
        }
        pos += seg;
    }
    if let Some(run) = dirty {
        write_run(img, q, run, bufs)?;
    }
    Ok(())
}

/// Writes whole clusters (or subclusters) `[a, b)` of the overlay with what the guest reads
/// there now (through the old chain): as zero clusters when that is all zeros, compressed
/// cluster by cluster under `-c`.
fn write_run(img: &OpenedImage, q: &Qcow2, (a, b): (u64, u64), bufs: &mut Buffers) -> Result<()> {
    let top = img.image();
    let n = (b - a) as usize;
    let out = &mut bufs.out;
    out.resize(n, 0);
    top.read_at(&mut out[..n], a)?;
    if bufs.compress {
        let cs = bufs.cluster_size;
        let mut p = a;
        while p < b {
            let end = (p + cs).min(b);
            let piece = &out[(p - a) as usize..(end - a) as usize];
            q.write_compressed(p / cs, piece)
                .map_err(|e| e.with_path(&img.filename))?;
            p = end;
        }
        return Ok(());
    }
    if out[..n].iter().all(|&x| x == 0) {
        q.write_zeroes(a, b - a, false)
            .map_err(|e| e.with_path(&img.filename))
    } else {
        top.write_at(&out[..n], a)
    }
}
