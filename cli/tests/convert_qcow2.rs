//! `vdisk convert -O qcow2` (and qcow2 sources) against qemu-img: every create option, chains
//! flattened or kept with -B, compressed output (zlib, zstd), several sources, -n. Each
//! output must be `qemu-img compare`-identical to its source, `qemu-img check` clean (no
//! errors, no leaks), and identical to (and allocated like) what `qemu-img convert` makes
//! from the same input with the same flags.

mod common;

use common::*;
use std::path::Path;

/// A 24 MiB raw source: random data, text, zero-filled data, holes, short extents, and data
/// right at the end.
fn raw_source(d: &Path) {
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "raw", "src.raw", "24M"],
    );
    let mut text = Vec::new();
    let mut i = 0u64;
    while text.len() < 3 << 20 {
        text.extend_from_slice(format!("line {i}: the quick brown fox\n").as_bytes());
        i += 1;
    }
    let mut rnd = Vec::with_capacity(3 << 20);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while rnd.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        rnd.extend_from_slice(&x.to_le_bytes());
    }
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("src.raw"))
        .unwrap();
    f.write_all_at(&rnd[..100_000], 0).unwrap();
    f.write_all_at(&[0u8; 256 << 10], 1 << 20).unwrap(); // allocated zeros
    f.write_all_at(&rnd[..4096], 2 << 20).unwrap();
    f.write_all_at(&rnd[8192..12288], (2 << 20) + 12288)
        .unwrap();
    f.write_all_at(b"x", (3 << 20) + 3 * 65536 + 7).unwrap();
    f.write_all_at(&text, 5 << 20).unwrap();
    f.write_all_at(&rnd, 9 << 20).unwrap();
    f.write_all_at(&text[..1 << 20], (12 << 20) + 512).unwrap();
    f.write_all_at(b"end", (24 << 20) - 3).unwrap();
}

/// A three-image chain: base.qcow2 <- mid.qcow2 <- top.qcow2, with data, zero writes and
/// discards at several layers, cluster sizes differing between layers.
fn chain(d: &Path) {
    raw_source(d);
    tool_ok(
        d,
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "src.raw",
            "base.qcow2",
        ],
    );
    tool_ok(
        d,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4k",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "mid.qcow2",
        ],
    );
    tool_ok(
        d,
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xaa 1M 300k",
            "-c",
            "write -z 5M 64k",
            "-c",
            "write -P 0x11 10M 1M",
            "mid.qcow2",
        ],
    );
    tool_ok(
        d,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
    );
    tool_ok(
        d,
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0xbb 1200k 100k",
            "-c",
            "write -z 10M 128k",
            "-c",
            "write -P 0 12M 64k",
            "-c",
            "discard 0 64k",
            "-c",
            "write -P 0xcc 23M 64k",
            "top.qcow2",
        ],
    );
}

/// `qemu-img check` must find nothing at all: no errors, no leaks.
fn assert_clean(d: &Path, img: &str, what: &str) {
    let out = tool(d, "qemu-img", &["check", "-U", img]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("No errors were found") && !text.contains("leak"),
        "{what}: qemu-img check {img}:\n{text}"
    );
}

