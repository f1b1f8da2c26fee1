//! The hosted sparse extent header (`SparseExtentHeader`, magic `KDMV`), little-endian,
//! 79 bytes packed at the start of a sparse extent file (and, for stream-optimized images
//! with the grain directory at the end, again in the footer).

use vdisk_block::bytes::{le32, le64};
use vdisk_block::{Error, Result};

/// `KDMV` as the first four bytes.
pub const MAGIC: &[u8; 4] = b"KDMV";
/// The old VMware Workstation 3 / ESX sparse magic, `COWD`; refused by name.
pub const VMDK3_MAGIC: &[u8; 4] = b"COWD";
/// Size of the header on disk, magic included.
pub const HEADER_SIZE: usize = 79;

/// `flags` bit: the newline detection test bytes are valid.
pub const FLAG_NL_DETECT: u32 = 1 << 0;
/// `flags` bit: a redundant grain directory exists at `rgd_offset`.
pub const FLAG_RGD: u32 = 1 << 1;
/// `flags` bit: grain table entry 1 means "zeroed grain".
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// `flags` bit: grains are compressed.
pub const FLAG_COMPRESS: u32 = 1 << 16;
/// `flags` bit: the file holds markers (stream-optimized).
pub const FLAG_MARKER: u32 = 1 << 17;
/// Every flag we understand; others are refused.
pub const KNOWN_FLAGS: u32 =
    FLAG_NL_DETECT | FLAG_RGD | FLAG_ZERO_GRAIN | FLAG_COMPRESS | FLAG_MARKER;
/// `gd_offset` value meaning "the grain directory is described by the footer".
pub const GD_AT_END: u64 = u64::MAX;
/// `compress_algorithm` value for deflate.
pub const COMPRESSION_DEFLATE: u16 = 1;

/// The largest grain we accept, in sectors (qemu: 1 GiB is "unrealistic"; real grains are
/// 64 KiB).
pub const MAX_GRAIN_SECTORS: u64 = 0x20_0000;
/// Grain tables have at most 512 entries (qemu refuses more).
pub const MAX_GTES_PER_GT: u32 = 512;
/// Sparse extents are addressed by 32-bit sector numbers.
pub const MAX_EXTENT_SECTORS: u64 = 1 << 32;

/// The header fields, named as VMware's spec names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseExtentHeader {
    /// Format version: 1, 2 (zeroed-grain GTEs) or 3 (stream-optimized, or CBT).
    pub version: u32,
    /// Feature flags (`FLAG_*`).
    pub flags: u32,
    /// "the maximum data number of sectors in the extent".
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_size: u64,
    /// Sector of the embedded descriptor (0: none).
    pub descriptor_offset: u64,
    /// Sectors reserved for the embedded descriptor.
    pub descriptor_size: u64,
    /// Entries per grain table.
    pub num_gtes_per_gt: u32,
    /// Sector of the redundant grain directory.
    pub rgd_offset: u64,
    /// Sector of the grain directory, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Sector where grains may start (the metadata's end).
    pub overhead: u64,
    /// True when the file was damaged by a text-mode (CR/LF) transfer.
    pub unclean_shutdown: u8,
    /// The newline test bytes: `\n`, ` `, `\r`, `\n`.
    pub check_bytes: [u8; 4],
    /// 0 none, 1 deflate.
    pub compress_algorithm: u16,
}

impl SparseExtentHeader {
    /// Parses the header (magic included) from at least [`HEADER_SIZE`] bytes. Only the
    /// layout is read here; [`SparseExtentHeader::validate`] checks the values.
    pub fn parse(b: &[u8]) -> Result<SparseExtentHeader> {
        if b.len() < HEADER_SIZE {
            return Err(Error::corrupt("File is too small, not a valid image"));
        }
        if &b[..4] == VMDK3_MAGIC {
            return Err(Error::unsupported(
                "VMDK version 3 (COWD) sparse extents are not supported",
            ));
        }
        if &b[..4] != MAGIC {
            return Err(Error::corrupt("Image not in VMDK format"));
        }
        let mut cb = [0u8; 4];
        cb.copy_from_slice(&b[73..77]);
        Ok(SparseExtentHeader {
            version: le32(b, 4),
            flags: le32(b, 8),
            capacity: le64(b, 12),
            grain_size: le64(b, 20),
            descriptor_offset: le64(b, 28),
            descriptor_size: le64(b, 36),
            num_gtes_per_gt: le32(b, 44),
            rgd_offset: le64(b, 48),
            gd_offset: le64(b, 56),
            overhead: le64(b, 64),
            unclean_shutdown: b[72],
            check_bytes: cb,
            compress_algorithm: u16::from_le_bytes([b[77], b[78]]),
        })
    }

