//! Behaviour vfat users rely on, each checked against fsck.fat and mtools: short-name tails,
//! case-only renames, replacing renames, full directories and full volumes (ENOSPC leaves
//! the volume clean), directories shrinking, errnos for what FAT cannot hold, readers beside
//! a writer.

mod common;

use std::ffi::OsStr;
use std::sync::Arc;

use common::*;
use vdisk_fs::{errno, FileSystem, FileSystemMut, SetAttr};

fn names(fs: &dyn FileSystem, ino: u64) -> Vec<String> {
    fs.readdir_all(ino)
        .unwrap()
        .into_iter()
        .skip(2)
        .map(|e| e.name.into_string().unwrap())
        .collect()
}

#[test]
fn short_name_tails_and_case() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), 16, 16);
    {
        let fs = open_fat(&img, true);
        // statfs's name length as Linux's vfat reports it (255 UTF-16 units, 6 bytes each).
        assert_eq!(fs.statfs().unwrap().name_max, 1530);
        for i in 0..14 {
            fs.create(
                1,
                OsStr::new(&format!("Long File Name {i}.txt")),
                0o644,
                0,
                0,
            )
            .unwrap();
        }
        fs.create(1, OsStr::new("readme.txt"), 0o644, 0, 0).unwrap();
        fs.create(1, OsStr::new("UPPER.TXT"), 0o644, 0, 0).unwrap();
        let e = fs
            .create(1, OsStr::new("README.TXT"), 0o644, 0, 0)
            .unwrap_err();
        assert_eq!(errno(&e), errno::EEXIST, "names are case-insensitive");
        // Trailing dots are dropped, as vfat drops them.
        let r = fs.lookup(1, OsStr::new("readme.txt...")).unwrap().unwrap();
        let ino = fs.lookup(1, OsStr::new("readme.txt")).unwrap().unwrap();
        assert_eq!(r, ino);
        // A change of case only: same object, new spelling.
        fs.rename(1, OsStr::new("readme.txt"), 1, OsStr::new("ReadMe.TXT"), 0)
            .unwrap();
        assert_eq!(fs.lookup(1, OsStr::new("readme.txt")).unwrap(), Some(ino));
        assert!(names(&fs, 1).contains(&"ReadMe.TXT".to_string()));
        assert!(!names(&fs, 1).contains(&"readme.txt".to_string()));
        // Replacing keeps the target's spelling (vfat reuses the target's entry).
        fs.create(1, OsStr::new("target.Txt"), 0o644, 0, 0).unwrap();
        let w = fs.lookup(1, OsStr::new("UPPER.TXT")).unwrap().unwrap();
        fs.write(w, 0, b"moved\n").unwrap();
        fs.rename(1, OsStr::new("UPPER.TXT"), 1, OsStr::new("TARGET.TXT"), 0)
            .unwrap();
        let n = names(&fs, 1);
        assert!(n.contains(&"target.Txt".to_string()) && !n.contains(&"UPPER.TXT".to_string()));
        assert_eq!(fs.lookup(1, OsStr::new("target.txt")).unwrap(), Some(w));
        fs.flush().unwrap();
    }
    fsck_clean(&img, "tails");
    let listing = run(mtool("mdir", &img).arg("::/"));
    for i in 1..=9 {
        assert!(listing.contains(&format!("LONGFI~{i} TXT")), "{listing}");
    }
    // Past nine numeric tails Linux makes a hex tail: two letters, four hex digits, ~N.
    let hex_tails = listing
        .lines()
        .filter(|l| l.starts_with("LO") && !l.starts_with("LONGFI~") && l.contains('~'))
        .count();
    assert_eq!(hex_tails, 5, "{listing}");
    assert!(
        listing.contains("ReadMe.TXT") && listing.contains("target.Txt"),
        "{listing}"
    );
    let t = run(mtool("mtype", &img).arg("::/target.Txt"));
    assert_eq!(t, "moved\n");
}

