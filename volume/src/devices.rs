//! The guest's devices named as libguestfs names them.
//!
//! Disks are `/dev/sda`, `/dev/sdb`, ... in the order given (as `-a` options); partitions are
//! `/dev/sda1`, ... with Linux's numbering (logical partitions from 5); logical volumes are
//! `/dev/VG/LV` and `/dev/mapper/VG-LV`, where the mapper form doubles every dash inside the VG
//! and LV names as device-mapper does (`my-vg`/`lv` → `/dev/mapper/my--vg-lv`).
//! `/dev/vdX` and `/dev/hdX` are accepted as spellings of `/dev/sdX`, as libguestfs does.
//!
//! ```
//! use std::sync::Arc;
//! use vdisk_block::{BlockDevice, MemDevice};
//! use vdisk_volume::devices::Guest;
//!
//! let disk: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(1 << 20));
//! let guest = Guest::new(vec![disk]).unwrap();
//! assert_eq!(guest.list_devices(), ["/dev/sda"]);
//! assert_eq!(guest.open_device("/dev/vda").unwrap().size(), 1 << 20);
//! ```

use std::sync::Arc;

use vdisk_block::{BlockDevice, Error, Result};

use crate::detect::{detect, FsType};
use crate::lvm::{self, LvmScan, VolumeGroup};
use crate::partition::{read_table, Partition, PartitionTable};

/// At most this many disks. libguestfs attaches at most 255 drives to its appliance (the
/// virtio-scsi limit it uses); the bound keeps names and scans finite.
pub const MAX_DISKS: usize = 255;

/// One disk given to [`Guest::new`].
#[derive(Clone)]
pub struct Disk {
    /// "/dev/sda".
    pub name: String,
    /// The disk's bytes.
    pub device: Arc<dyn BlockDevice>,
    /// Its partition table, when it has one.
    pub table: Option<PartitionTable>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("name", &self.name)
            .field("size", &self.device.size())
            .field("table", &self.table)
            .finish()
    }
}

impl Disk {
    /// The partitions, empty without a table.
    pub fn partitions(&self) -> &[Partition] {
        self.table.as_ref().map_or(&[], |t| &t.partitions)
    }

    /// The device name of partition `p` of this disk.
    pub fn partition_name(&self, p: &Partition) -> String {
        format!("{}{}", self.name, p.number)
    }
}

/// One row of [`Guest::list_filesystems`], as `virt-filesystems --long --all` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesystemEntry {
    /// The device name ("/dev/sda1", "/dev/centos/root").
    pub device: String,
    /// The VFS type ("ext4", "swap", "vfat", ...) or "unknown".
    pub fs_type: String,
    /// The label, if any.
    pub label: Option<String>,
    /// The UUID, if any.
    pub uuid: Option<String>,
    /// The device size in bytes.
    pub size: u64,
}

