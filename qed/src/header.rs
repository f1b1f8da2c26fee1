//! The QED header: 64 little-endian bytes at offset 0 of the first cluster, followed (when
//! [`QED_F_BACKING_FILE`] is set) by the backing file name somewhere in the header clusters.

use vdisk_block::bytes::{le32, le64};
use vdisk_block::{Error, Result};

/// Size of the header structure on disk.
pub const HEADER_LEN: usize = 64;
/// `magic`: "QED\0".
pub const QED_MAGIC: u32 = u32::from_le_bytes(*b"QED\0");
/// The image has a backing file.
pub const QED_F_BACKING_FILE: u64 = 0x01;
/// The image was not closed cleanly and needs a consistency check before use.
pub const QED_F_NEED_CHECK: u64 = 0x02;
/// The backing file is raw and must not be probed.
pub const QED_F_BACKING_FORMAT_NO_PROBE: u64 = 0x04;
/// The feature bits we (and qemu) understand; any other bit makes the image unreadable.
pub const QED_FEATURE_MASK: u64 =
    QED_F_BACKING_FILE | QED_F_NEED_CHECK | QED_F_BACKING_FORMAT_NO_PROBE;
/// Smallest cluster size.
pub const QED_MIN_CLUSTER_SIZE: u32 = 4 * 1024;
/// Largest cluster size.
pub const QED_MAX_CLUSTER_SIZE: u32 = 64 * 1024 * 1024;
/// Default cluster size for new images.
pub const QED_DEFAULT_CLUSTER_SIZE: u32 = 64 * 1024;
/// Smallest table size, in clusters.
pub const QED_MIN_TABLE_SIZE: u32 = 1;
/// Largest table size, in clusters.
pub const QED_MAX_TABLE_SIZE: u32 = 16;
/// Default table size for new images.
pub const QED_DEFAULT_TABLE_SIZE: u32 = 4;
/// The longest backing file name we read (qemu's `PATH_MAX`-sized buffer).
pub const MAX_BACKING_NAME: u32 = 4095;

/// The header, with qemu's `QEDHeader` field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// "QED\0".
    pub magic: u32,
    /// Cluster size in bytes.
    pub cluster_size: u32,
    /// Size of the L1 and L2 tables, in clusters.
    pub table_size: u32,
    /// Size of the header area, in clusters.
    pub header_size: u32,
    /// Format feature bits: an unknown one makes the image unreadable.
    pub features: u64,
    /// Compatible feature bits: unknown ones may be ignored.
    pub compat_features: u64,
    /// Self-resetting feature bits: unknown ones are cleared by a writer.
    pub autoclear_features: u64,
    /// Byte offset of the L1 table.
    pub l1_table_offset: u64,
    /// The guest-visible size in bytes.
    pub image_size: u64,
    /// Byte offset of the backing file name, from the start of the header.
    pub backing_filename_offset: u32,
    /// Length of the backing file name in bytes.
    pub backing_filename_size: u32,
}

/// qemu's `qed_is_cluster_size_valid`: a power of two in [4 KiB, 64 MiB].
pub fn cluster_size_valid(cs: u32) -> bool {
    cs.is_power_of_two() && (QED_MIN_CLUSTER_SIZE..=QED_MAX_CLUSTER_SIZE).contains(&cs)
}

/// qemu's `qed_is_table_size_valid`: a power of two in [1, 16].
pub fn table_size_valid(ts: u32) -> bool {
    ts.is_power_of_two() && (QED_MIN_TABLE_SIZE..=QED_MAX_TABLE_SIZE).contains(&ts)
}

/// qemu's `qed_max_image_size` (saturating where qemu's u64 product would wrap).
pub fn max_image_size(cluster_size: u32, table_size: u32) -> u64 {
    let entries = u128::from(table_size) * u128::from(cluster_size) / 8;
    let max = entries * u128::from(cluster_size) * entries;
    u64::try_from(max).unwrap_or(u64::MAX)
}

impl Header {
    /// Whether `head` starts with a QED header (qemu's probe).
    pub fn has_magic(head: &[u8]) -> bool {
        head.len() >= HEADER_LEN && le32(head, 0) == QED_MAGIC
    }

