//! A guest over one or two fuzzed disks: partition tables, LVM across disks, device names,
//! filesystem listing, then every device opened and read.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vdisk_fuzz::{mem, read_device, Knobs, READ_BUDGET};
use vdisk_guestfs::devices::Guest;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses: even = one disk, odd = split the rest into two disks where the
    // second byte says (in 512-byte sectors, as real disks are).
    let disks = match data {
        [sel, cut, rest @ ..] if sel % 2 == 1 => {
            let at = (usize::from(*cut) * 512).min(rest.len());
            vec![mem(&rest[..at]), mem(&rest[at..])]
        }
        [_, rest @ ..] => vec![mem(rest)],
        [] => return,
    };
    let Ok(g) = Guest::new(disks) else {
        return;
    };
    let _ = g.warnings();
    let _ = g.list_partitions();
    let _ = g.list_lvs();
    let _ = g.list_pvs();
    let _ = g.list_vgs();
    let _ = g.list_filesystems();
    let mut k = Knobs::new(data);
    let mut budget = READ_BUDGET;
    for name in g
        .list_devices()
        .into_iter()
        .chain(g.list_partitions())
        .chain(g.list_lvs())
        .take(64)
    {
        if let Ok(dev) = g.open_device(&name) {
            read_device(&*dev, &mut k, &mut budget);
        }
    }
    for name in [
        "/dev/sdz",
        "/dev/sda0",
        "/dev/sda99",
        "/dev/mapper/x-y",
        "/dev/vg/lv",
        "/dev/",
    ] {
        let _ = g.open_device(name);
    }
});
