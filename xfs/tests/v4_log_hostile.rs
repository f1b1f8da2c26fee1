//! v4 filesystems (which this kernel cannot mount: compared with a v5 one made from the same
//! protofile, which it can), a dirty log replayed in memory, and corrupted metadata answered
//! with errors, never a panic or a hang.

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};

use common::*;
use vdisk_block::{BlockDevice, Result};
use vdisk_fs::{FileKind, FileSystem};
use vdisk_xfs::Xfs;

/// Makes a 64 MiB image from proto.py's protofile with `opts` (mkfs.xfs takes sizes under
/// 300 MB when run with the fstests variables).
fn proto_image(dir: &std::path::Path, name: &str, opts: &[&str]) -> std::path::PathBuf {
    let proto = dir.join("proto.txt");
    if !proto.exists() {
        let out = run(Command::new("python3")
            .arg(tests_dir().join("proto.py"))
            .arg(dir.join("src")));
        std::fs::write(&proto, out).unwrap();
    }
    let img = dir.join(name);
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    run(Command::new("timeout")
        .env("TEST_DIR", "/tmp")
        .env("TEST_DEV", "/dev/null")
        .env("QA_CHECK_FS", "xfs")
        .args(["60", "mkfs.xfs", "-q", "-f"])
        .args(opts)
        .arg("-p")
        .arg(&proto)
        .arg(&img));
    xfs_repair_clean(&img);
    img
}

/// A manifest without inode numbers and mtimes (mkfs stamps its own).
fn normalized(m: &str) -> String {
    m.lines()
        .map(|l| {
            l.split(' ')
                .filter(|f| !f.starts_with("ino=") && !f.starts_with("mtime="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn v4_reads_like_the_kernels_v5() {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let v5 = proto_image(dir.path(), "v5.img", &[]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount")
        .arg("-o")
        .arg("loop,ro")
        .arg(&v5)
        .arg(&mnt));
    let kernel = Command::new("python3")
        .arg(tests_dir().join("manifest.py"))
        .arg(&mnt)
        .output();
    run(Command::new("umount").arg(&mnt));
    let kernel = String::from_utf8(kernel.unwrap().stdout).unwrap();
    assert!(kernel.lines().count() > 3000);
    for (name, opts) in [
        ("v4.img", &["-m", "crc=0"][..]),
        ("v4-1k.img", &["-m", "crc=0", "-b", "size=1024"][..]),
    ] {
        let v4 = proto_image(dir.path(), name, opts);
        let fs = Xfs::open(open_dev(&v4)).unwrap();
        assert_eq!(fs.superblock().version(), 4);
        assert_eq!(
            normalized(&our_manifest(&fs)),
            normalized(&kernel),
            "{name}"
        );
    }
}

#[test]
fn dirty_log_is_replayed_in_memory() {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    run(Command::new("mkfs.xfs").arg("-q").arg(&img));
    // Clean as made.
    Xfs::open(open_dev(&img)).unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&img)
        .arg(&mnt));
    std::fs::write(mnt.join("f"), b"data").unwrap();
    let sync = std::fs::File::open(mnt.join("f")).unwrap();
    sync.sync_all().unwrap();
    // Shut the filesystem down with the log flushed but not unmounted: recovery needed.
    let shut = Command::new("xfs_io")
        .args(["-x", "-c", "shutdown -f"])
        .arg(&mnt)
        .status()
        .unwrap();
    drop(sync);
    run(Command::new("umount").arg(&mnt));
    assert!(shut.success());
    // Replayed in memory: the file is there with its data, as the kernel will show it.
    {
        let fs = Xfs::open(open_dev(&img)).expect("a dirty log is replayed in memory");
        assert!(fs.log_replayed_in_memory());
        let ino = fs.resolve(b"/f", true).unwrap();
        assert_eq!(fs.getattr(ino).unwrap().size, 4);
        let mut b = [0u8; 8];
        assert_eq!(fs.read(ino, 0, &mut b).unwrap(), 4);
        assert_eq!(&b[..4], b"data");
    }
    // The kernel replays it; then it is clean again.
    run(Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&img)
        .arg(&mnt));
    run(Command::new("umount").arg(&mnt));
    let fs = Xfs::open(open_dev(&img)).unwrap();
    let ino = fs.resolve(b"/f", true).unwrap();
    assert_eq!(fs.getattr(ino).unwrap().size, 4);
}

/// An in-memory device that records which bytes were read.
struct Recorder {
    data: Arc<Vec<u8>>,
    /// Bytes that differ from `data`: (offset, value).
    patch: Vec<(usize, u8)>,
    reads: Mutex<Vec<(u64, usize)>>,
}

impl BlockDevice for Recorder {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.reads.lock().unwrap().push((offset, buf.len()));
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        for &(at, v) in &self.patch {
            if (o..o + buf.len()).contains(&at) {
                buf[at - o] = v;
            }
        }
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64) -> Result<()> {
        unreachable!("the reader never writes")
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// Visits everything reachable, ignoring errors; bounded so a corrupt loop cannot hang it.
fn walk_all(fs: &Xfs) -> usize {
    let mut todo = vec![(fs.root_ino(), 0)];
    let mut seen = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while let Some((ino, depth)) = todo.pop() {
        seen += 1;
        if seen > 20_000 || depth > 8 {
            continue;
        }
        let Ok(a) = fs.getattr(ino) else { continue };
        let _ = fs.listxattr(ino);
        let _ = fs.getxattr(ino, std::ffi::OsStr::new("security.selinux"));
        match a.kind {
            FileKind::File => {
                let _ = fs.read(ino, 0, &mut buf);
            }
            FileKind::Symlink => {
                let _ = fs.readlink(ino);
            }
            FileKind::Dir => {
                let _ = fs.lookup(ino, std::ffi::OsStr::new("entry-with-a-long-name-00007"));
                if let Ok(es) = fs.readdir_all(ino) {
                    for e in es.into_iter().filter(|e| e.name != "." && e.name != "..") {
                        todo.push((e.ino, depth + 1));
                    }
                }
            }
            _ => {}
        }
    }
    seen
}

#[test]
fn corrupted_metadata_gives_errors_not_panics() {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, opts) in [("h4.img", &["-m", "crc=0"][..]), ("h5.img", &[][..])] {
        let img = proto_image(dir.path(), name, opts);
        let data = Arc::new(std::fs::read(&img).unwrap());
        let clean = Arc::new(Recorder {
            data: data.clone(),
            patch: Vec::new(),
            reads: Mutex::new(Vec::new()),
        });
        let fs = Xfs::open(clean.clone()).unwrap();
        assert!(walk_all(&fs) > 3000);
        // Metadata = what the walk read, minus file contents (the big file's data).
        let reads: Vec<(u64, usize)> = clean
            .reads
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|&(_, n)| n <= 65536)
            .collect();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let rounds = if opts.is_empty() { 100 } else { 400 };
        for _ in 0..rounds {
            let mut patch = Vec::new();
            for _ in 0..1 + rnd() % 4 {
                let (off, n) = reads[(rnd() % reads.len() as u64) as usize];
                let at = off as usize + (rnd() % n as u64) as usize;
                let v = match rnd() % 3 {
                    0 => 0xff,
                    1 => 0,
                    _ => data[at] ^ (1 << (rnd() % 8)),
                };
                patch.push((at, v));
            }
            let dev = Arc::new(Recorder {
                data: data.clone(),
                patch,
                reads: Mutex::new(Vec::new()),
            });
            if let Ok(fs) = Xfs::open(dev) {
                walk_all(&fs);
            }
        }
    }
}
