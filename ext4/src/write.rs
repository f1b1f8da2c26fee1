//! [`Ext4Rw`]: the ext4 engine opened read-write, implementing [`FileSystemMut`].
//!
//! One filesystem-wide `RwLock`: readers share it, each write operation holds it exclusively
//! from start to end, so every operation sees and leaves a consistent filesystem.
//!
//! Opening: a journal that needs recovery is replayed for real before anything else (its
//! committed blocks written home, the journal marked empty, needs_recovery cleared), and the
//! superblock's free counts are recomputed from the group descriptors, as the kernel's mount
//! does. Filesystems with read-only-compatible features vdisk does not maintain, or MMP, are
//! refused. On the first change the superblock is marked not clean (`s_state` loses
//! VALID_FS, as fuse2fs does while mounted); [`FileSystemMut::flush`] (and drop) puts the
//! state back and bumps `s_wtime`; `s_mnt_count` is left alone, as debugfs -w leaves it.
//!
//! Crash safety: on a filesystem with a journal, each operation's metadata is one jbd2
//! transaction (see `journal_write`), so after a crash the kernel's or e2fsck's recovery
//! finds every operation whole or absent. Without a journal (ext2, or a journal vdisk does not
//! write), and inside a transaction too large for the log, the write order alone keeps a crash
//! to losing at most the operation in flight, which e2fsck -fy repairs (leaked blocks, a link
//! count) without touching other files:
//! - allocation (bitmap, group descriptor) before anything refers to what was allocated;
//! - file data before the extent tree / indirect blocks that map it, those before the inode;
//! - a new inode is written before the directory entry that links it;
//! - rename adds the new name before removing the old one;
//! - unlink removes the entry, then writes the inode, and frees blocks and the inode last;
//! - blocks a shrunk mapping no longer uses are freed after the inode stops pointing at them.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use vdisk_block::{BlockDevice, Error, Result};

use super::dir_entry::{ft, EXT4_NAME_LEN};
use super::filemap::{new_root, punch, set_range, Ext};
use super::inode::{self, Inode, InodeTime, EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL, I_BLOCK_SIZE};
use super::superblock::{incompat, ro_compat, EXT4_VALID_FS};
use super::{journal, Ext4, OpenOptions, Run};
use vdisk_fs::{
    errno, errno_error, Attr, Capabilities, DirEntry, FileSystem, FileSystemMut, Ino, SetAttr,
    StatFs, TimeSet, RENAME_EXCHANGE, RENAME_NOREPLACE,
};

/// The most links an inode may have (EXT4_LINK_MAX).
const EXT4_LINK_MAX: u16 = 65000;

struct State {
    fs: Ext4,
    /// `s_state` as found at open.
    orig_state: u16,
    /// The superblock is marked not clean on disk.
    dirty: bool,
    /// Why the validation before the first write refused the filesystem, once it has.
    refused: Option<String>,
    /// The orphan list found at open has been processed (once per session: later entries
    /// are this session's own, kept for open handles).
    orphans_processed: bool,
}

/// The ext4 engine, read-write.
pub struct Ext4Rw {
    st: RwLock<State>,
}

impl std::fmt::Debug for Ext4Rw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ext4Rw").finish_non_exhaustive()
    }
}

fn ino32(ino: Ino) -> Result<u32> {
    u32::try_from(ino).map_err(|_| Error::invalid(format!("inode number {ino} is out of range")))
}

fn check_name(name: &OsStr) -> Result<&[u8]> {
    let n = name.as_bytes();
    if n.len() > EXT4_NAME_LEN {
        return Err(errno_error("name", errno::ENAMETOOLONG));
    }
    if n.is_empty() || n == b"." || n == b".." || n.contains(&b'/') || n.contains(&0) {
        return Err(errno_error("name", errno::EINVAL));
    }
    Ok(n)
}

fn dirent_type(mode: u16) -> u8 {
    match mode & inode::S_IFMT {
        inode::S_IFREG => ft::REG_FILE,
        inode::S_IFDIR => ft::DIR,
        inode::S_IFLNK => ft::SYMLINK,
        inode::S_IFCHR => ft::CHRDEV,
        inode::S_IFBLK => ft::BLKDEV,
        inode::S_IFIFO => ft::FIFO,
        inode::S_IFSOCK => ft::SOCK,
        _ => ft::UNKNOWN,
    }
}

impl Ext4Rw {
    /// Opens the filesystem on `dev` for reading and writing.
    pub fn open(dev: Arc<dyn BlockDevice>) -> Result<Ext4Rw> {
        if dev.is_read_only() {
            return Err(errno_error("open", errno::EROFS));
        }
        let mut fs = Ext4::open_with(dev, OpenOptions::default())?;
        if let Some(why) = fs.sb.read_only_reason() {
            return Err(Error::unsupported(format!(
                "the filesystem has {why}, which vdisk cannot keep consistent; it can only be read"
            )));
        }
        if fs.sb.has_incompat(incompat::MMP) {
            return Err(Error::unsupported(
                "the filesystem uses multiple-mount protection (mmp); vdisk does not write it",
            ));
        }
        if !fs.overlay.is_empty() || fs.sb.has_incompat(incompat::RECOVER) {
            fs.recover_journal()?;
        }
        // The kernel trusts the group descriptors' counts and rewrites the superblock's.
        let (mut blocks, mut inodes) = (0u64, 0u64);
        for g in 0..fs.sb.group_count {
            let d = fs.group_desc(g)?;
            blocks += u64::from(d.bg_free_blocks_count);
            inodes += u64::from(d.bg_free_inodes_count);
        }
        fs.sb.s_free_blocks_count = blocks;
        fs.sb.s_free_inodes_count = u32::try_from(inodes).unwrap_or(u32::MAX);
        fs.journal_setup()?;
        let orig_state = fs.sb.s_state;
        // An orphan list that fails the kernel's checks is not processed, and nothing written.
        let refused = fs.orphan_list().err().map(|e| e.to_string());
        Ok(Ext4Rw {
            st: RwLock::new(State {
                fs,
                orig_state,
                dirty: false,
                refused,
                orphans_processed: false,
            }),
        })
    }

