//! `vdisk check` against `qemu-img check` on images made by qemu and damaged on purpose:
//! stdout, stderr (qemu's "qemu-img: " prefix read as ours), exit code, and the repaired
//! file's bytes (or, where the refcounts are rebuilt, qemu-img's verdict on our repair).

mod common;

use std::path::Path;

use common::{tool, tool_ok, vdisk};

fn be64(b: &[u8], at: u64) -> u64 {
    u64::from_be_bytes(b[at as usize..at as usize + 8].try_into().unwrap())
}

/// Damages the image in place: `kind` names the damage.
fn damage(path: &Path, kind: &str) {
    let mut b = std::fs::read(path).unwrap();
    let cb = u32::from_be_bytes(b[20..24].try_into().unwrap());
    let l1 = be64(&b, 40);
    let rt = be64(&b, 48);
    let rb = be64(&b, rt) & !511;
    let l2 = be64(&b, l1) & 0x00ff_ffff_ffff_fe00;
    let put = |b: &mut Vec<u8>, at: u64, v: u64| {
        b[at as usize..at as usize + 8].copy_from_slice(&v.to_be_bytes())
    };
    let setrc = |b: &mut Vec<u8>, c: u64, v: u16| {
        b[(rb + 2 * c) as usize..(rb + 2 * c + 2) as usize].copy_from_slice(&v.to_be_bytes())
    };
    match kind {
        "none" => {}
        "leak" => setrc(&mut b, 40, 1),
        "copied" => {
            let e = be64(&b, l2);
            put(&mut b, l2, e & !(1 << 63));
            let e = be64(&b, l1);
            put(&mut b, l1, e & !(1 << 63));
        }
        "zero-rc" => {
            let e = be64(&b, l2 + 8) & 0x00ff_ffff_ffff_fe00;
            setrc(&mut b, e >> cb, 0);
        }
        "l2-rc" => setrc(&mut b, l2 >> cb, 0),
        "outside" => put(&mut b, l2 + 16, (1 << 63) | (1 << 40)),
        "unaligned" => {
            let e = be64(&b, l2 + 24);
            put(&mut b, l2 + 24, e | 0x200);
        }
        "double" => {
            let e = be64(&b, l2 + 8);
            put(&mut b, l2 + 32, e);
        }
        _ => unreachable!(),
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn check_and_repair_match_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "base.qcow2", "64M"],
    );
    tool_ok(
        d,
        "qemu-io",
        &[
            "-c",
            "write -P 1 0 1M",
            "-c",
            "write -c 4M 64k",
            "-c",
            "write -z 8M 64k",
            "base.qcow2",
        ],
    );
    tool_ok(d, "qemu-img", &["snapshot", "-c", "s1", "base.qcow2"]);
    tool_ok(d, "qemu-io", &["-c", "write -P 2 0 128k", "base.qcow2"]);
    let kinds = [
        "none",
        "leak",
        "copied",
        "zero-rc",
        "l2-rc",
        "outside",
        "unaligned",
        "double",
    ];
    let modes: [&[&str]; 4] = [&[], &["--output=json"], &["-r", "leaks"], &["-r", "all"]];
    for kind in kinds {
        for mode in modes {
            std::fs::copy(d.join("base.qcow2"), d.join("ours.qcow2")).unwrap();
            damage(&d.join("ours.qcow2"), kind);
            std::fs::copy(d.join("ours.qcow2"), d.join("theirs.qcow2")).unwrap();
            let mut a = vec!["check", "-f", "qcow2"];
            a.extend_from_slice(mode);
            let ours = vdisk(d, &[a.clone(), vec!["ours.qcow2"]].concat());
            let theirs = tool(d, "qemu-img", &[a, vec!["theirs.qcow2"]].concat());
            let what = format!("{kind} {mode:?}");
            let out = |o: &std::process::Output| {
                String::from_utf8_lossy(&o.stdout).replace("theirs.qcow2", "ours.qcow2")
            };
            assert_eq!(out(&ours), out(&theirs), "{what}: stdout");
            let err_t = String::from_utf8_lossy(&theirs.stderr).replace("qemu-img: ", "vdisk: ");
            assert_eq!(
                String::from_utf8_lossy(&ours.stderr),
                err_t,
                "{what}: stderr"
            );
            assert_eq!(
                ours.status.code(),
                theirs.status.code(),
                "{what}: exit code"
            );
            if mode.first() == Some(&"-r") {
                let same = std::fs::read(d.join("ours.qcow2")).unwrap()
                    == std::fs::read(d.join("theirs.qcow2")).unwrap();
                if !same {
                    // A rebuilt refcount structure may sit elsewhere; qemu must find it clean.
                    let c = tool(d, "qemu-img", &["check", "ours.qcow2"]);
                    assert_eq!(
                        c.status.code(),
                        theirs.status.code(),
                        "{what}: qemu-img check of our repair"
                    );
                }
            }
        }
    }
}

