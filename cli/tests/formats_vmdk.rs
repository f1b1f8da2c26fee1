//! VMDK against qemu-img, both ways, on images made at run time: what qemu-img writes reads
//! back byte-identical through vdisk with the same `info`/`map` JSON; what vdisk writes
//! passes `qemu-img compare` and `qemu-img check`; hostile images fail with one line.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const SUBFORMATS: &[&str] = &[
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
];

/// A raw source with data, a zero run, more data and a hole: 10 MiB.
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
fn qemu_written_vmdk_reads_identically() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    for sub in SUBFORMATS {
        let img = format!("q-{sub}.vmdk");
        tool_ok(
            d,
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                &format!("subformat={sub}"),
                "src.raw",
                &img,
            ],
        );
        vdisk_ok(d, &["convert", "-f", "vmdk", "-O", "raw", &img, "ours.raw"]);
        tool_ok(
            d,
            "qemu-img",
            &["convert", "-f", "vmdk", "-O", "raw", &img, "theirs.raw"],
        );
        assert!(
            read(&d.join("ours.raw")) == read(&d.join("theirs.raw")),
            "{sub}: content differs"
        );
        for cmd in ["info", "map"] {
            let ours = vdisk_ok(d, &[cmd, "-f", "vmdk", "--output=json", &img]);
            let theirs = tool_ok(d, "qemu-img", &[cmd, "-f", "vmdk", "--output=json", &img]);
            assert_eq!(json(&ours), json(&theirs), "{sub}: {cmd} differs");
        }
        // Probing finds it too (with the warning).
        let out = vdisk(d, &["info", &img]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("file format: vmdk"));
    }
}

#[test]
fn vdisk_written_vmdk_passes_qemu() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    for sub in SUBFORMATS {
        let img = format!("v-{sub}.vmdk");
        vdisk_ok(
            d,
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                &format!("subformat={sub}"),
                "src.raw",
                &img,
            ],
        );
        let cmp = tool(
            d,
            "qemu-img",
            &["compare", "-f", "raw", "-F", "vmdk", "src.raw", &img],
        );
        assert!(
            cmp.status.success(),
            "{sub}: {}",
            String::from_utf8_lossy(&cmp.stdout)
        );
        tool_ok(d, "qemu-img", &["check", "-f", "vmdk", &img]);
        // The layout is qemu's: no larger than qemu-img's own conversion (the same size but
        // for stream-optimized, where deflate output differs).
        let q = format!("q-{sub}.vmdk");
        tool_ok(
            d,
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                &format!("subformat={sub}"),
                "src.raw",
                &q,
            ],
        );
        let size = |p: &str| std::fs::metadata(d.join(p)).unwrap().len();
        if *sub == "streamOptimized" {
            assert!(
                size(&img) <= size(&q),
                "{sub}: {} > {}",
                size(&img),
                size(&q)
            );
        } else {
            assert_eq!(size(&img), size(&q), "{sub}: file size");
        }
    }
}

