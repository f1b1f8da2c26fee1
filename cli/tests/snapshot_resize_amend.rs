//! Snapshots, resize and amend through `vdisk`, interleaved with writes by qemu-io, against a
//! model of raw files: after every step `qemu-img check` finds nothing and `qemu-img compare`
//! finds the model's content. Snapshots made by qemu are applied and deleted by vdisk and
//! the other way round.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{tool, tool_ok, vdisk, vdisk_ok};

/// A small deterministic generator (xorshift), so a failing sequence can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn assert_clean(d: &Path, img: &str, model: &str, what: &str) {
    let c = tool(d, "qemu-img", &["check", "-f", "qcow2", img]);
    assert_eq!(
        c.status.code(),
        Some(0),
        "{what}: qemu-img check: {}{}",
        String::from_utf8_lossy(&c.stdout),
        String::from_utf8_lossy(&c.stderr)
    );
    let c = tool(
        d,
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", img, model],
    );
    assert_eq!(
        c.status.code(),
        Some(0),
        "{what}: {}",
        String::from_utf8_lossy(&c.stdout)
    );
}

fn size_of(d: &Path, f: &str) -> u64 {
    std::fs::metadata(d.join(f)).unwrap().len()
}

#[test]
fn random_snapshot_resize_sequences_stay_clean() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for seed in 1..=3u64 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        tool_ok(
            d,
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=4096",
                "t.qcow2",
                "4M",
            ],
        );
        tool_ok(
            d,
            "qemu-img",
            &["create", "-q", "-f", "raw", "model.raw", "4M"],
        );
        let mut snaps: BTreeMap<String, String> = BTreeMap::new();
        let mut next = 0;
        for step in 0..10 {
            let what = format!("seed {seed} step {step}");
            let size = size_of(d, "model.raw");
            match rng.below(6) {
                0 | 1 => {
                    let len = (rng.below(16) + 1) * 2048;
                    let off = rng.below(size.saturating_sub(len) / 512 + 1) * 512;
                    let pat = rng.below(250) + 1;
                    let cmd = format!("write -P {pat} {off} {len}");
                    tool_ok(d, "qemu-io", &["-f", "qcow2", "-c", &cmd, "t.qcow2"]);
                    tool_ok(d, "qemu-io", &["-f", "raw", "-c", &cmd, "model.raw"]);
                }
                2 => {
                    next += 1;
                    let name = format!("s{next}");
                    // Either tool creates; the other applies and deletes.
                    if rng.below(2) == 0 {
                        vdisk_ok(d, &["snapshot", "-f", "qcow2", "-c", &name, "t.qcow2"]);
                    } else {
                        tool_ok(d, "qemu-img", &["snapshot", "-c", &name, "t.qcow2"]);
                    }
                    let copy = format!("{name}.raw");
                    std::fs::copy(d.join("model.raw"), d.join(&copy)).unwrap();
                    snaps.insert(name, copy);
                }
                3 if !snaps.is_empty() => {
                    let k = rng.below(snaps.len() as u64) as usize;
                    let (name, copy) = snaps.iter().nth(k).unwrap();
                    vdisk_ok(d, &["snapshot", "-f", "qcow2", "-a", name, "t.qcow2"]);
                    std::fs::copy(d.join(copy), d.join("model.raw")).unwrap();
                }
                4 if !snaps.is_empty() => {
                    let k = rng.below(snaps.len() as u64) as usize;
                    let name = snaps.keys().nth(k).unwrap().clone();
                    vdisk_ok(d, &["snapshot", "-f", "qcow2", "-d", &name, "t.qcow2"]);
                    snaps.remove(&name);
                }
                _ => {
                    let new = (rng.below(12) + 1) * 512 * 1024;
                    vdisk_ok(
                        d,
                        &[
                            "resize",
                            "-q",
                            "-f",
                            "qcow2",
                            "--shrink",
                            "t.qcow2",
                            &new.to_string(),
                        ],
                    );
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(d.join("model.raw"))
                        .unwrap();
                    f.set_len(new).unwrap();
                }
            }
            assert_clean(d, "t.qcow2", "model.raw", &what);
        }
        // Whatever is left, qemu applies and deletes too.
        for (name, copy) in &snaps {
            tool_ok(d, "qemu-img", &["snapshot", "-a", name, "t.qcow2"]);
            assert_clean(
                d,
                "t.qcow2",
                copy,
                &format!("seed {seed}: qemu applies {name}"),
            );
            tool_ok(d, "qemu-img", &["snapshot", "-d", name, "t.qcow2"]);
        }
        let list = vdisk_ok(d, &["snapshot", "-f", "qcow2", "-l", "t.qcow2"]);
        assert_eq!(list, "", "seed {seed}: snapshots left");
    }
}

