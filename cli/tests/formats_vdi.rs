//! VDI against qemu-img, both ways, on images made at run time: what qemu-img writes reads
//! back byte-identical through vdisk with the same `info`/`map` JSON; what vdisk writes has
//! qemu's layout byte for byte (but the UUIDs) and passes `qemu-img check`; `vdisk check`
//! finds what qemu's check finds; hostile images fail with one line.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const VARIANTS: &[&str] = &["static=off", "static=on"];

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

#[test]
fn qemu_written_vdi_reads_identically() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    for opts in VARIANTS {
        tool_ok(
            d,
            "qemu-img",
            &[
                "convert", "-f", "raw", "-O", "vdi", "-o", opts, "src.raw", "q.vdi",
            ],
        );
        vdisk_ok(
            d,
            &["convert", "-f", "vdi", "-O", "raw", "q.vdi", "ours.raw"],
        );
        assert!(
            read(&d.join("ours.raw")) == read(&d.join("src.raw")),
            "{opts}"
        );
        let cmp = vdisk(
            d,
            &["compare", "-f", "raw", "-F", "vdi", "src.raw", "q.vdi"],
        );
        assert!(cmp.status.success(), "{opts}: {cmp:?}");
        for cmd in ["info", "map"] {
            let ours = vdisk_ok(d, &[cmd, "-f", "vdi", "--output=json", "q.vdi"]);
            let theirs = tool_ok(d, "qemu-img", &[cmd, "-f", "vdi", "--output=json", "q.vdi"]);
            assert_eq!(json(&ours), json(&theirs), "{opts}: {cmd} differs");
        }
        let ours = json(&vdisk_ok(d, &["info", "--output=json", "q.vdi"]));
        assert_eq!(ours["format"], "vdi", "probed");
        for out in ["human", "json"] {
            let o = vdisk(
                d,
                &["check", "-f", "vdi", &format!("--output={out}"), "q.vdi"],
            );
            let q = tool(
                d,
                "qemu-img",
                &["check", "-f", "vdi", &format!("--output={out}"), "q.vdi"],
            );
            assert_eq!(o.status.code(), Some(0));
            assert_eq!(q.status.code(), Some(0));
            assert_eq!(
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&q.stdout)
            );
        }
        vdisk_ok(
            d,
            &["convert", "-f", "vdi", "-O", "qcow2", "q.vdi", "o.qcow2"],
        );
        let cmp = tool(
            d,
            "qemu-img",
            &["compare", "-f", "vdi", "-F", "qcow2", "q.vdi", "o.qcow2"],
        );
        assert!(cmp.status.success(), "{opts}: {cmp:?}");
    }
}

#[test]
fn vdisk_written_vdi_matches_qemus_layout() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    for opts in VARIANTS {
        vdisk_ok(
            d,
            &[
                "convert", "-f", "raw", "-O", "vdi", "-o", opts, "src.raw", "v.vdi",
            ],
        );
        tool_ok(
            d,
            "qemu-img",
            &[
                "convert", "-f", "raw", "-O", "vdi", "-o", opts, "src.raw", "q.vdi",
            ],
        );
        let cmp = tool(
            d,
            "qemu-img",
            &["compare", "-f", "raw", "-F", "vdi", "src.raw", "v.vdi"],
        );
        assert!(cmp.status.success(), "{opts}: {cmp:?}");
        tool_ok(d, "qemu-img", &["check", "-f", "vdi", "v.vdi"]);
        let a = json(&tool_ok(
            d,
            "qemu-img",
            &["map", "-f", "vdi", "--output=json", "v.vdi"],
        ));
        let b = json(&tool_ok(
            d,
            "qemu-img",
            &["map", "-f", "vdi", "--output=json", "q.vdi"],
        ));
        assert_eq!(a, b, "{opts}: qemu's map");
        let (mut v, mut q) = (read(&d.join("v.vdi")), read(&d.join("q.vdi")));
        assert_eq!(v.len(), q.len(), "{opts}");
        // The image and last-snapshot UUIDs are random in both.
        v[392..424].fill(0);
        q[392..424].fill(0);
        assert!(v == q, "{opts}: files differ beyond the UUIDs");
    }
    // Writes into an existing image by qemu-io, then by vdisk: both checks stay clean.
    vdisk_ok(d, &["create", "-f", "vdi", "w.vdi", "16M"]);
    tool_ok(
        d,
        "qemu-io",
        &["-f", "vdi", "-c", "write -P 7 3M 4k", "w.vdi"],
    );
    vdisk_ok(
        d,
        &[
            "convert", "-n", "-f", "raw", "-O", "vdi", "src.raw", "w.vdi",
        ],
    );
    tool_ok(d, "qemu-img", &["check", "-f", "vdi", "w.vdi"]);
    vdisk_ok(d, &["check", "-f", "vdi", "w.vdi"]);
}

