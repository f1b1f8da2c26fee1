//! The storage layer every part of vdisk stands on.
//!
//! One small trait, [`BlockDevice`], does positional I/O: exact-fill [`read_at`], [`write_at`],
//! [`flush`] and [`size`], all through `&self` so one open image serves many threads. Files,
//! image formats, partitions and logical volumes all implement it, and each is a device over
//! another device:
//!
//! ```text
//!   guest filesystem (guestfs)
//!        |  reads /etc/hostname
//!   LV view  -> partition view  -> qcow2 image  -> backing raw image
//!        \___________ every arrow is a BlockDevice __________/
//! ```
//!
//! Image formats add [`Image`]: they answer "where do guest bytes `[off, off+len)` live?" with a
//! [`Mapping`], so the engine above can skip holes and zeros without reading them and walk a
//! backing chain for `map`. Optional abilities are tiny traits a caller asks for by name:
//! [`WriteZeroes`], [`Discard`], [`Resize`].
//!
//! ```
//! use vdisk_block::{BlockDevice, MemDevice};
//!
//! let dev = MemDevice::new(4096);
//! dev.write_at(b"hello", 100).unwrap();
//! let mut buf = [0u8; 5];
//! dev.read_at(&mut buf, 100).unwrap();
//! assert_eq!(&buf, b"hello");
//! // Reading past the end is an error, never a short read.
//! assert!(dev.read_at(&mut buf, 4094).is_err());
//! ```
//!
//! [`read_at`]: BlockDevice::read_at
//! [`write_at`]: BlockDevice::write_at
//! [`flush`]: BlockDevice::flush
//! [`size`]: BlockDevice::size

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod buf;
pub mod bytes;
pub mod cache;
mod error;
mod mapping;
mod mem;
mod slice;

use std::sync::Arc;

pub use buf::AlignedBuf;
pub use error::{Error, Result};
pub use mapping::{MapKind, Mapping};
pub use mem::MemDevice;
pub use slice::Slice;

/// Positional I/O on something with a fixed size: a file, an image, a partition.
///
/// Reads and writes transfer the whole buffer or fail; there are no short transfers. A request
/// reaching past [`size`](BlockDevice::size) fails with [`Error::InvalidArgument`].
/// Implementations lock internally; every method takes `&self`.
pub trait BlockDevice: Send + Sync {
    /// The size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;

    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;

    /// True when writes will be refused.
    fn is_read_only(&self) -> bool {
        false
    }
}

/// Conveniences over any [`BlockDevice`].
pub trait BlockDeviceExt: BlockDevice {
    /// Checks that `[offset, offset + len)` lies inside the device and returns its end.
    fn check_range(&self, offset: u64, len: u64) -> Result<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(end),
            _ => Err(Error::invalid(format!(
                "request for {len} bytes at offset {offset} reaches past the end ({} bytes)",
                self.size()
            ))),
        }
    }

    /// Writes `len` zero bytes at `offset` by writing a buffer of zeros, for devices that have no
    /// faster way (see [`WriteZeroes`]).
    fn write_zeroes_by_writing(&self, offset: u64, len: u64) -> Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; usize::try_from(len.min(CHUNK)).unwrap_or(0)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            // n <= CHUNK, which fits in usize
            self.write_at(&zeros[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }
}

impl<T: BlockDevice + ?Sized> BlockDeviceExt for T {}

/// A disk image: a [`BlockDevice`] of guest bytes that can say where those bytes live.
pub trait Image: BlockDevice {
    /// The format's name as qemu-img prints it ("raw", "qcow2").
    fn format_name(&self) -> &'static str;

    /// Describes the guest bytes starting at `offset`: one extent of at most `max_len` bytes
    /// that all share one [`MapKind`]. Past the end it returns [`MapKind::Eof`].
    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping>;

    /// The image that supplies [`MapKind::Unallocated`] ranges, if one is attached.
    fn backing(&self) -> Option<&Arc<dyn Image>> {
        None
    }

    /// The image's fast way to write zeros, if it has one. Wrappers forward it, so a caller
    /// holding a `dyn Image` can ask for exactly the ability it needs.
    fn as_write_zeroes(&self) -> Option<&(dyn WriteZeroes + Send + Sync)> {
        None
    }

    /// The image's discard ability, if it has one.
    fn as_discard(&self) -> Option<&(dyn Discard + Send + Sync)> {
        None
    }

    /// The image's resize ability, if it has one.
    fn as_resize(&self) -> Option<&(dyn Resize + Send + Sync)> {
        None
    }
}

/// Writing zeros without transferring them (fallocate zero-range, qcow2 zero clusters).
pub trait WriteZeroes {
    /// Makes `[offset, offset + len)` read as zeros. With `may_unmap`, the storage under it
    /// may be released (a hole), not just overwritten.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()>;
}

/// Releasing storage the guest no longer needs.
pub trait Discard {
    /// Declares `[offset, offset + len)` unused. What it reads as afterwards is format-defined:
    /// zeros for a raw file with holes, the backing file's bytes for a qcow2 overlay.
    fn discard(&self, offset: u64, len: u64) -> Result<()>;
}

/// How much storage to reserve when an image is created or grown, as qemu's
/// `preallocation=` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Reserve nothing: a sparse file.
    #[default]
    Off,
    /// Allocate format metadata only (qcow2); the same as `Off` for raw.
    Metadata,
    /// Reserve blocks with `fallocate` without writing them.
    Falloc,
    /// Write zeros to every byte.
    Full,
}

impl Preallocation {
    /// The name qemu uses for this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Preallocation::Off => "off",
            Preallocation::Metadata => "metadata",
            Preallocation::Falloc => "falloc",
            Preallocation::Full => "full",
        }
    }
}

impl std::str::FromStr for Preallocation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "off" => Preallocation::Off,
            "metadata" => Preallocation::Metadata,
            "falloc" => Preallocation::Falloc,
            "full" => Preallocation::Full,
            _ => {
                return Err(Error::invalid(format!(
                    "invalid preallocation mode '{s}' (expected off, metadata, falloc or full)"
                )))
            }
        })
    }
}

/// Changing the size of a device.
pub trait Resize {
    /// Grows or shrinks to `new_size` bytes, reserving new space as `prealloc` says.
    fn resize(&self, new_size: u64, prealloc: Preallocation) -> Result<()>;
}

impl<T: BlockDevice + ?Sized> BlockDevice for Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn is_read_only(&self) -> bool {
        (**self).is_read_only()
    }
}

impl<T: BlockDevice + ?Sized> BlockDevice for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn is_read_only(&self) -> bool {
        (**self).is_read_only()
    }
}
