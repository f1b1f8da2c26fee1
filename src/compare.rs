//! `compare`: do two images (with their chains) read the same, as `qemu-img compare` decides.
//!
//! Ranges that read as zeros in both images are never read. Where one side holds data and the
//! other does not, the data side must be all zeros. Differences are reported at the first
//! differing 512-byte sector, as qemu reports them.

use vdisk_block::{BlockDevice, Result};

use crate::engine::{chain_status, ChainExtent};
use crate::open::OpenedImage;

/// Bytes compared per read, as qemu-img's `IO_BUF_SIZE`.
const CHUNK: u64 = 2 << 20;
/// qemu reports mismatches at sector granularity.
const SECTOR: u64 = 512;

/// How two images compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    /// Same content (the shorter image reads as if padded with zeros when sizes differ).
    Identical,
    /// The first differing sector starts at this guest offset.
    ContentMismatch(u64),
    /// Strict mode: the sizes differ.
    StrictSizeMismatch,
    /// Strict mode: the allocation status differs at this offset.
    StrictStatusMismatch(u64),
}

/// What to compare and how.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompareOptions {
    /// Sizes and allocation must match too (`-s`).
    pub strict: bool,
}

/// Compares `a` and `b`. `progress(done, total)` is called as guest bytes are covered.
pub fn compare(
    a: &OpenedImage,
    b: &OpenedImage,
    opts: CompareOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Comparison> {
    let (ia, ib) = (a.image(), b.image());
    let (sa, sb) = (ia.size(), ib.size());
    if opts.strict && sa != sb {
        return Ok(Comparison::StrictSizeMismatch);
    }
    let common = sa.min(sb);
    let total = sa.max(sb);
    let mut buf_a = vdisk_block::AlignedBuf::new(CHUNK as usize);
    let mut buf_b = vdisk_block::AlignedBuf::new(CHUNK as usize);
    let mut off = 0;
    while off < common {
        let want = (common - off).min(CHUNK);
        let ea = chain_status(a, off, want)?.expect("inside the image");
        let eb = chain_status(b, off, want)?.expect("inside the image");
        let chunk = ea.length.min(eb.length);
        if opts.strict && status_bits(&ea) != status_bits(&eb) {
            return Ok(Comparison::StrictStatusMismatch(off));
        }
        let n = chunk as usize;
        if ea.zero && eb.zero {
            // Both read as zeros.
        } else if ea.present == eb.present {
            if ea.present {
                ia.read_at(&mut buf_a[..n], off)?;
                ib.read_at(&mut buf_b[..n], off)?;
                if let Some(at) = first_diff_sector(&buf_a[..n], &buf_b[..n]) {
                    return Ok(Comparison::ContentMismatch(off + at));
                }
            }
        } else {
            let (img, ext) = if ea.present { (&ia, &ea) } else { (&ib, &eb) };
            if !ext.zero {
                img.read_at(&mut buf_a[..n], off)?;
                if let Some(at) = first_nonzero_sector(&buf_a[..n]) {
                    return Ok(Comparison::ContentMismatch(off + at));
                }
            }
        }
        off += chunk;
        progress(off, total);
    }
    // The longer image's tail must read as zeros.
    let (longer, ilonger) = if sa > sb { (a, &ia) } else { (b, &ib) };
    while off < total {
        let e = chain_status(longer, off, (total - off).min(CHUNK))?.expect("inside the image");
        if e.present && !e.zero {
            let n = e.length as usize;
            ilonger.read_at(&mut buf_a[..n], off)?;
            if let Some(at) = first_nonzero_sector(&buf_a[..n]) {
                return Ok(Comparison::ContentMismatch(off + at));
            }
        }
        off += e.length;
        progress(off, total);
    }
    Ok(Comparison::Identical)
}

/// The parts of a status qemu's strict mode compares.
fn status_bits(e: &ChainExtent) -> (bool, bool, bool) {
    (e.present, e.zero, e.data)
}

fn first_diff_sector(a: &[u8], b: &[u8]) -> Option<u64> {
    let i = a.iter().zip(b).position(|(x, y)| x != y)? as u64;
    Some(i / SECTOR * SECTOR)
}

fn first_nonzero_sector(a: &[u8]) -> Option<u64> {
    let i = a.iter().position(|&x| x != 0)? as u64;
    Some(i / SECTOR * SECTOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_at_sector_start() {
        let a = vec![0u8; 4096];
        let mut b = a.clone();
        b[1000] = 1;
        assert_eq!(first_diff_sector(&a, &b), Some(512));
        assert_eq!(first_nonzero_sector(&b), Some(512));
        assert_eq!(first_diff_sector(&a, &a), None);
    }
}
