//! The GUID partition table (UEFI specification, chapter 5.3).
//!
//! The primary header sits at LBA 1 and points to the partition entry array; a backup header
//! sits at the last LBA of the disk with its own copy of the array before it. Each header
//! carries a CRC32 of itself and of the entry array; a header whose CRCs do not match is
//! damaged, and then the other copy is used.

use std::fmt;

use vdisk_block::{BlockDevice, Error, Result};

use super::{check_overlaps, Partition, PartitionInfo, PartitionTable, TableKind, SECTOR_SIZE};
use vdisk_block::bytes::{le32, le64};

/// The header signature, "EFI PART".
pub const SIGNATURE: &[u8; 8] = b"EFI PART";

/// At most this many entries are read. The specification asks for room for at least 128;
/// tools create 128; 4096 leaves room for odd tables and bounds the array we read.
pub const MAX_ENTRIES: u32 = 4096;

/// The largest entry size accepted. Entries are 128 bytes today; the specification allows any
/// `128 * 2^n`, and 1 KiB bounds the array (`MAX_ENTRIES * MAX_ENTRY_SIZE` = 4 MiB).
pub const MAX_ENTRY_SIZE: u32 = 1024;

/// A GUID as stored in GPT: the first three fields little-endian.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// True for the all-zero GUID (an unused entry's type).
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    /// Upper-case 8-4-4-4-12, as sfdisk prints GPT GUIDs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        for x in &b[10..16] {
            write!(f, "{x:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn guid(b: &[u8], off: usize) -> Guid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    Guid(a)
}

/// A GPT header, fields named as in the specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptHeader {
    /// Revision (0x00010000 for 1.0).
    pub revision: u32,
    /// Size of the header in bytes (92 in revision 1.0).
    pub header_size: u32,
    /// CRC32 of the header with this field zeroed.
    pub header_crc32: u32,
    /// The LBA of this header.
    pub my_lba: u64,
    /// The LBA of the other header.
    pub alternate_lba: u64,
    /// The first LBA a partition may use.
    pub first_usable_lba: u64,
    /// The last LBA a partition may use.
    pub last_usable_lba: u64,
    /// The disk GUID.
    pub disk_guid: Guid,
    /// The first LBA of the partition entry array.
    pub partition_entry_lba: u64,
    /// The number of entries in the array.
    pub number_of_partition_entries: u32,
    /// The size of one entry.
    pub size_of_partition_entry: u32,
    /// CRC32 of the entry array.
    pub partition_entry_array_crc32: u32,
}

impl GptHeader {
    /// Parses and validates the header in `sector`, which was read from LBA `lba` of a disk of
    /// `disk_lbas` sectors.
    pub fn parse(sector: &[u8; 512], lba: u64, disk_lbas: u64) -> Result<GptHeader> {
        let at = lba.saturating_mul(SECTOR_SIZE);
        if &sector[..8] != SIGNATURE {
            return Err(Error::corrupt_at(
                at,
                "no GPT header signature \"EFI PART\"",
            ));
        }
        let h = GptHeader {
            revision: le32(sector, 8),
            header_size: le32(sector, 12),
            header_crc32: le32(sector, 16),
            my_lba: le64(sector, 24),
            alternate_lba: le64(sector, 32),
            first_usable_lba: le64(sector, 40),
            last_usable_lba: le64(sector, 48),
            disk_guid: guid(sector, 56),
            partition_entry_lba: le64(sector, 72),
            number_of_partition_entries: le32(sector, 80),
            size_of_partition_entry: le32(sector, 84),
            partition_entry_array_crc32: le32(sector, 88),
        };
        let bad = |what: String| Err(Error::corrupt_at(at, format!("GPT header: {what}")));
        if !(92..=512).contains(&h.header_size) {
            return bad(format!("header size {} is not in 92..=512", h.header_size));
        }
        let mut copy = sector[..h.header_size as usize].to_vec();
        copy[16..20].fill(0);
        let crc = crc32fast::hash(&copy);
        if crc != h.header_crc32 {
            return bad(format!(
                "header CRC32 is {:#010x}, the header's bytes give {crc:#010x}",
                h.header_crc32
            ));
        }
        if h.my_lba != lba {
            return bad(format!(
                "it says it is at LBA {}, but it was read at {lba}",
                h.my_lba
            ));
        }
        if h.first_usable_lba > h.last_usable_lba || h.last_usable_lba >= disk_lbas {
            return bad(format!(
                "usable LBAs {}..={} do not fit a disk of {disk_lbas} sectors",
                h.first_usable_lba, h.last_usable_lba
            ));
        }
        let n = h.number_of_partition_entries;
        let sz = h.size_of_partition_entry;
        if n > MAX_ENTRIES {
            return bad(format!(
                "{n} partition entries (at most {MAX_ENTRIES} are read)"
            ));
        }
        if !(128..=MAX_ENTRY_SIZE).contains(&sz) || !sz.is_power_of_two() {
            return bad(format!(
                "partition entry size {sz} is not 128 times a power of two up to {MAX_ENTRY_SIZE}"
            ));
        }
        let array_end = h
            .partition_entry_lba
            .checked_add(h.array_bytes().div_ceil(SECTOR_SIZE));
        if h.partition_entry_lba < 2 || array_end.is_none_or(|e| e > disk_lbas) {
            return bad(format!(
                "partition entry array at LBA {} does not fit the disk",
                h.partition_entry_lba
            ));
        }
        Ok(h)
    }

