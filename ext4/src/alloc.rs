//! The write side's lowest layer: storing metadata blocks, inodes, group descriptors and the
//! superblock, and allocating and freeing blocks and inodes in the bitmaps.
//!
//! Every allocation updates, in this order: the bitmap (with its checksum), the group
//! descriptor (free count, flags, bitmap checksums, its own checksum), and the in-memory
//! superblock counts, which [`Ext4::store_superblock`] writes at the end of each operation.
//! Groups still marked BLOCK_UNINIT / INODE_UNINIT get their bitmaps built (and checked against
//! the descriptor's free count) the first time they are used.

use std::sync::Arc;

use vdisk_block::{Error, Result};

use super::group_descriptor::{
    GroupDesc, EXT4_BG_BLOCK_UNINIT, EXT4_BG_INODE_UNINIT, EXT4_BG_INODE_ZEROED,
};
use super::inode::Inode;
use super::superblock::{incompat, ro_compat, SUPERBLOCK_OFFSET};
use super::Ext4;

/// The error an allocation reports when the filesystem is full (`what`: blocks or inodes).
pub(crate) fn enospc(what: &'static str) -> Error {
    vdisk_fs::errno_error(what, vdisk_fs::errno::ENOSPC)
}

fn bit(b: &[u8], i: usize) -> bool {
    b[i / 8] & (1 << (i % 8)) != 0
}

fn set_bit(b: &mut [u8], i: usize, v: bool) {
    if v {
        b[i / 8] |= 1 << (i % 8);
    } else {
        b[i / 8] &= !(1 << (i % 8));
    }
}

impl Ext4 {
    /// Writes metadata block `nr` to the device (or the open journal transaction) and the
    /// cache.
    pub(crate) fn put_block(&self, nr: u64, data: &[u8]) -> Result<()> {
        if nr >= self.sb.s_blocks_count || data.len() != self.sb.block_size as usize {
            return Err(Error::invalid(format!(
                "internal: bad metadata write of block {nr}"
            )));
        }
        let a: Arc<[u8]> = data.to_vec().into();
        if !self.txn_put(nr, &a)? {
            self.dev.write_at(data, nr * self.bs())?;
        }
        self.cache.insert(nr, a);
        Ok(())
    }

