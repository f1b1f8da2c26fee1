//! Images built at run time with qemu-img and qemu-io; every byte we read must equal
//! `qemu-img convert -O raw`, and our map must equal `qemu-img map --output=json`.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use vdisk_block::{BlockDevice, Image};
use vdisk_qcow2::{CompressionType, Qcow2};

/// A workload touching every kind of cluster: partial and whole writes, zero writes with and
/// without unmapping, discards, compressed clusters, and the unaligned end of the disk.
fn workload(cs: u64, size: u64) -> Vec<String> {
    let mut c = vec![
        format!("write -P 0x11 0 {}", cs * 3 / 2),
        format!("write -P 0x22 {} 1024", cs * 4 + 512),
        format!("write -z {} {}", cs * 6, cs * 2),
        format!("write -P 0x33 {} {}", cs * 9, cs * 3),
        format!("write -z {} {}", cs * 9, cs),
        format!("write -z -u {} {}", cs * 10, cs),
        format!("discard {} {}", cs * 11, cs),
        format!("write -c -P 0x44 {} {}", cs * 14, cs),
        format!("write -c -P 0x45 {} {}", cs * 15, cs),
        format!("write -P 0x66 {} 512", cs * 15 + 512),
        format!("write -P 0x55 {} 1024", size - 1024),
    ];
    if cs >= 4096 {
        c.push(format!("write -P 0x77 {} 1536", cs * 17 + 1024));
    }
    c
}

fn build(dir: &Path, name: &str, opts: &str, cs: u64) -> std::path::PathBuf {
    let size = cs * 20 + 1536;
    let p = dir.join(name);
    let mut o = format!("cluster_size={cs}");
    if !opts.is_empty() {
        o = format!("{o},{opts}");
    }
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &o,
        p.to_str().unwrap(),
        &size.to_string(),
    ]);
    let mut w = workload(cs, size);
    if opts.contains("preallocation") {
        // qemu writes compressed clusters only where nothing is allocated yet.
        w.retain(|c| !c.starts_with("write -c"));
    }
    qemu_io(&p, &w);
    p
}

#[test]
fn cluster_sizes_and_versions() {
    let dir = tmpdir();
    for (opts, cs) in [
        ("compat=0.10", 65536),
        ("compat=0.10", 512),
        ("", 512),
        ("", 4096),
        ("", 65536),
        ("", 2 << 20),
    ] {
        let p = build(dir.path(), &format!("c{cs}{}.qcow2", opts.len()), opts, cs);
        check_image(&p, &format!("{opts} cluster_size={cs}"));
        let q = open_chain(&p);
        assert_eq!(q.header().cluster_bits, cs.trailing_zeros());
        assert_eq!(
            q.info().compat,
            if opts.is_empty() { "1.1" } else { "0.10" }
        );
    }
}

#[test]
fn feature_options() {
    let dir = tmpdir();
    for (i, (opts, cs)) in [
        ("extended_l2=on", 65536),
        ("extended_l2=on", 32768),
        ("extended_l2=on", 2 << 20),
        ("refcount_bits=1", 4096),
        ("refcount_bits=64", 4096),
        ("lazy_refcounts=on", 65536),
        ("preallocation=metadata", 4096),
        ("preallocation=metadata,extended_l2=on", 16384),
        ("compression_type=zstd", 65536),
    ]
    .into_iter()
    .enumerate()
    {
        let p = build(dir.path(), &format!("f{i}.qcow2"), opts, cs);
        check_image(&p, opts);
    }
}

#[test]
fn converted_compressed_images() {
    let dir = tmpdir();
    // A raw source with compressible, incompressible and zero regions.
    let size = 6 << 20;
    let mut src = vec![0u8; size];
    let mut x = 0x1234_5678u32;
    for (i, b) in src.iter_mut().enumerate() {
        *b = match (i >> 16) % 4 {
            0 => (i % 7) as u8,
            1 => {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }
            2 => 0,
            _ => b'a' + (i % 26) as u8,
        };
    }
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, &src).unwrap();
    for (ctype, cs) in [
        ("zlib", 65536),
        ("zstd", 65536),
        ("zlib", 512),
        ("zstd", 4096),
        ("zstd", 2 << 20),
        ("zlib", 2 << 20),
    ] {
        let p = dir.path().join(format!("{ctype}{cs}.qcow2"));
        let o = format!("compression_type={ctype},cluster_size={cs}");
        qemu_img(&[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            &o,
            raw.to_str().unwrap(),
            p.to_str().unwrap(),
        ]);
        let q = open_chain(&p);
        let want = if ctype == "zstd" {
            CompressionType::Zstd
        } else {
            CompressionType::Zlib
        };
        assert_eq!(q.info().compression_type, want);
        let ours = read_all(&q);
        assert_same(&ours, &src, &format!("{ctype} {cs}"));
        assert_eq!(our_map(&q), qemu_map(&p), "{ctype} {cs}: map differs");
    }
}

