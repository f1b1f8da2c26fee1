//! The ext4 engine seen through the path-level API ([`FileSystem`]): inode numbers are
//! ext4's own, names its directory entries' bytes.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use vdisk_block::{Error, Result};

use vdisk_fs::{
    errno, errno_error, makedev, Attr, DirEntry, FileKind, FileSystem, Ino, StatFs, Timestamp,
};

use super::{dir_entry::ft, inode, Ext4};

/// The kind a directory entry's file-type byte names, if it names one.
pub(crate) fn kind_of_dirent(t: u8) -> Option<FileKind> {
    Some(match t {
        ft::REG_FILE => FileKind::File,
        ft::DIR => FileKind::Dir,
        ft::SYMLINK => FileKind::Symlink,
        ft::CHRDEV => FileKind::CharDev,
        ft::BLKDEV => FileKind::BlockDev,
        ft::FIFO => FileKind::Fifo,
        ft::SOCK => FileKind::Socket,
        _ => return None,
    })
}

impl From<inode::InodeTime> for Timestamp {
    fn from(t: inode::InodeTime) -> Self {
        Timestamp {
            secs: t.secs,
            nanos: t.nanos,
        }
    }
}

fn ino32(ino: Ino) -> Result<u32> {
    u32::try_from(ino).map_err(|_| Error::invalid(format!("inode number {ino} is out of range")))
}

impl FileSystem for Ext4 {
    fn root_ino(&self) -> Ino {
        Ino::from(inode::EXT4_ROOT_INO)
    }

    fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Option<Ino>> {
        let dir = self.live_inode(ino32(parent)?)?;
        if !dir.is_dir() {
            return Err(errno_error("lookup", errno::ENOTDIR));
        }
        if name.len() > super::dir_entry::EXT4_NAME_LEN {
            return Err(errno_error("lookup", errno::ENAMETOOLONG));
        }
        Ok(self.find_entry(&dir, name.as_bytes())?.map(Ino::from))
    }

    fn generation(&self, ino: Ino) -> Result<u64> {
        Ok(u64::from(self.live_inode(ino32(ino)?)?.i_generation))
    }

    fn getattr(&self, ino: Ino) -> Result<Attr> {
        let i = self.live_inode(ino32(ino)?)?;
        let mode = u32::from(i.i_mode);
        let kind = FileKind::from_mode(mode).ok_or_else(|| {
            Error::corrupt(format!("inode {ino}: mode {mode:#o} has no file type"))
        })?;
        let rdev = if matches!(kind, FileKind::CharDev | FileKind::BlockDev) {
            let (major, minor) = i.device_number();
            makedev(major, minor)
        } else {
            0
        };
        let mut blocks = i.sectors(self.superblock());
        if kind == FileKind::File && i.has_flag(inode::EXT4_INLINE_DATA_FL) {
            // As the kernel's stat of a regular file: inline data counts as the sectors it would fill,
            // so tools do not take the file for a hole.
            blocks += i.i_size.div_ceil(512);
        }
        Ok(Attr {
            ino,
            size: i.i_size,
            blocks,
            kind,
            mode,
            nlink: u32::from(i.i_links_count),
            uid: i.i_uid,
            gid: i.i_gid,
            atime: i.i_atime.into(),
            mtime: i.i_mtime.into(),
            ctime: i.i_ctime.into(),
            crtime: i.i_crtime.map(Into::into),
            rdev,
            blksize: self.superblock().block_size,
        })
    }

    fn readdir(&self, ino: Ino, offset: u64, f: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        let dir = self.live_inode(ino32(ino)?)?;
        if !dir.is_dir() {
            return Err(errno_error("readdir", errno::ENOTDIR));
        }
        let mut err = None;
        self.dir_walk(&dir, offset, &mut |e, next| {
            let kind = match kind_of_dirent(e.file_type) {
                Some(k) => k,
                // No filetype feature (or an unknown code): ask the inode.
                None => match self.getattr(Ino::from(e.inode)) {
                    Ok(a) => a.kind,
                    Err(x) => {
                        err = Some(x);
                        return false;
                    }
                },
            };
            f(DirEntry {
                name: OsString::from_vec(e.name),
                ino: Ino::from(e.inode),
                kind,
                next_offset: next,
            })
        })?;
        err.map_or(Ok(()), Err)
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let i = self.live_inode(ino32(ino)?)?;
        if i.is_dir() {
            return Err(errno_error("read", errno::EISDIR));
        }
        self.read_data(&i, offset, buf)
    }

    fn readlink(&self, ino: Ino) -> Result<OsString> {
        let i = self.live_inode(ino32(ino)?)?;
        if !i.is_symlink() {
            return Err(errno_error("readlink", errno::EINVAL));
        }
        Ok(OsString::from_vec(self.symlink_target(&i)?))
    }

    fn listxattr(&self, ino: Ino) -> Result<Vec<OsString>> {
        let i = self.live_inode(ino32(ino)?)?;
        Ok(self
            .xattr_entries(&i)?
            .iter()
            .filter(|e| !e.is_system_data())
            .filter_map(|e| e.full_name())
            .map(OsString::from_vec)
            .collect())
    }

    fn getxattr(&self, ino: Ino, name: &OsStr) -> Result<Option<Vec<u8>>> {
        let i = self.live_inode(ino32(ino)?)?;
        let want = name.as_bytes();
        for e in self.xattr_entries(&i)? {
            if e.is_system_data() {
                continue;
            }
            if e.full_name().as_deref() == Some(want) {
                return self.xattr_value(&e).map(Some);
            }
        }
        Ok(None)
    }

    fn statfs(&self) -> Result<StatFs> {
        let sb = self.superblock();
        Ok(StatFs {
            block_size: sb.block_size,
            blocks: sb.s_blocks_count,
            blocks_free: sb.s_free_blocks_count,
            blocks_available: sb.s_free_blocks_count.saturating_sub(sb.s_r_blocks_count),
            files: u64::from(sb.s_inodes_count),
            files_free: u64::from(sb.s_free_inodes_count),
            name_max: super::dir_entry::EXT4_NAME_LEN as u32,
        })
    }
}
