//! Our reader against the kernel's loop mount of the same image, on the CentOS 7 feature set,
//! the current mkfs.xfs defaults, and 1 KiB blocks with 4 KiB directory blocks.

mod common;

use common::*;

fn compare(opts: &[&str]) {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, kernel) = build_image(dir.path(), opts);
    let fs = vdisk_xfs::Xfs::open(open_dev(&img)).unwrap();
    let ours = our_manifest(&fs);
    assert_same_manifest(&kernel, &ours, "clean image");
}

#[test]
fn centos7_feature_set() {
    compare(&[
        "-m",
        "crc=1,finobt=0",
        "-i",
        "sparse=0",
        "-m",
        "reflink=0,rmapbt=0",
    ]);
}

#[test]
fn current_defaults() {
    compare(&[]);
}

#[test]
fn small_blocks_big_dir_blocks() {
    compare(&["-b", "size=1024", "-n", "size=4096"]);
}

/// The image really holds every form the reader must handle.
#[test]
fn forms_are_covered() {
    use vdisk_fs::FileSystem;
    use vdisk_xfs::fork::Fork;
    use vdisk_xfs::inode::ForkFormat;
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = build_image(dir.path(), &["-m", "crc=1,finobt=0", "-i", "sparse=0"]);
    let fs = vdisk_xfs::Xfs::open(open_dev(&img)).unwrap();
    let inode = |p: &[u8]| fs.inode(fs.resolve(p, false).unwrap()).unwrap();
    assert_eq!(inode(b"/frag").di_format, ForkFormat::Btree);
    assert_eq!(inode(b"/dirs/node/sub").di_format, ForkFormat::Local);
    assert_eq!(inode(b"/etc").di_format, ForkFormat::Local);
    let bs = u64::from(fs.superblock().sb_blocksize);
    let top = |p: &[u8]| {
        let i = inode(p);
        let ex = fs.extents(&i, Fork::Data).unwrap();
        ex.iter().map(|e| (e.startoff * bs) >> 35).max().unwrap()
    };
    // Data blocks only below 32 GiB (block form), leaf from 32 GiB, free index from 64 GiB.
    assert_eq!(top(b"/dirs/block"), 0);
    assert_eq!(top(b"/dirs/leaf"), 1);
    assert_eq!(top(b"/dirs/node"), 2);
    let attrs = inode(b"/attrs");
    assert_ne!(attrs.di_aformat, Some(ForkFormat::Local));
    assert_eq!(inode(b"/etc/long-link").di_format, ForkFormat::Extents);
    assert_eq!(inode(b"/etc/short-link").di_format, ForkFormat::Local);
}

#[test]
fn nrext64_and_bigtime() {
    compare(&["-i", "nrext64=1", "-m", "bigtime=1"]);
}
