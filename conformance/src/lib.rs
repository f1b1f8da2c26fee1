//! The conformance suite every filesystem engine runs: random operation sequences applied
//! to the engine and mirrored in an in-memory model of the tree, then checked against what
//! the engine's own reader, the kernel's mount and the filesystem's checker see.
//!
//! ```text
//!   Rng --step--> Target (Lib: the library traits | Posix: a mounted directory, e.g. FUSE)
//!          \--> Model (paths -> nodes: kind, content, mode, owner, xattrs, mtime)
//!   afterwards: check_reader (our engine reopened), kernel_tree + check_kernel (loop mount)
//! ```
//!
//! The operations (create, write/overwrite/append, truncate, unlink, mkdir, rmdir, rename
//! with replacement and across directories, symlink, hard link, chmod/chown, utimens,
//! setxattr, removexattr) are chosen against the model, which also says whether the engine
//! must succeed or refuse. What the filesystem cannot hold ([`Capabilities`]) is not tried
//! and not compared. Test support only: not published.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use vdisk_fs::{
    errno, Capabilities, FileKind, FileSystem, FileSystemMut, Ino, SetAttr, TimeSet, Timestamp,
};

/// ENOSPC: a setxattr the filesystem has no room for is allowed to fail.
const ENOSPC: i32 = 28;
/// EOPNOTSUPP: an attribute the engine refuses by name is allowed to fail too.
const EOPNOTSUPP: i32 = 95;

/// Small deterministic PRNG (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// What a model node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file and its content.
    File(Vec<u8>),
    /// A directory.
    Dir,
    /// A symlink and its target.
    Symlink(Vec<u8>),
}

/// One model inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MNode {
    /// Kind and content.
    pub kind: Kind,
    /// Permission bits.
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The mtime last set explicitly (None once the content changed after it).
    pub mtime: Option<i64>,
}

/// The model: paths ("" is the root, "a/b" below it) to model inode ids, and the inodes.
#[derive(Debug, Default, Clone)]
pub struct Model {
    /// Path -> node id (hard links share an id).
    pub names: BTreeMap<String, usize>,
    /// The nodes.
    pub nodes: BTreeMap<usize, MNode>,
    /// The last id given.
    pub next: usize,
    /// Names match without regard to ASCII case (FAT).
    pub case_insensitive: bool,
}

impl Model {
    /// Adds `path` as a new node; returns its id.
    pub fn add(&mut self, path: String, n: MNode) -> usize {
        self.next += 1;
        self.nodes.insert(self.next, n);
        self.names.insert(path, self.next);
        self.next
    }
    /// The paths directly inside `dir`.
    pub fn children(&self, dir: &str) -> Vec<String> {
        let pre = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.names
            .keys()
            .filter(|p| !p.is_empty() && p.starts_with(&pre) && !p[pre.len()..].contains('/'))
            .cloned()
            .collect()
    }
    /// Whether `p` is a directory.
    pub fn is_dir(&self, p: &str) -> bool {
        self.names
            .get(p)
            .is_some_and(|i| self.nodes[i].kind == Kind::Dir)
    }
    /// The node `p` names (case-folded when the filesystem folds case).
    pub fn lookup(&self, p: &str) -> Option<usize> {
        if let Some(&i) = self.names.get(p) {
            return Some(i);
        }
        if !self.case_insensitive {
            return None;
        }
        self.names
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(p))
            .map(|(_, &i)| i)
    }
    /// Drops nodes no name refers to.
    pub fn gc(&mut self) {
        let live: std::collections::HashSet<usize> = self.names.values().copied().collect();
        self.nodes.retain(|k, _| live.contains(k));
    }
}

/// `p` split at its last '/': (directory, name).
pub fn split(p: &str) -> (&str, &str) {
    match p.rfind('/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => ("", p),
    }
}

/// The inode of model path `p` in `fs` (the last symlink not followed).
pub fn resolve(fs: &dyn FileSystem, p: &str) -> Ino {
    fs.resolve(p.as_bytes(), false).unwrap()
}

