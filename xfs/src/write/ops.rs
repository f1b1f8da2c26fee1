//! The namespace operations: new inodes (files, directories, symlinks, special files), hard
//! links, unlink/rmdir with the inode freed at its last link, and rename.

use vdisk_block::{Error, Result};
use vdisk_fs::{errno, errno_error};

use super::alloc::{inode_gen, meta_uuid};
use super::dir::{ftype_of, DEnt, DirList};
use super::inode::{
    check_writable, encode_time, now, put16, put32, put64, CORE, FMT_DEV, FMT_EXTENTS, FMT_LOCAL,
    NULLAGINO,
};
use super::tx::{Kind, Tx};
use crate::attr::XFS_SYMLINK_MAGIC;
use crate::fork::Extent;
use crate::inode::{ForkFormat, Inode, XFS_DIFLAG2_BIGTIME};
use crate::superblock::XFS_SB_FEAT_INCOMPAT_BIGTIME;

/// `XFS_MAXLINK`.
const XFS_MAXLINK: u32 = (1 << 31) - 1;
/// Header of a v5 remote symlink block.
const SYMLINK_HDR: usize = 56;

impl Tx<'_> {
    fn live_dir(&mut self, ino: u64) -> Result<Inode> {
        let d = self.inode(ino)?;
        if d.di_mode == 0 {
            return Err(errno_error("dir", errno::ENOENT));
        }
        if !d.is_dir() {
            return Err(errno_error("dir", errno::ENOTDIR));
        }
        check_writable(&d)?;
        Ok(d)
    }

    fn ag_of(&self, ino: u64) -> u32 {
        let bits = u32::from(self.fs.sb.sb_agblklog) + u32::from(self.fs.sb.sb_inopblog);
        (ino >> bits) as u32
    }

    /// Creates an inode of `mode` named `name` in `parent` (a symlink when `target`).
    #[allow(clippy::too_many_arguments)]
    pub fn make_node(
        &mut self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
        target: Option<&[u8]>,
    ) -> Result<u64> {
        let p = self.live_dir(parent)?;
        let mut list = self.dir_read(&p)?;
        if list.find(name).is_some() {
            return Err(errno_error("create", errno::EEXIST));
        }
        let is_dir = mode & 0o170000 == 0o040000;
        if is_dir && p.di_nlink >= XFS_MAXLINK {
            return Err(errno_error("mkdir", errno::EMLINK));
        }
        let ino = self.alloc_inode(self.ag_of(parent))?;
        self.init_inode(ino, mode as u16, uid, gid)?;
        let isz = usize::from(self.fs.sb.sb_inodesize);
        let litino = isz - CORE;
        match mode & 0o170000 {
            0o040000 => {
                self.set_nlink(ino, 2)?;
                self.dir_write(
                    ino,
                    &DirList {
                        parent,
                        entries: Vec::new(),
                    },
                )?;
                let n = p.di_nlink + 1;
                self.set_nlink(parent, n)?;
            }
            0o120000 => {
                let t = target.unwrap_or_default();
                if t.len() <= litino {
                    let b = self.inode_mut(ino)?;
                    b[5] = FMT_LOCAL;
                    b[CORE..CORE + t.len()].copy_from_slice(t);
                    put64(b, 56, t.len() as u64);
                } else {
                    self.remote_symlink(ino, t)?;
                }
            }
            0o020000 | 0o060000 => {
                let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
                let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
                if major > 0x1ff || minor > 0x3ffff {
                    return Err(errno_error("mknod", errno::EINVAL));
                }
                let b = self.inode_mut(ino)?;
                b[5] = FMT_DEV;
                put32(b, CORE, ((major as u32) << 18) | minor as u32);
            }
            0o010000 | 0o140000 => {
                let b = self.inode_mut(ino)?;
                b[5] = FMT_DEV;
            }
            _ => {}
        }
        list.entries.push(DEnt {
            name: name.to_vec(),
            ino,
            ftype: ftype_of(mode as u16),
        });
        self.dir_write(parent, &list)?;
        self.touch(parent, true)?;
        Ok(ino)
    }

    fn remote_symlink(&mut self, ino: u64, t: &[u8]) -> Result<()> {
        let bs = self.fs.sb.sb_blocksize as usize;
        if t.len() > bs - SYMLINK_HDR {
            return Err(Error::unsupported(
                "XFS: symlink targets spanning several blocks are not supported yet",
            ));
        }
        let near = self.fs.inode_offset(ino)? / bs as u64;
        let agb = u64::from(self.fs.sb.sb_agblocks);
        let near = ((near / agb) << self.fs.sb.sb_agblklog) | (near % agb);
        let (fsb, _) = self.alloc_blocks(1, Some(near), 1)?;
        let off = self.fs.fsb_to_byte(fsb)?;
        let uuid = meta_uuid(self.fs);
        let b = self.new_buf(off, bs, Kind::Symlink);
        put32(b, 0, XFS_SYMLINK_MAGIC);
        put32(b, 4, 0);
        put32(b, 8, t.len() as u32);
        b[16..32].copy_from_slice(&uuid);
        put64(b, 32, ino);
        put64(b, 40, off / 512);
        b[SYMLINK_HDR..SYMLINK_HDR + t.len()].copy_from_slice(t);
        self.put_extents(
            ino,
            &[Extent {
                startoff: 0,
                startblock: fsb,
                blockcount: 1,
                unwritten: false,
            }],
        )?;
        let b = self.inode_mut(ino)?;
        put64(b, 56, t.len() as u64);
        put64(b, 64, 1);
        Ok(())
    }

    /// Fills a just-allocated inode: a fresh v3 core, empty extent-format forks.
    fn init_inode(&mut self, ino: u64, mode: u16, uid: u32, gid: u32) -> Result<()> {
        let bigtime = self.fs.sb.sb_features_incompat & XFS_SB_FEAT_INCOMPAT_BIGTIME != 0;
        let uuid = meta_uuid(self.fs);
        let b = self.inode_mut(ino)?;
        let old_ok = b[0..2] == crate::inode::XFS_DINODE_MAGIC.to_be_bytes();
        let gen = if old_ok {
            u32::from_be_bytes([b[92], b[93], b[94], b[95]]).wrapping_add(1)
        } else {
            inode_gen()
        };
        let next = u32::from_be_bytes([b[96], b[97], b[98], b[99]]);
        if old_ok && next != NULLAGINO {
            return Err(Error::corrupt(format!(
                "XFS inode {ino}: a free inode is on an unlinked list"
            )));
        }
        b.fill(0);
        put16(b, 0, crate::inode::XFS_DINODE_MAGIC);
        put16(b, 2, mode);
        b[4] = 3;
        b[5] = FMT_EXTENTS;
        put32(b, 8, uid);
        put32(b, 12, gid);
        put32(b, 16, 1);
        let t = encode_time(now(), bigtime);
        for o in [32, 40, 48, 144] {
            b[o..o + 8].copy_from_slice(&t);
        }
        b[83] = FMT_EXTENTS;
        put32(b, 92, gen);
        put32(b, 96, NULLAGINO);
        put64(b, 104, 1);
        put64(b, 120, if bigtime { XFS_DIFLAG2_BIGTIME } else { 0 });
        put64(b, 152, ino);
        b[160..176].copy_from_slice(&uuid);
        Ok(())
    }

    /// Adds hard link `name` in `parent` to `ino`.
    pub fn link(&mut self, ino: u64, parent: u64, name: &[u8]) -> Result<()> {
        let i = self.inode(ino)?;
        if i.di_mode == 0 {
            return Err(errno_error("link", errno::ENOENT));
        }
        if i.is_dir() {
            return Err(errno_error("link", errno::EPERM));
        }
        check_writable(&i)?;
        if i.di_nlink >= XFS_MAXLINK {
            return Err(errno_error("link", errno::EMLINK));
        }
        let p = self.live_dir(parent)?;
        let mut list = self.dir_read(&p)?;
        if list.find(name).is_some() {
            return Err(errno_error("link", errno::EEXIST));
        }
        list.entries.push(DEnt {
            name: name.to_vec(),
            ino,
            ftype: ftype_of(i.di_mode),
        });
        self.dir_write(parent, &list)?;
        self.set_nlink(ino, i.di_nlink + 1)?;
        self.touch(ino, false)?;
        self.touch(parent, true)
    }

    /// Drops one link of `ino` (a directory loses both of its own); frees it at zero.
    fn drop_link(&mut self, ino: u64) -> Result<()> {
        let i = self.inode(ino)?;
        if i.is_dir() || i.di_nlink <= 1 {
            return self.free_whole_inode(&i);
        }
        self.set_nlink(ino, i.di_nlink - 1)?;
        self.touch(ino, false)
    }

    /// Frees inode `i`: its blocks, then the inode itself.
    fn free_whole_inode(&mut self, i: &Inode) -> Result<()> {
        check_writable(i)?;
        if let Some(f) = i.di_aformat {
            if f != ForkFormat::Local && !(f == ForkFormat::Extents && i.di_anextents == 0) {
                return Err(Error::unsupported(format!(
                    "XFS inode {}: freeing leaf attribute forks is not supported yet",
                    i.ino
                )));
            }
        }
        if matches!(i.di_format, ForkFormat::Extents | ForkFormat::Btree) {
            self.free_all_data(i)?;
        }
        let b = self.inode_mut(i.ino)?;
        let gen = u32::from_be_bytes([b[92], b[93], b[94], b[95]]);
        let flags2 = u64::from_be_bytes(b[120..128].try_into().unwrap_or_default());
        let keep_ino: [u8; 8] = b[152..160].try_into().unwrap_or_default();
        let uuid: [u8; 16] = b[160..176].try_into().unwrap_or_default();
        b[2..].fill(0);
        b[4] = 3;
        b[5] = FMT_EXTENTS;
        b[83] = FMT_EXTENTS;
        put32(b, 92, gen.wrapping_add(1));
        put32(b, 96, NULLAGINO);
        put64(b, 120, flags2 & XFS_DIFLAG2_BIGTIME);
        b[152..160].copy_from_slice(&keep_ino);
        b[160..176].copy_from_slice(&uuid);
        self.free_inode(i.ino)
    }

    /// Removes `name` from `parent`: a non-directory (`dir` false) or an empty directory.
    pub fn remove(&mut self, parent: u64, name: &[u8], dir: bool) -> Result<()> {
        let p = self.live_dir(parent)?;
        let mut list = self.dir_read(&p)?;
        let e = list
            .take(name)
            .ok_or_else(|| errno_error("unlink", errno::ENOENT))?;
        let t = self.inode(e.ino)?;
        if dir {
            if !t.is_dir() {
                return Err(errno_error("rmdir", errno::ENOTDIR));
            }
            if !self.dir_read(&t)?.entries.is_empty() {
                return Err(errno_error("rmdir", errno::ENOTEMPTY));
            }
        } else if t.is_dir() {
            return Err(errno_error("unlink", errno::EISDIR));
        }
        self.dir_write(parent, &list)?;
        if dir {
            self.set_nlink(parent, p.di_nlink.saturating_sub(1))?;
        }
        self.drop_link(e.ino)?;
        self.touch(parent, true)
    }

    /// True when directory `anc` is `ino` or one of its ancestors.
    fn is_ancestor(&mut self, anc: u64, mut ino: u64) -> Result<bool> {
        let root = self.fs.sb.sb_rootino;
        for _ in 0..4096 {
            if ino == anc {
                return Ok(true);
            }
            if ino == root {
                return Ok(false);
            }
            let d = self.inode(ino)?;
            ino = self.fs.dir_parent(&d)?;
        }
        Err(Error::corrupt("XFS: directory parents form a loop"))
    }

    /// Renames `sp/sn` to `dp/dn`.
    pub fn rename(
        &mut self,
        sp: u64,
        sn: &[u8],
        dp: u64,
        dn: &[u8],
        noreplace: bool,
    ) -> Result<()> {
        let spi = self.live_dir(sp)?;
        let mut slist = self.dir_read(&spi)?;
        let src = slist
            .find(sn)
            .cloned()
            .ok_or_else(|| errno_error("rename", errno::ENOENT))?;
        let s = self.inode(src.ino)?;
        check_writable(&s)?;
        if sp == dp && sn == dn {
            return Ok(());
        }
        let dpi = if sp == dp {
            spi.clone()
        } else {
            self.live_dir(dp)?
        };
        let mut dlist = if sp == dp {
            slist.clone()
        } else {
            self.dir_read(&dpi)?
        };
        let target = dlist.find(dn).cloned();
        if let Some(t) = &target {
            if noreplace {
                return Err(errno_error("rename", errno::EEXIST));
            }
            if t.ino == src.ino {
                return Ok(());
            }
            let ti = self.inode(t.ino)?;
            if s.is_dir() {
                if !ti.is_dir() {
                    return Err(errno_error("rename", errno::ENOTDIR));
                }
                if !self.dir_read(&ti)?.entries.is_empty() {
                    return Err(errno_error("rename", errno::ENOTEMPTY));
                }
            } else if ti.is_dir() {
                return Err(errno_error("rename", errno::EISDIR));
            }
        }
        if s.is_dir() && sp != dp && self.is_ancestor(src.ino, dp)? {
            return Err(errno_error("rename", errno::EINVAL));
        }
        let new = DEnt {
            name: dn.to_vec(),
            ino: src.ino,
            ftype: src.ftype,
        };
        let replaced_dir = target.as_ref().is_some_and(|t| t.ftype == 2);
        if sp == dp {
            slist.take(sn);
            match slist.entries.iter_mut().find(|e| e.name == dn) {
                Some(e) => *e = new,
                None => slist.entries.push(new),
            }
            self.dir_write(sp, &slist)?;
            if replaced_dir {
                self.set_nlink(sp, spi.di_nlink.saturating_sub(1))?;
            }
        } else {
            slist.take(sn);
            match dlist.entries.iter_mut().find(|e| e.name == dn) {
                Some(e) => *e = new,
                None => dlist.entries.push(new),
            }
            self.dir_write(sp, &slist)?;
            self.dir_write(dp, &dlist)?;
            if s.is_dir() {
                let mut own = self.dir_read(&s)?;
                own.parent = dp;
                self.dir_write(src.ino, &own)?;
                self.set_nlink(sp, spi.di_nlink.saturating_sub(1))?;
                if !replaced_dir {
                    self.set_nlink(dp, dpi.di_nlink + 1)?;
                }
            } else if replaced_dir {
                // Not reachable: a file never replaces a directory.
                return Err(errno_error("rename", errno::EISDIR));
            }
            self.touch(dp, true)?;
        }
        if let Some(t) = target {
            self.drop_link(t.ino)?;
        }
        self.touch(src.ino, false)?;
        self.touch(sp, true)?;
        Ok(())
    }
}
