//! `vdisk convert -O raw` flags against qemu-img: several sources, -n, --target-is-zero, -S,
//! -m, and no half-written target left on failure.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn setup(d: &Path) {
    tool_ok(d, "qemu-img", &["create", "-f", "raw", "s1.raw", "1M"]);
    tool_ok(
        d,
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 1 0 64k",
            "-c",
            "write -z 128k 64k",
            "s1.raw",
        ],
    );
    tool_ok(
        d,
        "qemu-img",
        &["create", "-f", "qcow2", "s2.qcow2", "1536k"],
    );
    tool_ok(
        d,
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 2 512k 100k", "s2.qcow2"],
    );
}

fn same_file(d: &Path, a: &str, b: &str) {
    assert!(
        std::fs::read(d.join(a)).unwrap() == std::fs::read(d.join(b)).unwrap(),
        "{a} != {b}"
    );
}

#[test]
fn several_sources_are_concatenated() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    vdisk_ok(
        d,
        &[
            "convert", "-O", "raw", "s1.raw", "s2.qcow2", "s1.raw", "ours.raw",
        ],
    );
    tool_ok(
        d,
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            "s1.raw",
            "s2.qcow2",
            "s1.raw",
            "theirs.raw",
        ],
    );
    same_file(d, "ours.raw", "theirs.raw");
}

#[test]
fn into_an_existing_target() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    // A target full of 0xff: -n must zero what the source has as zeros or holes.
    for name in ["ours.raw", "theirs.raw"] {
        std::fs::write(d.join(name), vec![0xffu8; 3 << 20]).unwrap();
    }
    vdisk_ok(d, &["convert", "-n", "-O", "raw", "s2.qcow2", "ours.raw"]);
    tool_ok(
        d,
        "qemu-img",
        &["convert", "-n", "-O", "raw", "s2.qcow2", "theirs.raw"],
    );
    same_file(d, "ours.raw", "theirs.raw");

    // --target-is-zero trusts the caller: zero ranges are left alone.
    tool_ok(d, "qemu-img", &["create", "-f", "raw", "z.raw", "2M"]);
    vdisk_ok(
        d,
        &[
            "convert",
            "-n",
            "--target-is-zero",
            "-O",
            "raw",
            "s2.qcow2",
            "z.raw",
        ],
    );
    tool_ok(
        d,
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", "s2.qcow2", "z.raw"],
    );

    // Too small a target, a missing target, and --target-is-zero without -n are refused.
    tool_ok(d, "qemu-img", &["create", "-f", "raw", "small.raw", "1M"]);
    let out = vdisk(d, &["convert", "-n", "-O", "raw", "s2.qcow2", "small.raw"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("smaller"));
    let out = vdisk(
        d,
        &["convert", "-n", "-O", "raw", "s2.qcow2", "missing.raw"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!d.join("missing.raw").exists());
    let out = vdisk(
        d,
        &[
            "convert",
            "--target-is-zero",
            "-O",
            "raw",
            "s2.qcow2",
            "t.raw",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn sparse_size_and_workers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    // -S 0 allocates every byte, as qemu-img does.
    vdisk_ok(
        d,
        &["convert", "-S", "0", "-O", "raw", "s2.qcow2", "full.raw"],
    );
    tool_ok(
        d,
        "qemu-img",
        &["convert", "-S", "0", "-O", "raw", "s2.qcow2", "qfull.raw"],
    );
    same_file(d, "full.raw", "qfull.raw");
    let m = std::fs::metadata(d.join("full.raw")).unwrap();
    assert!(m.blocks() * 512 >= m.len(), "-S 0 left holes");
    // Default: sparse.
    vdisk_ok(d, &["convert", "-O", "raw", "s2.qcow2", "sparse.raw"]);
    let m = std::fs::metadata(d.join("sparse.raw")).unwrap();
    assert!(
        m.blocks() * 512 <= 256 << 10,
        "not sparse: {} blocks",
        m.blocks()
    );
    same_file(d, "sparse.raw", "qfull.raw");
    for m in ["1", "3", "16"] {
        vdisk_ok(
            d,
            &["convert", "-m", m, "-W", "-O", "raw", "s2.qcow2", "m.raw"],
        );
        same_file(d, "m.raw", "qfull.raw");
    }
    let out = vdisk(
        d,
        &["convert", "-m", "0", "-O", "raw", "s2.qcow2", "m0.raw"],
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_failed_conversion_leaves_no_target() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    // An L2 entry pointing far past the end of the file: the read fails midway.
    tool_ok(d, "qemu-img", &["create", "-f", "qcow2", "bad.qcow2", "4M"]);
    tool_ok(
        d,
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 3 0 64k",
            "-c",
            "write -P 4 1M 64k",
            "bad.qcow2",
        ],
    );
    let mut img = std::fs::read(d.join("bad.qcow2")).unwrap();
    // Find the L2 table from the L1 table and point entry 16 (guest 1 MiB) at 2^40.
    let l1 = u64::from_be_bytes(img[40..48].try_into().unwrap()) as usize;
    let l2 =
        (u64::from_be_bytes(img[l1..l1 + 8].try_into().unwrap()) & 0x00ff_ffff_ffff_fe00) as usize;
    let e = l2 + 16 * 8;
    img[e..e + 8].copy_from_slice(&((1u64 << 63) | (1u64 << 40)).to_be_bytes());
    std::fs::write(d.join("bad.qcow2"), &img).unwrap();
    let out = vdisk(
        d,
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "bad.qcow2",
            "out.raw",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("bad.qcow2"), "{err}");
    assert!(
        !d.join("out.raw").exists(),
        "a half-written target was left behind"
    );
}
