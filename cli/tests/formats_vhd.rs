//! VHD (qemu's vpc) against qemu-img, both ways, on images made at run time: what qemu-img
//! writes reads back byte-identical through vdisk with the same `info`/`map` JSON; what vdisk
//! writes qemu-img reads back identical, with the same layout as qemu's own (footers equal
//! field by field but for time stamp, unique id and checksum); differencing disks (which
//! qemu cannot make) read through their parent; hostile images fail with one line.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// The option sets qemu-img creates VHDs with.
const VARIANTS: &[&str] = &[
    "subformat=dynamic",
    "subformat=fixed",
    "subformat=dynamic,force_size=on",
    "subformat=fixed,force_size",
];

/// A raw source with data, a zero run, more data and a hole: `size` bytes (a size that is
/// not a CHS capacity, so qemu rounds it up without force_size).
fn source(dir: &Path, name: &str, size: &str) {
    tool_ok(dir, "qemu-img", &["create", "-f", "raw", name, size]);
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
            name,
        ],
    );
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// The footer's fields that qemu makes deterministic: everything but the time stamp
/// (24..28), the checksum (64..68) and the unique id (68..84).
fn stable_footer(f: &[u8]) -> Vec<u8> {
    let mut v = f[..512].to_vec();
    v[24..28].fill(0);
    v[64..84].fill(0);
    v
}

fn footer_at_end(b: &[u8]) -> &[u8] {
    &b[b.len() - 512..]
}

fn vhd_checksum(b: &[u8], skip: usize) -> u32 {
    let mut s: u32 = 0;
    for (i, &x) in b.iter().enumerate() {
        if !(skip..skip + 4).contains(&i) {
            s = s.wrapping_add(u32::from(x));
        }
    }
    !s
}

#[test]
fn qemu_written_vhd_reads_identically() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d, "src.raw", "10M");
    for opts in VARIANTS {
        let img = "q.vhd";
        tool_ok(
            d,
            "qemu-img",
            &[
                "convert", "-f", "raw", "-O", "vpc", "-o", opts, "src.raw", img,
            ],
        );
        vdisk_ok(d, &["convert", "-f", "vpc", "-O", "raw", img, "ours.raw"]);
        tool_ok(
            d,
            "qemu-img",
            &["convert", "-f", "vpc", "-O", "raw", img, "theirs.raw"],
        );
        assert!(
            read(&d.join("ours.raw")) == read(&d.join("theirs.raw")),
            "{opts}: content differs"
        );
        let cmp = vdisk(d, &["compare", "-f", "raw", "-F", "vpc", "src.raw", img]);
        assert!(cmp.status.success(), "{opts}: {cmp:?}");
        for cmd in ["info", "map"] {
            let ours = vdisk_ok(d, &[cmd, "-f", "vpc", "--output=json", img]);
            let theirs = tool_ok(d, "qemu-img", &[cmd, "-f", "vpc", "--output=json", img]);
            assert_eq!(json(&ours), json(&theirs), "{opts}: {cmd} differs");
        }
        // Probing: dynamic disks have a footer copy at 0; fixed ones probe as raw in qemu too.
        let ours = json(&vdisk_ok(d, &["info", "-U", "--output=json", img]));
        let theirs = json(&tool_ok(d, "qemu-img", &["info", "--output=json", img]));
        assert_eq!(ours["format"], theirs["format"], "{opts}: probed format");
        // Into qcow2 and back out.
        vdisk_ok(d, &["convert", "-f", "vpc", "-O", "qcow2", img, "o.qcow2"]);
        let cmp = tool(
            d,
            "qemu-img",
            &["compare", "-f", "vpc", "-F", "qcow2", img, "o.qcow2"],
        );
        assert!(cmp.status.success(), "{opts}: {cmp:?}");
    }
}

