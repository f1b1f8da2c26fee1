//! Little- and big-endian field readers (and a writer) that never panic: what every on-disk
//! parser in vdisk (qcow2, VMDK, partition tables, LVM labels, ext4, FAT, ...) reads its
//! fields with.
//!
//! Every caller checks a structure's length before reading its fields, so an out-of-range read
//! here is a bug in the caller, not in the image; it reads as zero rather than panicking so a
//! hostile image can never turn such a bug into a crash.
//!
//! ```
//! use vdisk_block::bytes::{be32, le16, put};
//! let mut b = [0u8; 8];
//! put(&mut b, 2, 0x1234u16.to_le_bytes());
//! assert_eq!(le16(&b, 2), 0x1234);
//! assert_eq!(be32(&b, 6), 0); // past the end: zero, not a panic
//! ```

/// The little-endian `u16` at `off`, or 0 when `b` is too short.
pub fn le16(b: &[u8], off: usize) -> u16 {
    arr::<2>(b, off).map_or(0, u16::from_le_bytes)
}

/// The little-endian `u32` at `off`, or 0 when `b` is too short.
pub fn le32(b: &[u8], off: usize) -> u32 {
    arr::<4>(b, off).map_or(0, u32::from_le_bytes)
}

/// The little-endian `u64` at `off`, or 0 when `b` is too short.
pub fn le64(b: &[u8], off: usize) -> u64 {
    arr::<8>(b, off).map_or(0, u64::from_le_bytes)
}

/// The big-endian `u16` at `off`, or 0 when `b` is too short.
pub fn be16(b: &[u8], off: usize) -> u16 {
    arr::<2>(b, off).map_or(0, u16::from_be_bytes)
}

/// The big-endian `u32` at `off`, or 0 when `b` is too short.
pub fn be32(b: &[u8], off: usize) -> u32 {
    arr::<4>(b, off).map_or(0, u32::from_be_bytes)
}

/// The big-endian `u64` at `off`, or 0 when `b` is too short.
pub fn be64(b: &[u8], off: usize) -> u64 {
    arr::<8>(b, off).map_or(0, u64::from_be_bytes)
}

/// The byte at `off`, or 0 when `b` is too short.
pub fn u8_at(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}

fn arr<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// Overwrites `N` bytes at `off` when they fit (for zeroing checksum fields before hashing).
pub fn put<const N: usize>(b: &mut [u8], off: usize, v: [u8; N]) {
    if let Some(s) = off.checked_add(N).and_then(|end| b.get_mut(off..end)) {
        s.copy_from_slice(&v);
    }
}
