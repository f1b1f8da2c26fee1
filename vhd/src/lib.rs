//! VHD images (Virtual PC / Hyper-V; qemu's `vpc` driver): fixed, dynamic and differencing
//! hard disks.
//!
//! ```text
//!   fixed:         [ guest bytes ........................ ][footer]
//!   dynamic/diff:  [footer copy][dynamic header][BAT][locators]
//!                  [bitmap|block][bitmap|block]...[footer]
//! ```
//!
//! A fixed disk is the guest's bytes followed by a 512-byte footer. A dynamic disk keeps a
//! copy of the footer at offset 0, then a dynamic disk header pointing at the block
//! allocation table (BAT): one 32-bit sector number per block (2 MiB by default), all ones
//! for a block not yet allocated. Each allocated block is a sector bitmap followed by the
//! block's data. A differencing disk is a dynamic disk whose unallocated blocks, and sectors
//! whose bitmap bit is clear, read from its parent, found through the header's parent
//! locators.
//!
//! The disk's size is the one qemu reports: the CHS geometry's capacity for images made by
//! Virtual PC or by qemu without `force_size` (creator "vpc " / "qemu"), `Current Size`
//! otherwise (see [`Footer::virtual_size`]). Reads and writes go through `&self` from any
//! number of threads; [`Vhd::map`](vdisk_block::Image::map) says where each range lives.
//!
//! ```no_run
//! use vdisk_block::BlockDevice;
//! let vhd = vdisk_vhd::Vhd::open_path("disk.vhd", true)?;
//! let mut mbr = [0u8; 512];
//! vhd.read_at(&mut mbr, 0)?;
//! # Ok::<(), vdisk_block::Error>(())
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod footer;
pub mod header;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use vdisk_block::{
    BlockDevice, BlockDeviceExt, Error, Image, MapKind, Mapping, Preallocation, Resize, Result,
};
use vdisk_raw::RawFile;

pub use footer::Footer;
pub use header::DynamicHeader;

use footer::{FOOTER_SIZE, TYPE_DIFFERENCING, TYPE_DYNAMIC, TYPE_FIXED};
use header::{ParentLocator, HEADER_SIZE};

/// The unit of every VHD offset in the BAT.
pub const SECTOR: u64 = 512;
/// A BAT entry of a block that is not allocated.
pub const UNALLOCATED: u32 = u32::MAX;
/// The most BAT entries we load: 64 MiB of table. With qemu's 2 MiB blocks that covers
/// 32 TiB, far past VHD's 2040 GiB limit; a larger count is a hostile header asking for an
/// unbounded allocation.
pub const MAX_BAT_ENTRIES: u32 = 1 << 24;
/// The block size of the disks qemu (and we) create.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;
/// The longest parent locator we read (a path of 32 Ki UTF-16 units, Windows' limit).
pub const MAX_LOCATOR_LEN: u32 = 64 << 10;

/// qemu's probe: a footer copy at offset 0 (dynamic and differencing disks). A fixed disk,
/// whose only footer is at the end, probes as raw, as in qemu.
pub fn probe(head: &[u8]) -> u32 {
    if Footer::has_cookie(head) {
        100
    } else {
        0
    }
}

/// The parts of a dynamic disk that allocation changes.
#[derive(Debug)]
struct State {
    /// The BAT in host order.
    bat: Vec<u32>,
    /// Where the next block goes (and the footer sits): qemu's `free_data_block_offset`.
    free: u64,
}

#[derive(Debug)]
struct Dynamic {
    header: DynamicHeader,
    block_size: u64,
    bitmap_size: u64,
    differencing: bool,
    state: RwLock<State>,
    /// Serialises allocation and bitmap updates.
    alloc: Mutex<()>,
    /// Blocks whose bitmap is known to be all ones (every sector present).
    full: RwLock<HashSet<u32>>,
}

/// An open VHD image.
pub struct Vhd {
    file: Arc<RawFile>,
    footer: Footer,
    size: u64,
    read_only: bool,
    /// Pass flushes to the host (off for a conversion's target, qemu's cache=unsafe).
    sync: bool,
    dynamic: Option<Dynamic>,
    parent_name: Option<String>,
    backing: Option<Arc<dyn Image>>,
}

