//! Writing through `vdisk mount` (read-write, guestmount's default): the seed workflow
//! verbatim on a CentOS-7-like template behind a qcow2 overlay, and random operation
//! sequences through the FUSE mount mirrored on a host directory. Each is judged as a user
//! would: `qemu-img check` on the overlay, `e2fsck -fn` on the filesystem (exit 0 and no
//! complaint), a kernel loop mount showing exactly the expected tree, and backing files
//! byte-unchanged.

mod guest_common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use guest_common::*;

/// `vdisk ARGS` run in `dir` (so image names are relative, as a user types them).
fn vdisk_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run vdisk")
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sha256(p: &Path) -> String {
    sh(&format!("sha256sum {}", p.display()))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `e2fsck -fn` on bytes `range` of `image` (copied out to `scratch`): exit 0 and none of the
/// lines e2fsck prints about a problem (it exits 0 on some wrong counts).
fn assert_fsck_clean(image: &Path, range: (u64, u64), scratch: &Path, what: &str) {
    sh(&format!(
        "dd if={} of={} bs=1M skip={} count={} iflag=skip_bytes,count_bytes status=none",
        image.display(),
        scratch.display(),
        range.0,
        range.1
    ));
    let out = Command::new("e2fsck")
        .args(["-fn"])
        .arg(scratch)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let complaint = text
        .lines()
        .any(|l| l.contains("wrong") || l.contains("Fix") || l.contains("Inode"));
    assert!(
        out.status.success() && !complaint,
        "{what}: e2fsck -fn ({:?}):\n{text}",
        out.status.code()
    );
    fs::remove_file(scratch).unwrap();
}

fn qemu_img_check(image: &Path) {
    let out = Command::new("timeout")
        .args(["60", "qemu-img", "check"])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mount_rw(dir: &Path, image: &str, args: &[&str], mnt: &Path) -> VdiskMount {
    fs::create_dir_all(mnt).unwrap();
    let mut all = vec!["mount", "-a", image];
    all.extend_from_slice(args);
    all.push(mnt.to_str().unwrap());
    let out = vdisk_in(dir, &all);
    let guard = VdiskMount(mnt.to_path_buf());
    ok(out, &format!("vdisk {all:?}"));
    guard
}

fn umount(mnt: &Path) {
    ok(vdisk(&["umount", mnt.to_str().unwrap()]), "vdisk umount");
    assert!(!is_mounted(mnt));
}

const IFCFG: &str = "etc/sysconfig/network-scripts/ifcfg-eth0";

#[test]
fn seed_workflow_edits_land_in_the_overlay_and_the_kernel_sees_them() {
    need(&["qemu-img", "e2fsck", "sed", "sha256sum", "mount"]);
    let d = centos_disk();
    let dir = d.tmp.path().to_path_buf();
    // The user's names: template.raw and a fresh overlay made by vdisk.
    let template = dir.join("template.raw");
    fs::rename(&d.raw, &template).unwrap();
    fs::remove_file(&d.qcow2).unwrap();
    let before = sha256(&template);
    ok(
        vdisk_in(
            &dir,
            &[
                "create",
                "-f",
                "qcow2",
                "-b",
                "template.raw",
                "-F",
                "raw",
                "test.qcow2",
            ],
        ),
        "vdisk create",
    );
    let mnt = dir.join("modify");
    let guard = mount_rw(&dir, "test.qcow2", &["-m", "/dev/centos/root"], &mnt);
    let ifcfg = mnt.join(IFCFG);
    // sed -i: a temporary file in the same directory, renamed over the original.
    sh(&format!(
        "sed -i 's/^IPADDR=.*/IPADDR=10.20.30.40/' {}",
        ifcfg.display()
    ));
    // An editor's save: write a new file beside it, fsync, rename over.
    let text = fs::read_to_string(&ifcfg).unwrap();
    assert!(text.contains("IPADDR=10.20.30.40\n"), "{text}");
    let edited = text.replace("GATEWAY=192.168.122.1", "GATEWAY=10.20.30.1");
    let tmp = mnt.join("etc/sysconfig/network-scripts/.ifcfg-eth0.swp");
    {
        let mut f = fs::File::create(&tmp).unwrap();
        f.write_all(edited.as_bytes()).unwrap();
        f.sync_all().unwrap();
    }
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
    fs::rename(&tmp, &ifcfg).unwrap();
    assert_eq!(fs::read_to_string(&ifcfg).unwrap(), edited);
    umount(&mnt);
    drop(guard);

    // The overlay is consistent, the template untouched, and the guest's kernel would see
    // the new file on a clean filesystem.
    qemu_img_check(&dir.join("test.qcow2"));
    assert_eq!(sha256(&template), before, "template.raw changed");
    let flat = dir.join("flat.raw");
    sh(&format!(
        "cd {} && qemu-img convert -O raw test.qcow2 flat.raw",
        dir.display()
    ));
    assert_fsck_clean(&flat, d.root, &dir.join("lv.fs"), "root LV after the edit");
    let kmnt = dir.join("kernel");
    let k = KernelMount::loop_ro(&flat, d.root.0, d.root.1, &kmnt);
    assert_eq!(fs::read_to_string(kmnt.join(IFCFG)).unwrap(), edited);
    let m = fs::metadata(kmnt.join(IFCFG)).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o644);
    assert!(!kmnt
        .join("etc/sysconfig/network-scripts/.ifcfg-eth0.swp")
        .exists());
    // Everything else is as it was: the same tree as the template's, seen by the kernel.
    let mut got = snapshot(&kmnt);
    drop(k);
    let tmnt = dir.join("kernel-template");
    let t = KernelMount::loop_ro(&template, d.root.0, d.root.1, &tmnt);
    let mut want = snapshot(&tmnt);
    drop(t);
    for s in [&mut want, &mut got] {
        s.remove(IFCFG.as_bytes());
        // The directory's mtime changed with the edit.
        s.remove(b"etc/sysconfig/network-scripts".as_slice());
    }
    assert_same_tree(&got, &want, "kernel: edited overlay vs template");
}

/// xorshift64: the property test's only source of randomness, so a failing seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            Some(&v[self.below(v.len())])
        }
    }
}

