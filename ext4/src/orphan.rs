//! The orphan list: inodes whose last link is gone while a file handle still holds them, kept
//! allocated until the last release, as the kernel keeps them.
//!
//! The list lives on disk exactly where the kernel keeps it (ext4_orphan_add and
//! ext4_orphan_del): `s_last_orphan` in the superblock names the first orphan, and each
//! orphan's `i_dtime` names the next (0 ends the list). Both are metadata of the removal's
//! journal transaction, so after a crash the list names every inode that was unlinked but not
//! yet released, and nothing leaks: the next read-write open (before its first write) and the
//! kernel's mount, and e2fsck, free what the list holds (ext4_orphan_cleanup; an orphan with
//! links left is a truncation in flight and is cut to its size instead).
//!
//! In memory, [`Ext4::orphans`](super::Ext4) holds the inodes this session keeps: they are
//! readable and writable by number ([`Ext4::live_inode`](super::Ext4::live_inode) accepts
//! them) though no directory names them.

use std::collections::HashSet;

use vdisk_block::{Error, Result};

use super::inode::Inode;
use super::validate::refuse;
use super::Ext4;

impl Ext4 {
    /// Puts `inode`, whose last link was just removed, at the head of the orphan list
    /// (`i_dtime` = the old head, `s_last_orphan` = it) and stores it. The superblock goes out
    /// with the operation's other changes.
    pub(crate) fn orphan_add(&mut self, inode: &mut Inode) -> Result<()> {
        inode.i_links_count = 0;
        inode.i_dtime = self.sb.s_last_orphan;
        self.sb.s_last_orphan = inode.ino;
        self.store_inode(inode)?;
        self.orphans.insert(inode.ino);
        Ok(())
    }

    /// Takes `inode` off the orphan list: the head moves on, or the orphan before it points
    /// past it. Clears its `i_dtime` (the caller stores it).
    pub(crate) fn orphan_del(&mut self, inode: &mut Inode) -> Result<()> {
        let ino = inode.ino;
        let next = inode.i_dtime;
        if self.sb.s_last_orphan == ino {
            self.sb.s_last_orphan = next;
        } else {
            let mut cur = self.sb.s_last_orphan;
            // The list was checked loop-free and bounded when it was read or built.
            let mut steps = 0u32;
            loop {
                if cur == 0 || steps > self.sb.s_inodes_count {
                    return Err(Error::corrupt(format!(
                        "inode {ino} is kept open but the orphan list does not name it"
                    )));
                }
                let mut c = self.inode(cur)?;
                if c.i_dtime == ino {
                    c.i_dtime = next;
                    self.store_inode(&mut c)?;
                    break;
                }
                cur = c.i_dtime;
                steps += 1;
            }
        }
        inode.i_dtime = 0;
        self.orphans.remove(&ino);
        Ok(())
    }

    /// The orphan list as found on disk, checked as the kernel checks each entry before it
    /// touches it (ext4_orphan_get): a number past the reserved inodes and inside the
    /// filesystem, marked in use in its inode bitmap, with a file type; no entry twice (the
    /// list cannot loop).
    pub(crate) fn orphan_list(&self) -> Result<Vec<u32>> {
        let sb = &self.sb;
        let mut seen = HashSet::new();
        let mut list = Vec::new();
        let mut cur = sb.s_last_orphan;
        while cur != 0 {
            if cur < sb.s_first_ino || cur > sb.s_inodes_count {
                return Err(refuse(format!(
                    "the orphan list names inode {cur}, which is out of range"
                )));
            }
            if !seen.insert(cur) {
                return Err(refuse(format!(
                    "the orphan list loops (inode {cur} is named twice)"
                )));
            }
            let ipg = sb.s_inodes_per_group;
            let g = (cur - 1) / ipg;
            let gd = self.group_desc(g)?;
            let i = self
                .inode(cur)
                .map_err(|e| refuse(format!("orphan inode {cur} cannot be read ({e})")))?;
            let bm = self.block(gd.bg_inode_bitmap, &|| format!("inode bitmap of group {g}"))?;
            let idx = ((cur - 1) % ipg) as usize;
            if bm[idx / 8] & (1 << (idx % 8)) == 0 || i.i_mode == 0 {
                return Err(refuse(format!(
                    "the orphan list names inode {cur}, which is not in use"
                )));
            }
            list.push(cur);
            cur = i.i_dtime;
        }
        Ok(list)
    }

    /// Processes the orphan list a crash (or a handle never released) left behind, as the
    /// kernel does at mount: each orphan without links is freed with its blocks, each with
    /// links left (a truncation in flight) is cut to its size; the list is emptied. Returns
    /// how many were processed. Runs inside one transaction, before the session's first
    /// operation.
    pub(crate) fn orphan_cleanup(&mut self) -> Result<usize> {
        let list = self.orphan_list()?;
        for &ino in &list {
            let mut i = self.inode(ino)?;
            i.i_dtime = 0;
            if i.i_links_count == 0 {
                self.free_unlinked(&mut i)?;
            } else {
                if i.file_type() == super::inode::S_IFREG {
                    let size = i.i_size;
                    self.truncate(&mut i, size)?;
                }
                i.i_dtime = 0;
                self.store_inode(&mut i)?;
            }
        }
        self.sb.s_last_orphan = 0;
        Ok(list.len())
    }
}