impl std::fmt::Debug for Vhd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vhd")
            .field("footer", &self.footer)
            .field("size", &self.size)
            .field("dynamic", &self.dynamic.as_ref().map(|d| d.block_size))
            .field("parent", &self.parent_name)
            .field("has_backing", &self.backing.is_some())
            .finish()
    }
}

fn read_exact(file: &RawFile, offset: u64, buf: &mut [u8]) -> Result<()> {
    file.read_at(buf, offset)
}

fn lock_err() -> Error {
    Error::corrupt("a thread panicked while holding the VHD metadata lock")
}

/// The subformats qemu-img creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subformat {
    /// Blocks allocated as they are written (qemu's default).
    #[default]
    Dynamic,
    /// Every byte preallocated, footer at the end.
    Fixed,
}

impl Subformat {
    /// Parses qemu's names, with its message for others.
    pub fn parse(s: &str) -> Result<Subformat> {
        match s {
            "dynamic" => Ok(Subformat::Dynamic),
            "fixed" => Ok(Subformat::Fixed),
            _ => Err(Error::invalid(format!(
                "Parameter 'subformat' does not accept value '{s}'"
            ))),
        }
    }
}

impl Vhd {
    /// Opens the image at `path`.
    pub fn open_path(path: impl AsRef<Path>, read_only: bool) -> Result<Vhd> {
        let path = path.as_ref();
        let file = RawFile::open(
            path,
            &vdisk_raw::OpenOptions {
                read_only,
                force_share: false,
            },
        )?;
        Vhd::open(Arc::new(file), read_only).map_err(|e| e.with_path(path))
    }

    /// Opens the VHD image in `file`, checking every header field before use.
    pub fn open(file: Arc<RawFile>, read_only: bool) -> Result<Vhd> {
        let len = file.file_length()?;
        if len < FOOTER_SIZE as u64 {
            return Err(Error::corrupt("File too small for a VHD header"));
        }
        let mut fb = [0u8; FOOTER_SIZE];
        read_exact(&file, 0, &mut fb)?;
        let at_start = Footer::has_cookie(&fb);
        if !at_start {
            read_exact(&file, len - FOOTER_SIZE as u64, &mut fb)?;
            if !Footer::has_cookie(&fb) {
                return Err(Error::corrupt(
                    "invalid VPC image: no 'conectix' footer at the start or the end",
                ));
            }
        }
        let footer = Footer::parse(&fb).map_err(|e| match e {
            Error::Corrupt { what, .. } => Error::corrupt_at(
                if at_start {
                    0
                } else {
                    len - FOOTER_SIZE as u64
                },
                what,
            ),
            e => e,
        })?;
        match (footer.disk_type, at_start) {
            (TYPE_FIXED, false) | (TYPE_DYNAMIC | TYPE_DIFFERENCING, true) => {}
            (TYPE_FIXED, true) => {
                return Err(Error::corrupt(
                    "the footer copy at offset 0 describes a fixed disk, which has its footer only at the end",
                ))
            }
            (TYPE_DYNAMIC | TYPE_DIFFERENCING, false) => {
                return Err(Error::corrupt(
                    "a dynamic VHD needs the footer copy at offset 0, and this one has none",
                ))
            }
            (t, _) => return Err(Error::unsupported(format!("VHD disk type {t}"))),
        }
        let size = footer.virtual_size();
        if size / SECTOR > footer::MAX_SECTORS {
            return Err(Error::unsupported(format!(
                "virtual size {size} is larger than VHD's limit of 2040 GiB"
            )));
        }
        let mut vhd = Vhd {
            file: file.clone(),
            footer,
            size,
            read_only,
            sync: true,
            dynamic: None,
            parent_name: None,
            backing: None,
        };
        if footer.disk_type == TYPE_FIXED {
            if size > len - FOOTER_SIZE as u64 {
                return Err(Error::corrupt(format!(
                    "the fixed VHD holds {} bytes of data, less than its virtual size {size}",
                    len - FOOTER_SIZE as u64
                )));
            }
            return Ok(vhd);
        }
        vhd.open_dynamic(len)?;
        Ok(vhd)
    }

