//! Never make a damaged filesystem worse: what is checked before the first write.
//!
//! The kernel validates a filesystem before it allocates from it (`ext4_check_descriptors` at
//! mount, `ext4_validate_block_bitmap` when a bitmap is first read). vdisk does that and more,
//! once, before the first change it makes (so after any journal replay): a write into a
//! filesystem it cannot show consistent is refused with one line, never guessed.
//!
//! The pass, in order:
//! - the journal inode, when the superblock names one: in use and a regular file (the kernel
//!   refuses to mount with a deleted journal inode, and e2fsck cannot check the filesystem);
//! - every group descriptor: bitmaps and inode table inside the group (the whole filesystem
//!   with flex_bg), not on the superblock, the descriptor table or its reserved blocks, not on
//!   each other; free counts within the group's size; no UNINIT flags or `bg_itable_unused`
//!   without uninit_bg / metadata_csum;
//! - the bad-blocks inode (1): its blocks inside the filesystem and not in any metadata;
//! - every inode table's in-use part: an inode with links whose bitmap bit is clear, an inode
//!   below `s_first_ino` not marked in use, an inode marked in use in the never-used tail of the
//!   table; every in-use inode's blocks (data, extent tree, indirect blocks, xattr block) are
//!   recorded, and a block claimed twice is refused;
//! - every directory's entries: each names an inode the inode bitmap marks in use (an entry
//!   naming a free inode would have the allocator hand that inode out again, and the name
//!   would then point at the new file);
//! - every block bitmap against what the pass recorded (metadata, bad blocks, files): a block
//!   in use that the bitmap calls free is refused; each group's free counts must match its
//!   bitmaps (so the superblock totals rebuilt from them are right).
//!
//! Cost: one read of every bitmap and of the used part of every inode table, plus the extent
//! tree and indirect blocks of every file and the blocks of every directory, and a bitmap of
//! the whole filesystem in memory (blocks / 8 bytes: 320 KiB for 10 GiB; inodes / 8 more). Done once per read-write open, at the first write.
//!
//! The allocator checks again what it hands out ([`Ext4::check_new_blocks`],
//! [`Ext4::check_new_inode`]): never a metadata block, a bad block, a reserved inode or an
//! inode whose on-disk copy is in use, whatever the bitmaps say.

use std::collections::HashSet;

use vdisk_block::{Error, Result};

use super::bytes::le16;
use super::group_descriptor::{GroupDesc, EXT4_BG_BLOCK_UNINIT, EXT4_BG_INODE_UNINIT};
use super::inode::{self, Inode};
use super::superblock::{compat, incompat, SUPERBLOCK_OFFSET};
use super::Ext4;

/// The largest filesystem (in blocks) the pass validates: its in-memory bitmap is 256 MiB.
const MAX_VALIDATED_BLOCKS: u64 = 1 << 31;
/// The most bad blocks accepted on the bad-blocks list.
const MAX_BAD_BLOCKS: usize = 1 << 20;
/// Inode-table blocks read at once while scanning.
const SCAN_CHUNK_BLOCKS: u64 = 64;
/// The bad-blocks inode.
const EXT4_BAD_INO: u32 = 1;
/// The resize inode (reserved GDT blocks).
const EXT4_RESIZE_INO: u32 = 7;

/// What the pass proved, kept for the allocator's own checks.
#[derive(Debug, Default)]
pub(crate) struct Safety {
    /// The pass ran and found the filesystem consistent.
    ready: bool,
    /// Filesystem metadata (superblock and descriptor copies, reserved descriptor blocks,
    /// bitmaps, inode tables) as sorted, non-overlapping (start, len) runs.
    meta: Vec<(u64, u64)>,
    /// The bad-blocks list, sorted.
    bad: Vec<u64>,
}

/// The refusal: one line naming the problem and the repair.
pub(crate) fn refuse(what: String) -> Error {
    Error::corrupt(format!(
        "{what}; refusing to write (run e2fsck -fy on the filesystem first)"
    ))
}

/// What a metadata run is, for error messages.
#[derive(Clone, Copy)]
enum Kind {
    Super(u32),
    Gdt(u32),
    BlockBitmap(u32),
    InodeBitmap(u32),
    InodeTable(u32),
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Super(g) => write!(f, "the superblock copy of group {g}"),
            Kind::Gdt(g) => write!(f, "the group descriptor table (copy) of group {g}"),
            Kind::BlockBitmap(g) => write!(f, "the block bitmap of group {g}"),
            Kind::InodeBitmap(g) => write!(f, "the inode bitmap of group {g}"),
            Kind::InodeTable(g) => write!(f, "the inode table of group {g}"),
        }
    }
}

