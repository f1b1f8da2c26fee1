//! B+trees of any depth, edited by relaying out the part of each level that changed.
//!
//! Every XFS B+tree the writer maintains (bnobt, cntbt, inobt, finobt and the bmbt of a data
//! fork) goes through here. A transaction works on the tree's records in memory; at the end
//! the tree is read level by level ([`walk`]) and [`relayout`] writes the new records:
//!
//! ```text
//!   level 0: old leaves  [A][B][C][D][E]      records changed inside C and D
//!            new leaves  [A][B][C'][D'][D''][E]   A, B, E kept (siblings fixed),
//!                                                   C, D rewritten, one block added
//!   level 1: entries (first key, pointer) of the new leaves, laid out the same way
//!   ...      until one block is left (AG trees: the root, named in the AGF/AGI) or the
//!            entries fit in the inode (bmbt: the root in the data fork)
//! ```
//!
//! So inserts split blocks, deletes merge them, the root grows and shrinks, and only the blocks
//! whose contents change are logged. Every block but the root holds between half and all of
//! its maximum (the kernel's minrecs/maxrecs); keys are the first key of the child, sibling
//! pointers chain each level, and v5 headers carry the block's own address, the filesystem's
//! UUID and the owner (AG number or inode). Blocks come from and go back to a [`Source`]: the
//! AGFL for the free-space trees, the free-space trees for the others.

use std::collections::HashSet;

use vdisk_block::{Error, Result};

use super::alloc::agb_byte;
use super::inode::{put16, put32, put64};
use super::tx::{Kind, Tx};
use crate::{be16, be32, be64};

/// What a tree's blocks look like.
#[derive(Debug, Clone)]
pub struct Geo {
    /// The v5 magic of its blocks.
    pub magic: u32,
    /// Long-form headers and 64-bit pointers (bmbt); short-form (AG trees) otherwise.
    pub long: bool,
    /// Bytes per record.
    pub recsize: usize,
    /// Bytes per key.
    pub keysize: usize,
    /// Block size.
    pub bs: usize,
    /// The owner in each block header: the AG number (short form) or the inode (long form).
    pub owner: u64,
    /// The UUID v5 metadata carries.
    pub uuid: [u8; 16],
    /// For short-form trees, the AG whose block numbers the pointers are.
    pub agno: u32,
    /// The key of a leaf record.
    pub key_of: fn(&[u8]) -> Vec<u8>,
    /// The tree's name, for errors.
    pub what: String,
}

impl Geo {
    fn hdr(&self) -> usize {
        if self.long {
            72
        } else {
            56
        }
    }
    fn ptrsize(&self) -> usize {
        if self.long {
            8
        } else {
            4
        }
    }
    /// Records per leaf block.
    pub fn leaf_max(&self) -> usize {
        (self.bs - self.hdr()) / self.recsize
    }
    /// Entries per node block.
    pub fn node_max(&self) -> usize {
        (self.bs - self.hdr()) / (self.keysize + self.ptrsize())
    }
    fn kind(&self) -> Kind {
        if self.long {
            Kind::LongBtree
        } else {
            Kind::ShortBtree
        }
    }
    fn null(&self) -> u64 {
        if self.long {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        }
    }
    /// The byte offset of block `ptr`.
    pub fn byte_of(&self, tx: &Tx<'_>, ptr: u64) -> Result<u64> {
        if self.long {
            tx.fs.fsb_to_byte(ptr)
        } else {
            if ptr == 0 || ptr >= u64::from(tx.fs.sb.sb_agblocks) {
                return Err(Error::corrupt(format!(
                    "XFS: {} points at block {ptr}, outside AG {}",
                    self.what, self.agno
                )));
            }
            Ok(agb_byte(tx.fs, self.agno, ptr as u32))
        }
    }
    fn encode_ptr(&self, p: u64) -> Vec<u8> {
        if self.long {
            p.to_be_bytes().to_vec()
        } else {
            (p as u32).to_be_bytes().to_vec()
        }
    }
    fn decode_ptr(&self, b: &[u8]) -> u64 {
        if self.long {
            be64(b, 0)
        } else {
            u64::from(be32(b, 0))
        }
    }
}

