//! The image header: the first bytes of the first cluster ("Header" in qcow2.rst).
//!
//! Parsing is two steps, as everywhere in this crate: [`Header::parse`] turns the bytes into a
//! [`Header`] and checks every rule that can be checked without reading further into the file;
//! the caller then checks the feature bits against the feature name table
//! ([`Header::check_incompatible_features`]).

use vdisk_block::{Error, Result};

use crate::util::{align_ok, be32, be64, table_in_file};

/// "QCOW magic string ("QFI\xfb")".
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// "For version 2, the header is exactly 72 bytes in length".
pub const V2_HEADER_LENGTH: u32 = 72;

/// "For version 3 or higher, the header length is at least 104 bytes".
pub const V3_MIN_HEADER_LENGTH: u32 = 104;

/// The bytes of the header that this implementation knows: up to and including
/// `compression_type` and its padding.
const KNOWN_HEADER_BYTES: usize = 112;

/// "Must not be less than 9 (i.e. 512 byte clusters)".
pub const MIN_CLUSTER_BITS: u32 = 9;

/// QEMU "has an implementation limit of 2 MB as the maximum cluster size and won't be able to
/// open images with larger cluster sizes"; we keep the same limit so that every image we accept
/// is one qemu accepts, and so a cluster buffer is at most 2 MiB.
pub const MAX_CLUSTER_BITS: u32 = 21;

/// "This value may not exceed 6 (i.e. refcount_bits = 64)".
pub const MAX_REFCOUNT_ORDER: u32 = 6;

/// The backing file name "Must not be longer than 1023 bytes".
pub const MAX_BACKING_FILE_NAME: u32 = 1023;

/// "QEMU has an implementation limit of 32 MB as the maximum L1 table size." Also our bound on
/// the memory an L1 table may take.
pub const MAX_L1_BYTES: u64 = 32 << 20;

/// QEMU's limit on the refcount table (8 MiB); we do not read it yet, but refuse what qemu
/// refuses so a later writer never meets a table it cannot hold.
pub const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;

/// "Extended L2 Entries ... cluster_bits must be at least 14 (i.e. 16384 byte clusters)".
pub const MIN_EXTENDED_L2_CLUSTER_BITS: u32 = 14;

/// Number of snapshots qemu accepts (QCOW_MAX_SNAPSHOTS); also bounds the snapshot list we hold.
pub const MAX_SNAPSHOTS: u32 = 65536;

/// Bits of `incompatible_features`: "An implementation must fail to open an image if an unknown
/// bit is set."
pub mod incompatible {
    /// "Dirty bit. If this bit is set then refcounts may be inconsistent".
    pub const DIRTY: u64 = 1 << 0;
    /// "Corrupt bit. If this bit is set then any data structure may be corrupt and the image
    /// must not be written to".
    pub const CORRUPT: u64 = 1 << 1;
    /// "External data file bit. If this bit is set, an external data file is used."
    pub const DATA_FILE: u64 = 1 << 2;
    /// "Compression type bit. If this bit is set, a non-default compression is used for
    /// compressed clusters."
    pub const COMPRESSION_TYPE: u64 = 1 << 3;
    /// "Extended L2 Entries. If this bit is set then L2 table entries use an extended format
    /// that allows subcluster-based allocation."
    pub const EXTENDED_L2: u64 = 1 << 4;
    /// Every bit this implementation understands.
    pub const KNOWN: u64 = DIRTY | CORRUPT | DATA_FILE | COMPRESSION_TYPE | EXTENDED_L2;
}

/// Bits of `compatible_features`: "An implementation can safely ignore any unknown bits".
pub mod compatible {
    /// "Lazy refcounts bit. If this bit is set then lazy refcount updates can be used."
    pub const LAZY_REFCOUNTS: u64 = 1 << 0;
}

/// Bits of `autoclear_features`: "An implementation may only write to an image with unknown
/// auto-clear features if it clears the respective bits from this field first."
pub mod autoclear {
    /// "Bitmaps extension bit. This bit indicates consistency for the bitmaps extension data."
    pub const BITMAPS: u64 = 1 << 0;
    /// "Raw external data bit. If this bit is set, the external data file can be read as a
    /// consistent standalone raw image without looking at the qcow2 metadata."
    pub const DATA_FILE_RAW: u64 = 1 << 1;
}

/// How compressed clusters are compressed ("compression_type").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionType {
    /// "0: deflate" — raw deflate streams without a zlib header; qemu calls it "zlib".
    #[default]
    Zlib,
    /// "1: zstd".
    Zstd,
}