/// Loads the model from an existing tree (through the engine) so random operations can
/// touch it; root entries named in `skip` (ext4's lost+found) are left out.
pub fn model_from_fs(fs: &dyn FileSystem, skip: &[&str]) -> Model {
    let mut m = Model {
        case_insensitive: fs.capabilities().case_insensitive,
        ..Model::default()
    };
    let mut todo = vec![(String::new(), fs.root_ino())];
    let mut seen: BTreeMap<Ino, usize> = BTreeMap::new();
    while let Some((path, ino)) = todo.pop() {
        let a = fs.getattr(ino).unwrap();
        let mut xattrs = BTreeMap::new();
        for n in fs.listxattr(ino).unwrap() {
            let v = fs.getxattr(ino, &n).unwrap().unwrap();
            xattrs.insert(n.as_bytes().to_vec(), v);
        }
        if let Some(&id) = seen.get(&ino) {
            m.names.insert(path, id);
            continue;
        }
        let kind = match a.kind {
            FileKind::Dir => {
                for e in fs.readdir_all(ino).unwrap() {
                    let n = e.name.to_str().unwrap().to_string();
                    if n == "." || n == ".." || path.is_empty() && skip.contains(&n.as_str()) {
                        continue;
                    }
                    let cp = if path.is_empty() {
                        n
                    } else {
                        format!("{path}/{n}")
                    };
                    todo.push((cp, e.ino));
                }
                Kind::Dir
            }
            FileKind::Symlink => Kind::Symlink(fs.readlink(ino).unwrap().as_bytes().to_vec()),
            _ => {
                let mut v = vec![0u8; a.size as usize];
                let n = fs.read(ino, 0, &mut v).unwrap();
                v.truncate(n);
                Kind::File(v)
            }
        };
        let id = m.add(
            path.clone(),
            MNode {
                kind,
                perm: a.mode & 0o7777,
                uid: a.uid,
                gid: a.gid,
                xattrs,
                mtime: None,
            },
        );
        seen.insert(ino, id);
    }
    m
}

/// Names the operations pick from (besides random ones), so that names collide often.
pub const NAMES: &[&str] = &[
    "a",
    "b",
    "c",
    "dir",
    "file.txt",
    "x",
    "long_name_for_a_file_that_is_quite_long_indeed",
    "ifcfg",
];

/// A random element of `v`.
pub fn pick<'a>(r: &mut Rng, v: &'a [String]) -> Option<&'a String> {
    if v.is_empty() {
        None
    } else {
        Some(&v[r.below(v.len() as u64) as usize])
    }
}

/// A path in `dir`, usually not taken yet.
pub fn new_name(r: &mut Rng, m: &Model, dir: &str) -> String {
    loop {
        let n = if r.below(3) == 0 {
            format!("n{}", r.below(100_000))
        } else {
            NAMES[r.below(NAMES.len() as u64) as usize].to_string()
        };
        let p = if dir.is_empty() {
            n
        } else {
            format!("{dir}/{n}")
        };
        if m.lookup(&p).is_none() || r.below(4) == 0 {
            return p;
        }
    }
}

/// What [`Target`] operations return: the errno of a refusal.
pub type Res = Result<(), i32>;

/// Where operations go, by model path ("a/b", relative to the root): the library traits
/// ([`Lib`]) or a mounted directory ([`Posix`], e.g. a FUSE mount of the engine).
pub trait Target {
    /// Creates regular file `p` with `perm`, `uid`, `gid`.
    fn create(&self, p: &str, perm: u32, uid: u32, gid: u32) -> Res;
    /// Writes `data` at `off` of file `p`.
    fn write(&self, p: &str, off: u64, data: &[u8]) -> Res;
    /// Sets the size of file `p`.
    fn truncate(&self, p: &str, size: u64) -> Res;
    /// Removes non-directory `p`.
    fn unlink(&self, p: &str) -> Res;
    /// Makes directory `p`.
    fn mkdir(&self, p: &str, perm: u32, uid: u32, gid: u32) -> Res;
    /// Removes empty directory `p`.
    fn rmdir(&self, p: &str) -> Res;
    /// Renames `from` to `to` (replacing).
    fn rename(&self, from: &str, to: &str) -> Res;
    /// Makes symlink `p` to `target`.
    fn symlink(&self, p: &str, target: &[u8]) -> Res;
    /// Makes hard link `to` of `from`.
    fn link(&self, from: &str, to: &str) -> Res;
    /// Sets owner, group and permission bits (owner first: chown may clear set-ID bits).
    fn set_owner_mode(&self, p: &str, perm: u32, uid: u32, gid: u32) -> Res;
    /// Sets atime and mtime to `secs` (+ a few ns).
    fn set_times(&self, p: &str, secs: i64) -> Res;
    /// Sets xattr `name` of `p`.
    fn setxattr(&self, p: &str, name: &[u8], v: &[u8]) -> Res;
    /// Removes xattr `name` of `p`.
    fn removexattr(&self, p: &str, name: &[u8]) -> Res;
}