    fn open_dynamic(&mut self, len: u64) -> Result<()> {
        let hoff = self.footer.data_offset;
        if hoff.checked_add(HEADER_SIZE as u64).is_none_or(|e| e > len) {
            return Err(Error::corrupt_at(
                16,
                format!("the dynamic disk header at {hoff:#x} lies beyond the end of the file"),
            ));
        }
        let mut hb = [0u8; HEADER_SIZE];
        read_exact(&self.file, hoff, &mut hb)?;
        let header = DynamicHeader::parse(&hb).map_err(|e| match e {
            Error::Corrupt { what, .. } => Error::corrupt_at(hoff, what),
            e => e,
        })?;
        let bs = header.block_size;
        if !bs.is_power_of_two() || u64::from(bs) < SECTOR {
            return Err(Error::corrupt_at(
                hoff + 32,
                format!("Invalid block size {bs}: not a power of two of at least 512"),
            ));
        }
        let block_size = u64::from(bs);
        let bitmap_size = (block_size / (8 * SECTOR)).next_multiple_of(SECTOR);
        let entries = header.max_table_entries;
        if u64::from(entries) * block_size < self.size {
            return Err(Error::corrupt_at(
                hoff + 28,
                format!(
                    "Page table too small: {entries} blocks of {block_size} bytes cover less than the virtual size {}",
                    self.size
                ),
            ));
        }
        if entries > MAX_BAT_ENTRIES {
            return Err(Error::unsupported(format!(
                "the BAT has {entries} entries, more than the {MAX_BAT_ENTRIES} we load"
            )));
        }
        let bat_offset = header.table_offset;
        let bat_bytes = u64::from(entries) * 4;
        if bat_offset.checked_add(bat_bytes).is_none_or(|e| e > len) {
            return Err(Error::corrupt_at(
                hoff + 16,
                format!(
                    "the BAT at {bat_offset:#x} ({entries} entries) reaches past the end of the file"
                ),
            ));
        }
        // bat_bytes <= 4 * MAX_BAT_ENTRIES, which fits in usize.
        let mut raw = vec![0u8; bat_bytes as usize];
        read_exact(&self.file, bat_offset, &mut raw)?;
        let mut bat = Vec::with_capacity(entries as usize);
        let mut free = (bat_offset + bat_bytes).next_multiple_of(SECTOR);
        for (i, c) in raw.chunks_exact(4).enumerate() {
            let e = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            if e != UNALLOCATED {
                let end = u64::from(e) * SECTOR + bitmap_size + block_size;
                if end > len {
                    return Err(Error::corrupt_at(
                        bat_offset + 4 * i as u64,
                        format!(
                            "BAT entry {i} points past the end of the file (block at {:#x}, file is {len} bytes)",
                            u64::from(e) * SECTOR
                        ),
                    ));
                }
                free = free.max(end);
            }
            bat.push(e);
        }
        let differencing = self.footer.disk_type == TYPE_DIFFERENCING;
        if differencing {
            for (i, l) in header.parent_locators.iter().enumerate() {
                if l.platform_code == 0 {
                    continue;
                }
                if let Some(end) = locator_end(l).filter(|&e| e <= len) {
                    free = free.max(end.next_multiple_of(SECTOR));
                } else {
                    return Err(Error::corrupt_at(
                        hoff + 576 + 24 * i as u64,
                        format!("parent locator {i} lies beyond the end of the file"),
                    ));
                }
            }
            self.parent_name = Some(self.find_parent(&header)?);
        }
        self.dynamic = Some(Dynamic {
            header,
            block_size,
            bitmap_size,
            differencing,
            state: RwLock::new(State { bat, free }),
            alloc: Mutex::new(()),
            full: RwLock::new(HashSet::new()),
        });
        Ok(())
    }

