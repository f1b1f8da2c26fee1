//! The filesystem seam: the path-level API every guest filesystem engine offers (ext4, XFS,
//! FAT, ... each in its own crate), which the FUSE adapter, the FUSE-less commands and the
//! guest operations ([`ops`]) use, whatever engine serves the tree.
//!
//! Files are named by inode number ([`Ino`]) as FUSE names them; names are bytes, never
//! assumed to be UTF-8. [`FileSystem::resolve`] turns a guest path into an inode, following
//! symlinks *inside the guest tree*: an absolute target restarts at the guest root and `..`
//! never climbs above it, so no guest path can name a host file.
//!
//! Errors that mean "no such file", "not a directory" and the like carry the errno FUSE should
//! return ([`errno`] picks it for any error).
//!
//! ```
//! use vdisk_fs::FileSystem;
//!
//! /// The guest's hostname, from any engine.
//! fn hostname(fs: &dyn FileSystem) -> vdisk_block::Result<String> {
//!     let ino = fs.resolve(b"/etc/hostname", true)?;
//!     let mut buf = vec![0u8; 256];
//!     let n = fs.read(ino, 0, &mut buf)?;
//!     Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
//! }
//! ```

// Only the host side of copy-out (lchown, utimensat, mknod) needs unsafe; it says so there.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod ops;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use vdisk_block::{Error, Result};

/// An inode number.
pub type Ino = u64;

/// Symlinks followed while resolving one path before giving up with ELOOP (Linux's
/// MAXSYMLINKS).
pub const MAX_SYMLINK_FOLLOWS: u32 = 40;
/// The longest path [`FileSystem::resolve`] accepts (PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Entries [`FileSystem::readdir_all`] collects before refusing: a bound on memory for
/// hostile directories (ext4's own limit with large_dir is far higher).
pub const MAX_READDIR_ALL_ENTRIES: usize = 10_000_000;

/// Linux errno values the API reports.
pub mod errno {
    /// No such file or directory.
    pub const ENOENT: i32 = 2;
    /// Input/output error.
    pub const EIO: i32 = 5;
    /// Is a directory.
    pub const EISDIR: i32 = 21;
    /// Not a directory.
    pub const ENOTDIR: i32 = 20;
    /// Invalid argument.
    pub const EINVAL: i32 = 22;
    /// File name too long.
    pub const ENAMETOOLONG: i32 = 36;
    /// Too many levels of symbolic links.
    pub const ELOOP: i32 = 40;
    /// No data available (no such attribute).
    pub const ENODATA: i32 = 61;
    /// Operation not supported.
    pub const EOPNOTSUPP: i32 = 95;
    /// Structure needs cleaning (corrupt filesystem), as ext4 reports EFSCORRUPTED.
    pub const EUCLEAN: i32 = 117;
    /// Resource temporarily unavailable.
    pub const EAGAIN: i32 = 11;
    /// Operation not permitted.
    pub const EPERM: i32 = 1;
    /// Argument list too long (an attribute value over the limit).
    pub const E2BIG: i32 = 7;
    /// File exists.
    pub const EEXIST: i32 = 17;
    /// File too large.
    pub const EFBIG: i32 = 27;
    /// No space left on device.
    pub const ENOSPC: i32 = 28;
    /// Read-only file system.
    pub const EROFS: i32 = 30;
    /// Too many links.
    pub const EMLINK: i32 = 31;
    /// Directory not empty.
    pub const ENOTEMPTY: i32 = 39;
}

/// An error carrying `code` as its errno, from operation `op`: a guest filesystem's answer
/// ([`Error::Guest`]), never mistaken for the host refusing I/O.
pub fn errno_error(op: &'static str, code: i32) -> Error {
    Error::guest(op, code)
}

/// The errno a FUSE reply should carry for `e`.
pub fn errno(e: &Error) -> i32 {
    match e {
        Error::Guest { errno, .. } => *errno,
        // The host's own errno (engines that pass one through unchanged).
        Error::Io { source, .. } => source.raw_os_error().unwrap_or(errno::EIO),
        Error::Corrupt { .. } => errno::EUCLEAN,
        Error::Unsupported { .. } => errno::EOPNOTSUPP,
        Error::InvalidArgument { .. } => errno::EINVAL,
        Error::Locked { .. } => errno::EAGAIN,
        _ => errno::EIO,
    }
}

