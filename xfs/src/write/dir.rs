//! Directory contents, re-encoded whole on each change: short form inside the inode while the
//! entries fit there, one directory block (`XDB3`: entries, one free region, the hash-sorted
//! leaf array and the tail) while they fit in one block. Conversions both ways happen as
//! entries come and go. Leaf and node directories are refused by name.

use vdisk_block::{Error, Result};

use super::alloc::meta_uuid;
use super::inode::{put16, put32, put64, CORE, FMT_EXTENTS, FMT_LOCAL};
use super::tx::{Kind, Tx};
use crate::dir::{XFS_DIR2_LEAF_OFFSET, XFS_DIR3_BLOCK_MAGIC, XFS_DIR3_DATA_MAGIC};
use crate::fork::Extent;
use crate::inode::{ForkFormat, Inode};

/// One entry (not "." or "..").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DEnt {
    /// The name.
    pub name: Vec<u8>,
    /// Its inode.
    pub ino: u64,
    /// `XFS_DIR3_FT_*`.
    pub ftype: u8,
}

/// A directory's contents.
#[derive(Debug, Clone)]
pub struct DirList {
    /// The parent (the ".." entry).
    pub parent: u64,
    /// The other entries, in storage order.
    pub entries: Vec<DEnt>,
}

impl DirList {
    /// The entry named `name`.
    pub fn find(&self, name: &[u8]) -> Option<&DEnt> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Removes and returns the entry named `name`.
    pub fn take(&mut self, name: &[u8]) -> Option<DEnt> {
        let p = self.entries.iter().position(|e| e.name == name)?;
        Some(self.entries.remove(p))
    }
}

/// The `XFS_DIR3_FT_*` code of a mode.
pub fn ftype_of(mode: u16) -> u8 {
    match mode & 0o170000 {
        0o100000 => 1,
        0o040000 => 2,
        0o020000 => 3,
        0o060000 => 4,
        0o010000 => 5,
        0o140000 => 6,
        0o120000 => 7,
        _ => 0,
    }
}

/// `xfs_da_hashname`: the directory and attribute name hash.
pub fn da_hashname(name: &[u8]) -> u32 {
    let mut h: u32 = 0;
    let mut n = name;
    while n.len() >= 4 {
        h = (u32::from(n[0]) << 21)
            ^ (u32::from(n[1]) << 14)
            ^ (u32::from(n[2]) << 7)
            ^ u32::from(n[3])
            ^ h.rotate_left(7 * 4);
        n = &n[4..];
    }
    match n.len() {
        3 => {
            (u32::from(n[0]) << 14)
                ^ (u32::from(n[1]) << 7)
                ^ u32::from(n[2])
                ^ h.rotate_left(7 * 3)
        }
        2 => (u32::from(n[0]) << 7) ^ u32::from(n[1]) ^ h.rotate_left(7 * 2),
        1 => u32::from(n[0]) ^ h.rotate_left(7),
        _ => h,
    }
}

/// The size of a v5 data entry with ftype for a name of `n` bytes.
fn entsize(n: usize) -> usize {
    (8 + 1 + n + 1 + 2 + 7) & !7
}

/// First byte of entries in a v5 directory data block (after the 64-byte header).
const DATA_HDR: usize = 64;
/// Size of a v5 leaf block header (`xfs_dir3_leaf_hdr`).
const LEAF_HDR: usize = 64;
/// "XFS_DIR3_LEAF1_MAGIC": a v5 single leaf block (with the bests table).
pub const XFS_DIR3_LEAF1_MAGIC: u16 = 0x3df1;
/// "XFS_DIR3_LEAFN_MAGIC": a v5 leaf block of a node directory.
pub const XFS_DIR3_LEAFN_MAGIC: u16 = 0x3dff;
/// "XFS_DA3_NODE_MAGIC": a v5 da B+tree node.
pub const XFS_DA3_NODE_MAGIC: u16 = 0x3ebe;
/// "XDF3": a v5 directory free index block.
pub const XFS_DIR3_FREE_MAGIC: u32 = 0x5844_4633;
/// Size of a v5 da node header (`xfs_da3_node_hdr`).
const NODE_HDR: usize = 64;
/// Size of a v5 free index header (`xfs_dir3_free_hdr`).
const FREE_HDR: usize = 64;