#[test]
fn raw_images_do_not_support_checks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(d, "qemu-img", &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    let o = vdisk(d, &["check", "-f", "raw", "r.raw"]);
    assert_eq!(o.status.code(), Some(63));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "vdisk: This image format does not support checks\n"
    );
}

/// An active L1 table, or a snapshot's, whose offset lies past the end of the file: qemu opens
/// the image (the table reads as zeros), counts the corruption and the clusters it leaves
/// unreferenced, exits 2, and `-r` repairs what can be repaired. vdisk must say the same, exit
/// the same, and leave an image that qemu-img check judges as it judges qemu's own repair.
#[test]
fn l1_tables_past_the_end_match_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "base.qcow2", "64M"],
    );
    tool_ok(d, "qemu-io", &["-c", "write -P 1 0 128k", "base.qcow2"]);
    tool_ok(d, "qemu-img", &["snapshot", "-c", "s1", "base.qcow2"]);
    tool_ok(d, "qemu-io", &["-c", "write -P 2 0 64k", "base.qcow2"]);
    let base = std::fs::read(d.join("base.qcow2")).unwrap();
    let past_end = (base.len() as u64).next_multiple_of(1 << 16) + (16 << 20);
    let snapshots = be64(&base, 64);
    let modes: [&[&str]; 4] = [&[], &["--output=json"], &["-r", "leaks"], &["-r", "all"]];
    for (kind, at) in [("active L1", 40), ("snapshot L1", snapshots)] {
        for mode in modes {
            let mut b = base.clone();
            b[at as usize..at as usize + 8].copy_from_slice(&past_end.to_be_bytes());
            std::fs::write(d.join("ours.qcow2"), &b).unwrap();
            std::fs::write(d.join("theirs.qcow2"), &b).unwrap();
            let mut a = vec!["check", "-f", "qcow2"];
            a.extend_from_slice(mode);
            let ours = vdisk(d, &[a.clone(), vec!["ours.qcow2"]].concat());
            let theirs = tool(d, "qemu-img", &[a, vec!["theirs.qcow2"]].concat());
            let what = format!("{kind} {mode:?}");
            let text = |v: &[u8]| {
                String::from_utf8_lossy(v)
                    .replace("theirs.qcow2", "ours.qcow2")
                    .replace("qemu-img: ", "vdisk: ")
            };
            assert_eq!(text(&ours.stdout), text(&theirs.stdout), "{what}: stdout");
            assert_eq!(text(&ours.stderr), text(&theirs.stderr), "{what}: stderr");
            assert_eq!(theirs.status.code(), Some(2), "{what}: qemu's exit code");
            assert_eq!(ours.status.code(), Some(2), "{what}: exit code");
            if mode.first() == Some(&"-r") {
                let after = |f: &str| {
                    let o = tool(d, "qemu-img", &["check", f]);
                    (o.status.code(), text(&o.stdout).replace(f, "IMG"))
                };
                assert_eq!(
                    after("ours.qcow2"),
                    after("theirs.qcow2"),
                    "{what}: qemu-img check after the repair"
                );
            }
        }
    }
}

/// Run as `qemu-img` with stdout and stderr into one pipe (as the iotests read them), a repair
/// shows what qemu's shows in the same order: qemu's stdout is fully buffered there, so the
/// second check's stderr lines come before the whole report (iotest 271).
#[test]
fn repair_report_order_in_one_pipe_as_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vdisk"), d.join("qemu-img")).unwrap();
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "base.qcow2", "64M"],
    );
    tool_ok(d, "qemu-io", &["-c", "write -P 1 0 1M", "base.qcow2"]);
    for kind in ["unaligned", "leak", "copied"] {
        let mut outs = Vec::new();
        for (prog, img) in [("./qemu-img", "ours.qcow2"), ("qemu-img", "theirs.qcow2")] {
            std::fs::copy(d.join("base.qcow2"), d.join(img)).unwrap();
            damage(&d.join(img), kind);
            let o = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{prog} check -r all {img} 2>&1; echo status $?"))
                .current_dir(d)
                .output()
                .unwrap();
            outs.push(String::from_utf8_lossy(&o.stdout).replace(img, "IMG"));
        }
        common::assert_same_lines(&outs[0], &outs[1], kind);
    }
}