/// The letters libguestfs gives disk `index` (0 → "a", 25 → "z", 26 → "aa").
pub fn drive_letters(index: usize) -> String {
    let mut out = Vec::new();
    let mut i = index;
    loop {
        // i % 26 < 26, so the cast cannot truncate.
        out.push(b'a' + (i % 26) as u8);
        if i < 26 {
            break;
        }
        i = i / 26 - 1;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The device-mapper name of LV `lv` in VG `vg`: dashes doubled, joined by one dash.
pub fn mapper_name(vg: &str, lv: &str) -> String {
    format!(
        "/dev/mapper/{}-{}",
        vg.replace('-', "--"),
        lv.replace('-', "--")
    )
}

/// A set of disks with their partitions and LVM volumes, named as in a libguestfs appliance.
#[derive(Debug)]
pub struct Guest {
    disks: Vec<Disk>,
    lvm: LvmScan,
    warnings: Vec<String>,
    /// The LVs among `warnings` that cannot be opened: (their two device names, the index
    /// of their warning).
    lv_warnings: Vec<([String; 2], usize)>,
}

impl Guest {
    /// Reads the partition tables of `disks` (in `-a` order) and the LVM metadata on every
    /// disk and partition. A broken partition table or unreadable LVM metadata is an error
    /// naming the device; an LV that cannot be opened (a PV missing, extents outside its PV,
    /// an unsupported segment type) is only a warning until someone opens it.
    pub fn new(disks: Vec<Arc<dyn BlockDevice>>) -> Result<Guest> {
        if disks.len() > MAX_DISKS {
            return Err(Error::invalid(format!(
                "{} disks given; at most {MAX_DISKS} are supported",
                disks.len()
            )));
        }
        let mut out = Vec::with_capacity(disks.len());
        for (i, device) in disks.into_iter().enumerate() {
            let name = format!("/dev/sd{}", drive_letters(i));
            let table = read_table(&*device).map_err(|e| e.with_path(&name))?;
            out.push(Disk {
                name,
                device,
                table,
            });
        }
        let mut candidates: Vec<(String, Arc<dyn BlockDevice>)> = Vec::new();
        for d in &out {
            if d.partitions().is_empty() {
                candidates.push((d.name.clone(), d.device.clone()));
            }
            for p in d.partitions().iter().filter(|p| !p.is_extended()) {
                let dev: Arc<dyn BlockDevice> = Arc::new(p.open(d.device.clone())?);
                candidates.push((d.partition_name(p), dev));
            }
        }
        let lvm = lvm::scan(&candidates)?;
        let mut warnings = lvm.warnings.clone();
        let mut lv_warnings = Vec::new();
        for vg in &lvm.vgs {
            for lv in vg.visible_lvs() {
                if let Err(e) = vg.open_lv(&lv.name) {
                    let names = [
                        format!("/dev/{}/{}", vg.name(), lv.name),
                        mapper_name(vg.name(), &lv.name),
                    ];
                    lv_warnings.push((names, warnings.len()));
                    warnings.push(e.to_string());
                }
            }
        }
        Ok(Guest {
            disks: out,
            lvm,
            warnings,
            lv_warnings,
        })
    }

    /// The disks, in the order given.
    pub fn disks(&self) -> &[Disk] {
        &self.disks
    }

    /// The volume groups found.
    pub fn volume_groups(&self) -> &[VolumeGroup] {
        &self.lvm.vgs
    }

    /// What LVM scanning and LV checks found wrong without failing, one line each.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// [`warnings`](Guest::warnings) without those about the LVs named in `devices`
    /// (`/dev/VG/LV` or `/dev/mapper/VG-LV`): a caller about to open them reports their
    /// problem as the error, and would otherwise print it twice.
    pub fn warnings_except(&self, devices: &[&str]) -> Vec<&str> {
        self.warnings
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                !self.lv_warnings.iter().any(|(names, at)| {
                    at == i && names.iter().any(|n| devices.contains(&n.as_str()))
                })
            })
            .map(|(_, w)| w.as_str())
            .collect()
    }

    /// The whole-disk devices: `/dev/sda`, `/dev/sdb`, ...
    pub fn list_devices(&self) -> Vec<String> {
        self.disks.iter().map(|d| d.name.clone()).collect()
    }

    /// Every partition, extended ones included, disk by disk in number order.
    pub fn list_partitions(&self) -> Vec<String> {
        self.disks
            .iter()
            .flat_map(|d| d.partitions().iter().map(|p| d.partition_name(p)))
            .collect()
    }

    /// The visible LVs as `/dev/VG/LV`, sorted as `lvs` sorts them (by VG, then LV name).
    pub fn list_lvs(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .lvm
            .vgs
            .iter()
            .flat_map(|vg| {
                vg.visible_lvs()
                    .map(move |lv| format!("/dev/{}/{}", vg.name(), lv.name))
            })
            .collect();
        v.sort();
        v
    }

    /// The devices that carry an LVM PV label.
    pub fn list_pvs(&self) -> Vec<String> {
        self.lvm.pvs.iter().map(|p| p.name.clone()).collect()
    }

    /// The VG names, sorted.
    pub fn list_vgs(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lvm.vgs.iter().map(|g| g.name().to_string()).collect();
        v.sort();
        v
    }

    /// The devices that may hold a filesystem, each with what is on it, as libguestfs's
    /// `list-filesystems` (plus label, UUID and size): whole disks without partitions,
    /// partitions other than extended ones, and LVs that can be opened. PVs are left out (the
    /// LVs on them are listed instead); a device with nothing recognised is "unknown".
    pub fn list_filesystems(&self) -> Result<Vec<FilesystemEntry>> {
        let mut names = Vec::new();
        for d in &self.disks {
            if d.partitions().is_empty() {
                names.push(d.name.clone());
            }
            for p in d.partitions().iter().filter(|p| !p.is_extended()) {
                names.push(d.partition_name(p));
            }
        }
        for vg in &self.lvm.vgs {
            for lv in vg.visible_lvs() {
                if vg.open_lv(&lv.name).is_ok() {
                    names.push(format!("/dev/{}/{}", vg.name(), lv.name));
                }
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let dev = self.open_device(&name)?;
            let found = detect(&*dev).map_err(|e| e.with_path(&name))?;
            if found
                .as_ref()
                .is_some_and(|f| f.fs_type == FsType::Lvm2Member)
            {
                continue;
            }
            out.push(FilesystemEntry {
                device: name,
                fs_type: found
                    .as_ref()
                    .map_or("unknown", |f| f.fs_type.as_str())
                    .to_string(),
                label: found.as_ref().and_then(|f| f.label.clone()),
                uuid: found.and_then(|f| f.uuid),
                size: dev.size(),
            });
        }
        Ok(out)
    }

    /// Opens a device by its libguestfs name: a disk, a partition, `/dev/VG/LV` or
    /// `/dev/mapper/VG-LV`.
    pub fn open_device(&self, name: &str) -> Result<Arc<dyn BlockDevice>> {
        let no_such = || Error::invalid(format!("{name}: no such device"));
        if let Some(rest) = name.strip_prefix("/dev/mapper/") {
            for vg in &self.lvm.vgs {
                for lv in &vg.metadata.lvs {
                    if mapper_name(vg.name(), &lv.name)["/dev/mapper/".len()..] == *rest {
                        return Ok(Arc::new(
                            vg.open_lv(&lv.name).map_err(|e| e.with_path(name))?,
                        ));
                    }
                }
            }
            return Err(no_such());
        }
        let rest = name.strip_prefix("/dev/").ok_or_else(no_such)?;
        // /dev/sdX[N], with vd and hd as other spellings of sd.
        if let Some(tail) = ["sd", "vd", "hd"].iter().find_map(|p| rest.strip_prefix(p)) {
            let letters_end = tail
                .find(|c: char| !c.is_ascii_lowercase())
                .unwrap_or(tail.len());
            let (letters, number) = tail.split_at(letters_end);
            if let Some(disk) = self
                .disks
                .iter()
                .find(|d| d.name["/dev/sd".len()..] == *letters)
            {
                if number.is_empty() {
                    return Ok(disk.device.clone());
                }
                let n: u32 = number.parse().map_err(|_| no_such())?;
                let p = disk
                    .partitions()
                    .iter()
                    .find(|p| p.number == n)
                    .ok_or_else(no_such)?;
                return Ok(Arc::new(p.open(disk.device.clone())?));
            }
        }
        if let Some((vg_name, lv_name)) = rest.split_once('/') {
            if let Some(vg) = self.lvm.vgs.iter().find(|v| v.name() == vg_name) {
                if vg.metadata.lvs.iter().any(|l| l.name == lv_name) {
                    return Ok(Arc::new(
                        vg.open_lv(lv_name).map_err(|e| e.with_path(name))?,
                    ));
                }
            }
        }
        Err(no_such())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(drive_letters(0), "a");
        assert_eq!(drive_letters(25), "z");
        assert_eq!(drive_letters(26), "aa");
        assert_eq!(drive_letters(27), "ab");
        assert_eq!(drive_letters(26 * 27), "aaa");
        assert_eq!(mapper_name("my-vg", "lv-1"), "/dev/mapper/my--vg-lv--1");
    }
}