    /// With `on`, each operation's journal transaction flushes the device at its three
    /// ordering points (log before commit, commit before checkpoint, checkpoint before the
    /// journal is emptied), so the operation is atomic across a crash of whatever lies below
    /// the device too: a host crash, or a process kill over a device that caches writes in
    /// memory (qcow2 keeps L2 tables there until flushed). Off by default: on a host file a
    /// killed writer loses nothing it wrote, and three flushes per operation cost far more
    /// than the operation. No effect without a journal vdisk writes.
    pub fn set_write_barriers(&self, on: bool) {
        let g = self.st.write().unwrap_or_else(|e| e.into_inner());
        g.fs.jstate().barriers = on;
    }

    /// The engine, for reading (shared lock).
    pub fn engine(&self) -> RwLockReadGuard<'_, impl std::ops::Deref<Target = Ext4>> {
        self.st.read().unwrap_or_else(|e| e.into_inner())
    }

    fn w(&self) -> Result<RwLockWriteGuard<'_, State>> {
        let mut g = self.st.write().unwrap_or_else(|e| e.into_inner());
        if !g.dirty {
            // Never make a damaged filesystem worse: validate before the first change.
            if let Some(why) = &g.refused {
                return Err(Error::corrupt(why.clone()));
            }
            if let Err(e) = g.fs.validate_for_write() {
                g.refused = Some(e.to_string());
                return Err(e);
            }
            g.fs.sb.s_state &= !EXT4_VALID_FS;
            if g.fs.journaled() {
                // As while mounted: recovery must replay what the journal may hold.
                g.fs.sb.s_feature_incompat |= incompat::RECOVER;
            }
            g.fs.store_superblock()?;
            g.fs.dev.flush()?;
            g.dirty = true;
            if !g.orphans_processed && g.fs.sb.s_last_orphan != 0 {
                // What a crash (or a handle never released) left on the orphan list is freed
                // before anything else, as the kernel's mount does.
                g.fs.begin_txn();
                let r = g.fs.orphan_cleanup();
                let s = g.fs.store_superblock();
                let c = g.fs.commit_txn();
                r?;
                s?;
                c?;
            }
            g.orphans_processed = true;
        }
        Ok(g)
    }

    /// Runs one write operation and writes the superblock counts after it.
    fn op<T>(&self, f: impl FnOnce(&mut Ext4) -> Result<T>) -> Result<T> {
        let mut g = self.w()?;
        g.fs.begin_txn();
        let r = f(&mut g.fs);
        let s = g.fs.store_superblock();
        let c = g.fs.commit_txn();
        let v = r?;
        s?;
        c?;
        Ok(v)
    }
}

impl std::ops::Deref for State {
    type Target = Ext4;
    fn deref(&self) -> &Ext4 {
        &self.fs
    }
}

impl Drop for Ext4Rw {
    /// As an unmount: every handle is gone, so the orphans kept for them are freed, then the
    /// filesystem is flushed.
    fn drop(&mut self) {
        let kept: Vec<u32> = self.engine().orphans.iter().copied().collect();
        for o in kept {
            let _ = self.release_orphan(Ino::from(o));
        }
        let _ = FileSystemMut::flush(self);
    }
}

impl Ext4 {
    /// Writes the replayed journal blocks home, marks the journal empty and clears
    /// needs_recovery (the order e2fsck uses).
    fn recover_journal(&mut self) -> Result<()> {
        let bs = self.bs();
        let mut buf = vec![0u8; bs as usize];
        for (&blk, copy) in &self.overlay {
            self.dev.read_at(&mut buf, copy.journal_block * bs)?;
            if copy.escaped {
                buf[..4].copy_from_slice(&journal::JBD2_MAGIC_NUMBER.to_be_bytes());
            }
            self.dev.write_at(&buf, blk * bs)?;
        }
        self.dev.flush()?;
        if self.sb.s_journal_inum != 0 {
            let j = self.inode(self.sb.s_journal_inum)?;
            if let Run::Data { start, .. } = self.map(&j, 0)? {
                self.dev.read_at(&mut buf, start * bs)?;
                if super::bytes::be32(&buf, 0) == journal::JBD2_MAGIC_NUMBER {
                    journal::mark_empty(&mut buf, self.journal_next_sequence);
                    self.dev.write_at(&buf, start * bs)?;
                    self.dev.flush()?;
                }
            }
        }
        self.overlay.clear();
        self.cache.clear();
        self.sb.s_feature_incompat &= !incompat::RECOVER;
        self.store_superblock()?;
        self.dev.flush()
    }

