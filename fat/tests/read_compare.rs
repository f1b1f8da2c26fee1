//! Reads: trees written by mtools (long names, mixed case, deep directories, a directory over
//! several clusters, fragmented chains, empty files) read by our engine must equal what
//! mtools itself reads back, on FAT12, FAT16 and FAT32.
//!
//! (The kernel has no vfat module on the build machines, so mtools is the reader compared
//! against; modes and owners follow fs/fat/inode.c's fat_make_mode with default options.)

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::*;
use vdisk_fs::FileSystem;

fn populate(img: &Path, dir: &Path, seed: u64) {
    let mut r = Rng(seed);
    let src = dir.join("src");
    let _ = std::fs::remove_dir_all(&src);
    let deep = src.join("Deep/er/and/a much deeper Directory/x");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::create_dir_all(src.join("UPPER")).unwrap();
    std::fs::create_dir_all(src.join("Many Files Here")).unwrap();
    std::fs::write(src.join("readme.txt"), b"hi\n").unwrap();
    std::fs::write(src.join("Long File Name With Spaces.TXT"), r.bytes(5000)).unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    std::fs::write(src.join("UPPER/FILE.TXT"), b"x\n").unwrap();
    std::fs::write(src.join("MiXeD.CaSe"), r.bytes(3)).unwrap();
    std::fs::write(src.join("dots.in.the.name.tar.gz"), r.bytes(700)).unwrap();
    std::fs::write(deep.join("Big.bin"), r.bytes(150_000)).unwrap();
    std::fs::write(src.join("Ünïcödé name.txt"), b"unicode\n").unwrap();
    for i in 0..70 {
        std::fs::write(
            src.join(format!(
                "Many Files Here/a rather long file name number {i}.dat"
            )),
            r.bytes(i * 37),
        )
        .unwrap();
    }
    let mut args: Vec<std::ffi::OsString> = vec!["-s".into(), "-m".into()];
    for e in std::fs::read_dir(&src).unwrap() {
        args.push(e.unwrap().path().into());
    }
    args.push("::/".into());
    run(mtool("mcopy", img).args(&args));
    // Fragment the free space, then write a file across the holes.
    run(mtool("mmd", img).arg("::/frag"));
    let piece = dir.join("piece");
    for i in 0..24 {
        std::fs::write(&piece, r.bytes(3000)).unwrap();
        run(mtool("mcopy", img).arg(&piece).arg(format!("::/frag/p{i}")));
    }
    for i in (0..24).step_by(2) {
        run(mtool("mdel", img).arg(format!("::/frag/p{i}")));
    }
    let big = dir.join("Fragmented.bin");
    std::fs::write(&big, r.bytes(90_000)).unwrap();
    run(mtool("mcopy", img).arg(&big).arg("::/frag/"));
    // A read-only file.
    std::fs::write(&piece, b"ro\n").unwrap();
    run(mtool("mcopy", img).arg(&piece).arg("::/ReadOnly.txt"));
    run(mtool("mattrib", img).args(["+r", "::/ReadOnly.txt"]));
}

fn compare(bits: u32, mb: u64) {
    if !have_tools() {
        eprintln!("skipped: mkfs.fat or mtools missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), bits, mb);
    populate(&img, dir.path(), u64::from(bits) * 7919);
    let fs = open_fat(&img, false);
    assert_eq!(fs.fat_type().name(), format!("FAT{bits}"));
    assert_eq!(fs.label().as_deref(), Some(format!("LABEL{bits}").as_str()));
    let ours = our_tree(&fs);
    let theirs = mtools_tree(&img, dir.path());
    assert!(ours.len() > 90, "{}", ours.len());
    assert_same(&ours, &theirs, &format!("FAT{bits}"));

    // Modes and owners as vfat shows them with default options (umask 022).
    let root = fs.getattr(fs.root_ino()).unwrap();
    assert_eq!((root.mode, root.uid, root.gid), (0o40755, 0, 0));
    let f = fs
        .getattr(fs.resolve(b"/readme.txt", true).unwrap())
        .unwrap();
    assert_eq!((f.mode, f.nlink, f.size), (0o100755, 1, 3));
    let ro = fs
        .getattr(fs.resolve(b"/ReadOnly.txt", true).unwrap())
        .unwrap();
    assert_eq!(ro.mode, 0o100555);
    let d = fs.getattr(fs.resolve(b"/Deep/er", true).unwrap()).unwrap();
    assert_eq!((d.mode, d.nlink), (0o40755, 3));
    assert_eq!(root.nlink, 2 + 4, "root holds four directories");

    // Case-insensitive lookups that keep the stored case; the short alias finds it too.
    let a = fs.resolve(b"/readme.txt", true).unwrap();
    assert_eq!(fs.resolve(b"/README.TXT", true).unwrap(), a);
    assert_eq!(fs.resolve(b"/ReadMe.Txt", true).unwrap(), a);
    let l = fs
        .resolve(b"/Long File Name With Spaces.TXT", true)
        .unwrap();
    assert_eq!(fs.resolve(b"/LONGFI~1.TXT", true).unwrap(), l);
    assert_eq!(
        fs.resolve(b"/long file name with spaces.txt", true)
            .unwrap(),
        l
    );
    assert!(fs.lookup(1, OsStr::new("nonexistent")).unwrap().is_none());
    // Numbers are stable: the same object answers the same number again.
    assert_eq!(fs.resolve(b"/readme.txt", true).unwrap(), a);

    // Free space agrees with mdir's "bytes free".
    let listing = run(mtool("mdir", &img).arg("::/"));
    let free_line = listing.lines().find(|l| l.contains("bytes free")).unwrap();
    let free: u64 = free_line
        .split_whitespace()
        .take_while(|w| *w != "bytes")
        .collect::<String>()
        .parse()
        .unwrap();
    let s = fs.statfs().unwrap();
    assert_eq!(s.blocks_free * u64::from(s.block_size), free, "{free_line}");
    // xattrs: none.
    assert!(fs.listxattr(a).unwrap().is_empty());
    let e = fs.getxattr(a, OsStr::new("user.x")).unwrap_err();
    assert_eq!(vdisk_fs::errno(&e), 95);
}

#[test]
fn fat12_matches_mtools() {
    compare(12, 4);
}

#[test]
fn fat16_matches_mtools() {
    compare(16, 16);
}

#[test]
fn fat32_matches_mtools() {
    compare(32, 40);
}
