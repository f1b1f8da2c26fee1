//! [`GuestFiles`] over a guest filesystem tree (any [`FileSystemMut`], such as the
//! [`Stack`](vdisk_guestfs::stack::Stack) of `-m`/`-i`), through the guest layer's
//! operations ([`vdisk_guestfs::ops`]): each call one or a few filesystem operations, each of
//! which leaves the filesystem consistent.
//!
//! A rewrite of an existing file is [`ops::edit_file`]'s atomic replace: a new file beside
//! it with the old one's mode, owner and extended attributes (so an SELinux label
//! survives), renamed over the old name — a crash leaves the old file or the new one.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use vdisk_block::{Error, Result};
use vdisk_guestfs::fs::{errno, FileKind, FileSystemMut, SetAttr, TimeSet};
use vdisk_guestfs::ops::{self, OpError, Remove};

use super::{GuestFiles, Kind, Meta, NewFile};

/// A guest tree seen through [`GuestFiles`].
pub struct TreeFiles<'a> {
    fs: &'a dyn FileSystemMut,
}

impl std::fmt::Debug for TreeFiles<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TreeFiles")
    }
}

/// An operation's error as a library error: the engine's own error (its kind and errno
/// kept) naming the guest path.
fn lib(e: OpError) -> Error {
    match e {
        OpError::Guest { path, source } => source.with_path(OsStr::from_bytes(&path)),
        OpError::Host { path, source } => Error::io("copy", None, source).with_path(path),
        OpError::Other(m) => Error::invalid(m),
    }
}

fn b(p: &str) -> &[u8] {
    p.as_bytes()
}

impl<'a> TreeFiles<'a> {
    /// The tree `fs` as [`GuestFiles`].
    pub fn new(fs: &'a dyn FileSystemMut) -> Self {
        TreeFiles { fs }
    }

    fn ino(&self, path: &str, follow: bool) -> Result<Option<vdisk_guestfs::fs::Ino>> {
        match self.fs.resolve(b(path), follow) {
            Ok(i) => Ok(Some(i)),
            Err(e) if matches!(errno(&e), errno::ENOENT | errno::ENOTDIR) => Ok(None),
            Err(e) => Err(lib(OpError::guest(b(path), e))),
        }
    }

    fn set(&self, path: &str, follow: bool, c: SetAttr) -> Result<()> {
        ops::set_attr(self.fs, b(path), follow, &c).map_err(lib)
    }
}

