//! VHDX against qemu-img, both ways, on images made at run time: what qemu-img and qemu-io
//! write reads back byte-identical through vdisk with the same `info`/`map` JSON and `check`
//! output; what vdisk writes qemu reads identically and checks clean, with qemu's layout;
//! differencing disks read through their parent; hostile images fail with one line; the
//! guest commands read a partition inside a VHDX.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// (subformat, block size) pairs.
const VARIANTS: &[&str] = &[
    "subformat=dynamic,block_size=1M",
    "subformat=dynamic",
    "subformat=fixed,block_size=2M",
    "subformat=fixed,block_state_zero=off",
    "subformat=dynamic,block_size=32M,log_size=2M",
];

fn source(dir: &Path) {
    tool_ok(dir, "qemu-img", &["create", "-f", "raw", "src.raw", "40M"]);
    tool_ok(
        dir,
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 3M",
            "-c",
            "write -P 0x17 9M 1M",
            "-c",
            "write -P 0x33 17M 100k",
            "-c",
            "write -P 0x44 39900k 300k",
            "src.raw",
        ],
    );
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn same_info_map_check(d: &Path, img: &str, what: &str) {
    for cmd in ["info", "map"] {
        let ours = vdisk_ok(d, &[cmd, "-f", "vhdx", "--output=json", img]);
        let theirs = tool_ok(d, "qemu-img", &[cmd, "-f", "vhdx", "--output=json", img]);
        assert_eq!(json(&ours), json(&theirs), "{what}: {cmd} differs");
    }
    for out in ["human", "json"] {
        let args = ["check", "-f", "vhdx", &format!("--output={out}"), img];
        let o = vdisk(d, &args);
        let q = tool(d, "qemu-img", &args);
        assert_eq!(o.status.code(), Some(0), "{what}: {o:?}");
        assert_eq!(q.status.code(), Some(0), "{what}: {q:?}");
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&q.stdout),
            "{what}: check"
        );
    }
}

#[test]
fn qemu_written_vhdx_reads_identically() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    for opts in VARIANTS {
        tool_ok(
            d,
            "qemu-img",
            &[
                "convert", "-f", "raw", "-O", "vhdx", "-o", opts, "src.raw", "q.vhdx",
            ],
        );
        // qemu-io writes over and between what convert wrote (partial blocks, a rewrite).
        tool_ok(
            d,
            "qemu-io",
            &[
                "-f",
                "vhdx",
                "-c",
                "write -P 0x61 2M 1536k",
                "-c",
                "write -P 0x62 25M 512",
                "-c",
                "write -z 9M 64k",
                "q.vhdx",
            ],
        );
        tool_ok(
            d,
            "qemu-img",
            &["convert", "-f", "vhdx", "-O", "raw", "q.vhdx", "theirs.raw"],
        );
        vdisk_ok(
            d,
            &["convert", "-f", "vhdx", "-O", "raw", "q.vhdx", "ours.raw"],
        );
        assert!(
            read(&d.join("ours.raw")) == read(&d.join("theirs.raw")),
            "{opts}: vdisk reads other bytes than qemu"
        );
        let cmp = vdisk(
            d,
            &["compare", "-f", "raw", "-F", "vhdx", "theirs.raw", "q.vhdx"],
        );
        assert!(cmp.status.success(), "{opts}: {cmp:?}");
        same_info_map_check(d, "q.vhdx", opts);
        let ours = json(&vdisk_ok(d, &["info", "--output=json", "q.vhdx"]));
        assert_eq!(ours["format"], "vhdx", "probed");
        vdisk_ok(
            d,
            &["convert", "-f", "vhdx", "-O", "qcow2", "q.vhdx", "o.qcow2"],
        );
        let cmp = tool(
            d,
            "qemu-img",
            &["compare", "-f", "vhdx", "-F", "qcow2", "q.vhdx", "o.qcow2"],
        );
        assert!(cmp.status.success(), "{opts}: {cmp:?}");
    }
}

