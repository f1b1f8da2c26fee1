//! The boot sector's BIOS Parameter Block, checked field by field, and the volume geometry
//! derived from it (Microsoft's "FAT: General Overview of On-Disk Format", section 3).

use vdisk_block::{Error, Result};

/// The three FAT variants, decided by the count of data clusters alone (spec section 3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    /// 12-bit FAT entries: fewer than 4085 clusters.
    Fat12,
    /// 16-bit FAT entries: 4085 to 65524 clusters.
    Fat16,
    /// 28-bit FAT entries in 32-bit slots: 65525 clusters or more.
    Fat32,
}

impl FatType {
    /// The name `filesystems` and error messages use.
    pub fn name(self) -> &'static str {
        match self {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        }
    }
}

/// Fewer clusters than this is FAT12 (spec: "If CountofClusters < 4085 ... FAT12").
pub const FAT12_MAX_CLUSTERS: u32 = 4085;
/// Fewer clusters than this (and not FAT12) is FAT16.
pub const FAT16_MAX_CLUSTERS: u32 = 65525;
/// The largest cluster count a FAT32 entry can address (0x0FFFFFF5 less the two reserved).
pub const FAT32_MAX_CLUSTERS: u32 = 0x0FFF_FFF5;
/// The largest cluster: the spec asks for at most 32 KiB, mkfs.fat makes 64 KiB (128 sectors
/// of 512 bytes) and Windows reads 256 KiB (128 of 2048); beyond that no tool goes.
pub const MAX_CLUSTER_SIZE: u32 = 256 * 1024;
/// The largest FAT we hold in memory: 64 MiB is 16M FAT32 clusters (a 512 GiB volume with
/// 32 KiB clusters). Larger volumes are refused by name rather than loaded.
pub const MAX_FAT_BYTES: u64 = 64 << 20;

/// The geometry of one FAT volume, every field checked against the others and the device.
#[derive(Debug, Clone)]
pub struct Geometry {
    /// FAT12, FAT16 or FAT32.
    pub fat_type: FatType,
    /// BPB_BytsPerSec: 512, 1024, 2048 or 4096.
    pub bytes_per_sector: u32,
    /// BPB_SecPerClus: a power of two from 1 to 128.
    pub sectors_per_cluster: u32,
    /// Bytes in one cluster (at most [`MAX_CLUSTER_SIZE`]).
    pub cluster_size: u32,
    /// BPB_RsvdSecCnt: sectors before the first FAT.
    pub reserved_sectors: u32,
    /// BPB_NumFATs: copies of the FAT.
    pub num_fats: u32,
    /// Sectors of one FAT (BPB_FATSz16 or BPB_FATSz32).
    pub fat_sectors: u32,
    /// BPB_RootEntCnt: 32-byte entries of the fixed FAT12/16 root directory (0 on FAT32).
    pub root_entries: u32,
    /// Total sectors of the volume (BPB_TotSec16 or BPB_TotSec32).
    pub total_sectors: u32,
    /// Data clusters: clusters 2 ..= cluster_count + 1 exist.
    pub cluster_count: u32,
    /// Byte offset of the first data cluster (cluster 2).
    pub data_start: u64,
    /// Byte offset of the fixed root directory (FAT12/16).
    pub root_dir_start: u64,
    /// BPB_RootClus: the first cluster of the FAT32 root directory.
    pub root_cluster: u32,
    /// BPB_FSInfo: sector of the FAT32 FSInfo structure (0 when none).
    pub fsinfo_sector: u32,
    /// BPB_BkBootSec: sector of the FAT32 backup boot sector (0 when none).
    pub backup_boot_sector: u32,
    /// The FAT that is read (BPB_ExtFlags bits 0-3 when mirroring is off, else 0).
    pub active_fat: u32,
    /// False when BPB_ExtFlags bit 7 says only the active FAT is kept up to date.
    pub mirrored: bool,
    /// BS_VolID, when the extended boot signature is there.
    pub volume_id: Option<u32>,
    /// BS_VolLab, when the extended boot signature is there.
    pub bpb_label: Option<[u8; 11]>,
    /// Offset of the BS_BootSig/state byte that Linux uses as a dirty flag (0x25 or 0x41).
    pub state_offset: usize,
}

