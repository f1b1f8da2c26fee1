//! Internal snapshots, write side: create, apply (goto) and delete, as qemu's
//! block/qcow2-snapshot.c does them.
//!
//! A snapshot is a copy of the active L1 table; every L2 table and data cluster it reaches
//! gains one reference, so that copy-on-write (OFLAG_COPIED clear) keeps it intact:
//!
//! ```text
//!   create:  active L1 ──copy──> snapshot L1      refcounts of L2s and data +1,
//!            snapshot table += entry               OFLAG_COPIED cleared where shared
//!   apply:   active L1 := snapshot L1              refcounts: +1 for the snapshot's tree,
//!                                                  -1 for the old active tree
//!   delete:  snapshot table -= entry               refcounts of its tree -1, its L1 freed,
//!                                                  OFLAG_COPIED set again where unshared
//! ```
//!
//! Crash order follows qemu: references are raised and on disk before the snapshot table
//! names the new L1; the snapshot table stops naming a deleted snapshot before its clusters
//! are released. A crash in between leaks clusters, never loses data.

use std::time::{SystemTime, UNIX_EPOCH};

use vdisk_block::{BlockDevice, Error, Result};

use crate::alloc::{encode_table, Meta};
use crate::header::{Header, MAX_SNAPSHOTS};
use crate::l2::{
    decode_table, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO,
};
use crate::snapshot::{MAX_SNAPSHOT_EXTRA_DATA, MAX_SNAPSHOT_TABLE_BYTES};
use crate::util::{be16, be32, be64, read_vec};
use crate::Qcow2;

/// The fixed part of a snapshot table entry.
const ENTRY_HEADER: usize = 40;
/// The extra data qemu writes: vm_state_size_large, disk_size, icount.
const EXTRA_DATA: usize = 24;

/// One snapshot table entry as stored, with extra data this implementation does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEntry {
    pub l1_table_offset: u64,
    pub l1_size: u32,
    pub id: Vec<u8>,
    pub name: Vec<u8>,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u64,
    pub disk_size: u64,
    /// `u64::MAX` when absent.
    pub icount: u64,
    /// Extra data past the 24 bytes qemu knows.
    pub unknown_extra: Vec<u8>,
}

/// Reads the raw snapshot table; also returns its size in bytes as qemu counts it (the end of
/// the last entry's name, not rounded).
pub(crate) fn read_raw_table(file: &dyn BlockDevice, h: &Header) -> Result<(Vec<RawEntry>, u64)> {
    let mut out = Vec::new();
    let mut at = h.snapshots_offset;
    let mut end = h.snapshots_offset;
    for i in 0..h.nb_snapshots {
        at = at.next_multiple_of(8);
        let head = read_vec(file, at, ENTRY_HEADER as u64, "snapshot table")?;
        let id_len = usize::from(be16(&head, 12));
        let name_len = usize::from(be16(&head, 14));
        let extra_len = be32(&head, 36);
        if extra_len > MAX_SNAPSHOT_EXTRA_DATA {
            return Err(Error::corrupt_at(
                at,
                format!("snapshot {i} has too much extra data"),
            ));
        }
        let extra_len = extra_len as usize;
        let var = read_vec(
            file,
            at + ENTRY_HEADER as u64,
            (extra_len + id_len + name_len) as u64,
            "snapshot table",
        )?;
        let extra = &var[..extra_len];
        end = at + (ENTRY_HEADER + extra_len + id_len + name_len) as u64;
        if end - h.snapshots_offset > MAX_SNAPSHOT_TABLE_BYTES {
            return Err(Error::corrupt_at(
                h.snapshots_offset,
                "snapshot table is too large",
            ));
        }
        out.push(RawEntry {
            l1_table_offset: be64(&head, 0),
            l1_size: be32(&head, 8),
            id: var[extra_len..extra_len + id_len].to_vec(),
            name: var[extra_len + id_len..].to_vec(),
            date_sec: be32(&head, 16),
            date_nsec: be32(&head, 20),
            vm_clock_nsec: be64(&head, 24),
            vm_state_size: if extra_len >= 8 {
                be64(extra, 0)
            } else {
                u64::from(be32(&head, 32))
            },
            disk_size: if extra_len >= 16 {
                be64(extra, 8)
            } else {
                h.size
            },
            icount: if extra_len >= 24 {
                be64(extra, 16)
            } else {
                u64::MAX
            },
            unknown_extra: extra.get(EXTRA_DATA..).unwrap_or_default().to_vec(),
        });
        at = end;
    }
    Ok((out, end - h.snapshots_offset))
}