#[test]
fn create_and_check_match_qemu() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for (opts, size) in [
        ("", "64M"),
        ("static=on", "7M"),
        ("static=off", "1G"),
        ("", "0"),
        ("static", "3M"),
    ] {
        let mut args = vec!["create", "-f", "vdi"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        let ours: Vec<&str> = args.iter().copied().chain(["o.vdi", size]).collect();
        let theirs: Vec<&str> = args.iter().copied().chain(["t.vdi", size]).collect();
        let a = vdisk_ok(d, &ours).replace("o.vdi", "X");
        let b = tool_ok(d, "qemu-img", &theirs).replace("t.vdi", "X");
        assert_eq!(a, b, "Formatting line for {opts:?}");
        let strip = |mut v: serde_json::Value| {
            v["filename"] = 0.into();
            v["children"] = 0.into();
            v
        };
        let i = strip(json(&vdisk_ok(
            d,
            &["info", "-f", "vdi", "--output=json", "o.vdi"],
        )));
        let j = strip(json(&tool_ok(
            d,
            "qemu-img",
            &["info", "-f", "vdi", "--output=json", "o.vdi"],
        )));
        let k = strip(json(&tool_ok(
            d,
            "qemu-img",
            &["info", "-f", "vdi", "--output=json", "t.vdi"],
        )));
        assert_eq!(i, j, "{opts}");
        assert_eq!(j, k, "{opts}");
        tool_ok(d, "qemu-img", &["check", "-f", "vdi", "o.vdi"]);
    }
    let help = vdisk_ok(d, &["create", "-f", "vdi", "-o", "help"]);
    let theirs = tool_ok(d, "qemu-img", &["create", "-f", "vdi", "-o", "help"]);
    assert!(theirs.starts_with(&help), "{help}\n---\n{theirs}");
    for (o, size, e) in [
        (
            "static=maybe",
            "1M",
            "Parameter 'static' expects 'on' or 'off'",
        ),
        ("", "1000P", "Unsupported VDI image size"),
        (
            "preallocation=metadata",
            "1M",
            "Unsupported preallocation mode: metadata",
        ),
    ] {
        let mut args = vec!["create", "-f", "vdi"];
        if !o.is_empty() {
            args.extend(["-o", o]);
        }
        args.extend(["bad.vdi", size]);
        let out = vdisk(d, &args);
        assert!(!out.status.success(), "{o}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(e), "{o}: {err}");
    }
    let out = vdisk(
        d,
        &["create", "-f", "vdi", "-b", "o.vdi", "-F", "vdi", "bad.vdi"],
    );
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("Backing file not supported for file format 'vdi'"));

    // A block used twice: both checks report one corruption, exit 2, the same lines.
    tool_ok(d, "qemu-img", &["create", "-f", "vdi", "c.vdi", "10M"]);
    tool_ok(
        d,
        "qemu-io",
        &["-f", "vdi", "-c", "write -P 1 0 3M", "c.vdi"],
    );
    let mut b = read(&d.join("c.vdi"));
    b[0x204..0x208].copy_from_slice(&0u32.to_le_bytes());
    std::fs::write(d.join("dup.vdi"), &b).unwrap();
    // And a wrong allocated count.
    let mut b = read(&d.join("c.vdi"));
    b[388..392].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(d.join("count.vdi"), &b).unwrap();
    for img in ["dup.vdi", "count.vdi"] {
        for out in ["human", "json"] {
            let args = ["check", "-f", "vdi", &format!("--output={out}"), img];
            let o = vdisk(d, &args);
            let q = tool(d, "qemu-img", &args);
            assert_eq!(o.status.code(), Some(2), "{img}");
            assert_eq!(q.status.code(), Some(2), "{img}");
            assert_eq!(
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&q.stdout),
                "{img}"
            );
            assert_eq!(
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&q.stderr).replace("qemu-img", "vdisk"),
                "{img}"
            );
        }
    }
    // qemu repairs nothing in a VDI, nor resizes or measures one.
    for (args, code) in [
        (&["check", "-r", "all", "-f", "vdi", "c.vdi"][..], 63),
        (&["resize", "-f", "vdi", "c.vdi", "20M"][..], 1),
        (&["measure", "-O", "vdi", "--size", "10M"][..], 1),
    ] {
        let o = vdisk(d, args);
        let q = tool(d, "qemu-img", args);
        assert_eq!(o.status.code(), Some(code), "{args:?}");
        assert_eq!(q.status.code(), Some(code), "{args:?}");
    }
}

