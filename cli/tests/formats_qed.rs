//! QED against qemu-img, both ways, on images made at run time: what qemu-img and qemu-io
//! write reads back byte-identical through vdisk with the same `info`/`map` JSON; what vdisk
//! writes reads back identical through qemu-img (`compare`) and passes `qemu-img check`;
//! backing chains over raw and qed; hostile headers fail with one line, fast.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Geometries: the default, small clusters with two-cluster tables (several L2 tables in a
/// 10 MiB disk), big clusters with the largest tables.
const VARIANTS: &[&str] = &[
    "cluster_size=65536",
    "cluster_size=4096,table_size=2",
    "cluster_size=1M,table_size=16",
];

fn source(dir: &Path) {
    tool_ok(dir, "qemu-img", &["create", "-f", "raw", "src.raw", "10M"]);
    tool_ok(
        dir,
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 3M",
            "-c",
            "write -P 0x17 5M 1M",
            "-c",
            "write -P 0x33 6M 100k",
            "-c",
            "write -P 0x44 9900k 300k",
            "src.raw",
        ],
    );
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn same_json(d: &Path, img: &str, what: &str) {
    same_json_of(d, img, what, &["info", "map"]);
}

fn same_json_of(d: &Path, img: &str, what: &str, cmds: &[&str]) {
    for &cmd in cmds {
        let ours = vdisk_ok(d, &[cmd, "-f", "qed", "--output=json", img]);
        let theirs = tool_ok(d, "qemu-img", &[cmd, "-f", "qed", "--output=json", img]);
        assert_eq!(json(&ours), json(&theirs), "{what}: {cmd} differs");
    }
}

#[test]
fn qemu_written_qed_reads_identically() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    for opts in VARIANTS {
        tool_ok(
            d,
            "qemu-img",
            &[
                "convert", "-f", "raw", "-O", "qed", "-o", opts, "src.raw", "q.qed",
            ],
        );
        // qemu-io on top: partial clusters, zero clusters (write -z), a rewrite.
        tool_ok(
            d,
            "qemu-io",
            &[
                "-f",
                "qed",
                "-c",
                "write -P 0x61 4M 7k",
                "-c",
                "write -z 5M 1M",
                "-c",
                "write -P 0x62 8M 1M",
                "-c",
                "write -P 0x63 1M 512",
                "q.qed",
            ],
        );
        tool_ok(
            d,
            "qemu-img",
            &["convert", "-f", "qed", "-O", "raw", "q.qed", "theirs.raw"],
        );
        vdisk_ok(
            d,
            &["convert", "-f", "qed", "-O", "raw", "q.qed", "ours.raw"],
        );
        assert!(
            read(&d.join("ours.raw")) == read(&d.join("theirs.raw")),
            "{opts}: bytes differ"
        );
        same_json(d, "q.qed", opts);
        // A writer that did not close it cleanly: qemu's info still says not dirty (QED
        // reports no dirty flag), and we agree.
        let mut b = read(&d.join("q.qed"));
        b[16] |= 2;
        std::fs::write(d.join("dirty.qed"), &b).unwrap();
        // Written back before the two infos, so its allocated size (actual-size) is settled.
        std::fs::File::open(d.join("dirty.qed"))
            .unwrap()
            .sync_all()
            .unwrap();
        same_json(d, "dirty.qed", opts);
        let info = json(&vdisk_ok(
            d,
            &["info", "-f", "qed", "--output=json", "dirty.qed"],
        ));
        assert_eq!(info["dirty-flag"], false);
        let ours = json(&vdisk_ok(d, &["info", "--output=json", "q.qed"]));
        assert_eq!(ours["format"], "qed", "probed");
        assert_eq!(ours["dirty-flag"], false);
        vdisk_ok(
            d,
            &["convert", "-f", "qed", "-O", "qcow2", "q.qed", "o.qcow2"],
        );
        let cmp = tool(
            d,
            "qemu-img",
            &["compare", "-f", "qed", "-F", "qcow2", "q.qed", "o.qcow2"],
        );
        assert!(cmp.status.success(), "{opts}: {cmp:?}");
    }
}

