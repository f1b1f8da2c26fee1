//! The fuzz harness: devices over fuzzer bytes, bounded walks that read through every layer
//! without letting a hostile image make the harness itself slow, and the body of every target
//! as a plain function. The libFuzzer targets in fuzz_targets/ call these functions, and the
//! stable test suite replays saved inputs through them (cli/tests/fuzz_regressions.rs takes
//! this file as a `#[path]` module), so one file must build both as this crate's root and as
//! a module there: it names nothing through `crate::` and uses only crates both have
//! (libfuzzer-sys stays in the target files).
use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use vdisk::{BackingPolicy, Format, OpenOptions};
use vdisk_block::{
    BlockDevice, Discard, Image, MapKind, MemDevice, Preallocation, Resize, WriteZeroes,
};
use vdisk_guestfs::detect::detect;
use vdisk_guestfs::devices::Guest;
use vdisk_guestfs::ext4::Ext4;
use vdisk_guestfs::fs::{FileKind, FileSystem, Ino};
use vdisk_guestfs::lvm::{self, LogicalVolume, VgMetadata};
use vdisk_guestfs::partition::read_table;
use vdisk_qcow2::Qcow2;

/// Bytes read per target run at most, so a huge guest size costs the harness nothing.
pub const READ_BUDGET: u64 = 4 << 20;
/// Mappings asked for per walk at most.
pub const MAX_MAPPINGS: usize = 512;

/// A device holding `data`.
pub fn mem(data: &[u8]) -> Arc<dyn BlockDevice> {
    Arc::new(MemDevice::from_vec(data.to_vec()))
}

/// Small numbers derived from the input, to choose read offsets: a simple FNV-1a walk, so a
/// mutation anywhere changes them.
pub struct Knobs(u64);

impl Knobs {
    /// Seeds from the input.
    pub fn new(data: &[u8]) -> Knobs {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for &b in data.iter().rev().take(64) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Knobs(h | 1)
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        // xorshift64
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// Reads `len` bytes (capped) at `off` from `dev`, checking the result length; errors are fine.
pub fn read_some(dev: &dyn BlockDevice, off: u64, len: u64, budget: &mut u64) {
    let len = len.min(*budget).min(256 << 10);
    if len == 0 {
        return;
    }
    *budget -= len;
    let mut buf = vec![0u8; len as usize];
    let _ = dev.read_at(&mut buf, off);
}

/// Reads a device at a few places: the start, the end, across the middle and at offsets
/// chosen by `k`, plus a read that reaches past the end (which must fail, not panic).
pub fn read_device(dev: &dyn BlockDevice, k: &mut Knobs, budget: &mut u64) {
    let size = dev.size();
    read_some(dev, 0, size.min(64 << 10), budget);
    if size > 0 {
        read_some(dev, size - 1, 1, budget);
        read_some(dev, size / 2, size.min(4096), budget);
        let mut past = [0u8; 2];
        assert!(
            dev.read_at(&mut past, size - 1).is_err(),
            "a read past the end of the device succeeded"
        );
    }
    for _ in 0..4 {
        let off = k.below(size);
        let len = k.below(size - off + 1).min(128 << 10);
        read_some(dev, off, len, budget);
    }
}

/// Walks the mapping of `img` from offset 0 (bounded by [`MAX_MAPPINGS`]), checking that
/// extents are contiguous and non-empty, reading a little of each; then reads at random offsets.
pub fn walk_image(img: &dyn Image, k: &mut Knobs, budget: &mut u64) {
    let size = img.size();
    let mut pos = 0u64;
    for _ in 0..MAX_MAPPINGS {
        if pos >= size {
            break;
        }
        let m = match img.map(pos, size - pos) {
            Ok(m) => m,
            Err(_) => break,
        };
        assert_eq!(m.offset, pos, "a mapping starts elsewhere than asked");
        if m.kind == MapKind::Eof {
            panic!("map says EOF at {pos} inside an image of {size} bytes");
        }
        assert!(m.len > 0, "an empty mapping at {pos}");
        assert!(m.end() <= size, "a mapping reaches past the end");
        read_some(img, pos, m.len.min(8192), budget);
        pos = m.end();
    }
    read_device(img, k, budget);
}

// ---------------------------------------------------------------------------------------
// The targets.

/// qcow2: open an image from arbitrary bytes, attach a small backing image, then map and read.
pub fn qcow2_open_read(data: &[u8]) {
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
}

/// qcow2 internal snapshots: open, then load every snapshot in the table (and a few names
/// that are not there) and read through each.
pub fn qcow2_snapshot(data: &[u8]) {
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
}

/// The scratch file probe_open writes its input to: one per process and thread (the stable
/// replay runs targets on several threads), in /dev/shm when there.
fn scratch() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let base = if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    };
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    base.join(format!(
        "vdisk-fuzz-probe-{}-{thread}.img",
        std::process::id()
    ))
}

