//! Host files and directories copied (recursively) into a guest directory, as `tar` does in
//! the libguestfs appliance for virt-copy-in: modes, owners, times, symlinks, hard links among
//! the copied files, device nodes and FIFOs kept. An existing guest file of the same name is
//! replaced; an existing directory is merged into.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::{errno, FileKind, FileSystemMut, Ino, SetAttr, TimeSet, Timestamp};

use super::{at, join, write_all, OpError, OpResult, MAX_DEPTH};

/// Copies each host path in `sources` into the guest directory `dest` (symlinks followed
/// inside the guest). `dir/.` as a source copies the directory's contents.
pub fn copy_in(fs: &dyn FileSystemMut, sources: &[&Path], dest: &[u8]) -> OpResult<()> {
    for s in sources {
        std::fs::symlink_metadata(s).map_err(|e| OpError::host(s, e))?;
    }
    let dir = at(dest, fs.resolve(dest, true))?;
    if at(dest, fs.getattr(dir))?.kind != FileKind::Dir {
        return Err(OpError::Other(format!(
            "{}: not a directory in the guest",
            String::from_utf8_lossy(dest)
        )));
    }
    let mut c = Copier {
        fs,
        links: HashMap::new(),
    };
    for s in sources {
        let name = s
            .file_name()
            .map(OsString::from)
            .unwrap_or_else(|| OsString::from("."));
        if name == "." || name == ".." {
            c.contents(s, dir, dest, 0)?;
        } else {
            c.copy(s, dir, &name, &join(dest, name.as_bytes()), 0)?;
        }
    }
    Ok(())
}

struct Copier<'a> {
    fs: &'a dyn FileSystemMut,
    /// Host (dev, inode) of files with several links → the guest inode made for the first.
    links: HashMap<(u64, u64), Ino>,
}

impl Copier<'_> {
    fn copy(
        &mut self,
        src: &Path,
        dir: Ino,
        name: &OsString,
        gpath: &[u8],
        depth: usize,
    ) -> OpResult<()> {
        let host = |e: std::io::Error| OpError::host(src, e);
        let m = std::fs::symlink_metadata(src).map_err(host)?;
        let ft = m.file_type();
        let fs = self.fs;
        let existing = at(gpath, fs.lookup(dir, name))?;
        let mut merge_into = None;
        if let Some(old) = existing {
            let old_dir = at(gpath, fs.getattr(old))?.kind == FileKind::Dir;
            match (old_dir, ft.is_dir()) {
                (true, true) => merge_into = Some(old),
                (true, false) => return Err(OpError::errno(gpath, "copy-in", errno::EISDIR)),
                (false, _) => at(gpath, fs.unlink(dir, name))?,
            }
        }
        let (uid, gid) = (m.uid(), m.gid());
        let perm = m.mode() & 0o7777;
        let ino = if ft.is_dir() {
            if depth >= MAX_DEPTH {
                return Err(OpError::Other(format!(
                    "{}: more than {MAX_DEPTH} directory levels",
                    src.display()
                )));
            }
            let ino = match merge_into {
                Some(old) => old,
                None => at(gpath, fs.mkdir(dir, name, 0o700, uid, gid))?.ino,
            };
            self.contents(src, ino, gpath, depth + 1)?;
            ino
        } else if ft.is_symlink() {
            let target = std::fs::read_link(src).map_err(host)?;
            at(gpath, fs.symlink(dir, name, target.as_os_str(), uid, gid))?.ino
        } else {
            let key = (m.dev(), m.ino());
            if m.nlink() > 1 {
                if let Some(&first) = self.links.get(&key) {
                    at(gpath, fs.link(first, dir, name))?;
                    return Ok(());
                }
            }
            let ino = if ft.is_file() {
                let ino = at(gpath, fs.create(dir, name, 0o600, uid, gid))?.ino;
                let mut f = std::fs::File::open(src).map_err(host)?;
                write_all(fs, ino, |b| f.read(b), gpath)?;
                ino
            } else {
                let kind = if ft.is_fifo() {
                    0o010000
                } else if ft.is_char_device() {
                    0o020000
                } else if ft.is_block_device() {
                    0o060000
                } else if ft.is_socket() {
                    0o140000
                } else {
                    return Err(OpError::Other(format!(
                        "{}: unknown file type",
                        src.display()
                    )));
                };
                at(gpath, fs.mknod(dir, name, kind | perm, m.rdev(), uid, gid))?.ino
            };
            if m.nlink() > 1 {
                self.links.insert(key, ino);
            }
            ino
        };
        // Owner, then mode (a chown would clear set-ID bits on a kernel), then times, after
        // the content (a directory's mtime after its entries).
        let c = SetAttr {
            mode: (!ft.is_symlink()).then_some(perm),
            uid: Some(uid),
            gid: Some(gid),
            size: None,
            atime: Some(TimeSet::At(Timestamp {
                secs: m.atime(),
                nanos: m.atime_nsec() as u32,
            })),
            mtime: Some(TimeSet::At(Timestamp {
                secs: m.mtime(),
                nanos: m.mtime_nsec() as u32,
            })),
        };
        at(gpath, fs.setattr(ino, &c))?;
        Ok(())
    }

    /// Copies the entries of host directory `src` into guest directory `dir`.
    fn contents(&mut self, src: &Path, dir: Ino, gpath: &[u8], depth: usize) -> OpResult<()> {
        let host = |e: std::io::Error| OpError::host(src, e);
        let mut names: Vec<OsString> = std::fs::read_dir(src)
            .map_err(host)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(host)?;
        names.sort();
        for n in names {
            let child = join(gpath, n.as_bytes());
            self.copy(&src.join(&n), dir, &n, &child, depth)?;
        }
        Ok(())
    }
}
