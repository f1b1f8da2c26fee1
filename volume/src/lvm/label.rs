//! The on-disk LVM2 structures that lead to the text metadata: the physical volume label, the
//! PV header and the metadata area header (lvm2 `lib/label/label.h`,
//! `lib/format_text/layout.h`).
//!
//! ```text
//!   sector 0..3   label_header "LABELONE" + pv_header (uuid, size, data and metadata areas)
//!   mda start     mda_header " LVM2 x[5A%r0N*>" + raw_locn (offset, size, checksum of text)
//!   mda + offset  the VG's text metadata, a ring buffer after the 512-byte header
//! ```

use vdisk_block::bytes::{le32, le64};
use vdisk_block::{BlockDevice, Error, Result};

/// The label identifier at the start of the label sector.
pub const LABEL_ID: &[u8; 8] = b"LABELONE";
/// The label type of LVM2 text-format PVs.
pub const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
/// The label lives in one of the first four sectors.
pub const LABEL_SCAN_SECTORS: u64 = 4;
/// The magic of a metadata area header.
pub const MDA_MAGIC: &[u8; 16] = b"\x20LVM2\x20x[5A%r0N*>";
/// The size of the metadata area header; the ring buffer of text follows it.
pub const MDA_HEADER_SIZE: u64 = 512;
/// The initial value of LVM's CRC (lvm2 `INITIAL_CRC`).
pub const INITIAL_CRC: u32 = 0xf597_a6cf;
/// `raw_locn.flags` bit: this metadata area is ignored (`pvchange --metadataignore`).
pub const RAW_LOCN_IGNORED: u32 = 1;
/// The most data or metadata areas read from a PV header. LVM writes one data area and at most
/// two metadata areas; the lists are zero-terminated, so a bound stops a hostile header early.
pub const MAX_DISK_LOCNS: usize = 8;
/// The largest metadata text read. LVM's default area is 1 MiB and vgcreate warns about areas
/// past a few hundred MiB; 64 MiB bounds the allocation on hostile bytes.
pub const MAX_METADATA_SIZE: u64 = 64 << 20;

/// LVM's checksum (lvm2 `calc_crc`): the reflected CRC-32 (polynomial 0xedb88320) with the
/// running value neither inverted on entry nor on exit. Start with [`INITIAL_CRC`]; feed more
/// bytes by passing the previous result as `initial`.
pub fn calc_crc(initial: u32, data: &[u8]) -> u32 {
    // crc32fast inverts the state before and after; undo both to get LVM's raw register.
    let mut h = crc32fast::Hasher::new_with_initial(!initial);
    h.update(data);
    !h.finalize()
}

/// A byte range on the PV (`disk_locn`): offset from the PV's start and size (0 = to the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLocn {
    /// Byte offset from the start of the PV.
    pub offset: u64,
    /// Size in bytes; 0 for a data area means "to the end of the device".
    pub size: u64,
}

/// The PV label and header: who this PV is and where its areas are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvHeader {
    /// The sector (0..4) the label was found in.
    pub label_sector: u64,
    /// The PV UUID: 32 characters as stored, without dashes.
    pub pv_uuid: String,
    /// The device size the PV was created on, in bytes.
    pub device_size: u64,
    /// Data areas (where extents live).
    pub data_areas: Vec<DiskLocn>,
    /// Metadata areas (where mda headers live).
    pub metadata_areas: Vec<DiskLocn>,
}

impl PvHeader {
    /// The UUID with dashes as LVM prints it (6-4-4-4-4-4-6).
    pub fn uuid_dashed(&self) -> String {
        dashed_uuid(&self.pv_uuid)
    }
}