fn assert_same_content(d: &Path, a: &str, b: &str, what: &str) {
    let out = tool(d, "qemu-img", &["compare", "-U", a, b]);
    assert!(
        out.status.code() == Some(0),
        "{what}: qemu-img compare {a} {b}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img map --output=json` without host offsets, merged as qemu merges entries.
fn allocation(d: &Path, img: &str) -> Vec<(u64, u64, bool, bool, bool, bool, u64)> {
    let map = json(&tool_ok(
        d,
        "qemu-img",
        &["map", "-U", "--output=json", img],
    ));
    let mut out: Vec<(u64, u64, bool, bool, bool, bool, u64)> = Vec::new();
    for e in map.as_array().unwrap() {
        let g = |k: &str| e[k].as_bool().unwrap();
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        let key = (g("present"), g("zero"), g("data"), g("compressed"));
        let depth = e["depth"].as_u64().unwrap();
        match out.last_mut() {
            Some(l) if (l.2, l.3, l.4, l.5) == key && l.6 == depth && l.0 + l.1 == start => {
                l.1 += len
            }
            _ => out.push((start, len, key.0, key.1, key.2, key.3, depth)),
        }
    }
    out
}

/// Converts `src` with `args` by both tools (`@` in `args` stands for a per-tool file name
/// suffix) and checks: ours reads as the source (`expect_src`: or as this image), is clean,
/// reads as qemu's and, when `same_map`, is allocated as qemu's.
fn both(d: &Path, args: &[&str], src: &[&str], expect_src: &str, same_map: bool) {
    let mk = |who: &str| -> Vec<String> {
        let mut v = vec!["convert".to_string()];
        v.extend(args.iter().map(|a| a.replace('@', who)));
        v.extend(src.iter().map(|s| s.to_string()));
        v.push(format!("{who}.out"));
        v
    };
    let (ours, theirs) = (mk("ours"), mk("theirs"));
    let what = format!("convert {args:?} {src:?}");
    let _ = std::fs::remove_file(d.join("ours.out"));
    let _ = std::fs::remove_file(d.join("theirs.out"));
    let out = vdisk_ok(d, &ours.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out, "", "{what}: convert prints nothing on stdout");
    tool_ok(
        d,
        "qemu-img",
        &theirs.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_same_content(d, expect_src, "ours.out", &what);
    assert_same_content(d, "theirs.out", "ours.out", &what);
    let is_qcow2 = args.windows(2).any(|w| w == ["-O", "qcow2"]);
    if is_qcow2 {
        assert_clean(d, "ours.out", &what);
    }
    if same_map {
        assert_eq!(
            allocation(d, "ours.out"),
            allocation(d, "theirs.out"),
            "{what}: allocation differs from qemu-img's"
        );
    }
}

#[test]
fn raw_to_qcow2_every_option() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    raw_source(d);
    let cases: &[(&[&str], bool)] = &[
        (&[], true),
        (&["-o", "compat=0.10"], true),
        (&["-o", "compat=1.1,lazy_refcounts=on"], true),
        (&["-o", "cluster_size=512"], false),
        (&["-o", "cluster_size=4k"], true),
        (&["-o", "cluster_size=2M"], true),
        (&["-o", "extended_l2=on"], true),
        (&["-o", "extended_l2=on,cluster_size=2M"], true),
        (&["-o", "refcount_bits=1"], true),
        (&["-o", "refcount_bits=64"], true),
        (&["-o", "preallocation=metadata"], true),
        (&["-o", "preallocation=falloc"], true),
        (&["-o", "preallocation=full"], true),
        (&["-S", "0"], true),
        (&["-S", "64k"], true),
        (&["-o", "data_file=@.data"], true),
        (&["-o", "data_file=@.data,data_file_raw=on"], true),
        (&["-m", "1"], true),
        (&["-m", "4", "-W"], true),
    ];
    for (opts, same_map) in cases {
        let mut args = vec!["-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(opts);
        both(d, &args, &["src.raw"], "src.raw", *same_map);
    }
}

#[test]
fn compressed_zlib_and_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    raw_source(d);
    for opts in [
        "compression_type=zlib",
        "compression_type=zstd",
        "compression_type=zlib,cluster_size=4k",
        "compression_type=zstd,cluster_size=2M",
        "compression_type=zlib,compat=0.10",
        "compression_type=zstd,extended_l2=on",
        "compression_type=zlib,refcount_bits=1",
    ] {
        both(
            d,
            &["-f", "raw", "-O", "qcow2", "-c", "-o", opts],
            &["src.raw"],
            "src.raw",
            true,
        );
        let info = json(&tool_ok(
            d,
            "qemu-img",
            &["info", "--output=json", "ours.out"],
        ));
        let ctype = opts
            .split(',')
            .find_map(|o| o.strip_prefix("compression_type="))
            .unwrap();
        assert_eq!(
            info["format-specific"]["data"]["compression-type"], ctype,
            "{opts}"
        );
        // Compressed data is packed as tightly as qemu packs it (running over cluster
        // boundaries); the compressors themselves differ by a few percent.
        let ours = std::fs::metadata(d.join("ours.out")).unwrap().len();
        let theirs = std::fs::metadata(d.join("theirs.out")).unwrap().len();
        assert!(
            ours <= theirs + theirs / 20 + (64 << 10),
            "{opts}: ours {ours} bytes, qemu's {theirs}"
        );
    }
}

/// Clusters that compress to a little over half their size: qemu packs such compressed
/// clusters back to back, each running over into the next host cluster, and so must we
/// (starting each one in a fresh host cluster made the image ~60% larger than qemu's).
#[test]
fn compressed_clusters_are_packed_across_cluster_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Pseudo-words from a small alphabet: deflate and zstd bring a 64 KiB cluster of this
    // to roughly 35-40 KiB.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut text = Vec::with_capacity(8 << 20);
    while text.len() < 8 << 20 {
        let n = 2 + next() % 8;
        for _ in 0..n {
            text.push(b"abcdefghijklmnopqrst"[(next() % 20) as usize]);
        }
        text.push(if next() % 12 == 0 { b'\n' } else { b' ' });
    }
    text.truncate(8 << 20);
    std::fs::write(d.join("text.raw"), &text).unwrap();
    for ctype in ["zlib", "zstd"] {
        let opts = format!("compression_type={ctype}");
        both(
            d,
            &["-f", "raw", "-O", "qcow2", "-c", "-o", &opts],
            &["text.raw"],
            "text.raw",
            true,
        );
        let ours = std::fs::metadata(d.join("ours.out")).unwrap().len();
        let theirs = std::fs::metadata(d.join("theirs.out")).unwrap().len();
        assert!(
            theirs < 11 << 19,
            "{ctype}: qemu-img's image is {theirs} bytes: the source should compress"
        );
        assert!(
            ours <= theirs + theirs / 20 + (64 << 10),
            "{ctype}: ours {ours} bytes, qemu's {theirs}"
        );
    }
}

#[test]
fn qcow2_sources_and_chains_to_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chain(d);
    // A qcow2 source with zero clusters and compressed clusters of its own.
    tool_ok(
        d,
        "qemu-img",
        &[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "src.raw",
            "comp.qcow2",
        ],
    );
    both(d, &["-O", "qcow2"], &["comp.qcow2"], "src.raw", true);
    both(
        d,
        &["-f", "qcow2", "-O", "qcow2", "-o", "cluster_size=512"],
        &["mid.qcow2"],
        "mid.qcow2",
        false,
    );
    // The chain is flattened.
    for opts in [
        &["-O", "qcow2"][..],
        &["-O", "qcow2", "-o", "compat=0.10"],
        &["-O", "qcow2", "-o", "cluster_size=2M,extended_l2=on"],
        &["-O", "qcow2", "-c", "-o", "compression_type=zstd"],
        &["-O", "raw"],
    ] {
        both(d, opts, &["top.qcow2"], "top.qcow2", true);
        let info = json(&tool_ok(
            d,
            "qemu-img",
            &["info", "--output=json", "ours.out"],
        ));
        assert!(
            info.get("backing-filename").is_none(),
            "{opts:?}: flattened"
        );
    }
    // An internal snapshot of the top image.
    tool_ok(d, "qemu-img", &["snapshot", "-c", "s1", "top.qcow2"]);
    tool_ok(
        d,
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0xdd 0 2M", "top.qcow2"],
    );
    both(
        d,
        &["-O", "qcow2", "-l", "s1"],
        &["top.qcow2"],
        "theirs.out",
        true,
    );
}

