//! Header extensions ("Header extensions" in qcow2.rst): "Directly after the image header,
//! optional sections called header extensions can be stored."

use vdisk_block::{Error, Result};

use crate::header::Header;
use crate::util::{align_ok, be32, be64, utf8_name};

/// "0x00000000 - End of the header extension area".
pub const END: u32 = 0x0000_0000;
/// "0xe2792aca - Backing file format name string".
pub const BACKING_FORMAT: u32 = 0xe279_2aca;
/// "0x6803f857 - Feature name table".
pub const FEATURE_NAME_TABLE: u32 = 0x6803_f857;
/// "0x23852875 - Bitmaps extension".
pub const BITMAPS: u32 = 0x2385_2875;
/// "0x0537be77 - Full disk encryption header pointer".
pub const FULL_DISK_ENCRYPTION: u32 = 0x0537_be77;
/// "0x44415441 - External data file name string".
pub const EXTERNAL_DATA_FILE: u32 = 0x4441_5441;

/// QEMU keeps the backing format in a 16-byte buffer and refuses longer names; every format
/// name it knows is far shorter.
pub const MAX_BACKING_FORMAT: u32 = 15;

/// A feature name table entry is 48 bytes: type, bit number, 46 bytes of name.
const FEATURE_NAME_ENTRY: usize = 48;

/// "Note: QEMU currently only supports up to 65535 bitmaps per image."
pub const MAX_BITMAPS: u32 = 65535;

/// QEMU's bound on the bitmap directory (1 KiB per bitmap); also bounds what we read.
pub const MAX_BITMAP_DIRECTORY_SIZE: u64 = 1024 * MAX_BITMAPS as u64;

/// Which feature bitmap a feature name table entry describes ("Type of feature").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureType {
    /// "0: Incompatible feature".
    Incompatible,
    /// "1: Compatible feature".
    Compatible,
    /// "2: Autoclear feature".
    Autoclear,
}

/// One entry of the feature name table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureName {
    /// "Type of feature (select feature bitmap)".
    pub feature_type: FeatureType,
    /// "Bit number within the selected feature bitmap (valid values: 0-63)".
    pub bit: u8,
    /// "Feature name (padded with zeros, but not necessarily null terminated if it has full
    /// length)".
    pub name: String,
}

/// The bitmaps extension ("Bitmaps extension").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapsExtension {
    /// "The number of bitmaps contained in the image. Must be greater than or equal to 1."
    pub nb_bitmaps: u32,
    /// "Size of the bitmap directory in bytes."
    pub bitmap_directory_size: u64,
    /// "Offset into the image file at which the bitmap directory starts."
    pub bitmap_directory_offset: u64,
}

/// The full disk encryption header pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullDiskEncryption {
    /// "Offset into the image file at which the encryption header starts in bytes."
    pub offset: u64,
    /// "Length of the written encryption header in bytes."
    pub length: u64,
}

/// Every header extension this implementation knows, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// "Backing file format name string".
    pub backing_format: Option<String>,
    /// "Feature name table".
    pub feature_names: Vec<FeatureName>,
    /// "Bitmaps extension".
    pub bitmaps: Option<BitmapsExtension>,
    /// "Full disk encryption header pointer".
    pub full_disk_encryption: Option<FullDiskEncryption>,
    /// "External data file name string".
    pub data_file: Option<String>,
    /// Types of extensions we do not know ("can be safely ignored").
    pub unknown: Vec<u32>,
}

