//! Raw disk images and host block devices, as qemu's `raw`/`file`/`host_device` drivers see
//! them.
//!
//! A [`RawFile`] is a regular file or a block device used byte for byte as a disk. It is
//! a [`BlockDevice`] (positional `pread`/`pwrite` through `&self`, no lock on the I/O path, so
//! threads read in parallel), an [`Image`] whose [`map`](Image::map) comes from the host's
//! own sparse-file knowledge (`lseek` `SEEK_DATA`/`SEEK_HOLE`), and it can write zeros and
//! discard without writing ([`WriteZeroes`], [`Discard`]: `fallocate` punch-hole and
//! zero-range) and change size with a [`Preallocation`] mode ([`Resize`]).
//!
//! ```text
//!   qcow2 / engine / guestfs
//!            |  read_at, write_at, map, write_zeroes, resize
//!        RawFile  ---- OFD byte locks 100..=103, 200..=203 ----  qemu-img, qemu-io, a VM
//!            |  pread, pwrite, lseek(SEEK_DATA/HOLE), fallocate
//!      host file or block device
//! ```
//!
//! Behaviour follows qemu so the two interoperate and agree:
//!
//! - **Size.** A file's size is its length rounded up to a multiple of 512; the bytes between
//!   the end of the file and that size read as zeros (a 1000-byte file is a 1024-byte disk).
//!   [`RawFile::file_length`] gives the exact length.
//! - **Locks.** Opens take the same open-file-description byte locks as qemu, so a second
//!   writer — vdisk or qemu — is refused with [`Error::Locked`], and
//!   [`OpenOptions::force_share`] plays the role of `qemu-img -U`. [`OpenOptions`] lists the
//!   bytes each mode takes.
//! - **Creation** and **growth** preallocate as `qemu-img create -o preallocation=` does,
//!   including qemu's habit of writing the first block of a new sparse file.
//!
//! ```
//! use vdisk_block::{BlockDevice, Image, MapKind, Preallocation};
//! use vdisk_raw::{OpenOptions, RawFile};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("disk.raw");
//! let disk = RawFile::create(&path, 1 << 20, Preallocation::Off)?;
//! disk.write_at(b"hello", 65536)?;
//! assert_eq!(disk.size(), 1 << 20);
//!
//! // A hole reads as zeros, and the mapping says so without reading it.
//! let m = disk.map(8192, 4096)?;
//! assert_eq!(m.kind, MapKind::Zero { host_offset: Some(8192) });
//!
//! // A second writer is refused while `disk` is open; a shared reader is not.
//! assert!(RawFile::open(&path, &OpenOptions::default()).is_err());
//! let reader = RawFile::open(&path, &OpenOptions { read_only: true, force_share: true })?;
//! let mut buf = [0u8; 5];
//! reader.read_at(&mut buf, 65536)?;
//! assert_eq!(&buf, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This crate is Linux-only: it relies on OFD locks, `fallocate` and `SEEK_DATA`.

#![warn(missing_docs)]

mod lock;
mod sys;

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use vdisk_block::{BlockDevice, BlockDeviceExt, Discard, Error, Image, MapKind, Mapping};
use vdisk_block::{Preallocation, Resize, Result, WriteZeroes};

use lock::LockMode;

/// qemu's sector: raw file sizes are rounded up to a multiple of it.
const SECTOR: u64 = 512;

/// The largest block qemu writes when it allocates the first block of a new file
/// (`MAX_BLOCKSIZE` in qemu's file-posix.c).
const FIRST_BLOCK: u64 = 4096;

/// The buffer used when zeros have to be written out (full preallocation, fallbacks).
const ZERO_CHUNK: u64 = 1 << 20;

/// How to open a [`RawFile`], and so which of qemu's lock bytes it takes.
///
/// qemu publishes who uses an image with open-file-description byte locks: byte `100 + i`
/// means "I hold permission i", byte `200 + i` "I do not share permission i", for the
/// permissions 0 consistent read, 1 write, 2 write unchanged, 3 resize. vdisk takes:
///
/// | options                    | holds          | does not share | behaves like                 |
/// |----------------------------|----------------|----------------|------------------------------|
/// | default (read-write)       | 100, 101, 103  | 201, 203       | a VM's disk (`share-rw=off`) |
/// | `read_only`                | 100            | 201, 203       | a `qemu-img convert` source  |
/// | `read_only`, `force_share` | 100            | —              | `qemu-img -U`, `qemu-io -r`  |
///
/// and then fails with [`Error::Locked`] if another user refuses to share a permission it
/// holds, or holds one it refuses to share. So a writer excludes every other writer and every
/// non-shared reader (and `qemu-io`/`qemu-img` writers in both directions), while
/// `force_share` readers coexist with anyone who lets others read consistently.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Open for reading only. A read-only open still refuses to share writing (the data must
    /// hold still while it is read, as for a `qemu-img convert` source) unless
    /// [`force_share`](OpenOptions::force_share) is set.
    pub read_only: bool,
    /// Share every permission with every other user, as `qemu-img -U` / `--force-share`:
    /// the open succeeds while a writer holds the image (the data may change under the
    /// reader). Only allowed with [`read_only`](OpenOptions::read_only).
    pub force_share: bool,
}

