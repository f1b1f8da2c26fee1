//! Our ext2/ext3/ext4 engine: the on-disk structures, one module each, and [`Ext4`], which
//! reads inodes, file data, directories, symlinks and extended attributes from any
//! [`BlockDevice`].
//!
//! ```text
//!   Ext4 ── superblock ── group_descriptor ── inode ─┬─ extent (tree)     ─┐
//!    │                                                ├─ block_map (ext2/3)├─> Run -> bytes
//!    │                                                ├─ inline data       ─┘
//!    │                                                ├─ dir_entry / htree (directories)
//!    │                                                └─ xattr
//!    └── journal: committed transactions laid over the device in memory
//! ```
//!
//! Every structure is validated as it is read; the image is hostile. Metadata blocks are kept
//! in a bounded cache ([`MAX_CACHE_BYTES`]); file data is read straight from the device.
//! Writing goes through [`Ext4Rw`] (module `write`): the parsed structures keep their raw bytes,
//! each module serializes its fields back and re-seals its checksum.

#![forbid(unsafe_code)]

mod alloc;
pub mod block_map;
use vdisk_block::bytes;
pub mod checksum;
pub mod dir_entry;
mod dir_write;
pub mod dx_hash;
pub mod extent;
mod filemap;
mod fs_impl;
pub mod group_descriptor;
pub mod htree;
pub mod inode;
pub mod journal;
mod journal_write;
mod orphan;
pub mod superblock;
mod validate;
mod write;
pub mod xattr;
mod xattr_write;

pub use write::Ext4Rw;

use std::sync::Arc;

use vdisk_block::cache::Lru;
use vdisk_block::{BlockDevice, Error, Result};

use dir_entry::DirEntry2;
use extent::{Expect, Node};
use group_descriptor::GroupDesc;
use inode::{Inode, EXT4_GOOD_OLD_INODE_SIZE, I_BLOCK_SIZE};
use superblock::{incompat, Superblock, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use xattr::{XattrEntry, XattrValue};

/// Metadata cache budget: enough for the inode tables and directories a FUSE session walks,
/// small enough to be invisible beside a VMM.
pub const MAX_CACHE_BYTES: usize = 32 << 20;
/// The longest symlink target Linux reads (PATH_MAX); ext4 also bounds it by the block size.
pub const MAX_SYMLINK_LEN: u64 = 4096;
/// The largest inline data area: `i_block` plus the rest of a 64 KiB inode slot.
const MAX_INLINE_DATA: u64 = 65536;
/// File blocks are 32-bit in both the extent and the indirect format.
const LOGICAL_BLOCK_LIMIT: u64 = 1 << 32;

/// One run of file blocks, as a mapping answers it: blocks on disk, or blocks that read as
/// zeros (a hole or an unwritten extent). Lengths are in filesystem blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// `len` blocks stored from physical block `start`.
    Data {
        /// First physical block.
        start: u64,
        /// Number of blocks.
        len: u64,
    },
    /// `len` blocks that read as zeros.
    Zero {
        /// Number of blocks.
        len: u64,
    },
}

/// How to open a filesystem.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// Replay a journal that needs recovery in memory (the default). When false, such a
    /// filesystem is refused with an Unsupported error instead.
    pub replay_journal: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            replay_journal: true,
        }
    }
}

/// The metadata block cache: CLOCK-evicted, shared with qcow2's table caches, holding
/// [`MAX_CACHE_BYTES`] of blocks (at least 16).
fn block_cache(block_size: u32) -> Lru<[u8]> {
    Lru::new((MAX_CACHE_BYTES / block_size as usize).max(16))
}

/// An open ext2/3/4 filesystem.
pub struct Ext4 {
    dev: Arc<dyn BlockDevice>,
    sb: Superblock,
    overlay: journal::Overlay,
    replayed_transactions: u32,
    journal_next_sequence: u32,
    cache: Lru<[u8]>,
    /// The write side's journal and open transaction (empty when reading only).
    journal_state: journal_write::JournalState,
    /// What the validation before the first write proved (see `validate`).
    safety: validate::Safety,
    /// Inodes this session removed while open and keeps until their release (see `orphan`):
    /// no directory names them, but they are live by number.
    orphans: std::collections::HashSet<u32>,
}

