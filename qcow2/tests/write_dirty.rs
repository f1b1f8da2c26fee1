//! A dirty image (lazy refcounts, writer killed) is repaired on read-write open, as qemu does,
//! and then written: qemu-img check is clean and every byte is right.

use std::process::Command;
use std::sync::Arc;

use vdisk_block::{BlockDevice, Image};
use vdisk_qcow2::Qcow2;
use vdisk_raw::{OpenOptions, RawFile};

fn run(prog: &str, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg("60")
        .arg(prog)
        .args(args)
        .output()
        .expect("run reference tool")
}

#[test]
fn dirty_lazy_refcount_image_is_repaired_then_written() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dirty.qcow2");
    let ps = p.to_str().unwrap();
    assert!(run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on",
            ps,
            "4M"
        ]
    )
    .status
    .success());
    // qemu-io's abort kills it after the write: the dirty bit stays set, refcounts stale.
    let _ = run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 0 128k",
            "-c",
            "abort",
            ps,
        ],
    );
    let info = run("qemu-img", &["info", "--output=json", "-U", ps]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["dirty-flag"], true,
        "qemu-io abort did not leave the image dirty"
    );

    let file = Arc::new(
        RawFile::open(
            &p,
            &OpenOptions {
                read_only: false,
                force_share: false,
            },
        )
        .unwrap(),
    );
    let q = Qcow2::open_rw(file).unwrap();
    assert!(!q.info().dirty, "still dirty after the repair");
    q.write_at(&[0x22; 65536], 1 << 20).unwrap();
    q.flush().unwrap();
    let mut buf = vec![0u8; 128 << 10];
    q.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0x11));
    assert_eq!(q.format_name(), "qcow2");
    drop(q);

    let check = run("qemu-img", &["check", ps]);
    assert!(
        check.status.success(),
        "qemu-img check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let io = run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "read -P 0x11 0 128k",
            "-c",
            "read -P 0x22 1M 64k",
            ps,
        ],
    );
    let out = String::from_utf8_lossy(&io.stdout);
    assert!(
        io.status.success() && !out.contains("Pattern verification failed"),
        "{out}"
    );
}
