//! The write side: [`FileSystemMut`] for [`Fat`].
//!
//! Each operation runs under the volume's write lock and ends with the changed FAT sectors
//! written to every FAT copy and FSInfo's free count and next-free hint brought up to date,
//! so `fsck.fat -n` is clean between operations. An operation that fails half-way (ENOSPC
//! while growing a directory) has its FAT changes undone before anything is written back.
//! New clusters are taken after the file's last cluster, or after the last allocation, as
//! Linux's fat_alloc_clusters does, so chains stay near each other.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{SystemTime, UNIX_EPOCH};

use vdisk_block::{Error, Result};
use vdisk_fs::{
    errno, errno_error, Attr, FileSystem, FileSystemMut, Ino, SetAttr, TimeSet, Timestamp,
    RENAME_EXCHANGE, RENAME_NOREPLACE,
};

use crate::dirent::{
    lfn_checksum, lfn_entries, long_name_units, make_short_name, strip_tail, unix_to_fat,
    NameError, ShortEntry, ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_LONG_NAME, ATTR_READ_ONLY,
    ATTR_VOLUME_ID, DELETED, DIR_ENTRY_SIZE,
};
use crate::{lock, DirData, DirLoc, Entry, Fat, State, DEFAULT_UMASK, MAX_DIR_BYTES, ROOT_INO};

/// The largest file FAT holds: DIR_FileSize is 32 bits.
pub const MAX_FILE_SIZE: u64 = 0xFFFF_FFFF;

fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        secs: d.as_secs() as i64,
        nanos: d.subsec_nanos(),
    }
}

fn name_error(op: &'static str, e: NameError) -> Error {
    errno_error(
        op,
        match e {
            NameError::Empty => errno::ENOENT,
            NameError::Invalid => errno::EINVAL,
            NameError::TooLong => errno::ENAMETOOLONG,
            NameError::Exists => errno::EEXIST,
        },
    )
}

fn set_mtime(e: &mut ShortEntry, t: Timestamp) {
    let (tm, d, _) = unix_to_fat(t);
    e.mtime = tm;
    e.mdate = d;
}

fn new_entry(name: [u8; 11], attr: u8, t: Timestamp) -> ShortEntry {
    let (tm, d, cs) = unix_to_fat(t);
    ShortEntry {
        name,
        attr,
        lcase: 0,
        ctime_cs: cs,
        ctime: tm,
        cdate: d,
        adate: d,
        cluster: 0,
        mtime: tm,
        mdate: d,
        size: 0,
    }
}

/// The 11 bytes a FAT label is stored as, by fatlabel's rules: at most 11 bytes of printable
/// ASCII, none of `*?.,;:/\|+=<>[]"`, no leading space; lower case is kept as given (as
/// fatlabel keeps it). `None` for the empty label, which clears it.
pub fn label_bytes(label: &str) -> Result<Option<[u8; 11]>> {
    if label.is_empty() {
        return Ok(None);
    }
    let b = label.as_bytes();
    if b.len() > 11 {
        return Err(Error::invalid(format!(
            "FAT label {label:?} is {} bytes; a FAT label holds at most 11",
            b.len()
        )));
    }
    if b[0] == b' ' {
        return Err(Error::invalid(format!(
            "FAT label {label:?} starts with a space"
        )));
    }
    if let Some(&c) = b
        .iter()
        .find(|&&c| !(0x20..0x7F).contains(&c) || b"*?.,;:/\\|+=<>[]\"".contains(&c))
    {
        return Err(Error::invalid(format!(
            "FAT label {label:?} contains {:?}, which a FAT label cannot hold",
            char::from(c)
        )));
    }
    let mut out = [b' '; 11];
    out[..b.len()].copy_from_slice(b);
    Ok(Some(out))
}

