//! A FAT12/16/32 engine with VFAT long names, read and write, behind the guest layer's
//! path-level traits ([`FileSystem`], [`FileSystemMut`]).
//!
//! ```text
//!   guestfs seam (FileSystem / FileSystemMut: inode numbers, byte names, errnos)
//!        |
//!   Fat  -- inode table (i_pos: where each short entry sits) -- directory entries (dirent)
//!        |                                                    -- the FAT in memory (table)
//!   BlockDevice (a partition view, an image)       boot sector checked first (bpb)
//! ```
//!
//! Our own code rather than the `fatfs` crate: our traits take `&self` from many FUSE threads
//! and name files by inode number, while fatfs hands out borrowed `File`/`Dir` objects over a
//! `Read + Write + Seek` storage that needs `&mut`; it also trusts the BPB further than we can
//! let a hostile image be trusted.
//!
//! What it shows is what Linux's vfat shows with default mount options: owner root:root,
//! mode 0755 for directories and files (umask 022 as the default fmask/dmask), no write bits
//! on a read-only file, names in UTF-8 compared case-insensitively (ASCII letters) with their
//! case kept, FAT times read as UTC. Inode numbers come from where an entry's short entry
//! sits on the device (Linux's i_pos), the root is 1, and an object keeps its number when it
//! is renamed.
//!
//! ```no_run
//! use std::sync::Arc;
//! use vdisk_fat::Fat;
//! use vdisk_fs::{FileSystem, FileSystemMut};
//! # fn dev() -> Arc<dyn vdisk_block::BlockDevice> { unimplemented!() }
//! let fs = Fat::open(dev(), true).unwrap();
//! let ino = fs.resolve(b"/EFI/debian/grub.cfg", true).unwrap();
//! fs.write(ino, 0, b"set timeout=5\n").unwrap();
//! fs.flush().unwrap();
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod bpb;
mod check;
pub mod dirent;
pub mod table;
mod write;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use vdisk_block::{BlockDevice, Error, Result};
use vdisk_fs::{
    errno, errno_error, Attr, Capabilities, DirEntry, FileKind, FileSystem, FileSystemMut, Ino,
    StatFs, Timestamp,
};

use bpb::{FatType, Geometry};
use dirent::{
    fat_to_unix, LfnBuilder, ShortEntry, ATTR_LONG_NAME, ATTR_READ_ONLY, ATTR_VOLUME_ID, DELETED,
    DIR_ENTRY_SIZE,
};
use table::Table;

/// The root directory's inode number (Linux's MSDOS_ROOT_INO).
pub const ROOT_INO: Ino = 1;
/// The largest directory, in bytes (Linux's FAT_MAX_DIR_SIZE: 65536 entries).
pub const MAX_DIR_BYTES: u32 = 65536 * 32;
/// Inode numbers handed out when an entry's natural number (from its position) is held by a
/// renamed object start here, above any position-derived number.
const SYNTHETIC_INO_BASE: Ino = 1 << 56;
/// The mask vfat's default fmask and dmask apply (the mounting process's umask, 022).
pub const DEFAULT_UMASK: u32 = 0o022;
/// The longest name statfs reports, as Linux's vfat reports it: FAT_LFN_LEN (255 UTF-16
/// units) times NLS_MAX_CHARSET_SIZE (6 bytes a character at most), in bytes. Names are
/// still limited to 255 UTF-16 units (the capabilities' `name_max`).
pub const NAME_MAX: u32 = 255 * 6;

/// Where a live object's short entry is, and its parent directory.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// Byte offset of the short entry on the device.
    pos: u64,
    /// The directory holding the entry.
    parent: Ino,
}

#[derive(Debug, Default)]
struct Inodes {
    by_ino: HashMap<Ino, Node>,
    by_pos: HashMap<u64, Ino>,
    next_synthetic: Ino,
}

