//! A UEFI guest: GPT with a FAT32 EFI system partition (made by mkfs.fat and mtools) and an
//! ext4 root whose fstab mounts it at /boot/efi. `inspect` reports UEFI, `-i` mounts the ESP
//! at /boot/efi (FUSE-less and through FUSE), edits of grub.cfg land, and afterwards
//! `fsck.fat -n` is clean and mtools reads the new bytes.

mod guest_common;

use std::path::{Path, PathBuf};

use guest_common::{is_mounted, need, sh, vdisk, vdisk_ok, VdiskMount, MIB};

const GRUB_CFG: &str =
    "set default=0\nset timeout=5\nmenuentry 'Debian' {\n  linux /vmlinuz root=/dev/sda2\n}\n";
/// The ESP's serial (mkfs.fat -i), as blkid and fstab spell it.
const ESP_SERIAL: &str = "DEAD-BEEF";
const ESP_START: u64 = MIB;
const ESP_SIZE: u64 = 40 * MIB;

struct UefiDisk {
    _dir: tempfile::TempDir,
    disk: PathBuf,
}

/// GPT: sda1 the ESP (FAT32), sda2 an ext4 Debian-like root.
fn uefi_disk() -> UefiDisk {
    need(&[
        "sfdisk",
        "mkfs.fat",
        "mmd",
        "mcopy",
        "mtype",
        "fsck.fat",
        "mkfs.ext4",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = d.join("root");
    for sub in ["etc", "boot/efi", "usr/bin"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::write(
        root.join("etc/fstab"),
        format!("/dev/sda2 / ext4 errors=remount-ro 0 1\nUUID={ESP_SERIAL} /boot/efi vfat umask=0077 0 1\n"),
    )
    .unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/hostname"), "uefi-guest\n").unwrap();
    std::fs::write(root.join("etc/debian_version"), "12.5\n").unwrap();
    let disk = d.join("disk.raw");
    std::fs::write(d.join("grub.cfg"), GRUB_CFG).unwrap();
    sh(&format!(
        "cd {d}
         truncate -s 128M disk.raw
         printf 'label: gpt\\nstart=2048, size=81920, type=U\\nstart=83968, type=L\\n' | sfdisk -q disk.raw
         truncate -s {ESP_SIZE} esp.img
         mkfs.fat -F 32 -i DEADBEEF -n EFI esp.img >/dev/null
         mmd -i esp.img ::/EFI ::/EFI/debian ::/EFI/BOOT
         mcopy -i esp.img grub.cfg ::/EFI/debian/grub.cfg
         head -c 70000 /dev/urandom > shimx64.efi
         mcopy -i esp.img shimx64.efi ::/EFI/BOOT/BOOTX64.EFI
         dd if=esp.img of=disk.raw bs=1M seek=1 conv=notrunc status=none
         truncate -s 80M root.img
         mkfs.ext4 -q -F -d {root} root.img
         dd if=root.img of=disk.raw bs=512 seek=83968 conv=notrunc status=none",
        d = d.display(),
        root = root.display()
    ));
    UefiDisk { _dir: dir, disk }
}

fn esp_fsck_clean(disk: &Path, what: &str) {
    let esp = disk.with_file_name("esp-check.img");
    sh(&format!(
        "dd if={} of={} bs=1M skip=1 count={} status=none",
        disk.display(),
        esp.display(),
        ESP_SIZE / MIB
    ));
    let out = std::process::Command::new("fsck.fat")
        .arg("-n")
        .arg(&esp)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}: fsck.fat -n: {text}");
}

fn mtype(disk: &Path, path: &str) -> String {
    sh(&format!(
        "MTOOLS_SKIP_CHECK=1 mtype -i {}@@{ESP_START} '::{path}'",
        disk.display()
    ))
}

#[test]
fn uefi_guest_inspected_and_esp_edited() {
    let u = uefi_disk();
    let disk = u.disk.to_str().unwrap();

    let j: serde_json::Value = serde_json::from_slice(&vdisk_ok(&[
        "inspect", "-a", disk, "--format", "raw", "--output", "json",
    ]))
    .unwrap();
    let os = &j["operatingsystems"][0];
    assert_eq!(os["distro"], "debian", "{j}");
    assert_eq!(os["firmware"], "uefi", "{j}");
    let mps = os["mountpoints"].as_array().unwrap();
    assert!(
        mps.iter()
            .any(|m| m["mountpoint"] == "/boot/efi" && m["device"] == "/dev/sda1"),
        "{j}"
    );
    let fsl = String::from_utf8(vdisk_ok(&[
        "filesystems",
        "-a",
        disk,
        "--format",
        "raw",
        "--long",
    ]))
    .unwrap();
    assert!(
        fsl.lines()
            .any(|l| l.starts_with("/dev/sda1") && l.contains("vfat")),
        "{fsl}"
    );

    // FUSE-less: cat and edit through -i.
    let cat = vdisk_ok(&[
        "cat",
        "-a",
        disk,
        "--format",
        "raw",
        "-i",
        "/boot/efi/EFI/debian/grub.cfg",
    ]);
    assert_eq!(cat, GRUB_CFG.as_bytes());
    vdisk_ok(&[
        "edit",
        "-a",
        disk,
        "--format",
        "raw",
        "-i",
        "-e",
        "s/timeout=5/timeout=1/",
        "/boot/efi/EFI/debian/grub.cfg",
    ]);
    let want = GRUB_CFG.replace("timeout=5", "timeout=1");
    assert_eq!(mtype(&u.disk, "/EFI/debian/grub.cfg"), want);
    esp_fsck_clean(&u.disk, "after vdisk edit");
    // FAT has no symlinks: refused with vfat's errno, and nothing changes.
    let ln = vdisk(&[
        "ln",
        "-a",
        disk,
        "--format",
        "raw",
        "-i",
        "-s",
        "grub.cfg",
        "/boot/efi/EFI/debian/link",
    ]);
    assert!(!ln.status.success());
    assert!(
        String::from_utf8_lossy(&ln.stderr).contains("Operation not permitted"),
        "{}",
        String::from_utf8_lossy(&ln.stderr)
    );
    esp_fsck_clean(&u.disk, "after a refused symlink");

    // Through FUSE: the ESP at /boot/efi of an -i mount, written with ordinary system calls.
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path().to_str().unwrap();
    vdisk_ok(&["mount", "-a", disk, "--format", "raw", "-i", m]);
    let guard = VdiskMount(mnt.path().to_path_buf());
    let cfg = mnt.path().join("boot/efi/EFI/debian/grub.cfg");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), want);
    let mut names: Vec<String> = std::fs::read_dir(mnt.path().join("boot/efi/EFI"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["BOOT", "debian"]);
    // Case-insensitive lookups that keep the stored case, as vfat's.
    assert!(mnt.path().join("boot/efi/efi/boot/bootx64.efi").exists());
    let appended = format!("{want}# added through FUSE\n");
    std::fs::write(&cfg, &appended).unwrap();
    std::fs::create_dir(mnt.path().join("boot/efi/EFI/new")).unwrap();
    std::fs::write(
        mnt.path().join("boot/efi/EFI/new/Long File Name.txt"),
        b"hello\n",
    )
    .unwrap();
    drop(guard);
    assert!(!is_mounted(mnt.path()));
    assert_eq!(mtype(&u.disk, "/EFI/debian/grub.cfg"), appended);
    assert_eq!(mtype(&u.disk, "/EFI/new/Long File Name.txt"), "hello\n");
    esp_fsck_clean(&u.disk, "after the FUSE session");
}
