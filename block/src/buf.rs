//! Page-aligned I/O buffers.
//!
//! A `vec![0u8; 2 << 20]` comes from glibc's `mmap` path and starts 16 bytes past a page
//! boundary. The kernel's copies between the page cache and such a buffer run misaligned:
//! measured on this project's 2-core VM, reading a warm 2 GiB file in 2 MiB `pread`s took
//! 0.25 s of system time into a buffer at page + 16 and 0.12 s into a page-aligned one, and
//! overwriting cached pages 0.05 s against 0.035 s. Every bulk copy path (convert, compare,
//! dd, commit, rebase, the NBD server) reads into an [`AlignedBuf`] instead.
//!
//! ```
//! use vdisk_block::AlignedBuf;
//!
//! let mut buf = AlignedBuf::new(8192);
//! assert_eq!(buf.len(), 8192);
//! assert_eq!(buf.as_ptr() as usize % vdisk_block::buf::ALIGN, 0);
//! buf[0] = 1;
//! assert!(buf[1..].iter().all(|&b| b == 0));
//! ```

use std::ops::{Deref, DerefMut};

/// The alignment of every [`AlignedBuf`]: a page.
pub const ALIGN: usize = 4096;

/// A zero-initialised byte buffer whose first byte lies on a page boundary.
///
/// It over-allocates by less than a page and hands out the aligned window, so it needs no
/// `unsafe`.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A buffer of `len` zero bytes.
    pub fn new(len: usize) -> Self {
        let storage = vec![0u8; len + ALIGN - 1];
        // `align_offset` may give up (usize::MAX) in theory; then fall back to the start,
        // which is still correct, only slower.
        let start = match storage.as_ptr().align_offset(ALIGN) {
            s if s < ALIGN => s,
            _ => 0,
        };
        AlignedBuf {
            storage,
            start,
            len,
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed_at_every_size() {
        for len in [0, 1, 4095, 4096, 4097, 2 << 20] {
            let b = AlignedBuf::new(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % ALIGN, 0, "len {len}");
            assert!(b.iter().all(|&x| x == 0));
        }
    }
}
