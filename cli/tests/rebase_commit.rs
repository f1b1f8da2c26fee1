//! `vdisk rebase` and `vdisk commit` against qemu-img's own: the same inputs, made at run time
//! by qemu-img and qemu-io in two directories; each tool works on its copy; afterwards every
//! image reads (`qemu-img compare`) as qemu-img's result reads, the guest content is what it
//! was, `qemu-img check` finds nothing, and files that must not change did not change.

mod common;

use std::path::{Path, PathBuf};

use common::{tool, tool_ok, vdisk, vdisk_ok};

/// A small deterministic generator (xorshift), so a failing case can be replayed.
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

/// One step that builds the inputs: a qemu-img command, or qemu-io commands on an image.
enum Step {
    Img(Vec<String>),
    Io(String, String, Vec<String>),
}

fn img(args: &[&str]) -> Step {
    Step::Img(args.iter().map(|s| s.to_string()).collect())
}

/// `n` random writes (patterns, zero writes, unaligned ranges) inside `size` bytes.
fn random_writes(file: &str, fmt: &str, size: u64, n: usize, rng: &mut Rng) -> Step {
    let mut cmds = Vec::new();
    for _ in 0..n {
        let off = rng.below(size / 512) * 512;
        let len = (1 + rng.below(256 * 1024 / 512)) * 512;
        let len = len.min(size - off);
        if rng.below(5) == 0 {
            cmds.push(format!("write -z {off} {len}"));
        } else {
            cmds.push(format!("write -P {} {off} {len}", 1 + rng.below(250)));
        }
    }
    Step::Io(file.to_string(), fmt.to_string(), cmds)
}

fn build(dir: &Path, steps: &[Step]) {
    for s in steps {
        match s {
            Step::Img(a) => {
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                tool_ok(dir, "qemu-img", &a);
            }
            Step::Io(file, fmt, cmds) => {
                let mut a = vec!["-f", fmt.as_str()];
                for c in cmds {
                    a.push("-c");
                    a.push(c);
                }
                a.push(file);
                tool_ok(dir, "qemu-io", &a);
            }
        }
    }
}

/// Two directories holding the same inputs: one for vdisk, one for qemu-img.
fn twin_dirs(root: &Path, steps: &[Step]) -> (PathBuf, PathBuf) {
    let ours = root.join("ours");
    let theirs = root.join("theirs");
    for d in [&ours, &theirs] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).unwrap();
        build(d, steps);
    }
    (ours, theirs)
}

fn assert_clean(dir: &Path, file: &str, what: &str) {
    let c = tool(dir, "qemu-img", &["check", "-f", "qcow2", file]);
    let out = String::from_utf8_lossy(&c.stdout);
    assert!(
        c.status.success() && out.contains("No errors were found"),
        "{what}: qemu-img check {file}: {out}{}",
        String::from_utf8_lossy(&c.stderr)
    );
}

/// The guest content of `file` (with its chain) as a raw file at `dst`.
fn flatten(dir: &Path, file: &str, fmt: &str, dst: &Path) {
    tool_ok(
        dir,
        "qemu-img",
        &[
            "convert",
            "-f",
            fmt,
            "-O",
            "raw",
            file,
            dst.to_str().unwrap(),
        ],
    );
}

