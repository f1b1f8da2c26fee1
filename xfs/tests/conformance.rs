//! The conformance suite every engine runs (vdisk-fs-conformance) on XFS through the library:
//! random operation sequences through `XfsRw`, mirrored in the model; afterwards
//! `xfs_repair -n` is clean and the kernel's loop mount and our reader, opened afresh, see
//! exactly the model. On the CentOS 7 feature set and the current mkfs.xfs defaults.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::{can_loop_mount, mount_with, open_dev, run, umount, xfs_repair_clean};
use vdisk_fs::{Capabilities, FileSystem, FileSystemMut};
use vdisk_fs_conformance::{self as conf, describe};
use vdisk_xfs::{Xfs, XfsRw};

const CENTOS7: &[&str] = &["-m", "crc=1,finobt=0,reflink=0,rmapbt=0", "-i", "sparse=0"];

fn conformance(name: &str, opts: &[&str], seed: u64, ops: u32) {
    if !can_loop_mount() {
        panic!("needs root, mkfs.xfs and loop devices (run .ci/run)");
    }
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let img = dir.path().join("xfs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    run(Command::new("timeout")
        .args(["60", "mkfs.xfs", "-q", "-f"])
        .args(opts)
        .arg(&img));
    let fs = XfsRw::open(Arc::new(common::open_rw(&img))).unwrap();
    let caps = fs.capabilities();
    let bs = u64::from(fs.statfs().unwrap().block_size);
    let mut m = conf::model_from_fs(&fs, &[]);
    let log = conf::run_ops(&conf::Lib(&fs), &mut m, &caps, bs, seed, ops);
    fs.flush().unwrap();
    drop(fs);
    let what = describe(&format!("{name} seed {seed}"), &log);
    xfs_repair_clean(&img);
    let mnt = dir.path().join("mnt");
    mount_with(&img, &mnt, "loop,ro");
    let k = conf::kernel_tree(&mnt, &[]);
    umount(&mnt);
    conf::check_kernel(&k, &m, &Capabilities::POSIX, &what);
    let ours = Xfs::open(open_dev(&img)).unwrap();
    conf::check_reader(&ours, &m, &[], &what);
    let _ = Path::new(&img);
}

#[test]
fn conformance_centos7_features() {
    for seed in 0..2 {
        conformance("xfs-centos7", CENTOS7, 61 + seed, 300);
    }
}

#[test]
fn conformance_current_defaults() {
    for seed in 0..2 {
        conformance("xfs-defaults", &[], 71 + seed, 300);
    }
}
