//! Bad arguments and unusable files: one line on stderr, a non-zero exit, nothing on stdout.

mod common;

use common::*;

fn assert_one_line_failure(args: &[&str], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.raw"), [0u8; 512]).unwrap();
    let out = vdisk(dir.path(), args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?} printed:\n{err}");
    assert!(err.starts_with("vdisk: "), "{err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err}"
    );
    assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
}

#[test]
fn unknown_option() {
    assert_one_line_failure(&["info", "--bogus", "a.raw"], "--bogus");
}

#[test]
fn unknown_command() {
    assert_one_line_failure(&["frobnicate"], "frobnicate");
}

#[test]
fn missing_file() {
    assert_one_line_failure(
        &["info", "nonexist.raw"],
        "nonexist.raw: open: No such file or directory",
    );
}

#[test]
fn unknown_format() {
    // (vmdk, the name this test used, is now a format vdisk has.)
    assert_one_line_failure(
        &["info", "-f", "nosuchfmt", "a.raw"],
        "Unknown driver 'nosuchfmt'",
    );
    // A known format on a file that is not one: still one line.
    assert_one_line_failure(
        &["info", "-f", "vmdk", "a.raw"],
        "invalid VMDK image descriptor",
    );
}

#[test]
fn bad_output_format() {
    assert_one_line_failure(&["info", "--output=xml", "a.raw"], "xml");
}

#[test]
fn bad_size() {
    assert_one_line_failure(
        &["create", "-f", "raw", "x.raw", "10X"],
        "Invalid image size specified: '10X'",
    );
}

#[test]
fn missing_size() {
    assert_one_line_failure(&["create", "-f", "raw", "x.raw"], "size");
}

#[test]
fn unreadable_file() {
    // A directory cannot be opened as an image.
    assert_one_line_failure(&["info", "."], ".");
}

#[test]
fn help_and_version_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let v = vdisk_ok(dir.path(), &["--version"]);
    assert!(v.starts_with("vdisk "), "{v}");
    for args in [
        &["help"][..],
        &["--help"][..],
        &["info", "--help"][..],
        &["create", "--help"][..],
    ] {
        let h = vdisk_ok(dir.path(), args);
        assert!(h.contains("Usage"), "{args:?}: {h}");
    }
}

/// Invoked as `qemu-img` (a symlink, as qemu's iotests run it), vdisk speaks as qemu-img:
/// the probing warning only for an image guessed raw and opened for writing, in qemu's words,
/// and the `qemu-img:` prefix. As `vdisk` it keeps its own stricter warning.
#[test]
fn as_qemu_img_warns_and_prefixes_as_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vdisk"), d.join("qemu-img")).unwrap();
    let ours = |args: &[&str]| {
        let out = std::process::Command::new(d.join("qemu-img"))
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let theirs = |args: &[&str]| {
        let out = common::tool(d, "qemu-img", args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    common::tool_ok(d, "qemu-img", &["create", "-f", "raw", "r.img", "1M"]);
    common::tool_ok(d, "qemu-img", &["create", "-f", "qcow2", "q.qcow2", "1M"]);
    for args in [
        &["resize", "r.img", "2M"][..],
        &["resize", "q.qcow2", "2M"],
        &["info", "r.img"],
        &["map", "q.qcow2"],
    ] {
        let (o, t) = (ours(args), theirs(args));
        assert_eq!(o, t, "{args:?}");
    }
    let (code, err) = ours(&["check", "-f", "qcow2", "missing.qcow2"]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("qemu-img: "), "{err}");
    // As vdisk, every probed image still warns.
    let out = common::vdisk(d, &["resize", "q.qcow2", "3M"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("vdisk: warning: "), "{err}");
}

/// Options may stand between the file arguments, as qemu-img's getopt permutes them
/// (iotest 058: `convert -f qcow2 a.qcow2 -O qcow2 out.qcow2`); one file alone is refused.
#[test]
fn convert_accepts_options_between_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(d, "qemu-img", &["create", "-f", "qcow2", "a.qcow2", "1M"]);
    tool_ok(d, "qemu-io", &["-c", "write -P 7 4k 64k", "a.qcow2"]);
    vdisk_ok(
        d,
        &[
            "convert",
            "-f",
            "qcow2",
            "a.qcow2",
            "-O",
            "qcow2",
            "out.qcow2",
        ],
    );
    tool_ok(d, "qemu-img", &["compare", "a.qcow2", "out.qcow2"]);
    let info = tool_ok(d, "qemu-img", &["info", "out.qcow2"]);
    assert!(info.contains("file format: qcow2"), "{info}");
    let out = vdisk(d, &["convert", "-f", "qcow2", "a.qcow2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Must specify image file name"), "{err}");
}

/// Hexadecimal numbers in `-o` and as sizes, as qemu_strtosz reads them (iotest 214).
#[test]
fn hex_sizes_as_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let args = ["create", "-f", "qcow2", "-o", "cluster_size=0x1000"];
    let mut ours = args.to_vec();
    ours.extend(["a.qcow2", "0x100000"]);
    vdisk_ok(d, &ours);
    let mut theirs = args.to_vec();
    theirs.extend(["b.qcow2", "0x100000"]);
    tool_ok(d, "qemu-img", &theirs);
    let a = tool_ok(d, "qemu-img", &["info", "--output=json", "a.qcow2"]);
    let b = tool_ok(d, "qemu-img", &["info", "--output=json", "b.qcow2"]);
    let (a, b) = (json(&a), json(&b));
    assert_eq!(a["cluster-size"], 4096);
    assert_eq!(a["virtual-size"], b["virtual-size"]);
    assert_eq!(a["cluster-size"], b["cluster-size"]);
}

/// `compare` of images of different sizes warns of the mismatch only once the common part
/// compared equal, as qemu-img does (iotest 048): a difference inside the common part is
/// reported alone.
#[test]
fn compare_size_warning_as_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "a.qcow2", "1M"],
    );
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "b.qcow2", "2M"],
    );
    for write in [None, Some("write -P 7 4k 4k"), Some("write -P 7 1536k 4k")] {
        if let Some(w) = write {
            let img = if w.contains("1536k") {
                "b.qcow2"
            } else {
                "a.qcow2"
            };
            tool_ok(d, "qemu-io", &["-c", w, img]);
        }
        let args = [
            "compare", "-f", "qcow2", "-F", "qcow2", "a.qcow2", "b.qcow2",
        ];
        let ours = vdisk(d, &args);
        let theirs = common::tool(d, "qemu-img", &args);
        assert_eq!(
            String::from_utf8_lossy(&ours.stdout),
            String::from_utf8_lossy(&theirs.stdout),
            "{write:?}"
        );
        assert_eq!(ours.status.code(), theirs.status.code(), "{write:?}");
    }
}

