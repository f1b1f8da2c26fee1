//! Files removed while open, through the library (the path the FUSE adapter takes): the inode
//! stays usable by number and sits on the ext4 orphan list until its release, which frees its
//! blocks; a session that ends without the release (a crash) leaves the list, and the next
//! read-write open frees what it holds before its first write. e2fsck -fn is the judge, and
//! debugfs says whether the orphan's blocks are free again.

mod ext4_common;

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};

use ext4_common::{run, run_status, scratch, RwDev};
use vdisk_ext4::Ext4Rw;
use vdisk_fs::{errno, FileSystem, FileSystemMut, Ino, SetAttr};

fn mkimg(name: &str, args: &[&str]) -> PathBuf {
    let img = scratch().join(format!("{name}.img"));
    let _ = std::fs::remove_file(&img);
    File::create(&img).unwrap().set_len(32 << 20).unwrap();
    let mut a = vec!["-q", "-F"];
    a.extend_from_slice(args);
    a.push(img.to_str().unwrap());
    run("mkfs.ext4", &a);
    img
}

/// e2fsck -fn exits 0 and prints nothing but its passes and the summary.
fn fsck_clean(img: &Path, what: &str) {
    let (code, out) = run_status("e2fsck", &["-fn", img.to_str().unwrap()]);
    let extra: Vec<&str> = out
        .lines()
        .filter(|l| {
            !(l.starts_with("e2fsck ")
                || l.starts_with("Pass ")
                || l.contains(" files (")
                || l.is_empty())
        })
        .collect();
    assert!(
        code == 0 && extra.is_empty(),
        "{what}: e2fsck -fn exited {code}:\n{out}"
    );
}

