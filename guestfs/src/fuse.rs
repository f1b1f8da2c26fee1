//! The FUSE adapter: the path-level API ([`FileSystem`]) served to the kernel with `fuser`.
//!
//! ```text
//!   kernel VFS --/dev/fuse--> fuser::Session --> FuseFs (this module: translation only)
//!                                                  |
//!                                                  v
//!                                   dyn FileSystem (an engine, or a Stack of them)
//!                                   .writable() -> dyn FileSystemMut when read-write
//! ```
//!
//! The adapter only translates: each helper returns `Result<_, Errno>` from the library's
//! errors ([`crate::fs::errno`]), each trait method sends exactly one reply, attributes
//! convert in one function. A read-only mount ([`MountConfig::read_only`], or a filesystem
//! opened read-only) answers every change with EROFS; a read-write one passes create, mknod, mkdir, unlink, rmdir, symlink,
//! link, rename, write, setattr and the xattr calls to [`FileSystemMut`], and makes
//! everything durable on fsync and when the session ends ([`FileSystemMut::flush`]). New
//! files belong to the caller (the request's uid and gid), or to the directory's group when
//! it is set-group-ID, as the kernel does.
//!
//! A file removed while open stays usable through its open handles, as on the kernel's own
//! filesystems: the adapter counts OPEN/CREATE/OPENDIR against RELEASE/RELEASEDIR per inode,
//! removes an open inode with the `*_kept` variants of unlink, rmdir and rename, and calls
//! [`FileSystemMut::release_orphan`] at its last release (or when the session ends). Entry
//! replies carry the inode's generation ([`FileSystem::generation`]), so a reused inode
//! number is a new file to the kernel's caches.
//!
//! FUSE names the root directory 1; the filesystem's root inode (2 for ext4) and inode 1 trade
//! numbers on the way through, every other inode keeps its number.
//!
//! No libfuse: fuser mounts through `/dev/fuse` directly when run as root, and through the
//! `fusermount3` helper otherwise.
//!
//! ```no_run
//! use std::sync::Arc;
//! use vdisk_guestfs::ext4::Ext4;
//! use vdisk_guestfs::fs::FileSystem;
//! use vdisk_guestfs::fuse::{session, MountConfig};
//! # fn dev() -> Arc<dyn vdisk_block::BlockDevice> { unimplemented!() }
//! let fs: Arc<dyn FileSystem> = Arc::new(Ext4::open(dev())?);
//! let cfg = MountConfig::read_only("vdisk:demo");
//! // Mounted (and the kernel's INIT answered) once this returns; run() serves until unmount.
//! session(fs, "/mnt".as_ref(), &cfg)?.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use std::time::SystemTime;

use fuser::{
    BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use vdisk_block::Error;

use crate::fs::{
    self, Attr, FileKind, FileSystem, FileSystemMut, Ino, SetAttr, TimeSet, Timestamp,
};

/// The most bytes one FUSE read asks for is bounded by the kernel (max_pages); this bounds
/// what we allocate for a read whatever the request says.
pub const MAX_READ: u32 = 1 << 20;

/// How long the kernel may cache names and attributes. The image cannot change under a
/// read-only mount: we hold its lock, which keeps writers out.
const READ_ONLY_TTL: Duration = Duration::from_secs(3600);

/// How long the kernel may cache names and attributes of a read-write mount. Every change
/// passes through the kernel, which updates or drops what it cached; the short time (as
/// libfuse's default) bounds the damage should some path be missed.
const READ_WRITE_TTL: Duration = Duration::from_secs(1);

/// How a guest filesystem is mounted.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// The mount's source as /proc/self/mountinfo shows it ("vdisk:1234": `vdisk umount`
    /// reads the serving process's id from it).
    pub fsname: String,
    /// Mount read-only. A read-write mount needs a filesystem opened writable
    /// ([`FileSystem::writable`]).
    pub read_only: bool,
    /// Who may use the mount besides its owner.
    pub acl: SessionACL,
    /// Other mount options (`-o`), already parsed.
    pub options: Vec<MountOption>,
    /// Threads serving requests (1 = one loop).
    pub threads: usize,
}