#[test]
fn external_data_file() {
    let dir = tmpdir();
    for (i, raw) in [false, true].into_iter().enumerate() {
        let data = dir.path().join(format!("data{i}.raw"));
        let p = dir.path().join(format!("ext{i}.qcow2"));
        let o = format!(
            "data_file={},data_file_raw={},cluster_size=4096",
            data.display(),
            if raw { "on" } else { "off" }
        );
        let size = 4096 * 20 + 1536;
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &o,
            p.to_str().unwrap(),
            &size.to_string(),
        ]);
        let mut w = workload(4096, size);
        w.retain(|c| !c.starts_with("write -c")); // no compressed clusters in external data files
        qemu_io(&p, &w);
        check_image(&p, &o);
        let q = open_chain(&p);
        assert!(q.needs_data_file());
        assert_eq!(q.data_file_name(), Some(data.to_str().unwrap()));
        let info = q.info();
        assert_eq!(info.data_file_raw, Some(raw));
        assert_eq!(info.data_file.as_deref(), Some(data.to_str().unwrap()));
        // Without the data file attached, data reads fail with a clear error; map still works.
        let bare = Qcow2::open(Arc::new(FileDev::open(&p))).unwrap();
        let mut buf = [0u8; 16];
        let e = bare.read_at(&mut buf, 0).unwrap_err().to_string();
        assert!(e.contains("is not attached"), "{e}");
        assert!(bare.map(0, 4096).is_ok());
    }
}

#[test]
fn backing_chains() {
    let dir = tmpdir();
    let d = dir.path();
    // qcow2 base of 1 MiB and raw base of 1 MiB, overlays larger and smaller.
    let base_q = d.join("base.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        base_q.to_str().unwrap(),
        "1M",
    ]);
    qemu_io(
        &base_q,
        &[
            "write -c -P 0xb2 256k 4k".into(),
            "write -P 0xb1 0 256k".into(),
            "write -P 0xb1 260k 764k".into(),
            "write -z 64k 64k".into(),
        ],
    );
    let base_r = d.join("base.raw");
    std::fs::write(
        &base_r,
        (0..1 << 20)
            .map(|i| (i / 4096) as u8 | 1)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    for (i, (base, fmt, size, opts)) in [
        (&base_q, "qcow2", "2M", "cluster_size=4096"),
        (&base_q, "qcow2", "640k", "cluster_size=65536"),
        (&base_r, "raw", "3M", "cluster_size=65536,extended_l2=on"),
        (&base_r, "raw", "300k", "cluster_size=512"),
        (&base_q, "qcow2", "1M", "compat=0.10,cluster_size=4096"),
    ]
    .into_iter()
    .enumerate()
    {
        let top = d.join(format!("top{i}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            "-F",
            fmt,
            "-o",
            opts,
            top.to_str().unwrap(),
            size,
        ]);
        qemu_io(
            &top,
            &[
                "write -P 0x71 4k 8k".into(),
                "write -z 100k 60k".into(),
                "write -P 0x72 200k 3k".into(),
                "discard 0 4k".into(),
            ],
        );
        let what = format!("overlay {size} {opts} over {fmt}");
        check_image(&top, &what);
        let q = open_chain(&top);
        assert_eq!(q.backing_format(), Some(fmt));
        assert!(q.backing().is_some());
    }
}

#[test]
fn internal_snapshots() {
    let dir = tmpdir();
    let p = dir.path().join("snap.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        p.to_str().unwrap(),
        "256k",
    ]);
    qemu_io(
        &p,
        &[
            "write -c -P 0x09 64k 4k".into(),
            "write -P 0x01 0 64k".into(),
            "write -P 0x01 68k 188k".into(),
        ],
    );
    qemu_img(&["snapshot", "-c", "first", p.to_str().unwrap()]);
    qemu_io(
        &p,
        &["write -P 0x02 8k 8k".into(), "write -z 32k 32k".into()],
    );
    qemu_img(&["snapshot", "-c", "second", p.to_str().unwrap()]);
    qemu_img(&["resize", p.to_str().unwrap(), "384k"]);
    qemu_io(&p, &["write -P 0x03 300k 4k".into(), "discard 0 4k".into()]);

    let q = open_chain(&p);
    let sn = q.snapshots();
    assert_eq!(sn.len(), 2);
    assert_eq!((sn[0].id_str.as_str(), sn[0].name.as_str()), ("1", "first"));
    assert_eq!(
        (sn[1].id_str.as_str(), sn[1].name.as_str()),
        ("2", "second")
    );
    assert_eq!(sn[0].disk_size, 256 << 10);
    assert_eq!(q.size(), 384 << 10);
    assert_same(&read_all(&q), &qemu_raw(&p, &[]), "current state");

    for spec in [
        "first",
        "1",
        "snapshot.name=first",
        "snapshot.id=1",
        "snapshot.id=1,snapshot.name=first",
        "2",
        "second",
    ] {
        let mut q = open_chain(&p);
        q.load_snapshot(spec).unwrap();
        let ours = read_all(&q);
        // As qemu-img convert -l: the current virtual size, zeros past the snapshot's disk.
        assert_eq!(ours.len(), 384 << 10, "{spec}: the current disk size");
        let theirs = qemu_raw(&p, &["-l", spec]);
        assert_same(&ours, &theirs, spec);
        assert!(q.loaded_snapshot().is_some());
    }
    let mut q = open_chain(&p);
    assert!(q.load_snapshot("third").is_err());
    assert!(q
        .load_snapshot("snapshot.id=1,snapshot.name=second")
        .is_err());
}