    /// The parent's name: a relative (W2ru) locator, else an absolute (W2ku) one that is a
    /// host path, else the header's `Parent Unicode Name`.
    fn find_parent(&self, h: &DynamicHeader) -> Result<String> {
        let mut relative = None;
        let mut absolute = None;
        for l in &h.parent_locators {
            if l.platform_code != header::PLATFORM_W2RU && l.platform_code != header::PLATFORM_W2KU
            {
                continue;
            }
            if l.platform_data_length > MAX_LOCATOR_LEN {
                return Err(Error::corrupt(format!(
                    "a parent locator is {} bytes long, more than {MAX_LOCATOR_LEN}",
                    l.platform_data_length
                )));
            }
            // Bounded by MAX_LOCATOR_LEN.
            let mut data = vec![0u8; l.platform_data_length as usize];
            read_exact(&self.file, l.platform_data_offset, &mut data)?;
            let p = header::decode_windows_locator(&data);
            if p.is_empty() {
                continue;
            }
            if l.platform_code == header::PLATFORM_W2RU {
                relative.get_or_insert(p);
            } else if p.starts_with('/') {
                absolute.get_or_insert(p);
            }
        }
        if let Some(r) = relative {
            let r = r.strip_prefix("./").map(str::to_string).unwrap_or(r);
            return Ok(r);
        }
        if let Some(a) = absolute {
            return Ok(a);
        }
        h.parent_name()
            .map(|n| n.replace('\\', "/"))
            .ok_or_else(|| Error::corrupt("the differencing VHD names no parent"))
    }

    /// The footer in effect.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The dynamic disk header (dynamic and differencing disks).
    pub fn dynamic_header(&self) -> Option<&DynamicHeader> {
        self.dynamic.as_ref().map(|d| &d.header)
    }

    /// The block size of a dynamic or differencing disk (qemu's `cluster-size`).
    pub fn block_size(&self) -> Option<u64> {
        self.dynamic.as_ref().map(|d| d.block_size)
    }

    /// The parent a differencing disk names, as found in its locators.
    pub fn parent_file_name(&self) -> Option<&str> {
        self.parent_name.as_deref()
    }

    /// Attaches the parent that unallocated ranges of a differencing disk read from.
    pub fn set_backing(&mut self, backing: Arc<dyn Image>) {
        self.backing = Some(backing);
    }

    /// The host file.
    pub fn file(&self) -> &Arc<RawFile> {
        &self.file
    }

    /// Whether flushes reach the host (`fdatasync`); off is qemu's `cache=unsafe`, for a
    /// conversion's new target that is thrown away if the conversion fails.
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    fn read_backing(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.backing {
            None => {
                buf.fill(0);
                Ok(())
            }
            Some(b) => {
                let n = b.size().saturating_sub(offset).min(buf.len() as u64) as usize;
                if n > 0 {
                    b.read_at(&mut buf[..n], offset)?;
                }
                buf[n..].fill(0);
                Ok(())
            }
        }
    }

    fn entry(&self, d: &Dynamic, idx: u64) -> Result<u32> {
        let s = d.state.read().map_err(|_| lock_err())?;
        Ok(usize::try_from(idx)
            .ok()
            .and_then(|i| s.bat.get(i).copied())
            .unwrap_or(UNALLOCATED))
    }

    fn is_full(d: &Dynamic, idx: u32) -> Result<bool> {
        Ok(d.full.read().map_err(|_| lock_err())?.contains(&idx))
    }

    fn read_bitmap(&self, d: &Dynamic, entry: u32) -> Result<Vec<u8>> {
        // bitmap_size <= 512 KiB (block sizes fit in u32).
        let mut bm = vec![0u8; d.bitmap_size as usize];
        read_exact(&self.file, u64::from(entry) * SECTOR, &mut bm)?;
        Ok(bm)
    }

    /// The run of sectors from `in_block` (bytes, at most `n` bytes) that share the state of
    /// the first in `bitmap`: (present, length in bytes).
    fn bitmap_run(bitmap: &[u8], in_block: u64, n: u64) -> (bool, u64) {
        let bit = |s: u64| {
            // s < block_size / 512, and the bitmap has a bit for each sector.
            let byte = bitmap.get((s / 8) as usize).copied().unwrap_or(0);
            byte & (0x80 >> (s % 8)) != 0
        };
        let first = in_block / SECTOR;
        let state = bit(first);
        let end = in_block + n;
        let mut s = first + 1;
        while s * SECTOR < end && bit(s) == state {
            s += 1;
        }
        (state, (s * SECTOR).min(end) - in_block)
    }