fn assert_same_content(a: &Path, b: &Path, what: &str) {
    let out = tool(
        Path::new("/"),
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn backing_of(dir: &Path, file: &str) -> (Option<String>, Option<String>) {
    let v = common::json(&tool_ok(
        dir,
        "qemu-img",
        &["info", "-U", "--output=json", "-f", "qcow2", file],
    ));
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    (s("backing-filename"), s("backing-filename-format"))
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Inputs for a rebase: `base` (raw or qcow2) under `ov.qcow2` (with `ov_opts`), and a new
/// backing `nb` sharing part of the base's content.
fn rebase_inputs(
    seed: u64,
    ov_opts: &str,
    old_fmt: &str,
    new_fmt: &str,
    new_size: &str,
) -> Vec<Step> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ seed);
    let size = 6 << 20;
    let old = format!("old.{old_fmt}");
    let nb = format!("nb.{new_fmt}");
    let mut steps = vec![
        img(&["create", "-q", "-f", old_fmt, &old, "6M"]),
        random_writes(&old, old_fmt, size, 12, &mut rng),
    ];
    // The new backing starts as a copy of the old one (so some ranges agree), then diverges.
    steps.push(img(&["convert", "-f", old_fmt, "-O", new_fmt, &old, &nb]));
    steps.push(img(&["resize", "--shrink", "-f", new_fmt, &nb, new_size]));
    let nb_size = if new_size == "6M" { size } else { 4 << 20 };
    steps.push(random_writes(&nb, new_fmt, nb_size, 8, &mut rng));
    steps.push(img(&[
        "create", "-q", "-f", "qcow2", "-o", ov_opts, "-b", &old, "-F", old_fmt, "ov.qcow2",
    ]));
    steps.push(random_writes("ov.qcow2", "qcow2", size, 6, &mut rng));
    steps
}

#[test]
fn safe_rebase_reads_as_qemu_rebase_and_keeps_guest_content() {
    let root = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str, &str)] = &[
        ("cluster_size=65536", "raw", "qcow2", "6M"),
        ("cluster_size=4096", "qcow2", "qcow2", "6M"),
        ("cluster_size=4096", "raw", "raw", "4M"),
        ("cluster_size=32768,extended_l2=on", "qcow2", "raw", "6M"),
        ("cluster_size=2M", "raw", "qcow2", "4M"),
        ("compat=0.10,cluster_size=16384", "qcow2", "qcow2", "6M"),
    ];
    for (seed, &(ov_opts, old_fmt, new_fmt, new_size)) in cases.iter().enumerate() {
        let what = format!("{ov_opts} over {old_fmt}, onto {new_fmt} of {new_size}");
        let steps = rebase_inputs(seed as u64, ov_opts, old_fmt, new_fmt, new_size);
        let (ours, theirs) = twin_dirs(root.path(), &steps);
        let before = root.path().join("before.raw");
        flatten(&ours, "ov.qcow2", "qcow2", &before);
        let old = format!("old.{old_fmt}");
        let nb = format!("nb.{new_fmt}");
        let (old_bytes, nb_bytes) = (bytes(&ours.join(&old)), bytes(&ours.join(&nb)));
        for target in [nb.as_str(), ""] {
            let what = format!("{what}, -b '{target}'");
            let (ours, theirs) = if target.is_empty() {
                twin_dirs(root.path(), &steps)
            } else {
                (ours.clone(), theirs.clone())
            };
            let mut args = vec!["rebase", "-f", "qcow2", "-b", target];
            if !target.is_empty() {
                args.extend(["-F", new_fmt]);
            }
            args.push("ov.qcow2");
            let out = vdisk_ok(&ours, &args);
            assert_eq!(out, "", "{what}: rebase prints nothing");
            tool_ok(&theirs, "qemu-img", &args);

            assert_clean(&ours, "ov.qcow2", &what);
            assert_eq!(
                backing_of(&ours, "ov.qcow2"),
                backing_of(&theirs, "ov.qcow2"),
                "{what}: backing name and format"
            );
            let after = root.path().join("after.raw");
            let qemu_after = root.path().join("qemu_after.raw");
            flatten(&ours, "ov.qcow2", "qcow2", &after);
            flatten(&theirs, "ov.qcow2", "qcow2", &qemu_after);
            assert_same_content(&after, &before, &format!("{what}: guest content kept"));
            assert_same_content(&after, &qemu_after, &format!("{what}: as qemu's result"));
            // A rebase writes the overlay only.
            assert!(
                bytes(&ours.join(&old)) == old_bytes,
                "{what}: old backing written"
            );
            assert!(
                bytes(&ours.join(&nb)) == nb_bytes,
                "{what}: new backing written"
            );
        }
    }
}