    fn now() -> InodeTime {
        InodeTime::now()
    }

    fn live_dir(&self, ino: Ino) -> Result<Inode> {
        let d = self.live_inode(ino32(ino)?)?;
        if !d.is_dir() {
            return Err(errno_error("lookup", errno::ENOTDIR));
        }
        if d.i_links_count == 0 {
            // Removed while open: nothing may be made in it (the kernel's IS_DEADDIR).
            return Err(errno_error("lookup", errno::ENOENT));
        }
        Ok(d)
    }

    fn lookup_in(&self, dir: &Inode, name: &[u8]) -> Result<Option<u32>> {
        self.dir_lookup(dir, name)
    }

    /// A fresh in-memory inode `ino` with `mode`, owned by uid:gid, times now.
    fn fresh_inode(&self, ino: u32, mode: u16, uid: u32, gid: u32) -> Result<Inode> {
        let old = self.inode(ino)?;
        let isz = usize::from(self.sb.s_inode_size);
        let extra = if isz > inode::EXT4_GOOD_OLD_INODE_SIZE {
            let want = super::bytes::le16(&self.sb.raw[..], 0x15C).max(32);
            let room = (isz - inode::EXT4_GOOD_OLD_INODE_SIZE) as u16;
            want.min(room) & !3
        } else {
            0
        };
        let now = Self::now();
        let kind = mode & inode::S_IFMT;
        let extents = self.sb.has_incompat(incompat::EXTENTS)
            && matches!(kind, inode::S_IFREG | inode::S_IFDIR);
        Ok(Inode {
            ino,
            raw: vec![0u8; isz],
            i_mode: mode,
            i_uid: uid,
            i_gid: gid,
            i_size: 0,
            i_atime: now,
            i_ctime: now,
            i_mtime: now,
            i_crtime: (extra >= 24).then_some(now),
            i_dtime: 0,
            i_links_count: 1,
            i_blocks: 0,
            i_flags: if extents { EXT4_EXTENTS_FL } else { 0 },
            i_block: if extents { new_root() } else { [0; 60] },
            i_generation: old.i_generation.wrapping_add(1),
            i_file_acl: 0,
            i_extra_isize: extra,
            i_checksum: 0,
        })
    }

    /// Allocates, writes and links a new inode; `setup` fills it in (blocks, target) before
    /// it is linked. Returns the inode.
    fn make_node(
        &mut self,
        parent: Ino,
        name: &OsStr,
        mode: u16,
        uid: u32,
        gid: u32,
        setup: &mut dyn FnMut(&mut Ext4, &mut Inode, &Inode) -> Result<()>,
    ) -> Result<Inode> {
        let name = check_name(name)?;
        let mut dir = self.live_dir(parent)?;
        if dir.has_flag(EXT4_INLINE_DATA_FL) {
            return Err(Error::unsupported(format!(
                "directory inode {parent} keeps its entries inline; vdisk does not edit inline directories"
            )));
        }
        if self.lookup_in(&dir, name)?.is_some() {
            return Err(errno_error("create", errno::EEXIST));
        }
        let is_dir = mode & inode::S_IFMT == inode::S_IFDIR;
        if is_dir
            && dir.i_links_count >= EXT4_LINK_MAX
            && !self.sb.has_ro_compat(ro_compat::DIR_NLINK)
        {
            return Err(errno_error("mkdir", errno::EMLINK));
        }
        let ino = self.alloc_inode(dir.ino, is_dir)?;
        let mut node = self.fresh_inode(ino, mode, uid, gid)?;
        setup(self, &mut node, &dir)?;
        self.store_inode(&mut node)?;
        self.dir_add(&mut dir, name, ino, dirent_type(mode))?;
        let now = Self::now();
        dir.i_mtime = now;
        dir.i_ctime = now;
        if is_dir {
            if dir.i_links_count >= EXT4_LINK_MAX - 1 || dir.i_links_count == 1 {
                dir.i_links_count = 1;
            } else {
                dir.i_links_count += 1;
            }
        }
        self.store_inode(&mut dir)?;
        Ok(node)
    }

