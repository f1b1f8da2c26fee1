//! `vdisk mount` / `vdisk umount` (guestmount / guestunmount) on a CentOS-7-like disk behind
//! a qcow2 overlay: usable when the command returns, every file equal to the source through
//! FUSE, stacked `-m` and `-i` mountpoints, and an unmount that returns only once the server
//! has exited and released the image.

mod guest_common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use guest_common::*;

fn mount(d: &CentosDisk, args: &[&str], mnt: &Path) -> VdiskMount {
    fs::create_dir_all(mnt).unwrap();
    let mut all = vec![
        "mount",
        "--format",
        "qcow2",
        "-a",
        d.qcow2.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    all.push(mnt.to_str().unwrap());
    let out = vdisk(&all);
    // Guard first, so a half-made mount is still cleaned up.
    let guard = VdiskMount(mnt.to_path_buf());
    assert!(
        out.status.success(),
        "vdisk {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    guard
}

/// The pid in the mount's source ("vdisk:<pid>").
fn server_pid(mnt: &Path) -> i32 {
    let src = mount_source(mnt).expect("mounted");
    src.strip_prefix("vdisk:")
        .unwrap_or_else(|| panic!("source {src}"))
        .parse()
        .unwrap()
}

fn alive(pid: i32) -> bool {
    // A zombie has exited: only count processes still running.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit_once(") ").map(|x| x.1).unwrap_or("");
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

#[test]
fn stacked_mount_serves_every_file_and_umount_waits_for_the_server() {
    let d = centos_disk();
    let mnt = d.path("mnt");
    let guard = mount(
        &d,
        &["--ro", "-m", "/dev/centos/root", "-m", "/dev/sda1:/boot"],
        &mnt,
    );
    // Usable at once: no retry, no sleep.
    assert_eq!(
        fs::read_to_string(mnt.join("etc/hostname")).unwrap(),
        format!("{HOSTNAME}\n")
    );
    let pid = server_pid(&mnt);
    assert!(alive(pid));

    // Every file of the root tree (bytes, modes, owners, mtimes, link targets), through FUSE,
    // as a kernel loop mount of the same LV shows it; /boot from the second filesystem.
    let kmnt = d.path("kernel-root");
    let (kernel, kernel_xattrs) = {
        let _k = KernelMount::loop_ro(&d.raw, d.root.0, d.root.1, &kmnt);
        let s = snapshot(&kmnt);
        let x: Vec<_> = s
            .keys()
            .map(|p| xattrs(&kmnt.join(std::ffi::OsStr::from_bytes(p))))
            .collect();
        (s, x)
    };
    // Extended attributes (SELinux labels included) as the kernel reads them.
    for (p, want) in kernel.keys().zip(&kernel_xattrs) {
        let got = xattrs(&mnt.join(std::ffi::OsStr::from_bytes(p)));
        assert_eq!(&got, want, "xattrs of {}", String::from_utf8_lossy(p));
    }
    assert_eq!(
        xattrs(&mnt.join("etc/hostname"))[&b"user.vdisk".to_vec()],
        b"hello"
    );
    let mut ours = snapshot(&mnt);
    let boot: Vec<Vec<u8>> = ours
        .keys()
        .filter(|k| k.starts_with(b"boot/"))
        .cloned()
        .collect();
    let mut ours_boot = std::collections::BTreeMap::new();
    for k in boot {
        let v = ours.remove(&k).unwrap();
        ours_boot.insert(k[5..].to_vec(), v);
    }
    // The kernel sees the empty /boot directory of the root filesystem; we see the mounted
    // filesystem's root there, so only compare its kind.
    let (kb, ob) = (&kernel[&b"boot".to_vec()], &ours[&b"boot".to_vec()]);
    assert_eq!(kb.mode & 0o170000, ob.mode & 0o170000);
    let mut kernel_rest = kernel.clone();
    kernel_rest.remove(b"boot".as_slice());
    ours.remove(b"boot".as_slice());
    assert_same_tree(&ours, &kernel_rest, "FUSE / vs kernel");
    let kboot = {
        let _k = KernelMount::loop_ro(&d.raw, d.boot.0, d.boot.1, &kmnt);
        let mut s = snapshot(&kmnt);
        s.retain(|k, _| !k.starts_with(b"lost+found"));
        s
    };
    ours_boot.retain(|k, _| !k.starts_with(b"lost+found"));
    assert_same_tree(&ours_boot, &kboot, "FUSE /boot vs kernel");

    // Symlinks are the kernel's to follow: an absolute one resolves against the host's root
    // (that is what a FUSE mount is), so we only check the stored target.
    assert_eq!(
        fs::read_link(mnt.join("etc/passwd-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    // Read-only: writes fail with EROFS.
    let e = fs::write(mnt.join("etc/new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc_erofs()), "{e}");
    // xattrs and statfs work.
    let df = sh(&format!("stat -f -c '%b %S' {}", mnt.display()));
    assert!(!df.trim().is_empty());

    // While mounted, the image is locked against writers.
    let busy = std::process::Command::new("qemu-io")
        .args(["-c", "write 0 512"])
        .arg(&d.qcow2)
        .output()
        .unwrap();
    assert!(!busy.status.success(), "a writer got in while mounted");
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("lock"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );

    // umount returns after the server exited and released the image.
    let out = vdisk(&["umount", mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mnt));
    assert!(
        !alive(pid),
        "server {pid} still running after umount returned"
    );
    let free = std::process::Command::new("qemu-io")
        .args(["-c", "write 0 512"])
        .arg(&d.qcow2)
        .output()
        .unwrap();
    assert!(
        free.status.success(),
        "image still locked after umount: {}",
        String::from_utf8_lossy(&free.stderr)
    );
    drop(guard);
}

fn libc_erofs() -> i32 {
    30
}

#[test]
fn inspector_mount_follows_fstab() {
    let d = centos_disk();
    let mnt = d.path("mnt-i");
    let _g = mount(&d, &["-i"], &mnt);
    assert_eq!(
        fs::read(mnt.join("boot/grub2/grub.cfg")).unwrap(),
        fs::read(d.boot_tree.join("grub2/grub.cfg")).unwrap()
    );
    assert_eq!(
        fs::read(mnt.join("usr/lib/big.bin")).unwrap(),
        fs::read(d.root_tree.join("usr/lib/big.bin")).unwrap()
    );
    // Listing the root shows /boot as the mounted filesystem (its lost+found, its grub2).
    let names: Vec<String> = fs::read_dir(mnt.join("boot"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"grub2".to_string()), "{names:?}");
    let out = vdisk(&["umount", mnt.to_str().unwrap()]);
    assert!(out.status.success());
}

#[test]
fn mount_errors_leave_nothing_mounted() {
    let d = centos_disk();
    let mnt = d.path("mnt-e");
    fs::create_dir_all(&mnt).unwrap();
    let q = d.qcow2.to_str().unwrap();
    let m = mnt.to_str().unwrap();
    for (args, want) in [
        (vec!["-m", "/dev/centos/swap"], "swap"),
        (
            vec!["-m", "/dev/centos/root", "--rw", "--ro"],
            "cannot be used with",
        ),
        (vec!["-m", "/dev/centos/swap", "-o", "rw"], "swap"),
        (vec!["-m", "/dev/nope"], "no such device"),
        (
            vec!["-m", "/dev/centos/root", "-o", "bogus_option"],
            "mount",
        ),
    ] {
        let mut all = vec!["mount", "--format", "qcow2", "-a", q];
        all.extend(args.iter().copied());
        all.push(m);
        let _g = VdiskMount(mnt.clone());
        let out = vdisk(&all);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{all:?} succeeded");
        assert!(
            err.starts_with("vdisk: ") && err.lines().count() == 1,
            "{err}"
        );
        assert!(err.contains(want), "{all:?}: {err}");
        assert!(!is_mounted(&mnt), "{all:?} left a mount");
    }
    // A mountpoint that is not a directory.
    let out = vdisk(&["mount", "-a", q, "-m", "/dev/centos/root", "/etc/hostname"]);
    assert!(!out.status.success());
}

#[test]
fn foreground_mount_serves_until_unmounted() {
    let d = centos_disk();
    let mnt = d.path("mnt-f");
    fs::create_dir_all(&mnt).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vdisk"))
        .args(["mount", "--foreground", "--format", "qcow2", "-a"])
        .arg(&d.qcow2)
        .args(["-m", "/dev/centos/root"])
        .arg(&mnt)
        .spawn()
        .unwrap();
    let _g = VdiskMount(mnt.clone());
    let start = std::time::Instant::now();
    while !is_mounted(&mnt) {
        assert!(start.elapsed().as_secs() < 10, "never mounted");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(server_pid(&mnt) as u32, child.id());
    assert_eq!(
        fs::read_to_string(mnt.join("etc/os-release")).unwrap(),
        fs::read_to_string(d.root_tree.join("etc/os-release")).unwrap()
    );
    let out = vdisk(&["umount", mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = child.wait().unwrap();
    assert!(status.success());
}