    /// The length of the entry array in bytes (at most `MAX_ENTRIES * MAX_ENTRY_SIZE`).
    pub fn array_bytes(&self) -> u64 {
        u64::from(self.number_of_partition_entries) * u64::from(self.size_of_partition_entry)
    }
}

/// Reads the header at `lba` and its entry array, both CRCs checked.
fn read_copy(disk: &dyn BlockDevice, lba: u64, disk_lbas: u64) -> Result<(GptHeader, Vec<u8>)> {
    let mut sector = [0u8; 512];
    disk.read_at(&mut sector, lba * SECTOR_SIZE)?;
    let h = GptHeader::parse(&sector, lba, disk_lbas)?;
    // array_bytes() <= 4 MiB (MAX_ENTRIES * MAX_ENTRY_SIZE).
    let mut array = vec![0u8; h.array_bytes() as usize];
    let at = h.partition_entry_lba * SECTOR_SIZE;
    disk.read_at(&mut array, at)?;
    let crc = crc32fast::hash(&array);
    if crc != h.partition_entry_array_crc32 {
        return Err(Error::corrupt_at(
            at,
            format!(
                "GPT partition entry array CRC32 is {:#010x} in the header at LBA {lba}, the \
                 entries give {crc:#010x}",
                h.partition_entry_array_crc32
            ),
        ));
    }
    Ok((h, array))
}

/// Reads the GPT of a disk whose sector 0 is a protective MBR: the primary header, or the
/// backup when the primary is damaged.
pub fn read(disk: &dyn BlockDevice) -> Result<PartitionTable> {
    let disk_lbas = disk.size() / SECTOR_SIZE;
    if disk_lbas < 3 {
        return Err(Error::corrupt(format!(
            "disk of {disk_lbas} sectors is too small for the GPT its protective MBR announces"
        )));
    }
    let last = disk_lbas - 1;
    let (header, array, used_backup) = match read_copy(disk, 1, disk_lbas) {
        Ok((h, a)) => (h, a, false),
        Err(primary) => {
            // The backup belongs at the last LBA; a primary that is readable but damaged may
            // still name another place, which is tried second.
            match read_copy(disk, last, disk_lbas) {
                Ok((h, a)) => (h, a, true),
                Err(backup) => {
                    return Err(Error::corrupt(format!(
                        "both GPT headers are damaged: primary: {}; backup: {}",
                        primary.message(),
                        backup.message()
                    )))
                }
            }
        }
    };
    let sz = header.size_of_partition_entry as usize;
    let mut partitions = Vec::new();
    for (i, e) in array.chunks_exact(sz).enumerate() {
        let type_guid = guid(e, 0);
        if type_guid.is_nil() {
            continue;
        }
        let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let first = le64(e, 32);
        let last_lba = le64(e, 40);
        if first > last_lba || first < header.first_usable_lba || last_lba > header.last_usable_lba
        {
            return Err(Error::corrupt(format!(
                "GPT partition {number} (LBAs {first}..={last_lba}) lies outside the usable \
                 LBAs {}..={}",
                header.first_usable_lba, header.last_usable_lba
            )));
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        partitions.push(Partition {
            number,
            // last_usable_lba < disk_lbas, so these products fit.
            start: first * SECTOR_SIZE,
            size: (last_lba - first + 1) * SECTOR_SIZE,
            info: PartitionInfo::Gpt {
                type_guid,
                unique_guid: guid(e, 16),
                attributes: le64(e, 48),
                name: String::from_utf16_lossy(&units),
            },
        });
    }
    check_overlaps(
        partitions
            .iter()
            .map(|p| (p.number, p.start, p.size))
            .collect(),
    )?;
    Ok(PartitionTable {
        kind: TableKind::Gpt,
        partitions,
        id: header.disk_guid.to_string(),
        used_backup,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text() {
        // The Linux filesystem data type GUID as stored on disk.
        let g = Guid([
            0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47,
            0x7d, 0xe4,
        ]);
        assert_eq!(g.to_string(), "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    }

    #[test]
    fn header_errors() {
        let mut s = [0u8; 512];
        let e = GptHeader::parse(&s, 1, 100).unwrap_err().to_string();
        assert!(e.contains("no GPT header signature"), "{e}");
        s[..8].copy_from_slice(SIGNATURE);
        s[12..16].copy_from_slice(&92u32.to_le_bytes());
        let e = GptHeader::parse(&s, 1, 100).unwrap_err().to_string();
        assert!(e.contains("header CRC32 is 0x00000000"), "{e}");
    }
}