#[test]
fn vdisk_written_qed_passes_qemu() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    for opts in VARIANTS {
        vdisk_ok(
            d,
            &[
                "convert", "-f", "raw", "-O", "qed", "-o", opts, "src.raw", "v.qed",
            ],
        );
        let cmp = tool(
            d,
            "qemu-img",
            &["compare", "-f", "raw", "-F", "qed", "src.raw", "v.qed"],
        );
        assert!(cmp.status.success(), "{opts}: {cmp:?}");
        tool_ok(d, "qemu-img", &["check", "-f", "qed", "v.qed"]);
        same_json(d, "v.qed", opts);
        // The same holes as qemu's conversion: only the written clusters are data.
        tool_ok(
            d,
            "qemu-img",
            &[
                "convert", "-f", "raw", "-O", "qed", "-o", opts, "src.raw", "q.qed",
            ],
        );
        // Where each run is allocated (host offsets aside: qemu places L2 tables
        // differently, which splits its map's runs elsewhere).
        let strip = |v: serde_json::Value| -> Vec<(bool, bool, u64, u64)> {
            let mut runs: Vec<(bool, bool, u64, u64)> = Vec::new();
            for e in v.as_array().unwrap() {
                let r = (
                    e["data"].as_bool().unwrap(),
                    e["zero"].as_bool().unwrap(),
                    e["start"].as_u64().unwrap(),
                    e["length"].as_u64().unwrap(),
                );
                match runs.last_mut() {
                    Some(l) if (l.0, l.1) == (r.0, r.1) => l.3 += r.3,
                    _ => runs.push(r),
                }
            }
            runs
        };
        let a = strip(json(&tool_ok(
            d,
            "qemu-img",
            &["map", "-f", "qed", "--output=json", "v.qed"],
        )));
        let b = strip(json(&tool_ok(
            d,
            "qemu-img",
            &["map", "-f", "qed", "--output=json", "q.qed"],
        )));
        assert_eq!(a, b, "{opts}: allocation differs from qemu's");
        // qemu-io writes into our image, then we write over its clusters and new ones.
        tool_ok(
            d,
            "qemu-io",
            &["-f", "qed", "-c", "write -P 7 3M 4k", "v.qed"],
        );
        vdisk_ok(
            d,
            &[
                "convert", "-n", "-f", "raw", "-O", "qed", "src.raw", "v.qed",
            ],
        );
        tool_ok(d, "qemu-img", &["check", "-f", "qed", "v.qed"]);
        let cmp = tool(
            d,
            "qemu-img",
            &["compare", "-f", "raw", "-F", "qed", "src.raw", "v.qed"],
        );
        assert!(cmp.status.success(), "{opts}: {cmp:?}");
        let info = json(&tool_ok(
            d,
            "qemu-img",
            &["info", "-f", "qed", "--output=json", "v.qed"],
        ));
        assert_eq!(info["dirty-flag"], false, "{opts}: left dirty");
    }
}

#[test]
fn create_matches_qemu() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    tool_ok(d, "qemu-img", &["create", "-f", "raw", "base.raw", "10M"]);
    for (opts, size) in [
        ("", "64M"),
        ("cluster_size=4k,table_size=2", "7M"),
        ("cluster_size=1M", "1G"),
        ("table_size=16", "0"),
    ] {
        for backing in [false, true] {
            let mut args = vec!["create", "-f", "qed"];
            if !opts.is_empty() {
                args.extend(["-o", opts]);
            }
            if backing {
                args.extend(["-b", "base.raw", "-F", "raw"]);
            }
            let ours: Vec<&str> = args.iter().copied().chain(["o.qed", size]).collect();
            let theirs: Vec<&str> = args.iter().copied().chain(["t.qed", size]).collect();
            let a = vdisk_ok(d, &ours).replace("o.qed", "X");
            let b = tool_ok(d, "qemu-img", &theirs).replace("t.qed", "X");
            assert_eq!(a, b, "Formatting line for {opts:?}");
            // Byte for byte what qemu-img creates.
            assert!(
                read(&d.join("o.qed")) == read(&d.join("t.qed")),
                "{opts} {backing}: files differ"
            );
            // An empty disk's map is one empty extent in qemu's and none in ours, for
            // every format (the shared map command, not QED).
            let cmds: &[&str] = if size == "0" {
                &["info"]
            } else {
                &["info", "map"]
            };
            same_json_of(d, "o.qed", opts, cmds);
            tool_ok(d, "qemu-img", &["check", "-f", "qed", "o.qed"]);
        }
    }
    let help = vdisk_ok(d, &["create", "-f", "qed", "-o", "help"]);
    let theirs = tool_ok(d, "qemu-img", &["create", "-f", "qed", "-o", "help"]);
    for line in help.lines() {
        assert!(theirs.contains(line), "{line}\n---\n{theirs}");
    }
    for (o, size, e) in [
        (
            "cluster_size=3000",
            "1M",
            "QED cluster size must be within range [4096, 67108864] and power of 2",
        ),
        (
            "table_size=3",
            "1M",
            "QED table size must be within range [1, 16] and power of 2",
        ),
        (
            "cluster_size=4k,table_size=1",
            "1P",
            "QED image size must be a non-zero multiple of cluster size and less than",
        ),
        ("nosuch=1", "1M", "Invalid parameter 'nosuch'"),
    ] {
        let args = ["create", "-f", "qed", "-o", o, "bad.qed", size];
        let out = vdisk(d, &args);
        assert!(!out.status.success(), "{o}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(e), "{o}: {err}");
        assert!(!tool(d, "qemu-img", &args).status.success(), "qemu: {o}");
    }
}

