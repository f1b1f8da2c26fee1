//! The few Linux system calls std does not wrap: `lseek` with `SEEK_DATA`/`SEEK_HOLE`,
//! `fallocate`, open-file-description locks and the block-device read-only query.
//!
//! Every `unsafe` block of the crate lives here, one per call, each with its reason.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Converts a byte offset or length to `off_t`, failing with `EFBIG` when it does not fit.
fn off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))
}

fn lseek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    let offset = off(offset)?;
    // SAFETY: lseek takes a file descriptor we own for the lifetime of `file` and two integers;
    // it touches no memory of ours. Moving the file position is harmless: all our I/O is
    // positional (pread/pwrite), so no other code depends on it.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // r >= 0 was just checked.
    Ok(r as u64)
}

/// `lseek(SEEK_DATA)`: the first offset at or after `offset` that holds data.
/// `ENXIO` means there is no data at or after `offset` (a trailing hole, or past EOF).
pub(crate) fn seek_data(file: &File, offset: u64) -> io::Result<u64> {
    lseek(file, offset, libc::SEEK_DATA)
}

/// `lseek(SEEK_HOLE)`: the first offset at or after `offset` that is in a hole; EOF counts as
/// a hole. `ENXIO` means `offset` is at or past EOF.
pub(crate) fn seek_hole(file: &File, offset: u64) -> io::Result<u64> {
    lseek(file, offset, libc::SEEK_HOLE)
}

/// `fallocate(2)` with `mode` over `[offset, offset + len)`.
pub(crate) fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (o, l) = (off(offset)?, off(len)?);
    loop {
        // SAFETY: fallocate takes our open descriptor and integers; no memory is shared.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, o, l) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn flock(kind: libc::c_int, byte: u64) -> io::Result<libc::flock> {
    // SAFETY: `flock` is a plain C struct of integers (and, on some targets, integer padding
    // fields); the all-zero bit pattern is a valid value of it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    // F_RDLCK, F_WRLCK and SEEK_SET are small constants that fit in a c_short.
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = off(byte)?;
    fl.l_len = 1;
    Ok(fl)
}

/// Takes a shared (read) open-file-description lock on the single byte at `byte`.
/// Fails with `EAGAIN`/`EACCES` when another description holds a write lock there.
pub(crate) fn ofd_lock_shared(file: &File, byte: u64) -> io::Result<()> {
    let fl = flock(libc::F_RDLCK, byte)?;
    // SAFETY: F_OFD_SETLK reads the `flock` we pass by pointer; it lives on our stack for the
    // whole call and is not kept by the kernel.
    let r = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_OFD_SETLK,
            &fl as *const libc::flock,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether another open file description holds any lock on the byte at `byte`
/// (an exclusive-lock test, as qemu's `qemu_lock_fd_test(.., exclusive = true)`). Locks held
/// through `file` itself never count.
pub(crate) fn ofd_byte_is_locked(file: &File, byte: u64) -> io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK, byte)?;
    // SAFETY: F_OFD_GETLK reads and rewrites the `flock` we pass by pointer; it is a valid,
    // exclusively borrowed stack value for the whole call.
    let r = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_OFD_GETLK,
            &mut fl as *mut libc::flock,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// `BLKROGET`: whether a block device is set read-only (`blockdev --setro`), in which case
/// opening it `O_RDWR` succeeds but every write fails with `EPERM`.
///
/// The ioctl number `_IO(0x12, 94)` has no size or direction bits, so it is `0x125e` on every
/// architecture whose `_IOC_NONE` is 0; elsewhere the check is skipped (writes then fail
/// one by one instead of the open failing up front).
pub(crate) fn block_device_is_read_only(file: &File) -> io::Result<bool> {
    #[cfg(any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "arm",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "loongarch64",
        target_arch = "s390x"
    ))]
    {
        const BLKROGET: libc::c_ulong = 0x125e;
        let mut ro: libc::c_int = 0;
        // The request parameter is c_ulong in glibc and c_int in musl; 0x125e fits both.
        let request = BLKROGET as _;
        // SAFETY: BLKROGET writes one int through the pointer, which points at `ro`, a live
        // stack variable of exactly that type.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), request, &mut ro as *mut libc::c_int) };
        if r == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(ro != 0)
    }
    #[cfg(not(any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "arm",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "loongarch64",
        target_arch = "s390x"
    )))]
    {
        let _ = file;
        Ok(false)
    }
}
