//! The FUSE-less guest commands (`filesystems`, `ls`, `cat`, `copy-out`, `inspect`) on a
//! CentOS-7-like disk behind a qcow2 overlay, against the tree fed to `mkfs.ext4 -d`, a
//! kernel loop mount of the same bytes, and `blkid -p`.

mod guest_common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use guest_common::*;

const ROOT: [&str; 2] = ["-m", "/dev/centos/root"];

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
        out.status.success(),
        "vdisk {cmd} {rest:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "vdisk {cmd} {rest:?} warned: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The one-line error of a failing run.
fn run_err(cmd: &str, d: &CentosDisk, rest: &[&str]) -> (i32, String) {
    let out = run(cmd, d, rest);
    assert!(!out.status.success(), "vdisk {cmd} {rest:?} succeeded");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("vdisk: "), "{err}");
    (out.status.code().unwrap(), err)
}

#[test]
fn filesystems_match_blkid() {
    let d = centos_disk();
    let json: serde_json::Value = serde_json::from_slice(&run_ok(
        "filesystems",
        &d,
        &["--all", "--long", "--uuid", "--output", "json"],
    ))
    .unwrap();
    let rows = json.as_array().unwrap();
    let row = |name: &str, kind: &str| {
        rows.iter()
            .find(|r| r["name"] == name && r["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} row {name} in {json:#}"))
            .clone()
    };
    for (dev, range, file) in [
        ("/dev/sda1", d.boot, "boot.x"),
        ("/dev/centos/root", d.root, "root.x"),
        ("/dev/centos/swap", d.swap, "swap.x"),
    ] {
        let b = blkid(&d.extract(range, file));
        let r = row(dev, "filesystem");
        assert_eq!(
            r["vfs"].as_str(),
            b.get("TYPE").map(String::as_str),
            "{dev}"
        );
        assert_eq!(
            r["label"].as_str(),
            b.get("LABEL").map(String::as_str),
            "{dev}"
        );
        assert_eq!(
            r["uuid"].as_str(),
            b.get("UUID").map(String::as_str),
            "{dev}"
        );
        assert_eq!(r["size"], range.1, "{dev}");
    }
    assert_eq!(row("/dev/sda1", "filesystem")["uuid"], BOOT_UUID);
    assert_eq!(row("/dev/centos/root", "filesystem")["uuid"], ROOT_UUID);
    assert_eq!(row("/dev/centos/swap", "filesystem")["vfs"], "swap");
    assert_eq!(row("/dev/sda1", "partition")["mbr"], "83");
    assert_eq!(row("/dev/sda2", "partition")["mbr"], "8e");
    assert_eq!(row("/dev/sda2", "partition")["parents"][0], "/dev/sda");
    assert_eq!(row("/dev/centos/root", "lv")["parents"][0], "/dev/centos");
    assert_eq!(row("/dev/centos", "vg")["parents"][0], "/dev/sda2");
    assert_eq!(row("/dev/sda2", "pv")["uuid"], PV_UUID.replace('-', ""));
    assert_eq!(row("/dev/sda", "device")["size"], 128 * MIB);
    assert!(!rows
        .iter()
        .any(|r| r["name"] == "/dev/sda2" && r["type"] == "filesystem"));

    // The text layout: a title, aligned columns, "-" for empty cells.
    let text =
        String::from_utf8(run_ok("filesystems", &d, &["--all", "--long", "--uuid"])).unwrap();
    let mut lines = text.lines();
    let title: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        title,
        ["Name", "Type", "VFS", "Label", "MBR", "Size", "Parent", "UUID"]
    );
    let sda1: Vec<&str> = lines
        .find(|l| l.starts_with("/dev/sda1 "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        sda1,
        [
            "/dev/sda1",
            "filesystem",
            "ext4",
            "boot",
            "-",
            &d.boot.1.to_string(),
            "-",
            BOOT_UUID
        ]
    );
    // Without options: mountable filesystems only, names only.
    let plain = String::from_utf8(run_ok("filesystems", &d, &[])).unwrap();
    assert_eq!(plain, "/dev/sda1\n/dev/centos/root\n");
}

