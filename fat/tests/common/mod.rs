//! Shared helpers: FAT images made at test time with mkfs.fat and filled with mtools, our
//! view of a tree beside mtools' view of it (`mcopy -s -m` into a host directory).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use vdisk_block::{BlockDevice, Error, Result};
use vdisk_fat::Fat;
use vdisk_fs::{FileKind, FileSystem};

/// An image file as a device.
pub struct FileDev(pub std::fs::File, pub u64);

impl BlockDevice for FileDev {
    fn size(&self) -> u64 {
        self.1
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.0
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io("read", Some(offset), e))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.0
            .write_all_at(buf, offset)
            .map_err(|e| Error::io("write", Some(offset), e))
    }
    fn flush(&self) -> Result<()> {
        self.0.sync_data().map_err(|e| Error::io("flush", None, e))
    }
}

pub fn open_dev(path: &Path) -> Arc<dyn BlockDevice> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let n = f.metadata().unwrap().len();
    Arc::new(FileDev(f, n))
}

pub fn open_fat(path: &Path, writable: bool) -> Fat {
    Fat::open(open_dev(path), writable).unwrap()
}

/// Runs `cmd` (under `timeout`), panicking with its stderr when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An mtools command with the environment the tests need: no geometry check, times as UTC.
pub fn mtool(name: &str, img: &Path) -> Command {
    let mut c = Command::new("timeout");
    c.args(["60", name, "-i"])
        .arg(img)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("TZ", "UTC");
    c
}

/// True when mkfs.fat and mtools are installed.
pub fn have_tools() -> bool {
    Command::new("mkfs.fat").arg("--help").output().is_ok()
        && Command::new("mcopy").arg("-V").output().is_ok()
}

/// A fresh FAT`bits` image of `mb` MiB in `dir`, labelled LABEL`bits`.
pub fn mkfs(dir: &Path, bits: u32, mb: u64) -> PathBuf {
    let img = dir.join(format!("fat{bits}.img"));
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(mb << 20).unwrap();
    drop(f);
    let mut c = Command::new("timeout");
    c.args(["60", "mkfs.fat", "-F", &bits.to_string(), "-n"])
        .arg(format!("LABEL{bits}"));
    if bits == 32 {
        // 512-byte clusters: enough clusters for FAT32 on a small image.
        c.args(["-s", "1"]);
    }
    run(c.arg(&img));
    img
}

/// One file or directory as a tree listing holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub dir: bool,
    pub data: Vec<u8>,
    /// Modification time in seconds (files only; directories 0).
    pub mtime: i64,
}

/// Our view: every path below the root.
pub fn our_tree(fs: &dyn FileSystem) -> BTreeMap<String, Item> {
    let mut out = BTreeMap::new();
    walk(fs, fs.root_ino(), "", &mut out);
    out
}

fn walk(fs: &dyn FileSystem, ino: u64, rel: &str, out: &mut BTreeMap<String, Item>) {
    for e in fs.readdir_all(ino).unwrap() {
        let name = String::from_utf8(e.name.as_bytes().to_vec()).unwrap();
        if name == "." || name == ".." {
            continue;
        }
        let p = format!("{rel}/{name}");
        // The listing's number and a lookup's agree.
        let looked = fs.lookup(ino, OsStr::new(&name)).unwrap().unwrap();
        assert_eq!(looked, e.ino, "{p}: readdir and lookup disagree");
        let a = fs.getattr(e.ino).unwrap();
        assert_eq!(a.kind, e.kind, "{p}");
        if e.kind == FileKind::Dir {
            out.insert(
                p.clone(),
                Item {
                    dir: true,
                    data: Vec::new(),
                    mtime: 0,
                },
            );
            walk(fs, e.ino, &p, out);
        } else {
            let mut data = vec![0u8; a.size as usize];
            let mut off = 0;
            // Odd-sized reads cross cluster and run boundaries.
            while off < data.len() {
                let end = (off + 7001).min(data.len());
                let n = fs.read(e.ino, off as u64, &mut data[off..end]).unwrap();
                assert!(n > 0, "{p}: short read at {off}");
                off += n;
            }
            out.insert(
                p,
                Item {
                    dir: false,
                    data,
                    mtime: a.mtime.secs,
                },
            );
        }
    }
}

/// mtools' view: `mcopy -s -m` of the whole volume into a host directory, then read back.
pub fn mtools_tree(img: &Path, scratch: &Path) -> BTreeMap<String, Item> {
    let out = scratch.join("mtools-out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let listing = run(mtool("mdir", img).args(["-/", "-a", "-b", "::/"]));
    if !listing.trim().is_empty() {
        run(mtool("mcopy", img)
            .args(["-s", "-m", "-n", "::*"])
            .arg(&out));
    }
    let mut m = BTreeMap::new();
    host_walk(&out, "", &mut m);
    // `mdir -/` lists exactly the paths the copy brought out, directories with a slash.
    let mut listed: Vec<String> = listing
        .lines()
        .filter_map(|l| l.strip_prefix("::"))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    listed.sort();
    let copied: Vec<String> = m.keys().cloned().collect();
    assert_eq!(listed, copied, "mdir -/ and mcopy -s disagree");
    for (p, it) in &m {
        if !it.dir && it.data.len() < 100_000 {
            let t = mtool("mtype", img).arg(format!("::{p}")).output().unwrap();
            assert!(
                t.status.success() && t.stdout == it.data,
                "mtype {p} differs from mcopy"
            );
        }
    }
    m
}

fn host_walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, Item>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let p = format!("{rel}/{name}");
        let md = e.metadata().unwrap();
        if md.is_dir() {
            out.insert(
                p.clone(),
                Item {
                    dir: true,
                    data: Vec::new(),
                    mtime: 0,
                },
            );
            host_walk(&e.path(), &p, out);
        } else {
            use std::os::unix::fs::MetadataExt;
            out.insert(
                p,
                Item {
                    dir: false,
                    data: std::fs::read(e.path()).unwrap(),
                    mtime: md.mtime(),
                },
            );
        }
    }
}

/// Asserts two listings are equal, naming the first difference.
pub fn assert_same(ours: &BTreeMap<String, Item>, theirs: &BTreeMap<String, Item>, what: &str) {
    for (p, a) in ours {
        match theirs.get(p) {
            None => panic!("{what}: {p} is in our view but not in mtools'"),
            Some(b) => {
                assert_eq!(a.dir, b.dir, "{what}: {p}: kind differs");
                assert!(
                    a.data == b.data,
                    "{what}: {p}: content differs ({} vs {} bytes)",
                    a.data.len(),
                    b.data.len()
                );
                assert_eq!(a.mtime, b.mtime, "{what}: {p}: mtime differs");
            }
        }
    }
    for p in theirs.keys() {
        assert!(
            ours.contains_key(p),
            "{what}: {p} is in mtools' view but not ours"
        );
    }
}

/// `fsck.fat -n` must exit 0 and complain of nothing.
pub fn fsck_clean(img: &Path, what: &str) {
    let out = Command::new("timeout")
        .args(["60", "fsck.fat", "-n", "-V"])
        .arg(img)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = [
        "differences",
        "wrong",
        "Free cluster summary",
        "Reclaimed",
        "Orphan",
        "cross-linked",
        "Deleting",
        "Truncating",
        "Dirty bit",
        "not properly",
    ];
    assert!(
        out.status.success() && !bad.iter().any(|b| text.contains(b)),
        "{what}: fsck.fat -n exited {:?}:\n{text}",
        out.status.code()
    );
}

/// A small deterministic random number generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