/// qemu's create messages: `extent_size_hint` (a file protocol option) is accepted for raw
/// and qcow2 files, and the refcount width refusals are qemu's words (iotests 106, 112, 243).
#[test]
fn create_options_as_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for fmt in ["raw", "qcow2"] {
        let img = format!("hint.{fmt}");
        vdisk_ok(
            d,
            &[
                "create",
                "-q",
                "-f",
                fmt,
                "-o",
                "extent_size_hint=0",
                &img,
                "1M",
            ],
        );
        let info = tool_ok(d, "qemu-img", &["info", "-f", fmt, &img]);
        assert!(info.contains("virtual size: 1 MiB"), "{info}");
    }
    for opts in [
        "refcount_bits=-1",
        "compat=0.10,refcount_bits=1",
        "compat=0.10,lazy_refcounts=on",
    ] {
        let ours = vdisk(
            d,
            &["create", "-q", "-f", "qcow2", "-o", opts, "x.qcow2", "1M"],
        );
        let theirs = common::tool(
            d,
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", opts, "x.qcow2", "1M"],
        );
        let err = |o: &std::process::Output| {
            String::from_utf8_lossy(&o.stderr).replace("qemu-img: ", "vdisk: ")
        };
        assert_eq!(err(&ours), err(&theirs), "{opts}");
        assert_eq!(ours.status.code(), theirs.status.code(), "{opts}");
    }
}

/// A new qcow2 file ends where qemu's does, inside the L1 table's cluster (iotest 243 reads the
/// file size), and stays writable and clean; raw resize refuses preallocation when shrinking
/// in qemu's words (106).
#[test]
fn create_file_size_and_raw_shrink_as_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for size in ["64M", "1G", "1M"] {
        vdisk_ok(d, &["create", "-q", "-f", "qcow2", "ours.qcow2", size]);
        tool_ok(
            d,
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "theirs.qcow2", size],
        );
        let len = |f: &str| std::fs::metadata(d.join(f)).unwrap().len();
        assert_eq!(len("ours.qcow2"), len("theirs.qcow2"), "{size}");
        tool_ok(d, "qemu-io", &["-c", "write -P 5 0 192k", "ours.qcow2"]);
        tool_ok(d, "qemu-img", &["check", "ours.qcow2"]);
        tool_ok(d, "qemu-io", &["-c", "read -P 5 0 192k", "ours.qcow2"]);
    }
    tool_ok(d, "qemu-img", &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    let args = [
        "resize",
        "-f",
        "raw",
        "--shrink",
        "--preallocation=falloc",
        "r.raw",
        "-64K",
    ];
    let ours = vdisk(d, &args);
    let theirs = common::tool(d, "qemu-img", &args);
    assert_eq!(
        String::from_utf8_lossy(&ours.stderr).replace("vdisk: ", "qemu-img: "),
        String::from_utf8_lossy(&theirs.stderr)
    );
    assert_eq!(ours.status.code(), theirs.status.code());
    assert_eq!(std::fs::metadata(d.join("r.raw")).unwrap().len(), 1 << 20);
}

/// A qcow2 image too large for any L1 table is refused in qemu's words, at create and (as
/// `qemu-img`) at open (iotest 054).
#[test]
fn too_large_qcow2_as_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vdisk"), d.join("qemu-img")).unwrap();
    let run = |prog: &str, args: &[&str]| {
        let o = common::tool(d, prog, args);
        (
            String::from_utf8_lossy(&o.stderr).into_owned(),
            o.status.code(),
        )
    };
    let create = ["create", "-q", "-f", "qcow2", "big.qcow2", "1E"];
    assert_eq!(run("./qemu-img", &create), run("qemu-img", &create));
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "big.qcow2", "4G"],
    );
    let mut b = std::fs::read(d.join("big.qcow2")).unwrap();
    b[24..32].copy_from_slice(&(1u64 << 60).to_be_bytes());
    std::fs::write(d.join("big.qcow2"), &b).unwrap();
    let info = ["info", "big.qcow2"];
    assert_eq!(run("./qemu-img", &info), run("qemu-img", &info));
}
