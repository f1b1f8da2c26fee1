//! A window onto part of another device: how partitions and logical-volume segments are seen.

use crate::{BlockDevice, BlockDeviceExt, Error, Result};

/// The bytes `[start, start + len)` of an inner device, seen as a device of its own.
#[derive(Debug)]
pub struct Slice<D> {
    inner: D,
    start: u64,
    len: u64,
    read_only: bool,
}

impl<D: BlockDevice> Slice<D> {
    /// A view of `len` bytes of `inner` from `start`. Fails when the window does not fit.
    pub fn new(inner: D, start: u64, len: u64) -> Result<Self> {
        match start.checked_add(len) {
            Some(end) if end <= inner.size() => {}
            _ => {
                return Err(Error::invalid(format!(
                    "window of {len} bytes at {start} does not fit in a device of {} bytes",
                    inner.size()
                )))
            }
        }
        let read_only = inner.is_read_only();
        Ok(Slice {
            inner,
            start,
            len,
            read_only,
        })
    }

    /// Refuses writes through this view even when the inner device takes them.
    #[must_use]
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// The device underneath.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Where the window starts in the inner device.
    pub fn start(&self) -> u64 {
        self.start
    }
}

impl<D: BlockDevice> BlockDevice for Slice<D> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.inner.read_at(buf, self.start + offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::invalid("the device is read-only"));
        }
        self.check_range(offset, buf.len() as u64)?;
        self.inner.write_at(buf, self.start + offset)
    }

    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemDevice;

    #[test]
    fn slice_offsets_and_bounds() {
        let mem = MemDevice::from_vec((0..=255).collect());
        let s = Slice::new(&mem, 16, 32).unwrap();
        let mut b = [0u8; 4];
        s.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [16, 17, 18, 19]);
        assert!(s.read_at(&mut b, 30).is_err());
        s.write_at(&[9, 9], 30).unwrap();
        assert_eq!(mem.to_vec()[46..48], [9, 9]);
        assert!(Slice::new(&mem, 250, 10).is_err());
        assert!(Slice::new(&mem, u64::MAX, 2).is_err());
        let ro = Slice::new(&mem, 0, 8).unwrap().read_only();
        assert!(ro.write_at(&[1], 0).is_err());
    }
}
