//! Hostile partition tables and LVM metadata through the library: GPT with bad CRCs, absurd
//! entry counts and overlapping entries, MBR overlaps, EBR chains that loop or never end, LVM
//! metadata with absurd extents and missing PVs. Each case ends in an error that names the
//! device and the problem (or, where the kernel would accept the layout, a table whose every
//! partition lies inside the disk), in well under a second, never a panic.
//!
//! partitions_lvm.rs has the cases next to images built by sfdisk and lvm2 (a two-EBR loop,
//! one damaged GPT header, extents past a PV); these are the ones it does not.

mod plvm_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use plvm_common::synth_pv;
use vdisk_block::{BlockDevice, MemDevice, Result};
use vdisk_guestfs::devices::Guest;
use vdisk_guestfs::partition::{read_table, PartitionTable};

const MIB: usize = 1 << 20;
/// The time any one case may take (they take microseconds).
const MAX_WALL: Duration = Duration::from_secs(2);

/// Runs `f`, asserting it is quick.
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    let wall = t.elapsed();
    eprintln!("{what}: {:.2} ms", wall.as_secs_f64() * 1000.0);
    assert!(wall < MAX_WALL, "{what} took {wall:?}");
    r
}

fn table(bytes: &[u8]) -> Result<Option<PartitionTable>> {
    read_table(&MemDevice::from_vec(bytes.to_vec()))
}

fn guest(disks: Vec<Vec<u8>>) -> Result<Guest> {
    Guest::new(
        disks
            .into_iter()
            .map(|d| Arc::new(MemDevice::from_vec(d)) as Arc<dyn BlockDevice>)
            .collect(),
    )
}

/// Asserts that a whole-guest open fails with an error naming /dev/sda and containing `needle`.
fn guest_fails(what: &str, disk: &[u8], needle: &str) -> String {
    let e = timed(what, || guest(vec![disk.to_vec()]))
        .err()
        .unwrap_or_else(|| panic!("{what}: accepted"))
        .to_string();
    assert!(e.starts_with("/dev/sda"), "{what}: {e}");
    assert!(e.contains(needle), "{what}: expected {needle:?} in {e}");
    assert_eq!(e.lines().count(), 1, "{what}: {e}");
    e
}