/// Runs `args` with vdisk as `qemu-img` (a symlink `qemu-img` in `dir`) and with the real
/// qemu-img on twin copies of `img`: returns both (stdout, stderr, exit code), the image's
/// name replaced by IMG.
fn both_as_qemu(dir: &Path, img: &[u8], args: &[&str]) -> [(String, String, Option<i32>); 2] {
    let link = dir.join("qemu-img");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vdisk"), &link).unwrap();
    }
    [("./qemu-img", "ours.qcow2"), ("qemu-img", "theirs.qcow2")].map(|(prog, name)| {
        std::fs::write(dir.join(name), img).unwrap();
        let mut a = args.to_vec();
        a.push(name);
        let o = tool(dir, prog, &a);
        let t = |v: &[u8]| String::from_utf8_lossy(v).replace(name, "IMG");
        (t(&o.stdout), t(&o.stderr), o.status.code())
    })
}

/// A lazy-refcounts image left dirty by a killed writer: `check` reports the stale refcounts
/// and `-r all` rebuilds them with qemu's messages (iotest 039), rather than a read-write open
/// quietly repairing it first; an unknown auto-clear bit is cleared by `check -r all` as
/// qemu's writable open clears it (036).
#[test]
fn dirty_and_autoclear_images_check_as_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(
        d,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on",
            "dirty.qcow2",
            "128M",
        ],
    );
    let _ = tool(
        d,
        "qemu-io",
        &[
            "-c",
            "write -P 0x5a 0 512",
            "-c",
            "sigraise 9",
            "dirty.qcow2",
        ],
    );
    let dirty = std::fs::read(d.join("dirty.qcow2")).unwrap();
    assert_ne!(dirty[79] & 1, 0, "qemu-io left the image dirty");
    for mode in [&[][..], &["-r", "all"]] {
        let mut a = vec!["check"];
        a.extend_from_slice(mode);
        let [ours, theirs] = both_as_qemu(d, &dirty, &a);
        assert_eq!(ours, theirs, "dirty image, check {mode:?}");
    }
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "ac.qcow2", "64M"],
    );
    let mut ac = std::fs::read(d.join("ac.qcow2")).unwrap();
    ac[88] |= 0x80;
    let [ours, theirs] = both_as_qemu(d, &ac, &["check", "-r", "all"]);
    assert_eq!(ours, theirs, "unknown autoclear bit");
    let after = std::fs::read(d.join("ours.qcow2")).unwrap();
    assert_eq!(
        after[88..96],
        [0u8; 8],
        "the unknown autoclear bit is cleared"
    );
}

/// Unknown incompatible features are named as qemu names them: the feature table's names in
/// its order (a short last entry read padded with zeros), then the rest as one hex mask,
/// after qemu's "Could not open" (iotest 036).
#[test]
fn unknown_features_named_as_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(
        d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "f.qcow2", "64M"],
    );
    let base = std::fs::read(d.join("f.qcow2")).unwrap();
    for (bits, table) in [
        (1u64 << 63, None),
        (7u64 << 61, Some(b"\x00\x3fTest feature".to_vec())),
    ] {
        let mut b = base.clone();
        let inc = u64::from_be_bytes(b[72..80].try_into().unwrap()) | bits;
        b[72..80].copy_from_slice(&inc.to_be_bytes());
        // Replace the extensions after the header by the one feature table (or none).
        let hl = u32::from_be_bytes(b[100..104].try_into().unwrap()) as usize;
        let mut ext = Vec::new();
        if let Some(t) = &table {
            ext.extend_from_slice(&0x6803_f857u32.to_be_bytes());
            ext.extend_from_slice(&(t.len() as u32).to_be_bytes());
            ext.extend_from_slice(t);
            ext.resize(ext.len().next_multiple_of(8), 0);
        }
        ext.extend_from_slice(&[0u8; 8]);
        b[hl..hl + ext.len()].copy_from_slice(&ext);
        let [ours, theirs] = both_as_qemu(d, &b, &["info"]);
        assert_eq!(ours, theirs, "bits {bits:x}");
        assert!(
            theirs.1.contains("Unknown incompatible feature"),
            "{}",
            theirs.1
        );
    }
}
