//! The metadata log: a circular buffer of 4 KiB sectors holding entries, each a header, its
//! descriptors and the data sectors they describe. Metadata changes (BAT entries) are first
//! written here, then in place, so a crash in between is repaired by replaying the log.
//!
//! ```text
//!   entry: [header 64 | descriptors 32 each ...][data sector][data sector]...
//!           "loge"       "desc" -> one data sector at file_offset (4 KiB)
//!                        "zero" -> zero_length bytes of zeros at file_offset
//! ```
//!
//! [`find_active`] searches a log for its active sequence (consecutive valid entries with
//! consecutive sequence numbers; of several, the one that ends highest) and returns the writes
//! to replay, in order. [`entry_bytes`] builds one entry for the writer.

use vdisk_block::bytes::{le32, le64, put};
use vdisk_block::{Error, Result};

use crate::guid::Guid;
use crate::header::checksum;

/// Log sector size.
pub const SECTOR: usize = 4096;
/// "loge".
pub const ENTRY_SIGNATURE: u32 = 0x6567_6f6c;
/// "desc".
pub const DESC_SIGNATURE: u32 = 0x6373_6564;
/// "zero".
pub const ZERO_SIGNATURE: u32 = 0x6f72_657a;
/// "data".
pub const DATA_SIGNATURE: u32 = 0x6174_6164;
/// The longest log we load to replay: real logs are 1 MiB (Hyper-V and qemu's default); a
/// header claiming gigabytes is more likely hostile than a disk that needs it.
pub const MAX_REPLAY_LOG: u64 = 64 << 20;

/// One write the log asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogWrite {
    /// 4 KiB of data at `offset`.
    Data {
        /// Where in the file.
        offset: u64,
        /// The sector's bytes.
        data: Vec<u8>,
    },
    /// `len` bytes of zeros at `offset`.
    Zero {
        /// Where in the file.
        offset: u64,
        /// How many bytes (a multiple of 4 KiB).
        len: u64,
    },
}

impl LogWrite {
    /// The file range written.
    pub fn range(&self) -> (u64, u64) {
        match self {
            LogWrite::Data { offset, data } => (*offset, data.len() as u64),
            LogWrite::Zero { offset, len } => (*offset, *len),
        }
    }
}

/// The active sequence of a log, ready to replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// The writes, in the order they must be applied.
    pub writes: Vec<LogWrite>,
    /// The largest "FlushedFileOffset": the file was at least this long when the entries
    /// were written, so a shorter file has been truncated.
    pub flushed_file_offset: u64,
    /// The largest "LastFileOffset": the file must be extended to it.
    pub last_file_offset: u64,
    /// The sequence number of the last entry.
    pub last_sequence: u64,
}

/// The number of descriptor sectors for `n` descriptors (the first holds the 64-byte header
/// and 126 descriptors, the others 128 each).
pub fn desc_sectors(n: u64) -> u64 {
    (n + 2).div_ceil(128)
}

struct Parsed {
    len: u64,
    seq: u64,
    tail: u64,
    flushed: u64,
    last: u64,
    writes: Vec<LogWrite>,
}

/// Reads `len` bytes of the circular log `log` from `pos`, wrapping at its end.
fn wrapped(log: &[u8], pos: u64, len: u64) -> Vec<u8> {
    let n = log.len() as u64;
    let mut out = Vec::with_capacity(len as usize);
    let mut p = pos % n;
    let mut left = len;
    while left > 0 {
        let k = (n - p).min(left);
        out.extend_from_slice(&log[p as usize..(p + k) as usize]);
        left -= k;
        p = 0;
    }
    out
}

