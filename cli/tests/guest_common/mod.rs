//! Builds a CentOS-7-like guest disk at run time with the real tools, for the guest command
//! tests: MBR; /boot ext4 on sda1; sda2 an LVM PV of VG `centos` with LVs `root` (ext4 with
//! CentOS 7's features, `-O ^metadata_csum,^64bit`) and `swap`; wrapped in a qcow2 overlay.
//!
//! This kernel has no device-mapper, so the LVM metadata is written with
//! `pvcreate --restorefile` + `vgcfgrestore` on a loop device under a private
//! `LVM_SYSTEM_DIR` (as guestfs/tests/plvm_common does), the LV offsets are read back with
//! `pvs`/`lvs`, and the filesystems, built separately with `mkfs.ext4 -d`, are written at
//! those offsets.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const MIB: u64 = 1 << 20;

pub const BOOT_UUID: &str = "0b5e3f5a-3c1d-4d8e-9a0b-1f2e3d4c5b6a";
pub const ROOT_UUID: &str = "7a1c2b3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
pub const SWAP_UUID: &str = "c0ffee00-1234-4abc-8def-0123456789ab";
pub const PV_UUID: &str = "Pv0000-aaaa-bbbb-cccc-dddd-eeee-ffff00";
pub const HOSTNAME: &str = "centos7-template.example.com";
/// The guest's /etc/passwd: nothing like the host's, so a read that escaped to the host shows.
pub const GUEST_PASSWD: &str =
    "root:x:0:0:root:/root:/bin/bash\nguestonly:x:1000:1000::/home/guestonly:/bin/bash\n";

/// Runs `script` with bash -e; panics with its output when it fails. Returns stdout.
pub fn sh(script: &str) -> String {
    let out = Command::new("bash")
        .arg("-ec")
        .arg(script)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "command failed: {script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails the test when a reference tool is missing: a skipped differential test proves
/// nothing (.ci/run installs every tool).
pub fn need(tools: &[&str]) {
    for t in tools {
        let ok = Command::new("bash")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(ok, "{t} is not installed (run .ci/run)");
    }
}

/// Runs the vdisk binary under test.
pub fn vdisk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(args)
        .output()
        .expect("run vdisk")
}

