//! Property and concurrency tests: random qemu-io workloads over a backing file, read back
//! through our reader, must equal `qemu-img convert -O raw`.

mod common;

use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use vdisk_block::BlockDevice;

#[derive(Debug, Clone)]
enum Op {
    Write { off: u64, len: u64, pattern: u8 },
    Zero { off: u64, len: u64, unmap: bool },
    Discard { off: u64, len: u64 },
}

impl Op {
    fn command(&self) -> String {
        match self {
            Op::Write { off, len, pattern } => format!("write -P {pattern} {off} {len}"),
            Op::Zero {
                off,
                len,
                unmap: false,
            } => format!("write -z {off} {len}"),
            Op::Zero {
                off,
                len,
                unmap: true,
            } => format!("write -z -u {off} {len}"),
            Op::Discard { off, len } => format!("discard {off} {len}"),
        }
    }
}

const SIZE: u64 = 512 << 10;

fn op() -> impl Strategy<Value = Op> {
    let sector = 0..SIZE / 512;
    prop_oneof![
        3 => (0..SIZE - 1, 1..40_000u64, 1..=255u8).prop_map(|(off, len, pattern)| Op::Write {
            off,
            len: len.min(SIZE - off),
            pattern
        }),
        1 => (sector.clone(), 1..80u64, any::<bool>()).prop_map(|(s, n, unmap)| Op::Zero {
            off: s * 512,
            len: (n * 512).min(SIZE - s * 512),
            unmap
        }),
        1 => (sector, 1..80u64).prop_map(|(s, n)| Op::Discard {
            off: s * 512,
            len: (n * 512).min(SIZE - s * 512)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_writes_over_backing(
        ops in prop::collection::vec(op(), 1..16),
        layout in 0..4usize,
        top_size in prop_oneof![Just(SIZE), Just(SIZE / 2 + 4096), Just(SIZE * 2)],
    ) {
        let (opts, backing_fmt) = [
            ("cluster_size=4096", "qcow2"),
            ("cluster_size=512", "raw"),
            ("cluster_size=65536,extended_l2=on", "qcow2"),
            ("cluster_size=16384,extended_l2=on,compat=1.1", "raw"),
        ][layout];
        let dir = tmpdir();
        let base = dir.path().join(format!("base.{backing_fmt}"));
        qemu_img(&["create", "-q", "-f", backing_fmt, base.to_str().unwrap(), &SIZE.to_string()]);
        let fill = if backing_fmt == "qcow2" {
            vec!["write -P 0xbb 0 200k".to_string(), "write -z 300k 100k".to_string()]
        } else {
            vec![]
        };
        if backing_fmt == "qcow2" {
            qemu_io(&base, &fill);
        } else {
            std::fs::write(&base, (0..SIZE).map(|i| (i / 1000) as u8 | 0x80).collect::<Vec<u8>>()).unwrap();
        }
        let top = dir.path().join("top.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", "-b", base.to_str().unwrap(), "-F", backing_fmt,
                   "-o", opts, top.to_str().unwrap(), &top_size.to_string()]);
        let cmds: Vec<String> = ops
            .iter()
            .filter_map(|o| {
                // Keep every request inside the overlay.
                let (off, len) = match o {
                    Op::Write { off, len, .. } | Op::Zero { off, len, .. } | Op::Discard { off, len } => (*off, *len),
                };
                (off + len <= top_size).then(|| o.command())
            })
            .collect();
        if !cmds.is_empty() {
            qemu_io(&top, &cmds);
        }
        let q = open_chain(&top);
        let ours = read_all(&q);
        let theirs = qemu_raw(&top, &[]);
        prop_assert_eq!(ours.len(), theirs.len());
        let diff = ours.iter().zip(&theirs).position(|(a, b)| a != b);
        prop_assert!(diff.is_none(), "first difference at {:?} for {:?}", diff, cmds);
    }
}

#[test]
fn concurrent_readers() {
    let dir = tmpdir();
    let base = dir.path().join("base.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        base.to_str().unwrap(),
        "4M",
    ]);
    qemu_io(
        &base,
        &[
            "write -c -P 0x21 1M 64k".into(),
            "write -P 0x22 0 1M".into(),
            "write -P 0x23 2M 1M".into(),
        ],
    );
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        "-F",
        "qcow2",
        "-o",
        "cluster_size=512",
        top.to_str().unwrap(),
        "4M",
    ]);
    qemu_io(
        &top,
        &[
            "write -P 0x31 100k 300k".into(),
            "write -z 2100k 200k".into(),
            "write -c -P 0x32 3584k 64k".into(),
            "write -P 0x33 1030k 5k".into(),
        ],
    );
    let want = Arc::new(qemu_raw(&top, &[]));
    let q = Arc::new(open_chain(&top));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let q = Arc::clone(&q);
            let want = Arc::clone(&want);
            std::thread::spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t;
                let size = q.size();
                let mut buf = vec![0u8; 256 << 10];
                for _ in 0..300 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let off = x % size;
                    let len = ((x >> 40) % (256 << 10)).min(size - off) as usize;
                    q.read_at(&mut buf[..len], off).unwrap();
                    assert!(
                        buf[..len] == want[off as usize..off as usize + len],
                        "thread {t} at {off}+{len}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