/// Probing and opening by name through the library: the bytes are written to a file and
/// opened probed, as raw and as qcow2, with backing files ignored or refused (following them
/// would let the input name any host file), then mapped and read.
pub fn probe_open(data: &[u8]) {
    let probed = Format::probe(data);
    let path = &scratch();
    std::fs::write(path, data).expect("write scratch image");
    let mut k = Knobs::new(data);
    for format in [
        None,
        Some(Format::Raw),
        Some(Format::Qcow2),
        Some(Format::Vmdk),
    ] {
        for backing in [BackingPolicy::Ignore, BackingPolicy::Refuse] {
            let opts = OpenOptions {
                format,
                backing,
                ..OpenOptions::default()
            };
            let Ok(img) = vdisk::open(path, &opts) else {
                continue;
            };
            if format == Some(Format::Raw) {
                assert_eq!(img.format, Format::Raw, "-f raw was second-guessed");
                assert!(!img.probed);
            }
            if format.is_none() {
                assert!(img.probed);
                assert_eq!(img.format, probed);
            }
            let _ = vdisk::info::image_info(&img);
            let mut budget = 1 << 20;
            walk_image(&*img.image(), &mut k, &mut budget);
        }
    }
    let _ = std::fs::remove_file(path);
}

/// VMDK: the bytes as a sparse file or a descriptor, opened with -f vmdk (extent files must
/// lie next to it, and none exist in the scratch directory but the image itself, which a
/// descriptor may name), then mapped and read; and the descriptor parser on the raw text.
pub fn vmdk_open_read(data: &[u8]) {
    let _ = vdisk_vmdk::descriptor::parse(&String::from_utf8_lossy(data));
    let path = &scratch();
    std::fs::write(path, data).expect("write scratch image");
    let mut k = Knobs::new(data);
    for backing in [BackingPolicy::Ignore, BackingPolicy::Refuse] {
        let opts = OpenOptions {
            format: Some(Format::Vmdk),
            backing,
            ..OpenOptions::default()
        };
        let Ok(img) = vdisk::open(path, &opts) else {
            continue;
        };
        let _ = vdisk::info::image_info(&img);
        let mut budget = 1 << 20;
        walk_image(&*img.image(), &mut k, &mut budget);
    }
    let _ = std::fs::remove_file(path);
}

/// VHD (vpc), VDI and QED: the bytes opened with `-f vpc` / `-f vdi` (footer and dynamic header,
/// BAT, bitmaps, parent locators; VDI header and block map), mapped and read; then opened
/// read-write, a block written where the knobs say and read back.
fn block_image_open_rw(data: &[u8], format: Format) {
    let path = &scratch();
    std::fs::write(path, data).expect("write scratch image");
    let mut k = Knobs::new(data);
    let opts = OpenOptions {
        format: Some(format),
        backing: BackingPolicy::Ignore,
        ..OpenOptions::default()
    };
    if let Ok(img) = vdisk::open(path, &opts) {
        let _ = vdisk::info::image_info(&img);
        let mut budget = 1 << 20;
        walk_image(&*img.image(), &mut k, &mut budget);
    }
    let rw = OpenOptions {
        read_only: false,
        ..opts
    };
    if let Ok(img) = vdisk::open(path, &rw) {
        let dev = img.image();
        let size = dev.size();
        if size >= 4096 {
            let at = k.below(size - 4096) & !511;
            let buf = [0xa5u8; 4096];
            if dev.write_at(&buf, at).is_ok() {
                let mut back = [0u8; 4096];
                if dev.read_at(&mut back, at).is_ok() {
                    assert_eq!(back, buf, "a write did not read back");
                }
            }
        }
    }
    let _ = std::fs::remove_file(path);
}