fn bit(b: &[u8], i: usize) -> bool {
    b[i / 8] & (1 << (i % 8)) != 0
}

/// A bitmap of every block of the filesystem.
struct Used {
    bits: Vec<u64>,
}

impl Used {
    fn get(&self, b: u64) -> bool {
        self.bits[(b / 64) as usize] & (1 << (b % 64)) != 0
    }
    /// Sets bit `b`; false when it was set already.
    fn set(&mut self, b: u64) -> bool {
        let w = &mut self.bits[(b / 64) as usize];
        let m = 1 << (b % 64);
        let was = *w & m != 0;
        *w |= m;
        !was
    }
}

impl Ext4 {
    /// The metadata runs of the filesystem with what each is, unsorted.
    fn metadata_runs(&self, gds: &[GroupDesc]) -> Vec<(u64, u64, Kind)> {
        let sb = &self.sb;
        let bs = u64::from(sb.block_size);
        let mut v = Vec::with_capacity(gds.len() * 5);
        let per = sb.descs_per_block();
        let gdt = u64::from(sb.group_count.div_ceil(per));
        let itb = u64::from(sb.s_inodes_per_group).div_ceil(u64::from(sb.inodes_per_block()));
        for (g, d) in gds.iter().enumerate() {
            let g = g as u32;
            let first = sb.group_first_block(g);
            if sb.group_has_super(g) {
                let sb_blk = if g == 0 {
                    SUPERBLOCK_OFFSET / bs
                } else {
                    first
                };
                v.push((sb_blk, 1, Kind::Super(g)));
                let count = if sb.has_incompat(incompat::META_BG) {
                    u64::from(sb.s_first_meta_bg) + u64::from(sb.s_reserved_gdt_blocks)
                } else {
                    gdt + u64::from(sb.s_reserved_gdt_blocks)
                };
                if count > 0 {
                    v.push((sb_blk + 1, count, Kind::Gdt(g)));
                }
            }
            if sb.has_incompat(incompat::META_BG) {
                let meta = g / per;
                let idx = g % per;
                if meta >= sb.s_first_meta_bg && (idx == 0 || idx == 1 || idx == per - 1) {
                    let has = u64::from(sb.group_has_super(g));
                    v.push((first + has, 1, Kind::Gdt(g)));
                }
            }
            v.push((d.bg_block_bitmap, 1, Kind::BlockBitmap(g)));
            v.push((d.bg_inode_bitmap, 1, Kind::InodeBitmap(g)));
            v.push((d.bg_inode_table, itb, Kind::InodeTable(g)));
        }
        v
    }