impl Inodes {
    /// The inode number of the object whose short entry is at `pos` in `parent`.
    fn ino_for(&mut self, pos: u64, parent: Ino) -> Ino {
        if let Some(&i) = self.by_pos.get(&pos) {
            if let Some(n) = self.by_ino.get_mut(&i) {
                n.parent = parent;
            }
            return i;
        }
        let natural = pos / DIR_ENTRY_SIZE as u64 + 2;
        let ino = if self.by_ino.contains_key(&natural) {
            self.next_synthetic = self.next_synthetic.max(SYNTHETIC_INO_BASE) + 1;
            self.next_synthetic
        } else {
            natural
        };
        self.by_ino.insert(ino, Node { pos, parent });
        self.by_pos.insert(pos, ino);
        ino
    }

    fn forget_pos(&mut self, pos: u64) {
        if let Some(i) = self.by_pos.remove(&pos) {
            self.by_ino.remove(&i);
        }
    }
}

/// The mutable state behind the volume's read-write lock.
#[derive(Debug)]
struct State {
    fat: Table,
    /// Free data clusters (counted at open, kept by every allocation).
    free: u32,
    /// Where the last allocation ended (FSInfo's FSI_Nxt_Free).
    prev_free: u32,
    /// The pre-write check's verdict: None until the first write asks.
    verdict: Option<std::result::Result<(), String>>,
    /// FSInfo signatures were valid, so FSInfo is kept up to date.
    fsinfo_ok: bool,
    /// Free count and next-free as last written to FSInfo.
    fsinfo_written: (u32, u32),
    /// Varies the hex tails of short names once nine numeric tails are taken.
    seed: u32,
}

/// A directory's storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirLoc {
    /// The fixed root directory of FAT12/16.
    Fixed,
    /// A cluster chain from this cluster.
    Chain(u32),
}

/// A directory's entries read into memory, with the clusters they came from.
struct DirData {
    buf: Vec<u8>,
    clusters: Vec<u32>,
}

impl DirData {
    fn slots(&self) -> usize {
        self.buf.len() / DIR_ENTRY_SIZE
    }
    fn slot(&self, i: usize) -> &[u8] {
        &self.buf[i * DIR_ENTRY_SIZE..(i + 1) * DIR_ENTRY_SIZE]
    }
}

/// One live entry of a directory.
#[derive(Debug, Clone)]
struct Entry {
    /// The name shown: the long name, else the short name as vfat shows it.
    name: Vec<u8>,
    short: ShortEntry,
    /// Slot of the first long-name entry (== `slot` without one).
    first: usize,
    /// Slot of the short entry.
    slot: usize,
}

/// A run of a file's clusters: file cluster index, first device cluster, length.
type Run = (u32, u32, u32);

/// Files' cluster runs by (first cluster, cluster count).
type RunCache = HashMap<(u32, u32), Arc<Vec<Run>>>;

/// A FAT volume, opened read-only or read-write; one object serves [`FileSystem`] and
/// [`FileSystemMut`] (writes on a read-only open fail with EROFS).
pub struct Fat {
    dev: Arc<dyn BlockDevice>,
    geo: Geometry,
    writable: bool,
    st: RwLock<State>,
    inos: Mutex<Inodes>,
    /// Cluster runs of files read lately, by first cluster and cluster count (two damaged
    /// entries may share a first cluster); emptied by every write.
    runs: Mutex<RunCache>,
    /// The label as last read or set.
    label: Mutex<Option<String>>,
}

impl std::fmt::Debug for Fat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fat")
            .field("geo", &self.geo)
            .field("writable", &self.writable)
            .finish_non_exhaustive()
    }
}

