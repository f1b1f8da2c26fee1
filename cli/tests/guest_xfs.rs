//! The CentOS 7 layout with an XFS root LV (v5, CentOS 7's mkfs.xfs features, SELinux labels
//! on every file): inspection, ls/cat/copy-out and a read-only FUSE mount of
//! `/dev/centos/root`, all compared with the kernel's loop mount of the same LV; and the seed
//! workflow read-write (write, edit, sed -i and vim through FUSE).

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

/// Both tests build and kernel-mount an XFS with the same fixed UUID, which the kernel
/// refuses to mount twice at once: they take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn centos7_xfs_root_reads_as_the_kernel_sees_it() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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

    assert!(!is_mounted(&mnt));
}

fn sha256(p: &std::path::Path) -> String {
    sh(&format!("sha256sum {}", p.display()))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `vdisk CMD --format qcow2 -a IMAGE -m /dev/centos/root ARGS` with `stdin`; must succeed
/// silently.
fn edit_ok(d: &CentosDisk, cmd: &str, args: &[&str], stdin: &[u8]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args([cmd, "--format", "qcow2", "-a", d.qcow2.to_str().unwrap()])
        .args(["-m", "/dev/centos/root"])
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let w = child.wait_with_output().unwrap();
    assert!(
        w.status.success() && w.stderr.is_empty(),
        "vdisk {cmd} {args:?}: {}",
        String::from_utf8_lossy(&w.stderr)
    );
}

/// The seed workflow on the XFS root: `vdisk write` and `vdisk edit`, then a read-write FUSE
/// mount edited as `sed -i` and vim do (temp file or swap file and backup, the SELinux label
/// copied, rename over the original); the template stays as it was, the root LV passes
/// `xfs_repair -n`, and the kernel sees the edits with their labels.
#[test]
fn centos7_xfs_root_seed_workflow_edits_land_in_the_overlay() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = centos_disk_with(RootFs::Xfs);
    let template = sha256(&d.raw);
    edit_ok(&d, "write", &["/etc/motd"], b"hello\n");
    edit_ok(
        &d,
        "edit",
        &[
            "/etc/sysconfig/network-scripts/ifcfg-eth0",
            "-e",
            "s/^IPADDR=.*/IPADDR=10.9.8.7/",
        ],
        b"",
    );
    let mnt = d.path("fmnt");
    fs::create_dir_all(&mnt).unwrap();
    let m = vdisk(&[
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
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    let script = r#"
import os, sys
d = os.path.join(sys.argv[1], 'etc/sysconfig/network-scripts')
p = os.path.join(d, 'ifcfg-eth0')
label = os.getxattr(p, 'security.selinux')
# sed -i: a temp file in the same directory, written, labelled, renamed over the original.
data = open(p).read().replace('PREFIX=24', 'PREFIX=16')
t = os.path.join(d, 'sedQx81Zk')
with open(t, 'w') as f:
    f.write(data)
    os.fchmod(f.fileno(), 0o644)
os.setxattr(t, 'security.selinux', label)
os.rename(t, p)
# vim: swap file, backup by rename, new file written and labelled, backup and swap removed.
swp = os.path.join(d, '.ifcfg-eth0.swp')
open(swp, 'wb').write(b'b0VIM 7.4' + bytes(4087))
os.rename(p, p + '~')
with open(p, 'w') as f:
    f.write(data.replace('ONBOOT=yes', 'ONBOOT=no'))
    f.flush()
    os.fsync(f.fileno())
os.setxattr(p, 'security.selinux', label)
os.unlink(p + '~')
os.unlink(swp)
"#;
    let out = Command::new("python3")
        .args(["-c", script, mnt.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // GNU sed -i itself, through the mount.
    sh(&format!(
        "sed -i s/^DNS1=.*/DNS1=1.1.1.1/ {}",
        mnt.join("etc/sysconfig/network-scripts/ifcfg-eth0")
            .display()
    ));
    let u = vdisk(&["umount", mnt.to_str().unwrap()]);
    assert!(u.status.success(), "{}", String::from_utf8_lossy(&u.stderr));
    drop(guard);

    assert_eq!(sha256(&d.raw), template, "the template changed");
    let flat = d.path("flat.raw");
    sh(&format!(
        "qemu-img convert -O raw {} {}",
        d.qcow2.display(),
        flat.display()
    ));
    let lv = d.path("root-lv.img");
    sh(&format!(
        "dd if={} of={} bs=1M skip={} count={} iflag=skip_bytes,count_bytes status=none",
        flat.display(),
        lv.display(),
        d.root.0,
        d.root.1
    ));
    let r = Command::new("timeout")
        .args(["120", "xfs_repair", "-n"])
        .arg(&lv)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "xfs_repair -n: {}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    let k = KernelMount::loop_ro(&flat, d.root.0, d.root.1, &d.path("kmnt2"));
    let ifcfg = fs::read_to_string(k.0.join("etc/sysconfig/network-scripts/ifcfg-eth0")).unwrap();
    assert!(ifcfg.contains("IPADDR=10.9.8.7\n"), "{ifcfg}");
    assert!(ifcfg.contains("PREFIX=16\n"), "{ifcfg}");
    assert!(ifcfg.contains("ONBOOT=no\n"), "{ifcfg}");
    assert!(ifcfg.contains("DNS1=1.1.1.1\n"), "{ifcfg}");
    assert_eq!(fs::read(k.0.join("etc/motd")).unwrap(), b"hello\n");
    let names: Vec<String> = fs::read_dir(k.0.join("etc/sysconfig/network-scripts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("sed") || n.ends_with('~') || n.ends_with(".swp")),
        "{names:?}"
    );
    // The label the vim-like edit copied (GNU sed -i on a host without SELinux keeps none).
    let x = xattrs(&k.0.join("etc/sysconfig/network-scripts"));
    assert_eq!(
        x.get(&b"security.selinux"[..]).map(Vec::as_slice),
        Some(LABEL)
    );
}
