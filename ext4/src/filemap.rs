//! A file's whole block mapping as a sorted list of extents, loaded from and stored back to
//! either an extent tree or an ext2/3 indirect block map.
//!
//! Writes edit the list ([`set_range`], [`punch`]) and [`Ext4::store_map`] rebuilds the
//! on-disk structure: extent trees are packed densely (a root of up to four entries, full
//! leaves, as many index levels as needed, so trees grow, split and gain depth as the list
//! does), reusing the file's old node blocks before allocating new ones; indirect maps keep
//! each pointer block at its position. Blocks are written children first, and blocks the new
//! structure no longer needs are returned for the caller to free only after the inode that
//! stops referencing them is stored.

use std::collections::{BTreeMap, HashSet};

use vdisk_block::{Error, Result};

use super::block_map::EXT4_NDIR_BLOCKS;
use super::bytes::{le16, le32, put};
use super::extent::{self, Expect, Node, EXT4_EXT_MAGIC, EXT4_MAX_EXTENT_DEPTH};
use super::inode::{Inode, EXT4_EXTENTS_FL};
use super::Ext4;
use vdisk_fs::{errno, errno_error};

/// The most extents one file's map may hold in memory (a 4 KiB-block tree of depth 3 holds
/// about 4 x 340^3; far beyond any real file, bounded so a hostile tree cannot exhaust memory).
pub(crate) const MAX_MAP_EXTENTS: usize = 1 << 22;
/// The longest initialized extent.
const MAX_INIT_LEN: u64 = 32768;
/// The longest unwritten extent.
const MAX_UNWRITTEN_LEN: u64 = 32767;
/// Entries in the extent root in `i_block`.
const ROOT_ENTRIES: usize = 4;

/// One run of file blocks mapped to disk blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ext {
    /// First file block.
    pub lblk: u64,
    /// Number of blocks.
    pub len: u64,
    /// First disk block.
    pub pblk: u64,
    /// Allocated but reads as zeros.
    pub unwritten: bool,
}

impl Ext {
    pub fn end(&self) -> u64 {
        self.lblk + self.len
    }
}

/// A file's mapping and the metadata blocks that hold it.
#[derive(Debug, Default)]
pub(crate) struct FileMap {
    /// The extents, sorted, not overlapping.
    pub exts: Vec<Ext>,
    /// Extent tree node blocks.
    tree: Vec<u64>,
    /// Indirect blocks by (tree 1..=3, depth in it, index of the node at that depth).
    ind: BTreeMap<(u8, u8, u64), u64>,
}

impl FileMap {
    /// Metadata blocks (tree nodes or indirect blocks) the mapping uses.
    pub fn meta_blocks(&self) -> u64 {
        (self.tree.len() + self.ind.len()) as u64
    }

    /// The metadata blocks (tree nodes, indirect blocks) themselves.
    pub fn meta_list(&self) -> Vec<u64> {
        self.tree.iter().chain(self.ind.values()).copied().collect()
    }

    /// Data blocks mapped (unwritten included).
    pub fn data_blocks(&self) -> u64 {
        self.exts.iter().map(|e| e.len).sum()
    }

    /// The extent covering file block `l`, if any.
    pub fn find(&self, l: u64) -> Option<Ext> {
        let i = self.exts.partition_point(|e| e.lblk <= l);
        (i > 0).then(|| self.exts[i - 1]).filter(|e| l < e.end())
    }

    /// The disk block just after the mapping of the last file block before `l` (an allocation
    /// goal that keeps files contiguous).
    pub fn goal_before(&self, l: u64) -> Option<u64> {
        let i = self.exts.partition_point(|e| e.lblk < l);
        (i > 0).then(|| {
            let e = self.exts[i - 1];
            e.pblk + (l.min(e.end()) - e.lblk)
        })
    }
}

/// Maps `[new.lblk, new.end())` to `new`, replacing whatever mapped those blocks (the caller
/// frees replaced blocks when they differ).
pub(crate) fn set_range(exts: &mut Vec<Ext>, new: Ext) {
    punch(exts, new.lblk, new.end());
    let i = exts.partition_point(|e| e.lblk < new.lblk);
    exts.insert(i, new);
}