#[test]
fn unsafe_rebase_changes_only_the_name() {
    let root = tempfile::tempdir().unwrap();
    let steps = rebase_inputs(7, "cluster_size=65536", "raw", "qcow2", "6M");
    let (ours, theirs) = twin_dirs(root.path(), &steps);
    // The old backing file may be gone: -u never reads it.
    for d in [&ours, &theirs] {
        std::fs::remove_file(d.join("old.raw")).unwrap();
    }
    let args = [
        "rebase", "-u", "-f", "qcow2", "-b", "nb.qcow2", "-F", "qcow2", "ov.qcow2",
    ];
    // Everything after the header cluster stays as it was.
    let tail = |d: &Path| bytes(&d.join("ov.qcow2"))[65536..].to_vec();
    let before = tail(&ours);
    vdisk_ok(&ours, &args);
    tool_ok(&theirs, "qemu-img", &args);
    assert_clean(&ours, "ov.qcow2", "-u");
    assert_eq!(
        backing_of(&ours, "ov.qcow2"),
        (Some("nb.qcow2".into()), Some("qcow2".into()))
    );
    assert_eq!(
        backing_of(&ours, "ov.qcow2"),
        backing_of(&theirs, "ov.qcow2")
    );
    assert!(tail(&ours) == before, "-u changed more than the header");
    let (a, b) = (root.path().join("a.raw"), root.path().join("b.raw"));
    flatten(&ours, "ov.qcow2", "qcow2", &a);
    flatten(&theirs, "ov.qcow2", "qcow2", &b);
    assert_same_content(&a, &b, "-u: reads as qemu's result");

    // -u without -b removes the backing file.
    vdisk_ok(&ours, &["rebase", "-u", "-f", "qcow2", "ov.qcow2"]);
    assert_eq!(backing_of(&ours, "ov.qcow2"), (None, None));
    assert_clean(&ours, "ov.qcow2", "-u without -b");
}

/// One line on stderr naming `name`, exit status 1, and `file` left as it was.
fn assert_fails(dir: &Path, args: &[&str], name: &str, text: &str, file: &str) {
    let before = bytes(&dir.join(file));
    let out = vdisk(dir, args);
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("vdisk: warning:"))
        .collect();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(lines.len(), 1, "{args:?}: one line: {err}");
    assert!(
        lines[0].starts_with("vdisk: ") && lines[0].contains(name) && lines[0].contains(text),
        "{args:?}: {err}"
    );
    assert!(bytes(&dir.join(file)) == before, "{args:?}: {file} changed");
}

#[test]
fn rebase_errors_are_one_line_and_write_nothing() {
    let root = tempfile::tempdir().unwrap();
    let steps = rebase_inputs(3, "cluster_size=65536", "raw", "qcow2", "6M");
    let (d, _) = twin_dirs(root.path(), &steps);
    // qemu 10 insists on the new backing's format.
    assert_fails(
        &d,
        &["rebase", "-f", "qcow2", "-b", "nb.qcow2", "ov.qcow2"],
        "ov.qcow2",
        "Could not change the backing file to 'nb.qcow2': backing format must be specified",
        "ov.qcow2",
    );
    assert_fails(
        &d,
        &["rebase", "-u", "-f", "qcow2", "-b", "nb.qcow2", "ov.qcow2"],
        "ov.qcow2",
        "backing format must be specified",
        "ov.qcow2",
    );
    assert_fails(
        &d,
        &[
            "rebase", "-f", "raw", "-b", "nb.qcow2", "-F", "qcow2", "old.raw",
        ],
        "old.raw",
        "Could not change the backing file to 'nb.qcow2': Operation not supported",
        "old.raw",
    );
    assert_fails(
        &d,
        &["rebase", "-f", "qcow2", "ov.qcow2"],
        "",
        "Must specify backing file (-b) or use unsafe mode (-u)",
        "ov.qcow2",
    );
    assert_fails(
        &d,
        &[
            "rebase", "-f", "qcow2", "-b", "gone.raw", "-F", "raw", "ov.qcow2",
        ],
        "gone.raw",
        "No such file or directory",
        "ov.qcow2",
    );
    std::fs::rename(d.join("old.raw"), d.join("moved.raw")).unwrap();
    assert_fails(
        &d,
        &[
            "rebase", "-f", "qcow2", "-b", "nb.qcow2", "-F", "qcow2", "ov.qcow2",
        ],
        "old.raw",
        "No such file or directory",
        "ov.qcow2",
    );
}