#[test]
fn vdisk_written_vhd_matches_qemus_layout() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d, "src.raw", "10M");
    for opts in VARIANTS {
        vdisk_ok(
            d,
            &[
                "convert", "-f", "raw", "-O", "vpc", "-o", opts, "src.raw", "v.vhd",
            ],
        );
        tool_ok(
            d,
            "qemu-img",
            &[
                "convert", "-f", "raw", "-O", "vpc", "-o", opts, "src.raw", "q.vhd",
            ],
        );
        let cmp = tool(
            d,
            "qemu-img",
            &["compare", "-f", "raw", "-F", "vpc", "src.raw", "v.vhd"],
        );
        assert!(cmp.status.success(), "{opts}: {cmp:?}");
        tool_ok(
            d,
            "qemu-img",
            &["convert", "-f", "vpc", "-O", "raw", "v.vhd", "theirs.raw"],
        );
        vdisk_ok(
            d,
            &["convert", "-f", "vpc", "-O", "raw", "q.vhd", "ours.raw"],
        );
        assert!(
            read(&d.join("ours.raw")) == read(&d.join("theirs.raw")),
            "{opts}"
        );
        for cmd in ["info", "map"] {
            let a = json(&tool_ok(
                d,
                "qemu-img",
                &[cmd, "-f", "vpc", "--output=json", "v.vhd"],
            ));
            let b = json(&tool_ok(
                d,
                "qemu-img",
                &[cmd, "-f", "vpc", "--output=json", "q.vhd"],
            ));
            let strip = |mut v: serde_json::Value| {
                v["filename"] = 0.into();
                v["children"] = 0.into();
                v["actual-size"] = 0.into();
                v
            };
            if cmd == "info" {
                assert_eq!(strip(a), strip(b), "{opts}: qemu's info differs");
            } else {
                assert_eq!(a, b, "{opts}: qemu's map differs");
            }
        }
        // The same bytes as qemu's image but for the footer's time stamp, id and checksum.
        let (v, q) = (read(&d.join("v.vhd")), read(&d.join("q.vhd")));
        assert_eq!(v.len(), q.len(), "{opts}: file length");
        assert_eq!(
            stable_footer(footer_at_end(&v)),
            stable_footer(footer_at_end(&q)),
            "{opts}: footer"
        );
        let fixed = opts.contains("fixed");
        let mut v2 = v.clone();
        let mut q2 = q.clone();
        let mut zero = |at: usize| {
            for b in [&mut v2, &mut q2] {
                b[at + 24..at + 28].fill(0);
                b[at + 64..at + 84].fill(0);
            }
        };
        zero(v.len() - 512);
        if !fixed {
            zero(0);
        }
        assert!(
            v2 == q2,
            "{opts}: files differ beyond the footer's volatile fields"
        );
        // The checksum is right (qemu opened it), and the footer copy equals the footer.
        if !fixed {
            assert_eq!(&v[..512], footer_at_end(&v), "{opts}: footer copy");
        }
        let f = footer_at_end(&v);
        assert_eq!(
            u32::from_be_bytes(f[64..68].try_into().unwrap()),
            vhd_checksum(&f[..512], 64)
        );
    }
    // Azure: a fixed VHD whose size is a whole number of MiB.
    let f = read(&d.join("v.vhd"));
    assert_eq!(f.len() as u64, (10 << 20) + 512);
    assert_eq!(&f[f.len() - 512 + 28..f.len() - 512 + 32], b"qem2");
}

