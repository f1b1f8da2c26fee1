//! Differential tests: images made at run time by qemu-img and qemu-io, read by vdisk and by
//! qemu; `info --output=json`, `map --output=json` and `convert -O raw` must agree exactly.

mod common;

use common::*;
use std::path::Path;

/// One image to check: how to build it, and the name of the top file.
struct Case {
    name: &'static str,
    build: fn(&Path),
    top: &'static str,
}

fn qemu_img(dir: &Path, args: &[&str]) {
    tool_ok(dir, "qemu-img", args);
}

fn qemu_io(dir: &Path, fmt: &str, file: &str, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(file);
    tool_ok(dir, "qemu-io", &args);
}

/// A pattern of writes that touches cluster boundaries at every cluster size we test.
const WRITES: &[&str] = &[
    "write -P 0x11 0 4k",
    "write -P 0x22 60k 8k",
    "write -P 0x33 1M 300k",
    "write -z 1200k 64k",
    "write -P 0x44 3M 1k",
    "write -P 0x55 5000k 1536",
];

fn qcow2_case(dir: &Path, opts: &str, size: &str) {
    qemu_img(
        dir,
        &["create", "-f", "qcow2", "-o", opts, "img.qcow2", size],
    );
    qemu_io(dir, "qcow2", "img.qcow2", WRITES);
    qemu_io(
        dir,
        "qcow2",
        "img.qcow2",
        &["discard 1M 64k", "write -z -u 3M 64k"],
    );
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "raw sparse",
            build: |d| {
                qemu_img(d, &["create", "-f", "raw", "img.raw", "8M"]);
                qemu_io(d, "raw", "img.raw", WRITES);
            },
            top: "img.raw",
        },
        Case {
            name: "raw odd size",
            build: |d| {
                std::fs::write(d.join("img.raw"), vec![0x77u8; 1000]).unwrap();
            },
            top: "img.raw",
        },
        Case {
            name: "qcow2 v3 64k",
            build: |d| qcow2_case(d, "compat=1.1", "8M"),
            top: "img.qcow2",
        },
        Case {
            name: "qcow2 v2",
            build: |d| qcow2_case(d, "compat=0.10", "8M"),
            top: "img.qcow2",
        },
        Case {
            name: "qcow2 512b clusters",
            build: |d| qcow2_case(d, "cluster_size=512", "8M"),
            top: "img.qcow2",
        },
        Case {
            name: "qcow2 4k clusters",
            build: |d| qcow2_case(d, "cluster_size=4096", "8M"),
            top: "img.qcow2",
        },
        Case {
            name: "qcow2 2M clusters",
            build: |d| qcow2_case(d, "cluster_size=2M", "8M"),
            top: "img.qcow2",
        },
        Case {
            name: "qcow2 extended l2",
            build: |d| qcow2_case(d, "extended_l2=on,cluster_size=128k", "8M"),
            top: "img.qcow2",
        },
        Case {
            name: "qcow2 refcount_bits=1",
            build: |d| qcow2_case(d, "refcount_bits=1", "8M"),
            top: "img.qcow2",
        },
        Case {
            name: "qcow2 refcount_bits=64 lazy",
            build: |d| qcow2_case(d, "refcount_bits=64,lazy_refcounts=on", "8M"),
            top: "img.qcow2",
        },
        Case {
            name: "qcow2 preallocation=metadata",
            build: |d| qcow2_case(d, "preallocation=metadata", "8M"),
            top: "img.qcow2",
        },
        Case {
            name: "qcow2 odd size",
            build: |d| qcow2_case(d, "cluster_size=4096", "8390000"),
            top: "img.qcow2",
        },
        Case {
            name: "qcow2 zlib compressed",
            build: |d| {
                qcow2_case(d, "compat=1.1", "8M");
                qemu_img(d, &["convert", "-c", "-O", "qcow2", "img.qcow2", "c.qcow2"]);
            },
            top: "c.qcow2",
        },
        Case {
            name: "qcow2 zstd compressed",
            build: |d| {
                qcow2_case(d, "compat=1.1", "8M");
                qemu_img(
                    d,
                    &[
                        "convert",
                        "-c",
                        "-O",
                        "qcow2",
                        "-o",
                        "compression_type=zstd",
                        "img.qcow2",
                        "c.qcow2",
                    ],
                );
            },
            top: "c.qcow2",
        },
        Case {
            name: "qcow2 external data file",
            build: |d| qcow2_case(d, "data_file=img.data", "8M"),
            top: "img.qcow2",
        },
        Case {
            name: "qcow2 external data file raw",
            build: |d| qcow2_case(d, "data_file=img.data,data_file_raw=on", "8M"),
            top: "img.qcow2",
        },
        Case {
            name: "chain raw <- qcow2 <- qcow2",
            build: |d| {
                qemu_img(d, &["create", "-f", "raw", "base.raw", "8M"]);
                qemu_io(d, "raw", "base.raw", &["write -P 0xb1 0 8M"]);
                qemu_io(d, "raw", "base.raw", &["write -z 2M 1M"]);
                qemu_img(
                    d,
                    &[
                        "create",
                        "-f",
                        "qcow2",
                        "-b",
                        "base.raw",
                        "-F",
                        "raw",
                        "mid.qcow2",
                    ],
                );
                qemu_io(
                    d,
                    "qcow2",
                    "mid.qcow2",
                    &["write -P 0xc2 1M 1M", "write -z 4M 64k"],
                );
                qemu_img(
                    d,
                    &[
                        "create",
                        "-f",
                        "qcow2",
                        "-b",
                        "mid.qcow2",
                        "-F",
                        "qcow2",
                        "top.qcow2",
                    ],
                );
                qemu_io(
                    d,
                    "qcow2",
                    "top.qcow2",
                    &["write -P 0xd3 1536k 64k", "discard 1M 64k"],
                );
            },
            top: "top.qcow2",
        },
        Case {
            name: "chain with backing files in other directories",
            build: |d| {
                std::fs::create_dir_all(d.join("base/deeper")).unwrap();
                std::fs::create_dir_all(d.join("over")).unwrap();
                qemu_img(d, &["create", "-f", "raw", "base/deeper/b.raw", "4M"]);
                qemu_io(d, "raw", "base/deeper/b.raw", &["write -P 0x61 64k 1M"]);
                qemu_img(
                    d,
                    &[
                        "create",
                        "-f",
                        "qcow2",
                        "-b",
                        "deeper/b.raw",
                        "-F",
                        "raw",
                        "base/m.qcow2",
                    ],
                );
                qemu_io(d, "qcow2", "base/m.qcow2", &["write -P 0x62 512k 64k"]);
                qemu_img(
                    d,
                    &[
                        "create",
                        "-f",
                        "qcow2",
                        "-b",
                        "../base/m.qcow2",
                        "-F",
                        "qcow2",
                        "over/t.qcow2",
                    ],
                );
                qemu_io(d, "qcow2", "over/t.qcow2", &["write -P 0x63 1M 64k"]);
            },
            top: "over/t.qcow2",
        },
        Case {
            name: "overlay larger than backing",
            build: |d| {
                qemu_img(d, &["create", "-f", "qcow2", "base.qcow2", "2M"]);
                qemu_io(d, "qcow2", "base.qcow2", &["write -P 0xaa 0 2M"]);
                qemu_img(
                    d,
                    &[
                        "create",
                        "-f",
                        "qcow2",
                        "-b",
                        "base.qcow2",
                        "-F",
                        "qcow2",
                        "top.qcow2",
                        "6M",
                    ],
                );
                qemu_io(
                    d,
                    "qcow2",
                    "top.qcow2",
                    &["write -P 0xbb 1M 64k", "write -P 0xcc 5M 64k"],
                );
            },
            top: "top.qcow2",
        },
        Case {
            name: "overlay smaller than backing",
            build: |d| {
                qemu_img(d, &["create", "-f", "raw", "base.raw", "8M"]);
                qemu_io(d, "raw", "base.raw", &["write -P 0xaa 0 8M"]);
                qemu_img(
                    d,
                    &[
                        "create",
                        "-f",
                        "qcow2",
                        "-b",
                        "base.raw",
                        "-F",
                        "raw",
                        "top.qcow2",
                        "3M",
                    ],
                );
                qemu_io(d, "qcow2", "top.qcow2", &["write -P 0xbb 1M 64k"]);
            },
            top: "top.qcow2",
        },
        Case {
            name: "qcow2 with internal snapshots",
            build: |d| {
                qcow2_case(d, "compat=1.1", "8M");
                qemu_img(d, &["snapshot", "-c", "first", "img.qcow2"]);
                qemu_io(d, "qcow2", "img.qcow2", &["write -P 0x99 0 2M"]);
                qemu_img(d, &["snapshot", "-c", "second", "img.qcow2"]);
                qemu_io(d, "qcow2", "img.qcow2", &["write -z 0 1M"]);
            },
            top: "img.qcow2",
        },
        Case {
            name: "qcow2 with bitmap",
            build: |d| {
                qcow2_case(d, "compat=1.1", "8M");
                qemu_img(d, &["bitmap", "--add", "img.qcow2", "bm0"]);
                qemu_img(d, &["bitmap", "--add", "-g", "128k", "img.qcow2", "bm1"]);
            },
            top: "img.qcow2",
        },
    ]
}

