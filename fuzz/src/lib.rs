//! Helpers shared by the fuzz targets: devices over fuzzer bytes, and bounded walks that read
//! through every layer without letting a hostile image make the harness itself slow.
use std::sync::Arc;

use vdisk_block::{BlockDevice, Image, MapKind, MemDevice};

/// Bytes read per target run at most, so a huge guest size costs the harness nothing.
pub const READ_BUDGET: u64 = 4 << 20;
/// Mappings asked for per walk at most.
pub const MAX_MAPPINGS: usize = 512;

/// A device holding `data`.
pub fn mem(data: &[u8]) -> Arc<dyn BlockDevice> {
    Arc::new(MemDevice::from_vec(data.to_vec()))
}

/// Small numbers derived from the input, to choose read offsets: a simple FNV-1a walk, so a
/// mutation anywhere changes them.
pub struct Knobs(u64);

impl Knobs {
    /// Seeds from the input.
    pub fn new(data: &[u8]) -> Knobs {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for &b in data.iter().rev().take(64) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Knobs(h | 1)
    }

    /// The next pseudo-random number.
    pub fn next(&mut self) -> u64 {
        // xorshift64
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// Reads `len` bytes (capped) at `off` from `dev`, checking the result length; errors are fine.
pub fn read_some(dev: &dyn BlockDevice, off: u64, len: u64, budget: &mut u64) {
    let len = len.min(*budget).min(256 << 10);
    if len == 0 {
        return;
    }
    *budget -= len;
    let mut buf = vec![0u8; len as usize];
    let _ = dev.read_at(&mut buf, off);
}

/// Reads a device at a few places: the start, the end, across the middle and at offsets
/// chosen by `k`, plus a read that reaches past the end (which must fail, not panic).
pub fn read_device(dev: &dyn BlockDevice, k: &mut Knobs, budget: &mut u64) {
    let size = dev.size();
    read_some(dev, 0, size.min(64 << 10), budget);
    if size > 0 {
        read_some(dev, size - 1, 1, budget);
        read_some(dev, size / 2, size.min(4096), budget);
        let mut past = [0u8; 2];
        assert!(
            dev.read_at(&mut past, size - 1).is_err(),
            "a read past the end of the device succeeded"
        );
    }
    for _ in 0..4 {
        let off = k.below(size);
        let len = k.below(size - off + 1).min(128 << 10);
        read_some(dev, off, len, budget);
    }
}

/// Walks the mapping of `img` from offset 0 (bounded by [`MAX_MAPPINGS`]), checking that
/// extents are contiguous and non-empty, reading a little of each; then reads at random offsets.
pub fn walk_image(img: &dyn Image, k: &mut Knobs, budget: &mut u64) {
    let size = img.size();
    let mut pos = 0u64;
    for _ in 0..MAX_MAPPINGS {
        if pos >= size {
            break;
        }
        let m = match img.map(pos, size - pos) {
            Ok(m) => m,
            Err(_) => break,
        };
        assert_eq!(m.offset, pos, "a mapping starts elsewhere than asked");
        if m.kind == MapKind::Eof {
            panic!("map says EOF at {pos} inside an image of {size} bytes");
        }
        assert!(m.len > 0, "an empty mapping at {pos}");
        assert!(m.end() <= size, "a mapping reaches past the end");
        read_some(img, pos, m.len.min(8192), budget);
        pos = m.end();
    }
    read_device(img, k, budget);
}