/// The size in bytes of the snapshot table as qemu counts it (0 without snapshots).
pub(crate) fn table_size(file: &dyn BlockDevice, h: &Header) -> Result<u64> {
    Ok(read_raw_table(file, h)?.1)
}

/// The table as qemu writes it: every entry with (at least) the 24 bytes of known extra data.
fn encode_table_entries(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.resize(out.len().next_multiple_of(8), 0);
        let extra_len = EXTRA_DATA + e.unknown_extra.len();
        let mut h = [0u8; ENTRY_HEADER];
        h[0..8].copy_from_slice(&e.l1_table_offset.to_be_bytes());
        h[8..12].copy_from_slice(&e.l1_size.to_be_bytes());
        h[12..14].copy_from_slice(&(e.id.len() as u16).to_be_bytes());
        h[14..16].copy_from_slice(&(e.name.len() as u16).to_be_bytes());
        h[16..20].copy_from_slice(&e.date_sec.to_be_bytes());
        h[20..24].copy_from_slice(&e.date_nsec.to_be_bytes());
        h[24..32].copy_from_slice(&e.vm_clock_nsec.to_be_bytes());
        // "If it doesn't fit in 32 bit, older implementations should treat it as a disk-only
        // snapshot rather than truncate the VM state."
        let small = u32::try_from(e.vm_state_size).unwrap_or(0);
        h[32..36].copy_from_slice(&small.to_be_bytes());
        h[36..40].copy_from_slice(&(extra_len as u32).to_be_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&e.vm_state_size.to_be_bytes());
        out.extend_from_slice(&e.disk_size.to_be_bytes());
        out.extend_from_slice(&e.icount.to_be_bytes());
        out.extend_from_slice(&e.unknown_extra);
        out.extend_from_slice(&e.id);
        out.extend_from_slice(&e.name);
    }
    out
}

/// What a new snapshot records besides the disk state.
#[derive(Debug, Clone, Default)]
pub struct SnapshotInfo {
    /// The name ("tag").
    pub name: String,
    /// Seconds and nanoseconds since the Epoch; `None` takes the current time.
    pub date: Option<(u32, u32)>,
    /// Guest run time in nanoseconds (0 for disk-only snapshots).
    pub vm_clock_nsec: u64,
    /// Record/replay instruction count; `None` when not recorded.
    pub icount: Option<u64>,
}

impl Qcow2 {
    /// Finds a snapshot as `qemu-img snapshot -a/-d` does: by ID first, then by name.
    fn snapshot_index(&self, id_or_name: &str) -> Option<usize> {
        self.snapshots
            .iter()
            .position(|s| s.id_str == id_or_name)
            .or_else(|| self.snapshots.iter().position(|s| s.name == id_or_name))
    }

    /// Writes a new snapshot table holding `entries`, switches the header to it and frees the
    /// old one (`qcow2_write_snapshots`).
    fn write_snapshot_table(&mut self, entries: &[RawEntry]) -> Result<()> {
        let (_, old_size) = read_raw_table(&*self.file, &self.header)?;
        let old_offset = self.header.snapshots_offset;
        let bytes = encode_table_entries(entries);
        if bytes.len() as u64 > MAX_SNAPSHOT_TABLE_BYTES {
            return Err(Error::unsupported("the snapshot table would be too large"));
        }
        let cs = self.geom.cluster_size();
        let mut m = self.lock_meta()?;
        let offset = if bytes.is_empty() {
            0
        } else {
            let off = self.alloc_clusters(&mut m, (bytes.len() as u64).div_ceil(cs))?;
            let file = &self.rw()?.file;
            file.write_at(&bytes, off)?;
            off
        };
        // The table and its refcounts are stable before the header names it.
        self.flush_meta(&mut m)?;
        let mut fields = (entries.len() as u32).to_be_bytes().to_vec();
        fields.extend_from_slice(&offset.to_be_bytes());
        let file = &self.rw()?.file;
        file.write_at(&fields, 60)?;
        file.flush()?;
        if old_size > 0 {
            self.update_refcount(&mut m, old_offset, old_size, -1)?;
        }
        self.flush_meta(&mut m)?;
        drop(m);
        self.header.nb_snapshots = entries.len() as u32;
        self.header.snapshots_offset = offset;
        self.snapshots = crate::snapshot::read_table(&*self.file, &self.header, false)?;
        self.lock_meta()?.metadata = None;
        Ok(())
    }

