//! `convert`: copy a chain's guest bytes into another image, driven by mappings.
//!
//! ```text
//!   main thread: CHUNK-aligned windows of the guest -> bounded queue
//!   N workers:   chain_status() inside the window -> read the data parts only
//!                -> scan for zero runs -> write runs (or compress whole clusters)
//! ```
//!
//! Ranges the source maps as zero or unallocated are never read; data is read in large chunks
//! and scanned for zero runs of at least [`ConvertOptions::sparse_size`] bytes, which are left
//! as holes in a zero-initialised target instead of being written. Memory is bounded by the
//! workers' buffers: `workers x CHUNK` bytes plus a short queue of job descriptions.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};

use vdisk_block::{BlockDevice, Error, Preallocation, Result, WriteZeroes};
use vdisk_raw::RawFile;

use crate::engine::chain_status;
use crate::open::OpenedImage;

/// Bytes per job: a multiple of every qcow2 cluster size, so jobs never split a cluster.
const CHUNK: u64 = 2 << 20;
/// The most worker threads we start, whatever is asked: beyond this the disk, not the CPU,
/// is the limit, and each worker holds a CHUNK buffer.
pub const MAX_WORKERS: usize = 16;

/// How to copy.
#[derive(Debug, Clone, Copy)]
pub struct ConvertOptions {
    /// A run of zeros at least this long inside data is not written (`-S`, default 4 KiB);
    /// 0 writes every byte, zeros included, for a fully allocated target.
    pub sparse_size: u64,
    /// The target already reads as zeros everywhere (a new file, or `--target-is-zero`).
    pub target_is_zero: bool,
    /// Worker threads (`-m`); 0 means one per core.
    pub workers: usize,
    /// Make the target durable before returning. qemu-img convert's default cache mode for
    /// the target is `unsafe` (no final flush), and so is ours; pipelines that need the data
    /// on disk at once ask for it.
    pub flush: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            sparse_size: 4096,
            target_is_zero: true,
            workers: 0,
            flush: false,
        }
    }
}

/// One piece of work: guest bytes `[offset, offset + len)`, a CHUNK-aligned window.
#[derive(Debug, Clone, Copy)]
struct Job {
    offset: u64,
    len: u64,
}

/// Stores one whole cluster compressed (a qcow2 target under `convert -c`).
pub trait CompressedWriter: Sync {
    /// The cluster size compressed writes work in.
    fn cluster_size(&self) -> u64;
    /// Writes cluster `index` (its whole data; the last cluster may be short) compressed.
    fn write_compressed(&self, index: u64, data: &[u8]) -> Result<()>;
}

/// Where a conversion writes: a device, its fast way to write zeros when it has one (used
/// when the target is not known to read as zeros already), and a compressed writer for `-c`.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// The device written.
    pub dev: &'a dyn BlockDevice,
    /// Its write-zeroes ability, if any; without it zeros are written as data.
    pub zeroes: Option<&'a (dyn WriteZeroes + Sync)>,
    /// Write data clusters compressed through this, when set.
    pub compressed: Option<&'a dyn CompressedWriter>,
}

impl<'a> Target<'a> {
    /// A raw file target, which can punch holes.
    pub fn raw(file: &'a RawFile) -> Self {
        Target {
            dev: file,
            zeroes: Some(file),
            compressed: None,
        }
    }
}

/// Copies every guest byte of `src` to `dst` (at the same offsets). `progress(done, total)`
/// is called from the calling thread as work completes.
pub fn copy_image(
    src: &OpenedImage,
    dst: &dyn BlockDevice,
    opts: ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    copy_image_at(
        src,
        Target {
            dev: dst,
            zeroes: None,
            compressed: None,
        },
        0,
        opts,
        progress,
    )?;
    if opts.flush {
        dst.flush()?;
    }
    Ok(())
}

