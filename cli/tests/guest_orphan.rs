//! Files removed while open, through a read-write `vdisk mount`: the open descriptor keeps
//! reading, writing and stat'ing the file after unlink (and after a rename over it); the last
//! close frees its blocks, and the unmounted image is `e2fsck -fn` clean with the blocks free
//! again (debugfs). A server killed while such a file is open leaves the ext4 orphan list,
//! which the next read-write open processes before its first write.

mod guest_common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use guest_common::*;

fn mkfs(img: &Path) {
    sh(&format!(
        "truncate -s 64M {0} && mkfs.ext4 -q -F {0}",
        img.display()
    ));
}

fn mount_rw(img: &Path, mnt: &Path) -> VdiskMount {
    fs::create_dir_all(mnt).unwrap();
    let out = vdisk(&[
        "mount",
        "--format",
        "raw",
        "-a",
        img.to_str().unwrap(),
        "-m",
        "/dev/sda",
        mnt.to_str().unwrap(),
    ]);
    let guard = VdiskMount(mnt.to_path_buf());
    assert!(
        out.status.success(),
        "vdisk mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    guard
}

fn umount(mnt: &Path) {
    let out = vdisk(&["umount", mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "vdisk umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// e2fsck -fn: exit 0, nothing but its passes and the summary.
fn fsck_clean(img: &Path, what: &str) {
    let out = Command::new("e2fsck").arg("-fn").arg(img).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let extra: Vec<&str> = text
        .lines()
        .filter(|l| {
            !(l.starts_with("e2fsck ")
                || l.starts_with("Pass ")
                || l.contains(" files (")
                || l.is_empty())
        })
        .collect();
    assert!(
        out.status.success() && extra.is_empty(),
        "{what}: e2fsck -fn ({:?}):\n{text}",
        out.status.code()
    );
}

fn debugfs(img: &Path, req: &str) -> String {
    sh(&format!("debugfs -R '{req}' {} 2>/dev/null", img.display()))
}

fn free_blocks(img: &Path) -> u64 {
    sh(&format!("dumpe2fs -h {} 2>/dev/null", img.display()))
        .lines()
        .find_map(|l| l.strip_prefix("Free blocks:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("dumpe2fs prints the free blocks")
}

fn blocks_of(img: &Path, ino: u64) -> Vec<u64> {
    debugfs(img, &format!("blocks <{ino}>"))
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

fn in_use(img: &Path, b: u64) -> bool {
    !debugfs(img, &format!("testb {b}")).contains("not in use")
}

#[test]
fn an_unlinked_open_file_works_until_closed_then_its_blocks_are_free() {
    need(&["mkfs.ext4", "e2fsck", "debugfs", "dumpe2fs"]);
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("fs.img");
    mkfs(&img);
    let free0 = free_blocks(&img);
    let mnt = tmp.path().join("mnt");
    let guard = mount_rw(&img, &mnt);
    let data = noise(1, 400_000);
    let owned;
    {
        let path = mnt.join("scratch");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(&data).unwrap();
        let ino = f.metadata().unwrap().ino();
        fs::remove_file(&path).unwrap();
        assert!(!path.exists());
        // fstat, pread, pwrite, ftruncate on the descriptor.
        let m = f.metadata().unwrap();
        assert_eq!((m.nlink(), m.len()), (0, data.len() as u64));
        let mut back = vec![0u8; data.len()];
        f.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, data);
        f.write_all_at(b"tail", data.len() as u64).unwrap();
        f.seek(SeekFrom::Start(data.len() as u64)).unwrap();
        let mut t = String::new();
        f.read_to_string(&mut t).unwrap();
        assert_eq!(t, "tail");
        f.set_len(100_000).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 100_000);
        let mut head = vec![0u8; 1000];
        f.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(head, data[..1000]);
        // On disk meanwhile: the blocks still belong to it (the image is written through).
        f.sync_all().unwrap();
        owned = blocks_of(&img, ino);
        assert!(owned.len() >= 24, "{owned:?}");
        assert!(owned.iter().all(|&b| in_use(&img, b)));

        // A rename over a file that is open keeps the replaced one readable too.
        fs::write(mnt.join("old"), b"old contents").unwrap();
        let held = File::open(mnt.join("old")).unwrap();
        fs::write(mnt.join("new"), b"new contents").unwrap();
        fs::rename(mnt.join("new"), mnt.join("old")).unwrap();
        assert_eq!(fs::read(mnt.join("old")).unwrap(), b"new contents");
        let mut s = String::new();
        (&held).read_to_string(&mut s).unwrap();
        assert_eq!(s, "old contents");
        assert_eq!(held.metadata().unwrap().nlink(), 0);
        // Closing both frees them.
    }
    // A new file may reuse the number; it is a different file to the kernel's cache.
    fs::write(mnt.join("after"), b"after").unwrap();
    assert_eq!(fs::read(mnt.join("after")).unwrap(), b"after");
    umount(&mnt);
    drop(guard);
    fsck_clean(&img, "after close and unmount");
    // Only what is still named holds blocks: "old" (12 bytes) and "after" (5 bytes), which
    // may have taken two of the freed ones.
    assert_eq!(free_blocks(&img), free0 - 2);
    let still = owned.iter().filter(|&&b| in_use(&img, b)).count();
    assert!(
        still <= 2,
        "{still} of the unlinked file's blocks are still in use"
    );
}

#[test]
fn a_killed_server_leaves_the_orphan_list_and_the_next_write_frees_it() {
    need(&["mkfs.ext4", "e2fsck", "debugfs", "dumpe2fs"]);
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("fs.img");
    mkfs(&img);
    let mnt = tmp.path().join("mnt");
    let guard = mount_rw(&img, &mnt);
    let path = mnt.join("tmpfile");
    let mut f = File::create(&path).unwrap();
    f.write_all(&noise(2, 300_000)).unwrap();
    let ino = f.metadata().unwrap().ino();
    fs::remove_file(&path).unwrap();
    // The server dies with the file still open: no release, no flush.
    let src = mount_source(&mnt).unwrap();
    let pid: i32 = src.strip_prefix("vdisk:").unwrap().parse().unwrap();
    sh(&format!("kill -9 {pid}"));
    drop(f);
    let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    drop(guard);
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let owned = blocks_of(&img, ino);
    assert!(owned.len() > 50, "{owned:?}");
    assert!(owned.iter().all(|&b| in_use(&img, b)));
    let sb = sh(&format!("dumpe2fs -h {} 2>/dev/null", img.display()));
    assert!(
        sb.contains(&format!("First orphan inode:       {ino}")),
        "{sb}"
    );
    // The next read-write open frees the orphan before its first write.
    let out = vdisk(&[
        "mkdir",
        "--format",
        "raw",
        "-a",
        img.to_str().unwrap(),
        "-m",
        "/dev/sda",
        "/after",
    ]);
    assert!(
        out.status.success(),
        "vdisk mkdir: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fsck_clean(&img, "after the orphan was processed");
    assert!(owned.iter().all(|&b| !in_use(&img, b)));
}

#[test]
fn clear_errors_for_the_root_and_a_trailing_slash() {
    need(&["mkfs.ext4"]);
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("fs.img");
    mkfs(&img);
    let i = img.to_str().unwrap();
    let base = ["--format", "raw", "-a", i, "-m", "/dev/sda"];
    let run = |cmd: &str, rest: &[&str]| {
        let mut a = vec![cmd];
        a.extend_from_slice(&base);
        a.extend_from_slice(rest);
        let out = vdisk(&a);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run("rm", &["/"]);
    assert!(!ok && err.contains("root directory"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let src = tmp.path().join("src");
    fs::write(&src, b"x").unwrap();
    let (ok, err) = run("write", &["/file", "--from", src.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, err) = run("cat", &["/file/"]);
    assert!(!ok && err.contains("/file/: Not a directory"), "{err}");
}
