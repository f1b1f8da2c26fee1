//! Property test of the write path: random writes, zero writes, discards, compressed writes,
//! flushes and reopens applied to a vdisk image and to an in-memory model, over image
//! versions, cluster sizes, extended L2, refcount widths and a backing file. After each
//! sequence: our reads equal the model, `qemu-img check` is clean (no errors, no leaks),
//! `qemu-img convert -O raw` equals the model and `qemu-img compare` finds them identical.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use vdisk_block::{BlockDevice, Discard, Image, MemDevice, Preallocation, WriteZeroes};
use vdisk_qcow2::{CreateOptions, Qcow2};
use vdisk_raw::RawFile;

#[derive(Debug, Clone)]
enum Op {
    Write {
        off: u64,
        len: u64,
        seed: u8,
    },
    Zero {
        off: u64,
        len: u64,
        unmap: bool,
    },
    Discard {
        off: u64,
        len: u64,
    },
    Compressed {
        cluster: u64,
        seed: u8,
        compressible: bool,
    },
    Flush,
    Reopen,
}

#[derive(Debug, Clone)]
struct Config {
    version: u32,
    cluster_bits: u32,
    extended_l2: bool,
    refcount_bits: u32,
    backing: bool,
    zstd: bool,
}

impl Config {
    fn size(&self) -> u64 {
        // Enough clusters to need several L2 tables and refcount blocks with small clusters,
        // and a few clusters with big ones.
        (1u64 << self.cluster_bits) * 5 + (1 << 20) - 1536
    }
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![Just(9u32), Just(16), Just(21)],
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(1u32), Just(16), Just(64)],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(cluster_bits, v3, ext, refcount_bits, backing, zstd)| {
            let version = if v3 { 3 } else { 2 };
            Config {
                version,
                cluster_bits,
                extended_l2: v3 && ext && cluster_bits >= 14,
                refcount_bits: if v3 { refcount_bits } else { 16 },
                backing,
                zstd: v3 && zstd,
            }
        })
}

fn ops(size: u64, cs: u64) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        6 => (0..size, 1..(3 * cs).min(300_000), any::<u8>()).prop_map(move |(off, len, seed)| Op::Write {
            off,
            len: len.min(size - off),
            seed
        }),
        2 => (0..size, 1..(4 * cs).min(400_000), any::<bool>()).prop_map(move |(off, len, unmap)| Op::Zero {
            off,
            len: len.min(size - off),
            unmap
        }),
        2 => (0..size / cs, 1..4u64).prop_map(move |(c, n)| Op::Discard {
            off: c * cs,
            len: (n * cs).min(size - c * cs)
        }),
        1 => (0..size, 1..(2 * cs).min(200_000)).prop_map(move |(off, len)| Op::Discard {
            off,
            len: len.min(size - off)
        }),
        2 => (0..size.div_ceil(cs), any::<u8>(), any::<bool>()).prop_map(|(cluster, seed, compressible)| Op::Compressed {
            cluster,
            seed,
            compressible
        }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ];
    prop::collection::vec(op, 1..14)
}