#[test]
fn backing_chains_over_raw_and_qed() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    // qemu's overlay over raw, written in parts of clusters: we read what qemu reads.
    tool_ok(
        d,
        "qemu-img",
        &[
            "create", "-f", "qed", "-b", "src.raw", "-F", "raw", "ov.qed",
        ],
    );
    tool_ok(
        d,
        "qemu-io",
        &[
            "-f",
            "qed",
            "-c",
            "write -P 0x66 1M 4k",
            "-c",
            "write -P 0x77 7M 512",
            "-c",
            "write -z 0 64k",
            "ov.qed",
        ],
    );
    tool_ok(
        d,
        "qemu-img",
        &["convert", "-f", "qed", "-O", "raw", "ov.qed", "theirs.raw"],
    );
    vdisk_ok(
        d,
        &["convert", "-f", "qed", "-O", "raw", "ov.qed", "ours.raw"],
    );
    assert!(read(&d.join("ours.raw")) == read(&d.join("theirs.raw")));
    same_json(d, "ov.qed", "qemu overlay");
    // A qed base under a qed overlay (no backing format recorded: probed).
    tool_ok(
        d,
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qed", "src.raw", "base.qed"],
    );
    tool_ok(
        d,
        "qemu-img",
        &[
            "create", "-f", "qed", "-b", "base.qed", "-F", "qed", "ov2.qed",
        ],
    );
    tool_ok(
        d,
        "qemu-io",
        &["-f", "qed", "-c", "write -P 0x21 2M 3k", "ov2.qed"],
    );
    same_json(d, "ov2.qed", "qed over qed");
    let cmp = vdisk(
        d,
        &["compare", "-f", "qed", "-F", "qed", "ov2.qed", "ov2.qed"],
    );
    assert!(cmp.status.success(), "{cmp:?}");

    // Our overlay: writes inside clusters take the rest of the cluster from the base.
    tool_ok(
        d,
        "qemu-img",
        &[
            "create", "-f", "qcow2", "-b", "src.raw", "-F", "raw", "ov.qcow2",
        ],
    );
    tool_ok(
        d,
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x66 1M 4k",
            "-c",
            "write -P 0x77 7M 512",
            "-c",
            "write -P 0x88 9M 1M",
            "ov.qcow2",
        ],
    );
    vdisk_ok(
        d,
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "qed",
            "-B",
            "src.raw",
            "-F",
            "raw",
            "ov.qcow2",
            "child.qed",
        ],
    );
    let info = json(&tool_ok(
        d,
        "qemu-img",
        &["info", "-f", "qed", "--output=json", "child.qed"],
    ));
    assert_eq!(info["backing-filename"], "src.raw");
    assert_eq!(info["backing-filename-format"], "raw");
    tool_ok(d, "qemu-img", &["check", "-f", "qed", "child.qed"]);
    let cmp = tool(
        d,
        "qemu-img",
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "qed",
            "ov.qcow2",
            "child.qed",
        ],
    );
    assert!(cmp.status.success(), "{cmp:?}");
    // Only the touched clusters are in the overlay.
    let map = json(&tool_ok(
        d,
        "qemu-img",
        &["map", "-f", "qed", "--output=json", "child.qed"],
    ));
    let depth0: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["depth"] == 0)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(depth0, 64 * 1024 * 2 + (1 << 20), "{map}");
}