/// stdout of a successful vdisk run (bytes).
pub fn vdisk_ok(args: &[&str]) -> Vec<u8> {
    let out = vdisk(args);
    assert!(
        out.status.success(),
        "vdisk {args:?} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A loop device over part of a file, detached on drop.
pub struct Loop(pub String);

impl Loop {
    pub fn new(file: &Path, offset: u64, size: u64) -> Loop {
        let dev = sh(&format!(
            "losetup -f --show -o {offset} --sizelimit {size} {}",
            file.display()
        ));
        Loop(dev.trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A kernel mount, unmounted on drop.
pub struct KernelMount(pub PathBuf);

impl KernelMount {
    /// `mount -o loop,ro,offset=N,sizelimit=M IMAGE DIR`.
    pub fn loop_ro(image: &Path, offset: u64, size: u64, dir: &Path) -> KernelMount {
        fs::create_dir_all(dir).unwrap();
        sh(&format!(
            "mount -o loop,ro,offset={offset},sizelimit={size} {} {}",
            image.display(),
            dir.display()
        ));
        KernelMount(dir.to_path_buf())
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A `vdisk mount`, unmounted on drop (with `vdisk umount`, then lazily if that failed) so
/// a failing test leaves no mount behind.
pub struct VdiskMount(pub PathBuf);

impl Drop for VdiskMount {
    fn drop(&mut self) {
        let d = self.0.to_str().unwrap().to_string();
        if is_mounted(&self.0) {
            let ok = vdisk(&["umount", &d]).status.success();
            if !ok && is_mounted(&self.0) {
                let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            }
        }
    }
}

/// True when something is mounted exactly on `dir` (per /proc/self/mountinfo).
pub fn is_mounted(dir: &Path) -> bool {
    mount_source(dir).is_some()
}

/// The source field of the topmost mount on `dir`.
pub fn mount_source(dir: &Path) -> Option<String> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mp = pre.split(' ').nth(4)?;
            let src = post.split(' ').nth(1)?;
            Some((mp.to_string(), src.to_string()))
        })
        .filter(|(mp, _)| Path::new(mp) == dir)
        .map(|(_, s)| s)
        .next_back()
}

/// The guest disk and everything the tests compare it with.
pub struct CentosDisk {
    pub tmp: tempfile::TempDir,
    /// The raw template.
    pub raw: PathBuf,
    /// The qcow2 overlay over it.
    pub qcow2: PathBuf,
    /// The directory fed to `mkfs.ext4 -d` for the root LV.
    pub root_tree: PathBuf,
    /// The directory fed to `mkfs.ext4 -d` for /boot.
    pub boot_tree: PathBuf,
    /// (offset, size) in disk.raw of /boot (sda1), the root LV and the swap LV.
    pub boot: (u64, u64),
    pub root: (u64, u64),
    pub swap: (u64, u64),
}

impl CentosDisk {
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Extracts `range` of disk.raw into a file (for blkid -p).
    pub fn extract(&self, range: (u64, u64), name: &str) -> PathBuf {
        let out = self.path(name);
        sh(&format!(
            "dd if={} of={} bs=1M skip={} count={} iflag=skip_bytes,count_bytes status=none",
            self.raw.display(),
            out.display(),
            range.0,
            range.1
        ));
        out
    }
}

fn write(path: &Path, data: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Deterministic pseudo-random bytes (xorshift), so files have no runs to compress.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn root_tree(t: &Path) {
    let fstab = format!(
        "\n#\n# /etc/fstab\n# Created by anaconda on Mon Jan  1 00:00:00 2024\n#\n\
         /dev/mapper/centos-root /                       ext4    defaults        1 1\n\
         UUID={BOOT_UUID} /boot                   ext4    defaults        1 2\n\
         /dev/mapper/centos-swap swap                    swap    defaults        0 0\n\
         tmpfs                   /dev/shm                tmpfs   defaults        0 0\n"
    );
    write(&t.join("etc/fstab"), fstab.as_bytes(), 0o644);
    write(
        &t.join("etc/os-release"),
        b"NAME=\"CentOS Linux\"\nVERSION=\"7 (Core)\"\nID=\"centos\"\nID_LIKE=\"rhel fedora\"\n\
          VERSION_ID=\"7\"\nPRETTY_NAME=\"CentOS Linux 7 (Core)\"\nANSI_COLOR=\"0;31\"\n\
          CPE_NAME=\"cpe:/o:centos:centos:7\"\nHOME_URL=\"https://www.centos.org/\"\n",
        0o644,
    );
    write(
        &t.join("etc/centos-release"),
        b"CentOS Linux release 7.9.2009 (Core)\n",
        0o644,
    );
    std::os::unix::fs::symlink("centos-release", t.join("etc/redhat-release")).unwrap();
    std::os::unix::fs::symlink("centos-release", t.join("etc/system-release")).unwrap();
    write(
        &t.join("etc/hostname"),
        format!("{HOSTNAME}\n").as_bytes(),
        0o644,
    );
    write(
        &t.join("etc/sysconfig/network"),
        b"# Created by anaconda\nNETWORKING=yes\n",
        0o644,
    );
    write(
        &t.join("etc/sysconfig/network-scripts/ifcfg-eth0"),
        b"TYPE=Ethernet\nBOOTPROTO=none\nNAME=eth0\nDEVICE=eth0\nONBOOT=yes\n\
          IPADDR=192.168.122.10\nPREFIX=24\nGATEWAY=192.168.122.1\nDNS1=192.168.122.1\n",
        0o644,
    );
    write(&t.join("etc/passwd"), GUEST_PASSWD.as_bytes(), 0o644);
    write(
        &t.join("etc/shadow"),
        b"root:!!:19000:0:99999:7:::\n",
        0o000,
    );
    write(&t.join("etc/hosts"), b"127.0.0.1 localhost\n", 0o644);
    // Symlinks: absolute (to the guest's /etc/passwd), relative escaping the root, slow
    // (longer than the 60 bytes an inode holds), dangling.
    std::os::unix::fs::symlink("/etc/passwd", t.join("etc/passwd-link")).unwrap();
    fs::create_dir_all(t.join("usr/lib/deep")).unwrap();
    std::os::unix::fs::symlink(
        "../../../../../../etc/passwd",
        t.join("usr/lib/deep/escape"),
    )
    .unwrap();
    let long = format!("/usr/lib/{}/target", "x".repeat(80));
    std::os::unix::fs::symlink(&long, t.join("usr/lib/long-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/file", t.join("usr/lib/dangling")).unwrap();
    // bin -> usr/bin as on CentOS 7, with a real ELF binary (this host's bash).
    fs::create_dir_all(t.join("usr/bin")).unwrap();
    fs::copy("/bin/bash", t.join("usr/bin/bash")).unwrap();
    std::os::unix::fs::symlink("usr/bin", t.join("bin")).unwrap();
    // Binary files: random, empty, odd size, one spanning many extents' worth of blocks.
    write(&t.join("usr/lib/random.bin"), &noise(1, 300_001), 0o644);
    write(&t.join("usr/lib/empty"), b"", 0o644);
    write(
        &t.join("usr/lib/big.bin"),
        &noise(2, 3 * MIB as usize + 17),
        0o640,
    );
    write(&t.join("usr/bin/suid-tool"), &noise(3, 4096), 0o4755);
    write(&t.join("home/guestonly/.bashrc"), b"# guest user\n", 0o600);
    sh(&format!(
        "chown -R 1000:1000 {0}/home/guestonly; chmod 700 {0}/home/guestonly; \
         mkfifo -m 0620 {0}/usr/lib/fifo; chmod 1777 {0}/usr/lib/deep",
        t.display()
    ));
    // A directory of many entries, and names that are not UTF-8 or hold spaces.
    for i in 0..400 {
        write(
            &t.join(format!("var/many/file-{i:04}")),
            format!("{i}\n").as_bytes(),
            0o644,
        );
    }
    write(&t.join("var/odd names/with space"), b"space\n", 0o644);
    let latin1 = {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(b"caf\xe9")
    };
    write(&t.join("var/odd names").join(latin1), b"latin1\n", 0o644);
    // Extended attributes: an SELinux label as CentOS has on every file, and a user one.
    set_xattr(
        &t.join("etc/hostname"),
        "security.selinux",
        b"system_u:object_r:etc_t:s0\0",
    );
    set_xattr(&t.join("etc/hostname"), "user.vdisk", b"hello");
    set_xattr(&t.join("usr/lib/random.bin"), "user.big", &noise(5, 300));
    // The mountpoint of /boot, and other empty directories.
    fs::create_dir_all(t.join("boot")).unwrap();
    fs::create_dir_all(t.join("mnt")).unwrap();
    // Fixed times, so the comparisons cover mtime.
    sh(&format!(
        "find {} -exec touch -h -d '2021-03-04 05:06:07.123456789' {{}} +",
        t.display()
    ));
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated and alive for the call; value is a valid slice.
    let r = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {p:?}: {}", std::io::Error::last_os_error());
}

/// The extended attributes of `p` (not following a symlink), name -> value.
pub fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: the path is NUL-terminated; the buffer is valid for its length.
    let n = unsafe { libc::llistxattr(path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        n >= 0,
        "listxattr {p:?}: {}",
        std::io::Error::last_os_error()
    );
    names.truncate(n as usize);
    let mut out = BTreeMap::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: as above; the value buffer is valid for its length.
        let m = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                cname.as_ptr(),
                v.as_mut_ptr().cast(),
                v.len(),
            )
        };
        assert!(
            m >= 0,
            "getxattr {p:?}: {}",
            std::io::Error::last_os_error()
        );
        v.truncate(m as usize);
        out.insert(name.to_vec(), v);
    }
    out
}

fn boot_tree(t: &Path) {
    write(
        &t.join("grub2/grub.cfg"),
        b"set default=0\nmenuentry 'CentOS Linux' { linux16 /vmlinuz root=/dev/mapper/centos-root }\n",
        0o644,
    );
    write(
        &t.join("vmlinuz-3.10.0-1160.el7.x86_64"),
        &noise(4, 200_000),
        0o755,
    );
    write(
        &t.join("config-3.10.0-1160.el7.x86_64"),
        b"CONFIG_EXT4_FS=y\n",
        0o644,
    );
}

fn vg_text(p2_sectors: u64, pe_count: u64) -> String {
    let lv = |name: &str, id: char, count: u64, pe: u64| {
        let u = id.to_string();
        let uuid = format!(
            "{a}-{b}-{b}-{b}-{b}-{b}-{a}",
            a = u.repeat(6),
            b = u.repeat(4)
        );
        format!(
            "{name} {{\nid = \"{uuid}\"\nstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\nflags = []\n\
             segment_count = 1\nsegment1 {{\nstart_extent = 0\nextent_count = {count}\n\
             type = \"striped\"\nstripe_count = 1\nstripes = [\n\"pv0\", {pe}\n]\n}}\n}}\n"
        )
    };
    format!(
        "centos {{\nid = \"Vgid00-0000-0000-0000-0000-0000-000000\"\nseqno = 3\n\
         format = \"lvm2\"\nstatus = [\"RESIZEABLE\", \"READ\", \"WRITE\"]\nflags = []\n\
         extent_size = 8192\nmax_lv = 0\nmax_pv = 0\nmetadata_copies = 0\n\n\
         physical_volumes {{\npv0 {{\nid = \"{PV_UUID}\"\ndevice = \"/dev/null\"\n\
         status = [\"ALLOCATABLE\"]\nflags = []\ndev_size = {p2_sectors}\npe_start = 2048\n\
         pe_count = {pe_count}\n}}\n}}\n\nlogical_volumes {{\n{}{}}}\n}}\n\
         contents = \"Text Format Volume Group\"\nversion = 1\ndescription = \"\"\n\
         creation_host = \"test\"\ncreation_time = 1\n",
        lv("root", 'R', 12, 2),
        lv("swap", 'W', 2, 0),
    )
}

/// Builds the disk: 128 MiB, sda1 = 32 MiB /boot, sda2 = PV; root LV 48 MiB, swap LV 8 MiB.
pub fn centos_disk() -> CentosDisk {
    centos_disk_with(RootFs::Ext4)
}

/// The root LV's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootFs {
    /// ext4 with CentOS 7's features, built with `mkfs.ext4 -d`.
    Ext4,
    /// XFS v5 with CentOS 7's mkfs.xfs features, filled through a kernel loop mount, every
    /// file labelled with `security.selinux` as an installed CentOS labels it.
    Xfs,
}

/// As [`centos_disk`], with the root LV's filesystem chosen.
pub fn centos_disk_with(rootfs: RootFs) -> CentosDisk {
    need(&[
        "sfdisk",
        "pvcreate",
        "vgcfgrestore",
        "mkfs.ext4",
        "mkswap",
        "losetup",
        "qemu-img",
        "blkid",
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    let raw = d.join("disk.raw");
    let (root_t, boot_t) = (d.join("root-tree"), d.join("boot-tree"));
    root_tree(&root_t);
    if rootfs == RootFs::Xfs {
        let f = root_t.join("etc/fstab");
        let t = fs::read_to_string(&f).unwrap().replace(
            "/dev/mapper/centos-root /                       ext4 ",
            "/dev/mapper/centos-root /                       xfs  ",
        );
        fs::write(&f, t).unwrap();
    }
    boot_tree(&boot_t);
    sh(&format!(
        "truncate -s 128M {0}; printf 'label: dos\\nstart=2048, size=32MiB, type=83, bootable\\ntype=8e\\n' \
         | sfdisk -q {0}",
        raw.display()
    ));
    let parts = sh(&format!("sfdisk -J {} | tr -d ' \\n'", raw.display()));
    // "start":N,"size":M for each partition, in order.
    let nums: Vec<u64> = parts
        .split(['{', '}', ','])
        .filter_map(|kv| {
            let (k, v) = kv.split_once(':')?;
            matches!(k, "\"start\"" | "\"size\"").then(|| v.parse().ok())?
        })
        .collect();
    let (p2_start, p2_size) = (nums[2] * 512, nums[3] * 512);
    let boot = (nums[0] * 512, nums[1] * 512);
    let lp = Loop::new(&raw, p2_start, p2_size);
    let lvm = d.join("lvm");
    fs::create_dir_all(&lvm).unwrap();
    let filter = format!("[ \"a|^{}$|\", \"r|.*|\" ]", lp.0);
    fs::write(
        lvm.join("lvm.conf"),
        format!(
            "devices {{\n filter = {filter}\n global_filter = {filter}\n \
             obtain_device_list_from_udev = 0\n use_devicesfile = 0\n \
             external_device_info_source = \"none\"\n hints = \"none\"\n}}\n\
             global {{ locking_dir = \"{}\" use_lvmlockd = 0 event_activation = 0 }}\n\
             activation {{ udev_sync = 0 udev_rules = 0 monitoring = 0 }}\n\
             backup {{ backup = 0 archive = 0 }}\n",
            d.join("lvm-lock").display()
        ),
    )
    .unwrap();
    let meta = d.join("centos.meta");
    let pe_count = (p2_size - MIB) / (4 * MIB);
    fs::write(&meta, vg_text(p2_size / 512, pe_count)).unwrap();
    let lvm_sh = |cmd: &str| {
        sh(&format!(
            "export LVM_SYSTEM_DIR={}; {cmd} 2>/dev/null",
            lvm.display()
        ))
    };
    lvm_sh(&format!(
        "pvcreate -ff -y --restorefile {} --uuid {PV_UUID} {}",
        meta.display(),
        lp.0
    ));
    lvm_sh(&format!("vgcfgrestore -f {} centos", meta.display()));
    let pe_start: u64 = lvm_sh("pvs --noheadings --units b --nosuffix -o pe_start")
        .trim()
        .parse()
        .unwrap();
    // lv_name;seg_size;seg_pe_ranges ("/dev/loop0:2-13")
    let segs = lvm_sh(
        "lvs --segments --noheadings --units b --nosuffix --separator ';' \
         -o lv_name,seg_size,seg_pe_ranges centos",
    );
    drop(lp);
    let mut lvs = BTreeMap::new();
    for l in segs.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = l.trim().split(';').collect();
        let first: u64 = f[2]
            .rsplit_once(':')
            .unwrap()
            .1
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let size: u64 = f[1].parse().unwrap();
        lvs.insert(
            f[0].to_string(),
            (p2_start + pe_start + first * 4 * MIB, size),
        );
    }
    let (root, swap) = (lvs["root"], lvs["swap"]);
    let mkroot = match rootfs {
        RootFs::Ext4 => format!(
            "mkfs.ext4 -q -F -O ^metadata_csum,^64bit -L root -U {ROOT_UUID} -d root-tree root.fs {}k",
            root.1 / 1024
        ),
        // mkfs.xfs refuses < 300 MB unless run with the fstests variables.
        RootFs::Xfs => format!(
            "truncate -s {} root.fs
             TEST_DIR=/tmp TEST_DEV=/dev/null QA_CHECK_FS=xfs mkfs.xfs -q -f -L root \
               -m uuid={ROOT_UUID} -m crc=1,finobt=0 -i sparse=0 -m reflink=0,rmapbt=0 root.fs
             mkdir -p root-mnt; mount -o loop root.fs root-mnt
             cp -a root-tree/. root-mnt/
             find root-mnt -exec python3 -c 'import os,sys
for p in sys.argv[1:]: os.setxattr(p, \"security.selinux\", b\"system_u:object_r:etc_t:s0\\0\", follow_symlinks=False)' {{}} +
             umount root-mnt; rmdir root-mnt
             timeout 120 xfs_repair -n root.fs >/dev/null",
            root.1
        ),
    };
    sh(&format!(
        "cd {t}
         mkfs.ext4 -q -F -L boot -U {BOOT_UUID} -d boot-tree boot.fs {bk}k
         {mkroot}
         truncate -s {sw} swap.fs; mkswap -q -L swap -U {SWAP_UUID} swap.fs
         dd if=boot.fs of=disk.raw bs=1M seek={bo} oflag=seek_bytes conv=notrunc status=none
         dd if=root.fs of=disk.raw bs=1M seek={ro} oflag=seek_bytes conv=notrunc status=none
         dd if=swap.fs of=disk.raw bs=1M seek={so} oflag=seek_bytes conv=notrunc status=none
         rm boot.fs root.fs swap.fs
         qemu-img create -q -f qcow2 -b disk.raw -F raw test.qcow2",
        t = d.display(),
        bk = boot.1 / 1024,
        sw = swap.1,
        bo = boot.0,
        ro = root.0,
        so = swap.0,
    ));
    CentosDisk {
        qcow2: d.join("test.qcow2"),
        raw,
        root_tree: root_t,
        boot_tree: boot_t,
        boot,
        root,
        swap,
        tmp,
    }
}

/// What a comparison looks at for one file: kind and mode bits, owner, size, mtime, and
/// content (bytes of a file, target of a link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub content: Vec<u8>,
}

/// Every path under `root` (relative, as bytes) with what [`Entry`] records; directories'
/// sizes are left out (they depend on the filesystem, not the tree).
pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            // lost+found exists only in mkfs's output.
            if dir == root && e.file_name() == "lost+found" {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let content = if ft.is_symlink() {
                fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()
            } else if ft.is_file() {
                fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            if ft.is_dir() {
                todo.push(p.clone());
            }
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            out.insert(
                rel,
                Entry {
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: (m.mtime(), m.mtime_nsec()),
                    size: if ft.is_dir() { 0 } else { m.size() },
                    content,
                },
            );
        }
    }
    out
}

/// Asserts two snapshots are equal, naming the first path that differs.
pub fn assert_same_tree(
    ours: &BTreeMap<Vec<u8>, Entry>,
    want: &BTreeMap<Vec<u8>, Entry>,
    what: &str,
) {
    for (p, w) in want {
        let name = String::from_utf8_lossy(p);
        let o = ours
            .get(p)
            .unwrap_or_else(|| panic!("{what}: {name} is missing"));
        assert_eq!(
            o.mode, w.mode,
            "{what}: {name}: mode {:o} vs {:o}",
            o.mode, w.mode
        );
        assert_eq!((o.uid, o.gid), (w.uid, w.gid), "{what}: {name}: owner");
        assert_eq!(o.mtime, w.mtime, "{what}: {name}: mtime");
        assert_eq!(o.size, w.size, "{what}: {name}: size");
        assert!(o.content == w.content, "{what}: {name}: content differs");
    }
    for p in ours.keys() {
        assert!(
            want.contains_key(p),
            "{what}: {} is extra",
            String::from_utf8_lossy(p)
        );
    }
}