#[test]
fn create_matches_qemu() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for (opts, size) in [
        ("", "64M"),
        ("subformat=fixed", "7M"),
        ("force_size=on,subformat=dynamic", "100M"),
        ("subformat=fixed,force_size", "33M"),
        ("force_size=off", "1G"),
        ("", "200G"),
    ] {
        let mut args = vec!["create", "-f", "vpc"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        let ours: Vec<&str> = args.iter().copied().chain(["o.vhd", size]).collect();
        let theirs: Vec<&str> = args.iter().copied().chain(["t.vhd", size]).collect();
        let a = vdisk_ok(d, &ours).replace("o.vhd", "X");
        let b = tool_ok(d, "qemu-img", &theirs).replace("t.vhd", "X");
        assert_eq!(a, b, "Formatting line for {opts:?}");
        let mut i = json(&vdisk_ok(
            d,
            &["info", "-f", "vpc", "--output=json", "o.vhd"],
        ));
        let mut j = json(&tool_ok(
            d,
            "qemu-img",
            &["info", "-f", "vpc", "--output=json", "o.vhd"],
        ));
        let mut k = json(&tool_ok(
            d,
            "qemu-img",
            &["info", "-f", "vpc", "--output=json", "t.vhd"],
        ));
        for v in [&mut i, &mut j, &mut k] {
            v["filename"] = 0.into();
            v["children"] = 0.into();
        }
        assert_eq!(i, j, "info of a new image with {opts:?}");
        assert_eq!(j, k, "qemu's and our new images with {opts:?}");
        let (o, t) = (read(&d.join("o.vhd")), read(&d.join("t.vhd")));
        assert_eq!(
            stable_footer(footer_at_end(&o)),
            stable_footer(footer_at_end(&t))
        );
    }
    let help = vdisk_ok(d, &["create", "-f", "vpc", "-o", "help"]);
    let theirs = tool_ok(d, "qemu-img", &["create", "-f", "vpc", "-o", "help"]);
    assert!(theirs.starts_with(&help), "{help}\n---\n{theirs}");
    for (o, size, e) in [
        (
            "subformat=foo",
            "1M",
            "Parameter 'subformat' does not accept value 'foo'",
        ),
        (
            "force_size=maybe",
            "1M",
            "Parameter 'force_size' expects 'on' or 'off'",
        ),
        (
            "",
            "3000G",
            "The image size is too large for file format 'vpc'",
        ),
    ] {
        let mut args = vec!["create", "-f", "vpc"];
        if !o.is_empty() {
            args.extend(["-o", o]);
        }
        args.extend(["bad.vhd", size]);
        let out = vdisk(d, &args);
        assert!(!out.status.success(), "{o}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(e), "{o}: {err}");
    }
    // qemu has no check, resize or measure for vpc: refused with its words and exit codes.
    vdisk_ok(d, &["create", "-f", "vpc", "r.vhd", "10M"]);
    for (args, code, e) in [
        (
            &["check", "-f", "vpc", "r.vhd"][..],
            63,
            "This image format does not support checks",
        ),
        (
            &["resize", "-f", "vpc", "r.vhd", "20M"][..],
            1,
            "Image format driver does not support resize",
        ),
        (
            &["measure", "-O", "vpc", "--size", "10M"][..],
            1,
            "Block driver 'vpc' does not support size measurement",
        ),
    ] {
        let ours = vdisk(d, args);
        let theirs = tool(d, "qemu-img", args);
        assert_eq!(ours.status.code(), Some(code), "{args:?}");
        assert_eq!(theirs.status.code(), Some(code), "{args:?}");
        assert!(
            String::from_utf8_lossy(&ours.stderr).contains(e),
            "{args:?}"
        );
    }
    // measure of a VHD source works (into qcow2).
    let a = vdisk_ok(d, &["measure", "-f", "vpc", "-O", "qcow2", "r.vhd"]);
    let b = tool_ok(
        d,
        "qemu-img",
        &["measure", "-f", "vpc", "-O", "qcow2", "r.vhd"],
    );
    assert_eq!(a, b);
}

/// Runs vdisk info on a hostile image: it must fail fast with one line naming the file.
fn refused(dir: &Path, img: &str, expect: &str) {
    let start = Instant::now();
    let out = vdisk(dir, &["info", "-f", "vpc", img]);
    assert!(start.elapsed() < Duration::from_secs(1), "{img}: slow");
    assert!(!out.status.success(), "{img}: accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{img}: {err}");
    assert!(err.contains(img) && err.contains(expect), "{img}: {err}");
}

/// Writes `to`: `from` with `bytes` at `at`, then the footer (copy and end) or the dynamic
/// header checksums fixed up as `fix` says, so only the field under test is wrong.
fn patch(dir: &Path, from: &str, to: &str, edits: &[(usize, &[u8])], fix: &[usize]) {
    let mut b = read(&dir.join(from));
    for (at, bytes) in edits {
        b[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    for &at in fix {
        let (len, sum) = if &b[at..at + 8] == b"cxsparse" {
            (1024, 36)
        } else {
            (512, 64)
        };
        let c = vhd_checksum(&b[at..at + len], sum);
        b[at + sum..at + sum + 4].copy_from_slice(&c.to_be_bytes());
    }
    std::fs::write(dir.join(to), b).unwrap();
}

#[test]
fn hostile_vhd_images_are_refused_with_one_line() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    tool_ok(d, "qemu-img", &["create", "-f", "vpc", "good.vhd", "64M"]);
    tool_ok(
        d,
        "qemu-io",
        &["-f", "vpc", "-c", "write -P 1 0 4M", "good.vhd"],
    );
    let len = read(&d.join("good.vhd")).len();
    let end = len - 512;
    // Footer checksum broken (qemu: "Incorrect header checksum").
    patch(d, "good.vhd", "sum.vhd", &[(40, &[9])], &[]);
    refused(d, "sum.vhd", "footer checksum");
    // Dynamic header checksum broken.
    patch(d, "good.vhd", "hsum.vhd", &[(512 + 100, &[9])], &[]);
    refused(d, "hsum.vhd", "dynamic disk header checksum");
    // Block size not a power of two.
    patch(
        d,
        "good.vhd",
        "bs.vhd",
        &[(512 + 32, &3_000_000u32.to_be_bytes())],
        &[512],
    );
    refused(d, "bs.vhd", "Invalid block size 3000000");
    // Huge max table entries: refused before any allocation.
    patch(
        d,
        "good.vhd",
        "mte.vhd",
        &[(512 + 28, &0x7fff_ffffu32.to_be_bytes())],
        &[512],
    );
    refused(d, "mte.vhd", "entries");
    // Too few table entries for the disk.
    patch(
        d,
        "good.vhd",
        "few.vhd",
        &[(512 + 28, &1u32.to_be_bytes())],
        &[512],
    );
    refused(d, "few.vhd", "Page table too small");
    // BAT entry past the end of the file.
    patch(
        d,
        "good.vhd",
        "bat.vhd",
        &[(1536, &0x00ff_0000u32.to_be_bytes())],
        &[],
    );
    refused(d, "bat.vhd", "BAT entry 0 points past the end of the file");
    // BAT itself past the end.
    patch(
        d,
        "good.vhd",
        "tab.vhd",
        &[(512 + 16, &(1u64 << 40).to_be_bytes())],
        &[512],
    );
    refused(d, "tab.vhd", "reaches past the end of the file");
    // Header offset past the end (both footers say so).
    let far = (1u64 << 50).to_be_bytes();
    patch(
        d,
        "good.vhd",
        "hdr.vhd",
        &[(16, &far), (end + 16, &far)],
        &[0, end],
    );
    refused(d, "hdr.vhd", "lies beyond the end of the file");
    // Absurd size (more than 2040 GiB), with a creator that uses Current Size.
    let huge = (4u64 << 40).to_be_bytes();
    patch(
        d,
        "good.vhd",
        "huge.vhd",
        &[(28, b"win "), (48, &huge)],
        &[0],
    );
    refused(d, "huge.vhd", "larger than VHD's limit");
    // Unknown disk type.
    patch(
        d,
        "good.vhd",
        "type.vhd",
        &[(60, &7u32.to_be_bytes())],
        &[0],
    );
    refused(d, "type.vhd", "VHD disk type 7");
    // Truncated: the allocated block no longer fits.
    let b = read(&d.join("good.vhd"));
    std::fs::write(d.join("short.vhd"), &b[..len - 1024 * 1024]).unwrap();
    refused(d, "short.vhd", "points past the end of the file");
    // No footer at all.
    std::fs::write(d.join("none.vhd"), vec![0u8; 4096]).unwrap();
    refused(d, "none.vhd", "invalid VPC image");
    std::fs::write(d.join("tiny.vhd"), b"conectix").unwrap();
    refused(d, "tiny.vhd", "File too small for a VHD header");
    // qemu refuses the same images (it does not check the dynamic header's checksum).
    for img in [
        "sum.vhd",
        "bs.vhd",
        "few.vhd",
        "bat.vhd",
        "short.vhd",
        "none.vhd",
    ] {
        let out = tool(d, "qemu-img", &["info", "-f", "vpc", img]);
        assert!(!out.status.success(), "qemu accepted {img}");
    }
}

/// The BAT entry of block `i` of a dynamic VHD made by qemu or vdisk (BAT at 1536).
fn bat_entry(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(b[1536 + 4 * i..1540 + 4 * i].try_into().unwrap())
}

#[test]
fn differencing_vhd_reads_through_its_parent() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d, "base.raw", "10M");
    tool_ok(
        d,
        "qemu-img",
        &["convert", "-f", "raw", "-O", "vpc", "base.raw", "base.vhd"],
    );
    // What the child should read: the base with a few writes over it, some inside blocks.
    tool_ok(
        d,
        "qemu-img",
        &[
            "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "ov.qcow2",
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
    // A differencing VHD over base.vhd holding the overlay's clusters.
    vdisk_ok(
        d,
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "vpc",
            "-B",
            "base.vhd",
            "-F",
            "vpc",
            "ov.qcow2",
            "child.vhd",
        ],
    );
    let info = json(&vdisk_ok(
        d,
        &["info", "-f", "vpc", "--output=json", "child.vhd"],
    ));
    assert_eq!(info["backing-filename"], "base.vhd");
    assert_eq!(info["backing-filename-format"], "vpc");
    assert_eq!(
        info["virtual-size"],
        json(&tool_ok(
            d,
            "qemu-img",
            &["info", "--output=json", "base.vhd"]
        ))["virtual-size"]
    );
    let chain = json(&vdisk_ok(
        d,
        &[
            "info",
            "-f",
            "vpc",
            "--backing-chain",
            "--output=json",
            "child.vhd",
        ],
    ));
    assert_eq!(chain.as_array().unwrap().len(), 2);
    let cmp = vdisk(
        d,
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "vpc",
            "ov.qcow2",
            "child.vhd",
        ],
    );
    assert!(cmp.status.success(), "{cmp:?}");
    vdisk_ok(
        d,
        &["convert", "-f", "vpc", "-O", "raw", "child.vhd", "ours.raw"],
    );
    tool_ok(
        d,
        "qemu-img",
        &[
            "convert", "-f", "qcow2", "-O", "raw", "ov.qcow2", "want.raw",
        ],
    );
    let ours = read(&d.join("ours.raw"));
    let want = read(&d.join("want.raw"));
    assert!(ours[..want.len()] == want[..] && ours[want.len()..].iter().all(|&b| b == 0));
    // qemu reads a differencing VHD as a lone dynamic disk: the blocks the child holds
    // (copied whole from the parent, every bitmap bit set) are the same there.
    tool_ok(
        d,
        "qemu-img",
        &["convert", "-f", "vpc", "-O", "raw", "child.vhd", "qemu.raw"],
    );
    let q = read(&d.join("qemu.raw"));
    let c = read(&d.join("child.vhd"));
    let block = 2 << 20;
    let mut held = 0;
    for (i, chunk) in q.chunks(block).enumerate() {
        if bat_entry(&c, i) != u32::MAX {
            held += 1;
            assert!(
                chunk == &ours[i * block..i * block + chunk.len()],
                "block {i}"
            );
        } else {
            assert!(chunk.iter().all(|&b| b == 0), "block {i}");
        }
    }
    assert_eq!(held, 3, "blocks 0, 3 and 4 hold the writes");
    // map: the held blocks are data in the child, the rest the parent's.
    let map = json(&vdisk_ok(
        d,
        &["map", "-f", "vpc", "--output=json", "child.vhd"],
    ));
    let depth1 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["depth"] == 1 && m["data"] == true)
        .count();
    assert!(depth1 > 0, "{map}");

    // A sector whose bitmap bit is clear reads from the parent, whatever the block holds.
    let mut b = c.clone();
    let at = bat_entry(&b, 0) as usize * 512;
    b[at] &= 0x7f; // sector 0 of block 0: the parent's
    b[at + 512..at + 1024].fill(0xee); // its data in the child: garbage
    std::fs::write(d.join("bits.vhd"), &b).unwrap();
    vdisk_ok(
        d,
        &["convert", "-f", "vpc", "-O", "raw", "bits.vhd", "bits.raw"],
    );
    let got = read(&d.join("bits.raw"));
    assert!(
        got[..512].iter().all(|&x| x == 0x5a),
        "sector 0 from the parent"
    );
    assert!(got[512..1024] == ours[512..1024]);
    // Writing into that block first fills the parent's sectors, then sets every bit.
    vdisk_ok(
        d,
        &[
            "convert", "-n", "-f", "raw", "-O", "vpc", "want.raw", "bits.vhd",
        ],
    );
    let cmp = vdisk(
        d,
        &["compare", "-f", "raw", "-F", "vpc", "want.raw", "bits.vhd"],
    );
    assert!(cmp.status.success(), "{cmp:?}");
    let b = read(&d.join("bits.vhd"));
    let at = bat_entry(&b, 0) as usize * 512;
    assert!(b[at..at + 512].iter().all(|&x| x == 0xff));

    // Without locators the parent is found by the header's Parent Unicode Name; with neither,
    // the child is refused.
    let mut b = c.clone();
    for i in 0..8 {
        b[512 + 576 + 24 * i..512 + 580 + 24 * i].fill(0);
    }
    let sum = vhd_checksum(&b[512..1536], 36);
    b[512 + 36..512 + 40].copy_from_slice(&sum.to_be_bytes());
    std::fs::write(d.join("name.vhd"), &b).unwrap();
    let cmp = vdisk(
        d,
        &[
            "compare", "-f", "qcow2", "-F", "vpc", "ov.qcow2", "name.vhd",
        ],
    );
    assert!(cmp.status.success(), "{cmp:?}");
    b[512 + 64..512 + 576].fill(0);
    let sum = vhd_checksum(&b[512..1536], 36);
    b[512 + 36..512 + 40].copy_from_slice(&sum.to_be_bytes());
    std::fs::write(d.join("orphan.vhd"), &b).unwrap();
    refused(d, "orphan.vhd", "names no parent");
    // The absolute locator alone (the child moved away from its parent's directory).
    std::fs::create_dir(d.join("moved")).unwrap();
    let mut b = c.clone();
    b[512 + 576..512 + 580].fill(0); // the first (relative) locator gone
    let sum = vhd_checksum(&b[512..1536], 36);
    b[512 + 36..512 + 40].copy_from_slice(&sum.to_be_bytes());
    std::fs::write(d.join("moved/abs.vhd"), &b).unwrap();
    let cmp = vdisk(
        d,
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "vpc",
            "ov.qcow2",
            "moved/abs.vhd",
        ],
    );
    assert!(cmp.status.success(), "{cmp:?}");

    // create -b: a new child reads as its parent.
    vdisk_ok(
        d,
        &[
            "create", "-f", "vpc", "-b", "base.vhd", "-F", "vpc", "new.vhd",
        ],
    );
    let cmp = vdisk(
        d,
        &["compare", "-f", "vpc", "-F", "vpc", "base.vhd", "new.vhd"],
    );
    assert!(cmp.status.success(), "{cmp:?}");
    let out = vdisk(
        d,
        &[
            "create", "-f", "vpc", "-b", "base.raw", "-F", "raw", "bad.vhd",
        ],
    );
    assert!(!out.status.success());
}

