//! Guest operations written once over the path-level traits: what the FUSE-less commands
//! (`write`, `edit`, `copy-in`, `copy-out`, `rm`, `mkdir`, `chmod`, `chown`, `ln`) and the
//! customization commands do to a guest tree, whatever engine (or stack of engines, as the
//! guest crate mounts them) serves it.
//!
//! ```text
//!   caller (CLI, customize, a VMM)          this module                 engines
//!   guest paths as bytes  ->  resolve / parent_and_name / atomic edit -> FileSystem(Mut)
//!   host paths            ->  copy_in / copy_out (never following host symlinks)
//! ```
//!
//! Every function takes absolute guest paths as bytes (see [`absolute`]), follows symlinks
//! inside the guest tree only, and fails with an [`OpError`] that prints as one line naming
//! the guest (or host) path and the problem.
//!
//! ```no_run
//! use vdisk_fs::FileSystemMut;
//! use vdisk_fs::ops;
//! # fn tree() -> std::sync::Arc<dyn FileSystemMut> { unimplemented!() }
//! let fs = tree();
//! ops::write_file(&*fs, b"/etc/hostname", &mut &b"web01\n"[..]).unwrap();
//! ops::edit_file(&*fs, b"/etc/hosts", |old| {
//!     let mut v = old.to_vec();
//!     v.extend_from_slice(b"10.0.0.5 web01\n");
//!     Ok(v)
//! })
//! .unwrap();
//! ```

pub mod copy_in;
#[allow(unsafe_code)]
pub mod copy_out;
pub mod subst;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use vdisk_block::Error;

use crate::{
    errno, errno_error, FileKind, FileSystem, FileSystemMut, Ino, SetAttr, TimeSet,
    MAX_SYMLINK_FOLLOWS,
};

pub use copy_in::copy_in;
pub use copy_out::copy_out;

/// Bytes moved per read or write call.
pub const CHUNK: usize = 1 << 20;
/// The largest file [`edit_file`] edits (it is held in memory).
pub const MAX_EDIT_SIZE: u64 = 256 << 20;
/// Directory levels the recursive operations follow: a bound against runaway trees (and
/// hostile hard-linked directory loops).
pub const MAX_DEPTH: usize = 4096;

/// Why a guest operation failed: one line naming the path and the problem.
#[derive(Debug)]
pub enum OpError {
    /// The guest filesystem failed or refused an operation on a guest path.
    Guest {
        /// The guest path, as given.
        path: Vec<u8>,
        /// What the filesystem said (its errno: [`crate::errno`]).
        source: Error,
    },
    /// A host file could not be read or written.
    Host {
        /// The host path.
        path: PathBuf,
        /// What the host said.
        source: io::Error,
    },
    /// Anything else, already one line.
    Other(String),
}

impl OpError {
    /// An error about guest path `path`.
    pub fn guest(path: &[u8], source: Error) -> OpError {
        OpError::Guest {
            path: path.to_vec(),
            source,
        }
    }

    /// An error about guest path `path` carrying errno `code`.
    pub fn errno(path: &[u8], op: &'static str, code: i32) -> OpError {
        OpError::guest(path, errno_error(op, code))
    }