/// Operations through the library: [`FileSystemMut`] on inodes resolved from the paths.
pub struct Lib<'a>(pub &'a dyn FileSystemMut);

fn code(e: vdisk_block::Error) -> i32 {
    errno(&e)
}

impl Lib<'_> {
    fn ino(&self, p: &str) -> Result<Ino, i32> {
        self.0.resolve(p.as_bytes(), false).map_err(code)
    }
    fn parent<'p>(&self, p: &'p str) -> Result<(Ino, &'p OsStr), i32> {
        let (d, n) = split(p);
        Ok((self.ino(d)?, OsStr::new(n)))
    }
}

impl Target for Lib<'_> {
    fn create(&self, p: &str, perm: u32, uid: u32, gid: u32) -> Res {
        let (d, n) = self.parent(p)?;
        self.0
            .create(d, n, perm, uid, gid)
            .map(|_| ())
            .map_err(code)
    }
    fn write(&self, p: &str, off: u64, data: &[u8]) -> Res {
        let n = self.0.write(self.ino(p)?, off, data).map_err(code)?;
        assert_eq!(n, data.len(), "short write to {p}");
        Ok(())
    }
    fn truncate(&self, p: &str, size: u64) -> Res {
        let c = SetAttr {
            size: Some(size),
            ..Default::default()
        };
        self.0.setattr(self.ino(p)?, &c).map(|_| ()).map_err(code)
    }
    fn unlink(&self, p: &str) -> Res {
        let (d, n) = self.parent(p)?;
        self.0.unlink(d, n).map_err(code)
    }
    fn mkdir(&self, p: &str, perm: u32, uid: u32, gid: u32) -> Res {
        let (d, n) = self.parent(p)?;
        self.0.mkdir(d, n, perm, uid, gid).map(|_| ()).map_err(code)
    }
    fn rmdir(&self, p: &str) -> Res {
        let (d, n) = self.parent(p)?;
        self.0.rmdir(d, n).map_err(code)
    }
    fn rename(&self, from: &str, to: &str) -> Res {
        let (sd, sn) = self.parent(from)?;
        let (dd, dn) = self.parent(to)?;
        self.0.rename(sd, sn, dd, dn, 0).map_err(code)
    }
    fn symlink(&self, p: &str, target: &[u8]) -> Res {
        let (d, n) = self.parent(p)?;
        self.0
            .symlink(d, n, OsStr::from_bytes(target), 0, 0)
            .map(|_| ())
            .map_err(code)
    }
    fn link(&self, from: &str, to: &str) -> Res {
        let (d, n) = self.parent(to)?;
        self.0.link(self.ino(from)?, d, n).map(|_| ()).map_err(code)
    }
    fn set_owner_mode(&self, p: &str, perm: u32, uid: u32, gid: u32) -> Res {
        let c = SetAttr {
            mode: Some(perm),
            uid: Some(uid),
            gid: Some(gid),
            ..Default::default()
        };
        self.0.setattr(self.ino(p)?, &c).map(|_| ()).map_err(code)
    }
    fn set_times(&self, p: &str, secs: i64) -> Res {
        let c = SetAttr {
            atime: Some(TimeSet::At(Timestamp { secs, nanos: 5 })),
            mtime: Some(TimeSet::At(Timestamp { secs, nanos: 7 })),
            ..Default::default()
        };
        self.0.setattr(self.ino(p)?, &c).map(|_| ()).map_err(code)
    }
    fn setxattr(&self, p: &str, name: &[u8], v: &[u8]) -> Res {
        self.0
            .setxattr(self.ino(p)?, OsStr::from_bytes(name), v, 0)
            .map_err(code)
    }
    fn removexattr(&self, p: &str, name: &[u8]) -> Res {
        self.0
            .removexattr(self.ino(p)?, OsStr::from_bytes(name))
            .map_err(code)
    }
}

/// Operations through the host's system calls on a mounted directory (a FUSE mount of the
/// engine, as `vdisk mount` serves it). Run as root: owners are set with lchown, where the
/// filesystem stores owners at all.
pub struct Posix {
    /// The mount point.
    pub root: PathBuf,
    /// The filesystem stores owners and modes ([`Capabilities::ownership`]); without it new
    /// files keep what the filesystem gives them.
    pub ownership: bool,
}

