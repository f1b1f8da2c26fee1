//! Lookups in an htree directory go through the hash index, on a read-only open as on the
//! write side: every name readdir lists is found with the same inode, names that are not
//! there are not found, and each lookup reads a handful of blocks, not the directory.

mod ext4_common;

use std::ffi::OsStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ext4_common::{make_image, FileDev};
use vdisk_block::{BlockDevice, Result};
use vdisk_ext4::Ext4;
use vdisk_fs::FileSystem;

/// Counts the reads that reach the device.
struct Counting {
    inner: Arc<dyn BlockDevice>,
    reads: AtomicUsize,
}

impl BlockDevice for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn is_read_only(&self) -> bool {
        true
    }
}

#[test]
fn htree_lookups_use_the_index() {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("big")).unwrap();
    let files = 3000;
    for i in 0..files {
        std::fs::write(
            src.path()
                .join(format!("big/an-entry-with-a-long-name-{i}")),
            b"",
        )
        .unwrap();
    }
    // 1 KiB blocks: the directory spans well over a hundred blocks.
    let img = make_image("lookup-htree", "mkfs.ext4", &["-b", "1024"], 32, src.path());
    let dev = Arc::new(Counting {
        inner: FileDev::open(&img),
        reads: AtomicUsize::new(0),
    });
    let fs = Ext4::open(dev.clone()).unwrap();
    let big = fs
        .lookup(fs.root_ino(), OsStr::new("big"))
        .unwrap()
        .unwrap();
    let attr = fs.getattr(big).unwrap();
    assert!(attr.size > 100 * 1024, "directory of {} bytes", attr.size);
    let listed = fs.readdir_all(big).unwrap();
    assert_eq!(listed.len(), files + 2);
    for e in &listed {
        assert_eq!(
            fs.lookup(big, &e.name).unwrap(),
            Some(e.ino),
            "{:?}",
            e.name
        );
    }
    // A fresh open: the cache is empty, so reads show what one lookup touches.
    let fs = Ext4::open(dev.clone()).unwrap();
    let big = fs
        .lookup(fs.root_ino(), OsStr::new("big"))
        .unwrap()
        .unwrap();
    fs.getattr(big).unwrap();
    for i in [0, 1234, 2999] {
        let before = dev.reads.load(Ordering::Relaxed);
        let name = format!("an-entry-with-a-long-name-{i}");
        assert!(fs.lookup(big, OsStr::new(&name)).unwrap().is_some());
        let missing = format!("not-there-{i}");
        assert_eq!(fs.lookup(big, OsStr::new(&missing)).unwrap(), None);
        let reads = dev.reads.load(Ordering::Relaxed) - before;
        assert!(reads <= 12, "two lookups read {reads} blocks");
    }
}