impl MountConfig {
    /// A read-only mount named `fsname`, served by a few threads.
    pub fn read_only(fsname: impl Into<String>) -> MountConfig {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get().clamp(1, 4))
            .unwrap_or(1);
        MountConfig {
            fsname: fsname.into(),
            read_only: true,
            acl: SessionACL::Owner,
            options: Vec::new(),
            threads,
        }
    }

    /// Applies one `-o` option as guestmount passes it to FUSE (`allow_other`,
    /// `allow_root`, `default_permissions`, `noatime`, ...). Unknown options go to the kernel,
    /// which refuses what it does not know when mounting.
    pub fn push_option(&mut self, opt: &str) -> Result<(), Error> {
        let o = match opt {
            "" => return Ok(()),
            // Other users reach the mount: let the kernel enforce the guest's modes and
            // owners, or anyone could read a guest's /etc/shadow.
            "allow_other" => {
                self.acl = SessionACL::All;
                MountOption::DefaultPermissions
            }
            "allow_root" => {
                self.acl = SessionACL::RootAndOwner;
                MountOption::DefaultPermissions
            }
            "ro" => {
                self.read_only = true;
                return Ok(());
            }
            "rw" => {
                self.read_only = false;
                return Ok(());
            }
            "default_permissions" => MountOption::DefaultPermissions,
            "dev" => MountOption::Dev,
            "nodev" => MountOption::NoDev,
            "suid" => MountOption::Suid,
            "nosuid" => MountOption::NoSuid,
            "exec" => MountOption::Exec,
            "noexec" => MountOption::NoExec,
            "atime" => MountOption::Atime,
            "noatime" => MountOption::NoAtime,
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            "dirsync" => MountOption::DirSync,
            "auto_unmount" => MountOption::AutoUnmount,
            o if o.starts_with("fsname=") => {
                return Err(Error::invalid(
                    "-o fsname= is reserved: vdisk names its mounts to find them again",
                ))
            }
            o => MountOption::CUSTOM(o.to_string()),
        };
        if !self.options.contains(&o) {
            self.options.push(o);
        }
        Ok(())
    }

    fn to_fuser(&self) -> fuser::Config {
        let mut c = fuser::Config::default();
        c.mount_options = vec![
            MountOption::FSName(self.fsname.clone()),
            MountOption::Subtype("vdisk".into()),
            if self.read_only {
                MountOption::RO
            } else {
                MountOption::RW
            },
        ];
        c.mount_options.extend(self.options.iter().cloned());
        c.acl = self.acl;
        c.n_threads = Some(self.threads.max(1));
        c.clone_fd = self.threads > 1;
        c
    }
}

/// A mounted FUSE session serving a [`FuseFs`].
pub type Session = fuser::Session<FuseFs>;

/// Mounts `fs` on `mountpoint` and completes the FUSE handshake: when this returns the mount
/// exists and requests queue until [`fuser::Session::run`] serves them (dropping the session
/// unmounts).
pub fn session(
    fs: Arc<dyn FileSystem>,
    mountpoint: &Path,
    cfg: &MountConfig,
) -> io::Result<fuser::Session<FuseFs>> {
    if !cfg.read_only && fs.writable().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this filesystem was opened read-only; it cannot be mounted read-write",
        ));
    }
    fuser::Session::new(FuseFs::new(fs, cfg.read_only), mountpoint, &cfg.to_fuser())
}

/// A [`FileSystem`] as a `fuser::Filesystem`.
pub struct FuseFs {
    fs: Arc<dyn FileSystem>,
    /// Mounted read-only (whether or not the filesystem could be written).
    read_only: bool,
    root: Ino,
    ttl: Duration,
    /// Who holds what open: a file removed while open is kept by the engine until its last
    /// release (the `*_kept` removals and [`FileSystemMut::release_orphan`]).
    opens: Mutex<Opens>,
}

/// Open handles per inode (the filesystem's numbers), and the inodes the engine keeps as
/// orphans until their last handle is released.
#[derive(Default)]
struct Opens {
    count: HashMap<Ino, u64>,
    orphans: HashSet<Ino>,
}

/// Which removal [`FuseFs::do_remove`] makes.
#[derive(Clone, Copy)]
enum Removal {
    Unlink,
    Rmdir,
}