impl Posix {
    /// Operations on the filesystem mounted at `root`, whose capabilities are `caps`.
    pub fn new(root: &Path, caps: &Capabilities) -> Posix {
        Posix {
            root: root.to_path_buf(),
            ownership: caps.ownership,
        }
    }
}

fn os(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(5)
}

fn cstr(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn check(r: libc::c_int) -> Res {
    if r == 0 {
        Ok(())
    } else {
        Err(os(std::io::Error::last_os_error()))
    }
}

impl Posix {
    fn at(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }
}

impl Target for Posix {
    fn create(&self, p: &str, perm: u32, uid: u32, gid: u32) -> Res {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.at(p))
            .map_err(os)?;
        self.set_owner_mode(p, perm, uid, gid)
    }
    fn write(&self, p: &str, off: u64, data: &[u8]) -> Res {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.at(p))
            .map_err(os)?;
        f.write_all_at(data, off).map_err(os)
    }
    fn truncate(&self, p: &str, size: u64) -> Res {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.at(p))
            .map_err(os)?;
        f.set_len(size).map_err(os)
    }
    fn unlink(&self, p: &str) -> Res {
        std::fs::remove_file(self.at(p)).map_err(os)
    }
    fn mkdir(&self, p: &str, perm: u32, uid: u32, gid: u32) -> Res {
        std::fs::create_dir(self.at(p)).map_err(os)?;
        self.set_owner_mode(p, perm, uid, gid)
    }
    fn rmdir(&self, p: &str) -> Res {
        std::fs::remove_dir(self.at(p)).map_err(os)
    }
    fn rename(&self, from: &str, to: &str) -> Res {
        std::fs::rename(self.at(from), self.at(to)).map_err(os)
    }
    fn symlink(&self, p: &str, target: &[u8]) -> Res {
        std::os::unix::fs::symlink(OsStr::from_bytes(target), self.at(p)).map_err(os)?;
        if !self.ownership {
            return Ok(());
        }
        // Owned by root:root as the library makes it (a set-group-ID directory would
        // otherwise give it the directory's group).
        std::os::unix::fs::lchown(self.at(p), Some(0), Some(0)).map_err(os)
    }
    fn link(&self, from: &str, to: &str) -> Res {
        std::fs::hard_link(self.at(from), self.at(to)).map_err(os)
    }
    fn set_owner_mode(&self, p: &str, perm: u32, uid: u32, gid: u32) -> Res {
        use std::os::unix::fs::PermissionsExt;
        if !self.ownership {
            return Ok(());
        }
        std::os::unix::fs::lchown(self.at(p), Some(uid), Some(gid)).map_err(os)?;
        std::fs::set_permissions(self.at(p), std::fs::Permissions::from_mode(perm)).map_err(os)
    }
    fn set_times(&self, p: &str, secs: i64) -> Res {
        let c = cstr(&self.at(p));
        let ts = [
            libc::timespec {
                tv_sec: secs as libc::time_t,
                tv_nsec: 5,
            },
            libc::timespec {
                tv_sec: secs as libc::time_t,
                tv_nsec: 7,
            },
        ];
        // SAFETY: `c` is a NUL-terminated path and `ts` two initialised timespecs, both alive
        // for the call.
        check(unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
    }
    fn setxattr(&self, p: &str, name: &[u8], v: &[u8]) -> Res {
        let c = cstr(&self.at(p));
        let n = std::ffi::CString::new(name).unwrap();
        // SAFETY: both strings are NUL-terminated and `v` is `v.len()` readable bytes, all
        // alive for the call.
        check(unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) })
    }
    fn removexattr(&self, p: &str, name: &[u8]) -> Res {
        let c = cstr(&self.at(p));
        let n = std::ffi::CString::new(name).unwrap();
        // SAFETY: both strings are NUL-terminated and alive for the call.
        check(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })
    }
}

