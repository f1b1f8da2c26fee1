//! `vdisk create -f qcow2` against `qemu-img create -f qcow2`: the same "Formatting" line, a
//! clean `qemu-img check`, the same `qemu-img info` facts and identical content.

mod common;

use common::*;
use std::path::Path;

/// Creates one image with each tool (`@` in the arguments stands for the image name, `%` for
/// a per-tool data file name) and compares them.
fn same_as_qemu(dir: &Path, args: &[&str]) {
    let subst = |who: &str| -> Vec<String> {
        args.iter()
            .map(|a| {
                a.replace('@', &format!("{who}.qcow2"))
                    .replace('%', &format!("{who}.data"))
            })
            .collect()
    };
    let ours_args = subst("ours");
    let theirs_args = subst("theirs");
    let ours_ref: Vec<&str> = ours_args.iter().map(String::as_str).collect();
    let theirs_ref: Vec<&str> = theirs_args.iter().map(String::as_str).collect();
    let ours = vdisk_ok(dir, &ours_ref);
    let theirs = tool_ok(dir, "qemu-img", &theirs_ref);
    let norm = |s: &str, who: &str| {
        s.replace(&format!("{who}.qcow2"), "X")
            .replace(&format!("{who}.data"), "D")
    };
    assert_same_lines(
        &norm(&ours, "ours"),
        &norm(&theirs, "theirs"),
        &format!("Formatting line of {args:?}"),
    );

    if args.contains(&"missing.raw") {
        // -u did not need it; the checks below do.
        tool_ok(
            dir,
            "qemu-img",
            &["create", "-q", "-f", "raw", "missing.raw", "1M"],
        );
    }
    let check = tool(dir, "qemu-img", &["check", "-U", "ours.qcow2"]);
    assert!(
        check.status.success(),
        "{args:?}: qemu-img check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let info = |f: &str| {
        json(&tool_ok(
            dir,
            "qemu-img",
            &["info", "-U", "--output=json", f],
        ))
    };
    let (mut a, mut b) = (info("ours.qcow2"), info("theirs.qcow2"));
    for v in [&mut a, &mut b] {
        let o = v.as_object_mut().unwrap();
        for k in [
            "filename",
            "actual-size",
            "children",
            "backing-filename-format-specific-data",
        ] {
            o.remove(k);
        }
        if let Some(d) = o
            .get_mut("format-specific")
            .and_then(|f| f.get_mut("data"))
            .and_then(|d| d.as_object_mut())
        {
            if let Some(df) = d.get_mut("data-file") {
                *df = "D".into();
            }
        }
    }
    assert_eq!(a, b, "{args:?}: qemu-img info differs");
    tool_ok(
        dir,
        "qemu-img",
        &["compare", "-U", "ours.qcow2", "theirs.qcow2"],
    );
    for f in [
        "ours.qcow2",
        "theirs.qcow2",
        "ours.data",
        "theirs.data",
        "missing.raw",
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

#[test]
fn every_option_matches_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "raw", "base.raw", "3M"],
    );
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "base.qcow2", "2M"],
    );
    let cases: &[&[&str]] = &[
        &["create", "-f", "qcow2", "@", "1G"],
        &["create", "-f", "qcow2", "@", "1000"],
        &["create", "-f", "qcow2", "-o", "compat=0.10", "@", "1G"],
        &["create", "-f", "qcow2", "-o", "compat=v2", "@", "10M"],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compat=1.1,lazy_refcounts=on",
            "@",
            "10M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=16k",
            "@",
            "100M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compression_type=zstd",
            "@",
            "10M",
        ],
        &["create", "-f", "qcow2", "-o", "refcount_bits=1", "@", "10M"],
        &["create", "-f", "qcow2", "-o", "refcount_bits=8", "@", "10M"],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "refcount_bits=64,cluster_size=512",
            "@",
            "64M",
        ],
        &["create", "-f", "qcow2", "-o", "cluster_size=512", "@", "4G"],
        &["create", "-f", "qcow2", "-o", "cluster_size=2M", "@", "10G"],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "preallocation=metadata",
            "@",
            "20M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "preallocation=falloc,cluster_size=4k",
            "@",
            "3M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "preallocation=full",
            "@",
            "3M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "preallocation=metadata,extended_l2=on",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "@",
        ],
        &["create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "@"],
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "@",
            "5M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "missing.raw",
            "-F",
            "raw",
            "@",
            "1M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "backing_file=base.raw,backing_fmt=raw",
            "@",
        ],
        &["create", "-f", "qcow2", "-o", "data_file=%", "@", "4M"],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "data_file=%,data_file_raw=on",
            "@",
            "4M",
        ],
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "data_file=%,preallocation=metadata",
            "@",
            "4M",
        ],
        &["create", "-f", "qcow2", "-q", "@", "1M"],
    ];
    for c in cases {
        same_as_qemu(d, c);
    }
}

#[test]
fn errors_are_one_line_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (args, msg) in [
        (
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=1000",
                "x.qcow2",
                "1M",
            ][..],
            "Cluster size must be a power of two between 512 and 2048k",
        ),
        (
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                "compat=0.10,lazy_refcounts=on",
                "x.qcow2",
                "1M",
            ][..],
            "Lazy refcounts only supported with compatibility level 1.1 and above",
        ),
        (
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                "extended_l2=on,cluster_size=4k",
                "x.qcow2",
                "1M",
            ][..],
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
        ),
        (
            &["create", "-f", "qcow2", "x.qcow2"][..],
            "Image creation needs a size parameter",
        ),
        (
            &[
                "create", "-f", "qcow2", "-b", "nope.raw", "-F", "raw", "x.qcow2",
            ][..],
            "Could not open",
        ),
        (
            &[
                "create",
                "-f",
                "qcow2",
                "-o",
                "refcount_bits=3",
                "x.qcow2",
                "1M",
            ][..],
            "Refcount width must be a power of two",
        ),
    ] {
        let out = vdisk(d, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(msg), "{args:?}: {err}");
        assert!(!d.join("x.qcow2").exists(), "{args:?} left the file behind");
    }
}

#[test]
fn help_lists_the_options() {
    let dir = tempfile::tempdir().unwrap();
    let ours = vdisk_ok(dir.path(), &["create", "-f", "qcow2", "-o", "help"]);
    for k in [
        "backing_file=",
        "backing_fmt=",
        "cluster_size=",
        "compat=",
        "compression_type=",
        "data_file=",
        "data_file_raw=",
        "extended_l2=",
        "lazy_refcounts=",
        "preallocation=",
        "refcount_bits=",
        "size=",
    ] {
        assert!(ours.contains(k), "{k} missing from:\n{ours}");
    }
}

#[test]
fn probed_backing_format_is_recorded_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "base.qcow2", "2M"],
    );
    let out = vdisk(d, &["create", "-f", "qcow2", "-b", "base.qcow2", "o.qcow2"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
    let info = json(&tool_ok(
        d,
        "qemu-img",
        &["info", "--output=json", "o.qcow2"],
    ));
    assert_eq!(info["backing-filename-format"], "qcow2");
    assert_eq!(info["virtual-size"], 2 << 20);
}
