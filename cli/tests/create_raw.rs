//! `vdisk create -f raw` against `qemu-img create -f raw`.

mod common;

use common::*;
use std::os::unix::fs::MetadataExt;

#[test]
fn sparse_10g_same_as_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let out = vdisk_ok(dir.path(), &["create", "-f", "raw", "ours.raw", "10G"]);
    let theirs = tool_ok(
        dir.path(),
        "qemu-img",
        &["create", "-f", "raw", "theirs.raw", "10G"],
    );
    assert_eq!(
        out.replace("ours.raw", "X"),
        theirs.replace("theirs.raw", "X")
    );
    let m = std::fs::metadata(dir.path().join("ours.raw")).unwrap();
    assert_eq!(m.len(), 10 << 30);
    assert!(
        m.blocks() * 512 <= 1 << 20,
        "not sparse: {} blocks",
        m.blocks()
    );
    tool_ok(
        dir.path(),
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            "ours.raw",
            "theirs.raw",
        ],
    );
    let a = json(&tool_ok(
        dir.path(),
        "qemu-img",
        &["info", "--output=json", "-f", "raw", "ours.raw"],
    ));
    let b = json(&tool_ok(
        dir.path(),
        "qemu-img",
        &["info", "--output=json", "-f", "raw", "theirs.raw"],
    ));
    assert_eq!(a["virtual-size"], b["virtual-size"]);
    assert_eq!(a["actual-size"], b["actual-size"]);
}

#[test]
fn sizes_and_prealloc_modes_match_qemu() {
    let dir = tempfile::tempdir().unwrap();
    for (size, prealloc) in [
        ("1000", None),
        ("1.5M", None),
        ("64k", Some("falloc")),
        ("3M", Some("full")),
        ("2M", Some("off")),
    ] {
        let mut ours = vec!["create", "-f", "raw"];
        let opt;
        if let Some(p) = prealloc {
            opt = format!("preallocation={p}");
            ours.extend(["-o", opt.as_str()]);
        }
        let mut theirs = ours.clone();
        ours.extend(["ours.raw", size]);
        theirs.extend(["theirs.raw", size]);
        let o = vdisk_ok(dir.path(), &ours);
        let t = tool_ok(dir.path(), "qemu-img", &theirs);
        assert_eq!(
            o.replace("ours.raw", "X"),
            t.replace("theirs.raw", "X"),
            "{size} {prealloc:?}"
        );
        let mo = std::fs::metadata(dir.path().join("ours.raw")).unwrap();
        let mt = std::fs::metadata(dir.path().join("theirs.raw")).unwrap();
        assert_eq!(mo.len(), mt.len(), "{size} {prealloc:?}");
        assert_eq!(
            mo.blocks(),
            mt.blocks(),
            "{size} {prealloc:?}: allocation differs"
        );
        tool_ok(
            dir.path(),
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                "ours.raw",
                "theirs.raw",
            ],
        );
    }
}

#[test]
fn create_overwrites_like_qemu_and_quiet_is_quiet() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.raw"), vec![9u8; 1 << 20]).unwrap();
    let out = vdisk_ok(dir.path(), &["create", "-q", "-f", "raw", "x.raw", "4k"]);
    assert!(out.is_empty());
    assert_eq!(
        std::fs::read(dir.path().join("x.raw")).unwrap(),
        vec![0u8; 4096]
    );
}

#[test]
fn create_options_help() {
    let dir = tempfile::tempdir().unwrap();
    let out = vdisk_ok(dir.path(), &["create", "-f", "raw", "-o", "help"]);
    assert!(out.contains("size=<size>"), "{out}");
    assert!(out.contains("preallocation"), "{out}");
}
