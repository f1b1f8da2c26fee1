//! Where each v5 metadata buffer keeps its LSN, UUID and CRC, for the two things recovery needs:
//! the on-disk LSN of a buffer before replaying over it (as the kernel's
//! `xlog_recover_get_buf_lsn`, by the magic number found on disk), and the LSN stamp and CRC a
//! replayed buffer is written with (as the write verifier the kernel attaches by the logged
//! buffer type, `xlog_recover_validate_buf_type`).
//!
//! ```text
//!   type (XFS_BLFT_*)     magic                      lsn   crc   crc covers
//!   BTREE short form      AB3B AB3C IAB3 FIB3 RMB3 R3FC 24  52    the buffer
//!   BTREE long form       BMA3                        32    64    the buffer
//!   AGF / AGFL / AGI      XAGF / XAFL / XAGI          208/24/320  216/32/312  the buffer
//!   DIR block/data/free   XDB3 XDD3 XDF3              16    4     the buffer
//!   DIR leaf1/leafn, DA node, ATTR leaf (magic at 8)  24    12    the buffer
//!   SYMLINK               XSLM                        48    12    the buffer
//!   ATTR remote           XARM (every block)          -     12    each block
//!   SB                    XFSB                        240   224   the buffer (a sector)
//!   DINO                  IN                          per inode, not recomputed here
//! ```

use crate::record::{be32, be64, Lsn};

/// `XFS_BLFT_*` buffer types (`xfs_log_format.h`).
pub mod blft {
    /// Unknown buffer type.
    pub const UNKNOWN: u16 = 0;
    /// User quota.
    pub const UDQUOT: u16 = 1;
    /// Project quota.
    pub const PDQUOT: u16 = 2;
    /// Group quota.
    pub const GDQUOT: u16 = 3;
    /// Any B+tree block.
    pub const BTREE: u16 = 4;
    /// AG free-space header.
    pub const AGF: u16 = 5;
    /// AG free list.
    pub const AGFL: u16 = 6;
    /// AG inode header.
    pub const AGI: u16 = 7;
    /// Inode cluster.
    pub const DINO: u16 = 8;
    /// Remote symlink block.
    pub const SYMLINK: u16 = 9;
    /// Single-block directory.
    pub const DIR_BLOCK: u16 = 10;
    /// Directory data block.
    pub const DIR_DATA: u16 = 11;
    /// Directory free index.
    pub const DIR_FREE: u16 = 12;
    /// Directory leaf (leaf form).
    pub const DIR_LEAF1: u16 = 13;
    /// Directory leaf (node form).
    pub const DIR_LEAFN: u16 = 14;
    /// Dir/attr B+tree node.
    pub const DA_NODE: u16 = 15;
    /// Attribute leaf.
    pub const ATTR_LEAF: u16 = 16;
    /// Remote attribute value.
    pub const ATTR_RMT: u16 = 17;
    /// Superblock.
    pub const SB: u16 = 18;
    /// Realtime bitmap.
    pub const RTBITMAP: u16 = 19;
    /// Realtime summary.
    pub const RTSUMMARY: u16 = 20;
}

const ABTB_CRC: u32 = 0x4142_3342;
const ABTC_CRC: u32 = 0x4142_3343;
const ABTB: u32 = 0x4142_5442;
const ABTC: u32 = 0x4142_5443;
const IBT_CRC: u32 = 0x4941_4233;
const IBT: u32 = 0x4941_4254;
const FIBT_CRC: u32 = 0x4649_4233;
const BMAP_CRC: u32 = 0x424d_4133;
const BMAP: u32 = 0x424d_4150;
const RMAP_CRC: u32 = 0x524d_4233;
const REFC_CRC: u32 = 0x5233_4643;
const AGF_MAGIC: u32 = 0x5841_4746;
const AGFL_MAGIC: u32 = 0x5841_464c;
const AGI_MAGIC: u32 = 0x5841_4749;
const SYMLINK_MAGIC: u32 = 0x5853_4c4d;
const DIR3_BLOCK: u32 = 0x5844_4233;
const DIR3_DATA: u32 = 0x5844_4433;
const DIR3_FREE: u32 = 0x5844_4633;
const ATTR3_RMT: u32 = 0x5841_524d;
const SB_MAGIC: u32 = 0x5846_5342;
const DIR3_LEAF1: u16 = 0x3df1;
const DIR3_LEAFN: u16 = 0x3dff;
const DA3_NODE: u16 = 0x3ebe;
const ATTR3_LEAF: u16 = 0x3bee;

