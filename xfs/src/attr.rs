//! Extended attributes: short form in the inode, leaf blocks, node (dabtree) forms, and
//! remote values; and symlink targets (local and remote).

use vdisk_block::{Error, Result};

use crate::fork::{Extent, Fork};
use crate::inode::{ForkFormat, Inode};
use crate::{be16, be32, be64, verify_crc, Xfs};

/// v4 attribute leaf magic.
pub const XFS_ATTR_LEAF_MAGIC: u16 = 0xfbee;
/// v5 attribute leaf magic.
pub const XFS_ATTR3_LEAF_MAGIC: u16 = 0x3bee;
/// v4 dabtree node magic.
pub const XFS_DA_NODE_MAGIC: u16 = 0xfebe;
/// v5 dabtree node magic.
pub const XFS_DA3_NODE_MAGIC: u16 = 0x3ebe;
/// "XARM": a v5 remote attribute value block.
pub const XFS_ATTR3_RMT_MAGIC: u32 = 0x5841_524d;
/// "XSLM": a v5 remote symlink block.
pub const XFS_SYMLINK_MAGIC: u32 = 0x5853_4c4d;
/// Entry flag: the value is stored with the name.
pub const XFS_ATTR_LOCAL: u8 = 1 << 0;
/// Namespace flag: trusted.
pub const XFS_ATTR_ROOT: u8 = 1 << 1;
/// Namespace flag: security.
pub const XFS_ATTR_SECURE: u8 = 1 << 2;
/// Namespace flag: parent pointer.
pub const XFS_ATTR_PARENT: u8 = 1 << 3;
/// Entry flag: being set or removed; not visible.
pub const XFS_ATTR_INCOMPLETE: u8 = 1 << 7;
/// Deepest dabtree accepted (the kernel's XFS_DA_NODE_MAXDEPTH).
pub const MAX_DA_DEPTH: u32 = 5;
/// Longest symlink target (XFS_SYMLINK_MAXLEN).
pub const XFS_SYMLINK_MAXLEN: u64 = 1024;

/// One attribute: its full name ("security.selinux") and value.
#[derive(Debug, Clone)]
pub struct Xattr {
    /// Namespace prefix and name.
    pub name: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
}

fn full_name(flags: u8, name: &[u8]) -> Option<Vec<u8>> {
    let prefix: &[u8] = if flags & XFS_ATTR_PARENT != 0 {
        return None;
    } else if flags & XFS_ATTR_SECURE != 0 {
        b"security."
    } else if flags & XFS_ATTR_ROOT != 0 {
        b"trusted."
    } else {
        b"user."
    };
    let mut v = prefix.to_vec();
    v.extend_from_slice(name);
    Some(v)
}

impl Xfs {
    /// Every visible attribute of inode `i`.
    pub fn xattrs(&self, i: &Inode) -> Result<Vec<Xattr>> {
        let ino = i.ino;
        let mut out = Vec::new();
        match i.di_aformat {
            None => {}
            Some(ForkFormat::Local) => {
                let b = &i.attr_fork;
                let total = usize::from(be16(b, 0)).min(b.len());
                let count = usize::from(*b.get(2).unwrap_or(&0));
                let mut p = 4;
                for _ in 0..count {
                    let nl = usize::from(*b.get(p).ok_or_else(|| sf_bad(ino))?);
                    let vl = usize::from(*b.get(p + 1).ok_or_else(|| sf_bad(ino))?);
                    let flags = *b.get(p + 2).ok_or_else(|| sf_bad(ino))?;
                    let end = p + 3 + nl + vl;
                    if end > total {
                        return Err(sf_bad(ino));
                    }
                    if let Some(name) = full_name(flags, &b[p + 3..p + 3 + nl]) {
                        if flags & XFS_ATTR_INCOMPLETE == 0 {
                            out.push(Xattr {
                                name,
                                value: b[p + 3 + nl..end].to_vec(),
                            });
                        }
                    }
                    p = end;
                }
            }
            Some(ForkFormat::Extents) | Some(ForkFormat::Btree) => {
                let ex = self.extents(i, Fork::Attr)?;
                if ex.is_empty() {
                    // An attribute fork whose last attribute was removed.
                    return Ok(out);
                }
                let nblocks: u64 = ex.iter().map(|e| e.blockcount).sum();
                let mut blk = self.attr_first_leaf(i, &ex)?;
                let mut seen = 0u64;
                loop {
                    seen += 1;
                    if seen > nblocks {
                        return Err(Error::corrupt(format!(
                            "XFS inode {ino}: attribute leaf chain loops"
                        )));
                    }
                    let b = self.attr_block(i, &ex, blk)?;
                    self.attr_leaf(i, &ex, blk, &b, &mut out)?;
                    let forw = be32(&b, 0);
                    if forw == 0 {
                        break;
                    }
                    blk = forw;
                }
            }
            Some(ForkFormat::Dev) => {
                return Err(Error::corrupt(format!(
                    "XFS inode {ino}: attribute fork in device format"
                )))
            }
        }
        Ok(out)
    }

