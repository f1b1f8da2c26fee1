//! A read-only XFS engine of our own: v4 and v5 superblocks, inode cores v1/v2/v3 (bigtime,
//! nrext64), data forks in local, extent and B+tree form, directories in all four forms,
//! symlinks, and extended attributes (short form, leaf, node, remote values).
//!
//! Everything is read through `&self` over a [`vdisk_block::BlockDevice`]; every structure is
//! hostile input (checked arithmetic, bounded loops, CRC32C on v5 metadata). [`Xfs`] refuses
//! writes ("XFS is read-only in this version"); [`XfsRw`] (module `write`) writes v5
//! filesystems, one logged transaction per operation. A dirty log is replayed into memory by
//! the log crate (`vdisk_xfs_log`) and read through; [`Xfs::replay_home`] writes it home, as
//! the guest layer does before opening [`XfsRw`].
//!
//! ```text
//!   guestfs FileSystem  <-- fs_impl.rs (the adapter)
//!          |
//!        Xfs: superblock -> inode (agno/agbno/offset) -> fork (local/extents/bmbt)
//!                             -> dir / symlink / attr
//! ```
//!
//! ```no_run
//! use std::sync::Arc;
//! use vdisk_fs::FileSystem;
//! # fn dev() -> Arc<dyn vdisk_block::BlockDevice> { unimplemented!() }
//! let fs = vdisk_xfs::Xfs::open(dev()).unwrap();
//! let ino = fs.resolve(b"/etc/os-release", true).unwrap();
//! let mut buf = vec![0u8; 4096];
//! let n = fs.read(ino, 0, &mut buf).unwrap();
//! print!("{}", String::from_utf8_lossy(&buf[..n]));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attr;
pub mod dir;
pub mod fork;
pub mod fs_impl;
pub mod inode;
pub mod log;
pub mod superblock;
pub mod write;

use std::sync::Arc;

use vdisk_block::{BlockDevice, Error, Result};

pub use inode::Inode;
pub use superblock::Superblock;
pub use write::XfsRw;

/// The message every write through the adapter answers.
pub const READ_ONLY: &str = "XFS is read-only in this version";

/// An XFS filesystem opened read-only.
pub struct Xfs {
    dev: Arc<dyn BlockDevice>,
    sb: Superblock,
    /// The device itself when `dev` is a log replay held in memory.
    unreplayed: Option<Arc<dyn BlockDevice>>,
}

impl Xfs {
    /// Opens the filesystem on `dev`: reads and validates the primary superblock, refuses
    /// unknown incompatible features and realtime volumes. A dirty log is replayed into
    /// memory and the filesystem read through that replay; `dev` is not written (see
    /// [`Xfs::replay_home`]).
    pub fn open(dev: Arc<dyn BlockDevice>) -> Result<Xfs> {
        let sb = read_superblock(&*dev)?;
        match log::replay(&dev)? {
            None => Ok(Xfs {
                dev,
                sb,
                unreplayed: None,
            }),
            Some(replayed) => {
                let replayed: Arc<dyn BlockDevice> = replayed;
                let sb = read_superblock(&*replayed)?;
                Ok(Xfs {
                    dev: replayed,
                    sb,
                    unreplayed: Some(dev),
                })
            }
        }
    }

    /// True when the log was dirty at open and is replayed in memory (not yet home).
    pub fn log_replayed_in_memory(&self) -> bool {
        self.unreplayed.is_some()
    }

    /// Writes a replay held in memory home (replayed again onto the device, flushed, the
    /// log closed with an unmount record) and reads the device itself from then on: what a
    /// writer calls before its first write. Returns false when there was nothing to do.
    pub fn replay_home(&mut self) -> Result<bool> {
        let Some(dev) = self.unreplayed.take() else {
            return Ok(false);
        };
        if let Err(e) = vdisk_xfs_log::recover_home(&*dev) {
            self.unreplayed = Some(dev);
            return Err(e);
        }
        self.sb = read_superblock(&*dev)?;
        self.dev = dev;
        Ok(true)
    }