#[test]
fn create_matches_qemu_and_chains_follow_parent_hints() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for opts in [
        "",
        "subformat=streamOptimized,adapter_type=lsilogic,zeroed_grain=on,toolsversion=5",
        "compat6=on",
        "subformat=monolithicFlat,hwversion=7",
    ] {
        let mut args = vec!["create", "-f", "vmdk"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        let ours: Vec<&str> = args.iter().copied().chain(["o.vmdk", "64M"]).collect();
        let theirs: Vec<&str> = args.iter().copied().chain(["t.vmdk", "64M"]).collect();
        let a = vdisk_ok(d, &ours).replace("o.vmdk", "X");
        let b = tool_ok(d, "qemu-img", &theirs).replace("t.vmdk", "X");
        assert_eq!(a, b, "Formatting line for {opts:?}");
        tool_ok(d, "qemu-img", &["check", "-f", "vmdk", "o.vmdk"]);
        let mut i = json(&vdisk_ok(
            d,
            &["info", "-f", "vmdk", "--output=json", "o.vmdk"],
        ));
        let mut j = json(&tool_ok(
            d,
            "qemu-img",
            &["info", "-f", "vmdk", "--output=json", "o.vmdk"],
        ));
        for v in [&mut i, &mut j] {
            v["format-specific"]["data"]["cid"] = 0.into();
        }
        assert_eq!(i, j, "info of a new image with {opts:?}");
    }
    for (o, e) in [
        (
            "compat6=on,hwversion=6",
            "compat6 cannot be enabled with hwversion set",
        ),
        ("adapter_type=scsi", "Invalid parameter 'scsi'"),
        ("subformat=foo", "Invalid parameter 'foo'"),
    ] {
        let out = vdisk(d, &["create", "-f", "vmdk", "-o", o, "bad.vmdk", "1M"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(e), "{o}: {err}");
    }

    // A child made by vdisk, written by qemu-io, read through the parent hint.
    vdisk_ok(d, &["create", "-f", "vmdk", "base.vmdk", "10M"]);
    tool_ok(
        d,
        "qemu-io",
        &["-f", "vmdk", "-c", "write -P 0x11 0 1M", "base.vmdk"],
    );
    vdisk_ok(
        d,
        &[
            "create",
            "-f",
            "vmdk",
            "-b",
            "base.vmdk",
            "-F",
            "vmdk",
            "child.vmdk",
        ],
    );
    tool_ok(
        d,
        "qemu-io",
        &["-f", "vmdk", "-c", "write -P 0x22 512k 64k", "child.vmdk"],
    );
    tool_ok(d, "qemu-img", &["check", "-f", "vmdk", "child.vmdk"]);
    vdisk_ok(
        d,
        &[
            "convert",
            "-f",
            "vmdk",
            "-O",
            "raw",
            "child.vmdk",
            "ours.raw",
        ],
    );
    tool_ok(
        d,
        "qemu-img",
        &[
            "convert",
            "-f",
            "vmdk",
            "-O",
            "raw",
            "child.vmdk",
            "theirs.raw",
        ],
    );
    assert!(read(&d.join("ours.raw")) == read(&d.join("theirs.raw")));
    let ours = vdisk_ok(d, &["map", "-f", "vmdk", "--output=json", "child.vmdk"]);
    let theirs = tool_ok(
        d,
        "qemu-img",
        &["map", "-f", "vmdk", "--output=json", "child.vmdk"],
    );
    assert_eq!(json(&ours), json(&theirs));
}

/// Runs vdisk info on a hostile image: it must fail fast with one line naming the file.
fn refused(dir: &Path, img: &str, expect: &str) {
    let start = Instant::now();
    let out = vdisk(dir, &["info", "-f", "vmdk", img]);
    assert!(start.elapsed() < Duration::from_secs(1), "{img}: slow");
    assert!(!out.status.success(), "{img}: accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{img}: {err}");
    assert!(err.contains(img) && err.contains(expect), "{img}: {err}");
}

fn patch(dir: &Path, from: &str, to: &str, at: usize, bytes: &[u8]) {
    let mut b = read(&dir.join(from));
    b[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(dir.join(to), b).unwrap();
}

#[test]
fn hostile_vmdk_images_are_refused_with_one_line() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(d.join("secret"), b"not a guest").unwrap();
    let desc = |name: &str, line: &str| {
        let text = format!(
            "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n{line}\n"
        );
        std::fs::write(d.join(name), text).unwrap();
    };
    std::fs::create_dir(d.join("sub")).unwrap();
    desc("abs.vmdk", "RW 8 FLAT \"/etc/passwd\" 0");
    refused(d, "abs.vmdk", "refusing the extent file '/etc/passwd'");
    let text = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"../secret\" 0\n";
    std::fs::write(d.join("sub/up.vmdk"), text).unwrap();
    refused(d, "sub/up.vmdk", "refusing the extent file '../secret'");
    desc("type.vmdk", "RW 8 BOGUS \"x\"");
    refused(d, "type.vmdk", "Unsupported extent type 'BOGUS'");
    desc("huge.vmdk", "RW 18446744073709551615 ZERO");
    refused(d, "huge.vmdk", "out of range");
    desc("many.vmdk", &"RW 1099511627776 ZERO\n".repeat(100));
    refused(d, "many.vmdk", "add up to more than");

    // Header fields of a real sparse file, patched (offsets: KDMV then the fields).
    tool_ok(d, "qemu-img", &["create", "-f", "vmdk", "ok.vmdk", "64M"]);
    patch(d, "ok.vmdk", "gd.vmdk", 56, &(1u64 << 40).to_le_bytes());
    refused(d, "gd.vmdk", "grain directory at 0x");
    patch(d, "ok.vmdk", "grain0.vmdk", 20, &0u64.to_le_bytes());
    refused(d, "grain0.vmdk", "Invalid granularity");
    patch(d, "ok.vmdk", "gtes.vmdk", 44, &100000u32.to_le_bytes());
    refused(d, "gtes.vmdk", "L2 table size too big");
    patch(d, "ok.vmdk", "cap.vmdk", 12, &u64::MAX.to_le_bytes());
    refused(d, "cap.vmdk", "beyond what 32-bit");
    patch(d, "ok.vmdk", "ver.vmdk", 4, &9u32.to_le_bytes());
    refused(d, "ver.vmdk", "Unsupported VMDK version 9");
    patch(d, "ok.vmdk", "flags.vmdk", 8, &0x8000_0000u32.to_le_bytes());
    refused(d, "flags.vmdk", "unknown VMDK header flags");
    std::fs::write(d.join("tiny.vmdk"), b"KDMV").unwrap();
    refused(d, "tiny.vmdk", "Unsupported VMDK version 0");

    // A grain table entry pointing past the end: info opens, reading fails cleanly.
    tool_ok(
        d,
        "qemu-io",
        &["-f", "vmdk", "-c", "write -P 1 0 64k", "ok.vmdk"],
    );
    let b = read(&d.join("ok.vmdk"));
    let gd_sector = u64::from_le_bytes(b[56..64].try_into().unwrap());
    let gd0 = u32::from_le_bytes(b[gd_sector as usize * 512..][..4].try_into().unwrap());
    patch(
        d,
        "ok.vmdk",
        "gte.vmdk",
        gd0 as usize * 512,
        &0x7fff_0000u32.to_le_bytes(),
    );
    let out = vdisk(
        d,
        &["convert", "-f", "vmdk", "-O", "raw", "gte.vmdk", "x.raw"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lies beyond the end of the file"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // A stream grain whose deflate data is garbage.
    tool_ok(d, "qemu-img", &["create", "-f", "raw", "s.raw", "1M"]);
    tool_ok(
        d,
        "qemu-io",
        &["-f", "raw", "-c", "write -P 7 0 64k", "s.raw"],
    );
    tool_ok(
        d,
        "qemu-img",
        &[
            "convert",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            "s.raw",
            "s.vmdk",
        ],
    );
    let mut b = read(&d.join("s.vmdk"));
    let grain_offset = u64::from_le_bytes(b[64..72].try_into().unwrap()) as usize * 512;
    b[grain_offset + 12..grain_offset + 40].fill(0xff);
    std::fs::write(d.join("bad-stream.vmdk"), b).unwrap();
    let out = vdisk(
        d,
        &[
            "convert",
            "-f",
            "vmdk",
            "-O",
            "raw",
            "bad-stream.vmdk",
            "y.raw",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("does not inflate"),
        "{err}"
    );
}

#[test]
fn guest_commands_read_a_vmdk() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir(d.join("root")).unwrap();
    std::fs::write(d.join("root/hostname"), b"vmdk-guest\n").unwrap();
    tool_ok(d, "mkfs.ext4", &["-q", "-F", "-d", "root", "fs.raw", "16M"]);
    tool_ok(
        d,
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            "fs.raw",
            "app.vmdk",
        ],
    );
    let got = vdisk_ok(
        d,
        &[
            "cat",
            "--format",
            "vmdk",
            "-a",
            "app.vmdk",
            "-m",
            "/dev/sda",
            "/hostname",
        ],
    );
    assert_eq!(got, "vmdk-guest\n");

    // A write through the guest commands into a sparse VMDK made by vdisk: qemu-img check
    // is clean, and e2fsck is clean on qemu-img's own reading of the image.
    vdisk_ok(
        d,
        &["convert", "-f", "raw", "-O", "vmdk", "fs.raw", "rw.vmdk"],
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args([
            "write",
            "--format",
            "vmdk",
            "-a",
            "rw.vmdk",
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
    let got = vdisk_ok(
        d,
        &[
            "cat",
            "--format",
            "vmdk",
            "-a",
            "rw.vmdk",
            "-m",
            "/dev/sda",
            "/hostname",
        ],
    );
    assert_eq!(got, "renamed\n");
    tool_ok(d, "qemu-img", &["check", "-f", "vmdk", "rw.vmdk"]);
    tool_ok(
        d,
        "qemu-img",
        &["convert", "-f", "vmdk", "-O", "raw", "rw.vmdk", "back.raw"],
    );
    tool_ok(d, "e2fsck", &["-fn", "back.raw"]);
}
