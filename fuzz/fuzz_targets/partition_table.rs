//! MBR (with extended/logical chains) and GPT: read the table, then open every partition and
//! read its ends.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vdisk_block::BlockDevice;
use vdisk_fuzz::{mem, read_device, Knobs, READ_BUDGET};
use vdisk_guestfs::partition::read_table;

fuzz_target!(|data: &[u8]| {
    let disk = mem(data);
    let Ok(Some(table)) = read_table(&*disk) else {
        return;
    };
    let _ = format!("{table:?}");
    let mut k = Knobs::new(data);
    let mut budget = READ_BUDGET;
    for p in table.partitions.iter().take(256) {
        let _ = p.is_extended();
        let size = p.device_size();
        if let Ok(dev) = p.open(disk.clone()) {
            assert_eq!(
                dev.size(),
                size,
                "partition device size differs from its entry"
            );
            assert!(dev
                .start()
                .checked_add(size)
                .is_some_and(|e| e <= disk.size()));
            read_device(&dev, &mut k, &mut budget);
        }
    }
});
