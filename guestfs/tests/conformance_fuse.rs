//! The conformance suite through FUSE: the same random operation sequences as the library
//! runs (vdisk-fs-conformance), made with system calls on a FUSE mount of the ext4 write
//! engine, as `vdisk mount` serves it. Afterwards e2fsck -fn is clean and the kernel's own
//! loop mount and our reader, opened afresh, see exactly the model.

#[path = "../../ext4/tests/ext4_common/mod.rs"]
mod ext4_common;

use std::sync::Arc;

use ext4_common::{run, run_status, scratch, Mount, RwDev};
use vdisk_ext4::{Ext4, Ext4Rw};
use vdisk_fs::{Capabilities, FileSystem};
use vdisk_fs_conformance::{self as conf, describe, Posix};
use vdisk_guestfs::fuse::{session, MountConfig};

const SKIP: &[&str] = &["lost+found"];

/// Mounts `fs` read-write with FUSE, runs `ops` random operations from `seed` through system
/// calls on the mount (mirrored in `m`), unmounts and flushes. Returns the operations' log.
fn ops_through_fuse(
    fs: Arc<dyn FileSystem>,
    m: &mut conf::Model,
    bs: u64,
    seed: u64,
    ops: u32,
) -> Vec<String> {
    let caps = fs.capabilities();
    let mnt = tempfile::tempdir().unwrap();
    let mut cfg = MountConfig::read_only(format!("vdisk-conformance:{}", std::process::id()));
    cfg.read_only = false;
    let bg = session(fs.clone(), mnt.path(), &cfg)
        .unwrap()
        .spawn()
        .unwrap();
    let log = conf::run_ops(&Posix::new(mnt.path(), &caps), m, &caps, bs, seed, ops);
    bg.umount_and_join().unwrap();
    fs.writable().unwrap().flush().unwrap();
    log
}

fn through_fuse(name: &str, mkfs_args: &[&str], seed: u64, ops: u32) {
    let img = scratch().join(format!("{name}.img"));
    let _ = std::fs::remove_file(&img);
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut a = vec!["-q", "-F"];
    a.extend_from_slice(mkfs_args);
    a.push(img.to_str().unwrap());
    run("mkfs.ext4", &a);

    let fs = Arc::new(Ext4Rw::open(RwDev::open(&img)).unwrap());
    let bs = u64::from(fs.statfs().unwrap().block_size);
    let mut m = conf::model_from_fs(&*fs, SKIP);
    let log = ops_through_fuse(fs.clone(), &mut m, bs, seed, ops);
    drop(fs);
    let what = describe(&format!("{name} through FUSE"), &log);

    let (code, out) = run_status("e2fsck", &["-fn", img.to_str().unwrap()]);
    assert!(code == 0, "e2fsck -fn exited {code}:\n{out}\n{what}");
    let dir = tempfile::tempdir().unwrap().keep();
    run(
        "mount",
        &[
            "-o",
            "loop,ro",
            img.to_str().unwrap(),
            dir.to_str().unwrap(),
        ],
    );
    let guard = Mount { dir: dir.clone() };
    let k = conf::kernel_tree(&dir, SKIP);
    drop(guard);
    conf::check_kernel(&k, &m, &Capabilities::POSIX, &what);
    let ours = Ext4::open(RwDev::open(&img)).unwrap();
    conf::check_reader(&ours, &m, SKIP, &what);
}

#[test]
fn ext4_through_fuse_default_features() {
    for seq in 0..3 {
        through_fuse(
            &format!("conf-fuse-def-{seq}"),
            &["-T", "default"],
            11 + seq,
            400,
        );
    }
}

#[test]
fn ext4_through_fuse_centos7_features() {
    for seq in 0..3 {
        through_fuse(
            &format!("conf-fuse-c7-{seq}"),
            &["-T", "default", "-O", "^metadata_csum,^64bit"],
            21 + seq,
            400,
        );
    }
}

