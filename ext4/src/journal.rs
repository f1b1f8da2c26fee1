//! The jbd2 journal, replayed in memory.
//!
//! When the superblock says the filesystem needs recovery, the committed transactions in the
//! journal are newer than the blocks at their home locations. Instead of writing them home
//! (which a read-only open must not do) we build an [`Overlay`]: for each filesystem block the
//! newest committed copy's place in the journal. Every read of the filesystem goes through it.
//! The overlay holds positions, not data, so its size is bounded by the journal's length.
//!
//! Structures (all big-endian): `journal_header_t`, `journal_superblock_t` (v1 and v2),
//! descriptor blocks of `journal_block_tag_t` / `journal_block_tag3_t`, revoke blocks
//! (`jbd2_journal_revoke_header_t`) and commit blocks (`struct commit_header`). Recovery follows
//! the kernel's three passes: scan for the end of the log, collect revocations, replay.

use std::collections::{BTreeMap, HashMap};

use vdisk_block::{Error, Result};

use super::bytes::{be16, be32, put};
use super::checksum::crc32c_raw;

/// `h_magic` of every journal metadata block.
pub const JBD2_MAGIC_NUMBER: u32 = 0xC03B_3998;
/// `h_blocktype`: descriptor block.
pub const JBD2_DESCRIPTOR_BLOCK: u32 = 1;
/// `h_blocktype`: commit block.
pub const JBD2_COMMIT_BLOCK: u32 = 2;
/// `h_blocktype`: journal superblock, version 1.
pub const JBD2_SUPERBLOCK_V1: u32 = 3;
/// `h_blocktype`: journal superblock, version 2.
pub const JBD2_SUPERBLOCK_V2: u32 = 4;
/// `h_blocktype`: revocation records.
pub const JBD2_REVOKE_BLOCK: u32 = 5;

/// `s_feature_compat`: v1 data checksums in commit blocks.
pub const JBD2_FEATURE_COMPAT_CHECKSUM: u32 = 0x1;
/// `s_feature_incompat`: revocation records.
pub const JBD2_FEATURE_INCOMPAT_REVOKE: u32 = 0x1;
/// `s_feature_incompat`: 64-bit block numbers.
pub const JBD2_FEATURE_INCOMPAT_64BIT: u32 = 0x2;
/// `s_feature_incompat`: asynchronous commits.
pub const JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT: u32 = 0x4;
/// `s_feature_incompat`: checksums v2.
pub const JBD2_FEATURE_INCOMPAT_CSUM_V2: u32 = 0x8;
/// `s_feature_incompat`: checksums v3.
pub const JBD2_FEATURE_INCOMPAT_CSUM_V3: u32 = 0x10;
/// `s_feature_incompat`: fast commit blocks may follow the journal.
pub const JBD2_FEATURE_INCOMPAT_FAST_COMMIT: u32 = 0x20;

/// Tag flag: the block's first four bytes were the magic number and were zeroed.
pub const JBD2_FLAG_ESCAPE: u32 = 1;
/// Tag flag: the tag has no UUID after it.
pub const JBD2_FLAG_SAME_UUID: u32 = 2;
/// Tag flag: the last tag of the descriptor block.
pub const JBD2_FLAG_LAST_TAG: u32 = 8;

/// Size of `journal_superblock_t` (the checksum covers it).
const JSB_SIZE: usize = 1024;
/// Offset of `s_checksum` in the journal superblock.
const JSB_CHECKSUM: usize = 0xFC;
/// Offset of `h_chksum[0]` in a commit block.
const COMMIT_CHKSUM: usize = 0x10;

/// Where the newest committed copy of a filesystem block lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalCopy {
    /// Physical block number (in the filesystem's device) of the copy inside the journal.
    pub journal_block: u64,
    /// The copy's first four bytes must be restored to the magic number.
    pub escaped: bool,
}

/// Committed journal blocks laid over the filesystem: fs block -> journal copy.
pub type Overlay = BTreeMap<u64, JournalCopy>;

/// What replay found, for callers and tests.
#[derive(Debug, Clone, Default)]
pub struct ReplayInfo {
    /// Number of committed transactions replayed.
    pub transactions: u32,
    /// The blocks laid over the filesystem.
    pub overlay: Overlay,
    /// The sequence number after the last committed transaction (the first one the log does
    /// not hold), for marking the journal empty once the blocks are written home.
    pub next_sequence: u32,
}

/// The parsed journal superblock (`journal_superblock_t`).
#[derive(Debug, Clone)]
struct JournalSuperblock {
    s_blocksize: u32,
    s_maxlen: u32,
    s_first: u32,
    s_sequence: u32,
    s_start: u32,
    s_feature_incompat: u32,
    s_num_fc_blks: u32,
    s_uuid: [u8; 16],
}