#[test]
fn guest_commands_read_and_write_a_vhd() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir(d.join("root")).unwrap();
    std::fs::write(d.join("root/hostname"), b"vhd-guest\n").unwrap();
    tool_ok(d, "mkfs.ext4", &["-q", "-F", "-d", "root", "fs.raw", "16M"]);
    for sub in ["dynamic", "fixed"] {
        let img = format!("{sub}.vhd");
        tool_ok(
            d,
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "vpc",
                "-o",
                &format!("subformat={sub}"),
                "fs.raw",
                &img,
            ],
        );
        let got = vdisk_ok(
            d,
            &[
                "cat",
                "--format",
                "vpc",
                "-a",
                &img,
                "-m",
                "/dev/sda",
                "/hostname",
            ],
        );
        assert_eq!(got, "vhd-guest\n", "{sub}");
    }
    // A write through the guest commands into a differencing child: the parent stays as it
    // was, e2fsck is clean on the child's content, and qemu reads the base unchanged.
    tool_ok(
        d,
        "qemu-img",
        &["convert", "-f", "raw", "-O", "vpc", "fs.raw", "base.vhd"],
    );
    let before = read(&d.join("base.vhd"));
    vdisk_ok(
        d,
        &[
            "create",
            "-f",
            "vpc",
            "-b",
            "base.vhd",
            "-F",
            "vpc",
            "child.vhd",
        ],
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args([
            "write",
            "--format",
            "vpc",
            "-a",
            "child.vhd",
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
            "vpc",
            "-a",
            "child.vhd",
            "-m",
            "/dev/sda",
            "/hostname",
        ],
    );
    assert_eq!(got, "renamed\n");
    let got = vdisk_ok(
        d,
        &[
            "cat",
            "--format",
            "vpc",
            "-a",
            "base.vhd",
            "-m",
            "/dev/sda",
            "/hostname",
        ],
    );
    assert_eq!(got, "vhd-guest\n");
    assert!(
        read(&d.join("base.vhd")) == before,
        "the parent was written"
    );
    vdisk_ok(
        d,
        &["convert", "-f", "vpc", "-O", "raw", "child.vhd", "back.raw"],
    );
    tool_ok(d, "e2fsck", &["-fn", "back.raw"]);
}

