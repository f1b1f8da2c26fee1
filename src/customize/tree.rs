//! [`GuestFiles`] over a guest filesystem tree ([`FileSystemMut`], such as the
//! [`Stack`](vdisk_guestfs::stack::Stack) of `-m`/`-i`): each call one or a few filesystem
//! operations, each of which leaves the filesystem consistent.
//!
//! A rewrite of an existing file is virt-edit's atomic replace: a new file beside it with
//! the old one's mode, owner and extended attributes (so an SELinux label survives), the new
//! content written, then renamed over the old name — a crash leaves the old file or the new
//! one, never half of either.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use vdisk_block::{Error, Result};
use vdisk_guestfs::fs::{
    errno, errno_error, FileKind, FileSystemMut, Ino, SetAttr, TimeSet, MAX_SYMLINK_FOLLOWS,
};

use super::{GuestFiles, Kind, Meta, NewFile};

/// Directory levels a recursive removal descends.
pub const MAX_DEPTH: usize = 256;

/// Bytes written per call.
const CHUNK: usize = 1 << 20;

/// A guest tree seen through [`GuestFiles`].
pub struct TreeFiles<'a, F: FileSystemMut + ?Sized> {
    fs: &'a F,
}

impl<F: FileSystemMut + ?Sized> std::fmt::Debug for TreeFiles<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TreeFiles")
    }
}

fn named(path: &str, e: Error) -> Error {
    e.with_path(path)
}

fn missing(e: &Error) -> bool {
    matches!(errno(e), errno::ENOENT | errno::ENOTDIR)
}