    /// Writes `data` at `off` of `inode` (regular file or slow symlink), allocating blocks,
    /// converting unwritten extents; updates size and i_blocks and stores the inode.
    fn write_data(&mut self, inode: &mut Inode, off: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.uninline(inode)?;
        let bs = self.bs();
        let end = off
            .checked_add(data.len() as u64)
            .ok_or_else(|| errno_error("write", errno::EFBIG))?;
        let max_blocks = if inode.has_flag(EXT4_EXTENTS_FL) {
            (1u64 << 32) - 1
        } else {
            let p = bs / 4;
            (12 + p + p * p + p * p * p).min((1 << 32) - 1)
        };
        if end.div_ceil(bs) > max_blocks {
            return Err(errno_error("write", errno::EFBIG));
        }
        let mut m = self.load_map(inode)?;
        if end > inode.i_size {
            self.zero_tail(inode, &m, inode.i_size)?;
        }
        let mut l = off / bs;
        let last = (end - 1) / bs;
        let group_goal = self
            .sb
            .group_first_block((inode.ino - 1) / self.sb.s_inodes_per_group);
        while l <= last {
            let (p, run, fresh) = match m.find(l) {
                Some(e) => {
                    let run = e.end().min(last + 1) - l;
                    let p = e.pblk + (l - e.lblk);
                    if e.unwritten {
                        set_range(
                            &mut m.exts,
                            Ext {
                                lblk: l,
                                len: run,
                                pblk: p,
                                unwritten: false,
                            },
                        );
                    }
                    (p, run, e.unwritten)
                }
                None => {
                    let i = m.exts.partition_point(|e| e.lblk <= l);
                    let hole_end = m.exts.get(i).map_or(u64::MAX, |e| e.lblk);
                    let want = hole_end.min(last + 1) - l;
                    let goal = m.goal_before(l).unwrap_or(group_goal);
                    let (p, got) = self.alloc_blocks(goal, want)?;
                    set_range(
                        &mut m.exts,
                        Ext {
                            lblk: l,
                            len: got,
                            pblk: p,
                            unwritten: false,
                        },
                    );
                    (p, got, true)
                }
            };
            // File bytes [a, b) of this run that the write covers.
            let run_start = l * bs;
            let run_end = (l + run) * bs;
            let a = off.max(run_start);
            let b = end.min(run_end);
            let dev_at = |x: u64| p * bs + (x - run_start);
            if fresh {
                if a > run_start {
                    self.put_data(&vec![0u8; (a - run_start) as usize], dev_at(run_start))?;
                }
                if b < run_end {
                    self.put_data(&vec![0u8; (run_end - b) as usize], dev_at(b))?;
                }
            }
            self.put_data(&data[(a - off) as usize..(b - off) as usize], dev_at(a))?;
            l += run;
        }
        let free = self.store_map(inode, &mut m)?;
        if end > inode.i_size {
            inode.i_size = end;
            self.note_file_size(end);
        }
        self.set_i_blocks(inode, &m);
        let now = Self::now();
        inode.i_mtime = now;
        inode.i_ctime = now;
        self.store_inode(inode)?;
        for b in free {
            self.free_blocks(b, 1)?;
        }
        Ok(())
    }

    /// Moves the data of an inline-data regular file into blocks (the kernel's
    /// ext4_convert_inline_data): afterwards the file is an ordinary extent (or block-mapped)
    /// file with the same bytes. The new block is written before the inode that maps it; the
    /// inode is stored once, with `system.data` gone and the flag cleared.
    fn uninline(&mut self, inode: &mut Inode) -> Result<()> {
        if !inode.has_flag(EXT4_INLINE_DATA_FL) {
            return Ok(());
        }
        if inode.file_type() != inode::S_IFREG {
            return Err(Error::unsupported(format!(
                "inode {} keeps its data inline; vdisk converts only regular files",
                inode.ino
            )));
        }
        let mut data = self.inline_data(inode)?;
        data.truncate(inode.i_size.min(data.len() as u64) as usize);
        self.drop_system_data(inode)?;
        inode.i_flags &= !EXT4_INLINE_DATA_FL;
        if self.sb.has_incompat(incompat::EXTENTS) {
            inode.i_flags |= EXT4_EXTENTS_FL;
            inode.i_block = new_root();
        } else {
            inode.i_block = [0; 60];
        }
        let size = inode.i_size;
        inode.i_size = 0;
        if !data.is_empty() {
            // Stores the inode (mapping, size) after writing the block.
            self.write_data(inode, 0, &data)?;
        }
        inode.i_size = size;
        let m = self.load_map(inode)?;
        self.set_i_blocks(inode, &m);
        self.store_inode(inode)
    }

    /// Zeros the bytes of the block holding offset `size` from there to the block's end (so
    /// growing the file later reads zeros there).
    fn zero_tail(&mut self, inode: &Inode, m: &super::filemap::FileMap, size: u64) -> Result<()> {
        let bs = self.bs();
        if size % bs == 0 {
            return Ok(());
        }
        if let Some(e) = m.find(size / bs) {
            if !e.unwritten {
                let p = e.pblk + (size / bs - e.lblk);
                let _ = inode;
                self.put_data(&vec![0u8; (bs - size % bs) as usize], p * bs + size % bs)?;
            }
        }
        Ok(())
    }

    /// Sets the size of regular file `inode` (stores it; frees blocks past the new end).
    pub(crate) fn truncate(&mut self, inode: &mut Inode, size: u64) -> Result<()> {
        self.uninline(inode)?;
        let bs = self.bs();
        let max = if inode.has_flag(EXT4_EXTENTS_FL) {
            ((1u64 << 32) - 1) * bs
        } else {
            let p = bs / 4;
            (12 + p + p * p + p * p * p).min((1 << 32) - 1) * bs
        };
        if size > max {
            return Err(errno_error("truncate", errno::EFBIG));
        }
        let mut m = self.load_map(inode)?;
        let mut freed = Vec::new();
        if size > inode.i_size {
            self.zero_tail(inode, &m, inode.i_size)?;
            self.note_file_size(size);
        } else {
            freed = punch(&mut m.exts, size.div_ceil(bs), u64::MAX);
            self.zero_tail(inode, &m, size)?;
        }
        let free_meta = self.store_map(inode, &mut m)?;
        inode.i_size = size;
        self.set_i_blocks(inode, &m);
        let now = Self::now();
        inode.i_mtime = now;
        inode.i_ctime = now;
        self.store_inode(inode)?;
        for b in free_meta {
            self.free_blocks(b, 1)?;
        }
        for e in freed {
            self.free_blocks(e.pblk, e.len)?;
        }
        Ok(())
    }

