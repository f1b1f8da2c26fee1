//! An in-memory device: the model that tests and property tests compare real layers against.

use std::sync::RwLock;

use crate::{BlockDevice, BlockDeviceExt, Discard, Error, Image, MapKind, Mapping, Resize};
use crate::{Preallocation, Result, WriteZeroes};

/// A device held in a `Vec<u8>`, growable with [`Resize`]. As an [`Image`] it reports every
/// byte as data at the same offset (format "raw").
#[derive(Debug, Default)]
pub struct MemDevice {
    data: RwLock<Vec<u8>>,
}

impl MemDevice {
    /// A device of `size` zero bytes.
    pub fn new(size: usize) -> Self {
        MemDevice::from_vec(vec![0; size])
    }

    /// A device holding `data`.
    pub fn from_vec(data: Vec<u8>) -> Self {
        MemDevice {
            data: RwLock::new(data),
        }
    }

    /// A copy of the contents.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>> {
        let end = self.check_range(offset, len as u64)?;
        // Both ends are below the Vec's length, so they fit in usize.
        Ok(offset as usize..end as usize)
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data.read().unwrap_or_else(|e| e.into_inner())[r]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let r = self.range(offset, buf.len())?;
        self.data.write().unwrap_or_else(|e| e.into_inner())[r].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

impl Image for MemDevice {
    fn format_name(&self) -> &'static str {
        "raw"
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let size = self.size();
        if offset >= size {
            return Ok(Mapping {
                offset,
                len: 0,
                kind: MapKind::Eof,
            });
        }
        Ok(Mapping {
            offset,
            len: max_len.min(size - offset),
            kind: MapKind::Data {
                host_offset: offset,
            },
        })
    }

    fn as_write_zeroes(&self) -> Option<&(dyn WriteZeroes + Send + Sync)> {
        Some(self)
    }
    fn as_discard(&self) -> Option<&(dyn Discard + Send + Sync)> {
        Some(self)
    }
    fn as_resize(&self) -> Option<&(dyn Resize + Send + Sync)> {
        Some(self)
    }
}

impl WriteZeroes for MemDevice {
    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> Result<()> {
        let len = usize::try_from(len).map_err(|_| Error::invalid("length too large"))?;
        let r = self.range(offset, len)?;
        self.data.write().unwrap_or_else(|e| e.into_inner())[r].fill(0);
        Ok(())
    }
}

impl Discard for MemDevice {
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len, true)
    }
}

impl Resize for MemDevice {
    fn resize(&self, new_size: u64, _prealloc: Preallocation) -> Result<()> {
        let n = usize::try_from(new_size).map_err(|_| Error::invalid("size too large"))?;
        self.data
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .resize(n, 0);
        Ok(())
    }
}