impl OpenOptions {
    fn lock_mode(&self) -> Result<LockMode> {
        match (self.read_only, self.force_share) {
            (false, false) => Ok(LockMode::READ_WRITE),
            (true, false) => Ok(LockMode::READ_ONLY),
            (true, true) => Ok(LockMode::READ_ONLY_SHARED),
            // qemu's words for the same mistake.
            (false, true) => Err(Error::invalid(
                "force-share=on can only be used with read-only images",
            )),
        }
    }
}

/// A raw disk image: a regular file or a host block device, open and locked.
///
/// Dropping it closes the file, which releases its locks. As with qemu, the locks belong to
/// the open file description: a child forked while the image is open shares them until it
/// calls `exec` (the descriptor is close-on-exec) or exits.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    path: PathBuf,
    read_only: bool,
    block_device: bool,
    /// The disk's size: the file's length rounded up to [`SECTOR`], or the device's size.
    /// Atomic because [`Resize`] changes it through `&self`.
    size: AtomicU64,
}

/// Rounds a file length up to whole sectors, as qemu reports a raw file's size.
fn round_up_to_sector(len: u64) -> Result<u64> {
    len.checked_next_multiple_of(SECTOR)
        .ok_or_else(|| Error::invalid(format!("size {len} is too large")))
}

impl RawFile {
    /// Opens an existing file or block device and takes qemu's locks on it.
    ///
    /// Fails with [`Error::Locked`] when another user (vdisk or qemu) holds a permission this
    /// open refuses to share, or refuses one this open needs; with [`Error::Io`] (operation
    /// `"open"`) when the host cannot open the file.
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<RawFile> {
        let path = path.as_ref();
        Self::open_impl(path, opts).map_err(|e| e.with_path(path))
    }

    fn open_impl(path: &Path, opts: &OpenOptions) -> Result<RawFile> {
        let mode = opts.lock_mode()?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .open(path)
            .map_err(|e| Error::io("open", None, e))?;
        Self::from_locked(file, path, opts.read_only, mode)
    }

    /// Checks the file's type, takes the locks and measures the size.
    fn from_locked(file: File, path: &Path, read_only: bool, mode: LockMode) -> Result<RawFile> {
        let block_device = check_file_type(&file)?;
        if block_device && !read_only && sys::block_device_is_read_only(&file).unwrap_or(false) {
            // qemu: "The device is not writable: Permission denied".
            return Err(Error::io(
                "open",
                None,
                io::Error::from_raw_os_error(libc::EACCES),
            ));
        }
        lock::acquire(&file, mode, path)?;
        let raw = RawFile {
            file,
            path: path.to_path_buf(),
            read_only,
            block_device,
            size: AtomicU64::new(0),
        };
        let size = if block_device {
            raw.device_size()?
        } else {
            round_up_to_sector(raw.file_length()?)?
        };
        raw.size.store(size, Ordering::Release);
        Ok(raw)
    }

    /// Creates a raw image of `size` bytes (rounded up to a multiple of 512, as
    /// `qemu-img create` does) and returns it open read-write and locked.
    ///
    /// An existing file is truncated, as `qemu-img create` does — but only after the locks
    /// are taken, so an image another process is using is left alone and the call fails with
    /// [`Error::Locked`]. `prealloc` decides what is reserved:
    ///
    /// - `Off` and `Metadata`: a sparse file (raw has no metadata; qemu itself refuses
    ///   `metadata` for raw);
    /// - `Falloc`: `fallocate` of the whole size (unwritten extents: reserved, still
    ///   reported as holes by the host);
    /// - `Full`: zeros written to every byte.
    ///
    /// Like qemu, the first block (4 KiB, or 512 bytes for tiny images) of an `Off` or
    /// `Falloc` image is written with zeros, so `qemu-img info` reports the same disk size
    /// for images from either tool. A block device is not truncated: it must already be at
    /// least `size` bytes.
    pub fn create(path: impl AsRef<Path>, size: u64, prealloc: Preallocation) -> Result<RawFile> {
        let path = path.as_ref();
        Self::create_impl(path, size, prealloc).map_err(|e| e.with_path(path))
    }