/// Unmaps file blocks `[from, to)`; returns the removed pieces.
pub(crate) fn punch(exts: &mut Vec<Ext>, from: u64, to: u64) -> Vec<Ext> {
    let mut removed = Vec::new();
    if from >= to {
        return removed;
    }
    let mut out = Vec::with_capacity(exts.len() + 1);
    for &e in exts.iter() {
        if e.end() <= from || e.lblk >= to {
            out.push(e);
            continue;
        }
        if e.lblk < from {
            out.push(Ext {
                len: from - e.lblk,
                ..e
            });
        }
        let s = e.lblk.max(from);
        let t = e.end().min(to);
        removed.push(Ext {
            lblk: s,
            len: t - s,
            pblk: e.pblk + (s - e.lblk),
            unwritten: e.unwritten,
        });
        if e.end() > to {
            out.push(Ext {
                lblk: to,
                len: e.end() - to,
                pblk: e.pblk + (to - e.lblk),
                unwritten: e.unwritten,
            });
        }
    }
    *exts = out;
    removed
}

/// Sorts, merges neighbours that continue each other and splits runs longer than an extent
/// can say.
fn normalize(exts: &[Ext]) -> Vec<Ext> {
    let mut v: Vec<Ext> = Vec::with_capacity(exts.len());
    for &e in exts {
        if e.len == 0 {
            continue;
        }
        if let Some(last) = v.last_mut() {
            let max = if e.unwritten {
                MAX_UNWRITTEN_LEN
            } else {
                MAX_INIT_LEN
            };
            if last.end() == e.lblk
                && last.pblk + last.len == e.pblk
                && last.unwritten == e.unwritten
                && last.len + e.len <= max
            {
                last.len += e.len;
                continue;
            }
        }
        v.push(e);
    }
    let mut out = Vec::with_capacity(v.len());
    for mut e in v {
        let max = if e.unwritten {
            MAX_UNWRITTEN_LEN
        } else {
            MAX_INIT_LEN
        };
        while e.len > max {
            out.push(Ext { len: max, ..e });
            e.lblk += max;
            e.pblk += max;
            e.len -= max;
        }
        out.push(e);
    }
    out
}

fn header(b: &mut [u8], entries: usize, max: usize, depth: u16) {
    put(b, 0, EXT4_EXT_MAGIC.to_le_bytes());
    put(b, 2, (entries as u16).to_le_bytes());
    put(b, 4, (max as u16).to_le_bytes());
    put(b, 6, depth.to_le_bytes());
    put(b, 8, [0; 4]);
}

fn put_extent(b: &mut [u8], i: usize, e: &Ext) {
    let o = 12 * (i + 1);
    let len = e.len as u16 + if e.unwritten { 32768 } else { 0 };
    put(b, o, (e.lblk as u32).to_le_bytes());
    put(b, o + 4, len.to_le_bytes());
    put(b, o + 6, ((e.pblk >> 32) as u16).to_le_bytes());
    put(b, o + 8, (e.pblk as u32).to_le_bytes());
}

fn put_index(b: &mut [u8], i: usize, key: u64, child: u64) {
    let o = 12 * (i + 1);
    put(b, o, (key as u32).to_le_bytes());
    put(b, o + 4, (child as u32).to_le_bytes());
    put(b, o + 8, ((child >> 32) as u16).to_le_bytes());
    put(b, o + 10, [0, 0]);
}

impl Ext4 {
    /// Loads the whole mapping of `inode` (extent tree or indirect blocks), validated.
    pub(crate) fn load_map(&self, inode: &Inode) -> Result<FileMap> {
        let mut m = FileMap::default();
        if inode.has_flag(EXT4_EXTENTS_FL) {
            let ino = inode.ino;
            let expect = Expect {
                depth: None,
                min_block: 0,
                end_bound: 1 << 32,
                blocks_count: self.sb.s_blocks_count,
                first_data_block: u64::from(self.sb.s_first_data_block),
            };
            let root = extent::parse_node(&inode.i_block, &expect, 0, &|| {
                format!("inode {ino} extent root")
            })?;
            let seed = self.sb.csum_seed.map(|s| inode.csum_seed(s));
            let mut seen = HashSet::new();
            self.walk_tree(ino, root, &expect, seed, &mut m, &mut seen)?;
        } else {
            self.walk_indirect(inode, &mut m)?;
        }
        Ok(m)
    }

