//! The FAT engine (vdisk_fat::Fat, read-write over a MemDevice) on a fuzzed volume: open,
//! walk the tree reading every file, then create, write, truncate, rename and remove: never a
//! panic or a hang; errors are fine.
#![no_main]
use std::ffi::OsStr;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vdisk_block::MemDevice;
use vdisk_fat::Fat;
use vdisk_guestfs::fs::{FileKind, FileSystem, FileSystemMut, SetAttr};

fuzz_target!(|data: &[u8]| {
    let Ok(fs) = Fat::open(Arc::new(MemDevice::from_vec(data.to_vec())), true) else {
        return;
    };
    let _ = fs.statfs();
    let mut todo = vec![(fs.root_ino(), 0u32)];
    let mut seen = 0;
    while let Some((ino, depth)) = todo.pop() {
        seen += 1;
        if depth > 8 || seen > 500 {
            break;
        }
        let Ok(a) = fs.getattr(ino) else { continue };
        if a.kind == FileKind::Dir {
            let Ok(list) = fs.readdir_all(ino) else {
                continue;
            };
            for e in list.into_iter().skip(2).take(64) {
                let _ = fs.lookup(ino, &e.name);
                todo.push((e.ino, depth + 1));
            }
        } else {
            let mut buf = vec![0u8; 8192];
            let _ = fs.read(ino, 0, &mut buf);
            let _ = fs.write(ino, a.size / 2, b"fuzz");
            let trunc = SetAttr {
                size: Some(a.size / 3),
                ..Default::default()
            };
            let _ = fs.setattr(ino, &trunc);
        }
    }
    let root = fs.root_ino();
    if let Ok(f) = fs.create(root, OsStr::new("A new long name.txt"), 0o644, 0, 0) {
        let _ = fs.write(f.ino, 1000, &[1u8; 3000]);
    }
    let _ = fs.mkdir(root, OsStr::new("new dir"), 0o755, 0, 0);
    let _ = fs.rename(
        root,
        OsStr::new("A new long name.txt"),
        root,
        OsStr::new("b"),
        0,
    );
    let _ = fs.unlink(root, OsStr::new("b"));
    let _ = fs.rmdir(root, OsStr::new("new dir"));
});
