//! The few superblock fields the log needs, parsed from sector 0 of the data device.
//!
//! Field names follow `struct xfs_dsb` in the kernel's `xfs_format.h`; all are big-endian.

use vdisk_block::{BlockDevice, Error, Result};

/// `XFS_SB_MAGIC`: "XFSB".
pub const XFS_SB_MAGIC: u32 = 0x5846_5342;
/// The version number's low nibble for a v5 (CRC) superblock.
pub const XFS_SB_VERSION_5: u16 = 5;
/// `XFS_SB_VERSION_LOGV2BIT`: the log uses v2 record headers.
const XFS_SB_VERSION_LOGV2BIT: u16 = 0x0400;
/// `XFS_SB_VERSION_SECTORBIT`: sector sizes other than 512 are in use.
const XFS_SB_VERSION_SECTORBIT: u16 = 0x0800;

/// The log's geometry and identity, from the superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogGeometry {
    /// `sb_blocksize`: the filesystem block size in bytes.
    pub blocksize: u32,
    /// `sb_uuid`: the filesystem's UUID, which each log record carries in `h_fs_uuid`.
    pub uuid: [u8; 16],
    /// `sb_logstart`: the first filesystem block of an internal log; 0 means an external log.
    pub logstart: u64,
    /// `sb_logblocks`: the log's length in filesystem blocks.
    pub logblocks: u32,
    /// `sb_sectsize`: the data device's sector size in bytes.
    pub sectsize: u16,
    /// `sb_inodesize`: bytes per inode (the dinode CRC covers all of them).
    pub inodesize: u16,
    /// `sb_logsectsize`: the log's sector size (0 on old filesystems: 512).
    pub logsectsize: u16,
    /// `sb_logsunit`: the log stripe unit in bytes (v2 logs); records are padded to it.
    pub logsunit: u32,
    /// True for a v5 (CRC-enabled) superblock.
    pub v5: bool,
    /// True when the log uses v2 record headers.
    pub log_v2: bool,
    /// Byte offset of the log on the device.
    pub log_offset: u64,
    /// Length of the log in 512-byte basic blocks.
    pub log_bbs: u64,
}

/// Largest log the kernel allows (`XFS_MAX_LOG_BYTES`, 2 GiB), our bound on every loop.
pub const MAX_LOG_BYTES: u64 = 2 << 30;

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn be64(b: &[u8], o: usize) -> u64 {
    (u64::from(be32(b, o)) << 32) | u64::from(be32(b, o + 4))
}

impl LogGeometry {
    /// Reads and validates the primary superblock of `dev`.
    pub fn read(dev: &dyn BlockDevice) -> Result<LogGeometry> {
        let mut sb = [0u8; 512];
        dev.read_at(&mut sb, 0)?;
        LogGeometry::parse(&sb, dev.size())
    }