    /// Adds `delta` to the refcount of every L2 table and cluster the L1 table `l1` reaches
    /// (the refcount half of `qcow2_update_snapshot_refcount`).
    fn update_tree_refcounts(&self, m: &mut Meta, l1: &[u64], delta: i64) -> Result<()> {
        let g = self.geom;
        let cs = g.cluster_size();
        let words = g.words_per_entry();
        for &l1e in l1 {
            let l2 = l1e & L1E_OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            if l2 & (cs - 1) != 0 {
                return Err(Error::corrupt(format!(
                    "L2 table offset {l2:#x} is not cluster aligned"
                )));
            }
            let table = self.l2_table(l2)?;
            for i in 0..(1usize << g.l2_bits) {
                let e = table[i * words];
                if e & OFLAG_COMPRESSED != 0 {
                    let offset = e & g.coffset_mask;
                    let sectors = ((e >> g.csize_shift) & g.csize_mask) + 1;
                    let size = sectors * 512 - (offset % 512);
                    self.update_refcount(m, offset, size, delta)?;
                } else if let Some(host) = self.std_host(e) {
                    if host & (cs - 1) != 0 {
                        return Err(Error::corrupt(format!(
                            "cluster allocation offset {host:#x} unaligned (L2 offset: {l2:#x}, L2 index: {i:#x})"
                        )));
                    }
                    if !g.external_data {
                        self.update_refcount(m, host, cs, delta)?;
                    }
                }
            }
            self.update_refcount(m, l2, cs, delta)?;
        }
        Ok(())
    }

    /// The host cluster of a standard entry that has one (zero clusters with storage too).
    fn std_host(&self, e: u64) -> Option<u64> {
        if e & OFLAG_COMPRESSED != 0 {
            return None;
        }
        if e & OFLAG_ZERO != 0 && !self.geom.extended && e & L2E_OFFSET_MASK == 0 {
            return None;
        }
        let host = e & L2E_OFFSET_MASK;
        (host != 0 || (self.geom.external_data && e & OFLAG_COPIED != 0)).then_some(host)
    }

    /// Sets OFLAG_COPIED on the active L1 and L2 entries exactly where the refcount is 1
    /// (`qcow2_update_snapshot_refcount` with addend 0). Changes stay in the caches until
    /// the next metadata flush.
    pub(crate) fn fix_copied_flags(&self, m: &mut Meta) -> Result<()> {
        let g = self.geom;
        let cs = g.cluster_size();
        let words = g.words_per_entry();
        let l1: Vec<u64> = self
            .view
            .l1
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (i, &l1e) in l1.iter().enumerate() {
            let l2 = l1e & L1E_OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            let table = self.l2_table(l2)?;
            for j in 0..(1usize << g.l2_bits) {
                let e = table[j * words];
                let refcount = if e & OFLAG_COMPRESSED != 0 {
                    // "compressed clusters are never modified"
                    2
                } else if let Some(host) = self.std_host(e) {
                    if g.external_data {
                        1
                    } else {
                        self.refcount(m, host / cs)?
                    }
                } else {
                    0
                };
                let ne = if refcount == 1 {
                    e | OFLAG_COPIED
                } else {
                    e & !OFLAG_COPIED
                };
                if ne != e {
                    let bm = if g.extended { table[j * words + 1] } else { 0 };
                    self.set_l2_entry(m, l2, j as u64, ne, bm)?;
                }
            }
            let refcount = self.refcount(m, l2 / cs)?;
            let ne = if refcount == 1 {
                l1e | OFLAG_COPIED
            } else {
                l1e & !OFLAG_COPIED
            };
            if ne != l1e {
                self.set_l1_entry(m, i as u64, ne)?;
            }
        }
        Ok(())
    }

    /// Creates an internal snapshot of the current disk state (`qemu-img snapshot -c`).
    pub fn create_snapshot(&mut self, info: &SnapshotInfo) -> Result<()> {
        if self.needs_data_file() {
            return Err(Error::unsupported(
                "internal snapshots are not supported with an external data file",
            ));
        }
        if self.snapshots.len() as u64 >= u64::from(MAX_SNAPSHOTS) {
            return Err(Error::unsupported("too many snapshots"));
        }
        let (mut entries, _) = read_raw_table(&*self.file, &self.header)?;
        // "find_new_snapshot_id": one more than the largest numeric ID.
        let id = entries
            .iter()
            .map(|e| leading_number(&e.id))
            .max()
            .unwrap_or(0)
            + 1;
        let (date_sec, date_nsec) = info.date.unwrap_or_else(now);
        let cs = self.geom.cluster_size();
        let l1: Vec<u64> = self
            .view
            .l1
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let l1_size = l1.len() as u32;
        let mut m = self.lock_meta()?;
        // Active tables changed in memory must be on disk before we copy and count them.
        self.flush_meta(&mut m)?;
        let l1_offset = if l1.is_empty() {
            0
        } else {
            let off = self.alloc_clusters(&mut m, (l1.len() as u64 * 8).div_ceil(cs))?;
            self.rw()?.file.write_at(&encode_table(&l1), off)?;
            off
        };
        self.update_tree_refcounts(&mut m, &l1, 1)?;
        self.fix_copied_flags(&mut m)?;
        self.flush_meta(&mut m)?;
        drop(m);
        entries.push(RawEntry {
            l1_table_offset: l1_offset,
            l1_size,
            id: id.to_string().into_bytes(),
            name: info.name.as_bytes().to_vec(),
            date_sec,
            date_nsec,
            vm_clock_nsec: info.vm_clock_nsec,
            vm_state_size: 0,
            disk_size: self.view.size,
            icount: info.icount.unwrap_or(u64::MAX),
            unknown_extra: Vec::new(),
        });
        self.write_snapshot_table(&entries)
    }