/// Every partition of an accepted table lies inside the disk, and opens and reads.
fn sane(what: &str, disk: &[u8]) {
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::from_vec(disk.to_vec()));
    let t = read_table(&*dev).unwrap().unwrap();
    for p in &t.partitions {
        let s = p.open(dev.clone()).unwrap();
        assert!(s.start() + s.size() <= disk.len() as u64, "{what}: {p:?}");
        let mut b = [0u8; 512];
        if s.size() >= 512 {
            s.read_at(&mut b, s.size() - 512).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// MBR.

/// Writes MBR/EBR entry `i` of the sector at `sector_off`.
fn mbr_entry(d: &mut [u8], sector_off: usize, i: usize, ptype: u8, start: u32, len: u32) {
    let e = sector_off + 0x1be + 16 * i;
    d[e + 4] = ptype;
    d[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
    d[e + 12..e + 16].copy_from_slice(&len.to_le_bytes());
    d[sector_off + 510] = 0x55;
    d[sector_off + 511] = 0xaa;
}

#[test]
fn mbr_overlapping_primaries() {
    let mut d = vec![0u8; 4 * MIB];
    mbr_entry(&mut d, 0, 0, 0x83, 2048, 4096);
    mbr_entry(&mut d, 0, 1, 0x83, 4096, 2048);
    mbr_entry(&mut d, 0, 2, 0x83, 2048, 4096);
    // The kernel and sfdisk accept overlapping primaries (sfdisk --verify only warns).
    match timed("overlapping primaries", || table(&d)) {
        Ok(_) => {
            eprintln!("overlapping primaries: accepted");
            sane("overlapping primaries", &d)
        }
        Err(e) => assert!(e.to_string().contains("overlap"), "{e}"),
    }
}

#[test]
fn ebr_self_loop_and_endless_chain() {
    // An extended partition whose first EBR links to itself (relative start 0 is "no next",
    // so the link points at the extended start through a second extended entry).
    let mut d = vec![0u8; 8 * MIB];
    let ext = 2048usize;
    mbr_entry(&mut d, 0, 0, 0x05, ext as u32, 8192);
    mbr_entry(&mut d, ext * 512, 0, 0x83, 1, 100);
    mbr_entry(&mut d, ext * 512, 1, 0x05, 0, 200);
    // Relative 0 for the link: a self-loop, unless read as the end of the chain.
    match timed("EBR self-loop", || table(&d)) {
        Ok(Some(t)) => {
            eprintln!("EBR self-loop: {} partitions", t.partitions.len());
            assert!(t.partitions.len() <= 2, "{t:?}")
        }
        Ok(None) => panic!("no table"),
        Err(e) => {
            eprintln!("EBR self-loop: {e}");
            assert!(e.to_string().contains("loop"), "{e}")
        }
    }
    // A chain of 200 EBRs, each one sector after the last, never looping.
    let mut d = vec![0u8; 8 * MIB];
    mbr_entry(&mut d, 0, 0, 0x05, ext as u32, 4096);
    for i in 0..200usize {
        let at = (ext + 2 * i) * 512;
        mbr_entry(&mut d, at, 0, 0x83, 1, 1);
        mbr_entry(&mut d, at, 1, 0x05, (2 * (i + 1)) as u32, 2);
    }
    match timed("200 logical partitions", || table(&d)) {
        Ok(Some(t)) => assert!(
            t.partitions.len() <= 129,
            "{} partitions",
            t.partitions.len()
        ),
        Ok(None) => panic!("no table"),
        Err(e) => {
            eprintln!("200 logical partitions: {e}");
            assert!(e.to_string().contains("128"), "{e}")
        }
    }
    // A link out of the extended partition, and one past the end of the disk.
    let mut d = vec![0u8; 8 * MIB];
    mbr_entry(&mut d, 0, 0, 0x05, ext as u32, 4096);
    mbr_entry(&mut d, ext * 512, 0, 0x83, 1, 10);
    mbr_entry(&mut d, ext * 512, 1, 0x05, 1 << 30, 10);
    guest_fails("EBR link past the end", &d, "");
}

// ---------------------------------------------------------------------------------------
// GPT.

/// A GPT disk of `sectors` with `entries` 128-byte entries (the first ones given as
/// (first_lba, last_lba)), primary and backup, CRCs right.
fn gpt(sectors: u64, parts: &[(u64, u64)]) -> Vec<u8> {
    let mut d = vec![0u8; sectors as usize * 512];
    // Protective MBR.
    mbr_entry(
        &mut d,
        0,
        0,
        0xee,
        1,
        (sectors - 1).min(u32::MAX as u64) as u32,
    );
    let n_entries = 128u32;
    let array_sectors = u64::from(n_entries) * 128 / 512;
    let mut array = vec![0u8; n_entries as usize * 128];
    for (i, &(first, last)) in parts.iter().enumerate() {
        let e = &mut array[i * 128..(i + 1) * 128];
        e[..16].copy_from_slice(&[0x0f; 16]); // type GUID: anything non-nil
        e[16..32].copy_from_slice(&[i as u8 + 1; 16]);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
    }
    let first_usable = 2 + array_sectors;
    let last_usable = sectors - 2 - array_sectors;
    for (hdr_lba, alt_lba, array_lba) in [
        (1, sectors - 1, 2),
        (sectors - 1, 1, sectors - 1 - array_sectors),
    ] {
        let a = array_lba as usize * 512;
        d[a..a + array.len()].copy_from_slice(&array);
        let h = hdr_lba as usize * 512;
        let hd = &mut d[h..h + 92];
        hd[..8].copy_from_slice(b"EFI PART");
        hd[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        hd[12..16].copy_from_slice(&92u32.to_le_bytes());
        hd[24..32].copy_from_slice(&hdr_lba.to_le_bytes());
        hd[32..40].copy_from_slice(&alt_lba.to_le_bytes());
        hd[40..48].copy_from_slice(&first_usable.to_le_bytes());
        hd[48..56].copy_from_slice(&last_usable.to_le_bytes());
        hd[56..72].copy_from_slice(&[0x42; 16]);
        hd[72..80].copy_from_slice(&array_lba.to_le_bytes());
        hd[80..84].copy_from_slice(&n_entries.to_le_bytes());
        hd[84..88].copy_from_slice(&128u32.to_le_bytes());
        hd[88..92].copy_from_slice(&crc32fast::hash(&array).to_le_bytes());
        fix_header_crc(&mut d, hdr_lba);
    }
    d
}

fn fix_header_crc(d: &mut [u8], lba: u64) {
    let h = lba as usize * 512;
    d[h + 16..h + 20].fill(0);
    let crc = crc32fast::hash(&d[h..h + 92]);
    d[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
}

/// Sets a header field on both headers and fixes their CRCs, so only the field is wrong.
fn both_headers(d: &mut [u8], sectors: u64, f: impl Fn(&mut [u8])) {
    for lba in [1, sectors - 1] {
        let h = lba as usize * 512;
        f(&mut d[h..h + 92]);
        fix_header_crc(d, lba);
    }
}

const SECTORS: u64 = 8192;

#[test]
fn gpt_good_baseline() {
    let d = gpt(SECTORS, &[(2048, 4095), (4096, 6143)]);
    let t = table(&d).unwrap().unwrap();
    assert_eq!(t.partitions.len(), 2);
    assert!(!t.used_backup);
    sane("good GPT", &d);
}

#[test]
fn gpt_bad_crcs() {
    let good = gpt(SECTORS, &[(2048, 4095), (4096, 6143)]);
    // Both entry arrays damaged (headers intact): both copies fail their array CRC.
    let mut d = good.clone();
    d[2 * 512 + 40] ^= 1;
    let b = (SECTORS as usize - 33) * 512;
    d[b + 40] ^= 1;
    guest_fails("both GPT arrays damaged", &d, "GPT");
    // Both header CRCs wrong.
    let mut d = good.clone();
    d[512 + 16] ^= 1;
    d[(SECTORS as usize - 1) * 512 + 16] ^= 1;
    guest_fails("both GPT header CRCs wrong", &d, "CRC");
    // Primary header CRC wrong: the backup is used and gives the same partitions.
    let mut d = good.clone();
    d[512 + 16] ^= 1;
    let t = table(&d).unwrap().unwrap();
    assert!(t.used_backup);
    assert_eq!(t.partitions, table(&good).unwrap().unwrap().partitions);
}

#[test]
fn gpt_absurd_header_fields() {
    let good = gpt(SECTORS, &[(2048, 4095)]);
    type Patch = fn(&mut [u8]);
    let cases: [(&str, Patch); 9] = [
        ("entry count u32::MAX", |h| {
            h[80..84].copy_from_slice(&u32::MAX.to_le_bytes())
        }),
        ("entry size 0", |h| {
            h[84..88].copy_from_slice(&0u32.to_le_bytes())
        }),
        ("entry size u32::MAX", |h| {
            h[84..88].copy_from_slice(&u32::MAX.to_le_bytes())
        }),
        ("entry size 129", |h| {
            h[84..88].copy_from_slice(&129u32.to_le_bytes())
        }),
        ("header size 0", |h| {
            h[12..16].copy_from_slice(&0u32.to_le_bytes())
        }),
        ("header size 4096", |h| {
            h[12..16].copy_from_slice(&4096u32.to_le_bytes())
        }),
        ("array past the end", |h| {
            h[72..80].copy_from_slice(&(u64::MAX - 3).to_le_bytes())
        }),
        ("first usable after last usable", |h| {
            h[40..48].copy_from_slice(&7000u64.to_le_bytes())
        }),
        ("last usable past the end", |h| {
            h[48..56].copy_from_slice(&(1u64 << 40).to_le_bytes())
        }),
    ];
    for (what, patch) in cases {
        let mut d = good.clone();
        both_headers(&mut d, SECTORS, patch);
        // header size 0 makes the CRC cover nothing; whatever the verdict, no panic, quick,
        // and an accepted table is sane.
        match timed(what, || guest(vec![d.clone()])) {
            Ok(_) => {
                eprintln!("{what}: accepted");
                sane(what, &d)
            }
            Err(e) => {
                let e = e.to_string();
                eprintln!("{what}: {e}");
                assert!(
                    e.starts_with("/dev/sda") && e.contains("GPT"),
                    "{what}: {e}"
                );
            }
        }
    }
}

#[test]
fn gpt_bad_entries() {
    for (what, parts) in [
        ("overlapping", &[(2048u64, 4095u64), (3000, 5000)][..]),
        ("identical", &[(2048, 4095), (2048, 4095)]),
        ("start after end", &[(4095, 2048)]),
        ("before first usable", &[(1, 100)]),
        ("past last usable", &[(2048, SECTORS - 2)]),
        ("past the disk", &[(2048, 1 << 40)]),
        ("u64 end", &[(2048, u64::MAX)]),
    ] {
        let d = gpt(SECTORS, parts);
        match timed(what, || guest(vec![d.clone()])) {
            // Overlaps the kernel accepts; partitions past the end it does not.
            Ok(_) => {
                eprintln!("{what}: accepted");
                assert!(
                    matches!(what, "overlapping" | "identical" | "before first usable"),
                    "{what}: accepted"
                );
                sane(what, &d);
            }
            Err(e) => {
                let e = e.to_string();
                eprintln!("{what}: {e}");
                assert!(e.starts_with("/dev/sda"), "{what}: {e}");
                assert_eq!(e.lines().count(), 1);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// LVM.

const PV0: &str = "Pv0000-aaaa-bbbb-cccc-dddd-eeee-ffff00";
const PV1: &str = "Pv1111-aaaa-bbbb-cccc-dddd-eeee-ffff11";

fn pv(name: &str, uuid: &str, pe_count: u64) -> String {
    format!(
        "{name} {{\nid = \"{uuid}\"\ndevice = \"/dev/null\"\nstatus = [\"ALLOCATABLE\"]\n\
         flags = []\ndev_size = 16384\npe_start = 2048\npe_count = {pe_count}\n}}\n"
    )
}

fn lv(name: &str, segs: &str) -> String {
    format!(
        "{name} {{\nid = \"Lv0000-0000-0000-0000-0000-0000-000000\"\n\
         status = [\"READ\", \"WRITE\", \"VISIBLE\"]\nflags = []\n{segs}}}\n"
    )
}

fn seg(n: u32, start: u64, count: u64, stripes: &str) -> String {
    format!(
        "segment{n} {{\nstart_extent = {start}\nextent_count = {count}\ntype = \"striped\"\n\
         stripe_count = 1\nstripes = [{stripes}]\n}}\n"
    )
}

fn vg(extent_size: &str, pvs: &str, lvs: &str) -> String {
    format!(
        "vg {{\nid = \"Vgid00-0000-0000-0000-0000-0000-000000\"\nseqno = 3\nformat = \"lvm2\"\n\
         status = [\"RESIZEABLE\", \"READ\", \"WRITE\"]\nflags = []\nextent_size = {extent_size}\n\
         max_lv = 0\nmax_pv = 0\nmetadata_copies = 0\nphysical_volumes {{\n{pvs}}}\n\
         logical_volumes {{\n{lvs}}}\n}}\ncontents = \"Text Format Volume Group\"\nversion = 1\n"
    )
}

/// A guest over one synthetic 8 MiB PV (PV0) holding `text`.
fn lvm_guest(text: &str) -> Result<Guest> {
    guest(vec![synth_pv(8 * MIB, PV0, text)])
}

/// The LV opens fail with an error naming the LV device and containing `needle`.
fn lv_fails(what: &str, text: &str, needle: &str) {
    let g = timed(what, || lvm_guest(text)).unwrap_or_else(|e| panic!("{what}: {e}"));
    let e = timed(what, || g.open_device("/dev/vg/a"))
        .err()
        .unwrap_or_else(|| panic!("{what}: the LV opened"))
        .to_string();
    assert!(e.contains("/dev/vg/a"), "{what}: {e}");
    assert!(e.contains(needle), "{what}: expected {needle:?} in {e}");
    eprintln!("{what}: {e}");
    // Listing filesystems skips what cannot be opened; it does not fail.
    let fs = g.list_filesystems().unwrap();
    assert!(fs.iter().all(|f| f.device != "/dev/vg/a"), "{what}: {fs:?}");
}

#[test]
fn lvm_good_baseline() {
    let text = vg(
        "8",
        &pv("pv0", PV0, 100),
        &lv("a", &seg(1, 0, 10, "\"pv0\", 0")),
    );
    let g = lvm_guest(&text).unwrap();
    assert_eq!(g.open_device("/dev/vg/a").unwrap().size(), 10 * 8 * 512);
}

#[test]
fn lvm_absurd_extents() {
    let p = pv("pv0", PV0, 100);
    for (what, text, needle) in [
        (
            "extent count 2^62",
            vg("8", &p, &lv("a", &seg(1, 0, 1 << 62, "\"pv0\", 0"))),
            "",
        ),
        (
            "start extent 2^63-1",
            vg(
                "8",
                &p,
                &lv("a", &seg(1, 0, 1, "\"pv0\", 9223372036854775807")),
            ),
            "",
        ),
        (
            "extent size 2^60 sectors",
            vg(
                "1152921504606846976",
                &p,
                &lv("a", &seg(1, 0, 1, "\"pv0\", 0")),
            ),
            "",
        ),
        (
            "segment past the device",
            vg(
                "8",
                &pv("pv0", PV0, 1 << 40),
                &lv("a", &seg(1, 0, 1, "\"pv0\", 99999")),
            ),
            "",
        ),
        (
            "segments overlapping in the LV",
            vg(
                "8",
                &p,
                &lv(
                    "a",
                    &(seg(1, 0, 10, "\"pv0\", 0") + &seg(2, 5, 10, "\"pv0\", 20")),
                ),
            ),
            "",
        ),
        (
            "10^6 segments declared, one given",
            vg("8", &p, &lv("a", &seg(1, 0, 1, "\"pv0\", 0")))
                .replace("stripe_count = 1", "stripe_count = 1000000"),
            "",
        ),
    ] {
        // Either the metadata is refused as a whole (naming the disk) or the LV is.
        match timed(what, || lvm_guest(&text)) {
            Err(e) => {
                let e = e.to_string();
                eprintln!("{what}: {e}");
                assert!(e.starts_with("/dev/sda"), "{what}: {e}");
            }
            Ok(_) => lv_fails(what, &text, needle),
        }
    }
    // Extent size zero.
    let text = vg("0", &p, &lv("a", &seg(1, 0, 10, "\"pv0\", 0")));
    match lvm_guest(&text) {
        Err(e) => assert!(e.to_string().starts_with("/dev/sda"), "{e}"),
        Ok(g) => {
            if let Ok(d) = g.open_device("/dev/vg/a") {
                assert_eq!(d.size(), 0);
            }
        }
    }
}

#[test]
fn lvm_pv_missing() {
    // A VG of two PVs; only the first disk is given. An LV on the second, one spanning both.
    let pvs = pv("pv0", PV0, 100) + &pv("pv1", PV1, 100);
    let text = vg(
        "8",
        &pvs,
        &(lv("a", &seg(1, 0, 10, "\"pv1\", 0"))
            + &lv("b", &seg(1, 0, 10, "\"pv0\", 0"))
            + &lv(
                "c",
                &(seg(1, 0, 5, "\"pv0\", 20") + &seg(2, 5, 5, "\"pv1\", 20")),
            )),
    );
    let g = timed("PV missing", || lvm_guest(&text)).unwrap();
    // The LV on the present PV opens; the others fail naming the missing PV.
    assert_eq!(g.open_device("/dev/vg/b").unwrap().size(), 10 * 8 * 512);
    for name in ["/dev/vg/a", "/dev/vg/c"] {
        let e = g.open_device(name).err().unwrap().to_string();
        assert!(e.contains(name) && e.contains("pv1"), "{e}");
    }
    let listed: Vec<String> = g
        .list_filesystems()
        .unwrap()
        .into_iter()
        .map(|f| f.device)
        .collect();
    assert!(listed.contains(&"/dev/vg/b".to_string()), "{listed:?}");
    assert!(!listed.contains(&"/dev/vg/a".to_string()), "{listed:?}");
    // The same PV UUID on two disks: the first wins, with a warning.
    let one = synth_pv(8 * MIB, PV0, &text);
    let g = guest(vec![one.clone(), one]).unwrap();
    assert!(
        g.warnings().iter().any(|w| w.contains("duplicate")),
        "{:?}",
        g.warnings()
    );
}

#[test]
fn lvm_many_lvs_and_long_names() {
    // 20000 LVs and a 100 KiB name: bounded by the metadata size limit, parsed quickly.
    let p = pv("pv0", PV0, 100);
    let lvs: String = (0..20000)
        .map(|i| lv(&format!("lv{i}"), &seg(1, 0, 1, "\"pv0\", 0")))
        .collect();
    let text = vg("8", &p, &lvs);
    if text.len() < 7 * MIB {
        let g = timed("20000 LVs", || lvm_guest(&text));
        if let Ok(g) = g {
            assert!(g.list_lvs().len() <= 20000);
        }
    }
    let long = "x".repeat(100 << 10);
    let text = vg("8", &p, &lv(&long, &seg(1, 0, 1, "\"pv0\", 0")));
    if let Ok(g) = timed("100 KiB LV name", || lvm_guest(&text)) {
        let _ = g.list_filesystems();
    }
}
