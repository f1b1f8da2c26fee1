//! The File Allocation Table: one in-memory copy of the active FAT, entries read and written
//! by cluster number, with the sectors changed since the last write-back remembered.

use std::collections::BTreeSet;

use vdisk_block::{Error, Result};

use crate::bpb::{FatType, Geometry};

/// A free cluster's entry.
pub const FREE: u32 = 0;

/// What a FAT entry says about the next cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The cluster is free.
    Free,
    /// The chain goes on at this cluster (which may still be out of range: check it).
    Cluster(u32),
    /// The chain ends here.
    End,
    /// The cluster is marked bad.
    Bad,
    /// A reserved value (or a cluster number past the end of the volume).
    Reserved(u32),
}

/// The active FAT in memory.
#[derive(Debug)]
pub struct Table {
    kind: FatType,
    /// The FAT's bytes, plus one byte of padding so a FAT12 pair read never runs off.
    bytes: Vec<u8>,
    /// Entries: cluster_count + 2.
    entries: u32,
    bps: u32,
    /// Sector indices (within one FAT) changed since [`Table::take_dirty`].
    dirty: BTreeSet<u32>,
    /// Entries changed since [`Table::begin`], with their old values.
    undo: Vec<(u32, u32)>,
}

impl Table {
    /// Wraps the bytes of one FAT copy for volume `g`.
    pub fn new(g: &Geometry, mut bytes: Vec<u8>) -> Table {
        bytes.push(0);
        Table {
            kind: g.fat_type,
            bytes,
            entries: g.cluster_count + 2,
            bps: g.bytes_per_sector,
            dirty: BTreeSet::new(),
            undo: Vec::new(),
        }
    }

    /// The raw entry of cluster `n` (28 bits on FAT32).
    pub fn raw(&self, n: u32) -> u32 {
        let n = n as usize;
        match self.kind {
            FatType::Fat12 => {
                let o = n + n / 2;
                let v = u32::from(u16::from_le_bytes([self.bytes[o], self.bytes[o + 1]]));
                if n & 1 == 1 {
                    v >> 4
                } else {
                    v & 0xFFF
                }
            }
            FatType::Fat16 => {
                let o = n * 2;
                u32::from(u16::from_le_bytes([self.bytes[o], self.bytes[o + 1]]))
            }
            FatType::Fat32 => {
                let o = n * 4;
                u32::from_le_bytes([
                    self.bytes[o],
                    self.bytes[o + 1],
                    self.bytes[o + 2],
                    self.bytes[o + 3],
                ]) & 0x0FFF_FFFF
            }
        }
    }

    /// What the entry of data cluster `n` says.
    pub fn next(&self, n: u32) -> Next {
        let v = self.raw(n);
        let (bad, eoc) = match self.kind {
            FatType::Fat12 => (0xFF7, 0xFF8),
            FatType::Fat16 => (0xFFF7, 0xFFF8),
            FatType::Fat32 => (0x0FFF_FFF7, 0x0FFF_FFF8),
        };
        if v == FREE {
            Next::Free
        } else if v >= eoc {
            Next::End
        } else if v == bad {
            Next::Bad
        } else if v >= 2 && v < self.entries {
            Next::Cluster(v)
        } else {
            Next::Reserved(v)
        }
    }

    /// The end-of-chain value this FAT writes.
    pub fn eoc(&self) -> u32 {
        match self.kind {
            FatType::Fat12 => 0xFFF,
            FatType::Fat16 => 0xFFFF,
            FatType::Fat32 => 0x0FFF_FFFF,
        }
    }

    /// Starts remembering changes, for [`Table::rollback`].
    pub fn begin(&mut self) {
        self.undo.clear();
    }

    /// Undoes every change since [`Table::begin`] (an operation that failed half-way).
    pub fn rollback(&mut self) {
        while let Some((n, v)) = self.undo.pop() {
            self.store(n, v);
        }
    }