impl std::fmt::Debug for Ext4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ext4")
            .field("block_size", &self.sb.block_size)
            .field("blocks", &self.sb.s_blocks_count)
            .field("journal_overlay_blocks", &self.overlay.len())
            .finish()
    }
}

/// The journal, read through the journal inode of a not-yet-replayed filesystem.
struct JournalReader<'a> {
    fs: &'a Ext4,
    inode: Inode,
    last: Option<(u64, Run)>,
}

impl journal::JournalAccess for JournalReader<'_> {
    fn map(&mut self, n: u32) -> Result<u64> {
        let n = u64::from(n);
        if let Some((start, Run::Data { start: p, len })) = self.last {
            if n >= start && n < start + len {
                return Ok(p + (n - start));
            }
        }
        match self.fs.map(&self.inode, n)? {
            r @ Run::Data { start, .. } => {
                self.last = Some((n, r));
                Ok(start)
            }
            Run::Zero { .. } => Err(Error::corrupt(format!(
                "journal: inode {} has a hole at block {n}",
                self.inode.ino
            ))),
        }
    }

    fn read(&mut self, phys: u64, buf: &mut [u8]) -> Result<()> {
        self.fs.read_phys(buf, phys)
    }

    fn len_blocks(&self) -> u64 {
        self.inode.i_size / u64::from(self.fs.sb.block_size)
    }
}

impl Ext4 {
    /// Opens the filesystem on `dev`, replaying its journal in memory when it needs recovery.
    pub fn open(dev: Arc<dyn BlockDevice>) -> Result<Ext4> {
        Ext4::open_with(dev, OpenOptions::default())
    }

    /// Opens the filesystem on `dev` with `opts`.
    pub fn open_with(dev: Arc<dyn BlockDevice>, opts: OpenOptions) -> Result<Ext4> {
        let sb = read_superblock(&*dev, &journal::Overlay::new())?;
        let mut fs = Ext4 {
            cache: block_cache(sb.block_size),
            dev,
            sb,
            overlay: journal::Overlay::new(),
            replayed_transactions: 0,
            journal_next_sequence: 0,
            journal_state: Default::default(),
            safety: Default::default(),
            orphans: Default::default(),
        };
        if fs.sb.has_incompat(incompat::RECOVER) {
            if !opts.replay_journal {
                return Err(Error::unsupported(
                    "the ext4 journal needs recovery (replay was not requested)",
                ));
            }
            if !fs.sb.has_compat(superblock::compat::HAS_JOURNAL) {
                return Err(Error::corrupt_at(
                    SUPERBLOCK_OFFSET + 0x60,
                    "superblock: needs_recovery is set but the filesystem has no journal",
                ));
            }
            if fs.sb.s_journal_inum == 0 {
                return Err(Error::unsupported(
                    "the ext4 journal needs recovery and is on an external device",
                ));
            }
            let inode = fs.inode(fs.sb.s_journal_inum)?;
            let mut reader = JournalReader {
                fs: &fs,
                inode,
                last: None,
            };
            let info = journal::replay(&mut reader, fs.sb.block_size, fs.sb.s_blocks_count)?;
            fs.overlay = info.overlay;
            fs.replayed_transactions = info.transactions;
            fs.journal_next_sequence = info.next_sequence;
            // The journal may hold a newer superblock; geometry must not change.
            let sb = read_superblock(&*fs.dev, &fs.overlay)?;
            if sb.block_size != fs.sb.block_size || sb.s_blocks_count != fs.sb.s_blocks_count {
                return Err(Error::corrupt(
                    "journal: the replayed superblock changes the filesystem's geometry",
                ));
            }
            fs.sb = sb;
            fs.cache = block_cache(fs.sb.block_size);
        }
        Ok(fs)
    }