    fn walk_tree(
        &self,
        ino: u32,
        node: Node,
        e: &Expect,
        seed: Option<u32>,
        m: &mut FileMap,
        seen: &mut HashSet<u64>,
    ) -> Result<()> {
        match node {
            Node::Leaf(_, exts) => {
                for x in exts {
                    if m.exts.len() >= MAX_MAP_EXTENTS {
                        return Err(Error::unsupported(format!(
                            "inode {ino} has more than {MAX_MAP_EXTENTS} extents"
                        )));
                    }
                    m.exts.push(Ext {
                        lblk: u64::from(x.ee_block),
                        len: u64::from(x.len),
                        pblk: x.ee_start,
                        unwritten: x.unwritten,
                    });
                }
            }
            Node::Index(h, idx) => {
                for (i, x) in idx.iter().enumerate() {
                    let nr = x.ei_leaf;
                    if !seen.insert(nr) {
                        return Err(Error::corrupt(format!(
                            "inode {ino}: extent block {nr} is referenced twice"
                        )));
                    }
                    let child_e = Expect {
                        depth: Some(h.eh_depth - 1),
                        min_block: if i == 0 { e.min_block } else { x.ei_block },
                        end_bound: idx
                            .get(i + 1)
                            .map_or(e.end_bound, |n| u64::from(n.ei_block)),
                        ..*e
                    };
                    let what = || format!("inode {ino} extent block {nr}");
                    let b = self.block(nr, &what)?;
                    let at = nr * self.bs();
                    if let Some(seed) = seed {
                        extent::verify_checksum(seed, &b, at, &what)?;
                    }
                    let child = extent::parse_node(&b, &child_e, at, &what)?;
                    m.tree.push(nr);
                    self.walk_tree(ino, child, &child_e, seed, m, seen)?;
                }
            }
        }
        Ok(())
    }

    fn walk_indirect(&self, inode: &Inode, m: &mut FileMap) -> Result<()> {
        let ino = inode.ino;
        let ptrs = self.bs() / 4;
        let check = |p: u64| -> Result<u64> {
            if p < u64::from(self.sb.s_first_data_block) || p >= self.sb.s_blocks_count {
                Err(Error::corrupt(format!(
                    "inode {ino}: block pointer {p} lies outside the filesystem"
                )))
            } else {
                Ok(p)
            }
        };
        let push = |m: &mut FileMap, l: u64, p: u64| {
            if let Some(last) = m.exts.last_mut() {
                if last.end() == l && last.pblk + last.len == p && last.len < MAX_INIT_LEN {
                    last.len += 1;
                    return;
                }
            }
            m.exts.push(Ext {
                lblk: l,
                len: 1,
                pblk: p,
                unwritten: false,
            });
        };
        for l in 0..EXT4_NDIR_BLOCKS {
            let p = u64::from(le32(&inode.i_block, 4 * l as usize));
            if p != 0 {
                push(m, l, check(p)?);
            }
        }
        let mut base = EXT4_NDIR_BLOCKS;
        let mut span = ptrs;
        for t in 1..=3u8 {
            let top = u64::from(le32(&inode.i_block, 4 * (11 + usize::from(t))));
            if top != 0 {
                // (block, depth, node index, first file block)
                let mut stack = vec![(check(top)?, 0u8, 0u64, base)];
                while let Some((blk, d, idx, first)) = stack.pop() {
                    if m.ind.insert((t, d, idx), blk).is_some() || m.ind.len() > MAX_MAP_EXTENTS {
                        return Err(Error::corrupt(format!(
                            "inode {ino}: indirect map is malformed"
                        )));
                    }
                    let b = self.block(blk, &|| format!("inode {ino} indirect block {blk}"))?;
                    let child_span = ptrs.pow(u32::from(t - d - 1));
                    // Children pushed in reverse so they pop in file order.
                    for i in (0..ptrs).rev() {
                        let p = u64::from(le32(&b, 4 * i as usize));
                        if p == 0 {
                            continue;
                        }
                        let p = check(p)?;
                        if d + 1 == t {
                            continue;
                        }
                        stack.push((p, d + 1, idx * ptrs + i, first + i * child_span));
                    }
                    if d + 1 == t {
                        for i in 0..ptrs {
                            let p = u64::from(le32(&b, 4 * i as usize));
                            if p != 0 {
                                if m.exts.len() >= MAX_MAP_EXTENTS {
                                    return Err(Error::unsupported(format!(
                                        "inode {ino} maps too many blocks"
                                    )));
                                }
                                push(m, first + i, p);
                            }
                        }
                    }
                }
            }
            base += span;
            span = span.saturating_mul(ptrs);
        }
        Ok(())
    }

