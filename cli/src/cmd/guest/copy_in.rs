//! `vdisk copy-in`: virt-copy-in. Copy host files and directories (recursively) into a guest
//! directory, keeping modes, owners, times, symlinks, hard links among the copied files,
//! device nodes and FIFOs, as `tar` does in the libguestfs appliance. An existing guest file
//! of the same name is replaced; an existing directory is merged into.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use vdisk_guestfs::fs::{
    errno, FileKind, FileSystem, FileSystemMut, Ino, SetAttr, TimeSet, Timestamp,
};
use vdisk_guestfs::stack::Stack;

use super::rw::{absolute, write_all, Edit};
use super::write::os_text;
use super::{path_error, DiskArgs, MountSelect};
use crate::{CmdResult, Failure};

/// Directory levels followed below each source, a bound against runaway trees.
const MAX_DEPTH: usize = 4096;

/// `vdisk copy-in -a IMAGE… (-m DEV… | -i) HOSTPATH… GUESTDIR`.
#[derive(Debug, clap::Args)]
pub struct CopyInArgs {
    #[command(flatten)]
    disks: DiskArgs,
    #[command(flatten)]
    select: MountSelect,
    /// Host files or directories, then the guest directory to copy them into.
    #[arg(required = true, num_args = 2.., value_name = "HOSTPATH… GUESTDIR")]
    paths: Vec<PathBuf>,
}

/// Copies, then flushes and closes the images.
pub fn run(a: CopyInArgs) -> CmdResult {
    let (dest, sources) = a.paths.split_last().expect("clap requires two paths");
    for s in sources {
        std::fs::symlink_metadata(s)
            .map_err(|e| Failure::new(format!("{}: {}", s.display(), os_text(&e))))?;
    }
    let edit = Edit::open(&a.disks, &a.select)?;
    let dest = absolute(dest.as_os_str());
    let r = (|| {
        let dir = edit
            .tree
            .resolve(&dest, true)
            .map_err(|e| path_error(&dest, e))?;
        if edit
            .tree
            .getattr(dir)
            .map_err(|e| path_error(&dest, e))?
            .kind
            != FileKind::Dir
        {
            return Err(Failure::new(format!(
                "{}: not a directory in the guest",
                String::from_utf8_lossy(&dest)
            )));
        }
        let mut c = Copier {
            fs: &edit.tree,
            links: HashMap::new(),
        };
        for s in sources {
            let name = s
                .file_name()
                .map(OsString::from)
                .unwrap_or_else(|| OsString::from("."));
            if name == "." || name == ".." {
                // "copy-in dir/. /x": the directory's contents.
                c.contents(s, dir, &dest, 0)?;
            } else {
                c.copy(s, dir, &name, &join(&dest, name.as_bytes()), 0)?;
            }
        }
        Ok(())
    })();
    edit.close(r).map(|()| 0)
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

struct Copier<'a> {
    fs: &'a Stack,
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
    ) -> Result<(), Failure> {
        let host = |e: std::io::Error| Failure::new(format!("{}: {}", src.display(), os_text(&e)));
        let m = std::fs::symlink_metadata(src).map_err(host)?;
        let ft = m.file_type();
        let fs = self.fs;
        let existing = fs.lookup(dir, name).map_err(|e| path_error(gpath, e))?;
        let mut merge_into = None;
        if let Some(old) = existing {
            let old_dir = fs.getattr(old).map_err(|e| path_error(gpath, e))?.kind == FileKind::Dir;
            match (old_dir, ft.is_dir()) {
                (true, true) => merge_into = Some(old),
                (true, false) => {
                    return Err(path_error(
                        gpath,
                        vdisk_guestfs::fs::errno_error("copy-in", errno::EISDIR),
                    ))
                }
                (false, _) => fs.unlink(dir, name).map_err(|e| path_error(gpath, e))?,
            }
        }
        let (uid, gid) = (m.uid(), m.gid());
        let perm = m.mode() & 0o7777;
        let ino = if ft.is_dir() {
            if depth >= MAX_DEPTH {
                return Err(Failure::new(format!(
                    "{}: more than {MAX_DEPTH} directory levels",
                    src.display()
                )));
            }
            let ino = match merge_into {
                Some(old) => old,
                None => {
                    fs.mkdir(dir, name, 0o700, uid, gid)
                        .map_err(|e| path_error(gpath, e))?
                        .ino
                }
            };
            self.contents(src, ino, gpath, depth + 1)?;
            ino
        } else if ft.is_symlink() {
            let target = std::fs::read_link(src).map_err(host)?;
            fs.symlink(dir, name, target.as_os_str(), uid, gid)
                .map_err(|e| path_error(gpath, e))?
                .ino
        } else {
            let key = (m.dev(), m.ino());
            if m.nlink() > 1 {
                if let Some(&first) = self.links.get(&key) {
                    fs.link(first, dir, name)
                        .map_err(|e| path_error(gpath, e))?;
                    return Ok(());
                }
            }
            let ino = if ft.is_file() {
                let ino = fs
                    .create(dir, name, 0o600, uid, gid)
                    .map_err(|e| path_error(gpath, e))?
                    .ino;
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
                    return Err(Failure::new(format!(
                        "{}: unknown file type",
                        src.display()
                    )));
                };
                fs.mknod(dir, name, kind | perm, m.rdev(), uid, gid)
                    .map_err(|e| path_error(gpath, e))?
                    .ino
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
        fs.setattr(ino, &c).map_err(|e| path_error(gpath, e))?;
        Ok(())
    }

    /// Copies the entries of host directory `src` into guest directory `dir`.
    fn contents(
        &mut self,
        src: &Path,
        dir: Ino,
        gpath: &[u8],
        depth: usize,
    ) -> Result<(), Failure> {
        let host = |e: std::io::Error| Failure::new(format!("{}: {}", src.display(), os_text(&e)));
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
