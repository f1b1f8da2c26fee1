//! Disks → partitions → LVM → filesystem detection, on images built at run time by sfdisk,
//! lvm2 (pvcreate --restorefile + vgcfgrestore: this kernel has no device-mapper), mkfs.* and
//! mkswap, and checked against sfdisk --json, pvs/lvs and blkid -p.

mod plvm_common;

use std::path::Path;
use std::sync::Arc;

use plvm_common::*;
use vdisk_block::{BlockDevice, MemDevice};
use vdisk_guestfs::detect::{detect, FsType};
use vdisk_guestfs::devices::Guest;
use vdisk_guestfs::partition::{read_table, MbrRole, PartitionInfo, TableKind};

const MIB: u64 = 1 << 20;

fn sfdisk_json(img: &Path) -> serde_json::Value {
    serde_json::from_str(&sh(&format!("sfdisk --json {}", img.display()))).unwrap()
}

fn make_image(path: &Path, size: u64, sfdisk_script: &str) {
    sh(&format!(
        "truncate -s {size} {p} && sfdisk -q {p} <<'EOF'\n{sfdisk_script}\nEOF",
        p = path.display()
    ));
}

/// Compares our partitions with sfdisk's: number, start and size in sectors, type.
fn assert_same_as_sfdisk(img: &Path) {
    let json = sfdisk_json(img);
    let pt = &json["partitiontable"];
    let dev = FileDev::open(img);
    let ours = read_table(&*dev).unwrap().unwrap();
    let theirs = pt["partitions"].as_array().unwrap();
    assert_eq!(ours.partitions.len(), theirs.len(), "{json}");
    for (p, t) in ours.partitions.iter().zip(theirs) {
        let node = t["node"].as_str().unwrap();
        assert!(node.ends_with(&p.number.to_string()), "{node} vs {}", p.number);
        assert_eq!(p.start / 512, t["start"].as_u64().unwrap(), "{node}");
        assert_eq!(p.size / 512, t["size"].as_u64().unwrap(), "{node}");
        match &p.info {
            PartitionInfo::Mbr {
                type_byte,
                bootable,
                ..
            } => {
                assert_eq!(format!("{type_byte:x}"), t["type"].as_str().unwrap());
                assert_eq!(*bootable, t["bootable"].as_bool().unwrap_or(false));
            }
            PartitionInfo::Gpt {
                type_guid,
                unique_guid,
                name,
                ..
            } => {
                assert_eq!(type_guid.to_string(), t["type"].as_str().unwrap());
                assert_eq!(unique_guid.to_string(), t["uuid"].as_str().unwrap());
                assert_eq!(name.as_str(), t["name"].as_str().unwrap_or(""));
            }
        }
    }
    let id = pt["id"].as_str().unwrap();
    assert_eq!(ours.id, id);
}

