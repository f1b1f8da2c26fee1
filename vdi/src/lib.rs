//! VDI images (VirtualBox; qemu's `vdi` driver): dynamic ("normal") and static ("fixed")
//! disks.
//!
//! ```text
//!   [header 512][block map: one u32 per 1 MiB block][block][block]...
//!                 entry = index of the block in the data area,
//!                 0xffffffff never allocated, 0xfffffffe discarded (both read as zeros)
//! ```
//!
//! A static image has every block allocated in order when it is created; a dynamic one
//! appends a block at the end of the data area the first time the guest writes into it.
//! Reads and writes go through `&self` from any number of threads;
//! [`Vdi::map`](vdisk_block::Image::map) says where each range lives.
//!
//! ```no_run
//! use vdisk_block::BlockDevice;
//! let vdi = vdisk_vdi::Vdi::open_path("disk.vdi", true)?;
//! let mut mbr = [0u8; 512];
//! vdi.read_at(&mut mbr, 0)?;
//! # Ok::<(), vdisk_block::Error>(())
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod header;

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use vdisk_block::{
    BlockDevice, BlockDeviceExt, Error, Image, MapKind, Mapping, Preallocation, Resize, Result,
};
use vdisk_raw::RawFile;

pub use header::Header;
use header::{BLOCK_SIZE, HEADER_SIZE, TYPE_DYNAMIC, TYPE_STATIC};

/// A block map entry of a block never allocated.
pub const UNALLOCATED: u32 = 0xffff_ffff;
/// A block map entry of a discarded block (reads as zeros).
pub const DISCARDED: u32 = 0xffff_fffe;
/// qemu's limit on `blocks_in_image` (the block map read in one request below 2 GiB).
pub const QEMU_MAX_BLOCKS: u32 = ((1u32 << 31) - 512) / 4;
/// The largest disk qemu opens (`VDI_DISK_SIZE_MAX`).
pub const MAX_DISK_SIZE: u64 = QEMU_MAX_BLOCKS as u64 * BLOCK_SIZE as u64;
/// The most block map entries we load: 64 MiB of map, a 16 TiB disk with 1 MiB blocks. A
/// larger count is a hostile header asking for an unbounded allocation.
pub const MAX_BLOCKS: u32 = 1 << 24;

fn is_allocated(e: u32) -> bool {
    e < DISCARDED
}

/// qemu's probe: the signature at offset 64 of a full header.
pub fn probe(head: &[u8]) -> u32 {
    if Header::has_signature(head) {
        100
    } else {
        0
    }
}

#[derive(Debug)]
struct State {
    bmap: Vec<u32>,
    /// The index the next allocated block gets.
    next: u32,
}

/// An open VDI image.
#[derive(Debug)]
pub struct Vdi {
    file: Arc<RawFile>,
    header: Mutex<Header>,
    size: u64,
    offset_data: u64,
    offset_bmap: u64,
    image_type: u32,
    read_only: bool,
    /// Pass flushes to the host (off for a conversion's target, qemu's cache=unsafe).
    sync: bool,
    state: RwLock<State>,
}

fn lock_err() -> Error {
    Error::corrupt("a thread panicked while holding the VDI metadata lock")
}

/// The result of a consistency check (qemu's `vdi_co_check`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// One line per problem, as qemu prints them.
    pub errors: Vec<String>,
}

impl Vdi {
    /// Opens the image at `path`.
    pub fn open_path(path: impl AsRef<Path>, read_only: bool) -> Result<Vdi> {
        let path = path.as_ref();
        let file = RawFile::open(
            path,
            &vdisk_raw::OpenOptions {
                read_only,
                force_share: false,
            },
        )?;
        Vdi::open(Arc::new(file), read_only).map_err(|e| e.with_path(path))
    }