    /// Deletes an internal snapshot by ID or name (`qemu-img snapshot -d`).
    pub fn delete_snapshot(&mut self, id_or_name: &str) -> Result<()> {
        let index = self
            .snapshot_index(id_or_name)
            .ok_or_else(|| Error::invalid(format!("snapshot '{id_or_name}' not found")))?;
        let (mut entries, _) = read_raw_table(&*self.file, &self.header)?;
        let sn = entries.remove(index);
        // The table stops naming the snapshot first: a crash from here on only leaks.
        self.write_snapshot_table(&entries)?;
        let l1 = self.read_l1(sn.l1_table_offset, sn.l1_size)?;
        let cs = self.geom.cluster_size();
        let mut m = self.lock_meta()?;
        self.update_tree_refcounts(&mut m, &l1, -1)?;
        if sn.l1_size > 0 {
            self.update_refcount(
                &mut m,
                sn.l1_table_offset,
                (u64::from(sn.l1_size) * 8).next_multiple_of(cs),
                -1,
            )?;
        }
        self.invalidate_caches_clean(&mut m)?;
        self.fix_copied_flags(&mut m)?;
        self.flush_meta(&mut m)
    }

    /// Makes the active state that of a snapshot (`qemu-img snapshot -a`): the disk size
    /// and the L1 table become the snapshot's.
    pub fn apply_snapshot(&mut self, id_or_name: &str) -> Result<()> {
        let index = self
            .snapshot_index(id_or_name)
            .ok_or_else(|| Error::invalid(format!("snapshot '{id_or_name}' not found")))?;
        let sn = self.snapshots[index].clone();
        if sn.disk_size != self.view.size {
            self.resize_image(sn.disk_size, vdisk_block::Preallocation::Off, true)?;
        }
        self.grow_l1(u64::from(sn.l1_size))?;
        let sn_l1 = self.read_l1(sn.l1_table_offset, sn.l1_size)?;
        let cur_len = self.view.l1.read().unwrap_or_else(|e| e.into_inner()).len();
        let mut new_l1 = sn_l1.clone();
        new_l1.resize(cur_len, 0);
        let mut m = self.lock_meta()?;
        self.flush_meta(&mut m)?;
        // The snapshot's tree gains its references before the active L1 points to it.
        self.update_tree_refcounts(&mut m, &sn_l1, 1)?;
        self.flush_meta(&mut m)?;
        let old_l1: Vec<u64> = self
            .view
            .l1
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let file = &self.rw()?.file;
        file.write_at(&encode_table(&new_l1), self.view.l1_table_offset)?;
        file.flush()?;
        *self.view.l1.write().unwrap_or_else(|e| e.into_inner()) = new_l1;
        m.metadata = None;
        self.update_tree_refcounts(&mut m, &old_l1, -1)?;
        self.invalidate_caches_clean(&mut m)?;
        self.fix_copied_flags(&mut m)?;
        self.flush_meta(&mut m)
    }

    /// Flushes, then forgets cached tables (freed ones may be reused for anything).
    fn invalidate_caches_clean(&self, m: &mut Meta) -> Result<()> {
        self.flush_meta(m)?;
        self.invalidate_caches();
        Ok(())
    }

    /// Reads an L1 table of `size` entries at `offset`.
    pub(crate) fn read_l1(&self, offset: u64, size: u32) -> Result<Vec<u64>> {
        if size == 0 {
            return Ok(Vec::new());
        }
        Ok(decode_table(&read_vec(
            &*self.file,
            offset,
            u64::from(size) * 8,
            "snapshot L1 table",
        )?))
    }
}

/// The number at the start of an ID, as `strtoul` reads it (0 when there is none).
fn leading_number(id: &[u8]) -> u64 {
    id.iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |acc, &b| {
            acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
        })
}

/// The current time as (seconds, nanoseconds), at microsecond precision as qemu takes it.
fn now() -> (u32, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as u32, d.subsec_micros() * 1000)
}
