//! ext4: open (journal replay included), walk the tree with bounded depth and entries, stat,
//! read files, symlinks and xattrs. Differential with ext4-view: when both read a regular file
//! by the same path, the bytes must agree.
#![no_main]
use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use libfuzzer_sys::fuzz_target;
use vdisk_fuzz::mem;
use vdisk_guestfs::ext4::Ext4;
use vdisk_guestfs::fs::{FileKind, FileSystem, Ino};

const MAX_DEPTH: usize = 6;
const MAX_ENTRIES: usize = 256;
const MAX_FILE: u64 = 256 << 10;

struct Walk<'a> {
    fs: &'a Ext4,
    entries: usize,
    seen: HashSet<Ino>,
    files: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Walk<'_> {
    fn dir(&mut self, ino: Ino, path: &[u8], depth: usize) {
        if depth > MAX_DEPTH || !self.seen.insert(ino) {
            return;
        }
        let mut list = Vec::new();
        let _ = self.fs.readdir(ino, 0, &mut |e| {
            list.push(e);
            list.len() < MAX_ENTRIES
        });
        for e in list {
            if self.entries >= MAX_ENTRIES {
                return;
            }
            self.entries += 1;
            let name = e.name.as_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let mut p = path.to_vec();
            p.push(b'/');
            p.extend_from_slice(name);
            let _ = self.fs.lookup(ino, OsStr::from_bytes(name));
            let _ = self.fs.listxattr(e.ino);
            let _ = self.fs.getxattr(e.ino, OsStr::new("security.selinux"));
            let Ok(attr) = self.fs.getattr(e.ino) else {
                continue;
            };
            match attr.kind {
                FileKind::Dir => self.dir(e.ino, &p, depth + 1),
                FileKind::Symlink => {
                    let _ = self.fs.readlink(e.ino);
                    let _ = self.fs.resolve(&p, true);
                }
                FileKind::File => {
                    if let Some(bytes) = self.read(e.ino, attr.size) {
                        self.files.push((p, bytes));
                    }
                }
                _ => {}
            }
        }
    }

    fn read(&mut self, ino: Ino, size: u64) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut off = 0u64;
        while off < size.min(MAX_FILE) {
            let n = self.fs.read(ino, off, &mut buf).ok()?;
            assert!(n <= buf.len());
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            off += n as u64;
        }
        // Past the end: a short (empty) read, not an error or a panic.
        let _ = self.fs.read(ino, size.saturating_add(1), &mut buf[..16]);
        (size <= MAX_FILE).then_some(out)
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(fs) = Ext4::open(mem(data)) else {
        return;
    };
    let _ = fs.statfs();
    let root = fs.root_ino();
    let _ = fs.getattr(root);
    let mut w = Walk {
        fs: &fs,
        entries: 0,
        seen: HashSet::new(),
        files: Vec::new(),
    };
    w.dir(root, b"", 0);
    for p in [&b"/etc/os-release"[..], b"/a/../b/./c", b"/lost+found/../x"] {
        let _ = fs.resolve(p, true);
    }
    if w.files.is_empty() || std::env::var_os("VDISK_FUZZ_NO_DIFF").is_some() {
        return;
    }
    // ext4-view has no journal replay: compare only when there was nothing to replay.
    if fs.replayed_transactions() != 0 {
        return;
    }
    let files = std::mem::take(&mut w.files);
    let Ok(view) = ext4_view::Ext4::load(Box::new(data.to_vec())) else {
        return;
    };
    for (p, ours) in files {
        let Ok(theirs) = view.read(ext4_view::Path::new(&p)) else {
            continue;
        };
        assert!(
            ours == theirs,
            "{}: our engine and ext4-view read different bytes ({} vs {} bytes)",
            String::from_utf8_lossy(&p),
            ours.len(),
            theirs.len()
        );
    }
});
