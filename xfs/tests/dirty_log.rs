//! Reads of images with a dirty log, the kernel's own log recovery as the judge: an image is
//! populated, changed through a kernel mount (mutate.py), shut down with the log flushed but
//! nothing written home (`xfs_io shutdown -f`), and then
//!
//! - a copy mounted by the kernel (which replays the log) gives the expected tree;
//! - our read-only open of the unreplayed image (replay in memory) must show exactly that
//!   tree, and leave the image unchanged;
//! - our replay written home (`recover_home`) must pass `xfs_repair -n` and show the same tree
//!   to our reader and to a kernel mount that finds the log clean.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use vdisk_xfs::Xfs;

const CENTOS7: &[&str] = &[
    "-m",
    "crc=1,finobt=0",
    "-i",
    "sparse=0",
    "-m",
    "reflink=0,rmapbt=0",
];

fn mutate(mnt: &Path, round: &str) {
    run(Command::new("timeout")
        .arg("120")
        .arg("python3")
        .arg(tests_dir().join("mutate.py"))
        .arg(mnt)
        .arg(round));
}

fn sha(p: &Path) -> String {
    run(Command::new("sha256sum").arg(p))
}

/// Builds a populated image and leaves it with a dirty log; returns it with the kernel's
/// manifest of a replayed copy.
fn dirty_image(dir: &Path, opts: &[&str]) -> (std::path::PathBuf, String) {
    let (img, _) = build_image(dir, opts);
    let mnt = dir.join("mnt");
    mount(&img, &mnt);
    mutate(&mnt, "data");
    run(&mut Command::new("sync"));
    mutate(&mnt, "meta");
    shutdown_and_umount(&mnt);
    let st = {
        let dev = open_dev(&img);
        let log = vdisk_xfs_log::Log::open(&*dev).unwrap();
        log.state().unwrap()
    };
    assert!(
        !st.clean,
        "the shut-down image must need log recovery: {st:?}"
    );
    let kcopy = dir.join("kernel.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&img)
        .arg(&kcopy));
    let kernel = kernel_manifest(&kcopy, &mnt);
    std::fs::remove_file(&kcopy).unwrap();
    (img, kernel)
}

fn replayed_reads_match_the_kernel(opts: &[&str]) {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, kernel) = dirty_image(dir.path(), opts);
    assert!(kernel.contains("/new/a/f003 "), "{kernel}");
    // Read-only: replayed in memory, the image untouched.
    let before = sha(&img);
    {
        let fs = Xfs::open(open_dev(&img)).unwrap();
        assert!(fs.log_replayed_in_memory());
        assert_same_manifest(&kernel, &our_manifest(&fs), "replayed in memory");
    }
    assert_eq!(sha(&img), before, "a read-only open wrote the image");
    // Written home: clean for xfs_repair, the same tree for us and for the kernel.
    let home = dir.path().join("home.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&img)
        .arg(&home));
    let stats = vdisk_xfs_log::recover_home(&open_rw(&home))
        .unwrap()
        .expect("the log was dirty");
    eprintln!("replayed home: {stats:?}");
    assert!(stats.transactions > 0 && stats.buffers > 0 && stats.inodes > 0);
    {
        let dev = open_dev(&home);
        let log = vdisk_xfs_log::Log::open(&*dev).unwrap();
        assert!(log.state().unwrap().clean);
    }
    xfs_repair_clean(&home);
    let fs = Xfs::open(open_dev(&home)).unwrap();
    assert!(!fs.log_replayed_in_memory());
    assert_same_manifest(&kernel, &our_manifest(&fs), "replayed home");
    let mnt = dir.path().join("mnt");
    assert_same_manifest(&kernel, &kernel_manifest(&home, &mnt), "kernel after home");
    xfs_repair_clean(&home);
}

#[test]
fn centos7_feature_set() {
    replayed_reads_match_the_kernel(CENTOS7);
}

#[test]
fn current_defaults() {
    replayed_reads_match_the_kernel(&[]);
}

/// `Xfs::replay_home` on a filesystem opened over a dirty log: afterwards the device itself
/// reads the same tree and its log is clean.
#[test]
fn replay_home_through_the_engine() {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, kernel) = dirty_image(dir.path(), CENTOS7);
    let dev = std::sync::Arc::new(open_rw(&img));
    let mut fs = Xfs::open(dev.clone()).unwrap();
    assert!(fs.log_replayed_in_memory());
    assert!(fs.replay_home().unwrap());
    assert!(!fs.log_replayed_in_memory());
    assert!(!fs.replay_home().unwrap(), "nothing left to replay");
    assert_same_manifest(&kernel, &our_manifest(&fs), "after replay_home");
    drop(fs);
    xfs_repair_clean(&img);
}