    /// True when the inode's i_block holds a block mapping (not a fast symlink, device or
    /// inline data).
    fn has_block_map(&self, inode: &Inode) -> bool {
        if inode.has_flag(EXT4_INLINE_DATA_FL) {
            return false;
        }
        match inode.file_type() {
            inode::S_IFREG | inode::S_IFDIR => true,
            inode::S_IFLNK => {
                let ea = if inode.i_file_acl != 0 {
                    self.bs() / 512
                } else {
                    0
                };
                inode.sectors(&self.sb).saturating_sub(ea) > 0
            }
            _ => false,
        }
    }

    /// Drops one link of `inode`; at zero frees its blocks, attribute block and the inode, or
    /// with `keep` (the file is still open) puts it on the orphan list instead and returns
    /// it. A kept directory loses its blocks at once (it lists nothing from then on, as the
    /// kernel's rmdir empties it).
    fn drop_link(&mut self, inode: &mut Inode, keep: bool) -> Result<Option<u32>> {
        let is_dir = inode.is_dir();
        if is_dir || inode.i_links_count <= 1 {
            inode.i_links_count = 0;
        } else {
            inode.i_links_count -= 1;
        }
        inode.i_ctime = Self::now();
        if inode.i_links_count > 0 {
            self.store_inode(inode)?;
            return Ok(None);
        }
        if keep {
            if is_dir {
                self.drop_blocks(inode)?;
            }
            self.orphan_add(inode)?;
            return Ok(Some(inode.ino));
        }
        self.free_unlinked(inode)?;
        Ok(None)
    }

    /// Frees every block `inode` maps and sets its size to 0 (stores it first).
    fn drop_blocks(&mut self, inode: &mut Inode) -> Result<()> {
        if !self.has_block_map(inode) {
            return Ok(());
        }
        let mut m = self.load_map(inode)?;
        let freed = std::mem::take(&mut m.exts);
        let free_meta = self.store_map(inode, &mut m)?;
        inode.i_size = 0;
        self.set_i_blocks(inode, &m);
        self.store_inode(inode)?;
        for b in free_meta {
            self.free_blocks(b, 1)?;
        }
        for e in freed {
            self.free_blocks(e.pblk, e.len)?;
        }
        Ok(())
    }

    /// Frees `inode`, which has no links left: its blocks, attribute block and the inode
    /// itself (`i_dtime` set to now, as the kernel leaves a deleted inode).
    pub(crate) fn free_unlinked(&mut self, inode: &mut Inode) -> Result<()> {
        let is_dir = inode.is_dir();
        let mut freed = Vec::new();
        let mut free_meta = Vec::new();
        if self.has_block_map(inode) {
            let mut m = self.load_map(inode)?;
            freed = std::mem::take(&mut m.exts);
            free_meta = self.store_map(inode, &mut m)?;
        }
        inode.i_size = 0;
        inode.i_dtime = Self::now().secs as u32;
        self.xattr_release(inode)?;
        inode.i_blocks = 0;
        self.store_inode(inode)?;
        for b in free_meta {
            self.free_blocks(b, 1)?;
        }
        for e in freed {
            self.free_blocks(e.pblk, e.len)?;
        }
        self.free_inode(inode.ino, is_dir)
    }

    fn dir_is_empty(&self, dir: &Inode) -> Result<bool> {
        let mut empty = true;
        self.dir_walk(dir, 0, &mut |e, _| {
            if e.name != b"." && e.name != b".." {
                empty = false;
                return false;
            }
            true
        })?;
        Ok(empty)
    }

    /// Removes `parent/name`; with `keep`, an inode that loses its last link is kept as an
    /// orphan and returned.
    fn remove(
        &mut self,
        parent: Ino,
        name: &OsStr,
        want_dir: bool,
        keep: bool,
    ) -> Result<Option<u32>> {
        let n = name.as_bytes();
        if n == b"." || n == b".." {
            return Err(errno_error("remove", errno::EINVAL));
        }
        let name = check_name(name)?;
        let mut dir = self.live_dir(parent)?;
        let ino = self
            .lookup_in(&dir, name)?
            .ok_or_else(|| errno_error("remove", errno::ENOENT))?;
        let mut victim = self.live_inode(ino)?;
        if want_dir && !victim.is_dir() {
            return Err(errno_error("rmdir", errno::ENOTDIR));
        }
        if !want_dir && victim.is_dir() {
            return Err(errno_error("unlink", errno::EISDIR));
        }
        if want_dir && !self.dir_is_empty(&victim)? {
            return Err(errno_error("rmdir", errno::ENOTEMPTY));
        }
        self.dir_remove(&dir, name)?;
        let now = Self::now();
        dir.i_mtime = now;
        dir.i_ctime = now;
        if want_dir && dir.i_links_count > 2 {
            dir.i_links_count -= 1;
        }
        self.store_inode(&mut dir)?;
        self.drop_link(&mut victim, keep)
    }

