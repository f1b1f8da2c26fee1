//! Golden-image tests: a small hand-built image, patched byte by byte, must give exact errors.

use std::io::Write;
use std::sync::Arc;

use vdisk_block::{BlockDevice, Error, Image, MapKind, MemDevice};

use crate::Qcow2;

const CS: usize = 512;
const DATA: usize = 3 * CS;
const COMPRESSED: usize = 4 * CS;

fn put32(img: &mut [u8], at: usize, v: u32) {
    img[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(img: &mut [u8], at: usize, v: u64) {
    img[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Writes a compressed-cluster L2 entry for `bytes` of compressed data at `offset`.
fn compressed_entry(offset: u64, bytes: usize) -> u64 {
    // cluster_bits 9: x = 62 - (9 - 8) = 61.
    let sectors = ((offset as usize + bytes - 1) / 512 - offset as usize / 512) as u64;
    (1 << 62) | (sectors << 61) | offset
}

/// A version 3 image with 512-byte clusters and 2 KiB of guest data:
/// cluster 0 header (+ feature name table), 1 L1, 2 L2, 3 data "hello", 4-5 compressed 'z's.
/// Guest cluster 0 data, 1 compressed, 2 zero, 3 unallocated.
fn golden() -> Vec<u8> {
    let mut img = vec![0u8; 6 * CS];
    img[0..4].copy_from_slice(b"QFI\xfb");
    put32(&mut img, 4, 3);
    put32(&mut img, 20, 9);
    put64(&mut img, 24, 4 * CS as u64);
    put32(&mut img, 36, 1);
    put64(&mut img, 40, CS as u64);
    put32(&mut img, 96, 4);
    put32(&mut img, 100, 112);
    // Feature name table: incompatible bit 0 "dirty bit", bit 5 "teleportation".
    put32(&mut img, 112, crate::extension::FEATURE_NAME_TABLE);
    put32(&mut img, 116, 96);
    img[120] = 0;
    img[121] = 0;
    img[122..122 + 9].copy_from_slice(b"dirty bit");
    img[168] = 0;
    img[169] = 5;
    img[170..170 + 13].copy_from_slice(b"teleportation");
    // L1 -> L2 at cluster 2.
    put64(&mut img, CS, (2 * CS as u64) | (1 << 63));
    put64(&mut img, 2 * CS, (DATA as u64) | (1 << 63));
    let z = deflate(&[b'z'; CS]);
    img[COMPRESSED..COMPRESSED + z.len()].copy_from_slice(&z);
    put64(
        &mut img,
        2 * CS + 8,
        compressed_entry(COMPRESSED as u64, z.len()),
    );
    put64(&mut img, 2 * CS + 16, 1);
    img[DATA..DATA + 5].copy_from_slice(b"hello");
    img
}

fn open(img: Vec<u8>) -> crate::Result<Qcow2> {
    Qcow2::open(Arc::new(MemDevice::from_vec(img)))
}

fn err(img: Vec<u8>) -> Error {
    open(img).expect_err("open should fail")
}

fn message(img: Vec<u8>) -> String {
    err(img).to_string()
}

#[test]
fn golden_reads_and_maps() {
    let q = open(golden()).unwrap();
    let mut buf = vec![0u8; 4 * CS];
    q.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..5], b"hello");
    assert!(buf[5..CS].iter().all(|&b| b == 0));
    assert!(buf[CS..2 * CS].iter().all(|&b| b == b'z'));
    assert!(buf[2 * CS..].iter().all(|&b| b == 0));
    let kinds: Vec<_> = (0..5)
        .map(|i| q.map(i * CS as u64, 1 << 20).unwrap().kind)
        .collect();
    assert_eq!(
        kinds,
        [
            MapKind::Data {
                host_offset: DATA as u64
            },
            MapKind::Compressed,
            MapKind::Zero { host_offset: None },
            MapKind::Unallocated { host_offset: None },
            MapKind::Eof
        ]
    );
    assert!(q.write_at(b"x", 0).is_err());
    assert_eq!(q.info().compat, "1.1");
}

#[test]
fn bad_magic() {
    let mut img = golden();
    img[0] = b'X';
    assert_eq!(message(img), "image is not in qcow2 format (bad magic)");
}

#[test]
fn version_4_is_unsupported() {
    let mut img = golden();
    put32(&mut img, 4, 4);
    let e = err(img);
    assert!(matches!(e, Error::Unsupported { .. }));
    assert_eq!(e.to_string(), "unsupported qcow2 version 4");
}

#[test]
fn cluster_bits_out_of_range() {
    let mut img = golden();
    put32(&mut img, 20, 8);
    assert_eq!(
        message(img),
        "at offset 0x14: cluster_bits 8 is below the minimum of 9"
    );
    let mut img = golden();
    put32(&mut img, 20, 22);
    let e = err(img);
    assert!(matches!(e, Error::Unsupported { .. }));
    assert_eq!(
        e.to_string(),
        "unsupported cluster size 2^22 (at most 2 MiB is supported)"
    );
}

#[test]
fn unknown_incompatible_bit_is_named() {
    let mut img = golden();
    put64(&mut img, 72, 1 << 5);
    let e = err(img);
    assert!(matches!(e, Error::Unsupported { .. }));
    assert_eq!(e.to_string(), "Unsupported qcow2 feature(s): teleportation");
    let mut img = golden();
    put64(&mut img, 72, (1 << 5) | (1 << 40));
    assert_eq!(
        message(img),
        "Unsupported qcow2 feature(s): teleportation, Unknown incompatible feature: 10000000000"
    );
}

#[test]
fn encryption_is_refused() {
    for method in [1, 2, 7] {
        let mut img = golden();
        put32(&mut img, 32, method);
        let e = err(img);
        assert!(matches!(e, Error::Unsupported { .. }));
        assert_eq!(e.to_string(), "encrypted images are not supported");
    }
}

#[test]
fn l1_table_past_eof() {
    let mut img = golden();
    put64(&mut img, 40, 1 << 20);
    assert_eq!(
        message(img),
        "at offset 0x100000: L1 table lies beyond the end of the file"
    );
    let mut img = golden();
    put64(&mut img, 40, 700);
    assert_eq!(
        message(img),
        "at offset 0x2bc: L1 table offset 0x2bc is not cluster aligned"
    );
}

#[test]
fn absurd_l1_size() {
    let mut img = golden();
    put32(&mut img, 36, u32::MAX);
    assert_eq!(
        message(img),
        "at offset 0x24: active L1 table of 4294967295 entries is too large (at most 4194304 entries)"
    );
    // Too small for the virtual size.
    let mut img = golden();
    put64(&mut img, 24, 1 << 40);
    assert_eq!(message(img), "at offset 0x24: L1 table is too small");
}

#[test]
fn huge_snapshot_count() {
    let mut img = golden();
    put32(&mut img, 60, u32::MAX);
    put64(&mut img, 64, 5 * CS as u64);
    assert_eq!(
        message(img),
        "at offset 0x3c: 4294967295 snapshots are too many (at most 65536)"
    );
    // A plausible count whose table runs off the end of the file.
    let mut img = golden();
    put32(&mut img, 60, 60000);
    put64(&mut img, 64, 5 * CS as u64);
    assert!(message(img).ends_with("snapshot table lies beyond the end of the file"));
}

#[test]
fn l2_table_past_eof_is_reported_on_read() {
    let mut img = golden();
    put64(&mut img, CS, 0x50000 | (1 << 63));
    let q = open(img).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        q.read_at(&mut buf, 0).unwrap_err().to_string(),
        "at offset 0x50000: L2 table lies beyond the end of the file"
    );
    assert!(q.map(0, 1).is_err());
}

#[test]
fn compressed_cluster_bomb() {
    let mut img = golden();
    let bomb = deflate(&vec![0u8; 1 << 16]);
    assert!(bomb.len() <= 2 * CS, "bomb must fit the descriptor");
    img[COMPRESSED..COMPRESSED + bomb.len()].copy_from_slice(&bomb);
    put64(
        &mut img,
        2 * CS + 8,
        compressed_entry(COMPRESSED as u64, bomb.len()),
    );
    let q = open(img).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        q.read_at(&mut buf, CS as u64).unwrap_err().to_string(),
        "at offset 0x800: compressed cluster decompresses to more than one cluster"
    );
}

