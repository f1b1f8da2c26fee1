//! Filesystem and volume signature detection (LVM2, LUKS, XFS, btrfs, ext, swap, NTFS, FAT).
#![no_main]
use libfuzzer_sys::fuzz_target;
use vdisk_fuzz::mem;
use vdisk_guestfs::detect::detect;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(info)) = detect(&*mem(data)) {
        let _ = info.fs_type.as_str();
        let _ = format!("{info:?}");
    }
});