    fn rename_op(
        &mut self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
        keep: bool,
    ) -> Result<Option<u32>> {
        if flags & RENAME_EXCHANGE != 0 || flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
            return Err(errno_error("rename", errno::EINVAL));
        }
        let name = check_name(name)?;
        let newname = check_name(newname)?;
        let odir = self.live_dir(parent)?;
        let ndir = self.live_dir(newparent)?;
        let src = self
            .lookup_in(&odir, name)?
            .ok_or_else(|| errno_error("rename", errno::ENOENT))?;
        let mut sino = self.live_inode(src)?;
        let is_dir = sino.is_dir();
        if parent == newparent && name == newname {
            return Ok(None);
        }
        if is_dir {
            // The new parent must not be the moved directory or inside it.
            let mut cur = ndir.ino;
            for _ in 0..4096 {
                if cur == src {
                    return Err(errno_error("rename", errno::EINVAL));
                }
                if cur == inode::EXT4_ROOT_INO {
                    break;
                }
                let d = self.live_inode(cur)?;
                cur = self
                    .find_entry(&d, b"..")?
                    .ok_or_else(|| Error::corrupt(format!("directory {cur} has no \"..\"")))?;
            }
        }
        let target = self.lookup_in(&ndir, newname)?;
        let ftype = dirent_type(sino.i_mode);
        let mut replaced_dir = false;
        let mut kept = None;
        match target {
            Some(t) if t == src => return Ok(None),
            Some(_) if flags & RENAME_NOREPLACE != 0 => {
                return Err(errno_error("rename", errno::EEXIST))
            }
            Some(t) => {
                let mut tino = self.live_inode(t)?;
                if is_dir && !tino.is_dir() {
                    return Err(errno_error("rename", errno::ENOTDIR));
                }
                if !is_dir && tino.is_dir() {
                    return Err(errno_error("rename", errno::EISDIR));
                }
                if tino.is_dir() && !self.dir_is_empty(&tino)? {
                    return Err(errno_error("rename", errno::ENOTEMPTY));
                }
                replaced_dir = tino.is_dir();
                self.dir_retarget(&ndir, newname, src, ftype)?;
                kept = self.drop_link(&mut tino, keep)?;
            }
            None => {
                let mut nd = self.live_inode(ndir.ino)?;
                self.dir_add(&mut nd, newname, src, ftype)?;
            }
        }
        let od = self.live_inode(odir.ino)?;
        self.dir_remove(&od, name)?;
        if is_dir && parent != newparent {
            self.dir_set_dotdot(&sino, ndir.ino)?;
        }
        let now = Self::now();
        let mut od = self.live_inode(odir.ino)?;
        od.i_mtime = now;
        od.i_ctime = now;
        if is_dir && parent != newparent && od.i_links_count > 2 {
            od.i_links_count -= 1;
        }
        if replaced_dir && parent == newparent && od.i_links_count > 2 {
            od.i_links_count -= 1;
        }
        self.store_inode(&mut od)?;
        if parent != newparent {
            let mut nd = self.live_inode(ndir.ino)?;
            nd.i_mtime = now;
            nd.i_ctime = now;
            if is_dir && !replaced_dir && nd.i_links_count > 1 {
                nd.i_links_count = if nd.i_links_count >= EXT4_LINK_MAX - 1 {
                    1
                } else {
                    nd.i_links_count + 1
                };
            }
            self.store_inode(&mut nd)?;
        }
        let mut s = self.live_inode(src)?;
        s.i_ctime = now;
        self.store_inode(&mut s)?;
        let _ = &mut sino;
        Ok(kept)
    }
}

/// glibc's `major`/`minor`.
fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

impl FileSystem for Ext4Rw {
    fn root_ino(&self) -> Ino {
        Ino::from(inode::EXT4_ROOT_INO)
    }
    /// Through the htree index when the directory has one (the read side walks every
    /// entry): the kernel looks up each name before creating it, and a linear walk made
    /// creating n files in one directory cost n^2/2 entry comparisons. The write side
    /// trusts the index already, for inserts.
    fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Option<Ino>> {
        let fs = self.engine();
        let dir = fs.live_inode(
            u32::try_from(parent)
                .map_err(|_| Error::invalid(format!("inode number {parent} is out of range")))?,
        )?;
        if !dir.is_dir() {
            return Err(errno_error("lookup", errno::ENOTDIR));
        }
        if name.len() > EXT4_NAME_LEN {
            return Err(errno_error("lookup", errno::ENAMETOOLONG));
        }
        Ok(fs.dir_lookup(&dir, name.as_bytes())?.map(Ino::from))
    }
    fn getattr(&self, ino: Ino) -> Result<Attr> {
        self.engine().getattr(ino)
    }
    fn readdir(&self, ino: Ino, offset: u64, f: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        self.engine().readdir(ino, offset, f)
    }
    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        FileSystem::read(&**self.engine(), ino, offset, buf)
    }
    fn readlink(&self, ino: Ino) -> Result<OsString> {
        self.engine().readlink(ino)
    }
    fn listxattr(&self, ino: Ino) -> Result<Vec<OsString>> {
        self.engine().listxattr(ino)
    }
    fn getxattr(&self, ino: Ino, name: &OsStr) -> Result<Option<Vec<u8>>> {
        self.engine().getxattr(ino, name)
    }
    fn statfs(&self) -> Result<StatFs> {
        self.engine().statfs()
    }
    fn writable(&self) -> Option<&dyn FileSystemMut> {
        Some(self)
    }
    /// As ext4's, and files removed while open are kept (on the orphan list) until their
    /// release.
    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::POSIX;
        c.open_unlinked = true;
        c
    }
    fn generation(&self, ino: Ino) -> Result<u64> {
        self.engine().generation(ino)
    }
}