#[test]
fn truncated_compressed_cluster() {
    let mut img = golden();
    let short = deflate(&[1u8; 100]);
    img[COMPRESSED..COMPRESSED + short.len()].copy_from_slice(&short);
    let q = open(img).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        q.read_at(&mut buf, CS as u64).unwrap_err().to_string(),
        "at offset 0x800: compressed cluster decompresses to less than one cluster"
    );
}

#[test]
fn zero_cluster_in_v2_is_corrupt() {
    let mut img = golden();
    put32(&mut img, 4, 2);
    // v2: header is 72 bytes; the feature table at 112 is now just ignored padding.
    let q = open(img).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        q.read_at(&mut buf, 2 * CS as u64).unwrap_err().to_string(),
        "at offset 0x410: zero cluster in a version 2 image"
    );
}

#[test]
fn extension_too_large() {
    let mut img = golden();
    put32(&mut img, 116, 100_000);
    assert_eq!(
        message(img),
        "at offset 0x70: header extension 0x6803f857 of 100000 bytes is too large"
    );
}

#[test]
fn compression_type_must_match_its_bit() {
    let mut img = golden();
    img[104] = 1;
    assert_eq!(
        message(img),
        "at offset 0x68: compression_type does not agree with the compression type feature bit"
    );
    let mut img = golden();
    img[104] = 9;
    put64(&mut img, 72, 1 << 3);
    assert_eq!(message(img), "unsupported compression type 9");
}

