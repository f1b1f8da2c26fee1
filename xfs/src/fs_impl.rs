//! The adapter to guestfs's path-level [`FileSystem`] trait: the only file that knows the
//! guest layer's types.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use vdisk_block::{Error, Result};
use vdisk_fs::{errno, errno_error, Attr, DirEntry, FileKind, FileSystem, Ino, StatFs, Timestamp};

use crate::inode::{Inode, XfsTime};
use crate::Xfs;

/// The longest name in a directory entry.
pub const XFS_NAME_MAX: u32 = 255;

impl From<XfsTime> for Timestamp {
    fn from(t: XfsTime) -> Self {
        Timestamp {
            secs: t.secs,
            nanos: t.nanos,
        }
    }
}

fn kind_of(i: &Inode) -> Result<FileKind> {
    FileKind::from_mode(u32::from(i.di_mode)).ok_or_else(|| {
        Error::corrupt(format!(
            "XFS inode {}: mode {:#o} has no file type",
            i.ino, i.di_mode
        ))
    })
}

/// The kind named by a directory entry's ftype byte (XFS_DIR3_FT_*).
fn kind_of_ftype(t: u8) -> Option<FileKind> {
    Some(match t {
        1 => FileKind::File,
        2 => FileKind::Dir,
        3 => FileKind::CharDev,
        4 => FileKind::BlockDev,
        5 => FileKind::Fifo,
        6 => FileKind::Socket,
        7 => FileKind::Symlink,
        _ => return None,
    })
}

impl Xfs {
    /// An inode that is in use (mode set, linked).
    fn live(&self, ino: Ino) -> Result<Inode> {
        let i = self.inode(ino)?;
        if i.di_mode == 0 {
            return Err(errno_error("inode", errno::ENOENT));
        }
        Ok(i)
    }

    /// The answer every write gives.
    pub fn read_only_error() -> Error {
        Error::unsupported(crate::READ_ONLY)
    }
}

impl FileSystem for Xfs {
    fn root_ino(&self) -> Ino {
        self.sb.sb_rootino
    }

    fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Option<Ino>> {
        let d = self.live(parent)?;
        if !d.is_dir() {
            return Err(errno_error("lookup", errno::ENOTDIR));
        }
        match name.as_bytes() {
            b"." => Ok(Some(parent)),
            b".." => self.dir_parent(&d).map(Some),
            n => self.dir_lookup(&d, n),
        }
    }

    fn getattr(&self, ino: Ino) -> Result<Attr> {
        let i = self.live(ino)?;
        let kind = kind_of(&i)?;
        let rdev = if matches!(kind, FileKind::CharDev | FileKind::BlockDev) {
            let (ma, mi) = i.device();
            let (ma, mi) = (u64::from(ma), u64::from(mi));
            ((ma & 0xffff_f000) << 32)
                | ((ma & 0xfff) << 8)
                | ((mi & 0xffff_ff00) << 12)
                | (mi & 0xff)
        } else {
            0
        };
        let bs = u64::from(self.sb.sb_blocksize);
        Ok(Attr {
            ino,
            size: i.di_size,
            blocks: i.di_nblocks.saturating_mul(bs / 512),
            kind,
            mode: u32::from(i.di_mode),
            nlink: i.di_nlink,
            uid: i.di_uid,
            gid: i.di_gid,
            atime: i.di_atime.into(),
            mtime: i.di_mtime.into(),
            ctime: i.di_ctime.into(),
            crtime: i.di_crtime.map(Into::into),
            rdev,
            blksize: self.sb.sb_blocksize,
        })
    }

    fn readdir(&self, ino: Ino, offset: u64, f: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        let d = self.live(ino)?;
        if !d.is_dir() {
            return Err(errno_error("readdir", errno::ENOTDIR));
        }
        if offset < 1
            && !f(DirEntry {
                name: ".".into(),
                ino,
                kind: FileKind::Dir,
                next_offset: 1,
            })
        {
            return Ok(());
        }
        if offset < 2
            && !f(DirEntry {
                name: "..".into(),
                ino: self.dir_parent(&d)?,
                kind: FileKind::Dir,
                next_offset: 2,
            })
        {
            return Ok(());
        }
        let mut err = None;
        self.dir_walk(&d, offset, &mut |e| {
            let kind = match kind_of_ftype(e.ftype) {
                Some(k) => k,
                None => match self.live(e.ino).and_then(|i| kind_of(&i)) {
                    Ok(k) => k,
                    Err(x) => {
                        err = Some(x);
                        return false;
                    }
                },
            };
            f(DirEntry {
                name: OsString::from_vec(e.name),
                ino: e.ino,
                kind,
                next_offset: e.cookie,
            })
        })?;
        err.map_or(Ok(()), Err)
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let i = self.live(ino)?;
        if i.is_dir() {
            return Err(errno_error("read", errno::EISDIR));
        }
        self.read_data(&i, offset, buf)
    }

    fn readlink(&self, ino: Ino) -> Result<OsString> {
        let i = self.live(ino)?;
        if !i.is_symlink() {
            return Err(errno_error("readlink", errno::EINVAL));
        }
        Ok(OsString::from_vec(self.symlink_target(&i)?))
    }

    fn listxattr(&self, ino: Ino) -> Result<Vec<OsString>> {
        let i = self.live(ino)?;
        Ok(self
            .xattrs(&i)?
            .into_iter()
            .map(|a| OsString::from_vec(a.name))
            .collect())
    }

    fn getxattr(&self, ino: Ino, name: &OsStr) -> Result<Option<Vec<u8>>> {
        let i = self.live(ino)?;
        Ok(self
            .xattrs(&i)?
            .into_iter()
            .find(|a| a.name == name.as_bytes())
            .map(|a| a.value))
    }

    fn statfs(&self) -> Result<StatFs> {
        let sb = &self.sb;
        // The log is inside the data device and never free.
        let blocks = sb.sb_dblocks.saturating_sub(if sb.sb_logstart != 0 {
            u64::from(sb.sb_logblocks)
        } else {
            0
        });
        Ok(StatFs {
            block_size: sb.sb_blocksize,
            blocks,
            blocks_free: sb.sb_fdblocks,
            blocks_available: sb.sb_fdblocks,
            files: sb.sb_icount,
            files_free: sb.sb_ifree,
            name_max: XFS_NAME_MAX,
        })
    }
}
