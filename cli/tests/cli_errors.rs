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
