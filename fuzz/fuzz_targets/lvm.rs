//! LVM2: the input both as a disk (label, PV header, metadata areas, scan, open every LV and
//! read it) and as metadata text (parse, then build every LV over stand-in PV devices).
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vdisk_block::{BlockDevice, MemDevice};
use vdisk_fuzz::{mem, read_device, Knobs, READ_BUDGET};
use vdisk_guestfs::lvm::{self, LogicalVolume, VgMetadata};

fuzz_target!(|data: &[u8]| {
    let mut k = Knobs::new(data);
    let mut budget = READ_BUDGET;

    // As a disk.
    let disk = mem(data);
    if let Ok(Some(h)) = lvm::label::read_pv_header(&*disk) {
        let _ = h.uuid_dashed();
        for mda in h.metadata_areas.iter().take(8) {
            let _ = lvm::label::read_metadata_text(&*disk, *mda);
        }
    }
    if let Ok(scan) = lvm::scan(&[("/dev/sda".to_string(), disk.clone())]) {
        for vg in &scan.vgs {
            let _ = vg.is_complete();
            for lv in vg.metadata.lvs.iter().take(16) {
                if let Ok(dev) = vg.open_lv(&lv.name) {
                    read_device(&dev, &mut k, &mut budget);
                }
            }
        }
    }

    // As metadata text.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = lvm::metadata::parse_tree(text);
    let Ok(vg) = VgMetadata::parse(text) else {
        return;
    };
    // Every PV present as a small device, and every PV but the first missing.
    let pv = |_: usize| -> Option<Arc<dyn BlockDevice>> { Some(Arc::new(MemDevice::new(1 << 20))) };
    let all: Vec<_> = (0..vg.pvs.len().min(64)).map(pv).collect();
    let first: Vec<_> = (0..vg.pvs.len().min(64))
        .map(|i| if i == 0 { pv(i) } else { None })
        .collect();
    for devs in [all, first] {
        for lv in vg.lvs.iter().take(16) {
            if let Ok(dev) = LogicalVolume::new(&vg, lv, &devs) {
                read_device(&dev, &mut k, &mut budget);
            }
        }
    }
});