#[test]
fn mbr_primary_extended_logical() {
    if !have(&["sfdisk"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("mbr.img");
    make_image(
        &img,
        64 * MIB,
        "label: dos\nlabel-id: 0x12345678\nstart=2048, size=8MiB, type=83\n\
         size=8MiB, type=82\nsize=8MiB, type=83, bootable\ntype=5\n\
         size=4MiB, type=83\nsize=4MiB, type=8e\nsize=4MiB, type=7",
    );
    assert_same_as_sfdisk(&img);
    let disk = FileDev::open(&img);
    let table = read_table(&*disk).unwrap().unwrap();
    assert_eq!(table.kind, TableKind::Mbr);
    let roles: Vec<_> = table
        .partitions
        .iter()
        .map(|p| match p.info {
            PartitionInfo::Mbr { role, .. } => (p.number, role),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        roles,
        [
            (1, MbrRole::Primary),
            (2, MbrRole::Primary),
            (3, MbrRole::Primary),
            (4, MbrRole::Extended),
            (5, MbrRole::Logical),
            (6, MbrRole::Logical),
            (7, MbrRole::Logical)
        ]
    );
    let g = Guest::new(vec![disk.clone()]).unwrap();
    assert_eq!(g.list_devices(), ["/dev/sda"]);
    let names: Vec<String> = (1..=7).map(|n| format!("/dev/sda{n}")).collect();
    assert_eq!(g.list_partitions(), names);
    // A logical partition is a window on the disk: write through it, read the file.
    let p6 = g.open_device("/dev/sda6").unwrap();
    assert_eq!(p6.size(), 4 * MIB);
    p6.write_at(b"through-sda6", 4096).unwrap();
    let start6 = table.partitions[5].start;
    let mut back = [0u8; 12];
    disk.read_at(&mut back, start6 + 4096).unwrap();
    assert_eq!(&back, b"through-sda6");
    assert!(p6.write_at(b"x", 4 * MIB).is_err());
    // Linux shows an extended partition as 1 KiB.
    assert_eq!(g.open_device("/dev/sda4").unwrap().size(), 1024);
    assert!(g.open_device("/dev/sda8").is_err());
    assert!(g.open_device("/dev/sdb1").is_err());
    // Filesystem listing: all empty, the extended partition left out.
    let fs = g.list_filesystems().unwrap();
    let devs: Vec<&str> = fs.iter().map(|f| f.device.as_str()).collect();
    assert_eq!(
        devs,
        ["/dev/sda1", "/dev/sda2", "/dev/sda3", "/dev/sda5", "/dev/sda6", "/dev/sda7"]
    );
    assert!(fs.iter().all(|f| f.fs_type == "unknown"));
}

#[test]
fn mbr_ebr_loop_and_bad_bounds() {
    if !have(&["sfdisk"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("loop.img");
    make_image(
        &img,
        32 * MIB,
        "label: dos\nstart=2048, size=4MiB, type=83\ntype=5\nsize=2MiB\nsize=2MiB\nsize=2MiB",
    );
    let bytes = std::fs::read(&img).unwrap();
    let table = read_table(&MemDevice::from_vec(bytes.clone()))
        .unwrap()
        .unwrap();
    assert_eq!(table.partitions.len(), 5);
    let ext_start = table.partitions[1].start;
    // The first EBR's link (entry 2) points back at the first EBR: relative start 0.
    let mut looped = bytes.clone();
    let link = (ext_start + 0x1be + 16 + 8) as usize;
    // Find the second EBR through the first one's link, and make it link to the first.
    let rel = u32::from_le_bytes(looped[link..link + 4].try_into().unwrap()) as u64;
    let second_link = (ext_start + rel * 512 + 0x1be + 16 + 8) as usize;
    looped[second_link..second_link + 4].copy_from_slice(&0u32.to_le_bytes());
    let e = read_table(&MemDevice::from_vec(looped))
        .unwrap_err()
        .to_string();
    assert!(e.contains("EBR chain loops back"), "{e}");
    // A primary reaching past the end of a truncated disk.
    let e = read_table(&MemDevice::from_vec(bytes[..(8 * MIB) as usize].to_vec()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("reaches past the end of the disk"), "{e}");
    let e = Guest::new(vec![Arc::new(MemDevice::from_vec(
        bytes[..(8 * MIB) as usize].to_vec(),
    ))])
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("/dev/sda: MBR partition 2"), "{e}");
}

#[test]
fn gpt_with_backup_header() {
    if !have(&["sfdisk"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("gpt.img");
    make_image(
        &img,
        48 * MIB,
        "label: gpt\nstart=2048, size=8MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"EFI System\"\n\
         size=4MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=boot\n\
         size=16MiB, type=E6D6D379-F507-44C2-A23C-238F2A3DF928, name=lvm\n\
         size=2MiB, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
    );
    assert_same_as_sfdisk(&img);
    let good = std::fs::read(&img).unwrap();
    let t = read_table(&MemDevice::from_vec(good.clone()))
        .unwrap()
        .unwrap();
    assert_eq!(t.kind, TableKind::Gpt);
    assert!(!t.used_backup);
    // Damage the primary header: the backup at the last LBA gives the same table.
    let mut bad = good.clone();
    bad[512 + 40] ^= 0xff;
    let b = read_table(&MemDevice::from_vec(bad.clone()))
        .unwrap()
        .unwrap();
    assert!(b.used_backup);
    assert_eq!(b.partitions, t.partitions);
    // Damage only the primary entry array: the backup again.
    let mut bad_array = good.clone();
    bad_array[1024 + 100] ^= 1;
    let b = read_table(&MemDevice::from_vec(bad_array)).unwrap().unwrap();
    assert!(b.used_backup);
    assert_eq!(b.partitions, t.partitions);
    // Both headers damaged.
    let last = good.len() - 512;
    bad[last + 40] ^= 0xff;
    let e = read_table(&MemDevice::from_vec(bad)).unwrap_err().to_string();
    assert!(
        e.contains("both GPT headers are damaged")
            && e.contains("primary: at offset 0x200: GPT header: header CRC32"),
        "{e}"
    );
    // Truncated: the backup is gone and the primary's usable range no longer fits.
    let e = read_table(&MemDevice::from_vec(good[..(16 * MIB) as usize].to_vec()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("both GPT headers are damaged"), "{e}");
    assert!(e.contains("do not fit a disk of 32768 sectors"), "{e}");
    // Device names and filesystem listing on GPT.
    let g = Guest::new(vec![FileDev::open(&img)]).unwrap();
    assert_eq!(
        g.list_partitions(),
        ["/dev/sda1", "/dev/sda2", "/dev/sda3", "/dev/sda4"]
    );
    assert_eq!(g.open_device("/dev/sda3").unwrap().size(), 16 * MIB);
}

fn pv_section(name: &str, uuid: &str, dev_sectors: u64, pe_count: u64) -> String {
    format!(
        "{name} {{\nid = \"{uuid}\"\ndevice = \"/dev/null\"\nstatus = [\"ALLOCATABLE\"]\n\
         flags = []\ndev_size = {dev_sectors}\npe_start = 2048\npe_count = {pe_count}\n}}\n"
    )
}

fn linear(n: u32, start: u64, count: u64, pv: &str, pe: u64) -> String {
    format!(
        "segment{n} {{\nstart_extent = {start}\nextent_count = {count}\ntype = \"striped\"\n\
         stripe_count = 1\nstripes = [\n\"{pv}\", {pe}\n]\n}}\n"
    )
}

fn lv_section(name: &str, id_char: char, segs: &[String]) -> String {
    let id = format!("{0}{0}{0}{0}{0}{0}-{0}{0}{0}{0}-{0}{0}{0}{0}-{0}{0}{0}{0}-{0}{0}{0}{0}-{0}{0}{0}{0}-{0}{0}{0}{0}{0}{0}", id_char);
    format!(
        "{name} {{\nid = \"{id}\"\nstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\nflags = []\n\
         segment_count = {}\n{}}}\n",
        segs.len(),
        segs.concat()
    )
}

fn vg_text(name: &str, pvs: &str, lvs: &str) -> String {
    format!(
        "{name} {{\nid = \"Vgid00-0000-0000-0000-0000-0000-000000\"\nseqno = 3\nformat = \"lvm2\"\n\
         status = [\"RESIZEABLE\", \"READ\", \"WRITE\"]\nflags = []\nextent_size = 8192\n\
         max_lv = 0\nmax_pv = 0\nmetadata_copies = 0\n\nphysical_volumes {{\n{pvs}}}\n\n\
         logical_volumes {{\n{lvs}}}\n}}\n\
         contents = \"Text Format Volume Group\"\nversion = 1\ndescription = \"\"\n\
         creation_host = \"test\"\ncreation_time = 1\n"
    )
}

const PV0: &str = "Pv0000-aaaa-bbbb-cccc-dddd-eeee-ffff00";
const PV1: &str = "Pv1111-aaaa-bbbb-cccc-dddd-eeee-ffff11";

/// Writes stamps for every sector of each LV at the places lvs reports, then checks that our
/// LV devices read exactly those stamps.
#[test]
fn lvm_linear_out_of_order_striped_and_two_disks() {
    if !have(&["pvcreate", "vgcfgrestore", "losetup"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.img"), tmp.path().join("b.img"));
    sh(&format!(
        "truncate -s 64M {} {}",
        a.display(),
        b.display()
    ));
    let (la, lb) = (Loop::new(&a, 0, None), Loop::new(&b, 0, None));
    // 64 MiB - 1 MiB pe_start = 15 extents of 4 MiB on each PV.
    let pvs = pv_section("pv0", PV0, 131072, 15) + &pv_section("pv1", PV1, 131072, 15);
    let lvs = lv_section(
        "lin",
        'L',
        &[linear(1, 0, 2, "pv0", 5), linear(2, 2, 3, "pv0", 0)],
    ) + &lv_section(
        "str",
        'S',
        &["segment1 {\nstart_extent = 0\nextent_count = 4\ntype = \"striped\"\n\
           stripe_count = 2\nstripe_size = 128\nstripes = [\n\"pv0\", 7,\n\"pv1\", 0\n]\n}\n"
            .to_string()],
    ) + &lv_section(
        "span-lv",
        'P',
        &[linear(1, 0, 1, "pv1", 3), linear(2, 1, 2, "pv0", 10)],
    );
    let meta = tmp.path().join("vg.meta");
    std::fs::write(&meta, vg_text("vgtwo", &pvs, &lvs)).unwrap();
    let env = LvmEnv::new(tmp.path(), &[&la, &lb]);
    env.restore(&meta, "vgtwo", &[(&la, PV0), (&lb, PV1)]);
    let pe_start = env.pe_starts();
    let segs = env.segments("vgtwo");
    assert_eq!(segs.len(), 5, "{segs:?}");
    let extent = 4 * MIB;
    let file_of = |dev: &str| if dev == la.0 { a.clone() } else { b.clone() };
    // Write the stamps with plain file I/O, from lvs's description alone.
    let tags = [("lin", 1u8), ("str", 2), ("span-lv", 3)];
    for (lv, seg_start, seg_size, stripe_size, ranges) in &segs {
        let tag = tags.iter().find(|t| t.0 == lv).unwrap().1;
        let chunk = if ranges.len() == 1 { *seg_size } else { *stripe_size };
        for sector in 0..seg_size / 512 {
            let off = sector * 512;
            let (c, within) = (off / chunk, off % chunk);
            let n = ranges.len() as u64;
            let (dev, pe) = &ranges[(c % n) as usize];
            let pos = pe_start[dev] + pe * extent + (c / n) * chunk + within;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(file_of(dev))
                .unwrap();
            use std::os::unix::fs::FileExt;
            f.write_all_at(&stamp(tag, (seg_start + off) / 512), pos)
                .unwrap();
        }
    }
    drop((la, lb));
    let (da, db) = (FileDev::open(&a), FileDev::open(&b));
    // Disks in the other order: PVs are matched by UUID, not position.
    let g = Guest::new(vec![db.clone(), da.clone()]).unwrap();
    assert!(g.warnings().is_empty(), "{:?}", g.warnings());
    assert_eq!(g.list_pvs(), ["/dev/sda", "/dev/sdb"]);
    assert_eq!(g.list_vgs(), ["vgtwo"]);
    assert_eq!(
        g.list_lvs(),
        ["/dev/vgtwo/lin", "/dev/vgtwo/span-lv", "/dev/vgtwo/str"]
    );
    for (lv, tag) in tags {
        let dev = g.open_device(&format!("/dev/vgtwo/{lv}")).unwrap();
        let want: u64 = segs.iter().filter(|s| s.0 == lv).map(|s| s.2).sum();
        assert_eq!(dev.size(), want, "{lv}");
        // One big read (crosses every segment and stripe boundary) and odd-sized ones.
        let mut all = vec![0u8; dev.size() as usize];
        dev.read_at(&mut all, 0).unwrap();
        for (n, s) in all.chunks_exact(512).enumerate() {
            assert!(s == stamp(tag, n as u64), "{lv}: sector {n} differs");
        }
        let mut odd = vec![0u8; 70_001];
        let at = 4 * MIB - 33_333;
        dev.read_at(&mut odd, at).unwrap();
        assert_eq!(odd, all[at as usize..at as usize + odd.len()], "{lv}");
        assert!(dev.read_at(&mut [0u8; 2], dev.size() - 1).is_err());
    }
    // The mapper name doubles dashes.
    let via_mapper = g.open_device("/dev/mapper/vgtwo-span--lv").unwrap();
    let mut x = [0u8; 512];
    via_mapper.read_at(&mut x, 512 * 9000).unwrap();
    assert!(x == stamp(3, 9000));
    // Writes go through to the PV extents: LV "lin" byte 0 is pv0 extent 5.
    let lin = g.open_device("/dev/vgtwo/lin").unwrap();
    lin.write_at(b"written-through-lv", 0).unwrap();
    let mut back = [0u8; 18];
    da.read_at(&mut back, pe_start_of(&pe_start) + 5 * extent)
        .unwrap();
    assert_eq!(&back, b"written-through-lv");
    // Striped writes crossing a chunk boundary land on both PVs.
    let st = g.open_device("/dev/vgtwo/str").unwrap();
    st.write_at(&[0xee; 1024], 64 * 1024 - 512).unwrap();
    let mut a_tail = [0u8; 512];
    let mut b_head = [0u8; 512];
    da.read_at(&mut a_tail, MIB + 7 * extent + 64 * 1024 - 512)
        .unwrap();
    db.read_at(&mut b_head, MIB).unwrap();
    assert_eq!((a_tail, b_head), ([0xee; 512], [0xee; 512]));

    // Only the first disk: the VG is incomplete; LVs on pv0 alone still open.
    let g = Guest::new(vec![da.clone()]).unwrap();
    assert_eq!(g.list_lvs().len(), 3);
    assert!(g.open_device("/dev/vgtwo/lin").is_ok());
    let e = g
        .open_device("/dev/vgtwo/span-lv")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("PV pv1 (UUID Pv1111-aaaa-bbbb-cccc-dddd-eeee-ffff11) is missing"),
        "{e}"
    );
    assert!(!g.warnings().is_empty());
    let fs: Vec<String> = g
        .list_filesystems()
        .unwrap()
        .into_iter()
        .map(|f| f.device)
        .collect();
    assert_eq!(fs, ["/dev/vgtwo/lin"]);
}

fn pe_start_of(m: &std::collections::HashMap<String, u64>) -> u64 {
    let v: Vec<u64> = m.values().copied().collect();
    assert!(v.iter().all(|&x| x == v[0]));
    v[0]
}