#[test]
fn vdisk_written_vhdx_reads_identically_in_qemu() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    for opts in VARIANTS {
        vdisk_ok(
            d,
            &[
                "convert", "-f", "raw", "-O", "vhdx", "-o", opts, "src.raw", "v.vhdx",
            ],
        );
        tool_ok(
            d,
            "qemu-img",
            &[
                "convert", "-f", "raw", "-O", "vhdx", "-o", opts, "src.raw", "q.vhdx",
            ],
        );
        let cmp = tool(
            d,
            "qemu-img",
            &["compare", "-f", "raw", "-F", "vhdx", "src.raw", "v.vhdx"],
        );
        assert!(cmp.status.success(), "{opts}: {cmp:?}");
        tool_ok(d, "qemu-img", &["check", "-f", "vhdx", "v.vhdx"]);
        same_info_map_check(d, "v.vhdx", opts);
        // qemu's layout: the same length, the same blocks at the same places.
        let (v, q) = (read(&d.join("v.vhdx")), read(&d.join("q.vhdx")));
        assert_eq!(v.len(), q.len(), "{opts}: file length");
        let bat = |b: &[u8]| -> Vec<u8> { b[2 << 20..3 << 20].to_vec() };
        let bat_at = u64::from_le_bytes(v[(192 << 10) + 32..(192 << 10) + 40].try_into().unwrap());
        let (bv, bq) = if bat_at == 2 << 20 {
            (bat(&v), bat(&q))
        } else {
            let a = bat_at as usize;
            (v[a..a + (1 << 20)].to_vec(), q[a..a + (1 << 20)].to_vec())
        };
        assert!(bv == bq, "{opts}: BATs differ");
        // A partial rewrite by qemu-io, then by vdisk (an existing image, -n): both read
        // what both wrote.
        tool_ok(
            d,
            "qemu-io",
            &["-f", "vhdx", "-c", "write -P 7 30M 4k", "v.vhdx"],
        );
        vdisk_ok(
            d,
            &[
                "convert", "-n", "-f", "raw", "-O", "vhdx", "src.raw", "q.vhdx",
            ],
        );
        tool_ok(d, "qemu-img", &["check", "-f", "vhdx", "q.vhdx"]);
        let cmp = tool(
            d,
            "qemu-img",
            &["compare", "-f", "raw", "-F", "vhdx", "src.raw", "q.vhdx"],
        );
        assert!(cmp.status.success(), "{opts}: {cmp:?}");
        let mut want = read(&d.join("src.raw"));
        want[30 << 20..(30 << 20) + 4096].fill(7);
        vdisk_ok(
            d,
            &["convert", "-f", "vhdx", "-O", "raw", "v.vhdx", "back.raw"],
        );
        assert!(read(&d.join("back.raw")) == want, "{opts}: after qemu-io");
    }
}