/// The file-type bits of `st_mode`, as Linux (and every engine's on-disk mode) encodes them.
pub mod mode_bits {
    /// Mask of the type bits.
    pub const S_IFMT: u32 = 0o170000;
    /// Socket.
    pub const S_IFSOCK: u32 = 0o140000;
    /// Symbolic link.
    pub const S_IFLNK: u32 = 0o120000;
    /// Regular file.
    pub const S_IFREG: u32 = 0o100000;
    /// Block device.
    pub const S_IFBLK: u32 = 0o060000;
    /// Directory.
    pub const S_IFDIR: u32 = 0o040000;
    /// Character device.
    pub const S_IFCHR: u32 = 0o020000;
    /// Named pipe.
    pub const S_IFIFO: u32 = 0o010000;
}

/// The kind of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl FileKind {
    /// The kind named by the type bits of a mode, if they name one.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & mode_bits::S_IFMT {
            mode_bits::S_IFREG => FileKind::File,
            mode_bits::S_IFDIR => FileKind::Dir,
            mode_bits::S_IFLNK => FileKind::Symlink,
            mode_bits::S_IFCHR => FileKind::CharDev,
            mode_bits::S_IFBLK => FileKind::BlockDev,
            mode_bits::S_IFIFO => FileKind::Fifo,
            mode_bits::S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }

    /// The type bits of a mode for this kind (S_IFREG, S_IFDIR, ...).
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => mode_bits::S_IFREG,
            FileKind::Dir => mode_bits::S_IFDIR,
            FileKind::Symlink => mode_bits::S_IFLNK,
            FileKind::CharDev => mode_bits::S_IFCHR,
            FileKind::BlockDev => mode_bits::S_IFBLK,
            FileKind::Fifo => mode_bits::S_IFIFO,
            FileKind::Socket => mode_bits::S_IFSOCK,
        }
    }
}

/// A point in time: seconds since the epoch (negative before 1970) and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Seconds since 1970-01-01 00:00:00 UTC.
    pub secs: i64,
    /// Nanoseconds, below 1e9.
    pub nanos: u32,
}

impl Timestamp {
    /// As a `SystemTime` (for FUSE replies).
    pub fn to_system_time(self) -> std::time::SystemTime {
        use std::time::{Duration, UNIX_EPOCH};
        let n = Duration::from_nanos(u64::from(self.nanos));
        if self.secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(self.secs as u64) + n
        } else {
            UNIX_EPOCH - Duration::from_secs(self.secs.unsigned_abs()) + n
        }
    }
}

/// What stat reports about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// Size in bytes.
    pub size: u64,
    /// Space used, in 512-byte units.
    pub blocks: u64,
    /// The file's kind.
    pub kind: FileKind,
    /// The whole mode: type bits and permission bits (st_mode).
    pub mode: u32,
    /// Hard link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access.
    pub atime: Timestamp,
    /// Last modification of the data.
    pub mtime: Timestamp,
    /// Last change of the inode.
    pub ctime: Timestamp,
    /// Creation, when the filesystem records it.
    pub crtime: Option<Timestamp>,
    /// Device number of a device file, as glibc's makedev(major, minor) encodes it.
    pub rdev: u64,
    /// Preferred I/O size (the filesystem block size).
    pub blksize: u32,
}

impl Attr {
    /// The permission bits (mode & 0o7777).
    pub fn perm(&self) -> u16 {
        (self.mode & 0o7777) as u16
    }
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name, as stored.
    pub name: OsString,
    /// The inode it names.
    pub ino: Ino,
    /// The kind of file it names.
    pub kind: FileKind,
    /// The cookie that resumes a listing after this entry (FUSE's readdir offset).
    pub next_offset: u64,
}

/// What statfs reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatFs {
    /// Block size.
    pub block_size: u32,
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub blocks_free: u64,
    /// Free blocks available to unprivileged users.
    pub blocks_available: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub files_free: u64,
    /// Longest name.
    pub name_max: u32,
}