/// Copies every guest byte of `src` to `dst` starting at byte `base` of the target (several
/// sources are concatenated this way). Does not flush.
pub fn copy_image_at(
    src: &OpenedImage,
    dst: Target<'_>,
    base: u64,
    opts: ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let total = src.image().size();
    if base
        .checked_add(total)
        .is_none_or(|end| end > dst.dev.size())
    {
        return Err(Error::invalid("output file is smaller than input file"));
    }
    if let Some(c) = dst.compressed {
        if base % c.cluster_size() != 0 {
            return Err(Error::invalid(
                "a compressed conversion needs every source to start on a cluster boundary",
            ));
        }
    }
    let workers = match opts.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, MAX_WORKERS);
    let done = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let (tx, rx) = mpsc::sync_channel::<Job>(workers * 4);
    let rx = Mutex::new(rx);

    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            handles.push(s.spawn(|| {
                let image = src.image();
                let mut buf = vec![0u8; CHUNK as usize];
                loop {
                    let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(j) => j,
                        Err(_) => break,
                    };
                    if failed.load(Ordering::Relaxed) {
                        continue;
                    }
                    if let Err(e) = run_job(src, &*image, dst, base, job, &mut buf, opts) {
                        failed.store(true, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                    }
                    done.fetch_add(job.len, Ordering::Relaxed);
                }
            }));
        }
        // Hand out the windows in order; report progress between sends.
        let mut off = 0;
        while off < total && !failed.load(Ordering::Relaxed) {
            let job = Job {
                offset: off,
                len: (total - off).min(CHUNK),
            };
            off += job.len;
            if tx.send(job).is_err() {
                break;
            }
            progress(done.load(Ordering::Relaxed), total);
        }
        drop(tx);
        // The last jobs are in flight: keep the progress moving until the workers finish.
        while !handles.iter().all(|h| h.is_finished()) {
            progress(done.load(Ordering::Relaxed), total);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    progress(total, total);
    Ok(())
}

fn run_job(
    src: &OpenedImage,
    image: &dyn BlockDevice,
    dst: Target<'_>,
    base: u64,
    job: Job,
    buf: &mut [u8],
    opts: ConvertOptions,
) -> Result<()> {
    let data = &mut buf[..job.len as usize];
    // Walk the mapping inside the window: read what holds data, note what is known zero.
    let mut any_data = false;
    let mut pos = job.offset;
    let end = job.offset + job.len;
    while pos < end {
        let Some(ext) = chain_status(src, pos, end - pos)? else {
            break;
        };
        let r = (pos - job.offset) as usize..(ext.end() - job.offset) as usize;
        if ext.zero && !ext.data {
            data[r].fill(0);
        } else {
            image.read_at(&mut data[r], pos)?;
            any_data = true;
        }
        pos = ext.end();
    }
    let at = base + job.offset;
    if let Some(c) = dst.compressed {
        // Whole clusters, compressed; all-zero clusters stay unallocated in the new target.
        let cs = c.cluster_size() as usize;
        for (i, cluster) in data.chunks(cs).enumerate() {
            if any_data && !is_zero(cluster) {
                c.write_compressed(at / cs as u64 + i as u64, cluster)?;
            }
        }
        return Ok(());
    }
    if opts.sparse_size == 0 {
        // -S 0: every byte written, the target fully allocated.
        return dst.dev.write_at(data, at);
    }
    if !any_data {
        if !opts.target_is_zero {
            match dst.zeroes {
                Some(z) => z.write_zeroes(at, job.len, true)?,
                None => dst.dev.write_at(data, at)?,
            }
        }
        return Ok(());
    }
    write_runs(dst, data, at, opts)
}

