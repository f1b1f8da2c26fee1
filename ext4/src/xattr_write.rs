//! Setting and removing extended attributes: the inode's attribute list (in-inode area and
//! external block) is edited as a whole and laid out again: the in-inode area first (where
//! `system.data` of inline data must stay), the rest in the external block, sorted as the
//! kernel's lookup expects, with entry hashes, the block hash and the block checksum. A block
//! shared with other inodes (`h_refcount > 1`) is never edited in place: the inode gets its own
//! copy and the shared one's count drops.

use vdisk_block::{Error, Result};

use super::bytes::{le32, put};
use super::inode::{Inode, EXT4_GOOD_OLD_INODE_SIZE};
use super::xattr::{self, XattrEntry, XattrValue, EXT4_XATTR_MAGIC, NAME_INDEXES};
use super::Ext4;
use vdisk_fs::{errno, errno_error};

/// setxattr flag: fail if the attribute exists.
pub const XATTR_CREATE: u32 = 1;
/// setxattr flag: fail if the attribute does not exist.
pub const XATTR_REPLACE: u32 = 2;

const ENTRY_HEADER: usize = 16;
const BLOCK_HEADER: usize = 32;

fn entry_size(e: &XattrEntry) -> usize {
    (ENTRY_HEADER + e.name.len() + 3) & !3
}

fn value_of(e: &XattrEntry) -> &[u8] {
    match &e.value {
        XattrValue::Inline(v) => v,
        XattrValue::Inode { .. } => &[],
    }
}

fn value_size(e: &XattrEntry) -> usize {
    (value_of(e).len() + 3) & !3
}

/// `ext4_xattr_hash_entry`: the name bytes, then the value's little-endian words.
pub fn entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut h = 0u32;
    for &c in name {
        h = (h << 5) ^ (h >> 27) ^ u32::from(c);
    }
    let mut padded = value.to_vec();
    padded.resize(value.len().div_ceil(4) * 4, 0);
    for w in padded.chunks(4) {
        h = (h << 16) ^ (h >> 16) ^ le32(w, 0);
    }
    h
}

/// Splits a full attribute name into (name index, suffix).
fn split_name(full: &[u8]) -> Result<(u8, Vec<u8>)> {
    let mut best: Option<(u8, usize)> = None;
    for &(idx, prefix) in NAME_INDEXES {
        let p = prefix.as_bytes();
        if full.starts_with(p) && best.is_none_or(|(_, l)| p.len() > l) {
            best = Some((idx, p.len()));
        }
    }
    let (idx, plen) = best.ok_or_else(|| errno_error("setxattr", errno::EOPNOTSUPP))?;
    if idx == 2 || idx == 3 || idx == 8 {
        return Err(Error::unsupported(
            "setting POSIX ACLs or richacls is not supported",
        ));
    }
    let suffix = full[plen..].to_vec();
    if suffix.is_empty() || suffix.len() > 255 {
        return Err(errno_error("setxattr", errno::EINVAL));
    }
    Ok((idx, suffix))
}

/// Writes `entries` as an entry table at `first` in `area`, values packed from `value_end`
/// downward; value offsets count from `base`. False when they do not fit.
fn lay_out(
    area: &mut [u8],
    first: usize,
    base: usize,
    entries: &[XattrEntry],
    hashes: bool,
) -> bool {
    let table: usize = entries.iter().map(entry_size).sum();
    let values: usize = entries.iter().map(value_size).sum();
    if first + table + 4 + values > area.len() {
        return false;
    }
    area[first..].fill(0);
    let mut pos = first;
    let mut vend = area.len();
    for e in entries {
        let v = value_of(e);
        let voff = if v.is_empty() {
            0
        } else {
            vend -= value_size(e);
            area[vend..vend + v.len()].copy_from_slice(v);
            vend - base
        };
        area[pos] = e.name.len() as u8;
        area[pos + 1] = e.e_name_index;
        put(area, pos + 2, (voff as u16).to_le_bytes());
        put(area, pos + 4, [0; 4]);
        put(area, pos + 8, (v.len() as u32).to_le_bytes());
        let h = if hashes { entry_hash(&e.name, v) } else { 0 };
        put(area, pos + 12, h.to_le_bytes());
        area[pos + 16..pos + 16 + e.name.len()].copy_from_slice(&e.name);
        pos += entry_size(e);
    }
    true
}