/// A tree as it stands: `levels[0]` the leaves, then each level of nodes, left to right;
/// each block as (pointer, entries). Leaf entries are records, node entries key ++ pointer.
#[derive(Debug, Default, Clone)]
pub struct Shape {
    /// The blocks of each level.
    pub levels: Vec<Vec<(u64, Vec<Vec<u8>>)>>,
}

impl Shape {
    /// The leaf records, in key order.
    pub fn records(&self) -> Vec<Vec<u8>> {
        self.levels
            .first()
            .map(|l| l.iter().flat_map(|(_, e)| e.iter().cloned()).collect())
            .unwrap_or_default()
    }
    /// Every block of the tree.
    pub fn blocks(&self) -> Vec<u64> {
        self.levels
            .iter()
            .flat_map(|l| l.iter().map(|(p, _)| *p))
            .collect()
    }
}

/// Where a tree's new blocks come from and its freed blocks go.
pub trait Source {
    /// One block for the tree.
    fn alloc(&mut self, tx: &mut Tx<'_>) -> Result<u64>;
    /// A block the tree no longer uses.
    fn free(&mut self, tx: &mut Tx<'_>, ptr: u64) -> Result<()>;
}

/// Counts what a layout would take, without changing anything.
#[derive(Debug, Default)]
pub struct Dry {
    /// Blocks it would allocate.
    pub allocs: usize,
    /// Blocks it would free.
    pub frees: usize,
}

impl Source for Dry {
    fn alloc(&mut self, _tx: &mut Tx<'_>) -> Result<u64> {
        self.allocs += 1;
        // Never a real block: compares unequal to every pointer on disk.
        Ok(u64::MAX - 1 - self.allocs as u64)
    }
    fn free(&mut self, _tx: &mut Tx<'_>, _ptr: u64) -> Result<()> {
        self.frees += 1;
        Ok(())
    }
}

/// Reads a tree whose top blocks (at level `top_level`) are `top`.
pub fn walk(tx: &mut Tx<'_>, g: &Geo, top: &[u64], top_level: usize) -> Result<Shape> {
    if top_level > 9 {
        return Err(Error::corrupt(format!(
            "XFS: {} has {} levels",
            g.what,
            top_level + 1
        )));
    }
    let mut levels = vec![Vec::new(); top_level + 1];
    let mut cur: Vec<u64> = top.to_vec();
    let mut seen = HashSet::new();
    let hdr = g.hdr();
    for level in (0..=top_level).rev() {
        let mut next = Vec::new();
        for &p in &cur {
            if !seen.insert(p) || seen.len() > 1 << 22 {
                return Err(Error::corrupt(format!(
                    "XFS: {} uses block {p} twice",
                    g.what
                )));
            }
            let off = g.byte_of(tx, p)?;
            let b = tx.buf(off, g.bs, g.kind())?;
            let n = usize::from(be16(b, 6));
            let owner = if g.long {
                be64(b, 56)
            } else {
                u64::from(be32(b, 48))
            };
            let max = if level == 0 {
                g.leaf_max()
            } else {
                g.node_max()
            };
            if be32(b, 0) != g.magic || usize::from(be16(b, 4)) != level || n > max {
                return Err(Error::corrupt(format!(
                    "XFS: {} block {p} is not a valid level {level} block",
                    g.what
                )));
            }
            if owner != g.owner {
                return Err(Error::corrupt(format!(
                    "XFS: {} block {p} belongs to another owner ({owner})",
                    g.what
                )));
            }
            let mut ents = Vec::with_capacity(n);
            if level == 0 {
                for k in 0..n {
                    ents.push(b[hdr + k * g.recsize..hdr + (k + 1) * g.recsize].to_vec());
                }
            } else {
                let ks = g.keysize;
                let ps = g.ptrsize();
                let pbase = hdr + max * ks;
                for k in 0..n {
                    let mut e = b[hdr + k * ks..hdr + (k + 1) * ks].to_vec();
                    let pb = &b[pbase + k * ps..pbase + (k + 1) * ps];
                    next.push(g.decode_ptr(pb));
                    e.extend_from_slice(pb);
                    ents.push(e);
                }
            }
            levels[level].push((p, ents));
        }
        cur = next;
    }
    Ok(Shape { levels })
}

/// Where the tree's top goes.
#[derive(Debug, Clone, Copy)]
pub enum Top {
    /// A root block (AG trees): the levels go up until one block is left.
    Block,
    /// A root in the inode holding up to this many entries (bmbt).
    Inode(usize),
}

/// The tree after [`relayout`].
#[derive(Debug, Default)]
pub struct Out {
    /// The root block ([`Top::Block`]).
    pub root: u64,
    /// Levels of blocks ([`Top::Block`]: the tree's height; [`Top::Inode`]: the level of the
    /// root in the inode).
    pub height: usize,
    /// The entries of the root in the inode ([`Top::Inode`]): key ++ pointer.
    pub top: Vec<Vec<u8>>,
    /// Blocks the tree holds now.
    pub blocks: usize,
}

/// One block of a new level: its pointer (None: to allocate), its entries, and whether its
/// contents are those on disk (only the sibling pointers may need fixing).
struct Planned {
    ptr: Option<u64>,
    range: std::ops::Range<usize>,
    kept: bool,
}

/// Lays `new` out over the blocks `old` of one level holding up to `max` entries each;
/// returns the new blocks and the old blocks left over.
fn plan_level(
    old: &[(u64, Vec<Vec<u8>>)],
    new: &[Vec<u8>],
    max: usize,
) -> (Vec<Planned>, Vec<u64>) {
    if new.len() <= max {
        let kept = old.len() == 1 && old[0].1 == new;
        let ptr = old.first().map(|(p, _)| *p);
        return (
            vec![Planned {
                ptr,
                range: 0..new.len(),
                kept,
            }],
            old.iter().skip(1).map(|(p, _)| *p).collect(),
        );
    }
    let min = max / 2;
    // Blocks at either end whose entries did not change are kept.
    let (mut i, mut pos) = (0usize, 0usize);
    while i < old.len() {
        let e = &old[i].1;
        if e.len() >= min
            && !e.is_empty()
            && new.len() - pos >= e.len()
            && new[pos..pos + e.len()] == e[..]
        {
            pos += e.len();
            i += 1;
        } else {
            break;
        }
    }
    let (mut j, mut end) = (old.len(), new.len());
    while j > i {
        let e = &old[j - 1].1;
        if e.len() >= min
            && !e.is_empty()
            && end - pos >= e.len()
            && new[end - e.len()..end] == e[..]
        {
            end -= e.len();
            j -= 1;
        } else {
            break;
        }
    }
    // A middle too small for a block of its own takes in a neighbour.
    while end > pos && end - pos < min {
        if i > 0 {
            i -= 1;
            pos -= old[i].1.len();
        } else if j < old.len() {
            end += old[j].1.len();
            j += 1;
        } else {
            break;
        }
    }
    let mut out: Vec<Planned> = Vec::new();
    let mut p = 0;
    for (ptr, e) in &old[..i] {
        out.push(Planned {
            ptr: Some(*ptr),
            range: p..p + e.len(),
            kept: true,
        });
        p += e.len();
    }
    let m = end - pos;
    let mut reuse = old[i..j].iter().map(|(p, _)| *p);
    if m > 0 {
        let k = m.div_ceil(max);
        let (base, extra) = (m / k, m % k);
        let mut s = pos;
        for b in 0..k {
            let len = base + usize::from(b < extra);
            out.push(Planned {
                ptr: reuse.next(),
                range: s..s + len,
                kept: false,
            });
            s += len;
        }
    }
    let surplus: Vec<u64> = reuse.collect();
    let mut p = end;
    for (ptr, e) in &old[j..] {
        out.push(Planned {
            ptr: Some(*ptr),
            range: p..p + e.len(),
            kept: true,
        });
        p += e.len();
    }
    (out, surplus)
}

/// Writes `recs` as the tree whose old shape is `old`, taking blocks from and giving them back
/// to `src`. With `write` false nothing is written (a [`Dry`] source counts the blocks).
pub fn relayout(
    tx: &mut Tx<'_>,
    g: &Geo,
    old: &Shape,
    recs: Vec<Vec<u8>>,
    top: Top,
    src: &mut dyn Source,
    write: bool,
) -> Result<Out> {
    let mut entries = recs;
    let mut blocks = 0usize;
    let hdr = g.hdr();
    let empty = Vec::new();
    let mut level = 0usize;
    loop {
        let old_l = old.levels.get(level).unwrap_or(&empty);
        if let Top::Inode(rootmax) = top {
            if level >= 1 && entries.len() <= rootmax {
                for l in old.levels.iter().skip(level) {
                    for (p, _) in l {
                        free_block(tx, g, src, *p, write)?;
                    }
                }
                return Ok(Out {
                    root: 0,
                    height: level,
                    top: entries,
                    blocks,
                });
            }
        }
        if level > 9 {
            return Err(Error::unsupported(format!(
                "XFS: {} would need more than 10 levels",
                g.what
            )));
        }
        let max = if level == 0 {
            g.leaf_max()
        } else {
            g.node_max()
        };
        let (plan, surplus) = plan_level(old_l, &entries, max);
        for p in surplus {
            free_block(tx, g, src, p, write)?;
        }
        let mut ptrs = Vec::with_capacity(plan.len());
        for b in &plan {
            ptrs.push(match b.ptr {
                Some(p) => p,
                None => src.alloc(tx)?,
            });
        }
        blocks += plan.len();
        if write {
            for (k, b) in plan.iter().enumerate() {
                let left = if k == 0 { g.null() } else { ptrs[k - 1] };
                let right = ptrs.get(k + 1).copied().unwrap_or(g.null());
                let off = g.byte_of(tx, ptrs[k])?;
                let buf = if b.kept {
                    tx.buf(off, g.bs, g.kind())?
                } else {
                    let buf = tx.new_buf(off, g.bs, g.kind());
                    put32(buf, 0, g.magic);
                    put16(buf, 4, level as u16);
                    put16(buf, 6, b.range.len() as u16);
                    if g.long {
                        put64(buf, 24, off / 512);
                        buf[40..56].copy_from_slice(&g.uuid);
                        put64(buf, 56, g.owner);
                    } else {
                        put64(buf, 16, off / 512);
                        buf[32..48].copy_from_slice(&g.uuid);
                        put32(buf, 48, g.owner as u32);
                    }
                    let ents = &entries[b.range.clone()];
                    if level == 0 {
                        for (j, e) in ents.iter().enumerate() {
                            buf[hdr + j * g.recsize..hdr + (j + 1) * g.recsize].copy_from_slice(e);
                        }
                    } else {
                        let (ks, ps) = (g.keysize, g.ptrsize());
                        let pbase = hdr + max * ks;
                        for (j, e) in ents.iter().enumerate() {
                            buf[hdr + j * ks..hdr + (j + 1) * ks].copy_from_slice(&e[..ks]);
                            buf[pbase + j * ps..pbase + (j + 1) * ps].copy_from_slice(&e[ks..]);
                        }
                    }
                    buf
                };
                if g.long {
                    put64(buf, 8, left);
                    put64(buf, 16, right);
                } else {
                    put32(buf, 8, left as u32);
                    put32(buf, 12, right as u32);
                }
            }
        }
        if matches!(top, Top::Block) && plan.len() == 1 {
            for l in old.levels.iter().skip(level + 1) {
                for (p, _) in l {
                    free_block(tx, g, src, *p, write)?;
                }
            }
            return Ok(Out {
                root: ptrs[0],
                height: level + 1,
                top: Vec::new(),
                blocks,
            });
        }
        let mut up = Vec::with_capacity(plan.len());
        for (b, p) in plan.iter().zip(&ptrs) {
            let first = entries
                .get(b.range.start)
                .ok_or_else(|| Error::invalid(format!("XFS: {}: an empty block", g.what)))?;
            let mut e = if level == 0 {
                (g.key_of)(first)
            } else {
                first[..g.keysize].to_vec()
            };
            e.extend_from_slice(&g.encode_ptr(*p));
            up.push(e);
        }
        entries = up;
        level += 1;
    }
}

fn free_block(tx: &mut Tx<'_>, g: &Geo, src: &mut dyn Source, p: u64, write: bool) -> Result<()> {
    if write {
        let off = g.byte_of(tx, p)?;
        tx.drop_buf(off);
    }
    src.free(tx, p)
}

/// The kernel's `xfs_btree_compute_maxlevels`: the height a tree of `len` records reaches with
/// every block at its minimum.
pub fn max_levels(leaf_min: usize, node_min: usize, len: u64) -> u32 {
    let mut blocks = len.div_ceil(leaf_min.max(1) as u64);
    let mut levels = 1;
    while blocks > 1 {
        blocks = blocks.div_ceil(node_min.max(2) as u64);
        levels += 1;
    }
    levels
}