/// VHD (qemu's vpc), read and written: as given, then with the footers' and the dynamic
/// header's checksums made right, so mutations get past them to the fields behind.
pub fn vhd_open_rw(data: &[u8]) {
    block_image_open_rw(data, Format::Vpc);
    let mut fixed = data.to_vec();
    if vhd_fix_checksums(&mut fixed) {
        block_image_open_rw(&fixed, Format::Vpc);
    }
}

/// Recomputes the VHD checksums in `b` (footer copy at 0, footer at the end, the dynamic
/// header the footer points at); false when there is nothing to fix.
fn vhd_fix_checksums(b: &mut [u8]) -> bool {
    fn sum(b: &[u8], skip: usize) -> u32 {
        let mut s: u32 = 0;
        for (i, &x) in b.iter().enumerate() {
            if !(skip..skip + 4).contains(&i) {
                s = s.wrapping_add(u32::from(x));
            }
        }
        !s
    }
    if b.len() < 512 {
        return false;
    }
    let end = b.len() - 512;
    for at in [0, end] {
        let c = sum(&b[at..at + 512], 64);
        b[at + 64..at + 68].copy_from_slice(&c.to_be_bytes());
    }
    let mut off = [0u8; 8];
    off.copy_from_slice(&b[16..24]);
    let h = u64::from_be_bytes(off);
    if let Some(h) = usize::try_from(h)
        .ok()
        .filter(|&h| h.checked_add(1024).is_some_and(|e| e <= b.len()))
    {
        let c = sum(&b[h..h + 1024], 36);
        b[h + 36..h + 40].copy_from_slice(&c.to_be_bytes());
    }
    true
}

/// VDI, read and written.
pub fn vdi_open_rw(data: &[u8]) {
    block_image_open_rw(data, Format::Vdi);
}

/// A VHDX made once by vdisk: a 4 MiB disk of 1 MiB blocks with two blocks written and the
/// BAT change left in the log (a crash before the in-place update), so opening it replays.
fn vhdx_template() -> &'static [u8] {
    static T: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let path = scratch().with_extension("template.vhdx");
        let v = vdisk_vhdx::create(
            &path,
            &vdisk_vhdx::CreateOptions {
                size: 4 << 20,
                block_size: Some(1 << 20),
                ..Default::default()
            },
        )
        .expect("create the template");
        v.write_at(&[0x3c; 4096], 0).expect("write");
        v.flush().expect("flush");
        v.write_at(&[0x5d; 4096], 3 << 20).expect("write");
        v.flush_leaving_log().expect("log");
        let bytes = std::fs::read(&path).expect("read the template");
        std::mem::forget(v);
        let _ = std::fs::remove_file(&path);
        bytes
    })
}

/// The CRC-32C VHDX puts in the 4 bytes at `at + 4` of the `len` bytes at `at`.
fn vhdx_reseal(b: &mut [u8], at: usize, len: usize) {
    if at + len > b.len() || len < 8 {
        return;
    }
    vdisk_vhdx::header::seal(&mut b[at..at + len], 4);
}