    fn read_dynamic(&self, d: &Dynamic, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let idx = pos / d.block_size;
            let in_block = pos % d.block_size;
            let n = (d.block_size - in_block).min(end - pos);
            // pos - offset and n are bounded by buf.len().
            let b = &mut buf[(pos - offset) as usize..(pos - offset + n) as usize];
            let e = self.entry(d, idx)?;
            if e == UNALLOCATED {
                if d.differencing {
                    self.read_backing(b, pos)?;
                } else {
                    b.fill(0);
                }
            } else {
                let data = u64::from(e) * SECTOR + d.bitmap_size;
                if !d.differencing || Self::is_full(d, e)? {
                    self.file.read_at(b, data + in_block)?;
                } else {
                    let bm = self.read_bitmap(d, e)?;
                    let mut done = 0;
                    while done < n {
                        let (present, run) = Self::bitmap_run(&bm, in_block + done, n - done);
                        let part = &mut b[done as usize..(done + run) as usize];
                        if present {
                            self.file.read_at(part, data + in_block + done)?;
                        } else {
                            self.read_backing(part, pos + done)?;
                        }
                        done += run;
                    }
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// Allocates the block `idx` at the end of the data (where the footer is), as qemu
    /// does: bitmap, footer moved past the block, then the BAT entry. A differencing disk's
    /// new block is filled from the parent. Returns the block's BAT entry.
    fn alloc_block(&self, d: &Dynamic, idx: u64) -> Result<u32> {
        let _g = d.alloc.lock().map_err(|_| lock_err())?;
        let cur = self.entry(d, idx)?;
        if cur != UNALLOCATED {
            return Ok(cur);
        }
        let free = d.state.read().map_err(|_| lock_err())?.free;
        let entry = u32::try_from(free / SECTOR)
            .ok()
            .filter(|&e| e != UNALLOCATED)
            .ok_or_else(|| {
                Error::unsupported("the image file is full: a BAT entry cannot address past 2 TiB")
            })?;
        let new_free = free + d.bitmap_size + d.block_size;
        let need = new_free + FOOTER_SIZE as u64;
        if self.file.file_length()? < need {
            self.file.resize(need, Preallocation::Off)?;
        }
        let data = free + d.bitmap_size;
        if d.differencing {
            let start = idx * d.block_size;
            let len = d.block_size.min(self.size.saturating_sub(start));
            self.copy_from_parent(start, len, data)?;
        }
        // bitmap_size <= 512 KiB.
        self.file
            .write_at(&vec![0xffu8; d.bitmap_size as usize], free)?;
        self.file.write_at(&self.footer.to_bytes(), new_free)?;
        let bat_at = d.header.table_offset + 4 * idx;
        self.file.write_at(&entry.to_be_bytes(), bat_at)?;
        {
            let mut s = d.state.write().map_err(|_| lock_err())?;
            // idx < bat.len(): the caller checked it lies inside the disk, which the BAT covers.
            s.bat[idx as usize] = entry;
            s.free = new_free;
        }
        d.full.write().map_err(|_| lock_err())?.insert(entry);
        Ok(entry)
    }

    /// Copies `len` guest bytes at `start` from the parent into the file at `host`.
    fn copy_from_parent(&self, start: u64, len: u64, host: u64) -> Result<()> {
        if self.backing.is_none() {
            return Ok(());
        }
        const CHUNK: u64 = 1 << 20;
        let mut buf = vec![0u8; len.min(CHUNK) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK) as usize;
            self.read_backing(&mut buf[..n], start + done)?;
            if buf[..n].iter().any(|&b| b != 0) {
                self.file.write_at(&buf[..n], host + done)?;
            }
            done += n as u64;
        }
        Ok(())
    }

    /// Before the first write into an allocated block, makes its bitmap all ones (as qemu
    /// does); a differencing disk first fills the sectors that were the parent's.
    fn make_full(&self, d: &Dynamic, idx: u64, entry: u32) -> Result<()> {
        if Self::is_full(d, entry)? {
            return Ok(());
        }
        let _g = d.alloc.lock().map_err(|_| lock_err())?;
        if Self::is_full(d, entry)? {
            return Ok(());
        }
        let bm = self.read_bitmap(d, entry)?;
        if bm.iter().any(|&b| b != 0xff) {
            let data = u64::from(entry) * SECTOR + d.bitmap_size;
            if d.differencing {
                let start = idx * d.block_size;
                let len = d.block_size.min(self.size.saturating_sub(start));
                let mut done = 0;
                while done < len {
                    let (present, run) = Self::bitmap_run(&bm, done, len - done);
                    if !present {
                        self.copy_from_parent(start + done, run, data + done)?;
                    }
                    done += run;
                }
            }
            self.file
                .write_at(&vec![0xffu8; bm.len()], u64::from(entry) * SECTOR)?;
        }
        d.full.write().map_err(|_| lock_err())?.insert(entry);
        Ok(())
    }

    fn write_dynamic(&self, d: &Dynamic, buf: &[u8], offset: u64) -> Result<()> {
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let idx = pos / d.block_size;
            let in_block = pos % d.block_size;
            let n = (d.block_size - in_block).min(end - pos);
            let b = &buf[(pos - offset) as usize..(pos - offset + n) as usize];
            let mut e = self.entry(d, idx)?;
            if e == UNALLOCATED {
                if !d.differencing && b.iter().all(|&x| x == 0) {
                    // Zeros into an unallocated block of a dynamic disk change nothing.
                    pos += n;
                    continue;
                }
                e = self.alloc_block(d, idx)?;
            } else {
                self.make_full(d, idx, e)?;
            }
            let data = u64::from(e) * SECTOR + d.bitmap_size;
            self.file.write_at(b, data + in_block)?;
            pos += n;
        }
        Ok(())
    }
}

fn locator_end(l: &ParentLocator) -> Option<u64> {
    let space = u64::from(l.platform_data_space);
    // Writers disagree on the unit of Platform Data Space (sectors in the specification,
    // bytes in some tools): the area is at least the data length.
    let bytes = if space * SECTOR >= u64::from(l.platform_data_length) && space < (1 << 16) {
        space * SECTOR
    } else {
        space.max(u64::from(l.platform_data_length))
    };
    l.platform_data_offset.checked_add(bytes)
}

impl BlockDevice for Vhd {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        match &self.dynamic {
            None => self.file.read_at(buf, offset),
            Some(d) => self.read_dynamic(d, buf, offset),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::invalid("the image is open read-only"));
        }
        self.check_range(offset, buf.len() as u64)?;
        match &self.dynamic {
            None => self.file.write_at(buf, offset),
            Some(d) => self.write_dynamic(d, buf, offset),
        }
    }

    fn flush(&self) -> Result<()> {
        if self.read_only || !self.sync {
            return Ok(());
        }
        self.file.flush()
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }
}