/// How many file cluster runs [`Fat`] remembers before starting over.
const MAX_CACHED_RUNS: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fat {
    /// Opens the FAT volume on `dev`; `writable` allows [`FileSystemMut`]'s operations
    /// (the volume is checked before the first write, which is refused if it is damaged).
    pub fn open(dev: Arc<dyn BlockDevice>, writable: bool) -> Result<Fat> {
        let size = dev.size();
        if size < 512 {
            return Err(Error::corrupt(format!(
                "FAT boot sector: device of {size} bytes is too small"
            )));
        }
        let mut sector = vec![0u8; 512];
        dev.read_at(&mut sector, 0)?;
        let geo = Geometry::parse(&sector, size)?;
        let fat_len = usize::try_from(geo.fat_bytes())
            .map_err(|_| Error::unsupported("FAT too large for this host"))?;
        // Only the part holding entries is needed; the rest of the FAT's sectors is padding.
        let mut bytes = vec![0u8; fat_len.min(bpb::MAX_FAT_BYTES as usize + 8192)];
        dev.read_at(&mut bytes, geo.fat_offset(geo.active_fat))?;
        let fat = Table::new(&geo, bytes);
        let free = fat.count_free();
        let (mut prev_free, mut fsinfo_ok) = (2, false);
        if geo.fat_type == FatType::Fat32 && geo.fsinfo_sector != 0 {
            let mut fsi = vec![0u8; 512];
            dev.read_at(
                &mut fsi,
                u64::from(geo.fsinfo_sector) * u64::from(geo.bytes_per_sector),
            )?;
            let u = |o: usize| u32::from_le_bytes([fsi[o], fsi[o + 1], fsi[o + 2], fsi[o + 3]]);
            if u(0) == 0x4161_5252 && u(484) == 0x6141_7272 && u(508) == 0xAA55_0000 {
                fsinfo_ok = true;
                let nf = u(492);
                if geo.valid_cluster(nf) {
                    prev_free = nf;
                }
            }
        }
        let mut fs = Fat {
            dev,
            geo,
            writable,
            st: RwLock::new(State {
                fat,
                free,
                prev_free,
                verdict: None,
                fsinfo_ok,
                fsinfo_written: (u32::MAX, u32::MAX),
                seed: 0x5EED,
            }),
            inos: Mutex::new(Inodes::default()),
            runs: Mutex::new(HashMap::new()),
            label: Mutex::new(None),
        };
        fs.label = Mutex::new(fs.read_label()?);
        Ok(fs)
    }

    /// FAT12, FAT16 or FAT32.
    pub fn fat_type(&self) -> FatType {
        self.geo.fat_type
    }

    /// The volume's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// The volume label: the root directory's label entry, else the boot sector's, as blkid
    /// reads it (trailing spaces dropped; "NO NAME" is no label).
    pub fn label(&self) -> Option<String> {
        lock(&self.label).clone()
    }

    /// The volume serial number (BS_VolID), as blkid prints it ("ABCD-1234").
    pub fn uuid(&self) -> Option<String> {
        self.geo
            .volume_id
            .map(|v| format!("{:04X}-{:04X}", v >> 16, v & 0xFFFF))
    }

    /// The underlying device.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// True when opened read-write.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    fn read_label(&self) -> Result<Option<String>> {
        let clean = |b: &[u8]| -> Option<String> {
            let s: String = b.iter().map(|&c| char::from(c)).collect();
            let s = s.trim_end_matches(' ').to_string();
            (!s.is_empty() && s != "NO NAME").then_some(s)
        };
        let st = self.read_state();
        let d = self.read_dir(&st, self.root_loc())?;
        for i in 0..d.slots() {
            let s = d.slot(i);
            if s[0] == 0 {
                break;
            }
            if s[0] != DELETED && s[11] & 0x3F != ATTR_LONG_NAME && s[11] & ATTR_VOLUME_ID != 0 {
                return Ok(clean(&s[..11]));
            }
        }
        Ok(self.geo.bpb_label.and_then(|l| clean(&l)))
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.st.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.st.write().unwrap_or_else(|e| e.into_inner())
    }

    fn fat32(&self) -> bool {
        self.geo.fat_type == FatType::Fat32
    }

    fn root_loc(&self) -> DirLoc {
        if self.fat32() {
            DirLoc::Chain(self.geo.root_cluster)
        } else {
            DirLoc::Fixed
        }
    }

    fn max_dir_clusters(&self) -> u32 {
        (MAX_DIR_BYTES / self.geo.cluster_size).max(1)
    }

    /// A directory's chain, bounded by the largest directory Linux makes.
    fn dir_chain(&self, st: &State, first: u32) -> Result<Vec<u32>> {
        let (v, complete) = st.fat.chain(first, self.max_dir_clusters())?;
        if !complete {
            return Err(Error::corrupt(format!(
                "FAT: directory at cluster {first} is longer than {MAX_DIR_BYTES} bytes (or its chain loops)"
            )));
        }
        Ok(v)
    }

    fn read_dir(&self, st: &State, loc: DirLoc) -> Result<DirData> {
        match loc {
            DirLoc::Fixed => {
                let mut buf = vec![0u8; self.geo.root_entries as usize * DIR_ENTRY_SIZE];
                self.dev.read_at(&mut buf, self.geo.root_dir_start)?;
                Ok(DirData {
                    buf,
                    clusters: Vec::new(),
                })
            }
            DirLoc::Chain(first) => {
                let clusters = self.dir_chain(st, first)?;
                let cs = self.geo.cluster_size as usize;
                let mut buf = vec![0u8; clusters.len() * cs];
                for (i, &c) in clusters.iter().enumerate() {
                    self.dev
                        .read_at(&mut buf[i * cs..(i + 1) * cs], self.geo.cluster_offset(c))?;
                }
                Ok(DirData { buf, clusters })
            }
        }
    }

    /// Device offset of slot `i` of directory `d`.
    fn slot_pos(&self, d: &DirData, i: usize) -> u64 {
        if d.clusters.is_empty() {
            self.geo.root_dir_start + (i * DIR_ENTRY_SIZE) as u64
        } else {
            let per = self.geo.cluster_size as usize / DIR_ENTRY_SIZE;
            self.geo.cluster_offset(d.clusters[i / per]) + ((i % per) * DIR_ENTRY_SIZE) as u64
        }
    }

    /// The live entries of `d` ("." and "..", deleted entries and labels left out).
    fn entries(&self, d: &DirData) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut lfn = LfnBuilder::default();
        for i in 0..d.slots() {
            let s = d.slot(i);
            if s[0] == 0 {
                break;
            }
            if s[0] == DELETED {
                lfn.reset();
                continue;
            }
            if s[11] & 0x3F == ATTR_LONG_NAME {
                lfn.push(s, i);
                continue;
            }
            let e = ShortEntry::parse(s, self.fat32());
            if e.attr & ATTR_VOLUME_ID != 0 {
                lfn.reset();
                continue;
            }
            if &e.name == b".          " || &e.name == b"..         " {
                lfn.reset();
                continue;
            }
            let (name, first) = match lfn.finish(&e.name) {
                Some((n, start)) => (n, start),
                None => (e.display_name(), i),
            };
            out.push(Entry {
                name,
                short: e,
                first,
                slot: i,
            });
        }
        out
    }

    fn node(&self, ino: Ino) -> Result<Node> {
        lock(&self.inos)
            .by_ino
            .get(&ino)
            .copied()
            .ok_or_else(|| errno_error("inode", errno::ENOENT))
    }

    /// The short entry at `pos`, which must still be a live file or directory.
    fn entry_at(&self, pos: u64) -> Result<ShortEntry> {
        let mut b = [0u8; 32];
        self.dev.read_at(&mut b, pos)?;
        if b[0] == 0
            || b[0] == DELETED
            || b[11] & 0x3F == ATTR_LONG_NAME
            || b[11] & ATTR_VOLUME_ID != 0
        {
            return Err(errno_error("inode", errno::ENOENT));
        }
        Ok(ShortEntry::parse(&b, self.fat32()))
    }

    /// The storage of directory `ino` (ENOTDIR for a file).
    fn dir_loc(&self, ino: Ino) -> Result<DirLoc> {
        if ino == ROOT_INO {
            return Ok(self.root_loc());
        }
        let e = self.entry_at(self.node(ino)?.pos)?;
        if !e.is_dir() {
            return Err(errno_error("directory", errno::ENOTDIR));
        }
        self.dir_loc_of(&e)
    }

    fn dir_loc_of(&self, e: &ShortEntry) -> Result<DirLoc> {
        if e.cluster == 0 {
            // Linux reads a ".." entry of 0 as the root; a directory entry of 0 is damage.
            return Err(Error::corrupt(format!(
                "FAT: directory {} has no cluster",
                String::from_utf8_lossy(&e.display_name())
            )));
        }
        if !self.geo.valid_cluster(e.cluster) {
            return Err(Error::corrupt(format!(
                "FAT: directory {} starts at cluster {}, outside the volume",
                String::from_utf8_lossy(&e.display_name()),
                e.cluster
            )));
        }
        Ok(DirLoc::Chain(e.cluster))
    }

    /// The entry named `name` (case-insensitively, long or short name) in `d`.
    fn find_in(&self, d: &DirData, name: &[u8]) -> Option<Entry> {
        let name = dirent::strip_tail(name);
        if name.is_empty() {
            return None;
        }
        self.entries(d).into_iter().find(|e| {
            dirent::names_equal(&e.name, name) || dirent::names_equal(&e.short.display_name(), name)
        })
    }

    fn attr_of(&self, st: &State, ino: Ino, e: Option<&ShortEntry>) -> Result<Attr> {
        let cs = u64::from(self.geo.cluster_size);
        let round = |n: u64| n.div_ceil(cs) * cs / 512;
        let Some(e) = e else {
            // The root: no entry, times 0 as Linux's fat_read_root sets them.
            let loc = self.root_loc();
            let size = match loc {
                DirLoc::Fixed => u64::from(self.geo.root_entries) * 32,
                DirLoc::Chain(c) => self.dir_chain(st, c)?.len() as u64 * cs,
            };
            let d = self.read_dir(st, loc)?;
            let subdirs = self.entries(&d).iter().filter(|e| e.short.is_dir()).count() as u32;
            return Ok(Attr {
                ino,
                size,
                blocks: round(size),
                kind: FileKind::Dir,
                mode: 0o040000 | (0o777 & !DEFAULT_UMASK),
                nlink: subdirs + 2,
                uid: 0,
                gid: 0,
                atime: Timestamp::default(),
                mtime: Timestamp::default(),
                ctime: Timestamp::default(),
                crtime: None,
                rdev: 0,
                blksize: self.geo.cluster_size,
            });
        };
        let mtime = fat_to_unix(e.mtime, e.mdate, 0);
        let atime = fat_to_unix(0, e.adate, 0);
        let crtime = fat_to_unix(e.ctime, e.cdate, e.ctime_cs);
        let (kind, mode, size, nlink) = if e.is_dir() {
            let DirLoc::Chain(c) = self.dir_loc_of(e)? else {
                unreachable!("a directory entry's storage is a chain")
            };
            let d = self.read_dir(st, DirLoc::Chain(c))?;
            let subdirs = self.entries(&d).iter().filter(|e| e.short.is_dir()).count() as u32;
            // A read-only attribute on a directory is not shown (no `rodir` option).
            (
                FileKind::Dir,
                0o040000 | (0o777 & !DEFAULT_UMASK),
                d.clusters.len() as u64 * cs,
                subdirs + 2,
            )
        } else {
            let mut perm = 0o777 & !DEFAULT_UMASK;
            if e.attr & ATTR_READ_ONLY != 0 {
                perm &= !0o222;
            }
            (FileKind::File, 0o100000 | perm, u64::from(e.size), 1)
        };
        Ok(Attr {
            ino,
            size,
            blocks: round(size),
            kind,
            mode,
            nlink,
            uid: 0,
            gid: 0,
            atime,
            mtime,
            ctime: mtime,
            crtime: Some(crtime),
            rdev: 0,
            blksize: self.geo.cluster_size,
        })
    }

    /// The cluster runs of a file starting at `first` that holds `size` bytes.
    fn file_runs(&self, st: &State, first: u32, size: u32) -> Result<Arc<Vec<Run>>> {
        let need = u64::from(size).div_ceil(u64::from(self.geo.cluster_size)) as u32;
        if let Some(r) = lock(&self.runs).get(&(first, need)) {
            return Ok(r.clone());
        }
        let (chain, _) = st.fat.chain(first, need)?;
        if (chain.len() as u32) < need {
            return Err(Error::corrupt(format!(
                "FAT: file at cluster {first} holds {size} bytes but its chain has only {} clusters",
                chain.len()
            )));
        }
        let mut runs: Vec<Run> = Vec::new();
        for (i, &c) in chain.iter().enumerate() {
            match runs.last_mut() {
                Some((_, s, l)) if *s + *l == c => *l += 1,
                _ => runs.push((i as u32, c, 1)),
            }
        }
        let runs = Arc::new(runs);
        let mut cache = lock(&self.runs);
        if cache.len() >= MAX_CACHED_RUNS {
            cache.clear();
        }
        cache.insert((first, need), runs.clone());
        Ok(runs)
    }

    /// Reads `buf.len()` bytes at `off` of a file described by `e` (the caller has clamped
    /// the range to the file's size).
    fn read_file(&self, st: &State, e: &ShortEntry, off: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if e.cluster == 0 || !self.geo.valid_cluster(e.cluster) {
            return Err(Error::corrupt(format!(
                "FAT: file {} of {} bytes starts at cluster {}",
                String::from_utf8_lossy(&e.display_name()),
                e.size,
                e.cluster
            )));
        }
        let runs = self.file_runs(st, e.cluster, e.size)?;
        let cs = u64::from(self.geo.cluster_size);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let ci = (pos / cs) as u32;
            let ri = runs.partition_point(|r| r.0 <= ci) - 1;
            let (fi, c, len) = runs[ri];
            let in_run = u64::from(ci - fi) * cs + pos % cs;
            let run_bytes = u64::from(len) * cs - in_run;
            let n = (buf.len() - done).min(run_bytes as usize);
            let dev_off = self.geo.cluster_offset(c) + in_run;
            self.dev.read_at(&mut buf[done..done + n], dev_off)?;
            done += n;
        }
        Ok(())
    }

    /// The entry of a non-root inode.
    fn live_entry(&self, ino: Ino) -> Result<ShortEntry> {
        self.entry_at(self.node(ino)?.pos)
    }
}