#[test]
fn create_matches_qemu() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for (opts, size) in [
        ("", "64M"),
        ("subformat=fixed", "7M"),
        ("block_size=1.5M", "100M"),
        ("log_size=100k,block_size=512M", "1G"),
        ("block_state_zero=off", "3G"),
        ("", "0"),
        ("subformat=dynamic,block_size=4M", "200G"),
    ] {
        let mut args = vec!["create", "-f", "vhdx"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        let ours: Vec<&str> = args.iter().copied().chain(["o.vhdx", size]).collect();
        let theirs: Vec<&str> = args.iter().copied().chain(["t.vhdx", size]).collect();
        let a = vdisk_ok(d, &ours).replace("o.vhdx", "X");
        let b = tool_ok(d, "qemu-img", &theirs).replace("t.vhdx", "X");
        assert_eq!(a, b, "Formatting line for {opts:?}");
        let strip = |mut v: serde_json::Value| {
            v["filename"] = 0.into();
            v["children"] = 0.into();
            v["actual-size"] = 0.into();
            v
        };
        let i = strip(json(&vdisk_ok(
            d,
            &["info", "-f", "vhdx", "--output=json", "o.vhdx"],
        )));
        let j = strip(json(&tool_ok(
            d,
            "qemu-img",
            &["info", "-f", "vhdx", "--output=json", "o.vhdx"],
        )));
        let k = strip(json(&tool_ok(
            d,
            "qemu-img",
            &["info", "-f", "vhdx", "--output=json", "t.vhdx"],
        )));
        assert_eq!(i, j, "{opts}");
        assert_eq!(j, k, "{opts}");
        assert_eq!(
            std::fs::metadata(d.join("o.vhdx")).unwrap().len(),
            std::fs::metadata(d.join("t.vhdx")).unwrap().len(),
            "{opts}: file length"
        );
        tool_ok(d, "qemu-img", &["check", "-f", "vhdx", "o.vhdx"]);
    }
    let help = vdisk_ok(d, &["create", "-f", "vhdx", "-o", "help"]);
    let theirs = tool_ok(d, "qemu-img", &["create", "-f", "vhdx", "-o", "help"]);
    assert!(theirs.starts_with(&help), "{help}\n---\n{theirs}");
    for (o, size, e) in [
        (
            "block_state_zero=maybe",
            "1M",
            "Parameter 'block_state_zero' expects 'on' or 'off'",
        ),
        ("block_size=3M", "1M", "Block size must be a power of two"),
        ("", "65T", "Image size too large; max of 64TB"),
        ("log_size=5G", "1M", "Log size must be smaller than 4 GB"),
        ("foo=1", "1M", "Invalid parameter 'foo'"),
    ] {
        let mut args = vec!["create", "-f", "vhdx"];
        if !o.is_empty() {
            args.extend(["-o", o]);
        }
        args.extend(["bad.vhdx", size]);
        for (prog, out) in [
            ("vdisk", vdisk(d, &args)),
            ("qemu-img", tool(d, "qemu-img", &args)),
        ] {
            assert!(!out.status.success(), "{prog} {o}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(e), "{prog} {o}: {err}");
        }
    }
    let o = vdisk(d, &["measure", "-O", "vhdx", "--size", "10M"]);
    let q = tool(d, "qemu-img", &["measure", "-O", "vhdx", "--size", "10M"]);
    assert_eq!(o.status.code(), q.status.code());
}

fn refused(dir: &Path, img: &str, expect: &str) {
    let start = Instant::now();
    let out = vdisk(dir, &["info", "-f", "vhdx", img]);
    assert!(start.elapsed() < Duration::from_secs(1), "{img}: slow");
    assert!(!out.status.success(), "{img}: accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{img}: {err}");
    assert!(err.contains(img) && err.contains(expect), "{img}: {err}");
}

/// Recomputes the checksum of the structure of `len` bytes at `at` (field at `at + 4`).
fn reseal(b: &mut [u8], at: usize, len: usize) {
    vdisk_vhdx::header::seal(&mut b[at..at + len], 4);
}

#[test]
fn hostile_vhdx_images_are_refused_with_one_line() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    tool_ok(
        d,
        "qemu-img",
        &[
            "create",
            "-f",
            "vhdx",
            "-o",
            "block_size=1M",
            "good.vhdx",
            "64M",
        ],
    );
    tool_ok(
        d,
        "qemu-io",
        &["-f", "vhdx", "-c", "write -P 1 0 4M", "good.vhdx"],
    );
    let good = read(&d.join("good.vhdx"));
    const RT: usize = 192 << 10;
    const H1: usize = 64 << 10;
    const H2: usize = 128 << 10;
    let bat = u64::from_le_bytes(good[RT + 32..RT + 40].try_into().unwrap()) as usize;
    let md = u64::from_le_bytes(good[RT + 64..RT + 72].try_into().unwrap()) as usize;
    let variant = |name: &str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        std::fs::write(d.join(name), b).unwrap();
    };
    variant("sig.vhdx", &|b| b[..8].copy_from_slice(b"vhdxfilX"));
    refused(d, "sig.vhdx", "Image not in VHDX format");
    variant("crc.vhdx", &|b| {
        b[H1 + 100] ^= 1;
        b[H2 + 100] ^= 1;
    });
    refused(d, "crc.vhdx", "No valid VHDX header found");
    variant("rtcrc.vhdx", &|b| b[RT + 40] ^= 1);
    refused(d, "rtcrc.vhdx", "region table checksum is wrong");
    // The BAT region moved onto the log; then past the end of the file.
    variant("overlap.vhdx", &|b| {
        b[RT + 32..RT + 40].copy_from_slice(&(1u64 << 20).to_le_bytes());
        reseal(b, RT, 64 << 10);
    });
    refused(d, "overlap.vhdx", "overlaps");
    variant("batend.vhdx", &|b| {
        b[RT + 32..RT + 40].copy_from_slice(&(1u64 << 40).to_le_bytes());
        reseal(b, RT, 64 << 10);
    });
    refused(d, "batend.vhdx", "reaches past the end of the file");
    // A BAT entry past the end, one onto the metadata, an unknown state.
    variant("entry.vhdx", &|b| {
        b[bat..bat + 8].copy_from_slice(&((1u64 << 40) | 6).to_le_bytes())
    });
    refused(d, "entry.vhdx", "points past the end of the file");
    variant("entrymd.vhdx", &|b| {
        b[bat..bat + 8].copy_from_slice(&((md as u64) | 6).to_le_bytes())
    });
    refused(d, "entrymd.vhdx", "overlaps the metadata");
    variant("state.vhdx", &|b| {
        b[bat..bat + 8].copy_from_slice(&4u64.to_le_bytes())
    });
    refused(d, "state.vhdx", "unknown block state 4");
    // Metadata items: an absurd size, a block size that is no power of two, an item
    // outside the region, an unknown required item.
    let item = |b: &[u8], n: usize| {
        md + u32::from_le_bytes(
            b[md + 32 + 32 * n + 16..md + 32 + 32 * n + 20]
                .try_into()
                .unwrap(),
        ) as usize
    };
    variant("size.vhdx", &|b| {
        let at = item(b, 1);
        b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes())
    });
    refused(d, "size.vhdx", "virtual disk size 1152921504606846976");
    variant("bigbat.vhdx", &|b| {
        let at = item(b, 1);
        b[at..at + 8].copy_from_slice(&(60u64 << 40).to_le_bytes())
    });
    refused(d, "bigbat.vhdx", "BAT");
    variant("bs.vhdx", &|b| {
        let at = item(b, 0);
        b[at..at + 4].copy_from_slice(&(3u32 << 20).to_le_bytes())
    });
    refused(d, "bs.vhdx", "block size 3145728 is not a power of two");
    variant("item.vhdx", &|b| {
        b[md + 32 + 16..md + 32 + 20].copy_from_slice(&(2u32 << 20).to_le_bytes())
    });
    refused(d, "item.vhdx", "lies outside the metadata region");
    variant("req.vhdx", &|b| {
        b[md + 32 + 5 * 32..md + 32 + 5 * 32 + 16].fill(0x42);
        b[md + 32 + 5 * 32 + 24] = 4;
        b[md + 10] = 6;
    });
    refused(d, "req.vhdx", "requires metadata item");
    std::fs::write(d.join("tiny.vhdx"), b"vhdxfile short").unwrap();
    refused(d, "tiny.vhdx", "shorter than its header section");
    // A log GUID with a log that claims the whole file: no valid entry, nothing replayed;
    // one claiming 2 GiB: refused before anything is read.
    variant("loglen.vhdx", &|b| {
        for h in [H1, H2] {
            b[h + 48..h + 64].fill(0x11);
            b[h + 68..h + 72].copy_from_slice(&(2048u32 << 20).to_le_bytes());
            reseal(b, h, 4096);
        }
    });
    refused(d, "loglen.vhdx", "log");
    for img in [
        "sig.vhdx",
        "crc.vhdx",
        "rtcrc.vhdx",
        "overlap.vhdx",
        "entry.vhdx",
        "bs.vhdx",
        "req.vhdx",
    ] {
        let out = tool(d, "qemu-img", &["info", "-f", "vhdx", img]);
        assert!(!out.status.success(), "qemu accepted {img}");
    }
}

