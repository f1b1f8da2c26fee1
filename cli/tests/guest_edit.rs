//! The FUSE-less edit commands (`write`, `edit`, `copy-in`, `rm`, `mkdir`, `chmod`, `chown`,
//! `ln`) on a CentOS-7-like disk behind a qcow2 overlay, judged as a user would: `qemu-img
//! check` clean on the overlay, `e2fsck -fn` clean on each filesystem, a kernel loop mount of
//! the flattened image showing the changes (and the SELinux label an edit must keep), the
//! backing file byte-unchanged, and one-line errors with a non-zero exit.

mod guest_common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use guest_common::*;

fn sha256(p: &Path) -> String {
    sh(&format!("sha256sum {}", p.display()))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `vdisk CMD --format qcow2 -a IMAGE -m /dev/centos/root ARGS`, with `stdin` fed in and
/// extra environment.
fn edit_cmd(
    d: &CentosDisk,
    cmd: &str,
    args: &[&str],
    stdin: &[u8],
    env: &[(&str, &str)],
) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vdisk"));
    c.args([cmd, "--format", "qcow2", "-a"])
        .arg(&d.qcow2)
        .args(["-m", "/dev/centos/root"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn edit_ok(d: &CentosDisk, cmd: &str, args: &[&str]) {
    let out = edit_cmd(d, cmd, args, b"", &[]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "vdisk {cmd} {args:?} ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The one-line error of a failing command.
fn edit_err(d: &CentosDisk, cmd: &str, args: &[&str]) -> String {
    let out = edit_cmd(d, cmd, args, b"", &[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "vdisk {cmd} {args:?}: {err}");
    assert!(
        err.starts_with("vdisk: ") && err.lines().count() == 1,
        "vdisk {cmd} {args:?}: {err}"
    );
    err
}

/// e2fsck -fn on `range` of `image`: exit 0 and no complaint line.
fn assert_fsck_clean(d: &CentosDisk, image: &Path, range: (u64, u64), what: &str) {
    let fsimg = d.path("check.fs");
    sh(&format!(
        "dd if={} of={} bs=1M skip={} count={} iflag=skip_bytes,count_bytes status=none",
        image.display(),
        fsimg.display(),
        range.0,
        range.1
    ));
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(&fsimg)
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
        "{what}: e2fsck -fn:\n{text}"
    );
    fs::remove_file(&fsimg).unwrap();
}

/// qemu-img check on the overlay, the template unchanged, then the flattened image.
fn flatten(d: &CentosDisk, template_hash: &str) -> std::path::PathBuf {
    let out = Command::new("timeout")
        .args(["60", "qemu-img", "check"])
        .arg(&d.qcow2)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&d.raw), template_hash, "the backing file changed");
    let flat = d.path("flat.raw");
    sh(&format!(
        "qemu-img convert -O raw {} {}",
        d.qcow2.display(),
        flat.display()
    ));
    flat
}

/// The snapshot with mtimes cut to whole seconds (the CentOS-like root LV has 128-byte
/// inodes, which store no nanoseconds).
fn seconds(s: BTreeMap<Vec<u8>, Entry>) -> BTreeMap<Vec<u8>, Entry> {
    s.into_iter()
        .map(|(k, mut e)| {
            e.mtime.1 = 0;
            (k, e)
        })
        .collect()
}

#[test]
fn every_edit_command_lands_in_the_overlay_and_the_kernel_sees_it() {
    need(&["qemu-img", "e2fsck", "mount", "sha256sum"]);
    let d = centos_disk();
    let template = sha256(&d.raw);
    let hostname_xattrs = xattrs(&d.root_tree.join("etc/hostname"));
    assert!(hostname_xattrs.contains_key(b"security.selinux".as_slice()));

    // write: a new file from stdin; an existing one from a host file (keeps mode and owner).
    let out = edit_cmd(&d, "write", &["/etc/motd"], b"Welcome\n", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let big = noise(9, 2_500_000);
    let host = d.path("host-passwd");
    fs::write(&host, &big).unwrap();
    edit_ok(
        &d,
        "write",
        &["--from", host.to_str().unwrap(), "/home/guestonly/.bashrc"],
    );
    // edit -e: the seed edit, and a labelled file whose label must survive.
    edit_ok(
        &d,
        "edit",
        &[
            "/etc/sysconfig/network-scripts/ifcfg-eth0",
            "-e",
            "s/^IPADDR=.*/IPADDR=10.9.8.7/; s/^(GATEWAY)=.*/$1=10.9.8.1/",
        ],
    );
    edit_ok(
        &d,
        "edit",
        &["/etc/hostname", "-e", "s/centos7-template/web01/"],
    );
    // edit with $EDITOR on a host copy, through a symlink (etc/redhat-release -> centos-release).
    let out = edit_cmd(
        &d,
        "edit",
        &["/etc/redhat-release"],
        b"",
        &[("EDITOR", "sed -i s/7.9.2009/7.9.2207/")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // mkdir, copy-in (a whole tree: modes, owners, times, symlinks, a FIFO), links.
    edit_ok(&d, "mkdir", &["-p", "/srv/a/b"]);
    edit_ok(&d, "mkdir", &["--mode", "700", "/srv/private"]);
    edit_ok(
        &d,
        "copy-in",
        &[d.root_tree.join("usr").to_str().unwrap(), "/srv/a/b"],
    );
    edit_ok(&d, "ln", &["-s", "../etc/hostname", "/srv/hn"]);
    edit_ok(&d, "ln", &["/etc/passwd", "/srv/passwd-hard"]);
    edit_ok(&d, "chmod", &["0600", "/etc/motd"]);
    edit_ok(&d, "chown", &["1000:1001", "/etc/motd"]);
    // rm: a file, a tree of 400 entries, and -f on nothing.
    edit_ok(&d, "rm", &["/usr/lib/random.bin"]);
    edit_ok(&d, "rm", &["-r", "/var/many"]);
    edit_ok(&d, "rm", &["-f", "/no/such/file"]);

    let flat = flatten(&d, &template);
    assert_fsck_clean(&d, &flat, d.root, "root LV after the edits");
    let k = d.path("kernel");
    let _m = KernelMount::loop_ro(&flat, d.root.0, d.root.1, &k);
    assert_eq!(fs::read(k.join("etc/motd")).unwrap(), b"Welcome\n");
    let motd = fs::metadata(k.join("etc/motd")).unwrap();
    assert_eq!(
        (motd.mode() & 0o7777, motd.uid(), motd.gid()),
        (0o600, 1000, 1001)
    );
    let bashrc = fs::metadata(k.join("home/guestonly/.bashrc")).unwrap();
    assert_eq!(fs::read(k.join("home/guestonly/.bashrc")).unwrap(), big);
    assert_eq!((bashrc.mode() & 0o7777, bashrc.uid()), (0o600, 1000));
    let ifcfg = fs::read_to_string(k.join("etc/sysconfig/network-scripts/ifcfg-eth0")).unwrap();
    assert!(ifcfg.contains("\nIPADDR=10.9.8.7\n"), "{ifcfg}");
    assert!(ifcfg.contains("\nGATEWAY=10.9.8.1\n"), "{ifcfg}");
    assert!(ifcfg.contains("\nDNS1=192.168.122.1\n"), "{ifcfg}");
    assert_eq!(
        fs::read_to_string(k.join("etc/hostname")).unwrap(),
        "web01.example.com\n"
    );
    // The edit replaced the file (virt-edit's way) and carried its label and attributes.
    assert_eq!(xattrs(&k.join("etc/hostname")), hostname_xattrs);
    let hn = fs::metadata(k.join("etc/hostname")).unwrap();
    assert_eq!(hn.mode() & 0o7777, 0o644);
    assert_eq!(
        fs::read_to_string(k.join("etc/centos-release")).unwrap(),
        "CentOS Linux release 7.9.2207 (Core)\n"
    );
    assert_eq!(
        fs::read_link(k.join("etc/redhat-release")).unwrap(),
        Path::new("centos-release")
    );
    assert!(k.join("srv/a/b").is_dir());
    assert_eq!(
        fs::metadata(k.join("srv/private")).unwrap().mode() & 0o7777,
        0o700
    );
    assert_same_tree(
        &seconds(snapshot(&k.join("srv/a/b/usr"))),
        &seconds(snapshot(&d.root_tree.join("usr"))),
        "copy-in vs the host tree",
    );
    assert_eq!(
        fs::read_link(k.join("srv/hn")).unwrap(),
        Path::new("../etc/hostname")
    );
    let (p, h) = (
        fs::metadata(k.join("etc/passwd")).unwrap(),
        fs::metadata(k.join("srv/passwd-hard")).unwrap(),
    );
    assert_eq!((p.ino(), p.nlink()), (h.ino(), 2));
    assert!(!k.join("usr/lib/random.bin").exists());
    assert!(!k.join("var/many").exists());
    // Everything else is untouched.
    assert_eq!(
        fs::read(k.join("usr/lib/big.bin")).unwrap(),
        fs::read(d.root_tree.join("usr/lib/big.bin")).unwrap()
    );
}

#[test]
fn inspected_tree_writes_reach_the_boot_filesystem() {
    need(&["qemu-img", "e2fsck", "mount"]);
    let d = centos_disk();
    let template = sha256(&d.raw);
    let out = Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(["write", "--format", "qcow2", "-a"])
        .arg(&d.qcow2)
        .args(["-i", "--from"])
        .arg(d.root_tree.join("etc/fstab"))
        .arg("/boot/grub2/fstab.copy")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without -m the edit commands inspect, as virt-edit does.
    let out = Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(["edit", "--format", "qcow2", "-a"])
        .arg(&d.qcow2)
        .args(["/boot/grub2/grub.cfg", "-e", "s/default=0/default=1/"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flat = flatten(&d, &template);
    assert_fsck_clean(&d, &flat, d.boot, "/boot after the edits");
    assert_fsck_clean(&d, &flat, d.root, "root LV (untouched)");
    let k = d.path("kernel-boot");
    let _m = KernelMount::loop_ro(&flat, d.boot.0, d.boot.1, &k);
    assert_eq!(
        fs::read(k.join("grub2/fstab.copy")).unwrap(),
        fs::read(d.root_tree.join("etc/fstab")).unwrap()
    );
    assert!(fs::read_to_string(k.join("grub2/grub.cfg"))
        .unwrap()
        .starts_with("set default=1\n"));
}

#[test]
fn edit_command_errors_are_one_line_and_change_nothing() {
    need(&["qemu-img", "e2fsck"]);
    let d = centos_disk();
    let template = sha256(&d.raw);
    for (cmd, args, want) in [
        (
            "write",
            vec!["/no/dir/file"],
            "/no/dir/file: No such file or directory",
        ),
        ("write", vec!["/etc"], "/etc: Is a directory"),
        (
            "edit",
            vec!["/etc/nothere", "-e", "s/a/b/"],
            "/etc/nothere: No such file",
        ),
        (
            "edit",
            vec!["/etc/hostname", "-e", "s/(/x/"],
            "unclosed group",
        ),
        (
            "edit",
            vec!["/etc/hostname", "-e", "y/a/b/"],
            "only s/REGEX/",
        ),
        ("rm", vec!["/etc"], "/etc: is a directory (use -r)"),
        ("rm", vec!["/etc/nothere"], "/etc/nothere: No such file"),
        ("mkdir", vec!["/etc"], "/etc: File exists"),
        ("mkdir", vec!["/a/b/c"], "/a/b/c: No such file"),
        (
            "chmod",
            vec!["u+x", "/etc/hostname"],
            "expected an octal mode",
        ),
        (
            "chown",
            vec!["root:root", "/etc/hostname"],
            "expected UID:GID",
        ),
        (
            "ln",
            vec!["/etc", "/etc-link"],
            "/etc-link: Operation not permitted",
        ),
        (
            "ln",
            vec!["-s", "x", "/etc/hostname"],
            "/etc/hostname: File exists",
        ),
        (
            "copy-in",
            vec!["/nonexistent-host-path", "/srv"],
            "/nonexistent-host-path: No such file",
        ),
        (
            "copy-in",
            vec!["/etc/hostname", "/etc/hostname"],
            "not a directory",
        ),
    ] {
        let err = edit_err(&d, cmd, &args);
        assert!(err.contains(want), "vdisk {cmd} {args:?}: {err}");
    }
    // A filesystem given with the "ro" option stays read-only in a writable tree.
    let out = Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(["mkdir", "--format", "qcow2", "-a"])
        .arg(&d.qcow2)
        .args([
            "-m",
            "/dev/centos/root",
            "-m",
            "/dev/sda1:/boot:ro",
            "/boot/new",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err, "vdisk: /boot/new: Read-only file system\n");
    // While a mount holds the image, an edit command cannot open it for writing.
    let mnt = d.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let out = vdisk(&[
        "mount",
        "--format",
        "qcow2",
        "-a",
        d.qcow2.to_str().unwrap(),
        "-m",
        "/dev/centos/root",
        mnt.to_str().unwrap(),
    ]);
    let guard = VdiskMount(mnt.clone());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = edit_err(&d, "mkdir", &["/locked"]);
    assert!(err.contains("lock"), "{err}");
    drop(guard);
    let flat = flatten(&d, &template);
    assert_fsck_clean(&d, &flat, d.root, "root LV after failed edits");
    let k = d.path("kernel");
    let _m = KernelMount::loop_ro(&flat, d.root.0, d.root.1, &k);
    let tm = d.path("kernel-template");
    let _t = KernelMount::loop_ro(&d.raw, d.root.0, d.root.1, &tm);
    assert_same_tree(
        &snapshot(&k),
        &snapshot(&tm),
        "after failed edits vs template",
    );
    assert_eq!(
        fs::metadata(k.join("etc/hostname"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
}
