//! Image locks as qemu-img takes them: info/map/compare read alongside a writer; convert's
//! source and a second writer are refused with qemu's message.

mod common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A qemu-io process holding `img` open read-write until dropped.
struct Holder(Child);

impl Holder {
    fn new(dir: &std::path::Path, img: &str) -> Holder {
        let holder = Holder(
            Command::new("qemu-io")
                .args(["-f", "qcow2", "-c", "sleep 60000", img])
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start qemu-io"),
        );
        // Wait until its write-permission lock byte (101, qemu's scheme) shows in /proc/locks.
        // (Probing with an opener of our own would race with qemu-io's start and make it
        // fail.)
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dir.join(img)).unwrap());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
            let held = locks.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 8
                    && f[1] == "OFDLCK"
                    && f[5].rsplit(':').next() == Some(&ino.to_string())
                    && f[6].parse::<u64>().is_ok_and(|a| a <= 101)
                    && f[7].parse::<u64>().is_ok_and(|b| b >= 101)
            });
            if held {
                return holder;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("qemu-io never took its lock");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn readers_share_and_converters_are_refused_while_qemu_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(d, "qemu-img", &["create", "-f", "qcow2", "img.qcow2", "4M"]);
    tool_ok(
        d,
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 7 0 64k", "img.qcow2"],
    );
    let _holder = Holder::new(d, "img.qcow2");

    // info, map and compare take no exclusive lock, as in qemu-img.
    vdisk_ok(d, &["info", "-f", "qcow2", "img.qcow2"]);
    vdisk_ok(d, &["map", "-f", "qcow2", "--output=json", "img.qcow2"]);
    let out = vdisk(d, &["compare", "-f", "qcow2", "img.qcow2", "img.qcow2"]);
    assert_eq!(out.status.code(), Some(0));

    // A conversion source refuses to share write, so it is refused: one line, the file named.
    let out = vdisk(
        d,
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "img.qcow2",
            "out.raw",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("img.qcow2") && err.contains("lock"), "{err}");
    assert!(
        !d.join("out.raw").exists(),
        "a refused conversion left a target"
    );
    // With -U it reads anyway.
    vdisk_ok(
        d,
        &[
            "convert",
            "-U",
            "-f",
            "qcow2",
            "-O",
            "raw",
            "img.qcow2",
            "out.raw",
        ],
    );
    let theirs = tool_ok(
        d,
        "qemu-img",
        &[
            "compare",
            "-U",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "img.qcow2",
            "out.raw",
        ],
    );
    assert!(theirs.contains("identical"), "{theirs}");
}

/// An image another process has open is someone else's data: create, convert and dd aimed at
/// it are refused with the lock message and leave it exactly as it was (an earlier version
/// removed the "failed" target, deleting the other process's image).
#[test]
fn a_held_image_survives_commands_that_would_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(
        d,
        "qemu-img",
        &["create", "-f", "qcow2", "held.qcow2", "4M"],
    );
    tool_ok(
        d,
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 9 0 64k", "held.qcow2"],
    );
    tool_ok(d, "qemu-img", &["create", "-f", "raw", "src.raw", "1M"]);
    let before = std::fs::read(d.join("held.qcow2")).unwrap();
    let _holder = Holder::new(d, "held.qcow2");
    let attempts: [&[&str]; 5] = [
        &["create", "-f", "qcow2", "held.qcow2", "1M"],
        &["create", "-f", "raw", "held.qcow2", "1M"],
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "src.raw",
            "held.qcow2",
        ],
        &["convert", "-f", "raw", "-O", "raw", "src.raw", "held.qcow2"],
        &[
            "dd",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "if=src.raw",
            "of=held.qcow2",
        ],
    ];
    for args in attempts {
        let out = vdisk(d, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?} succeeded");
        assert!(
            err.contains("held.qcow2") && err.contains("lock") && err.trim().lines().count() == 1,
            "{args:?}: {err}"
        );
        assert_eq!(
            std::fs::read(d.join("held.qcow2")).ok().as_deref(),
            Some(&before[..]),
            "{args:?} changed or removed the held image"
        );
    }
}
