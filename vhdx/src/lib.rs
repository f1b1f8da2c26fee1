//! VHDX images (Hyper-V; qemu's `vhdx` driver): fixed, dynamic and differencing disks.
//!
//! ```text
//!   0        1M            BAT region        metadata region       data
//!   [header section][log][BAT: u64 per block][table | items ...][block][block]...
//!    ident, 2 headers,     payload entries, one sector-bitmap entry after every
//!    2 region tables       `chunk ratio` payload entries (differencing disks)
//! ```
//!
//! A BAT entry is a block state (low 3 bits) and the block's file offset in MiB (high 44
//! bits). Opening checks both headers' CRC-32C and picks the current one by sequence number,
//! replays a non-empty log (in place when writable, in memory when read-only), then checks the
//! region table, the metadata items and every BAT entry against the file before use.
//!
//! Writes allocate blocks at the end of the file, 1 MiB aligned. Changed BAT sectors go
//! through the log on [`flush`](vdisk_block::BlockDevice::flush): data made durable, then one
//! log entry, then the BAT in place, then the log marked empty, so the file is never left
//! needing replay. The first write of a session gives both headers a new sequence number and
//! new file and data write GUIDs, as the spec asks.
//!
//! ```no_run
//! use vdisk_block::BlockDevice;
//! let v = vdisk_vhdx::Vhdx::open_path("disk.vhdx", true)?;
//! let mut mbr = [0u8; 512];
//! v.read_at(&mut mbr, 0)?;
//! # Ok::<(), vdisk_block::Error>(())
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod guid;
pub mod header;
pub mod log;
pub mod metadata;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use vdisk_block::bytes::le64;
use vdisk_block::{
    BlockDevice, BlockDeviceExt, Error, Image, MapKind, Mapping, Preallocation, Resize, Result,
};
use vdisk_raw::RawFile;

pub use guid::Guid;
pub use header::Header;
use header::{HEADER1_OFFSET, HEADER2_OFFSET, HEADER_SECTION_END, HEADER_SIZE};
use log::LogWrite;
pub use metadata::{Metadata, ParentLocator};

const MIB: u64 = 1 << 20;

/// Payload block state: not present (zeros, or the parent's bytes in a differencing disk).
pub const PAYLOAD_BLOCK_NOT_PRESENT: u64 = 0;
/// Payload block state: contents undefined (read as zeros, or from the parent).
pub const PAYLOAD_BLOCK_UNDEFINED: u64 = 1;
/// Payload block state: reads as zeros.
pub const PAYLOAD_BLOCK_ZERO: u64 = 2;
/// Payload block state: unmapped by the guest (read as zeros).
pub const PAYLOAD_BLOCK_UNMAPPED: u64 = 3;
/// The value 0.95 drafts of the spec (and old qemu) used for unmapped.
pub const PAYLOAD_BLOCK_UNMAPPED_V095: u64 = 5;
/// Payload block state: all of the block is in the file.
pub const PAYLOAD_BLOCK_FULLY_PRESENT: u64 = 6;
/// Payload block state: the sectors whose bitmap bit is set are in the file, the others in the
/// parent (differencing disks only).
pub const PAYLOAD_BLOCK_PARTIALLY_PRESENT: u64 = 7;
/// Sector bitmap block state: present.
pub const SB_BLOCK_PRESENT: u64 = 6;
/// The state bits of a BAT entry.
pub const BAT_STATE_MASK: u64 = 7;
/// The file offset bits of a BAT entry (a multiple of 1 MiB).
pub const BAT_OFFSET_MASK: u64 = !(MIB - 1);
/// Sectors covered by one sector bitmap block (1 MiB of bits).
pub const SECTORS_PER_BITMAP: u64 = 1 << 23;
/// The most BAT entries we load: 128 MiB of table, a 64 TiB disk with 4 MiB blocks or
/// 16 TiB with 1 MiB blocks. A larger count is a hostile header asking for an unbounded
/// allocation.
pub const MAX_BAT_ENTRIES: u64 = 1 << 24;
/// How far a log replay may grow the file (see [`Vhdx::open`]).
pub const MAX_LOG_GROWTH: u64 = 4 << 30;
/// The creator string written into new files' identifiers.
pub const CREATOR: &str = concat!("vdisk v", env!("CARGO_PKG_VERSION"));

fn lock_err() -> Error {
    Error::corrupt("a thread panicked while holding the VHDX metadata lock")
}

#[derive(Debug)]
struct Headers {
    current: usize,
    h: [Header; 2],
}

#[derive(Debug)]
struct State {
    /// The BAT, rounded up to whole 4 KiB sectors (the entries past the disk's as read).
    bat: Vec<u64>,
    /// BAT sectors changed since the last flush.
    dirty: BTreeSet<u64>,
    /// Where the next block goes (1 MiB aligned, at or past the end of the file).
    end: u64,
    /// The next log sequence number.
    sequence: u64,
}

/// An open VHDX image.
pub struct Vhdx {
    file: Arc<RawFile>,
    read_only: bool,
    sync: bool,
    md: Metadata,
    block_size: u64,
    sector_size: u64,
    chunk_ratio: u64,
    bat_offset: u64,
    bat_entries: u64,
    log_offset: u64,
    log_length: u64,
    /// File ranges of the header section, log, BAT and metadata regions.
    regions: Vec<(u64, u64)>,
    headers: Mutex<Headers>,
    /// This session's file write GUID.
    session_guid: Guid,
    /// Whether this session's first write has updated the headers.
    wrote: AtomicBool,
    write_gate: Mutex<()>,
    state: RwLock<State>,
    /// A log replayed in memory (a read-only open of an image that needs replay): these
    /// writes are laid over every read of the file.
    overlay: Vec<LogWrite>,
    /// Whether a log was replayed into the file when it was opened.
    replayed: bool,
    parent_name: Option<String>,
    backing: Option<Arc<dyn Image>>,
}

impl std::fmt::Debug for Vhdx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vhdx")
            .field("file", &self.file.path())
            .field("size", &self.md.virtual_disk_size)
            .field("block_size", &self.block_size)
            .field("parent", &self.parent_name)
            .field("has_backing", &self.backing.is_some())
            .finish()
    }
}