/// Relative paths of the model's directories ("" = the root), regular files and symlinks.
fn model_lists(model: &Path) -> (Vec<PathBuf>, Vec<PathBuf>, Vec<PathBuf>) {
    let (mut dirs, mut files, mut links) = (vec![PathBuf::new()], vec![], vec![]);
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let mut names: Vec<_> = fs::read_dir(model.join(&rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let r = rel.join(&n);
            let ft = fs::symlink_metadata(model.join(&r)).unwrap().file_type();
            if ft.is_dir() {
                dirs.push(r.clone());
                todo.push(r);
            } else if ft.is_symlink() {
                links.push(r);
            } else {
                files.push(r);
            }
        }
    }
    (dirs, files, links)
}

/// One random operation, applied with the same calls to the model and to the mount.
fn random_op(rng: &mut Rng, roots: [&Path; 2], serial: &mut u32, log: &mut Vec<String>) {
    let (dirs, files, links) = model_lists(roots[0]);
    *serial += 1;
    let fresh = |rng: &mut Rng, serial: u32| -> PathBuf {
        let d = dirs[rng.below(dirs.len())].clone();
        d.join(format!("n{serial}-{}", "x".repeat(rng.below(3) * 40)))
    };
    let op = rng.below(15);
    let size = match rng.below(10) {
        0 => 0,
        1..=5 => rng.below(5000),
        6..=8 => rng.below(300_000),
        _ => 1_000_000 + rng.below(2_000_000),
    };
    let data = noise(rng.next(), size);
    match op {
        0 | 1 => {
            let p = fresh(rng, *serial);
            log.push(format!("create {} {size}", p.display()));
            for r in roots {
                fs::write(r.join(&p), &data).unwrap();
            }
        }
        2 => {
            let Some(p) = rng.pick(&files).cloned() else {
                return;
            };
            log.push(format!("append {} {size}", p.display()));
            for r in roots {
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .open(r.join(&p))
                    .unwrap();
                f.write_all(&data).unwrap();
            }
        }
        3 => {
            let Some(p) = rng.pick(&files).cloned() else {
                return;
            };
            let off = rng.below(3_000_000) as u64;
            log.push(format!("pwrite {} @{off} {size}", p.display()));
            for r in roots {
                let mut f = fs::OpenOptions::new().write(true).open(r.join(&p)).unwrap();
                f.seek(SeekFrom::Start(off)).unwrap();
                f.write_all(&data).unwrap();
            }
        }
        4 => {
            let Some(p) = rng.pick(&files).cloned() else {
                return;
            };
            let len = rng.below(4_000_000) as u64;
            log.push(format!("truncate {} {len}", p.display()));
            for r in roots {
                fs::OpenOptions::new()
                    .write(true)
                    .open(r.join(&p))
                    .unwrap()
                    .set_len(len)
                    .unwrap();
            }
        }
        5 => {
            let p = fresh(rng, *serial);
            log.push(format!("mkdir {}", p.display()));
            for r in roots {
                fs::create_dir(r.join(&p)).unwrap();
            }
        }
        6 => {
            let empty: Vec<_> = dirs[1..]
                .iter()
                .filter(|d| fs::read_dir(roots[0].join(d)).unwrap().next().is_none())
                .cloned()
                .collect();
            let Some(p) = rng.pick(&empty).cloned() else {
                return;
            };
            log.push(format!("rmdir {}", p.display()));
            for r in roots {
                fs::remove_dir(r.join(&p)).unwrap();
            }
        }
        7 => {
            let all: Vec<_> = files.iter().chain(&links).cloned().collect();
            let Some(p) = rng.pick(&all).cloned() else {
                return;
            };
            log.push(format!("unlink {}", p.display()));
            for r in roots {
                fs::remove_file(r.join(&p)).unwrap();
            }
        }
        8 => {
            // Rename a file: to a new name, or over another file.
            let Some(p) = rng.pick(&files).cloned() else {
                return;
            };
            let to = if rng.below(2) == 0 {
                rng.pick(&files).cloned().unwrap()
            } else {
                fresh(rng, *serial)
            };
            log.push(format!("rename {} {}", p.display(), to.display()));
            for r in roots {
                fs::rename(r.join(&p), r.join(&to)).unwrap();
            }
        }
        9 => {
            // Rename a directory somewhere not inside itself.
            let Some(p) = rng.pick(&dirs[1..]).cloned() else {
                return;
            };
            let targets: Vec<_> = dirs.iter().filter(|d| !d.starts_with(&p)).collect();
            let Some(t) = rng.pick(&targets) else { return };
            let to = t.join(format!("d{serial}"));
            log.push(format!("rename-dir {} {}", p.display(), to.display()));
            for r in roots {
                fs::rename(r.join(&p), r.join(&to)).unwrap();
            }
        }
        10 => {
            let p = fresh(rng, *serial);
            let target = if rng.below(2) == 0 {
                format!("t{}", rng.below(100))
            } else {
                format!("/long/{}", "y".repeat(60 + rng.below(200)))
            };
            log.push(format!("symlink {} -> {target}", p.display()));
            for r in roots {
                std::os::unix::fs::symlink(&target, r.join(&p)).unwrap();
            }
        }
        11 => {
            let Some(p) = rng.pick(&files).cloned() else {
                return;
            };
            let to = fresh(rng, *serial);
            log.push(format!("link {} {}", p.display(), to.display()));
            for r in roots {
                fs::hard_link(r.join(&p), r.join(&to)).unwrap();
            }
        }
        12 => {
            let all: Vec<_> = files.iter().chain(&dirs[1..]).cloned().collect();
            let Some(p) = rng.pick(&all).cloned() else {
                return;
            };
            let is_dir = dirs.contains(&p);
            let mode = (rng.below(0o7777) as u32) | if is_dir { 0o700 } else { 0 };
            let (uid, gid) = (rng.below(3000) as u32, rng.below(3000) as u32);
            log.push(format!("chmod {mode:o} chown {uid}:{gid} {}", p.display()));
            for r in roots {
                std::os::unix::fs::chown(r.join(&p), Some(uid), Some(gid)).unwrap();
                fs::set_permissions(r.join(&p), fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        13 => {
            // A burst of small files in one new directory: the directory grows an htree.
            let d = fresh(rng, *serial);
            let n = 100 + rng.below(500);
            log.push(format!("burst {} {n}", d.display()));
            for r in roots {
                fs::create_dir(r.join(&d)).unwrap();
                for i in 0..n {
                    fs::write(r.join(&d).join(format!("f{i:05}")), format!("{i}\n")).unwrap();
                }
            }
        }
        _ => {
            // Remove a directory tree.
            let Some(p) = rng.pick(&dirs[1..]).cloned() else {
                return;
            };
            log.push(format!("rm -r {}", p.display()));
            for r in roots {
                fs::remove_dir_all(r.join(&p)).unwrap();
            }
        }
    }
}

/// Gives every file in both trees the same times (through the mount: utimensat), so the
/// snapshots compare content, modes and owners and also the set times.
fn fix_times(roots: [&Path; 2]) {
    for r in roots {
        sh(&format!(
            "cd {} && find . -mindepth 1 -not -path './lost+found*' -exec touch -h -d '2020-02-03 04:05:06.789' {{}} +",
            r.display()
        ));
    }
}

/// Runs `phases` rounds of `ops` random operations, each on a fresh mount of the image
/// `images[i]` (in `dir`); checks the mount against the model after each round.
fn random_sequences(
    seed: u64,
    dir: &Path,
    images: &[(&str, &[&str])],
    ops: usize,
    model: &Path,
) -> Vec<String> {
    let mut rng = Rng(seed);
    let mut serial = 0;
    let mut log = Vec::new();
    for (image, args) in images {
        let mnt = dir.join("mnt");
        let g = mount_rw(dir, image, args, &mnt);
        for _ in 0..ops {
            random_op(&mut rng, [model, &mnt], &mut serial, &mut log);
        }
        fix_times([model, &mnt]);
        let want = snapshot(model);
        assert_same_tree(
            &snapshot(&mnt),
            &want,
            &format!("seed {seed}: FUSE vs model after {log:?}"),
        );
        umount(&mnt);
        drop(g);
    }
    log
}

fn check_kernel_sees_model(flat: &Path, size: u64, dir: &Path, model: &Path, what: &str) {
    assert_fsck_clean(flat, (0, size), &dir.join("check.fs"), what);
    let kmnt = dir.join("kernel");
    let k = KernelMount::loop_ro(flat, 0, size, &kmnt);
    assert_same_tree(&snapshot(&kmnt), &snapshot(model), what);
    drop(k);
}

fn seeds() -> Vec<u64> {
    match std::env::var("VDISK_SEED") {
        Ok(s) => vec![s.parse().unwrap()],
        Err(_) => vec![0x5eed_0001, 0x5eed_0002],
    }
}

#[test]
fn random_operations_through_fuse_on_raw_match_a_host_model() {
    need(&["mkfs.ext4", "mkfs.ext3", "mkfs.ext2", "e2fsck", "mount"]);
    // Default ext4 (4 KiB blocks, metadata_csum, 64bit, extents); ext3 with 1 KiB blocks
    // (block-mapped files with double-indirect blocks, a journal); ext2.
    for (kind, mkfs) in [
        ("ext4", "mkfs.ext4 -q -F"),
        ("ext3-1k", "mkfs.ext3 -q -F -b 1024"),
        ("ext2", "mkfs.ext2 -q -F"),
    ] {
        for seed in seeds() {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            let model = dir.join("model");
            fs::create_dir_all(model.join("etc")).unwrap();
            fs::write(model.join("etc/hostname"), "model\n").unwrap();
            fix_times([&model, &model]);
            let size = 256 * MIB;
            sh(&format!(
                "cd {} && {mkfs} -d model fs.raw {}k",
                dir.display(),
                size / 1024
            ));
            let log = random_sequences(
                seed,
                dir,
                &[("fs.raw", &["--format", "raw", "-m", "/dev/sda"])],
                120,
                &model,
            );
            check_kernel_sees_model(
                &dir.join("fs.raw"),
                size,
                dir,
                &model,
                &format!("seed {seed} {kind} raw: kernel vs model after {log:?}"),
            );
        }
    }
}

#[test]
fn random_operations_through_fuse_on_a_three_deep_qcow2_chain_match_a_host_model() {
    need(&["mkfs.ext4", "e2fsck", "mount", "qemu-img"]);
    for seed in seeds() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let model = dir.join("model");
        fs::create_dir_all(model.join("etc")).unwrap();
        fs::write(model.join("etc/hostname"), "model\n").unwrap();
        fix_times([&model, &model]);
        let size = 128 * MIB;
        // CentOS 7's features and 1 KiB blocks, under three overlays, each written in turn.
        sh(&format!(
            "cd {} && mkfs.ext4 -q -F -b 1024 -O ^metadata_csum,^64bit -d model base.raw {}k
             qemu-img create -q -f qcow2 -b base.raw -F raw l1.qcow2
             qemu-img create -q -f qcow2 -b l1.qcow2 -F qcow2 l2.qcow2
             qemu-img create -q -f qcow2 -b l2.qcow2 -F qcow2 top.qcow2",
            dir.display(),
            size / 1024
        ));
        let base = sha256(&dir.join("base.raw"));
        let (l1, l2) = (sha256(&dir.join("l1.qcow2")), sha256(&dir.join("l2.qcow2")));
        let args: &[&str] = &["--format", "qcow2", "-m", "/dev/sda"];
        let log = random_sequences(
            seed,
            dir,
            &[("top.qcow2", args), ("top.qcow2", args)],
            80,
            &model,
        );
        assert_eq!(sha256(&dir.join("base.raw")), base, "base.raw changed");
        assert_eq!(sha256(&dir.join("l1.qcow2")), l1, "l1.qcow2 changed");
        assert_eq!(sha256(&dir.join("l2.qcow2")), l2, "l2.qcow2 changed");
        qemu_img_check(&dir.join("top.qcow2"));
        sh(&format!(
            "cd {} && qemu-img convert -O raw top.qcow2 flat.raw",
            dir.display()
        ));
        check_kernel_sees_model(
            &dir.join("flat.raw"),
            size,
            dir,
            &model,
            &format!("seed {seed} chain: kernel vs model after {log:?}"),
        );
    }
}

#[test]
fn stacked_read_write_mount_keeps_mountpoints_consistent() {
    need(&["qemu-img", "e2fsck", "mount"]);
    let d = centos_disk();
    let template = sha256(&d.raw);
    let dir = d.tmp.path().to_path_buf();
    let mnt = dir.join("mnt-stack");
    let g = mount_rw(
        &dir,
        "test.qcow2",
        &[
            "--format",
            "qcow2",
            "-m",
            "/dev/centos/root",
            "-m",
            "/dev/sda1:/boot",
        ],
        &mnt,
    );
    fs::write(mnt.join("boot/grub2/user.cfg"), b"GRUB2_PASSWORD=x\n").unwrap();
    fs::write(mnt.join("etc/moved"), b"root fs\n").unwrap();
    // Between filesystems: rename(2) and link(2) fail with EXDEV, as across kernel mounts.
    let e = fs::rename(mnt.join("etc/moved"), mnt.join("boot/moved")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(18), "{e}");
    let e = fs::hard_link(mnt.join("etc/moved"), mnt.join("boot/moved")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(18), "{e}");
    // A mountpoint cannot be removed or renamed away while mounted.
    let e = fs::remove_dir(mnt.join("boot")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(16), "{e}");
    let e = fs::rename(mnt.join("boot"), mnt.join("boot2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(16), "{e}");
    // mv falls back to copying, as between kernel mounts.
    sh(&format!(
        "mv {} {}",
        mnt.join("etc/moved").display(),
        mnt.join("boot/moved").display()
    ));
    umount(&mnt);
    drop(g);
    qemu_img_check(&d.qcow2);
    assert_eq!(sha256(&d.raw), template, "the template changed");
    let flat = dir.join("flat.raw");
    sh(&format!(
        "qemu-img convert -O raw {} {}",
        d.qcow2.display(),
        flat.display()
    ));
    assert_fsck_clean(&flat, d.boot, &dir.join("boot.fs"), "/boot");
    assert_fsck_clean(&flat, d.root, &dir.join("root.fs"), "root LV");
    let kb = dir.join("kernel-boot");
    let b = KernelMount::loop_ro(&flat, d.boot.0, d.boot.1, &kb);
    assert_eq!(
        fs::read(kb.join("grub2/user.cfg")).unwrap(),
        b"GRUB2_PASSWORD=x\n"
    );
    assert_eq!(fs::read(kb.join("moved")).unwrap(), b"root fs\n");
    drop(b);
    let kr = dir.join("kernel-root");
    let r = KernelMount::loop_ro(&flat, d.root.0, d.root.1, &kr);
    assert!(!kr.join("etc/moved").exists());
    assert!(kr.join("boot").is_dir());
    drop(r);
}

#[test]
fn sigterm_to_the_server_unmounts_and_flushes() {
    need(&["qemu-img", "e2fsck", "mount"]);
    let d = centos_disk();
    let dir = d.tmp.path().to_path_buf();
    let mnt = dir.join("mnt-term");
    let pidfile = dir.join("server.pid");
    let g = mount_rw(
        &dir,
        "test.qcow2",
        &[
            "--format",
            "qcow2",
            "-m",
            "/dev/centos/root",
            "--pid-file",
            pidfile.to_str().unwrap(),
        ],
        &mnt,
    );
    let data = noise(77, 1_500_000);
    fs::write(mnt.join("etc/before-sigterm"), &data).unwrap();
    let pid: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    sh(&format!("kill -TERM {pid}"));
    // The server unmounts, flushes and exits on its own.
    let start = std::time::Instant::now();
    let running = |pid: i32| {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                let st = s.rsplit_once(") ").map(|x| x.1).unwrap_or("");
                !st.starts_with('Z') && !st.starts_with('X')
            })
            .unwrap_or(false)
    };
    while running(pid) {
        assert!(start.elapsed().as_secs() < 20, "server {pid} still running");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!is_mounted(&mnt), "still mounted after SIGTERM");
    drop(g);
    qemu_img_check(&d.qcow2);
    let flat = dir.join("flat.raw");
    sh(&format!(
        "qemu-img convert -O raw {} {}",
        d.qcow2.display(),
        flat.display()
    ));
    assert_fsck_clean(&flat, d.root, &dir.join("root.fs"), "root LV after SIGTERM");
    let k = dir.join("kernel");
    let m = KernelMount::loop_ro(&flat, d.root.0, d.root.1, &k);
    assert_eq!(fs::read(k.join("etc/before-sigterm")).unwrap(), data);
    drop(m);
}

/// The same random operations through FUSE on XFS (the CentOS 7 feature set and the current
/// mkfs.xfs defaults), the image made by mkfs.xfs and filled from the model by the kernel;
/// after the sequences `xfs_repair -n` is clean and the kernel's loop mount shows the model.
#[test]
fn random_operations_through_fuse_on_xfs_match_a_host_model() {
    need(&["mkfs.xfs", "xfs_repair", "mount"]);
    for (kind, opts) in [
        (
            "xfs-centos7",
            "-m crc=1,finobt=0,reflink=0,rmapbt=0 -i sparse=0",
        ),
        ("xfs-defaults", ""),
    ] {
        // One seed unless VDISK_SEED names one; in memory when /dev/shm exists (every
        // operation is a logged transaction with its flushes).
        for seed in seeds().into_iter().take(1) {
            let tmp = tempfile::tempdir_in("/dev/shm")
                .or_else(|_| tempfile::tempdir())
                .unwrap();
            let dir = tmp.path();
            let model = dir.join("model");
            fs::create_dir_all(model.join("etc")).unwrap();
            fs::write(model.join("etc/hostname"), "model\n").unwrap();
            fix_times([&model, &model]);
            let size = 300 * MIB;
            sh(&format!(
                "cd {d} && truncate -s {size} fs.raw && mkfs.xfs -q -f {opts} fs.raw
                 mkdir -p fill && mount -o loop fs.raw fill && cp -a model/. fill/ && umount fill",
                d = dir.display()
            ));
            let log = random_sequences(
                seed,
                dir,
                &[("fs.raw", &["--format", "raw", "-m", "/dev/sda"])],
                120,
                &model,
            );
            let what = format!("seed {seed} {kind}: kernel vs model after {log:?}");
            let out = Command::new("timeout")
                .args(["120", "xfs_repair", "-n"])
                .arg(dir.join("fs.raw"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{what}: xfs_repair -n: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let kmnt = dir.join("kernel");
            let k = KernelMount::loop_ro(&dir.join("fs.raw"), 0, size, &kmnt);
            assert_same_tree(&snapshot(&kmnt), &snapshot(&model), &what);
            drop(k);
        }
    }
}