    /// Reads the fields (no validation: see [`Header::validate`]).
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        Header {
            magic: le32(b, 0),
            cluster_size: le32(b, 4),
            table_size: le32(b, 8),
            header_size: le32(b, 12),
            features: le64(b, 16),
            compat_features: le64(b, 24),
            autoclear_features: le64(b, 32),
            l1_table_offset: le64(b, 40),
            image_size: le64(b, 48),
            backing_filename_offset: le32(b, 56),
            backing_filename_size: le32(b, 60),
        }
    }

    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.cluster_size.to_le_bytes());
        b[8..12].copy_from_slice(&self.table_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.header_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.features.to_le_bytes());
        b[24..32].copy_from_slice(&self.compat_features.to_le_bytes());
        b[32..40].copy_from_slice(&self.autoclear_features.to_le_bytes());
        b[40..48].copy_from_slice(&self.l1_table_offset.to_le_bytes());
        b[48..56].copy_from_slice(&self.image_size.to_le_bytes());
        b[56..60].copy_from_slice(&self.backing_filename_offset.to_le_bytes());
        b[60..64].copy_from_slice(&self.backing_filename_size.to_le_bytes());
        b
    }

    /// Bytes per table (L1 or L2).
    pub fn table_bytes(&self) -> u64 {
        u64::from(self.table_size) * u64::from(self.cluster_size)
    }

    /// qemu's open checks, in qemu's order and words. `file_size` is the file's length
    /// rounded down to a whole cluster (what qemu allocates from).
    pub fn validate(&self, file_size: u64) -> Result<()> {
        if self.magic != QED_MAGIC {
            return Err(Error::corrupt("Image not in QED format"));
        }
        if self.features & !QED_FEATURE_MASK != 0 {
            return Err(Error::unsupported(format!(
                "Unsupported QED features: {:x}",
                self.features & !QED_FEATURE_MASK
            )));
        }
        if !cluster_size_valid(self.cluster_size) {
            return Err(Error::corrupt(format!(
                "QED cluster size is invalid ({})",
                self.cluster_size
            )));
        }
        if !table_size_valid(self.table_size) {
            return Err(Error::corrupt(format!(
                "QED table size is invalid ({})",
                self.table_size
            )));
        }
        if self.image_size % 512 != 0
            || self.image_size > max_image_size(self.cluster_size, self.table_size)
        {
            return Err(Error::corrupt(format!(
                "QED image size is invalid ({})",
                self.image_size
            )));
        }
        if !self.table_offset_valid(self.l1_table_offset, file_size) {
            return Err(Error::corrupt(format!(
                "QED table offset is invalid (L1 table at {:#x}, file holds {file_size} bytes of whole clusters)",
                self.l1_table_offset
            )));
        }
        if self.header_size > u32::MAX / self.cluster_size {
            return Err(Error::corrupt("QED header size is too large"));
        }
        if self.features & QED_F_BACKING_FILE != 0 {
            let end =
                u64::from(self.backing_filename_offset) + u64::from(self.backing_filename_size);
            if end > self.header_bytes() {
                return Err(Error::corrupt("QED backing filename offset is invalid"));
            }
            if self.backing_filename_size > MAX_BACKING_NAME {
                return Err(Error::corrupt(format!(
                    "QED backing filename is too long ({} bytes)",
                    self.backing_filename_size
                )));
            }
        }
        Ok(())
    }

    /// The header area's size in bytes.
    pub fn header_bytes(&self) -> u64 {
        u64::from(self.header_size) * u64::from(self.cluster_size)
    }

    /// qemu's `qed_check_cluster_offset`: cluster-aligned, past the header, inside the file.
    pub fn cluster_offset_valid(&self, offset: u64, file_size: u64) -> bool {
        offset % u64::from(self.cluster_size) == 0
            && offset >= self.header_bytes()
            && offset < file_size
    }

    /// qemu's `qed_check_table_offset`: both the first and the last cluster of the table
    /// valid. Like qemu's, it fails every table of one cluster (the end equals the start),
    /// so images with `table_size=1` open nowhere.
    pub fn table_offset_valid(&self, offset: u64, file_size: u64) -> bool {
        let span = u64::from(self.table_size - 1) * u64::from(self.cluster_size);
        match offset.checked_add(span) {
            Some(end) if end > offset => {
                self.cluster_offset_valid(offset, file_size)
                    && self.cluster_offset_valid(end, file_size)
            }
            _ => false,
        }
    }
}
