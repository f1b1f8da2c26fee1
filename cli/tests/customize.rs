//! `vdisk clone`, `vdisk customize` and `vdisk sysprep` on the CentOS-7-like template (LVM
//! root, ext4) built at test time. Each result is judged as a user would: the overlay's
//! content through a kernel loop mount of qemu-img's own reading of it (content, modes,
//! owners, symlink targets), `e2fsck -fn` clean, `qemu-img check` clean, the template's bytes
//! unchanged, and /etc/shadow's hash recomputed by `openssl passwd -6` from its salt.

mod guest_common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
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

fn sha256(p: &Path) -> String {
    sh(&format!("sha256sum {}", p.display()))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// e2fsck -fn on `range` of raw `image`: exit 0 and no complaint line.
fn assert_fsck_clean(image: &Path, range: (u64, u64), scratch: &Path) {
    sh(&format!(
        "dd if={} of={} bs=1M skip={} count={} iflag=skip_bytes,count_bytes status=none",
        image.display(),
        scratch.display(),
        range.0,
        range.1
    ));
    let out = Command::new("timeout")
        .args(["120", "e2fsck", "-fn"])
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
        "e2fsck -fn ({:?}):\n{text}",
        out.status.code()
    );
    fs::remove_file(scratch).unwrap();
}

/// The overlay as qemu-img reads it, as a raw file.
fn to_raw(image: &Path, out: &Path) {
    sh(&format!(
        "timeout 120 qemu-img check -q {0} && timeout 120 qemu-img convert -O raw {0} {1}",
        image.display(),
        out.display()
    ));
}

fn meta(p: &Path) -> (u32, u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

fn text(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Checks `field` (a shadow password field, maybe `!`-prefixed) against `password` with
/// openssl's own SHA-512 crypt.
fn assert_hash(field: &str, password: &str) {
    let h = field.trim_start_matches('!');
    let salt = h.split('$').nth(2).expect("salt");
    let out = Command::new("openssl")
        .args(["passwd", "-6", "-salt", salt, password])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), h);
}