/// A superblock field as `dumpe2fs -h` prints it.
fn sb_field(img: &Path, field: &str) -> Option<String> {
    let out = run("dumpe2fs", &["-h", img.to_str().unwrap()]);
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// The data blocks of inode `ino`, as debugfs lists them.
fn blocks_of(img: &Path, ino: Ino) -> Vec<u64> {
    let out = run(
        "debugfs",
        &["-R", &format!("blocks <{ino}>"), img.to_str().unwrap()],
    );
    out.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// True when debugfs says block `b` is in use.
fn block_in_use(img: &Path, b: u64) -> bool {
    let out = run(
        "debugfs",
        &["-R", &format!("testb {b}"), img.to_str().unwrap()],
    );
    assert!(out.contains("Block"), "debugfs testb: {out}");
    !out.contains("not in use")
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn noise(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn read_all(fs: &Ext4Rw, ino: Ino, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len + 10];
    let n = fs.read(ino, 0, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn unlinked_open_file_lives_until_release_then_its_blocks_are_free() {
    for (label, args) in [
        ("journal", &[][..]),
        ("ext2", &["-t", "ext2"][..]),
        (
            "no-extents-1k",
            &["-O", "^extents,^64bit", "-b", "1024"][..],
        ),
    ] {
        let img = mkimg(&format!("orphan-{label}"), args);
        let free_before = sb_field(&img, "Free blocks").unwrap();
        let fs = Ext4Rw::open(RwDev::open(&img)).unwrap();
        assert!(fs.capabilities().open_unlinked);
        let root = fs.root_ino();
        let data = noise(300_000, 7);
        let ino = fs.create(root, name("f"), 0o644, 0, 0).unwrap().ino;
        fs.write(ino, 0, &data).unwrap();
        fs.flush().unwrap();
        let owned = blocks_of(&img, ino);
        assert!(owned.len() >= 30, "{label}: {owned:?}");

        let kept = fs.unlink_kept(root, name("f")).unwrap();
        assert_eq!(kept, Some(ino), "{label}");
        assert_eq!(fs.lookup(root, name("f")).unwrap(), None);
        // Still a file, by number: stat, read, write, truncate.
        let a = fs.getattr(ino).unwrap();
        assert_eq!((a.nlink, a.size), (0, data.len() as u64), "{label}");
        assert_eq!(read_all(&fs, ino, data.len()), data, "{label}");
        let more = noise(50_000, 9);
        fs.write(ino, data.len() as u64, &more).unwrap();
        let mut both = data.clone();
        both.extend_from_slice(&more);
        assert_eq!(read_all(&fs, ino, both.len()), both, "{label}");
        let a = fs
            .setattr(
                ino,
                &SetAttr {
                    mode: Some(0o600),
                    ..SetAttr::default()
                },
            )
            .unwrap();
        assert_eq!(a.mode & 0o7777, 0o600);
        // No name can be given back to it.
        let e = fs.link(ino, root, name("back")).unwrap_err();
        assert_eq!(vdisk_fs::errno(&e), errno::ENOENT, "{label}");

        // Meanwhile it is on the orphan list on disk, as the kernel keeps it.
        fs.flush().unwrap();
        assert_eq!(
            sb_field(&img, "First orphan inode").as_deref(),
            Some(ino.to_string().as_str()),
            "{label}"
        );
        let owned = blocks_of(&img, ino);
        assert!(owned.iter().all(|&b| block_in_use(&img, b)));

        fs.release_orphan(ino).unwrap();
        // Releasing again (or something never kept) does nothing.
        fs.release_orphan(ino).unwrap();
        fs.release_orphan(Ino::from(12u32)).unwrap();
        drop(fs);
        fsck_clean(&img, label);
        assert_eq!(sb_field(&img, "First orphan inode"), None, "{label}");
        assert_eq!(
            sb_field(&img, "Free blocks").unwrap(),
            free_before,
            "{label}"
        );
        for b in owned {
            assert!(!block_in_use(&img, b), "{label}: block {b} still in use");
        }
    }
}

#[test]
fn orphans_chain_through_dtime_and_leave_in_any_order() {
    let img = mkimg("orphan-chain", &[]);
    let free_before = sb_field(&img, "Free blocks").unwrap();
    let fs = Ext4Rw::open(RwDev::open(&img)).unwrap();
    let root = fs.root_ino();
    let mut inos = Vec::new();
    for i in 0..4 {
        let n = format!("f{i}");
        let ino = fs.create(root, name(&n), 0o644, 0, 0).unwrap().ino;
        fs.write(ino, 0, &noise(20_000, i)).unwrap();
        inos.push(ino);
    }
    // One replaced by a rename while open, one kept by unlink, one hard-linked twice.
    fs.link(inos[2], root, name("f2b")).unwrap();
    assert_eq!(
        fs.rename_kept(root, name("f0"), root, name("f1"), 0)
            .unwrap(),
        Some(inos[1])
    );
    assert_eq!(fs.unlink_kept(root, name("f3")).unwrap(), Some(inos[3]));
    assert_eq!(fs.unlink_kept(root, name("f2")).unwrap(), None);
    assert_eq!(fs.unlink_kept(root, name("f2b")).unwrap(), Some(inos[2]));
    assert_eq!(read_all(&fs, inos[1], 20_000), noise(20_000, 1));
    // The renamed file reads as itself under the new name.
    let f1 = fs.lookup(root, name("f1")).unwrap().unwrap();
    assert_eq!(f1, inos[0]);
    // A directory removed while open lists nothing and takes no new entries.
    let d = fs.mkdir(root, name("d"), 0o755, 0, 0).unwrap().ino;
    assert_eq!(fs.rmdir_kept(root, name("d")).unwrap(), Some(d));
    let mut names = Vec::new();
    fs.readdir(d, 0, &mut |e| {
        names.push(e.name);
        true
    })
    .unwrap();
    assert!(names.is_empty(), "{names:?}");
    let e = fs.create(d, name("x"), 0o644, 0, 0).unwrap_err();
    assert_eq!(vdisk_fs::errno(&e), errno::ENOENT);
    // The middle of the list first, then the rest.
    for ino in [inos[3], d, inos[1], inos[2]] {
        fs.release_orphan(ino).unwrap();
    }
    fs.unlink(root, name("f1")).unwrap();
    drop(fs);
    fsck_clean(&img, "chain");
    assert_eq!(sb_field(&img, "Free blocks").unwrap(), free_before);
}

#[test]
fn inode_numbers_reused_after_unlink_get_a_new_generation() {
    let img = mkimg("orphan-generation", &[]);
    let fs = Ext4Rw::open(RwDev::open(&img)).unwrap();
    let root = fs.root_ino();
    let a = fs.create(root, name("a"), 0o644, 0, 0).unwrap().ino;
    let g1 = fs.generation(a).unwrap();
    fs.unlink(root, name("a")).unwrap();
    let b = fs.create(root, name("b"), 0o644, 0, 0).unwrap().ino;
    assert_eq!(a, b, "the freed inode number is reused");
    assert_ne!(fs.generation(b).unwrap(), g1);
}

#[test]
fn a_session_ended_without_release_leaves_the_orphan_list_for_the_next_open() {
    for (label, args) in [("journal", &[][..]), ("ext2", &["-t", "ext2"][..])] {
        let img = mkimg(&format!("orphan-crash-{label}"), args);
        let fs = Ext4Rw::open(RwDev::open(&img)).unwrap();
        let root = fs.root_ino();
        let ino = fs.create(root, name("tmp"), 0o600, 0, 0).unwrap().ino;
        fs.write(ino, 0, &noise(200_000, 3)).unwrap();
        assert_eq!(fs.unlink_kept(root, name("tmp")).unwrap(), Some(ino));
        let keep = fs.create(root, name("keep"), 0o644, 0, 0).unwrap().ino;
        fs.write(keep, 0, b"survives").unwrap();
        fs.flush().unwrap();
        let owned = blocks_of(&img, ino);
        // The process dies: no release, no unmount.
        std::mem::forget(fs);

        // What is left is what the kernel leaves: the orphan list, which e2fsck (like the
        // kernel's mount) processes; nothing else is wrong.
        assert_eq!(
            sb_field(&img, "First orphan inode").as_deref(),
            Some(ino.to_string().as_str())
        );
        // A kernel crashed with a file open and unlinked (loop mount, xfs_io shutdown, on a
        // filesystem without orphan_file) leaves e2fsck -fn saying exactly these kinds of
        // thing: the orphan looks deleted, its blocks and inode still marked in use.
        let kernel_leaves = [
            "Deleted inode N has zero dtime.  Fix? no",
            "Block bitmap differences:  -(N--N)",
            "Block bitmap differences:  -N",
            "Fix? no",
            "Inode bitmap differences:  -N",
            "Free blocks count wrong (N, counted=N).",
            "Free inodes count wrong (N, counted=N).",
            "Free blocks count wrong for group #N (N, counted=N).",
            "Free inodes count wrong for group #N (N, counted=N).",
        ];
        let (_, out) = run_status("e2fsck", &["-fn", img.to_str().unwrap()]);
        for l in out.lines() {
            if l.is_empty()
                || l.starts_with("e2fsck ")
                || l.starts_with("Pass ")
                || l.contains(" files (")
                || l.contains("WARNING: Filesystem still has errors")
                || l.starts_with("Warning: skipping journal recovery")
            {
                continue;
            }
            let norm: String = {
                let mut o = String::new();
                let mut digits = false;
                for c in l.chars() {
                    if c.is_ascii_digit() {
                        if !digits {
                            o.push('N');
                        }
                        digits = true;
                    } else {
                        digits = false;
                        o.push(c);
                    }
                }
                o
            };
            assert!(
                kernel_leaves.contains(&norm.as_str()),
                "{label}: e2fsck -fn after the crash says more than after a kernel crash: {l:?}\n{out}"
            );
        }

        // A read-only open reads the tree as it was.
        {
            let ro = vdisk_ext4::Ext4::open(RwDev::open(&img)).unwrap();
            let k = ro.lookup(2, name("keep")).unwrap().unwrap();
            let mut b = [0u8; 8];
            ro.read(k, 0, &mut b).unwrap();
            assert_eq!(&b, b"survives");
            assert_eq!(ro.lookup(2, name("tmp")).unwrap(), None);
        }
        // The next read-write open frees the orphan before its first write.
        let fs = Ext4Rw::open(RwDev::open(&img)).unwrap();
        fs.mkdir(root, name("after"), 0o755, 0, 0).unwrap();
        drop(fs);
        fsck_clean(&img, label);
        assert_eq!(sb_field(&img, "First orphan inode"), None, "{label}");
        for b in owned {
            assert!(!block_in_use(&img, b), "{label}: block {b} still in use");
        }
    }
}

#[test]
fn a_damaged_orphan_list_refuses_writes() {
    let img = mkimg("orphan-bad", &[]);
    // Point s_last_orphan at a free inode (offset 0xE8 of the superblock at 1024); no
    // metadata_csum, so no checksum to fix.
    run("tune2fs", &["-O", "^metadata_csum", img.to_str().unwrap()]);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &500u32.to_le_bytes(), 1024 + 0xE8).unwrap();
    drop(f);
    let fs = Ext4Rw::open(RwDev::open(&img)).unwrap();
    // Reading works.
    assert!(fs.lookup(2, name("lost+found")).unwrap().is_some());
    let e = fs.mkdir(2, name("x"), 0o755, 0, 0).unwrap_err().to_string();
    assert!(
        e.contains("orphan list names inode 500") && e.contains("e2fsck -fy"),
        "{e}"
    );
}