    /// An error about host path `path`.
    pub fn host(path: &Path, source: io::Error) -> OpError {
        OpError::Host {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The errno of a guest error (ENOENT, EEXIST, ...), if this is one.
    pub fn guest_errno(&self) -> Option<i32> {
        match self {
            OpError::Guest { source, .. } => Some(crate::errno(source)),
            _ => None,
        }
    }
}

/// An OS error's text without Rust's " (os error N)".
pub fn os_text(e: &io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Guest { path, source } => {
                let text = match source {
                    Error::Io { source, .. } => os_text(source),
                    Error::Guest { errno, .. } => os_text(&io::Error::from_raw_os_error(*errno)),
                    other => other.to_string(),
                };
                write!(f, "{}: {text}", String::from_utf8_lossy(path))
            }
            OpError::Host { path, source } => {
                write!(f, "{}: {}", path.display(), os_text(source))
            }
            OpError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for OpError {}

/// What the operations return.
pub type OpResult<T> = std::result::Result<T, OpError>;

/// `r`'s error, as an error about guest path `path`.
fn at<T>(path: &[u8], r: vdisk_block::Result<T>) -> OpResult<T> {
    r.map_err(|e| OpError::guest(path, e))
}

/// A guest path as bytes, absolute ("etc/x" is taken as "/etc/x": the guest's root is the
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

/// `dir/name` as a guest path.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The directory holding `path` (resolved, symlinks followed inside the guest) and the last
/// component's name. The root has no parent, and `.` or `..` name no entry: refused with a
/// line that says so.
pub fn parent_and_name(fs: &dyn FileSystem, path: &[u8]) -> OpResult<(Ino, OsString)> {
    let mut trimmed = path;
    while trimmed.len() > 1 && trimmed.ends_with(b"/") {
        trimmed = &trimmed[..trimmed.len() - 1];
    }
    let (dir, name) = match trimmed.iter().rposition(|&c| c == b'/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (&b""[..], trimmed),
    };
    if name.is_empty() {
        return Err(OpError::Other(format!(
            "{}: is the guest's root directory, which cannot be removed, replaced or made",
            String::from_utf8_lossy(path)
        )));
    }
    if name == b"." || name == b".." {
        return Err(OpError::Other(format!(
            "{}: ends in \"{}\", which names a directory by its relation, not an entry to change",
            String::from_utf8_lossy(path),
            String::from_utf8_lossy(name)
        )));
    }
    let dir = if dir.is_empty() { &b"/"[..] } else { dir };
    let ino = at(path, fs.resolve(dir, true))?;
    if at(path, fs.getattr(ino))?.kind != FileKind::Dir {
        return Err(OpError::errno(path, "path", errno::ENOTDIR));
    }
    Ok((ino, OsString::from(OsStr::from_bytes(name))))
}

/// Writes what `next` fills into regular file `ino` from offset 0 (called with a buffer
/// until it returns 0); returns the byte count. The file is not truncated first.
pub fn write_all(
    fs: &dyn FileSystemMut,
    ino: Ino,
    mut next: impl FnMut(&mut [u8]) -> io::Result<usize>,
    path: &[u8],
) -> OpResult<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    loop {
        // Fill a whole chunk (a pipe may come in small pieces) before writing it.
        let mut have = 0;
        while have < buf.len() {
            let n = next(&mut buf[have..]).map_err(|e| {
                OpError::Other(format!(
                    "{}: {}",
                    String::from_utf8_lossy(path),
                    os_text(&e)
                ))
            })?;
            if n == 0 {
                break;
            }
            have += n;
        }
        if have == 0 {
            return Ok(off);
        }
        at(path, fs.write(ino, off, &buf[..have]))?;
        off += have as u64;
        if have < buf.len() {
            return Ok(off);
        }
    }
}

/// Reads all of regular guest file `ino`, refusing files over `limit` bytes.
pub fn read_all(fs: &dyn FileSystem, ino: Ino, limit: u64, path: &[u8]) -> OpResult<Vec<u8>> {
    let a = at(path, fs.getattr(ino))?;
    if a.kind != FileKind::File {
        let code = if a.kind == FileKind::Dir {
            errno::EISDIR
        } else {
            errno::EINVAL
        };
        return Err(OpError::errno(path, "read", code));
    }
    if a.size > limit {
        return Err(OpError::Other(format!(
            "{}: {} bytes is more than the {limit} this operation reads",
            String::from_utf8_lossy(path),
            a.size
        )));
    }
    let mut out = vec![0u8; a.size as usize];
    let mut off = 0;
    while off < out.len() {
        let n = at(path, fs.read(ino, off as u64, &mut out[off..]))?;
        if n == 0 {
            out.truncate(off);
            break;
        }
        off += n;
    }
    Ok(out)
}

/// Reads all of the guest file at `path` (symlinks followed), up to [`MAX_EDIT_SIZE`].
pub fn read_file(fs: &dyn FileSystem, path: &[u8]) -> OpResult<Vec<u8>> {
    let ino = at(path, fs.resolve(path, true))?;
    read_all(fs, ino, MAX_EDIT_SIZE, path)
}

/// Whether `path` names something in the guest (the last symlink not followed).
pub fn exists(fs: &dyn FileSystem, path: &[u8]) -> OpResult<bool> {
    match fs.resolve(path, false) {
        Ok(_) => Ok(true),
        Err(e) if matches!(crate::errno(&e), errno::ENOENT | errno::ENOTDIR) => Ok(false),
        Err(e) => Err(OpError::guest(path, e)),
    }
}

/// Replaces the content of guest file `path` with everything `input` gives, creating it
/// (mode 0644, owned by root, as the libguestfs appliance creates it) when it does not exist.
/// An existing file keeps its inode, mode, owner and extended attributes (its SELinux label).
pub fn write_file(fs: &dyn FileSystemMut, path: &[u8], input: &mut dyn Read) -> OpResult<u64> {
    let ino = match fs.resolve(path, true) {
        Ok(ino) => {
            let attr = at(path, fs.getattr(ino))?;
            match attr.kind {
                FileKind::File => {}
                FileKind::Dir => return Err(OpError::errno(path, "write", errno::EISDIR)),
                _ => return Err(OpError::errno(path, "write", errno::EINVAL)),
            }
            if attr.size != 0 {
                let c = SetAttr {
                    size: Some(0),
                    ..SetAttr::default()
                };
                at(path, fs.setattr(ino, &c))?;
            }
            ino
        }
        Err(e) if crate::errno(&e) == errno::ENOENT => {
            let (dir, name) = parent_and_name(fs, path)?;
            at(path, fs.create(dir, &name, 0o644, 0, 0))?.ino
        }
        Err(e) => return Err(OpError::guest(path, e)),
    };
    write_all(fs, ino, |b| input.read(b), path)
}

/// Replaces guest file `path` with `change(old content)`, virt-edit's way: a new file beside
/// it with the old one's mode, owner and extended attributes (so the SELinux label
/// survives) and times of now, renamed over it, so a crash leaves the old file or the new
/// one, never half of either. Nothing is written when the content does not change.
pub fn edit_file(
    fs: &dyn FileSystemMut,
    path: &[u8],
    change: impl FnOnce(&[u8]) -> OpResult<Vec<u8>>,
) -> OpResult<()> {
    let ino = at(path, fs.resolve(path, true))?;
    let old = read_all(fs, ino, MAX_EDIT_SIZE, path)?;
    let new = change(&old)?;
    if new == old {
        return Ok(());
    }
    replace_file(fs, path, ino, &new)
}

/// The atomic replacement behind [`edit_file`]: `new` becomes the content of `path`, whose
/// current inode is `ino`.
fn replace_file(fs: &dyn FileSystemMut, path: &[u8], ino: Ino, new: &[u8]) -> OpResult<()> {
    let attr = at(path, fs.getattr(ino))?;
    // The resolved file's own directory and name (the path may go through symlinks).
    let real = real_path(fs, path)?;
    let (dir, name) = parent_and_name(fs, &real)?;
    let tmp_name = temp_name(fs, dir, &name);
    let tmp = at(
        path,
        fs.create(dir, &tmp_name, attr.mode & 0o7777, attr.uid, attr.gid),
    )?;
    let r = (|| {
        for x in at(path, fs.listxattr(ino))? {
            if let Some(v) = at(path, fs.getxattr(ino, &x))? {
                at(path, fs.setxattr(tmp.ino, &x, &v, 0))?;
            }
        }
        let mut src = new;
        write_all(
            fs,
            tmp.ino,
            |b| {
                let n = b.len().min(src.len());
                b[..n].copy_from_slice(&src[..n]);
                src = &src[n..];
                Ok(n)
            },
            path,
        )?;
        // A set-ID bit is kept as it was (a write would not clear it here: we are root).
        let c = SetAttr {
            mode: Some(attr.mode & 0o7777),
            atime: Some(TimeSet::Now),
            mtime: Some(TimeSet::Now),
            ..SetAttr::default()
        };
        at(path, fs.setattr(tmp.ino, &c))?;
        at(path, fs.rename(dir, &tmp_name, dir, &name, 0))
    })();
    if r.is_err() {
        let _ = fs.unlink(dir, &tmp_name);
    }
    r
}

/// `path` with a symlink in its last component replaced by its target, until the last
/// component names no symlink (at most [`MAX_SYMLINK_FOLLOWS`] times, then ELOOP).
pub fn real_path(fs: &dyn FileSystem, path: &[u8]) -> OpResult<Vec<u8>> {
    let mut cur = path.to_vec();
    for _ in 0..MAX_SYMLINK_FOLLOWS {
        let ino = at(path, fs.resolve(&cur, false))?;
        if at(path, fs.getattr(ino))?.kind != FileKind::Symlink {
            return Ok(cur);
        }
        let target = at(path, fs.readlink(ino))?;
        let target = target.as_bytes();
        cur = if target.starts_with(b"/") {
            target.to_vec()
        } else {
            let end = cur.iter().rposition(|&c| c == b'/').unwrap_or(0);
            let mut p = cur[..end].to_vec();
            p.push(b'/');
            p.extend_from_slice(target);
            p
        };
    }
    Err(OpError::errno(path, "resolve", errno::ELOOP))
}

/// A name for a new file beside `name` that `dir` does not hold yet.
fn temp_name(fs: &dyn FileSystem, dir: Ino, name: &OsStr) -> OsString {
    let pid = std::process::id();
    let mut i = 0u64;
    loop {
        let mut n = OsString::from(".vdisk-edit-");
        n.push(format!("{pid}-{i}-"));
        // Short enough for any name (255 bytes).
        let keep = name.as_bytes().len().min(200);
        n.push(OsStr::from_bytes(&name.as_bytes()[..keep]));
        if !matches!(fs.lookup(dir, &n), Ok(Some(_))) {
            return n;
        }
        i += 1;
    }
}

/// How [`remove`] treats what it finds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remove {
    /// Remove directories with everything in them (`rm -r`).
    pub recursive: bool,
    /// A path that does not exist is not an error (`rm -f`).
    pub force: bool,
}

/// Removes `path` (not following a symlink in its last component), as `rm` with `how`.
pub fn remove(fs: &dyn FileSystemMut, path: &[u8], how: Remove) -> OpResult<()> {
    if how.force {
        // A path that does not resolve (its directory included) is nothing to do.
        if let Err(e) = fs.resolve(path, false) {
            if crate::errno(&e) == errno::ENOENT {
                return Ok(());
            }
        }
    }
    let (dir, name) = parent_and_name(fs, path)?;
    let Some(ino) = at(path, fs.lookup(dir, &name))? else {
        if how.force {
            return Ok(());
        }
        return Err(OpError::errno(path, "rm", errno::ENOENT));
    };
    if at(path, fs.getattr(ino))?.kind == FileKind::Dir {
        if !how.recursive {
            return Err(OpError::Other(format!(
                "{}: is a directory (use -r)",
                String::from_utf8_lossy(path)
            )));
        }
        remove_tree(fs, ino, path, 0)?;
        at(path, fs.rmdir(dir, &name))
    } else {
        at(path, fs.unlink(dir, &name))
    }
}

/// Empties directory `dir` (depth first).
pub fn remove_tree(fs: &dyn FileSystemMut, dir: Ino, path: &[u8], depth: usize) -> OpResult<()> {
    if depth >= MAX_DEPTH {
        return Err(OpError::Other(format!(
            "{}: more than {MAX_DEPTH} directory levels",
            String::from_utf8_lossy(path)
        )));
    }
    for e in at(path, fs.readdir_all(dir))? {
        if e.name == "." || e.name == ".." {
            continue;
        }
        let child = join(path, e.name.as_bytes());
        if e.kind == FileKind::Dir {
            remove_tree(fs, e.ino, &child, depth + 1)?;
            at(&child, fs.rmdir(dir, &e.name))?;
        } else {
            at(&child, fs.unlink(dir, &e.name))?;
        }
    }
    Ok(())
}

/// Makes directory `path` with permission bits `mode`, owned by root; with `parents`, also
/// every missing directory above it, and an existing directory is not an error (`mkdir -p`).
/// Returns the directory's inode.
pub fn mkdir(fs: &dyn FileSystemMut, path: &[u8], mode: u32, parents: bool) -> OpResult<Ino> {
    if !parents {
        let (dir, name) = parent_and_name(fs, path)?;
        return Ok(at(path, fs.mkdir(dir, &name, mode, 0, 0))?.ino);
    }
    let mut cur = fs.root_ino();
    let mut sofar = Vec::new();
    for comp in path.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
        sofar.push(b'/');
        sofar.extend_from_slice(comp);
        cur = match fs.resolve(&sofar, true) {
            Ok(ino) => {
                if at(&sofar, fs.getattr(ino))?.kind != FileKind::Dir {
                    return Err(OpError::errno(&sofar, "mkdir", errno::ENOTDIR));
                }
                ino
            }
            Err(e) if crate::errno(&e) == errno::ENOENT => {
                at(&sofar, fs.mkdir(cur, OsStr::from_bytes(comp), mode, 0, 0))?.ino
            }
            Err(e) => return Err(OpError::guest(&sofar, e)),
        };
    }
    Ok(cur)
}