#[test]
fn backing_name_and_snapshot_lookup() {
    let mut img = golden();
    // Backing file name in the header cluster, after the extensions.
    img[300..308].copy_from_slice(b"base.raw");
    put64(&mut img, 8, 300);
    put32(&mut img, 16, 8);
    let q = open(img).unwrap();
    assert_eq!(q.backing_file_name(), Some("base.raw"));
    let mut img = golden();
    put64(&mut img, 8, 300);
    put32(&mut img, 16, 4000);
    assert_eq!(
        message(img),
        "at offset 0x10: backing file name of 4000 bytes is longer than 1023"
    );
}

#[test]
fn any_bytes_never_panic() {
    // Every single-byte corruption of the metadata clusters opens or fails cleanly, and reads
    // of every cluster either work or fail cleanly.
    let base = golden();
    for at in 0..3 * CS {
        for v in [0x00u8, 0xff, 0x80, 0x01] {
            let mut img = base.clone();
            img[at] = v;
            if let Ok(q) = open(img) {
                let mut buf = vec![0u8; 4 * CS];
                let _ = q.read_at(&mut buf, 0);
                let mut off = 0;
                while let Ok(m) = q.map(off, u64::MAX) {
                    if m.kind == MapKind::Eof {
                        break;
                    }
                    off = m.end();
                }
            }
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]

    /// Random multi-byte corruption anywhere in the image never panics or hangs.
    #[test]
    fn random_corruption_never_panics(
        patches in proptest::collection::vec((0..6 * CS, proptest::prelude::any::<u8>()), 1..12)
    ) {
        let mut img = golden();
        for (at, v) in patches {
            img[at] = v;
        }
        if let Ok(q) = open(img) {
            let mut buf = vec![0u8; q.size().min(1 << 16) as usize];
            let _ = q.read_at(&mut buf, 0);
            let mut off = 0;
            for _ in 0..64 {
                match q.map(off, u64::MAX) {
                    Ok(m) if m.kind != MapKind::Eof => off = m.end(),
                    _ => break,
                }
            }
            let _ = q.info();
        }
    }
}

#[test]
fn qcow2_is_send_sync_debug() {
    fn check<T: Send + Sync + std::fmt::Debug>() {}
    check::<Qcow2>();
    let q = open(golden()).unwrap();
    assert!(format!("{q:?}").starts_with("Qcow2 {"));
}