    /// Parses the first 512 bytes of a superblock on a device of `dev_size` bytes.
    pub fn parse(sb: &[u8; 512], dev_size: u64) -> Result<LogGeometry> {
        if be32(sb, 0) != XFS_SB_MAGIC {
            return Err(Error::corrupt_at(0, "not an XFS superblock (bad magic)"));
        }
        let blocksize = be32(sb, 4);
        let blocklog = sb[120];
        if !(512..=65536).contains(&blocksize)
            || !blocksize.is_power_of_two()
            || 1u32 << blocklog.min(31) != blocksize
        {
            return Err(Error::corrupt_at(
                4,
                format!("bad XFS block size {blocksize}"),
            ));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&sb[32..48]);
        let logstart = be64(sb, 48);
        let agblocks = be32(sb, 84);
        let agcount = be32(sb, 88);
        let logblocks = be32(sb, 96);
        let versionnum = be16(sb, 100);
        let sectsize = be16(sb, 102);
        let inodesize = be16(sb, 104);
        let agblklog = sb[124];
        let logsectsize = be16(sb, 194);
        let logsunit = be32(sb, 196);
        let v5 = versionnum & 0xf == XFS_SB_VERSION_5;
        let log_v2 = v5 || versionnum & XFS_SB_VERSION_LOGV2BIT != 0;
        let _ = XFS_SB_VERSION_SECTORBIT;
        if logstart == 0 {
            return Err(Error::unsupported(
                "XFS external log devices are not supported",
            ));
        }
        if agblocks == 0 || agblklog > 31 || u64::from(agblocks) > 1u64 << agblklog {
            return Err(Error::corrupt_at(84, "bad XFS allocation group geometry"));
        }
        // sb_logstart is an XFS_FSB: AG number above agblklog bits, AG block below.
        let agno = logstart >> agblklog;
        let agbno = logstart & ((1u64 << agblklog) - 1);
        if agno >= u64::from(agcount) || agbno >= u64::from(agblocks) {
            return Err(Error::corrupt_at(
                48,
                format!("log start block {logstart} is outside the filesystem"),
            ));
        }
        let blockno = agno * u64::from(agblocks) + agbno;
        let log_offset = blockno
            .checked_mul(u64::from(blocksize))
            .ok_or_else(|| Error::corrupt_at(48, "log start overflows"))?;
        let log_bytes = u64::from(logblocks) * u64::from(blocksize);
        if logblocks == 0 || log_bytes > MAX_LOG_BYTES {
            return Err(Error::corrupt_at(
                96,
                format!("bad XFS log size of {logblocks} blocks"),
            ));
        }
        match log_offset.checked_add(log_bytes) {
            Some(end) if end <= dev_size => {}
            _ => {
                return Err(Error::corrupt_at(
                    48,
                    "the XFS log reaches past the end of the device",
                ))
            }
        }
        if log_bytes < 64 * 1024 {
            return Err(Error::corrupt_at(
                96,
                format!("XFS log of {log_bytes} bytes is too small"),
            ));
        }
        let lss = if logsectsize == 0 { 512 } else { logsectsize };
        if !lss.is_power_of_two() || !(512..=32768).contains(&lss) {
            return Err(Error::corrupt_at(
                194,
                format!("bad XFS log sector size {logsectsize}"),
            ));
        }
        Ok(LogGeometry {
            blocksize,
            uuid,
            logstart,
            logblocks,
            sectsize,
            inodesize,
            logsectsize: lss,
            logsunit,
            v5,
            log_v2,
            log_offset,
            log_bbs: log_bytes / 512,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plausible v5 superblock: 4 KiB blocks, 4 AGs of 19200 blocks, log at block 38400.
    fn golden() -> [u8; 512] {
        let mut sb = [0u8; 512];
        sb[0..4].copy_from_slice(&XFS_SB_MAGIC.to_be_bytes());
        sb[4..8].copy_from_slice(&4096u32.to_be_bytes());
        sb[48..56].copy_from_slice(&(2u64 << 15).to_be_bytes());
        sb[84..88].copy_from_slice(&19200u32.to_be_bytes());
        sb[88..92].copy_from_slice(&4u32.to_be_bytes());
        sb[96..100].copy_from_slice(&2560u32.to_be_bytes());
        sb[100..102].copy_from_slice(&0xb4a5u16.to_be_bytes());
        sb[102..104].copy_from_slice(&512u16.to_be_bytes());
        sb[120] = 12;
        sb[124] = 15;
        sb
    }

    #[test]
    fn golden_parses() {
        let g = LogGeometry::parse(&golden(), 300 << 20).unwrap();
        assert!(g.v5 && g.log_v2);
        assert_eq!(g.log_offset, 2 * 19200 * 4096);
        assert_eq!(g.log_bbs, 2560 * 8);
    }

    #[test]
    fn hostile_fields_are_refused() {
        let mut sb = golden();
        sb[0] = 0;
        assert!(LogGeometry::parse(&sb, 300 << 20)
            .unwrap_err()
            .to_string()
            .contains("bad magic"));
        let mut sb = golden();
        sb[48..56].copy_from_slice(&(9u64 << 15).to_be_bytes());
        let e = LogGeometry::parse(&sb, 300 << 20).unwrap_err().to_string();
        assert!(e.contains("outside the filesystem"), "{e}");
        let mut sb = golden();
        sb[96..100].copy_from_slice(&u32::MAX.to_be_bytes());
        let e = LogGeometry::parse(&sb, 300 << 20).unwrap_err().to_string();
        assert!(e.contains("bad XFS log size"), "{e}");
        let e = LogGeometry::parse(&golden(), 100 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("past the end"), "{e}");
        let mut sb = golden();
        sb[48..56].copy_from_slice(&0u64.to_be_bytes());
        let e = LogGeometry::parse(&sb, 300 << 20).unwrap_err().to_string();
        assert!(e.contains("external log"), "{e}");
    }
}