    fn create_impl(path: &Path, size: u64, prealloc: Preallocation) -> Result<RawFile> {
        let size = round_up_to_sector(size)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            // Not yet: the file may be another user's image until the locks say otherwise.
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|e| Error::io("open", None, e))?;
        let raw = Self::from_locked(file, path, false, LockMode::READ_WRITE)?;
        if raw.block_device {
            if raw.size() < size {
                return Err(Error::invalid(format!(
                    "Device is too small: {} bytes, {size} requested",
                    raw.size()
                )));
            }
            return Ok(raw);
        }
        // Like qemu: empty the file, then grow it to the size with the preallocation.
        raw.file
            .set_len(0)
            .map_err(|e| Error::io("truncate", Some(0), e))?;
        raw.set_file_length(size, prealloc)?;
        raw.size.store(size, Ordering::Release);
        Ok(raw)
    }

    /// The path the image was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is a host block device rather than a regular file.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Bytes of host storage the file occupies (`st_blocks * 512`): `qemu-img info`'s
    /// "disk size" and `actual-size`. Zero for a block device, as qemu reports.
    pub fn allocated_size(&self) -> Result<u64> {
        let meta = self.metadata()?;
        if self.block_device {
            return Ok(0);
        }
        Ok(meta.blocks().saturating_mul(512))
    }

    /// The file's length in bytes, exactly as on disk (not rounded); a block device's size.
    pub fn file_length(&self) -> Result<u64> {
        if self.block_device {
            return self.device_size();
        }
        Ok(self.metadata()?.len())
    }

    fn metadata(&self) -> Result<std::fs::Metadata> {
        self.file
            .metadata()
            .map_err(|e| Error::io("stat", None, e).with_path(&self.path))
    }

    /// A block device's size: `lseek(SEEK_END)`, which is what qemu's Linux `raw_getlength`
    /// uses and what the `BLKGETSIZE64` ioctl would return.
    fn device_size(&self) -> Result<u64> {
        use std::io::Seek;
        (&self.file)
            .seek(io::SeekFrom::End(0))
            .map_err(|e| Error::io("seek", None, e).with_path(&self.path))
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::invalid("the image is open read-only").with_path(&self.path));
        }
        Ok(())
    }

    fn check(&self, offset: u64, len: u64) -> Result<u64> {
        self.check_range(offset, len)
            .map_err(|e| e.with_path(&self.path))
    }

    /// Sets the file's length to `new_len`, filling any growth as `prealloc` says
    /// (qemu's `raw_regular_truncate`). Shrinking simply truncates.
    fn set_file_length(&self, new_len: u64, prealloc: Preallocation) -> Result<()> {
        let old_len = self.file_length()?;
        let truncate = |len: u64| {
            self.file
                .set_len(len)
                .map_err(|e| Error::io("truncate", Some(len), e).with_path(&self.path))
        };
        if new_len <= old_len {
            return truncate(new_len);
        }
        let grown = match prealloc {
            Preallocation::Off | Preallocation::Metadata => truncate(new_len),
            Preallocation::Falloc => {
                match sys::fallocate(&self.file, 0, old_len, new_len - old_len) {
                    Ok(()) => Ok(()),
                    // Like qemu: a filesystem without fallocate gets zeros written instead.
                    Err(e) if unsupported(&e) => self.fill_zeros(old_len, new_len),
                    Err(e) => Err(Error::io("fallocate", Some(old_len), e).with_path(&self.path)),
                }
            }
            Preallocation::Full => self.fill_zeros(old_len, new_len),
        };
        if let Err(e) = grown {
            // Leave the file as it was, as qemu does.
            let _ = self.file.set_len(old_len);
            return Err(e);
        }
        if old_len == 0 && prealloc != Preallocation::Full {
            self.allocate_first_block(new_len);
        }
        Ok(())
    }

    /// Grows the file to `new_len` and writes zeros over `[from, new_len)`, then syncs, as
    /// qemu's full preallocation.
    fn fill_zeros(&self, from: u64, new_len: u64) -> Result<()> {
        self.file
            .set_len(new_len)
            .map_err(|e| Error::io("truncate", Some(new_len), e).with_path(&self.path))?;
        let zeros = vec![0u8; ZERO_CHUNK as usize];
        let mut at = from;
        while at < new_len {
            let n = (new_len - at).min(ZERO_CHUNK);
            // n <= ZERO_CHUNK, which is the buffer's length.
            self.file
                .write_all_at(&zeros[..n as usize], at)
                .map_err(|e| Error::io("write", Some(at), e).with_path(&self.path))?;
            at += n;
        }
        self.file
            .sync_data()
            .map_err(|e| Error::io("flush", None, e).with_path(&self.path))
    }

    /// qemu's `allocate_first_block`: writes zeros over the first block of a file that was
    /// empty, which makes O_DIRECT alignment probing reliable for qemu. We copy it so
    /// `qemu-img info` reports the same disk size for images made by either tool. Failures are
    /// ignored, as qemu ignores them. Unlike qemu, the write never extends the file.
    fn allocate_first_block(&self, file_len: u64) {
        let block = if file_len < FIRST_BLOCK {
            SECTOR
        } else {
            FIRST_BLOCK
        };
        let n = block.min(file_len);
        // n <= FIRST_BLOCK, a small constant.
        let _ = self
            .file
            .write_all_at(&[0u8; FIRST_BLOCK as usize][..n as usize], 0);
    }

    /// Zeros `[offset, end)` with the first `fallocate` mode the host supports, else by
    /// writing zeros.
    fn zero_range(&self, offset: u64, len: u64, modes: &[libc::c_int]) -> Result<()> {
        self.check_writable()?;
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        for &mode in modes {
            match sys::fallocate(&self.file, mode, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if unsupported(&e) => continue,
                Err(e) => return Err(Error::io("fallocate", Some(offset), e).with_path(&self.path)),
            }
        }
        self.write_zeroes_by_writing(offset, len)
    }
}