#[test]
fn backing_file_kept_with_b() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chain(d);
    for opts in [
        &["-O", "qcow2", "-B", "mid.qcow2", "-F", "qcow2"][..],
        &[
            "-O",
            "qcow2",
            "-B",
            "mid.qcow2",
            "-F",
            "qcow2",
            "-o",
            "compat=0.10",
        ],
        &[
            "-O",
            "qcow2",
            "-B",
            "mid.qcow2",
            "-F",
            "qcow2",
            "-o",
            "cluster_size=4k",
        ],
        &[
            "-O",
            "qcow2",
            "-B",
            "mid.qcow2",
            "-F",
            "qcow2",
            "-o",
            "cluster_size=2M",
        ],
        &[
            "-O",
            "qcow2",
            "-B",
            "mid.qcow2",
            "-F",
            "qcow2",
            "-o",
            "extended_l2=on",
        ],
        &["-O", "qcow2", "-B", "mid.qcow2", "-F", "qcow2", "-c"],
        &[
            "-O",
            "qcow2",
            "-B",
            "mid.qcow2",
            "-F",
            "qcow2",
            "-c",
            "-o",
            "cluster_size=2M",
        ],
    ] {
        // qemu turns a partly written 2 MiB cluster whose other bytes read as zeros into a
        // zero cluster; we write the zeros. Same content, different allocation there.
        let two_meg = opts.iter().any(|o| o.contains("cluster_size=2M"));
        both(d, opts, &["top.qcow2"], "top.qcow2", !two_meg);
        let info = json(&tool_ok(
            d,
            "qemu-img",
            &["info", "--output=json", "ours.out"],
        ));
        assert_eq!(info["backing-filename"], "mid.qcow2", "{opts:?}");
        assert_eq!(info["backing-filename-format"], "qcow2", "{opts:?}");
        // Only the top image's clusters were copied: about as much as qemu-img copies, far
        // less than the flattened chain.
        let len = |f: &str| std::fs::metadata(d.join(f)).unwrap().len();
        let (ours, theirs) = (len("ours.out"), len("theirs.out"));
        assert!(
            ours <= theirs + 4 * (2 << 20) && ours < 20 << 20,
            "{opts:?}: {ours} bytes, qemu's {theirs}"
        );
    }
    // -B with a base lower than the source's own backing: only the top layer is copied,
    // as qemu-img does (the content then differs from the source, equally for both).
    both(
        d,
        &["-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2"],
        &["top.qcow2"],
        "theirs.out",
        true,
    );
}