/// Unmounts on drop, so a failing test leaves nothing mounted.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let d = self.0.to_str().unwrap().to_string();
        let ok = vdisk(Path::new("/"), &["umount", &d]).status.success();
        if !ok {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

#[test]
fn mount_a_differencing_vhd_read_write() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir(d.join("root")).unwrap();
    std::fs::write(d.join("root/hello"), b"hi-vhd\n").unwrap();
    tool_ok(d, "mkfs.ext4", &["-q", "-F", "-d", "root", "fs.raw", "16M"]);
    tool_ok(
        d,
        "qemu-img",
        &["convert", "-f", "raw", "-O", "vpc", "fs.raw", "base.vhd"],
    );
    let before = read(&d.join("base.vhd"));
    vdisk_ok(
        d,
        &[
            "create",
            "-f",
            "vpc",
            "-b",
            "base.vhd",
            "-F",
            "vpc",
            "child.vhd",
        ],
    );
    std::fs::create_dir(d.join("mnt")).unwrap();
    let mnt = d.join("mnt");
    {
        vdisk_ok(
            d,
            &[
                "mount",
                "--format",
                "vpc",
                "-a",
                "child.vhd",
                "-m",
                "/dev/sda",
                "mnt",
            ],
        );
        let _guard = Mounted(mnt.clone());
        assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"hi-vhd\n");
        std::fs::write(mnt.join("new"), b"written through FUSE\n").unwrap();
    }
    assert!(
        read(&d.join("base.vhd")) == before,
        "the parent was written"
    );
    let got = vdisk_ok(
        d,
        &[
            "cat",
            "--format",
            "vpc",
            "-a",
            "child.vhd",
            "-m",
            "/dev/sda",
            "/new",
        ],
    );
    assert_eq!(got, "written through FUSE\n");
    vdisk_ok(
        d,
        &["convert", "-f", "vpc", "-O", "raw", "child.vhd", "back.raw"],
    );
    tool_ok(d, "e2fsck", &["-fn", "back.raw"]);
}

