//! `vdisk measure` and `vdisk dd` against qemu-img: measure's output (human and JSON) byte for
//! byte over a matrix of target options and source images; dd's output files byte for byte.

mod common;

use std::path::Path;

use common::{tool, tool_ok, vdisk};

/// Runs `args` with both tools; stdout must be identical and the exit codes equal. Returns
/// the number of successful runs (so a matrix that only hits errors is noticed).
fn same_as_qemu(dir: &Path, args: &[&str]) -> usize {
    let ours = vdisk(dir, args);
    let theirs = tool(dir, "qemu-img", args);
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&theirs.stdout),
        "{args:?}: stdout (ours, qemu's); our stderr: {}; qemu's stderr: {}",
        String::from_utf8_lossy(&ours.stderr),
        String::from_utf8_lossy(&theirs.stderr)
    );
    assert_eq!(
        ours.status.code(),
        theirs.status.code(),
        "{args:?}: exit code; our stderr: {}; qemu's stderr: {}",
        String::from_utf8_lossy(&ours.stderr),
        String::from_utf8_lossy(&theirs.stderr)
    );
    if !ours.status.success() {
        let err = String::from_utf8_lossy(&ours.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {err}");
        assert!(lines[0].starts_with("vdisk: "), "{args:?}: {err}");
    }
    usize::from(ours.status.success())
}

/// Source images: empty, partly allocated (data, zero writes, unaligned ends), raw with
/// holes, a backing chain, persistent bitmaps, version 2, an internal snapshot.
fn sources(d: &Path) {
    let q = |a: &[&str]| {
        tool_ok(d, "qemu-img", a);
    };
    let io = |f: &str, fmt: &str, cmds: &[&str]| {
        let mut a = vec!["-f", fmt];
        for c in cmds {
            a.extend(["-c", c]);
        }
        a.push(f);
        tool_ok(d, "qemu-io", &a);
    };
    q(&["create", "-q", "-f", "qcow2", "empty.qcow2", "64M"]);
    q(&["create", "-q", "-f", "qcow2", "part.qcow2", "64M"]);
    io(
        "part.qcow2",
        "qcow2",
        &[
            "write 1M 3M",
            "write 20M 100k",
            "write -z 30M 1M",
            "write 40001k 3k",
        ],
    );
    q(&["create", "-q", "-f", "raw", "holes.raw", "63M"]);
    io("holes.raw", "raw", &["write 1M 3M", "write 40000k 3k"]);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "part.qcow2",
        "-F",
        "qcow2",
        "over.qcow2",
        "80M",
    ]);
    io("over.qcow2", "qcow2", &["write 50M 1M", "write -z 1M 512k"]);
    q(&["create", "-q", "-f", "qcow2", "bitmaps.qcow2", "100M"]);
    q(&["bitmap", "--add", "-g", "64k", "bitmaps.qcow2", "bm1"]);
    q(&[
        "bitmap",
        "--add",
        "-g",
        "4k",
        "bitmaps.qcow2",
        "a-much-longer-bitmap-name",
    ]);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10,cluster_size=4096",
        "v2.qcow2",
        "10M",
    ]);
    io("v2.qcow2", "qcow2", &["write 0 5000"]);
    q(&["create", "-q", "-f", "qcow2", "snap.qcow2", "32M"]);
    io("snap.qcow2", "qcow2", &["write 0 1M"]);
    q(&["snapshot", "-c", "s1", "snap.qcow2"]);
    io("snap.qcow2", "qcow2", &["write 8M 8M"]);
}

const QCOW2_OPTIONS: &[&str] = &[
    "",
    "cluster_size=4k",
    "cluster_size=512",
    "cluster_size=2M",
    "extended_l2=on",
    "extended_l2=on,cluster_size=16k",
    "refcount_bits=1",
    "refcount_bits=64,cluster_size=512",
    "compat=0.10",
    "compat=1.1,lazy_refcounts=on,compression_type=zstd",
    "preallocation=full",
    "preallocation=falloc",
    "preallocation=metadata",
    "backing_file=x.qcow2",
    "data_file=d.raw,data_file_raw=on",
    "size=5G",
    // Refused, as qemu refuses them.
    "cluster_size=3k",
    "extended_l2=on,cluster_size=4k",
    "refcount_bits=3",
    "compat=0.10,refcount_bits=8",
];

#[test]
fn measure_of_images_prints_what_qemu_prints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sources(d);
    let srcs: &[&[&str]] = &[
        &["-f", "qcow2", "empty.qcow2"],
        &["-f", "qcow2", "part.qcow2"],
        &["-f", "raw", "holes.raw"],
        &["-f", "qcow2", "over.qcow2"],
        &["-f", "qcow2", "bitmaps.qcow2"],
        &["-f", "qcow2", "v2.qcow2"],
        &["-f", "qcow2", "-l", "s1", "snap.qcow2"],
        &["-f", "qcow2", "snap.qcow2"],
    ];
    let mut ok = 0;
    for src in srcs {
        for output in ["human", "json"] {
            let mut args = vec!["measure", "--output", output, "-O", "raw"];
            args.extend(*src);
            ok += same_as_qemu(d, &args);
            for o in QCOW2_OPTIONS {
                let mut args = vec!["measure", "--output", output, "-O", "qcow2"];
                if !o.is_empty() {
                    args.extend(["-o", o]);
                }
                args.extend(*src);
                ok += same_as_qemu(d, &args);
            }
        }
    }
    assert!(ok >= 200, "only {ok} runs succeeded");
}

#[test]
fn measure_of_sizes_prints_what_qemu_prints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut ok = 0;
    for size in [
        "0", "1", "511", "512", "1000", "65535", "65537", "1G", "3T", "256T", "1P", "100P",
    ] {
        for output in ["human", "json"] {
            ok += same_as_qemu(d, &["measure", "--output", output, "--size", size]);
            for o in QCOW2_OPTIONS {
                let mut args = vec!["measure", "--output", output, "-O", "qcow2"];
                if !o.is_empty() {
                    args.extend(["-o", o]);
                }
                args.extend(["--size", size]);
                ok += same_as_qemu(d, &args);
            }
        }
    }
    assert!(ok >= 300, "only {ok} runs succeeded");
}

#[test]
fn measure_usage_errors_are_qemus() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "a.qcow2", "1M"],
    );
    for (args, text) in [
        (
            &["measure", "-O", "qcow2"][..],
            "Either --size N or one filename must be specified.",
        ),
        (
            &["measure", "--size", "1G", "-f", "qcow2", "a.qcow2"][..],
            "--size N cannot be used together with a filename.",
        ),
        (
            &["measure", "--size", "1G", "-f", "qcow2"][..],
            "--image-opts, -f, and -l require a filename argument.",
        ),
        (
            &["measure", "--size", "-1"][..],
            "Invalid image size specified. Must be between 0 and 9223372036854775807.",
        ),
        (
            &["measure", "--size", "8E"][..],
            "Invalid image size specified. Must be between 0 and 9223372036854775807.",
        ),
        (
            &["measure", "-O", "qcow2", "--size", "100P"][..],
            "The image size is too large (try using a larger cluster size)",
        ),
        (
            &["measure", "-O", "qcow2", "-f", "qcow2", "nonexistent.qcow2"][..],
            "nonexistent.qcow2",
        ),
    ] {
        same_as_qemu(d, args);
        let err = String::from_utf8_lossy(&vdisk(d, args).stderr).into_owned();
        assert!(err.contains(text), "{args:?}: {err}");
    }
}