    /// Serializes the header, magic included.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_size.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        b[72] = self.unclean_shutdown;
        b[73..77].copy_from_slice(&self.check_bytes);
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }

    /// True when grains are deflate-compressed.
    pub fn compressed(&self) -> bool {
        self.compress_algorithm == COMPRESSION_DEFLATE
    }

    /// Checks every field that sizes or places something, against the file's length in
    /// bytes. The grain directory itself is checked when it is read.
    pub fn validate(&self, file_len: u64) -> Result<()> {
        if self.version == 0 || self.version > 3 {
            return Err(Error::unsupported(format!(
                "Unsupported VMDK version {}",
                self.version
            )));
        }
        if self.flags & !KNOWN_FLAGS != 0 {
            return Err(Error::unsupported(format!(
                "unknown VMDK header flags 0x{:x}",
                self.flags & !KNOWN_FLAGS
            )));
        }
        if self.compress_algorithm > COMPRESSION_DEFLATE {
            return Err(Error::unsupported(format!(
                "unknown VMDK compression algorithm {}",
                self.compress_algorithm
            )));
        }
        if self.grain_size == 0 || self.grain_size > MAX_GRAIN_SECTORS {
            return Err(Error::corrupt("Invalid granularity, image may be corrupt"));
        }
        if self.num_gtes_per_gt == 0 {
            return Err(Error::corrupt("L1 entry size is invalid"));
        }
        if self.num_gtes_per_gt > MAX_GTES_PER_GT {
            return Err(Error::corrupt("L2 table size too big"));
        }
        if self.capacity > MAX_EXTENT_SECTORS.saturating_mul(self.grain_size) {
            return Err(Error::corrupt(format!(
                "extent capacity of {} sectors is beyond what 32-bit grain tables address",
                self.capacity
            )));
        }
        let file_sectors = file_len.div_ceil(512);
        if self.overhead > file_sectors {
            return Err(Error::corrupt(format!(
                "File truncated, expecting at least {} bytes",
                self.overhead.saturating_mul(512)
            )));
        }
        Ok(())
    }

    /// Guest sectors one grain directory entry covers.
    pub fn gd_entry_sectors(&self) -> u64 {
        u64::from(self.num_gtes_per_gt).saturating_mul(self.grain_size)
    }

    /// Entries in the grain directory.
    pub fn gd_entries(&self) -> u64 {
        self.capacity.div_ceil(self.gd_entry_sectors().max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden() -> SparseExtentHeader {
        SparseExtentHeader {
            version: 1,
            flags: FLAG_RGD | FLAG_NL_DETECT,
            capacity: 131072,
            grain_size: 128,
            descriptor_offset: 1,
            descriptor_size: 20,
            num_gtes_per_gt: 512,
            rgd_offset: 21,
            gd_offset: 30,
            overhead: 128,
            unclean_shutdown: 0,
            check_bytes: [b'\n', b' ', b'\r', b'\n'],
            compress_algorithm: 0,
        }
    }

    #[test]
    fn round_trip_and_field_checks() {
        let h = golden();
        let b = h.to_bytes();
        assert_eq!(SparseExtentHeader::parse(&b).unwrap(), h);
        h.validate(1 << 20).unwrap();
        let err = |f: fn(&mut SparseExtentHeader)| {
            let mut x = golden();
            f(&mut x);
            x.validate(1 << 20).unwrap_err().to_string()
        };
        assert_eq!(err(|h| h.version = 4), "Unsupported VMDK version 4");
        assert_eq!(
            err(|h| h.grain_size = 0),
            "Invalid granularity, image may be corrupt"
        );
        assert_eq!(err(|h| h.num_gtes_per_gt = 4096), "L2 table size too big");
        assert_eq!(
            err(|h| h.flags |= 1 << 20),
            "unknown VMDK header flags 0x100000"
        );
        assert_eq!(
            err(|h| h.overhead = 1 << 40),
            "File truncated, expecting at least 562949953421312 bytes"
        );
        assert!(err(|h| h.capacity = u64::MAX).contains("beyond what 32-bit"));
        let mut cowd = b;
        cowd[..4].copy_from_slice(b"COWD");
        assert!(SparseExtentHeader::parse(&cowd).is_err());
        assert!(SparseExtentHeader::parse(&b[..10]).is_err());
    }
}
