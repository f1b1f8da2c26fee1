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

/// Runs `qemu-img dd` and `vdisk dd` with the same flags and operands, each writing its own
/// output; returns both outputs' bytes after checking exit codes and stderr agree.
fn dd_both(d: &Path, flags: &[&str], operands: &[&str], out_ext: &str) -> (Vec<u8>, Vec<u8>) {
    let run = |prog: &str, out: &str| {
        let mut args = vec!["dd"];
        args.extend(flags);
        args.extend(operands);
        let of = format!("of={out}");
        args.push(&of);
        let o = if prog == "vdisk" {
            vdisk(d, &args)
        } else {
            tool(d, prog, &args)
        };
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let err = err
            .strip_prefix("vdisk: ")
            .or_else(|| err.strip_prefix("qemu-img: "))
            .unwrap_or(&err)
            .replace(out, "OUT");
        (
            o.status.code(),
            err,
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let ours_name = format!("ours.{out_ext}");
    let theirs_name = format!("theirs.{out_ext}");
    let ours = run("vdisk", &ours_name);
    let theirs = run("qemu-img", &theirs_name);
    assert_eq!(
        ours, theirs,
        "dd {flags:?} {operands:?}: (exit, stderr, stdout)"
    );
    let read = |n: &str| std::fs::read(d.join(n)).unwrap_or_default();
    (read(&ours_name), read(&theirs_name))
}

#[test]
fn dd_writes_the_bytes_qemu_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sources(d);
    let inputs: &[&[&str]] = &[
        &["-f", "qcow2", "if=part.qcow2"],
        &["-f", "qcow2", "if=over.qcow2"],
        &["-f", "raw", "if=holes.raw"],
        &["-f", "qcow2", "if=v2.qcow2"],
    ];
    // Counts keep the copies short (the inputs are 10 to 80 MiB; small blocks are slow in qemu).
    let operand_sets: &[&[&str]] = &[
        &["count=4000"],
        &["bs=4M", "count=3"],
        &["bs=1000", "count=3"],
        &["bs=64k", "count=40", "skip=2"],
        &["bs=1.5k", "skip=1000", "count=3000"],
        &["bs=4k", "skip=3", "count=600"],
        &["bs=7", "count=20000", "skip=13"],
        &["bs=3M", "skip=1", "count=4"],
        &["bs=64k", "skip=1", "count=1"],
        &["count=0"],
        &["bs=1k", "bs=4M", "count=2", "skip=15"],
    ];
    let mut copied = 0;
    for input in inputs {
        let (flags, if_) = input.split_at(2);
        for ops in operand_sets {
            for fmt in ["raw", "qcow2"] {
                let mut flags = flags.to_vec();
                flags.extend(["-O", fmt]);
                let mut operands = ops.to_vec();
                operands.extend(if_);
                let (ours, theirs) = dd_both(d, &flags, &operands, fmt);
                copied += usize::from(theirs.len() > 1 << 20);
                assert!(
                    ours == theirs,
                    "dd {flags:?} {operands:?}: output bytes differ ({} vs {} bytes)",
                    ours.len(),
                    theirs.len()
                );
                if fmt == "qcow2" {
                    let c = tool(d, "qemu-img", &["check", "-f", "qcow2", "ours.qcow2"]);
                    assert!(c.status.success(), "dd {operands:?}: qemu-img check");
                }
            }
        }
    }
    assert!(copied >= 20, "only {copied} outputs over 1 MiB");
}

#[test]
fn dd_errors_and_warnings_are_qemus() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sources(d);
    for ops in [
        &["bs=0", "if=part.qcow2"][..],
        &["bs=abc", "if=part.qcow2"],
        &["bs=2G", "if=part.qcow2"],
        &["bs=-5", "if=part.qcow2"],
        &["count=1k", "if=part.qcow2"],
        &["count=-1", "if=part.qcow2"],
        &["skip=abc", "if=part.qcow2"],
        &["conv=notrunc", "if=part.qcow2"],
        &["extra", "if=part.qcow2"],
    ] {
        let (ours, theirs) = dd_both(d, &["-f", "qcow2"], ops, "raw");
        assert!(ours.is_empty() && theirs.is_empty(), "{ops:?}: no output");
        let out = vdisk(d, &[&["dd", "-f", "qcow2"][..], ops, &["of=x"]].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{ops:?}");
        assert_eq!(err.lines().count(), 1, "{ops:?}: {err}");
    }
    // Missing operands.
    let out = vdisk(d, &["dd", "if=part.qcow2"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "vdisk: Must specify both input and output files\n"
    );
    // A skip past the end: a warning naming the input, an empty image, exit status 0.
    let (ours, theirs) = dd_both(
        d,
        &["-f", "qcow2"],
        &["skip=1000000", "if=part.qcow2"],
        "raw",
    );
    assert!(ours.is_empty() && theirs.is_empty());
    let out = vdisk(
        d,
        &[
            "dd",
            "-f",
            "qcow2",
            "skip=1000000",
            "if=part.qcow2",
            "of=e.raw",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "vdisk: part.qcow2: cannot skip to specified offset\n"
    );
    // The output is never the input: the input stays as it was.
    let before = std::fs::read(d.join("part.qcow2")).unwrap();
    let out = vdisk(
        d,
        &[
            "dd",
            "-f",
            "qcow2",
            "-O",
            "qcow2",
            "if=part.qcow2",
            "of=part.qcow2",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("vdisk: part.qcow2: "));
    assert!(std::fs::read(d.join("part.qcow2")).unwrap() == before);
    // An input that does not exist is named.
    let out = vdisk(d, &["dd", "-f", "raw", "if=nonexistent.raw", "of=x.raw"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonexistent.raw"));
}
