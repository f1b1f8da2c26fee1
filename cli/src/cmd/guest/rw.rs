//! What the FUSE-less edit commands (`write`, `edit`, `copy-in`, `rm`, `mkdir`, `chmod`,
//! `chown`, `ln`) share: the guest opened read-write, guest paths split into a directory and
//! a name, and the close that makes everything durable.
//!
//! ```text
//!   -a IMAGE (top writable, backing read-only) -> -m / -i -> Stack (Ext4Rw layers)
//!     op(s) through FileSystemMut ... -> close: filesystems flushed, then images
//! ```

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use vdisk::guest::GuestDisks;
use vdisk_guestfs::fs::{errno, errno_error, FileKind, FileSystem, FileSystemMut, Ino};
use vdisk_guestfs::stack::Stack;

use super::{open_disks_rw, open_tree_rw, path_error, DiskArgs, MountSelect};
use crate::Failure;

/// Bytes moved per write call.
pub const CHUNK: usize = 1 << 20;

/// The guest, open for changes.
pub struct Edit {
    disks: GuestDisks,
    /// The tree the `-m`/`-i` filesystems make.
    pub tree: Arc<Stack>,
}

impl Edit {
    /// Opens the images read-write and mounts the tree (without `-m`, inspects, as virt-edit
    /// and virt-copy-in do).
    pub fn open(d: &DiskArgs, sel: &MountSelect) -> Result<Edit, Failure> {
        let disks = open_disks_rw(d)?;
        let tree = open_tree_rw(&disks, sel, true)?;
        Ok(Edit { disks, tree })
    }

    /// Makes every change durable (the filesystems' state, then the images' metadata and
    /// the host files) and closes the images. `result` is the command's outcome so far: it is
    /// returned first when it is an error, after the close (a failed command still leaves
    /// a consistent image with what it did).
    pub fn close<T>(self, result: Result<T, Failure>) -> Result<T, Failure> {
        let flushed = self
            .tree
            .flush()
            .and_then(|()| self.disks.flush())
            .map_err(Failure::from);
        let v = result?;
        flushed?;
        Ok(v)
    }
}

/// A guest path as bytes, absolute ("etc/x" is taken as "/etc/x", as the guest's root is the
/// only starting point).
pub fn absolute(p: &OsStr) -> Vec<u8> {
    let b = p.as_bytes();
    if b.starts_with(b"/") {
        b.to_vec()
    } else {
        let mut v = b"/".to_vec();
        v.extend_from_slice(b);
        v
    }
}

/// The directory holding `path` (resolved, symlinks followed inside the guest) and the last
/// component's name. The root has no parent: EINVAL.
pub fn parent_and_name(fs: &Stack, path: &[u8]) -> Result<(Ino, OsString), Failure> {
    let trimmed = {
        let mut t = path;
        while t.len() > 1 && t.ends_with(b"/") {
            t = &t[..t.len() - 1];
        }
        t
    };
    let (dir, name) = match trimmed.iter().rposition(|&c| c == b'/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (&b""[..], trimmed),
    };
    if name.is_empty() || name == b"." || name == b".." {
        return Err(path_error(path, errno_error("path", errno::EINVAL)));
    }
    let dir = if dir.is_empty() { &b"/"[..] } else { dir };
    let ino = fs.resolve(dir, true).map_err(|e| path_error(path, e))?;
    if fs.getattr(ino).map_err(|e| path_error(path, e))?.kind != FileKind::Dir {
        return Err(path_error(path, errno_error("path", errno::ENOTDIR)));
    }
    Ok((ino, OsString::from(OsStr::from_bytes(name))))
}

/// Replaces the content of regular file `ino` with what `fill` writes through the callback
/// (called with each chunk in order): truncated to 0 first, then written from offset 0.
pub fn write_all(
    fs: &Stack,
    ino: Ino,
    mut next: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
    path: &[u8],
) -> Result<u64, Failure> {
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    loop {
        // Fill a whole chunk (stdin may come in small pieces) before writing it.
        let mut have = 0;
        while have < buf.len() {
            let n = next(&mut buf[have..])
                .map_err(|e| Failure::new(format!("{}: {e}", String::from_utf8_lossy(path))))?;
            if n == 0 {
                break;
            }
            have += n;
        }
        if have == 0 {
            return Ok(off);
        }
        fs.write(ino, off, &buf[..have])
            .map_err(|e| path_error(path, e))?;
        off += have as u64;
        if have < buf.len() {
            return Ok(off);
        }
    }
}

/// Reads all of guest file `ino`, refusing files over `limit` bytes.
pub fn read_all(fs: &Stack, ino: Ino, limit: u64, path: &[u8]) -> Result<Vec<u8>, Failure> {
    let a = fs.getattr(ino).map_err(|e| path_error(path, e))?;
    if a.kind != FileKind::File {
        return Err(path_error(
            path,
            errno_error(
                "read",
                if a.kind == FileKind::Dir {
                    errno::EISDIR
                } else {
                    errno::EINVAL
                },
            ),
        ));
    }
    if a.size > limit {
        return Err(Failure::new(format!(
            "{}: {} bytes is more than the {limit} this command edits",
            String::from_utf8_lossy(path),
            a.size
        )));
    }
    let mut out = vec![0u8; a.size as usize];
    let mut off = 0;
    while off < out.len() {
        let n = fs
            .read(ino, off as u64, &mut out[off..])
            .map_err(|e| path_error(path, e))?;
        if n == 0 {
            out.truncate(off);
            break;
        }
        off += n;
    }
    Ok(out)
}
