//! `vdisk info` on raw images against `qemu-img info` on the same files.

mod common;

use common::*;
use std::fs;
use std::io::{Seek, SeekFrom, Write};

/// Builds raw files of the shapes users have: empty, sparse, fully allocated, odd-sized, holes
/// in the middle.
fn make_raw_files(dir: &std::path::Path) -> Vec<&'static str> {
    fs::File::create(dir.join("empty.raw")).unwrap();
    fs::File::create(dir.join("sparse.raw"))
        .unwrap()
        .set_len(10 << 30)
        .unwrap();
    fs::write(dir.join("full.raw"), vec![0xa5u8; 3 << 20]).unwrap();
    fs::write(dir.join("odd.raw"), vec![1u8; 1000]).unwrap();
    fs::File::create(dir.join("odd-sparse.raw"))
        .unwrap()
        .set_len(123_456_789)
        .unwrap();
    let mut f = fs::File::create(dir.join("holes.raw")).unwrap();
    f.set_len(64 << 20).unwrap();
    for off in [0u64, 1 << 20, 17 << 20, (64 << 20) - 4096] {
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&[0x5a; 8192][..4096]).unwrap();
    }
    vec![
        "empty.raw",
        "sparse.raw",
        "full.raw",
        "odd.raw",
        "odd-sparse.raw",
        "holes.raw",
    ]
}

#[test]
fn json_equals_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    for name in make_raw_files(dir.path()) {
        for extra in [&[][..], &["--backing-chain"][..], &["-U"][..]] {
            let mut args = vec!["info", "-f", "raw", "--output=json"];
            args.extend_from_slice(extra);
            args.push(name);
            let ours = vdisk_ok(dir.path(), &args);
            let theirs = tool_ok(dir.path(), "qemu-img", &args);
            assert_eq!(json(&ours), json(&theirs), "{name} {extra:?}");
            // Same key order and layout too: scripts diff this text.
            assert_same_lines(&ours, &theirs, name);
        }
    }
}

#[test]
fn human_equals_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    for name in make_raw_files(dir.path()) {
        for extra in [&[][..], &["--backing-chain"][..]] {
            let mut args = vec!["info", "-f", "raw"];
            args.extend_from_slice(extra);
            args.push(name);
            let ours = vdisk_ok(dir.path(), &args);
            let theirs = tool_ok(dir.path(), "qemu-img", &args);
            assert_same_lines(&ours, &theirs, name);
        }
    }
}

#[test]
fn probing_warns_but_reports_the_same() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("p.raw"), vec![7u8; 4096]).unwrap();
    let out = vdisk(dir.path(), &["info", "p.raw"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning") && err.contains("p.raw"), "{err}");
    let theirs = tool_ok(dir.path(), "qemu-img", &["info", "p.raw"]);
    assert_same_lines(&String::from_utf8(out.stdout).unwrap(), &theirs, "probed");
}

#[test]
fn a_raw_image_with_qcow2_magic_is_raw_when_told() {
    // A guest wrote a qcow2 header into its raw disk; -f raw must not be second-guessed.
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; 1 << 20];
    data[..4].copy_from_slice(b"QFI\xfb");
    fs::write(dir.path().join("guest.raw"), &data).unwrap();
    let ours = vdisk_ok(
        dir.path(),
        &["info", "-f", "raw", "--output=json", "guest.raw"],
    );
    assert_eq!(json(&ours)["format"], "raw");
    assert_eq!(json(&ours)["virtual-size"], 1 << 20);
}
