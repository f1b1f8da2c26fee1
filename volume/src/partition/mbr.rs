//! The DOS master boot record and the extended boot records (EBRs) of logical partitions.
//!
//! Sector 0 ends with the signature 0x55 0xaa and holds four 16-byte entries at 0x1be:
//! boot indicator, CHS start, system ID, CHS end, starting LBA (u32 LE), sector count (u32 LE).
//! An extended partition holds a chain of EBRs: in each, one entry describes a logical
//! partition (its start relative to that EBR) and one links to the next EBR (its start relative
//! to the extended partition).

use std::collections::HashSet;

use vdisk_block::{BlockDevice, Error, Result};

use super::SECTOR_SIZE;
use super::{check_overlaps, MbrRole, Partition, PartitionInfo, PartitionTable, TableKind};

/// At most this many logical partitions are read from an EBR chain. Linux gives a disk at most
/// 256 partition minors (DISK_MAX_PARTS); 128 logicals is far beyond any real table and bounds
/// the chain walk on hostile bytes.
pub const MAX_LOGICAL_PARTITIONS: usize = 128;

/// System IDs of extended partitions: DOS (0x05), Win95 LBA (0x0f), Linux (0x85).
pub const EXTENDED_TYPES: [u8; 3] = [0x05, 0x0f, 0x85];

/// The system ID of a GPT protective MBR entry.
pub const PROTECTIVE_TYPE: u8 = 0xee;

/// One 16-byte MBR/EBR entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbrEntry {
    /// 0x80 for the boot partition, else 0.
    pub boot_indicator: u8,
    /// The system ID.
    pub system_id: u8,
    /// The first sector (relative to a base that depends on where the entry is).
    pub starting_lba: u32,
    /// The number of sectors.
    pub size_in_lba: u32,
}

impl MbrEntry {
    fn parse(b: &[u8]) -> MbrEntry {
        MbrEntry {
            boot_indicator: b[0],
            system_id: b[4],
            starting_lba: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            size_in_lba: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    fn is_extended(&self) -> bool {
        EXTENDED_TYPES.contains(&self.system_id)
    }
}

/// A boot record: the four entries and the disk signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mbr {
    /// The 32-bit disk signature at 0x1b8.
    pub disk_signature: u32,
    /// The four entries.
    pub entries: [MbrEntry; 4],
}

impl Mbr {
    /// Parses a boot sector. `None` when it is not a partition table: no 0x55aa signature, or
    /// a boot indicator other than 0 or 0x80 (the kernel's test; a FAT or NTFS boot sector has
    /// code there).
    pub fn parse(sector: &[u8; 512]) -> Option<Mbr> {
        if sector[510] != 0x55 || sector[511] != 0xaa {
            return None;
        }
        let mut entries = [MbrEntry::parse(&[0; 16]); 4];
        for (i, e) in entries.iter_mut().enumerate() {
            let off = 0x1be + 16 * i;
            *e = MbrEntry::parse(&sector[off..off + 16]);
            if e.boot_indicator != 0 && e.boot_indicator != 0x80 {
                return None;
            }
        }
        // A filesystem boot sector (FAT, NTFS) with zeroed entries still passes the test above;
        // the kernel treats it as a table without partitions, and so do we.
        let disk_signature =
            u32::from_le_bytes([sector[0x1b8], sector[0x1b9], sector[0x1ba], sector[0x1bb]]);
        Some(Mbr {
            disk_signature,
            entries,
        })
    }

    /// True when an entry has type 0xee: the disk is GPT (a hybrid MBR counts too).
    pub fn is_protective(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.system_id == PROTECTIVE_TYPE && e.size_in_lba != 0)
    }
}

fn sectors_to_bytes(lba: u64) -> u64 {
    // lba < 2^33 here (a u32 plus a u32), so this cannot overflow.
    lba * SECTOR_SIZE
}

