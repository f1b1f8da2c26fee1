//! LVM2: physical volume labels, metadata areas, volume groups and logical volumes.
//!
//! [`scan`] reads the label of every device it is given, reads the metadata text from each
//! PV's metadata areas (checksums verified), keeps the copy with the highest sequence number
//! for each VG, and matches the VG's PVs to devices by UUID, so a VG may span several disks.
//! [`VolumeGroup::open_lv`] then gives a [`LogicalVolume`], a device whose I/O goes through
//! the segments to the PVs' extents.
//!
//! ```text
//!   disk/partition --label.rs--> PV header --> mda header --> text --metadata.rs--> VG
//!   VG + PV devices --lv.rs--> LogicalVolume (linear and striped segments)
//! ```
//!
//! Metadata is only read; nothing here writes LVM structures.

pub mod label;
pub mod lv;
pub mod metadata;

use std::sync::Arc;

use vdisk_block::{BlockDevice, Error, Result};

pub use label::PvHeader;
pub use lv::LogicalVolume;
pub use metadata::{LvMeta, PvMeta, Segment, SegmentKind, StripeArea, VgMetadata};

/// A device that carries an LVM2 label.
#[derive(Clone)]
pub struct PhysicalVolume {
    /// The label and PV header.
    pub header: PvHeader,
    /// The device (a whole disk or a partition).
    pub device: Arc<dyn BlockDevice>,
    /// Which device this is, for messages ("/dev/sda2").
    pub name: String,
}

impl std::fmt::Debug for PhysicalVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhysicalVolume")
            .field("name", &self.name)
            .field("header", &self.header)
            .finish()
    }
}

/// A volume group: the newest metadata found and the devices of its PVs.
#[derive(Clone)]
pub struct VolumeGroup {
    /// The metadata copy with the highest seqno.
    pub metadata: VgMetadata,
    /// `pv_devices[i]` holds `metadata.pvs[i]`; `None` when no device given has that UUID.
    pub pv_devices: Vec<Option<Arc<dyn BlockDevice>>>,
    /// Device names parallel to `pv_devices`.
    pub pv_names: Vec<Option<String>>,
}

impl std::fmt::Debug for VolumeGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeGroup")
            .field("metadata", &self.metadata)
            .field("pv_names", &self.pv_names)
            .finish()
    }
}

impl VolumeGroup {
    /// The VG name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The LVs users see (VISIBLE), in metadata order.
    pub fn visible_lvs(&self) -> impl Iterator<Item = &LvMeta> {
        self.metadata.lvs.iter().filter(|l| l.is_visible())
    }

    /// True when every PV of the VG was found.
    pub fn is_complete(&self) -> bool {
        self.pv_devices.iter().all(Option::is_some)
    }

    /// Opens the LV `name` as a device. Fails when the LV does not exist, uses a segment type
    /// we do not map, needs a PV that is missing, or has extents outside its PVs.
    pub fn open_lv(&self, name: &str) -> Result<LogicalVolume> {
        let lv = self
            .metadata
            .lvs
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "VG {} has no LV named {name:?}",
                    self.metadata.name
                ))
            })?;
        LogicalVolume::new(&self.metadata, lv, &self.pv_devices)
    }
}

/// What [`scan`] found.
#[derive(Debug, Clone, Default)]
pub struct LvmScan {
    /// Every labelled device, in the order given.
    pub pvs: Vec<PhysicalVolume>,
    /// The VGs, in the order their first PV was seen.
    pub vgs: Vec<VolumeGroup>,
    /// Non-fatal findings, one line each (a duplicate PV UUID, an older metadata copy that
    /// failed its checksum while another copy was good).
    pub warnings: Vec<String>,
}

/// Reads the LVM metadata on `devices` (name, device) and assembles the VGs.
///
/// Fails when a labelled device's metadata areas all fail to parse or verify: the PV belongs
/// to a VG we cannot know, and silently hiding its LVs would be worse than saying so.
pub fn scan(devices: &[(String, Arc<dyn BlockDevice>)]) -> Result<LvmScan> {
    let mut out = LvmScan::default();
    let mut found: Vec<VgMetadata> = Vec::new();
    for (name, dev) in devices {
        let Some(header) = label::read_pv_header(&**dev).map_err(|e| e.with_path(name))? else {
            continue;
        };
        if out.pvs.iter().any(|p| p.header.pv_uuid == header.pv_uuid) {
            out.warnings.push(format!(
                "{name}: duplicate PV UUID {}; using the first device that has it",
                header.uuid_dashed()
            ));
            continue;
        }
        let mut first_error = None;
        let mut any_text = false;
        for mda in &header.metadata_areas {
            let parsed = label::read_metadata_text(&**dev, *mda).and_then(|t| match t {
                None => Ok(None),
                Some(t) => {
                    let text = std::str::from_utf8(&t)
                        .map_err(|_| Error::corrupt("LVM metadata text is not UTF-8"))?;
                    VgMetadata::parse(text).map(Some)
                }
            });
            match parsed {
                Ok(Some(vg)) => {
                    any_text = true;
                    found.push(vg);
                }
                Ok(None) => any_text = true,
                Err(e) => {
                    if first_error.is_none() {
                        first_error = Some(e.with_path(name));
                    }
                }
            }
        }
        match first_error {
            Some(e) if !any_text => return Err(e),
            Some(e) => out.warnings.push(e.to_string()),
            None => {}
        }
        out.pvs.push(PhysicalVolume {
            header,
            device: dev.clone(),
            name: name.clone(),
        });
    }
    // The newest copy of each VG, by VG id; ties keep the first seen.
    let mut newest: Vec<VgMetadata> = Vec::new();
    for vg in found {
        match newest.iter_mut().find(|v| v.id == vg.id) {
            Some(v) if vg.seqno > v.seqno => *v = vg,
            Some(_) => {}
            None => newest.push(vg),
        }
    }
    for meta in newest {
        if out.vgs.iter().any(|v| v.metadata.name == meta.name) {
            out.warnings.push(format!(
                "two different VGs are named {}; only the first is used",
                meta.name
            ));
            continue;
        }
        let mut pv_devices = Vec::with_capacity(meta.pvs.len());
        let mut pv_names = Vec::with_capacity(meta.pvs.len());
        for p in &meta.pvs {
            let hit = out.pvs.iter().find(|d| d.header.pv_uuid == p.id);
            pv_devices.push(hit.map(|d| d.device.clone()));
            pv_names.push(hit.map(|d| d.name.clone()));
        }
        out.vgs.push(VolumeGroup {
            metadata: meta,
            pv_devices,
            pv_names,
        });
    }
    Ok(out)
}