/// What a filesystem can hold: asked of it, not assumed (FAT has no symlinks and matches
/// names without case, XFS inode numbers are 64 bits wide, ...). Start from
/// [`Capabilities::POSIX`] and change the fields that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Symbolic links can be made.
    pub symlinks: bool,
    /// Hard links can be made.
    pub hard_links: bool,
    /// Extended attributes are stored.
    pub xattrs: bool,
    /// Device nodes, FIFOs and sockets can be made.
    pub special_files: bool,
    /// Owners and permission bits are stored per file (chmod and chown change them).
    pub ownership: bool,
    /// Names are matched without regard to case (the case given is kept).
    pub case_insensitive: bool,
    /// The longest name, in bytes.
    pub name_max: u32,
    /// The granularity of stored modification times, in nanoseconds (1 = ns, 2e9 = FAT).
    pub time_granularity_ns: u64,
    /// How many bits inode numbers use.
    pub ino_bits: u32,
    /// A file removed while open stays readable and writable through its open handles until
    /// [`FileSystemMut::release_orphan`]: the `*_kept` removals keep the inode (and its
    /// blocks) allocated instead of freeing it with the last link.
    ///
    /// The rule: an engine advertises this only when it really keeps the inode until the
    /// release, and keeps it so that a crash in between leaves no more damage than the
    /// kernel would (ext4: the orphan list, which the next read-write open processes). An
    /// engine without it frees the inode with its last link, and an open descriptor then
    /// fails (or, worse, reaches whatever reuses the inode number).
    pub open_unlinked: bool,
}

impl Capabilities {
    /// A POSIX filesystem such as ext4: everything stored, 255-byte names, nanosecond times,
    /// 32-bit inode numbers.
    pub const POSIX: Capabilities = Capabilities {
        symlinks: true,
        hard_links: true,
        xattrs: true,
        special_files: true,
        ownership: true,
        case_insensitive: false,
        name_max: 255,
        time_granularity_ns: 1,
        ino_bits: 32,
        open_unlinked: false,
    };
}

/// A guest filesystem, read through inode numbers and byte names. `Send + Sync`: FUSE serves
/// it from many threads.
pub trait FileSystem: Send + Sync {
    /// The root directory's inode number.
    fn root_ino(&self) -> Ino;

    /// The inode named `name` in directory `parent`, or None.
    fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Option<Ino>>;

    /// The attributes of `ino`.
    fn getattr(&self, ino: Ino) -> Result<Attr>;

    /// Lists directory `ino` from cookie `offset` (0 = start), calling `f` per entry ("." and
    /// ".." included) until it returns false.
    fn readdir(&self, ino: Ino, offset: u64, f: &mut dyn FnMut(DirEntry) -> bool) -> Result<()>;

    /// Reads bytes of file `ino` at `offset` into `buf`; returns the count (short at EOF).
    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize>;

    /// The target of symlink `ino`.
    fn readlink(&self, ino: Ino) -> Result<OsString>;

    /// The names of the extended attributes of `ino`.
    fn listxattr(&self, ino: Ino) -> Result<Vec<OsString>>;

    /// The value of attribute `name` of `ino`, or None when it has none by that name.
    fn getxattr(&self, ino: Ino, name: &OsStr) -> Result<Option<Vec<u8>>>;

    /// Filesystem-wide counts.
    fn statfs(&self) -> Result<StatFs>;

    /// The same filesystem as a [`FileSystemMut`], when it was opened for writing; None for a
    /// read-only open (every change is then EROFS). One object serves both: callers hold an
    /// `Arc<dyn FileSystem>` and ask.
    fn writable(&self) -> Option<&dyn FileSystemMut> {
        None
    }

    /// What the filesystem can hold (symlinks, hard links, xattrs, name length, ...).
    fn capabilities(&self) -> Capabilities {
        Capabilities::POSIX
    }

    /// The generation of inode `ino` (ext4's `i_generation`): a number that changes when an
    /// inode number is reused for a new file, so a cache keyed by inode number (the kernel's,
    /// through FUSE's entry replies) does not take the new file for the old. 0 when the
    /// filesystem keeps none.
    fn generation(&self, ino: Ino) -> Result<u64> {
        let _ = ino;
        Ok(0)
    }

    /// Every entry of directory `ino` ("." and ".." included), up to
    /// [`MAX_READDIR_ALL_ENTRIES`].
    fn readdir_all(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        let mut v = Vec::new();
        let mut over = false;
        self.readdir(ino, 0, &mut |e| {
            if v.len() >= MAX_READDIR_ALL_ENTRIES {
                over = true;
                return false;
            }
            v.push(e);
            true
        })?;
        if over {
            return Err(Error::unsupported(format!(
                "directory {ino} has more than {MAX_READDIR_ALL_ENTRIES} entries"
            )));
        }
        Ok(v)
    }