/// VHDX, read and written: the template patched by the input — records of (area, offset,
/// length, bytes) over the headers, region table, metadata table and items, BAT and log —
/// with the checksums recomputed when the first byte is even, so mutations reach the fields
/// behind them. (Whole VHDX files are megabytes: too big to mutate as they are.)
pub fn vhdx_open_rw(data: &[u8]) {
    let mut img = vhdx_template().to_vec();
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    // (start, length) of each area, as the template lays them out.
    const AREAS: [(usize, usize); 7] = [
        (64 << 10, 4096),
        (128 << 10, 4096),
        (192 << 10, 64 << 10),
        (3 << 20, 64 << 10),
        ((3 << 20) + (64 << 10), 4096),
        (2 << 20, 4096),
        (1 << 20, 64 << 10),
    ];
    while rest.len() >= 4 {
        let (area, len) = (
            AREAS[usize::from(rest[0]) % AREAS.len()],
            usize::from(rest[3]),
        );
        let off = usize::from(u16::from_le_bytes([rest[1], rest[2]])) % area.1;
        let bytes = &rest[4..(4 + len).min(rest.len())];
        let n = bytes.len().min(area.1 - off);
        img[area.0 + off..area.0 + off + n].copy_from_slice(&bytes[..n]);
        rest = &rest[(4 + len).min(rest.len())..];
    }
    if flags % 2 == 0 {
        vhdx_reseal(&mut img, 64 << 10, 4096);
        vhdx_reseal(&mut img, 128 << 10, 4096);
        vhdx_reseal(&mut img, 192 << 10, 64 << 10);
        let entry = u32::from_le_bytes([
            img[(1 << 20) + 8],
            img[(1 << 20) + 9],
            img[(1 << 20) + 10],
            img[(1 << 20) + 11],
        ]);
        vhdx_reseal(&mut img, 1 << 20, (entry as usize).min(1 << 20));
    }
    block_image_open_rw(&img, Format::Vhdx);
}

/// QED: header, L1 and L2 tables, opened with -f qed, mapped and read, then written (a
/// cluster allocated at the end of the file, an L2 table if needed) and read back.
pub fn qed_open_rw(data: &[u8]) {
    block_image_open_rw(data, Format::Qed);
}

/// MBR (with extended/logical chains) and GPT: read the table, then open every partition and
/// read its ends.
pub fn partition_table(data: &[u8]) {
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
}

/// LVM2: the input both as a disk (label, PV header, metadata areas, scan, open every LV and
/// read it) and as metadata text (parse, then build every LV over stand-in PV devices).
pub fn lvm(data: &[u8]) {
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
}

/// Filesystem and volume signature detection (LVM2, LUKS, XFS, btrfs, ext, swap, NTFS, FAT).
pub fn detect_fs(data: &[u8]) {
    if let Ok(Some(info)) = detect(&*mem(data)) {
        let _ = info.fs_type.as_str();
        let _ = format!("{info:?}");
    }
}