/// base.raw <- mid.qcow2 <- top.qcow2, with data at every level, zero writes included.
fn chain_inputs(seed: u64, top_opts: &str, base_size: &str) -> Vec<Step> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
    let size = 6 << 20;
    let bsize = if base_size == "6M" { size } else { 2 << 20 };
    vec![
        img(&["create", "-q", "-f", "raw", "base.raw", base_size]),
        random_writes("base.raw", "raw", bsize, 10, &mut rng),
        img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "mid.qcow2",
            "6M",
        ]),
        random_writes("mid.qcow2", "qcow2", size, 10, &mut rng),
        img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            top_opts,
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ]),
        random_writes("top.qcow2", "qcow2", size, 10, &mut rng),
    ]
}

#[test]
fn commit_leaves_every_image_as_qemu_commit_does() {
    let root = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &[&str])] = &[
        ("cluster_size=65536", "6M", &[]),
        ("cluster_size=65536", "6M", &["-d"]),
        ("cluster_size=4096", "6M", &["-b", "base.raw"]),
        (
            "cluster_size=32768,extended_l2=on",
            "6M",
            &["-b", "mid.qcow2"],
        ),
        ("compat=0.10", "6M", &[]),
        // The base grows to the top's size, as qemu's commit job grows it.
        ("cluster_size=65536", "2M", &["-b", "base.raw"]),
    ];
    for (seed, &(top_opts, base_size, extra)) in cases.iter().enumerate() {
        let what = format!("top {top_opts}, base {base_size}, {extra:?}");
        let steps = chain_inputs(seed as u64, top_opts, base_size);
        let (ours, theirs) = twin_dirs(root.path(), &steps);
        let before = root.path().join("before.raw");
        flatten(&ours, "top.qcow2", "qcow2", &before);
        let mut args = vec!["commit", "-f", "qcow2"];
        args.extend(extra);
        args.push("top.qcow2");
        let out = vdisk_ok(&ours, &args);
        assert_eq!(out, "Image committed.\n", "{what}");
        tool_ok(&theirs, "qemu-img", &args);
        for (file, fmt) in [
            ("top.qcow2", "qcow2"),
            ("mid.qcow2", "qcow2"),
            ("base.raw", "raw"),
        ] {
            if fmt == "qcow2" {
                assert_clean(&ours, file, &what);
            }
            let a = root.path().join("a.raw");
            let b = root.path().join("b.raw");
            flatten(&ours, file, fmt, &a);
            flatten(&theirs, file, fmt, &b);
            assert_same_content(&a, &b, &format!("{what}: {file} as after qemu's commit"));
        }
        if extra.is_empty() || extra == ["-d"] {
            // The top still reads what it read before.
            let a = root.path().join("a.raw");
            flatten(&ours, "top.qcow2", "qcow2", &a);
            assert_same_content(&a, &before, &format!("{what}: top content"));
        }
        let base_size = |d: &Path| std::fs::metadata(d.join("base.raw")).unwrap().len();
        assert_eq!(base_size(&ours), base_size(&theirs), "{what}: base size");
    }
}

#[test]
fn commit_without_d_empties_the_top_and_q_is_quiet() {
    let root = tempfile::tempdir().unwrap();
    let (d, theirs) = twin_dirs(root.path(), &chain_inputs(11, "cluster_size=65536", "6M"));
    let out = vdisk_ok(&d, &["commit", "-q", "-f", "qcow2", "top.qcow2"]);
    assert_eq!(out, "");
    // Nothing is left in the top image: every range comes from mid.qcow2 or below.
    let map = common::json(&tool_ok(
        &d,
        "qemu-img",
        &["map", "--output=json", "-f", "qcow2", "top.qcow2"],
    ));
    for ext in map.as_array().unwrap() {
        assert_ne!(ext["depth"], 0, "top still holds {ext}");
    }
    assert_clean(&d, "top.qcow2", "emptied top");
    // The emptied top gives its data clusters' space back, as qemu's does: at most the
    // header, refcount table and block, L1 and a few L2 tables remain.
    tool_ok(
        &theirs,
        "qemu-img",
        &["commit", "-q", "-f", "qcow2", "top.qcow2"],
    );
    let len = |d: &Path| std::fs::metadata(d.join("top.qcow2")).unwrap().len();
    assert!(
        len(&d) <= len(&theirs) + (4 << 16),
        "emptied top is {} bytes, qemu's {}",
        len(&d),
        len(&theirs)
    );
}