    /// Resolves guest path `path` (absolute, or relative to the root) to an inode, following
    /// symlinks inside the guest tree; the last component's symlink is followed only when
    /// `follow_last`. `..` at the root stays at the root. A trailing `/` asks for a
    /// directory, as in the kernel: a symlink there is followed, and anything else but a
    /// directory is ENOTDIR.
    fn resolve(&self, path: &[u8], follow_last: bool) -> Result<Ino> {
        if path.len() > MAX_PATH_LEN {
            return Err(errno_error("resolve", errno::ENAMETOOLONG));
        }
        if path.len() > 1 && path.ends_with(b"/") {
            let ino = self.resolve(&path[..path.len() - 1], true)?;
            if self.getattr(ino)?.kind != FileKind::Dir {
                return Err(errno_error("resolve", errno::ENOTDIR));
            }
            return Ok(ino);
        }
        let root = self.root_ino();
        // The directories from the root to where we are: ".." pops, never past the root.
        let mut stack: Vec<Ino> = vec![root];
        // Components still to walk, last first.
        let mut todo: Vec<Vec<u8>> = components(path);
        let mut follows = 0u32;
        while let Some(name) = todo.pop() {
            let cur = *stack.last().unwrap_or(&root);
            if name == b"." {
                continue;
            }
            if name == b".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            if self.getattr(cur)?.kind != FileKind::Dir {
                return Err(errno_error("resolve", errno::ENOTDIR));
            }
            let ino = self
                .lookup(cur, OsStr::from_bytes(&name))?
                .ok_or_else(|| errno_error("resolve", errno::ENOENT))?;
            let attr = self.getattr(ino)?;
            let last = todo.is_empty();
            if attr.kind == FileKind::Symlink && (!last || follow_last) {
                follows += 1;
                if follows > MAX_SYMLINK_FOLLOWS {
                    return Err(errno_error("resolve", errno::ELOOP));
                }
                let target = self.readlink(ino)?.into_vec();
                if target.is_empty() {
                    return Err(errno_error("resolve", errno::ENOENT));
                }
                if target.first() == Some(&b'/') {
                    stack.truncate(1);
                }
                // The target's components come before what remains.
                todo.extend(components(&target));
                continue;
            }
            stack.push(ino);
        }
        Ok(*stack.last().unwrap_or(&root))
    }
}

/// The non-empty components of `path`, last first (so `pop` yields them in order).
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&c| c == b'/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(<[u8]>::to_vec)
        .collect()
}

/// glibc's `makedev`: the device number `st_rdev` holds for `major:minor`.
pub fn makedev(major: u32, minor: u32) -> u64 {
    let (ma, mi) = (u64::from(major), u64::from(minor));
    ((ma & 0xffff_f000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffff_ff00) << 12) | (mi & 0xff)
}

/// How [`SetAttr`] sets a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    /// The current time (utimensat's UTIME_NOW).
    Now,
    /// This time.
    At(Timestamp),
}

/// The changes [`FileSystemMut::setattr`] applies: each `Some` field is set, the rest kept
/// (chmod, chown, truncate, utimens in one call, as FUSE's setattr asks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits (mode & 0o7777; the file type never changes).
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// New size of a regular file (truncate: grow with zeros or shrink, freeing blocks).
    pub size: Option<u64>,
    /// Access time.
    pub atime: Option<TimeSet>,
    /// Modification time.
    pub mtime: Option<TimeSet>,
}

/// [`FileSystemMut::rename`] flag: fail with EEXIST when the target exists.
pub const RENAME_NOREPLACE: u32 = 1;
/// [`FileSystemMut::rename`] flag: swap the two names (not supported: EINVAL).
pub const RENAME_EXCHANGE: u32 = 2;
/// [`FileSystemMut::setxattr`] flag: fail with EEXIST when the attribute exists.
pub const XATTR_CREATE: u32 = 1;
/// [`FileSystemMut::setxattr`] flag: fail with ENODATA when the attribute does not exist.
pub const XATTR_REPLACE: u32 = 2;

/// A guest filesystem that can be changed, as FUSE and the FUSE-less edit commands change it.
///
/// Every method is one whole operation under the filesystem's write lock, leaving the
/// filesystem consistent (its own checker clean: `e2fsck -fn`, `xfs_repair -n`) when it
/// returns. Errors carry the errno FUSE
/// should answer ([`errno`]): ENOENT, EEXIST, ENOTDIR, EISDIR, ENOTEMPTY, ENOSPC, EFBIG,
/// ENAMETOOLONG, ENODATA, and Unsupported (EOPNOTSUPP) for structures the engine does not
/// edit. Ownership and permission checks are the caller's (FUSE's `default_permissions`);
/// new files get exactly the `mode`, `uid` and `gid` given, timestamps are the current time.
///
/// Files removed while open: the caller (the FUSE adapter, which counts open handles) uses the
/// `*_kept` removals for an inode that is open and [`FileSystemMut::release_orphan`] at its
/// last release. Their defaults are the plain removals; an engine overrides them, and
/// advertises [`Capabilities::open_unlinked`], only when it keeps the inode until the release.
pub trait FileSystemMut: FileSystem {
    /// Creates regular file `name` in `parent` with permission bits `mode`.
    fn create(&self, parent: Ino, name: &OsStr, mode: u32, uid: u32, gid: u32) -> Result<Attr>;