    /// The superblock (after journal replay).
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The journal blocks laid over the device by replay (empty when none was needed).
    pub fn journal_overlay(&self) -> &journal::Overlay {
        &self.overlay
    }

    /// The number of committed transactions replayed at open.
    pub fn replayed_transactions(&self) -> u32 {
        self.replayed_transactions
    }

    /// The device underneath.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    fn bs(&self) -> u64 {
        u64::from(self.sb.block_size)
    }

    /// Reads bytes at a device offset, through the journal overlay.
    pub fn read_bytes(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        read_overlaid(&*self.dev, &self.overlay, self.bs(), buf, offset)?;
        self.txn_overlay(buf, offset);
        Ok(())
    }

    /// Reads whole physical block `nr` bypassing the overlay (the journal itself).
    fn read_phys(&self, buf: &mut [u8], nr: u64) -> Result<()> {
        self.dev.read_at(buf, nr * self.bs())
    }

    /// A metadata block through the cache. `what` names it in errors.
    pub fn block(&self, nr: u64, what: &dyn Fn() -> String) -> Result<Arc<[u8]>> {
        if nr >= self.sb.s_blocks_count {
            return Err(Error::corrupt(format!(
                "{}: block {nr} lies outside the filesystem ({} blocks)",
                what(),
                self.sb.s_blocks_count
            )));
        }
        if let Some(b) = self.txn_block(nr) {
            return Ok(b);
        }
        if let Some(b) = self.cache.get(nr) {
            return Ok(b);
        }
        let mut v = vec![0u8; self.sb.block_size as usize];
        self.read_bytes(&mut v, nr * self.bs())?;
        let a: Arc<[u8]> = v.into();
        self.cache.insert(nr, a.clone());
        Ok(a)
    }

    /// Group descriptor `g`.
    pub fn group_desc(&self, g: u32) -> Result<GroupDesc> {
        if g >= self.sb.group_count {
            return Err(Error::invalid(format!("no block group {g}")));
        }
        let per = self.sb.descs_per_block();
        let blk = self.sb.descriptor_block(g / per);
        let off = ((g % per) * self.sb.desc_size) as usize;
        let b = self.block(blk, &|| format!("group descriptor {g}"))?;
        let raw = &b[off..off + self.sb.desc_size as usize];
        GroupDesc::parse(&self.sb, g, raw, blk * self.bs() + off as u64)
    }

    /// The device byte offset of inode `ino`'s slot in its group's inode table.
    pub fn inode_offset(&self, ino: u32) -> Result<u64> {
        if ino == 0 || ino > self.sb.s_inodes_count {
            return Err(Error::invalid(format!(
                "inode number {ino} is out of range (1..={})",
                self.sb.s_inodes_count
            )));
        }
        let ipg = self.sb.s_inodes_per_group;
        let gd = self.group_desc((ino - 1) / ipg)?;
        let byte = u64::from((ino - 1) % ipg) * u64::from(self.sb.s_inode_size);
        Ok(gd.bg_inode_table * self.bs() + byte)
    }

    /// Inode `ino`, validated (checksum, sizes). Inodes not in use are returned as read; see
    /// [`Inode::in_use`].
    pub fn inode(&self, ino: u32) -> Result<Inode> {
        if ino == 0 || ino > self.sb.s_inodes_count {
            return Err(Error::invalid(format!(
                "inode number {ino} is out of range (1..={})",
                self.sb.s_inodes_count
            )));
        }
        let ipg = self.sb.s_inodes_per_group;
        let g = (ino - 1) / ipg;
        let index = (ino - 1) % ipg;
        let gd = self.group_desc(g)?;
        if gd.inode_uninit(&self.sb) {
            return Err(Error::corrupt(format!(
                "inode {ino} lies in block group {g}, whose inode table is uninitialized"
            )));
        }
        let isz = u64::from(self.sb.s_inode_size);
        let byte = u64::from(index) * isz;
        let blk = gd.bg_inode_table + byte / self.bs();
        let off = (byte % self.bs()) as usize;
        let b = self.block(blk, &|| format!("inode table of group {g}"))?;
        let raw = &b[off..off + isz as usize];
        Inode::parse(&self.sb, ino, raw, blk * self.bs() + off as u64)
    }

    /// Inode `ino`, which must be in use (reached from a directory or given by a caller), or
    /// an orphan this session keeps open.
    pub fn live_inode(&self, ino: u32) -> Result<Inode> {
        let i = self.inode(ino)?;
        let kept = i.i_mode != 0 && self.orphans.contains(&ino);
        if !i.in_use() && !kept {
            return Err(Error::corrupt(format!("inode {ino} is not in use")));
        }
        Ok(i)
    }

    fn check_not_encrypted(&self, inode: &Inode) -> Result<()> {
        if inode.has_flag(inode::EXT4_ENCRYPT_FL) {
            return Err(Error::unsupported(format!(
                "inode {} is encrypted (fscrypt is not supported)",
                inode.ino
            )));
        }
        Ok(())
    }

    /// Maps file block `logical` of `inode` to a [`Run`].
    pub fn map(&self, inode: &Inode, logical: u64) -> Result<Run> {
        if logical >= LOGICAL_BLOCK_LIMIT {
            return Ok(Run::Zero { len: u64::MAX / 2 });
        }
        let ino = inode.ino;
        if inode.has_flag(inode::EXT4_EXTENTS_FL) {
            let expect = Expect {
                depth: None,
                min_block: 0,
                end_bound: LOGICAL_BLOCK_LIMIT,
                blocks_count: self.sb.s_blocks_count,
                first_data_block: u64::from(self.sb.s_first_data_block),
            };
            let root = extent::parse_node(&inode.i_block, &expect, 0, &|| {
                format!("inode {ino} extent root")
            })?;
            let seed = self.sb.csum_seed.map(|s| inode.csum_seed(s));
            let bs = self.bs();
            let mut read = |nr: u64, e: &Expect| -> Result<Node> {
                let what = || format!("inode {ino} extent block {nr}");
                let b = self.block(nr, &what)?;
                if let Some(seed) = seed {
                    extent::verify_checksum(seed, &b, nr * bs, &what)?;
                }
                extent::parse_node(&b, e, nr * bs, &what)
            };
            extent::lookup(root, logical as u32, expect, &mut read)
        } else {
            let mut read = |nr: u64| self.block(nr, &|| format!("inode {ino} indirect block"));
            block_map::lookup(
                &inode.i_block,
                logical,
                self.bs() / 4,
                self.sb.s_blocks_count,
                &mut read,
            )
            .map_err(|e| match e {
                Error::Corrupt { what, .. } => Error::corrupt(format!("inode {ino}: {what}")),
                e => e,
            })
        }
    }

    /// Reads file bytes of `inode` from `offset` into `buf`; returns how many were read (short
    /// only at the end of the file).
    pub fn read_data(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.check_not_encrypted(inode)?;
        if offset >= inode.i_size {
            return Ok(0);
        }
        let n = (inode.i_size - offset).min(buf.len() as u64) as usize;
        let buf = &mut buf[..n];
        if inode.has_flag(inode::EXT4_INLINE_DATA_FL) {
            let data = self.inline_data(inode)?;
            let start = offset as usize; // offset < i_size <= inline length
            let end = start + n;
            if end > data.len() {
                return Err(Error::corrupt(format!(
                    "inode {}: i_size {} exceeds its inline data ({} bytes)",
                    inode.ino,
                    inode.i_size,
                    data.len()
                )));
            }
            buf.copy_from_slice(&data[start..end]);
            return Ok(n);
        }
        let bs = self.bs();
        let mut done = 0usize;
        while done < n {
            let pos = offset + done as u64;
            let logical = pos / bs;
            let in_block = pos % bs;
            let run = self.map(inode, logical)?;
            let (len, start) = match run {
                Run::Data { start, len } => (len, Some(start)),
                Run::Zero { len } => (len, None),
            };
            let run_bytes = len.saturating_mul(bs) - in_block;
            let chunk = run_bytes.min((n - done) as u64) as usize;
            let out = &mut buf[done..done + chunk];
            match start {
                Some(s) => self.read_bytes(out, s * bs + in_block)?,
                None => out.fill(0),
            }
            done += chunk;
        }
        Ok(n)
    }

    /// The bytes of an inline-data inode: `i_block`, then the `system.data` attribute.
    pub fn inline_data(&self, inode: &Inode) -> Result<Vec<u8>> {
        let mut d = inode.i_block.to_vec();
        let ino = inode.ino;
        let at = 0;
        let entries = xattr::parse_ibody(inode.xattr_area(), at, &|| format!("inode {ino}"))?;
        if let Some(e) = entries.iter().find(|e| e.is_system_data()) {
            match &e.value {
                XattrValue::Inline(v) => d.extend_from_slice(v),
                XattrValue::Inode { .. } => {
                    return Err(Error::corrupt(format!(
                        "inode {ino}: system.data lives in an EA inode"
                    )))
                }
            }
        }
        if d.len() as u64 > MAX_INLINE_DATA {
            return Err(Error::corrupt(format!(
                "inode {ino}: inline data is too large"
            )));
        }
        Ok(d)
    }

    /// The target of symlink `inode`.
    pub fn symlink_target(&self, inode: &Inode) -> Result<Vec<u8>> {
        self.check_not_encrypted(inode)?;
        let ino = inode.ino;
        if !inode.is_symlink() {
            return Err(Error::invalid(format!("inode {ino} is not a symlink")));
        }
        let size = inode.i_size;
        if size > MAX_SYMLINK_LEN.min(self.bs()) {
            return Err(Error::corrupt(format!(
                "inode {ino}: symlink length {size} is impossible"
            )));
        }
        let n = size as usize;
        if inode.has_flag(inode::EXT4_INLINE_DATA_FL) {
            let mut v = vec![0u8; n];
            let got = self.read_data(inode, 0, &mut v)?;
            v.truncate(got);
            return Ok(v);
        }
        // The kernel's ext4_inode_is_fast_symlink(): no data blocks beyond an xattr block.
        let ea_sectors = if inode.i_file_acl != 0 {
            self.bs() / 512
        } else {
            0
        };
        let fast = !inode.has_flag(inode::EXT4_EA_INODE_FL)
            && inode.sectors(&self.sb).saturating_sub(ea_sectors) == 0
            || inode.has_flag(inode::EXT4_EA_INODE_FL) && n < I_BLOCK_SIZE;
        if fast {
            if n >= I_BLOCK_SIZE {
                return Err(Error::corrupt(format!(
                    "inode {ino}: fast symlink of length {n} does not fit i_block"
                )));
            }
            return Ok(inode.i_block[..n].to_vec());
        }
        let mut v = vec![0u8; n];
        let got = self.read_data(inode, 0, &mut v)?;
        v.truncate(got);
        Ok(v)
    }

    /// Walks the live entries of directory `dir` from `cookie` (0 = the start), calling `f`
    /// with each entry and the cookie that resumes after it. Stops when `f` returns false.
    /// "." and ".." are included. Inline directories get synthesized "." and "..".
    pub fn dir_walk(
        &self,
        dir: &Inode,
        cookie: u64,
        f: &mut dyn FnMut(DirEntry2, u64) -> bool,
    ) -> Result<()> {
        self.check_not_encrypted(dir)?;
        let ino = dir.ino;
        if !dir.is_dir() {
            return Err(Error::invalid(format!("inode {ino} is not a directory")));
        }
        let filetype = self.sb.has_incompat(incompat::FILETYPE);
        if dir.has_flag(inode::EXT4_INLINE_DATA_FL) {
            return self.inline_dir_walk(dir, cookie, filetype, f);
        }
        let bs = self.bs();
        let blocks = dir.i_size.div_ceil(bs).min(LOGICAL_BLOCK_LIMIT);
        let indexed = dir.has_flag(inode::EXT4_INDEX_FL);
        let seed = self.sb.csum_seed.map(|s| dir.csum_seed(s));
        let mut logical = cookie / bs;
        let mut skip_before = (cookie % bs) as usize;
        while logical < blocks {
            let run = self.map(dir, logical)?;
            let (start, len) = match run {
                Run::Data { start, len } => (start, len),
                Run::Zero { len } => {
                    // Holes in directories hold no entries.
                    logical = logical.saturating_add(len);
                    skip_before = 0;
                    continue;
                }
            };
            for i in 0..len.min(blocks - logical) {
                let l = logical + i;
                let nr = start + i;
                let what = || format!("directory inode {ino} block {l}");
                let b = self.block(nr, &what)?;
                let at = nr * bs;
                let kind = if indexed {
                    htree::classify(&b, l)
                } else {
                    htree::DxKind::Leaf
                };
                if let Some(seed) = seed {
                    match kind {
                        htree::DxKind::Leaf => dir_entry::verify_checksum(seed, &b, at, &what)?,
                        k => htree::verify_checksum(seed, &b, k, at, &what)?,
                    }
                }
                let mut more = true;
                let base = l * bs;
                let skip = skip_before;
                skip_before = 0;
                dir_entry::parse_entries(&b, filetype, bs as usize, at, &what, &mut |e| {
                    if e.offset < skip {
                        return true;
                    }
                    let next = base + e.offset as u64 + u64::from(e.rec_len);
                    more = f(e, next);
                    more
                })?;
                if !more {
                    return Ok(());
                }
            }
            logical += len;
        }
        Ok(())
    }

    fn inline_dir_walk(
        &self,
        dir: &Inode,
        cookie: u64,
        filetype: bool,
        f: &mut dyn FnMut(DirEntry2, u64) -> bool,
    ) -> Result<()> {
        let ino = dir.ino;
        let data = self.inline_data(dir)?;
        let parent = bytes::le32(&data, 0);
        let dot = |name: &[u8], inode: u32| DirEntry2 {
            inode,
            rec_len: 0,
            file_type: if filetype { dir_entry::ft::DIR } else { 0 },
            name: name.to_vec(),
            offset: 0,
        };
        if cookie < 1 && !f(dot(b".", ino), 1) {
            return Ok(());
        }
        if cookie < 2 && !f(dot(b"..", parent), 2) {
            return Ok(());
        }
        // Entries live in i_block after the parent pointer, then in system.data; each area is
        // parsed on its own. Cookies are 2 + the end of the record in the concatenation.
        let areas = [(4usize, I_BLOCK_SIZE), (I_BLOCK_SIZE, data.len())];
        for (a_start, a_end) in areas {
            if a_start >= a_end {
                continue;
            }
            let area = &data[a_start..a_end];
            let what = || format!("inline directory inode {ino}");
            let mut more = true;
            dir_entry::parse_entries(area, filetype, area.len(), 0, &what, &mut |e| {
                let next = 2 + (a_start + e.offset) as u64 + u64::from(e.rec_len);
                if next <= cookie {
                    return true;
                }
                more = f(e, next);
                more
            })?;
            if !more {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Finds `name` in directory `dir`: the inode number, or None. An htree directory is
    /// searched through its hash index (the leaves the index names), as the kernel and the
    /// write side search it; others entry by entry.
    pub fn find_entry(&self, dir: &Inode, name: &[u8]) -> Result<Option<u32>> {
        self.dir_lookup(dir, name)
    }

    /// Finds `name` by reading every entry of `dir` (linear and inline directories).
    pub(crate) fn scan_entry(&self, dir: &Inode, name: &[u8]) -> Result<Option<u32>> {
        let mut found = None;
        self.dir_walk(dir, 0, &mut |e, _| {
            if e.name == name {
                found = Some(e.inode);
                false
            } else {
                true
            }
        })?;
        Ok(found)
    }

    /// All extended attribute entries of `inode`: in-inode first, then the external block.
    pub fn xattr_entries(&self, inode: &Inode) -> Result<Vec<XattrEntry>> {
        let ino = inode.ino;
        let what = || format!("inode {ino}");
        let mut v = xattr::parse_ibody(inode.xattr_area(), 0, &what)?;
        if inode.i_file_acl != 0 {
            let nr = inode.i_file_acl;
            let b = self.block(nr, &what)?;
            v.extend(xattr::parse_block(
                &b,
                nr,
                self.sb.csum_seed,
                nr * self.bs(),
                &what,
            )?);
        }
        Ok(v)
    }

    /// The value of an attribute as getxattr returns it: EA-inode values fetched, POSIX ACLs
    /// converted from the disk form.
    pub fn xattr_value(&self, e: &XattrEntry) -> Result<Vec<u8>> {
        let raw = match &e.value {
            XattrValue::Inline(v) => v.clone(),
            XattrValue::Inode { inum, size } => {
                let i = self.live_inode(*inum)?;
                if !i.has_flag(inode::EXT4_EA_INODE_FL) || i.i_size != u64::from(*size) {
                    return Err(Error::corrupt(format!(
                        "xattr value inode {inum} is not an EA inode of {size} bytes"
                    )));
                }
                let mut v = vec![0u8; *size as usize];
                let n = self.read_data(&i, 0, &mut v)?;
                v.truncate(n);
                v
            }
        };
        if e.e_name_index == 2 || e.e_name_index == 3 {
            return xattr::acl_to_xattr(&raw);
        }
        Ok(raw)
    }

    /// True when the inode slot is large enough for the extra fields (not 128-byte inodes).
    pub fn has_large_inodes(&self) -> bool {
        usize::from(self.sb.s_inode_size) > EXT4_GOOD_OLD_INODE_SIZE
    }
}

/// Reads and parses the primary superblock through an overlay.
fn read_superblock(dev: &dyn BlockDevice, overlay: &journal::Overlay) -> Result<Superblock> {
    let size = dev.size();
    if size < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE as u64 {
        return Err(Error::corrupt(format!(
            "device of {size} bytes is too small for an ext2/3/4 filesystem"
        )));
    }
    let mut raw = [0u8; SUPERBLOCK_SIZE];
    dev.read_at(&mut raw, SUPERBLOCK_OFFSET)?;
    if !overlay.is_empty() {
        // The superblock's block number depends on the block size, which it names.
        let bs = 1024u64 << bytes::le32(&raw, 0x18).min(superblock::MAX_LOG_BLOCK_SIZE);
        read_overlaid(dev, overlay, bs, &mut raw, SUPERBLOCK_OFFSET)?;
    }
    Superblock::parse(&raw, size)
}

/// Reads `buf` at `offset`, taking each block the overlay names from its journal copy.
fn read_overlaid(
    dev: &dyn BlockDevice,
    overlay: &journal::Overlay,
    bs: u64,
    buf: &mut [u8],
    offset: u64,
) -> Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let first = offset / bs;
    let last = (offset + buf.len() as u64 - 1) / bs;
    if overlay.range(first..=last).next().is_none() {
        return dev.read_at(buf, offset);
    }
    let mut done = 0usize;
    while done < buf.len() {
        let pos = offset + done as u64;
        let blk = pos / bs;
        let in_block = pos % bs;
        let chunk = ((bs - in_block) as usize).min(buf.len() - done);
        let out = &mut buf[done..done + chunk];
        match overlay.get(&blk) {
            Some(copy) => {
                let mut whole = vec![0u8; bs as usize];
                dev.read_at(&mut whole, copy.journal_block * bs)?;
                if copy.escaped {
                    whole[..4].copy_from_slice(&journal::JBD2_MAGIC_NUMBER.to_be_bytes());
                }
                out.copy_from_slice(&whole[in_block as usize..in_block as usize + chunk]);
            }
            None => dev.read_at(out, pos)?,
        }
        done += chunk;
    }
    Ok(())
}
