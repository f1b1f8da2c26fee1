//! qcow2 internal snapshots: open, then load every snapshot in the table (and a few names
//! that are not there) and read through each.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vdisk_fuzz::{mem, walk_image, Knobs, READ_BUDGET};
use vdisk_qcow2::Qcow2;

fuzz_target!(|data: &[u8]| {
    let Ok(mut q) = Qcow2::open(mem(data)) else {
        return;
    };
    let specs: Vec<String> = q
        .snapshots()
        .iter()
        .take(8)
        .flat_map(|s| {
            [
                s.id_str.clone(),
                format!("snapshot.name={}", s.name),
                format!("snapshot.id={},snapshot.name={}", s.id_str, s.name),
            ]
        })
        .chain(["".to_string(), "1".to_string(), "snapshot.id=".to_string()])
        .collect();
    let mut k = Knobs::new(data);
    let mut budget = READ_BUDGET;
    for spec in specs {
        if q.load_snapshot(&spec).is_ok() {
            let _ = q.loaded_snapshot();
            walk_image(&q, &mut k, &mut budget);
        }
    }
});