    fn attr_block(&self, i: &Inode, ex: &[Extent], blk: u32) -> Result<Vec<u8>> {
        let bs = u64::from(self.sb.sb_blocksize);
        let mut b = vec![0u8; bs as usize];
        if !ex
            .iter()
            .any(|e| e.startoff <= u64::from(blk) && u64::from(blk) < e.startoff + e.blockcount)
        {
            return Err(Error::corrupt(format!(
                "XFS inode {}: attribute block {blk} is not mapped",
                i.ino
            )));
        }
        self.read_mapped(ex, u64::from(blk) * bs, &mut b)?;
        if self.sb.has_crc() {
            verify_crc(&b, 12, &|| {
                format!("XFS inode {}: attribute block {blk}", i.ino)
            })?;
            if be64(&b, 48) != i.ino {
                return Err(Error::corrupt(format!(
                    "XFS inode {}: attribute block {blk} belongs to another inode",
                    i.ino
                )));
            }
        }
        Ok(b)
    }

    fn attr_first_leaf(&self, i: &Inode, ex: &[Extent]) -> Result<u32> {
        let crc = self.sb.has_crc();
        let (leaf, node, hdr) = if crc {
            (XFS_ATTR3_LEAF_MAGIC, XFS_DA3_NODE_MAGIC, 64)
        } else {
            (XFS_ATTR_LEAF_MAGIC, XFS_DA_NODE_MAGIC, 16)
        };
        let mut blk = 0u32;
        for _ in 0..=MAX_DA_DEPTH {
            let b = self.attr_block(i, ex, blk)?;
            let m = be16(&b, 8);
            if m == leaf {
                return Ok(blk);
            }
            if m != node || be16(&b, if crc { 56 } else { 12 }) == 0 {
                return Err(Error::corrupt(format!(
                    "XFS inode {}: attribute block {blk}: bad magic {m:#x}",
                    i.ino
                )));
            }
            // First entry: hashval, before.
            blk = be32(&b, hdr + 4);
        }
        Err(Error::corrupt(format!(
            "XFS inode {}: attribute tree deeper than {MAX_DA_DEPTH}",
            i.ino
        )))
    }

    fn attr_leaf(
        &self,
        i: &Inode,
        ex: &[Extent],
        blk: u32,
        b: &[u8],
        out: &mut Vec<Xattr>,
    ) -> Result<()> {
        let crc = self.sb.has_crc();
        let (magic, hdr) = if crc {
            (XFS_ATTR3_LEAF_MAGIC, 80)
        } else {
            (XFS_ATTR_LEAF_MAGIC, 32)
        };
        let bad = |what: &str| {
            Error::corrupt(format!("XFS inode {}: attribute leaf {blk}: {what}", i.ino))
        };
        if be16(b, 8) != magic {
            return Err(bad("bad magic"));
        }
        let base = if crc { 56 } else { 12 };
        let count = usize::from(be16(b, base));
        if hdr + count * 8 > b.len() {
            return Err(bad("too many entries"));
        }
        for k in 0..count {
            let e = hdr + k * 8;
            let nameidx = usize::from(be16(b, e + 4));
            let flags = b[e + 6];
            if flags & XFS_ATTR_INCOMPLETE != 0 {
                continue;
            }
            if flags & XFS_ATTR_LOCAL != 0 {
                let vl = usize::from(be16(b, nameidx));
                let nl = usize::from(*b.get(nameidx + 2).ok_or_else(|| bad("name out of block"))?);
                let s = nameidx + 3;
                if s + nl + vl > b.len() {
                    return Err(bad("local entry overruns the block"));
                }
                if let Some(name) = full_name(flags, &b[s..s + nl]) {
                    out.push(Xattr {
                        name,
                        value: b[s + nl..s + nl + vl].to_vec(),
                    });
                }
            } else {
                let valueblk = be32(b, nameidx);
                let vl = be32(b, nameidx + 4);
                let nl = usize::from(*b.get(nameidx + 8).ok_or_else(|| bad("name out of block"))?);
                let s = nameidx + 9;
                if s + nl > b.len() {
                    return Err(bad("remote entry overruns the block"));
                }
                if let Some(name) = full_name(flags, &b[s..s + nl]) {
                    let value = self.attr_remote(i, ex, valueblk, vl)?;
                    out.push(Xattr { name, value });
                }
            }
        }
        Ok(())
    }