fn u16_at(b: &[u8], o: usize) -> u32 {
    u32::from(u16::from_le_bytes([b[o], b[o + 1]]))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn bad(what: String) -> Error {
    Error::corrupt(format!("FAT boot sector: {what}"))
}

impl Geometry {
    /// Reads and checks the BPB in `sector` (the first 512 bytes of the volume) for a device of
    /// `dev_size` bytes.
    pub fn parse(sector: &[u8], dev_size: u64) -> Result<Geometry> {
        if sector.len() < 512 {
            return Err(bad("shorter than 512 bytes".into()));
        }
        if sector[510] != 0x55 || sector[511] != 0xAA {
            return Err(bad("no 0x55 0xAA signature at offset 510".into()));
        }
        if !matches!(sector[0], 0xEB | 0xE9) {
            return Err(bad(format!(
                "jump instruction {:#04x} is neither 0xEB nor 0xE9",
                sector[0]
            )));
        }
        let bps = u16_at(sector, 11);
        if !(512..=4096).contains(&bps) || !bps.is_power_of_two() {
            return Err(bad(format!(
                "bytes per sector {bps} is not a power of two from 512 to 4096"
            )));
        }
        let spc = u32::from(sector[13]);
        if spc == 0 || !spc.is_power_of_two() {
            return Err(bad(format!(
                "sectors per cluster {spc} is not a power of two"
            )));
        }
        let cluster_size = bps * spc;
        if cluster_size > MAX_CLUSTER_SIZE {
            return Err(bad(format!(
                "cluster size {cluster_size} is larger than {MAX_CLUSTER_SIZE}"
            )));
        }
        let reserved = u16_at(sector, 14);
        if reserved == 0 {
            return Err(bad("reserved sector count is 0".into()));
        }
        let num_fats = u32::from(sector[16]);
        if !(1..=4).contains(&num_fats) {
            return Err(bad(format!("FAT count {num_fats} is not 1 to 4")));
        }
        let root_entries = u16_at(sector, 17);
        let tot16 = u16_at(sector, 19);
        let media = sector[21];
        if media != 0xF0 && media < 0xF8 {
            return Err(bad(format!("media descriptor {media:#04x} is not valid")));
        }
        let fatsz16 = u16_at(sector, 22);
        let tot32 = u32_at(sector, 32);
        let fat32_shape = fatsz16 == 0;
        let fat_sectors = if fat32_shape {
            u32_at(sector, 36)
        } else {
            fatsz16
        };
        if fat_sectors == 0 {
            return Err(bad("FAT size is 0 sectors".into()));
        }
        let total_sectors = if tot16 != 0 { tot16 } else { tot32 };
        if total_sectors == 0 {
            return Err(bad("total sector count is 0".into()));
        }
        if (root_entries * 32) % bps != 0 {
            return Err(bad(format!(
                "root entry count {root_entries} does not fill whole sectors"
            )));
        }
        let root_sectors = root_entries * 32 / bps;
        let fat_total = u64::from(num_fats) * u64::from(fat_sectors);
        let meta = u64::from(reserved) + fat_total + u64::from(root_sectors);
        if meta >= u64::from(total_sectors) {
            return Err(bad(format!(
                "reserved, FAT and root directory sectors ({meta}) fill the whole volume of {total_sectors} sectors"
            )));
        }
        let vol_bytes = u64::from(total_sectors) * u64::from(bps);
        if vol_bytes > dev_size {
            return Err(bad(format!(
                "volume of {vol_bytes} bytes is larger than its device ({dev_size} bytes)"
            )));
        }
        let data_sectors = u64::from(total_sectors) - meta;
        let cluster_count = u32::try_from(data_sectors / u64::from(spc))
            .map_err(|_| bad("cluster count overflows".into()))?;
        let fat_type = if cluster_count < FAT12_MAX_CLUSTERS {
            FatType::Fat12
        } else if cluster_count < FAT16_MAX_CLUSTERS {
            FatType::Fat16
        } else {
            FatType::Fat32
        };
        if cluster_count == 0 {
            return Err(bad("the volume has no data clusters".into()));
        }
        if cluster_count > FAT32_MAX_CLUSTERS {
            return Err(bad(format!(
                "{cluster_count} clusters is more than FAT32 can address"
            )));
        }
        // The count decides the type (spec 3.5); the BPB must have that type's shape.
        match (fat_type, fat32_shape) {
            (FatType::Fat32, false) => {
                return Err(bad(format!(
                    "{cluster_count} clusters make FAT32, but the BPB has a 16-bit FAT size (FAT12/16 shape)"
                )))
            }
            (FatType::Fat12 | FatType::Fat16, true) => {
                return Err(bad(format!(
                    "{cluster_count} clusters make {}, but the BPB has the FAT32 shape (BPB_FATSz16 is 0)",
                    fat_type.name()
                )))
            }
            _ => {}
        }
        if fat_type == FatType::Fat32 && root_entries != 0 {
            return Err(bad(format!(
                "FAT32 root entry count is {root_entries}, not 0"
            )));
        }
        if fat_type != FatType::Fat32 && root_entries == 0 {
            return Err(bad("FAT12/16 root entry count is 0".into()));
        }
        // The FAT must hold an entry for every cluster (and the two reserved ones).
        let entries = u64::from(cluster_count) + 2;
        let need_bytes = match fat_type {
            FatType::Fat12 => (entries * 3).div_ceil(2),
            FatType::Fat16 => entries * 2,
            FatType::Fat32 => entries * 4,
        };
        let fat_bytes = u64::from(fat_sectors) * u64::from(bps);
        if fat_bytes < need_bytes {
            return Err(bad(format!(
                "FAT of {fat_bytes} bytes cannot hold {entries} entries"
            )));
        }
        if need_bytes > MAX_FAT_BYTES {
            return Err(Error::unsupported(format!(
                "FAT volume with {cluster_count} clusters needs a FAT of {need_bytes} bytes, more than the {MAX_FAT_BYTES} vdisk holds in memory"
            )));
        }
        let mut g = Geometry {
            fat_type,
            bytes_per_sector: bps,
            sectors_per_cluster: spc,
            cluster_size,
            reserved_sectors: reserved,
            num_fats,
            fat_sectors,
            root_entries,
            total_sectors,
            cluster_count,
            data_start: meta * u64::from(bps),
            root_dir_start: (u64::from(reserved) + fat_total) * u64::from(bps),
            root_cluster: 0,
            fsinfo_sector: 0,
            backup_boot_sector: 0,
            active_fat: 0,
            mirrored: true,
            volume_id: None,
            bpb_label: None,
            state_offset: 0x25,
        };
        let ext_at = if fat_type == FatType::Fat32 {
            let ext_flags = u16_at(sector, 40);
            let version = u16_at(sector, 42);
            if version != 0 {
                return Err(Error::unsupported(format!(
                    "FAT32 version {:#06x} (only 0.0 is defined)",
                    version
                )));
            }
            if ext_flags & 0x80 != 0 {
                g.mirrored = false;
                g.active_fat = ext_flags & 0x0F;
                if g.active_fat >= num_fats {
                    return Err(bad(format!("active FAT {} of {num_fats}", g.active_fat)));
                }
            }
            g.root_cluster = u32_at(sector, 44);
            if g.root_cluster < 2 || g.root_cluster > cluster_count + 1 {
                return Err(bad(format!(
                    "root directory cluster {} is outside clusters 2..={}",
                    g.root_cluster,
                    cluster_count + 1
                )));
            }
            let fsinfo = u16_at(sector, 48);
            g.fsinfo_sector = if fsinfo == 0 || fsinfo == 0xFFFF || fsinfo >= reserved {
                0
            } else {
                fsinfo
            };
            let bk = u16_at(sector, 50);
            g.backup_boot_sector = if bk == 0 || bk == 0xFFFF || bk >= reserved {
                0
            } else {
                bk
            };
            g.state_offset = 0x41;
            0x40
        } else {
            0x24
        };
        if sector[ext_at + 2] == 0x29 {
            g.volume_id = Some(u32_at(sector, ext_at + 3));
            let mut l = [0u8; 11];
            l.copy_from_slice(&sector[ext_at + 7..ext_at + 18]);
            g.bpb_label = Some(l);
        }
        Ok(g)
    }

    /// Byte offset of data cluster `c` (2 or more).
    pub fn cluster_offset(&self, c: u32) -> u64 {
        self.data_start + u64::from(c - 2) * u64::from(self.cluster_size)
    }

    /// Byte offset of FAT copy `n`.
    pub fn fat_offset(&self, n: u32) -> u64 {
        (u64::from(self.reserved_sectors) + u64::from(n) * u64::from(self.fat_sectors))
            * u64::from(self.bytes_per_sector)
    }

    /// Bytes in one FAT copy.
    pub fn fat_bytes(&self) -> u64 {
        u64::from(self.fat_sectors) * u64::from(self.bytes_per_sector)
    }

    /// True when `c` names a data cluster.
    pub fn valid_cluster(&self, c: u32) -> bool {
        c >= 2 && c - 2 < self.cluster_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FAT16 boot sector as mkfs.fat makes it for a 32 MiB volume.
    fn golden16() -> Vec<u8> {
        let mut s = vec![0u8; 512];
        s[0] = 0xEB;
        s[11..13].copy_from_slice(&512u16.to_le_bytes());
        s[13] = 4;
        s[14..16].copy_from_slice(&4u16.to_le_bytes());
        s[16] = 2;
        s[17..19].copy_from_slice(&512u16.to_le_bytes());
        s[19..21].copy_from_slice(&65536u32.to_le_bytes()[..2]);
        s[32..36].copy_from_slice(&65536u32.to_le_bytes());
        s[19..21].copy_from_slice(&0u16.to_le_bytes());
        s[21] = 0xF8;
        s[22..24].copy_from_slice(&64u16.to_le_bytes());
        s[510] = 0x55;
        s[511] = 0xAA;
        s
    }

    #[test]
    fn golden_parses_as_fat16() {
        let g = Geometry::parse(&golden16(), 32 << 20).unwrap();
        assert_eq!(g.fat_type, FatType::Fat16);
        assert_eq!(g.cluster_size, 2048);
        assert_eq!(g.root_dir_start, (4 + 128) * 512);
    }

    #[test]
    fn each_field_is_checked() {
        let cases: &[(usize, &[u8], &str)] = &[
            (11, &[0x00, 0x03], "bytes per sector 768"),
            (11, &[0x00, 0x20], "bytes per sector 8192"),
            (13, &[3], "sectors per cluster 3"),
            (13, &[0], "sectors per cluster 0"),
            (16, &[0], "FAT count 0"),
            (22, &[1, 0], "cannot hold"),
            (22, &[0, 0x80], "fill the whole volume"),
            (14, &[0, 0], "reserved sector count is 0"),
            (510, &[0], "0x55 0xAA"),
            (17, &[1, 0], "whole sectors"),
        ];
        for (off, bytes, want) in cases {
            let mut s = golden16();
            s[*off..*off + bytes.len()].copy_from_slice(bytes);
            let e = Geometry::parse(&s, 32 << 20).unwrap_err().to_string();
            assert!(e.contains(want), "patch at {off}: {e} (wanted {want})");
        }
        let e = Geometry::parse(&golden16(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than its device"), "{e}");
    }
}
