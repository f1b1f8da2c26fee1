//! Directory edits: adding, removing and retargeting entries in linear directory blocks and
//! in htree directories (the new entry goes into the leaf the index names; a full leaf is
//! split by hash and the index gains an entry, a level, or a split node), with the
//! metadata_csum tails and `dx_tail`s re-sealed.
//!
//! When an htree cannot take an entry the simple ways above allow (a full two-level index, an
//! unknown hash version), the directory is turned into a linear one: its index blocks become
//! empty leaf blocks and EXT4_INDEX_FL is cleared, which the kernel and e2fsck accept (e2fsck
//! -D rebuilds the index).

use vdisk_block::{Error, Result};

use super::bytes::{le16, le32, put, u8_at};
use super::dir_entry::{self, rec_len_from_disk, DIR_TAIL_SIZE, EXT4_FT_DIR_CSUM};
use super::dx_hash;
use super::filemap::{set_range, Ext};
use super::htree::{self, DxKind};
use super::inode::{Inode, EXT4_INDEX_FL, EXT4_INLINE_DATA_FL};
use super::superblock::{incompat, ro_compat};
use super::Ext4;

/// Where an entry was found: (physical block, record offset, previous record offset, inode).
type Found = (u64, usize, Option<usize>, u32);

/// Bytes a record with a name of `n` bytes needs.
pub(crate) fn rec_len_for(n: usize) -> usize {
    (8 + n + 3) & !3
}

/// The kernel's `ext4_rec_len_to_disk`.
fn rec_len_to_disk(len: usize, bs: usize) -> u16 {
    if len < 65536 {
        return len as u16;
    }
    if bs == 65536 {
        65535
    } else {
        0
    }
}

fn put_rec(b: &mut [u8], at: usize, ino: u32, rec_len: usize, name: &[u8], ft: u8, filetype: bool) {
    let bs = b.len();
    put(b, at, ino.to_le_bytes());
    put(b, at + 4, rec_len_to_disk(rec_len, bs).to_le_bytes());
    if filetype {
        b[at + 6] = name.len() as u8;
        b[at + 7] = ft;
    } else {
        put(b, at + 6, (name.len() as u16).to_le_bytes());
    }
    b[at + 8..at + 8 + name.len()].copy_from_slice(name);
}

/// A parsed record (live or not) of a leaf block.
struct Rec {
    at: usize,
    ino: u32,
    rec_len: usize,
    name_len: usize,
}

fn records(b: &[u8], end: usize, filetype: bool) -> Result<Vec<Rec>> {
    let bs = b.len();
    let mut v = Vec::new();
    let mut pos = 0;
    while pos < end {
        if pos + 8 > end {
            return Err(Error::corrupt("directory record runs past its block"));
        }
        let rec_len = rec_len_from_disk(le16(b, pos + 4), bs);
        let name_len = if filetype {
            usize::from(u8_at(b, pos + 6))
        } else {
            usize::from(le16(b, pos + 6))
        };
        if rec_len < 8 || rec_len % 4 != 0 || pos + rec_len > end || 8 + name_len > rec_len {
            return Err(Error::corrupt(format!(
                "directory record at {pos} has a bad rec_len {rec_len}"
            )));
        }
        v.push(Rec {
            at: pos,
            ino: le32(b, pos),
            rec_len,
            name_len,
        });
        pos += rec_len;
    }
    Ok(v)
}

impl Ext4 {
    fn filetype(&self) -> bool {
        self.sb.has_incompat(incompat::FILETYPE)
    }

    fn csum_tail(&self) -> usize {
        if self.sb.has_ro_compat(ro_compat::METADATA_CSUM) {
            DIR_TAIL_SIZE
        } else {
            0
        }
    }