/// One random operation through `t` and the model: what the engine must do (or refuse) is
/// decided by the model before the call. `bs` scales write sizes; operations `caps` says the
/// filesystem cannot hold are skipped.
pub fn step(
    r: &mut Rng,
    t: &dyn Target,
    m: &mut Model,
    caps: &Capabilities,
    bs: u64,
    log: &mut Vec<String>,
) {
    let dirs: Vec<String> = m.names.keys().filter(|p| m.is_dir(p)).cloned().collect();
    let files: Vec<String> = m
        .names
        .iter()
        .filter(|(_, i)| matches!(m.nodes[i].kind, Kind::File(_)))
        .map(|(p, _)| p.clone())
        .collect();
    let all: Vec<String> = m.names.keys().filter(|p| !p.is_empty()).cloned().collect();
    let op = r.below(17);
    match op {
        0 | 1 => {
            // create
            let d = pick(r, &dirs).unwrap().clone();
            let p = new_name(r, m, &d);
            let res = t.create(&p, 0o644, 0, 0);
            log.push(format!("create {p}"));
            if m.lookup(&p).is_some() {
                assert!(res.is_err(), "create over existing {p}");
            } else {
                res.unwrap();
                m.add(
                    p,
                    MNode {
                        kind: Kind::File(vec![]),
                        perm: 0o644,
                        uid: 0,
                        gid: 0,
                        xattrs: BTreeMap::new(),
                        mtime: None,
                    },
                );
            }
        }
        2..=4 => {
            // write / append / overwrite
            let Some(p) = pick(r, &files).cloned() else {
                return;
            };
            let id = m.names[&p];
            let Kind::File(data) = &mut m.nodes.get_mut(&id).unwrap().kind else {
                unreachable!()
            };
            let len = match r.below(4) {
                0 => r.below(100) as usize,
                1 => r.below(bs * 3) as usize,
                2 => r.below(bs * 20) as usize,
                _ => (bs * r.below(4)) as usize,
            };
            let off = match r.below(4) {
                0 => data.len() as u64,
                1 => r.below(data.len() as u64 + 1),
                2 => r.below(bs * 40),
                _ => bs * r.below(30),
            };
            let bytes = r.bytes(len);
            log.push(format!("write {p} {off}+{len}"));
            t.write(&p, off, &bytes).unwrap();
            if len > 0 {
                m.nodes.get_mut(&id).unwrap().mtime = None;
            }
            let Kind::File(data) = &mut m.nodes.get_mut(&id).unwrap().kind else {
                unreachable!()
            };
            if len > 0 {
                let end = off as usize + len;
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[off as usize..end].copy_from_slice(&bytes);
            }
        }
        5 => {
            // truncate
            let Some(p) = pick(r, &files).cloned() else {
                return;
            };
            let id = m.names[&p];
            let Kind::File(data) = &mut m.nodes.get_mut(&id).unwrap().kind else {
                unreachable!()
            };
            let size = match r.below(3) {
                0 => r.below(data.len() as u64 + 1),
                1 => r.below(bs * 30),
                _ => 0,
            };
            log.push(format!("truncate {p} {size}"));
            t.truncate(&p, size).unwrap();
            data.resize(size as usize, 0);
            m.nodes.get_mut(&id).unwrap().mtime = None;
        }
        6 => {
            // unlink a non-directory
            let cands: Vec<String> = all.iter().filter(|p| !m.is_dir(p)).cloned().collect();
            let Some(p) = pick(r, &cands).cloned() else {
                return;
            };
            log.push(format!("unlink {p}"));
            t.unlink(&p).unwrap();
            m.names.remove(&p);
            m.gc();
        }
        7 => {
            let d = pick(r, &dirs).unwrap().clone();
            let p = new_name(r, m, &d);
            log.push(format!("mkdir {p}"));
            let res = t.mkdir(&p, 0o755, 1000, 100);
            if m.lookup(&p).is_some() {
                assert!(res.is_err());
            } else {
                res.unwrap();
                m.add(
                    p,
                    MNode {
                        kind: Kind::Dir,
                        perm: 0o755,
                        uid: 1000,
                        gid: 100,
                        xattrs: BTreeMap::new(),
                        mtime: None,
                    },
                );
            }
        }
        8 => {
            let cands: Vec<String> = dirs.iter().filter(|p| !p.is_empty()).cloned().collect();
            let Some(p) = pick(r, &cands).cloned() else {
                return;
            };
            log.push(format!("rmdir {p}"));
            let res = t.rmdir(&p);
            if m.children(&p).is_empty() {
                res.unwrap();
                m.names.remove(&p);
                m.gc();
            } else {
                assert!(res.is_err(), "rmdir of non-empty {p}");
            }
        }
        9 | 10 => {
            // rename (files and directories, replacing, across directories)
            let Some(src) = pick(r, &all).cloned() else {
                return;
            };
            let d = pick(r, &dirs).unwrap().clone();
            let dst = new_name(r, m, &d);
            let src_dir = m.is_dir(&src);
            log.push(format!("rename {src} {dst}"));
            let res = t.rename(&src, &dst);
            let into_self = dst == src || dst.starts_with(&format!("{src}/"));
            let target = m.lookup(&dst);
            let ok = if into_self {
                dst == src
            } else {
                match target {
                    None => true,
                    Some(t) if t == m.names[&src] => true,
                    Some(t) => {
                        let tdir = m.nodes[&t].kind == Kind::Dir;
                        src_dir == tdir && (!tdir || m.children(&dst).is_empty())
                    }
                }
            };
            if !ok {
                assert!(res.is_err(), "rename {src} -> {dst} should fail");
                return;
            }
            res.unwrap();
            if dst == src || target == Some(m.names[&src]) {
                return;
            }
            let moved: Vec<(String, usize)> = m
                .names
                .iter()
                .filter(|(p, _)| **p == src || p.starts_with(&format!("{src}/")))
                .map(|(p, i)| (p.clone(), *i))
                .collect();
            m.names.remove(&dst);
            for (p, _) in &moved {
                m.names.remove(p);
            }
            for (p, i) in moved {
                m.names.insert(format!("{dst}{}", &p[src.len()..]), i);
            }
            m.gc();
        }
        11 if !caps.symlinks => {}
        11 => {
            let d = pick(r, &dirs).unwrap().clone();
            let p = new_name(r, m, &d);
            if m.lookup(&p).is_some() {
                return;
            }
            let len = if r.below(2) == 0 {
                1 + r.below(59)
            } else {
                60 + r.below(500)
            };
            let target: Vec<u8> = (0..len)
                .map(|i| {
                    if i % 40 == 39 {
                        b'/'
                    } else {
                        b'a' + (i % 26) as u8
                    }
                })
                .collect();
            log.push(format!("symlink {p} ({len})"));
            t.symlink(&p, &target).unwrap();
            m.add(
                p,
                MNode {
                    kind: Kind::Symlink(target),
                    perm: 0o777,
                    uid: 0,
                    gid: 0,
                    xattrs: BTreeMap::new(),
                    mtime: None,
                },
            );
        }
        12 if !caps.hard_links => {}
        12 => {
            let Some(src) = pick(r, &files).cloned() else {
                return;
            };
            let d = pick(r, &dirs).unwrap().clone();
            let p = new_name(r, m, &d);
            if m.lookup(&p).is_some() {
                return;
            }
            log.push(format!("link {src} {p}"));
            t.link(&src, &p).unwrap();
            let id = m.names[&src];
            m.names.insert(p, id);
        }
        13 if !caps.ownership => {}
        13 => {
            let Some(p) = pick(r, &all).cloned() else {
                return;
            };
            let id = m.names[&p];
            if matches!(m.nodes[&id].kind, Kind::Symlink(_)) {
                return;
            }
            let perm = r.below(0o7777) as u32;
            let uid = r.below(70000) as u32;
            let gid = r.below(70000) as u32;
            log.push(format!("chmod/chown {p}"));
            t.set_owner_mode(&p, perm, uid, gid).unwrap();
            let n = m.nodes.get_mut(&id).unwrap();
            n.perm = perm;
            n.uid = uid;
            n.gid = gid;
        }
        14 => {
            let Some(p) = pick(r, &all).cloned() else {
                return;
            };
            let id = m.names[&p];
            if matches!(m.nodes[&id].kind, Kind::Symlink(_)) {
                return;
            }
            let secs = 1_000_000_000 + r.below(1_000_000_000) as i64;
            log.push(format!("utimens {p}"));
            t.set_times(&p, secs).unwrap();
            m.nodes.get_mut(&id).unwrap().mtime = Some(secs);
        }
        15 if !caps.xattrs => {}
        15 => {
            let Some(p) = pick(r, &all).cloned() else {
                return;
            };
            let id = m.names[&p];
            if matches!(m.nodes[&id].kind, Kind::Symlink(_)) {
                return;
            }
            let name = format!("user.k{}", r.below(12)).into_bytes();
            let vlen = match r.below(3) {
                0 => r.below(16),
                1 => r.below(200),
                _ => r.below(bs / 3),
            } as usize;
            let v = r.bytes(vlen);
            log.push(format!(
                "setxattr {p} {} {vlen}",
                String::from_utf8_lossy(&name)
            ));
            let res = t.setxattr(&p, &name, &v);
            match res {
                Ok(()) => {
                    m.nodes.get_mut(&id).unwrap().xattrs.insert(name, v);
                }
                // No room in the filesystem's attribute space, or an attribute layout the
                // engine refuses by name (XFS leaf forks): nothing may have changed, which
                // the final comparison checks.
                Err(ENOSPC) => {}
                Err(EOPNOTSUPP) => log.push("  (refused: EOPNOTSUPP)".into()),
                Err(e) => panic!("setxattr: {e}"),
            }
        }
        _ if !caps.xattrs => {}
        _ => {
            let Some(p) = pick(r, &all).cloned() else {
                return;
            };
            let id = m.names[&p];
            let keys: Vec<Vec<u8>> = m.nodes[&id].xattrs.keys().cloned().collect();
            let Some(k) = keys.get(r.below(keys.len() as u64 + 1) as usize).cloned() else {
                return;
            };
            log.push(format!("removexattr {p} {}", String::from_utf8_lossy(&k)));
            t.removexattr(&p, &k).unwrap();
            m.nodes.get_mut(&id).unwrap().xattrs.remove(&k);
        }
    }
}

