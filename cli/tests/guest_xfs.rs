//! The CentOS 7 layout with an XFS root LV (v5, CentOS 7's mkfs.xfs features, SELinux labels
//! on every file): inspection, ls/cat/copy-out and a read-only FUSE mount of
//! `/dev/centos/root`, all compared with the kernel's loop mount of the same LV; writes are
//! refused by name.

mod guest_common;

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};

use guest_common::*;

fn q(d: &CentosDisk) -> Vec<String> {
    vec![
        "--format".into(),
        "qcow2".into(),
        "-a".into(),
        d.qcow2.to_str().unwrap().into(),
    ]
}

fn run(cmd: &str, d: &CentosDisk, rest: &[&str]) -> std::process::Output {
    let mut args: Vec<String> = vec![cmd.into()];
    args.extend(q(d));
    args.extend(rest.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    vdisk(&a)
}

fn run_ok(cmd: &str, d: &CentosDisk, rest: &[&str]) -> Vec<u8> {
    let out = run(cmd, d, rest);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "vdisk {cmd} {rest:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

const LABEL: &[u8] = b"system_u:object_r:etc_t:s0\0";

#[test]
fn centos7_xfs_root_reads_as_the_kernel_sees_it() {
    let d = centos_disk_with(RootFs::Xfs);
    let kernel = KernelMount::loop_ro(&d.raw, d.root.0, d.root.1, &d.path("kmnt"));
    let want = snapshot(&kernel.0);
    // The kernel agrees with the tree the LV was filled from.
    assert_same_tree(&want, &snapshot(&d.root_tree), "kernel vs source");

    // Inspection finds CentOS 7 on the XFS root, and its /boot.
    let v: serde_json::Value =
        serde_json::from_slice(&run_ok("inspect", &d, &["--output", "json"])).unwrap();
    let os = &v["operatingsystems"][0];
    assert_eq!(os["root"], "/dev/centos/root");
    assert_eq!(os["distro"], "centos");
    assert_eq!(os["major_version"].as_u64(), Some(7));
    assert_eq!(os["hostname"], HOSTNAME);
    assert_eq!(
        os["mountpoints"],
        serde_json::json!([
            {"mountpoint": "/", "device": "/dev/centos/root"},
            {"mountpoint": "/boot", "device": "/dev/sda1"},
        ])
    );

    // cat and ls.
    let cat = run_ok(
        "cat",
        &d,
        &["-m", "/dev/centos/root", "/etc/redhat-release"],
    );
    assert_eq!(cat, fs::read(kernel.0.join("etc/redhat-release")).unwrap());
    let ls = String::from_utf8(run_ok("ls", &d, &["-m", "/dev/centos/root", "/etc"])).unwrap();
    let mut names: Vec<String> = fs::read_dir(kernel.0.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut got: Vec<String> = ls.lines().map(str::to_string).collect();
    got.sort();
    assert_eq!(got, names);

    // copy-out of the whole tree.
    let out = d.path("out");
    fs::create_dir(&out).unwrap();
    run_ok(
        "copy-out",
        &d,
        &["-m", "/dev/centos/root", "/", out.to_str().unwrap()],
    );
    assert_same_tree(&snapshot(&out), &want, "copy-out vs kernel");

    // A read-only FUSE mount: every file, and the SELinux labels.
    let mnt = d.path("fmnt");
    fs::create_dir_all(&mnt).unwrap();
    let m = vdisk(&[
        "mount",
        "--ro",
        "--format",
        "qcow2",
        "-a",
        d.qcow2.to_str().unwrap(),
        "-m",
        "/dev/centos/root",
        mnt.to_str().unwrap(),
    ]);
    let guard = VdiskMount(mnt.clone());
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    assert_same_tree(&snapshot(&mnt), &want, "FUSE vs kernel");
    for p in ["etc/os-release", "etc/fstab", "etc"] {
        let x = xattrs(&mnt.join(p));
        assert_eq!(
            x.get(&b"security.selinux"[..]).map(Vec::as_slice),
            Some(LABEL),
            "{p}"
        );
        assert_eq!(x, xattrs(&kernel.0.join(p)), "{p}");
    }
    drop(guard);
    drop(kernel);

    // Writes say why they are refused, in one line.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args([
            "write",
            "--format",
            "qcow2",
            "-a",
            d.qcow2.to_str().unwrap(),
        ])
        .args(["-m", "/dev/centos/root", "/etc/motd"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(b"hello\n");
    let w = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&w.stderr);
    assert!(!w.status.success());
    assert_eq!(
        err.trim(),
        "vdisk: /dev/centos/root: XFS is read-only in this version",
        "{err}"
    );
    let rw = run(
        "mount",
        &d,
        &["-m", "/dev/centos/root", mnt.to_str().unwrap()],
    );
    assert!(!rw.status.success());
    assert!(
        String::from_utf8_lossy(&rw.stderr).contains("XFS is read-only in this version"),
        "{}",
        String::from_utf8_lossy(&rw.stderr)
    );
    assert!(!is_mounted(&mnt));
}
