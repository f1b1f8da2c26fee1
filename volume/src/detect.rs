//! Filesystem and volume detection on any [`BlockDevice`], reporting what `blkid -p` reports:
//! the type name, the label and the UUID in blkid's formatting.
//!
//! | type          | where                         | UUID as blkid prints it            |
//! |---------------|-------------------------------|------------------------------------|
//! | `LVM2_member` | "LABELONE" in sectors 0–3     | PV UUID, 6-4-4-4-4-4-6             |
//! | `crypto_LUKS` | "LUKS\xba\xbe" at 0           | the header's UUID string           |
//! | `xfs`         | "XFSB" at 0                   | 8-4-4-4-12 lower-case              |
//! | `btrfs`       | "_BHRfS_M" at 64 KiB + 0x40   | 8-4-4-4-12 lower-case (fsid)       |
//! | `ext2/3/4`    | 0xef53 at 1024 + 56           | 8-4-4-4-12 lower-case              |
//! | `swap`        | "SWAPSPACE2" before page end  | 8-4-4-4-12 lower-case              |
//! | `ntfs`        | "NTFS    " at 3               | 64-bit serial, 16 upper-case hex   |
//! | `vfat`        | FAT BPB at 0                  | serial as XXXX-XXXX upper-case     |
//! | `exfat`       | "EXFAT   " at 3               | serial as XXXX-XXXX upper-case     |
//! | `f2fs`        | 0xF2F52010 at 1 KiB           | 8-4-4-4-12 lower-case              |
//! | `jfs`         | "JFS1" at 32 KiB              | 8-4-4-4-12 lower-case              |
//! | `squashfs`    | "hsqs" at 0                   | none                               |
//! | `iso9660`     | "\x01CD001" at 32 KiB         | the volume's modification time     |
//!
//! ext2, ext3 and ext4 are told apart by feature bits exactly as libblkid does: a journal
//! makes ext3 unless a feature outside ext3's set (extents, 64bit, flex_bg, ...) makes ext4.

use vdisk_block::{BlockDevice, Result};

use crate::lvm::label;
use vdisk_block::bytes::{be32, le16, le32};

/// A detected filesystem or volume type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FsType {
    /// ext2: no journal, only ext2 features.
    Ext2,
    /// ext3: a journal, only ext3 features.
    Ext3,
    /// ext4: any feature beyond ext3's.
    Ext4,
    /// An external ext3/4 journal device.
    Jbd,
    /// XFS.
    Xfs,
    /// FAT12, FAT16 or FAT32 (see [`FsInfo::version`]).
    Vfat,
    /// Linux swap (version 1, "SWAPSPACE2").
    Swap,
    /// Btrfs.
    Btrfs,
    /// NTFS.
    Ntfs,
    /// An LVM2 physical volume.
    Lvm2Member,
    /// A LUKS encrypted volume.
    CryptoLuks,
    /// exFAT.
    Exfat,
    /// F2FS (flash-friendly filesystem).
    F2fs,
    /// A SquashFS image (read-only, compressed).
    Squashfs,
    /// An ISO 9660 CD/DVD image.
    Iso9660,
    /// JFS.
    Jfs,
}

impl FsType {
    /// The name blkid prints as `TYPE=` (and libguestfs as the VFS type).
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext2 => "ext2",
            FsType::Ext3 => "ext3",
            FsType::Ext4 => "ext4",
            FsType::Jbd => "jbd",
            FsType::Xfs => "xfs",
            FsType::Vfat => "vfat",
            FsType::Swap => "swap",
            FsType::Btrfs => "btrfs",
            FsType::Ntfs => "ntfs",
            FsType::Lvm2Member => "LVM2_member",
            FsType::CryptoLuks => "crypto_LUKS",
            FsType::Exfat => "exfat",
            FsType::F2fs => "f2fs",
            FsType::Squashfs => "squashfs",
            FsType::Iso9660 => "iso9660",
            FsType::Jfs => "jfs",
        }
    }
}

impl std::fmt::Display for FsType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`detect`] found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// The type.
    pub fs_type: FsType,
    /// The label, when the format has one and it is set.
    pub label: Option<String>,
    /// The UUID in blkid's formatting, when the format has one and it is not all zeros.
    pub uuid: Option<String>,
    /// A sub-version where blkid reports one that matters ("FAT16", "LVM2 001").
    pub version: Option<String>,
}