/// Parses the entry at `pos`, or `None` when there is no valid one. `budget` bounds the bytes
/// checksummed over the whole search.
fn parse_entry(log: &[u8], pos: u64, guid: Guid, budget: &mut u64) -> Result<Option<Parsed>> {
    let n = log.len() as u64;
    let h = wrapped(log, pos, SECTOR as u64);
    if le32(&h, 0) != ENTRY_SIGNATURE {
        return Ok(None);
    }
    let len = u64::from(le32(&h, 8));
    let seq = le64(&h, 16);
    let count = u64::from(le32(&h, 24));
    if len == 0
        || len % SECTOR as u64 != 0
        || len > n
        || seq == 0
        || Guid::from_slice(&h, 32) != guid
    {
        return Ok(None);
    }
    let dsec = desc_sectors(count);
    let sectors = len / SECTOR as u64;
    if dsec > sectors {
        return Ok(None);
    }
    if *budget < len {
        return Err(Error::corrupt(
            "the VHDX log holds too many damaged entries to search",
        ));
    }
    *budget -= len;
    let e = wrapped(log, pos, len);
    if checksum(&e, 4) != le32(&e, 4) {
        return Ok(None);
    }
    let mut writes = Vec::with_capacity(count as usize);
    let mut data_at = dsec;
    for i in 0..count as usize {
        let d = 64 + 32 * i;
        let sig = le32(&e, d);
        let file_offset = le64(&e, d + 16);
        if le64(&e, d + 24) != seq || file_offset % SECTOR as u64 != 0 {
            return Ok(None);
        }
        match sig {
            ZERO_SIGNATURE => {
                let zl = le64(&e, d + 8);
                if zl % SECTOR as u64 != 0 {
                    return Ok(None);
                }
                writes.push(LogWrite::Zero {
                    offset: file_offset,
                    len: zl,
                });
            }
            DESC_SIGNATURE => {
                if data_at >= sectors {
                    return Ok(None);
                }
                let s = &e[(data_at * SECTOR as u64) as usize..][..SECTOR];
                data_at += 1;
                let sseq = (u64::from(le32(s, 4)) << 32) | u64::from(le32(s, SECTOR - 4));
                if le32(s, 0) != DATA_SIGNATURE || sseq != seq {
                    return Ok(None);
                }
                let mut data = vec![0u8; SECTOR];
                data[..8].copy_from_slice(&e[d + 8..d + 16]);
                data[8..SECTOR - 4].copy_from_slice(&s[8..SECTOR - 4]);
                data[SECTOR - 4..].copy_from_slice(&e[d + 4..d + 8]);
                writes.push(LogWrite::Data {
                    offset: file_offset,
                    data,
                });
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(Parsed {
        len,
        seq,
        tail: u64::from(le32(&h, 12)),
        flushed: le64(&h, 48),
        last: le64(&h, 56),
        writes,
    }))
}

/// Searches the log bytes `log` (the whole circular buffer) for the active sequence of
/// entries carrying `guid`. `None`: nothing to replay.
pub fn find_active(log: &[u8], guid: Guid) -> Result<Option<Replay>> {
    let n = log.len() as u64;
    if n == 0 || n % SECTOR as u64 != 0 {
        return Ok(None);
    }
    let mut budget = 8 * n + (1 << 20);
    // (positions of the entries, parsed entries) of the best sequence so far.
    let mut best: Option<(Vec<u64>, Vec<Parsed>)> = None;
    let mut pos = 0u64;
    while pos < n {
        let Some(first) = parse_entry(log, pos, guid, &mut budget)? else {
            pos += SECTOR as u64;
            continue;
        };
        let start = pos;
        let mut at = vec![pos];
        let mut total = first.len;
        let mut seq = vec![first];
        // Follow the sequence; it may wrap, but never covers more than the whole log.
        loop {
            let last = seq.last().map_or(0, |p| p.seq);
            let next = (start + total) % n;
            if total >= n {
                break;
            }
            match parse_entry(log, next, guid, &mut budget)? {
                Some(p) if p.seq == last.wrapping_add(1) && total + p.len <= n => {
                    total += p.len;
                    at.push(next);
                    seq.push(p);
                }
                _ => break,
            }
        }
        let end_seq = seq.last().map_or(0, |p| p.seq);
        if best
            .as_ref()
            .is_none_or(|(_, b)| end_seq > b.last().map_or(0, |p| p.seq))
        {
            best = Some((at, seq));
        }
        pos = start + total;
    }
    let Some((at, entries)) = best else {
        return Ok(None);
    };
    // Replay from the entry the head's Tail names, when it is one of the sequence; otherwise
    // (qemu's writer does not keep Tail exact) the whole sequence.
    let tail = entries.last().map_or(0, |p| p.tail);
    let from = at.iter().position(|&p| p == tail).unwrap_or(0);
    let mut r = Replay::default();
    for p in entries.into_iter().skip(from) {
        r.flushed_file_offset = r.flushed_file_offset.max(p.flushed);
        r.last_file_offset = r.last_file_offset.max(p.last);
        r.last_sequence = p.seq;
        r.writes.extend(p.writes);
    }
    Ok(Some(r))
}

/// The most data sectors one entry may carry in a log of `log_len` bytes (one sector of the
/// circular buffer stays open).
pub fn max_data_sectors(log_len: u64) -> u64 {
    let total = (log_len / SECTOR as u64).saturating_sub(1);
    let mut n = total.saturating_sub(1);
    while n > 0 && desc_sectors(n) + n > total {
        n -= 1;
    }
    n
}

/// One log entry writing the 4 KiB `sectors` (file offset, bytes), checksummed.
pub fn entry_bytes(
    seq: u64,
    guid: Guid,
    tail: u32,
    flushed_file_offset: u64,
    last_file_offset: u64,
    sectors: &[(u64, &[u8])],
) -> Vec<u8> {
    let n = sectors.len() as u64;
    let dsec = desc_sectors(n);
    let len = (dsec + n) * SECTOR as u64;
    let mut e = vec![0u8; len as usize];
    put(&mut e, 0, ENTRY_SIGNATURE.to_le_bytes());
    put(&mut e, 8, (len as u32).to_le_bytes());
    put(&mut e, 12, tail.to_le_bytes());
    put(&mut e, 16, seq.to_le_bytes());
    put(&mut e, 24, (n as u32).to_le_bytes());
    put(&mut e, 32, guid.0);
    put(&mut e, 48, flushed_file_offset.to_le_bytes());
    put(&mut e, 56, last_file_offset.to_le_bytes());
    for (i, (off, data)) in sectors.iter().enumerate() {
        let d = 64 + 32 * i;
        put(&mut e, d, DESC_SIGNATURE.to_le_bytes());
        e[d + 4..d + 8].copy_from_slice(&data[SECTOR - 4..SECTOR]);
        e[d + 8..d + 16].copy_from_slice(&data[..8]);
        put(&mut e, d + 16, off.to_le_bytes());
        put(&mut e, d + 24, seq.to_le_bytes());
        let s = ((dsec + i as u64) * SECTOR as u64) as usize;
        put(&mut e, s, DATA_SIGNATURE.to_le_bytes());
        put(&mut e, s + 4, ((seq >> 32) as u32).to_le_bytes());
        e[s + 8..s + SECTOR - 4].copy_from_slice(&data[8..SECTOR - 4]);
        put(&mut e, s + SECTOR - 4, (seq as u32).to_le_bytes());
    }
    crate::header::seal(&mut e, 4);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_roundtrip_and_the_latest_sequence_wins() {
        let g = Guid([5; 16]);
        let a = vec![0xaa; SECTOR];
        let b: Vec<u8> = (0..SECTOR).map(|i| i as u8).collect();
        let mut log = vec![0u8; 1 << 20];
        let e1 = entry_bytes(7, g, 0, 1 << 30, 1 << 30, &[(0x20_0000, &a)]);
        let e2 = entry_bytes(
            8,
            g,
            0,
            1 << 30,
            1 << 30,
            &[(0x20_1000, &b), (0x20_0000, &b)],
        );
        log[..e1.len()].copy_from_slice(&e1);
        log[e1.len()..e1.len() + e2.len()].copy_from_slice(&e2);
        // An older, unrelated entry further on.
        let old = entry_bytes(3, g, 0, 0, 0, &[(0x30_0000, &a)]);
        log[0x8_0000..0x8_0000 + old.len()].copy_from_slice(&old);
        let r = find_active(&log, g).unwrap().unwrap();
        assert_eq!(r.last_sequence, 8);
        assert_eq!(r.writes.len(), 3);
        assert_eq!(
            r.writes[2],
            LogWrite::Data {
                offset: 0x20_0000,
                data: b.clone()
            }
        );
        // Another GUID: nothing to replay. A damaged entry ends the sequence.
        assert_eq!(find_active(&log, Guid([6; 16])).unwrap(), None);
        log[e1.len() + 100] ^= 1;
        let r = find_active(&log, g).unwrap().unwrap();
        assert_eq!(r.last_sequence, 7);
        assert!(max_data_sectors(1 << 20) > 200);
    }
}