/// What the kernel sees: a python dump of the mounted tree (kind, mode, owner, inode,
/// mtime, content or link target in hex, `user.` xattrs).
pub const DUMP: &str = r#"
import os, sys, json, stat
root = sys.argv[1]
skip = set(sys.argv[2:])
out = {}
for dp, dns, fns in os.walk(root):
    for n in dns + fns:
        p = os.path.join(dp, n)
        rel = os.path.relpath(p, root)
        if rel in skip: continue
        st = os.lstat(p)
        e = {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "ino": st.st_ino, "mtime": int(st.st_mtime)}
        if stat.S_ISLNK(st.st_mode):
            e["kind"] = "l"; e["data"] = os.readlink(os.fsencode(p)).hex()
        elif stat.S_ISDIR(st.st_mode):
            e["kind"] = "d"
        else:
            e["kind"] = "f"; e["data"] = open(p, "rb").read().hex()
        e["x"] = {}
        if not stat.S_ISLNK(st.st_mode):
            try:
                e["x"] = {k: os.getxattr(p, k).hex() for k in os.listxattr(p) if k.startswith("user.")}
            except OSError:
                pass
        out[rel] = e
print(json.dumps(out))
"#;

/// Bytes as lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The tree under mounted directory `dir` as the kernel shows it (see [`DUMP`]); root
/// entries named in `skip` are left out.
pub fn kernel_tree(dir: &Path, skip: &[&str]) -> serde_json::Map<String, serde_json::Value> {
    // The script goes on the command line: a file named after the process was shared by
    // the tests running in parallel, and one test's rewrite of it let another's python run
    // an empty script (exit 0, no output).
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(DUMP).arg(dir).args(skip);
    let out = cmd.output().expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 dump of {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_object().unwrap().clone()
}

/// Asserts that the kernel's view `k` ([`kernel_tree`]) is exactly the model: the same
/// paths, kinds, contents and link targets, and (where `caps` says they are stored) modes,
/// owners, `user.` xattrs, explicitly set mtimes and hard links.
pub fn check_kernel(
    k: &serde_json::Map<String, serde_json::Value>,
    m: &Model,
    caps: &Capabilities,
    what: &str,
) {
    let fold = |p: &str| {
        if caps.case_insensitive {
            p.to_ascii_lowercase()
        } else {
            p.to_string()
        }
    };
    let mut model_paths: Vec<String> = m
        .names
        .keys()
        .filter(|p| !p.is_empty())
        .map(|p| fold(p))
        .collect();
    model_paths.sort();
    let mut kernel_paths: Vec<String> = k.keys().map(|p| fold(p)).collect();
    kernel_paths.sort();
    assert_eq!(kernel_paths, model_paths, "{what}: listings differ");
    let by_fold: BTreeMap<String, &serde_json::Value> =
        k.iter().map(|(p, v)| (fold(p), v)).collect();
    let mut kernel_ino: BTreeMap<usize, u64> = BTreeMap::new();
    for (p, id) in &m.names {
        if p.is_empty() {
            continue;
        }
        let n = &m.nodes[id];
        let e = by_fold[&fold(p)];
        let ctx = format!("{what}: {p}");
        match &n.kind {
            Kind::File(d) => {
                assert_eq!(e["kind"], "f", "{ctx}");
                assert!(
                    e["data"].as_str().unwrap() == hex(d),
                    "{ctx}: content differs (len {} vs model {})",
                    e["data"].as_str().unwrap().len() / 2,
                    d.len()
                );
            }
            Kind::Dir => assert_eq!(e["kind"], "d", "{ctx}"),
            Kind::Symlink(t) => {
                assert_eq!(e["kind"], "l", "{ctx}");
                assert_eq!(e["data"].as_str().unwrap(), hex(t), "{ctx}");
            }
        }
        if !matches!(n.kind, Kind::Symlink(_)) {
            if caps.ownership {
                assert_eq!(e["mode"].as_u64().unwrap() as u32, n.perm, "{ctx}: mode");
            }
            if caps.xattrs {
                let x: BTreeMap<String, String> = e["x"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let mx: BTreeMap<String, String> = n
                    .xattrs
                    .iter()
                    .filter(|(k, _)| k.starts_with(b"user."))
                    .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), hex(v)))
                    .collect();
                assert_eq!(x, mx, "{ctx}: xattrs");
            }
        }
        if caps.ownership {
            assert_eq!(e["uid"].as_u64().unwrap() as u32, n.uid, "{ctx}: uid");
            assert_eq!(e["gid"].as_u64().unwrap() as u32, n.gid, "{ctx}: gid");
        }
        if let (Some(t), Kind::File(_)) = (n.mtime, &n.kind) {
            let got = e["mtime"].as_i64().unwrap();
            let slack = (caps.time_granularity_ns / 1_000_000_000) as i64;
            assert!((got - t).abs() <= slack, "{ctx}: mtime {got}, model {t}");
        }
        if caps.hard_links {
            // Hard links: one model inode, one kernel inode.
            let ino = e["ino"].as_u64().unwrap();
            let prev = kernel_ino.insert(*id, ino);
            assert!(prev.is_none_or(|x| x == ino), "{ctx}: hard link split");
        }
    }
}