#[test]
fn snapshot_list_matches_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "l.qcow2", "1M"],
    );
    assert_eq!(
        vdisk_ok(d, &["snapshot", "-f", "qcow2", "-l", "l.qcow2"]),
        ""
    );
    tool_ok(d, "qemu-img", &["snapshot", "-c", "first", "l.qcow2"]);
    vdisk_ok(d, &["snapshot", "-f", "qcow2", "-c", "second", "l.qcow2"]);
    let ours = vdisk_ok(d, &["snapshot", "-f", "qcow2", "-l", "l.qcow2"]);
    let theirs = tool_ok(d, "qemu-img", &["snapshot", "-l", "l.qcow2"]);
    common::assert_same_lines(&ours, &theirs, "snapshot -l");
    let o = vdisk(d, &["snapshot", "-f", "qcow2", "-a", "nope", "l.qcow2"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "vdisk: Could not apply snapshot 'nope': Failed to load snapshot: No such file or directory\n"
    );
}

#[test]
fn resize_refuses_shrink_without_flag_and_amend_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "m.qcow2", "64M"],
    );
    tool_ok(
        d,
        "qemu-io",
        &[
            "-c",
            "write -P 1 0 1M",
            "-c",
            "write -z 2M 64k",
            "-c",
            "write -c 4M 64k",
            "m.qcow2",
        ],
    );
    tool_ok(d, "qemu-img", &["snapshot", "-c", "s", "m.qcow2"]);
    tool_ok(d, "qemu-img", &["convert", "-O", "raw", "m.qcow2", "m.raw"]);
    let o = vdisk(d, &["resize", "-f", "qcow2", "m.qcow2", "32M"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr)
        .starts_with("vdisk: Use the --shrink option to perform a shrink operation.\n"));
    assert_eq!(
        vdisk_ok(d, &["resize", "-f", "qcow2", "m.qcow2", "+1G"]),
        "Image resized.\n"
    );
    vdisk_ok(
        d,
        &["resize", "-q", "-f", "qcow2", "--shrink", "m.qcow2", "64M"],
    );
    assert_clean(d, "m.qcow2", "m.raw", "resize");
    for o in [
        "lazy_refcounts=on",
        "refcount_bits=8",
        "refcount_bits=64",
        "refcount_bits=16",
        "compat=0.10",
        "compat=1.1",
        "backing_file=m.raw,backing_fmt=raw",
        "backing_file=",
    ] {
        vdisk_ok(d, &["amend", "-f", "qcow2", "-o", o, "m.qcow2"]);
        assert_clean(d, "m.qcow2", "m.raw", o);
    }
    let info = tool_ok(d, "qemu-img", &["info", "m.qcow2"]);
    assert!(
        info.contains("compat: 1.1") && info.contains("refcount bits: 16"),
        "{info}"
    );
    let o = vdisk(
        d,
        &["amend", "-f", "qcow2", "-o", "refcount_bits=1", "m.qcow2"],
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "a shared cluster does not fit in 1 bit"
    );
    assert_clean(d, "m.qcow2", "m.raw", "refused amend");
}

#[test]
fn raw_resize() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(d, "qemu-img", &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    assert_eq!(
        vdisk_ok(d, &["resize", "-f", "raw", "r.raw", "+1M"]),
        "Image resized.\n"
    );
    assert_eq!(size_of(d, "r.raw"), 2 << 20);
    vdisk_ok(d, &["resize", "-f", "raw", "--shrink", "r.raw", "-512K"]);
    assert_eq!(size_of(d, "r.raw"), 1536 << 10);
}

/// Asserts that qemu-io reads `pattern` over `[offset, offset + len)` of `img`.
fn assert_pattern(d: &Path, img: &str, pattern: u8, offset: u64, len: u64, what: &str) {
    let out = tool_ok(
        d,
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("read -P {pattern} {offset} {len}"),
            img,
        ],
    );
    assert!(
        !out.contains("failed") && out.contains("read "),
        "{what}: pattern {pattern} at {offset}+{len}: {out}"
    );
}