impl Extensions {
    /// Parses the extensions after the header. `first` holds the first bytes of the file (up to
    /// one cluster). The area ends at the backing file name if there is one, else at the end of
    /// the first cluster.
    pub fn parse(first: &[u8], header: &Header) -> Result<Extensions> {
        let mut ext = Extensions::default();
        let area_end = if header.backing_file_offset != 0 {
            header.backing_file_offset
        } else {
            header.cluster_size()
        };
        let area_end = usize::try_from(area_end)
            .unwrap_or(usize::MAX)
            .min(first.len());
        let mut at = header.header_length as usize;
        // Each step advances by at least 8 bytes and stops at area_end (at most 2 MiB), so the
        // loop is bounded.
        while at.checked_add(8).is_some_and(|e| e <= area_end) {
            let typ = be32(first, at);
            let len = be32(first, at + 4) as usize;
            let data_start = at + 8;
            if typ == END {
                break;
            }
            let data_end = match data_start.checked_add(len) {
                Some(e) if e <= area_end => e,
                _ => {
                    return Err(Error::corrupt_at(
                        at as u64,
                        format!("header extension {typ:#010x} of {len} bytes is too large"),
                    ))
                }
            };
            let data = &first[data_start..data_end];
            let here = at as u64;
            match typ {
                BACKING_FORMAT => {
                    if len > MAX_BACKING_FORMAT as usize {
                        return Err(Error::corrupt_at(
                            here,
                            format!("backing format name of {len} bytes is too long"),
                        ));
                    }
                    ext.backing_format = Some(utf8_name(data, here, "backing format name")?);
                }
                FEATURE_NAME_TABLE => {
                    // As qemu reads the table: a short last entry is padded with zeros,
                    // and the table ends at the first entry without a name.
                    ext.feature_names = data
                        .chunks(FEATURE_NAME_ENTRY)
                        .map(|e| {
                            let mut full = [0u8; FEATURE_NAME_ENTRY];
                            full[..e.len()].copy_from_slice(e);
                            full
                        })
                        .take_while(|e| e[2] != 0)
                        .filter_map(|e| {
                            let feature_type = match e[0] {
                                0 => FeatureType::Incompatible,
                                1 => FeatureType::Compatible,
                                2 => FeatureType::Autoclear,
                                _ => return None,
                            };
                            let raw = &e[2..];
                            let n = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                            Some(FeatureName {
                                feature_type,
                                bit: e[1],
                                name: String::from_utf8_lossy(&raw[..n]).into_owned(),
                            })
                        })
                        .collect();
                }
                BITMAPS => {
                    if len != 24 {
                        return Err(Error::corrupt_at(
                            here,
                            format!("bitmaps extension has length {len}, not 24"),
                        ));
                    }
                    let b = BitmapsExtension {
                        nb_bitmaps: be32(data, 0),
                        bitmap_directory_size: be64(data, 8),
                        bitmap_directory_offset: be64(data, 16),
                    };
                    if b.nb_bitmaps == 0 {
                        return Err(Error::corrupt_at(
                            here,
                            "bitmaps extension with zero bitmaps",
                        ));
                    }
                    if b.nb_bitmaps > MAX_BITMAPS {
                        return Err(Error::corrupt_at(
                            here,
                            format!(
                                "{} bitmaps are too many (at most {MAX_BITMAPS})",
                                b.nb_bitmaps
                            ),
                        ));
                    }
                    if be32(data, 4) != 0 {
                        return Err(Error::corrupt_at(
                            here,
                            "bitmaps extension reserved field is not zero",
                        ));
                    }
                    if b.bitmap_directory_size > MAX_BITMAP_DIRECTORY_SIZE {
                        return Err(Error::corrupt_at(
                            here,
                            format!(
                                "bitmap directory of {} bytes is too large",
                                b.bitmap_directory_size
                            ),
                        ));
                    }
                    if !align_ok(b.bitmap_directory_offset, header.cluster_size()) {
                        return Err(Error::corrupt_at(
                            here,
                            format!(
                                "bitmap directory offset {:#x} is not cluster aligned",
                                b.bitmap_directory_offset
                            ),
                        ));
                    }
                    ext.bitmaps = Some(b);
                }
                FULL_DISK_ENCRYPTION => {
                    if len != 16 {
                        return Err(Error::corrupt_at(
                            here,
                            format!("full disk encryption header pointer has length {len}, not 16"),
                        ));
                    }
                    ext.full_disk_encryption = Some(FullDiskEncryption {
                        offset: be64(data, 0),
                        length: be64(data, 8),
                    });
                }
                EXTERNAL_DATA_FILE => {
                    ext.data_file = Some(utf8_name(data, here, "external data file name")?);
                }
                other => {
                    // Bounded: at most one entry per 8 bytes of a 2 MiB cluster.
                    ext.unknown.push(other);
                }
            }
            // "Padding to round up the header extension size to the next multiple of 8."
            at = data_start + len.next_multiple_of(8);
        }
        Ok(ext)
    }