impl Ext4 {
    /// Sets (`value` Some) or removes (None) attribute `full_name` of `inode` and stores it.
    pub(crate) fn xattr_set(
        &mut self,
        inode: &mut Inode,
        full_name: &[u8],
        value: Option<&[u8]>,
        flags: u32,
    ) -> Result<()> {
        let (idx, name) = split_name(full_name)?;
        if value.is_some_and(|v| v.len() > xattr::XATTR_SIZE_MAX as usize) {
            return Err(errno_error("setxattr", errno::E2BIG));
        }
        let ino = inode.ino;
        let what = || format!("inode {ino}");
        let mut ibody = xattr::parse_ibody(inode.xattr_area(), 0, &what)?;
        let old_blk = inode.i_file_acl;
        let (mut inblock, refcount) = if old_blk != 0 {
            let b = self.block(old_blk, &what)?;
            let v = xattr::parse_block(&b, old_blk, self.sb.csum_seed, old_blk * self.bs(), &what)?;
            (v, le32(&b, 4))
        } else {
            (Vec::new(), 0)
        };
        if ibody
            .iter()
            .chain(inblock.iter())
            .any(|e| matches!(e.value, XattrValue::Inode { .. }))
        {
            return Err(Error::unsupported(format!(
                "inode {ino} keeps attribute values in EA inodes; vdisk does not edit those"
            )));
        }
        let matches = |e: &XattrEntry| e.e_name_index == idx && e.name == name;
        let exists = ibody.iter().chain(inblock.iter()).any(matches);
        match value {
            Some(_) if exists && flags & XATTR_CREATE != 0 => {
                return Err(errno_error("setxattr", errno::EEXIST))
            }
            Some(_) if !exists && flags & XATTR_REPLACE != 0 => {
                return Err(errno_error("setxattr", errno::ENODATA))
            }
            None if !exists => return Err(errno_error("removexattr", errno::ENODATA)),
            _ => {}
        }
        // The edited list: in-inode entries keep their order, the new one goes where the old
        // one was, else first to the inode.
        let mut replaced = false;
        if let Some(v) = value {
            for e in ibody.iter_mut().chain(inblock.iter_mut()) {
                if matches(e) {
                    e.value = XattrValue::Inline(v.to_vec());
                    replaced = true;
                }
            }
        } else {
            ibody.retain(|e| !matches(e));
            inblock.retain(|e| !matches(e));
        }
        let mut all: Vec<XattrEntry> = ibody;
        let from_block_start = all.len();
        all.extend(inblock);
        if let (Some(v), false) = (value, replaced) {
            all.insert(
                from_block_start,
                XattrEntry {
                    e_name_index: idx,
                    name: name.clone(),
                    value: XattrValue::Inline(v.to_vec()),
                },
            );
        }
        // Fill the in-inode area greedily (system.data always stays there).
        let area_start = EXT4_GOOD_OLD_INODE_SIZE + usize::from(inode.i_extra_isize);
        let area_len = inode.raw.len().saturating_sub(area_start);
        let mut in_inode: Vec<XattrEntry> = Vec::new();
        let mut to_block: Vec<XattrEntry> = Vec::new();
        let mut used = 4 + 4; // header magic, terminator
        for e in all {
            let need = entry_size(&e) + value_size(&e);
            if area_len >= 8 && used + need <= area_len && to_block.is_empty() || e.is_system_data()
            {
                used += need;
                in_inode.push(e);
            } else {
                to_block.push(e);
            }
        }
        // In-inode area.
        if area_len > 0 {
            let mut area = vec![0u8; area_len];
            if !in_inode.is_empty() {
                put(&mut area, 0, EXT4_XATTR_MAGIC.to_le_bytes());
                let mut rest = area[4..].to_vec();
                if !lay_out(&mut rest, 0, 0, &in_inode, true) {
                    return Err(errno_error("setxattr", errno::ENOSPC));
                }
                area[4..].copy_from_slice(&rest);
            }
            inode.raw[area_start..].copy_from_slice(&area);
        } else if !in_inode.is_empty() {
            to_block.extend(in_inode);
        }
        // External block.
        let bs = self.bs() as usize;
        let per_block = u64::from(self.sb.block_size / 512);
        let mut free_after = None;
        if to_block.is_empty() {
            if old_blk != 0 {
                inode.i_file_acl = 0;
                inode.i_blocks = inode.i_blocks.saturating_sub(per_block);
                if refcount <= 1 {
                    free_after = Some(old_blk);
                } else {
                    self.xattr_block_unref(old_blk)?;
                }
            }
        } else {
            to_block.sort_by(|a, b| {
                (a.e_name_index, a.name.len(), &a.name).cmp(&(
                    b.e_name_index,
                    b.name.len(),
                    &b.name,
                ))
            });
            let mut b = vec![0u8; bs];
            if !lay_out(&mut b, BLOCK_HEADER, 0, &to_block, true) {
                return Err(errno_error("setxattr", errno::ENOSPC));
            }
            put(&mut b, 0, EXT4_XATTR_MAGIC.to_le_bytes());
            put(&mut b, 4, 1u32.to_le_bytes());
            put(&mut b, 8, 1u32.to_le_bytes());
            let mut h = 0u32;
            for e in &to_block {
                let eh = entry_hash(&e.name, value_of(e));
                h = (h << 16) ^ (h >> 16) ^ eh;
            }
            put(&mut b, 0xC, h.to_le_bytes());
            let nr = if old_blk != 0 && refcount <= 1 {
                old_blk
            } else {
                let g = (ino - 1) / self.sb.s_inodes_per_group;
                let (nr, _) = self.alloc_blocks(self.sb.group_first_block(g), 1)?;
                if old_blk != 0 {
                    self.xattr_block_unref(old_blk)?;
                } else {
                    inode.i_blocks += per_block;
                }
                nr
            };
            if let Some(seed) = self.sb.csum_seed {
                let c = xattr::compute_block_checksum(seed, nr, &b);
                put(&mut b, 0x10, c.to_le_bytes());
            }
            self.put_block(nr, &b)?;
            inode.i_file_acl = nr;
        }
        inode.i_ctime = super::inode::InodeTime::now();
        self.store_inode(inode)?;
        if let Some(b) = free_after {
            self.free_blocks(b, 1)?;
        }
        Ok(())
    }