    /// Opens the VDI image in `file`, checking every header field before use.
    pub fn open(file: Arc<RawFile>, read_only: bool) -> Result<Vdi> {
        let len = file.file_length()?;
        if len < HEADER_SIZE as u64 {
            return Err(Error::corrupt(
                "Image not in VDI format (the file is shorter than a VDI header)",
            ));
        }
        let mut hb = [0u8; HEADER_SIZE];
        file.read_at(&mut hb, 0)?;
        let h = Header::parse(&hb);
        h.validate()?;
        let size = h.disk_size.next_multiple_of(512);
        let offset_bmap = u64::from(h.offset_bmap);
        let offset_data = u64::from(h.offset_data);
        let n = h.blocks_in_image;
        let bytes = u64::from(n) * 4;
        if offset_bmap + bytes > len {
            return Err(Error::corrupt_at(
                340,
                format!(
                    "the block map at {offset_bmap:#x} ({n} entries) reaches past the end of the file"
                ),
            ));
        }
        // bytes <= 4 * MAX_BLOCKS.
        let mut raw = vec![0u8; bytes as usize];
        file.read_at(&mut raw, offset_bmap)?;
        let bs = u64::from(BLOCK_SIZE);
        let mut bmap = Vec::with_capacity(n as usize);
        let mut next = h.blocks_allocated;
        for (i, c) in raw.chunks_exact(4).enumerate() {
            let e = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            if is_allocated(e) {
                let end = offset_data + (u64::from(e) + 1) * bs;
                if end > len {
                    return Err(Error::corrupt_at(
                        offset_bmap + 4 * i as u64,
                        format!(
                            "block map entry {i} points past the end of the file (block {e} at {:#x}, file is {len} bytes)",
                            end - bs
                        ),
                    ));
                }
                // A new block never lands on one in use, whatever blocks_allocated says.
                next = next.max(e + 1);
            }
            bmap.push(e);
        }
        Ok(Vdi {
            file,
            header: Mutex::new(h),
            size,
            offset_data,
            offset_bmap,
            image_type: h.image_type,
            read_only,
            sync: true,
            state: RwLock::new(State { bmap, next }),
        })
    }

    /// The header as it is now.
    pub fn header(&self) -> Header {
        self.header
            .lock()
            .map(|h| *h)
            .unwrap_or_else(|e| *e.into_inner())
    }

    /// Whether the image is static (fixed, preallocated).
    pub fn is_static(&self) -> bool {
        self.image_type == TYPE_STATIC
    }