fn refused(dir: &Path, img: &str, expect: &str) {
    let start = Instant::now();
    let out = vdisk(dir, &["convert", "-f", "qed", "-O", "raw", img, "out.raw"]);
    assert!(start.elapsed() < Duration::from_secs(1), "{img}: slow");
    assert!(!out.status.success(), "{img}: accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{img}: {err}");
    assert!(err.contains(img) && err.contains(expect), "{img}: {err}");
}

#[test]
fn hostile_qed_images_are_refused_with_one_line() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    tool_ok(d, "qemu-img", &["create", "-f", "qed", "good.qed", "64M"]);
    tool_ok(
        d,
        "qemu-io",
        &["-f", "qed", "-c", "write -P 1 0 4M", "good.qed"],
    );
    let good = read(&d.join("good.qed"));
    let patch = |name: &str, edits: &[(usize, &[u8])]| {
        let mut b = good.clone();
        for (at, bytes) in edits {
            b[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        std::fs::write(d.join(name), b).unwrap();
    };
    let cases: &[(&str, usize, Vec<u8>, &str)] = &[
        ("magic.qed", 0, b"QEX\0".to_vec(), "Image not in QED format"),
        (
            "feat.qed",
            16,
            0x10u64.to_le_bytes().to_vec(),
            "Unsupported QED features: 10",
        ),
        (
            "cs.qed",
            4,
            65537u32.to_le_bytes().to_vec(),
            "QED cluster size is invalid",
        ),
        (
            "cs0.qed",
            4,
            0u32.to_le_bytes().to_vec(),
            "QED cluster size is invalid",
        ),
        (
            "ts0.qed",
            8,
            0u32.to_le_bytes().to_vec(),
            "QED table size is invalid",
        ),
        (
            "tshuge.qed",
            8,
            (1u32 << 31).to_le_bytes().to_vec(),
            "QED table size is invalid",
        ),
        (
            "size.qed",
            48,
            (!511u64).to_le_bytes().to_vec(),
            "QED image size is invalid",
        ),
        (
            "l1.qed",
            40,
            (1u64 << 40).to_le_bytes().to_vec(),
            "QED table offset is invalid",
        ),
        (
            "l1odd.qed",
            40,
            65537u64.to_le_bytes().to_vec(),
            "QED table offset is invalid",
        ),
        (
            "hs.qed",
            12,
            u32::MAX.to_le_bytes().to_vec(),
            "QED table offset is invalid",
        ),
        (
            "l2.qed",
            65536,
            (1u64 << 50).to_le_bytes().to_vec(),
            "points to an invalid L2 table offset",
        ),
    ];
    for (name, at, bytes, expect) in cases {
        patch(name, &[(*at, bytes)]);
        refused(d, name, expect);
        let out = tool(
            d,
            "qemu-img",
            &["convert", "-f", "qed", "-O", "raw", name, "q.raw"],
        );
        assert!(!out.status.success(), "qemu accepted {name}");
    }
    // The backing file name outside the header cluster.
    patch(
        "bname.qed",
        &[
            (16, &1u64.to_le_bytes()),
            (56, &64u32.to_le_bytes()),
            (60, &65536u32.to_le_bytes()),
        ],
    );
    refused(d, "bname.qed", "QED backing filename offset is invalid");
    // An L2 entry past the end of the file (the first L2 table follows the data).
    let l2 = u64::from_le_bytes(good[65536..65544].try_into().unwrap()) as usize;
    patch("data.qed", &[(l2, &(1u64 << 45).to_le_bytes())]);
    refused(d, "data.qed", "points to an invalid cluster offset");
    // Absurd image size with the biggest geometry: refused by the L1 bound, not allocated.
    patch(
        "big.qed",
        &[
            (4, &(64u32 << 20).to_le_bytes()),
            (8, &16u32.to_le_bytes()),
            (48, &(1u64 << 62).to_le_bytes()),
        ],
    );
    let out = vdisk(d, &["info", "-f", "qed", "big.qed"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.lines().count() == 1, "{err}");
    std::fs::write(d.join("tiny.qed"), b"QED\0").unwrap();
    refused(d, "tiny.qed", "Image not in QED format");
}