/// qemu's probe: the file type identifier's signature.
pub fn probe(head: &[u8]) -> u32 {
    if head.starts_with(header::FILE_SIGNATURE) {
        100
    } else {
        0
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// Reads `buf` at `offset` of `file`, then lays the in-memory log writes over it.
fn read_patched(file: &RawFile, overlay: &[LogWrite], buf: &mut [u8], offset: u64) -> Result<()> {
    file.read_at(buf, offset)?;
    let want = (offset, buf.len() as u64);
    for w in overlay {
        let r = w.range();
        if !overlaps(want, r) {
            continue;
        }
        let from = r.0.max(offset);
        let to = (r.0 + r.1).min(offset + buf.len() as u64);
        let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
        match w {
            LogWrite::Data { data, .. } => {
                dst.copy_from_slice(&data[(from - r.0) as usize..(to - r.0) as usize])
            }
            LogWrite::Zero { .. } => dst.fill(0),
        }
    }
    Ok(())
}

/// The number of BAT entries a disk needs (the spec's formulas).
pub fn bat_entries(size: u64, block_size: u64, chunk_ratio: u64, has_parent: bool) -> u64 {
    let data_blocks = size.div_ceil(block_size);
    if has_parent {
        data_blocks.div_ceil(chunk_ratio) * (chunk_ratio + 1)
    } else if data_blocks == 0 {
        0
    } else {
        data_blocks + (data_blocks - 1) / chunk_ratio
    }
}

impl Vhdx {
    /// Opens the image at `path`.
    pub fn open_path(path: impl AsRef<Path>, read_only: bool) -> Result<Vhdx> {
        let path = path.as_ref();
        let file = RawFile::open(
            path,
            &vdisk_raw::OpenOptions {
                read_only,
                force_share: false,
            },
        )?;
        Vhdx::open(Arc::new(file), read_only).map_err(|e| e.with_path(path))
    }

    /// Opens the VHDX image in `file`: headers, log (replayed), region table, metadata and
    /// BAT, each checked before use.
    pub fn open(file: Arc<RawFile>, read_only: bool) -> Result<Vhdx> {
        let len = file.file_length()?;
        let mut sig = [0u8; 8];
        if len >= 8 {
            file.read_at(&mut sig, 0)?;
        }
        if &sig != header::FILE_SIGNATURE {
            return Err(Error::corrupt(
                "Image not in VHDX format (no 'vhdxfile' signature)",
            ));
        }
        if len < header::REGION_TABLE2_OFFSET + header::HEADER_BLOCK_SIZE {
            return Err(Error::corrupt(format!(
                "the VHDX file is {len} bytes, shorter than its header section"
            )));
        }
        let mut hb = vec![0u8; HEADER_SIZE];
        file.read_at(&mut hb, HEADER1_OFFSET)?;
        let h1 = Header::parse(&hb);
        file.read_at(&mut hb, HEADER2_OFFSET)?;
        let h2 = Header::parse(&hb);
        let (current, cur) = header::current(h1, h2)?;
        let hs = Headers {
            current,
            h: [h1.unwrap_or(cur), h2.unwrap_or(cur)],
        };

        // The log.
        let log_offset = cur.log_offset;
        let log_length = u64::from(cur.log_length);
        if log_offset < HEADER_SECTION_END || log_offset % MIB != 0 || log_length % MIB != 0 {
            return Err(Error::corrupt(format!(
                "the VHDX log ({log_length} bytes at {log_offset:#x}) is not 1 MiB aligned past the header section"
            )));
        }
        if cur.log_version != 0 {
            return Err(Error::unsupported(format!(
                "VHDX log version {}",
                cur.log_version
            )));
        }
        if log_offset + log_length > len {
            return Err(Error::corrupt(format!(
                "the VHDX log ({log_length} bytes at {log_offset:#x}) reaches past the end of the file ({len} bytes)"
            )));
        }
        let session_guid = Guid::random();
        let mut overlay = Vec::new();
        let mut replayed = false;
        let mut sequence = 1;
        if !cur.log_guid.is_zero() && log_length > 0 {
            if log_length > log::MAX_REPLAY_LOG {
                return Err(Error::unsupported(format!(
                    "the VHDX log needs replaying and is {log_length} bytes; vdisk replays logs up to {} bytes",
                    log::MAX_REPLAY_LOG
                )));
            }
            let mut logb = vec![0u8; log_length as usize];
            file.read_at(&mut logb, log_offset)?;
            if let Some(r) = log::find_active(&logb, cur.log_guid)? {
                if r.flushed_file_offset > len {
                    return Err(Error::corrupt(format!(
                        "the VHDX log was written when the file was {} bytes; it is {len}: the image has been truncated",
                        r.flushed_file_offset
                    )));
                }
                // The file grows by the blocks allocated since the last flush, not by more
                // than a few GiB: a larger LastFileOffset is a hostile log.
                if r.last_file_offset > len.saturating_add(MAX_LOG_GROWTH) {
                    return Err(Error::corrupt(format!(
                        "the VHDX log would grow the file from {len} to {} bytes",
                        r.last_file_offset
                    )));
                }
                let limit = len.max(r.last_file_offset.next_multiple_of(MIB));
                for w in &r.writes {
                    let (o, l) = w.range();
                    if o < HEADER_SECTION_END || o.checked_add(l).is_none_or(|e| e > limit) {
                        return Err(Error::corrupt(format!(
                            "the VHDX log writes {l} bytes at {o:#x}, outside the file's objects"
                        )));
                    }
                }
                sequence = r.last_sequence.wrapping_add(1).max(1);
                if read_only {
                    overlay = r.writes;
                } else {
                    Self::replay_into(&file, &r)?;
                    replayed = true;
                }
            }
        }

        let mut rt = vec![0u8; header::HEADER_BLOCK_SIZE as usize];
        read_patched(&file, &overlay, &mut rt, header::REGION_TABLE_OFFSET)?;
        let entries = header::parse_region_table(&rt)?;
        let mut regions: Vec<(u64, u64)> = vec![(0, HEADER_SECTION_END)];
        if log_length > 0 {
            regions.push((log_offset, log_length));
        }
        let (mut bat_rt, mut md_rt) = (None, None);
        for e in &entries {
            let r = (e.file_offset, u64::from(e.length));
            let name = if e.guid == guid::BAT {
                "BAT"
            } else if e.guid == guid::METADATA {
                "metadata"
            } else if e.required {
                return Err(Error::unsupported(format!(
                    "the VHDX file requires region {}, which vdisk does not know",
                    e.guid
                )));
            } else {
                continue;
            };
            if r.0 % MIB != 0 || r.1 % MIB != 0 || r.1 == 0 {
                return Err(Error::corrupt(format!(
                    "the VHDX {name} region ({} bytes at {:#x}) is not a whole number of MiB at a MiB boundary",
                    r.1, r.0
                )));
            }
            if r.0.saturating_add(r.1) > len {
                return Err(Error::corrupt(format!(
                    "the VHDX {name} region ({} bytes at {:#x}) reaches past the end of the file ({len} bytes)",
                    r.1, r.0
                )));
            }
            if let Some(o) = regions.iter().find(|o| overlaps(r, **o)) {
                return Err(Error::corrupt(format!(
                    "the VHDX {name} region ({} bytes at {:#x}) overlaps the region of {} bytes at {:#x}",
                    r.1, r.0, o.1, o.0
                )));
            }
            regions.push(r);
            let slot = if name == "BAT" {
                &mut bat_rt
            } else {
                &mut md_rt
            };
            if slot.is_some() {
                return Err(Error::corrupt(format!(
                    "the VHDX region table lists the {name} region twice"
                )));
            }
            *slot = Some(*e);
        }
        let bat_rt =
            bat_rt.ok_or_else(|| Error::corrupt("the VHDX region table has no BAT region"))?;
        let md_rt =
            md_rt.ok_or_else(|| Error::corrupt("the VHDX region table has no metadata region"))?;

        let mut table = vec![0u8; metadata::TABLE_SIZE];
        read_patched(&file, &overlay, &mut table, md_rt.file_offset)?;
        let md_entries = metadata::parse_table(&table, md_rt.file_offset)?;
        let md = metadata::parse(&md_entries, md_rt.length, |e| {
            let mut b = vec![0u8; e.length as usize];
            read_patched(
                &file,
                &overlay,
                &mut b,
                md_rt.file_offset + u64::from(e.offset),
            )?;
            Ok(b)
        })?;

        let block_size = u64::from(md.block_size);
        let sector_size = u64::from(md.logical_sector_size);
        let chunk_ratio = SECTORS_PER_BITMAP * sector_size / block_size;
        let n = bat_entries(md.virtual_disk_size, block_size, chunk_ratio, md.has_parent);
        if n > MAX_BAT_ENTRIES {
            return Err(Error::unsupported(format!(
                "a VHDX image of {n} BAT entries (more than {MAX_BAT_ENTRIES})"
            )));
        }
        if n * 8 > u64::from(bat_rt.length) {
            return Err(Error::corrupt(format!(
                "the VHDX BAT region ({} bytes) is too small for the {n} entries a disk of {} bytes needs",
                bat_rt.length, md.virtual_disk_size
            )));
        }
        // Whole 4 KiB sectors (inside the region, whose length is a multiple of 1 MiB).
        let words = n.next_multiple_of(512);
        let mut raw = vec![0u8; (words * 8) as usize];
        read_patched(&file, &overlay, &mut raw, bat_rt.file_offset)?;
        let bat: Vec<u64> = raw.chunks_exact(8).map(|c| le64(c, 0)).collect();
        drop(raw);

        let mut v = Vhdx {
            file,
            read_only,
            sync: true,
            block_size,
            sector_size,
            chunk_ratio,
            bat_offset: bat_rt.file_offset,
            bat_entries: n,
            log_offset,
            log_length,
            regions,
            headers: Mutex::new(Headers {
                current: hs.current,
                h: hs.h,
            }),
            session_guid,
            wrote: AtomicBool::new(false),
            write_gate: Mutex::new(()),
            state: RwLock::new(State {
                bat: Vec::new(),
                dirty: BTreeSet::new(),
                end: len.next_multiple_of(MIB),
                sequence,
            }),
            overlay,
            replayed,
            parent_name: None,
            backing: None,
            md,
        };
        let end = v.check_bat(&bat, len)?;
        if let Ok(mut s) = v.state.write() {
            s.bat = bat;
            s.end = s.end.max(end);
        }
        if replayed {
            // The log is applied: mark it empty (both headers).
            v.update_headers(false, Some(Guid::ZERO))?;
        }
        if v.md.has_parent {
            v.parent_name = Some(v.find_parent()?);
        }
        Ok(v)
    }

    fn replay_into(file: &RawFile, r: &log::Replay) -> Result<()> {
        // Extend first: every write lies inside the file as the log leaves it.
        let want = r.last_file_offset.next_multiple_of(MIB);
        if file.file_length()? < want {
            file.resize(want, Preallocation::Off)?;
        }
        for w in &r.writes {
            match w {
                LogWrite::Data { offset, data } => file.write_at(data, *offset)?,
                // A hole reads as the zeros asked for, without writing them.
                LogWrite::Zero { offset, len } => {
                    vdisk_block::WriteZeroes::write_zeroes(file, *offset, *len, true)?
                }
            }
        }
        file.flush()
    }

    /// Checks every BAT entry (state known, data inside the file and outside the metadata)
    /// and returns the end of the last block.
    fn check_bat(&self, bat: &[u64], len: u64) -> Result<u64> {
        let mut end = 0;
        let cr = self.chunk_ratio;
        for (i, &e) in bat.iter().take(self.bat_entries as usize).enumerate() {
            let i = i as u64;
            let state = e & BAT_STATE_MASK;
            let off = e & BAT_OFFSET_MASK;
            let bitmap = (i + 1) % (cr + 1) == 0;
            let (what, need) = if bitmap {
                match state {
                    PAYLOAD_BLOCK_NOT_PRESENT => continue,
                    SB_BLOCK_PRESENT if self.md.has_parent => ("sector bitmap", MIB),
                    // Sector bitmap entries of a disk without a parent carry nothing.
                    _ if !self.md.has_parent => continue,
                    s => {
                        return Err(Error::corrupt_at(
                            self.bat_offset + 8 * i,
                            format!(
                                "VHDX BAT entry {i} (a sector bitmap) has the unknown state {s}"
                            ),
                        ))
                    }
                }
            } else {
                match state {
                    PAYLOAD_BLOCK_NOT_PRESENT
                    | PAYLOAD_BLOCK_UNDEFINED
                    | PAYLOAD_BLOCK_ZERO
                    | PAYLOAD_BLOCK_UNMAPPED
                    | PAYLOAD_BLOCK_UNMAPPED_V095 => continue,
                    PAYLOAD_BLOCK_FULLY_PRESENT => {}
                    PAYLOAD_BLOCK_PARTIALLY_PRESENT if self.md.has_parent => {}
                    s => {
                        return Err(Error::corrupt_at(
                            self.bat_offset + 8 * i,
                            format!("VHDX BAT entry {i} has the unknown block state {s}"),
                        ))
                    }
                }
                // qemu allows the last block to be only partly in the file.
                let block = i - i / (cr + 1);
                let guest = self
                    .md
                    .virtual_disk_size
                    .saturating_sub(block * self.block_size)
                    .min(self.block_size);
                ("payload block", guest)
            };
            let r = (off, need.max(1));
            if let Some(o) = self.regions.iter().find(|o| overlaps(r, **o)) {
                return Err(Error::corrupt_at(
                    self.bat_offset + 8 * i,
                    format!(
                        "VHDX BAT entry {i} ({what} at {off:#x}) overlaps the metadata at {:#x}..{:#x}",
                        o.0,
                        o.0 + o.1
                    ),
                ));
            }
            if off >= len || off + need > len {
                return Err(Error::corrupt_at(
                    self.bat_offset + 8 * i,
                    format!(
                        "VHDX BAT entry {i} ({what} at {off:#x}) points past the end of the file ({len} bytes): the image has probably been truncated"
                    ),
                ));
            }
            end = end.max(off + if bitmap { MIB } else { self.block_size });
        }
        Ok(end.next_multiple_of(MIB))
    }

    /// The parent's file name from the locator: `relative_path`, else `absolute_win32_path`,
    /// else `volume_path`, with `\` read as `/`.
    fn find_parent(&self) -> Result<String> {
        let pl =
            self.md.parent_locator.as_ref().ok_or_else(|| {
                Error::corrupt("the VHDX file has a parent but no parent locator")
            })?;
        if pl.locator_type != guid::PARENT_TYPE_VHDX {
            return Err(Error::unsupported(format!(
                "a VHDX parent locator of type {}",
                pl.locator_type
            )));
        }
        for key in ["relative_path", "absolute_win32_path", "volume_path"] {
            if let Some(v) = pl.get(key).filter(|v| !v.is_empty()) {
                let mut p = v.replace('\\', "/");
                if let Some(rest) = p.strip_prefix("./") {
                    p = rest.to_string();
                }
                return Ok(p);
            }
        }
        Err(Error::corrupt(
            "the VHDX parent locator names no parent path",
        ))
    }

    /// The validated metadata items.
    pub fn metadata(&self) -> &Metadata {
        &self.md
    }

    /// The current header.
    pub fn header(&self) -> Header {
        match self.headers.lock() {
            Ok(h) => h.h[h.current],
            Err(e) => {
                let h = e.into_inner();
                h.h[h.current]
            }
        }
    }

    /// The payload block size (qemu's `cluster-size`).
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Whether a log was replayed into the file when it was opened.
    pub fn log_replayed(&self) -> bool {
        self.replayed
    }

    /// Whether the log needed replay and was replayed in memory only (read-only open).
    pub fn log_pending(&self) -> bool {
        !self.overlay.is_empty()
    }

    /// The host file.
    pub fn file(&self) -> &Arc<RawFile> {
        &self.file
    }

    /// The parent a differencing disk names (its locator's path).
    pub fn parent_file_name(&self) -> Option<&str> {
        self.parent_name.as_deref()
    }

    /// Attaches the parent that ranges this differencing disk does not hold read from.
    pub fn set_backing(&mut self, backing: Arc<dyn Image>) {
        self.backing = Some(backing);
    }

    /// Whether flushes reach the host (`fdatasync`); off is qemu's `cache=unsafe`, for a
    /// conversion's new target that is thrown away if the conversion fails.
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    fn payload_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }

    fn entry(&self, block: u64) -> Result<u64> {
        let s = self.state.read().map_err(|_| lock_err())?;
        let i = self.payload_index(block);
        Ok(usize::try_from(i)
            .ok()
            .and_then(|i| s.bat.get(i).copied())
            .unwrap_or(0))
    }

    fn read_file(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if self.overlay.is_empty() {
            self.file.read_at(buf, offset)
        } else {
            read_patched(&self.file, &self.overlay, buf, offset)
        }
    }

    fn read_backing(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.backing {
            None => {
                buf.fill(0);
                Ok(())
            }
            Some(b) => {
                let bsize = b.size();
                let n = bsize.saturating_sub(offset).min(buf.len() as u64) as usize;
                if n > 0 {
                    b.read_at(&mut buf[..n], offset)?;
                }
                buf[n..].fill(0);
                Ok(())
            }
        }
    }

    /// The sector bitmap bits of guest sectors `[first, first + count)` (all in one chunk).
    fn bitmap(&self, first: u64, count: u64) -> Result<Vec<bool>> {
        let chunk = first / SECTORS_PER_BITMAP;
        let sb = {
            let s = self.state.read().map_err(|_| lock_err())?;
            let i = chunk * (self.chunk_ratio + 1) + self.chunk_ratio;
            usize::try_from(i)
                .ok()
                .and_then(|i| s.bat.get(i).copied())
                .unwrap_or(0)
        };
        if sb & BAT_STATE_MASK != SB_BLOCK_PRESENT {
            return Err(Error::corrupt(format!(
                "a partially present VHDX block of chunk {chunk} has no sector bitmap"
            )));
        }
        let bit0 = first % SECTORS_PER_BITMAP;
        let (b0, b1) = (bit0 / 8, (bit0 + count).div_ceil(8));
        let mut bytes = vec![0u8; (b1 - b0) as usize];
        self.read_file(&mut bytes, (sb & BAT_OFFSET_MASK) + b0)?;
        Ok((bit0..bit0 + count)
            .map(|b| bytes[(b / 8 - b0) as usize] >> (b % 8) & 1 == 1)
            .collect())
    }

    /// Runs of `[pos, pos + n)` inside one partially present block: (length, in this file).
    fn partial_runs(&self, pos: u64, n: u64) -> Result<Vec<(u64, bool)>> {
        let ss = self.sector_size;
        let first = pos / ss;
        let last = (pos + n - 1) / ss;
        let bits = self.bitmap(first, last - first + 1)?;
        let mut runs: Vec<(u64, bool)> = Vec::new();
        let mut p = pos;
        for (k, &bit) in bits.iter().enumerate() {
            let sector_end = (first + k as u64 + 1) * ss;
            let len = sector_end.min(pos + n) - p;
            match runs.last_mut() {
                Some((l, b)) if *b == bit => *l += len,
                _ => runs.push((len, bit)),
            }
            p += len;
        }
        Ok(runs)
    }

    /// The guest bytes of a block (state `e`) at `in_block`, as they read now.
    fn read_block(&self, e: u64, buf: &mut [u8], pos: u64, in_block: u64) -> Result<()> {
        let state = e & BAT_STATE_MASK;
        match state {
            PAYLOAD_BLOCK_FULLY_PRESENT => self.read_file(buf, (e & BAT_OFFSET_MASK) + in_block),
            PAYLOAD_BLOCK_PARTIALLY_PRESENT => {
                let mut done = 0usize;
                for (len, here) in self.partial_runs(pos, buf.len() as u64)? {
                    let part = &mut buf[done..done + len as usize];
                    if here {
                        self.read_file(part, (e & BAT_OFFSET_MASK) + in_block + done as u64)?;
                    } else {
                        self.read_backing(part, pos + done as u64)?;
                    }
                    done += len as usize;
                }
                Ok(())
            }
            PAYLOAD_BLOCK_NOT_PRESENT | PAYLOAD_BLOCK_UNDEFINED if self.md.has_parent => {
                self.read_backing(buf, pos)
            }
            _ => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// The first write of the session: both headers get a new sequence number, this
    /// session's file write GUID and a new data write GUID.
    fn begin_write(&self) -> Result<()> {
        if self.wrote.load(Ordering::Acquire) {
            return Ok(());
        }
        let _g = self.write_gate.lock().map_err(|_| lock_err())?;
        if !self.wrote.load(Ordering::Acquire) {
            self.update_headers(true, None)?;
            self.wrote.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Writes the non-current header with the next sequence number, twice, so both headers
    /// are current (the spec's update procedure).
    fn update_headers(&self, new_data_guid: bool, log_guid: Option<Guid>) -> Result<()> {
        let mut hs = self.headers.lock().map_err(|_| lock_err())?;
        let data_guid = Guid::random();
        for _ in 0..2 {
            let other = 1 - hs.current;
            let mut h = hs.h[hs.current];
            h.sequence_number = h.sequence_number.wrapping_add(1);
            h.file_write_guid = self.session_guid;
            if new_data_guid {
                h.data_write_guid = data_guid;
            }
            if let Some(g) = log_guid {
                h.log_guid = g;
            }
            let at = if other == 0 {
                HEADER1_OFFSET
            } else {
                HEADER2_OFFSET
            };
            self.file.write_at(&h.to_bytes(), at)?;
            if self.sync {
                self.file.flush()?;
            }
            hs.h[other] = h;
            hs.current = other;
        }
        Ok(())
    }

    /// Allocates block `block` at the end of the file and fills it with what the block reads
    /// as now (the parent's bytes in a differencing disk). Returns the new entry.
    fn alloc_block(&self, block: u64) -> Result<u64> {
        let mut s = self.state.write().map_err(|_| lock_err())?;
        let i = self.payload_index(block) as usize;
        let old = s.bat[i];
        if old & BAT_STATE_MASK == PAYLOAD_BLOCK_FULLY_PRESENT {
            return Ok(old);
        }
        // Reserve the space before the lock may be dropped for the copy below, so a block
        // allocated meanwhile goes after it.
        let off = s.end;
        let new_end = off + self.block_size;
        s.end = new_end;
        if self.file.file_length()? < new_end {
            // The new block reads as zeros until written: a hole, not written zeros.
            self.file.resize(new_end, Preallocation::Off)?;
        }
        if self.md.has_parent
            && !matches!(
                old & BAT_STATE_MASK,
                PAYLOAD_BLOCK_ZERO | PAYLOAD_BLOCK_UNMAPPED | PAYLOAD_BLOCK_UNMAPPED_V095
            )
        {
            // Copy what the block reads as now (parent and, if partial, this file's sectors).
            drop(s);
            let start = block * self.block_size;
            let glen = self.block_size.min(self.md.virtual_disk_size - start);
            let mut buf = vec![0u8; MIB.min(glen) as usize];
            let mut done = 0;
            while done < glen {
                let k = (glen - done).min(MIB) as usize;
                self.read_block(old, &mut buf[..k], start + done, done)?;
                if buf[..k].iter().any(|&b| b != 0) {
                    self.file.write_at(&buf[..k], off + done)?;
                }
                done += k as u64;
            }
            s = self.state.write().map_err(|_| lock_err())?;
            if s.bat[i] & BAT_STATE_MASK == PAYLOAD_BLOCK_FULLY_PRESENT {
                // Another writer allocated this block meanwhile: theirs stands (ours is
                // left unused).
                return Ok(s.bat[i]);
            }
        }
        let e = off | PAYLOAD_BLOCK_FULLY_PRESENT;
        s.bat[i] = e;
        s.dirty.insert(i as u64 / 512);
        Ok(e)
    }

    /// Writes the changed BAT sectors: data made durable, one log entry per batch, the BAT in
    /// place, then the log marked empty. With `stop_after_log` the last step is skipped, as
    /// a crash would (for tests of replay).
    fn commit(&self, stop_after_log: bool) -> Result<()> {
        let mut s = self.state.write().map_err(|_| lock_err())?;
        if s.dirty.is_empty() {
            return Ok(());
        }
        if self.log_length == 0 {
            return Err(Error::unsupported(
                "the VHDX file has no log to write its BAT through",
            ));
        }
        if self.sync {
            self.file.flush()?;
        }
        let sectors: Vec<u64> = s.dirty.iter().copied().collect();
        let per = log::max_data_sectors(self.log_length).max(1) as usize;
        for batch in sectors.chunks(per) {
            let bytes: Vec<(u64, Vec<u8>)> = batch
                .iter()
                .map(|&k| {
                    let from = (k * 512) as usize;
                    let mut b = Vec::with_capacity(log::SECTOR);
                    for e in &s.bat[from..from + 512] {
                        b.extend_from_slice(&e.to_le_bytes());
                    }
                    (self.bat_offset + k * log::SECTOR as u64, b)
                })
                .collect();
            let guid = Guid::random();
            self.update_headers(false, Some(guid))?;
            let flen = self.file.file_length()?;
            let refs: Vec<(u64, &[u8])> = bytes.iter().map(|(o, b)| (*o, b.as_slice())).collect();
            let seq = s.sequence;
            s.sequence = seq.wrapping_add(1).max(1);
            let entry = log::entry_bytes(seq, guid, 0, flen, flen, &refs);
            self.file.write_at(&entry, self.log_offset)?;
            if self.sync || stop_after_log {
                self.file.flush()?;
            }
            if stop_after_log {
                return Ok(());
            }
            for (o, b) in &bytes {
                self.file.write_at(b, *o)?;
            }
            if self.sync {
                self.file.flush()?;
            }
            self.update_headers(false, Some(Guid::ZERO))?;
        }
        s.dirty.clear();
        Ok(())
    }

    /// Writes the pending BAT changes into the log and stops there, leaving a log that
    /// needs replay, as a crash between the two steps would. For tests of log replay.
    #[doc(hidden)]
    pub fn flush_leaving_log(&self) -> Result<()> {
        self.commit(true)
    }

    /// qemu-img check's findings (qemu's `vhdx_check_bat_entries`): one line per block that
    /// points past the end of the file or into the metadata.
    pub fn check(&self) -> Result<Vec<String>> {
        let s = self.state.read().map_err(|_| lock_err())?;
        let len = self.file.file_length()?;
        let mut errors = Vec::new();
        for (i, &e) in s.bat.iter().take(self.bat_entries as usize).enumerate() {
            if e & BAT_STATE_MASK != PAYLOAD_BLOCK_FULLY_PRESENT {
                continue;
            }
            let off = e & BAT_OFFSET_MASK;
            let block_len = self.block_size.min(
                self.md
                    .virtual_disk_size
                    .saturating_sub(i as u64 * self.block_size),
            );
            if off >= len {
                errors.push(format!("VHDX BAT entry {i} start offset {off} points after end of file ({len}). Image has probably been truncated."));
            } else if off + block_len > len {
                errors.push(format!("VHDX BAT entry {i} end offset {} points after end of file ({len}). Image has probably been truncated.", off + block_len - 1));
            }
        }
        Ok(errors)
    }
}

impl Drop for Vhdx {
    fn drop(&mut self) {
        if !self.read_only {
            // Best effort: a caller that wants the error flushes first.
            let _ = self.commit(false);
        }
    }
}

impl BlockDevice for Vhdx {
    fn size(&self) -> u64 {
        self.md.virtual_disk_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = self.check_range(offset, buf.len() as u64)?;
        let bs = self.block_size;
        let mut pos = offset;
        while pos < end {
            let block = pos / bs;
            let in_block = pos % bs;
            let n = (bs - in_block).min(end - pos);
            let b = &mut buf[(pos - offset) as usize..(pos - offset + n) as usize];
            let e = self.entry(block)?;
            self.read_block(e, b, pos, in_block)?;
            pos += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::invalid("the image is open read-only"));
        }
        let end = self.check_range(offset, buf.len() as u64)?;
        self.begin_write()?;
        let bs = self.block_size;
        let mut pos = offset;
        while pos < end {
            let block = pos / bs;
            let in_block = pos % bs;
            let n = (bs - in_block).min(end - pos);
            let b = &buf[(pos - offset) as usize..(pos - offset + n) as usize];
            let mut e = self.entry(block)?;
            if e & BAT_STATE_MASK != PAYLOAD_BLOCK_FULLY_PRESENT {
                let reads_zero =
                    !self.md.has_parent && e & BAT_STATE_MASK != PAYLOAD_BLOCK_PARTIALLY_PRESENT;
                if reads_zero && b.iter().all(|&x| x == 0) {
                    // Zeros into a block that reads as zeros change nothing.
                    pos += n;
                    continue;
                }
                e = self.alloc_block(block)?;
            }
            self.file.write_at(b, (e & BAT_OFFSET_MASK) + in_block)?;
            pos += n;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.commit(false)?;
        if self.sync {
            self.file.flush()?;
        }
        Ok(())
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }
}

impl Image for Vhdx {
    fn format_name(&self) -> &'static str {
        "vhdx"
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let size = self.md.virtual_disk_size;
        if offset >= size {
            return Ok(Mapping {
                offset,
                len: 0,
                kind: MapKind::Eof,
            });
        }
        let bs = self.block_size;
        let in_block = offset % bs;
        let mut n = (bs - in_block).min(size - offset).min(max_len).max(1);
        let e = self.entry(offset / bs)?;
        let host = (e & BAT_OFFSET_MASK) + in_block;
        let kind = match e & BAT_STATE_MASK {
            PAYLOAD_BLOCK_FULLY_PRESENT => MapKind::Data { host_offset: host },
            PAYLOAD_BLOCK_PARTIALLY_PRESENT => {
                let (len, here) = self.partial_runs(offset, n)?[0];
                n = len;
                if here {
                    MapKind::Data { host_offset: host }
                } else {
                    MapKind::Unallocated { host_offset: None }
                }
            }
            PAYLOAD_BLOCK_NOT_PRESENT | PAYLOAD_BLOCK_UNDEFINED => {
                MapKind::Unallocated { host_offset: None }
            }
            _ => MapKind::Zero { host_offset: None },
        };
        Ok(Mapping {
            offset,
            len: n,
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
    /// The name to record (relative to the child's directory, or absolute).
    pub name: String,
    /// The parent's data write GUID (the locator's `parent_linkage`).
    pub data_write_guid: Guid,
    /// The parent's virtual size and block size.
    pub size: u64,
}

/// A new image's parameters (qemu-img's `-o` options for vhdx).
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Virtual size in bytes (a multiple of 512).
    pub size: u64,
    /// Block size; `None` chooses as qemu does from the size.
    pub block_size: Option<u32>,
    /// Log size in bytes (a multiple of 1 MiB).
    pub log_size: u32,
    /// A fixed disk (every block in the file) instead of a dynamic one.
    pub fixed: bool,
    /// Mark blocks ZERO rather than NOT_PRESENT / FULLY_PRESENT (qemu's `block_state_zero`,
    /// on by default).
    pub block_state_zero: bool,
    /// A differencing disk's parent.
    pub parent: Option<ParentInfo>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            block_size: None,
            log_size: 1 << 20,
            fixed: false,
            block_state_zero: true,
            parent: None,
        }
    }
}

/// The block size qemu chooses for a disk of `size` bytes.
pub fn default_block_size(size: u64) -> u32 {
    if size > 32 << 40 {
        64 << 20
    } else if size > 100 << 30 {
        32 << 20
    } else if size > 1 << 30 {
        16 << 20
    } else {
        8 << 20
    }
}

/// Creates a VHDX image at `path` with qemu's layout (the file replaced), and returns it open
/// read-write.
pub fn create(path: &Path, o: &CreateOptions) -> Result<Vhdx> {
    if o.size > metadata::MAX_DISK_SIZE {
        return Err(Error::invalid("Image size too large; max of 64TB"));
    }
    let bs = o.block_size.unwrap_or_else(|| default_block_size(o.size));
    if bs < metadata::MIN_BLOCK_SIZE || u64::from(bs) % MIB != 0 {
        return Err(Error::invalid("Block size must be a multiple of 1 MB"));
    }
    if !bs.is_power_of_two() {
        return Err(Error::invalid("Block size must be a power of two"));
    }
    if bs > metadata::MAX_BLOCK_SIZE {
        return Err(Error::invalid(format!(
            "Block size must not exceed {}",
            metadata::MAX_BLOCK_SIZE
        )));
    }
    if o.log_size < MIB as u32 || u64::from(o.log_size) % MIB != 0 {
        return Err(Error::invalid("Log size must be a multiple of 1 MB"));
    }
    let bs64 = u64::from(bs);
    let sector: u64 = 512;
    let chunk_ratio = SECTORS_PER_BITMAP * sector / bs64;
    let has_parent = o.parent.is_some();
    let data_blocks = o.size.div_ceil(bs64);
    // qemu's count, including its 32-bit wrap for an empty disk (so qemu opens our empty
    // disks, whose BAT it sizes the same way).
    let entries = if has_parent {
        bat_entries(o.size, bs64, chunk_ratio, true)
    } else {
        data_blocks
            + u64::from((data_blocks as u32).wrapping_sub(1) >> chunk_ratio.trailing_zeros())
    };
    let bat_off = (HEADER_SECTION_END + u64::from(o.log_size)).next_multiple_of(MIB);
    let bat_len = (entries * 8).next_multiple_of(MIB);
    let md_off = (bat_off + bat_len).next_multiple_of(MIB);
    let data_start = bat_off + bat_len + 5 * MIB;
    if bat_len > u64::from(u32::MAX) {
        return Err(Error::invalid(
            "the BAT of this disk does not fit a VHDX region",
        ));
    }

    let f = RawFile::create(path, 0, Preallocation::Off)?;
    f.resize(
        if o.fixed {
            data_start + o.size
        } else {
            data_start
        },
        Preallocation::Off,
    )?;
    let mut ident = header::FILE_SIGNATURE.to_vec();
    for u in CREATOR.encode_utf16() {
        ident.extend_from_slice(&u.to_le_bytes());
    }
    f.write_at(&ident, 0)?;
    let mut h = Header {
        sequence_number: u64::from(u32::from_le_bytes(
            Guid::random().0[..4].try_into().unwrap_or([1; 4]),
        )),
        file_write_guid: Guid::random(),
        data_write_guid: Guid::random(),
        log_guid: Guid::ZERO,
        log_version: 0,
        version: 1,
        log_length: o.log_size,
        log_offset: HEADER_SECTION_END,
    };
    f.write_at(&h.to_bytes(), HEADER1_OFFSET)?;
    h.sequence_number += 1;
    f.write_at(&h.to_bytes(), HEADER2_OFFSET)?;
    let regions = [
        header::RegionEntry {
            guid: guid::BAT,
            file_offset: bat_off,
            length: bat_len as u32,
            required: false,
        },
        header::RegionEntry {
            guid: guid::METADATA,
            file_offset: md_off,
            length: MIB as u32,
            required: false,
        },
    ];
    let rt = header::region_table_bytes(&regions);
    if o.fixed || (o.block_state_zero && !has_parent) {
        let state = if o.block_state_zero && !has_parent {
            PAYLOAD_BLOCK_ZERO
        } else {
            PAYLOAD_BLOCK_FULLY_PRESENT
        };
        let mut bat = vec![0u8; (entries * 8) as usize];
        for b in 0..data_blocks {
            let i = (b + b / chunk_ratio) as usize;
            let e = if state == PAYLOAD_BLOCK_ZERO {
                state
            } else {
                (data_start + b * bs64).next_multiple_of(MIB) | state
            };
            bat[8 * i..8 * i + 8].copy_from_slice(&e.to_le_bytes());
        }
        if !bat.is_empty() {
            f.write_at(&bat, bat_off)?;
        }
    }
    f.write_at(&rt, header::REGION_TABLE_OFFSET)?;
    f.write_at(&rt, header::REGION_TABLE2_OFFSET)?;
    let md = Metadata {
        block_size: bs,
        leave_blocks_allocated: o.fixed,
        has_parent,
        virtual_disk_size: o.size,
        page_83_data: Guid::random(),
        logical_sector_size: sector as u32,
        physical_sector_size: sector as u32,
        parent_locator: o.parent.as_ref().map(|p| ParentLocator {
            locator_type: guid::PARENT_TYPE_VHDX,
            entries: vec![
                ("parent_linkage".into(), p.data_write_guid.to_string()),
                ("relative_path".into(), p.name.replace('/', "\\")),
            ],
        }),
    };
    f.write_at(&metadata::region_bytes(&md), md_off)?;
    f.flush()?;
    drop(f);
    Vhdx::open_path(path, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(size: u64) -> CreateOptions {
        CreateOptions {
            size,
            ..Default::default()
        }
    }

    #[test]
    fn write_read_reopen_and_log_replay() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("d.vhdx");
        let v = create(&p, &opts(20 << 20)).unwrap();
        let seq0 = v.header().sequence_number;
        v.write_at(&[7u8; 4096], 9 << 20).unwrap();
        v.write_at(&[0u8; 4096], 1 << 20).unwrap();
        v.flush().unwrap();
        assert_eq!(v.header().sequence_number, seq0 + 6);
        assert!(v.header().log_guid.is_zero());
        drop(v);
        let v = Vhdx::open_path(&p, true).unwrap();
        let mut b = vec![1u8; 8192];
        v.read_at(&mut b, (9 << 20) - 4096).unwrap();
        assert!(b[..4096].iter().all(|&x| x == 0));
        assert!(b[4096..].iter().all(|&x| x == 7));
        assert!(matches!(
            v.map(1 << 20, 1 << 20).unwrap().kind,
            MapKind::Zero { .. }
        ));
        drop(v);

        // A crash after the log entry: read-only sees the replayed BAT in memory, a
        // read-write open replays it into the file and empties the log.
        let v = Vhdx::open_path(&p, false).unwrap();
        v.write_at(&[9u8; 512], 17 << 20).unwrap();
        v.flush_leaving_log().unwrap();
        let crashed = t.path().join("crashed.vhdx");
        std::fs::copy(&p, &crashed).unwrap();
        std::mem::forget(v);
        let p = crashed;
        let v = Vhdx::open_path(&p, true).unwrap();
        assert!(v.log_pending());
        let mut b = [0u8; 512];
        v.read_at(&mut b, 17 << 20).unwrap();
        assert_eq!(b, [9u8; 512]);
        drop(v);
        let v = Vhdx::open_path(&p, false).unwrap();
        assert!(v.log_replayed());
        assert!(v.header().log_guid.is_zero());
        drop(v);
        let v = Vhdx::open_path(&p, true).unwrap();
        assert!(!v.log_pending());
        v.read_at(&mut b, 17 << 20).unwrap();
        assert_eq!(b, [9u8; 512]);
    }

    #[test]
    fn differencing_reads_the_parent_and_copies_up() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base.vhdx");
        let child = t.path().join("child.vhdx");
        let b = create(&base, &opts(16 << 20)).unwrap();
        b.write_at(&[5u8; 1 << 20], 0).unwrap();
        b.flush().unwrap();
        let guid = b.header().data_write_guid;
        drop(b);
        let c = create(
            &child,
            &CreateOptions {
                size: 16 << 20,
                parent: Some(ParentInfo {
                    name: "base.vhdx".into(),
                    data_write_guid: guid,
                    size: 16 << 20,
                }),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.parent_file_name(), Some("base.vhdx"));
        drop(c);
        let mut c = Vhdx::open_path(&child, false).unwrap();
        c.set_backing(Arc::new(Vhdx::open_path(&base, true).unwrap()));
        let mut r = [0u8; 8];
        c.read_at(&mut r, 4096).unwrap();
        assert_eq!(r, [5u8; 8]);
        c.write_at(&[6u8; 8], 0).unwrap();
        c.flush().unwrap();
        c.read_at(&mut r, 0).unwrap();
        assert_eq!(r, [6u8; 8]);
        c.read_at(&mut r, 8).unwrap();
        assert_eq!(r, [5u8; 8], "copied up from the parent");
    }

    #[test]
    fn partially_present_blocks_follow_the_sector_bitmap() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base.vhdx");
        let child = t.path().join("child.vhdx");
        let o = CreateOptions {
            size: 4 << 20,
            block_size: Some(1 << 20),
            ..Default::default()
        };
        let b = create(&base, &o).unwrap();
        b.write_at(&vec![0x11u8; 1 << 20], 0).unwrap();
        b.flush().unwrap();
        drop(b);
        let c = create(
            &child,
            &CreateOptions {
                parent: Some(ParentInfo {
                    name: "base.vhdx".into(),
                    data_write_guid: Guid::random(),
                    size: 4 << 20,
                }),
                ..o.clone()
            },
        )
        .unwrap();
        let (bat, cr) = (c.bat_offset, c.chunk_ratio);
        drop(c);
        // Append a data block of 0x22 and a bitmap with sectors 0-7 and 16 present.
        let mut bytes = std::fs::read(&child).unwrap();
        let data_at = bytes.len() as u64;
        bytes.extend(vec![0x22u8; 1 << 20]);
        let bm_at = bytes.len() as u64;
        let mut bm = vec![0u8; 1 << 20];
        bm[0] = 0xff;
        bm[2] = 0x01;
        bytes.extend(bm);
        let put = |b: &mut Vec<u8>, i: u64, e: u64| {
            let at = (bat + 8 * i) as usize;
            b[at..at + 8].copy_from_slice(&e.to_le_bytes());
        };
        put(&mut bytes, 0, data_at | PAYLOAD_BLOCK_PARTIALLY_PRESENT);
        put(&mut bytes, cr, bm_at | SB_BLOCK_PRESENT);
        std::fs::write(&child, &bytes).unwrap();
        let mut c = Vhdx::open_path(&child, false).unwrap();
        c.set_backing(Arc::new(Vhdx::open_path(&base, true).unwrap()));
        let mut r = vec![0u8; 20 * 512];
        c.read_at(&mut r, 0).unwrap();
        let sector = |r: &[u8], s: usize| r[s * 512];
        for s in 0..20 {
            let want = if s < 8 || s == 16 { 0x22 } else { 0x11 };
            assert_eq!(sector(&r, s), want, "sector {s}");
        }
        let m = c.map(0, 1 << 20).unwrap();
        assert_eq!(
            (m.len, m.kind),
            (
                4096,
                MapKind::Data {
                    host_offset: data_at
                }
            )
        );
        let m = c.map(4096, 1 << 20).unwrap();
        assert_eq!(
            (m.len, m.kind),
            (4096, MapKind::Unallocated { host_offset: None })
        );
        // A write into the block copies it up whole: what it read as, plus the write.
        c.write_at(&[0x33u8; 512], 19 * 512).unwrap();
        c.flush().unwrap();
        c.read_at(&mut r, 0).unwrap();
        for s in 0..20 {
            let want = match s {
                19 => 0x33,
                s if s < 8 || s == 16 => 0x22,
                _ => 0x11,
            };
            assert_eq!(sector(&r, s), want, "sector {s} after the write");
        }
        assert!(matches!(
            c.map(4096, 1 << 20).unwrap().kind,
            MapKind::Data { .. }
        ));
    }

    #[test]
    fn hostile_logs_are_refused_or_ignored() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("d.vhdx");
        drop(create(&p, &opts(20 << 20)).unwrap());
        let clean = std::fs::read(&p).unwrap();
        let len = clean.len() as u64;
        let g = Guid([7; 16]);
        let with_log = |entry: &[u8]| {
            let mut b = clean.clone();
            b[1 << 20..(1 << 20) + entry.len()].copy_from_slice(entry);
            for at in [HEADER1_OFFSET, HEADER2_OFFSET] {
                let at = at as usize;
                let mut h = Header::parse(&b[at..at + HEADER_SIZE]).unwrap();
                h.log_guid = g;
                b[at..at + HEADER_SIZE].copy_from_slice(&h.to_bytes());
            }
            std::fs::write(&p, &b).unwrap();
        };
        let sector = vec![0xabu8; 4096];
        // Growing the file by a petabyte; writing past what the log says the file is; a
        // file shorter than when the log was written.
        for (flushed, last, at, expect) in [
            (len, 1u64 << 50, 2 << 20, "would grow the file"),
            (len, len, 1u64 << 40, "outside the file's objects"),
            (len + (1 << 20), len, 2 << 20, "has been truncated"),
        ] {
            with_log(&log::entry_bytes(1, g, 0, flushed, last, &[(at, &sector)]));
            for ro in [true, false] {
                let e = Vhdx::open_path(&p, ro).unwrap_err().to_string();
                assert!(e.contains(expect), "{e}");
            }
        }
        // An entry of another log GUID is not replayed: the image opens as it was.
        with_log(&log::entry_bytes(
            1,
            Guid([8; 16]),
            0,
            len,
            len,
            &[(2 << 20, &sector)],
        ));
        let v = Vhdx::open_path(&p, false).unwrap();
        assert!(!v.log_replayed());
    }

    #[test]
    fn hostile_bat_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("d.vhdx");
        drop(create(&p, &opts(20 << 20)).unwrap());
        let mut bytes = std::fs::read(&p).unwrap();
        // BAT at 2 MiB: entry 0 fully present at 1 TiB.
        bytes[2 << 20..(2 << 20) + 8].copy_from_slice(&((1u64 << 40) | 6).to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let e = Vhdx::open_path(&p, true).unwrap_err().to_string();
        assert!(e.contains("points past the end of the file"), "{e}");
        bytes[2 << 20..(2 << 20) + 8].copy_from_slice(&((2u64 << 20) | 6).to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let e = Vhdx::open_path(&p, true).unwrap_err().to_string();
        assert!(e.contains("overlaps the metadata"), "{e}");
    }
}