impl Fat {
    /// Runs `f` as one operation under the write lock.
    fn op<T>(&self, name: &'static str, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        if !self.writable {
            return Err(errno_error(name, errno::EROFS));
        }
        let mut st = self.write_state();
        if st.verdict.is_none() {
            let v = self.pre_write_check(&st);
            st.verdict = Some(v);
        }
        if let Some(Err(why)) = &st.verdict {
            return Err(Error::corrupt(format!(
                "FAT: refusing to write a damaged volume: {why}"
            )));
        }
        lock(&self.runs).clear();
        st.fat.begin();
        let (free, prev) = (st.free, st.prev_free);
        let r = f(&mut st);
        if r.is_err() {
            st.fat.rollback();
            st.free = free;
            st.prev_free = prev;
        }
        let w = self.write_back(&mut st);
        lock(&self.runs).clear();
        let v = r?;
        w?;
        Ok(v)
    }

    /// Writes the changed FAT sectors to every copy, then FSInfo.
    fn write_back(&self, st: &mut State) -> Result<()> {
        let bps = u64::from(self.geo.bytes_per_sector);
        let dirty: Vec<(u32, Vec<u8>)> = st
            .fat
            .take_dirty()
            .into_iter()
            .map(|(s, b)| (s, b.to_vec()))
            .collect();
        for (s, b) in &dirty {
            for n in 0..self.geo.num_fats {
                self.dev
                    .write_at(b, self.geo.fat_offset(n) + u64::from(*s) * bps)?;
            }
        }
        if self.fat32() && st.fsinfo_ok && st.fsinfo_written != (st.free, st.prev_free) {
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&st.free.to_le_bytes());
            b[4..].copy_from_slice(&st.prev_free.to_le_bytes());
            self.dev
                .write_at(&b, u64::from(self.geo.fsinfo_sector) * bps + 488)?;
            st.fsinfo_written = (st.free, st.prev_free);
        }
        Ok(())
    }

    /// Takes `n` free clusters as one chain, linked after `after` when given.
    fn alloc(&self, st: &mut State, n: u32, after: Option<u32>) -> Result<Vec<u32>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        if st.free < n {
            return Err(errno_error("allocate", errno::ENOSPC));
        }
        let eoc = st.fat.eoc();
        let mut hint = after.unwrap_or(st.prev_free).saturating_add(1);
        let mut v = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let c = st
                .fat
                .find_free(hint)
                .ok_or_else(|| errno_error("allocate", errno::ENOSPC))?;
            st.fat.set(c, eoc);
            v.push(c);
            hint = c + 1;
        }
        for w in v.windows(2) {
            st.fat.set(w[0], w[1]);
        }
        if let Some(p) = after {
            st.fat.set(p, v[0]);
        }
        st.free -= n;
        st.prev_free = v[v.len() - 1];
        Ok(v)
    }

    fn free_chain(&self, st: &mut State, first: u32) -> Result<()> {
        let (chain, _) = st.fat.chain(first, st.fat.entries())?;
        for &c in &chain {
            st.fat.set(c, 0);
        }
        st.free += chain.len() as u32;
        Ok(())
    }

    fn file_chain(&self, st: &State, e: &ShortEntry) -> Result<Vec<u32>> {
        if e.cluster == 0 {
            return Ok(Vec::new());
        }
        Ok(st.fat.chain(e.cluster, st.fat.entries())?.0)
    }

    /// Writes `data` at file offset `off` across `chain`.
    fn write_chain(&self, chain: &[u32], off: u64, data: &[u8]) -> Result<()> {
        let cs = u64::from(self.geo.cluster_size);
        let mut done = 0usize;
        while done < data.len() {
            let pos = off + done as u64;
            let ci = (pos / cs) as usize;
            let mut run = 1;
            while ci + run < chain.len() && chain[ci + run] == chain[ci] + run as u32 {
                run += 1;
            }
            let in_c = pos % cs;
            let avail = run as u64 * cs - in_c;
            let n = (data.len() - done).min(avail as usize);
            self.dev.write_at(
                &data[done..done + n],
                self.geo.cluster_offset(chain[ci]) + in_c,
            )?;
            done += n;
        }
        Ok(())
    }

    fn zero_range(&self, chain: &[u32], from: u64, to: u64) -> Result<()> {
        let zeros = vec![0u8; 64 * 1024];
        let mut p = from;
        while p < to {
            let n = (to - p).min(zeros.len() as u64) as usize;
            self.write_chain(chain, p, &zeros[..n])?;
            p += n as u64;
        }
        Ok(())
    }

    /// Makes `chain` long enough for `size` bytes.
    fn grow_chain(
        &self,
        st: &mut State,
        e: &mut ShortEntry,
        chain: &mut Vec<u32>,
        size: u64,
    ) -> Result<()> {
        let need = size.div_ceil(u64::from(self.geo.cluster_size)) as usize;
        if need > chain.len() {
            let extra = self.alloc(st, (need - chain.len()) as u32, chain.last().copied())?;
            if chain.is_empty() {
                e.cluster = extra[0];
            }
            chain.extend(extra);
        }
        Ok(())
    }

    fn put_entry(&self, pos: u64, e: &ShortEntry) -> Result<()> {
        self.dev.write_at(&e.to_bytes(), pos)
    }

    /// Changes a file's size: zeros when it grows, clusters freed when it shrinks.
    fn truncate(&self, st: &mut State, e: &mut ShortEntry, size: u64) -> Result<()> {
        if size > MAX_FILE_SIZE {
            return Err(errno_error("truncate", errno::EFBIG));
        }
        let old = u64::from(e.size);
        let mut chain = self.file_chain(st, e)?;
        if size > old {
            self.grow_chain(st, e, &mut chain, size)?;
            self.zero_range(&chain, old, size)?;
        } else if size < old {
            let keep = size.div_ceil(u64::from(self.geo.cluster_size)) as usize;
            if keep == 0 {
                if e.cluster != 0 {
                    self.free_chain(st, e.cluster)?;
                }
                e.cluster = 0;
            } else if keep < chain.len() {
                let eoc = st.fat.eoc();
                st.fat.set(chain[keep - 1], eoc);
                for &c in &chain[keep..] {
                    st.fat.set(c, 0);
                }
                st.free += (chain.len() - keep) as u32;
            }
        }
        e.size = size as u32;
        e.attr |= ATTR_ARCHIVE;
        Ok(())
    }

    /// Short names in use in `d` (every live short entry, "." and ".." and labels included),
    /// leaving out slot `skip`.
    fn short_taken(&self, d: &DirData, skip: Option<usize>) -> Vec<[u8; 11]> {
        let mut v = Vec::new();
        for i in 0..d.slots() {
            let s = d.slot(i);
            if s[0] == 0 {
                break;
            }
            if s[0] == DELETED || s[11] & 0x3F == ATTR_LONG_NAME || Some(i) == skip {
                continue;
            }
            let mut n = [0u8; 11];
            n.copy_from_slice(&s[..11]);
            v.push(n);
        }
        v
    }

    /// A short name for `units` unused in `d`, and whether a long name goes beside it.
    fn pick_short(
        &self,
        st: &mut State,
        d: &DirData,
        units: &[u16],
        skip: Option<usize>,
    ) -> Result<([u8; 11], bool)> {
        let taken = self.short_taken(d, skip);
        st.seed = st.seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        make_short_name(units, &mut |n| taken.contains(n), st.seed)
            .map_err(|e| name_error("create", e))
    }

    /// The slots for an entry named `units` with short entry `e`.
    fn slots_for(units: &[u16], e: &ShortEntry, lfn: bool) -> Vec<[u8; 32]> {
        let mut v = if lfn {
            lfn_entries(units, lfn_checksum(&e.name))
        } else {
            Vec::new()
        };
        v.push(e.to_bytes());
        v
    }

    /// Writes `slots` into a run of free entries of `loc`, growing the directory when it
    /// has none; returns the device offset of the last (the short entry).
    fn insert(&self, st: &mut State, loc: DirLoc, slots: &[[u8; 32]]) -> Result<u64> {
        let mut d = self.read_dir(st, loc)?;
        let total = d.slots();
        let end = (0..total).find(|&i| d.slot(i)[0] == 0).unwrap_or(total);
        let k = slots.len();
        let mut run = 0;
        let mut start = None;
        for i in 0..total {
            if i >= end || d.slot(i)[0] == DELETED {
                run += 1;
                if run == k {
                    start = Some(i + 1 - k);
                    break;
                }
            } else {
                run = 0;
            }
        }
        let start = match start {
            Some(s) => s,
            None => {
                let DirLoc::Chain(_) = loc else {
                    return Err(errno_error("create", errno::ENOSPC));
                };
                let cs = self.geo.cluster_size as usize;
                let per = cs / DIR_ENTRY_SIZE;
                let more = (k - run).div_ceil(per);
                if (d.clusters.len() + more) * cs > MAX_DIR_BYTES as usize {
                    return Err(errno_error("create", errno::ENOSPC));
                }
                let new = self.alloc(st, more as u32, d.clusters.last().copied())?;
                let zeros = vec![0u8; cs];
                for &c in &new {
                    self.dev.write_at(&zeros, self.geo.cluster_offset(c))?;
                }
                d.clusters.extend(new);
                d.buf.resize(d.clusters.len() * cs, 0);
                total - run
            }
        };
        for (j, s) in slots.iter().enumerate() {
            self.dev.write_at(s, self.slot_pos(&d, start + j))?;
        }
        let after = start + k;
        if after < d.slots() && after >= end && d.slot(after)[0] != 0 {
            // Keep what lay past the old end marker hidden.
            self.dev
                .write_at(&[0u8; DIR_ENTRY_SIZE], self.slot_pos(&d, after))?;
        }
        Ok(self.slot_pos(&d, start + k - 1))
    }

    fn remove_slots(&self, d: &DirData, e: &Entry) -> Result<()> {
        for i in e.first..=e.slot {
            self.dev.write_at(&[DELETED], self.slot_pos(d, i))?;
        }
        Ok(())
    }

    /// Frees a directory's trailing clusters that hold no live entry (keeping one).
    fn shrink(&self, st: &mut State, loc: DirLoc) -> Result<()> {
        let DirLoc::Chain(_) = loc else {
            return Ok(());
        };
        let d = self.read_dir(st, loc)?;
        let total = d.slots();
        let end = (0..total).find(|&i| d.slot(i)[0] == 0).unwrap_or(total);
        let last_live = (0..end).rev().find(|&i| d.slot(i)[0] != DELETED);
        let per = self.geo.cluster_size as usize / DIR_ENTRY_SIZE;
        let keep = last_live.map_or(1, |i| i / per + 1).max(1);
        if keep < d.clusters.len() {
            let eoc = st.fat.eoc();
            st.fat.set(d.clusters[keep - 1], eoc);
            for &c in &d.clusters[keep..] {
                st.fat.set(c, 0);
            }
            st.free += (d.clusters.len() - keep) as u32;
        }
        Ok(())
    }

    /// Sets a directory's modification time (the root has no entry to hold one).
    fn touch_dir(&self, ino: Ino, t: Timestamp) -> Result<()> {
        if ino == ROOT_INO {
            return Ok(());
        }
        let pos = self.node(ino)?.pos;
        let mut e = self.entry_at(pos)?;
        set_mtime(&mut e, t);
        self.put_entry(pos, &e)
    }

    /// The cluster a ".." entry names for directory `ino` (0 for the root).
    fn dotdot_cluster(&self, ino: Ino) -> Result<u32> {
        if ino == ROOT_INO {
            return Ok(0);
        }
        match self.dir_loc(ino)? {
            DirLoc::Chain(c) => Ok(c),
            DirLoc::Fixed => Ok(0),
        }
    }

    fn make(&self, op: &'static str, parent: Ino, name: &OsStr, dir: bool) -> Result<Ino> {
        self.op(op, |st| {
            let nb = name.as_bytes();
            if nb == b"." || nb == b".." {
                return Err(errno_error(op, errno::EEXIST));
            }
            let loc = self.dir_loc(parent)?;
            let stripped = strip_tail(nb);
            let units = long_name_units(stripped).map_err(|e| name_error(op, e))?;
            let d = self.read_dir(st, loc)?;
            if self.find_in(&d, stripped).is_some() {
                return Err(errno_error(op, errno::EEXIST));
            }
            let (short, lfn) = self.pick_short(st, &d, &units, None)?;
            let t = now();
            let mut e = new_entry(short, if dir { ATTR_DIRECTORY } else { ATTR_ARCHIVE }, t);
            if dir {
                let c = self.alloc(st, 1, None)?[0];
                e.cluster = c;
                let mut buf = vec![0u8; self.geo.cluster_size as usize];
                let mut dot = e;
                dot.name = *b".          ";
                buf[..32].copy_from_slice(&dot.to_bytes());
                let mut dotdot = e;
                dotdot.name = *b"..         ";
                dotdot.cluster = self.dotdot_cluster(parent)?;
                buf[32..64].copy_from_slice(&dotdot.to_bytes());
                self.dev.write_at(&buf, self.geo.cluster_offset(c))?;
            }
            let pos = self.insert(st, loc, &Self::slots_for(&units, &e, lfn))?;
            self.touch_dir(parent, t)?;
            let mut inos = lock(&self.inos);
            inos.forget_pos(pos);
            Ok(inos.ino_for(pos, parent))
        })
    }

    fn remove(&self, parent: Ino, name: &OsStr, dir: bool) -> Result<()> {
        let op = if dir { "rmdir" } else { "unlink" };
        self.op(op, |st| {
            let nb = name.as_bytes();
            if nb == b"." || nb == b".." {
                return Err(errno_error(
                    op,
                    if !dir {
                        errno::EISDIR
                    } else if nb == b"." {
                        errno::EINVAL
                    } else {
                        errno::ENOTEMPTY
                    },
                ));
            }
            let loc = self.dir_loc(parent)?;
            let d = self.read_dir(st, loc)?;
            let e = self
                .find_in(&d, nb)
                .ok_or_else(|| errno_error(op, errno::ENOENT))?;
            match (dir, e.short.is_dir()) {
                (false, true) => return Err(errno_error(op, errno::EISDIR)),
                (true, false) => return Err(errno_error(op, errno::ENOTDIR)),
                (true, true) => {
                    let child = self.read_dir(st, self.dir_loc_of(&e.short)?)?;
                    if !self.entries(&child).is_empty() {
                        return Err(errno_error(op, errno::ENOTEMPTY));
                    }
                }
                (false, false) => {}
            }
            self.remove_slots(&d, &e)?;
            if e.short.cluster != 0 {
                self.free_chain(st, e.short.cluster)?;
            }
            self.shrink(st, loc)?;
            self.touch_dir(parent, now())?;
            lock(&self.inos).forget_pos(self.slot_pos(&d, e.slot));
            Ok(())
        })
    }

    fn rename_op(
        &self,
        st: &mut State,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        let sloc = self.dir_loc(parent)?;
        let dloc = self.dir_loc(newparent)?;
        let sd = self.read_dir(st, sloc)?;
        let se = self
            .find_in(&sd, name)
            .ok_or_else(|| errno_error("rename", errno::ENOENT))?;
        let spos = self.slot_pos(&sd, se.slot);
        let sino = lock(&self.inos).ino_for(spos, parent);
        let stripped = strip_tail(newname);
        let units = long_name_units(stripped).map_err(|e| name_error("rename", e))?;
        let is_dir = se.short.is_dir();
        if is_dir {
            // Not into itself or below it: walk up from the new parent.
            let mut a = newparent;
            let mut steps = 0usize;
            while a != ROOT_INO {
                if a == sino {
                    return Err(errno_error("rename", errno::EINVAL));
                }
                a = self.node(a)?.parent;
                steps += 1;
                if steps > crate::check::MAX_DEPTH * 16 {
                    return Err(Error::corrupt("FAT: directory parents form a loop"));
                }
            }
        }
        let dd = self.read_dir(st, dloc)?;
        let target = self.find_in(&dd, stripped);
        let t = now();
        let new_pos = match target {
            Some(tg) if self.slot_pos(&dd, tg.slot) == spos => {
                // The same entry: a change of case (or nothing).
                if tg.name == stripped {
                    return Ok(());
                }
                let (short, lfn) = self.pick_short(st, &dd, &units, Some(tg.slot))?;
                let mut ne = se.short;
                ne.name = short;
                ne.lcase = 0;
                let pos = self.insert(st, dloc, &Self::slots_for(&units, &ne, lfn))?;
                self.remove_slots(&sd, &se)?;
                pos
            }
            Some(tg) => {
                if flags & RENAME_NOREPLACE != 0 {
                    return Err(errno_error("rename", errno::EEXIST));
                }
                let tdir = tg.short.is_dir();
                if is_dir && !tdir {
                    return Err(errno_error("rename", errno::ENOTDIR));
                }
                if !is_dir && tdir {
                    return Err(errno_error("rename", errno::EISDIR));
                }
                if tdir {
                    let child = self.read_dir(st, self.dir_loc_of(&tg.short)?)?;
                    if !self.entries(&child).is_empty() {
                        return Err(errno_error("rename", errno::ENOTEMPTY));
                    }
                }
                // The moved object takes over the target's entry and so its name, as vfat
                // does; the target's clusters are freed.
                let tpos = self.slot_pos(&dd, tg.slot);
                let mut ne = se.short;
                ne.name = tg.short.name;
                ne.lcase = tg.short.lcase;
                self.put_entry(tpos, &ne)?;
                if tg.short.cluster != 0 {
                    self.free_chain(st, tg.short.cluster)?;
                }
                self.remove_slots(&sd, &se)?;
                lock(&self.inos).forget_pos(tpos);
                tpos
            }
            None => {
                let (short, lfn) = self.pick_short(st, &dd, &units, None)?;
                let mut ne = se.short;
                ne.name = short;
                ne.lcase = 0;
                let pos = self.insert(st, dloc, &Self::slots_for(&units, &ne, lfn))?;
                self.remove_slots(&sd, &se)?;
                pos
            }
        };
        {
            let mut inos = lock(&self.inos);
            inos.by_pos.remove(&spos);
            inos.by_pos.insert(new_pos, sino);
            if let Some(n) = inos.by_ino.get_mut(&sino) {
                n.pos = new_pos;
                n.parent = newparent;
            }
        }
        if is_dir && parent != newparent {
            let c = se.short.cluster;
            let off = self.geo.cluster_offset(c) + DIR_ENTRY_SIZE as u64;
            let mut b = [0u8; 32];
            self.dev.read_at(&mut b, off)?;
            if &b[..11] == b"..         " {
                let mut dd = ShortEntry::parse(&b, self.fat32());
                dd.cluster = self.dotdot_cluster(newparent)?;
                self.put_entry(off, &dd)?;
            }
        }
        self.shrink(st, sloc)?;
        self.touch_dir(parent, t)?;
        if newparent != parent {
            self.touch_dir(newparent, t)?;
        }
        Ok(())
    }

    /// vfat's fat_sanitize_mode_change with the default masks: the permission bits a chmod
    /// to `perm` leaves, or None when vfat would ignore it.
    fn sanitize_mode(is_dir: bool, cur_perm: u32, perm: u32) -> Option<u32> {
        let p = perm & !DEFAULT_UMASK & 0o777;
        if p & 0o555 != cur_perm & 0o555 {
            return None;
        }
        let w = 0o222 & !DEFAULT_UMASK;
        if is_dir {
            if p & 0o222 != w {
                return None;
            }
        } else if p & 0o222 != 0 && p & 0o222 != w {
            return None;
        }
        Some(p)
    }
}