/// Access to the journal: its blocks in journal order, mapped through the journal inode.
pub trait JournalAccess {
    /// The physical block holding journal block `n`.
    fn map(&mut self, n: u32) -> Result<u64>;
    /// Reads physical block `phys` into `buf` (one block).
    fn read(&mut self, phys: u64, buf: &mut [u8]) -> Result<()>;
    /// Number of blocks the journal inode has.
    fn len_blocks(&self) -> u64;
}

fn jerr(what: impl std::fmt::Display) -> Error {
    Error::corrupt(format!("journal: {what}"))
}

fn parse_superblock(
    b: &[u8],
    fs_block_size: u32,
    journal_blocks: u64,
) -> Result<JournalSuperblock> {
    if be32(b, 0) != JBD2_MAGIC_NUMBER {
        return Err(jerr(format!("bad superblock magic {:#010x}", be32(b, 0))));
    }
    let blocktype = be32(b, 4);
    let v2 = match blocktype {
        JBD2_SUPERBLOCK_V1 => false,
        JBD2_SUPERBLOCK_V2 => true,
        t => return Err(jerr(format!("superblock has block type {t}"))),
    };
    let mut s_uuid = [0u8; 16];
    s_uuid.copy_from_slice(&b[0x30..0x40]);
    let sb = JournalSuperblock {
        s_blocksize: be32(b, 0xC),
        s_maxlen: be32(b, 0x10),
        s_first: be32(b, 0x14),
        s_sequence: be32(b, 0x18),
        s_start: be32(b, 0x1C),
        s_feature_incompat: if v2 { be32(b, 0x28) } else { 0 },
        s_num_fc_blks: if v2 { be32(b, 0x54) } else { 0 },
        s_uuid,
    };
    if sb.s_blocksize != fs_block_size {
        return Err(jerr(format!(
            "block size {} differs from the filesystem's {fs_block_size}",
            sb.s_blocksize
        )));
    }
    if u64::from(sb.s_maxlen) > journal_blocks || sb.s_first == 0 || sb.s_first >= sb.s_maxlen {
        return Err(jerr(format!(
            "s_maxlen {} / s_first {} do not fit the {journal_blocks}-block journal inode",
            sb.s_maxlen, sb.s_first
        )));
    }
    let known = JBD2_FEATURE_INCOMPAT_REVOKE
        | JBD2_FEATURE_INCOMPAT_64BIT
        | JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT
        | JBD2_FEATURE_INCOMPAT_CSUM_V2
        | JBD2_FEATURE_INCOMPAT_CSUM_V3
        | JBD2_FEATURE_INCOMPAT_FAST_COMMIT;
    let unknown = sb.s_feature_incompat & !known;
    if unknown != 0 {
        return Err(Error::unsupported(format!(
            "journal has unknown incompatible features {unknown:#x}; run e2fsck to recover it"
        )));
    }
    if sb.has(JBD2_FEATURE_INCOMPAT_CSUM_V2 | JBD2_FEATURE_INCOMPAT_CSUM_V3) {
        if b[0x50] != 4 {
            return Err(Error::unsupported(format!(
                "journal checksum type {} is not crc32c",
                b[0x50]
            )));
        }
        let mut copy = b[..JSB_SIZE].to_vec();
        put(&mut copy, JSB_CHECKSUM, [0; 4]);
        let want = crc32c_raw(!0, &copy);
        let stored = be32(b, JSB_CHECKSUM);
        if want != stored {
            return Err(jerr(format!(
                "superblock checksum {stored:#010x} does not match contents ({want:#010x})"
            )));
        }
    }
    Ok(sb)
}

impl JournalSuperblock {
    fn has(&self, bits: u32) -> bool {
        self.s_feature_incompat & bits != 0
    }
    fn csum_v2v3(&self) -> bool {
        self.has(JBD2_FEATURE_INCOMPAT_CSUM_V2 | JBD2_FEATURE_INCOMPAT_CSUM_V3)
    }
    /// jbd2_journal_tag_bytes().
    fn tag_bytes(&self) -> usize {
        if self.has(JBD2_FEATURE_INCOMPAT_CSUM_V3) {
            return 16;
        }
        let mut sz = 12;
        if self.has(JBD2_FEATURE_INCOMPAT_CSUM_V2) {
            sz += 2;
        }
        if self.has(JBD2_FEATURE_INCOMPAT_64BIT) {
            sz
        } else {
            sz - 4
        }
    }
}