/// Checks that sectors `[start, start + count)` lie on a disk of `disk_size` bytes and
/// returns (start, size) in bytes.
fn place(number: u32, start: u64, count: u64, disk_size: u64) -> Result<(u64, u64)> {
    let (s, n) = (sectors_to_bytes(start), sectors_to_bytes(count));
    if start == 0 {
        return Err(Error::corrupt(format!(
            "MBR partition {number} starts at sector 0, over the partition table"
        )));
    }
    if s.saturating_add(n) > disk_size {
        return Err(Error::corrupt(format!(
            "MBR partition {number} (sectors {start}..{}) reaches past the end of the disk \
             ({} sectors)",
            start.saturating_add(count),
            disk_size / SECTOR_SIZE
        )));
    }
    Ok((s, n))
}

/// Reads the whole table of a disk whose sector 0 is `mbr`: primaries, then the EBR chain.
pub fn read(disk: &dyn BlockDevice, mbr: &Mbr) -> Result<PartitionTable> {
    let disk_size = disk.size();
    let mut partitions = Vec::new();
    let mut extended: Option<(u64, u64)> = None; // (first sector, sector count)
    for (i, e) in mbr.entries.iter().enumerate() {
        // The kernel skips entries without sectors, whatever their type byte says.
        if e.size_in_lba == 0 {
            continue;
        }
        let number = u32::try_from(i).unwrap_or(0) + 1;
        let (start, size) = place(
            number,
            e.starting_lba.into(),
            e.size_in_lba.into(),
            disk_size,
        )?;
        let role = if e.is_extended() {
            if extended.is_some() {
                return Err(Error::corrupt(format!(
                    "MBR has a second extended partition (entry {number})"
                )));
            }
            extended = Some((e.starting_lba.into(), e.size_in_lba.into()));
            MbrRole::Extended
        } else {
            MbrRole::Primary
        };
        partitions.push(Partition {
            number,
            start,
            size,
            info: PartitionInfo::Mbr {
                type_byte: e.system_id,
                bootable: e.boot_indicator == 0x80,
                role,
            },
        });
    }
    check_overlaps(
        partitions
            .iter()
            .map(|p| (p.number, p.start, p.size))
            .collect(),
    )?;
    if let Some((ext_start, ext_count)) = extended {
        let logicals = read_logicals(disk, ext_start, ext_count)?;
        check_overlaps(
            logicals
                .iter()
                .map(|p| (p.number, p.start, p.size))
                .collect(),
        )?;
        partitions.extend(logicals);
    }
    Ok(PartitionTable {
        kind: TableKind::Mbr,
        partitions,
        id: format!("0x{:08x}", mbr.disk_signature),
        used_backup: false,
    })
}