impl Fat {
    /// Sets or clears (empty `label`) the volume label, as fatlabel does: the root
    /// directory's label entry is renamed, created or deleted, and BS_VolLab in the boot
    /// sector (and the FAT32 backup boot sector) follows, "NO NAME" when cleared.
    pub fn set_label(&self, label: &str) -> Result<()> {
        let bytes = label_bytes(label)?;
        self.op("set_label", |st| {
            let loc = self.root_loc();
            let d = self.read_dir(st, loc)?;
            let mut found = None;
            for i in 0..d.slots() {
                let s = d.slot(i);
                if s[0] == 0 {
                    break;
                }
                if s[0] != DELETED && s[11] & 0x3F != ATTR_LONG_NAME && s[11] & ATTR_VOLUME_ID != 0
                {
                    found = Some(i);
                    break;
                }
            }
            let t = now();
            match (found, bytes) {
                (Some(i), Some(name)) => {
                    let mut e = ShortEntry::parse(d.slot(i), self.fat32());
                    e.name = name;
                    set_mtime(&mut e, t);
                    self.put_entry(self.slot_pos(&d, i), &e)?;
                }
                (Some(i), None) => {
                    // Deleted, and no longer a label (as fatlabel -r leaves it).
                    let pos = self.slot_pos(&d, i);
                    self.dev.write_at(&[DELETED], pos)?;
                    self.dev.write_at(&[0], pos + 11)?;
                }
                (None, Some(name)) => {
                    let mut e = new_entry(name, ATTR_VOLUME_ID, t);
                    // Whole seconds, as fatlabel and mkfs.fat stamp a label.
                    e.ctime_cs = 0;
                    self.insert(st, loc, &[e.to_bytes()])?;
                }
                (None, None) => {}
            }
            if self.geo.volume_id.is_some() {
                let at = if self.fat32() { 0x47 } else { 0x2B };
                let v = bytes.unwrap_or(*b"NO NAME    ");
                let bps = u64::from(self.geo.bytes_per_sector);
                self.dev.write_at(&v, at)?;
                if self.fat32() && self.geo.backup_boot_sector != 0 {
                    self.dev
                        .write_at(&v, u64::from(self.geo.backup_boot_sector) * bps + at)?;
                }
            }
            Ok(())
        })?;
        *lock(&self.label) = bytes.map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches(' ')
                .to_string()
        });
        Ok(())
    }
}