impl CompressionType {
    /// The name qemu-img prints ("zlib", "zstd").
    pub fn as_str(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
}

/// The qcow2 header, validated. Field names and doc sentences follow qcow2.rst; version 2
/// images get the defaults the spec gives for the version 3 fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// "Version number (valid values are 2 and 3)".
    pub version: u32,
    /// "Offset into the image file at which the backing file name is stored ... 0 if the image
    /// doesn't have a backing file."
    pub backing_file_offset: u64,
    /// "Length of the backing file name in bytes."
    pub backing_file_size: u32,
    /// "Number of bits that are used for addressing an offset within a cluster
    /// (1 << cluster_bits is the cluster size)."
    pub cluster_bits: u32,
    /// "Virtual disk size in bytes."
    pub size: u64,
    /// "0 for no encryption, 1 for AES encryption, 2 for LUKS encryption". Always 0 in a
    /// header that parsed: encrypted images are refused.
    pub crypt_method: u32,
    /// "Number of entries in the active L1 table".
    pub l1_size: u32,
    /// "Offset into the image file at which the active L1 table starts."
    pub l1_table_offset: u64,
    /// "Offset into the image file at which the refcount table starts."
    pub refcount_table_offset: u64,
    /// "Number of clusters that the refcount table occupies".
    pub refcount_table_clusters: u32,
    /// "Number of snapshots contained in the image".
    pub nb_snapshots: u32,
    /// "Offset into the image file at which the snapshot table starts."
    pub snapshots_offset: u64,
    /// "Bitmask of incompatible features." (0 for version 2.)
    pub incompatible_features: u64,
    /// "Bitmask of compatible features." (0 for version 2.)
    pub compatible_features: u64,
    /// "Bitmask of auto-clear features." (0 for version 2.)
    pub autoclear_features: u64,
    /// "Describes the width of a reference count block entry (width in bits:
    /// refcount_bits = 1 << refcount_order). For version 2 images, the order is always assumed
    /// to be 4".
    pub refcount_order: u32,
    /// "Length of the header structure in bytes. For version 2 images, the length is always
    /// assumed to be 72 bytes."
    pub header_length: u32,
    /// "Defines the compression method used for compressed clusters."
    pub compression_type: CompressionType,
}

impl Header {
    /// Parses and validates the header at the start of `buf`, which holds the first bytes of a
    /// file of `file_size` bytes (at least the header, ideally the whole first cluster).
    ///
    /// Unknown incompatible feature bits are not refused here: the message names them from the
    /// feature name table, which is read after the header. Call
    /// [`check_incompatible_features`](Header::check_incompatible_features) next.
    pub fn parse(buf: &[u8], file_size: u64) -> Result<Header> {
        Header::parse_with(buf, file_size, false)
    }