/// Writes `data` (bytes for target offset `base`) as runs: zero runs of `sparse_size` bytes
/// or more (aligned to it) are skipped on a zero target, or zeroed without writing data when
/// the target can; everything else is written.
fn write_runs(dst: Target<'_>, data: &[u8], base: u64, opts: ConvertOptions) -> Result<()> {
    let g = usize::try_from(opts.sparse_size)
        .unwrap_or(usize::MAX)
        .max(1);
    let mut pos = 0;
    while pos < data.len() {
        // A run of granules that are all zero or all not.
        let first_end = (pos + g).min(data.len());
        let zero = is_zero(&data[pos..first_end]);
        let mut end = first_end;
        while end < data.len() {
            let next = (end + g).min(data.len());
            if is_zero(&data[end..next]) != zero {
                break;
            }
            end = next;
        }
        let at = base + pos as u64;
        match (zero, opts.target_is_zero, dst.zeroes) {
            (true, true, _) => {}
            (true, false, Some(z)) => z.write_zeroes(at, (end - pos) as u64, true)?,
            _ => dst.dev.write_at(&data[pos..end], at)?,
        }
        pos = end;
    }
    Ok(())
}

/// True when every byte is zero; compares sixteen bytes at a time.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(16);
    let wide = chunks
        .by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0);
    wide && chunks.remainder().iter().all(|&b| b == 0)
}

/// Converts `sources`, concatenated, into the raw image at `dst`: a new sparse file, or with
/// `existing` the file already there (qemu-img's `-n`), which must be large enough. On any
/// failure a target this call created is removed, so no short image is left looking valid.
pub fn convert_to_raw(
    sources: &[OpenedImage],
    dst: &Path,
    existing: bool,
    opts: ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let total = sources
        .iter()
        .try_fold(0u64, |acc, s| acc.checked_add(s.image().size()))
        .ok_or_else(|| Error::invalid("the sources together are too large"))?;
    let (target, opts) = if existing {
        let t = RawFile::open(
            dst,
            &vdisk_raw::OpenOptions {
                read_only: false,
                force_share: false,
            },
        )?;
        (t, opts)
    } else {
        let t = RawFile::create(dst, total, Preallocation::Off)?;
        let opts = ConvertOptions {
            target_is_zero: true,
            ..opts
        };
        (t, opts)
    };
    let result = (|| {
        let mut base = 0;
        for src in sources {
            let size = src.image().size();
            copy_image_at(src, Target::raw(&target), base, opts, &mut |d, _| {
                progress(base + d, total)
            })?;
            base += size;
        }
        if opts.flush {
            target.flush()?;
        }
        Ok(())
    })();
    if result.is_err() && !existing {
        drop(target);
        let _ = std::fs::remove_file(dst);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdisk_block::MemDevice;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 33]));
        let mut b = [0u8; 33];
        b[32] = 1;
        assert!(!is_zero(&b));
        b[32] = 0;
        b[3] = 1;
        assert!(!is_zero(&b));
    }

    #[test]
    fn only_nonzero_runs_are_written() {
        // A target of 0xff bytes shows which bytes were written.
        let dst = MemDevice::from_vec(vec![0xff; 4 * 4096]);
        let mut data = vec![0u8; 4 * 4096];
        data[10] = 1;
        data[3 * 4096 + 5] = 2;
        let target = Target {
            dev: &dst,
            zeroes: None,
            compressed: None,
        };
        write_runs(target, &data, 0, ConvertOptions::default()).unwrap();
        let out = dst.to_vec();
        assert_eq!(&out[..4096], &data[..4096]);
        assert!(out[4096..3 * 4096].iter().all(|&b| b == 0xff));
        assert_eq!(&out[3 * 4096..], &data[3 * 4096..]);
        // On a target not known to be zero, the zero run is zeroed too.
        let dst = MemDevice::from_vec(vec![0xff; 4 * 4096]);
        let target = Target {
            dev: &dst,
            zeroes: Some(&dst),
            compressed: None,
        };
        let opts = ConvertOptions {
            target_is_zero: false,
            ..Default::default()
        };
        write_runs(target, &data, 0, opts).unwrap();
        assert_eq!(dst.to_vec(), data);
    }
}