impl Image for Vhd {
    fn format_name(&self) -> &'static str {
        "vpc"
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        if offset >= self.size {
            return Ok(Mapping {
                offset,
                len: 0,
                kind: MapKind::Eof,
            });
        }
        let limit = (self.size - offset).min(max_len).max(1);
        let Some(d) = &self.dynamic else {
            return Ok(Mapping {
                offset,
                len: limit,
                kind: MapKind::Data {
                    host_offset: offset,
                },
            });
        };
        let idx = offset / d.block_size;
        let in_block = offset % d.block_size;
        let n = (d.block_size - in_block).min(limit);
        let e = self.entry(d, idx)?;
        let (len, kind) = if e == UNALLOCATED {
            if d.differencing {
                (n, MapKind::Unallocated { host_offset: None })
            } else {
                (n, MapKind::Zero { host_offset: None })
            }
        } else {
            let host = u64::from(e) * SECTOR + d.bitmap_size + in_block;
            if !d.differencing || Self::is_full(d, e)? {
                (n, MapKind::Data { host_offset: host })
            } else {
                let bm = self.read_bitmap(d, e)?;
                match Self::bitmap_run(&bm, in_block, n) {
                    (true, run) => (run, MapKind::Data { host_offset: host }),
                    (false, run) => (run, MapKind::Unallocated { host_offset: None }),
                }
            }
        };
        Ok(Mapping {
            offset,
            len: len.max(1),
            kind,
        })
    }

    fn backing(&self) -> Option<&Arc<dyn Image>> {
        self.backing.as_ref()
    }
}