impl FileSystemMut for Fat {
    fn create(&self, parent: Ino, name: &OsStr, _mode: u32, _uid: u32, _gid: u32) -> Result<Attr> {
        let ino = self.make("create", parent, name, false)?;
        self.getattr(ino)
    }

    fn mkdir(&self, parent: Ino, name: &OsStr, _mode: u32, _uid: u32, _gid: u32) -> Result<Attr> {
        let ino = self.make("mkdir", parent, name, true)?;
        self.getattr(ino)
    }

    /// Regular files only; device files, FIFOs and sockets fail with EPERM as on vfat
    /// (which has no mknod).
    fn mknod(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        _rdev: u64,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        if mode & 0o170000 == 0o100000 {
            return self.create(parent, name, mode, uid, gid);
        }
        self.refuse("mknod")
    }

    /// FAT has no symlinks: EPERM, as vfat answers.
    fn symlink(
        &self,
        _parent: Ino,
        _name: &OsStr,
        _target: &OsStr,
        _uid: u32,
        _gid: u32,
    ) -> Result<Attr> {
        self.refuse("symlink")
    }

    /// FAT has no hard links: EPERM, as vfat answers.
    fn link(&self, _ino: Ino, _newparent: Ino, _newname: &OsStr) -> Result<Attr> {
        self.refuse("link")
    }