impl FileSystemMut for Ext4Rw {
    fn create(&self, parent: Ino, name: &OsStr, mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        let m = inode::S_IFREG | (mode & 0o7777) as u16;
        let n = self.op(|fs| fs.make_node(parent, name, m, uid, gid, &mut |_, _, _| Ok(())))?;
        self.getattr(Ino::from(n.ino))
    }

    fn mkdir(&self, parent: Ino, name: &OsStr, mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        let m = inode::S_IFDIR | (mode & 0o7777) as u16;
        let n = self.op(|fs| {
            fs.make_node(parent, name, m, uid, gid, &mut |fs, node, dir| {
                node.i_links_count = 2;
                let mut b = fs.new_dir_block(node, dir.ino);
                let mut mp = fs.load_map(node)?;
                let g = (node.ino - 1) / fs.sb.s_inodes_per_group;
                let (p, _) = fs.alloc_blocks(fs.sb.group_first_block(g), 1)?;
                fs.seal_leaf(node, &mut b);
                fs.put_block(p, &b)?;
                set_range(
                    &mut mp.exts,
                    Ext {
                        lblk: 0,
                        len: 1,
                        pblk: p,
                        unwritten: false,
                    },
                );
                fs.store_map(node, &mut mp)?;
                node.i_size = fs.bs();
                fs.set_i_blocks(node, &mp);
                Ok(())
            })
        })?;
        self.getattr(Ino::from(n.ino))
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
        let kind = (mode & 0o170000) as u16;
        let m = kind | (mode & 0o7777) as u16;
        match kind {
            inode::S_IFREG => return self.create(parent, name, mode, uid, gid),
            inode::S_IFCHR | inode::S_IFBLK | inode::S_IFIFO | inode::S_IFSOCK => {}
            _ => return Err(errno_error("mknod", errno::EINVAL)),
        }
        let n = self.op(|fs| {
            fs.make_node(parent, name, m, uid, gid, &mut |_, node, _| {
                if kind == inode::S_IFCHR || kind == inode::S_IFBLK {
                    let (ma, mi) = split_dev(rdev);
                    if ma < 256 && mi < 256 {
                        node.i_block[..4].copy_from_slice(&((ma << 8) | mi).to_le_bytes());
                    } else {
                        let new = (mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12);
                        node.i_block[4..8].copy_from_slice(&new.to_le_bytes());
                    }
                }
                Ok(())
            })
        })?;
        self.getattr(Ino::from(n.ino))
    }

    fn symlink(
        &self,
        parent: Ino,
        name: &OsStr,
        target: &OsStr,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let t = target.as_bytes().to_vec();
        let n = self.op(|fs| {
            if t.is_empty() {
                return Err(errno_error("symlink", errno::ENOENT));
            }
            if t.len() as u64 >= fs.bs().min(4096) {
                return Err(errno_error("symlink", errno::ENAMETOOLONG));
            }
            fs.make_node(
                parent,
                name,
                inode::S_IFLNK | 0o777,
                uid,
                gid,
                &mut |fs, node, _| {
                    if t.len() < I_BLOCK_SIZE {
                        node.i_block = [0; 60];
                        node.i_block[..t.len()].copy_from_slice(&t);
                        node.i_size = t.len() as u64;
                        Ok(())
                    } else {
                        if fs.sb.has_incompat(incompat::EXTENTS) {
                            node.i_flags |= EXT4_EXTENTS_FL;
                            node.i_block = new_root();
                        }
                        // The inode must exist on disk before its data is mapped by it.
                        fs.store_inode(node)?;
                        fs.write_data(node, 0, &t)
                    }
                },
            )
        })?;
        self.getattr(Ino::from(n.ino))
    }

    fn link(&self, ino: Ino, newparent: Ino, newname: &OsStr) -> Result<Attr> {
        self.op(|fs| {
            let name = check_name(newname)?;
            let mut node = fs.live_inode(ino32(ino)?)?;
            if node.is_dir() {
                return Err(errno_error("link", errno::EPERM));
            }
            if node.i_links_count == 0 {
                // An open file whose last name is gone cannot get one back (vfs_link).
                return Err(errno_error("link", errno::ENOENT));
            }
            if node.i_links_count >= EXT4_LINK_MAX {
                return Err(errno_error("link", errno::EMLINK));
            }
            let mut dir = fs.live_dir(newparent)?;
            if fs.lookup_in(&dir, name)?.is_some() {
                return Err(errno_error("link", errno::EEXIST));
            }
            node.i_links_count += 1;
            node.i_ctime = Ext4::now();
            fs.store_inode(&mut node)?;
            fs.dir_add(&mut dir, name, node.ino, dirent_type(node.i_mode))?;
            let now = Ext4::now();
            dir.i_mtime = now;
            dir.i_ctime = now;
            fs.store_inode(&mut dir)
        })?;
        self.getattr(ino)
    }

    fn unlink(&self, parent: Ino, name: &OsStr) -> Result<()> {
        self.op(|fs| fs.remove(parent, name, false, false))
            .map(drop)
    }