    fn attr_remote(&self, i: &Inode, ex: &[Extent], blk: u32, len: u32) -> Result<Vec<u8>> {
        if len > 65536 {
            return Err(Error::corrupt(format!(
                "XFS inode {}: remote attribute value of {len} bytes",
                i.ino
            )));
        }
        let bs = u64::from(self.sb.sb_blocksize);
        let len = len as usize;
        if !self.sb.has_crc() {
            let mut v = vec![0u8; len];
            self.read_mapped(ex, u64::from(blk) * bs, &mut v)?;
            return Ok(v);
        }
        let mut v = Vec::with_capacity(len);
        let mut b = vec![0u8; bs as usize];
        let mut lblk = u64::from(blk);
        while v.len() < len {
            self.read_mapped(ex, lblk * bs, &mut b)?;
            let what = || format!("XFS inode {}: remote attribute block {lblk}", i.ino);
            if be32(&b, 0) != XFS_ATTR3_RMT_MAGIC {
                return Err(Error::corrupt(format!("{}: bad magic", what())));
            }
            verify_crc(&b, 12, &what)?;
            let off = be32(&b, 4) as usize;
            let n = be32(&b, 8) as usize;
            if off != v.len() || n == 0 || n > b.len() - 56 || off + n > len {
                return Err(Error::corrupt(format!("{}: bad offset or length", what())));
            }
            v.extend_from_slice(&b[56..56 + n]);
            lblk += 1;
        }
        Ok(v)
    }

    /// The target of symlink `i`.
    pub fn symlink_target(&self, i: &Inode) -> Result<Vec<u8>> {
        let len = i.di_size;
        if len == 0 || len > XFS_SYMLINK_MAXLEN {
            return Err(Error::corrupt(format!(
                "XFS inode {}: symlink length {len}",
                i.ino
            )));
        }
        let len = len as usize;
        match i.di_format {
            ForkFormat::Local => i
                .data_fork
                .get(..len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| Error::corrupt(format!("XFS inode {}: symlink overruns", i.ino))),
            ForkFormat::Extents | ForkFormat::Btree => {
                let ex = self.extents(i, Fork::Data)?;
                let bs = u64::from(self.sb.sb_blocksize);
                if !self.sb.has_crc() {
                    let mut v = vec![0u8; len];
                    self.read_mapped(&ex, 0, &mut v)?;
                    return Ok(v);
                }
                let mut v = Vec::with_capacity(len);
                let mut b = vec![0u8; bs as usize];
                let mut lblk = 0u64;
                while v.len() < len {
                    self.read_mapped(&ex, lblk * bs, &mut b)?;
                    let what = || format!("XFS inode {}: symlink block {lblk}", i.ino);
                    if be32(&b, 0) != XFS_SYMLINK_MAGIC {
                        return Err(Error::corrupt(format!("{}: bad magic", what())));
                    }
                    verify_crc(&b, 12, &what)?;
                    let n = be32(&b, 8) as usize;
                    if be32(&b, 4) as usize != v.len() || n == 0 || n > b.len() - 56 {
                        return Err(Error::corrupt(format!("{}: bad offset or length", what())));
                    }
                    let n = n.min(len - v.len());
                    v.extend_from_slice(&b[56..56 + n]);
                    lblk += 1;
                }
                Ok(v)
            }
            ForkFormat::Dev => Err(Error::corrupt(format!(
                "XFS inode {}: symlink in device format",
                i.ino
            ))),
        }
    }
}

fn sf_bad(ino: u64) -> Error {
    Error::corrupt(format!(
        "XFS inode {ino}: short form attributes overrun the fork"
    ))
}