impl FuseFs {
    /// The adapter over `fs`: read-write when `fs` is writable ([`FileSystem::writable`])
    /// and `read_only` is false, else every change answers EROFS.
    pub fn new(fs: Arc<dyn FileSystem>, read_only: bool) -> FuseFs {
        let root = fs.root_ino();
        let read_only = read_only || fs.writable().is_none();
        FuseFs {
            fs,
            read_only,
            root,
            ttl: if read_only {
                READ_ONLY_TTL
            } else {
                READ_WRITE_TTL
            },
            opens: Mutex::new(Opens::default()),
        }
    }

    fn opens(&self) -> MutexGuard<'_, Opens> {
        self.opens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One more open handle on FUSE inode `ino`.
    fn note_open(&self, ino: INodeNo) {
        if self.read_only {
            return;
        }
        *self.opens().count.entry(self.ino(ino)).or_default() += 1;
    }

    /// One handle on `ino` released; at the last one an orphan is freed.
    fn do_release(&self, ino: INodeNo) -> Result<(), Errno> {
        if self.read_only {
            return Ok(());
        }
        let ino = self.ino(ino);
        let mut o = self.opens();
        match o.count.get_mut(&ino) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return Ok(());
            }
            Some(_) => {
                o.count.remove(&ino);
            }
            None => return Ok(()),
        }
        if o.orphans.remove(&ino) {
            self.rw()?.release_orphan(ino).map_err(errno)?;
        }
        Ok(())
    }

    /// The generation FUSE's entry replies carry for `a`, so the kernel never takes a reused
    /// inode number for the file it cached under it.
    fn generation(&self, a: &FileAttr) -> Generation {
        Generation(self.fs.generation(self.ino(a.ino)).unwrap_or(0))
    }

    /// unlink or rmdir: through the `*_kept` variant when the inode is open, so its handles
    /// keep working until the last release.
    fn do_remove(&self, parent: INodeNo, name: &OsStr, how: Removal) -> Result<(), Errno> {
        let rw = self.rw()?;
        let parent = self.ino(parent);
        let target = self.fs.lookup(parent, name).map_err(errno)?;
        let mut o = self.opens();
        let open = target.is_some_and(|t| o.count.contains_key(&t));
        let kept = match (how, open) {
            (Removal::Unlink, false) => rw.unlink(parent, name).map(|()| None),
            (Removal::Rmdir, false) => rw.rmdir(parent, name).map(|()| None),
            (Removal::Unlink, true) => rw.unlink_kept(parent, name),
            (Removal::Rmdir, true) => rw.rmdir_kept(parent, name),
        }
        .map_err(errno)?;
        if let Some(k) = kept {
            o.orphans.insert(k);
        }
        Ok(())
    }

    fn rw(&self) -> Result<&dyn FileSystemMut, Errno> {
        if self.read_only {
            return Err(Errno::EROFS);
        }
        self.fs.writable().ok_or(Errno::EROFS)
    }

    /// FUSE's inode number → the filesystem's (1 and the root trade places).
    fn ino(&self, ino: INodeNo) -> Ino {
        match ino.0 {
            1 => self.root,
            i if i == self.root => 1,
            i => i,
        }
    }

    /// The filesystem's inode number → FUSE's.
    fn fuse_ino(&self, ino: Ino) -> INodeNo {
        INodeNo(match ino {
            i if i == self.root => 1,
            1 => self.root,
            i => i,
        })
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        let mut f = file_attr(a);
        f.ino = self.fuse_ino(a.ino);
        f
    }

    fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let ino = self
            .fs
            .lookup(self.ino(parent), name)
            .map_err(errno)?
            .ok_or(Errno::ENOENT)?;
        Ok(self.attr(&self.fs.getattr(ino).map_err(errno)?))
    }

    fn do_getattr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        Ok(self.attr(&self.fs.getattr(self.ino(ino)).map_err(errno)?))
    }

    fn do_readlink(&self, ino: INodeNo) -> Result<Vec<u8>, Errno> {
        Ok(self
            .fs
            .readlink(self.ino(ino))
            .map_err(errno)?
            .as_bytes()
            .to_vec())
    }

    fn do_open(&self, ino: INodeNo, flags: OpenFlags, dir: bool) -> Result<FopenFlags, Errno> {
        if flags.acc_mode() != OpenAccMode::O_RDONLY && self.read_only {
            return Err(Errno::EROFS);
        }
        let kind = self.fs.getattr(self.ino(ino)).map_err(errno)?.kind;
        match (dir, kind == FileKind::Dir) {
            (true, false) => Err(Errno::ENOTDIR),
            (false, true) => Err(Errno::EISDIR),
            // Nothing changes under a read-only mount, and under a read-write one every change
            // passes through the kernel: the page cache may keep what it read.
            (false, false) => Ok(FopenFlags::FOPEN_KEEP_CACHE),
            (true, true) => Ok(FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR),
        }
    }

    fn do_read(&self, ino: INodeNo, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0u8; size.min(MAX_READ) as usize];
        let n = self
            .fs
            .read(self.ino(ino), offset, &mut buf)
            .map_err(errno)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn do_readdir(
        &self,
        ino: INodeNo,
        offset: u64,
        reply: &mut ReplyDirectory,
    ) -> Result<(), Errno> {
        // `add` says true when the reply buffer is full: stop there; the kernel asks again
        // from the last entry's cookie.
        self.fs
            .readdir(self.ino(ino), offset, &mut |e| {
                !reply.add(
                    self.fuse_ino(e.ino),
                    e.next_offset,
                    file_type(e.kind),
                    &e.name,
                )
            })
            .map_err(errno)
    }

    fn do_getxattr(&self, ino: INodeNo, name: &OsStr) -> Result<Vec<u8>, Errno> {
        self.fs
            .getxattr(self.ino(ino), name)
            .map_err(errno)?
            .ok_or(Errno::NO_XATTR)
    }

    fn do_listxattr(&self, ino: INodeNo) -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        for n in self.fs.listxattr(self.ino(ino)).map_err(errno)? {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// The owner of a new file in `parent` made by `req`, and its mode: the caller's uid and
    /// gid, or the directory's gid when the directory is set-group-ID (a new directory then
    /// inherits the bit), as the kernel's inode_init_owner does.
    fn new_owner(
        &self,
        req: &Request,
        parent: Ino,
        mode: u32,
        is_dir: bool,
    ) -> Result<(u32, u32, u32), Errno> {
        let p = self.fs.getattr(parent).map_err(errno)?;
        if p.mode & 0o2000 != 0 {
            let mode = if is_dir { mode | 0o2000 } else { mode };
            return Ok((req.uid(), p.gid, mode));
        }
        Ok((req.uid(), req.gid(), mode))
    }

    fn do_mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<FileAttr, Errno> {
        let rw = self.rw()?;
        let parent = self.ino(parent);
        let kind = mode & 0o170000;
        let (uid, gid, mode) = self.new_owner(req, parent, mode, kind == 0o040000)?;
        let a = match kind {
            0o040000 => rw.mkdir(parent, name, mode & 0o7777, uid, gid),
            0 | 0o100000 => rw.create(parent, name, mode & 0o7777, uid, gid),
            _ => rw.mknod(parent, name, mode, glibc_rdev(rdev), uid, gid),
        }
        .map_err(errno)?;
        Ok(self.attr(&a))
    }

    fn do_symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        target: &Path,
    ) -> Result<FileAttr, Errno> {
        let rw = self.rw()?;
        let parent = self.ino(parent);
        let (uid, gid, _) = self.new_owner(req, parent, 0o777, false)?;
        let a = rw
            .symlink(parent, name, target.as_os_str(), uid, gid)
            .map_err(errno)?;
        Ok(self.attr(&a))
    }

    fn do_link(&self, ino: INodeNo, newparent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let a = self
            .rw()?
            .link(self.ino(ino), self.ino(newparent), name)
            .map_err(errno)?;
        Ok(self.attr(&a))
    }

    fn do_rename(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        // NOREPLACE is the only flag the engine has; EXCHANGE and WHITEOUT are refused as
        // filesystems without them refuse them.
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return Err(Errno::EINVAL);
        }
        let f = if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            fs::RENAME_NOREPLACE
        } else {
            0
        };
        let rw = self.rw()?;
        let (parent, newparent) = (self.ino(parent), self.ino(newparent));
        let target = self.fs.lookup(newparent, newname).map_err(errno)?;
        let mut o = self.opens();
        if target.is_some_and(|t| o.count.contains_key(&t)) {
            if let Some(k) = rw
                .rename_kept(parent, name, newparent, newname, f)
                .map_err(errno)?
            {
                o.orphans.insert(k);
            }
            return Ok(());
        }
        rw.rename(parent, name, newparent, newname, f)
            .map_err(errno)
    }

    fn do_write(&self, ino: INodeNo, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let n = self
            .rw()?
            .write(self.ino(ino), offset, data)
            .map_err(errno)?;
        u32::try_from(n).map_err(|_| Errno::EFBIG)
    }

    fn do_setattr(&self, ino: INodeNo, c: &SetAttr) -> Result<FileAttr, Errno> {
        let ino = self.ino(ino);
        if *c == SetAttr::default() {
            return Ok(self.attr(&self.fs.getattr(ino).map_err(errno)?));
        }
        Ok(self.attr(&self.rw()?.setattr(ino, c).map_err(errno)?))
    }

    /// Frees every orphan still kept (the session is ending: no handle survives it).
    fn release_all(&self) {
        let orphans: Vec<Ino> = {
            let mut o = self.opens();
            o.count.clear();
            o.orphans.drain().collect()
        };
        if let Ok(rw) = self.rw() {
            for ino in orphans {
                let _ = rw.release_orphan(ino);
            }
        }
    }

    fn do_flush_all(&self) -> Result<(), Errno> {
        match self.rw() {
            Ok(rw) => rw.flush().map_err(errno),
            Err(_) => Ok(()),
        }
    }
}

