//! Partition tables: MBR (primary, extended and logical partitions) and GPT.
//!
//! [`read_table`] looks at the first sectors of a disk and returns its partitions the way the
//! Linux kernel numbers them: MBR primaries 1–4, logical partitions from 5 in EBR-chain order,
//! GPT partitions by their slot in the entry array plus one. Each partition is a window on the
//! disk ([`Partition::open`] gives a [`Slice`]).
//!
//! ```text
//!   LBA 0   MBR (or protective MBR, type 0xee)  --> mbr.rs
//!   LBA 1   GPT header -> entry array (CRC32s)  --> gpt.rs
//!   ...     partitions
//!   last    backup GPT header
//! ```

pub mod gpt;
pub mod mbr;

use std::sync::Arc;

use vdisk_block::{BlockDevice, Error, Result, Slice};

pub use gpt::Guid;

/// The logical sector size that table offsets are counted in. Disks with 4096-byte logical
/// sectors are not probed: images (raw, qcow2) present 512-byte sectors to guests.
pub const SECTOR_SIZE: u64 = 512;

/// Which kind of table a disk carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// A DOS/MBR table ("dos" in sfdisk, "msdos" in parted and libguestfs).
    Mbr,
    /// A GUID partition table.
    Gpt,
}

impl TableKind {
    /// The name libguestfs's `part-get-parttype` prints: "msdos" or "gpt".
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::Mbr => "msdos",
            TableKind::Gpt => "gpt",
        }
    }
}

/// The role of an MBR partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MbrRole {
    /// One of the four entries of the MBR itself.
    Primary,
    /// A primary entry that holds the EBR chain of logical partitions (types 0x05, 0x0f,
    /// 0x85).
    Extended,
    /// A partition described by an EBR inside the extended partition.
    Logical,
}

/// What the table says about one partition besides where it lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionInfo {
    /// An MBR entry.
    Mbr {
        /// The system ID byte (0x83 Linux, 0x8e Linux LVM, 0x07 NTFS, ...).
        type_byte: u8,
        /// The boot indicator is 0x80.
        bootable: bool,
        /// Primary, extended or logical.
        role: MbrRole,
    },
    /// A GPT entry.
    Gpt {
        /// The partition type GUID.
        type_guid: Guid,
        /// The unique partition GUID.
        unique_guid: Guid,
        /// The attribute bits.
        attributes: u64,
        /// The partition name (UTF-16LE on disk, up to 36 code units).
        name: String,
    },
}

/// One partition: its Linux number and its place on the disk, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The number Linux gives it (`/dev/sda<number>`).
    pub number: u32,
    /// The first byte on the disk.
    pub start: u64,
    /// The length in bytes as the table records it.
    pub size: u64,
    /// Type and flags.
    pub info: PartitionInfo,
}

impl Partition {
    /// True for an MBR extended partition (the container of logical partitions).
    pub fn is_extended(&self) -> bool {
        matches!(
            self.info,
            PartitionInfo::Mbr {
                role: MbrRole::Extended,
                ..
            }
        )
    }

    /// The bytes a guest kernel shows as this partition's device. For an extended partition
    /// Linux exposes only its first two sectors (1 KiB, "room for LILO"), so nothing mistakes
    /// the EBR chain for a filesystem; every other partition is its whole extent.
    pub fn device_size(&self) -> u64 {
        if self.is_extended() {
            self.size.min(2 * SECTOR_SIZE)
        } else {
            self.size
        }
    }

    /// A window on `disk` holding this partition (see [`Partition::device_size`]).
    pub fn open(&self, disk: Arc<dyn BlockDevice>) -> Result<Slice<Arc<dyn BlockDevice>>> {
        Slice::new(disk, self.start, self.device_size())
    }
}

/// A disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    /// MBR or GPT.
    pub kind: TableKind,
    /// The partitions in number order.
    pub partitions: Vec<Partition>,
    /// The disk identifier: the MBR's 32-bit signature as `0x%08x` or the GPT disk GUID, as
    /// sfdisk prints it.
    pub id: String,
    /// GPT only: the primary header was damaged and the backup at the last LBA was used.
    pub used_backup: bool,
}

/// Reads the partition table of `disk`: `Ok(None)` when sector 0 has no table (no 0x55aa
/// signature, or bytes that are not an MBR such as a bare FAT boot sector), an error when a
/// table is there but broken.
pub fn read_table(disk: &dyn BlockDevice) -> Result<Option<PartitionTable>> {
    if disk.size() < SECTOR_SIZE {
        return Ok(None);
    }
    let mut sector0 = [0u8; 512];
    disk.read_at(&mut sector0, 0)?;
    let Some(mbr) = mbr::Mbr::parse(&sector0) else {
        return Ok(None);
    };
    if mbr.is_protective() {
        return gpt::read(disk).map(Some);
    }
    mbr::read(disk, &mbr).map(Some)
}

/// Checks that no two partitions share a byte; `what` names the kind for the message.
/// `parts` holds (number, start, size).
pub(crate) fn check_overlaps(mut parts: Vec<(u32, u64, u64)>) -> Result<()> {
    parts.sort_by_key(|p| p.1);
    for w in parts.windows(2) {
        let (a, b) = (w[0], w[1]);
        // start + size was checked against the disk size before, so it cannot overflow.
        if a.1.saturating_add(a.2) > b.1 {
            return Err(Error::corrupt(format!(
                "partition {} (bytes {}..{}) overlaps partition {} (starting at byte {})",
                a.0,
                a.1,
                a.1.saturating_add(a.2),
                b.0,
                b.1
            )));
        }
    }
    Ok(())
}
