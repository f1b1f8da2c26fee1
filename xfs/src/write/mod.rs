//! [`XfsRw`]: the XFS engine opened read-write, implementing [`FileSystemMut`] for v5
//! filesystems.
//!
//! One filesystem-wide `RwLock`: readers share it, each write operation holds it exclusively.
//! Each operation is one [`tx::Tx`]: its metadata blocks are edited in memory, then logged as
//! one transaction, written home, and the log made clean again (see `tx.rs`), so a crash at
//! any moment leaves the operation whole (after the kernel's log recovery) or absent.
//!
//! ```text
//!   FileSystemMut op -> Tx { buffers by byte offset, queued file data }
//!        |  alloc.rs: free extents, AGFL, AGF, inode chunk records, AGI, counters
//!        |  btree.rs: any B+tree written back, splitting/merging only what changed
//!        |  dir.rs: short form / block / leaf / node, re-encoded whole from the entries
//!        |  attr.rs: short-form attribute forks
//!        |  data.rs: file data, extent lists and block map B+trees of any depth
//!        v
//!   commit: data home, LSN + CRC stamped, log record(s), buffers home, unmount record
//! ```
//!
//! Structures not handled yet are refused by name (EOPNOTSUPP) before anything is written:
//! v4 filesystems, rmapbt, reflink filesystems holding shared extents, nrext64 inodes,
//! directory (dabtree) node levels deeper than one, leaf attribute forks and values over 255
//! bytes, unwritten extents, a dirty log. B+trees of any depth are written (`btree.rs`):
//! bnobt/cntbt with the AGFL, inobt/finobt, and block maps. Open-but-unlinked inodes are not
//! kept on the AGI unlinked list: the last unlink frees.

pub mod alloc;
pub mod attr;
pub mod btree;
pub mod data;
pub mod dir;
pub mod inode;
pub mod ops;
pub mod tx;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use vdisk_block::{BlockDevice, Error, Result};
use vdisk_fs::{
    errno, errno_error, Attr, DirEntry, FileSystem, FileSystemMut, Ino, SetAttr, StatFs, TimeSet,
};

use crate::inode::XfsTime;
use crate::superblock::{
    XFS_SB_FEAT_INCOMPAT_BIGTIME, XFS_SB_FEAT_INCOMPAT_FTYPE, XFS_SB_FEAT_INCOMPAT_META_UUID,
    XFS_SB_FEAT_INCOMPAT_NREXT64, XFS_SB_FEAT_INCOMPAT_SPINODES,
};
use crate::Xfs;
use inode::{check_writable, put16, put32, TimeField};
use tx::Tx;

/// `XFS_SB_FEAT_RO_COMPAT_FINOBT`.
pub const RO_COMPAT_FINOBT: u32 = 1 << 0;
/// `XFS_SB_FEAT_RO_COMPAT_RMAPBT`.
pub const RO_COMPAT_RMAPBT: u32 = 1 << 1;
/// `XFS_SB_FEAT_RO_COMPAT_REFLINK`.
pub const RO_COMPAT_REFLINK: u32 = 1 << 2;
/// `XFS_SB_FEAT_RO_COMPAT_INOBTCNT`.
pub const RO_COMPAT_INOBTCNT: u32 = 1 << 3;

/// The XFS engine, read-write.
pub struct XfsRw {
    st: RwLock<Xfs>,
}

impl XfsRw {
    /// Opens the filesystem on `dev` (which must be writable) for reading and writing.
    /// Filesystems whose structures this engine does not maintain are refused by name.
    pub fn open(dev: Arc<dyn BlockDevice>) -> Result<XfsRw> {
        // Writes go to the device itself: a log that needs recovery must be replayed home
        // first (whatever a read-only open does with it in memory).
        let clean = vdisk_xfs_log::Log::open(&*dev)
            .and_then(|l| l.state())
            .map(|st| st.clean);
        if let Ok(false) = clean {
            return Err(Error::unsupported(
                "XFS log is dirty; writing before its replay is written home is not supported yet",
            ));
        }
        let fs = Xfs::open(dev)?;
        check_features(&fs)?;
        Ok(XfsRw {
            st: RwLock::new(fs),
        })
    }

    fn r(&self) -> RwLockReadGuard<'_, Xfs> {
        self.st.read().unwrap_or_else(|e| e.into_inner())
    }

    fn w(&self) -> RwLockWriteGuard<'_, Xfs> {
        self.st.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in one transaction and commits it; the superblock counters the transaction
    /// changed are taken back into the cached superblock.
    fn op<T>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let mut fs = self.w();
        let (v, counts) = {
            let mut tx = Tx::new(&fs);
            let v = f(&mut tx)?;
            let counts = tx.finish()?;
            tx.commit()?;
            (v, counts)
        };
        if let Some((icount, ifree, fdblocks)) = counts {
            fs.sb.sb_icount = icount;
            fs.sb.sb_ifree = ifree;
            fs.sb.sb_fdblocks = fdblocks;
        }
        Ok(v)
    }
}