/// A guest over one or two fuzzed disks: partition tables, LVM across disks, device names,
/// filesystem listing, then every device opened and read. The first byte chooses: even = one
/// disk, odd = split the rest into two disks where the second byte says (in 512-byte sectors).
pub fn guest(data: &[u8]) {
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
    let _ = g.list_pvs();
    let _ = g.list_vgs();
    let _ = g.list_filesystems();
    let mut k = Knobs::new(data);
    let mut budget = READ_BUDGET;
    let names = g
        .list_devices()
        .into_iter()
        .chain(g.list_partitions())
        .chain(g.list_lvs());
    for name in names.take(64) {
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
}

/// Directory depth the ext4 walk descends to.
const EXT4_MAX_DEPTH: usize = 6;
/// Directory entries the ext4 walk visits in all.
const EXT4_MAX_ENTRIES: usize = 256;
/// Bytes of one file the ext4 walk reads.
const EXT4_MAX_FILE: u64 = 256 << 10;

struct Walk<'a> {
    fs: &'a Ext4,
    entries: usize,
    seen: HashSet<Ino>,
    files: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Walk<'_> {
    fn dir(&mut self, ino: Ino, path: &[u8], depth: usize) {
        if depth > EXT4_MAX_DEPTH || !self.seen.insert(ino) {
            return;
        }
        let mut list = Vec::new();
        let _ = self.fs.readdir(ino, 0, &mut |e| {
            list.push(e);
            list.len() < EXT4_MAX_ENTRIES
        });
        for e in list {
            if self.entries >= EXT4_MAX_ENTRIES {
                return;
            }
            self.entries += 1;
            let name = e.name.as_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let mut p = path.to_vec();
            p.push(b'/');
            p.extend_from_slice(name);
            let _ = self.fs.lookup(ino, OsStr::from_bytes(name));
            let _ = self.fs.listxattr(e.ino);
            let _ = self.fs.getxattr(e.ino, OsStr::new("security.selinux"));
            let Ok(attr) = self.fs.getattr(e.ino) else {
                continue;
            };
            match attr.kind {
                FileKind::Dir => self.dir(e.ino, &p, depth + 1),
                FileKind::Symlink => {
                    let _ = self.fs.readlink(e.ino);
                    let _ = self.fs.resolve(&p, true);
                }
                FileKind::File => {
                    // Keep files the path resolves to (a directory may name two inodes the
                    // same; the differential reads by path).
                    let by_path = self.fs.resolve(&p, false).ok() == Some(e.ino);
                    if let Some(bytes) = self.read(e.ino, attr.size) {
                        if by_path {
                            self.files.push((p, bytes));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn read(&mut self, ino: Ino, size: u64) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut off = 0u64;
        while off < size.min(EXT4_MAX_FILE) {
            let n = self.fs.read(ino, off, &mut buf).ok()?;
            assert!(n <= buf.len());
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            off += n as u64;
        }
        // Past the end: a short (empty) read, not an error or a panic.
        let _ = self.fs.read(ino, size.saturating_add(1), &mut buf[..16]);
        (size <= EXT4_MAX_FILE).then_some(out)
    }
}

/// What the ext4 walk read.
pub struct Ext4Walk {
    /// Whether the journal had transactions to replay (ext4-view does not replay).
    pub replayed: bool,
    /// (path, bytes) of the regular files read whole.
    pub files: Vec<(Vec<u8>, Vec<u8>)>,
}

/// ext4: open (journal replay included), walk the tree with bounded depth and entries, stat,
/// read files, symlinks and xattrs. `None` when the image does not open.
pub fn ext4_read(data: &[u8]) -> Option<Ext4Walk> {
    let fs = Ext4::open(mem(data)).ok()?;
    let _ = fs.statfs();
    let root = fs.root_ino();
    let _ = fs.getattr(root);
    let mut w = Walk {
        fs: &fs,
        entries: 0,
        seen: HashSet::new(),
        files: Vec::new(),
    };
    w.dir(root, b"", 0);
    for p in [&b"/etc/os-release"[..], b"/a/../b/./c", b"/lost+found/../x"] {
        let _ = fs.resolve(p, true);
    }
    let files = std::mem::take(&mut w.files);
    Some(Ext4Walk {
        replayed: fs.replayed_transactions() != 0,
        files,
    })
}

/// The size a device the write targets grow (the qcow2 image file, its data file) may reach:
/// a hostile image may make the allocator put clusters far out, which a real (sparse) file
/// would hold but a `Vec` in the harness must not.
pub const MAX_GROWN: u64 = 64 << 20;

/// An in-memory image file that refuses to grow past [`MAX_GROWN`].
pub struct CappedMem(MemDevice);

impl CappedMem {
    /// A device holding `data`.
    pub fn new(data: &[u8]) -> Arc<CappedMem> {
        Arc::new(CappedMem(MemDevice::from_vec(data.to_vec())))
    }
}

impl BlockDevice for CappedMem {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vdisk_block::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> vdisk_block::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn flush(&self) -> vdisk_block::Result<()> {
        Ok(())
    }
}

impl Resize for CappedMem {
    fn resize(&self, new_size: u64, prealloc: Preallocation) -> vdisk_block::Result<()> {
        if new_size > MAX_GROWN.max(self.0.size()) {
            return Err(vdisk_block::Error::invalid(format!(
                "the harness's image file may not grow to {new_size} bytes"
            )));
        }
        self.0.resize(new_size, prealloc)
    }
}

impl WriteZeroes for CappedMem {
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> vdisk_block::Result<()> {
        self.0.write_zeroes(offset, len, may_unmap)
    }
}

/// Splits `data` into the part a target treats as an image and a tail of `ops` operations
/// of [`OP_LEN`] bytes each (shorter inputs: all image, no operations).
pub fn split_ops(data: &[u8], ops: usize) -> (&[u8], Vec<[u8; OP_LEN]>) {
    let tail = (ops * OP_LEN).min(data.len());
    let (img, tail) = data.split_at(data.len() - tail);
    let ops = tail
        .chunks_exact(OP_LEN)
        .map(|c| c.try_into().expect("OP_LEN bytes"))
        .collect();
    (img, ops)
}

/// Bytes per encoded operation of the write targets.
pub const OP_LEN: usize = 8;
/// Operations decoded from the tail of a qcow2_rw input.
pub const QCOW2_OPS: usize = 8;
/// Operations decoded from the tail of an ext4_write input.
pub const EXT4_OPS: usize = 16;

/// The bytes a write operation writes: `len` bytes of a pattern seeded by `seed` (seed 0:
/// zeros, which the write path may store as zero clusters).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            if seed == 0 {
                0
            } else {
                (i as u8).wrapping_mul(31).wrapping_add(seed)
            }
        })
        .collect()
}

/// qcow2 write path: the input minus its last `QCOW2_OPS * OP_LEN` bytes is an image file,
/// opened read-write in memory (with a small backing image, and the image itself standing in
/// for an external data file); the tail decodes into writes, zero writes, discards,
/// compressed writes, resizes, flushes and reads. Then our check runs; for an image the
/// check found clean before, it must find no corruption after our own writes, and every
/// write that succeeded must read back.
pub fn qcow2_rw(data: &[u8]) {
    let _ = qcow2_rw_outcome(data);
}

/// What [`qcow2_rw`] leaves behind, for oracles too slow for the fuzz loop (qemu-img check,
/// in cli/tests/fuzz_regressions.rs).
pub struct Qcow2RwOutcome {
    /// The image file after the operations, flushed and closed.
    pub image: Vec<u8>,
    /// Our check found the image clean before the operations.
    pub clean_before: bool,
    /// The image keeps its guest data in an external data file (which qemu-img would need).
    pub external_data: bool,
}

/// [`qcow2_rw`], returning the image it leaves; `None` when the input does not open.
pub fn qcow2_rw_outcome(data: &[u8]) -> Option<Qcow2RwOutcome> {
    use vdisk_qcow2::check::check;
    let (img, ops) = split_ops(data, QCOW2_OPS);
    let file = CappedMem::new(img);
    let Ok(mut q) = Qcow2::open_rw(file.clone()) else {
        return None;
    };
    let mut backing = vec![0u8; 64 << 10];
    for (i, b) in backing.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    q.set_backing(Arc::new(MemDevice::from_vec(backing)));
    if q.needs_data_file() {
        q.set_data_file_rw(CappedMem::new(img));
    }
    let clean = check(&q, None).is_ok_and(|r| r.corruptions == 0 && r.check_errors == 0);
    let cluster = 1u64 << q.header().cluster_bits;
    let mut budget = READ_BUDGET;
    for op in ops {
        let size = q.size();
        let raw = u64::from(u32::from_le_bytes([op[1], op[2], op[3], op[4]]));
        // Mostly inside the image, sometimes anywhere (past the end included).
        let off = if op[0] & 0x80 == 0 {
            (raw * 512 + u64::from(op[7] & 0xf) * 64) % size.max(1)
        } else {
            raw << 9
        };
        let len = (u64::from(u16::from_le_bytes([op[5], op[6]])) + 1) * 8;
        let len = len.min(256 << 10);
        match op[0] % 8 {
            0 | 1 => {
                let buf = pattern(len as usize, op[7]);
                if q.write_at(&buf, off).is_ok() && clean {
                    let mut back = vec![0u8; buf.len()];
                    q.read_at(&mut back, off).expect("reading back a write");
                    assert!(back == buf, "a write at {off} (+{len}) did not read back");
                }
            }
            2 => {
                let _ = q.write_zeroes(off, len, op[7] & 1 == 1);
            }
            3 => {
                let _ = q.discard(off, len);
            }
            4 => {
                let idx = off / cluster;
                let _ = q.write_compressed(idx, &pattern(cluster as usize, op[7] | 1));
            }
            5 => {
                // Grow or shrink by up to 64 clusters, in 512-byte steps.
                let delta = (len.min(cluster * 64)) & !511;
                let new = if op[7] & 1 == 0 {
                    size.saturating_add(delta)
                } else {
                    size.saturating_sub(delta)
                };
                let _ = q.resize_image(new, Preallocation::Off, true);
            }
            6 => {
                let _ = q.flush();
            }
            _ => read_some(&q, off, len, &mut budget),
        }
    }
    let _ = q.flush();
    let after = check(&q, None);
    if clean {
        let r = after.expect("the check of an image that was clean failed after our writes");
        assert!(
            r.corruptions == 0,
            "our writes corrupted a clean image: {} corruptions: {:?}",
            r.corruptions,
            r.messages
        );
    }
    let mut k = Knobs::new(data);
    walk_image(&q, &mut k, &mut budget);
    let external_data = q.needs_data_file();
    drop(q);
    Some(Qcow2RwOutcome {
        image: file.0.to_vec(),
        clean_before: clean,
        external_data,
    })
}

/// ext4 write operations on a fuzzed filesystem: the input minus its last
/// `EXT4_OPS * OP_LEN` bytes is the filesystem, opened with Ext4Rw over a MemDevice; the tail
/// decodes into creates, mkdirs, symlinks, links, unlinks, rmdirs, renames, writes,
/// truncates, xattr changes, mknods and flushes on inodes and names found in the tree or made
/// by earlier operations. Errors are fine; panics and hangs are not. The result is reopened
/// read-only and walked.
pub fn ext4_write(data: &[u8]) {
    use vdisk_guestfs::ext4::Ext4Rw;
    use vdisk_guestfs::fs::{FileSystemMut, SetAttr};
    let (img, ops) = split_ops(data, EXT4_OPS);
    let dev = Arc::new(MemDevice::from_vec(img.to_vec()));
    let Ok(fs) = Ext4Rw::open(dev.clone()) else {
        return;
    };
    // Inodes and names to operate on: the root's entries and one level below, then whatever
    // the operations make.
    let mut inos: Vec<Ino> = vec![fs.root_ino()];
    let mut names: Vec<Vec<u8>> = [&b"a"[..], b"b", b"lost+found", b"hello.txt", b"dir"]
        .iter()
        .map(|n| n.to_vec())
        .collect();
    names.push(vec![b'n'; 255]);
    names.push(vec![b'n'; 256]);
    for depth in 0..2 {
        let dirs: Vec<Ino> = inos.clone();
        for d in dirs
            .into_iter()
            .skip(if depth == 0 { 0 } else { 1 })
            .take(8)
        {
            let _ = fs.readdir(d, 0, &mut |e| {
                if e.name.as_bytes() != b"." && e.name.as_bytes() != b".." {
                    inos.push(e.ino);
                    names.push(e.name.as_bytes().to_vec());
                }
                inos.len() < 32
            });
        }
    }
    let name = |names: &Vec<Vec<u8>>, b: u8| {
        OsStr::from_bytes(&names[usize::from(b) % names.len()]).to_os_string()
    };
    for op in ops {
        let ino = inos[usize::from(op[1]) % inos.len()];
        let other = inos[usize::from(op[3]) % inos.len()];
        let n = name(&names, op[2]);
        let mode = u32::from(op[4]) << 4 | 0o644;
        let off = if op[5] & 0x80 == 0 {
            u64::from(u16::from_le_bytes([op[6], op[7]])) * 97
        } else {
            u64::from(u16::from_le_bytes([op[6], op[7]])) << 24
        };
        let len = usize::from(op[5] & 0x7f) * 257 + 1;
        let made = match op[0] % 16 {
            0 => fs.create(ino, &n, mode, 0, 0).ok(),
            1 => fs.mkdir(ino, &n, mode, 0, 0).ok(),
            2 => {
                let target = pattern(len.min(4096), b'a' | 1)
                    .iter()
                    .map(|b| b'a' + b % 26)
                    .collect::<Vec<u8>>();
                fs.symlink(ino, &n, OsStr::from_bytes(&target), 0, 0).ok()
            }
            3 => fs.link(other, ino, &n).ok(),
            4 => {
                let _ = fs.unlink(ino, &n);
                None
            }
            5 => {
                let _ = fs.rmdir(ino, &n);
                None
            }
            6 => {
                let to = name(&names, op[6]);
                let _ = fs.rename(ino, &n, other, &to, u32::from(op[7] & 1));
                None
            }
            7 | 8 => {
                let _ = fs.write(ino, off, &pattern(len, op[4]));
                None
            }
            9 => {
                let ch = SetAttr {
                    size: Some(off),
                    ..SetAttr::default()
                };
                let _ = fs.setattr(ino, &ch);
                None
            }
            10 => {
                let xn = format!("user.x{}", op[2] % 8);
                let _ = fs.setxattr(
                    ino,
                    OsStr::new(&xn),
                    &pattern(len, op[4]),
                    u32::from(op[7] % 3),
                );
                None
            }
            11 => {
                let xn = format!("user.x{}", op[2] % 8);
                let _ = fs.removexattr(ino, OsStr::new(&xn));
                None
            }
            12 => {
                let kind = [0o020000u32, 0o060000, 0o010000, 0o140000][usize::from(op[4] & 3)];
                fs.mknod(ino, &n, kind | 0o600, u64::from(op[6]), 0, 0).ok()
            }
            13 => {
                let _ = FileSystemMut::flush(&fs);
                None
            }
            14 => {
                let mut buf = vec![0u8; len];
                let _ = fs.read(ino, off, &mut buf);
                let _ = fs.lookup(ino, &n);
                None
            }
            _ => {
                let _ = fs.readdir(ino, 0, &mut |_| true);
                let _ = fs.statfs();
                None
            }
        };
        if let Some(attr) = made {
            inos.push(attr.ino);
            names.push(n.as_bytes().to_vec());
        }
    }
    let _ = FileSystemMut::flush(&fs);
    drop(fs);
    let _ = ext4_read(&dev.to_vec());
}

/// ext4_read, then the differential with ext4-view: when both read a regular file by the
/// same path, the bytes must agree (skipped when the journal had something to replay, which
/// ext4-view does not do, and when VDISK_FUZZ_NO_DIFF is set).
pub fn ext4_read_differential(data: &[u8]) {
    let Some(walk) = ext4_read(data) else {
        return;
    };
    if walk.files.is_empty() || walk.replayed || std::env::var_os("VDISK_FUZZ_NO_DIFF").is_some() {
        return;
    }
    let Ok(view) = ext4_view::Ext4::load(Box::new(data.to_vec())) else {
        return;
    };
    for (p, ours) in walk.files {
        let Ok(theirs) = view.read(ext4_view::Path::new(&p)) else {
            continue;
        };
        assert!(
            ours == theirs,
            "{}: our engine and ext4-view read different bytes ({} vs {} bytes)",
            String::from_utf8_lossy(&p),
            ours.len(),
            theirs.len()
        );
    }
}

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its directory in fuzz_targets/ and fuzz/regressions/.
pub const TARGETS: &[(&str, Target)] = &[
    ("qcow2_open_read", qcow2_open_read),
    ("qcow2_snapshot", qcow2_snapshot),
    ("qcow2_rw", qcow2_rw),
    ("probe_open", probe_open),
    ("vmdk_open_read", vmdk_open_read),
    ("vhd_open_rw", vhd_open_rw),
    ("vdi_open_rw", vdi_open_rw),
    ("vhdx_open_rw", vhdx_open_rw),
    ("qed_open_rw", qed_open_rw),
    ("partition_table", partition_table),
    ("lvm", lvm),
    ("detect", detect_fs),
    ("guest", guest),
    ("ext4_read", ext4_read_differential),
    ("ext4_write", ext4_write),
];