    /// Seals a leaf block: writes its tail record and checksum with metadata_csum.
    pub(crate) fn seal_leaf(&self, dir: &Inode, b: &mut [u8]) {
        if let Some(seed) = self.sb.csum_seed {
            let n = b.len();
            let t = n - DIR_TAIL_SIZE;
            put(b, t, [0; 4]);
            put(b, t + 4, (DIR_TAIL_SIZE as u16).to_le_bytes());
            b[t + 6] = 0;
            b[t + 7] = EXT4_FT_DIR_CSUM;
            dir_entry::set_checksum(dir.csum_seed(seed), b);
        }
    }

    /// An empty leaf block (one unused record spanning it), sealed.
    pub(crate) fn empty_leaf(&self, dir: &Inode) -> Vec<u8> {
        let bs = self.bs() as usize;
        let mut b = vec![0u8; bs];
        let end = bs - self.csum_tail();
        put(&mut b, 4, rec_len_to_disk(end, bs).to_le_bytes());
        self.seal_leaf(dir, &mut b);
        b
    }

    /// The first block of a new directory: "." and "..".
    pub(crate) fn new_dir_block(&self, dir: &Inode, parent: u32) -> Vec<u8> {
        let bs = self.bs() as usize;
        let ft = self.filetype();
        let mut b = vec![0u8; bs];
        put_rec(&mut b, 0, dir.ino, 12, b".", dir_entry::ft::DIR, ft);
        let end = bs - self.csum_tail();
        put_rec(&mut b, 12, parent, end - 12, b"..", dir_entry::ft::DIR, ft);
        self.seal_leaf(dir, &mut b);
        b
    }