#[test]
fn guest_commands_read_a_partition_in_a_vhdx() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir_all(d.join("root/etc")).unwrap();
    std::fs::write(d.join("root/etc/hostname"), b"vhdx-guest\n").unwrap();
    tool_ok(d, "mkfs.ext4", &["-q", "-F", "-d", "root", "fs.raw", "16M"]);
    tool_ok(d, "truncate", &["-s", "20M", "disk.raw"]);
    let sf = std::process::Command::new("sh")
        .arg("-c")
        .arg("printf 'label: dos\\nstart=2048, type=83\\n' | sfdisk -q disk.raw && dd if=fs.raw of=disk.raw bs=512 seek=2048 conv=notrunc status=none")
        .current_dir(d)
        .status()
        .unwrap();
    assert!(sf.success());
    tool_ok(
        d,
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vhdx",
            "disk.raw",
            "disk.vhdx",
        ],
    );
    let got = vdisk_ok(
        d,
        &["cat", "-a", "disk.vhdx", "-m", "/dev/sda1", "/etc/hostname"],
    );
    assert_eq!(got, "vhdx-guest\n");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args([
            "write",
            "--format",
            "vhdx",
            "-a",
            "disk.vhdx",
            "-m",
            "/dev/sda1",
            "/etc/hostname",
        ])
        .current_dir(d)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"renamed\n").unwrap();
    assert!(child.wait().unwrap().success());
    tool_ok(d, "qemu-img", &["check", "-f", "vhdx", "disk.vhdx"]);
    tool_ok(
        d,
        "qemu-img",
        &[
            "convert",
            "-f",
            "vhdx",
            "-O",
            "raw",
            "disk.vhdx",
            "back.raw",
        ],
    );
    let fsck = std::process::Command::new("sh")
        .arg("-c")
        .arg("dd if=back.raw of=part.raw bs=512 skip=2048 status=none && e2fsck -fn part.raw")
        .current_dir(d)
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{fsck:?}");
    let got = vdisk_ok(
        d,
        &[
            "cat",
            "--format",
            "vhdx",
            "-a",
            "disk.vhdx",
            "-m",
            "/dev/sda1",
            "/etc/hostname",
        ],
    );
    assert_eq!(got, "renamed\n");

    // A differencing child (vdisk's, as qemu makes none): guest writes land in the child,
    // the parent stays as it was, and the child reads through to it elsewhere.
    vdisk_ok(
        d,
        &[
            "create",
            "-f",
            "vhdx",
            "-b",
            "disk.vhdx",
            "-F",
            "vhdx",
            "child.vhdx",
        ],
    );
    let info = json(&vdisk_ok(
        d,
        &["info", "-f", "vhdx", "--output=json", "child.vhdx"],
    ));
    assert_eq!(info["backing-filename"], "disk.vhdx");
    assert_eq!(info["backing-filename-format"], "vhdx");
    assert_eq!(info["virtual-size"], 20 << 20);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args([
            "write",
            "-a",
            "child.vhdx",
            "-m",
            "/dev/sda1",
            "/etc/hostname",
        ])
        .current_dir(d)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"child\n").unwrap();
    assert!(child.wait().unwrap().success());
    let cat = |img: &str| vdisk_ok(d, &["cat", "-a", img, "-m", "/dev/sda1", "/etc/hostname"]);
    assert_eq!(cat("child.vhdx"), "child\n");
    assert_eq!(cat("disk.vhdx"), "renamed\n");
    tool_ok(d, "qemu-img", &["check", "-f", "vhdx", "disk.vhdx"]);
    vdisk_ok(
        d,
        &[
            "convert",
            "-f",
            "vhdx",
            "-O",
            "raw",
            "child.vhdx",
            "child.raw",
        ],
    );
    let fsck = std::process::Command::new("sh")
        .arg("-c")
        .arg("dd if=child.raw of=cpart.raw bs=512 skip=2048 status=none && e2fsck -fn cpart.raw")
        .current_dir(d)
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{fsck:?}");
    // Outside the blocks the child now holds, it reads its parent's bytes.
    let (c, p) = (read(&d.join("child.raw")), read(&d.join("back.raw")));
    let block = 1usize << 20;
    let differ: Vec<usize> = (0..c.len() / block)
        .filter(|&i| c[i * block..(i + 1) * block] != p[i * block..(i + 1) * block])
        .collect();
    assert!(
        !differ.is_empty() && differ.len() < c.len() / block,
        "{differ:?}"
    );
    let map = json(&vdisk_ok(
        d,
        &["map", "-f", "vhdx", "--output=json", "child.vhdx"],
    ));
    let depths: Vec<u64> = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["depth"].as_u64().unwrap())
        .collect();
    assert!(depths.contains(&0) && depths.contains(&1), "{map}");
}