impl Tx<'_> {
    /// The directory block size in bytes.
    pub fn dirblk(&self) -> usize {
        (self.fs.sb.sb_blocksize as usize) << self.fs.sb.sb_dirblklog
    }

    /// The contents of directory `d` (as on the device: call before changing it in this
    /// transaction). Leaf and node directories are refused.
    pub fn dir_read(&mut self, d: &Inode) -> Result<DirList> {
        if !d.is_dir() {
            return Err(vdisk_fs::errno_error("dir", vdisk_fs::errno::ENOTDIR));
        }
        self.dir_form(d)?;
        let parent = self.fs.dir_parent(d)?;
        let mut entries = Vec::new();
        self.fs.dir_walk(d, 0, &mut |e| {
            entries.push(DEnt {
                name: e.name,
                ino: e.ino,
                ftype: e.ftype,
            });
            true
        })?;
        Ok(DirList { parent, entries })
    }

    /// Stores `list` as directory `ino`'s contents, choosing short or block form.
    pub fn dir_write(&mut self, ino: u64, list: &DirList) -> Result<()> {
        let d = self.inode(ino)?;
        let room = d.data_fork.len();
        let big = list.parent > u64::from(u32::MAX)
            || list.entries.iter().any(|e| e.ino > u64::from(u32::MAX));
        let isz = if big { 8 } else { 4 };
        let sf_size: usize = 2
            + isz
            + list
                .entries
                .iter()
                .map(|e| 1 + 2 + e.name.len() + 1 + isz)
                .sum::<usize>();
        let old_ex = self.file_extents(&d)?;
        if sf_size <= room {
            let mut sf = vec![0u8; sf_size];
            sf[0] = list.entries.len().min(255) as u8;
            if list.entries.len() > 255 {
                return Err(Error::invalid("short form directory with over 255 entries"));
            }
            let i8 = if big {
                list.entries
                    .iter()
                    .filter(|e| e.ino > u64::from(u32::MAX))
                    .count() as u8
                    + 1
            } else {
                0
            };
            sf[1] = i8;
            let put_ino = |b: &mut [u8], o: usize, v: u64| {
                if big {
                    put64(b, o, v)
                } else {
                    put32(b, o, v as u32)
                }
            };
            put_ino(&mut sf, 2, list.parent);
            let mut p = 2 + isz;
            let mut offset = DATA_HDR + entsize(1) + entsize(2);
            for e in &list.entries {
                sf[p] = e.name.len() as u8;
                put16(&mut sf, p + 1, offset as u16);
                sf[p + 3..p + 3 + e.name.len()].copy_from_slice(&e.name);
                let q = p + 3 + e.name.len();
                sf[q] = e.ftype;
                put_ino(&mut sf, q + 1, e.ino);
                p = q + 1 + isz;
                offset += entsize(e.name.len());
            }
            let freed = self.free_all_data(&d)?;
            let b = self.inode_mut(ino)?;
            b[5] = FMT_LOCAL;
            b[CORE..CORE + room].fill(0);
            b[CORE..CORE + sf_size].copy_from_slice(&sf);
            put64(b, 56, sf_size as u64);
            put32(b, 76, 0);
            let nb = u64::from_be_bytes(b[64..72].try_into().unwrap_or_default());
            put64(b, 64, nb.saturating_sub(freed));
            return Ok(());
        }
        let dbs = self.dirblk();
        let fsbs = (dbs / self.fs.sb.sb_blocksize as usize) as u64;
        let leaf_lblk = XFS_DIR2_LEAF_OFFSET / u64::from(self.fs.sb.sb_blocksize);
        // The entries packed into data blocks: block form keeps room for the leaf and tail.
        let one_block = DATA_HDR
            + entsize(1)
            + entsize(2)
            + list
                .entries
                .iter()
                .map(|e| entsize(e.name.len()))
                .sum::<usize>()
            + (list.entries.len() + 2) * 8
            + 8
            <= dbs;
        let mut blocks: Vec<Vec<(&[u8], u64, u8)>> =
            vec![vec![(b".", ino, 2), (b"..", list.parent, 2)]];
        if !one_block {
            let mut used = DATA_HDR + entsize(1) + entsize(2);
            for e in &list.entries {
                let sz = entsize(e.name.len());
                if used + sz > dbs {
                    blocks.push(Vec::new());
                    used = DATA_HDR;
                }
                used += sz;
                if let Some(b) = blocks.last_mut() {
                    b.push((&e.name[..], e.ino, e.ftype));
                }
            }
            // A leaf directory has at least two data blocks: one block of size dirblk is
            // block form to every reader.
            if blocks.len() == 1 {
                let last = blocks[0].pop();
                blocks.push(last.into_iter().collect());
            }
        } else {
            for e in &list.entries {
                blocks[0].push((&e.name[..], e.ino, e.ftype));
            }
        }
        // Physical blocks: reuse the directory's own, allocate the rest, free the leftovers.
        let old = if d.di_format == ForkFormat::Local {
            Vec::new()
        } else {
            old_ex.clone()
        };
        let phys_of = |lblk: u64| -> Option<u64> {
            old.iter()
                .find(|e| e.startoff <= lblk && lblk < e.startoff + e.blockcount)
                .map(|e| e.startblock + (lblk - e.startoff))
        };
        // Leaf form while one leaf block holds every hash and the bests table; node form
        // (a da node over leafn blocks, free index blocks) past that.
        let nleaf = list.entries.len() + 2;
        let node = !one_block && LEAF_HDR + nleaf * 8 + blocks.len() * 2 + 4 > dbs;
        let per_leafn = (dbs - LEAF_HDR) / 8;
        let nleafn = if node {
            nleaf.div_ceil(per_leafn).max(2)
        } else {
            0
        };
        let per_free = (dbs - FREE_HDR) / 2;
        let nfree = if node {
            blocks.len().div_ceil(per_free)
        } else {
            0
        };
        if nleafn > (dbs - NODE_HDR) / 8 {
            return Err(Error::unsupported(format!(
                "XFS directory {ino}: {nleaf} entries need a directory B+tree deeper than one node, which is not supported yet"
            )));
        }
        let free_lblk = 2 * leaf_lblk;
        let mut want: Vec<u64> = (0..blocks.len() as u64).map(|db| db * fsbs).collect();
        if !one_block {
            want.push(leaf_lblk);
        }
        for k in 1..=nleafn as u64 {
            want.push(leaf_lblk + k * fsbs);
        }
        for j in 0..nfree as u64 {
            want.push(free_lblk + j * fsbs);
        }
        let near = self.byte_to_fsb(self.fs.inode_offset(ino)?);
        let mut map: Vec<Extent> = Vec::new();
        let mut allocated = 0u64;
        for &l in &want {
            // A directory block is fsbs contiguous filesystem blocks.
            let mut reuse = phys_of(l);
            if let Some(p) = reuse {
                if (1..fsbs).any(|k| phys_of(l + k) != Some(p + k)) {
                    reuse = None;
                }
            }
            let p = match reuse {
                Some(p) => p,
                None => {
                    let hint = map.last().map_or(near, |e| e.startblock + e.blockcount - 1);
                    let p = self.alloc_exact(fsbs as u32, Some(hint))?;
                    allocated += fsbs;
                    p
                }
            };
            map.push(Extent {
                startoff: l,
                startblock: p,
                blockcount: fsbs,
                unwritten: false,
            });
        }
        // Free old blocks not kept.
        let mut freed = 0u64;
        for e in &old {
            for k in 0..e.blockcount {
                let l = e.startoff + k;
                let kept = map.iter().any(|m| {
                    m.startoff <= l
                        && l < m.startoff + m.blockcount
                        && m.startblock + (l - m.startoff) == e.startblock + k
                });
                if !kept {
                    self.free_blocks(e.startblock + k, 1);
                    freed += 1;
                }
            }
        }
        let mut ex: Vec<Extent> = Vec::new();
        for m in &map {
            match ex.last_mut() {
                Some(p)
                    if p.startoff + p.blockcount == m.startoff
                        && p.startblock + p.blockcount == m.startblock =>
                {
                    p.blockcount += m.blockcount
                }
                _ => ex.push(*m),
            }
        }
        {
            let b = self.inode_mut(ino)?;
            if b[5] == FMT_LOCAL {
                // The short-form entries go; put_extents lays the block map out.
                b[5] = FMT_EXTENTS;
                b[CORE..CORE + room].fill(0);
                put32(b, 76, 0);
            }
            let nb = u64::from_be_bytes(b[64..72].try_into().unwrap_or_default());
            put64(b, 64, (nb + allocated).saturating_sub(freed));
            put64(b, 56, (blocks.len() * dbs) as u64);
        }
        self.put_extents(ino, &ex)?;
        let uuid = meta_uuid(self.fs);
        let mut leaves: Vec<(u32, u32)> = Vec::new();
        let mut bests: Vec<u16> = Vec::new();
        for (db, ents) in blocks.iter().enumerate() {
            let off = self.fs.fsb_to_byte(map[db].startblock)?;
            let b = self.new_buf(
                off,
                dbs,
                if one_block {
                    Kind::DirBlock
                } else {
                    Kind::DirData
                },
            );
            put32(
                b,
                0,
                if one_block {
                    XFS_DIR3_BLOCK_MAGIC
                } else {
                    XFS_DIR3_DATA_MAGIC
                },
            );
            put64(b, 8, off / 512);
            b[24..40].copy_from_slice(&uuid);
            put64(b, 40, ino);
            let mut p = DATA_HDR;
            for (name, eino, ft) in ents {
                put64(b, p, *eino);
                b[p + 8] = name.len() as u8;
                b[p + 9..p + 9 + name.len()].copy_from_slice(name);
                b[p + 9 + name.len()] = *ft;
                let sz = entsize(name.len());
                put16(b, p + sz - 2, p as u16);
                leaves.push((da_hashname(name), ((db * dbs + p) / 8) as u32));
                p += sz;
            }
            let end = if one_block {
                dbs - 8 - leaves.len() * 8
            } else {
                dbs
            };
            let mut best = 0u16;
            if end > p {
                put16(b, p, 0xffff);
                put16(b, p + 2, (end - p) as u16);
                put16(b, end - 2, p as u16);
                put16(b, 48, p as u16);
                put16(b, 50, (end - p) as u16);
                best = (end - p) as u16;
            }
            bests.push(best);
            if one_block {
                leaves.sort();
                let n = leaves.len();
                for (k, (h, a)) in leaves.iter().enumerate() {
                    put32(b, end + k * 8, *h);
                    put32(b, end + k * 8 + 4, *a);
                }
                put32(b, dbs - 8, n as u32);
                put32(b, dbs - 4, 0);
            }
        }
        if node {
            leaves.sort();
            let each = leaves.len().div_ceil(nleafn);
            let nd = blocks.len();
            // The da node (root, level 1) at the start of the leaf space.
            let root_off = self.fs.fsb_to_byte(map[nd].startblock)?;
            let mut node_ents = Vec::new();
            for (k, chunk) in leaves.chunks(each).enumerate() {
                let dablk = leaf_lblk + (k as u64 + 1) * fsbs;
                let off = self.fs.fsb_to_byte(map[nd + 1 + k].startblock)?;
                let b = self.new_buf(off, dbs, Kind::DirLeafN);
                put32(
                    b,
                    0,
                    if k + 1 < nleafn {
                        (dablk + fsbs) as u32
                    } else {
                        0
                    },
                );
                put32(b, 4, if k > 0 { (dablk - fsbs) as u32 } else { 0 });
                put16(b, 8, XFS_DIR3_LEAFN_MAGIC);
                put64(b, 16, off / 512);
                b[32..48].copy_from_slice(&uuid);
                put64(b, 48, ino);
                put16(b, 56, chunk.len() as u16);
                for (j, (h, a)) in chunk.iter().enumerate() {
                    put32(b, LEAF_HDR + j * 8, *h);
                    put32(b, LEAF_HDR + j * 8 + 4, *a);
                }
                node_ents.push((chunk.last().map_or(0, |x| x.0), dablk as u32));
            }
            let b = self.new_buf(root_off, dbs, Kind::DaNode);
            put16(b, 8, XFS_DA3_NODE_MAGIC);
            put64(b, 16, root_off / 512);
            b[32..48].copy_from_slice(&uuid);
            put64(b, 48, ino);
            put16(b, 56, node_ents.len() as u16);
            put16(b, 58, 1);
            for (k, (h, before)) in node_ents.iter().enumerate() {
                put32(b, NODE_HDR + k * 8, *h);
                put32(b, NODE_HDR + k * 8 + 4, *before);
            }
            // Free index blocks: the longest free region of each data block.
            for (j, chunk) in bests.chunks(per_free).enumerate() {
                let off = self.fs.fsb_to_byte(map[nd + 1 + nleafn + j].startblock)?;
                let b = self.new_buf(off, dbs, Kind::DirFree);
                put32(b, 0, XFS_DIR3_FREE_MAGIC);
                put64(b, 8, off / 512);
                b[24..40].copy_from_slice(&uuid);
                put64(b, 40, ino);
                put32(b, 48, (j * per_free) as u32);
                put32(b, 52, chunk.len() as u32);
                put32(b, 56, chunk.len() as u32);
                for (k, v) in chunk.iter().enumerate() {
                    put16(b, FREE_HDR + 2 * k, *v);
                }
            }
        } else if !one_block {
            let leaf = map[blocks.len()].startblock;
            let off = self.fs.fsb_to_byte(leaf)?;
            let b = self.new_buf(off, dbs, Kind::DirLeaf);
            put16(b, 8, XFS_DIR3_LEAF1_MAGIC);
            put64(b, 16, off / 512);
            b[32..48].copy_from_slice(&uuid);
            put64(b, 48, ino);
            leaves.sort();
            put16(b, 56, leaves.len() as u16);
            for (k, (h, a)) in leaves.iter().enumerate() {
                put32(b, LEAF_HDR + k * 8, *h);
                put32(b, LEAF_HDR + k * 8 + 4, *a);
            }
            let nb = bests.len();
            for (k, v) in bests.iter().enumerate() {
                put16(b, dbs - 4 - 2 * nb + 2 * k, *v);
            }
            put32(b, dbs - 4, nb as u32);
        }
        Ok(())
    }

    /// Refuses directory forms this writer does not change (node form, B+tree forks).
    fn dir_form(&mut self, d: &Inode) -> Result<()> {
        // Every form is re-encoded whole from its entries, so any directory whose blocks are
        // all known can be changed: extent lists and block map B+trees of any depth.
        match d.di_format {
            ForkFormat::Local | ForkFormat::Extents => Ok(()),
            ForkFormat::Btree => {
                self.file_extents(d)?;
                Ok(())
            }
            ForkFormat::Dev => Err(Error::corrupt(format!(
                "XFS directory {}: device fork",
                d.ino
            ))),
        }
    }

    fn byte_to_fsb(&self, byte: u64) -> u64 {
        let bno = byte / u64::from(self.fs.sb.sb_blocksize);
        let agb = u64::from(self.fs.sb.sb_agblocks);
        ((bno / agb) << self.fs.sb.sb_agblklog) | (bno % agb)
    }
}