/// Inserts LVM's dashes into a 32-character id (6-4-4-4-4-4-6); other lengths are returned
/// unchanged.
pub fn dashed_uuid(id: &str) -> String {
    if id.len() != 32 || !id.is_ascii() {
        return id.to_string();
    }
    let mut out = String::with_capacity(38);
    let mut pos = 0;
    for (i, n) in [6, 4, 4, 4, 4, 4, 6].iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        out.push_str(&id[pos..pos + n]);
        pos += n;
    }
    out
}

/// Looks for an LVM2 label in the first four sectors of `dev`: `Ok(None)` when there is none
/// (or its checksum is wrong, which LVM treats the same way), the parsed header otherwise.
pub fn read_pv_header(dev: &dyn BlockDevice) -> Result<Option<PvHeader>> {
    for sector_no in 0..LABEL_SCAN_SECTORS {
        let at = sector_no * 512;
        if at + 512 > dev.size() {
            break;
        }
        let mut s = [0u8; 512];
        dev.read_at(&mut s, at)?;
        if &s[..8] != LABEL_ID {
            continue;
        }
        if le64(&s, 8) != sector_no {
            continue;
        }
        if calc_crc(INITIAL_CRC, &s[20..]) != le32(&s, 16) {
            // lvm2 ignores a label whose checksum is wrong.
            continue;
        }
        if &s[24..32] != LABEL_TYPE {
            return Err(Error::unsupported(format!(
                "LVM label of type {:?} (only \"LVM2 001\" is read)",
                String::from_utf8_lossy(&s[24..32])
            )));
        }
        let off = le32(&s, 20) as usize;
        // uuid (32) + device size (8) + at least the two list terminators (2 * 16).
        if !(32..=512 - 72).contains(&off) {
            return Err(Error::corrupt_at(
                at,
                format!("LVM label: PV header offset {off} is not inside the label sector"),
            ));
        }
        let uuid_bytes = &s[off..off + 32];
        if !uuid_bytes.iter().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Error::corrupt_at(
                at,
                "LVM PV header: the PV UUID is not alphanumeric",
            ));
        }
        let pv_uuid = String::from_utf8_lossy(uuid_bytes).into_owned();
        let device_size = le64(&s, off + 32);
        let mut pos = off + 40;
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            loop {
                if pos + 16 > 512 {
                    return Err(Error::corrupt_at(
                        at,
                        "LVM PV header: an area list runs past the label sector",
                    ));
                }
                let d = DiskLocn {
                    offset: le64(&s, pos),
                    size: le64(&s, pos + 8),
                };
                pos += 16;
                if d.offset == 0 {
                    break;
                }
                if list.len() >= MAX_DISK_LOCNS {
                    return Err(Error::corrupt_at(
                        at,
                        format!("LVM PV header lists more than {MAX_DISK_LOCNS} areas"),
                    ));
                }
                list.push(d);
            }
        }
        let [data_areas, metadata_areas] = lists;
        return Ok(Some(PvHeader {
            label_sector: sector_no,
            pv_uuid,
            device_size,
            data_areas,
            metadata_areas,
        }));
    }
    Ok(None)
}