/// Asserts that `fs` (the engine, typically reopened after the run) reads exactly the model,
/// as [`check_kernel`] compares the kernel's view.
pub fn check_reader(fs: &dyn FileSystem, m: &Model, skip: &[&str], what: &str) {
    let caps = fs.capabilities();
    let ours = model_from_fs(fs, skip);
    let mine: Vec<&String> = m.names.keys().collect();
    let theirs: Vec<&String> = ours.names.keys().collect();
    assert_eq!(theirs, mine, "{what}: our reader's listing differs");
    let mut ids: BTreeMap<usize, usize> = BTreeMap::new();
    for (p, id) in &m.names {
        let (a, b) = (&m.nodes[id], &ours.nodes[&ours.names[p]]);
        let ctx = format!("{what}: our reader: /{p}");
        assert_eq!(a.kind, b.kind, "{ctx}: kind or content");
        if !matches!(a.kind, Kind::Symlink(_)) && !p.is_empty() {
            if caps.ownership {
                assert_eq!(
                    (a.perm, a.uid, a.gid),
                    (b.perm, b.uid, b.gid),
                    "{ctx}: mode/owner"
                );
            }
            if caps.xattrs {
                assert_eq!(a.xattrs, b.xattrs, "{ctx}: xattrs");
            }
        }
        let prev = ids.insert(*id, ours.names[p]);
        assert!(
            prev.is_none_or(|x| x == ours.names[p]),
            "{ctx}: hard link split"
        );
    }
}

/// Runs `ops` random operations from `seed` through `t`, mirrored in `m`; returns the log.
pub fn run_ops(
    t: &dyn Target,
    m: &mut Model,
    caps: &Capabilities,
    bs: u64,
    seed: u64,
    ops: u32,
) -> Vec<String> {
    let mut r = Rng(seed | 1);
    let mut log = Vec::new();
    for _ in 0..ops {
        step(&mut r, t, m, caps, bs, &mut log);
    }
    log
}

/// A failure message naming the operations (shortened when long).
pub fn describe(what: &str, log: &[String]) -> String {
    let what = format!("{what} (ops: {})", log.join("; "));
    if what.len() > 6000 {
        let cut = |mut i: usize| {
            while !what.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        let (a, b) = (cut(1000), cut(what.len() - 4000));
        format!("{}…{}", &what[..a], &what[b..])
    } else {
        what
    }
}
