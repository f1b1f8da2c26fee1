//! `vdisk customize` and `vdisk clone` on a real Debian guest, built from Debian's own packages
//! by debootstrap (`scripts/boot-test.sh image`, cached under target/guest-cache so it is built
//! once; the same script boots the guest under qemu). The guest is a partitionless ext4 image,
//! so every result is judged by a kernel loop mount of it (content, modes, owners, symlink
//! targets), `e2fsck -fn` clean, root's SHA-512 hash recomputed by `openssl passwd -6`, and, for
//! the clone, `qemu-img check` clean and the template's bytes unchanged.

mod guest_common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use guest_common::*;

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cached debootstrapped guest's directory (root.raw, vmlinuz, initrd.img), built on the
/// first run.
fn guest() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/boot-test.sh");
    let out = ok(
        Command::new("bash")
            .arg(&script)
            .arg("image")
            .output()
            .unwrap(),
        "scripts/boot-test.sh image",
    );
    PathBuf::from(out.lines().last().expect("the cache directory").trim())
}

/// A scratch directory next to the cache (on the same disk as target/, not in /tmp: each test
/// holds a few hundred MB).
fn scratch(guest: &Path) -> tempfile::TempDir {
    tempfile::tempdir_in(guest.parent().expect("the cache root")).unwrap()
}

/// A sparse copy of the guest's image in `dir`.
fn copy_of(guest: &Path, dir: &Path) -> PathBuf {
    let to = dir.join("debian.raw");
    sh(&format!(
        "cp --sparse=always {} {}",
        guest.join("root.raw").display(),
        to.display()
    ));
    to
}

/// e2fsck -fn on a whole-filesystem image: exit 0 and no complaint.
fn assert_fsck_clean(image: &Path) {
    let out = Command::new("timeout")
        .args(["120", "e2fsck", "-fn"])
        .arg(image)
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
        "e2fsck -fn {} ({:?}):\n{text}",
        image.display(),
        out.status.code()
    );
}

fn meta(p: &Path) -> (u32, u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

fn text(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn size(p: &Path) -> u64 {
    fs::metadata(p).unwrap().len()
}

/// Checks a shadow password field against `password` with openssl's own SHA-512 crypt.
fn assert_hash(field: &str, password: &str) {
    assert!(field.starts_with("$6$"), "{field}");
    let salt = field.split('$').nth(2).expect("salt");
    let out = Command::new("openssl")
        .args(["passwd", "-6", "-salt", salt, password])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), field);
}

fn shadow_field(shadow: &str, user: &str) -> String {
    shadow
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or_else(|| panic!("{user} not in /etc/shadow:\n{shadow}"))
        .to_string()
}