fn pattern(len: usize, seed: u8, compressible: bool) -> Vec<u8> {
    if compressible {
        (0..len).map(|i| seed ^ ((i / 100) as u8)).collect()
    } else {
        let mut x = u64::from(seed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }
}

fn open(path: &Path, backing: Option<&Path>) -> Qcow2 {
    let f = Arc::new(
        RawFile::open(
            path,
            &vdisk_raw::OpenOptions {
                read_only: false,
                force_share: false,
            },
        )
        .unwrap(),
    );
    let mut q = Qcow2::open_rw(f).unwrap();
    if let Some(b) = backing {
        q.set_backing(Arc::new(FileDev::open(b)) as Arc<dyn Image>);
    }
    q
}

fn run_case(cfg: &Config, ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.qcow2");
    let base = dir.path().join("base.raw");
    let size = cfg.size();
    let cs = 1u64 << cfg.cluster_bits;
    // The backing file is shorter than the image: the tail reads as zeros.
    let base_data = pattern((size - cs / 2 - 512) as usize, 0xb5, false);
    let model = MemDevice::new(size as usize);
    let backing = if cfg.backing {
        std::fs::write(&base, &base_data).unwrap();
        model.write_at(&base_data, 0).unwrap();
        Some(base.as_path())
    } else {
        None
    };
    let opts = CreateOptions {
        size,
        version: cfg.version,
        cluster_size: cs,
        refcount_bits: cfg.refcount_bits,
        extended_l2: cfg.extended_l2,
        compression_type: if cfg.zstd {
            vdisk_qcow2::CompressionType::Zstd
        } else {
            vdisk_qcow2::CompressionType::Zlib
        },
        backing_file: backing.map(|b| b.to_str().unwrap().to_string()),
        backing_format: backing.map(|_| "raw".to_string()),
        ..Default::default()
    };
    let f = Arc::new(RawFile::create(&img, 0, Preallocation::Off).unwrap());
    let mut q = Qcow2::create(f, &opts).unwrap();
    if let Some(b) = backing {
        q.set_backing(Arc::new(FileDev::open(b)) as Arc<dyn Image>);
    }
    let backing_at = |off: u64, len: u64| -> Vec<u8> {
        let mut v = vec![0u8; len as usize];
        if cfg.backing {
            for (i, b) in v.iter_mut().enumerate() {
                *b = base_data.get(off as usize + i).copied().unwrap_or(0);
            }
        }
        v
    };
    for op in ops {
        match op {
            Op::Write { off, len, seed } => {
                let d = pattern(*len as usize, *seed, seed % 3 == 0);
                q.write_at(&d, *off).unwrap();
                model.write_at(&d, *off).unwrap();
            }
            Op::Zero { off, len, unmap } => {
                q.write_zeroes(*off, *len, *unmap).unwrap();
                model.write_zeroes(*off, *len, false).unwrap();
            }
            Op::Discard { off, len } => {
                q.discard(*off, *len).unwrap();
                // Whole clusters (and the image's partial last cluster) fall back to the
                // backing file.
                let mut c = off.div_ceil(cs) * cs;
                while c < off + len && (c + cs <= off + len || off + len == size) {
                    let n = cs.min(size - c);
                    model.write_at(&backing_at(c, n), c).unwrap();
                    c += cs;
                }
            }
            Op::Compressed {
                cluster,
                seed,
                compressible,
            } => {
                let start = cluster * cs;
                let n = cs.min(size - start);
                let d = pattern(n as usize, *seed, *compressible);
                q.write_compressed(*cluster, &d).unwrap();
                model.write_at(&d, start).unwrap();
            }
            Op::Flush => q.flush().unwrap(),
            Op::Reopen => {
                q.flush().unwrap();
                drop(q);
                q = open(&img, backing);
            }
        }
    }
    q.flush().unwrap();
    let expect = model.to_vec();
    assert_same(&read_all(&q), &expect, "our reads");
    drop(q);

    let out = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same(&qemu_raw(&img, &[]), &expect, "qemu-img convert");
    let model_file = dir.path().join("model.raw");
    std::fs::write(&model_file, &expect).unwrap();
    let st = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
        .arg(&img)
        .arg(&model_file)
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0), "qemu-img compare");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_writes_match_model((cfg, ops) in config().prop_flat_map(|c| {
        let size = c.size();
        let cs = 1u64 << c.cluster_bits;
        (Just(c), ops(size, cs))
    })) {
        run_case(&cfg, &ops);
    }
}

/// Many clusters with tiny clusters and wide refcounts: the refcount table must grow.
#[test]
fn refcount_table_grows() {
    let cfg = Config {
        version: 3,
        cluster_bits: 9,
        extended_l2: false,
        refcount_bits: 64,
        backing: false,
        zstd: false,
    };
    let size = cfg.size();
    let ops: Vec<Op> = (0..8)
        .map(|i| Op::Write {
            off: i * (size / 8),
            len: size / 8,
            seed: i as u8,
        })
        .chain([
            Op::Reopen,
            Op::Compressed {
                cluster: 3,
                seed: 1,
                compressible: true,
            },
        ])
        .collect();
    run_case(&cfg, &ops);
}