/// `blkid -p -o export FILE` as a map.
fn blkid(path: &Path) -> BTreeMap<String, String> {
    sh(&format!("blkid -p -o export {} || true", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn cat_ls_copy_out_match_the_source_and_the_kernel() {
    let d = centos_disk();
    let source = snapshot(&d.root_tree);
    let mnt = d.path("kernel-root");
    let _k = KernelMount::loop_ro(&d.raw, d.root.0, d.root.1, &mnt);
    let kernel = snapshot(&mnt);
    // The source tree and the kernel agree, but for the nanoseconds of some mtimes, which
    // mkfs.ext4 -d drops: the kernel's view is what we must match exactly.
    let no_link_nanos = |m: &BTreeMap<Vec<u8>, Entry>| {
        let mut m = m.clone();
        for e in m.values_mut() {
            e.mtime.1 = 0;
        }
        m
    };
    assert_same_tree(
        &no_link_nanos(&kernel),
        &no_link_nanos(&source),
        "kernel vs source",
    );
    let want = kernel.clone();

    // cat: every regular file, in one run, equals the concatenation of the sources.
    let files: Vec<String> = want
        .iter()
        .filter(|(_, e)| e.mode & 0o170000 == 0o100000)
        .map(|(p, _)| format!("/{}", String::from_utf8(p.clone()).unwrap_or_default()))
        .filter(|p| p != "/")
        .collect();
    // (Names that are not UTF-8 are left to ls and copy-out.)
    let mut args: Vec<&str> = ROOT.to_vec();
    args.extend(files.iter().map(String::as_str));
    let got = run_ok("cat", &d, &args);
    let mut expect = Vec::new();
    for f in &files {
        expect.extend(fs::read(d.root_tree.join(&f[1..])).unwrap());
    }
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "cat output differs");

    // ls -lR --uids --times: type, mode, size, owner, mtime and link targets as the kernel.
    let ls = run_ok(
        "ls",
        &d,
        &["-m", "/dev/centos/root", "-lR", "--uids", "--times", "/"],
    );
    let mut seen = 0;
    for line in ls.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let f = split_fields(line);
        let (rest, target) = match find(f[8], b" -> ") {
            Some(i) => (&f[8][..i], Some(&f[8][i + 4..])),
            None => (f[8], None),
        };
        let rel = rest[1..].to_vec();
        if rel.starts_with(b"lost+found") {
            continue;
        }
        let k = &kernel[&rel];
        let name = String::from_utf8_lossy(&rel);
        let t = match k.mode & 0o170000 {
            0o040000 => b'd',
            0o120000 => b'l',
            0o010000 => b'p',
            _ => b'-',
        };
        assert_eq!(f[0], [t], "{name}: type");
        let perm = u32::from_str_radix(std::str::from_utf8(f[1]).unwrap(), 8).unwrap();
        assert_eq!(perm, k.mode & 0o7777, "{name}: mode");
        if t != b'd' {
            assert_eq!(num(f[2]), k.size, "{name}: size");
        }
        assert_eq!(num(f[4]) as i64, k.mtime.0, "{name}: mtime");
        assert_eq!(
            (num(f[6]) as u32, num(f[7]) as u32),
            (k.uid, k.gid),
            "{name}: owner"
        );
        if t == b'l' {
            assert_eq!(target, Some(&k.content[..]), "{name}: target");
        }
        seen += 1;
    }
    assert_eq!(seen, want.len(), "ls -lR lists every file once");

    // ls (short) of a directory: sorted names only, "." and ".." left out.
    let short = run_ok("ls", &d, &["-m", "/dev/centos/root", "/var/odd names"]);
    assert_eq!(short, b"caf\xe9\nwith space\n");

    // copy-out of the whole tree: bytes, modes, owners, mtimes and symlink targets.
    let out = d.path("out");
    fs::create_dir(&out).unwrap();
    run_ok(
        "copy-out",
        &d,
        &["-m", "/dev/centos/root", "/", out.to_str().unwrap()],
    );
    let copied = snapshot(&out);
    assert_same_tree(&copied, &want, "copy-out / vs source");

    // copy-out with -i: the /boot filesystem through the inspected fstab.
    let out2 = d.path("out2");
    fs::create_dir(&out2).unwrap();
    run_ok(
        "copy-out",
        &d,
        &["-i", "/boot", "/etc/hostname", out2.to_str().unwrap()],
    );
    let boot = snapshot(&out2.join("boot"));
    let mut boot_want = snapshot(&d.boot_tree);
    boot_want.retain(|p, _| !p.starts_with(b"lost+found"));
    let mut boot_got = boot.clone();
    boot_got.retain(|p, _| !p.starts_with(b"lost+found"));
    for (p, w) in &boot_want {
        let g = &boot_got[p];
        assert_eq!((g.mode, &g.content), (w.mode, &w.content), "{p:?}");
    }
    assert_eq!(
        fs::read_to_string(out2.join("hostname")).unwrap(),
        format!("{HOSTNAME}\n")
    );
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn num(b: &[u8]) -> u64 {
    std::str::from_utf8(b).unwrap().trim().parse().unwrap()
}

/// The 8 blank-separated fields of a long line, then the path (which may hold blanks).
fn split_fields(line: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = line;
    for _ in 0..8 {
        while rest.first() == Some(&b' ') {
            rest = &rest[1..];
        }
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    out.push(&rest[1..]);
    out
}

#[test]
fn guest_symlinks_never_reach_the_host() {
    let d = centos_disk();
    // cat follows links inside the guest: absolute, and relative ones climbing past the root.
    for link in [
        "/etc/passwd-link",
        "/usr/lib/deep/escape",
        "/bin/../../etc/passwd",
    ] {
        let got = run_ok("cat", &d, &["-m", "/dev/centos/root", link]);
        assert_eq!(String::from_utf8(got).unwrap(), GUEST_PASSWD, "{link}");
    }
    // copy-out copies the links themselves.
    let out = d.path("out");
    fs::create_dir(&out).unwrap();
    let o = out.to_str().unwrap();
    run_ok(
        "copy-out",
        &d,
        &[
            "-m",
            "/dev/centos/root",
            "/etc/passwd-link",
            "/usr/lib/deep",
            "/bin",
            o,
        ],
    );
    for (p, target) in [
        ("passwd-link", "/etc/passwd"),
        ("deep/escape", "../../../../../../etc/passwd"),
        ("bin", "usr/bin"),
    ] {
        let m = fs::symlink_metadata(out.join(p)).unwrap();
        assert!(m.file_type().is_symlink(), "{p}");
        assert_eq!(fs::read_link(out.join(p)).unwrap().as_os_str(), target);
    }
    // Copying again over what is there replaces links, never writes through them: a host
    // symlink planted where a guest file goes is replaced, its target untouched.
    let victim = d.path("victim");
    fs::write(&victim, b"host data").unwrap();
    fs::remove_file(out.join("passwd-link")).unwrap();
    std::os::unix::fs::symlink(&victim, out.join("hostname")).unwrap();
    run_ok(
        "copy-out",
        &d,
        &["-m", "/dev/centos/root", "/etc/hostname", o],
    );
    assert_eq!(fs::read(&victim).unwrap(), b"host data");
    assert!(!fs::symlink_metadata(out.join("hostname"))
        .unwrap()
        .file_type()
        .is_symlink());
    // A dangling guest link is copied as is.
    run_ok(
        "copy-out",
        &d,
        &["-m", "/dev/centos/root", "/usr/lib/dangling", o],
    );
    assert_eq!(
        fs::read_link(out.join("dangling"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"/nonexistent/file"
    );
}

#[test]
fn inspect_finds_centos_7() {
    let d = centos_disk();
    let v: serde_json::Value =
        serde_json::from_slice(&run_ok("inspect", &d, &["--output", "json"])).unwrap();
    let os = &v["operatingsystems"][0];
    assert_eq!(v["operatingsystems"].as_array().unwrap().len(), 1);
    assert_eq!(os["root"], "/dev/centos/root");
    assert_eq!(os["name"], "linux");
    assert_eq!(os["distro"], "centos");
    assert_eq!(os["product_name"], "CentOS Linux 7 (Core)");
    assert_eq!(
        (os["major_version"].as_u64(), os["minor_version"].as_u64()),
        (Some(7), Some(9))
    );
    assert_eq!(os["hostname"], HOSTNAME);
    assert_eq!(os["package_format"], "rpm");
    assert_eq!(os["package_management"], "yum");
    assert_eq!(os["arch"].as_str().unwrap(), sh("uname -m").trim());
    assert_eq!(
        os["mountpoints"],
        serde_json::json!([
            {"mountpoint": "/", "device": "/dev/centos/root"},
            {"mountpoint": "/boot", "device": "/dev/sda1"},
        ])
    );
    let text = String::from_utf8(run_ok("inspect", &d, &[])).unwrap();
    assert!(text.starts_with("/dev/centos/root:\n"), "{text}");
    for want in ["centos", "7.9", HOSTNAME, "/boot  /dev/sda1"] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    // The raw template alone (probed: a warning, still inspected).
    let out = vdisk(&["inspect", "-a", d.raw.to_str().unwrap()]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning") && err.contains("probing"), "{err}");
}

#[test]
fn errors_are_one_line_and_a_closed_pipe_is_not_one() {
    let d = centos_disk();
    let (code, e) = run_err("cat", &d, &["-m", "/dev/centos/root", "/etc/nope"]);
    assert_eq!(code, 1);
    assert!(e.contains("/etc/nope: No such file or directory"), "{e}");
    let (_, e) = run_err("cat", &d, &["-m", "/dev/centos/root", "/etc"]);
    assert!(e.contains("/etc: Is a directory"), "{e}");
    let (_, e) = run_err("cat", &d, &["-m", "/dev/centos/swap", "/x"]);
    assert!(e.contains("/dev/centos/swap") && e.contains("swap"), "{e}");
    let (_, e) = run_err("ls", &d, &["-m", "/dev/sda2", "/"]);
    assert!(e.contains("LVM physical volume"), "{e}");
    let (_, e) = run_err("ls", &d, &["-m", "/dev/sdz1", "/"]);
    assert!(e.contains("/dev/sdz1: no such device"), "{e}");
    let (_, e) = run_err("ls", &d, &["-m", "/dev/sda1:/boot", "/"]);
    assert!(e.contains("nothing is mounted on /"), "{e}");
    let (_, e) = run_err(
        "ls",
        &d,
        &["-m", "/dev/centos/root", "-m", "/dev/sda1:/nowhere", "/"],
    );
    assert!(e.contains("/nowhere does not exist"), "{e}");
    // (Never a real directory here: mounts are read-write now, and this one would succeed.)
    let missing = d.path("no-such-dir");
    let (_, e) = run_err(
        "mount",
        &d,
        &["--rw", "-m", "/dev/centos/root", missing.to_str().unwrap()],
    );
    assert!(e.contains("no-such-dir: No such file or directory"), "{e}");
    let (code, e) = {
        let out = vdisk(&["umount", d.tmp.path().to_str().unwrap()]);
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    assert_eq!(code, 2, "{e}");
    assert!(e.contains("not mounted"), "{e}");

    // `vdisk cat ... | head -c1`: the reader leaving is success, silently.
    let r = sh(&format!(
        "set -o pipefail; {} cat --format qcow2 -a {} -m /dev/centos/root /usr/lib/big.bin \
         2>{err} | head -c1 >/dev/null; echo $?; cat {err}",
        env!("CARGO_BIN_EXE_vdisk"),
        d.qcow2.display(),
        err = d.path("stderr").display()
    ));
    assert_eq!(r, "0\n", "exit status and stderr: {r}");
    let r = sh(&format!(
        "set -o pipefail; {} ls --format qcow2 -a {} -m /dev/centos/root -R / \
         2>{err} | head -n1 >/dev/null; echo $?; cat {err}",
        env!("CARGO_BIN_EXE_vdisk"),
        d.qcow2.display(),
        err = d.path("stderr").display()
    ));
    assert_eq!(r, "0\n", "exit status and stderr: {r}");
}

/// One damaged inode does not stop a whole listing or copy: `ls -lR` and `copy-out` name the
/// bad entry on stderr, carry on with the rest (as `ls -R` and `cp -r` do) and exit non-zero.
#[test]
fn a_bad_inode_is_named_and_the_rest_still_listed_and_copied() {
    need(&["mkfs.ext4", "debugfs"]);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let tree = d.join("tree");
    fs::create_dir_all(tree.join("dir/sub")).unwrap();
    for n in ["a", "b", "c"] {
        fs::write(tree.join("dir").join(n), format!("file {n}\n")).unwrap();
    }
    fs::write(tree.join("dir/sub/z"), "deep\n").unwrap();
    let img = d.join("bad.img");
    sh(&format!(
        "truncate -s 16M {i} && mkfs.ext4 -q -F -d {t} {i} && debugfs -w -R 'clri /dir/b' {i} >/dev/null 2>&1",
        i = img.display(),
        t = tree.display()
    ));
    let i = img.to_str().unwrap();
    let ls = vdisk(&[
        "ls", "-a", i, "--format", "raw", "-m", "/dev/sda", "-l", "-R", "/dir",
    ]);
    let out = String::from_utf8_lossy(&ls.stdout);
    let err = String::from_utf8_lossy(&ls.stderr);
    assert!(!ls.status.success(), "{out}{err}");
    for want in ["/dir/a", "/dir/c", "/dir/sub/z"] {
        assert!(
            out.lines().any(|l| l.ends_with(want)),
            "{want} missing:\n{out}"
        );
    }
    assert!(!out.contains("/dir/b"), "{out}");
    assert!(
        err.lines().any(|l| l.starts_with("vdisk: /dir/b: ")),
        "{err}"
    );
    assert!(err.contains("1 entry could not be listed"), "{err}");

    let host = d.join("out");
    fs::create_dir(&host).unwrap();
    let cp = vdisk(&[
        "copy-out",
        "-a",
        i,
        "--format",
        "raw",
        "-m",
        "/dev/sda",
        "/dir",
        host.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&cp.stderr);
    assert!(!cp.status.success(), "{err}");
    assert_eq!(fs::read_to_string(host.join("dir/a")).unwrap(), "file a\n");
    assert_eq!(fs::read_to_string(host.join("dir/c")).unwrap(), "file c\n");
    assert_eq!(
        fs::read_to_string(host.join("dir/sub/z")).unwrap(),
        "deep\n"
    );
    assert!(!host.join("dir/b").exists());
    assert!(err.contains("/dir/b: "), "{err}");
    assert!(err.contains("1 guest file could not be copied"), "{err}");
}
