//! The hard disk footer: 512 bytes at the end of every VHD file (and, for dynamic and
//! differencing disks, a copy at offset 0). All fields are big-endian.

pub(crate) use vdisk_block::bytes::{be16, be32, be64};
use vdisk_block::{Error, Result};

/// Size of the footer on disk.
pub const FOOTER_SIZE: usize = 512;
/// The footer's cookie.
pub const COOKIE: &[u8; 8] = b"conectix";
/// `Disk Type` of a fixed hard disk.
pub const TYPE_FIXED: u32 = 2;
/// `Disk Type` of a dynamic hard disk.
pub const TYPE_DYNAMIC: u32 = 3;
/// `Disk Type` of a differencing hard disk.
pub const TYPE_DIFFERENCING: u32 = 4;
/// Unix time of 2000-01-01 00:00:00 UTC, the epoch of VHD time stamps.
pub const VHD_EPOCH: u64 = 946_684_800;

/// The largest geometry: 65535 cylinders, 16 heads, 255 sectors per track. A disk with this
/// geometry is sized by its `Current Size` whatever its creator.
pub const MAX_GEOMETRY: (u16, u8, u8) = (65535, 16, 255);
/// [`MAX_GEOMETRY`] in sectors.
pub const MAX_GEOMETRY_SECTORS: u64 = 65535 * 16 * 255;

/// The hard disk footer, as the VHD specification names its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// "Features: a bit field used to indicate specific feature support" (0x2 is reserved
    /// and always set).
    pub features: u32,
    /// "File Format Version" (0x00010000).
    pub file_format_version: u32,
    /// "Data Offset: absolute byte offset, from the beginning of the file, to the next
    /// structure" (the dynamic disk header; all ones for fixed disks).
    pub data_offset: u64,
    /// "Time Stamp: the creation time of a hard disk image", seconds since 2000-01-01 UTC.
    pub time_stamp: u32,
    /// "Creator Application" ("qemu", "qem2", "vpc ", "win ", ...).
    pub creator_application: [u8; 4],
    /// "Creator Version" (major in the high 16 bits).
    pub creator_version: u32,
    /// "Creator Host OS" ("Wi2k", "Mac ").
    pub creator_host_os: [u8; 4],
    /// "Original Size: the size of the hard disk in bytes ... at creation time".
    pub original_size: u64,
    /// "Current Size: the current size of the hard disk, in bytes".
    pub current_size: u64,
    /// "Disk Geometry": cylinders.
    pub cylinders: u16,
    /// "Disk Geometry": heads.
    pub heads: u8,
    /// "Disk Geometry": sectors per track (cylinder).
    pub sectors_per_track: u8,
    /// "Disk Type": 2 fixed, 3 dynamic, 4 differencing.
    pub disk_type: u32,
    /// "Checksum: one's complement of the sum of all the bytes in the footer without the
    /// checksum field".
    pub checksum: u32,
    /// "Unique Id: a 128-bit universally unique identifier".
    pub unique_id: [u8; 16],
    /// "Saved State: whether the hard disk is in a saved state".
    pub saved_state: u8,
}

/// The VHD checksum of `bytes` with the four bytes at `skip` counted as zero.
pub fn checksum(bytes: &[u8], skip: usize) -> u32 {
    let mut sum: u32 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !(skip..skip + 4).contains(&i) {
            sum = sum.wrapping_add(u32::from(b));
        }
    }
    !sum
}

fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

impl Footer {
    /// Whether `b` starts with the footer cookie.
    pub fn has_cookie(b: &[u8]) -> bool {
        b.starts_with(COOKIE)
    }

    /// Parses a footer and verifies its checksum. The caller checked the cookie.
    pub fn parse(b: &[u8; FOOTER_SIZE]) -> Result<Footer> {
        let f = Footer {
            features: be32(b, 8),
            file_format_version: be32(b, 12),
            data_offset: be64(b, 16),
            time_stamp: be32(b, 24),
            creator_application: arr(b, 28),
            creator_version: be32(b, 32),
            creator_host_os: arr(b, 36),
            original_size: be64(b, 40),
            current_size: be64(b, 48),
            cylinders: be16(b, 56),
            heads: b[58],
            sectors_per_track: b[59],
            disk_type: be32(b, 60),
            checksum: be32(b, 64),
            unique_id: arr(b, 68),
            saved_state: b[84],
        };
        let want = checksum(b, 64);
        if f.checksum != want {
            return Err(Error::corrupt(format!(
                "the VHD footer checksum is {:#010x}, but the footer sums to {want:#010x}",
                f.checksum
            )));
        }
        Ok(f)
    }

