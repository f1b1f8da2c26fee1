//! Extended attributes in short form (inside the inode, after `di_forkoff`): set, replace,
//! remove, with the attribute fork created, moved and removed as the kernel sizes it
//! (`xfs_attr_shortform_bytesfit`). Leaf attribute forks, and values or names too long for
//! the short form, are refused by name.

use vdisk_block::{Error, Result};
use vdisk_fs::{errno, errno_error, XATTR_CREATE, XATTR_REPLACE};

use super::inode::{check_writable, put16, CORE, FMT_EXTENTS, FMT_LOCAL};
use super::tx::Tx;
use crate::attr::{XFS_ATTR_ROOT, XFS_ATTR_SECURE};
use crate::inode::ForkFormat;

/// `XFS_BMDR_SPACE_CALC(MINDBTPTRS)`: the least room a data fork keeps (3 B+tree pointers).
const MIN_DATA_FORK: usize = 4 + 3 * 16;
/// `XFS_BMDR_SPACE_CALC(MINABTPTRS)`: the least room an attribute fork keeps (2 pointers).
const MIN_ATTR_FORK: usize = 4 + 2 * 16;

/// (namespace flags, name inside the namespace) of a full attribute name.
fn split_name(full: &[u8]) -> Result<(u8, &[u8])> {
    let (flags, rest) = if let Some(r) = full.strip_prefix(b"user.") {
        (0, r)
    } else if let Some(r) = full.strip_prefix(b"trusted.") {
        (XFS_ATTR_ROOT, r)
    } else if let Some(r) = full.strip_prefix(b"security.") {
        (XFS_ATTR_SECURE, r)
    } else {
        return Err(errno_error("xattr", errno::EOPNOTSUPP));
    };
    if rest.is_empty() {
        return Err(errno_error("xattr", errno::EINVAL));
    }
    if rest.len() > 255 {
        return Err(errno_error("xattr", ERANGE));
    }
    Ok((flags, rest))
}

/// Linux's ERANGE: an attribute name too long.
const ERANGE: i32 = 34;