/// FAT through FUSE: what vfat cannot hold (owners, symlinks, links, xattrs) is not tried;
/// fsck.fat -n must be clean and our reader, reopened, must see the model. (This kernel has
/// no vfat driver to compare with.)
fn fat_through_fuse(bits: u32, mb: u64, seed: u64, ops: u32) {
    let img = scratch().join(format!("conf-fuse-fat{bits}-{seed}.img"));
    let _ = std::fs::remove_file(&img);
    std::fs::File::create(&img)
        .unwrap()
        .set_len(mb << 20)
        .unwrap();
    let mut a = vec!["-F".to_string(), bits.to_string()];
    if bits == 32 {
        a.extend(["-s".to_string(), "1".to_string()]);
    }
    a.push(img.to_str().unwrap().to_string());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    run("mkfs.fat", &a);
    let fs = Arc::new(vdisk_fat::Fat::open(RwDev::open(&img), true).unwrap());
    let bs = u64::from(fs.statfs().unwrap().block_size);
    let mut m = conf::model_from_fs(&*fs, &[]);
    let log = ops_through_fuse(fs.clone(), &mut m, bs, seed, ops);
    drop(fs);
    let what = describe(&format!("FAT{bits} through FUSE"), &log);
    let (code, out) = run_status("fsck.fat", &["-n", img.to_str().unwrap()]);
    assert!(code == 0, "fsck.fat -n exited {code}:\n{out}\n{what}");
    let ours = vdisk_fat::Fat::open(RwDev::open(&img), false).unwrap();
    conf::check_reader(&ours, &m, &[], &what);
}

#[test]
fn fat_through_fuse_all_types() {
    for seed in 0..2 {
        fat_through_fuse(32, 64, 31 + seed, 300);
        fat_through_fuse(16, 32, 41 + seed, 300);
        fat_through_fuse(12, 4, 51 + seed, 200);
    }
}

/// XFS (v5, written by XfsRw) through FUSE: `xfs_repair -n` clean, and the kernel's mount and
/// our reader, reopened, see the model.
fn xfs_through_fuse(name: &str, opts: &[&str], seed: u64, ops: u32) {
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let img = dir.path().join(format!("{name}.img"));
    std::fs::File::create(&img)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    let mut a = vec!["-q", "-f"];
    a.extend_from_slice(opts);
    a.push(img.to_str().unwrap());
    run("mkfs.xfs", &a);
    let fs = Arc::new(vdisk_xfs::XfsRw::open(RwDev::open(&img)).unwrap());
    let bs = u64::from(fs.statfs().unwrap().block_size);
    let mut m = conf::model_from_fs(&*fs, &[]);
    let log = ops_through_fuse(fs.clone(), &mut m, bs, seed, ops);
    drop(fs);
    let what = describe(&format!("{name} through FUSE"), &log);
    let (code, out) = run_status("xfs_repair", &["-n", img.to_str().unwrap()]);
    assert!(code == 0, "xfs_repair -n exited {code}:\n{out}\n{what}");
    let mnt = tempfile::tempdir().unwrap().keep();
    run(
        "mount",
        &[
            "-o",
            "loop,ro",
            img.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ],
    );
    let guard = Mount { dir: mnt.clone() };
    let k = conf::kernel_tree(&mnt, &[]);
    drop(guard);
    conf::check_kernel(&k, &m, &Capabilities::POSIX, &what);
    let ours = vdisk_xfs::Xfs::open(RwDev::open(&img)).unwrap();
    conf::check_reader(&ours, &m, &[], &what);
}

#[test]
fn xfs_through_fuse_centos7_and_defaults() {
    xfs_through_fuse(
        "conf-fuse-xfs-c7",
        &["-m", "crc=1,finobt=0,reflink=0,rmapbt=0", "-i", "sparse=0"],
        81,
        300,
    );
    xfs_through_fuse("conf-fuse-xfs-def", &[], 91, 300);
}
