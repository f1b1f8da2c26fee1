//! Allocation mappings from SEEK_DATA/SEEK_HOLE, checked extent by extent against
//! `qemu-img map --output=json`.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{our_map, qemu_map, Extent};
use vdisk_block::{Image, MapKind, Mapping};
use vdisk_raw::{OpenOptions, RawFile};

const RO: OpenOptions = OpenOptions {
    read_only: true,
    force_share: false,
};

const K: u64 = 1024;

/// Builds a sparse file of `len` bytes with data written at each `(offset, len)`.
fn sparse(path: &Path, len: u64, data: &[(u64, u64)]) {
    let f = File::create(path).unwrap();
    f.set_len(len).unwrap();
    for &(off, n) in data {
        f.write_all_at(&vec![0x5a; n as usize], off).unwrap();
    }
    f.sync_all().unwrap();
}

fn data(start: u64, length: u64) -> Extent {
    Extent {
        start,
        length,
        data: true,
        zero: false,
        offset: Some(start),
    }
}

fn zero(start: u64, length: u64) -> Extent {
    Extent {
        start,
        length,
        data: false,
        zero: true,
        offset: Some(start),
    }
}

/// Maps `path` with vdisk and qemu-img, checks they agree, and returns the extents.
fn both(path: &Path) -> Vec<Extent> {
    let img = RawFile::open(path, &RO).unwrap();
    let ours = our_map(&img);
    let theirs = qemu_map(path);
    assert_eq!(
        ours, theirs,
        "vdisk (left) and qemu-img map (right) disagree"
    );
    ours
}

#[test]
fn holes_and_data_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.raw");
    sparse(
        &path,
        256 * K,
        &[(64 * K, 4 * K), (80 * K, 16 * K), (200 * K, 1)],
    );
    assert_eq!(
        both(&path),
        vec![
            zero(0, 64 * K),
            data(64 * K, 4 * K),
            zero(68 * K, 12 * K),
            data(80 * K, 16 * K),
            zero(96 * K, 104 * K),
            // One byte written allocates the whole 4K filesystem block.
            data(200 * K, 4 * K),
            zero(204 * K, 52 * K),
        ]
    );
}

#[test]
fn data_at_both_ends_and_odd_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ends.raw");
    // Data at the start, a hole, data up to an EOF that is not sector-aligned.
    let len = 100 * K + 1000;
    sparse(&path, len, &[(0, 8 * K), (96 * K, 4 * K + 1000)]);
    assert_eq!(
        both(&path),
        vec![
            data(0, 8 * K),
            zero(8 * K, 88 * K),
            data(96 * K, 4 * K + 1000),
            // The padding up to the next sector is zero, at its own offset.
            zero(len, 24),
        ]
    );
}

#[test]
fn trailing_hole_and_all_hole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trail.raw");
    sparse(&path, 1000 * K + 3, &[(4 * K, 4 * K)]);
    let m = both(&path);
    assert_eq!(
        m,
        vec![
            zero(0, 4 * K),
            data(4 * K, 4 * K),
            zero(8 * K, 1000 * K + 512 - 8 * K)
        ]
    );

    let hole = dir.path().join("hole.raw");
    sparse(&hole, 1000, &[]);
    assert_eq!(both(&hole), vec![zero(0, 1024)]);

    let tiny = dir.path().join("tiny.raw");
    std::fs::write(&tiny, b"abc").unwrap();
    assert_eq!(both(&tiny), vec![data(0, 3), zero(3, 509)]);

    let full = dir.path().join("full.raw");
    std::fs::write(&full, vec![1u8; 3 * 4096]).unwrap();
    assert_eq!(both(&full), vec![data(0, 3 * 4096)]);
}

#[test]
fn fallocated_space_maps_as_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("falloc.raw");
    common::run_ok("fallocate", &["-l", "1048576", path.to_str().unwrap()]);
    let f = File::options().write(true).open(&path).unwrap();
    f.write_all_at(&[1; 4096], 64 * K).unwrap();
    f.sync_all().unwrap();
    // ext4 reports unwritten extents as holes: reserved, but read as zeros.
    assert_eq!(
        both(&path),
        vec![
            zero(0, 64 * K),
            data(64 * K, 4 * K),
            zero(68 * K, (1 << 20) - 68 * K)
        ]
    );
}

#[test]
fn map_respects_max_len_and_offsets_inside_extents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inside.raw");
    sparse(&path, 64 * K, &[(16 * K, 16 * K)]);
    let img = RawFile::open(&path, &RO).unwrap();
    // Inside a hole: up to the next data.
    assert_eq!(
        img.map(5000, u64::MAX).unwrap(),
        Mapping {
            offset: 5000,
            len: 16 * K - 5000,
            kind: MapKind::Zero {
                host_offset: Some(5000)
            }
        }
    );
    // Inside data: up to the next hole, clipped by max_len.
    assert_eq!(
        img.map(20 * K, u64::MAX).unwrap(),
        Mapping {
            offset: 20 * K,
            len: 12 * K,
            kind: MapKind::Data {
                host_offset: 20 * K
            }
        }
    );
    assert_eq!(img.map(20 * K, 100).unwrap().len, 100);
    // In the trailing hole, and at and past the end.
    assert_eq!(img.map(40 * K, u64::MAX).unwrap().len, 24 * K);
    assert_eq!(img.map(64 * K, 1).unwrap().kind, MapKind::Eof);
    assert_eq!(img.map(u64::MAX, 1).unwrap().kind, MapKind::Eof);
}

#[test]
fn a_hole_punched_later_shows_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later.raw");
    sparse(&path, 64 * K, &[(0, 64 * K)]);
    let img = RawFile::open(&path, &RO).unwrap();
    assert_eq!(our_map(&img), vec![data(0, 64 * K)]);
    common::run_ok(
        "fallocate",
        &[
            "--punch-hole",
            "-o",
            "8192",
            "-l",
            "8192",
            path.to_str().unwrap(),
        ],
    );
    // No cached mapping: the new hole is reported at once.
    assert_eq!(
        our_map(&img),
        vec![data(0, 8 * K), zero(8 * K, 8 * K), data(16 * K, 48 * K)]
    );
    assert_eq!(our_map(&img), qemu_map(&path));
}