/// One data block a descriptor announced.
#[derive(Debug, Clone, Copy)]
struct Tag {
    fs_block: u64,
    journal_pos: u32,
    flags: u32,
    checksum: u32,
}

/// Verifies a descriptor or revoke block's tail checksum (jbd2_journal_block_tail).
fn tail_ok(seed: u32, b: &[u8]) -> bool {
    let n = b.len();
    let mut copy = b.to_vec();
    put(&mut copy, n - 4, [0; 4]);
    crc32c_raw(seed, &copy) == be32(b, n - 4)
}

/// Replays the journal: returns the overlay of committed blocks over the filesystem.
/// `fs_blocks` is the filesystem's block count (every target must be below it).
pub fn replay(j: &mut dyn JournalAccess, fs_block_size: u32, fs_blocks: u64) -> Result<ReplayInfo> {
    let bs = fs_block_size as usize;
    let mut buf = vec![0u8; bs];
    let sb_phys = j.map(0)?;
    j.read(sb_phys, &mut buf)?;
    let sb = parse_superblock(&buf, fs_block_size, j.len_blocks())?;
    if sb.s_start == 0 {
        return Ok(ReplayInfo::default());
    }
    if sb.has(JBD2_FEATURE_INCOMPAT_FAST_COMMIT) && sb.s_num_fc_blks != 0 {
        return Err(Error::unsupported(
            "journal needs recovery and may hold fast commits, which vdisk does not replay; run e2fsck -fy",
        ));
    }
    let seed = crc32c_raw(!0, &sb.s_uuid);
    let first = sb.s_first;
    // The fast-commit area, when any, sits after the normal log (j_last = maxlen - fc blocks).
    let last = sb.s_maxlen.saturating_sub(sb.s_num_fc_blks);
    if sb.s_start < first || sb.s_start >= last {
        return Err(jerr(format!("s_start {} is outside the log", sb.s_start)));
    }
    let log_len = last - first;
    // Positions past the end of the log continue at its start (the kernel's wrap()).
    let wrap = |p: u64| -> u32 {
        let rel = p.saturating_sub(u64::from(first)) % u64::from(log_len);
        first + rel as u32
    };
    let tag_bytes = sb.tag_bytes();
    let csum = sb.csum_v2v3();
    let bit64 = sb.has(JBD2_FEATURE_INCOMPAT_64BIT);

    let mut pos = sb.s_start;
    let mut seq = sb.s_sequence;
    let mut visited: u64 = 0;
    let mut committed: Vec<(u32, Vec<Tag>)> = Vec::new();
    let mut revoked: HashMap<u64, u32> = HashMap::new();
    let mut pending_tags: Vec<Tag> = Vec::new();
    let mut pending_revokes: Vec<u64> = Vec::new();
    let mut need_check_commit_time = false;
    let mut last_commit_time: u64 = 0;

    // Pass SCAN (with REVOKE folded in): walk until a block that does not continue the log.
    // Each step advances at least one block; the log has log_len blocks.
    while visited < u64::from(log_len) {
        let phys = j.map(pos)?;
        j.read(phys, &mut buf)?;
        visited += 1;
        if be32(&buf, 0) != JBD2_MAGIC_NUMBER || be32(&buf, 8) != seq {
            break;
        }
        match be32(&buf, 4) {
            JBD2_DESCRIPTOR_BLOCK => {
                if csum && !tail_ok(seed, &buf) {
                    need_check_commit_time = true;
                }
                let end = if csum { bs - 4 } else { bs };
                let mut off = 12;
                let mut data_pos = wrap(u64::from(pos) + 1);
                let mut n: u32 = 0;
                while off + tag_bytes <= end {
                    let t = &buf[off..off + tag_bytes];
                    let (lo, flags, hi, checksum) = if sb.has(JBD2_FEATURE_INCOMPAT_CSUM_V3) {
                        (be32(t, 0), be32(t, 4), be32(t, 8), be32(t, 12))
                    } else {
                        let hi = if bit64 { be32(t, 8) } else { 0 };
                        (be32(t, 0), u32::from(be16(t, 6)), hi, u32::from(be16(t, 4)))
                    };
                    let fs_block = u64::from(lo) | if bit64 { u64::from(hi) << 32 } else { 0 };
                    pending_tags.push(Tag {
                        fs_block,
                        journal_pos: data_pos,
                        flags,
                        checksum,
                    });
                    n += 1;
                    data_pos = wrap(u64::from(data_pos) + 1);
                    off += tag_bytes;
                    if flags & JBD2_FLAG_SAME_UUID == 0 {
                        off += 16;
                    }
                    if flags & JBD2_FLAG_LAST_TAG != 0 {
                        break;
                    }
                }
                visited += u64::from(n);
                pos = wrap(u64::from(pos) + 1 + u64::from(n));
                continue;
            }
            JBD2_COMMIT_BLOCK => {
                let commit_time = u64::from(be32(&buf, 0x30)) << 32 | u64::from(be32(&buf, 0x34));
                let mut ok = true;
                if csum {
                    let mut copy = buf.clone();
                    put(&mut copy, COMMIT_CHKSUM, [0; 4]);
                    ok = crc32c_raw(seed, &copy) == be32(&buf, COMMIT_CHKSUM);
                }
                if need_check_commit_time || !ok {
                    // A stale block from an older use of the journal ends the log; a bad
                    // checksum in a transaction newer than the last good one is corruption.
                    if commit_time >= last_commit_time && need_check_commit_time {
                        return Err(jerr(format!("invalid checksum in transaction {seq}")));
                    }
                    break;
                }
                last_commit_time = commit_time;
                for b in pending_revokes.drain(..) {
                    let e = revoked.entry(b).or_insert(seq);
                    *e = (*e).max(seq);
                }
                committed.push((seq, std::mem::take(&mut pending_tags)));
                seq = seq.wrapping_add(1);
            }
            JBD2_REVOKE_BLOCK => {
                if csum && !tail_ok(seed, &buf) {
                    need_check_commit_time = true;
                }
                let r_count = be32(&buf, 12) as usize;
                let limit = if csum { bs - 4 } else { bs };
                if !(16..=limit).contains(&r_count) {
                    return Err(jerr(format!(
                        "revoke block r_count {r_count} is out of range"
                    )));
                }
                let rec = if bit64 { 8 } else { 4 };
                let mut off = 16;
                while off + rec <= r_count {
                    let b = if bit64 {
                        u64::from(be32(&buf, off)) << 32 | u64::from(be32(&buf, off + 4))
                    } else {
                        u64::from(be32(&buf, off))
                    };
                    pending_revokes.push(b);
                    off += rec;
                }
            }
            _ => break,
        }
        pos = wrap(u64::from(pos) + 1);
    }

    // Pass REPLAY: newest committed copy of each block wins unless revoked at or after it.
    let mut info = ReplayInfo {
        transactions: committed.len() as u32,
        overlay: Overlay::new(),
        next_sequence: seq,
    };
    for (tseq, tags) in committed {
        for t in tags {
            if revoked.get(&t.fs_block).is_some_and(|&r| r >= tseq) {
                continue;
            }
            if t.fs_block >= fs_blocks {
                return Err(jerr(format!(
                    "transaction {tseq} writes block {} outside the filesystem",
                    t.fs_block
                )));
            }
            let phys = j.map(t.journal_pos)?;
            if csum {
                j.read(phys, &mut buf)?;
                let c = crc32c_raw(crc32c_raw(seed, &tseq.to_be_bytes()), &buf);
                let (want, got) = if sb.has(JBD2_FEATURE_INCOMPAT_CSUM_V3) {
                    (c, t.checksum)
                } else {
                    (c & 0xFFFF, t.checksum & 0xFFFF)
                };
                if want != got {
                    return Err(jerr(format!(
                        "invalid checksum of the copy of block {} in transaction {tseq}",
                        t.fs_block
                    )));
                }
            }
            info.overlay.insert(
                t.fs_block,
                JournalCopy {
                    journal_block: phys,
                    escaped: t.flags & JBD2_FLAG_ESCAPE != 0,
                },
            );
        }
    }
    Ok(info)
}

/// Marks a journal superblock (`b`, one block) empty after its transactions were written home,
/// as jbd2's recovery does: `s_start` = 0 (nothing to replay) and `s_sequence` one past the
/// last sequence the log may hold, so a stale block left in the log can never pass for a new
/// transaction. Re-seals the csum v2/v3 checksum.
pub fn mark_empty(b: &mut [u8], next_sequence: u32) {
    put(b, 0x18, next_sequence.wrapping_add(1).to_be_bytes());
    put(b, 0x1C, [0; 4]);
    let incompat = if be32(b, 4) == JBD2_SUPERBLOCK_V2 {
        be32(b, 0x28)
    } else {
        0
    };
    if incompat & (JBD2_FEATURE_INCOMPAT_CSUM_V2 | JBD2_FEATURE_INCOMPAT_CSUM_V3) != 0
        && b.len() >= JSB_SIZE
    {
        let mut copy = b[..JSB_SIZE].to_vec();
        put(&mut copy, JSB_CHECKSUM, [0; 4]);
        let c = crc32c_raw(!0, &copy);
        put(b, JSB_CHECKSUM, c.to_be_bytes());
    }
}