    /// The extension area as qemu writes it, for a version `version` image: backing format,
    /// external data file, encryption pointer, feature name table (version 3), bitmaps, then
    /// the end marker. Unknown extensions are not kept (their content was not stored).
    pub fn to_bytes(&self, version: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut push = |typ: u32, data: &[u8]| {
            out.extend_from_slice(&typ.to_be_bytes());
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(8), 0);
        };
        if let Some(f) = &self.backing_format {
            push(BACKING_FORMAT, f.as_bytes());
        }
        if let Some(f) = &self.data_file {
            push(EXTERNAL_DATA_FILE, f.as_bytes());
        }
        if let Some(e) = &self.full_disk_encryption {
            let mut d = e.offset.to_be_bytes().to_vec();
            d.extend_from_slice(&e.length.to_be_bytes());
            push(FULL_DISK_ENCRYPTION, &d);
        }
        if version >= 3 && !self.feature_names.is_empty() {
            let mut d = Vec::new();
            for f in &self.feature_names {
                let mut e = [0u8; FEATURE_NAME_ENTRY];
                e[0] = match f.feature_type {
                    FeatureType::Incompatible => 0,
                    FeatureType::Compatible => 1,
                    FeatureType::Autoclear => 2,
                };
                e[1] = f.bit;
                let n = f.name.len().min(FEATURE_NAME_ENTRY - 2);
                e[2..2 + n].copy_from_slice(&f.name.as_bytes()[..n]);
                d.extend_from_slice(&e);
            }
            push(FEATURE_NAME_TABLE, &d);
        }
        if let Some(b) = &self.bitmaps {
            let mut d = b.nb_bitmaps.to_be_bytes().to_vec();
            d.extend_from_slice(&[0; 4]);
            d.extend_from_slice(&b.bitmap_directory_size.to_be_bytes());
            d.extend_from_slice(&b.bitmap_directory_offset.to_be_bytes());
            push(BITMAPS, &d);
        }
        push(END, &[]);
        out
    }

    /// The feature name table qemu writes into every version 3 image it creates.
    pub fn qemu_feature_names() -> Vec<FeatureName> {
        let f = |feature_type, bit, name: &str| FeatureName {
            feature_type,
            bit,
            name: name.to_string(),
        };
        vec![
            f(FeatureType::Incompatible, 0, "dirty bit"),
            f(FeatureType::Incompatible, 1, "corrupt bit"),
            f(FeatureType::Incompatible, 2, "external data file"),
            f(FeatureType::Incompatible, 3, "compression type"),
            f(FeatureType::Incompatible, 4, "extended L2 entries"),
            f(FeatureType::Compatible, 0, "lazy refcounts"),
            f(FeatureType::Autoclear, 0, "bitmaps"),
            f(FeatureType::Autoclear, 1, "raw external data"),
        ]
    }

    /// The (bit, name) pairs of incompatible features in the feature name table.
    pub fn incompatible_names(&self) -> Vec<(u8, String)> {
        self.feature_names
            .iter()
            .filter(|f| f.feature_type == FeatureType::Incompatible)
            .map(|f| (f.bit, f.name.clone()))
            .collect()
    }
}
