//! The conformance suite every engine runs (vdisk-fs-conformance), on FAT12, FAT16 and
//! FAT32 through the library: what FAT cannot hold (symlinks, hard links, owners, xattrs)
//! is skipped as the engine's capabilities say. Afterwards `fsck.fat -n` is clean, mtools
//! sees the same tree as our engine, and our engine reopened sees exactly the model.
//! (The host's kernel may have no vfat driver: kernel_vfat.rs boots one under qemu.)

mod common;

use common::{assert_same, fsck_clean, mkfs, mtools_tree, open_fat, our_tree};
use vdisk_fs::{FileSystem, FileSystemMut};
use vdisk_fs_conformance::{self as conf, describe};

fn run(bits: u32, mb: u64, seed: u64, ops: u32) {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), bits, mb);
    let fs = open_fat(&img, true);
    let caps = fs.capabilities();
    let bs = u64::from(fs.statfs().unwrap().block_size);
    let mut m = conf::model_from_fs(&fs, &[]);
    let log = conf::run_ops(&conf::Lib(&fs), &mut m, &caps, bs, seed, ops);
    fs.flush().unwrap();
    drop(fs);
    let what = describe(&format!("FAT{bits} seed {seed}"), &log);
    fsck_clean(&img, &what);
    let ours = open_fat(&img, false);
    conf::check_reader(&ours, &m, &[], &what);
    assert_same(&our_tree(&ours), &mtools_tree(&img, dir.path()), &what);
}

#[test]
fn conformance_fat32() {
    for seed in 0..3 {
        run(32, 64, 100 + seed, 300);
    }
}

#[test]
fn conformance_fat16() {
    for seed in 0..3 {
        run(16, 32, 200 + seed, 300);
    }
}

#[test]
fn conformance_fat12() {
    for seed in 0..3 {
        run(12, 4, 300 + seed, 200);
    }
}