    /// Rebuilds the on-disk mapping of `inode` from `m.exts`: writes node or indirect blocks,
    /// sets `i_block`. Returns the metadata blocks no longer used (to free after the inode is
    /// stored). `i_blocks` is left to the caller.
    pub(crate) fn store_map(&mut self, inode: &mut Inode, m: &mut FileMap) -> Result<Vec<u64>> {
        if inode.has_flag(EXT4_EXTENTS_FL) {
            self.store_tree(inode, m)
        } else {
            self.store_indirect(inode, m)
        }
    }

    fn meta_goal(&self, inode: &Inode, m: &FileMap) -> u64 {
        m.exts.first().map_or_else(
            || {
                let g = (inode.ino - 1) / self.sb.s_inodes_per_group;
                self.sb.group_first_block(g)
            },
            |e| e.pblk.saturating_sub(1),
        )
    }

    fn store_tree(&mut self, inode: &mut Inode, m: &mut FileMap) -> Result<Vec<u64>> {
        let exts = normalize(&m.exts);
        if exts.iter().any(|e| e.end() > 1 << 32) {
            return Err(errno_error("write", errno::EFBIG));
        }
        let bs = self.bs() as usize;
        let per = (bs - 12) / 12;
        // Levels bottom-up: each node is (first key, entries).
        let mut old = std::mem::take(&mut m.tree).into_iter();
        let mut new_tree = Vec::new();
        let mut root = [0u8; 60];
        if exts.len() <= ROOT_ENTRIES {
            header(&mut root, exts.len(), ROOT_ENTRIES, 0);
            for (i, e) in exts.iter().enumerate() {
                put_extent(&mut root, i, e);
            }
        } else {
            let seed = self.sb.csum_seed.map(|s| inode.csum_seed(s));
            let goal = self.meta_goal(inode, m);
            let mut next_block = |fs: &mut Ext4| -> Result<u64> {
                match old.next() {
                    Some(b) => Ok(b),
                    None => fs.alloc_blocks(goal, 1).map(|(b, _)| b),
                }
            };
            // Leaves.
            let mut level: Vec<(u64, u64)> = Vec::new(); // (first key, block)
            for chunk in exts.chunks(per) {
                let nr = next_block(self)?;
                let mut b = vec![0u8; bs];
                header(&mut b, chunk.len(), per, 0);
                for (i, e) in chunk.iter().enumerate() {
                    put_extent(&mut b, i, e);
                }
                self.put_node(nr, &mut b, seed)?;
                new_tree.push(nr);
                level.push((chunk[0].lblk, nr));
            }
            let mut depth = 1u16;
            while level.len() > ROOT_ENTRIES {
                if depth >= EXT4_MAX_EXTENT_DEPTH {
                    return Err(errno_error("write", errno::EFBIG));
                }
                let mut up = Vec::new();
                for chunk in level.chunks(per) {
                    let nr = next_block(self)?;
                    let mut b = vec![0u8; bs];
                    header(&mut b, chunk.len(), per, depth);
                    for (i, &(k, c)) in chunk.iter().enumerate() {
                        put_index(&mut b, i, k, c);
                    }
                    self.put_node(nr, &mut b, seed)?;
                    new_tree.push(nr);
                    up.push((chunk[0].0, nr));
                }
                level = up;
                depth += 1;
            }
            header(&mut root, level.len(), ROOT_ENTRIES, depth);
            for (i, &(k, c)) in level.iter().enumerate() {
                put_index(&mut root, i, k, c);
            }
        }
        inode.i_block = root;
        m.exts = exts;
        m.tree = new_tree;
        Ok(old.collect())
    }

    /// Writes an extent node block with its checksum, skipping identical contents.
    fn put_node(&self, nr: u64, b: &mut [u8], seed: Option<u32>) -> Result<()> {
        if let Some(seed) = seed {
            extent::set_checksum(seed, b);
        }
        if let Ok(cur) = self.block(nr, &|| String::new()) {
            if *cur == *b {
                return Ok(());
            }
        }
        self.put_block(nr, b)
    }