    /// As [`Header::parse`]; with `l1_past_eof` the active L1 table may lie past the end of
    /// the file (it must still be aligned), as `check` accepts it.
    pub fn parse_with(buf: &[u8], file_size: u64, l1_past_eof: bool) -> Result<Header> {
        if buf.len() < 8 || buf[..4] != MAGIC {
            return Err(Error::corrupt("image is not in qcow2 format (bad magic)"));
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(Error::unsupported(format!(
                "unsupported qcow2 version {version}"
            )));
        }
        if buf.len() < V2_HEADER_LENGTH as usize {
            return Err(Error::corrupt(
                "the file is too short to hold a qcow2 header",
            ));
        }
        let header_length = if version == 2 {
            V2_HEADER_LENGTH
        } else {
            if buf.len() < V3_MIN_HEADER_LENGTH as usize {
                return Err(Error::corrupt(
                    "the file is too short to hold a qcow2 version 3 header",
                ));
            }
            be32(buf, 100)
        };
        if header_length < V2_HEADER_LENGTH
            || (version == 3 && header_length < V3_MIN_HEADER_LENGTH)
        {
            return Err(Error::corrupt_at(
                100,
                format!(
                    "header_length {header_length} is too small for a version {version} header"
                ),
            ));
        }
        // Copy the known part; fields past header_length read as zero, which the spec defines
        // as "not present".
        let mut raw = [0u8; KNOWN_HEADER_BYTES];
        let known = (header_length as usize)
            .min(KNOWN_HEADER_BYTES)
            .min(buf.len());
        raw[..known].copy_from_slice(&buf[..known]);

        let cluster_bits = be32(&raw, 20);
        if cluster_bits < MIN_CLUSTER_BITS {
            return Err(Error::corrupt_at(
                20,
                format!("cluster_bits {cluster_bits} is below the minimum of {MIN_CLUSTER_BITS}"),
            ));
        }
        if cluster_bits > MAX_CLUSTER_BITS {
            return Err(Error::unsupported(format!(
                "unsupported cluster size 2^{cluster_bits} (at most 2 MiB is supported)"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        if u64::from(header_length) > cluster_size {
            return Err(Error::corrupt_at(
                100,
                "the qcow2 header exceeds the cluster size",
            ));
        }
        if buf.len() < header_length as usize && file_size >= u64::from(header_length) {
            return Err(Error::invalid("header buffer shorter than header_length"));
        }
        if file_size < u64::from(header_length) {
            return Err(Error::corrupt(
                "the file is too short to hold its qcow2 header",
            ));
        }

        let (incompatible_features, compatible_features, autoclear_features, refcount_order) =
            if version == 2 {
                (0, 0, 0, 4)
            } else {
                (
                    be64(&raw, 72),
                    be64(&raw, 80),
                    be64(&raw, 88),
                    be32(&raw, 96),
                )
            };
        if refcount_order > MAX_REFCOUNT_ORDER {
            return Err(Error::corrupt_at(
                96,
                format!(
                    "refcount_order {refcount_order} is above the maximum of {MAX_REFCOUNT_ORDER}"
                ),
            ));
        }

        let crypt_method = be32(&raw, 32);
        if crypt_method != 0 {
            // Never hand out ciphertext as if it were guest data.
            return Err(Error::unsupported("encrypted images are not supported"));
        }

        let compression_type = match raw[104] {
            0 => CompressionType::Zlib,
            1 => CompressionType::Zstd,
            t => {
                return Err(Error::unsupported(format!(
                    "unsupported compression type {t}"
                )))
            }
        };
        let has_type_bit = incompatible_features & incompatible::COMPRESSION_TYPE != 0;
        if has_type_bit != (compression_type != CompressionType::Zlib) {
            return Err(Error::corrupt_at(
                104,
                "compression_type does not agree with the compression type feature bit",
            ));
        }
        if incompatible_features & incompatible::EXTENDED_L2 != 0
            && cluster_bits < MIN_EXTENDED_L2_CLUSTER_BITS
        {
            return Err(Error::corrupt(
                "extended L2 entries need clusters of at least 16 KiB",
            ));
        }

        let backing_file_offset = be64(&raw, 8);
        let backing_file_size = be32(&raw, 16);
        if backing_file_offset != 0 {
            if backing_file_size > MAX_BACKING_FILE_NAME {
                return Err(Error::corrupt_at(
                    16,
                    format!("backing file name of {backing_file_size} bytes is longer than {MAX_BACKING_FILE_NAME}"),
                ));
            }
            match backing_file_offset.checked_add(u64::from(backing_file_size)) {
                Some(end)
                    if backing_file_offset >= u64::from(header_length)
                        && end <= cluster_size.min(file_size) => {}
                _ => {
                    return Err(Error::corrupt_at(
                        8,
                        "the backing file name lies outside the first cluster",
                    ))
                }
            }
        }

        let size = be64(&raw, 24);
        let l1_size = be32(&raw, 36);
        let l1_table_offset = be64(&raw, 40);
        let l1_bytes = u64::from(l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Error::corrupt_at(
                36,
                format!(
                    "active L1 table of {l1_size} entries is too large (at most {} entries)",
                    MAX_L1_BYTES / 8
                ),
            ));
        }
        let l2_bits = l2_bits(
            cluster_bits,
            incompatible_features & incompatible::EXTENDED_L2 != 0,
        );
        let needed = l1_entries_for(size, cluster_bits, l2_bits);
        if needed > u64::from(l1_size) {
            return Err(Error::corrupt_at(
                36,
                // qemu's words: past what any L1 table can map, or too small a table.
                if needed > i32::MAX as u64 {
                    "Image is too big".to_string()
                } else {
                    "L1 table is too small".to_string()
                },
            ));
        }
        if l1_size > 0 {
            table_in_file(
                l1_table_offset,
                l1_bytes,
                cluster_size,
                if l1_past_eof { u64::MAX } else { file_size },
                "L1 table",
            )?;
        }

        let refcount_table_offset = be64(&raw, 48);
        let refcount_table_clusters = be32(&raw, 56);
        let refcount_bytes = u64::from(refcount_table_clusters) << cluster_bits;
        if refcount_bytes > MAX_REFCOUNT_TABLE_BYTES {
            return Err(Error::corrupt_at(
                56,
                format!("refcount table of {refcount_table_clusters} clusters is too large"),
            ));
        }
        if !align_ok(refcount_table_offset, cluster_size) {
            return Err(Error::corrupt_at(
                48,
                format!("refcount table offset {refcount_table_offset:#x} is not cluster aligned"),
            ));
        }

        let nb_snapshots = be32(&raw, 60);
        let snapshots_offset = be64(&raw, 64);
        if nb_snapshots > MAX_SNAPSHOTS {
            return Err(Error::corrupt_at(
                60,
                format!("{nb_snapshots} snapshots are too many (at most {MAX_SNAPSHOTS})"),
            ));
        }
        if nb_snapshots > 0 && !align_ok(snapshots_offset, cluster_size) {
            return Err(Error::corrupt_at(
                64,
                format!("snapshot table offset {snapshots_offset:#x} is not cluster aligned"),
            ));
        }

        Ok(Header {
            version,
            backing_file_offset,
            backing_file_size,
            cluster_bits,
            size,
            crypt_method,
            l1_size,
            l1_table_offset,
            refcount_table_offset,
            refcount_table_clusters,
            nb_snapshots,
            snapshots_offset,
            incompatible_features,
            compatible_features,
            autoclear_features,
            refcount_order,
            header_length,
            compression_type,
        })
    }

    /// Refuses unknown incompatible feature bits, naming them from the feature name table
    /// (`names` holds its incompatible entries as (bit, name)) as qemu does.
    pub fn check_incompatible_features(&self, names: &[(u8, String)]) -> Result<()> {
        let unknown = self.incompatible_features & !incompatible::KNOWN;
        if unknown == 0 {
            return Ok(());
        }
        // qemu's wording: the names in table order, then what is left as one hex mask.
        let mut parts = Vec::new();
        let mut left = unknown;
        for (bit, name) in names {
            let m = 1u64.checked_shl(u32::from(*bit)).unwrap_or(0);
            if left & m != 0 {
                parts.push(name.clone());
                left &= !m;
            }
        }
        if left != 0 {
            parts.push(format!("Unknown incompatible feature: {left:x}"));
        }
        Err(Error::unsupported(format!(
            "Unsupported qcow2 feature(s): {}",
            parts.join(", ")
        )))
    }

    /// The header's bytes as stored at offset 0: 72 for version 2, `header_length` for
    /// version 3 (fields this implementation does not know are written as zeros).
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = if self.version == 2 {
            V2_HEADER_LENGTH as usize
        } else {
            (self.header_length as usize).max(KNOWN_HEADER_BYTES)
        };
        let mut b = vec![0u8; len];
        let put32 =
            |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let put64 =
            |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_be_bytes());
        b[0..4].copy_from_slice(&MAGIC);
        put32(&mut b, 4, self.version);
        put64(&mut b, 8, self.backing_file_offset);
        put32(&mut b, 16, self.backing_file_size);
        put32(&mut b, 20, self.cluster_bits);
        put64(&mut b, 24, self.size);
        put32(&mut b, 32, self.crypt_method);
        put32(&mut b, 36, self.l1_size);
        put64(&mut b, 40, self.l1_table_offset);
        put64(&mut b, 48, self.refcount_table_offset);
        put32(&mut b, 56, self.refcount_table_clusters);
        put32(&mut b, 60, self.nb_snapshots);
        put64(&mut b, 64, self.snapshots_offset);
        if self.version >= 3 {
            put64(&mut b, 72, self.incompatible_features);
            put64(&mut b, 80, self.compatible_features);
            put64(&mut b, 88, self.autoclear_features);
            put32(&mut b, 96, self.refcount_order);
            put32(&mut b, 100, len as u32);
            b[104] = match self.compression_type {
                CompressionType::Zlib => 0,
                CompressionType::Zstd => 1,
            };
        }
        b
    }

    /// "1 << cluster_bits is the cluster size".
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Whether L2 entries are 128-bit extended entries with 32 subclusters.
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & incompatible::EXTENDED_L2 != 0
    }

    /// Whether guest clusters live in an external data file.
    pub fn has_data_file(&self) -> bool {
        self.incompatible_features & incompatible::DATA_FILE != 0
    }

    /// "refcount_bits = 1 << refcount_order".
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// log2 of the number of entries in one L2 table.
    pub(crate) fn l2_bits(&self) -> u32 {
        l2_bits(self.cluster_bits, self.extended_l2())
    }
}

/// log2 of "l2_entries = (cluster_size / sizeof(uint64_t))", or twice the entry size with
/// extended L2 entries.
pub(crate) fn l2_bits(cluster_bits: u32, extended: bool) -> u32 {
    cluster_bits - if extended { 4 } else { 3 }
}

/// How many L1 entries a virtual disk of `size` bytes needs.
pub(crate) fn l1_entries_for(size: u64, cluster_bits: u32, l2_bits: u32) -> u64 {
    // cluster_bits + l2_bits <= 21 + 18, so the shift is in range.
    let per_l1 = 1u64 << (cluster_bits + l2_bits);
    size.div_ceil(per_l1)
}
