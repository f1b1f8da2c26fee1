//! Shared helpers: XFS images made at test time with mkfs.xfs and filled through a kernel
//! loop mount, our view printed in the same manifest format the kernel's view is.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use vdisk_block::{BlockDevice, Result};
use vdisk_fs::{FileKind, FileSystem};
use vdisk_xfs::Xfs;

/// A read-only file as a device.
pub struct FileDev(pub std::fs::File, pub u64);

impl BlockDevice for FileDev {
    fn size(&self) -> u64 {
        self.1
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.0
            .read_exact_at(buf, offset)
            .map_err(|e| vdisk_block::Error::io("read", Some(offset), e))
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(vdisk_block::Error::unsupported("read-only test device"))
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

pub fn open_dev(path: &Path) -> Arc<dyn BlockDevice> {
    let f = std::fs::File::open(path).unwrap();
    let n = f.metadata().unwrap().len();
    Arc::new(FileDev(f, n))
}

pub fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True when this machine can make and loop-mount XFS images (root, mkfs.xfs, loop).
pub fn can_loop_mount() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    root && Command::new("mkfs.xfs").arg("-V").output().is_ok()
}

/// Makes a 300 MiB sparse XFS image with `mkfs_opts`, fills it with populate.py through a
/// loop mount, and returns the image path with the kernel's manifest of it.
pub fn build_image(dir: &Path, mkfs_opts: &[&str]) -> (PathBuf, String) {
    let img = dir.join("xfs.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(300 << 20).unwrap();
    drop(f);
    run(Command::new("timeout")
        .args(["60", "mkfs.xfs", "-q", "-f"])
        .args(mkfs_opts)
        .arg(&img));
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("timeout")
        .args(["60", "mount", "-o", "loop"])
        .arg(&img)
        .arg(&mnt));
    let pop = Command::new("python3")
        .arg(tests_dir().join("populate.py"))
        .arg(&mnt)
        .output();
    let manifest = Command::new("python3")
        .arg(tests_dir().join("manifest.py"))
        .arg(&mnt)
        .output();
    run(Command::new("timeout").args(["60", "umount"]).arg(&mnt));
    let pop = pop.unwrap();
    assert!(
        pop.status.success(),
        "populate: {}",
        String::from_utf8_lossy(&pop.stderr)
    );
    let manifest = manifest.unwrap();
    assert!(manifest.status.success());
    xfs_repair_clean(&img);
    (img, String::from_utf8(manifest.stdout).unwrap())
}

/// `xfs_repair -n` must find nothing wrong.
pub fn xfs_repair_clean(img: &Path) {
    let out = Command::new("timeout")
        .args(["120", "xfs_repair", "-n"])
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xfs_repair -n {}: {}{}",
        img.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Our view of the tree, in manifest.py's format.
pub fn our_manifest(fs: &Xfs) -> String {
    let mut out = String::new();
    walk(fs, fs.root_ino(), "", &mut out);
    out
}

fn walk(fs: &Xfs, ino: u64, rel: &str, out: &mut String) {
    line(fs, ino, rel, out);
    let mut entries: Vec<_> = fs
        .readdir_all(ino)
        .unwrap()
        .into_iter()
        .filter(|e| e.name != "." && e.name != "..")
        .collect();
    // os.walk order: this directory's entries sorted, then each subdirectory (sorted).
    entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    for e in &entries {
        let p = format!("{rel}/{}", e.name.to_string_lossy());
        let a = fs.getattr(e.ino).unwrap();
        assert_eq!(a.kind, e.kind, "{p}: ftype");
        line(fs, e.ino, &p, out);
    }
    for e in &entries {
        if e.kind == FileKind::Dir {
            let p = format!("{rel}/{}", e.name.to_string_lossy());
            let mut sub = String::new();
            walk(fs, e.ino, &p, &mut sub);
            // The directory's own line was printed above.
            out.push_str(sub.split_once('\n').map_or("", |x| x.1));
        }
    }
}

fn line(fs: &Xfs, ino: u64, rel: &str, out: &mut String) {
    let a = fs.getattr(ino).unwrap();
    let path = if rel.is_empty() { "/" } else { rel };
    let mtime = a.mtime.secs as i128 * 1_000_000_000 + i128::from(a.mtime.nanos);
    out.push_str(&format!(
        "{path} ino={ino} mode={:o} uid={} gid={} nlink={} mtime={mtime}",
        a.mode, a.uid, a.gid, a.nlink
    ));
    match a.kind {
        FileKind::File => {
            let mut data = vec![0u8; a.size as usize];
            let mut off = 0;
            while off < data.len() {
                let n = fs.read(ino, off as u64, &mut data[off..]).unwrap();
                assert!(n > 0, "{path}: short read");
                off += n;
            }
            out.push_str(&format!(
                " size={} crc={:08x}",
                a.size,
                crc32fast::hash(&data)
            ));
        }
        FileKind::Symlink => {
            let t = fs.readlink(ino).unwrap();
            out.push_str(&format!(" target={}", t.to_string_lossy()));
        }
        FileKind::CharDev | FileKind::BlockDev => {
            let major = ((a.rdev >> 8) & 0xfff) | ((a.rdev >> 32) & !0xfff);
            let minor = (a.rdev & 0xff) | ((a.rdev >> 12) & !0xff);
            out.push_str(&format!(" rdev={major},{minor}"));
        }
        _ => {}
    }
    if a.kind != FileKind::Symlink {
        let mut names = fs.listxattr(ino).unwrap();
        names.sort();
        for n in names {
            let v = fs.getxattr(ino, OsStr::new(&n)).unwrap().unwrap();
            out.push_str(&format!(
                " xattr:{}={:08x}",
                n.to_string_lossy(),
                crc32fast::hash(&v)
            ));
        }
    }
    out.push('\n');
}

/// A read-write file as a device.
pub struct RwFileDev(pub std::fs::File, pub u64);

impl BlockDevice for RwFileDev {
    fn size(&self) -> u64 {
        self.1
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.0
            .read_exact_at(buf, offset)
            .map_err(|e| vdisk_block::Error::io("read", Some(offset), e))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.0
            .write_all_at(buf, offset)
            .map_err(|e| vdisk_block::Error::io("write", Some(offset), e))
    }
    fn flush(&self) -> Result<()> {
        self.0
            .sync_data()
            .map_err(|e| vdisk_block::Error::io("flush", None, e))
    }
}

pub fn open_rw(path: &Path) -> RwFileDev {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let n = f.metadata().unwrap().len();
    RwFileDev(f, n)
}

pub fn mount(img: &Path, mnt: &Path) {
    mount_with(img, mnt, "loop");
}

/// A loop mount with mount options `opts` (which include `loop`).
pub fn mount_with(img: &Path, mnt: &Path, opts: &str) {
    std::fs::create_dir_all(mnt).unwrap();
    run(Command::new("timeout")
        .args(["60", "mount", "-o", opts])
        .arg(img)
        .arg(mnt));
}

pub fn umount(mnt: &Path) {
    run(Command::new("timeout").args(["60", "umount"]).arg(mnt));
}

/// The kernel's manifest of `img`, from a loop mount (which replays a dirty log).
pub fn kernel_manifest(img: &Path, mnt: &Path) -> String {
    mount(img, mnt);
    let out = Command::new("python3")
        .arg(tests_dir().join("manifest.py"))
        .arg(mnt)
        .output();
    umount(mnt);
    let out = out.unwrap();
    assert!(
        out.status.success(),
        "manifest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Shuts the filesystem mounted at `mnt` down with its log flushed (`xfs_io shutdown -f`):
/// the transactions are in the log, not home.
pub fn shutdown(mnt: &Path) {
    run(Command::new("timeout")
        .args(["60", "xfs_io", "-x", "-c", "shutdown -f"])
        .arg(mnt));
}

/// Asserts two manifests are equal, naming the first line that differs.
pub fn assert_same_manifest(kernel: &str, ours: &str, what: &str) {
    if ours != kernel {
        let k: Vec<_> = kernel.lines().collect();
        let o: Vec<_> = ours.lines().collect();
        for (a, b) in k.iter().zip(o.iter()) {
            assert_eq!(a, b, "{what}: first difference (kernel, ours)");
        }
        assert_eq!(k.len(), o.len(), "{what}: line counts differ");
    }
}