fn kind_of(k: FileKind) -> Kind {
    match k {
        FileKind::File => Kind::File,
        FileKind::Dir => Kind::Dir,
        FileKind::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// Splits "/a/b/c" into ("/a/b", "c"); None for the root.
fn split(path: &str) -> Option<(&str, &str)> {
    let t = path.trim_end_matches('/');
    let i = t.rfind('/')?;
    let name = &t[i + 1..];
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    Some((if i == 0 { "/" } else { &t[..i] }, name))
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

impl<'a, F: FileSystemMut + ?Sized> TreeFiles<'a, F> {
    /// The tree `fs` as [`GuestFiles`].
    pub fn new(fs: &'a F) -> Self {
        TreeFiles { fs }
    }

    fn resolve(&self, path: &str, follow: bool) -> Result<Option<Ino>> {
        match self.fs.resolve(path.as_bytes(), follow) {
            Ok(i) => Ok(Some(i)),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(named(path, e)),
        }
    }

    /// The directory holding `path` (symlinks in it followed) and the last name.
    fn parent(&self, path: &str) -> Result<(Ino, OsString)> {
        let (dir, name) =
            split(path).ok_or_else(|| named(path, errno_error("path", errno::EINVAL)))?;
        let d = self
            .fs
            .resolve(dir.as_bytes(), true)
            .map_err(|e| named(path, e))?;
        if self.fs.getattr(d).map_err(|e| named(path, e))?.kind != FileKind::Dir {
            return Err(named(path, errno_error("path", errno::ENOTDIR)));
        }
        Ok((d, OsString::from(name)))
    }

    /// `path` with symlinks in its last component replaced by their targets.
    fn real_path(&self, path: &str) -> Result<String> {
        let mut cur = path.to_string();
        for _ in 0..MAX_SYMLINK_FOLLOWS {
            let Some(ino) = self.resolve(&cur, false)? else {
                return Ok(cur);
            };
            if self.fs.getattr(ino).map_err(|e| named(path, e))?.kind != FileKind::Symlink {
                return Ok(cur);
            }
            let t = self.fs.readlink(ino).map_err(|e| named(path, e))?;
            let t = t.to_string_lossy();
            cur = if t.starts_with('/') {
                t.into_owned()
            } else {
                let (dir, _) = split(&cur).unwrap_or(("/", ""));
                join(dir, &t)
            };
        }
        Err(named(path, errno_error("resolve", errno::ELOOP)))
    }

    fn write_data(&self, ino: Ino, data: &[u8], path: &str) -> Result<()> {
        let mut off = 0usize;
        while off < data.len() {
            let end = (off + CHUNK).min(data.len());
            self.fs
                .write(ino, off as u64, &data[off..end])
                .map_err(|e| named(path, e))?;
            off = end;
        }
        Ok(())
    }

    fn temp_name(&self, dir: Ino, name: &OsStr) -> Result<OsString> {
        let pid = std::process::id();
        for i in 0u32..1000 {
            let mut n = OsString::from(format!(".vdisk-{pid}-{i}-"));
            n.push(OsStr::from_bytes(&name.as_bytes()[..name.len().min(200)]));
            if self.fs.lookup(dir, &n)?.is_none() {
                return Ok(n);
            }
        }
        Err(errno_error("create", errno::EEXIST))
    }

    fn remove_tree(&self, dir: Ino, path: &str, depth: usize) -> Result<()> {
        if depth >= MAX_DEPTH {
            return Err(Error::invalid(format!(
                "{path}: more than {MAX_DEPTH} directory levels"
            )));
        }
        for e in self.fs.readdir_all(dir).map_err(|x| named(path, x))? {
            if e.name == "." || e.name == ".." {
                continue;
            }
            let child = join(path, &e.name.to_string_lossy());
            if e.kind == FileKind::Dir {
                self.remove_tree(e.ino, &child, depth + 1)?;
                self.fs.rmdir(dir, &e.name).map_err(|x| named(&child, x))?;
            } else {
                self.fs.unlink(dir, &e.name).map_err(|x| named(&child, x))?;
            }
        }
        Ok(())
    }

    fn is_dir(&self, path: &str) -> Result<bool> {
        Ok(self.stat(path, true)?.map(|m| m.kind) == Some(Kind::Dir))
    }
}

impl<F: FileSystemMut + ?Sized> GuestFiles for TreeFiles<'_, F> {
    fn stat(&self, path: &str, follow: bool) -> Result<Option<Meta>> {
        let Some(ino) = self.resolve(path, follow)? else {
            return Ok(None);
        };
        let a = self.fs.getattr(ino).map_err(|e| named(path, e))?;
        Ok(Some(Meta {
            kind: kind_of(a.kind),
            mode: a.mode & 0o7777,
            uid: a.uid,
            gid: a.gid,
            size: a.size,
        }))
    }

    fn read(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let Some(ino) = self.resolve(path, true)? else {
            return Ok(None);
        };
        let a = self.fs.getattr(ino).map_err(|e| named(path, e))?;
        if a.kind != FileKind::File {
            let code = if a.kind == FileKind::Dir {
                errno::EISDIR
            } else {
                errno::EINVAL
            };
            return Err(named(path, errno_error("read", code)));
        }
        if a.size > limit {
            return Err(Error::invalid(format!(
                "{path}: {} bytes is more than the {limit} read here",
                a.size
            )));
        }
        let len = usize::try_from(a.size).map_err(|_| Error::invalid("file size"))?;
        let mut out = vec![0u8; len];
        let mut off = 0;
        while off < out.len() {
            let n = self
                .fs
                .read(ino, off as u64, &mut out[off..])
                .map_err(|e| named(path, e))?;
            if n == 0 {
                out.truncate(off);
                break;
            }
            off += n;
        }
        Ok(Some(out))
    }

    fn read_link(&self, path: &str) -> Result<Option<String>> {
        let Some(ino) = self.resolve(path, false)? else {
            return Ok(None);
        };
        if self.fs.getattr(ino).map_err(|e| named(path, e))?.kind != FileKind::Symlink {
            return Ok(None);
        }
        Ok(Some(
            self.fs
                .readlink(ino)
                .map_err(|e| named(path, e))?
                .to_string_lossy()
                .into_owned(),
        ))
    }

    fn list(&self, path: &str) -> Result<Option<Vec<String>>> {
        let Some(ino) = self.resolve(path, true)? else {
            return Ok(None);
        };
        Ok(Some(
            self.fs
                .readdir_all(ino)
                .map_err(|e| named(path, e))?
                .into_iter()
                .filter(|e| e.name != "." && e.name != "..")
                .filter_map(|e| e.name.to_str().map(str::to_string))
                .collect(),
        ))
    }

    fn write(&mut self, path: &str, data: &[u8], new: NewFile) -> Result<()> {
        let real = self.real_path(path)?;
        let (dir, name) = self.parent(&real)?;
        let Some(old) = self.fs.lookup(dir, &name).map_err(|e| named(path, e))? else {
            let a = self
                .fs
                .create(dir, &name, new.mode & 0o7777, new.uid, new.gid)
                .map_err(|e| named(path, e))?;
            return self.write_data(a.ino, data, path);
        };
        let attr = self.fs.getattr(old).map_err(|e| named(path, e))?;
        if attr.kind != FileKind::File {
            return Err(named(path, errno_error("write", errno::EISDIR)));
        }
        let tmp_name = self.temp_name(dir, &name).map_err(|e| named(path, e))?;
        let tmp = self
            .fs
            .create(dir, &tmp_name, attr.mode & 0o7777, attr.uid, attr.gid)
            .map_err(|e| named(path, e))?;
        let r = (|| {
            for x in self.fs.listxattr(old).map_err(|e| named(path, e))? {
                if let Some(v) = self.fs.getxattr(old, &x).map_err(|e| named(path, e))? {
                    self.fs
                        .setxattr(tmp.ino, &x, &v, 0)
                        .map_err(|e| named(path, e))?;
                }
            }
            self.write_data(tmp.ino, data, path)?;
            self.fs
                .setattr(
                    tmp.ino,
                    &SetAttr {
                        mode: Some(attr.mode & 0o7777),
                        ..SetAttr::default()
                    },
                )
                .map_err(|e| named(path, e))?;
            self.fs
                .rename(dir, &tmp_name, dir, &name, 0)
                .map_err(|e| named(path, e))
        })();
        if r.is_err() {
            let _ = self.fs.unlink(dir, &tmp_name);
        }
        r
    }

    fn mkdir_p(&mut self, path: &str, new: NewFile) -> Result<()> {
        let mut cur = self.fs.root_ino();
        let mut sofar = String::new();
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            sofar.push('/');
            sofar.push_str(comp);
            cur = match self.resolve(&sofar, true)? {
                Some(ino) => {
                    if self.fs.getattr(ino).map_err(|e| named(&sofar, e))?.kind != FileKind::Dir {
                        return Err(named(&sofar, errno_error("mkdir", errno::ENOTDIR)));
                    }
                    ino
                }
                None => {
                    self.fs
                        .mkdir(cur, OsStr::new(comp), new.mode & 0o7777, new.uid, new.gid)
                        .map_err(|e| named(&sofar, e))?
                        .ino
                }
            };
        }
        Ok(())
    }

    fn remove_all(&mut self, path: &str) -> Result<bool> {
        let Some((dirp, _)) = split(path) else {
            return Err(Error::invalid(format!(
                "{path}: refusing to remove the root"
            )));
        };
        if self.resolve(dirp, true)?.is_none() {
            return Ok(false);
        }
        let (dir, name) = self.parent(path)?;
        let Some(ino) = self.fs.lookup(dir, &name).map_err(|e| named(path, e))? else {
            return Ok(false);
        };
        if self.fs.getattr(ino).map_err(|e| named(path, e))?.kind == FileKind::Dir {
            self.remove_tree(ino, path, 0)?;
            self.fs.rmdir(dir, &name).map_err(|e| named(path, e))?;
        } else {
            self.fs.unlink(dir, &name).map_err(|e| named(path, e))?;
        }
        Ok(true)
    }

    fn symlink(&mut self, target: &str, link: &str) -> Result<()> {
        let mut link = link.to_string();
        if self.is_dir(&link)? {
            let base = target
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(target);
            link = join(&link, base);
        }
        let (dir, name) = self.parent(&link)?;
        if let Some(old) = self.fs.lookup(dir, &name).map_err(|e| named(&link, e))? {
            if self.fs.getattr(old).map_err(|e| named(&link, e))?.kind == FileKind::Dir {
                return Err(named(&link, errno_error("symlink", errno::EISDIR)));
            }
            self.fs.unlink(dir, &name).map_err(|e| named(&link, e))?;
        }
        self.fs
            .symlink(dir, &name, OsStr::new(target), 0, 0)
            .map_err(|e| named(&link, e))?;
        Ok(())
    }

    fn chmod(&mut self, path: &str, mode: u32) -> Result<()> {
        let ino = self
            .fs
            .resolve(path.as_bytes(), true)
            .map_err(|e| named(path, e))?;
        self.fs
            .setattr(
                ino,
                &SetAttr {
                    mode: Some(mode & 0o7777),
                    ..SetAttr::default()
                },
            )
            .map_err(|e| named(path, e))?;
        Ok(())
    }

    fn chown(&mut self, path: &str, uid: u32, gid: u32) -> Result<()> {
        let ino = self
            .fs
            .resolve(path.as_bytes(), false)
            .map_err(|e| named(path, e))?;
        self.fs
            .setattr(
                ino,
                &SetAttr {
                    uid: Some(uid),
                    gid: Some(gid),
                    ..SetAttr::default()
                },
            )
            .map_err(|e| named(path, e))?;
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let (sdir, sname) = self.parent(from)?;
        if self
            .fs
            .lookup(sdir, &sname)
            .map_err(|e| named(from, e))?
            .is_none()
        {
            return Err(named(from, errno_error("rename", errno::ENOENT)));
        }
        let mut to = to.to_string();
        if self.is_dir(&to)? {
            to = join(&to, &sname.to_string_lossy());
        }
        let (ddir, dname) = self.parent(&to)?;
        self.fs
            .rename(sdir, &sname, ddir, &dname, 0)
            .map_err(|e| named(&to, e))
    }

    fn touch(&mut self, path: &str, new: NewFile) -> Result<()> {
        match self.resolve(path, true)? {
            Some(ino) => {
                self.fs
                    .setattr(
                        ino,
                        &SetAttr {
                            atime: Some(TimeSet::Now),
                            mtime: Some(TimeSet::Now),
                            ..SetAttr::default()
                        },
                    )
                    .map_err(|e| named(path, e))?;
                Ok(())
            }
            None => {
                let real = self.real_path(path)?;
                let (dir, name) = self.parent(&real)?;
                self.fs
                    .create(dir, &name, new.mode & 0o7777, new.uid, new.gid)
                    .map_err(|e| named(path, e))?;
                Ok(())
            }
        }
    }

    fn truncate(&mut self, path: &str, size: u64) -> Result<()> {
        let ino = self
            .fs
            .resolve(path.as_bytes(), true)
            .map_err(|e| named(path, e))?;
        if self.fs.getattr(ino).map_err(|e| named(path, e))?.kind != FileKind::File {
            return Err(named(path, errno_error("truncate", errno::EINVAL)));
        }
        self.fs
            .setattr(
                ino,
                &SetAttr {
                    size: Some(size),
                    ..SetAttr::default()
                },
            )
            .map_err(|e| named(path, e))?;
        Ok(())
    }

    fn overwrite(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        let ino = self
            .fs
            .resolve(path.as_bytes(), true)
            .map_err(|e| named(path, e))?;
        self.fs
            .write(ino, offset, data)
            .map_err(|e| named(path, e))?;
        Ok(())
    }
}
