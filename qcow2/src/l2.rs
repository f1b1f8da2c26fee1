//! L1 and L2 table entries ("Cluster mapping" and "Extended L2 Entries" in qcow2.rst): "qcow2
//! uses a two-level structure for the mapping of guest clusters to host clusters. They are
//! called L1 and L2 table."
//!
//! This module decodes one entry into what the guest bytes it covers are ([`Run`]); the lookup
//! in the crate root walks the tables and merges neighbouring entries.

use vdisk_block::{Error, Result};

use crate::header::Header;

/// L1 entry "Bits 9-55 of the offset into the image file at which the L2 table starts."
pub const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Standard cluster descriptor "Bits 9-55 of host cluster offset."
pub const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry bit 63: "1 for standard clusters whose refcount is exactly one."
pub const OFLAG_COPIED: u64 = 1 << 63;
/// L2 entry bit 62: "0 for standard clusters, 1 for compressed clusters".
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Standard cluster descriptor bit 0: "If set to 1, the cluster reads as all zeros."
pub const OFLAG_ZERO: u64 = 1;

/// "In these images standard data clusters are divided into 32 subclusters of the same size."
pub const SUBCLUSTERS_PER_CLUSTER: u32 = 32;

/// Compressed data is counted in these units: "Number of additional 512-byte sectors".
const COMPRESSED_SECTOR: u64 = 512;

/// Where a compressed cluster's bytes lie in the image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompressedDescriptor {
    /// "Host cluster offset. This is usually _not_ aligned to a cluster or sector boundary!"
    pub offset: u64,
    /// Bytes from `offset` to the end of the last sector holding compressed data.
    pub size: u64,
}

/// What a run of guest bytes is in this image's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Run {
    /// Not allocated here: the backing image's bytes, or zeros. `host` is storage reserved
    /// for it all the same (an unallocated subcluster of an allocated cluster).
    Unallocated { host: Option<u64> },
    /// Reads as zeros; `host` is the storage still reserved for it, if any.
    Zero { host: Option<u64> },
    /// Stored uncompressed at `host` in the data file (the image file unless external).
    Data { host: u64 },
    /// One compressed cluster.
    Compressed(CompressedDescriptor),
}

impl Run {
    /// Whether `next`, which starts `len` guest bytes after `self`, continues the same run.
    pub fn continued_by(&self, len: u64, next: &Run) -> bool {
        match (self, next) {
            (Run::Unallocated { host: None }, Run::Unallocated { host: None }) => true,
            (Run::Unallocated { host: Some(a) }, Run::Unallocated { host: Some(b) }) => {
                a.checked_add(len) == Some(*b)
            }
            (Run::Zero { host: None }, Run::Zero { host: None }) => true,
            (Run::Zero { host: Some(a) }, Run::Zero { host: Some(b) })
            | (Run::Data { host: a }, Run::Data { host: b }) => a.checked_add(len) == Some(*b),
            _ => false,
        }
    }
}

/// The shape of the tables, derived once from the header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub version: u32,
    pub cluster_bits: u32,
    /// log2 of the number of entries per L2 table.
    pub l2_bits: u32,
    pub extended: bool,
    /// log2 of the unit an entry allocates: a subcluster, or the whole cluster.
    pub subcluster_bits: u32,
    /// Compressed descriptor: "x = 62 - (cluster_bits - 8)".
    pub csize_shift: u32,
    pub csize_mask: u64,
    pub coffset_mask: u64,
    /// Guest clusters live in an external data file (offset 0 is then valid).
    pub external_data: bool,
}