/// Walks the EBR chain of the extended partition at sectors `[ext_start, ext_start +
/// ext_count)`.
fn read_logicals(disk: &dyn BlockDevice, ext_start: u64, ext_count: u64) -> Result<Vec<Partition>> {
    let ext_end = ext_start.saturating_add(ext_count);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut ebr_lba = ext_start;
    let mut number = 5u32;
    loop {
        if !seen.insert(ebr_lba) {
            return Err(Error::corrupt_at(
                sectors_to_bytes(ebr_lba),
                format!("EBR chain loops back to the EBR at sector {ebr_lba}"),
            ));
        }
        let mut sector = [0u8; 512];
        disk.read_at(&mut sector, sectors_to_bytes(ebr_lba))?;
        if sector[510] != 0x55 || sector[511] != 0xaa {
            // The kernel stops at an EBR without its signature; a chain ends there.
            break;
        }
        let mut next = None;
        for i in 0..4 {
            let off = 0x1be + 16 * i;
            let e = MbrEntry::parse(&sector[off..off + 16]);
            if e.size_in_lba == 0 {
                continue;
            }
            if e.is_extended() {
                // Only the first link counts, as in the kernel.
                if next.is_none() {
                    next = Some(ext_start.saturating_add(e.starting_lba.into()));
                }
                continue;
            }
            if out.len() >= MAX_LOGICAL_PARTITIONS {
                return Err(Error::corrupt(format!(
                    "the extended partition holds more than {MAX_LOGICAL_PARTITIONS} logical \
                     partitions"
                )));
            }
            let start = ebr_lba.saturating_add(e.starting_lba.into());
            let count = u64::from(e.size_in_lba);
            if e.starting_lba == 0 || start.saturating_add(count) > ext_end {
                return Err(Error::corrupt_at(
                    sectors_to_bytes(ebr_lba),
                    format!(
                        "logical partition {number} (sectors {start}..{}) lies outside its \
                         extended partition (sectors {ext_start}..{ext_end})",
                        start.saturating_add(count)
                    ),
                ));
            }
            let disk_size = disk.size();
            let (s, n) = place(number, start, count, disk_size)?;
            out.push(Partition {
                number,
                start: s,
                size: n,
                info: PartitionInfo::Mbr {
                    type_byte: e.system_id,
                    bootable: e.boot_indicator == 0x80,
                    role: MbrRole::Logical,
                },
            });
            number = number.saturating_add(1);
        }
        match next {
            None => break,
            Some(n) if n >= ext_end || n < ext_start => {
                return Err(Error::corrupt_at(
                    sectors_to_bytes(ebr_lba),
                    format!(
                        "EBR at sector {ebr_lba} links to sector {n}, outside its extended \
                         partition (sectors {ext_start}..{ext_end})"
                    ),
                ))
            }
            Some(n) => ebr_lba = n,
        }
        if seen.len() > MAX_LOGICAL_PARTITIONS {
            return Err(Error::corrupt(format!(
                "the EBR chain is longer than {MAX_LOGICAL_PARTITIONS} links"
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdisk_block::MemDevice;

    fn entry(sector: &mut [u8], i: usize, ty: u8, start: u32, count: u32) {
        let off = 0x1be + 16 * i;
        sector[off + 4] = ty;
        sector[off + 8..off + 12].copy_from_slice(&start.to_le_bytes());
        sector[off + 12..off + 16].copy_from_slice(&count.to_le_bytes());
        sector[510] = 0x55;
        sector[511] = 0xaa;
    }

    fn disk_with(f: impl FnOnce(&mut Vec<u8>)) -> MemDevice {
        let mut v = vec![0u8; 1 << 20];
        f(&mut v);
        MemDevice::from_vec(v)
    }

    #[test]
    fn ebr_loop_is_refused() {
        let d = disk_with(|v| {
            entry(&mut v[..512], 0, 0x05, 100, 1000);
            let ebr = 100 * 512;
            entry(&mut v[ebr..ebr + 512], 0, 0x83, 10, 20);
            entry(&mut v[ebr..ebr + 512], 1, 0x05, 0, 50); // links back to itself
        });
        let e = super::super::read_table(&d).unwrap_err().to_string();
        assert!(e.contains("EBR chain loops back"), "{e}");
    }

    #[test]
    fn past_end_and_overlap() {
        let d = disk_with(|v| entry(&mut v[..512], 0, 0x83, 2048, 4096));
        let e = super::super::read_table(&d).unwrap_err().to_string();
        assert!(e.contains("reaches past the end of the disk"), "{e}");
        let d = disk_with(|v| {
            entry(&mut v[..512], 0, 0x83, 64, 100);
            entry(&mut v[..512], 1, 0x83, 100, 100);
        });
        let e = super::super::read_table(&d).unwrap_err().to_string();
        assert!(
            e.contains("partition 1 (bytes 32768..83968) overlaps partition 2"),
            "{e}"
        );
    }

    #[test]
    fn fat_boot_sector_is_not_a_table() {
        let mut s = [0u8; 512];
        s[0x1be] = 0x31; // boot code bytes where a table would be
        s[510] = 0x55;
        s[511] = 0xaa;
        assert!(Mbr::parse(&s).is_none());
    }
}
