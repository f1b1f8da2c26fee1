//! Shared helpers of the ext4 integration tests: a file-backed device, image building with
//! e2fsprogs, a kernel loop mount guard, and the populated source tree.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use vdisk_block::{BlockDevice, Error, Result};

/// A read-only device over a host file.
pub struct FileDev {
    file: File,
    size: u64,
}

impl FileDev {
    pub fn open(p: &Path) -> Arc<dyn BlockDevice> {
        let file = File::open(p).unwrap();
        let size = file.metadata().unwrap().len();
        Arc::new(FileDev { file, size })
    }
}

impl BlockDevice for FileDev {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if offset + buf.len() as u64 > self.size {
            return Err(Error::invalid("read past the end"));
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io("read", Some(offset), e))
    }
    fn write_at(&self, _: &[u8], _: u64) -> Result<()> {
        Err(Error::invalid("read-only"))
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        true
    }
}

/// A read-write device over a host file.
pub struct RwDev {
    file: File,
    size: u64,
}

impl RwDev {
    pub fn open(p: &Path) -> Arc<dyn BlockDevice> {
        let file = OpenOptions::new().read(true).write(true).open(p).unwrap();
        let size = file.metadata().unwrap().len();
        Arc::new(RwDev { file, size })
    }
}

impl BlockDevice for RwDev {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if offset + buf.len() as u64 > self.size {
            return Err(Error::invalid("read past the end"));
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io("read", Some(offset), e))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if offset + buf.len() as u64 > self.size {
            return Err(Error::invalid("write past the end"));
        }
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io("write", Some(offset), e))
    }
    fn flush(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("flush", None, e))
    }
}