/// Reads `len` bytes at `off`, or `None` when the device is too small.
fn read(dev: &dyn BlockDevice, off: u64, len: usize) -> Result<Option<Vec<u8>>> {
    match off.checked_add(len as u64) {
        Some(end) if end <= dev.size() => {
            let mut b = vec![0u8; len];
            dev.read_at(&mut b, off)?;
            Ok(Some(b))
        }
        _ => Ok(None),
    }
}

/// A 16-byte UUID as 8-4-4-4-12 lower-case hex; `None` for all zeros (blkid omits those).
pub fn format_uuid(b: &[u8]) -> Option<String> {
    if b.len() != 16 || b.iter().all(|&x| x == 0) {
        return None;
    }
    let mut s = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{x:02x}"));
    }
    Some(s)
}

/// A label from a fixed-size field: up to the first NUL, trailing spaces removed; `None`
/// when empty.
fn label_from(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]);
    let s = s.trim_end_matches(' ');
    (!s.is_empty()).then(|| s.to_string())
}

fn info(fs_type: FsType, label: Option<String>, uuid: Option<String>) -> Option<FsInfo> {
    Some(FsInfo {
        fs_type,
        label,
        uuid,
        version: None,
    })
}

/// One signature check: `Ok(None)` when its format is not there.
type Probe = fn(&dyn BlockDevice) -> Result<Option<FsInfo>>;