#[test]
fn commit_errors_are_one_line() {
    let root = tempfile::tempdir().unwrap();
    let (d, _) = twin_dirs(root.path(), &chain_inputs(5, "cluster_size=65536", "6M"));
    assert_fails(
        &d,
        &["commit", "-f", "raw", "base.raw"],
        "base.raw",
        "Image does not have a backing file",
        "base.raw",
    );
    assert_fails(
        &d,
        &["commit", "-f", "qcow2", "-b", "nonex", "top.qcow2"],
        "top.qcow2",
        "Did not find 'nonex' in the backing chain of 'top.qcow2'",
        "base.raw",
    );
    assert_fails(
        &d,
        &["commit", "-f", "qcow2", "-b", "top.qcow2", "top.qcow2"],
        "top.qcow2",
        "Did not find 'top.qcow2' in the backing chain",
        "mid.qcow2",
    );
    std::fs::rename(d.join("base.raw"), d.join("moved.raw")).unwrap();
    assert_fails(
        &d,
        &["commit", "-f", "qcow2", "top.qcow2"],
        "base.raw",
        "No such file or directory",
        "top.qcow2",
    );
    // A missing base deeper down is named.
    let out = vdisk(
        &d,
        &["commit", "-f", "qcow2", "-b", "base.raw", "top.qcow2"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("base.raw"));
}

#[test]
fn rebase_onto_an_image_further_down_the_chain() {
    // base.raw <- mid.qcow2 <- top.qcow2, then top straight onto base.raw: what mid.qcow2
    // held and top did not must move into top.
    let root = tempfile::tempdir().unwrap();
    let steps = chain_inputs(21, "cluster_size=16384", "6M");
    let (ours, theirs) = twin_dirs(root.path(), &steps);
    let before = root.path().join("before.raw");
    flatten(&ours, "top.qcow2", "qcow2", &before);
    let (mid, base) = (
        bytes(&ours.join("mid.qcow2")),
        bytes(&ours.join("base.raw")),
    );
    let args = [
        "rebase",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "top.qcow2",
    ];
    vdisk_ok(&ours, &args);
    tool_ok(&theirs, "qemu-img", &args);
    assert_clean(&ours, "top.qcow2", "onto base");
    assert_eq!(
        backing_of(&ours, "top.qcow2"),
        (Some("base.raw".into()), Some("raw".into()))
    );
    let (a, b) = (root.path().join("a.raw"), root.path().join("b.raw"));
    flatten(&ours, "top.qcow2", "qcow2", &a);
    flatten(&theirs, "top.qcow2", "qcow2", &b);
    assert_same_content(&a, &before, "onto base: guest content kept");
    assert_same_content(&a, &b, "onto base: as qemu's result");
    assert!(bytes(&ours.join("mid.qcow2")) == mid && bytes(&ours.join("base.raw")) == base);
}

#[test]
fn commit_grows_a_smaller_qcow2_base() {
    let root = tempfile::tempdir().unwrap();
    let steps = vec![
        img(&["create", "-q", "-f", "qcow2", "small.qcow2", "1M"]),
        Step::Io(
            "small.qcow2".into(),
            "qcow2".into(),
            vec!["write -P 1 0 1M".into()],
        ),
        img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "small.qcow2",
            "-F",
            "qcow2",
            "big.qcow2",
            "4M",
        ]),
        Step::Io(
            "big.qcow2".into(),
            "qcow2".into(),
            vec!["write -P 7 512k 2M".into(), "write -z 3M 64k".into()],
        ),
    ];
    let (ours, theirs) = twin_dirs(root.path(), &steps);
    let before = root.path().join("before.raw");
    flatten(&ours, "big.qcow2", "qcow2", &before);
    vdisk_ok(&ours, &["commit", "-f", "qcow2", "big.qcow2"]);
    tool_ok(&theirs, "qemu-img", &["commit", "-f", "qcow2", "big.qcow2"]);
    assert_clean(&ours, "small.qcow2", "grown base");
    let (a, b) = (root.path().join("a.raw"), root.path().join("b.raw"));
    flatten(&ours, "small.qcow2", "qcow2", &a);
    flatten(&theirs, "small.qcow2", "qcow2", &b);
    assert_same_content(&a, &before, "grown base holds the top's content");
    assert_same_content(&a, &b, "grown base as qemu's");
    assert_eq!(std::fs::metadata(&a).unwrap().len(), 4 << 20, "base size");
}