/// Every operation virt-customize users reach for, on the real guest, each judged through the
/// kernel's own reading of the filesystem.
#[test]
fn customize_a_debootstrapped_debian() {
    need(&["e2fsck", "openssl", "mount", "losetup", "debootstrap"]);
    let g = guest();
    let t = scratch(&g);
    let dir = t.path();
    let img = copy_of(&g, dir);
    let untouched = dir.join("before");
    let before_shadow;
    let before_services;
    let before_ifaces;
    {
        let _k = KernelMount::loop_ro(&img, 0, size(&img), &untouched);
        // What the real guest starts with, so each check below can fail.
        before_shadow = text(&untouched.join("etc/shadow"));
        assert!(shadow_field(&before_shadow, "root").starts_with('*'));
        assert_eq!(text(&untouched.join("etc/hostname")), "debian-template\n");
        before_ifaces = text(&untouched.join("etc/network/interfaces"));
        assert!(!before_ifaces.contains("eth0"));
        assert!(!untouched.join("usr/lib/virt-sysprep").exists());
        assert!(untouched.join("etc/motd").exists());
        assert_eq!(text(&untouched.join("etc/timezone")), "Etc/UTC\n");
        before_services = fs::read_dir(untouched.join("etc/systemd/system"))
            .unwrap()
            .count();
        assert!(before_services > 0);
    }
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0vdiskdebiankey operator@host";
    let up = dir.join("issue");
    fs::write(&up, "vdisk guest \\n\n").unwrap();
    fs::set_permissions(&up, fs::Permissions::from_mode(0o640)).unwrap();
    let out = ok(
        Command::new(env!("CARGO_BIN_EXE_vdisk"))
            .args(["customize", "--format", "raw", "-a"])
            .arg(&img)
            .args([
                "--hostname",
                "deb01.example.com",
                "--network-static",
                "eth0=192.0.2.10/24,gw=192.0.2.1,dns=192.0.2.53",
                "--root-password",
                "password:Deb ian 12",
                "--ssh-inject",
                &format!("root:string:{key}"),
                "--timezone",
                "Asia/Tokyo",
                "--firstboot-command",
                "echo hello from first boot",
                "--mkdir",
                "/srv/data/sub",
                "--write",
                "/srv/data/sub/note:line one\n",
                "--append-line",
                "/srv/data/sub/note:line two",
                "--edit",
                "/etc/issue.net:s/^Debian /Debian-edited /",
                "--chmod",
                "0750:/srv/data",
                "--link",
                "/srv/data/sub/note:/srv/note-link",
                "--touch",
                "/srv/empty",
                "--copy",
                "/etc/issue.net:/srv/issue.net.copy",
                "--move",
                "/srv/empty:/srv/moved",
                "--delete",
                "/etc/motd",
            ])
            .arg(format!("--upload={}:/etc/issue", up.display()))
            .output()
            .unwrap(),
        "vdisk customize",
    );
    assert!(
        out.contains("ifupdown"),
        "the format chosen is stated: {out}"
    );
    assert_fsck_clean(&img);

    let m = dir.join("after");
    let _k = KernelMount::loop_ro(&img, 0, size(&img), &m);
    // As virt-customize does on Debian: the whole name in /etc/hostname.
    assert_eq!(text(&m.join("etc/hostname")), "deb01.example.com\n");
    // The template's short name replaced; the full name resolves (it is the kernel's).
    assert_eq!(
        text(&m.join("etc/hosts")),
        "127.0.0.1\tlocalhost\n127.0.1.1\tdeb01.example.com deb01\n"
    );
    // /etc/network/interfaces: Debian's own file kept, our stanza added and brought up at boot.
    assert!(
        before_ifaces.contains("source /etc/network/interfaces.d/*"),
        "{before_ifaces}"
    );
    assert_eq!(
        text(&m.join("etc/network/interfaces")),
        format!(
            "{before_ifaces}\nauto eth0\niface eth0 inet static\n    address 192.0.2.10/24\n    \
             gateway 192.0.2.1\n    dns-nameservers 192.0.2.53\n"
        )
    );
    assert_eq!(meta(&m.join("etc/network/interfaces")), (0o644, 0, 0));
    // /etc/shadow keeps Debian's mode and group (shadow, gid 42) and every other line.
    let shadow = text(&m.join("etc/shadow"));
    assert_hash(&shadow_field(&shadow, "root"), "Deb ian 12");
    assert_eq!(
        shadow.lines().skip(1).collect::<Vec<_>>(),
        before_shadow.lines().skip(1).collect::<Vec<_>>()
    );
    assert_eq!(meta(&m.join("etc/shadow")), (0o640, 0, 42));
    // ssh key: root's ~/.ssh as sshd wants it.
    assert_eq!(meta(&m.join("root/.ssh")), (0o700, 0, 0));
    assert_eq!(meta(&m.join("root/.ssh/authorized_keys")), (0o600, 0, 0));
    assert_eq!(
        text(&m.join("root/.ssh/authorized_keys")),
        format!("{key}\n")
    );
    // timezone: the link points at zoneinfo the guest has, and /etc/timezone says it.
    let lt = fs::read_link(m.join("etc/localtime")).unwrap();
    assert_eq!(lt, Path::new("/usr/share/zoneinfo/Asia/Tokyo"));
    assert!(m.join("usr/share/zoneinfo/Asia/Tokyo").is_file());
    assert_eq!(text(&m.join("etc/timezone")), "Asia/Tokyo\n");
    // firstboot: the unit is where this systemd reads units, enabled through a link that
    // resolves inside the guest, and the runner and script are executable.
    let unit = m.join("usr/lib/systemd/system/guestfs-firstboot.service");
    assert!(
        text(&unit).contains("ExecStart=/usr/lib/virt-sysprep/firstboot.sh start"),
        "{}",
        text(&unit)
    );
    let wants = m.join("etc/systemd/system/multi-user.target.wants/guestfs-firstboot.service");
    let target = fs::read_link(&wants).unwrap();
    assert_eq!(
        target,
        Path::new("/usr/lib/systemd/system/guestfs-firstboot.service")
    );
    assert!(m.join(target.strip_prefix("/").unwrap()).is_file());
    assert_eq!(meta(&m.join("usr/lib/virt-sysprep/firstboot.sh")).0, 0o755);
    let scripts: Vec<_> = fs::read_dir(m.join("usr/lib/virt-sysprep/scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(scripts.len(), 1, "{scripts:?}");
    assert_eq!(text(&scripts[0]), "#!/bin/sh\necho hello from first boot\n");
    assert_eq!(meta(&scripts[0]), (0o755, 0, 0));
    // The firstboot runner's shell is the guest's own.
    assert!(m.join("bin/sh").exists());
    // The file operations.
    assert_eq!(meta(&m.join("srv/data")), (0o750, 0, 0));
    assert_eq!(meta(&m.join("srv/data/sub")).0, 0o755);
    assert_eq!(text(&m.join("srv/data/sub/note")), "line one\nline two\n");
    assert_eq!(
        fs::read_link(m.join("srv/note-link")).unwrap(),
        Path::new("/srv/data/sub/note")
    );
    assert!(!m.join("srv/empty").exists());
    assert_eq!(size(&m.join("srv/moved")), 0);
    assert_eq!(
        fs::read(m.join("srv/issue.net.copy")).unwrap(),
        fs::read(m.join("etc/issue.net")).unwrap()
    );
    assert!(
        text(&m.join("etc/issue.net")).starts_with("Debian-edited GNU/Linux"),
        "{}",
        text(&m.join("etc/issue.net"))
    );
    assert!(!m.join("etc/motd").exists());
    assert_eq!(text(&m.join("etc/issue")), "vdisk guest \\n\n");
    assert_eq!(meta(&m.join("etc/issue")), (0o640, 0, 0));
    // The enabled units the guest had are all still there.
    assert_eq!(
        fs::read_dir(m.join("etc/systemd/system")).unwrap().count(),
        before_services
    );
}

/// `vdisk clone`, the seed's createvm on the real guest: a qcow2 overlay with sysprep's
/// defaults and the boot test's operations; the template's bytes never change.
#[test]
fn clone_a_debootstrapped_debian() {
    need(&[
        "qemu-img",
        "e2fsck",
        "openssl",
        "mount",
        "losetup",
        "debootstrap",
    ]);
    let g = guest();
    let t = scratch(&g);
    let dir = t.path();
    let template = g.join("root.raw");
    let sum = |p: &Path| sh(&format!("sha256sum < {}", p.display()));
    let before = sum(&template);
    let new = dir.join("deb02.qcow2");
    let out = ok(
        Command::new(env!("CARGO_BIN_EXE_vdisk"))
            .args(["clone", "--format", "raw"])
            .arg(&template)
            .arg(&new)
            .args([
                "--hostname",
                "deb02",
                "--network-static",
                "eth0=10.0.2.15/24,gw=10.0.2.2",
                "--mac",
                "eth0=random",
                "--root-password",
                "password:clone me",
                "--firstboot-command",
                "hostname",
            ])
            .output()
            .unwrap(),
        "vdisk clone",
    );
    assert_eq!(sum(&template), before, "the template was written");
    sh(&format!("qemu-img check -q {}", new.display()));
    let info = sh(&format!("qemu-img info --output=json {}", new.display()));
    assert!(
        info.contains("\"backing-filename-format\": \"raw\""),
        "{info}"
    );
    let mac = out
        .lines()
        .find_map(|l| l.split("eth0: MAC address ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .expect("the random MAC is printed")
        .to_string();
    let raw = dir.join("deb02.raw");
    sh(&format!(
        "qemu-img convert -O raw {} {}",
        new.display(),
        raw.display()
    ));
    assert_fsck_clean(&raw);
    let m = dir.join("m");
    let _k = KernelMount::loop_ro(&raw, 0, size(&raw), &m);
    assert_eq!(text(&m.join("etc/hostname")), "deb02\n");
    // sysprep's machine-id: emptied, so systemd makes a new one at first boot.
    assert_eq!(size(&m.join("etc/machine-id")), 0);
    let ifaces = text(&m.join("etc/network/interfaces"));
    assert!(
        ifaces.contains("iface eth0 inet static\n    address 10.0.2.15/24\n    gateway 10.0.2.2\n"),
        "{ifaces}"
    );
    assert!(
        ifaces.contains(&format!("    hwaddress ether {mac}\n")),
        "{mac}: {ifaces}"
    );
    assert_hash(
        &shadow_field(&text(&m.join("etc/shadow")), "root"),
        "clone me",
    );
    assert!(m
        .join("etc/systemd/system/multi-user.target.wants/guestfs-firstboot.service")
        .is_symlink());
}
