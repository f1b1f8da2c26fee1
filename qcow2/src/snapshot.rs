//! The snapshot table ("Snapshots" in qcow2.rst): "A directory of all snapshots is stored in the
//! snapshot table, a contiguous area in the image file, whose starting offset and length are
//! given by the header fields snapshots_offset and nb_snapshots."

use vdisk_block::{BlockDevice, Error, Result};

use crate::header::{Header, MAX_L1_BYTES};
use crate::util::{be16, be32, be64, in_file, read_vec, table_in_file};

/// The fixed part of a snapshot table entry (bytes 0-39).
const ENTRY_HEADER: u64 = 40;

/// QEMU refuses more extra data than this per entry (QCOW_MAX_SNAPSHOT_EXTRA_DATA).
pub const MAX_SNAPSHOT_EXTRA_DATA: u32 = 1024;

/// QEMU's bound on the whole table (QCOW_MAX_SNAPSHOTS_SIZE, 64 MiB); bounds what we read.
pub const MAX_SNAPSHOT_TABLE_BYTES: u64 = 1024 * 65536;

/// One internal snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// "Offset into the image file at which the L1 table for the snapshot starts."
    pub l1_table_offset: u64,
    /// "Number of entries in the L1 table of the snapshots".
    pub l1_size: u32,
    /// "Unique ID string for the snapshot" (not UTF-8 bytes are replaced).
    pub id_str: String,
    /// "Name of the snapshot".
    pub name: String,
    /// "Time at which the snapshot was taken in seconds since the Epoch".
    pub date_sec: u32,
    /// "Subsecond part of the time at which the snapshot was taken in nanoseconds".
    pub date_nsec: u32,
    /// "Time that the guest was running until the snapshot was taken in nanoseconds".
    pub vm_clock_nsec: u64,
    /// "Size of the VM state in bytes. 0 if no VM state is saved." The 64-bit field of the
    /// extra data when present, else the 32-bit field.
    pub vm_state_size: u64,
    /// "Virtual disk size of the snapshot in bytes" from the extra data; the image's current
    /// size when the entry has no such field (as qemu assumes).
    pub disk_size: u64,
    /// "icount value which corresponds to the record/replay instruction count when the
    /// snapshot was taken"; `None` when absent or -1 (disabled).
    pub icount: Option<u64>,
    /// "Size of extra data in the table entry".
    pub extra_data_size: u32,
    /// Bytes this entry takes in the snapshot table, padding included.
    pub(crate) entry_len: u64,
}

/// Reads the snapshot table of an image whose header is `header` from `file`. With
/// `l1_past_eof` a snapshot's L1 table may lie outside the file or be misaligned (`check`
/// counts that as a corruption, as qemu does).
pub fn read_table(
    file: &dyn BlockDevice,
    header: &Header,
    l1_past_eof: bool,
) -> Result<Vec<Snapshot>> {
    let file_size = file.size();
    let cluster_size = header.cluster_size();
    let mut out = Vec::new();
    let mut at = header.snapshots_offset;
    let mut total = 0u64;
    for i in 0..header.nb_snapshots {
        let head = read_vec(file, at, ENTRY_HEADER, "snapshot table")?;
        let l1_table_offset = be64(&head, 0);
        let l1_size = be32(&head, 8);
        let id_len = u64::from(be16(&head, 12));
        let name_len = u64::from(be16(&head, 14));
        let extra_data_size = be32(&head, 36);
        if extra_data_size > MAX_SNAPSHOT_EXTRA_DATA {
            return Err(Error::corrupt_at(
                at,
                format!("snapshot {i} has {extra_data_size} bytes of extra data (at most {MAX_SNAPSHOT_EXTRA_DATA})"),
            ));
        }
        let var_len = u64::from(extra_data_size) + id_len + name_len;
        // "Padding to round up the snapshot table entry size to the next multiple of 8."
        let entry_len = (ENTRY_HEADER + var_len).next_multiple_of(8);
        total += entry_len;
        if total > MAX_SNAPSHOT_TABLE_BYTES {
            return Err(Error::corrupt_at(
                header.snapshots_offset,
                "snapshot table is too large",
            ));
        }
        let var = read_vec(file, at + ENTRY_HEADER, var_len, "snapshot table")?;
        let extra_len = extra_data_size as usize;
        let extra = &var[..extra_len];
        let id = &var[extra_len..extra_len + id_len as usize];
        let name = &var[extra_len + id_len as usize..];

        let vm_state_size = if extra.len() >= 8 {
            be64(extra, 0)
        } else {
            u64::from(be32(&head, 32))
        };
        let disk_size = if extra.len() >= 16 {
            be64(extra, 8)
        } else {
            header.size
        };
        let icount = if extra.len() >= 24 {
            Some(be64(extra, 16)).filter(|&v| v != u64::MAX)
        } else {
            None
        };

        if u64::from(l1_size) * 8 > MAX_L1_BYTES {
            return Err(Error::corrupt_at(
                at,
                format!("snapshot {i} L1 table of {l1_size} entries is too large"),
            ));
        }
        if l1_size > 0 && !l1_past_eof {
            table_in_file(
                l1_table_offset,
                u64::from(l1_size) * 8,
                cluster_size,
                file_size,
                "snapshot L1 table",
            )?;
        }

        out.push(Snapshot {
            l1_table_offset,
            l1_size,
            id_str: String::from_utf8_lossy(id).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            date_sec: be32(&head, 16),
            date_nsec: be32(&head, 20),
            vm_clock_nsec: be64(&head, 24),
            vm_state_size,
            disk_size,
            icount,
            extra_data_size,
            entry_len,
        });
        at += entry_len;
    }
    in_file(header.snapshots_offset, total, file_size, "snapshot table")?;
    Ok(out)
}

/// What `qemu-img convert -l`/`-s` accept: "snapshot.id=ID", "snapshot.name=NAME", both joined
/// by a comma, or a bare string matched against the IDs first, then the names.
pub fn find<'a>(snapshots: &'a [Snapshot], spec: &str) -> Result<&'a Snapshot> {
    let not_found = || Error::invalid(format!("snapshot '{spec}' not found"));
    if spec.starts_with("snapshot.id=") || spec.starts_with("snapshot.name=") {
        let mut id = None;
        let mut name = None;
        for part in spec.split(',') {
            if let Some(v) = part.strip_prefix("snapshot.id=") {
                id = Some(v);
            } else if let Some(v) = part.strip_prefix("snapshot.name=") {
                name = Some(v);
            } else {
                return Err(Error::invalid(format!(
                    "invalid snapshot option '{part}' (expected snapshot.id= or snapshot.name=)"
                )));
            }
        }
        return snapshots
            .iter()
            .find(|s| id.is_none_or(|v| s.id_str == v) && name.is_none_or(|v| s.name == v))
            .ok_or_else(not_found);
    }
    snapshots
        .iter()
        .find(|s| s.id_str == spec)
        .or_else(|| snapshots.iter().find(|s| s.name == spec))
        .ok_or_else(not_found)
}