    fn unlink(&self, parent: Ino, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    fn rmdir(&self, parent: Ino, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
    }

    /// RENAME_EXCHANGE is refused with EINVAL. Replacing an existing name keeps that
    /// entry's spelling (vfat reuses the target's directory entry).
    fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        if flags & RENAME_EXCHANGE != 0 || flags & !RENAME_NOREPLACE != 0 {
            return Err(errno_error("rename", errno::EINVAL));
        }
        let (a, b) = (name.as_bytes(), newname.as_bytes());
        if matches!(a, b"." | b"..") || matches!(b, b"." | b"..") {
            return Err(errno_error("rename", errno::EINVAL));
        }
        self.op("rename", |st| {
            self.rename_op(st, parent, a, newparent, b, flags)
        })
    }

    fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        if ino == ROOT_INO {
            return Err(errno_error("write", errno::EISDIR));
        }
        self.op("write", |st| {
            let pos = self.node(ino)?.pos;
            let mut e = self.entry_at(pos)?;
            if e.is_dir() {
                return Err(errno_error("write", errno::EISDIR));
            }
            if data.is_empty() {
                return Ok(());
            }
            let end = offset
                .checked_add(data.len() as u64)
                .filter(|&e| e <= MAX_FILE_SIZE)
                .ok_or_else(|| errno_error("write", errno::EFBIG))?;
            let old = u64::from(e.size);
            let mut chain = self.file_chain(st, &e)?;
            self.grow_chain(st, &mut e, &mut chain, end.max(old))?;
            if offset > old {
                self.zero_range(&chain, old, offset)?;
            }
            self.write_chain(&chain, offset, data)?;
            e.size = end.max(old) as u32;
            e.attr |= ATTR_ARCHIVE;
            set_mtime(&mut e, now());
            self.put_entry(pos, &e)
        })?;
        Ok(data.len())
    }

    /// chown to anyone but root fails with EPERM and chmod of set-id or sticky bits too, as
    /// vfat answers; a chmod vfat cannot show is accepted and ignored (vfat's "too old
    /// behavior"); taking all write bits away sets the read-only attribute of a file.
    /// Times are stored at FAT's granularity (2 s for mtime, a day for atime).
    fn setattr(&self, ino: Ino, c: &SetAttr) -> Result<Attr> {
        if c.uid.is_some_and(|u| u != 0)
            || c.gid.is_some_and(|g| g != 0)
            || c.mode.is_some_and(|m| m & !0o777 != 0)
        {
            return Err(errno_error("setattr", errno::EPERM));
        }
        if ino == ROOT_INO {
            if c.size.is_some() {
                return Err(errno_error("truncate", errno::EISDIR));
            }
            if !self.writable {
                return Err(errno_error("setattr", errno::EROFS));
            }
            // The root has no entry to hold times or attributes.
            return self.getattr(ino);
        }
        self.op("setattr", |st| {
            let pos = self.node(ino)?.pos;
            let mut e = self.entry_at(pos)?;
            if let Some(size) = c.size {
                if e.is_dir() {
                    return Err(errno_error("truncate", errno::EISDIR));
                }
                if size != u64::from(e.size) {
                    self.truncate(st, &mut e, size)?;
                    set_mtime(&mut e, now());
                }
            }
            if let Some(m) = c.mode {
                let cur = if e.is_dir() || e.attr & ATTR_READ_ONLY == 0 {
                    0o755
                } else {
                    0o555
                };
                if let Some(p) = Self::sanitize_mode(e.is_dir(), cur, m) {
                    if !e.is_dir() {
                        if p & 0o222 == 0 {
                            e.attr |= ATTR_READ_ONLY;
                        } else {
                            e.attr &= !ATTR_READ_ONLY;
                        }
                    }
                }
            }
            let pick = |s: TimeSet| match s {
                TimeSet::Now => now(),
                TimeSet::At(t) => t,
            };
            if let Some(m) = c.mtime {
                set_mtime(&mut e, pick(m));
            }
            if let Some(a) = c.atime {
                e.adate = unix_to_fat(pick(a)).1;
            }
            self.put_entry(pos, &e)
        })?;
        self.getattr(ino)
    }

    /// FAT has no extended attributes: EOPNOTSUPP.
    fn setxattr(&self, _ino: Ino, _name: &OsStr, _value: &[u8], _flags: u32) -> Result<()> {
        Err(errno_error("setxattr", errno::EOPNOTSUPP))
    }

    /// FAT has no extended attributes: EOPNOTSUPP.
    fn removexattr(&self, _ino: Ino, _name: &OsStr) -> Result<()> {
        Err(errno_error("removexattr", errno::EOPNOTSUPP))
    }

    fn flush(&self) -> Result<()> {
        let _st = self.write_state();
        self.dev.flush()
    }

    fn set_label(&self, label: &str) -> Result<()> {
        Fat::set_label(self, label)
    }
}