/// The UUIDs a buffer may be stamped with.
pub(crate) struct Uuids {
    /// `sb_uuid`.
    pub uuid: [u8; 16],
    /// `sb_meta_uuid` (equal to `sb_uuid` without the meta_uuid feature).
    pub meta_uuid: [u8; 16],
    /// True when the superblock has the meta_uuid feature (its copy lives at 248).
    pub has_meta_uuid: bool,
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}

/// The LSN of the object in `buf` as it lies on disk, or None when the buffer must be
/// replayed whatever its age: unknown contents, another filesystem's UUID, remote attribute
/// values, inode and dquot buffers (which carry LSNs per object).
pub(crate) fn buf_lsn(buf: &[u8], u: &Uuids) -> Option<Lsn> {
    if buf.len() < 512 {
        return None;
    }
    let at = |lsn: usize, uuid: usize, want: &[u8; 16]| {
        (buf[uuid..uuid + 16] == want[..]).then(|| Lsn(be64(buf, lsn)))
    };
    match be32(buf, 0) {
        // The kernel's list has no finobt magic: a finobt block is always replayed.
        ABTB_CRC | ABTC_CRC | ABTB | ABTC | RMAP_CRC | REFC_CRC | IBT_CRC | IBT => {
            return at(24, 32, &u.meta_uuid)
        }
        BMAP_CRC | BMAP => return at(32, 40, &u.meta_uuid),
        AGF_MAGIC => return at(208, 64, &u.meta_uuid),
        AGFL_MAGIC => return at(24, 8, &u.meta_uuid),
        AGI_MAGIC => return at(320, 296, &u.meta_uuid),
        SYMLINK_MAGIC => return at(48, 16, &u.meta_uuid),
        DIR3_BLOCK | DIR3_DATA | DIR3_FREE => return at(16, 24, &u.meta_uuid),
        ATTR3_RMT => return None,
        SB_MAGIC => {
            let uuid_off = if u.has_meta_uuid { 248 } else { 32 };
            return at(240, uuid_off, &u.meta_uuid);
        }
        _ => {}
    }
    match be16(buf, 8) {
        // The kernel's list has no attr leaf magic either.
        DIR3_LEAF1 | DIR3_LEAFN | DA3_NODE => at(24, 32, &u.uuid),
        _ => None,
    }
}