/// Reads the current metadata text of the metadata area at `mda` on `dev`. `Ok(None)` when
/// the area holds no metadata (a fresh PV) or is marked ignored.
pub fn read_metadata_text(dev: &dyn BlockDevice, mda: DiskLocn) -> Result<Option<Vec<u8>>> {
    let at = mda.offset;
    let end = at.checked_add(mda.size);
    if mda.size < MDA_HEADER_SIZE * 2 || end.is_none_or(|e| e > dev.size()) {
        return Err(Error::corrupt_at(
            at,
            format!(
                "LVM metadata area of {} bytes does not fit the device ({} bytes)",
                mda.size,
                dev.size()
            ),
        ));
    }
    let mut h = [0u8; 512];
    dev.read_at(&mut h, at)?;
    if &h[4..20] != MDA_MAGIC {
        return Err(Error::corrupt_at(
            at,
            "LVM metadata area header has the wrong magic",
        ));
    }
    let crc = calc_crc(INITIAL_CRC, &h[4..]);
    if crc != le32(&h, 0) {
        return Err(Error::corrupt_at(
            at,
            format!(
                "LVM metadata area header checksum is {:#010x}, its bytes give {crc:#010x}",
                le32(&h, 0)
            ),
        ));
    }
    let version = le32(&h, 20);
    if version != 1 {
        return Err(Error::unsupported(format!(
            "LVM metadata area header version {version}"
        )));
    }
    let start = le64(&h, 24);
    let size = le64(&h, 32);
    if start != at || size != mda.size {
        return Err(Error::corrupt_at(
            at,
            format!(
                "LVM metadata area header says it is {size} bytes at {start}, the PV header \
                 says {} bytes at {at}",
                mda.size
            ),
        ));
    }
    // raw_locns[0]: the committed metadata.
    let r_off = le64(&h, 40);
    let r_size = le64(&h, 48);
    let r_crc = le32(&h, 56);
    let r_flags = le32(&h, 60);
    if r_off == 0 || r_flags & RAW_LOCN_IGNORED != 0 {
        return Ok(None);
    }
    if r_off < MDA_HEADER_SIZE || r_off >= size || r_size == 0 {
        return Err(Error::corrupt_at(
            at,
            format!(
                "LVM metadata of {r_size} bytes at {r_off} does not fit its area of {size} bytes"
            ),
        ));
    }
    let ring = size - MDA_HEADER_SIZE;
    if r_size > MAX_METADATA_SIZE || r_size > ring {
        return Err(Error::corrupt_at(
            at,
            format!(
                "LVM metadata of {r_size} bytes is larger than its area or the limit of \
                 {MAX_METADATA_SIZE} bytes"
            ),
        ));
    }
    // The text is a ring buffer: what does not fit before the end continues after the header.
    let first = r_size.min(size - r_off);
    // r_size <= MAX_METADATA_SIZE, which fits usize.
    let mut text = vec![0u8; r_size as usize];
    let (a, b) = text.split_at_mut(first as usize);
    dev.read_at(a, at + r_off)?;
    if !b.is_empty() {
        dev.read_at(b, at + MDA_HEADER_SIZE)?;
    }
    let crc = calc_crc(INITIAL_CRC, &text);
    if crc != r_crc {
        return Err(Error::corrupt_at(
            at.saturating_add(r_off),
            format!("LVM metadata checksum is {r_crc:#010x}, the text gives {crc:#010x}"),
        ));
    }
    // Text ends at the first NUL, if the writer included one.
    if let Some(nul) = text.iter().position(|&c| c == 0) {
        text.truncate(nul);
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_lvm_table_version() {
        // lvm2's calc_crc, nibble-table version, written out as the reference.
        fn reference(initial: u32, buf: &[u8]) -> u32 {
            const TAB: [u32; 16] = [
                0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac, 0x76dc4190, 0x6b6b51f4, 0x4db26158,
                0x5005713c, 0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c, 0x9b64c2b0, 0x86d3d2d4,
                0xa00ae278, 0xbdbdf21c,
            ];
            let mut crc = initial;
            for &b in buf {
                crc ^= u32::from(b);
                crc = (crc >> 4) ^ TAB[(crc & 0xf) as usize];
                crc = (crc >> 4) ^ TAB[(crc & 0xf) as usize];
            }
            crc
        }
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(calc_crc(INITIAL_CRC, &data), reference(INITIAL_CRC, &data));
        let mid = calc_crc(INITIAL_CRC, &data[..400]);
        assert_eq!(calc_crc(mid, &data[400..]), reference(INITIAL_CRC, &data));
    }

    #[test]
    fn dashes() {
        assert_eq!(
            dashed_uuid("abcdefghijklmnopqrstuvwxyz012345"),
            "abcdef-ghij-klmn-opqr-stuv-wxyz-012345"
        );
    }
}