/// Refuses features the writer does not keep consistent.
fn check_features(fs: &Xfs) -> Result<()> {
    let sb = &fs.sb;
    if !sb.has_crc() {
        return Err(Error::unsupported(
            "XFS v4 filesystems are read-only in this version (only v5 is written)",
        ));
    }
    if sb.sb_features_ro_compat & RO_COMPAT_RMAPBT != 0 {
        return Err(Error::unsupported(
            "XFS: writing filesystems with reverse-mapping B+trees (rmapbt) is not supported yet",
        ));
    }
    let known_ro = RO_COMPAT_FINOBT | RO_COMPAT_REFLINK | RO_COMPAT_INOBTCNT;
    if sb.sb_features_ro_compat & !known_ro != 0 {
        return Err(Error::unsupported(format!(
            "XFS: writing with read-only-compatible features {:#x} is not supported",
            sb.sb_features_ro_compat & !known_ro
        )));
    }
    let known_in = XFS_SB_FEAT_INCOMPAT_FTYPE
        | XFS_SB_FEAT_INCOMPAT_SPINODES
        | XFS_SB_FEAT_INCOMPAT_META_UUID
        | XFS_SB_FEAT_INCOMPAT_BIGTIME
        | XFS_SB_FEAT_INCOMPAT_NREXT64;
    if sb.sb_features_incompat & !known_in != 0 {
        return Err(Error::unsupported(format!(
            "XFS: writing with incompatible features {:#x} (needsrepair or newer) is not supported",
            sb.sb_features_incompat & !known_in
        )));
    }
    if sb.sb_features_log_incompat != 0 {
        return Err(Error::unsupported(format!(
            "XFS: writing with log-incompatible features {:#x} is not supported",
            sb.sb_features_log_incompat
        )));
    }
    if !sb.has_ftype() {
        return Err(Error::unsupported(
            "XFS: writing directories without file types (ftype=0) is not supported",
        ));
    }
    if sb.sb_features_ro_compat & RO_COMPAT_REFLINK != 0 {
        for agno in 0..sb.sb_agcount {
            if !alloc::refcount_empty(fs, agno)? {
                return Err(Error::unsupported(
                    "XFS: writing a reflink filesystem that holds shared extents is not supported yet",
                ));
            }
        }
    }
    Ok(())
}

fn name_ok(name: &OsStr) -> Result<&[u8]> {
    let n = name.as_bytes();
    if n.is_empty() || n == b"." || n == b".." || n.contains(&b'/') || n.contains(&0) {
        return Err(errno_error("name", errno::EINVAL));
    }
    if n.len() > 255 {
        return Err(errno_error("name", errno::ENAMETOOLONG));
    }
    Ok(n)
}

fn time_of(t: TimeSet) -> XfsTime {
    match t {
        TimeSet::Now => inode::now(),
        TimeSet::At(ts) => XfsTime {
            secs: ts.secs,
            nanos: ts.nanos,
        },
    }
}

impl FileSystem for XfsRw {
    fn writable(&self) -> Option<&dyn FileSystemMut> {
        Some(self)
    }
    fn root_ino(&self) -> Ino {
        self.r().root_ino()
    }
    fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Option<Ino>> {
        self.r().lookup(parent, name)
    }
    fn getattr(&self, ino: Ino) -> Result<Attr> {
        self.r().getattr(ino)
    }
    fn readdir(&self, ino: Ino, offset: u64, f: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        self.r().readdir(ino, offset, f)
    }
    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.r().read(ino, offset, buf)
    }
    fn readlink(&self, ino: Ino) -> Result<OsString> {
        self.r().readlink(ino)
    }
    fn listxattr(&self, ino: Ino) -> Result<Vec<OsString>> {
        self.r().listxattr(ino)
    }
    fn getxattr(&self, ino: Ino, name: &OsStr) -> Result<Option<Vec<u8>>> {
        self.r().getxattr(ino, name)
    }
    fn statfs(&self) -> Result<StatFs> {
        self.r().statfs()
    }
}

impl FileSystemMut for XfsRw {
    fn create(&self, parent: Ino, name: &OsStr, mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        let n = name_ok(name)?;
        let ino =
            self.op(|tx| tx.make_node(parent, n, 0o100000 | (mode & 0o7777), 0, uid, gid, None))?;
        self.getattr(ino)
    }

    fn mkdir(&self, parent: Ino, name: &OsStr, mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        let n = name_ok(name)?;
        let ino =
            self.op(|tx| tx.make_node(parent, n, 0o040000 | (mode & 0o7777), 0, uid, gid, None))?;
        self.getattr(ino)
    }

    fn mknod(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let n = name_ok(name)?;
        let t = mode & 0o170000;
        if !matches!(t, 0o100000 | 0o020000 | 0o060000 | 0o010000 | 0o140000) {
            return Err(errno_error("mknod", errno::EINVAL));
        }
        let ino = self.op(|tx| tx.make_node(parent, n, mode & 0o177777, rdev, uid, gid, None))?;
        self.getattr(ino)
    }