#[test]
fn virtual_size_follows_the_creator_as_qemu_reads_it() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // A dynamic disk whose geometry holds 8 MiB + 8 KiB while Current Size says 8 MiB; a
    // fixed one the same way (its data area holds the larger size).
    tool_ok(d, "qemu-img", &["create", "-f", "vpc", "dyn.vhd", "8M"]);
    tool_ok(
        d,
        "qemu-img",
        &[
            "create",
            "-f",
            "vpc",
            "-o",
            "subformat=fixed",
            "fix.vhd",
            "8M",
        ],
    );
    for (base, fixed) in [("dyn.vhd", false), ("fix.vhd", true)] {
        for (i, app) in [
            *b"vpc ", *b"qemu", *b"qem2", *b"win ", *b"d2v ", *b"wa\0\0", *b"tap\0", *b"xyz ",
        ]
        .iter()
        .enumerate()
        {
            let mut b = read(&d.join(base));
            let len = b.len();
            let mut at = vec![len - 512];
            if !fixed {
                at.push(0);
            }
            for &f in &at {
                b[f + 28..f + 32].copy_from_slice(app);
                b[f + 48..f + 56].copy_from_slice(&(8u64 << 20).to_be_bytes());
                let c = vhd_checksum(&b[f..f + 512], 64);
                b[f + 64..f + 68].copy_from_slice(&c.to_be_bytes());
            }
            let img = format!("c{i}-{base}");
            std::fs::write(d.join(&img), &b).unwrap();
            let ours = json(&vdisk_ok(d, &["info", "-f", "vpc", "--output=json", &img]));
            let theirs = json(&tool_ok(
                d,
                "qemu-img",
                &["info", "-f", "vpc", "--output=json", &img],
            ));
            assert_eq!(
                ours["virtual-size"], theirs["virtual-size"],
                "{img} {app:?}"
            );
            vdisk_ok(d, &["convert", "-f", "vpc", "-O", "raw", &img, "o.raw"]);
            tool_ok(
                d,
                "qemu-img",
                &["convert", "-f", "vpc", "-O", "raw", &img, "t.raw"],
            );
            assert!(read(&d.join("o.raw")) == read(&d.join("t.raw")), "{img}");
        }
    }
}