#[test]
fn enospc_leaves_the_volume_clean() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), 12, 2);
    {
        let fs = open_fat(&img, true);
        // The fixed root directory fills up.
        let mut made = 0;
        let err = loop {
            match fs.create(
                1,
                OsStr::new(&format!("a long name to fill the root {made}")),
                0o644,
                0,
                0,
            ) {
                Ok(_) => made += 1,
                Err(e) => break e,
            }
            assert!(made < 10_000);
        };
        assert_eq!(errno(&err), errno::ENOSPC);
        assert!(made > 10);
        fs.unlink(1, OsStr::new("a long name to fill the root 0"))
            .unwrap();
        fs.unlink(1, OsStr::new("a long name to fill the root 1"))
            .unwrap();
        fs.mkdir(1, OsStr::new("d"), 0o755, 0, 0).unwrap();
        let d = fs.lookup(1, OsStr::new("d")).unwrap().unwrap();
        let f = fs.create(d, OsStr::new("big"), 0o644, 0, 0).unwrap().ino;
        // The data area fills up: the write fails whole, nothing of it allocated.
        let before = fs.statfs().unwrap().blocks_free;
        let e = fs.write(f, 0, &vec![7u8; 4 << 20]).unwrap_err();
        assert_eq!(errno(&e), errno::ENOSPC);
        assert_eq!(fs.statfs().unwrap().blocks_free, before);
        assert_eq!(fs.getattr(f).unwrap().size, 0);
        // What fits, fits.
        let cs = u64::from(fs.geometry().cluster_size);
        let n = (before * cs) as usize;
        fs.write(f, 0, &vec![7u8; n]).unwrap();
        assert_eq!(fs.statfs().unwrap().blocks_free, 0);
        // A directory that must grow now cannot: ENOSPC, and the volume stays clean.
        let mut i = 0;
        let e = loop {
            match fs.create(
                d,
                OsStr::new(&format!("another long file name {i}")),
                0o644,
                0,
                0,
            ) {
                Ok(_) => i += 1,
                Err(e) => break e,
            }
            assert!(i < 1000);
        };
        assert_eq!(errno(&e), errno::ENOSPC);
        fs.flush().unwrap();
    }
    fsck_clean(&img, "full volume");
    let fs = open_fat(&img, false);
    let d = fs.resolve(b"/d/big", true).unwrap();
    assert!(fs.getattr(d).unwrap().size > 0);
}

