//! Host block devices, through loop devices (needs root and `losetup`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{pattern, run, run_ok};
use vdisk_block::{BlockDevice, Error, Image, MapKind, Preallocation, Resize, WriteZeroes};
use vdisk_raw::{OpenOptions, RawFile};

const M: u64 = 1 << 20;

/// A loop device over a file, detached when dropped.
struct Loop(PathBuf);

impl Loop {
    /// Attaches `file`; `None` (with the reason printed) only when losetup is not installed.
    fn attach(file: &Path, read_only: bool) -> Option<Loop> {
        if Command::new("losetup").arg("--version").output().is_err() {
            eprintln!("SKIPPED: losetup is not installed; block devices are not tested");
            return None;
        }
        let mut args = vec!["--find", "--show"];
        if read_only {
            args.push("--read-only");
        }
        args.push(file.to_str().unwrap());
        let dev = run_ok("losetup", &args);
        Some(Loop(PathBuf::from(dev.trim())))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = run("losetup", &["-d", self.0.to_str().unwrap()]);
    }
}

fn backing(dir: &tempfile::TempDir) -> (PathBuf, Vec<u8>) {
    let path = dir.path().join("backing.raw");
    let data = pattern(4 * M as usize, 42);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

#[test]
fn loop_device_read_only() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = backing(&dir);
    let Some(dev) = Loop::attach(&file, false) else {
        return;
    };
    let ro = OpenOptions {
        read_only: true,
        force_share: false,
    };
    let img = RawFile::open(&dev.0, &ro).unwrap();
    assert!(img.is_block_device());
    assert_eq!(img.size(), 4 * M);
    assert_eq!(img.file_length().unwrap(), 4 * M);
    assert_eq!(img.allocated_size().unwrap(), 0);
    let mut buf = vec![0u8; 100_000];
    img.read_at(&mut buf, 123_456).unwrap();
    assert_eq!(buf, &data[123_456..223_456]);
    assert!(img.read_at(&mut [0u8; 2], 4 * M - 1).is_err());
    let m = img.map(0, u64::MAX).unwrap();
    assert_eq!(m.kind, MapKind::Data { host_offset: 0 });
    assert_eq!(m.len, 4 * M);
    assert_eq!(img.map(4 * M, 1).unwrap().kind, MapKind::Eof);
    drop(img);

    // create() on a device checks its size and leaves its contents alone, as qemu-img
    // create does for host devices.
    let e = RawFile::create(&dev.0, 4 * M + 512, Preallocation::Off).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let img = RawFile::create(&dev.0, 4 * M, Preallocation::Full).unwrap();
    assert!(img.is_block_device() && !img.is_read_only());
    assert_eq!(img.size(), 4 * M);
    img.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, &data[..100_000]);
    // qemu sees the same size.
    let out = run_ok(
        "qemu-img",
        &[
            "info",
            "-U",
            "--output=json",
            "-f",
            "raw",
            dev.0.to_str().unwrap(),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["virtual-size"].as_u64(), Some(img.size()));
}

#[test]
fn loop_device_read_write() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = backing(&dir);
    let Some(dev) = Loop::attach(&file, false) else {
        return;
    };
    let img = RawFile::open(&dev.0, &OpenOptions::default()).unwrap();
    img.write_at(b"via the loop device", 2 * M + 7).unwrap();
    img.write_zeroes(M, 64 * 1024, true).unwrap();
    img.write_zeroes(3 * M + 100, 1000, false).unwrap(); // unaligned: written as zeros
    img.flush().unwrap();
    let mut back = [0u8; 19];
    img.read_at(&mut back, 2 * M + 7).unwrap();
    assert_eq!(&back, b"via the loop device");

    // Locks work on device nodes as on files.
    let e = RawFile::open(&dev.0, &OpenOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Locked { .. }), "{e}");

    // Size cannot change; the same size is fine.
    img.resize(4 * M, Preallocation::Off).unwrap();
    let e = img.resize(8 * M, Preallocation::Off).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert_eq!(e.path(), Some(dev.0.as_path()));
    assert!(img.resize(M, Preallocation::Off).is_err());
    drop(img);

    // Everything reached the backing file.
    let file_now = std::fs::read(&file).unwrap();
    assert_eq!(
        &file_now[2 * M as usize + 7..][..19],
        b"via the loop device"
    );
    assert!(file_now[M as usize..][..64 * 1024].iter().all(|&b| b == 0));
    assert!(file_now[3 * M as usize + 100..][..1000]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(&file_now[..M as usize], &data[..M as usize]);
    assert_eq!(file_now[3 * M as usize + 99], data[3 * M as usize + 99]);
    assert_eq!(file_now[3 * M as usize + 1100], data[3 * M as usize + 1100]);
}

#[test]
fn read_only_loop_device_refuses_read_write_open() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = backing(&dir);
    let Some(dev) = Loop::attach(&file, true) else {
        return;
    };
    let e = RawFile::open(&dev.0, &OpenOptions::default()).unwrap_err();
    // open(O_RDWR) of a read-only loop device succeeds; the BLKROGET check refuses it with
    // EACCES, as qemu does ("The device is not writable: Permission denied").
    match &e {
        Error::Io {
            op: "open", source, ..
        } => assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied, "{e}"),
        e => panic!("{e}"),
    }
    assert_eq!(e.path(), Some(dev.0.as_path()));
    let ro = OpenOptions {
        read_only: true,
        force_share: false,
    };
    assert_eq!(RawFile::open(&dev.0, &ro).unwrap().size(), 4 * M);
}
