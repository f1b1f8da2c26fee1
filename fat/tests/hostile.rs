//! Hostile images: random corruption of the boot sector, the FATs and directory entries of
//! populated FAT12/16/32 images must give errors, never a panic or a hang; and the named
//! damages (a looping chain, a chain past the end, cross-linked files, FAT copies that
//! differ) give one clear line, and a write into such a volume is refused.

mod common;

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use vdisk_block::{BlockDevice, MemDevice};
use vdisk_fat::Fat;
use vdisk_fs::{FileKind, FileSystem, FileSystemMut, Ino};

/// A small populated image of each type, as bytes.
fn image(bits: u32) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mb = match bits {
        12 => 2,
        16 => 16,
        _ => 34,
    };
    let img = mkfs(dir.path(), bits, mb);
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("Sub Dir/deeper")).unwrap();
    let mut r = Rng(u64::from(bits));
    std::fs::write(src.join("a long file name.txt"), r.bytes(3000)).unwrap();
    std::fs::write(src.join("Sub Dir/x.bin"), r.bytes(20000)).unwrap();
    std::fs::write(src.join("Sub Dir/deeper/EMPTY"), b"").unwrap();
    for i in 0..12 {
        std::fs::write(src.join(format!("Sub Dir/file number {i}")), r.bytes(700)).unwrap();
    }
    run(mtool("mcopy", &img)
        .args(["-s"])
        .arg(src.join("a long file name.txt"))
        .arg(src.join("Sub Dir"))
        .arg("::/"));
    std::fs::read(&img).unwrap()
}

/// Everything a user might do, errors ignored: it must return.
fn exercise(dev: Arc<dyn BlockDevice>) {
    let Ok(fs) = Fat::open(dev, true) else { return };
    let _ = fs.statfs();
    let mut stack: Vec<(Ino, usize)> = vec![(fs.root_ino(), 0)];
    let mut seen = 0;
    while let Some((ino, depth)) = stack.pop() {
        seen += 1;
        if depth > 8 || seen > 2000 {
            break;
        }
        let Ok(a) = fs.getattr(ino) else { continue };
        if a.kind == FileKind::Dir {
            let Ok(list) = fs.readdir_all(ino) else {
                continue;
            };
            for e in list.into_iter().skip(2).take(200) {
                let _ = fs.lookup(ino, &e.name);
                stack.push((e.ino, depth + 1));
            }
        } else {
            let mut buf = vec![0u8; 65536];
            let _ = fs.read(ino, 0, &mut buf);
            let _ = fs.read(ino, a.size.saturating_sub(1), &mut buf[..1]);
            let _ = fs.write(ino, a.size / 2, b"hostile write");
            let _ = fs.setattr(
                ino,
                &vdisk_fs::SetAttr {
                    size: Some(a.size / 3),
                    ..Default::default()
                },
            );
        }
    }
    let root = fs.root_ino();
    let _ = fs.create(root, OsStr::new("new file.txt"), 0o644, 0, 0);
    let _ = fs.mkdir(root, OsStr::new("new dir"), 0o755, 0, 0);
    let _ = fs.rename(root, OsStr::new("Sub Dir"), root, OsStr::new("new dir"), 0);
    let _ = fs.unlink(root, OsStr::new("a long file name.txt"));
    let _ = fs.rmdir(root, OsStr::new("new dir"));
}

fn with_deadline(what: String, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => h.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(e) = h.join() {
                eprintln!("{what}: panicked");
                std::panic::resume_unwind(e);
            }
        }
        Err(_) => panic!("{what}: still running after 60 s (a hang)"),
    }
}

fn fuzz(bits: u32, rounds: u64) {
    if !have_tools() {
        eprintln!("skipped: mkfs.fat or mtools missing");
        return;
    }
    let base = image(bits);
    let g = Fat::open(Arc::new(MemDevice::from_vec(base.clone())), false).unwrap();
    let geo = g.geometry().clone();
    // Where the interesting bytes are: boot sector, FSInfo, FATs, root directory, first data.
    let fat_end = geo.fat_offset(geo.num_fats) as usize;
    let data = geo.data_start as usize;
    let regions = [
        (0usize, 512usize),
        (512, (geo.reserved_sectors * geo.bytes_per_sector) as usize),
        (
            geo.fat_offset(0) as usize,
            fat_end.min(geo.fat_offset(0) as usize + 4096),
        ),
        (fat_end, data + 64 * 1024),
    ];
    with_deadline(format!("FAT{bits} fuzz"), move || {
        let mut r = Rng(0xF00D + u64::from(bits));
        for round in 0..rounds {
            let mut img = base.clone();
            let n = 1 + r.below(12);
            for _ in 0..n {
                let (a, b) = regions[r.below(regions.len() as u64) as usize];
                if b <= a {
                    continue;
                }
                let off = a + r.below((b - a) as u64) as usize;
                if off < img.len() {
                    img[off] = match r.below(4) {
                        0 => 0xFF,
                        1 => 0,
                        _ => r.next() as u8,
                    };
                }
            }
            let _ = round;
            exercise(Arc::new(MemDevice::from_vec(img)));
        }
    });
}

#[test]
fn random_corruption_fat12() {
    fuzz(12, 300);
}

