//! Directory contents, re-encoded whole on each change: short form inside the inode while the
//! entries fit there, one directory block (`XDB3`: entries, one free region, the hash-sorted
//! leaf array and the tail) while they fit in one block. Conversions both ways happen as
//! entries come and go. Leaf and node directories are refused by name.

use vdisk_block::{Error, Result};

use super::alloc::meta_uuid;
use super::inode::{put16, put32, put64, CORE, FMT_EXTENTS, FMT_LOCAL};
use super::tx::{Kind, Tx};
use crate::dir::XFS_DIR3_BLOCK_MAGIC;
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

impl Tx<'_> {
    /// The directory block size in bytes.
    pub fn dirblk(&self) -> usize {
        (self.fs.sb.sb_blocksize as usize) << self.fs.sb.sb_dirblklog
    }

    /// The contents of directory `d` (as on the device: call before changing it in this
    /// transaction). Leaf and node directories are refused.
    pub fn dir_read(&mut self, d: &Inode) -> Result<DirList> {
        if !d.is_dir() {
            return Err(vdisk_guestfs::fs::errno_error(
                "dir",
                vdisk_guestfs::fs::errno::ENOTDIR,
            ));
        }
        if d.di_format != ForkFormat::Local
            && (d.di_format != ForkFormat::Extents || d.di_size != self.dirblk() as u64)
        {
            return Err(Error::unsupported(format!(
                "XFS directory {}: changing leaf or node form directories is not supported yet",
                d.ino
            )));
        }
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
            let freed = self.dir_free_blocks(&old_ex);
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
        let used: usize = DATA_HDR
            + entsize(1)
            + entsize(2)
            + list
                .entries
                .iter()
                .map(|e| entsize(e.name.len()))
                .sum::<usize>();
        let leaf = (list.entries.len() + 2) * 8 + 8;
        if used + leaf > dbs {
            return Err(Error::unsupported(format!(
                "XFS directory {ino}: its entries outgrow one directory block; leaf directories are not supported yet"
            )));
        }
        let fsbs = (dbs / self.fs.sb.sb_blocksize as usize) as u32;
        let fsb = if d.di_format == ForkFormat::Extents
            && old_ex.len() == 1
            && old_ex[0].startoff == 0
            && old_ex[0].blockcount == u64::from(fsbs)
        {
            old_ex[0].startblock
        } else {
            if d.di_format != ForkFormat::Local {
                return Err(Error::unsupported(format!(
                    "XFS directory {ino}: unexpected block layout; not changed"
                )));
            }
            let near = self.fs.inode_offset(ino)? / u64::from(self.fs.sb.sb_blocksize);
            let near = self.byte_to_fsb(near * u64::from(self.fs.sb.sb_blocksize));
            let (fsb, got) = self.alloc_blocks(fsbs, Some(near), 1)?;
            if got != fsbs {
                return Err(Error::unsupported(
                    "XFS: no contiguous free space for a directory block",
                ));
            }
            let b = self.inode_mut(ino)?;
            b[5] = FMT_EXTENTS;
            let nb = u64::from_be_bytes(b[64..72].try_into().unwrap_or_default());
            put64(b, 64, nb + u64::from(fsbs));
            put64(b, 56, dbs as u64);
            let room = d.data_fork.len();
            b[CORE..CORE + room].fill(0);
            self.put_extents(
                ino,
                &[Extent {
                    startoff: 0,
                    startblock: fsb,
                    blockcount: u64::from(fsbs),
                    unwritten: false,
                }],
            )?;
            fsb
        };
        let off = self.fs.fsb_to_byte(fsb)?;
        let uuid = meta_uuid(self.fs);
        let b = self.new_buf(off, dbs, Kind::DirBlock);
        put32(b, 0, XFS_DIR3_BLOCK_MAGIC);
        put64(b, 8, off / 512);
        b[24..40].copy_from_slice(&uuid);
        put64(b, 40, ino);
        let mut leaves: Vec<(u32, u32)> = Vec::new();
        let mut p = DATA_HDR;
        let mut put_ent = |b: &mut Vec<u8>, name: &[u8], eino: u64, ft: u8| {
            put64(b, p, eino);
            b[p + 8] = name.len() as u8;
            b[p + 9..p + 9 + name.len()].copy_from_slice(name);
            b[p + 9 + name.len()] = ft;
            let sz = entsize(name.len());
            put16(b, p + sz - 2, p as u16);
            leaves.push((da_hashname(name), (p / 8) as u32));
            p += sz;
        };
        put_ent(b, b".", ino, 2);
        put_ent(b, b"..", list.parent, 2);
        for e in &list.entries {
            put_ent(b, &e.name, e.ino, e.ftype);
        }
        let n = leaves.len();
        let leaf_start = dbs - 8 - n * 8;
        if leaf_start > p {
            put16(b, p, 0xffff);
            put16(b, p + 2, (leaf_start - p) as u16);
            put16(b, leaf_start - 2, p as u16);
            put16(b, 48, p as u16);
            put16(b, 50, (leaf_start - p) as u16);
        }
        leaves.sort();
        for (k, (h, a)) in leaves.iter().enumerate() {
            put32(b, leaf_start + k * 8, *h);
            put32(b, leaf_start + k * 8 + 4, *a);
        }
        put32(b, dbs - 8, n as u32);
        put32(b, dbs - 4, 0);
        Ok(())
    }

    fn byte_to_fsb(&self, byte: u64) -> u64 {
        let bno = byte / u64::from(self.fs.sb.sb_blocksize);
        let agb = u64::from(self.fs.sb.sb_agblocks);
        ((bno / agb) << self.fs.sb.sb_agblklog) | (bno % agb)
    }

    /// Frees a directory's blocks (going back to short form); returns the count.
    fn dir_free_blocks(&mut self, ex: &[Extent]) -> u64 {
        let mut n = 0;
        for e in ex {
            self.free_blocks(e.startblock, e.blockcount as u32);
            n += e.blockcount;
        }
        n
    }
}