    /// The primary superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// Reads `buf.len()` bytes at byte `offset` of the device, inside the filesystem.
    pub(crate) fn read_bytes(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| Error::corrupt(format!("XFS: read at {offset:#x} overflows")))?;
        if end > self.sb.fs_bytes() {
            return Err(Error::corrupt(format!(
                "XFS: metadata or data at {offset:#x} lies beyond the end of the filesystem"
            )));
        }
        self.dev.read_at(buf, offset)
    }

    /// The byte offset of filesystem block `fsb` (agno in the high bits, as XFS numbers them).
    pub(crate) fn fsb_to_byte(&self, fsb: u64) -> Result<u64> {
        let agno = fsb >> self.sb.sb_agblklog;
        let agbno = fsb & ((1u64 << self.sb.sb_agblklog) - 1);
        if agno >= u64::from(self.sb.sb_agcount) || agbno >= u64::from(self.sb.sb_agblocks) {
            return Err(Error::corrupt(format!(
                "XFS: block {fsb:#x} (AG {agno}, block {agbno}) lies outside the filesystem"
            )));
        }
        let daddr = agno
            .checked_mul(u64::from(self.sb.sb_agblocks))
            .and_then(|b| b.checked_add(agbno))
            .and_then(|b| b.checked_mul(u64::from(self.sb.sb_blocksize)))
            .ok_or_else(|| Error::corrupt(format!("XFS: block {fsb:#x} overflows")))?;
        Ok(daddr)
    }

    /// Reads `count` filesystem blocks from `fsb` on.
    pub(crate) fn read_blocks(&self, fsb: u64, count: u64) -> Result<Vec<u8>> {
        let len = count
            .checked_mul(u64::from(self.sb.sb_blocksize))
            .filter(|&l| l <= MAX_READ)
            .ok_or_else(|| Error::corrupt(format!("XFS: {count} blocks is too large a read")))?;
        let mut buf = vec![0u8; len as usize];
        let off = self.fsb_to_byte(fsb)?;
        self.read_bytes(&mut buf, off)?;
        Ok(buf)
    }
}

/// Reads and validates the primary superblock of `dev`.
fn read_superblock(dev: &dyn BlockDevice) -> Result<Superblock> {
    let mut buf = vec![0u8; 512];
    dev.read_at(&mut buf, 0)?;
    let sectsize = superblock::peek_sectsize(&buf)?;
    if sectsize > 512 {
        buf = vec![0u8; usize::from(sectsize)];
        dev.read_at(&mut buf, 0)?;
    }
    let sb = Superblock::parse(&buf)?;
    let end = sb
        .sb_dblocks
        .checked_mul(u64::from(sb.sb_blocksize))
        .ok_or_else(|| Error::corrupt("XFS superblock: sb_dblocks overflows"))?;
    if end > dev.size() {
        return Err(Error::corrupt(format!(
            "XFS superblock: the filesystem ({end} bytes) is larger than its device ({} bytes)",
            dev.size()
        )));
    }
    Ok(sb)
}

/// The most we read in one piece (a directory block is at most 64 KiB; a remote attribute
/// value 64 KiB plus headers): a bound on memory for hostile sizes.
pub(crate) const MAX_READ: u64 = 1 << 20;

pub(crate) fn be16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .map_or(0, |s| u16::from_be_bytes([s[0], s[1]]))
}

pub(crate) fn be32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

pub(crate) fn be64(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).map_or(0, |s| {
        u64::from_be_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
    })
}

/// Checks the CRC32C of a v5 metadata buffer whose checksum (little-endian) sits at `crc_off`.
pub(crate) fn verify_crc(buf: &[u8], crc_off: usize, what: &dyn Fn() -> String) -> Result<()> {
    if buf.len() < crc_off + 4 {
        return Err(Error::corrupt(format!(
            "{}: too short for a checksum",
            what()
        )));
    }
    let stored = u32::from_le_bytes([
        buf[crc_off],
        buf[crc_off + 1],
        buf[crc_off + 2],
        buf[crc_off + 3],
    ]);
    let c = crc32c::crc32c(&buf[..crc_off]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    let c = crc32c::crc32c_append(c, &buf[crc_off + 4..]);
    if c != stored {
        return Err(Error::corrupt(format!(
            "{}: bad CRC32C (stored {stored:#010x}, computed {c:#010x})",
            what()
        )));
    }
    Ok(())
}