fn check_case(case: &Case) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    (case.build)(d);
    let what = case.name;

    // info: the same JSON text, and the same human text.
    for args in [
        &["info", "--output=json"][..],
        &["info"][..],
        &["info", "--output=json", "--backing-chain"][..],
        &["info", "--backing-chain"][..],
    ] {
        let mut a = args.to_vec();
        a.push(case.top);
        let ours = vdisk_ok(d, &a);
        let theirs = tool_ok(d, "qemu-img", &a);
        assert_same_lines(&ours, &theirs, &format!("{what}: {args:?}"));
    }

    // map: the same extents.
    let ours = vdisk_ok(d, &["map", "--output=json", case.top]);
    let theirs = tool_ok(d, "qemu-img", &["map", "--output=json", case.top]);
    assert_eq!(
        json(&ours),
        json(&theirs),
        "{what}: map\nours:\n{ours}\nqemu:\n{theirs}"
    );
    assert_same_lines(&ours, &theirs, &format!("{what}: map text"));
    // Human map: same text and same status (qemu refuses compressed clusters there).
    let ours = vdisk(d, &["map", case.top]);
    let theirs = tool(d, "qemu-img", &["map", case.top]);
    assert_eq!(
        ours.status.code(),
        theirs.status.code(),
        "{what}: human map status"
    );
    assert_same_lines(
        &String::from_utf8_lossy(&ours.stdout),
        &String::from_utf8_lossy(&theirs.stdout),
        &format!("{what}: human map"),
    );

    // convert -O raw: the same bytes, and a sparse result.
    vdisk_ok(d, &["convert", "-O", "raw", case.top, "ours.out"]);
    qemu_img(d, &["convert", "-O", "raw", case.top, "theirs.out"]);
    let ours = std::fs::read(d.join("ours.out")).unwrap();
    let theirs = std::fs::read(d.join("theirs.out")).unwrap();
    assert_eq!(ours.len(), theirs.len(), "{what}: converted sizes differ");
    assert!(ours == theirs, "{what}: converted bytes differ");

    // compare: identical to the source and to qemu's output; a changed copy differs.
    let out = vdisk(d, &["compare", case.top, "theirs.out"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let len = ours.len() as u64;
    if len >= 1024 {
        let at = (len / 2) & !511;
        qemu_io(
            d,
            "raw",
            "theirs.out",
            &[&format!("write -P 0xee {} 1", at + 7)],
        );
        let out = vdisk(d, &["compare", case.top, "theirs.out"]);
        assert_eq!(out.status.code(), Some(1), "{what}: compare after change");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let q = tool(d, "qemu-img", &["compare", case.top, "theirs.out"]);
        assert_eq!(
            text,
            String::from_utf8_lossy(&q.stdout),
            "{what}: compare text"
        );
    }
}

#[test]
fn differential_all_cases() {
    let mut failures = Vec::new();
    for case in cases() {
        if let Err(e) = std::panic::catch_unwind(|| check_case(&case)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("--- {}: {msg}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn convert_from_snapshot_matches_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    qcow2_case(d, "compat=1.1", "8M");
    qemu_img(d, &["snapshot", "-c", "first", "img.qcow2"]);
    qemu_io(d, "qcow2", "img.qcow2", &["write -P 0x99 0 2M"]);
    for sel in ["first", "snapshot.name=first", "snapshot.id=1", "1"] {
        vdisk_ok(
            d,
            &["convert", "-l", sel, "-O", "raw", "img.qcow2", "ours.out"],
        );
        qemu_img(
            d,
            &["convert", "-l", sel, "-O", "raw", "img.qcow2", "theirs.out"],
        );
        assert!(
            std::fs::read(d.join("ours.out")).unwrap()
                == std::fs::read(d.join("theirs.out")).unwrap(),
            "snapshot {sel}"
        );
    }
}