    /// The block size (qemu's `cluster-size`).
    pub fn block_size(&self) -> u64 {
        u64::from(BLOCK_SIZE)
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

    fn entry(&self, idx: u64) -> Result<u32> {
        let s = self.state.read().map_err(|_| lock_err())?;
        Ok(usize::try_from(idx)
            .ok()
            .and_then(|i| s.bmap.get(i).copied())
            .unwrap_or(UNALLOCATED))
    }

    fn host(&self, e: u32, in_block: u64) -> u64 {
        self.offset_data + u64::from(e) * u64::from(BLOCK_SIZE) + in_block
    }

    /// Appends block `idx` to the data area and records it (block map entry, then the
    /// header's count). Returns its entry.
    fn alloc_block(&self, idx: u64) -> Result<u32> {
        let mut s = self.state.write().map_err(|_| lock_err())?;
        // idx < bmap.len(): the caller's range lies inside the disk, which the map covers.
        let i = idx as usize;
        if is_allocated(s.bmap[i]) {
            return Ok(s.bmap[i]);
        }
        let e = s.next;
        let n = s.bmap.len() as u64;
        if u64::from(e) >= n {
            // Only a wrong blocks_allocated (or a block map entry out of range) leads here:
            // a data area never holds more blocks than the map has entries.
            return Err(Error::corrupt(format!(
                "the VDI data area is full: the next block would be number {e}, but the block map has {n} entries"
            )));
        }
        let end = self.host(e, u64::from(BLOCK_SIZE));
        if self.file.file_length()? < end {
            // The new block reads as zeros until written: a hole, not written zeros.
            self.file.resize(end, Preallocation::Off)?;
        }
        self.file
            .write_at(&e.to_le_bytes(), self.offset_bmap + 4 * idx)?;
        s.bmap[i] = e;
        s.next = e + 1;
        let mut h = self.header.lock().map_err(|_| lock_err())?;
        h.blocks_allocated = h.blocks_allocated.max(e + 1);
        self.file.write_at(&h.blocks_allocated.to_le_bytes(), 388)?;
        Ok(e)
    }

    /// qemu's check: entries in range, no block used twice, the allocated count right.
    pub fn check(&self) -> Result<CheckReport> {
        let s = self.state.read().map_err(|_| lock_err())?;
        let h = self.header();
        let n = h.blocks_in_image;
        let mut owner = vec![UNALLOCATED; n as usize];
        let mut errors = Vec::new();
        let mut allocated: u32 = 0;
        for (block, &e) in s.bmap.iter().enumerate() {
            if !is_allocated(e) {
                continue;
            }
            if e < n {
                allocated += 1;
                let o = &mut owner[e as usize];
                if is_allocated(*o) {
                    errors.push(format!("ERROR: block index {o} also used by {e}"));
                } else {
                    *o = e;
                }
            } else {
                errors.push(format!("ERROR: block index {block} too large, is {e}"));
            }
        }
        if allocated != h.blocks_allocated {
            errors.push(format!(
                "ERROR: allocated blocks mismatch, is {allocated}, should be {}",
                h.blocks_allocated
            ));
        }
        Ok(CheckReport { errors })
    }
}

impl BlockDevice for Vdi {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = self.check_range(offset, buf.len() as u64)?;
        let bs = u64::from(BLOCK_SIZE);
        let mut pos = offset;
        while pos < end {
            let idx = pos / bs;
            let in_block = pos % bs;
            let n = (bs - in_block).min(end - pos);
            // pos - offset and n are bounded by buf.len().
            let b = &mut buf[(pos - offset) as usize..(pos - offset + n) as usize];
            let e = self.entry(idx)?;
            if is_allocated(e) {
                self.file.read_at(b, self.host(e, in_block))?;
            } else {
                b.fill(0);
            }
            pos += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::invalid("the image is open read-only"));
        }
        let end = self.check_range(offset, buf.len() as u64)?;
        let bs = u64::from(BLOCK_SIZE);
        let mut pos = offset;
        while pos < end {
            let idx = pos / bs;
            let in_block = pos % bs;
            let n = (bs - in_block).min(end - pos);
            let b = &buf[(pos - offset) as usize..(pos - offset + n) as usize];
            let mut e = self.entry(idx)?;
            if !is_allocated(e) {
                if b.iter().all(|&x| x == 0) {
                    // Zeros into a block that reads as zeros change nothing.
                    pos += n;
                    continue;
                }
                e = self.alloc_block(idx)?;
            }
            self.file.write_at(b, self.host(e, in_block))?;
            pos += n;
        }
        Ok(())
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

impl Image for Vdi {
    fn format_name(&self) -> &'static str {
        "vdi"
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        if offset >= self.size {
            return Ok(Mapping {
                offset,
                len: 0,
                kind: MapKind::Eof,
            });
        }
        let bs = u64::from(BLOCK_SIZE);
        let in_block = offset % bs;
        let n = (bs - in_block).min(self.size - offset).min(max_len).max(1);
        let e = self.entry(offset / bs)?;
        let kind = if is_allocated(e) {
            MapKind::Data {
                host_offset: self.host(e, in_block),
            }
        } else {
            MapKind::Zero { host_offset: None }
        };
        Ok(Mapping {
            offset,
            len: n,
            kind,
        })
    }
}