/// The chain of iotest 271's rebase cases (1 MiB clusters with extended L2 entries): a base,
/// a middle with data in separate subclusters, and an empty top, in `dir`.
fn subcluster_chain(dir: &Path, size: &str, mid_writes: &[&str], base_writes: &[&str]) {
    let opts = "cluster_size=1M,extended_l2=on";
    tool_ok(
        dir,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            opts,
            "base.qcow2",
            size,
        ],
    );
    for (img, backing) in [("mid.qcow2", "base.qcow2"), ("top.qcow2", "mid.qcow2")] {
        tool_ok(
            dir,
            "qemu-img",
            &[
                "create", "-q", "-f", "qcow2", "-o", opts, "-b", backing, "-F", "qcow2", img, size,
            ],
        );
    }
    for (img, writes) in [("base.qcow2", base_writes), ("mid.qcow2", mid_writes)] {
        for w in writes.iter() {
            tool_ok(dir, "qemu-io", &["-c", w, img]);
        }
    }
}

/// A rebase copies into the overlay only the subclusters whose content differs, as qemu's
/// does (iotest 271), and `-c` writes the clusters it copies compressed, whole: the overlay's
/// map after vdisk's rebase is qemu's after its own, and the guest reads the same.
#[test]
fn rebase_copies_subclusters_and_compresses_as_qemu() {
    let root = tempfile::tempdir().unwrap();
    // (size, writes into the middle, writes into the base, extra rebase flags)
    type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);
    let cases: [Case; 2] = [
        (
            "1M",
            &["write -P 0x11 32k 32k", "write -P 0x22 960k 32k"],
            &[],
            &[],
        ),
        (
            "3M",
            &["write -P 0x22 992k 32k", "write -P 0x33 2048k 32k"],
            &["write -P 0x11 1M 1M"],
            &["-c"],
        ),
    ];
    for (size, mid, base, extra) in cases {
        let mut maps = Vec::new();
        for who in ["ours", "theirs"] {
            let d = root.path().join(who);
            std::fs::create_dir_all(&d).unwrap();
            subcluster_chain(&d, size, mid, base);
            let mut args = vec!["rebase"];
            args.extend_from_slice(extra);
            args.extend(["-b", "base.qcow2", "-F", "qcow2", "top.qcow2"]);
            if who == "ours" {
                vdisk_ok(&d, &args);
            } else {
                tool_ok(&d, "qemu-img", &args);
            }
            assert_clean(&d, "top.qcow2", who);
            maps.push(tool_ok(
                &d,
                "qemu-img",
                &["map", "--output=json", "top.qcow2"],
            ));
        }
        assert_eq!(
            maps[0], maps[1],
            "{size} {extra:?}: map of the rebased overlay"
        );
        let top = |who: &str| root.path().join(who).join("top.qcow2");
        tool_ok(
            root.path(),
            "qemu-img",
            &[
                "compare",
                top("ours").to_str().unwrap(),
                top("theirs").to_str().unwrap(),
            ],
        );
        std::fs::remove_dir_all(root.path().join("ours")).unwrap();
        std::fs::remove_dir_all(root.path().join("theirs")).unwrap();
    }
}
