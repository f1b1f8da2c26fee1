//! `vdisk set-label` against the tools that own each label: fatlabel (dosfstools) on FAT12,
//! FAT16 and FAT32, e2label on ext4, xfs_admin -L on XFS. The same change made by both on
//! copies of one image leaves the same bytes (FAT: all of them, but the label entry's
//! timestamps; XFS: the secondary superblocks); the checkers are clean; blkid reads the new
//! label; labels the filesystem cannot hold are refused, by both, leaving the image as it was.

mod guest_common;

use std::path::Path;

use guest_common::{need, sh, vdisk, vdisk_ok};

fn set_label(img: &Path, label: &str) {
    vdisk_ok(&[
        "set-label",
        "-a",
        img.to_str().unwrap(),
        "--format",
        "raw",
        "/dev/sda",
        label,
    ]);
}

/// vdisk refuses `label` with one line naming the device, and the image is unchanged.
fn refused(img: &Path, label: &str, why: &str) {
    let before = std::fs::read(img).unwrap();
    let out = vdisk(&[
        "set-label",
        "-a",
        img.to_str().unwrap(),
        "--format",
        "raw",
        "/dev/sda",
        label,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{label:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{label:?}: one line: {err}");
    assert!(
        err.contains("/dev/sda") && err.contains(why),
        "{label:?}: {err}"
    );
    assert!(
        std::fs::read(img).unwrap() == before,
        "{label:?} changed the image"
    );
}

fn blkid_label(img: &Path) -> String {
    // blkid exits 2 when the tag is absent (no label).
    let out = std::process::Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "LABEL"])
        .arg(img)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// Offsets where `a` and `b` differ.
fn diffs(a: &[u8], b: &[u8]) -> Vec<usize> {
    assert_eq!(a.len(), b.len());
    (0..a.len()).filter(|&i| a[i] != b[i]).collect()
}

/// FAT: every byte equal but the timestamps (bytes 13..26) of the label's directory entry
/// (`name` and `attr` as both images hold it), which each tool stamps with its own clock.
fn assert_same_fat(a: &Path, b: &Path, name: [u8; 11], attr: u8) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    for i in diffs(&x, &y) {
        let slot = i & !31;
        let is_label = |v: &[u8]| v[slot..slot + 11] == name && v[slot + 11] == attr;
        assert!(
            is_label(&x) && is_label(&y) && (13..26).contains(&(i - slot)),
            "byte {i:#x} differs from fatlabel's: {:#x} vs {:#x}",
            x[i],
            y[i]
        );
    }
}

/// `label` as a FAT directory entry's name.
fn padded(label: &str) -> [u8; 11] {
    let mut name = [b' '; 11];
    name[..label.len()].copy_from_slice(label.as_bytes());
    name
}

#[test]
fn fat_labels_agree_with_fatlabel() {
    need(&["mkfs.vfat", "fatlabel", "fsck.fat", "blkid", "mlabel"]);
    let dir = tempfile::tempdir().unwrap();
    for (bits, mib, initial) in [
        (12, 8, None),
        (16, 32, Some("ORIG")),
        (32, 64, Some("ORIG")),
    ] {
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        let n = initial.map(|l| format!("-n {l}")).unwrap_or_default();
        sh(&format!(
            "rm -f {a}; truncate -s {mib}M {a}; mkfs.vfat -F {bits} {n} {a} >/dev/null; cp {a} {b}",
            a = a.display(),
            b = b.display()
        ));
        for label in ["Lab 2", "UPPER_11CHR", "x"] {
            sh(&format!("fatlabel {} '{label}' 2>/dev/null", a.display()));
            set_label(&b, label);
            assert_same_fat(&a, &b, padded(label), 0x08);
            assert_eq!(blkid_label(&b), label, "FAT{bits}");
            let fsck = sh(&format!("fsck.fat -n {}", b.display()));
            assert!(!fsck.contains("differ"), "FAT{bits}: {fsck}");
            let m = sh(&format!(
                "MTOOLS_SKIP_CHECK=1 mlabel -s -i {} ::",
                b.display()
            ));
            assert!(m.contains(label), "FAT{bits}: mlabel says {m}");
        }
        // Clearing: fatlabel -r deletes the entry and writes "NO NAME" in the boot sector.
        sh(&format!("fatlabel -r {}", a.display()));
        set_label(&b, "");
        let mut deleted = padded("x");
        deleted[0] = 0xE5;
        assert_same_fat(&a, &b, deleted, 0);
        assert_eq!(blkid_label(&b), "", "FAT{bits}");
        sh(&format!("fsck.fat -n {}", b.display()));
        // What fatlabel refuses, vdisk refuses, and nothing changes.
        for (bad, why) in [
            ("twelve chars", "at most 11"),
            ("a*b", "cannot hold"),
            ("semi;colon", "cannot hold"),
            (" lead", "starts with a space"),
        ] {
            let st = std::process::Command::new("fatlabel")
                .arg(&a)
                .arg(bad)
                .output()
                .unwrap();
            assert!(!st.status.success(), "fatlabel took {bad:?}");
            refused(&b, bad, why);
        }
    }
}

#[test]
fn ext4_label_agrees_with_e2label() {
    need(&["mkfs.ext4", "e2label", "e2fsck", "blkid"]);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("e.img");
    sh(&format!(
        "truncate -s 64M {i}; mkfs.ext4 -q -L old {i}",
        i = img.display()
    ));
    for label in ["sixteen-chars-ok", "root fs", ""] {
        set_label(&img, label);
        let l = sh(&format!("e2label {}", img.display()));
        assert_eq!(l.trim_end_matches('\n'), label);
        assert_eq!(blkid_label(&img), label);
        sh(&format!("e2fsck -fn {}", img.display()));
    }
    refused(&img, "seventeen-chars-x", "at most 16");
}

#[test]
fn xfs_label_agrees_with_xfs_admin() {
    need(&["mkfs.xfs", "xfs_admin", "xfs_repair", "xfs_db", "blkid"]);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    sh(&format!(
        "truncate -s 320M {a}; mkfs.xfs -q -L old {a}; cp {a} {b}",
        a = a.display(),
        b = b.display()
    ));
    let field = |name: &str| -> usize {
        sh(&format!(
            "xfs_db -r -c 'sb 0' -c 'p {name}' {}",
            a.display()
        ))
        .trim()
        .trim_start_matches(&format!("{name} = "))
        .parse()
        .unwrap()
    };
    let (agcount, agbytes) = (field("agcount"), field("agblocks") * field("blocksize"));
    assert!(agcount > 1);
    let secondaries = |p: &Path| {
        let v = std::fs::read(p).unwrap();
        (1..agcount)
            .map(|ag| v[ag * agbytes..ag * agbytes + 512].to_vec())
            .collect::<Vec<_>>()
    };
    let mkfs = secondaries(&b);
    for (label, admin) in [("twelve-chars", "twelve-chars"), ("", "--")] {
        sh(&format!("xfs_admin -L {admin} {} >/dev/null", a.display()));
        set_label(&b, label);
        assert_eq!(
            sh(&format!("xfs_admin -l {}", b.display())).trim(),
            format!("label = \"{label}\"")
        );
        assert_eq!(blkid_label(&b), label);
        // Each secondary copy: sb_fname as xfs_admin writes it, every other byte as mkfs
        // left it but the CRC (xfs_admin also rewrites the quota inode fields, as libxfs
        // serializes a superblock).
        for (ag, ((ours, theirs), orig)) in secondaries(&b)
            .iter()
            .zip(secondaries(&a))
            .zip(&mkfs)
            .enumerate()
        {
            assert_eq!(ours[108..120], theirs[108..120], "AG {} label", ag + 1);
            for i in diffs(ours, orig) {
                assert!(
                    (108..120).contains(&i) || (224..228).contains(&i),
                    "AG {}: byte {i} changed",
                    ag + 1
                );
            }
        }
        sh(&format!("xfs_repair -n {} 2>&1", b.display()));
    }
    refused(&b, "thirteen-char", "at most 12");
}