#[test]
fn several_sources_into_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chain(d);
    both(
        d,
        &["-O", "qcow2"],
        &["src.raw", "top.qcow2", "mid.qcow2"],
        "theirs.out",
        true,
    );
    both(
        d,
        &["-O", "qcow2", "-c", "-o", "compression_type=zstd"],
        &["top.qcow2", "src.raw"],
        "theirs.out",
        true,
    );
    // The concatenation really holds each source at its offset.
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "empty.qcow2", "48M"],
    );
    tool_ok(
        d,
        "qemu-img",
        &[
            "convert",
            "-n",
            "-O",
            "qcow2",
            "top.qcow2",
            "src.raw",
            "empty.qcow2",
        ],
    );
    assert_same_content(d, "empty.qcow2", "ours.out", "two sources");
}

#[test]
fn into_an_existing_image_with_n() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chain(d);
    for (create_opts, convert_opts) in [
        ("cluster_size=64k", &["-n", "-O", "qcow2"][..]),
        ("cluster_size=4k,compat=0.10", &["-n", "-O", "qcow2"]),
        ("extended_l2=on", &["-n", "-O", "qcow2"]),
        (
            "cluster_size=64k",
            &["-n", "-O", "qcow2", "--target-is-zero"],
        ),
        // Compressed writes need clusters not allocated yet (qemu-img fails otherwise).
        (
            "compression_type=zstd",
            &["-n", "-O", "qcow2", "-c", "--target-is-zero"],
        ),
    ] {
        for who in ["ours", "theirs"] {
            tool_ok(
                d,
                "qemu-img",
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-o",
                    create_opts,
                    &format!("{who}.out"),
                    "32M",
                ],
            );
            if !convert_opts.contains(&"--target-is-zero") {
                // Old content that the conversion must overwrite, zeros included.
                tool_ok(
                    d,
                    "qemu-io",
                    &[
                        "-f",
                        "qcow2",
                        "-c",
                        "write -P 0x77 0 24M",
                        &format!("{who}.out"),
                    ],
                );
            }
        }
        let mut ours = vec!["convert"];
        ours.extend_from_slice(convert_opts);
        ours.extend_from_slice(&["top.qcow2", "ours.out"]);
        let mut theirs = vec!["convert"];
        theirs.extend_from_slice(convert_opts);
        theirs.extend_from_slice(&["top.qcow2", "theirs.out"]);
        vdisk_ok(d, &ours);
        tool_ok(d, "qemu-img", &theirs);
        let what = format!("-n into {create_opts} {convert_opts:?}");
        assert_same_content(d, "theirs.out", "ours.out", &what);
        assert_clean(d, "ours.out", &what);
        // The first 24 MiB are the source's.
        let out = tool(d, "qemu-img", &["compare", "-U", "top.qcow2", "ours.out"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Images are identical") || text.contains("size mismatch"),
            "{what}: {text}"
        );
    }
}

#[test]
fn progress_goes_to_stderr_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    raw_source(d);
    let out = vdisk(
        d,
        &[
            "convert", "-p", "-f", "raw", "-O", "qcow2", "-c", "src.raw", "p.qcow2",
        ],
    );
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "-p wrote to stdout");
    assert_same_content(d, "src.raw", "p.qcow2", "-p");
    let out = vdisk(
        d,
        &[
            "convert", "-p", "-q", "-f", "raw", "-O", "qcow2", "src.raw", "q.qcow2",
        ],
    );
    assert!(out.status.success() && out.stdout.is_empty() && out.stderr.is_empty());
}

