//! Guest files and directories copied to the host, as virt-copy-out does.
//!
//! Guest paths are resolved inside the guest tree. What is copied is never followed on the
//! host: a guest symlink becomes a host symlink with the same target (even `/etc/passwd`),
//! files are created with `O_EXCL | O_NOFOLLOW` after removing whatever non-directory was in
//! the way, and a directory is entered only when it is a real directory — so neither a guest
//! symlink nor a hostile image with duplicate names can make us write outside the host
//! directory.

use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::{Attr, FileKind, FileSystem, Ino, Timestamp};
use vdisk_block::Error;

use super::{OpError, OpResult};

/// Directory nesting we follow; deeper trees (hostile hard-linked directory loops) fail.
const MAX_DEPTH: usize = 2048;
/// Bytes copied per read.
const CHUNK: usize = 1 << 20;

/// Copies each guest path (the last component not followed: a symlink is copied as a link)
/// into host directory `host`, keeping modes, times, symlink targets and (as root) owners.
/// A path naming the root directory (`/`) copies its contents into `host` itself. Files
/// left out (device files when not root, guest entries that cannot be read) are told to
/// `warn`, one line each, and the copy carries on; unreadable entries make the result an
/// error at the end, as `cp -r` exits non-zero.
pub fn copy_out(
    fs: &dyn FileSystem,
    paths: &[&[u8]],
    host: &Path,
    warn: &mut dyn FnMut(String),
) -> OpResult<()> {
    if !fs::metadata(host).map(|m| m.is_dir()).unwrap_or(false) {
        return Err(OpError::Other(format!(
            "{}: the host directory does not exist or is not a directory",
            host.display()
        )));
    }
    let mut c = Copier {
        fs,
        as_root: is_root(),
        warn,
        bad: 0,
    };
    for &path in paths {
        let ino = fs
            .resolve(path, false)
            .map_err(|e| OpError::guest(path, e))?;
        let attr = fs.getattr(ino).map_err(|e| OpError::guest(path, e))?;
        let name = path
            .rsplit(|&b| b == b'/')
            .find(|c| !c.is_empty() && *c != b"." && *c != b"..");
        match (name, attr.kind) {
            (None, FileKind::Dir) => c.dir_contents(ino, path, host, 0)?,
            (None, _) => {
                return Err(OpError::Other(format!(
                    "{}: ends without a file name (in . or ..) and is not a directory; name the file itself",
                    String::from_utf8_lossy(path)
                )))
            }
            (Some(n), _) => c.copy(ino, &attr, path, &host.join(OsStr::from_bytes(n)), 0)?,
        }
    }
    if c.bad > 0 {
        return Err(OpError::Other(format!(
            "{} guest {} could not be copied (named above); the rest was",
            c.bad,
            if c.bad == 1 { "file" } else { "files" }
        )));
    }
    Ok(())
}

struct Copier<'a> {
    fs: &'a dyn FileSystem,
    as_root: bool,
    warn: &'a mut dyn FnMut(String),
    /// Guest entries that could not be read (told to `warn`, the copy carried on).
    bad: usize,
}

