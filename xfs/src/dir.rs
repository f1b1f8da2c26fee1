//! Directories (version 2 and 3): short form in the inode, and block, leaf and node forms,
//! whose entries all live in the data blocks below `XFS_DIR2_LEAF_OFFSET`; listing and lookup
//! scan those blocks (the hash index is not needed to be correct).

use vdisk_block::{Error, Result};

use crate::fork::Fork;
use crate::inode::{ForkFormat, Inode};
use crate::{be16, be32, be64, verify_crc, Xfs};

/// "XD2B": a v4 single-block directory.
pub const XFS_DIR2_BLOCK_MAGIC: u32 = 0x5844_3242;
/// "XD2D": a v4 directory data block.
pub const XFS_DIR2_DATA_MAGIC: u32 = 0x5844_3244;
/// "XDB3": a v5 single-block directory.
pub const XFS_DIR3_BLOCK_MAGIC: u32 = 0x5844_4233;
/// "XDD3": a v5 directory data block.
pub const XFS_DIR3_DATA_MAGIC: u32 = 0x5844_4433;
/// Byte offset where directory leaf blocks start; data blocks lie below it.
pub const XFS_DIR2_LEAF_OFFSET: u64 = 32 << 30;
/// A free region's tag in a data block.
const XFS_DIR2_DATA_FREE_TAG: u16 = 0xffff;

/// One directory entry as stored.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The name.
    pub name: Vec<u8>,
    /// Its inode.
    pub ino: u64,
    /// The ftype byte (0 when the filesystem does not record it).
    pub ftype: u8,
    /// Cookie after this entry.
    pub cookie: u64,
}

/// Cookies: 1 after ".", 2 after "..", then 3 + (byte offset in the directory's data) / 8.
fn cookie_of(byte: u64) -> u64 {
    3 + byte / 8
}