impl Geometry {
    pub fn new(h: &Header) -> Geometry {
        let extended = h.extended_l2();
        let csize_shift = 62 - (h.cluster_bits - 8);
        Geometry {
            version: h.version,
            cluster_bits: h.cluster_bits,
            l2_bits: h.l2_bits(),
            extended,
            subcluster_bits: if extended {
                h.cluster_bits - SUBCLUSTERS_PER_CLUSTER.trailing_zeros()
            } else {
                h.cluster_bits
            },
            csize_shift,
            csize_mask: (1u64 << (h.cluster_bits - 8)) - 1,
            coffset_mask: (1u64 << csize_shift) - 1,
            external_data: h.has_data_file(),
        }
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Number of u64 words per L2 entry.
    pub fn words_per_entry(&self) -> usize {
        if self.extended {
            2
        } else {
            1
        }
    }

    /// Decodes entry `index` of the L2 table `table` (which lives at `l2_offset` in the image
    /// file) for the guest byte `in_cluster` bytes into its cluster. Returns the run and the
    /// in-cluster offset where the unit it belongs to ends.
    pub fn classify(
        &self,
        table: &[u64],
        index: usize,
        in_cluster: u64,
        l2_offset: u64,
    ) -> Result<(Run, u64)> {
        let cluster_size = self.cluster_size();
        let w = index * self.words_per_entry();
        let entry_at = l2_offset + (w as u64) * 8;
        let entry = *table
            .get(w)
            .ok_or_else(|| Error::corrupt_at(l2_offset, "L2 index outside its table"))?;

        if entry & OFLAG_COMPRESSED != 0 {
            if self.external_data {
                return Err(Error::corrupt_at(
                    entry_at,
                    "compressed cluster in an image with an external data file",
                ));
            }
            let offset = entry & self.coffset_mask;
            let sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1;
            // sectors <= cluster_size / 256, so this is at most 2 * cluster_size.
            let size = sectors * COMPRESSED_SECTOR - (offset % COMPRESSED_SECTOR);
            return Ok((
                Run::Compressed(CompressedDescriptor { offset, size }),
                cluster_size,
            ));
        }

        let host = entry & L2E_OFFSET_MASK;
        let check_aligned = |host: u64| {
            if host & (cluster_size - 1) != 0 {
                Err(Error::corrupt_at(
                    entry_at,
                    format!("cluster offset {host:#x} in an L2 entry is not cluster aligned"),
                ))
            } else {
                Ok(())
            }
        };

        if !self.extended {
            if entry & OFLAG_ZERO != 0 {
                if self.version < 3 {
                    return Err(Error::corrupt_at(
                        entry_at,
                        "zero cluster in a version 2 image",
                    ));
                }
                check_aligned(host)?;
                let host = (host != 0).then(|| host + in_cluster);
                return Ok((Run::Zero { host }, cluster_size));
            }
            // "If the offset is 0 and bit 63 is clear, the cluster is unallocated. The offset
            // may only be 0 with bit 63 set ... when an external data file is used."
            if host == 0 && !(self.external_data && entry & OFLAG_COPIED != 0) {
                return Ok((Run::Unallocated { host: None }, cluster_size));
            }
            check_aligned(host)?;
            return Ok((
                Run::Data {
                    host: host + in_cluster,
                },
                cluster_size,
            ));
        }

        let bitmap = *table
            .get(w + 1)
            .ok_or_else(|| Error::corrupt_at(l2_offset, "L2 index outside its table"))?;
        let sc = in_cluster >> self.subcluster_bits;
        let unit_end = (sc + 1) << self.subcluster_bits;
        let alloc = (bitmap >> sc) & 1 != 0;
        let zero = (bitmap >> (32 + sc)) & 1 != 0;
        let has_host = host != 0 || (self.external_data && entry & OFLAG_COPIED != 0);
        if alloc && zero {
            return Err(Error::corrupt_at(
                entry_at,
                format!("subcluster {sc} is marked both allocated and zero"),
            ));
        }
        if alloc {
            if !has_host {
                return Err(Error::corrupt_at(
                    entry_at,
                    format!("subcluster {sc} is allocated but its cluster has no offset"),
                ));
            }
            check_aligned(host)?;
            return Ok((
                Run::Data {
                    host: host + in_cluster,
                },
                unit_end,
            ));
        }
        if zero {
            check_aligned(host)?;
            let host = has_host.then(|| host + in_cluster);
            return Ok((Run::Zero { host }, unit_end));
        }
        let host = has_host.then(|| host + in_cluster);
        Ok((Run::Unallocated { host }, unit_end))
    }
}

/// Big-endian table bytes as words.
pub(crate) fn decode_table(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}