/// qemu-img's message for each refused command line, exit status 1, and no target left.
#[test]
fn refusals_match_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    raw_source(d);
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "raw", "small.raw", "1M"],
    );
    let cases: &[(&[&str], &str)] = &[
        (
            &["-c", "-O", "raw", "src.raw", "t.out"],
            "Compression not supported for this file format",
        ),
        (
            &["-O", "qcow2", "-B", "src.raw", "src.raw", "t.out"],
            "Use of backing file requires explicit backing format",
        ),
        (
            &[
                "-O", "raw", "-B", "src.raw", "-F", "raw", "src.raw", "t.out",
            ],
            "Backing file not supported for file format 'raw'",
        ),
        (
            &[
                "-n",
                "-o",
                "cluster_size=4k",
                "-O",
                "qcow2",
                "src.raw",
                "small.raw",
            ],
            "-o has no effect when skipping image creation",
        ),
        (
            &["-n", "-O", "raw", "src.raw", "small.raw"],
            "output file is smaller than input file",
        ),
        (
            &["-m", "17", "-O", "qcow2", "src.raw", "t.out"],
            "Invalid number of coroutines specified. Must be between 1 and 16.",
        ),
        (
            &["-S", "1000", "-O", "qcow2", "src.raw", "t.out"],
            "Invalid buffer size for sparse output specified.",
        ),
        (
            &[
                "-O",
                "qcow2",
                "-o",
                "preallocation=metadata",
                "-c",
                "src.raw",
                "t.out",
            ],
            "Compression and preallocation not supported at the same time",
        ),
        (
            &["-O", "qcow2", "-o", "cluster_size=3k", "src.raw", "t.out"],
            "Cluster size must be a power of two between 512 and 2048k",
        ),
        (
            &["-O", "vmdk2", "src.raw", "t.out"],
            "Unknown file format 'vmdk2'",
        ),
    ];
    for (args, msg) in cases {
        let mut v = vec!["convert", "-f", "raw"];
        v.extend_from_slice(args);
        let theirs = tool(d, "qemu-img", &v);
        let ours = vdisk(d, &v);
        let (te, oe) = (
            String::from_utf8_lossy(&theirs.stderr),
            String::from_utf8_lossy(&ours.stderr),
        );
        assert_eq!(theirs.status.code(), Some(1), "qemu {args:?}: {te}");
        assert!(te.contains(msg), "qemu {args:?}: {te}");
        assert_eq!(ours.status.code(), Some(1), "vdisk {args:?}: {oe}");
        assert!(oe.contains(msg), "vdisk {args:?}: {oe}");
        assert_eq!(oe.lines().count(), 1, "one line: {oe}");
        let _ = std::fs::remove_file(d.join("t.out"));
    }
}

/// A source that turns out corrupt halfway: the conversion fails with the source's name and
/// where, and leaves no target (qemu-img leaves a short one).
#[test]
fn failure_removes_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "bad.qcow2", "8M"],
    );
    tool_ok(
        d,
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 1 0 64k",
            "-c",
            "write -P 2 6M 64k",
            "bad.qcow2",
        ],
    );
    // L2 entry 96 (guest 6 MiB) gets an unaligned cluster offset.
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.join("bad.qcow2"))
        .unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 40).unwrap();
    let l1 = u64::from_be_bytes(b);
    f.read_exact_at(&mut b, l1).unwrap();
    let l2 = u64::from_be_bytes(b) & 0x00ff_ffff_ffff_fe00;
    f.write_all_at(&((1u64 << 63) | 0x12345).to_be_bytes(), l2 + 8 * 96)
        .unwrap();
    drop(f);
    for opts in [&["-O", "qcow2"][..], &["-O", "qcow2", "-c"], &["-O", "raw"]] {
        let mut v = vec!["convert", "-f", "qcow2"];
        v.extend_from_slice(opts);
        v.extend_from_slice(&["bad.qcow2", "t.out"]);
        let out = vdisk(d, &v);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{opts:?}: {err}");
        assert!(err.starts_with("vdisk: bad.qcow2: "), "{opts:?}: {err}");
        assert!(!d.join("t.out").exists(), "{opts:?}: target left behind");
    }
}