/// FUSE's 32-bit device number (the kernel's `new_encode_dev`) → glibc's 64-bit `dev_t`.
fn glibc_rdev(dev: u32) -> u64 {
    let dev = u64::from(dev);
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

/// A time FUSE sets → the library's.
fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(st) => TimeSet::At(timestamp(st)),
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => Timestamp {
            secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (mut secs, mut nanos) = (-(d.as_secs() as i64), 0u32);
            if d.subsec_nanos() > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - d.subsec_nanos();
            }
            Timestamp { secs, nanos }
        }
    }
}

/// The errno a library error becomes.
fn errno(e: Error) -> Errno {
    Errno::from_i32(fs::errno(&e))
}

/// getxattr/listxattr's protocol: size 0 asks for the length, a short buffer is ERANGE.
fn reply_xattr(reply: ReplyXattr, size: u32, data: Result<Vec<u8>, Errno>) {
    match data {
        Err(e) => reply.error(e),
        Ok(d) if size == 0 => match u32::try_from(d.len()) {
            Ok(n) => reply.size(n),
            Err(_) => reply.error(Errno::E2BIG),
        },
        Ok(d) if d.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(d) => reply.data(&d),
    }
}

/// fuser's name for a kind of file.
fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

/// What FUSE replies for attributes `a` (inode numbers as the filesystem gives them).
fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.to_system_time(),
        mtime: a.mtime.to_system_time(),
        ctime: a.ctime.to_system_time(),
        crtime: a.crtime.unwrap_or_default().to_system_time(),
        kind: file_type(a.kind),
        perm: a.perm(),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: fuse_rdev(a.rdev),
        blksize: a.blksize,
        flags: 0,
    }
}