/// Detects the filesystem or volume on `dev`; `Ok(None)` when nothing known is there.
/// Errors are I/O errors of the device; unrecognised or damaged signatures are "nothing".
pub fn detect(dev: &dyn BlockDevice) -> Result<Option<FsInfo>> {
    let probes: [Probe; 13] = [
        probe_lvm2,
        probe_luks,
        probe_xfs,
        probe_btrfs,
        probe_ext,
        probe_swap,
        probe_f2fs,
        probe_jfs,
        probe_squashfs,
        probe_iso9660,
        probe_ntfs,
        probe_exfat,
        probe_vfat,
    ];
    for p in probes {
        if let Some(i) = p(dev)? {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

fn probe_lvm2(dev: &dyn BlockDevice) -> Result<Option<FsInfo>> {
    // A damaged label is not a PV to blkid either.
    Ok(match label::read_pv_header(dev) {
        Ok(Some(h)) => Some(FsInfo {
            fs_type: FsType::Lvm2Member,
            label: None,
            uuid: Some(h.uuid_dashed()),
            version: Some("LVM2 001".into()),
        }),
        Ok(None)
        | Err(vdisk_block::Error::Corrupt { .. } | vdisk_block::Error::Unsupported { .. }) => None,
        Err(e) => return Err(e),
    })
}

fn probe_luks(dev: &dyn BlockDevice) -> Result<Option<FsInfo>> {
    let Some(b) = read(dev, 0, 512)? else {
        return Ok(None);
    };
    if &b[..6] != b"LUKS\xba\xbe" {
        return Ok(None);
    }
    let version = u16::from_be_bytes([b[6], b[7]]);
    Ok(Some(FsInfo {
        fs_type: FsType::CryptoLuks,
        // Only LUKS2 headers have a label.
        label: if version == 2 {
            label_from(&b[24..72])
        } else {
            None
        },
        uuid: label_from(&b[168..208]),
        version: Some(version.to_string()),
    }))
}

fn probe_xfs(dev: &dyn BlockDevice) -> Result<Option<FsInfo>> {
    let Some(b) = read(dev, 0, 512)? else {
        return Ok(None);
    };
    if &b[..4] != b"XFSB" {
        return Ok(None);
    }
    // libblkid's sanity checks, reduced: a power-of-two block size 512..=64 KiB, sectors
    // 512..=32 KiB.
    let blocksize = be32(&b, 4);
    let sectsize = u16::from_be_bytes([b[102], b[103]]);
    if !(512..=65536).contains(&blocksize)
        || !blocksize.is_power_of_two()
        || !(512..=32768).contains(&sectsize)
        || !sectsize.is_power_of_two()
    {
        return Ok(None);
    }
    Ok(info(
        FsType::Xfs,
        label_from(&b[108..120]),
        format_uuid(&b[32..48]),
    ))
}

fn probe_btrfs(dev: &dyn BlockDevice) -> Result<Option<FsInfo>> {
    let Some(b) = read(dev, 0x10000, 0x1000)? else {
        return Ok(None);
    };
    if &b[0x40..0x48] != b"_BHRfS_M" {
        return Ok(None);
    }
    Ok(info(
        FsType::Btrfs,
        label_from(&b[0x12b..0x22b]),
        format_uuid(&b[0x20..0x30]),
    ))
}

// ext2/3/4 feature bits (libblkid ext.c).
const COMPAT_HAS_JOURNAL: u32 = 0x0004;
const INCOMPAT_FILETYPE: u32 = 0x0002;
const INCOMPAT_RECOVER: u32 = 0x0004;
const INCOMPAT_JOURNAL_DEV: u32 = 0x0008;
const INCOMPAT_META_BG: u32 = 0x0010;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
const RO_COMPAT_LARGE_FILE: u32 = 0x0002;
const RO_COMPAT_BTREE_DIR: u32 = 0x0004;
/// ro_compat features ext2 and ext3 drivers understand.
const EXT3_RO_COMPAT_SUPP: u32 =
    RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_BTREE_DIR;
/// incompat features ext2 drivers understand.
const EXT2_INCOMPAT_SUPP: u32 = INCOMPAT_FILETYPE | INCOMPAT_META_BG;
/// incompat features ext3 drivers understand.
const EXT3_INCOMPAT_SUPP: u32 = INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_META_BG;

fn probe_ext(dev: &dyn BlockDevice) -> Result<Option<FsInfo>> {
    let Some(sb) = read(dev, 1024, 1024)? else {
        return Ok(None);
    };
    if le16(&sb, 56) != 0xef53 {
        return Ok(None);
    }
    // s_log_block_size: blocks are 1 KiB << n, at most 64 KiB.
    if le32(&sb, 24) > 6 {
        return Ok(None);
    }
    let compat = le32(&sb, 92);
    let incompat = le32(&sb, 96);
    let ro_compat = le32(&sb, 100);
    let fs_type = if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        FsType::Jbd
    } else if ro_compat & !EXT3_RO_COMPAT_SUPP != 0 || incompat & !EXT3_INCOMPAT_SUPP != 0 {
        FsType::Ext4
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        FsType::Ext3
    } else if incompat & !EXT2_INCOMPAT_SUPP != 0 {
        // needs_recovery without a journal: libblkid calls this ext4 too.
        FsType::Ext4
    } else {
        FsType::Ext2
    };
    Ok(info(
        fs_type,
        label_from(&sb[120..136]),
        format_uuid(&sb[104..120]),
    ))
}

fn probe_swap(dev: &dyn BlockDevice) -> Result<Option<FsInfo>> {
    for page in [4096u64, 8192, 16384, 32768, 65536] {
        let Some(sig) = read(dev, page - 10, 10)? else {
            break;
        };
        if sig == b"SWAP-SPACE" {
            return Ok(Some(FsInfo {
                fs_type: FsType::Swap,
                label: None,
                uuid: None,
                version: Some("0".into()),
            }));
        }
        if sig != b"SWAPSPACE2" {
            continue;
        }
        let Some(h) = read(dev, 1024, 44)? else {
            return Ok(None);
        };
        // struct swap_header_v1_2: version, last_page, nr_badpages, uuid[16], volume_name[16].
        return Ok(Some(FsInfo {
            fs_type: FsType::Swap,
            label: label_from(&h[28..44]),
            uuid: format_uuid(&h[12..28]),
            version: Some(le32(&h, 0).to_string()),
        }));
    }
    Ok(None)
}

fn probe_ntfs(dev: &dyn BlockDevice) -> Result<Option<FsInfo>> {
    let Some(b) = read(dev, 0, 512)? else {
        return Ok(None);
    };
    if &b[3..11] != b"NTFS    " || b[510] != 0x55 || b[511] != 0xaa {
        return Ok(None);
    }
    let serial = u64::from_le_bytes(b[0x48..0x50].try_into().unwrap_or([0; 8]));
    let uuid = (serial != 0).then(|| format!("{serial:016X}"));
    Ok(info(FsType::Ntfs, ntfs_label(dev, &b)?, uuid))
}

/// The NTFS MFT record number of `$Volume`, whose VOLUME_NAME attribute is the label.
const NTFS_MFT_VOLUME: u64 = 3;
/// The attribute type of the volume name.
const NTFS_AT_VOLUME_NAME: u32 = 0x60;

/// Reads the label from the `$Volume` MFT record (the MFT's first records are contiguous at
/// `mft_lcn`); `None` when anything about it does not add up.
fn ntfs_label(dev: &dyn BlockDevice, boot: &[u8]) -> Result<Option<String>> {
    let sector_size = u64::from(le16(boot, 0x0b));
    let cluster = sector_size * u64::from(boot[0x0d]);
    let mft_lcn = u64::from_le_bytes(boot[0x30..0x38].try_into().unwrap_or([0; 8]));
    // clusters_per_mft_record: negative n means 2^-n bytes.
    let cpr = boot[0x40] as i8;
    let record = if cpr < 0 {
        1u64.checked_shl(u32::from(cpr.unsigned_abs())).unwrap_or(0)
    } else {
        cluster * u64::from(cpr.unsigned_abs())
    };
    if !(512..=4096).contains(&sector_size) || !(512..=65536).contains(&record) {
        return Ok(None);
    }
    let Some(off) = mft_lcn
        .checked_mul(cluster)
        .and_then(|o| o.checked_add(NTFS_MFT_VOLUME * record))
    else {
        return Ok(None);
    };
    // record <= 64 KiB.
    let Some(mut r) = read(dev, off, record as usize)? else {
        return Ok(None);
    };
    if &r[..4] != b"FILE" {
        return Ok(None);
    }
    // Undo the update sequence fixups: the last two bytes of each sector are stored in the
    // update sequence array.
    let usa_off = usize::from(le16(&r, 4));
    let usa_count = usize::from(le16(&r, 6));
    for i in 1..usa_count {
        let end = i * sector_size as usize;
        let src = usa_off + 2 * i;
        if end > r.len() || src + 2 > r.len() {
            return Ok(None);
        }
        let fix = [r[src], r[src + 1]];
        r[end - 2..end].copy_from_slice(&fix);
    }
    let mut pos = usize::from(le16(&r, 0x14));
    // Each attribute is at least 16 bytes long, so the record's size bounds the walk.
    while pos + 16 <= r.len() {
        let ty = le32(&r, pos);
        let len = le32(&r, pos + 4) as usize;
        if ty == 0xffff_ffff || len < 16 || pos + len > r.len() {
            break;
        }
        if ty == NTFS_AT_VOLUME_NAME && r[pos + 8] == 0 {
            let vlen = le32(&r, pos + 0x10) as usize;
            let voff = usize::from(le16(&r, pos + 0x14));
            let Some(v) = r.get(pos + voff..pos + voff + vlen) else {
                return Ok(None);
            };
            let units: Vec<u16> = v
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            let s = String::from_utf16_lossy(&units);
            return Ok((!s.is_empty()).then_some(s));
        }
        pos += len;
    }
    Ok(None)
}

/// A label stored as UTF-16LE code units, up to the first NUL.
fn utf16_label(b: &[u8]) -> Option<String> {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let s = String::from_utf16_lossy(&units);
    (!s.is_empty()).then_some(s)
}

/// F2FS: magic 0xF2F52010 at 1 KiB; UUID at +108, the volume name (UTF-16) at +124.
fn probe_f2fs(dev: &dyn BlockDevice) -> Result<Option<FsInfo>> {
    let Some(b) = read(dev, 1024, 1024 + 124)? else {
        return Ok(None);
    };
    if le32(&b, 0) != 0xf2f5_2010 {
        return Ok(None);
    }
    let mut i = info(
        FsType::F2fs,
        utf16_label(&b[124..124 + 1024]),
        format_uuid(&b[108..124]),
    );
    if let Some(i) = &mut i {
        i.version = Some(format!("{}.{}", le16(&b, 4), le16(&b, 6)));
    }
    Ok(i)
}

/// JFS: "JFS1" at 32 KiB; UUID at +136, label at +152 (16 bytes).
fn probe_jfs(dev: &dyn BlockDevice) -> Result<Option<FsInfo>> {
    let Some(b) = read(dev, 32768, 168)? else {
        return Ok(None);
    };
    if &b[0..4] != b"JFS1" {
        return Ok(None);
    }
    Ok(info(
        FsType::Jfs,
        label_from(&b[152..168]),
        format_uuid(&b[136..152]),
    ))
}

/// SquashFS: "hsqs" at 0; the version is reported, there is no label or UUID.
fn probe_squashfs(dev: &dyn BlockDevice) -> Result<Option<FsInfo>> {
    let Some(b) = read(dev, 0, 32)? else {
        return Ok(None);
    };
    if &b[0..4] != b"hsqs" {
        return Ok(None);
    }
    let mut i = info(FsType::Squashfs, None, None);
    if let Some(i) = &mut i {
        i.version = Some(format!("{}.{}", le16(&b, 28), le16(&b, 30)));
    }
    Ok(i)
}

/// ISO 9660: the primary volume descriptor at 32 KiB ("\x01CD001"); the label is its volume
/// identifier, the UUID (as blkid makes one) its modification time, else its creation time.
fn probe_iso9660(dev: &dyn BlockDevice) -> Result<Option<FsInfo>> {
    let Some(b) = read(dev, 0x8000, 2048)? else {
        return Ok(None);
    };
    if b[0] != 1 || &b[1..6] != b"CD001" {
        return Ok(None);
    }
    let date = |o: usize| -> Option<String> {
        let d = &b[o..o + 16];
        if !d.iter().all(u8::is_ascii_digit) || d.iter().all(|&c| c == b'0') {
            return None;
        }
        let t = std::str::from_utf8(d).ok()?;
        Some(format!(
            "{}-{}-{}-{}-{}-{}-{}",
            &t[0..4],
            &t[4..6],
            &t[6..8],
            &t[8..10],
            &t[10..12],
            &t[12..14],
            &t[14..16]
        ))
    };
    let uuid = date(830).or_else(|| date(813));
    Ok(info(FsType::Iso9660, label_from(&b[40..72]), uuid))
}

/// exFAT: "EXFAT   " at 3; the serial at 100 as XXXX-XXXX, the label from the root
/// directory's volume-label entry (type 0x83, up to 11 UTF-16 characters).
fn probe_exfat(dev: &dyn BlockDevice) -> Result<Option<FsInfo>> {
    let Some(b) = read(dev, 0, 512)? else {
        return Ok(None);
    };
    if &b[3..11] != b"EXFAT   " || b[510] != 0x55 || b[511] != 0xaa {
        return Ok(None);
    }
    let serial = le32(&b, 100);
    let uuid = Some(format!("{:04X}-{:04X}", serial >> 16, serial & 0xffff));
    let (sector_shift, cluster_shift) = (u32::from(b[108]), u32::from(b[109]));
    if !(9..=12).contains(&sector_shift) || sector_shift + cluster_shift > 25 {
        return Ok(info(FsType::Exfat, None, uuid));
    }
    let heap = u64::from(le32(&b, 88)) << sector_shift;
    let root = u64::from(le32(&b, 96));
    let cluster = 1u64 << (sector_shift + cluster_shift);
    let mut label = None;
    if root >= 2 {
        let off = root
            .checked_sub(2)
            .and_then(|c| c.checked_mul(cluster))
            .and_then(|o| o.checked_add(heap));
        // The label is among the first entries of the root; one cluster (at most 32 KiB
        // read) is where mkfs and every tool put it.
        if let Some(off) = off {
            if let Some(d) = read(dev, off, cluster.min(32768) as usize)? {
                for e in d.chunks_exact(32) {
                    match e[0] {
                        0 => break,
                        0x83 => {
                            let n = usize::from(e[1]).min(11);
                            label = utf16_label(&e[2..2 + 2 * n]);
                            break;
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(info(FsType::Exfat, label, uuid))
}

fn probe_vfat(dev: &dyn BlockDevice) -> Result<Option<FsInfo>> {
    let Some(b) = read(dev, 0, 512)? else {
        return Ok(None);
    };
    if !(b[0] == 0xeb || b[0] == 0xe9) || b[510] != 0x55 || b[511] != 0xaa {
        return Ok(None);
    }
    let sector_size = le16(&b, 11);
    let cluster_sectors = b[13];
    let reserved = le16(&b, 14);
    let fats = b[16];
    let root_entries = le16(&b, 17);
    let sectors16 = le16(&b, 19);
    let media = b[21];
    let fat_length16 = le16(&b, 22);
    let sectors32 = le32(&b, 32);
    if !(512..=4096).contains(&sector_size)
        || !sector_size.is_power_of_two()
        || cluster_sectors == 0
        || !cluster_sectors.is_power_of_two()
        || reserved == 0
        || fats == 0
        || !(media == 0xf0 || media >= 0xf8)
    {
        return Ok(None);
    }
    let fat32 = fat_length16 == 0;
    let fat_length = if fat32 {
        le32(&b, 36)
    } else {
        u32::from(fat_length16)
    };
    let total = if sectors16 != 0 {
        u32::from(sectors16)
    } else {
        sectors32
    };
    let ss = u64::from(sector_size);
    let root_dir_sectors = (u64::from(root_entries) * 32).div_ceil(ss);
    let data_start =
        u64::from(reserved) + u64::from(fats) * u64::from(fat_length) + root_dir_sectors;
    let clusters = u64::from(total).saturating_sub(data_start) / u64::from(cluster_sectors);
    // BS_VolID and BS_VolLab sit later in FAT32's extended BPB.
    let (serial_off, label_off) = if fat32 { (67, 71) } else { (39, 43) };
    let version = if fat32 {
        "FAT32"
    } else if clusters < 4085 {
        "FAT12"
    } else {
        "FAT16"
    };
    let serial = le32(&b, serial_off);
    let uuid = Some(format!("{:04X}-{:04X}", serial >> 16, serial & 0xffff));
    let boot_label = label_from(&b[label_off..label_off + 11]).filter(|l| l != "NO NAME");
    // blkid prefers the volume-label entry of the root directory.
    let (root_off, root_len) = if fat32 {
        let root_cluster = u64::from(le32(&b, 44));
        let off = (data_start + root_cluster.saturating_sub(2) * u64::from(cluster_sectors)) * ss;
        (off, u64::from(cluster_sectors) * ss)
    } else {
        (
            (u64::from(reserved) + u64::from(fats) * u64::from(fat_length)) * ss,
            root_dir_sectors * ss,
        )
    };
    // At most 64 Ki entries (FAT12/16) or one cluster of at most 128 * 4 KiB (FAT32).
    let dir_label = match read(dev, root_off, usize::try_from(root_len).unwrap_or(0))? {
        Some(dir) => dir
            .chunks_exact(32)
            .take_while(|e| e[0] != 0)
            .find(|e| e[0] != 0xe5 && e[11] & 0x1f == 0x08)
            .and_then(|e| label_from(&e[..11])),
        None => None,
    };
    Ok(Some(FsInfo {
        fs_type: FsType::Vfat,
        label: dir_label.or(boot_label),
        uuid,
        version: Some(version.into()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdisk_block::MemDevice;

    #[test]
    fn tiny_and_empty_devices() {
        assert_eq!(detect(&MemDevice::new(0)).unwrap(), None);
        assert_eq!(detect(&MemDevice::new(100)).unwrap(), None);
        assert_eq!(detect(&MemDevice::new(1 << 20)).unwrap(), None);
    }

    #[test]
    fn btrfs_and_ntfs_signatures() {
        let mut v = vec![0u8; 1 << 20];
        v[0x10040..0x10048].copy_from_slice(b"_BHRfS_M");
        v[0x10020] = 0xab;
        v[0x1012b..0x1012e].copy_from_slice(b"lbl");
        let i = detect(&MemDevice::from_vec(v)).unwrap().unwrap();
        assert_eq!(i.fs_type, FsType::Btrfs);
        assert_eq!(i.label.as_deref(), Some("lbl"));
        assert_eq!(
            i.uuid.as_deref(),
            Some("ab000000-0000-0000-0000-000000000000")
        );
        let mut v = vec![0u8; 4096];
        v[3..11].copy_from_slice(b"NTFS    ");
        v[0x48..0x50].copy_from_slice(&0x0123_4567_89ab_cdefu64.to_le_bytes());
        v[510] = 0x55;
        v[511] = 0xaa;
        let i = detect(&MemDevice::from_vec(v)).unwrap().unwrap();
        assert_eq!(i.fs_type, FsType::Ntfs);
        assert_eq!(i.uuid.as_deref(), Some("0123456789ABCDEF"));
    }
}