/// The parent of a new differencing disk.
#[derive(Debug, Clone)]
pub struct ParentInfo {
    /// The name to record in the relative (W2ru) locator and `Parent Unicode Name`, as
    /// given (relative to the new image's directory, or absolute).
    pub name: String,
    /// The parent's path as opened, recorded in the absolute (W2ku) locator.
    pub absolute: PathBuf,
    /// The parent's footer (its unique id, time stamp, geometry).
    pub footer: Footer,
    /// The parent's virtual size.
    pub size: u64,
}

/// A new image's parameters (qemu-img's `-o` options for vpc).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Requested virtual size in bytes (a multiple of 512); rounded up to a CHS capacity
    /// unless `force_size`.
    pub size: u64,
    /// The layout.
    pub subformat: Subformat,
    /// Keep `size` exactly (creator "qem2", maximum geometry), as Azure and Hyper-V want.
    pub force_size: bool,
    /// Make a differencing disk over this parent.
    pub parent: Option<ParentInfo>,
}

fn random_bytes() -> [u8; 16] {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    for (i, half) in out.chunks_exact_mut(8).enumerate() {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(now);
        h.write_u32(std::process::id());
        h.write_usize(i);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    // An RFC 4122 version 4 UUID, as qemu_uuid_generate makes.
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

fn vhd_now() -> u32 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // VHD time stamps are 32-bit; qemu truncates the same way.
    unix.saturating_sub(footer::VHD_EPOCH) as u32
}

/// The virtual size and geometry a new image of `o` gets.
pub fn new_size(o: &CreateOptions) -> Result<(u64, (u16, u8, u8))> {
    match &o.parent {
        Some(p) => Ok((
            p.size,
            (
                p.footer.cylinders,
                p.footer.heads,
                p.footer.sectors_per_track,
            ),
        )),
        None => footer::rounded_size(o.size, o.force_size),
    }
}

/// Creates a VHD image at `path` as qemu-img does (the file replaced), and returns it open
/// read-write. Differencing disks (qemu creates none) record the parent in a relative and
/// an absolute locator and in `Parent Unicode Name`.
pub fn create(path: &Path, o: &CreateOptions) -> Result<Vhd> {
    if o.size % SECTOR != 0 {
        return Err(Error::invalid("Image size must be a multiple of 512 bytes"));
    }
    let (size, geo) = new_size(o)?;
    let fixed = o.subformat == Subformat::Fixed;
    if fixed && o.parent.is_some() {
        return Err(Error::invalid("a fixed VHD cannot have a parent"));
    }
    let disk_type = match (fixed, &o.parent) {
        (true, _) => TYPE_FIXED,
        (false, None) => TYPE_DYNAMIC,
        (false, Some(_)) => TYPE_DIFFERENCING,
    };
    // A differencing disk keeps its parent's size exactly, so it says so ("qem2").
    let creator = if o.force_size || o.parent.is_some() {
        *b"qem2"
    } else {
        *b"qemu"
    };
    let foot = Footer {
        features: 2,
        file_format_version: 0x0001_0000,
        data_offset: if fixed { u64::MAX } else { FOOTER_SIZE as u64 },
        time_stamp: vhd_now(),
        creator_application: creator,
        // Virtual PC 2007's version, as qemu writes.
        creator_version: 0x0005_0003,
        creator_host_os: *b"Wi2k",
        original_size: size,
        current_size: size,
        cylinders: geo.0,
        heads: geo.1,
        sectors_per_track: geo.2,
        disk_type,
        checksum: 0,
        unique_id: random_bytes(),
        saved_state: 0,
    };
    let fb = foot.to_bytes();
    if fixed {
        let len = size
            .checked_add(FOOTER_SIZE as u64)
            .ok_or_else(|| Error::invalid("size out of range"))?;
        let f = RawFile::create(path, len, Preallocation::Off)?;
        f.write_at(&fb, size)?;
        f.flush()?;
    } else {
        let block = u64::from(DEFAULT_BLOCK_SIZE);
        let entries = (size / SECTOR).div_ceil(block / SECTOR);
        let entries32 = u32::try_from(entries).map_err(|_| Error::invalid("size out of range"))?;
        let bat_offset = 3 * SECTOR;
        let bat_bytes = (entries * 4).next_multiple_of(SECTOR);
        let mut h = DynamicHeader {
            data_offset: u64::MAX,
            table_offset: bat_offset,
            header_version: 0x0001_0000,
            max_table_entries: entries32,
            block_size: DEFAULT_BLOCK_SIZE,
            checksum: 0,
            parent_unique_id: [0; 16],
            parent_time_stamp: 0,
            parent_unicode_name: [0; 512],
            parent_locators: [ParentLocator::default(); header::LOCATORS],
        };
        let mut end = bat_offset + bat_bytes;
        let mut locator_data = Vec::new();
        if let Some(p) = &o.parent {
            h.parent_unique_id = p.footer.unique_id;
            h.parent_time_stamp = p.footer.time_stamp;
            let base = Path::new(&p.name)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.name.clone());
            h.parent_unicode_name = header::encode_parent_name(&base)?;
            let mut slots = Vec::new();
            if !Path::new(&p.name).is_absolute() {
                let rel = if p.name.starts_with("./") || p.name.starts_with("../") {
                    p.name.clone()
                } else {
                    format!("./{}", p.name)
                };
                slots.push((header::PLATFORM_W2RU, header::encode_windows_locator(&rel)));
            }
            let abs = std::path::absolute(&p.absolute).unwrap_or_else(|_| p.absolute.clone());
            slots.push((
                header::PLATFORM_W2KU,
                header::encode_windows_locator(&abs.to_string_lossy()),
            ));
            for (i, (code, data)) in slots.into_iter().enumerate() {
                let len = u32::try_from(data.len())
                    .ok()
                    .filter(|&l| l <= MAX_LOCATOR_LEN)
                    .ok_or_else(|| Error::invalid("the parent's path is too long"))?;
                let space = u64::from(len).next_multiple_of(SECTOR).max(SECTOR);
                h.parent_locators[i] = ParentLocator {
                    platform_code: code,
                    platform_data_space: (space / SECTOR) as u32,
                    platform_data_length: len,
                    platform_data_offset: end,
                };
                locator_data.push((end, data));
                end += space;
            }
        }
        let f = RawFile::create(path, 0, Preallocation::Off)?;
        f.resize(end + FOOTER_SIZE as u64, Preallocation::Off)?;
        f.write_at(&fb, 0)?;
        f.write_at(&h.to_bytes(), FOOTER_SIZE as u64)?;
        // bat_bytes covers at most 2^32 entries of 4 bytes.
        f.write_at(&vec![0xffu8; bat_bytes as usize], bat_offset)?;
        for (at, data) in locator_data {
            f.write_at(&data, at)?;
        }
        f.write_at(&fb, end)?;
        f.flush()?;
    }
    Vhd::open_path(path, false)
}