    fn store_indirect(&mut self, inode: &mut Inode, m: &mut FileMap) -> Result<Vec<u64>> {
        if m.exts.iter().any(|e| e.unwritten) {
            return Err(Error::invalid(
                "internal: unwritten extents in a block-mapped file",
            ));
        }
        let ptrs = self.bs() / 4;
        let limit = EXT4_NDIR_BLOCKS + ptrs + ptrs * ptrs + ptrs * ptrs * ptrs;
        if m.exts.last().is_some_and(|e| e.end() > limit.min(1 << 32)) {
            return Err(errno_error("write", errno::EFBIG));
        }
        // Where file block l's pointer lives: (tree, rel) or direct.
        let locate = |l: u64| -> (u8, u64) {
            let mut rel = l - EXT4_NDIR_BLOCKS;
            let mut span = ptrs;
            let mut t = 1u8;
            while rel >= span {
                rel -= span;
                span *= ptrs;
                t += 1;
            }
            (t, rel)
        };
        let mut need: BTreeMap<(u8, u8, u64), Vec<u32>> = BTreeMap::new();
        let mut direct = [0u32; 12];
        let mut leaf_ptrs: Vec<((u8, u8, u64), usize, u32)> = Vec::new();
        for e in &m.exts {
            for l in e.lblk..e.end() {
                let p = (e.pblk + (l - e.lblk)) as u32;
                if l < EXT4_NDIR_BLOCKS {
                    direct[l as usize] = p;
                    continue;
                }
                let (t, rel) = locate(l);
                for d in 0..t {
                    let key = (t, d, rel / ptrs.pow(u32::from(t - d)));
                    need.entry(key).or_insert_with(|| vec![0u32; ptrs as usize]);
                }
                let key = (t, t - 1, rel / ptrs);
                leaf_ptrs.push((key, (rel % ptrs) as usize, p));
            }
        }
        for (key, slot, p) in leaf_ptrs {
            if let Some(v) = need.get_mut(&key) {
                v[slot] = p;
            }
        }
        // Blocks for the nodes: the old one at the same position, else a new one.
        let goal = self.meta_goal(inode, m);
        let mut old = std::mem::take(&mut m.ind);
        let mut placed: BTreeMap<(u8, u8, u64), u64> = BTreeMap::new();
        for key in need.keys() {
            let nr = match old.remove(key) {
                Some(b) => b,
                None => self.alloc_blocks(goal, 1)?.0,
            };
            placed.insert(*key, nr);
        }
        // Parents point at children.
        let keys: Vec<_> = need.keys().copied().collect();
        for &(t, d, idx) in &keys {
            if d == 0 {
                continue;
            }
            let child = placed[&(t, d, idx)];
            if let Some(v) = need.get_mut(&(t, d - 1, idx / ptrs)) {
                v[(idx % ptrs) as usize] = child as u32;
            }
        }
        // Deepest first.
        let mut order: Vec<_> = need.iter().collect();
        order.sort_by_key(|(k, _)| std::cmp::Reverse(k.1));
        for (key, v) in order {
            let nr = placed[key];
            let mut b = vec![0u8; self.bs() as usize];
            for (i, p) in v.iter().enumerate() {
                put(&mut b, 4 * i, p.to_le_bytes());
            }
            let same = self
                .block(nr, &String::new)
                .map(|c| *c == *b)
                .unwrap_or(false);
            if !same {
                self.put_block(nr, &b)?;
            }
        }
        let mut ib = [0u8; 60];
        for (i, p) in direct.iter().enumerate() {
            put(&mut ib, 4 * i, p.to_le_bytes());
        }
        for t in 1..=3u8 {
            if let Some(&nr) = placed.get(&(t, 0, 0)) {
                put(
                    &mut ib,
                    4 * (11 + usize::from(t)),
                    (nr as u32).to_le_bytes(),
                );
            }
        }
        inode.i_block = ib;
        m.ind = placed;
        Ok(old.into_values().collect())
    }

    /// Sets `i_blocks` from the mapping and the xattr block.
    pub(crate) fn set_i_blocks(&self, inode: &mut Inode, m: &FileMap) {
        let blocks = m.data_blocks() + m.meta_blocks() + u64::from(inode.i_file_acl != 0);
        inode.i_blocks = blocks * (self.bs() / 512);
        inode.i_flags &= !super::inode::EXT4_HUGE_FILE_FL;
    }
}

/// True when `b` (60 bytes) is an extent root with no entries.
#[allow(dead_code)]
pub(crate) fn empty_root(b: &[u8]) -> bool {
    le16(b, 0) == EXT4_EXT_MAGIC && le16(b, 2) == 0
}

/// An empty extent root for a new inode.
pub(crate) fn new_root() -> [u8; 60] {
    let mut r = [0u8; 60];
    header(&mut r, 0, ROOT_ENTRIES, 0);
    r
}