#[test]
fn directories_shrink_and_errnos() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), 32, 40);
    {
        let fs = open_fat(&img, true);
        let cs = u64::from(fs.geometry().cluster_size);
        let d = fs
            .mkdir(1, OsStr::new("Grow and Shrink"), 0o755, 0, 0)
            .unwrap()
            .ino;
        assert_eq!(fs.getattr(d).unwrap().size, cs);
        for i in 0..60 {
            fs.create(
                d,
                OsStr::new(&format!("file with a long name {i}")),
                0o644,
                0,
                0,
            )
            .unwrap();
        }
        let grown = fs.getattr(d).unwrap().size;
        assert!(grown >= 10 * cs, "{grown}");
        for i in 0..60 {
            fs.unlink(d, OsStr::new(&format!("file with a long name {i}")))
                .unwrap();
        }
        assert_eq!(fs.getattr(d).unwrap().size, cs, "the directory shrank back");
        let sub = fs.mkdir(d, OsStr::new("sub"), 0o755, 0, 0).unwrap();
        assert_eq!(fs.getattr(d).unwrap().nlink, 3);
        assert_eq!(sub.mode, 0o40755);

        let f = fs.create(1, OsStr::new("f"), 0o644, 0, 0).unwrap().ino;
        let code = |r: vdisk_block::Result<vdisk_fs::Attr>| errno(&r.unwrap_err());
        assert_eq!(
            code(fs.symlink(1, OsStr::new("l"), OsStr::new("f"), 0, 0)),
            errno::EPERM
        );
        assert_eq!(code(fs.link(f, 1, OsStr::new("h"))), errno::EPERM);
        assert_eq!(
            code(fs.mknod(1, OsStr::new("p"), 0o010644, 0, 0, 0)),
            errno::EPERM
        );
        assert!(fs.mknod(1, OsStr::new("r"), 0o100644, 0, 0, 0).is_ok());
        let chown = SetAttr {
            uid: Some(1000),
            ..Default::default()
        };
        assert_eq!(code(fs.setattr(f, &chown)), errno::EPERM);
        let chown0 = SetAttr {
            uid: Some(0),
            gid: Some(0),
            ..Default::default()
        };
        assert!(fs.setattr(f, &chown0).is_ok());
        let suid = SetAttr {
            mode: Some(0o4755),
            ..Default::default()
        };
        assert_eq!(code(fs.setattr(f, &suid)), errno::EPERM);
        // chmod vfat cannot show: accepted, nothing changes.
        let m = |p| SetAttr {
            mode: Some(p),
            ..Default::default()
        };
        assert_eq!(fs.setattr(f, &m(0o644)).unwrap().mode, 0o100755);
        // All write bits off: the read-only attribute.
        assert_eq!(fs.setattr(f, &m(0o555)).unwrap().mode, 0o100555);
        assert_eq!(fs.setattr(d, &m(0o555)).unwrap().mode, 0o40755);
        let e = fs.setxattr(f, OsStr::new("user.a"), b"1", 0).unwrap_err();
        assert_eq!(errno(&e), errno::EOPNOTSUPP);
        let e = fs
            .create(1, OsStr::new("bad:name"), 0o644, 0, 0)
            .unwrap_err();
        assert_eq!(errno(&e), errno::EINVAL);
        let e = fs.create(1, OsStr::new(" . "), 0o644, 0, 0).unwrap_err();
        assert_eq!(errno(&e), errno::EINVAL, "nothing left for a short name");
        let long = "n".repeat(256);
        let e = fs.create(1, OsStr::new(&long), 0o644, 0, 0).unwrap_err();
        assert_eq!(errno(&e), errno::ENAMETOOLONG);
        let e = fs
            .rename(1, OsStr::new("Grow and Shrink"), d, OsStr::new("x"), 0)
            .unwrap_err();
        assert_eq!(errno(&e), errno::EINVAL, "a directory into itself");
        let e = fs.write(f, u64::from(u32::MAX), b"x").unwrap_err();
        assert_eq!(errno(&e), errno::EFBIG);
        fs.flush().unwrap();
    }
    fsck_clean(&img, "shrink");
    // FSInfo holds the true free count and a next-free hint inside the volume; the backup
    // boot sector still equals the boot sector.
    let raw = std::fs::read(&img).unwrap();
    let fs = open_fat(&img, false);
    let g = fs.geometry().clone();
    let bps = g.bytes_per_sector as usize;
    let fsi = &raw[g.fsinfo_sector as usize * bps..][..512];
    let u = |o: usize| u32::from_le_bytes([fsi[o], fsi[o + 1], fsi[o + 2], fsi[o + 3]]);
    assert_eq!(u64::from(u(488)), fs.statfs().unwrap().blocks_free);
    assert!(g.valid_cluster(u(492)), "next free {}", u(492));
    let bk = g.backup_boot_sector as usize * bps;
    assert!(raw[..512] == raw[bk..bk + 512]);
    drop(fs);
    let attrs = run(mtool("mattrib", &img).arg("::/f"));
    assert!(attrs.contains('R'), "{attrs}");
    // Read-only opens refuse writes with EROFS.
    let fs = open_fat(&img, false);
    let e = fs.create(1, OsStr::new("g"), 0o644, 0, 0).unwrap_err();
    assert_eq!(errno(&e), errno::EROFS);
}

#[test]
fn readers_beside_a_writer() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), 32, 40);
    let fs = Arc::new(open_fat(&img, true));
    let mut r = Rng(5);
    let fixed = r.bytes(300_000);
    let a = fs
        .create(1, OsStr::new("fixed.bin"), 0o644, 0, 0)
        .unwrap()
        .ino;
    fs.write(a, 0, &fixed).unwrap();
    let b = fs
        .create(1, OsStr::new("growing.bin"), 0o644, 0, 0)
        .unwrap()
        .ino;
    let fixed = Arc::new(fixed);
    let readers: Vec<_> = (0..3)
        .map(|k| {
            let (fs, fixed) = (fs.clone(), fixed.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 70_001];
                for i in 0..40u64 {
                    let off = (i * 7919 + k * 104_729) % 290_000;
                    let n = fs.read(a, off, &mut buf).unwrap();
                    assert_eq!(&buf[..n], &fixed[off as usize..off as usize + n]);
                }
            })
        })
        .collect();
    let mut want = Vec::new();
    for _ in 0..60 {
        let chunk = r.bytes(5000);
        let len = fs.getattr(b).unwrap().size;
        fs.write(b, len, &chunk).unwrap();
        want.extend_from_slice(&chunk);
    }
    for t in readers {
        t.join().unwrap();
    }
    fs.flush().unwrap();
    drop(fs);
    fsck_clean(&img, "concurrent");
    assert_eq!(std::fs::read(dir.path().join("x")).ok(), None);
    let out = dir.path().join("growing.out");
    run(mtool("mcopy", &img).arg("::/growing.bin").arg(&out));
    assert!(std::fs::read(&out).unwrap() == want);
}