    /// Creates directory `name` in `parent`.
    fn mkdir(&self, parent: Ino, name: &OsStr, mode: u32, uid: u32, gid: u32) -> Result<Attr>;

    /// Creates a special file: `mode` carries the type (S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK,
    /// or S_IFREG) and permission bits; `rdev` is a device number as glibc's makedev makes it.
    fn mknod(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    ) -> Result<Attr>;

    /// Creates symlink `name` in `parent` pointing at `target` (mode 0777).
    fn symlink(
        &self,
        parent: Ino,
        name: &OsStr,
        target: &OsStr,
        uid: u32,
        gid: u32,
    ) -> Result<Attr>;

    /// Adds hard link `newname` in `newparent` to `ino` (not a directory).
    fn link(&self, ino: Ino, newparent: Ino, newname: &OsStr) -> Result<Attr>;

    /// Removes the non-directory `name` from `parent`; the inode and its blocks are freed with
    /// its last link.
    fn unlink(&self, parent: Ino, name: &OsStr) -> Result<()>;

    /// Removes the empty directory `name` from `parent`.
    fn rmdir(&self, parent: Ino, name: &OsStr) -> Result<()>;

    /// Renames `parent/name` to `newparent/newname`, replacing an existing target (a file by
    /// a file, an empty directory by a directory) unless `flags` has [`RENAME_NOREPLACE`].
    fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()>;

    /// Writes `data` at `offset` of regular file `ino` (extending it as needed); returns the
    /// count written (all of it).
    fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize>;

    /// Applies `changes` to `ino`; returns the new attributes.
    fn setattr(&self, ino: Ino, changes: &SetAttr) -> Result<Attr>;

    /// Sets extended attribute `name` of `ino` to `value` ([`XATTR_CREATE`],
    /// [`XATTR_REPLACE`]).
    fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: u32) -> Result<()>;

    /// Removes extended attribute `name` of `ino` (ENODATA when it has none).
    fn removexattr(&self, ino: Ino, name: &OsStr) -> Result<()>;

    /// Makes every change so far durable: the superblock's clean state and write time, then
    /// the device's flush. Called by fsync, FUSE's destroy and umount.
    fn flush(&self) -> Result<()>;

    /// Sets the volume label to `label` (empty clears it), as `e2label`, `xfs_admin -L` and
    /// `fatlabel` would, with the same limits: a label the filesystem cannot hold is refused
    /// with InvalidArgument naming the rule, never truncated. Engines that cannot set one
    /// answer Unsupported.
    fn set_label(&self, label: &str) -> Result<()> {
        let _ = label;
        Err(Error::unsupported("setting the volume label"))
    }

    /// [`FileSystemMut::unlink`] of a file that is still open: when this removes its last
    /// link, the inode stays allocated (an orphan) and readable and writable by inode number
    /// until [`FileSystemMut::release_orphan`]; returns it then (None when links remain).
    /// Without [`Capabilities::open_unlinked`] this is `unlink` and returns None.
    fn unlink_kept(&self, parent: Ino, name: &OsStr) -> Result<Option<Ino>> {
        self.unlink(parent, name).map(|()| None)
    }

    /// [`FileSystemMut::rmdir`] of a directory that is still open: as
    /// [`FileSystemMut::unlink_kept`]; the directory lists nothing afterwards and nothing can
    /// be made in it.
    fn rmdir_kept(&self, parent: Ino, name: &OsStr) -> Result<Option<Ino>> {
        self.rmdir(parent, name).map(|()| None)
    }

    /// [`FileSystemMut::rename`] that replaces a target that is still open: the replaced
    /// inode, when this drops its last link, is kept as [`FileSystemMut::unlink_kept`] keeps
    /// it and returned.
    fn rename_kept(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> Result<Option<Ino>> {
        self.rename(parent, name, newparent, newname, flags)
            .map(|()| None)
    }

    /// The last open handle of orphan `ino` (returned by a `*_kept` removal) is gone: free
    /// the inode and its blocks. Does nothing for an inode that is not such an orphan.
    fn release_orphan(&self, ino: Ino) -> Result<()> {
        let _ = ino;
        Ok(())
    }
}