fn stamp(buf: &mut [u8], lsn_off: Option<usize>, crc_off: usize, lsn: Lsn) {
    if let Some(o) = lsn_off {
        buf[o..o + 8].copy_from_slice(&lsn.0.to_be_bytes());
    }
    buf[crc_off..crc_off + 4].fill(0);
    let crc = crate::crc::crc32c(buf);
    buf[crc_off..crc_off + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Stamps `lsn` and recomputes the CRC of a replayed v5 buffer of type `ty`, as the write
/// verifier the kernel attaches does; `blocksize` splits remote attribute buffers. A buffer
/// whose magic does not match its type is left as replayed (the kernel warns and writes it
/// without a verifier). Returns false in that case.
pub(crate) fn finish(buf: &mut [u8], ty: u16, lsn: Lsn, blocksize: usize) -> bool {
    if buf.len() < 512 {
        return false;
    }
    let m32 = be32(buf, 0);
    let mda = be16(buf, 8);
    let (lsn_off, crc_off) = match ty {
        blft::BTREE => match m32 {
            ABTB_CRC | ABTC_CRC | IBT_CRC | FIBT_CRC | RMAP_CRC | REFC_CRC => (Some(24), 52),
            BMAP_CRC => (Some(32), 64),
            _ => return false,
        },
        blft::AGF if m32 == AGF_MAGIC => (Some(208), 216),
        blft::AGFL if m32 == AGFL_MAGIC => (Some(24), 32),
        blft::AGI if m32 == AGI_MAGIC => (Some(320), 312),
        blft::SYMLINK if m32 == SYMLINK_MAGIC => (Some(48), 12),
        blft::DIR_BLOCK if m32 == DIR3_BLOCK => (Some(16), 4),
        blft::DIR_DATA if m32 == DIR3_DATA => (Some(16), 4),
        blft::DIR_FREE if m32 == DIR3_FREE => (Some(16), 4),
        blft::DIR_LEAF1 if mda == DIR3_LEAF1 => (Some(24), 12),
        blft::DIR_LEAFN if mda == DIR3_LEAFN => (Some(24), 12),
        blft::DA_NODE if mda == DA3_NODE => (Some(24), 12),
        blft::ATTR_LEAF if mda == ATTR3_LEAF => (Some(24), 12),
        blft::SB if m32 == SB_MAGIC => (Some(240), 224),
        blft::ATTR_RMT if m32 == ATTR3_RMT => {
            // Every block carries its own header; the LSN stays NULLCOMMITLSN.
            let bs = blocksize.clamp(512, buf.len());
            for blk in buf.chunks_mut(bs) {
                if blk.len() >= 64 && be32(blk, 0) == ATTR3_RMT {
                    stamp(blk, None, 12, lsn);
                }
            }
            return true;
        }
        _ => return false,
    };
    stamp(buf, lsn_off, crc_off, lsn);
    true
}

/// Recomputes the CRC of one v3 dinode (`xfs_dinode_calc_crc`): the whole inode, CRC at 100.
pub(crate) fn dinode_crc(di: &mut [u8]) {
    if di.len() >= 176 {
        stamp(di, None, 100, Lsn(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuids() -> Uuids {
        Uuids {
            uuid: [7; 16],
            meta_uuid: [7; 16],
            has_meta_uuid: false,
        }
    }

    #[test]
    fn lsn_by_magic_and_uuid() {
        let mut b = vec![0u8; 4096];
        b[0..4].copy_from_slice(&AGF_MAGIC.to_be_bytes());
        b[208..216].copy_from_slice(&0x1_0000_0020u64.to_be_bytes());
        assert_eq!(buf_lsn(&b, &uuids()), None, "foreign UUID: replay");
        b[64..80].fill(7);
        assert_eq!(buf_lsn(&b, &uuids()), Some(Lsn(0x1_0000_0020)));
        let mut d = vec![0u8; 4096];
        d[8..10].copy_from_slice(&DA3_NODE.to_be_bytes());
        d[32..48].fill(7);
        d[24..32].copy_from_slice(&5u64.to_be_bytes());
        assert_eq!(buf_lsn(&d, &uuids()), Some(Lsn(5)));
        d[8..10].copy_from_slice(&ATTR3_LEAF.to_be_bytes());
        assert_eq!(buf_lsn(&d, &uuids()), None);
    }

    #[test]
    fn finish_stamps_and_checksums() {
        let mut b = vec![0u8; 4096];
        b[0..4].copy_from_slice(&DIR3_DATA.to_be_bytes());
        assert!(finish(&mut b, blft::DIR_DATA, Lsn(99), 4096));
        assert_eq!(be64(&b, 16), 99);
        let stored = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        b[4..8].fill(0);
        assert_eq!(stored, crate::crc::crc32c(&b));
        // A magic that does not match the logged type is left alone.
        let mut c = vec![0u8; 512];
        assert!(!finish(&mut c, blft::AGI, Lsn(1), 4096));
        assert!(c.iter().all(|&x| x == 0));
    }
}