/// glibc's 64-bit `dev_t` → the kernel's 32-bit encoding that FUSE carries
/// (`new_encode_dev`: minor's low byte, 12 bits of major, the rest of minor).
fn fuse_rdev(dev: u64) -> u32 {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)) as u32
}

impl Filesystem for FuseFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.do_lookup(parent, name) {
            Ok(a) => reply.entry(&self.ttl, &a, self.generation(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.do_getattr(ino) {
            Ok(a) => reply.attr(&self.ttl, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.do_readlink(ino) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino, flags, false) {
            Ok(f) => {
                self.note_open(ino);
                reply.opened(FileHandle(0), f)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(ino, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino, flags, true) {
            Ok(f) => {
                self.note_open(ino);
                reply.opened(FileHandle(0), f)
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.do_readdir(ino, offset, &mut reply) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs().map_err(errno) {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_available,
                s.files,
                s.files_free,
                s.block_size,
                s.name_max,
                s.block_size,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.do_getxattr(ino, name));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.do_listxattr(ino));
    }

    fn destroy(&mut self) {
        // Errors cannot be reported here; the server flushes again after the session ends
        // and reports them there.
        self.release_all();
        let _ = self.do_flush_all();
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let c = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
        };
        match self.do_setattr(ino, &c) {
            Ok(a) => reply.attr(&self.ttl, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match self.do_mknod(req, parent, name, mode, rdev) {
            Ok(a) => reply.entry(&self.ttl, &a, self.generation(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.do_mknod(req, parent, name, (mode & 0o7777) | 0o040000, 0) {
            Ok(a) => reply.entry(&self.ttl, &a, self.generation(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_remove(parent, name, Removal::Unlink) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_remove(parent, name, Removal::Rmdir) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match self.do_release(ino) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        match self.do_release(ino) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self.do_symlink(req, parent, link_name, target) {
            Ok(a) => reply.entry(&self.ttl, &a, self.generation(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.do_rename(parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.do_link(ino, newparent, newname) {
            Ok(a) => reply.entry(&self.ttl, &a, self.generation(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.do_write(ino, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes reach the filesystem as they come (nothing is buffered per open file);
        // durability is fsync's and unmount's business. ENOSYS tells the kernel so once: it
        // stops sending FLUSH on every close() and reports success itself (one request per
        // file saved when thousands of small files are written).
        reply.error(Errno::ENOSYS);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.do_flush_all() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.do_flush_all() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let flags = u32::try_from(flags).unwrap_or(u32::MAX);
        if flags & !(fs::XATTR_CREATE | fs::XATTR_REPLACE) != 0 {
            return reply.error(Errno::EINVAL);
        }
        match self.rw().and_then(|rw| {
            rw.setxattr(self.ino(ino), name, value, flags)
                .map_err(errno)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .rw()
            .and_then(|rw| rw.removexattr(self.ino(ino), name).map_err(errno))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_mknod(req, parent, name, (mode & 0o7777) | 0o100000, 0) {
            Ok(a) => {
                self.note_open(a.ino);
                reply.created(
                    &self.ttl,
                    &a,
                    self.generation(&a),
                    FileHandle(0),
                    FopenFlags::FOPEN_KEEP_CACHE,
                )
            }
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match self.do_getattr(ino) {
            Ok(_) if mask.contains(fuser::AccessFlags::W_OK) && self.read_only => {
                reply.error(Errno::EROFS)
            }
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdev_encoding_matches_the_kernel() {
        // makedev(8, 1) = 0x801 in both encodings.
        assert_eq!(fuse_rdev(0x801), 0x801);
        // makedev(259, 300): glibc and the kernel place minor's high bits differently.
        let glibc = (259u64 << 8) | (300 & 0xff) | ((300u64 & !0xff) << 12);
        assert_eq!(
            fuse_rdev(glibc),
            (300 & 0xff) | (259 << 8) | ((300 & !0xff) << 12)
        );
    }

    #[test]
    fn device_numbers_round_trip() {
        for glibc in [
            0x801u64,
            (259u64 << 8) | (300 & 0xff) | ((300u64 & !0xff) << 12),
        ] {
            assert_eq!(glibc_rdev(fuse_rdev(glibc)), glibc);
        }
    }

    #[test]
    fn times_before_the_epoch() {
        let t = SystemTime::UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(
            timestamp(t),
            Timestamp {
                secs: -2,
                nanos: 500_000_000
            }
        );
    }

    #[test]
    fn options() {
        let mut c = MountConfig::read_only("vdisk:1");
        c.push_option("allow_other").unwrap();
        c.push_option("noatime").unwrap();
        c.push_option("noatime").unwrap();
        assert_eq!(c.acl, SessionACL::All);
        assert_eq!(
            c.options,
            [MountOption::DefaultPermissions, MountOption::NoAtime]
        );
        assert!(c.push_option("fsname=x").is_err());
        c.push_option("rw").unwrap();
        assert!(!c.read_only);
    }
}
