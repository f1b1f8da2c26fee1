//! qcow2: open an image from arbitrary bytes, attach a small backing image, then map and read.
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vdisk_block::{BlockDevice, MemDevice};
use vdisk_fuzz::{mem, walk_image, Knobs, READ_BUDGET};
use vdisk_qcow2::Qcow2;

fuzz_target!(|data: &[u8]| {
    let Ok(mut q) = Qcow2::open(mem(data)) else {
        return;
    };
    let _ = q.info();
    let _ = format!("{q:?}");
    let mut backing = vec![0u8; 64 << 10];
    for (i, b) in backing.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    q.set_backing(Arc::new(MemDevice::from_vec(backing)));
    if q.needs_data_file() {
        // An external data file: the image file itself stands in for it.
        q.set_data_file(mem(data));
    }
    let mut k = Knobs::new(data);
    let mut budget = READ_BUDGET;
    let _ = q.referenced_clusters(q.size().min(1 << 20) >> 9);
    walk_image(&q, &mut k, &mut budget);
});