impl Copier<'_> {
    fn copy(
        &mut self,
        ino: Ino,
        attr: &Attr,
        gpath: &[u8],
        dest: &Path,
        depth: usize,
    ) -> OpResult<()> {
        if depth > MAX_DEPTH {
            return Err(OpError::Other(format!(
                "{}: directories nested deeper than {MAX_DEPTH}",
                String::from_utf8_lossy(gpath)
            )));
        }
        let herr = |e: io::Error| OpError::host(dest, e);
        match attr.kind {
            FileKind::Dir => {
                match fs::symlink_metadata(dest) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        fs::remove_file(dest).map_err(herr)?;
                        fs::create_dir(dest).map_err(herr)?;
                    }
                    Err(_) => fs::create_dir(dest).map_err(herr)?,
                }
                // Owner-writable while filling; the guest's mode goes on afterwards.
                fs::set_permissions(dest, fs::Permissions::from_mode(0o700)).map_err(herr)?;
                self.dir_contents(ino, gpath, dest, depth + 1)?;
            }
            FileKind::File => {
                self.make_room(dest)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(dest)
                    .map_err(herr)?;
                let mut buf = vec![0u8; CHUNK.min(attr.size.max(1) as usize)];
                let mut off = 0u64;
                loop {
                    let n = self
                        .fs
                        .read(ino, off, &mut buf)
                        .map_err(|e| OpError::guest(gpath, e))?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&buf[..n]).map_err(herr)?;
                    off += n as u64;
                }
                drop::<File>(f);
            }
            FileKind::Symlink => {
                let target = self
                    .fs
                    .readlink(ino)
                    .map_err(|e| OpError::guest(gpath, e))?;
                if target.as_bytes().contains(&0) {
                    return Err(OpError::guest(
                        gpath,
                        Error::corrupt(
                            "the symlink's target contains a NUL byte, which no host symlink can hold",
                        ),
                    ));
                }
                self.make_room(dest)?;
                std::os::unix::fs::symlink(&target, dest).map_err(herr)?;
            }
            FileKind::Fifo | FileKind::CharDev | FileKind::BlockDev | FileKind::Socket => {
                if !self.as_root && attr.kind != FileKind::Fifo {
                    (self.warn)(format!(
                        "{}: device file not copied (only root can create device files)",
                        String::from_utf8_lossy(gpath)
                    ));
                    return Ok(());
                }
                self.make_room(dest)?;
                mknod(dest, attr).map_err(herr)?;
            }
        }
        self.set_meta(dest, attr).map_err(herr)
    }

    fn dir_contents(&mut self, ino: Ino, gpath: &[u8], dest: &Path, depth: usize) -> OpResult<()> {
        let mut entries = self
            .fs
            .readdir_all(ino)
            .map_err(|e| OpError::guest(gpath, e))?;
        entries.retain(|e| e.name != "." && e.name != "..");
        entries.sort_by(|x, y| x.name.as_bytes().cmp(y.name.as_bytes()));
        for e in entries {
            let name = e.name.as_bytes();
            let mut child = gpath.to_vec();
            if !child.ends_with(b"/") {
                child.push(b'/');
            }
            child.extend_from_slice(name);
            if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
                return Err(OpError::Other(format!(
                    "{}: the guest directory holds an invalid name",
                    String::from_utf8_lossy(gpath)
                )));
            }
            // A guest entry that cannot be read (a damaged inode) is named and skipped, as
            // `cp -r` carries on; host errors and the depth bound still stop the copy.
            let r = self
                .fs
                .getattr(e.ino)
                .map_err(|x| OpError::guest(&child, x))
                .and_then(|attr| {
                    self.copy(
                        e.ino,
                        &attr,
                        &child,
                        &dest.join(OsStr::from_bytes(name)),
                        depth,
                    )
                });
            match r {
                Err(x @ OpError::Guest { .. }) => {
                    (self.warn)(x.to_string());
                    self.bad += 1;
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Removes a non-directory at `dest` (never following it); a directory there is an error.
    fn make_room(&self, dest: &Path) -> OpResult<()> {
        match fs::symlink_metadata(dest) {
            Ok(m) if m.is_dir() => Err(OpError::Other(format!(
                "{}: a directory is in the way",
                dest.display()
            ))),
            Ok(_) => fs::remove_file(dest).map_err(|e| OpError::host(dest, e)),
            Err(_) => Ok(()),
        }
    }

    /// Owner (as root), mode (not for symlinks, whose mode Linux ignores) and times.
    fn set_meta(&self, dest: &Path, attr: &Attr) -> io::Result<()> {
        let c = cpath(dest)?;
        if self.as_root {
            // SAFETY: `c` is a NUL-terminated path that outlives the call; lchown does not
            // follow symlinks and touches nothing else.
            if unsafe { libc::lchown(c.as_ptr(), attr.uid, attr.gid) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if attr.kind != FileKind::Symlink {
            fs::set_permissions(dest, fs::Permissions::from_mode(attr.mode & 0o7777))?;
        }
        let ts = [timespec(attr.atime), timespec(attr.mtime)];
        // SAFETY: `c` is a valid C path and `ts` two initialised timespecs, both alive for the
        // call; AT_SYMLINK_NOFOLLOW sets a symlink's own times rather than its target's.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn timespec(t: Timestamp) -> libc::timespec {
    libc::timespec {
        tv_sec: t.secs as libc::time_t,
        tv_nsec: t.nanos as libc::c_long,
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn mknod(dest: &Path, attr: &Attr) -> io::Result<()> {
    let c = cpath(dest)?;
    let mode = (attr.mode & 0o170000) | 0o600;
    // SAFETY: `c` is a valid C path alive for the call; mknod creates one node and fails if
    // anything exists there (make_room removed it, and it does not follow symlinks).
    if unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, attr.rdev as libc::dev_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