    /// The footer's bytes, with its checksum computed afresh.
    pub fn to_bytes(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[..8].copy_from_slice(COOKIE);
        b[8..12].copy_from_slice(&self.features.to_be_bytes());
        b[12..16].copy_from_slice(&self.file_format_version.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.time_stamp.to_be_bytes());
        b[28..32].copy_from_slice(&self.creator_application);
        b[32..36].copy_from_slice(&self.creator_version.to_be_bytes());
        b[36..40].copy_from_slice(&self.creator_host_os);
        b[40..48].copy_from_slice(&self.original_size.to_be_bytes());
        b[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        b[56..58].copy_from_slice(&self.cylinders.to_be_bytes());
        b[58] = self.heads;
        b[59] = self.sectors_per_track;
        b[60..64].copy_from_slice(&self.disk_type.to_be_bytes());
        b[68..84].copy_from_slice(&self.unique_id);
        b[84] = self.saved_state;
        let sum = checksum(&b, 64);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// The geometry's capacity in sectors (cylinders x heads x sectors per track).
    pub fn chs_sectors(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track)
    }

    /// Whether the creator sizes its disks by geometry (Virtual PC and qemu before
    /// `force_size`), so the geometry and not `Current Size` gives the disk's size, as qemu's
    /// `vpc_ignore_current_size` decides.
    pub fn creator_sizes_by_geometry(&self) -> bool {
        &self.creator_application == b"vpc " || &self.creator_application == b"qemu"
    }

    /// The disk's size in bytes as qemu computes it: the geometry's capacity for creators that
    /// size by geometry, `Current Size` (rounded down to sectors) otherwise and whenever the
    /// geometry is the maximum one.
    pub fn virtual_size(&self) -> u64 {
        let chs = self.chs_sectors();
        let sectors = if !self.creator_sizes_by_geometry() || chs == MAX_GEOMETRY_SECTORS {
            self.current_size / 512
        } else {
            chs
        };
        sectors * 512
    }
}

/// The VHD specification's CHS geometry for a disk of `total_sectors` (which may round the
/// capacity down), with qemu's cap at [`MAX_GEOMETRY_SECTORS`].
pub fn calculate_geometry(total_sectors: u64) -> (u16, u8, u8) {
    let total = total_sectors.min(MAX_GEOMETRY_SECTORS);
    let (spt, heads, cth) = if total >= 65535 * 16 * 63 {
        (255u64, 16u64, total / 255)
    } else {
        let mut spt = 17u64;
        let mut cth = total / spt;
        let mut heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cth = total / spt;
        }
        if cth >= heads * 1024 {
            spt = 63;
            heads = 16;
            cth = total / spt;
        }
        (spt, heads, cth)
    };
    // cth / heads <= 65535 for total <= MAX_GEOMETRY_SECTORS; heads <= 16, spt <= 255.
    let cyl = u16::try_from(cth / heads).unwrap_or(u16::MAX);
    (cyl, heads as u8, spt as u8)
}

/// The largest disk qemu creates or opens: 2040 GiB, in sectors.
pub const MAX_SECTORS: u64 = 0xff00_0000;

/// A new disk's size and geometry as qemu-img rounds them: without `force_size`, the
/// smallest CHS capacity of at least `size` (unless that reaches the maximum geometry, which
/// keeps `size`); with it, `size` as given and the maximum geometry.
pub fn rounded_size(size: u64, force_size: bool) -> Result<(u64, (u16, u8, u8))> {
    let want = size / 512;
    let geo = if force_size {
        MAX_GEOMETRY
    } else {
        let total = want.min(MAX_GEOMETRY_SECTORS);
        let mut geo = (0u16, 0u8, 0u8);
        let mut i = 0u64;
        let cap = |g: (u16, u8, u8)| u64::from(g.0) * u64::from(g.1) * u64::from(g.2);
        // Each step adds a sector; the geometry catches up within a cylinder (< 16 * 255
        // sectors), so this ends quickly.
        while total > cap(geo) {
            geo = calculate_geometry(total + i);
            i += 1;
        }
        geo
    };
    let cap = u64::from(geo.0) * u64::from(geo.1) * u64::from(geo.2);
    let sectors = if cap == MAX_GEOMETRY_SECTORS {
        if want > MAX_SECTORS {
            return Err(Error::invalid(
                "The image size is too large for file format 'vpc'",
            ));
        }
        want
    } else {
        cap
    };
    Ok((sectors * 512, geo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_rounds_up_as_qemu() {
        // qemu-img create -f vpc x 100M reports 104865792 bytes.
        assert_eq!(rounded_size(100 << 20, false).unwrap().0, 104_865_792);
        assert_eq!(rounded_size(100 << 20, true).unwrap().0, 100 << 20);
        assert_eq!(rounded_size(200 << 30, false).unwrap().0, 200 << 30);
        assert!(rounded_size(3000 << 30, false).is_err());
    }

    #[test]
    fn checksum_roundtrip_and_corruption() {
        let f = Footer {
            features: 2,
            file_format_version: 0x10000,
            data_offset: 512,
            time_stamp: 1,
            creator_application: *b"qemu",
            creator_version: 0x5_0003,
            creator_host_os: *b"Wi2k",
            original_size: 1 << 20,
            current_size: 1 << 20,
            cylinders: 30,
            heads: 4,
            sectors_per_track: 17,
            disk_type: TYPE_DYNAMIC,
            checksum: 0,
            unique_id: [7; 16],
            saved_state: 0,
        };
        let mut b = f.to_bytes();
        let g = Footer::parse(&b).unwrap();
        assert_eq!(g.current_size, 1 << 20);
        b[40] ^= 1;
        let e = Footer::parse(&b).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
    }
}