/// Runs a command (under `timeout 120`), panicking with its output when it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd} {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`run`] but returns the exit code and combined output.
pub fn run_status(cmd: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new("timeout")
        .arg("120")
        .arg(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// A directory that lives as long as the test process (tests share images).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap().keep())
}

/// The Python script that populates the source tree: every kind of file the tests compare.
const POPULATE: &str = r#"
import os, sys, random
root = sys.argv[1]
inline_only = len(sys.argv) > 2 and sys.argv[2] == "small"
rnd = random.Random(1234)
def data(n):
    return bytes(rnd.getrandbits(8) for _ in range(n)) if n < 65536 else os.urandom(n)
def w(p, b):
    with open(os.path.join(root, p), "wb") as f:
        f.write(b)
os.makedirs(os.path.join(root, "a/b/c/d/e"))
w("a/b/c/d/e/deepfile", b"deep\n")
w("empty", b"")
w("one", b"x")
w("tiny", b"hello, inline world\n")
w("f4095", data(4095))
w("f4096", data(4096))
w("f60", data(60))
w("f200", data(200))
os.makedirs(os.path.join(root, "smalldir"))
for i in range(3):
    w("smalldir/s%d" % i, b"%d" % i)
if not inline_only:
    w("f1m3", data(1024 * 1024 + 3))
    with open(os.path.join(root, "sparse40m"), "wb") as f:
        f.truncate(40 * 1024 * 1024)
        for off in (0, 7 * 1024 * 1024, 20 * 1024 * 1024 + 123, 40 * 1024 * 1024 - 10):
            f.seek(off); f.write(data(10 if off > 39 * 1024 * 1024 else 5000))
    # every other 4K block: about 2000 extents, an extent tree of depth >= 2
    blk = data(4096)
    with open(os.path.join(root, "deep_extents"), "wb") as f:
        for i in range(2000):
            f.seek(i * 8192); f.write(blk[i % 7:] + blk[:i % 7])
    os.makedirs(os.path.join(root, "bigdir"))
    w("bigdir/target", b"shared by 5000 names\n")
    for i in range(5000):
        os.link(os.path.join(root, "bigdir/target"), os.path.join(root, "bigdir/entry-%05d-%s" % (i, "x" * (i % 40))))
os.symlink("one", os.path.join(root, "fastlink"))
os.symlink("a/b/c/d/e/" + "long" * 20 + "/../../../../../../f4096", os.path.join(root, "slowlink"))
os.symlink("/a/b/../b/c", os.path.join(root, "abslink"))
os.symlink("nowhere", os.path.join(root, "dangling"))
os.symlink("loop2", os.path.join(root, "loop1"))
os.symlink("loop1", os.path.join(root, "loop2"))
os.symlink("../../../../../../..", os.path.join(root, "a/escape"))
os.makedirs(os.path.join(root, "a/b/c/d/e/" + "long" * 20))
os.link(os.path.join(root, "f4095"), os.path.join(root, "hardlink"))
w(b"bad\xffname".decode("utf-8", "surrogateescape"), b"non-utf8 name\n")
x = os.path.join(root, "xattrs")
w("xattrs", b"has attributes\n")
os.setxattr(x, "user.comment", b"a comment")
os.setxattr(x, "user.binary", bytes(range(100)))
os.setxattr(x, "trusted.note", b"trusted value")
os.setxattr(x, "security.selinux", b"system_u:object_r:etc_t:s0\x00")
os.setxattr(x, "user.big", data(600))
acl = bytes.fromhex("02000000" "0100" "0600" "ffffffff" "0200" "0400" "e8030000" "0400" "0400" "ffffffff" "1000" "0600" "ffffffff" "2000" "0400" "ffffffff")
os.setxattr(x, "system.posix_acl_access", acl)
os.setxattr(os.path.join(root, "smalldir"), "user.dirattr", b"on a directory")
os.mkfifo(os.path.join(root, "fifo"))
os.mknod(os.path.join(root, "chardev"), 0o20644, os.makedev(1, 3))
os.mknod(os.path.join(root, "blockdev"), 0o60600, os.makedev(259, 70000))
w("owned", b"owned by someone\n")
os.chown(os.path.join(root, "owned"), 1234, 5678)
os.chmod(os.path.join(root, "owned"), 0o4751)
os.makedirs(os.path.join(root, "sticky"))
os.chmod(os.path.join(root, "sticky"), 0o1777)
os.chmod(os.path.join(root, "one"), 0o600)
os.utime(os.path.join(root, "one"), ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
os.utime(os.path.join(root, "f4096"), ns=(631_152_000_000_000_000, 631_152_000_500_000_000))
os.utime(os.path.join(root, "tiny"), ns=(4_102_444_800_000_000_001, 4_102_444_800_999_999_999))
os.utime(os.path.join(root, "empty"), ns=(-315_619_200_000_000_000, -315_619_200_250_000_000))
"#;

/// The populated source tree (built once per test process). `small` leaves out the large
/// files for variants where size matters (inline data, 64 KiB blocks).
pub fn source_tree(small: bool) -> &'static Path {
    static FULL: OnceLock<PathBuf> = OnceLock::new();
    static SMALL: OnceLock<PathBuf> = OnceLock::new();
    let cell = if small { &SMALL } else { &FULL };
    cell.get_or_init(|| {
        let p = scratch().join(if small { "src-small" } else { "src-full" });
        std::fs::create_dir_all(&p).unwrap();
        let ps = p.to_str().unwrap();
        let mut args = vec!["-c", POPULATE, ps];
        if small {
            args.push("small");
        }
        run("python3", &args);
        p
    })
}

/// Builds an image `name` of `size_mb` MiB with `mkfs` and `args`, populated from `src`, then
/// builds htree indexes with `e2fsck -fyD` and checks it is clean.
pub fn make_image(name: &str, mkfs: &str, args: &[&str], size_mb: u64, src: &Path) -> PathBuf {
    let img = scratch().join(format!("{name}.img"));
    let f = File::create(&img).unwrap();
    f.set_len(size_mb << 20).unwrap();
    drop(f);
    let mut a: Vec<&str> = vec!["-q", "-F", "-d", src.to_str().unwrap()];
    a.extend_from_slice(args);
    let imgs = img.to_str().unwrap();
    a.push(imgs);
    run(mkfs, &a);
    // -D optimizes directories: builds the htree of bigdir. Exit 1 = "fixed" is expected.
    let (code, out) = run_status("e2fsck", &["-fyD", imgs]);
    assert!(code == 0 || code == 1, "e2fsck -fyD {name}: {code}\n{out}");
    let (code, out) = run_status("e2fsck", &["-fn", imgs]);
    assert_eq!(code, 0, "e2fsck -fn {name}:\n{out}");
    img
}

/// A kernel loop mount, unmounted on drop.
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    /// Mounts `img` read-only, or returns None (with a note) when the kernel refuses it.
    pub fn new(img: &Path, fstype: &str) -> Option<Mount> {
        let dir = tempfile::tempdir().unwrap().keep();
        let (code, out) = run_status(
            "mount",
            &[
                "-t",
                fstype,
                "-o",
                "loop,ro",
                img.to_str().unwrap(),
                dir.to_str().unwrap(),
            ],
        );
        if code != 0 {
            eprintln!("note: kernel mount of {} failed: {out}", img.display());
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(Mount { dir })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        for _ in 0..20 {
            let (code, _) = run_status("umount", &[self.dir.to_str().unwrap()]);
            if code == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