#[test]
fn check_repair_replays_a_crashed_log_as_qemu_does() {
    use vdisk_block::BlockDevice;
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let v = vdisk_vhdx::create(
        &d.join("w.vhdx"),
        &vdisk_vhdx::CreateOptions {
            size: 64 << 20,
            block_size: Some(1 << 20),
            ..Default::default()
        },
    )
    .unwrap();
    v.write_at(&[0x42; 65536], 5 << 20).unwrap();
    v.flush_leaving_log().unwrap();
    // The crash: the file as it is now, the log not yet applied.
    std::fs::copy(d.join("w.vhdx"), d.join("a.vhdx")).unwrap();
    std::fs::copy(d.join("w.vhdx"), d.join("b.vhdx")).unwrap();
    drop(v);
    for out in ["human", "json"] {
        if out == "json" {
            std::fs::copy(d.join("w.vhdx"), d.join("a.vhdx")).unwrap();
            std::fs::copy(d.join("w.vhdx"), d.join("b.vhdx")).unwrap();
        }
        // w.vhdx itself was flushed on drop; a and b still hold the crash.
        let o = vdisk(
            d,
            &[
                "check",
                "-r",
                "all",
                "-f",
                "vhdx",
                &format!("--output={out}"),
                "a.vhdx",
            ],
        );
        let q = tool(
            d,
            "qemu-img",
            &[
                "check",
                "-r",
                "all",
                "-f",
                "vhdx",
                &format!("--output={out}"),
                "b.vhdx",
            ],
        );
        assert_eq!(o.status.code(), q.status.code(), "{out}: {o:?} {q:?}");
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).replace("a.vhdx", "X"),
            String::from_utf8_lossy(&q.stdout).replace("b.vhdx", "X"),
            "{out}"
        );
        assert!(String::from_utf8_lossy(&q.stdout).contains("1 corruptions") || out == "json");
        let cmp = tool(
            d,
            "qemu-img",
            &["compare", "-f", "vhdx", "-F", "vhdx", "a.vhdx", "b.vhdx"],
        );
        assert!(cmp.status.success(), "{cmp:?}");
    }
    let mut want = vec![0u8; 64 << 20];
    want[5 << 20..(5 << 20) + 65536].fill(0x42);
    tool_ok(
        d,
        "qemu-img",
        &["convert", "-f", "vhdx", "-O", "raw", "a.vhdx", "a.raw"],
    );
    assert!(read(&d.join("a.raw")) == want);
}