struct SfAttr {
    flags: u8,
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Tx<'_> {
    /// Sets (`Some`) or removes (`None`) attribute `full` of `ino`.
    pub fn set_xattr(
        &mut self,
        ino: u64,
        full: &[u8],
        value: Option<&[u8]>,
        flags: u32,
    ) -> Result<()> {
        let (ns, name) = split_name(full)?;
        let i = self.inode(ino)?;
        if i.di_mode == 0 {
            return Err(errno_error("xattr", errno::ENOENT));
        }
        check_writable(&i)?;
        let mut list: Vec<SfAttr> = Vec::new();
        match i.di_aformat {
            None => {}
            Some(ForkFormat::Local) => {
                let a = &i.attr_fork;
                let count = usize::from(*a.get(2).unwrap_or(&0));
                let mut p = 4;
                for _ in 0..count {
                    let bad = || {
                        Error::corrupt(format!(
                            "XFS inode {ino}: short form attributes overrun the fork"
                        ))
                    };
                    let nl = usize::from(*a.get(p).ok_or_else(bad)?);
                    let vl = usize::from(*a.get(p + 1).ok_or_else(bad)?);
                    let fl = *a.get(p + 2).ok_or_else(bad)?;
                    let n = a.get(p + 3..p + 3 + nl).ok_or_else(bad)?.to_vec();
                    let v = a.get(p + 3 + nl..p + 3 + nl + vl).ok_or_else(bad)?.to_vec();
                    list.push(SfAttr {
                        flags: fl,
                        name: n,
                        value: v,
                    });
                    p += 3 + nl + vl;
                }
            }
            Some(ForkFormat::Extents)
                if i.di_anextents == 0 && i.attr_fork.iter().all(|&b| b == 0) => {}
            Some(_) => {
                return Err(Error::unsupported(format!(
                    "XFS inode {ino}: changing leaf or node attribute forks is not supported yet"
                )))
            }
        }
        let nsmask = XFS_ATTR_ROOT | XFS_ATTR_SECURE;
        let pos = list
            .iter()
            .position(|a| a.flags & nsmask == ns && a.name == name);
        match (value, pos) {
            (None, None) => return Err(errno_error("removexattr", errno::ENODATA)),
            (None, Some(p)) => {
                list.remove(p);
            }
            (Some(_), Some(_)) if flags & XATTR_CREATE != 0 => {
                return Err(errno_error("setxattr", errno::EEXIST))
            }
            (Some(_), None) if flags & XATTR_REPLACE != 0 => {
                return Err(errno_error("setxattr", errno::ENODATA))
            }
            (Some(v), p) => {
                if v.len() > 255 {
                    return Err(Error::unsupported(format!(
                        "XFS inode {ino}: attribute values over 255 bytes need a leaf attribute fork, which is not supported yet"
                    )));
                }
                let a = SfAttr {
                    flags: ns,
                    name: name.to_vec(),
                    value: v.to_vec(),
                };
                match p {
                    Some(p) => list[p] = a,
                    None => list.push(a),
                }
            }
        }
        let isz = usize::from(self.fs.sb.sb_inodesize);
        let litino = isz - CORE;
        let forkoff = usize::from(self.inode_mut(ino)?[82]) * 8;
        // A B+tree data fork's root is laid out for its fork's size: kept aside, and put
        // back for the new size (as the kernel's xfs_bmbt_to_bmdr does at write-back).
        let broot = if i.di_format == ForkFormat::Btree {
            Some(bmbt_root(&i.data_fork, ino)?)
        } else {
            None
        };
        if list.is_empty() {
            let b = self.inode_mut(ino)?;
            if forkoff != 0 {
                b[CORE + forkoff..].fill(0);
            }
            b[82] = 0;
            b[83] = FMT_EXTENTS;
            put16(b, 80, 0);
            if let Some(r) = &broot {
                put_bmbt_root(&mut b[CORE..CORE + litino], r);
            }
            return self.touch(ino, false);
        }
        let tot: usize = 4 + list
            .iter()
            .map(|a| 3 + a.name.len() + a.value.len())
            .sum::<usize>();
        // Bytes the data fork holds now.
        let dsize = match i.di_format {
            ForkFormat::Local => i.di_size as usize,
            ForkFormat::Extents => i.di_nextents as usize * 16,
            ForkFormat::Dev => 8,
            ForkFormat::Btree => broot.as_ref().map_or(0, |r| 4 + 16 * r.1.len()),
        };
        let new_off = if forkoff != 0 && litino - forkoff >= tot {
            forkoff
        } else if i.di_format == ForkFormat::Btree && forkoff != 0 {
            // The kernel keeps a B+tree data fork's boundary once it has one.
            return Err(Error::unsupported(format!(
                "XFS inode {ino}: the attributes outgrow the inode; leaf attribute forks are not supported yet"
            )));
        } else {
            let off = litino.checked_sub(tot).map(|o| o & !7);
            let min = dsize.max(if i.di_format == ForkFormat::Dev {
                0
            } else {
                MIN_DATA_FORK
            });
            let min = min.div_ceil(8) * 8;
            let max = (litino - MIN_ATTR_FORK) & !7;
            match off {
                Some(o) if o >= max => max,
                Some(o) if o >= min => o,
                _ => {
                    return Err(Error::unsupported(format!(
                        "XFS inode {ino}: the attributes outgrow the inode; leaf attribute forks are not supported yet"
                    )))
                }
            }
        };
        if litino - new_off < tot {
            return Err(Error::unsupported(format!(
                "XFS inode {ino}: the attributes outgrow the inode; leaf attribute forks are not supported yet"
            )));
        }
        let mut sf = vec![0u8; tot];
        put16(&mut sf, 0, tot as u16);
        sf[2] = list.len() as u8;
        let mut p = 4;
        for a in &list {
            sf[p] = a.name.len() as u8;
            sf[p + 1] = a.value.len() as u8;
            sf[p + 2] = a.flags;
            sf[p + 3..p + 3 + a.name.len()].copy_from_slice(&a.name);
            sf[p + 3 + a.name.len()..p + 3 + a.name.len() + a.value.len()]
                .copy_from_slice(&a.value);
            p += 3 + a.name.len() + a.value.len();
        }
        let b = self.inode_mut(ino)?;
        // The data fork keeps its first dsize bytes; everything after them is rewritten.
        b[CORE + dsize.min(new_off)..].fill(0);
        b[82] = (new_off / 8) as u8;
        b[83] = FMT_LOCAL;
        put16(b, 80, 0);
        b[CORE + new_off..CORE + new_off + tot].copy_from_slice(&sf);
        if let Some(r) = &broot {
            put_bmbt_root(&mut b[CORE..CORE + new_off], r);
        }
        self.touch(ino, false)
    }
}

/// A bmbt root in a data fork: (level, (key, pointer) of each record).
type BmbtRoot = (u16, Vec<(u64, u64)>);

fn bmbt_root(fork: &[u8], ino: u64) -> Result<BmbtRoot> {
    let bad = || Error::corrupt(format!("XFS inode {ino}: bmbt root does not fit its fork"));
    if fork.len() < 4 {
        return Err(bad());
    }
    let level = u16::from_be_bytes([fork[0], fork[1]]);
    let n = usize::from(u16::from_be_bytes([fork[2], fork[3]]));
    let max = (fork.len() - 4) / 16;
    if n > max {
        return Err(bad());
    }
    let be = |o: usize| u64::from_be_bytes(fork[o..o + 8].try_into().unwrap_or_default());
    let recs = (0..n)
        .map(|k| (be(4 + k * 8), be(4 + max * 8 + k * 8)))
        .collect();
    Ok((level, recs))
}

/// Writes `r` as the bmbt root filling `fork`.
fn put_bmbt_root(fork: &mut [u8], r: &BmbtRoot) {
    let max = (fork.len() - 4) / 16;
    fork.fill(0);
    put16(fork, 0, r.0);
    put16(fork, 2, r.1.len() as u16);
    for (k, (key, ptr)) in r.1.iter().enumerate() {
        fork[4 + k * 8..12 + k * 8].copy_from_slice(&key.to_be_bytes());
        fork[4 + max * 8 + k * 8..12 + max * 8 + k * 8].copy_from_slice(&ptr.to_be_bytes());
    }
}