impl GuestFiles for TreeFiles<'_> {
    fn stat(&self, path: &str, follow: bool) -> Result<Option<Meta>> {
        let Some(ino) = self.ino(path, follow)? else {
            return Ok(None);
        };
        let a = self
            .fs
            .getattr(ino)
            .map_err(|e| lib(OpError::guest(b(path), e)))?;
        Ok(Some(Meta {
            kind: match a.kind {
                FileKind::File => Kind::File,
                FileKind::Dir => Kind::Dir,
                FileKind::Symlink => Kind::Symlink,
                _ => Kind::Other,
            },
            mode: a.mode & 0o7777,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
        }))
    }

    fn read(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let Some(ino) = self.ino(path, true)? else {
            return Ok(None);
        };
        ops::read_all(self.fs, ino, limit, b(path))
            .map(Some)
            .map_err(lib)
    }

    fn read_link(&self, path: &str) -> Result<Option<String>> {
        let Some(ino) = self.ino(path, false)? else {
            return Ok(None);
        };
        let at = |e| lib(OpError::guest(b(path), e));
        if self.fs.getattr(ino).map_err(at)?.kind != FileKind::Symlink {
            return Ok(None);
        }
        Ok(Some(
            self.fs
                .readlink(ino)
                .map_err(at)?
                .to_string_lossy()
                .into_owned(),
        ))
    }

    fn list(&self, path: &str) -> Result<Option<Vec<String>>> {
        let Some(ino) = self.ino(path, true)? else {
            return Ok(None);
        };
        Ok(Some(
            self.fs
                .readdir_all(ino)
                .map_err(|e| lib(OpError::guest(b(path), e)))?
                .into_iter()
                .filter(|e| e.name != "." && e.name != "..")
                // Guest paths here are UTF-8 (they come from our operations and globs); a
                // name that is not cannot be one of them.
                .filter_map(|e| e.name.to_str().map(str::to_string))
                .collect(),
        ))
    }

    fn write(&mut self, path: &str, data: &[u8], new: NewFile) -> Result<()> {
        if self.ino(path, true)?.is_some() {
            return ops::edit_file(self.fs, b(path), |_| Ok(data.to_vec())).map_err(lib);
        }
        let real = ops::real_path(self.fs, b(path)).or_else(|e| match e.guest_errno() {
            Some(errno::ENOENT) => Ok(b(path).to_vec()),
            _ => Err(e),
        });
        let real = real.map_err(lib)?;
        let (dir, name) = ops::parent_and_name(self.fs, &real).map_err(lib)?;
        let a = self
            .fs
            .create(dir, &name, new.mode & 0o7777, new.uid, new.gid)
            .map_err(|e| lib(OpError::guest(b(path), e)))?;
        let mut src = data;
        ops::write_all(
            self.fs,
            a.ino,
            |buf| {
                let n = buf.len().min(src.len());
                buf[..n].copy_from_slice(&src[..n]);
                src = &src[n..];
                Ok(n)
            },
            b(path),
        )
        .map_err(lib)?;
        Ok(())
    }

    fn mkdir_p(&mut self, path: &str, new: NewFile) -> Result<()> {
        let existed = self.ino(path, true)?.is_some();
        ops::mkdir(self.fs, b(path), new.mode & 0o7777, true).map_err(lib)?;
        if !existed && (new.uid != 0 || new.gid != 0) {
            self.set(
                path,
                true,
                SetAttr {
                    uid: Some(new.uid),
                    gid: Some(new.gid),
                    ..SetAttr::default()
                },
            )?;
        }
        Ok(())
    }

    fn remove_all(&mut self, path: &str) -> Result<bool> {
        if !ops::exists(self.fs, b(path)).map_err(lib)? {
            return Ok(false);
        }
        ops::remove(
            self.fs,
            b(path),
            Remove {
                recursive: true,
                force: true,
            },
        )
        .map_err(lib)?;
        Ok(true)
    }

    fn symlink(&mut self, target: &str, link: &str) -> Result<()> {
        // ln -sf: what the link's name holds (not a directory) is replaced.
        let mut l = link.to_string();
        if self.stat(link, true)?.map(|m| m.kind) == Some(Kind::Dir) {
            let base = target
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(target);
            l = format!("{}/{base}", link.trim_end_matches('/'));
        }
        if let Some(m) = self.stat(&l, false)? {
            if m.kind == Kind::Dir {
                return Err(lib(OpError::errno(b(&l), "symlink", errno::EISDIR)));
            }
            ops::remove(self.fs, b(&l), Remove::default()).map_err(lib)?;
        }
        ops::ln(self.fs, OsStr::new(target), b(&l), true).map_err(lib)
    }

    fn chmod(&mut self, path: &str, mode: u32) -> Result<()> {
        self.set(
            path,
            true,
            SetAttr {
                mode: Some(mode & 0o7777),
                ..SetAttr::default()
            },
        )
    }

    fn chown(&mut self, path: &str, uid: u32, gid: u32) -> Result<()> {
        self.set(
            path,
            false,
            SetAttr {
                uid: Some(uid),
                gid: Some(gid),
                ..SetAttr::default()
            },
        )
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let (sdir, sname) = ops::parent_and_name(self.fs, b(from)).map_err(lib)?;
        if self
            .fs
            .lookup(sdir, &sname)
            .map_err(|e| lib(OpError::guest(b(from), e)))?
            .is_none()
        {
            return Err(lib(OpError::errno(b(from), "rename", errno::ENOENT)));
        }
        let mut dest = b(to).to_vec();
        if self.stat(to, true)?.map(|m| m.kind) == Some(Kind::Dir) {
            dest = ops::join(&dest, sname.as_bytes());
        }
        let (ddir, dname) = ops::parent_and_name(self.fs, &dest).map_err(lib)?;
        self.fs
            .rename(sdir, &sname, ddir, &dname, 0)
            .map_err(|e| lib(OpError::guest(&dest, e)))
    }

    fn touch(&mut self, path: &str, new: NewFile) -> Result<()> {
        if self.ino(path, true)?.is_some() {
            return self.set(
                path,
                true,
                SetAttr {
                    atime: Some(TimeSet::Now),
                    mtime: Some(TimeSet::Now),
                    ..SetAttr::default()
                },
            );
        }
        self.write(path, b"", new)
    }

    fn truncate(&mut self, path: &str, size: u64) -> Result<()> {
        if self.stat(path, true)?.map(|m| m.kind) != Some(Kind::File) {
            return Err(lib(OpError::errno(b(path), "truncate", errno::EINVAL)));
        }
        self.set(
            path,
            true,
            SetAttr {
                size: Some(size),
                ..SetAttr::default()
            },
        )
    }

    fn overwrite(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        let ino = self
            .ino(path, true)?
            .ok_or_else(|| lib(OpError::errno(b(path), "write", errno::ENOENT)))?;
        self.fs
            .write(ino, offset, data)
            .map_err(|e| lib(OpError::guest(b(path), e)))?;
        Ok(())
    }

    fn set_xattr(&mut self, path: &str, name: &str, value: &[u8]) -> Result<()> {
        let ino = self
            .ino(path, false)?
            .ok_or_else(|| lib(OpError::errno(b(path), "setxattr", errno::ENOENT)))?;
        self.fs
            .setxattr(ino, OsStr::new(name), value, 0)
            .map_err(|e| lib(OpError::guest(b(path), e)))
    }

    fn copy_in(&mut self, local: &Path, remote_dir: &str) -> Result<()> {
        ops::copy_in(self.fs, &[local], b(remote_dir)).map_err(lib)
    }
}
