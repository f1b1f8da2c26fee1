//! Eight threads writing one open image: disjoint regions end up exactly as written,
//! overlapping ones hold some thread's whole sectors, and `qemu-img check` is clean.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use vdisk_block::{BlockDevice, Discard, Image, Preallocation, WriteZeroes};
use vdisk_qcow2::{CreateOptions, Qcow2};
use vdisk_raw::RawFile;

fn sector(thread: u8, seq: u32) -> [u8; 512] {
    let mut s = [thread; 512];
    s[..4].copy_from_slice(&seq.to_le_bytes());
    s
}

fn run(opts: CreateOptions, with_backing: bool) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("c.qcow2");
    let base = dir.path().join("base.raw");
    let size = opts.size;
    let mut o = opts.clone();
    if with_backing {
        std::fs::write(&base, vec![0x5a; size as usize]).unwrap();
        o.backing_file = Some(base.to_str().unwrap().into());
        o.backing_format = Some("raw".into());
    }
    let f = Arc::new(RawFile::create(&img, 0, Preallocation::Off).unwrap());
    let mut q = Qcow2::create(f, &o).unwrap();
    if with_backing {
        q.set_backing(Arc::new(FileDev::open(&base)) as Arc<dyn Image>);
    }
    let q = Arc::new(q);
    // Thread t owns every 8th 24 KiB stripe of the first half; the second half is shared.
    let stripe = 24 << 10;
    let half = size / 2;
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                let mut x = u64::from(t) + 1;
                let mut rnd = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                for seq in 0..300u32 {
                    let r = rnd();
                    let stripes = half / stripe / 8;
                    match r % 10 {
                        0..=5 => {
                            let s = (r >> 8) % stripes * 8 + u64::from(t);
                            let off = s * stripe + (r >> 20) % 40 * 512;
                            let n = 1 + (r >> 30) % 8;
                            let buf: Vec<u8> = (0..n).flat_map(|_| sector(t, seq)).collect();
                            q.write_at(&buf, off).unwrap();
                        }
                        6 => {
                            let off = half + (r >> 8) % (half / 512 - 64) * 512;
                            let buf: Vec<u8> = (0..1 + (r >> 40) % 64)
                                .flat_map(|_| sector(t, seq))
                                .collect();
                            q.write_at(&buf, off).unwrap();
                        }
                        7 => {
                            let off = half + (r >> 8) % (half / 512 - 256) * 512;
                            q.write_zeroes(off, 512 * (1 + (r >> 40) % 256), r & 1 == 0)
                                .unwrap();
                        }
                        8 => {
                            let off = half + (r >> 8) % (half / 512 - 256) * 512;
                            q.discard(off, 512 * (1 + (r >> 40) % 256)).unwrap();
                        }
                        _ => q.flush().unwrap(),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    q.flush().unwrap();
    let ours = read_all(&*q);
    drop(q);
    // Disjoint stripes: every sector is zero/backing or a sector of its owner.
    for (i, s) in ours[..half as usize].chunks(512).enumerate() {
        let owner = ((i as u64 * 512 / stripe) % 8) as u8;
        let fill = if with_backing { 0x5a } else { 0 };
        assert!(
            s.iter().all(|&b| b == fill) || s[4..].iter().all(|&b| b == owner),
            "sector {i} of a stripe owned by thread {owner} holds foreign data"
        );
    }
    for (i, s) in ours[half as usize..].chunks(512).enumerate() {
        assert!(
            s.iter().all(|&b| b == 0)
                || s.iter().all(|&b| b == 0x5a)
                || s[4..].iter().all(|&b| b == s[4] && b < 8),
            "shared sector {i} is torn"
        );
    }
    let out = Command::new("qemu-img")
        .arg("check")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_same(&qemu_raw(&img, &[]), &ours, "qemu-img convert");
}

#[test]
fn eight_threads_64k_clusters() {
    run(
        CreateOptions {
            size: 32 << 20,
            ..Default::default()
        },
        false,
    );
}

#[test]
fn eight_threads_small_clusters_with_backing() {
    run(
        CreateOptions {
            size: 16 << 20,
            cluster_size: 4096,
            refcount_bits: 64,
            ..Default::default()
        },
        true,
    );
}

#[test]
fn eight_threads_extended_l2_with_backing() {
    run(
        CreateOptions {
            size: 32 << 20,
            cluster_size: 64 << 10,
            extended_l2: true,
            ..Default::default()
        },
        true,
    );
}