impl FileSystem for Fat {
    fn root_ino(&self) -> Ino {
        ROOT_INO
    }

    fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Option<Ino>> {
        let st = self.read_state();
        let loc = self.dir_loc(parent)?;
        match name.as_bytes() {
            b"." => return Ok(Some(parent)),
            b".." => {
                if parent == ROOT_INO {
                    return Ok(Some(ROOT_INO));
                }
                return Ok(Some(self.node(parent)?.parent));
            }
            _ => {}
        }
        if name.len() > 4 * dirent::MAX_LFN {
            return Err(errno_error("lookup", errno::ENAMETOOLONG));
        }
        let d = self.read_dir(&st, loc)?;
        Ok(self
            .find_in(&d, name.as_bytes())
            .map(|e| lock(&self.inos).ino_for(self.slot_pos(&d, e.slot), parent)))
    }

    fn getattr(&self, ino: Ino) -> Result<Attr> {
        let st = self.read_state();
        if ino == ROOT_INO {
            return self.attr_of(&st, ino, None);
        }
        let e = self.live_entry(ino)?;
        self.attr_of(&st, ino, Some(&e))
    }

    fn readdir(&self, ino: Ino, offset: u64, f: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        let st = self.read_state();
        let loc = self.dir_loc(ino)?;
        let parent = if ino == ROOT_INO {
            ROOT_INO
        } else {
            self.node(ino)?.parent
        };
        if offset == 0
            && !f(DirEntry {
                name: OsString::from("."),
                ino,
                kind: FileKind::Dir,
                next_offset: 1,
            })
        {
            return Ok(());
        }
        if offset <= 1
            && !f(DirEntry {
                name: OsString::from(".."),
                ino: parent,
                kind: FileKind::Dir,
                next_offset: 2,
            })
        {
            return Ok(());
        }
        let d = self.read_dir(&st, loc)?;
        let from = offset.saturating_sub(2);
        for e in self.entries(&d) {
            if (e.slot as u64) < from {
                continue;
            }
            let child = lock(&self.inos).ino_for(self.slot_pos(&d, e.slot), ino);
            let kind = if e.short.is_dir() {
                FileKind::Dir
            } else {
                FileKind::File
            };
            if !f(DirEntry {
                name: OsString::from_vec(e.name),
                ino: child,
                kind,
                next_offset: e.slot as u64 + 3,
            }) {
                break;
            }
        }
        Ok(())
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let st = self.read_state();
        if ino == ROOT_INO {
            return Err(errno_error("read", errno::EISDIR));
        }
        let e = self.live_entry(ino)?;
        if e.is_dir() {
            return Err(errno_error("read", errno::EISDIR));
        }
        let size = u64::from(e.size);
        if offset >= size {
            return Ok(0);
        }
        let n = (size - offset).min(buf.len() as u64) as usize;
        self.read_file(&st, &e, offset, &mut buf[..n])?;
        Ok(n)
    }

