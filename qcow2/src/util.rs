//! Small helpers shared by the parsers: big-endian fields and bounds checks.

pub(crate) use vdisk_block::bytes::{be16, be32, be64};
use vdisk_block::{BlockDevice, Error, Result};

/// Whether `offset` is a multiple of `align` (a power of two).
pub(crate) fn align_ok(offset: u64, align: u64) -> bool {
    offset & (align - 1) == 0
}

/// Checks that a table of `len` bytes at `offset` is cluster aligned and lies inside a file of
/// `file_size` bytes.
pub(crate) fn table_in_file(
    offset: u64,
    len: u64,
    cluster_size: u64,
    file_size: u64,
    what: &str,
) -> Result<()> {
    if !align_ok(offset, cluster_size) {
        return Err(Error::corrupt_at(
            offset,
            format!("{what} offset {offset:#x} is not cluster aligned"),
        ));
    }
    in_file(offset, len, file_size, what)
}

/// Checks that `len` bytes at `offset` lie inside a file of `file_size` bytes.
pub(crate) fn in_file(offset: u64, len: u64, file_size: u64, what: &str) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= file_size => Ok(()),
        _ => Err(Error::corrupt_at(
            offset,
            format!("{what} lies beyond the end of the file"),
        )),
    }
}

/// Reads `len` bytes at `offset` of `dev`, after checking they lie inside it. `len` must
/// already be bounded by a named limit.
pub(crate) fn read_vec(
    dev: &dyn BlockDevice,
    offset: u64,
    len: u64,
    what: &str,
) -> Result<Vec<u8>> {
    in_file(offset, len, dev.size(), what)?;
    let n = usize::try_from(len)
        .map_err(|_| Error::corrupt_at(offset, format!("{what} is too large")))?;
    let mut buf = vec![0u8; n];
    dev.read_at(&mut buf, offset)?;
    Ok(buf)
}

/// Reads into `buf` from `offset` of `dev`; bytes past the end of `dev` read as zeros, as
/// qemu's block layer does for the tail of a cluster that was never written out (qemu leaves
/// files ending inside their last cluster). Data that *starts* at or past the end of the file
/// was never written at all: the table pointing there is corrupt, and we say so rather than
/// hand out zeros.
pub(crate) fn read_zero_padded(dev: &dyn BlockDevice, buf: &mut [u8], offset: u64) -> Result<()> {
    if !buf.is_empty() && offset >= dev.size() {
        return Err(Error::corrupt_at(
            offset,
            "data cluster lies beyond the end of the file",
        ));
    }
    let avail = dev.size().saturating_sub(offset);
    let n = usize::try_from(avail).unwrap_or(usize::MAX).min(buf.len());
    let (head, tail) = buf.split_at_mut(n);
    if !head.is_empty() {
        dev.read_at(head, offset)?;
    }
    tail.fill(0);
    Ok(())
}

/// A name stored in the image as bytes, as a `String`; names that are not UTF-8 are refused
/// because a lossy conversion would name a different file.
pub(crate) fn utf8_name(bytes: &[u8], offset: u64, what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        let _ = offset;
        Error::unsupported(format!("the {what} is not valid UTF-8"))
    })
}
