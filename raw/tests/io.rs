//! Reading and writing: round trips, bounds, the zero padding of odd-sized files, threads.

mod common;

use std::sync::Arc;

use common::{pattern, run_ok};
use vdisk_block::{BlockDevice, Error, Image, Preallocation};
use vdisk_raw::{OpenOptions, RawFile};

const RO: OpenOptions = OpenOptions {
    read_only: true,
    force_share: false,
};
const RW: OpenOptions = OpenOptions {
    read_only: false,
    force_share: false,
};

#[test]
fn round_trip_and_reopen() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.raw");
    let img = RawFile::create(&path, 1 << 20, Preallocation::Off).unwrap();
    assert_eq!(img.format_name(), "raw");
    assert_eq!(img.path(), path);
    assert!(!img.is_block_device() && !img.is_read_only());
    let data = pattern(10_000, 7);
    img.write_at(&data, 12_345).unwrap();
    img.write_at(b"end", (1 << 20) - 3).unwrap();
    img.flush().unwrap();
    let mut back = vec![0u8; 10_000];
    img.read_at(&mut back, 12_345).unwrap();
    assert_eq!(back, data);
    drop(img);

    // The bytes are in the file where a raw image keeps them.
    let file = std::fs::read(&path).unwrap();
    assert_eq!(file.len(), 1 << 20);
    assert_eq!(&file[12_345..22_345], &data[..]);
    assert_eq!(&file[(1 << 20) - 3..], b"end");
    assert!(file[..12_345].iter().all(|&b| b == 0));

    let img = RawFile::open(&path, &RO).unwrap();
    assert!(img.is_read_only());
    let mut back = vec![0u8; 10_000];
    img.read_at(&mut back, 12_345).unwrap();
    assert_eq!(back, data);
    // qemu reads what we wrote.
    let out = run_ok(
        "qemu-io",
        &[
            "-U",
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 0x00 0 12345",
            "-c",
            "read -v 1048573 3",
            path.to_str().unwrap(),
        ],
    );
    assert!(out.contains("read 12345/12345 bytes"), "{out}");
    assert!(out.contains("65 6e 64"), "{out}");
}

#[test]
fn requests_past_the_end_fail_whole() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.raw");
    let img = RawFile::create(&path, 4096, Preallocation::Off).unwrap();
    img.write_at(&[0xaa; 4096], 0).unwrap();
    let mut buf = [0u8; 16];
    for off in [4090, 4096, 5000, u64::MAX - 4] {
        let e = img.read_at(&mut buf, off).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        assert_eq!(e.path(), Some(path.as_path()));
        // Nothing was read into the buffer: no short reads.
        assert_eq!(buf, [0u8; 16]);
        let e = img.write_at(&[1; 16], off).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }
    // A write past the end does not grow the file.
    assert_eq!(img.file_length().unwrap(), 4096);
    let mut last = [0u8; 6];
    img.read_at(&mut last, 4090).unwrap();
    assert_eq!(last, [0xaa; 6]);
    // Empty requests at the very end are fine.
    img.read_at(&mut [], 4096).unwrap();
}

#[test]
fn read_only_refuses_writes() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.raw");
    std::fs::write(&path, vec![5u8; 2048]).unwrap();
    let img = RawFile::open(&path, &RO).unwrap();
    let e = img.write_at(&[1], 0).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert_eq!(e.path(), Some(path.as_path()));
    img.flush().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), vec![5u8; 2048]);
}

#[test]
fn odd_sized_file_is_padded_with_zeros() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.raw");
    let content = pattern(1000, 3);
    std::fs::write(&path, &content).unwrap();

    let img = RawFile::open(&path, &RW).unwrap();
    assert_eq!(img.size(), 1024);
    assert_eq!(img.file_length().unwrap(), 1000);
    // qemu agrees on the size.
    assert_eq!(common::qemu_info_sizes(&path).0, 1024);

    let mut all = vec![0xffu8; 1024];
    img.read_at(&mut all, 0).unwrap();
    assert_eq!(&all[..1000], &content[..]);
    assert!(all[1000..].iter().all(|&b| b == 0));
    let mut tail = [0xffu8; 10];
    img.read_at(&mut tail, 1014).unwrap();
    assert_eq!(tail, [0; 10]);
    assert!(img.read_at(&mut tail, 1015).is_err());

    // Writing into the padding extends the file, as in qemu, but never beyond the size.
    img.write_at(b"xy", 1010).unwrap();
    assert_eq!(img.file_length().unwrap(), 1012);
    assert_eq!(img.size(), 1024);
    let mut back = [0xffu8; 14];
    img.read_at(&mut back, 1000).unwrap();
    assert_eq!(&back, b"\0\0\0\0\0\0\0\0\0\0xy\0\0");
    drop(img);

    // qemu-img convert of an odd-sized raw file produces the padded size; so does reading
    // ours to the end.
    let conv = dir.path().join("conv.raw");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            path.to_str().unwrap(),
            conv.to_str().unwrap(),
        ],
    );
    let converted = std::fs::read(&conv).unwrap();
    assert_eq!(converted.len(), 1024);
    let img = RawFile::open(&path, &RO).unwrap();
    let mut ours = vec![0u8; 1024];
    img.read_at(&mut ours, 0).unwrap();
    assert_eq!(ours, converted);
}

#[test]
fn empty_file_has_size_zero() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.raw");
    std::fs::write(&path, b"").unwrap();
    let img = RawFile::open(&path, &RO).unwrap();
    assert_eq!(img.size(), 0);
    img.read_at(&mut [], 0).unwrap();
    assert!(img.read_at(&mut [0], 0).is_err());
    assert_eq!(img.map(0, 100).unwrap().kind, vdisk_block::MapKind::Eof);
}

#[test]
fn missing_file_is_an_open_io_error_naming_the_path() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.raw");
    let e = RawFile::open(&path, &RO).unwrap_err();
    match &e {
        Error::Io { op, source, .. } => {
            assert_eq!(*op, "open");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        e => panic!("{e}"),
    }
    assert_eq!(e.path(), Some(path.as_path()));
}

#[test]
fn threads_read_and_write_disjoint_ranges() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mt.raw");
    let img = Arc::new(RawFile::create(&path, 8 << 20, Preallocation::Off).unwrap());
    let chunk = 64 * 1024;
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let img = Arc::clone(&img);
            std::thread::spawn(move || {
                let data = pattern(chunk, t);
                for i in 0..16u64 {
                    let off = (i * 8 + u64::from(t)) * chunk as u64;
                    img.write_at(&data, off).unwrap();
                }
                let mut back = vec![0u8; chunk];
                for _ in 0..50 {
                    for i in 0..16u64 {
                        let off = (i * 8 + u64::from(t)) * chunk as u64;
                        img.read_at(&mut back, off).unwrap();
                        assert_eq!(back, data);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let file = std::fs::read(&path).unwrap();
    for (i, block) in file.chunks(chunk).enumerate() {
        assert_eq!(block, &pattern(chunk, (i % 8) as u8)[..], "block {i}");
    }
}