/// Shrinking an overlay and growing it again must read zeros in the grown range, never the
/// old data of a kept cluster (iotest 292) nor the backing file through unallocated clusters
/// or subclusters (iotest 271), as qemu's truncate zeroes it when the backing file reaches
/// past the old end.
#[test]
fn resize_grow_over_backing_reads_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for el2 in ["off", "on"] {
        // The top image either holds its own data (292) or none (271: the backing shows).
        for own_data in [true, false] {
            // 532480 (520k) is inside a cluster, 532992 also inside a 2k subcluster.
            for (shrunk, grown) in [(532_480u64, 580_608u64), (532_992, 1 << 20)] {
                let what = format!("extended_l2={el2} own_data={own_data} {shrunk}->{grown}");
                let opt = format!("extended_l2={el2}");
                for f in ["base.qcow2", "top.qcow2"] {
                    let _ = std::fs::remove_file(d.join(f));
                }
                tool_ok(
                    d,
                    "qemu-img",
                    &["create", "-f", "qcow2", "-o", &opt, "base.qcow2", "1M"],
                );
                tool_ok(d, "qemu-io", &["-c", "write -P 1 0 1M", "base.qcow2"]);
                let args = ["create", "-f", "qcow2", "-o", &opt, "-b", "base.qcow2"];
                let mut args = args.to_vec();
                args.extend(["-F", "qcow2", "top.qcow2", "1M"]);
                tool_ok(d, "qemu-img", &args);
                let kept = if own_data {
                    tool_ok(d, "qemu-io", &["-c", "write -P 2 0 1M", "top.qcow2"]);
                    2
                } else {
                    1
                };
                let shrunk_s = shrunk.to_string();
                let grown_s = grown.to_string();
                vdisk_ok(
                    d,
                    &["resize", "-f", "qcow2", "--shrink", "top.qcow2", &shrunk_s],
                );
                vdisk_ok(d, &["resize", "-f", "qcow2", "top.qcow2", &grown_s]);
                assert_pattern(d, "top.qcow2", kept, 0, shrunk, &what);
                assert_pattern(d, "top.qcow2", 0, shrunk, grown - shrunk, &what);
                let c = tool(d, "qemu-img", &["check", "-f", "qcow2", "top.qcow2"]);
                assert_eq!(c.status.code(), Some(0), "{what}: qemu-img check");
            }
        }
    }
}

/// `create -o extended_l2=on,preallocation=...` with a backing file allocates the clusters but
/// leaves their subclusters unallocated, as qemu does (iotest 271), so the guest reads the
/// backing file through them: the map is qemu's and qemu-io reads the backing's pattern.
#[test]
fn preallocated_extended_l2_overlay_shows_its_backing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "raw", "base.raw", "1M"],
    );
    tool_ok(
        d,
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0xff 0 1M", "base.raw"],
    );
    for mode in ["metadata", "falloc", "full"] {
        let opts = format!("extended_l2=on,preallocation={mode}");
        let mut maps = Vec::new();
        for (who, img) in [("vdisk", "ours.qcow2"), ("qemu-img", "theirs.qcow2")] {
            let args = [
                "create", "-q", "-f", "qcow2", "-o", &opts, "-b", "base.raw", "-F", "raw", img,
                "512k",
            ];
            if who == "vdisk" {
                vdisk_ok(d, &args);
            } else {
                tool_ok(d, "qemu-img", &args);
            }
            let read = tool_ok(d, "qemu-io", &["-c", "read -P 0xff 0 512k", img]);
            assert!(!read.contains("failed"), "{mode} {who}: {read}");
            let map = tool_ok(d, "qemu-img", &["map", "--output=json", img]);
            maps.push(map.replace(img, "IMG"));
        }
        assert_eq!(maps[0], maps[1], "{mode}: map");
    }
}

/// As `qemu-img`, amend's refusal of a create-only option is qemu's two lines: the error with
/// the prefix and the hint under it without.
#[test]
fn amend_create_only_option_hint_as_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vdisk"), d.join("qemu-img")).unwrap();
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "a.qcow2", "1M"],
    );
    let args = ["amend", "-f", "qcow2", "-o", "extended_l2=on", "a.qcow2"];
    let ours = std::process::Command::new(d.join("qemu-img"))
        .args(args)
        .current_dir(d)
        .output()
        .unwrap();
    let theirs = tool(d, "qemu-img", &args);
    assert_eq!(
        String::from_utf8_lossy(&ours.stderr),
        String::from_utf8_lossy(&theirs.stderr)
    );
    assert_eq!(ours.status.code(), theirs.status.code());
}