    /// Tries to put an entry into leaf `b`; true when it fit.
    fn leaf_insert(&self, b: &mut [u8], name: &[u8], ino: u32, ft: u8) -> Result<bool> {
        let end = b.len() - self.csum_tail();
        let need = rec_len_for(name.len());
        let filetype = self.filetype();
        for r in records(b, end, filetype)? {
            let used = if r.ino != 0 {
                rec_len_for(r.name_len)
            } else {
                0
            };
            if r.rec_len >= used + need {
                if r.ino == 0 {
                    put_rec(b, r.at, ino, r.rec_len, name, ft, filetype);
                } else {
                    put(b, r.at + 4, rec_len_to_disk(used, b.len()).to_le_bytes());
                    put_rec(b, r.at + used, ino, r.rec_len - used, name, ft, filetype);
                }
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The blocks of directory `dir`: (logical, physical) for each mapped block below i_size.
    fn dir_blocks(&self, dir: &Inode) -> Result<Vec<(u64, u64)>> {
        if dir.has_flag(EXT4_INLINE_DATA_FL) {
            return Err(Error::unsupported(format!(
                "directory inode {} keeps its entries inline; vdisk does not edit inline directories",
                dir.ino
            )));
        }
        let m = self.load_map(dir)?;
        let n = dir.i_size / self.bs();
        let mut v = Vec::new();
        for e in &m.exts {
            for l in e.lblk..e.end().min(n) {
                v.push((l, e.pblk + (l - e.lblk)));
            }
        }
        Ok(v)
    }

    /// Appends block `content` (already sealed for `dir`) to directory `dir`; stores the inode.
    /// Returns (logical, physical).
    fn dir_append(&mut self, dir: &mut Inode, content: &mut [u8]) -> Result<(u64, u64)> {
        let mut m = self.load_map(dir)?;
        let l = dir.i_size / self.bs();
        if l >= 1 << 31 {
            return Err(Error::unsupported("directory is too large"));
        }
        let goal = m.goal_before(l).unwrap_or_else(|| {
            self.sb
                .group_first_block((dir.ino - 1) / self.sb.s_inodes_per_group)
        });
        let (p, _) = self.alloc_blocks(goal, 1)?;
        self.put_block(p, content)?;
        set_range(
            &mut m.exts,
            Ext {
                lblk: l,
                len: 1,
                pblk: p,
                unwritten: false,
            },
        );
        let free = self.store_map(dir, &mut m)?;
        dir.i_size = (l + 1) * self.bs();
        self.set_i_blocks(dir, &m);
        self.store_inode(dir)?;
        for b in free {
            self.free_blocks(b, 1)?;
        }
        Ok((l, p))
    }

    /// Adds entry `name` -> `ino` (file type code `ft`) to directory `dir` (stored when it grows).
    pub(crate) fn dir_add(&mut self, dir: &mut Inode, name: &[u8], ino: u32, ft: u8) -> Result<()> {
        if dir.has_flag(EXT4_INDEX_FL) {
            match self.dx_add(dir, name, ino, ft)? {
                true => return Ok(()),
                false => self.unindex(dir)?,
            }
        }
        let blocks = self.dir_blocks(dir)?;
        // Newest blocks first: that is where free space usually is.
        for &(_, p) in blocks.iter().rev() {
            let mut b = self
                .block(p, &|| format!("directory inode {} block", dir.ino))?
                .to_vec();
            if self.leaf_insert(&mut b, name, ino, ft)? {
                self.seal_leaf(dir, &mut b);
                return self.put_block(p, &b);
            }
        }
        // A full one-block directory gets an index, as the kernel's make_indexed_dir() does.
        if blocks.len() == 1
            && blocks[0].0 == 0
            && self.sb.has_compat(super::superblock::compat::DIR_INDEX)
            && self.make_indexed(dir, blocks[0].1)?
        {
            if self.dx_add(dir, name, ino, ft)? {
                return Ok(());
            }
            self.unindex(dir)?;
            return self.dir_add(dir, name, ino, ft);
        }
        let mut b = self.empty_leaf(dir);
        self.leaf_insert(&mut b, name, ino, ft)?;
        self.seal_leaf(dir, &mut b);
        self.dir_append(dir, &mut b)?;
        Ok(())
    }

    /// The leaves of an htree directory that can hold `name` (the one the index names, and
    /// those after it that continue its hash), or None when the index cannot say (then every
    /// block must be searched).
    fn dx_candidates(
        &self,
        _dir: &Inode,
        blocks: &[(u64, u64)],
        name: &[u8],
    ) -> Result<Option<Vec<(u64, u64)>>> {
        let phys = |l: u64| blocks.iter().find(|&&(x, _)| x == l).map(|&(_, p)| p);
        let Some(root_p) = phys(0) else {
            return Ok(None);
        };
        let root = self.block(root_p, &String::new)?;
        if htree::classify(&root, 0) != DxKind::Root {
            return Ok(None);
        }
        let hv = u8_at(&root, 0x1C);
        let levels = u8_at(&root, 0x1E);
        if levels > 1 || hv > dx_hash::DX_HASH_TEA {
            return Ok(None);
        }
        let version = if self.sb.s_flags & dx_hash::EXT2_FLAGS_UNSIGNED_HASH != 0 {
            hv + dx_hash::DX_HASH_UNSIGNED_DELTA
        } else {
            hv
        };
        let Some(h) = dx_hash::dirhash(name, version, &self.sb.s_hash_seed) else {
            return Ok(None);
        };
        let mut b = root;
        let mut co = 0x20;
        for level in 0..=levels {
            let count = usize::from(le16(&b, co + 2));
            let limit = usize::from(le16(&b, co));
            if count == 0 || count > limit {
                return Ok(None);
            }
            let mut pos = 0;
            for i in 1..count {
                if le32(&b, co + 8 * i) <= h {
                    pos = i;
                } else {
                    break;
                }
            }
            let child = u64::from(le32(&b, co + 8 * pos + 4));
            if level < levels {
                let Some(p) = phys(child) else {
                    return Ok(None);
                };
                b = self.block(p, &String::new)?;
                co = 8;
                continue;
            }
            let mut v = Vec::new();
            let Some(p) = phys(child) else {
                return Ok(None);
            };
            v.push((child, p));
            let mut i = pos + 1;
            loop {
                if i >= count {
                    // The continuation could be in the next node: let the caller scan all.
                    if levels > 0 {
                        return Ok(None);
                    }
                    break;
                }
                let eh = le32(&b, co + 8 * i);
                if eh & !1 != h || eh & 1 == 0 {
                    break;
                }
                let l = u64::from(le32(&b, co + 8 * i + 4));
                let Some(p) = phys(l) else { return Ok(None) };
                v.push((l, p));
                i += 1;
            }
            return Ok(Some(v));
        }
        Ok(None)
    }

    /// Finds `name` in directory `dir`: its inode (through the index when it has one).
    pub(crate) fn dir_lookup(&self, dir: &Inode, name: &[u8]) -> Result<Option<u32>> {
        // "." and ".." open block 0, which an htree's index does not list as a leaf; a scan
        // meets them first.
        if dir.has_flag(EXT4_INLINE_DATA_FL)
            || !dir.has_flag(EXT4_INDEX_FL)
            || name == b"."
            || name == b".."
        {
            return self.scan_entry(dir, name);
        }
        Ok(self.dir_find(dir, name)?.map(|(_, _, _, ino)| ino))
    }

    /// Finds `name` in `dir`'s blocks: (physical block, record offset, previous record offset,
    /// inode).
    fn dir_find(&self, dir: &Inode, name: &[u8]) -> Result<Option<Found>> {
        let filetype = self.filetype();
        let indexed = dir.has_flag(EXT4_INDEX_FL);
        let mut blocks = self.dir_blocks(dir)?;
        if indexed {
            if let Some(c) = self.dx_candidates(dir, &blocks, name)? {
                blocks = c;
            }
        }
        for (l, p) in blocks {
            let b = self.block(p, &|| format!("directory inode {} block {l}", dir.ino))?;
            if indexed && htree::classify(&b, l) != DxKind::Leaf {
                continue;
            }
            let end = b.len() - self.csum_tail();
            let mut prev = None;
            for r in records(&b, end, filetype)? {
                if r.ino != 0 && &b[r.at + 8..r.at + 8 + r.name_len] == name {
                    return Ok(Some((p, r.at, prev, r.ino)));
                }
                prev = Some(r.at);
            }
        }
        Ok(None)
    }

    /// Removes entry `name` from `dir`; returns the inode it named.
    pub(crate) fn dir_remove(&mut self, dir: &Inode, name: &[u8]) -> Result<u32> {
        let (p, at, prev, _) = self
            .dir_find(dir, name)?
            .ok_or_else(|| vdisk_fs::errno_error("unlink", vdisk_fs::errno::ENOENT))?;
        let mut b = self.block(p, &String::new)?.to_vec();
        let bs = b.len();
        let ino = le32(&b, at);
        let rec = rec_len_from_disk(le16(&b, at + 4), bs);
        match prev {
            Some(pv) => {
                let plen = rec_len_from_disk(le16(&b, pv + 4), bs);
                put(
                    &mut b,
                    pv + 4,
                    rec_len_to_disk(plen + rec, bs).to_le_bytes(),
                );
            }
            None => put(&mut b, at, [0; 4]),
        }
        self.seal_leaf(dir, &mut b);
        self.put_block(p, &b)?;
        Ok(ino)
    }

    /// Points existing entry `name` of `dir` at `ino` with type `ft`; returns the old inode.
    pub(crate) fn dir_retarget(
        &mut self,
        dir: &Inode,
        name: &[u8],
        ino: u32,
        ft: u8,
    ) -> Result<u32> {
        let (p, at, _, _) = self
            .dir_find(dir, name)?
            .ok_or_else(|| vdisk_fs::errno_error("rename", vdisk_fs::errno::ENOENT))?;
        let mut b = self.block(p, &String::new)?.to_vec();
        let old = le32(&b, at);
        put(&mut b, at, ino.to_le_bytes());
        if self.filetype() {
            b[at + 7] = ft;
        }
        self.seal_leaf(dir, &mut b);
        self.put_block(p, &b)?;
        Ok(old)
    }

    /// Sets the ".." entry of directory `dir` to `parent`.
    pub(crate) fn dir_set_dotdot(&mut self, dir: &Inode, parent: u32) -> Result<()> {
        let blocks = self.dir_blocks(dir)?;
        let &(_, p) = blocks
            .first()
            .ok_or_else(|| Error::corrupt(format!("directory inode {} has no blocks", dir.ino)))?;
        let mut b = self.block(p, &String::new)?.to_vec();
        let bs = b.len();
        let dotlen = rec_len_from_disk(le16(&b, 4), bs);
        if dotlen + 12 > bs || u8_at(&b, dotlen + 6) != 2 || &b[dotlen + 8..dotlen + 10] != b".." {
            return Err(Error::corrupt(format!(
                "directory inode {}: no \"..\" entry in its first block",
                dir.ino
            )));
        }
        put(&mut b, dotlen, parent.to_le_bytes());
        if dir.has_flag(EXT4_INDEX_FL) && htree::classify(&b, 0) == DxKind::Root {
            self.seal_dx(dir, &mut b, DxKind::Root);
        } else {
            self.seal_leaf(dir, &mut b);
        }
        self.put_block(p, &b)
    }

    fn seal_dx(&self, dir: &Inode, b: &mut [u8], kind: DxKind) {
        if let Some(seed) = self.sb.csum_seed {
            htree::set_checksum(dir.csum_seed(seed), b, kind);
        }
    }

    /// The count/limit of a dx block at `off`: (limit, count).
    fn dx_limits(&self, kind: DxKind) -> usize {
        let bs = self.bs() as usize;
        let tail = if self.sb.csum_seed.is_some() { 8 } else { 0 };
        match kind {
            DxKind::Root => (bs - 0x20 - tail) / 8,
            _ => (bs - 8 - tail) / 8,
        }
    }

    /// Inserts into an htree directory. Ok(false): the index cannot take it simply; the
    /// caller makes the directory linear.
    fn dx_add(&mut self, dir: &mut Inode, name: &[u8], ino: u32, ft: u8) -> Result<bool> {
        let blocks = self.dir_blocks(dir)?;
        let phys = |l: u64| blocks.iter().find(|&&(x, _)| x == l).map(|&(_, p)| p);
        let Some(root_p) = phys(0) else {
            return Ok(false);
        };
        let root = self.block(root_p, &String::new)?.to_vec();
        if htree::classify(&root, 0) != DxKind::Root || le32(&root, 0x18) != 0 {
            return Ok(false);
        }
        let hv = u8_at(&root, 0x1C);
        let levels = u8_at(&root, 0x1E);
        if levels > 1 || hv > dx_hash::DX_HASH_TEA {
            return Ok(false);
        }
        let version = if self.sb.s_flags & dx_hash::EXT2_FLAGS_UNSIGNED_HASH != 0 {
            hv + dx_hash::DX_HASH_UNSIGNED_DELTA
        } else {
            hv
        };
        let seed = self.sb.s_hash_seed;
        let hash_of = |n: &[u8]| dx_hash::dirhash(n, version, &seed).unwrap_or(0);
        let h = hash_of(name);
        // Descend: (physical block, kind, entry position).
        let mut path: Vec<(u64, DxKind, usize)> = Vec::new();
        let mut cur_p = root_p;
        let mut kind = DxKind::Root;
        let leaf_l = loop {
            let b = self.block(cur_p, &String::new)?;
            let co = if kind == DxKind::Root { 0x20 } else { 8 };
            let limit = usize::from(le16(&b, co));
            let count = usize::from(le16(&b, co + 2));
            if limit != self.dx_limits(kind) || count == 0 || count > limit {
                return Ok(false);
            }
            let mut pos = 0;
            for i in 1..count {
                if le32(&b, co + 8 * i) <= h {
                    pos = i;
                } else {
                    break;
                }
            }
            let child = u64::from(le32(&b, co + 8 * pos + 4));
            path.push((cur_p, kind, pos));
            if path.len() > usize::from(levels) {
                break child;
            }
            let Some(p) = phys(child) else {
                return Ok(false);
            };
            cur_p = p;
            kind = DxKind::Node;
        };
        let Some(leaf_p) = phys(leaf_l) else {
            return Ok(false);
        };
        let mut leaf = self.block(leaf_p, &String::new)?.to_vec();
        if htree::classify(&leaf, leaf_l) != DxKind::Leaf {
            return Ok(false);
        }
        if self.leaf_insert(&mut leaf, name, ino, ft)? {
            self.seal_leaf(dir, &mut leaf);
            self.put_block(leaf_p, &leaf)?;
            return Ok(true);
        }
        // Split the leaf by hash.
        let filetype = self.filetype();
        let end = leaf.len() - self.csum_tail();
        let mut ents: Vec<(u32, Vec<u8>, u32, u8)> = Vec::new();
        for r in records(&leaf, end, filetype)? {
            if r.ino != 0 {
                let n = leaf[r.at + 8..r.at + 8 + r.name_len].to_vec();
                let t = if filetype { leaf[r.at + 7] } else { 0 };
                ents.push((hash_of(&n), n, r.ino, t));
            }
        }
        ents.push((h, name.to_vec(), ino, ft));
        ents.sort_by_key(|e| e.0);
        let total: usize = ents.iter().map(|e| rec_len_for(e.1.len())).sum();
        let mut acc = 0;
        let mut s = 0;
        while s < ents.len() && acc + rec_len_for(ents[s].1.len()) <= total / 2 {
            acc += rec_len_for(ents[s].1.len());
            s += 1;
        }
        // Keep equal hashes together when possible (the continuation bit covers the rest).
        if s == 0 || s >= ents.len() {
            return Ok(false);
        }
        let split_hash = ents[s].0 | u32::from(ents[s].0 == ents[s - 1].0);
        let mut lower = self.empty_leaf(dir);
        let mut upper = self.empty_leaf(dir);
        for (i, e) in ents.iter().enumerate() {
            let target = if i < s { &mut lower } else { &mut upper };
            if !self.leaf_insert(target, &e.1, e.2, e.3)? {
                return Ok(false);
            }
        }
        self.seal_leaf(dir, &mut lower);
        self.seal_leaf(dir, &mut upper);
        // Room in the parent, or a plan to make it.
        let (parent_p, parent_kind, pos) = *path.last().unwrap_or(&(root_p, DxKind::Root, 0));
        let parent = self.block(parent_p, &String::new)?.to_vec();
        let pco = if parent_kind == DxKind::Root { 0x20 } else { 8 };
        let pcount = usize::from(le16(&parent, pco + 2));
        let plimit = usize::from(le16(&parent, pco));
        let root_count = usize::from(le16(&root, 0x22));
        let root_limit = usize::from(le16(&root, 0x20));
        let parent_full = pcount >= plimit;
        if parent_full
            && !(parent_kind == DxKind::Root && levels == 0)
            && !(parent_kind == DxKind::Node && root_count < root_limit)
        {
            return Ok(false);
        }
        // New leaf first, then the old leaf, then the index.
        let (new_l, _) = self.dir_append(dir, &mut upper)?;
        self.put_block(leaf_p, &lower)?;
        let entry = (split_hash, new_l as u32);
        if !parent_full {
            let mut pb = parent;
            dx_insert(&mut pb, pco, pos + 1, entry);
            self.seal_dx(dir, &mut pb, parent_kind);
            self.put_block(parent_p, &pb)?;
            return Ok(true);
        }
        if parent_kind == DxKind::Root {
            // Add a level: the root's entries move to a new node, the root points at it.
            let bs = self.bs() as usize;
            let nlimit = self.dx_limits(DxKind::Node);
            let mut node = dx_rebuild(nlimit, &dx_entries(&parent, 0x20), 8, bs);
            dx_insert(&mut node, 8, pos + 1, entry);
            self.seal_dx(dir, &mut node, DxKind::Node);
            let (node_l, _) = self.dir_append(dir, &mut node)?;
            let mut rb = parent;
            put(&mut rb, 0x22, 1u16.to_le_bytes());
            put(&mut rb, 0x24, (node_l as u32).to_le_bytes());
            rb[0x28..0x20 + 8 * root_limit].fill(0);
            rb[0x1E] = 1;
            self.seal_dx(dir, &mut rb, DxKind::Root);
            self.put_block(root_p, &rb)?;
            return Ok(true);
        }
        // Split a full node; the root takes the new node's first hash.
        let bs = self.bs() as usize;
        let mut all = dx_entries(&parent, pco);
        all.insert(pos + 1, entry);
        let half = all.len() / 2;
        let nlimit = self.dx_limits(DxKind::Node);
        let mut lo = dx_rebuild(nlimit, &all[..half], 8, bs);
        let mut hi = dx_rebuild(nlimit, &all[half..], 8, bs);
        self.seal_dx(dir, &mut lo, DxKind::Node);
        self.seal_dx(dir, &mut hi, DxKind::Node);
        let up_hash = all[half].0;
        let (hi_l, _) = self.dir_append(dir, &mut hi)?;
        self.put_block(parent_p, &lo)?;
        let mut rb = self.block(root_p, &String::new)?.to_vec();
        let rpos = path[0].2;
        dx_insert(&mut rb, 0x20, rpos + 1, (up_hash, hi_l as u32));
        self.seal_dx(dir, &mut rb, DxKind::Root);
        self.put_block(root_p, &rb)?;
        Ok(true)
    }

    /// Turns full one-block directory `dir` (block 0 at `p0`) into an htree: its entries are
    /// sorted by hash into two new leaves, block 0 becomes the dx root. False when the
    /// directory's first block does not look as expected (it then stays linear).
    fn make_indexed(&mut self, dir: &mut Inode, p0: u64) -> Result<bool> {
        let b0 = self.block(p0, &String::new)?.to_vec();
        let bs = b0.len();
        let filetype = self.filetype();
        let end = bs - self.csum_tail();
        let recs = records(&b0, end, filetype)?;
        if recs.len() < 2
            || &b0[8..9] != b"."
            || recs[0].name_len != 1
            || recs[1].name_len != 2
            || &b0[recs[1].at + 8..recs[1].at + 10] != b".."
            || recs[1].at != 12
        {
            return Ok(false);
        }
        let hv = self.sb.s_def_hash_version;
        if hv > dx_hash::DX_HASH_TEA {
            return Ok(false);
        }
        let version = if self.sb.s_flags & dx_hash::EXT2_FLAGS_UNSIGNED_HASH != 0 {
            hv + dx_hash::DX_HASH_UNSIGNED_DELTA
        } else {
            hv
        };
        let seed = self.sb.s_hash_seed;
        let mut ents: Vec<(u32, Vec<u8>, u32, u8)> = Vec::new();
        for r in &recs[2..] {
            if r.ino != 0 {
                let n = b0[r.at + 8..r.at + 8 + r.name_len].to_vec();
                let t = if filetype { b0[r.at + 7] } else { 0 };
                let h = dx_hash::dirhash(&n, version, &seed).unwrap_or(0);
                ents.push((h, n, r.ino, t));
            }
        }
        if ents.len() < 2 {
            return Ok(false);
        }
        ents.sort_by_key(|e| e.0);
        let s = ents.len() / 2;
        let split_hash = ents[s].0 | u32::from(ents[s].0 == ents[s - 1].0);
        let mut lower = self.empty_leaf(dir);
        let mut upper = self.empty_leaf(dir);
        for (i, e) in ents.iter().enumerate() {
            let t = if i < s { &mut lower } else { &mut upper };
            if !self.leaf_insert(t, &e.1, e.2, e.3)? {
                return Ok(false);
            }
        }
        self.seal_leaf(dir, &mut lower);
        self.seal_leaf(dir, &mut upper);
        let (l1, _) = self.dir_append(dir, &mut lower)?;
        let (l2, _) = self.dir_append(dir, &mut upper)?;
        let mut root = vec![0u8; bs];
        root[..12].copy_from_slice(&b0[..12]);
        put(&mut root, 4, 12u16.to_le_bytes());
        let parent = le32(&b0, 12);
        put_rec(
            &mut root,
            12,
            parent,
            bs - 12,
            b"..",
            dir_entry::ft::DIR,
            filetype,
        );
        root[0x1C] = hv;
        root[0x1D] = 8;
        let limit = self.dx_limits(DxKind::Root);
        put(&mut root, 0x20, (limit as u16).to_le_bytes());
        put(&mut root, 0x22, 2u16.to_le_bytes());
        put(&mut root, 0x24, (l1 as u32).to_le_bytes());
        put(&mut root, 0x28, split_hash.to_le_bytes());
        put(&mut root, 0x2C, (l2 as u32).to_le_bytes());
        self.seal_dx(dir, &mut root, DxKind::Root);
        self.put_block(p0, &root)?;
        dir.i_flags |= EXT4_INDEX_FL;
        self.store_inode(dir)?;
        Ok(true)
    }

    /// Turns an htree directory into a linear one (index blocks become empty leaves).
    fn unindex(&mut self, dir: &mut Inode) -> Result<()> {
        let bs = self.bs() as usize;
        for (l, p) in self.dir_blocks(dir)? {
            let b = self.block(p, &String::new)?.to_vec();
            match htree::classify(&b, l) {
                DxKind::Leaf => {}
                DxKind::Root => {
                    let mut nb = vec![0u8; bs];
                    nb[..12].copy_from_slice(&b[..12]);
                    let parent = le32(&b, 12);
                    let ft = self.filetype();
                    let end = bs - self.csum_tail();
                    put_rec(&mut nb, 12, parent, end - 12, b"..", dir_entry::ft::DIR, ft);
                    self.seal_leaf(dir, &mut nb);
                    self.put_block(p, &nb)?;
                }
                DxKind::Node => {
                    let nb = self.empty_leaf(dir);
                    self.put_block(p, &nb)?;
                }
            }
        }
        dir.i_flags &= !EXT4_INDEX_FL;
        self.store_inode(dir)
    }
}

/// The (hash, block) entries of a dx block whose count/limit is at `co` (entry 0's hash is 0).
fn dx_entries(b: &[u8], co: usize) -> Vec<(u32, u32)> {
    let count = usize::from(le16(b, co + 2));
    (0..count)
        .map(|i| {
            let h = if i == 0 { 0 } else { le32(b, co + 8 * i) };
            (h, le32(b, co + 8 * i + 4))
        })
        .collect()
}

/// A dx node block holding `entries` (count/limit at `co` = 8).
fn dx_rebuild(limit: usize, entries: &[(u32, u32)], co: usize, bs: usize) -> Vec<u8> {
    let mut b = vec![0u8; bs];
    put(&mut b, 4, rec_len_to_disk(bs, bs).to_le_bytes());
    put(&mut b, co, (limit as u16).to_le_bytes());
    put(&mut b, co + 2, (entries.len() as u16).to_le_bytes());
    for (i, &(h, blk)) in entries.iter().enumerate() {
        if i > 0 {
            put(&mut b, co + 8 * i, h.to_le_bytes());
        }
        put(&mut b, co + 8 * i + 4, blk.to_le_bytes());
    }
    b
}

/// Inserts (hash, block) at position `pos` of the dx block's entries (room checked by caller).
fn dx_insert(b: &mut [u8], co: usize, pos: usize, e: (u32, u32)) {
    let count = usize::from(le16(b, co + 2));
    let start = co + 8 * pos;
    let end = co + 8 * count;
    b.copy_within(start..end, start + 8);
    put(b, start, e.0.to_le_bytes());
    put(b, start + 4, e.1.to_le_bytes());
    put(b, co + 2, ((count + 1) as u16).to_le_bytes());
}
