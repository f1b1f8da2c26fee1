//! Helpers shared by the CLI tests: run vdisk and the reference tools, compare their output.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs the vdisk binary under test in `dir`.
pub fn vdisk(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run vdisk")
}

/// Runs a reference tool (qemu-img, qemu-io, ...) in `dir` under a timeout, so a reference bug
/// (qemu-img check on a cyclic chain never returns) cannot hang the suite.
pub fn tool(dir: &Path, prog: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("120")
        .arg(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"))
}

/// Runs a reference tool and insists that it succeeds; returns its stdout.
pub fn tool_ok(dir: &Path, prog: &str, args: &[&str]) -> String {
    let out = tool(dir, prog, args);
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// stdout of a successful vdisk run.
pub fn vdisk_ok(dir: &Path, args: &[&str]) -> String {
    let out = vdisk(dir, args);
    assert!(
        out.status.success(),
        "vdisk {args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts that two texts are equal line by line, naming the first line that differs.
pub fn assert_same_lines(ours: &str, theirs: &str, what: &str) {
    for (i, (a, b)) in ours.lines().zip(theirs.lines()).enumerate() {
        assert_eq!(
            a,
            b,
            "{what}: line {} differs\nours:\n{ours}\nqemu:\n{theirs}",
            i + 1
        );
    }
    assert_eq!(
        ours.lines().count(),
        theirs.lines().count(),
        "{what}: line counts differ\nours:\n{ours}\nqemu:\n{theirs}"
    );
    assert_eq!(ours, theirs, "{what}: texts differ (whitespace?)");
}

/// Parses JSON text, panicking with the text on failure.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{text}"))
}