/// Errors that mean "this fallocate mode is not available here": the filesystem or device
/// lacks it (`EOPNOTSUPP`, `ENOSYS`), or a block device wants aligned ranges (`EINVAL`).
/// Writing zeros is always a correct fallback.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

/// Returns whether `file` is a block device; refuses anything but block devices and regular
/// files.
fn check_file_type(file: &File) -> Result<bool> {
    let ft = file
        .metadata()
        .map_err(|e| Error::io("stat", None, e))?
        .file_type();
    if ft.is_file() {
        Ok(false)
    } else if ft.is_block_device() {
        Ok(true)
    } else if ft.is_dir() {
        Err(Error::io(
            "open",
            None,
            io::Error::from_raw_os_error(libc::EISDIR),
        ))
    } else {
        Err(Error::invalid(
            "a raw image must be a regular file or a block device",
        ))
    }
}

impl BlockDevice for RawFile {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Reads with `pread`. Bytes past the end of the file (the padding up to a whole sector)
    /// read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check(offset, buf.len() as u64)?;
        let mut done = 0;
        while done < buf.len() {
            // done < buf.len() and the whole range was checked to fit in u64.
            let at = offset + done as u64;
            match self.file.read_at(&mut buf[done..], at) {
                // End of file: the rest is the zero padding (or the file shrank behind our
                // back; qemu reads zeros then too).
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read", Some(at), e).with_path(&self.path)),
            }
        }
        Ok(())
    }

    /// Writes with `pwrite`. A write into the padding past the end of the file extends the
    /// file, as it does in qemu.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        self.check(offset, buf.len() as u64)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io("write", Some(offset), e).with_path(&self.path))
    }

    /// `fdatasync`, as qemu's flush.
    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| Error::io("flush", None, e).with_path(&self.path))
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }
}

