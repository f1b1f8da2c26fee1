//! Log record headers (`struct xlog_rec_header` in `xfs_log_format.h`), big-endian.

use crate::crc;
use vdisk_block::{Error, Result};

/// `XLOG_HEADER_MAGIC_NUM`: the first word of every record header.
pub const XLOG_HEADER_MAGIC_NUM: u32 = 0xFEED_BABE;
/// `XLOG_HEADER_CYCLE_SIZE`: bytes of data one header's `h_cycle_data` covers (64 sectors).
pub const XLOG_HEADER_CYCLE_SIZE: u32 = 32 * 1024;
/// `XLOG_MAX_RECORD_BSIZE`: the largest in-core log buffer, so the largest record.
pub const XLOG_MAX_RECORD_BSIZE: u32 = 256 * 1024;
/// `sizeof(struct xlog_rec_header)`: the bytes of the header sector the CRC covers.
pub const XLOG_REC_HEADER_SIZE: usize = 328;
/// `sizeof(struct xlog_rec_ext_header)`.
pub const XLOG_REC_EXT_HEADER_SIZE: usize = 260;
/// Offset of `h_crc` inside the header.
pub const H_CRC_OFFSET: usize = 32;
/// `XLOG_FMT_LINUX_LE` / `XLOG_FMT_LINUX_BE` / `XLOG_FMT_IRIX_BE`.
pub const XLOG_FMT_LINUX_BE: u32 = 2;

/// The basic block: the unit of log addressing.
pub const BBSIZE: usize = 512;

pub(crate) fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
pub(crate) fn be64(b: &[u8], o: usize) -> u64 {
    (u64::from(be32(b, o)) << 32) | u64::from(be32(b, o + 4))
}

/// A log sequence number: cycle in the high 32 bits, basic block in the low 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Builds an LSN from a cycle and a basic block number.
    pub fn new(cycle: u32, block: u32) -> Lsn {
        Lsn((u64::from(cycle) << 32) | u64::from(block))
    }
    /// The cycle.
    pub fn cycle(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The basic block inside the log.
    pub fn block(self) -> u32 {
        self.0 as u32
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.cycle(), self.block())
    }
}

/// A parsed, validated record header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    /// `h_cycle`: the cycle this record was written in.
    pub h_cycle: u32,
    /// `h_version`: 1 or 2.
    pub h_version: u32,
    /// `h_len`: bytes of data after the header blocks.
    pub h_len: u32,
    /// `h_lsn`: this record's own LSN.
    pub h_lsn: Lsn,
    /// `h_tail_lsn`: the tail of the log when this record was written.
    pub h_tail_lsn: Lsn,
    /// `h_crc`: CRC32C of header and data (stored little-endian).
    pub h_crc: u32,
    /// `h_prev_block`: the basic block of the previous record.
    pub h_prev_block: u32,
    /// `h_num_logops`: number of op headers in the record.
    pub h_num_logops: u32,
    /// `h_cycle_data`: the first word of each data sector, replaced on disk by the cycle.
    pub h_cycle_data: Vec<u32>,
    /// `h_fmt`: the format of the log.
    pub h_fmt: u32,
    /// `h_fs_uuid`: the filesystem's UUID.
    pub h_fs_uuid: [u8; 16],
    /// `h_size`: the in-core log buffer size (v2); decides how many extended headers follow.
    pub h_size: u32,
}

impl RecordHeader {
    /// Parses one header sector (at least 512 bytes) read at basic block `blk`.
    pub fn parse(b: &[u8], blk: u64) -> Result<RecordHeader> {
        let at = blk.saturating_mul(BBSIZE as u64);
        if b.len() < BBSIZE || be32(b, 0) != XLOG_HEADER_MAGIC_NUM {
            return Err(Error::corrupt_at(
                at,
                "XFS log record header has a bad magic number",
            ));
        }
        let h_version = be32(b, 8);
        if h_version != 1 && h_version != 2 {
            return Err(Error::corrupt_at(
                at,
                format!("XFS log record version {h_version} is unknown"),
            ));
        }
        let h_len = be32(b, 12);
        if h_len > XLOG_MAX_RECORD_BSIZE {
            return Err(Error::corrupt_at(
                at,
                format!("XFS log record length {h_len} is too large"),
            ));
        }
        let h_size = be32(b, 320);
        if h_version == 2
            && (h_size > XLOG_MAX_RECORD_BSIZE || h_len > h_size.max(XLOG_HEADER_CYCLE_SIZE))
        {
            return Err(Error::corrupt_at(
                at,
                format!("XFS log record size {h_size} is bad"),
            ));
        }
        let h_cycle_data = (0..64).map(|i| be32(b, 44 + 4 * i)).collect();
        let mut h_fs_uuid = [0u8; 16];
        h_fs_uuid.copy_from_slice(&b[304..320]);
        Ok(RecordHeader {
            h_cycle: be32(b, 4),
            h_version,
            h_len,
            h_lsn: Lsn(be64(b, 16)),
            h_tail_lsn: Lsn(be64(b, 24)),
            h_crc: u32::from_le_bytes([b[32], b[33], b[34], b[35]]),
            h_prev_block: be32(b, 36),
            h_num_logops: be32(b, 40),
            h_cycle_data,
            h_fmt: be32(b, 300),
            h_fs_uuid,
            h_size,
        })
    }

    /// Number of header basic blocks (1 plus the extended headers of a big v2 record).
    pub fn header_blocks(&self) -> u64 {
        if self.h_version == 2 && self.h_size > XLOG_HEADER_CYCLE_SIZE {
            u64::from(self.h_size.div_ceil(XLOG_HEADER_CYCLE_SIZE))
        } else {
            1
        }
    }

    /// Number of data basic blocks.
    pub fn data_blocks(&self) -> u64 {
        u64::from(self.h_len).div_ceil(BBSIZE as u64)
    }
}

/// The CRC the kernel's `xlog_cksum` computes: over the header struct with `h_crc` as zero,
/// each extended header struct, then the data as it lies on disk (cycle-stamped).
pub fn record_crc(header: &[u8], ext_headers: &[&[u8]], data: &[u8]) -> u32 {
    let mut c = crc::update(!0, &header[..H_CRC_OFFSET]);
    c = crc::update(c, &[0; 4]);
    c = crc::update(c, &header[H_CRC_OFFSET + 4..XLOG_REC_HEADER_SIZE]);
    for x in ext_headers {
        c = crc::update(c, &x[..XLOG_REC_EXT_HEADER_SIZE]);
    }
    c = crc::update(c, data);
    !c
}