    /// Drops one reference to a shared attribute block.
    fn xattr_block_unref(&mut self, nr: u64) -> Result<()> {
        let mut b = self.block(nr, &|| format!("xattr block {nr}"))?.to_vec();
        let r = le32(&b, 4);
        if r <= 1 {
            return self.free_blocks(nr, 1);
        }
        put(&mut b, 4, (r - 1).to_le_bytes());
        if let Some(seed) = self.sb.csum_seed {
            put(&mut b, 0x10, [0; 4]);
            let c = xattr::compute_block_checksum(seed, nr, &b);
            put(&mut b, 0x10, c.to_le_bytes());
        }
        self.put_block(nr, &b)
    }

    /// Releases the attribute block of an inode being deleted.
    pub(crate) fn xattr_release(&mut self, inode: &mut Inode) -> Result<()> {
        if inode.i_file_acl != 0 {
            let nr = inode.i_file_acl;
            inode.i_file_acl = 0;
            self.xattr_block_unref(nr)?;
        }
        Ok(())
    }
}

impl Ext4 {
    /// Removes `system.data` (inline data) from the in-inode attribute area of `inode`, in
    /// memory only: the caller stores the inode once its data lives elsewhere.
    pub(crate) fn drop_system_data(&self, inode: &mut Inode) -> Result<()> {
        let ino = inode.ino;
        let what = || format!("inode {ino}");
        let mut ibody = xattr::parse_ibody(inode.xattr_area(), 0, &what)?;
        ibody.retain(|e| !e.is_system_data());
        let area_start = EXT4_GOOD_OLD_INODE_SIZE + usize::from(inode.i_extra_isize);
        if inode.raw.len() <= area_start {
            return Ok(());
        }
        let mut area = vec![0u8; inode.raw.len() - area_start];
        if !ibody.is_empty() && area.len() > 4 {
            put(&mut area, 0, EXT4_XATTR_MAGIC.to_le_bytes());
            let mut rest = area[4..].to_vec();
            if !lay_out(&mut rest, 0, 0, &ibody, true) {
                return Err(Error::corrupt(format!(
                    "inode {ino}: in-inode attributes do not fit their area"
                )));
            }
            area[4..].copy_from_slice(&rest);
        }
        inode.raw[area_start..].copy_from_slice(&area);
        Ok(())
    }
}