    fn symlink(
        &self,
        parent: Ino,
        name: &OsStr,
        target: &OsStr,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let n = name_ok(name)?;
        let t = target.as_bytes();
        if t.is_empty() {
            return Err(errno_error("symlink", errno::ENOENT));
        }
        if t.len() > 1024 {
            return Err(errno_error("symlink", errno::ENAMETOOLONG));
        }
        let ino = self.op(|tx| tx.make_node(parent, n, 0o120777, 0, uid, gid, Some(t)))?;
        self.getattr(ino)
    }

    fn link(&self, ino: Ino, newparent: Ino, newname: &OsStr) -> Result<Attr> {
        let n = name_ok(newname)?;
        self.op(|tx| tx.link(ino, newparent, n))?;
        self.getattr(ino)
    }

    fn unlink(&self, parent: Ino, name: &OsStr) -> Result<()> {
        let n = name_ok(name)?;
        self.op(|tx| tx.remove(parent, n, false))
    }

    fn rmdir(&self, parent: Ino, name: &OsStr) -> Result<()> {
        let n = name_ok(name)?;
        self.op(|tx| tx.remove(parent, n, true))
    }

    fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let a = name_ok(name)?;
        let b = name_ok(newname)?;
        if flags & vdisk_fs::RENAME_EXCHANGE != 0 {
            return Err(errno_error("rename", errno::EINVAL));
        }
        self.op(|tx| {
            tx.rename(
                parent,
                a,
                newparent,
                b,
                flags & vdisk_fs::RENAME_NOREPLACE != 0,
            )
        })
    }

    fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        self.op(|tx| tx.write_file(ino, offset, data))?;
        Ok(data.len())
    }

    fn setattr(&self, ino: Ino, c: &SetAttr) -> Result<Attr> {
        self.op(|tx| {
            let i = tx.inode(ino)?;
            if i.di_mode == 0 {
                return Err(errno_error("setattr", errno::ENOENT));
            }
            check_writable(&i)?;
            if let Some(size) = c.size {
                if i.is_dir() {
                    return Err(errno_error("truncate", errno::EISDIR));
                }
                if !i.is_file() {
                    return Err(errno_error("truncate", errno::EINVAL));
                }
                if size != i.di_size {
                    tx.truncate(ino, size)?;
                    tx.touch(ino, true)?;
                }
            }
            let b = tx.inode_mut(ino)?;
            if let Some(m) = c.mode {
                let mode = (i.di_mode & 0o170000) | (m & 0o7777) as u16;
                put16(b, 2, mode);
            }
            if let Some(u) = c.uid {
                put32(b, 8, u);
            }
            if let Some(g) = c.gid {
                put32(b, 12, g);
            }
            if let Some(t) = c.atime {
                tx.set_time(ino, TimeField::Atime, time_of(t))?;
            }
            if let Some(t) = c.mtime {
                tx.set_time(ino, TimeField::Mtime, time_of(t))?;
            }
            tx.touch(ino, false)?;
            Ok(())
        })?;
        self.getattr(ino)
    }

    fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: u32) -> Result<()> {
        self.op(|tx| tx.set_xattr(ino, name.as_bytes(), Some(value), flags))
    }

    fn removexattr(&self, ino: Ino, name: &OsStr) -> Result<()> {
        self.op(|tx| tx.set_xattr(ino, name.as_bytes(), None, 0))
    }

    fn flush(&self) -> Result<()> {
        // Every operation leaves the log clean and its metadata home.
        self.r().dev.flush()
    }

    fn set_label(&self, label: &str) -> Result<()> {
        let b = label.as_bytes();
        if b.len() > 12 {
            return Err(Error::invalid(format!(
                "XFS label {label:?} is {} bytes; an XFS label holds at most 12",
                b.len()
            )));
        }
        if b.contains(&0) {
            return Err(Error::invalid("an XFS label cannot contain a NUL byte"));
        }
        let mut v = [0u8; 12];
        v[..b.len()].copy_from_slice(b);
        // The primary superblock through the log, like every other change.
        self.op(|tx| {
            let len = usize::from(tx.fs.sb.sb_sectsize);
            let sb = tx.buf(0, len, tx::Kind::Sb)?;
            sb[108..120].copy_from_slice(&v);
            Ok(())
        })?;
        // The secondary copies in place, as xfs_admin -L does (nothing reads them but
        // xfs_repair, which compares them with the primary).
        let fs = self.r();
        let len = usize::from(fs.sb.sb_sectsize);
        let ag_bytes = u64::from(fs.sb.sb_agblocks) * u64::from(fs.sb.sb_blocksize);
        let mut buf = vec![0u8; len];
        for ag in 1..u64::from(fs.sb.sb_agcount) {
            fs.read_bytes(&mut buf, ag * ag_bytes)?;
            // A damaged copy is left as it is, for xfs_repair to judge.
            let sound = &buf[..4] == b"XFSB"
                && (!fs.sb.has_crc() || crate::verify_crc(&buf, 224, &|| String::new()).is_ok());
            if !sound {
                continue;
            }
            buf[108..120].copy_from_slice(&v);
            if fs.sb.has_crc() {
                tx::set_crc(&mut buf, 224);
            }
            fs.dev.write_at(&buf, ag * ag_bytes)?;
        }
        fs.dev.flush()
    }
}