impl Xfs {
    /// Calls `f` for each entry of directory `d` (without "." and "..") whose cookie is
    /// greater than `after`, until it returns false.
    pub fn dir_walk(&self, d: &Inode, after: u64, f: &mut dyn FnMut(Entry) -> bool) -> Result<()> {
        let ino = d.ino;
        let ftype = self.sb.has_ftype();
        match d.di_format {
            ForkFormat::Local => {
                let b = &d.data_fork;
                let count = usize::from(*b.first().unwrap_or(&0));
                let i8count = *b.get(1).unwrap_or(&0);
                let isz = if i8count > 0 { 8 } else { 4 };
                let mut p = 2 + isz;
                for _ in 0..count {
                    let namelen = usize::from(*b.get(p).ok_or_else(|| sf_short(ino))?);
                    let off = u64::from(be16(b, p + 1));
                    let name = b.get(p + 3..p + 3 + namelen).ok_or_else(|| sf_short(ino))?;
                    let mut q = p + 3 + namelen;
                    let ft = if ftype {
                        q += 1;
                        *b.get(q - 1).ok_or_else(|| sf_short(ino))?
                    } else {
                        0
                    };
                    if q + isz > b.len() || namelen == 0 {
                        return Err(sf_short(ino));
                    }
                    let child = if isz == 8 {
                        be64(b, q)
                    } else {
                        u64::from(be32(b, q))
                    };
                    p = q + isz;
                    let cookie = cookie_of(off);
                    if cookie <= after {
                        continue;
                    }
                    let e = Entry {
                        name: name.to_vec(),
                        ino: child,
                        ftype: ft,
                        cookie,
                    };
                    if !f(e) {
                        return Ok(());
                    }
                }
                Ok(())
            }
            ForkFormat::Extents | ForkFormat::Btree => {
                let ex = self.extents(d, Fork::Data)?;
                let dbs = u64::from(self.sb.dir_block_size());
                let bs = u64::from(self.sb.sb_blocksize);
                let single = d.di_size == dbs;
                // Directory blocks holding data, in logical order.
                let mut blocks: Vec<u64> = Vec::new();
                for e in &ex {
                    let s = e.startoff.saturating_mul(bs);
                    let t = s.saturating_add(e.blockcount.saturating_mul(bs));
                    let mut b = s / dbs * dbs;
                    while b < t && b < XFS_DIR2_LEAF_OFFSET {
                        if blocks.last() != Some(&b) && b + dbs > after.saturating_sub(3) * 8 {
                            blocks.push(b);
                        }
                        b += dbs;
                        if blocks.len() > (1 << 24) {
                            return Err(Error::corrupt(format!(
                                "XFS directory {ino}: too many data blocks"
                            )));
                        }
                    }
                }
                let mut buf = vec![0u8; dbs as usize];
                for b in blocks {
                    self.read_mapped(&ex, b, &mut buf)?;
                    if !self.dir_data_block(ino, &buf, b, single, ftype, after, f)? {
                        return Ok(());
                    }
                }
                Ok(())
            }
            ForkFormat::Dev => Err(Error::corrupt(format!("XFS directory {ino}: device fork"))),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dir_data_block(
        &self,
        ino: u64,
        b: &[u8],
        at: u64,
        single: bool,
        ftype: bool,
        after: u64,
        f: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<bool> {
        let crc = self.sb.has_crc();
        let magic = be32(b, 0);
        let what = || format!("XFS directory {ino}: data block at {at:#x}");
        let (is_block, hdr) = match (magic, crc) {
            (XFS_DIR2_BLOCK_MAGIC, false) => (true, 16),
            (XFS_DIR2_DATA_MAGIC, false) => (false, 16),
            (XFS_DIR3_BLOCK_MAGIC, true) => (true, 64),
            (XFS_DIR3_DATA_MAGIC, true) => (false, 64),
            _ => return Err(Error::corrupt(format!("{}: bad magic {magic:#x}", what()))),
        };
        if crc {
            verify_crc(b, 4, &what)?;
            if be64(b, 40) != ino {
                return Err(Error::corrupt(format!(
                    "{}: belongs to another inode",
                    what()
                )));
            }
        }
        if is_block != single {
            return Err(Error::corrupt(format!("{}: block form mismatch", what())));
        }
        let mut end = b.len();
        if is_block {
            let count = be32(b, end - 8) as usize;
            end = count
                .checked_mul(8)
                .and_then(|l| (end - 8).checked_sub(l))
                .filter(|&e| e >= hdr)
                .ok_or_else(|| Error::corrupt(format!("{}: bad leaf count {count}", what())))?;
        }
        let mut p = hdr;
        while p < end {
            if be16(b, p) == XFS_DIR2_DATA_FREE_TAG {
                let len = usize::from(be16(b, p + 2));
                if len < 8 || len % 8 != 0 || p + len > end {
                    return Err(Error::corrupt(format!(
                        "{}: bad free region at {p}",
                        what()
                    )));
                }
                p += len;
                continue;
            }
            let child = be64(b, p);
            let namelen = usize::from(*b.get(p + 8).unwrap_or(&0));
            let raw = 8 + 1 + namelen + usize::from(ftype) + 2;
            let len = raw.div_ceil(8) * 8;
            if namelen == 0 || p + len > end {
                return Err(Error::corrupt(format!("{}: bad entry at {p}", what())));
            }
            let name = &b[p + 9..p + 9 + namelen];
            let ft = if ftype { b[p + 9 + namelen] } else { 0 };
            let cookie = cookie_of(at + p as u64);
            p += len;
            if name == b"." || name == b".." || cookie <= after {
                continue;
            }
            let e = Entry {
                name: name.to_vec(),
                ino: child,
                ftype: ft,
                cookie,
            };
            if !f(e) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The parent of directory `d` (from its short form header or its ".." entry).
    pub fn dir_parent(&self, d: &Inode) -> Result<u64> {
        if d.di_format == ForkFormat::Local {
            let b = &d.data_fork;
            return Ok(if b.get(1).copied().unwrap_or(0) > 0 {
                be64(b, 2)
            } else {
                u64::from(be32(b, 2))
            });
        }
        let hdr = if self.sb.has_crc() { 64 } else { 16 };
        let ex = self.extents(d, Fork::Data)?;
        let mut buf = vec![0u8; 32];
        // ".." is the second entry of the first data block: "." takes 16 bytes.
        self.read_mapped(&ex, hdr, &mut buf)?;
        let dotdot = 16;
        if buf[8] != 1
            || buf[9] != b'.'
            || buf[dotdot + 8] != 2
            || &buf[dotdot + 9..dotdot + 11] != b".."
        {
            return Err(Error::corrupt(format!(
                "XFS directory {}: first block does not start with . and ..",
                d.ino
            )));
        }
        Ok(be64(&buf, dotdot))
    }

    /// The inode named `name` in directory `d`.
    pub fn dir_lookup(&self, d: &Inode, name: &[u8]) -> Result<Option<u64>> {
        let mut found = None;
        self.dir_walk(d, 0, &mut |e| {
            if e.name == name {
                found = Some(e.ino);
                false
            } else {
                true
            }
        })?;
        Ok(found)
    }
}

fn sf_short(ino: u64) -> Error {
    Error::corrupt(format!(
        "XFS directory {ino}: short form entries overrun the inode"
    ))
}