impl Image for RawFile {
    fn format_name(&self) -> &'static str {
        "raw"
    }

    /// Asks the host where the data is (qemu's `find_allocation`): data extents map to the
    /// same offset in the file, holes and the padding past the end of the file are zeros
    /// (with their offset, as `qemu-img map` prints). A host that cannot tell
    /// (no `SEEK_DATA`) gets everything up to the end of the file reported as data.
    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let size = self.size();
        if offset >= size {
            return Ok(Mapping {
                offset,
                len: 0,
                kind: MapKind::Eof,
            });
        }
        let limit = max_len.min(size - offset);
        let data = |len: u64| Mapping {
            offset,
            len: len.min(limit),
            kind: MapKind::Data {
                host_offset: offset,
            },
        };
        let zero = |len: u64| Mapping {
            offset,
            len: len.min(limit),
            kind: MapKind::Zero {
                host_offset: Some(offset),
            },
        };
        let no_info = || -> Result<Mapping> {
            let file_len = self.file_length()?;
            Ok(if offset < file_len {
                data(file_len - offset)
            } else {
                zero(limit)
            })
        };
        match sys::seek_data(&self.file, offset) {
            // Hole, then data at `d`.
            Ok(d) if d > offset => Ok(zero(d - offset)),
            // In data: it ends at the next hole (EOF counts as one).
            Ok(_) => match sys::seek_hole(&self.file, offset) {
                Ok(h) if h > offset => Ok(data(h - offset)),
                // A hole was punched between the two calls: nothing is known, so read it.
                Ok(_) => Ok(data(limit)),
                // The file was truncated between the two calls: what remains is zeros.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(zero(limit)),
                Err(_) => no_info(),
            },
            // A trailing hole, or the padding past the end of the file.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(zero(limit)),
            // EINVAL (no SEEK_DATA on this filesystem) or anything else: no information.
            Err(_) => no_info(),
        }
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

impl WriteZeroes for RawFile {
    /// With `may_unmap`, punches a hole (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`);
    /// otherwise zeros in place (`FALLOC_FL_ZERO_RANGE`), keeping the storage allocated. Falls
    /// back to writing zeros where the host supports neither.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        if may_unmap {
            self.zero_range(
                offset,
                len,
                &[
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_ZERO_RANGE,
                ],
            )
        } else {
            self.zero_range(offset, len, &[libc::FALLOC_FL_ZERO_RANGE])
        }
    }
}

impl Discard for RawFile {
    /// Punches a hole: the storage is released and the range reads as zeros afterwards
    /// (zeros are written where the host cannot punch holes).
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len, true)
    }
}

impl Resize for RawFile {
    /// Sets the file's length to exactly `new_size` (the disk's size becomes `new_size`
    /// rounded up to 512). Growth is filled as `prealloc` says: `Off`/`Metadata` leave a
    /// hole, `Falloc` reserves it with `fallocate`, `Full` writes zeros. Shrinking
    /// truncates whatever the mode. A block device cannot change size.
    fn resize(&self, new_size: u64, prealloc: Preallocation) -> Result<()> {
        self.check_writable()?;
        if self.block_device {
            return match new_size.cmp(&self.size()) {
                std::cmp::Ordering::Equal => Ok(()),
                std::cmp::Ordering::Greater => Err(Error::unsupported("Cannot grow device files")),
                std::cmp::Ordering::Less => Err(Error::unsupported("Cannot shrink device files")),
            }
            .map_err(|e| e.with_path(&self.path));
        }
        let rounded = round_up_to_sector(new_size).map_err(|e| e.with_path(&self.path))?;
        self.set_file_length(new_size, prealloc)?;
        self.size.store(rounded, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_sectors() {
        assert_eq!(round_up_to_sector(0).unwrap(), 0);
        assert_eq!(round_up_to_sector(1).unwrap(), 512);
        assert_eq!(round_up_to_sector(1000).unwrap(), 1024);
        assert_eq!(round_up_to_sector(1024).unwrap(), 1024);
        assert!(round_up_to_sector(u64::MAX).is_err());
    }

    #[test]
    fn force_share_needs_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.raw");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let opts = OpenOptions {
            read_only: false,
            force_share: true,
        };
        let e = RawFile::open(&path, &opts).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        assert_eq!(e.path(), Some(path.as_path()));
        assert_eq!(
            e.message(),
            "force-share=on can only be used with read-only images"
        );
    }

    #[test]
    fn directories_and_fifos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ro = OpenOptions {
            read_only: true,
            force_share: false,
        };
        let e = RawFile::open(dir.path(), &ro).unwrap_err();
        assert!(
            matches!(&e, Error::Io { op: "open", source, .. } if source.raw_os_error() == Some(libc::EISDIR)),
            "{e}"
        );
        let e = RawFile::open("/dev/null", &ro).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }

    #[test]
    fn unsupported_modes_fall_back() {
        assert!(unsupported(&io::Error::from_raw_os_error(libc::EOPNOTSUPP)));
        assert!(unsupported(&io::Error::from_raw_os_error(libc::EINVAL)));
        assert!(!unsupported(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(!unsupported(&io::Error::from_raw_os_error(libc::EIO)));
    }
}