#[test]
fn random_corruption_fat16() {
    fuzz(16, 200);
}

#[test]
fn random_corruption_fat32() {
    fuzz(32, 150);
}

fn u16le(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

/// The first cluster of the named root entry (by its short name).
fn first_cluster(img: &[u8], fs: &Fat, short: &[u8; 11]) -> (usize, u32) {
    let g = fs.geometry();
    let root = if g.fat_type.name() == "FAT32" {
        g.cluster_offset(g.root_cluster) as usize
    } else {
        g.root_dir_start as usize
    };
    for i in 0..64 {
        let o = root + 32 * i;
        if &img[o..o + 11] == short {
            let hi = if g.fat_type.name() == "FAT32" {
                u32::from(u16le(img, o + 20))
            } else {
                0
            };
            return (o, (hi << 16) | u32::from(u16le(img, o + 26)));
        }
    }
    panic!("no entry {short:?}");
}

fn set_fat(img: &mut [u8], fs: &Fat, copy: u32, c: u32, v: u32) {
    let g = fs.geometry();
    let base = g.fat_offset(copy) as usize;
    match g.fat_type.name() {
        "FAT16" => img[base + 2 * c as usize..][..2].copy_from_slice(&(v as u16).to_le_bytes()),
        "FAT32" => img[base + 4 * c as usize..][..4].copy_from_slice(&v.to_le_bytes()),
        _ => {
            let o = base + (c as usize * 3) / 2;
            let old = u16le(img, o);
            let new = if c & 1 == 1 {
                (old & 0x000F) | ((v as u16) << 4)
            } else {
                (old & 0xF000) | (v as u16 & 0xFFF)
            };
            img[o..o + 2].copy_from_slice(&new.to_le_bytes());
        }
    }
}

fn one_line(e: &vdisk_block::Error, want: &str) {
    let s = e.to_string();
    assert!(!s.contains('\n'), "{s}");
    assert!(s.contains(want), "wanted {want:?} in: {s}");
}

#[test]
fn named_damage() {
    if !have_tools() {
        return;
    }
    for bits in [12, 16, 32] {
        let base = image(bits);
        let probe = Fat::open(Arc::new(MemDevice::from_vec(base.clone())), false).unwrap();
        let (_, c) = first_cluster(&base, &probe, b"ALONGF~1TXT");
        let nf = probe.geometry().num_fats;
        let both = |img: &mut Vec<u8>, c: u32, v: u32| {
            for k in 0..nf {
                set_fat(img, &probe, k, c, v);
            }
        };
        let open = |img: Vec<u8>| Fat::open(Arc::new(MemDevice::from_vec(img)), true).unwrap();
        let mut buf = vec![0u8; 4000];

        // A chain that loops back on itself.
        let mut img = base.clone();
        both(&mut img, c, c);
        let fs = open(img);
        let ino = fs.resolve(b"/a long file name.txt", true).unwrap();
        one_line(&fs.read(ino, 0, &mut buf).unwrap_err(), "loops");
        one_line(&fs.write(ino, 0, b"x").unwrap_err(), "refusing to write");

        // A chain pointing past the end of the volume.
        let mut img = base.clone();
        both(&mut img, c, probe.geometry().cluster_count + 7);
        let fs = open(img);
        let ino = fs.resolve(b"/a long file name.txt", true).unwrap();
        one_line(
            &fs.read(ino, 0, &mut buf).unwrap_err(),
            "outside the volume",
        );

        // Two files sharing clusters.
        let mut img = base.clone();
        let (o, _) = first_cluster(&img, &probe, b"SUBDIR~1   ");
        let _ = o;
        let (ao, _) = first_cluster(&img, &probe, b"ALONGF~1TXT");
        // Point the directory "Sub Dir" at the file's first cluster.
        img[ao + 26..ao + 28].copy_from_slice(&(c as u16).to_le_bytes());
        let sub = first_cluster(&img, &probe, b"SUBDIR~1   ").0;
        img[sub + 26..sub + 28].copy_from_slice(&(c as u16).to_le_bytes());
        img[sub + 20..sub + 22].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
        let fs = open(img);
        let e = fs.create(1, OsStr::new("new"), 0o644, 0, 0).unwrap_err();
        one_line(&e, "cross-linked");

        // FAT copies that differ.
        if nf > 1 {
            let mut img = base.clone();
            set_fat(&mut img, &probe, 1, probe.geometry().cluster_count, 0xFF7);
            let fs = open(img.clone());
            // Reading is fine (the first FAT is read) ...
            let ino = fs.resolve(b"/a long file name.txt", true).unwrap();
            assert_eq!(fs.read(ino, 0, &mut buf).unwrap(), 3000);
            // ... writing is not, and nothing was written.
            one_line(&fs.write(ino, 0, b"x").unwrap_err(), "differs");
            let after = fs.device().clone();
            let mut now = vec![0u8; img.len()];
            after.read_at(&mut now, 0).unwrap();
            assert!(now == img, "FAT{bits}: a refused write changed the image");
        }

        // An absurd BPB: one clear line, from open.
        let mut img = base.clone();
        img[13] = 3;
        let e = Fat::open(Arc::new(MemDevice::from_vec(img)), false).unwrap_err();
        one_line(&e, "sectors per cluster 3");
    }
}