#[test]
fn clone_the_seed_way() {
    need(&["qemu-img", "e2fsck", "openssl", "mount", "losetup"]);
    let d = centos_disk();
    let dir = d.tmp.path();
    let before = sha256(&d.raw);
    let new = dir.join("test02.qcow2");
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0vdisktestkey operator@host";
    let script = dir.join("first.sh");
    fs::write(&script, "#!/bin/sh\necho first boot\n").unwrap();
    let up = dir.join("motd");
    fs::write(&up, "welcome\n").unwrap();
    fs::set_permissions(&up, fs::Permissions::from_mode(0o640)).unwrap();
    let out = ok(
        Command::new(env!("CARGO_BIN_EXE_vdisk"))
            .args(["clone", "--format", "raw"])
            .arg(&d.raw)
            .arg(&new)
            .args([
                // An SELinux guest with its policy's file_contexts: new files get labels.
                "--mkdir",
                "/etc/selinux/targeted/contexts/files",
                "--write",
                "/etc/selinux/targeted/contexts/files/file_contexts:/.*\tsystem_u:object_r:default_t:s0\n\
                 /etc(/.*)?\tsystem_u:object_r:etc_t:s0\n/etc/machine-info\t--\tsystem_u:object_r:hostname_etc_t:s0\n\
                 /usr/lib/virt-sysprep(/.*)?\tsystem_u:object_r:bin_t:s0\n",
                "--write",
                "/etc/selinux/targeted/contexts/files/file_contexts.homedirs:/home/[^/]+/\\.ssh(/.*)?\tunconfined_u:object_r:ssh_home_t:s0\n",
                "--write",
                "/etc/selinux/config:SELINUX=enforcing\nSELINUXTYPE=targeted\n",
                "--hostname",
                "test02",
                "--network-static",
                "eth0=192.168.174.13/24,gw=192.168.174.1,dns=192.168.174.1,8.8.8.8",
                "--mac",
                "eth0=random",
                "--root-password",
                "password:Sekr1t pass",
                "--append-line",
                "/etc/shadow:guestonly:!!:19000:0:99999:7:::",
                "--password",
                "guestonly:locked:password:other",
                "--ssh-inject",
                &format!("guestonly:string:{key}"),
                // The built tree has no systemd directories; a real CentOS 7 has them.
                "--mkdir",
                "/etc/systemd/system",
                "--firstboot-command",
                "hostname > /root/first",
            ])
            .arg(format!("--firstboot={}", script.display()))
            .arg(format!("--upload={}:/etc/motd", up.display()))
            .args([
                "--mkdir",
                "/usr/share/zoneinfo/Asia",
                "--write",
                "/usr/share/zoneinfo/Asia/Tokyo:TZif2",
                "--timezone",
                "Asia/Tokyo",
                "--append-line",
                "/etc/hosts:192.168.174.13 test02",
                "--chmod",
                "0600:/etc/motd",
            ])
            .output()
            .unwrap(),
        "vdisk clone",
    );
    assert!(out.contains("ifcfg"), "the format chosen is stated: {out}");
    let mac = out
        .lines()
        .find_map(|l| l.split("eth0: MAC address ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .expect("the random MAC is printed")
        .to_string();
    assert!(mac.starts_with("52:54:00:"), "{mac}");
    assert_eq!(sha256(&d.raw), before, "the template was written");
    let info = sh(&format!("qemu-img info --output=json {}", new.display()));
    assert!(
        info.contains("\"backing-filename-format\": \"raw\""),
        "{info}"
    );

    let raw = dir.join("new.raw");
    to_raw(&new, &raw);
    assert_fsck_clean(&raw, d.root, &dir.join("root.fs"));
    let m = dir.join("mnt");
    let _k = KernelMount::loop_ro(&raw, d.root.0, d.root.1, &m);
    assert_eq!(text(&m.join("etc/hostname")), "test02\n");
    assert_eq!(
        text(&m.join("etc/machine-info")),
        "PRETTY_HOSTNAME=test02\n"
    );
    let ifcfg = text(&m.join("etc/sysconfig/network-scripts/ifcfg-eth0"));
    for want in [
        "IPADDR=192.168.174.13\n",
        "PREFIX=24\n",
        "GATEWAY=192.168.174.1\n",
        "DNS1=192.168.174.1\n",
        "DNS2=8.8.8.8\n",
        "BOOTPROTO=none\n",
        "ONBOOT=yes\n",
        &format!("HWADDR={}\n", mac.to_uppercase()),
    ] {
        assert!(ifcfg.contains(want), "{want:?} not in\n{ifcfg}");
    }
    assert!(ifcfg.contains("\nUUID="), "{ifcfg}");
    assert_eq!(
        meta(&m.join("etc/sysconfig/network-scripts/ifcfg-eth0")),
        (0o644, 0, 0)
    );
    // /etc/shadow: mode 0 kept, root's hash checked by openssl, guestonly's locked.
    assert_eq!(meta(&m.join("etc/shadow")), (0, 0, 0));
    let shadow = text(&m.join("etc/shadow"));
    let field = |user: &str| {
        shadow
            .lines()
            .find(|l| l.starts_with(&format!("{user}:")))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or_else(|| panic!("{user} in {shadow}"))
            .to_string()
    };
    assert!(field("root").starts_with("$6$"), "{shadow}");
    assert_hash(&field("root"), "Sekr1t pass");
    assert!(field("guestonly").starts_with("!$6$"), "{shadow}");
    assert_hash(&field("guestonly"), "other");
    // ssh key: modes and owner as sshd wants them.
    let ssh = m.join("home/guestonly/.ssh");
    assert_eq!(meta(&ssh), (0o700, 1000, 1000));
    assert_eq!(meta(&ssh.join("authorized_keys")), (0o600, 1000, 1000));
    assert_eq!(text(&ssh.join("authorized_keys")), format!("{key}\n"));
    // firstboot: runner, unit, its wants link, both scripts in order.
    let fb = m.join("usr/lib/virt-sysprep");
    assert_eq!(meta(&fb.join("firstboot.sh")).0, 0o755);
    let scripts: Vec<String> = {
        let mut v: Vec<String> = fs::read_dir(fb.join("scripts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(scripts.len(), 2, "{scripts:?}");
    assert!(scripts[0].starts_with("0001-hostname"), "{scripts:?}");
    assert!(scripts[1].starts_with("0002-"), "{scripts:?}");
    assert_eq!(
        text(&fb.join("scripts").join(&scripts[1])),
        "#!/bin/sh\necho first boot\n"
    );
    assert_eq!(meta(&fb.join("scripts").join(&scripts[1])).0, 0o755);
    assert!(
        text(&m.join("usr/lib/systemd/system/guestfs-firstboot.service"))
            .contains("ExecStart=/usr/lib/virt-sysprep/firstboot.sh start")
    );
    assert_eq!(
        fs::read_link(
            m.join("etc/systemd/system/multi-user.target.wants/guestfs-firstboot.service")
        )
        .unwrap(),
        Path::new("/usr/lib/systemd/system/guestfs-firstboot.service")
    );
    // timezone, upload (mode then chmod), append-line.
    assert_eq!(
        fs::read_link(m.join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Asia/Tokyo")
    );
    assert_eq!(text(&m.join("etc/motd")), "welcome\n");
    assert_eq!(meta(&m.join("etc/motd")).0, 0o600);
    assert_eq!(
        text(&m.join("etc/hosts")),
        "127.0.0.1 localhost\n192.168.174.13 test02\n"
    );
    // New files got their labels from the guest's file_contexts, so no relabel at boot.
    let label = |p: &str| {
        xattrs(&m.join(p))
            .get(&b"security.selinux"[..])
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(
        label("home/guestonly/.ssh/authorized_keys").as_deref(),
        Some("unconfined_u:object_r:ssh_home_t:s0\0")
    );
    assert_eq!(
        label("home/guestonly/.ssh").as_deref(),
        Some("unconfined_u:object_r:ssh_home_t:s0\0")
    );
    assert_eq!(
        label("etc/machine-info").as_deref(),
        Some("system_u:object_r:hostname_etc_t:s0\0")
    );
    assert_eq!(
        label("usr/lib/virt-sysprep/firstboot.sh").as_deref(),
        Some("system_u:object_r:bin_t:s0\0")
    );
    assert!(!m.join(".autorelabel").exists());
    assert!(out.contains("labelled"), "{out}");
    // The SELinux label of a rewritten file survives (the atomic replace copies xattrs).
    assert_eq!(
        xattrs(&m.join("etc/hostname"))
            .get(&b"security.selinux"[..])
            .map(|v| v.as_slice()),
        Some(&b"system_u:object_r:etc_t:s0\0"[..])
    );
}

#[test]
fn sysprep_defaults_and_listing() {
    need(&["qemu-img", "e2fsck", "mount", "losetup"]);
    let list = ok(
        Command::new(env!("CARGO_BIN_EXE_vdisk"))
            .args(["sysprep", "--list-operations"])
            .output()
            .unwrap(),
        "list",
    );
    assert!(
        list.lines()
            .any(|l| l == "ssh-hostkeys * Remove the SSH host keys (sshd makes new ones)"),
        "{list}"
    );
    let d = centos_disk();
    let dir = d.tmp.path();
    // Give the template what sysprep removes, through vdisk's own writes.
    for (path, content) in [
        ("/etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
        ("/etc/ssh/ssh_host_rsa_key", "secret\n"),
        ("/etc/ssh/ssh_host_rsa_key.pub", "public\n"),
        ("/etc/ssh/sshd_config", "PermitRootLogin no\n"),
        ("/var/log/messages", "log\n"),
        ("/root/.bash_history", "history\n"),
        ("/var/lib/yum/uuid", "uuid\n"),
        ("/etc/udev/rules.d/70-persistent-net.rules", "rule\n"),
    ] {
        let parent = path.rsplit_once('/').unwrap().0;
        ok(
            Command::new(env!("CARGO_BIN_EXE_vdisk"))
                .args(["customize", "-a"])
                .arg(&d.qcow2)
                .args(["--mkdir", parent, "--write", &format!("{path}:{content}")])
                .output()
                .unwrap(),
            "seed",
        );
    }
    ok(
        Command::new(env!("CARGO_BIN_EXE_vdisk"))
            .args([
                "customize",
                "-a",
            ])
            .arg(&d.qcow2)
            .args(["--edit", "/etc/sysconfig/network-scripts/ifcfg-eth0:s/^ONBOOT=yes$/ONBOOT=yes\\nHWADDR=52:54:00:00:00:01/"])
            .output()
            .unwrap(),
        "seed hwaddr",
    );
    let before = sha256(&d.qcow2);
    let dry = ok(
        Command::new(env!("CARGO_BIN_EXE_vdisk"))
            .args(["sysprep", "-n", "-a"])
            .arg(&d.qcow2)
            .output()
            .unwrap(),
        "sysprep -n",
    );
    assert!(dry.contains("Performing \"ssh-hostkeys\""), "{dry}");
    assert_eq!(sha256(&d.qcow2), before, "the dry run wrote the image");
    let raw = dir.join("dry.raw");
    to_raw(&d.qcow2, &raw);
    {
        let m = dir.join("m0");
        let _k = KernelMount::loop_ro(&raw, d.root.0, d.root.1, &m);
        assert!(m.join("etc/ssh/ssh_host_rsa_key").exists(), "dry run wrote");
    }
    fs::remove_file(&raw).unwrap();
    ok(
        Command::new(env!("CARGO_BIN_EXE_vdisk"))
            .args(["sysprep", "-a"])
            .arg(&d.qcow2)
            .args([
                "--operations",
                "defaults,-bash-history",
                "--hostname",
                "prepped",
            ])
            .output()
            .unwrap(),
        "sysprep",
    );
    to_raw(&d.qcow2, &raw);
    assert_fsck_clean(&raw, d.root, &dir.join("root.fs"));
    let m = dir.join("m1");
    let _k = KernelMount::loop_ro(&raw, d.root.0, d.root.1, &m);
    assert_eq!(fs::metadata(m.join("etc/machine-id")).unwrap().len(), 0);
    for gone in [
        "etc/ssh/ssh_host_rsa_key",
        "etc/ssh/ssh_host_rsa_key.pub",
        "var/log/messages",
        "var/lib/yum/uuid",
        "etc/udev/rules.d/70-persistent-net.rules",
    ] {
        assert!(!m.join(gone).exists(), "{gone} still there");
    }
    assert!(m.join("etc/ssh/sshd_config").exists());
    assert!(
        m.join("root/.bash_history").exists(),
        "-bash-history kept it"
    );
    let ifcfg = text(&m.join("etc/sysconfig/network-scripts/ifcfg-eth0"));
    assert!(!ifcfg.contains("HWADDR"), "{ifcfg}");
    assert_eq!(text(&m.join("etc/hostname")), "prepped\n");
}

#[test]
fn refusals_are_one_line_naming_the_way() {
    let out = Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args([
            "customize",
            "-a",
            "/nonexistent.qcow2",
            "--run-command",
            "yum -y install vim",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--run-command") && err.contains("--firstboot-command"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args([
            "sysprep",
            "-a",
            "/nonexistent.qcow2",
            "--operations",
            "lvm-uuids",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("lvm-uuids"));
}

/// A Debian-like root (ext4 straight on the disk, no partition table, as `-m /dev/sda`
/// opens it): hostname with /etc/hosts's 127.0.1.1 line, an ifupdown stanza, timezone with
/// /etc/timezone, a SysV-only firstboot, and --commands-from-file.
#[test]
fn debian_like_guest() {
    need(&["mkfs.ext4", "e2fsck", "mount", "losetup"]);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let t = d.join("tree");
    let w = |p: &str, c: &str| {
        let f = t.join(p.trim_start_matches('/'));
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, c).unwrap();
    };
    w("/etc/debian_version", "12.5\n");
    w(
        "/etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
    );
    w("/etc/hostname", "tmpl\n");
    w(
        "/etc/hosts",
        "127.0.0.1\tlocalhost\n127.0.1.1\ttmpl.lan\ttmpl\n\n::1 localhost ip6-localhost\n",
    );
    w(
        "/etc/network/interfaces",
        "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\nallow-hotplug ens3\niface ens3 inet dhcp\n",
    );
    w("/etc/fstab", "/dev/sda / ext4 errors=remount-ro 0 1\n");
    w("/usr/share/zoneinfo/Europe/Paris", "TZif2-paris");
    w("/etc/localtime", "TZif2-utc");
    w("/etc/timezone", "Etc/UTC\n");
    fs::create_dir_all(t.join("etc/init.d")).unwrap();
    let cmds = d.join("cmds");
    fs::write(
        &cmds,
        "# the clone's settings\nhostname web1.lan\nnetwork-static ens3=10.1.2.3/16,gw=10.1.0.1,dns=10.1.0.53\n\
         timezone Europe/Paris\nfirstboot-command echo hello\nwrite /etc/motd:line one\\\nline two\n",
    )
    .unwrap();
    let img = d.join("deb.raw");
    sh(&format!(
        "mkfs.ext4 -q -F -d {} {} 32M",
        t.display(),
        img.display()
    ));
    let out = ok(
        Command::new(env!("CARGO_BIN_EXE_vdisk"))
            .args(["customize", "--format", "raw", "-a"])
            .arg(&img)
            .args(["-m", "/dev/sda"])
            .arg(format!("--commands-from-file={}", cmds.display()))
            .output()
            .unwrap(),
        "customize",
    );
    assert!(out.contains("ifupdown"), "{out}");
    let scratch = d.join("check.fs");
    assert_fsck_clean(&img, (0, fs::metadata(&img).unwrap().len()), &scratch);
    let m = d.join("mnt");
    let _k = KernelMount::loop_ro(&img, 0, fs::metadata(&img).unwrap().len(), &m);
    assert_eq!(text(&m.join("etc/hostname")), "web1.lan\n");
    assert_eq!(
        text(&m.join("etc/hosts")),
        "127.0.0.1\tlocalhost\n127.0.1.1\tweb1.lan web1\n\n::1 localhost ip6-localhost\n"
    );
    assert_eq!(
        text(&m.join("etc/network/interfaces")),
        "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\nallow-hotplug ens3\n\
         iface ens3 inet static\n    address 10.1.2.3/16\n    gateway 10.1.0.1\n    dns-nameservers 10.1.0.53\n"
    );
    assert_eq!(
        fs::read_link(m.join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Europe/Paris")
    );
    assert_eq!(text(&m.join("etc/timezone")), "Europe/Paris\n");
    assert_eq!(text(&m.join("etc/motd")), "line one\nline two");
    assert_eq!(
        fs::read_link(m.join("etc/rc2.d/S99guestfs-firstboot")).unwrap(),
        Path::new("../init.d/guestfs-firstboot")
    );
    assert_eq!(
        fs::read_link(m.join("etc/init.d/guestfs-firstboot")).unwrap(),
        Path::new("/usr/lib/virt-sysprep/firstboot.sh")
    );
    assert!(text(&m.join("usr/lib/virt-sysprep/scripts/0001-echo-hello")).contains("echo hello"));
}

/// The seed's own template kind: a CentOS 7 disk whose root LV is XFS. The clone sets the
/// hostname in the overlay; the root LV read from the overlay passes `xfs_repair -n` and the
/// kernel's mount shows the new hostname; the template's bytes are unchanged.
#[test]
fn clone_of_an_xfs_template() {
    need(&["mkfs.xfs", "xfs_repair", "qemu-img"]);
    let d = centos_disk_with(RootFs::Xfs);
    let before = sha256(&d.raw);
    let new = d.tmp.path().join("x.qcow2");
    let out = Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(["clone", "--format", "raw"])
        .arg(&d.raw)
        .arg(&new)
        .args(["--hostname", "xfs-clone.example.com"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&d.raw), before);
    let flat = d.path("x-flat.raw");
    sh(&format!(
        "qemu-img convert -O raw {} {}",
        new.display(),
        flat.display()
    ));
    let lv = d.path("x-root.raw");
    sh(&format!(
        "dd if={} of={} bs=1M skip={} count={} iflag=skip_bytes,count_bytes status=none",
        flat.display(),
        lv.display(),
        d.root.0,
        d.root.1
    ));
    let rep = Command::new("timeout")
        .args(["120", "xfs_repair", "-n"])
        .arg(&lv)
        .output()
        .unwrap();
    assert!(
        rep.status.success(),
        "xfs_repair -n: {}{}",
        String::from_utf8_lossy(&rep.stdout),
        String::from_utf8_lossy(&rep.stderr)
    );
    let k = d.path("x-kernel");
    let m = KernelMount::loop_ro(&lv, 0, d.root.1, &k);
    assert_eq!(
        fs::read_to_string(m.0.join("etc/hostname")).unwrap(),
        "xfs-clone.example.com\n"
    );
}

/// A clone whose operations fail (an upload from a host file that does not exist) fails
/// with one line naming the reason, leaves no new image, and the template's bytes are
/// unchanged.
#[test]
fn failed_clone_leaves_nothing() {
    need(&["qemu-img"]);
    let d = centos_disk();
    let before = sha256(&d.raw);
    let new = d.tmp.path().join("x.qcow2");
    let out = Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(["clone", "--format", "raw"])
        .arg(&d.raw)
        .arg(&new)
        .args([
            "--hostname",
            "x",
            "--upload",
            "/nonexistent/vdisk-missing:/etc/x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/vdisk-missing"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!new.exists(), "the failed clone left {}", new.display());
    assert_eq!(sha256(&d.raw), before);
}

/// A Debian-like UEFI guest on GPT: sda1 a FAT32 EFI system partition mounted at /boot/efi
/// by UUID, sda2 the ext4 root. `vdisk clone` (inspection finds the root and mounts the ESP
/// from fstab) sets hostname, static address, root password, an SSH key and a first-boot
/// command, and writes a file on the ESP; the kernel's loop mount of each partition of the
/// overlay, read by qemu-img, sees it all; e2fsck, fsck.fat and qemu-img check are clean;
/// the template's bytes are unchanged.
#[test]
fn debian_gpt_guest_with_an_esp() {
    need(&[
        "sfdisk",
        "mkfs.fat",
        "mmd",
        "mcopy",
        "mtype",
        "fsck.fat",
        "mkfs.ext4",
        "qemu-img",
        "openssl",
        "mount",
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let t = d.join("tree");
    let w = |p: &str, c: &str| {
        let f = t.join(p.trim_start_matches('/'));
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, c).unwrap();
    };
    w("/etc/debian_version", "12.5\n");
    w(
        "/etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nID=debian\nVERSION_ID=\"12\"\n",
    );
    w("/etc/hostname", "tmpl\n");
    w("/etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\ttmpl\n");
    w(
        "/etc/network/interfaces",
        "auto lo\niface lo inet loopback\n\nallow-hotplug enp1s0\niface enp1s0 inet dhcp\n",
    );
    w(
        "/etc/fstab",
        "/dev/sda2 / ext4 errors=remount-ro 0 1\nUUID=CAFE-F00D /boot/efi vfat umask=0077 0 1\n",
    );
    w(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\ndebian:x:1000:1000::/home/debian:/bin/bash\n",
    );
    w(
        "/etc/shadow",
        "root:*:19000:0:99999:7:::\ndebian:!:19000:0:99999:7:::\n",
    );
    fs::set_permissions(t.join("etc/shadow"), fs::Permissions::from_mode(0o640)).unwrap();
    w("/etc/group", "root:x:0:\ndebian:x:1000:\n");
    w("/etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    fs::create_dir_all(t.join("root")).unwrap();
    fs::create_dir_all(t.join("boot/efi")).unwrap();
    fs::create_dir_all(t.join("etc/systemd/system/multi-user.target.wants")).unwrap();
    fs::create_dir_all(t.join("usr/lib/systemd/system")).unwrap();
    sh(&format!(
        "cd {d}
         truncate -s 128M disk.raw
         printf 'label: gpt\\nstart=2048, size=81920, type=U\\nstart=83968, type=L\\n' | sfdisk -q disk.raw
         truncate -s 40M esp.img
         mkfs.fat -F 32 -i CAFEF00D -n EFI esp.img >/dev/null
         mmd -i esp.img ::/EFI ::/EFI/debian
         printf 'set timeout=5\\n' > grub.cfg
         mcopy -i esp.img grub.cfg ::/EFI/debian/grub.cfg
         dd if=esp.img of=disk.raw bs=1M seek=1 conv=notrunc status=none
         truncate -s 80M root.img
         mkfs.ext4 -q -F -d {t} root.img
         dd if=root.img of=disk.raw bs=512 seek=83968 conv=notrunc status=none",
        d = d.display(),
        t = t.display()
    ));
    let raw = d.join("disk.raw");
    let before = sha256(&raw);
    let new = d.join("web2.qcow2");
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0vdiskgpttestkey op@host";
    let out = ok(
        Command::new(env!("CARGO_BIN_EXE_vdisk"))
            .args(["clone", "--format", "raw"])
            .arg(&raw)
            .arg(&new)
            .args([
                "--hostname",
                "web2.example.org",
                "--network-static",
                "enp1s0=10.20.0.7/24,gw=10.20.0.1,dns=10.20.0.53",
                "--root-password",
                "password:gpt-Pass 1",
                "--ssh-inject",
                &format!("root:string:{key}"),
                "--firstboot-command",
                "echo first boot on gpt",
                "--write",
                "/boot/efi/EFI/debian/grub.cfg:set timeout=1\n",
            ])
            .output()
            .unwrap(),
        "clone",
    );
    assert!(out.contains("ifupdown"), "{out}");
    assert_eq!(sha256(&raw), before, "the template was written");
    let flat = d.join("flat.raw");
    to_raw(&new, &flat);
    // The ESP: fsck.fat clean, the new grub.cfg in place, the rest as it was.
    sh(&format!(
        "dd if={} of={d}/esp-out.img bs=1M skip=1 count=40 status=none; fsck.fat -n {d}/esp-out.img",
        flat.display(),
        d = d.display()
    ));
    let cfg = sh(&format!(
        "MTOOLS_SKIP_CHECK=1 mtype -i {}/esp-out.img ::/EFI/debian/grub.cfg",
        d.display()
    ));
    assert_eq!(cfg, "set timeout=1\n");
    // The root: e2fsck clean, and the kernel sees every change.
    let (off, len) = (83968 * 512, 128 * MIB - 83968 * 512 - 33 * 512);
    assert_fsck_clean(&flat, (off, len), &d.join("check.fs"));
    let m = d.join("mnt");
    let _k = KernelMount::loop_ro(&flat, off, len, &m);
    assert_eq!(text(&m.join("etc/hostname")), "web2.example.org\n");
    // The kernel hostname is the whole of /etc/hostname, so /etc/hosts names it in full.
    assert!(
        text(&m.join("etc/hosts")).contains("127.0.1.1\tweb2.example.org web2\n"),
        "{}",
        text(&m.join("etc/hosts"))
    );
    let ifaces = text(&m.join("etc/network/interfaces"));
    assert!(
        ifaces.contains(
            "iface enp1s0 inet static\n    address 10.20.0.7/24\n    gateway 10.20.0.1\n"
        ),
        "{ifaces}"
    );
    let shadow = text(&m.join("etc/shadow"));
    let root = shadow.lines().find(|l| l.starts_with("root:")).unwrap();
    assert_hash(root.split(':').nth(1).unwrap(), "gpt-Pass 1");
    assert_eq!(
        meta(&m.join("etc/shadow")).0,
        0o640,
        "shadow keeps its mode"
    );
    let keys = m.join("root/.ssh/authorized_keys");
    assert!(text(&keys).contains(key));
    assert_eq!(meta(&keys), (0o600, 0, 0));
    assert_eq!(meta(&m.join("root/.ssh")), (0o700, 0, 0));
    let unit = text(&m.join("usr/lib/systemd/system/guestfs-firstboot.service"));
    assert!(unit.contains("ExecStart"), "{unit}");
    let scripts: Vec<_> = fs::read_dir(m.join("usr/lib/virt-sysprep/scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        scripts
            .iter()
            .any(|p| text(p).contains("echo first boot on gpt")),
        "{scripts:?}"
    );
    // sysprep's defaults ran on the clone: a new machine identity.
    assert_ne!(
        text(&m.join("etc/machine-id")),
        "0123456789abcdef0123456789abcdef\n"
    );
}