/// Reads the footer of the VHD image at `path` (a new differencing disk's parent).
pub fn read_footer(path: &Path) -> Result<(Footer, u64)> {
    let file = RawFile::open(
        path,
        &vdisk_raw::OpenOptions {
            read_only: true,
            force_share: true,
        },
    )?;
    let v = Vhd::open(Arc::new(file), true).map_err(|e| e.with_path(path))?;
    Ok((v.footer, v.size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_runs_are_msb_first() {
        let bm = [0b1100_0000u8, 0xff];
        assert_eq!(Vhd::bitmap_run(&bm, 0, 8 * 512), (true, 1024));
        assert_eq!(Vhd::bitmap_run(&bm, 1024, 6 * 512), (false, 6 * 512));
        assert_eq!(Vhd::bitmap_run(&bm, 100, 200), (true, 200));
    }

    #[test]
    fn dynamic_roundtrip_and_hostile_bat() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("d.vhd");
        let v = create(
            &p,
            &CreateOptions {
                size: 10 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        v.write_at(&[7u8; 4096], 3 << 20).unwrap();
        v.flush().unwrap();
        drop(v);
        let v = Vhd::open_path(&p, true).unwrap();
        let mut b = [0u8; 4096];
        v.read_at(&mut b, 3 << 20).unwrap();
        assert_eq!(b, [7u8; 4096]);
        drop(v);
        // Point BAT entry 0 far past the end.
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[1536..1540].copy_from_slice(&0x0100_0000u32.to_be_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let e = Vhd::open_path(&p, true).unwrap_err().to_string();
        assert!(e.contains("BAT entry 0 points past the end"), "{e}");
    }
}