    /// Writes file data at device offset `at` (no cache; drops stale cached copies).
    pub(crate) fn put_data(&self, data: &[u8], at: u64) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let bs = self.bs();
        let first = at / bs;
        let last = (at + data.len() as u64 - 1) / bs;
        if last >= self.sb.s_blocks_count {
            return Err(Error::invalid(format!(
                "internal: data write past the filesystem at block {last}"
            )));
        }
        for b in first..=last {
            self.cache.remove(b);
        }
        self.txn_forget(first, last);
        self.dev.write_at(data, at)
    }

    /// Writes inode `inode` (fields serialized, checksum re-sealed) into its slot.
    pub(crate) fn store_inode(&self, inode: &mut Inode) -> Result<()> {
        inode.serialize(&self.sb);
        let ino = inode.ino;
        let off = self.inode_offset(ino)?;
        let bs = self.bs();
        let blk = off / bs;
        let at = (off % bs) as usize;
        let mut b = self
            .block(blk, &|| format!("inode table block of inode {ino}"))?
            .to_vec();
        b[at..at + inode.raw.len()].copy_from_slice(&inode.raw);
        self.put_block(blk, &b)
    }

    /// Writes group descriptor `gd` (serialized, checksum re-sealed) into the primary table.
    pub(crate) fn store_group_desc(&self, gd: &mut GroupDesc) -> Result<()> {
        gd.serialize(&self.sb);
        let g = gd.group;
        let per = self.sb.descs_per_block();
        let blk = self.sb.descriptor_block(g / per);
        let off = ((g % per) * self.sb.desc_size) as usize;
        let mut b = self
            .block(blk, &|| format!("group descriptor {g}"))?
            .to_vec();
        b[off..off + gd.raw.len()].copy_from_slice(&gd.raw);
        self.put_block(blk, &b)
    }

    /// Writes the in-memory superblock to the primary copy (the kernel's habit: backups are
    /// left to e2fsck and resize, and only the primary's counts matter).
    pub(crate) fn store_superblock(&mut self) -> Result<()> {
        self.sb.serialize();
        let bs = self.bs();
        let blk = SUPERBLOCK_OFFSET / bs;
        let at = (SUPERBLOCK_OFFSET % bs) as usize;
        let mut b = self.block(blk, &|| "superblock".into())?.to_vec();
        b[at..at + self.sb.raw.len()].copy_from_slice(&self.sb.raw[..]);
        self.put_block(blk, &b)
    }

    /// The metadata blocks inside group `g` that an uninitialized block bitmap implies in use:
    /// superblock and descriptor copies, reserved GDT blocks, and every group's bitmaps and
    /// inode table that lie in this group (flex_bg packs them into the flex group's first).
    fn uninit_block_bitmap(&self, g: u32) -> Result<Vec<u8>> {
        let sb = &self.sb;
        let bs = self.bs() as usize;
        let first = sb.group_first_block(g);
        let n = sb.blocks_in_group(g);
        let mut bm = vec![0u8; bs];
        let mark = |blk: u64, bm: &mut Vec<u8>| {
            if blk >= first && blk < first + n {
                set_bit(bm, (blk - first) as usize, true);
            }
        };
        if sb.group_has_super(g) {
            // With 1 KiB blocks and first_data_block 0 (bigalloc) the superblock is block 1;
            // otherwise it is the group's first block.
            let sb_blk = if g == 0 {
                SUPERBLOCK_OFFSET / self.bs()
            } else {
                first
            };
            mark(sb_blk, &mut bm);
            if !sb.has_incompat(incompat::META_BG) {
                let gdt = u64::from(sb.group_count.div_ceil(sb.descs_per_block()));
                let count = gdt + u64::from(sb.s_reserved_gdt_blocks);
                for i in 0..count {
                    mark(sb_blk + 1 + i, &mut bm);
                }
            } else {
                let old = u64::from(sb.s_first_meta_bg) + u64::from(sb.s_reserved_gdt_blocks);
                for i in 0..old {
                    mark(sb_blk + 1 + i, &mut bm);
                }
            }
        }
        if sb.has_incompat(incompat::META_BG) {
            let per = sb.descs_per_block();
            let meta = g / per;
            let idx = g % per;
            if meta >= sb.s_first_meta_bg && (idx == 0 || idx == 1 || idx == per - 1) {
                let has = u64::from(sb.group_has_super(g));
                mark(first + has, &mut bm);
            }
        }
        let itb = u64::from(sb.s_inodes_per_group).div_ceil(u64::from(sb.inodes_per_block()));
        for h in 0..sb.group_count {
            let d = self.group_desc(h)?;
            mark(d.bg_block_bitmap, &mut bm);
            mark(d.bg_inode_bitmap, &mut bm);
            for i in 0..itb {
                mark(d.bg_inode_table + i, &mut bm);
            }
        }
        let used = (0..n as usize).filter(|&i| bit(&bm, i)).count() as u64;
        let gd = self.group_desc(g)?;
        if used + u64::from(gd.bg_free_blocks_count) != n {
            return Err(Error::unsupported(format!(
                "block group {g} is BLOCK_UNINIT and its free count {} disagrees with the {used} metadata blocks vdisk finds in it; run e2fsck",
                gd.bg_free_blocks_count
            )));
        }
        // Bits past the end of the group (the last group is short) are set, as mke2fs does.
        for i in n as usize..bs * 8 {
            set_bit(&mut bm, i, true);
        }
        Ok(bm)
    }

    /// The group's block bitmap, initializing an uninitialized one (and writing it).
    fn block_bitmap(&self, gd: &mut GroupDesc) -> Result<Vec<u8>> {
        let g = gd.group;
        if self.sb.has_group_csum() && gd.bg_flags & EXT4_BG_BLOCK_UNINIT != 0 {
            let bm = self.uninit_block_bitmap(g)?;
            self.put_block(gd.bg_block_bitmap, &bm)?;
            gd.bg_flags &= !EXT4_BG_BLOCK_UNINIT;
            gd.set_block_bitmap_csum(&self.sb, &bm);
            self.store_group_desc(gd)?;
            return Ok(bm);
        }
        Ok(self
            .block(gd.bg_block_bitmap, &|| format!("block bitmap of group {g}"))?
            .to_vec())
    }

    /// Allocates up to `want` contiguous blocks, preferring `goal` and what follows it.
    /// Returns (first block, count >= 1).
    pub(crate) fn alloc_blocks(&mut self, goal: u64, want: u64) -> Result<(u64, u64)> {
        if self.sb.s_free_blocks_count == 0 {
            return Err(enospc("allocate blocks"));
        }
        let want = want.clamp(1, u64::from(self.sb.s_blocks_per_group));
        let fdb = u64::from(self.sb.s_first_data_block);
        let goal = goal.clamp(fdb, self.sb.s_blocks_count - 1);
        let bpg = u64::from(self.sb.s_blocks_per_group);
        let g0 = ((goal - fdb) / bpg) as u32;
        let groups = self.sb.group_count;
        // Two passes: first a run of the whole length, then any free block.
        for pass in 0..2 {
            for k in 0..=groups {
                let g = (g0 + k) % groups;
                let mut gd = self.group_desc(g)?;
                if gd.bg_free_blocks_count == 0 {
                    continue;
                }
                let first = self.sb.group_first_block(g);
                let n = self.sb.blocks_in_group(g) as usize;
                let start_bit = if k == 0 && pass == 0 {
                    (goal - first) as usize
                } else {
                    0
                };
                let mut bm = self.block_bitmap(&mut gd)?;
                let need = if pass == 0 { want as usize } else { 1 };
                let mut found = None;
                let mut i = start_bit;
                while i < n {
                    if bit(&bm, i) {
                        i += 1;
                        continue;
                    }
                    let mut j = i;
                    while j < n && j - i < want as usize && !bit(&bm, j) {
                        j += 1;
                    }
                    if j - i >= need {
                        found = Some((i, j - i));
                        break;
                    }
                    i = j;
                }
                if found.is_none() && start_bit > 0 {
                    // Wrap inside the goal's group.
                    let mut i = 0;
                    while i < start_bit {
                        if !bit(&bm, i) {
                            let mut j = i;
                            while j < n && j - i < want as usize && !bit(&bm, j) {
                                j += 1;
                            }
                            if j - i >= need {
                                found = Some((i, j - i));
                                break;
                            }
                            i = j;
                        } else {
                            i += 1;
                        }
                    }
                }
                let Some((i, len)) = found else { continue };
                self.check_new_blocks(first + i as u64, len as u64)?;
                for b in i..i + len {
                    set_bit(&mut bm, b, true);
                }
                self.put_block(gd.bg_block_bitmap, &bm)?;
                gd.bg_free_blocks_count -= len as u32;
                gd.set_block_bitmap_csum(&self.sb, &bm);
                self.store_group_desc(&mut gd)?;
                self.sb.s_free_blocks_count -= len as u64;
                return Ok((first + i as u64, len as u64));
            }
        }
        Err(enospc("allocate blocks"))
    }

    /// Frees `len` blocks from `start` (they must be in use).
    pub(crate) fn free_blocks(&mut self, start: u64, len: u64) -> Result<()> {
        let fdb = u64::from(self.sb.s_first_data_block);
        let bpg = u64::from(self.sb.s_blocks_per_group);
        let end = start
            .checked_add(len)
            .filter(|&e| e <= self.sb.s_blocks_count && start >= fdb)
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "freeing blocks {start}+{len} outside the filesystem"
                ))
            })?;
        let mut b = start;
        while b < end {
            let g = ((b - fdb) / bpg) as u32;
            let first = self.sb.group_first_block(g);
            let stop = end.min(first + bpg);
            let mut gd = self.group_desc(g)?;
            let mut bm = self.block_bitmap(&mut gd)?;
            for x in b..stop {
                let i = (x - first) as usize;
                if !bit(&bm, i) {
                    return Err(Error::corrupt(format!(
                        "freeing block {x}, which the bitmap of group {g} says is free"
                    )));
                }
                set_bit(&mut bm, i, false);
                self.cache.remove(x);
            }
            self.put_block(gd.bg_block_bitmap, &bm)?;
            gd.bg_free_blocks_count += (stop - b) as u32;
            gd.set_block_bitmap_csum(&self.sb, &bm);
            self.store_group_desc(&mut gd)?;
            self.sb.s_free_blocks_count += stop - b;
            b = stop;
        }
        Ok(())
    }

    /// Allocates an inode: directories in the group with the most free inodes among those at
    /// least as free as average (spreading trees, as Orlov roughly does), other files in their
    /// parent's group or the next with room. Returns the inode number.
    pub(crate) fn alloc_inode(&mut self, parent: u32, is_dir: bool) -> Result<u32> {
        if self.sb.s_free_inodes_count == 0 {
            return Err(enospc("allocate inode"));
        }
        let groups = self.sb.group_count;
        let ipg = self.sb.s_inodes_per_group;
        let pg = (parent.saturating_sub(1) / ipg).min(groups - 1);
        let mut order: Vec<u32> = (0..groups).map(|k| (pg + k) % groups).collect();
        if is_dir && groups > 1 {
            let avg = self.sb.s_free_inodes_count / groups;
            let mut best = None;
            for g in 0..groups {
                let gd = self.group_desc(g)?;
                if gd.bg_free_inodes_count >= avg.max(1)
                    && best.is_none_or(|(_, f)| gd.bg_free_blocks_count > f)
                {
                    best = Some((g, gd.bg_free_blocks_count));
                }
            }
            if let Some((g, _)) = best {
                order.retain(|&x| x != g);
                order.insert(0, g);
            }
        }
        for g in order {
            let mut gd = self.group_desc(g)?;
            if gd.bg_free_inodes_count == 0 {
                continue;
            }
            let bs = self.bs() as usize;
            let csum = self.sb.has_group_csum();
            let mut bm = if csum && gd.bg_flags & EXT4_BG_INODE_UNINIT != 0 {
                let mut bm = vec![0u8; bs];
                for i in ipg as usize..bs * 8 {
                    set_bit(&mut bm, i, true);
                }
                gd.bg_flags &= !EXT4_BG_INODE_UNINIT;
                bm
            } else {
                self.block(gd.bg_inode_bitmap, &|| format!("inode bitmap of group {g}"))?
                    .to_vec()
            };
            let first_ok = if g == 0 { self.sb.s_first_ino } else { 1 };
            let Some(i) =
                (0..ipg as usize).find(|&i| !bit(&bm, i) && (g * ipg + i as u32 + 1) >= first_ok)
            else {
                continue;
            };
            self.check_new_inode(g * ipg + i as u32 + 1, &gd)?;
            // The table beyond (ipg - itable_unused) was never used: zero the slots we now
            // expose when the table was not zeroed at mkfs time.
            if csum {
                let used_end = ipg - gd.bg_itable_unused.min(ipg);
                if i as u32 >= used_end {
                    if gd.bg_flags & EXT4_BG_INODE_ZEROED == 0 {
                        for j in used_end..=i as u32 {
                            self.zero_inode_slot(g * ipg + j + 1)?;
                        }
                    }
                    gd.bg_itable_unused = ipg - i as u32 - 1;
                }
            }
            set_bit(&mut bm, i, true);
            self.put_block(gd.bg_inode_bitmap, &bm)?;
            gd.bg_free_inodes_count -= 1;
            if is_dir {
                gd.bg_used_dirs_count += 1;
            }
            gd.set_inode_bitmap_csum(&self.sb, &bm);
            self.store_group_desc(&mut gd)?;
            self.sb.s_free_inodes_count -= 1;
            return Ok(g * ipg + i as u32 + 1);
        }
        Err(enospc("allocate inode"))
    }

    fn zero_inode_slot(&self, ino: u32) -> Result<()> {
        let off = self.inode_offset(ino)?;
        let bs = self.bs();
        let blk = off / bs;
        let at = (off % bs) as usize;
        let mut b = self
            .block(blk, &|| format!("inode table block of inode {ino}"))?
            .to_vec();
        b[at..at + usize::from(self.sb.s_inode_size)].fill(0);
        self.put_block(blk, &b)
    }

    /// Frees inode `ino` in its bitmap and counts.
    pub(crate) fn free_inode(&mut self, ino: u32, is_dir: bool) -> Result<()> {
        let ipg = self.sb.s_inodes_per_group;
        let g = (ino - 1) / ipg;
        let i = ((ino - 1) % ipg) as usize;
        let mut gd = self.group_desc(g)?;
        let mut bm = self
            .block(gd.bg_inode_bitmap, &|| format!("inode bitmap of group {g}"))?
            .to_vec();
        if !bit(&bm, i) {
            return Err(Error::corrupt(format!(
                "freeing inode {ino}, which its bitmap says is free"
            )));
        }
        set_bit(&mut bm, i, false);
        self.put_block(gd.bg_inode_bitmap, &bm)?;
        gd.bg_free_inodes_count += 1;
        if is_dir {
            gd.bg_used_dirs_count = gd.bg_used_dirs_count.saturating_sub(1);
        }
        gd.set_inode_bitmap_csum(&self.sb, &bm);
        self.store_group_desc(&mut gd)?;
        self.sb.s_free_inodes_count += 1;
        Ok(())
    }

    /// Sets RO_COMPAT_LARGE_FILE when a file grows past 2 GiB on a filesystem without it.
    pub(crate) fn note_file_size(&mut self, size: u64) {
        if size >= 1 << 31 && !self.sb.has_ro_compat(ro_compat::LARGE_FILE) {
            self.sb.s_feature_ro_compat |= ro_compat::LARGE_FILE;
        }
    }
}