/// A new image's parameters (qemu-img's `-o` options for vdi).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Virtual size in bytes (a multiple of 512).
    pub size: u64,
    /// A static (preallocated) image.
    pub static_image: bool,
}

fn random_uuid(salt: u64) -> [u8; 16] {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut out = [0u8; 16];
    for (i, half) in out.chunks_exact_mut(8).enumerate() {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(now);
        h.write_u64(salt);
        h.write_usize(i);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

/// Creates a VDI image at `path` as qemu-img does (the file replaced), and returns it open
/// read-write.
pub fn create(path: &Path, o: &CreateOptions) -> Result<Vdi> {
    if o.size > MAX_DISK_SIZE {
        return Err(Error::unsupported(format!(
            "Unsupported VDI image size (size is {:#x}, max supported is {MAX_DISK_SIZE:#x})",
            o.size
        )));
    }
    let bs = u64::from(BLOCK_SIZE);
    let blocks = o.size.div_ceil(bs);
    if blocks > u64::from(MAX_BLOCKS) {
        return Err(Error::unsupported(format!(
            "a VDI image of more than {MAX_BLOCKS} blocks"
        )));
    }
    // blocks <= MAX_BLOCKS.
    let blocks32 = blocks as u32;
    let bmap_size = (blocks * 4).next_multiple_of(512);
    let mut text = [0u8; 64];
    text[..header::QEMU_TEXT.len()].copy_from_slice(header::QEMU_TEXT.as_bytes());
    let h = Header {
        text,
        signature: header::SIGNATURE,
        version: header::VERSION_1_1,
        header_size: 0x180,
        image_type: if o.static_image {
            TYPE_STATIC
        } else {
            TYPE_DYNAMIC
        },
        image_flags: 0,
        description: [0; 256],
        offset_bmap: 0x200,
        offset_data: u32::try_from(0x200 + bmap_size)
            .map_err(|_| Error::invalid("size out of range"))?,
        cylinders: 0,
        heads: 0,
        sectors: 0,
        sector_size: 512,
        disk_size: o.size,
        block_size: BLOCK_SIZE,
        block_extra: 0,
        blocks_in_image: blocks32,
        blocks_allocated: if o.static_image { blocks32 } else { 0 },
        uuid_image: random_uuid(1),
        uuid_last_snap: random_uuid(2),
        uuid_link: [0; 16],
        uuid_parent: [0; 16],
    };
    let f = RawFile::create(path, 0, Preallocation::Off)?;
    let data = 0x200 + bmap_size;
    let len = if o.static_image {
        data + blocks * bs
    } else {
        data
    };
    f.resize(len, Preallocation::Off)?;
    f.write_at(&h.to_bytes(), 0)?;
    let mut map = Vec::with_capacity(bmap_size as usize);
    for i in 0..blocks32 {
        let e = if o.static_image { i } else { UNALLOCATED };
        map.extend_from_slice(&e.to_le_bytes());
    }
    map.resize(bmap_size as usize, 0);
    if !map.is_empty() {
        f.write_at(&map, 0x200)?;
    }
    f.flush()?;
    drop(f);
    Vdi::open_path(path, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_hostile_map() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("d.vdi");
        let v = create(
            &p,
            &CreateOptions {
                size: 10 << 20,
                static_image: false,
            },
        )
        .unwrap();
        v.write_at(&[7u8; 4096], 3 << 20).unwrap();
        assert!(v.check().unwrap().errors.is_empty());
        drop(v);
        let v = Vdi::open_path(&p, true).unwrap();
        let mut b = [0u8; 4096];
        v.read_at(&mut b, 3 << 20).unwrap();
        assert_eq!(b, [7u8; 4096]);
        drop(v);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[0x200..0x204].copy_from_slice(&1000u32.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let e = Vdi::open_path(&p, true).unwrap_err().to_string();
        assert!(e.contains("block map entry 0 points past the end"), "{e}");
    }
}