    /// The FAT's bytes as read (without the padding byte).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.bytes.len() - 1]
    }

    /// How many bytes [`Table::bytes`] has.
    pub fn bytes_len(&self) -> usize {
        self.bytes.len() - 1
    }

    /// Sets the entry of cluster `n` to `v` (the top four bits of a FAT32 entry are kept).
    pub fn set(&mut self, n: u32, v: u32) {
        let old = self.raw(n);
        self.undo.push((n, old));
        self.store(n, v);
    }

    fn store(&mut self, n: u32, v: u32) {
        let i = n as usize;
        let (o, len) = match self.kind {
            FatType::Fat12 => {
                let o = i + i / 2;
                let old = u16::from_le_bytes([self.bytes[o], self.bytes[o + 1]]);
                let new = if i & 1 == 1 {
                    (old & 0x000F) | ((v as u16 & 0xFFF) << 4)
                } else {
                    (old & 0xF000) | (v as u16 & 0xFFF)
                };
                self.bytes[o..o + 2].copy_from_slice(&new.to_le_bytes());
                (o, 2)
            }
            FatType::Fat16 => {
                let o = i * 2;
                self.bytes[o..o + 2].copy_from_slice(&(v as u16).to_le_bytes());
                (o, 2)
            }
            FatType::Fat32 => {
                let o = i * 4;
                let old = u32::from_le_bytes([
                    self.bytes[o],
                    self.bytes[o + 1],
                    self.bytes[o + 2],
                    self.bytes[o + 3],
                ]);
                let new = (old & 0xF000_0000) | (v & 0x0FFF_FFFF);
                self.bytes[o..o + 4].copy_from_slice(&new.to_le_bytes());
                (o, 4)
            }
        };
        let bps = self.bps as usize;
        self.dirty.insert((o / bps) as u32);
        self.dirty.insert(((o + len - 1) / bps) as u32);
    }

    /// The sectors changed since the last call, each with its bytes.
    pub fn take_dirty(&mut self) -> Vec<(u32, &[u8])> {
        let d = std::mem::take(&mut self.dirty);
        let bps = self.bps as usize;
        let fat_len = self.bytes.len() - 1;
        d.into_iter()
            .filter_map(|s| {
                let a = s as usize * bps;
                (a < fat_len).then(|| (s, &self.bytes[a..(a + bps).min(fat_len)]))
            })
            .collect()
    }

    /// Free data clusters, counted.
    pub fn count_free(&self) -> u32 {
        (2..self.entries)
            .filter(|&c| self.next(c) == Next::Free)
            .count() as u32
    }

    /// The first free cluster at or after `from`, wrapping around once.
    pub fn find_free(&self, from: u32) -> Option<u32> {
        let from = if from < 2 || from >= self.entries {
            2
        } else {
            from
        };
        (from..self.entries)
            .chain(2..from)
            .find(|&c| self.next(c) == Next::Free)
    }

    /// The chain starting at `first`, at most `limit` clusters long: an error names a chain
    /// that reaches a free, bad or out-of-range entry, or loops (is longer than the volume).
    /// `Ok((clusters, complete))`: `complete` is false when `limit` stopped the walk.
    pub fn chain(&self, first: u32, limit: u32) -> Result<(Vec<u32>, bool)> {
        let mut v = Vec::new();
        let mut c = first;
        loop {
            if c < 2 || c >= self.entries {
                return Err(Error::corrupt(format!(
                    "FAT: cluster chain from {first} reaches cluster {c}, outside the volume"
                )));
            }
            if v.len() as u32 >= limit {
                Self::no_repeats(first, &v)?;
                return Ok((v, false));
            }
            if v.len() as u32 >= self.entries {
                return Err(Error::corrupt(format!(
                    "FAT: cluster chain from {first} loops"
                )));
            }
            v.push(c);
            match self.next(c) {
                // A chain that ends cannot repeat a cluster (it would never end).
                Next::End => return Ok((v, true)),
                Next::Cluster(n) => c = n,
                Next::Free => {
                    return Err(Error::corrupt(format!(
                        "FAT: cluster chain from {first} runs into free cluster {c}"
                    )))
                }
                Next::Bad => {
                    return Err(Error::corrupt(format!(
                        "FAT: cluster chain from {first} runs into bad cluster {c}"
                    )))
                }
                Next::Reserved(x) => {
                    return Err(Error::corrupt(format!(
                        "FAT: cluster {c} of the chain from {first} points to {x:#x}, outside the volume"
                    )))
                }
            }
        }
    }

    /// A chain cut short by a limit can loop inside the part walked: a cluster that comes
    /// twice is a loop.
    fn no_repeats(first: u32, v: &[u32]) -> Result<()> {
        if v.len() < 2 {
            return Ok(());
        }
        let mut s = v.to_vec();
        s.sort_unstable();
        if s.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::corrupt(format!(
                "FAT: cluster chain from {first} loops"
            )));
        }
        Ok(())
    }

    /// Number of entries (cluster_count + 2).
    pub fn entries(&self) -> u32 {
        self.entries
    }
}