    fn readlink(&self, ino: Ino) -> Result<OsString> {
        if ino != ROOT_INO {
            self.live_entry(ino)?;
        }
        Err(errno_error("readlink", errno::EINVAL))
    }

    /// vfat has no extended attributes: the list is empty.
    fn listxattr(&self, ino: Ino) -> Result<Vec<OsString>> {
        if ino != ROOT_INO {
            self.live_entry(ino)?;
        }
        Ok(Vec::new())
    }

    /// vfat has no xattr handlers: getxattr fails with EOPNOTSUPP, as the kernel's does.
    fn getxattr(&self, ino: Ino, _name: &OsStr) -> Result<Option<Vec<u8>>> {
        if ino != ROOT_INO {
            self.live_entry(ino)?;
        }
        Err(errno_error("getxattr", errno::EOPNOTSUPP))
    }

    fn statfs(&self) -> Result<StatFs> {
        let st = self.read_state();
        Ok(StatFs {
            block_size: self.geo.cluster_size,
            blocks: u64::from(self.geo.cluster_count),
            blocks_free: u64::from(st.free),
            blocks_available: u64::from(st.free),
            files: 0,
            files_free: 0,
            name_max: NAME_MAX,
        })
    }

    fn writable(&self) -> Option<&dyn FileSystemMut> {
        if self.is_writable() {
            Some(self)
        } else {
            None
        }
    }

    /// What vfat holds: no symlinks, hard links, xattrs, device nodes or owners; names
    /// matched without case; modification times to 2 seconds.
    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::POSIX;
        c.symlinks = false;
        c.hard_links = false;
        c.xattrs = false;
        c.special_files = false;
        c.ownership = false;
        c.case_insensitive = true;
        c.name_max = 255;
        c.time_granularity_ns = 2_000_000_000;
        c.ino_bits = 64;
        c
    }
}
