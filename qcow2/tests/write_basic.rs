//! Smoke tests of the write path against qemu-img.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use vdisk_block::{BlockDevice, Preallocation};
use vdisk_qcow2::{CreateOptions, Qcow2};
use vdisk_raw::RawFile;

fn qemu_check(path: &Path) -> String {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json"])
        .arg(path)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "qemu-img check failed: {s} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    s
}

fn create(path: &Path, opts: &CreateOptions) -> Qcow2 {
    let f = Arc::new(RawFile::create(path, 0, Preallocation::Off).unwrap());
    Qcow2::create(f, opts).unwrap()
}

#[test]
fn create_write_read_check() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.qcow2");
    let q = create(
        &p,
        &CreateOptions {
            size: 64 << 20,
            ..Default::default()
        },
    );
    q.write_at(b"hello world", 12345).unwrap();
    q.write_at(&vec![7u8; 200_000], 1 << 20).unwrap();
    q.flush().unwrap();
    let mut b = [0u8; 11];
    q.read_at(&mut b, 12345).unwrap();
    assert_eq!(&b, b"hello world");
    drop(q);
    qemu_check(&p);
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "read -P 7 1048576 200000"])
        .arg(&p)
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(!s.contains("Pattern verification failed"), "{s}");
}