/// Applies `changes` (chmod, chown, times, size) to `path`; `follow` follows a symlink in
/// the last component.
pub fn set_attr(
    fs: &dyn FileSystemMut,
    path: &[u8],
    follow: bool,
    changes: &SetAttr,
) -> OpResult<()> {
    let ino = at(path, fs.resolve(path, follow))?;
    at(path, fs.setattr(ino, changes)).map(|_| ())
}

/// Makes link `link` to `target`, as `ln [-s]`: a symlink holding `target` as given, or a
/// hard link to the guest file `target` names. When `link` is an existing directory, the
/// link goes inside it under `target`'s last component.
pub fn ln(fs: &dyn FileSystemMut, target: &OsStr, link: &[u8], symbolic: bool) -> OpResult<()> {
    let mut link = link.to_vec();
    if let Ok(ino) = fs.resolve(&link, true) {
        if fs
            .getattr(ino)
            .map(|x| x.kind == FileKind::Dir)
            .unwrap_or(false)
        {
            let t = target.as_bytes();
            let base = t
                .rsplit(|&c| c == b'/')
                .find(|c| !c.is_empty())
                .unwrap_or(t);
            link = join(&link, base);
        }
    }
    let (dir, name) = parent_and_name(fs, &link)?;
    if symbolic {
        at(&link, fs.symlink(dir, &name, target, 0, 0)).map(|_| ())
    } else {
        let tpath = absolute(target);
        let ino = at(&tpath, fs.resolve(&tpath, false))?;
        at(&link, fs.link(ino, dir, &name)).map(|_| ())
    }
}