fn refused(dir: &Path, img: &str, expect: &str) {
    let start = Instant::now();
    let out = vdisk(dir, &["info", "-f", "vdi", img]);
    assert!(start.elapsed() < Duration::from_secs(1), "{img}: slow");
    assert!(!out.status.success(), "{img}: accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{img}: {err}");
    assert!(err.contains(img) && err.contains(expect), "{img}: {err}");
}

#[test]
fn hostile_vdi_images_are_refused_with_one_line() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    tool_ok(d, "qemu-img", &["create", "-f", "vdi", "good.vdi", "64M"]);
    tool_ok(
        d,
        "qemu-io",
        &["-f", "vdi", "-c", "write -P 1 0 4M", "good.vdi"],
    );
    let good = read(&d.join("good.vdi"));
    let patch = |name: &str, at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        std::fs::write(d.join(name), b).unwrap();
    };
    patch("sig.vdi", 64, &[0; 4]);
    refused(
        d,
        "sig.vdi",
        "Image not in VDI format (bad signature 00000000)",
    );
    patch("ver.vdi", 68, &0x0002_0000u32.to_le_bytes());
    refused(d, "ver.vdi", "unsupported VDI image (version 2.0)");
    patch("bs.vdi", 376, &(1u32 << 21).to_le_bytes());
    refused(d, "bs.vdi", "block size 2097152 is not 1048576");
    patch("room.vdi", 384, &1u32.to_le_bytes());
    refused(d, "room.vdi", "image bitmap has room for");
    patch("huge.vdi", 368, &u64::MAX.to_le_bytes());
    refused(d, "huge.vdi", "Unsupported VDI image size");
    // Many blocks, a disk to match: refused before the map is read.
    let mut b = good.clone();
    b[368..376].copy_from_slice(&(1u64 << 44).to_le_bytes());
    b[384..388].copy_from_slice(&(1u32 << 25).to_le_bytes());
    std::fs::write(d.join("blocks.vdi"), b).unwrap();
    refused(d, "blocks.vdi", "too many blocks");
    patch("map.vdi", 340, &0x4000_0000u32.to_le_bytes());
    refused(d, "map.vdi", "reaches past the end of the file");
    patch("entry.vdi", 0x200, &1000u32.to_le_bytes());
    refused(
        d,
        "entry.vdi",
        "block map entry 0 points past the end of the file",
    );
    patch("parent.vdi", 440, &[1; 16]);
    refused(d, "parent.vdi", "non-NULL parent UUID");
    patch("align.vdi", 344, &0x401u32.to_le_bytes());
    refused(d, "align.vdi", "unaligned data offset");
    std::fs::write(d.join("tiny.vdi"), b"<<< short").unwrap();
    refused(d, "tiny.vdi", "Image not in VDI format");
    for img in [
        "sig.vdi",
        "ver.vdi",
        "bs.vdi",
        "room.vdi",
        "huge.vdi",
        "parent.vdi",
        "align.vdi",
    ] {
        let out = tool(d, "qemu-img", &["info", "-f", "vdi", img]);
        assert!(!out.status.success(), "qemu accepted {img}");
    }
}

#[test]
fn guest_commands_read_and_write_a_vdi() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir(d.join("root")).unwrap();
    std::fs::write(d.join("root/hostname"), b"vdi-guest\n").unwrap();
    tool_ok(d, "mkfs.ext4", &["-q", "-F", "-d", "root", "fs.raw", "16M"]);
    tool_ok(
        d,
        "qemu-img",
        &["convert", "-f", "raw", "-O", "vdi", "fs.raw", "app.vdi"],
    );
    let got = vdisk_ok(
        d,
        &[
            "cat",
            "--format",
            "vdi",
            "-a",
            "app.vdi",
            "-m",
            "/dev/sda",
            "/hostname",
        ],
    );
    assert_eq!(got, "vdi-guest\n");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args([
            "write",
            "--format",
            "vdi",
            "-a",
            "app.vdi",
            "-m",
            "/dev/sda",
            "/hostname",
        ])
        .current_dir(d)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"renamed\n").unwrap();
    assert!(child.wait().unwrap().success());
    tool_ok(d, "qemu-img", &["check", "-f", "vdi", "app.vdi"]);
    tool_ok(
        d,
        "qemu-img",
        &["convert", "-f", "vdi", "-O", "raw", "app.vdi", "back.raw"],
    );
    tool_ok(d, "e2fsck", &["-fn", "back.raw"]);
    let got = vdisk_ok(
        d,
        &[
            "cat",
            "--format",
            "vdi",
            "-a",
            "app.vdi",
            "-m",
            "/dev/sda",
            "/hostname",
        ],
    );
    assert_eq!(got, "renamed\n");
}
