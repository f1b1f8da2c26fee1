//! The VHDX log against qemu, both ways: a log vdisk leaves behind (a crash between the log
//! entry and the BAT update) is one qemu replays to the same disk, and qemu's refusal to
//! open it read-only names the log; vdisk replays the same log in memory (read-only) and in
//! place (read-write), and qemu then finds the image clean.

use std::path::Path;
use std::process::Command;

use vdisk_block::BlockDevice;
use vdisk_vhdx::{create, CreateOptions, Vhdx};

fn qemu(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg("60")
        .arg("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("qemu-img runs")
}

fn pattern(off: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((off + i) / 512 % 251) as u8 + 1)
        .collect()
}

/// Writes in three blocks (one BAT sector dirty, then another far away), then stops after
/// the log entry.
fn crashed_image(dir: &Path, name: &str, block_size: u32) -> Vec<(u64, usize)> {
    let p = dir.join(name);
    let v = create(
        &p,
        &CreateOptions {
            size: 1 << 30,
            block_size: Some(block_size),
            ..Default::default()
        },
    )
    .unwrap();
    let writes = vec![
        (0u64, 4096usize),
        (5 << 20, 70_000),
        ((1u64 << 30) - 8192, 8192),
    ];
    for &(o, l) in &writes {
        v.write_at(&pattern(o, l), o).unwrap();
    }
    v.flush_leaving_log().unwrap();
    // The process "dies" here: copy the file as the crash left it.
    let crashed = dir.join(format!("crashed-{name}"));
    std::fs::copy(&p, &crashed).unwrap();
    drop(v);
    std::fs::rename(&crashed, &p).unwrap();
    writes
}

fn expect_content(v: &Vhdx, writes: &[(u64, usize)]) {
    for &(o, l) in writes {
        let mut b = vec![0u8; l];
        v.read_at(&mut b, o).unwrap();
        assert!(b == pattern(o, l), "data at {o}");
    }
    let mut b = vec![1u8; 4096];
    v.read_at(&mut b, 300 << 20).unwrap();
    assert!(b.iter().all(|&x| x == 0));
}

#[test]
fn qemu_replays_the_log_vdisk_leaves() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for bs in [1u32 << 20, 32 << 20] {
        let writes = crashed_image(d, "a.vhdx", bs);
        let info = qemu(d, &["info", "-f", "vhdx", "a.vhdx"]);
        assert!(!info.status.success());
        let err = String::from_utf8_lossy(&info.stderr);
        assert!(
            err.contains("contains a log that needs to be replayed"),
            "{err}"
        );
        let chk = qemu(d, &["check", "-r", "all", "-f", "vhdx", "a.vhdx"]);
        assert!(chk.status.success(), "{chk:?}");
        let chk = qemu(d, &["check", "-f", "vhdx", "a.vhdx"]);
        assert!(chk.status.success(), "{chk:?}");
        let v = Vhdx::open_path(d.join("a.vhdx"), true).unwrap();
        assert!(!v.log_pending(), "qemu emptied the log");
        expect_content(&v, &writes);
    }
}

#[test]
fn vdisk_replays_its_log_in_memory_and_in_place() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let writes = crashed_image(d, "b.vhdx", 1 << 20);
    let v = Vhdx::open_path(d.join("b.vhdx"), true).unwrap();
    assert!(v.log_pending());
    expect_content(&v, &writes);
    drop(v);
    // Read-only left the file alone: qemu still wants the replay.
    assert!(!qemu(d, &["info", "-f", "vhdx", "b.vhdx"]).status.success());
    let v = Vhdx::open_path(d.join("b.vhdx"), false).unwrap();
    assert!(v.log_replayed());
    expect_content(&v, &writes);
    drop(v);
    let chk = qemu(d, &["check", "-f", "vhdx", "b.vhdx"]);
    assert!(chk.status.success(), "{chk:?}");
    qemu(
        d,
        &["convert", "-f", "vhdx", "-O", "raw", "b.vhdx", "b.raw"],
    );
    let raw = std::fs::read(d.join("b.raw")).unwrap();
    for &(o, l) in &writes {
        assert!(
            raw[o as usize..o as usize + l] == pattern(o, l)[..],
            "qemu reads {o}"
        );
    }
}