    fn rmdir(&self, parent: Ino, name: &OsStr) -> Result<()> {
        self.op(|fs| fs.remove(parent, name, true, false)).map(drop)
    }

    fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        self.op(|fs| fs.rename_op(parent, name, newparent, newname, flags, false))
            .map(drop)
    }

    fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        self.op(|fs| {
            let mut node = fs.live_inode(ino32(ino)?)?;
            if node.is_dir() {
                return Err(errno_error("write", errno::EISDIR));
            }
            if node.file_type() != inode::S_IFREG {
                return Err(errno_error("write", errno::EINVAL));
            }
            fs.write_data(&mut node, offset, data)
        })?;
        Ok(data.len())
    }

    fn setattr(&self, ino: Ino, c: &SetAttr) -> Result<Attr> {
        self.op(|fs| {
            let mut node = fs.live_inode(ino32(ino)?)?;
            if let Some(size) = c.size {
                if node.is_dir() {
                    return Err(errno_error("truncate", errno::EISDIR));
                }
                if node.file_type() != inode::S_IFREG {
                    return Err(errno_error("truncate", errno::EINVAL));
                }
                if size != node.i_size {
                    fs.truncate(&mut node, size)?;
                }
            }
            let now = Ext4::now();
            if let Some(m) = c.mode {
                node.i_mode = (node.i_mode & inode::S_IFMT) | (m & 0o7777) as u16;
            }
            if let Some(u) = c.uid {
                node.i_uid = u;
            }
            if let Some(g) = c.gid {
                node.i_gid = g;
            }
            let t = |s: TimeSet| match s {
                TimeSet::Now => now,
                TimeSet::At(x) => InodeTime {
                    secs: x.secs,
                    nanos: x.nanos,
                },
            };
            if let Some(a) = c.atime {
                node.i_atime = t(a);
            }
            if let Some(m) = c.mtime {
                node.i_mtime = t(m);
            }
            node.i_ctime = now;
            fs.store_inode(&mut node)
        })?;
        self.getattr(ino)
    }

    fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: u32) -> Result<()> {
        self.op(|fs| {
            let mut node = fs.live_inode(ino32(ino)?)?;
            fs.xattr_set(&mut node, name.as_bytes(), Some(value), flags)
        })
    }

    fn removexattr(&self, ino: Ino, name: &OsStr) -> Result<()> {
        self.op(|fs| {
            let mut node = fs.live_inode(ino32(ino)?)?;
            fs.xattr_set(&mut node, name.as_bytes(), None, 0)
        })
    }

    fn flush(&self) -> Result<()> {
        let mut g = self.st.write().unwrap_or_else(|e| e.into_inner());
        if g.dirty {
            let orig = g.orig_state;
            g.fs.sb.s_state = (g.fs.sb.s_state & !EXT4_VALID_FS) | (orig & EXT4_VALID_FS);
            // Every transaction was checkpointed: the journal is empty.
            g.fs.sb.s_feature_incompat &= !incompat::RECOVER;
            g.fs.sb.s_wtime = InodeTime::now().secs as u32;
            g.fs.store_superblock()?;
            g.dirty = false;
        }
        g.fs.dev.flush()
    }

    fn set_label(&self, label: &str) -> Result<()> {
        let b = label.as_bytes();
        if b.len() > 16 {
            return Err(Error::invalid(format!(
                "ext4 label {label:?} is {} bytes; an ext2/3/4 label holds at most 16",
                b.len()
            )));
        }
        if b.contains(&0) {
            return Err(Error::invalid("an ext4 label cannot contain a NUL byte"));
        }
        let mut v = [0u8; 16];
        v[..b.len()].copy_from_slice(b);
        // The primary superblock, journaled with the operation, as every other change is.
        self.op(|fs| {
            fs.sb.s_volume_name = v;
            fs.sb.raw[0x78..0x88].copy_from_slice(&v);
            Ok(())
        })
    }

    fn unlink_kept(&self, parent: Ino, name: &OsStr) -> Result<Option<Ino>> {
        let o = self.op(|fs| fs.remove(parent, name, false, true))?;
        Ok(o.map(Ino::from))
    }

    fn rmdir_kept(&self, parent: Ino, name: &OsStr) -> Result<Option<Ino>> {
        let o = self.op(|fs| fs.remove(parent, name, true, true))?;
        Ok(o.map(Ino::from))
    }

    fn rename_kept(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> Result<Option<Ino>> {
        let o = self.op(|fs| fs.rename_op(parent, name, newparent, newname, flags, true))?;
        Ok(o.map(Ino::from))
    }

    /// Takes the orphan off the on-disk list and frees it with its blocks, in one
    /// transaction.
    fn release_orphan(&self, ino: Ino) -> Result<()> {
        let Ok(n) = u32::try_from(ino) else {
            return Ok(());
        };
        if !self.engine().orphans.contains(&n) {
            return Ok(());
        }
        self.op(|fs| {
            if !fs.orphans.contains(&n) {
                return Ok(());
            }
            let mut i = fs.inode(n)?;
            fs.orphan_del(&mut i)?;
            if i.i_links_count == 0 {
                fs.free_unlinked(&mut i)
            } else {
                fs.store_inode(&mut i)
            }
        })
    }
}
