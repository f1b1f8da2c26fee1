//! Images whose refcounts call a metadata cluster free: the allocator must refuse to hand it
//! out (a write there would destroy the image) with a corruption error, and leave the file
//! as it was. qemu's default metadata overlap checks refuse the same writes.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use vdisk_block::{BlockDevice, Error};
use vdisk_qcow2::Qcow2;
use vdisk_raw::{OpenOptions, RawFile};

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn be64(f: &std::fs::File, at: u64) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, at).unwrap();
    u64::from_be_bytes(b)
}

/// Sets the 16-bit refcount of the host cluster at `offset` to 0 (64 KiB clusters, one
/// refcount block).
fn zero_refcount(path: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let reftable = be64(&f, 48);
    let block = be64(&f, reftable);
    f.write_all_at(&[0, 0], block + (offset >> 16) * 2).unwrap();
}

/// An image with data in its first cluster, its L2 table, its refcount block and (with
/// `snapshot`) a snapshot table, made by qemu.
fn image(dir: &Path, snapshot: bool) -> std::path::PathBuf {
    let p = dir.join("a.qcow2");
    sh(&[
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        p.to_str().unwrap(),
        "64M",
    ]);
    sh(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x61 0 64k",
        p.to_str().unwrap(),
    ]);
    if snapshot {
        sh(&["qemu-img", "snapshot", "-c", "s1", p.to_str().unwrap()]);
    }
    p
}

/// The bytes of the cluster at `offset` (up to the end of the file).
fn cluster_at(path: &Path, offset: u64) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let len = f
        .metadata()
        .unwrap()
        .len()
        .saturating_sub(offset)
        .min(65536);
    let mut b = vec![0u8; len as usize];
    f.read_exact_at(&mut b, offset).unwrap();
    b
}

/// Zeroes the refcount of the cluster at `victim`, then writes into a fresh guest cluster:
/// the write must fail naming `what`, and the victim cluster must be left as it was.
fn refused(p: &Path, victim: u64, what: &str) {
    zero_refcount(p, victim);
    let before = cluster_at(p, victim);
    let q = Qcow2::open_rw(Arc::new(RawFile::open(p, &OpenOptions::default()).unwrap())).unwrap();
    let r = q.write_at(&[0x62; 4096], 8 << 20).and_then(|()| q.flush());
    let e = r.expect_err("a write over metadata must fail");
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains(what), "{e}");
    drop(q);
    assert!(
        before == cluster_at(p, victim),
        "the {what} at {victim:#x} was overwritten"
    );
    // What was there still reads back.
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-r", "-c", "read -P 0x61 0 64k"])
        .arg(p)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(!s.contains("verification failed"), "{s}");
}

#[test]
fn an_l2_table_called_free_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let p = image(dir.path(), false);
    let f = std::fs::File::open(&p).unwrap();
    let l1 = be64(&f, 40);
    let l2 = be64(&f, l1) & 0x00ff_ffff_ffff_fe00;
    assert_ne!(l2, 0);
    refused(&p, l2, "L2 table");
}

#[test]
fn a_refcount_block_called_free_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let p = image(dir.path(), false);
    let f = std::fs::File::open(&p).unwrap();
    let block = be64(&f, be64(&f, 48));
    refused(&p, block, "refcount block");
}

#[test]
fn a_snapshot_table_called_free_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let p = image(dir.path(), true);
    let f = std::fs::File::open(&p).unwrap();
    let table = be64(&f, 64);
    assert_ne!(table, 0);
    refused(&p, table, "snapshot table");
}

#[test]
fn a_snapshot_l1_table_called_free_is_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let p = image(dir.path(), true);
    let f = std::fs::File::open(&p).unwrap();
    // The first snapshot entry starts with its L1 table's offset.
    let l1 = be64(&f, be64(&f, 64));
    assert_ne!(l1, 0);
    refused(&p, l1, "L1 table of a snapshot");
}