impl Fat {
    fn refuse<T>(&self, op: &'static str) -> Result<T> {
        if !self.writable {
            return Err(errno_error(op, errno::EROFS));
        }
        Err(errno_error(op, errno::EPERM))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chmod_as_vfat_sanitizes_it() {
        assert_eq!(Fat::sanitize_mode(false, 0o755, 0o755), Some(0o755));
        assert_eq!(Fat::sanitize_mode(false, 0o755, 0o777), Some(0o755));
        assert_eq!(Fat::sanitize_mode(false, 0o755, 0o555), Some(0o555));
        assert_eq!(Fat::sanitize_mode(false, 0o755, 0o444), None);
        assert_eq!(Fat::sanitize_mode(false, 0o755, 0o644), None);
        assert_eq!(Fat::sanitize_mode(true, 0o755, 0o555), None);
        assert_eq!(Fat::sanitize_mode(true, 0o755, 0o755), Some(0o755));
    }

    #[test]
    fn name_checks() {
        assert_eq!(
            crate::dirent::long_name_units(b"a:b"),
            Err(NameError::Invalid)
        );
        assert_eq!(crate::dirent::long_name_units(b""), Err(NameError::Empty));
        assert_eq!(
            crate::dirent::long_name_units(&[b'a'; 256]),
            Err(NameError::TooLong)
        );
        assert_eq!(
            crate::dirent::long_name_units(&[0xff, 0xfe]),
            Err(NameError::Invalid)
        );
    }
}