#[test]
fn info_matches_qemu() {
    let dir = tmpdir();
    for (i, opts) in [
        "compat=0.10",
        "lazy_refcounts=on,refcount_bits=64",
        "extended_l2=on,compression_type=zstd",
    ]
    .into_iter()
    .enumerate()
    {
        let p = dir.path().join(format!("i{i}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            opts,
            p.to_str().unwrap(),
            "1M",
        ]);
        if i == 2 {
            qemu_img(&["bitmap", "--add", "-g", "128k", p.to_str().unwrap(), "bm0"]);
            qemu_img(&["bitmap", "--add", "--disable", p.to_str().unwrap(), "bm1"]);
        }
        let out = qemu_img(&["info", "--output=json", p.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let spec = &v["format-specific"]["data"];
        let info = open_chain(&p).info();
        assert_eq!(spec["compat"], info.compat);
        assert_eq!(spec["compression-type"], info.compression_type.as_str());
        assert_eq!(spec["refcount-bits"], info.refcount_bits);
        assert_eq!(spec["lazy-refcounts"].as_bool(), info.lazy_refcounts);
        assert_eq!(spec["corrupt"].as_bool(), info.corrupt);
        assert_eq!(spec["extended-l2"].as_bool(), info.extended_l2);
        assert_eq!(v["cluster-size"], info.cluster_size);
        assert_eq!(v["dirty-flag"], info.dirty);
        let bitmaps: Vec<(String, u64, Vec<String>)> = spec["bitmaps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|b| {
                        (
                            b["name"].as_str().unwrap().to_string(),
                            b["granularity"].as_u64().unwrap(),
                            b["flags"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|f| f.as_str().unwrap().to_string())
                                .collect(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ours: Vec<(String, u64, Vec<String>)> = info
            .bitmaps
            .iter()
            .map(|b| {
                (
                    b.name.clone(),
                    b.granularity,
                    b.flags.iter().map(|f| f.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(ours, bitmaps, "{opts}");
    }
}

#[test]
fn refusals_and_dirty_images() {
    let dir = tmpdir();
    let d = dir.path();
    // LUKS-encrypted: refused, never read as ciphertext.
    let luks = d.join("luks.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=sec0,data=abc",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        luks.to_str().unwrap(),
        "1M",
    ]);
    let e = Qcow2::open(Arc::new(FileDev::open(&luks))).unwrap_err();
    assert!(matches!(e, vdisk_block::Error::Unsupported { .. }));
    assert_eq!(e.to_string(), "encrypted images are not supported");

    // An unknown incompatible bit in a real image: qemu's table names only the bits it knows.
    let p = d.join("future.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "1M"]);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[79] |= 1 << 6;
    std::fs::write(&p, &bytes).unwrap();
    let e = Qcow2::open(Arc::new(FileDev::open(&p))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Unsupported qcow2 feature(s): Unknown incompatible feature: 40"
    );

    // A dirty image (lazy refcounts, writer killed) is readable and says so.
    let dirty = d.join("dirty.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        dirty.to_str().unwrap(),
        "1M",
    ]);
    let status = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 5 4k 64k",
            "-c",
            "abort",
            dirty.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!status.status.success());
    let q = open_chain(&dirty);
    assert!(q.info().dirty);
    assert_eq!(q.info().lazy_refcounts, Some(true));
    assert_same(&read_all(&q), &qemu_raw(&dirty, &[]), "dirty image");
}

#[test]
fn sparse_map_is_few_extents() {
    // 512-byte clusters: one L2 table covers 32 KiB; an empty 64 GiB image is still one extent.
    let dir = tmpdir();
    let p = dir.path().join("sparse.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        p.to_str().unwrap(),
        "64G",
    ]);
    qemu_io(&p, &["write -P 1 40G 4k".into()]);
    let q = open_chain(&p);
    let m = our_map(&q);
    assert_eq!(m.len(), 3, "{m:?}");
    assert_eq!(m, qemu_map(&p));
}