    /// `ext4_check_descriptors`, and the metadata runs sorted and checked for overlaps.
    fn check_descriptors(&self, gds: &[GroupDesc]) -> Result<Vec<(u64, u64, Kind)>> {
        let sb = &self.sb;
        let fdb = u64::from(sb.s_first_data_block);
        let ipg = sb.s_inodes_per_group;
        let itb = u64::from(ipg).div_ceil(u64::from(sb.inodes_per_block()));
        let flex = sb.has_incompat(incompat::FLEX_BG);
        for (g, d) in gds.iter().enumerate() {
            let g = g as u32;
            let n = sb.blocks_in_group(g);
            let (lo, hi) = if flex {
                (fdb, sb.s_blocks_count)
            } else {
                let f = sb.group_first_block(g);
                (f, f + n)
            };
            let inside = |start: u64, len: u64| {
                start >= lo && start.checked_add(len).is_some_and(|e| e <= hi)
            };
            for (start, len, k) in [
                (d.bg_block_bitmap, 1, Kind::BlockBitmap(g)),
                (d.bg_inode_bitmap, 1, Kind::InodeBitmap(g)),
                (d.bg_inode_table, itb, Kind::InodeTable(g)),
            ] {
                if !inside(start, len) {
                    return Err(refuse(format!(
                        "{k} at block {start} lies outside blocks {lo}..{hi} where it belongs"
                    )));
                }
            }
            if u64::from(d.bg_free_blocks_count) > n {
                return Err(refuse(format!(
                    "group {g} counts {} free blocks but has only {n}",
                    d.bg_free_blocks_count
                )));
            }
            if d.bg_free_inodes_count > ipg || d.bg_itable_unused > ipg {
                return Err(refuse(format!(
                    "group {g} counts {} free and {} unused inodes but has only {ipg}",
                    d.bg_free_inodes_count, d.bg_itable_unused
                )));
            }
            if !sb.has_group_csum()
                && (d.bg_flags & (EXT4_BG_BLOCK_UNINIT | EXT4_BG_INODE_UNINIT) != 0
                    || d.bg_itable_unused != 0)
            {
                return Err(refuse(format!(
                    "group {g} is marked uninitialized (bg_flags {:#x}, bg_itable_unused {}) without the uninit_bg or metadata_csum feature",
                    d.bg_flags, d.bg_itable_unused
                )));
            }
        }
        let mut runs = self.metadata_runs(gds);
        runs.sort_by_key(|r| r.0);
        for w in runs.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            if a.0 + a.1 > b.0 {
                return Err(refuse(format!(
                    "{} (block {}) overlaps {} (block {})",
                    b.2, b.0, a.2, a.0
                )));
            }
        }
        if let Some(r) = runs.last() {
            if r.0 + r.1 > sb.s_blocks_count {
                return Err(refuse(format!(
                    "{} at block {} runs past the end of the filesystem",
                    r.2, r.0
                )));
            }
        }
        Ok(runs)
    }

    /// Validates the whole filesystem for writing (see the module's text). Runs once; the
    /// caller keeps the verdict.
    pub(crate) fn validate_for_write(&mut self) -> Result<()> {
        let sb = &self.sb;
        if sb.s_blocks_count > MAX_VALIDATED_BLOCKS {
            return Err(Error::unsupported(format!(
                "the filesystem has {} blocks, more than vdisk validates before writing ({MAX_VALIDATED_BLOCKS})",
                sb.s_blocks_count
            )));
        }
        if sb.s_first_ino < 11 || sb.s_first_ino > sb.s_inodes_count {
            return Err(refuse(format!(
                "the superblock's first non-reserved inode {} is out of range",
                sb.s_first_ino
            )));
        }
        if sb.has_compat(compat::HAS_JOURNAL) && sb.s_journal_inum != 0 {
            let n = sb.s_journal_inum;
            let j = self
                .inode(n)
                .map_err(|e| refuse(format!("the journal inode {n} cannot be read ({e})")))?;
            if j.i_links_count == 0 || j.file_type() != inode::S_IFREG {
                return Err(refuse(format!(
                    "the journal inode {n} is not in use (mode {:#o}, {} links)",
                    j.i_mode, j.i_links_count
                )));
            }
        }
        let gds = (0..sb.group_count)
            .map(|g| self.group_desc(g))
            .collect::<Result<Vec<_>>>()?;
        let runs = self.check_descriptors(&gds)?;
        let mut used = Used {
            bits: vec![0u64; self.sb.s_blocks_count.div_ceil(64) as usize],
        };
        // Blocks before s_first_data_block (block 0 with 1 KiB blocks) are never allocatable.
        for b in 0..u64::from(self.sb.s_first_data_block) {
            used.set(b);
        }
        for &(s, l, _) in &runs {
            for b in s..s + l {
                used.set(b);
            }
        }
        let bad = self.bad_blocks(&runs, &mut used)?;
        let mut xattr_blocks = HashSet::new();
        let mut inodes = Used {
            bits: vec![0u64; u64::from(self.sb.s_inodes_count).div_ceil(64) as usize],
        };
        let mut dirs = Vec::new();
        self.scan_inodes(&gds, &mut used, &mut xattr_blocks, &mut inodes, &mut dirs)?;
        self.check_dir_entries(&inodes, &dirs)?;
        self.check_block_bitmaps(&gds, &runs, &used)?;
        self.safety = Safety {
            ready: true,
            meta: runs.iter().map(|r| (r.0, r.1)).collect(),
            bad,
        };
        Ok(())
    }

    /// The bad-blocks inode's list, checked and recorded in `used`.
    fn bad_blocks(&self, runs: &[(u64, u64, Kind)], used: &mut Used) -> Result<Vec<u64>> {
        let ino = EXT4_BAD_INO;
        let i = self.inode(ino)?;
        if i.i_blocks == 0 && i.i_block.iter().all(|&b| b == 0) {
            return Ok(Vec::new());
        }
        let m = self
            .load_map(&i)
            .map_err(|e| refuse(format!("the bad-blocks inode cannot be read ({e})")))?;
        let mut bad = Vec::new();
        for e in &m.exts {
            for b in e.pblk..e.pblk.saturating_add(e.len) {
                if bad.len() >= MAX_BAD_BLOCKS {
                    return Err(refuse("the bad-blocks list is too long".into()));
                }
                bad.push(b);
            }
        }
        bad.sort_unstable();
        bad.dedup();
        for &b in bad.iter().chain(m.meta_list().iter()) {
            if b < u64::from(self.sb.s_first_data_block) || b >= self.sb.s_blocks_count {
                return Err(refuse(format!("bad block {b} lies outside the filesystem")));
            }
            if let Some(r) = runs.iter().find(|r| b >= r.0 && b < r.0 + r.1) {
                return Err(refuse(format!("bad block {b} lies in {}", r.2)));
            }
            used.set(b);
        }
        Ok(bad)
    }

    /// Scans every group's inode bitmap and the used part of its inode table; records in
    /// `inodes` every inode (bit ino - 1) the bitmaps mark in use, and in `dirs` every
    /// directory among them.
    fn scan_inodes(
        &self,
        gds: &[GroupDesc],
        used: &mut Used,
        xattr_blocks: &mut HashSet<u64>,
        inodes: &mut Used,
        dirs: &mut Vec<u32>,
    ) -> Result<()> {
        let sb = &self.sb;
        let bs = u64::from(sb.block_size);
        let ipg = sb.s_inodes_per_group;
        let isz = u64::from(sb.s_inode_size);
        let csum = sb.has_group_csum();
        for d in gds {
            let g = d.group;
            let uninit = csum && d.bg_flags & EXT4_BG_INODE_UNINIT != 0;
            if uninit {
                if d.bg_free_inodes_count != ipg || g == 0 {
                    return Err(refuse(format!(
                        "group {g}'s inode table is marked uninitialized but {} of its inodes are counted in use",
                        ipg - d.bg_free_inodes_count
                    )));
                }
                continue;
            }
            let bm = self.block(d.bg_inode_bitmap, &|| format!("inode bitmap of group {g}"))?;
            let free = (0..ipg as usize).filter(|&i| !bit(&bm, i)).count() as u32;
            if free != d.bg_free_inodes_count {
                return Err(refuse(format!(
                    "group {g} counts {} free inodes but its inode bitmap has {free}",
                    d.bg_free_inodes_count
                )));
            }
            let used_end = if csum { ipg - d.bg_itable_unused } else { ipg };
            if let Some(i) = (used_end..ipg).find(|&i| bit(&bm, i as usize)) {
                return Err(refuse(format!(
                    "inode {} is marked in use but lies in group {g}'s never-used inode area",
                    g * ipg + i + 1
                )));
            }
            // Read the table's used part in chunks, bypassing the cache.
            let total = u64::from(used_end) * isz;
            let mut off = 0u64;
            let mut buf = Vec::new();
            while off < total {
                let len = (SCAN_CHUNK_BLOCKS * bs).min(total - off);
                buf.resize(len as usize, 0);
                self.read_bytes(&mut buf, d.bg_inode_table * bs + off)?;
                for k in 0..(len / isz) {
                    let idx = ((off / isz) + k) as u32;
                    let ino = g * ipg + idx + 1;
                    let raw = &buf[(k * isz) as usize..((k + 1) * isz) as usize];
                    let marked = bit(&bm, idx as usize);
                    let links = le16(raw, 0x1A);
                    let mode = le16(raw, 0);
                    if ino < sb.s_first_ino && !marked {
                        return Err(refuse(format!(
                            "reserved inode {ino} is not marked in use in the inode bitmap"
                        )));
                    }
                    if marked {
                        inodes.set(u64::from(ino - 1));
                    } else {
                        if links != 0 && mode != 0 {
                            return Err(refuse(format!(
                                "inode {ino} has {links} links but the inode bitmap of group {g} says it is free"
                            )));
                        }
                        continue;
                    }
                    if mode == 0 || ino == EXT4_BAD_INO {
                        continue;
                    }
                    let i = Inode::parse(sb, ino, raw, d.bg_inode_table * bs + off + k * isz)
                        .map_err(|e| refuse(format!("inode {ino} cannot be read ({e})")))?;
                    self.record_inode_blocks(&i, used, xattr_blocks)?;
                    if i.is_dir() && links != 0 {
                        dirs.push(ino);
                    }
                }
                off += len;
            }
        }
        Ok(())
    }

    /// Records the blocks inode `i` owns; a block claimed twice is refused.
    fn record_inode_blocks(
        &self,
        i: &Inode,
        used: &mut Used,
        xattr_blocks: &mut HashSet<u64>,
    ) -> Result<()> {
        let ino = i.ino;
        let nblocks = self.sb.s_blocks_count;
        let fdb = u64::from(self.sb.s_first_data_block);
        if i.i_file_acl != 0 {
            let b = i.i_file_acl;
            if b < fdb || b >= nblocks {
                return Err(refuse(format!(
                    "inode {ino}'s xattr block {b} lies outside the filesystem"
                )));
            }
            // xattr blocks are shared by reference count: claimed once, by whoever is first.
            if !xattr_blocks.contains(&b) {
                if !used.set(b) {
                    return Err(refuse(format!(
                        "inode {ino}'s xattr block {b} is also used by other metadata or another inode"
                    )));
                }
                xattr_blocks.insert(b);
            }
        }
        let ft = i.file_type();
        let has_map = match ft {
            inode::S_IFREG | inode::S_IFDIR => true,
            inode::S_IFLNK => {
                let ea = if i.i_file_acl != 0 {
                    u64::from(self.sb.block_size / 512)
                } else {
                    0
                };
                i.sectors(&self.sb).saturating_sub(ea) != 0
            }
            _ => false,
        };
        if !has_map || i.has_flag(inode::EXT4_INLINE_DATA_FL) {
            return Ok(());
        }
        if ino == EXT4_RESIZE_INO {
            // Its double-indirect block; the blocks it points at are the reserved GDT blocks.
            let dind = u64::from(u32::from_le_bytes(
                i.i_block[52..56].try_into().unwrap_or([0; 4]),
            ));
            if dind != 0 && (dind < fdb || dind >= nblocks || !used.set(dind)) {
                return Err(refuse(format!(
                    "the resize inode's block {dind} is out of range or used twice"
                )));
            }
            return Ok(());
        }
        let m = self
            .load_map(i)
            .map_err(|e| refuse(format!("inode {ino}'s block map cannot be read ({e})")))?;
        let claim = |b: u64, used: &mut Used| -> Result<()> {
            if b < fdb || b >= nblocks {
                return Err(refuse(format!(
                    "inode {ino} maps block {b}, outside the filesystem"
                )));
            }
            if !used.set(b) {
                return Err(refuse(format!(
                    "block {b} of inode {ino} is also used by other metadata or another inode"
                )));
            }
            Ok(())
        };
        for b in m.meta_list() {
            claim(b, used)?;
        }
        for e in &m.exts {
            let end = e.pblk.checked_add(e.len).filter(|&x| x <= nblocks);
            if end.is_none() {
                return Err(refuse(format!(
                    "inode {ino} maps blocks {}+{} past the end of the filesystem",
                    e.pblk, e.len
                )));
            }
            for b in e.pblk..e.pblk + e.len {
                claim(b, used)?;
            }
        }
        Ok(())
    }

    /// Every entry of every directory in `dirs` names an inode `inodes` marks in use.
    fn check_dir_entries(&self, inodes: &Used, dirs: &[u32]) -> Result<()> {
        let count = self.sb.s_inodes_count;
        for &d in dirs {
            let dir = self
                .inode(d)
                .map_err(|e| refuse(format!("directory inode {d} cannot be read ({e})")))?;
            if dir.has_flag(inode::EXT4_ENCRYPT_FL) {
                // Names are ciphertext but inode numbers are plain; the walk refuses them.
                continue;
            }
            let mut bad = None;
            self.dir_walk(&dir, 0, &mut |e, _| {
                if e.inode > count || !inodes.get(u64::from(e.inode - 1)) {
                    bad = Some((e.inode, String::from_utf8_lossy(&e.name).into_owned()));
                    return false;
                }
                true
            })
            .map_err(|e| refuse(format!("directory inode {d} cannot be read ({e})")))?;
            if let Some((ino, name)) = bad {
                return Err(refuse(format!(
                    "entry '{name}' of directory inode {d} names inode {ino}, which the inode bitmap says is free"
                )));
            }
        }
        Ok(())
    }

    /// Every block bitmap against what the scan recorded; free counts against the bitmaps.
    fn check_block_bitmaps(
        &self,
        gds: &[GroupDesc],
        runs: &[(u64, u64, Kind)],
        used: &Used,
    ) -> Result<()> {
        let sb = &self.sb;
        let csum = sb.has_group_csum();
        for d in gds {
            let g = d.group;
            let first = sb.group_first_block(g);
            let n = sb.blocks_in_group(g);
            let uninit = csum && d.bg_flags & EXT4_BG_BLOCK_UNINIT != 0;
            let on_disk: Vec<u8> = if uninit {
                // As ext4_init_block_bitmap builds it: the metadata lying in this group.
                let mut bm = vec![0u8; sb.block_size as usize];
                for &(s, l, _) in runs {
                    for b in s.max(first)..(s + l).min(first + n) {
                        let i = (b - first) as usize;
                        bm[i / 8] |= 1 << (i % 8);
                    }
                }
                bm
            } else {
                self.block(d.bg_block_bitmap, &|| format!("block bitmap of group {g}"))?
                    .to_vec()
            };
            let mut free = 0u64;
            for i in 0..n as usize {
                let b = first + i as u64;
                let marked = bit(&on_disk, i);
                if !marked {
                    free += 1;
                    if used.get(b) {
                        let what = runs
                            .iter()
                            .find(|r| b >= r.0 && b < r.0 + r.1)
                            .map(|r| r.2.to_string())
                            .unwrap_or_else(|| "a file, a bad block or an xattr".into());
                        return Err(refuse(format!(
                            "block {b} belongs to {what} but the block bitmap of group {g}{} says it is free",
                            if uninit { " (uninitialized)" } else { "" }
                        )));
                    }
                }
            }
            if free != u64::from(d.bg_free_blocks_count) {
                return Err(refuse(format!(
                    "group {g} counts {} free blocks but its block bitmap has {free}",
                    d.bg_free_blocks_count
                )));
            }
        }
        Ok(())
    }

    /// The allocator's own check of blocks `start..start+len` it is about to hand out:
    /// never filesystem metadata or a bad block.
    pub(crate) fn check_new_blocks(&self, start: u64, len: u64) -> Result<()> {
        let s = &self.safety;
        if !s.ready {
            return Ok(());
        }
        let end = start.saturating_add(len);
        if start < u64::from(self.sb.s_first_data_block) || end > self.sb.s_blocks_count {
            return Err(refuse(format!(
                "the allocator picked blocks {start}+{len}, outside the filesystem's data"
            )));
        }
        let k = s.meta.partition_point(|r| r.0 + r.1 <= start);
        if s.meta.get(k).is_some_and(|r| r.0 < end) {
            return Err(refuse(format!(
                "the block bitmap offers blocks {start}+{len}, which hold filesystem metadata"
            )));
        }
        let k = s.bad.partition_point(|&b| b < start);
        if s.bad.get(k).is_some_and(|&b| b < end) {
            return Err(refuse(format!(
                "the block bitmap offers blocks {start}+{len}, which include a bad block"
            )));
        }
        Ok(())
    }

    /// The allocator's own check of inode `ino` it is about to hand out from group
    /// descriptor `gd` (as it was before this allocation): never a reserved inode, one in a
    /// bad block, or one whose on-disk copy is in use.
    pub(crate) fn check_new_inode(&self, ino: u32, gd: &GroupDesc) -> Result<()> {
        if ino < self.sb.s_first_ino {
            return Err(refuse(format!(
                "the inode bitmap offers reserved inode {ino}"
            )));
        }
        if !self.safety.ready {
            return Ok(());
        }
        let sb = &self.sb;
        let ipg = sb.s_inodes_per_group;
        let idx = (ino - 1) % ipg;
        let csum = sb.has_group_csum();
        if csum && gd.bg_flags & EXT4_BG_INODE_UNINIT != 0 {
            return Ok(());
        }
        let off = self.inode_offset(ino)?;
        let bs = u64::from(sb.block_size);
        if self.safety.bad.binary_search(&(off / bs)).is_ok() {
            return Err(refuse(format!(
                "the inode bitmap offers inode {ino}, whose table block is a bad block"
            )));
        }
        // The never-used tail of the table holds no inode, whatever its bytes.
        if csum && idx >= ipg - gd.bg_itable_unused.min(ipg) {
            return Ok(());
        }
        let mut raw = [0u8; 0x1C];
        self.read_bytes(&mut raw, off)?;
        let links = le16(&raw, 0x1A);
        if links != 0 && le16(&raw, 0) != 0 {
            return Err(refuse(format!(
                "the inode bitmap offers inode {ino}, which has {links} links on disk"
            )));
        }
        Ok(())
    }
}
