//! `convert`: copy a chain's guest bytes into a new image, driven by mappings.
//!
//! Ranges the source maps as zero or unallocated are never read; data is read in large chunks
//! and scanned for zero runs of at least [`ConvertOptions::sparse_size`] bytes, which are left
//! as holes in a zero-initialised target instead of being written.

use std::path::Path;

use vdisk_block::{BlockDevice, Preallocation, Result};
use vdisk_raw::RawFile;

use crate::engine::chain_status;
use crate::open::OpenedImage;

/// Bytes moved per read.
const CHUNK: u64 = 4 << 20;

/// How to copy.
#[derive(Debug, Clone, Copy)]
pub struct ConvertOptions {
    /// A run of zeros at least this long inside data is not written (`-S`, default 4 KiB);
    /// 0 writes every byte, zeros included, for a fully allocated target.
    pub sparse_size: u64,
    /// The target already reads as zeros everywhere (a new file, or `--target-is-zero`).
    pub target_is_zero: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            sparse_size: 4096,
            target_is_zero: true,
        }
    }
}

/// Copies every guest byte of `src` to `dst` (at the same offsets). `progress(done, total)`
/// is called after each chunk.
pub fn copy_image(
    src: &OpenedImage,
    dst: &dyn BlockDevice,
    opts: ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let image = src.image();
    let total = image.size();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0;
    let skip_zeros = opts.target_is_zero && opts.sparse_size > 0;
    while off < total {
        let Some(ext) = chain_status(src, off, (total - off).min(CHUNK))? else {
            break;
        };
        let n = ext.length as usize;
        if ext.zero && !ext.data {
            if !skip_zeros {
                buf[..n].fill(0);
                dst.write_at(&buf[..n], off)?;
            }
        } else {
            image.read_at(&mut buf[..n], off)?;
            if skip_zeros {
                write_nonzero_runs(dst, &buf[..n], off, opts.sparse_size)?;
            } else {
                dst.write_at(&buf[..n], off)?;
            }
        }
        off += ext.length;
        progress(off, total);
    }
    dst.flush()
}

/// Writes `data` (guest bytes at `base`) except for zero runs of `min_zero` bytes or more,
/// aligned to `min_zero`.
fn write_nonzero_runs(dst: &dyn BlockDevice, data: &[u8], base: u64, min_zero: u64) -> Result<()> {
    let g = usize::try_from(min_zero).unwrap_or(usize::MAX).max(1);
    let mut run_start: Option<usize> = None;
    let mut i = 0;
    while i < data.len() {
        let end = (i + g).min(data.len());
        let zero = is_zero(&data[i..end]);
        match (zero, run_start) {
            (false, None) => run_start = Some(i),
            (true, Some(s)) => {
                dst.write_at(&data[s..i], base + s as u64)?;
                run_start = None;
            }
            _ => {}
        }
        i = end;
    }
    if let Some(s) = run_start {
        dst.write_at(&data[s..], base + s as u64)?;
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

/// Converts `src` into a new sparse raw image at `dst`. On any failure the half-written target
/// is removed, so no short image is left looking valid.
pub fn convert_to_raw(
    src: &OpenedImage,
    dst: &Path,
    opts: ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let size = src.image().size();
    let target = RawFile::create(dst, size, Preallocation::Off)?;
    let result = copy_image(src, &target, opts, progress);
    if result.is_err() {
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
        write_nonzero_runs(&dst, &data, 0, 4096).unwrap();
        let out = dst.to_vec();
        assert_eq!(&out[..4096], &data[..4096]);
        assert!(out[4096..3 * 4096].iter().all(|&b| b == 0xff));
        assert_eq!(&out[3 * 4096..], &data[3 * 4096..]);
    }
}
