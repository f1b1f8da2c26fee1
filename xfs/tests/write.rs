//! The write engine against the real tools: images made by mkfs.xfs (CentOS 7 feature set and
//! current defaults), changed through [`XfsRw`], then `xfs_repair -n` must be clean and the
//! kernel's loop mount must show exactly what our reader shows and what the model expects.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use vdisk_block::{BlockDevice, Result};
use vdisk_fs::{
    errno, FileKind, FileSystem, FileSystemMut, Ino, SetAttr, TimeSet, Timestamp, RENAME_NOREPLACE,
    XATTR_CREATE,
};
use vdisk_xfs::XfsRw;

const CENTOS7: &[&str] = &["-m", "crc=1,finobt=0,reflink=0,rmapbt=0", "-i", "sparse=0"];
const DEFAULTS: &[&str] = &[];

/// A read-write file as a device.
struct RwDev(std::fs::File, u64);

impl BlockDevice for RwDev {
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

fn open_rw(img: &Path) -> XfsRw {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let n = f.metadata().unwrap().len();
    XfsRw::open(Arc::new(RwDev(f, n))).unwrap()
}

/// A 300 MiB image made with `opts`, filled by the kernel with `script` (python, cwd = root).
fn image(dir: &Path, opts: &[&str], script: &str) -> std::path::PathBuf {
    let img = dir.join("xfs.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(300 << 20).unwrap();
    drop(f);
    run(Command::new("timeout")
        .args(["60", "mkfs.xfs", "-q", "-f"])
        .args(opts)
        .arg(&img));
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("timeout")
        .args(["60", "mount", "-o", "loop"])
        .arg(&img)
        .arg(&mnt));
    let pop = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import os\nos.chdir({:?})\n{script}",
            mnt.to_str().unwrap()
        ))
        .output();
    run(Command::new("timeout").args(["60", "umount"]).arg(&mnt));
    let pop = pop.unwrap();
    assert!(
        pop.status.success(),
        "populate: {}",
        String::from_utf8_lossy(&pop.stderr)
    );
    img
}

/// The kernel's manifest of `img` (loop mount, manifest.py).
fn kernel_manifest(dir: &Path, img: &Path) -> String {
    let mnt = dir.join("mnt");
    run(Command::new("timeout")
        .args(["60", "mount", "-o", "loop"])
        .arg(img)
        .arg(&mnt));
    let m = Command::new("python3")
        .arg(tests_dir().join("manifest.py"))
        .arg(&mnt)
        .output();
    run(Command::new("timeout").args(["60", "umount"]).arg(&mnt));
    let m = m.unwrap();
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    String::from_utf8(m.stdout).unwrap()
}

/// xfs_repair -n clean, and the kernel sees what our reader sees.
fn check(dir: &Path, img: &Path) -> String {
    xfs_repair_clean(img);
    // The B+tree shapes xfs_repair does not look at (sibling chains, fill, keys, headers).
    let bt = Command::new("python3")
        .arg(tests_dir().join("btcheck.py"))
        .arg(img)
        .output()
        .unwrap();
    assert!(
        bt.status.success(),
        "{}",
        String::from_utf8_lossy(&bt.stdout)
    );
    let ours = our_manifest(&vdisk_xfs::Xfs::open(open_dev(img)).unwrap());
    let kernel = kernel_manifest(dir, img);
    let k: Vec<_> = kernel.lines().collect();
    let o: Vec<_> = ours.lines().collect();
    for (a, b) in k.iter().zip(o.iter()) {
        assert_eq!(a, b, "first difference (kernel, ours)");
    }
    assert_eq!(k.len(), o.len(), "line counts differ");
    // mkfs-time and write-time LSNs are never ahead of the log: the kernel mounted it and
    // xfs_repair found nothing, and the log is clean.
    kernel
}

/// A scratch directory, in memory when the machine has /dev/shm (the engine flushes after
/// every operation; on a disk those flushes dominate the run time).
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

fn lookup(fs: &XfsRw, path: &str) -> Ino {
    fs.resolve(path.as_bytes(), false).unwrap()
}

fn read_all(fs: &XfsRw, ino: Ino) -> Vec<u8> {
    let a = fs.getattr(ino).unwrap();
    let mut v = vec![0u8; a.size as usize];
    let mut off = 0;
    while off < v.len() {
        let n = fs.read(ino, off as u64, &mut v[off..]).unwrap();
        assert!(n > 0);
        off += n;
    }
    v
}

const BASE: &str = r#"
os.makedirs('etc/sysconfig/network-scripts')
for n in ['ifcfg-lo', 'ifdown', 'ifup', 'ifup-eth', 'ifdown-eth', 'network-functions']:
    open('etc/sysconfig/network-scripts/' + n, 'w').write(n * 40)
open('etc/sysconfig/network-scripts/ifcfg-eth0', 'w').write('DEVICE=eth0\nBOOTPROTO=dhcp\nONBOOT=yes\n')
for p in ['etc', 'etc/sysconfig', 'etc/sysconfig/network-scripts'] + ['etc/sysconfig/network-scripts/' + n for n in os.listdir('etc/sysconfig/network-scripts')]:
    os.setxattr(p, 'security.selinux', b'system_u:object_r:net_conf_t:s0\0')
open('etc/hostname', 'w').write('template\n')
open('big', 'wb').write(bytes(range(256)) * 4096)
"#;

/// `sed -i`: a temp file in the same directory, written, labelled, renamed over the original.
fn sed_i(fs: &XfsRw, dir: Ino, name: &str, content: &[u8]) {
    let orig = fs.lookup(dir, OsStr::new(name)).unwrap().unwrap();
    let a = fs.getattr(orig).unwrap();
    let label = fs.getxattr(orig, OsStr::new("security.selinux")).unwrap();
    let tmp = fs
        .create(dir, OsStr::new("sedAbC123"), a.perm().into(), a.uid, a.gid)
        .unwrap();
    assert_eq!(fs.write(tmp.ino, 0, content).unwrap(), content.len());
    if let Some(l) = label {
        fs.setxattr(tmp.ino, OsStr::new("security.selinux"), &l, 0)
            .unwrap();
    }
    fs.rename(dir, OsStr::new("sedAbC123"), dir, OsStr::new(name), 0)
        .unwrap();
}

/// vim: swap file, backup by rename, new file written and labelled, backup and swap removed.
fn vim(fs: &XfsRw, dir: Ino, name: &str, content: &[u8]) {
    let swp = format!(".{name}.swp");
    let bak = format!("{name}~");
    let orig = fs.lookup(dir, OsStr::new(name)).unwrap().unwrap();
    let a = fs.getattr(orig).unwrap();
    let label = fs.getxattr(orig, OsStr::new("security.selinux")).unwrap();
    let s = fs.create(dir, OsStr::new(&swp), 0o600, 0, 0).unwrap();
    fs.write(s.ino, 0, &vec![0x55u8; 12288]).unwrap();
    fs.rename(dir, OsStr::new(name), dir, OsStr::new(&bak), 0)
        .unwrap();
    let n = fs
        .create(dir, OsStr::new(name), a.perm().into(), a.uid, a.gid)
        .unwrap();
    fs.write(n.ino, 0, content).unwrap();
    if let Some(l) = label {
        fs.setxattr(n.ino, OsStr::new("security.selinux"), &l, 0)
            .unwrap();
    }
    fs.unlink(dir, OsStr::new(&bak)).unwrap();
    fs.unlink(dir, OsStr::new(&swp)).unwrap();
}

fn seed_workflow(opts: &[&str]) {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = scratch();
    let img = image(dir.path(), opts, BASE);
    {
        let fs = open_rw(&img);
        let ns = lookup(&fs, "/etc/sysconfig/network-scripts");
        sed_i(
            &fs,
            ns,
            "ifcfg-eth0",
            b"DEVICE=eth0\nBOOTPROTO=static\nIPADDR=10.0.0.5\n",
        );
        fs.flush().unwrap();
    }
    let k = check(dir.path(), &img);
    assert!(
        k.contains("/etc/sysconfig/network-scripts/ifcfg-eth0 "),
        "{k}"
    );
    {
        let fs = open_rw(&img);
        let ns = lookup(&fs, "/etc/sysconfig/network-scripts");
        vim(
            &fs,
            ns,
            "ifcfg-eth0",
            b"DEVICE=eth0\nBOOTPROTO=static\nIPADDR=10.0.0.6\n",
        );
        let e = lookup(&fs, "/etc/sysconfig/network-scripts/ifcfg-eth0");
        assert_eq!(
            read_all(&fs, e),
            b"DEVICE=eth0\nBOOTPROTO=static\nIPADDR=10.0.0.6\n"
        );
        assert_eq!(
            fs.getxattr(e, OsStr::new("security.selinux"))
                .unwrap()
                .unwrap(),
            b"system_u:object_r:net_conf_t:s0\0"
        );
    }
    check(dir.path(), &img);
    // The kernel reads the edit and the label.
    let mnt = dir.path().join("mnt");
    run(Command::new("timeout")
        .args(["60", "mount", "-o", "loop"])
        .arg(&img)
        .arg(&mnt));
    let p = mnt.join("etc/sysconfig/network-scripts/ifcfg-eth0");
    let got = std::fs::read(&p);
    let label = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import os;print(os.getxattr({:?},'security.selinux'))",
            p.to_str().unwrap()
        ))
        .output()
        .unwrap();
    run(Command::new("timeout").args(["60", "umount"]).arg(&mnt));
    assert_eq!(
        got.unwrap(),
        b"DEVICE=eth0\nBOOTPROTO=static\nIPADDR=10.0.0.6\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&label.stdout).trim(),
        "b'system_u:object_r:net_conf_t:s0\\x00'"
    );
}

#[test]
fn seed_workflow_centos7() {
    seed_workflow(CENTOS7);
}

#[test]
fn seed_workflow_current_defaults() {
    seed_workflow(DEFAULTS);
}

fn every_op(opts: &[&str]) {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = scratch();
    let img = image(dir.path(), opts, BASE);
    {
        let fs = open_rw(&img);
        let root = fs.root_ino();
        let h = lookup(&fs, "/etc/hostname");
        // In place, then setattr.
        fs.write(h, 0, b"edited!!\n").unwrap();
        fs.setattr(
            h,
            &SetAttr {
                mode: Some(0o600),
                uid: Some(1000),
                gid: Some(100),
                mtime: Some(TimeSet::At(Timestamp {
                    secs: 1_500_000_000,
                    nanos: 5,
                })),
                ..Default::default()
            },
        )
        .unwrap();
        // Append, truncate down and up (a hole).
        let big = lookup(&fs, "/big");
        fs.write(big, 1 << 20, b"appended").unwrap();
        fs.setattr(
            big,
            &SetAttr {
                size: Some(100_000),
                ..Default::default()
            },
        )
        .unwrap();
        fs.setattr(
            big,
            &SetAttr {
                size: Some(3_000_000),
                ..Default::default()
            },
        )
        .unwrap();
        fs.write(big, 2_000_000, b"in the hole").unwrap();
        // Namespace.
        let d = fs.mkdir(root, OsStr::new("newdir"), 0o755, 0, 0).unwrap();
        let sub = fs.mkdir(d.ino, OsStr::new("sub"), 0o700, 5, 5).unwrap();
        let f = fs.create(sub.ino, OsStr::new("f"), 0o644, 0, 0).unwrap();
        fs.write(f.ino, 0, b"hello").unwrap();
        fs.link(f.ino, d.ino, OsStr::new("f-link")).unwrap();
        fs.symlink(d.ino, OsStr::new("short"), OsStr::new("sub/f"), 0, 0)
            .unwrap();
        let long = "/".to_string() + &"y".repeat(600);
        fs.symlink(d.ino, OsStr::new("long"), OsStr::new(&long), 0, 0)
            .unwrap();
        fs.mknod(d.ino, OsStr::new("null"), 0o020666, (1 << 8) | 3, 0, 0)
            .unwrap();
        fs.mknod(d.ino, OsStr::new("fifo"), 0o010644, 0, 0, 0)
            .unwrap();
        for k in 0..60 {
            let name = format!("many-{k:03}-with-a-longer-name");
            let x = fs.create(d.ino, OsStr::new(&name), 0o644, 0, 0).unwrap();
            fs.write(x.ino, 0, name.as_bytes()).unwrap();
            fs.setxattr(x.ino, OsStr::new("user.k"), name.as_bytes(), XATTR_CREATE)
                .unwrap();
        }
        for k in (0..60).step_by(3) {
            let name = format!("many-{k:03}-with-a-longer-name");
            fs.unlink(d.ino, OsStr::new(&name)).unwrap();
        }
        let e = fs
            .rename(
                d.ino,
                OsStr::new("f-link"),
                sub.ino,
                OsStr::new("f"),
                RENAME_NOREPLACE,
            )
            .unwrap_err();
        assert_eq!(vdisk_fs::errno(&e), errno::EEXIST);
        fs.rename(sub.ino, OsStr::new("f"), root, OsStr::new("moved"), 0)
            .unwrap();
        fs.rename(d.ino, OsStr::new("sub"), root, OsStr::new("sub2"), 0)
            .unwrap();
        let e = fs.rmdir(root, OsStr::new("newdir")).unwrap_err();
        assert_eq!(vdisk_fs::errno(&e), errno::ENOTEMPTY);
        fs.rmdir(root, OsStr::new("sub2")).unwrap();
        fs.removexattr(
            lookup(&fs, "/etc/sysconfig/network-scripts/ifup"),
            OsStr::new("security.selinux"),
        )
        .unwrap();
        fs.flush().unwrap();
    }
    let k = check(dir.path(), &img);
    assert!(
        k.contains("/etc/hostname ") && k.contains("mode=100600 uid=1000 gid=100"),
        "{k}"
    );
    assert!(k.contains("/newdir/long ") && k.contains(&format!("target=/{}", "y".repeat(600))));
    assert!(k.contains("/moved ") && k.contains("nlink=2"), "{k}");
    assert!(!k.contains("/sub2"), "{k}");
}

#[test]
fn every_op_centos7() {
    every_op(CENTOS7);
}

#[test]
fn every_op_current_defaults() {
    every_op(DEFAULTS);
}

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The model: paths to what the kernel must show.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    File(Vec<u8>),
    Dir,
    Link(String),
}

#[derive(Clone, Debug)]
struct Meta {
    node: Node,
    mode: u32,
    uid: u32,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn model_manifest(m: &BTreeMap<String, Meta>) -> String {
    let mut out = String::new();
    for (p, x) in m {
        out.push_str(&format!("{p} mode={:o} uid={}", x.mode, x.uid));
        match &x.node {
            Node::File(d) => {
                out.push_str(&format!(" size={} crc={:08x}", d.len(), crc32fast::hash(d)))
            }
            Node::Link(t) => out.push_str(&format!(" target={t}")),
            Node::Dir => {}
        }
        for (k, v) in &x.xattrs {
            out.push_str(&format!(" xattr:{k}={:08x}", crc32fast::hash(v)));
        }
        out.push('\n');
    }
    out
}

/// The kernel manifest reduced to the model's fields, sorted by path.
fn reduce(kernel: &str) -> String {
    let mut lines: Vec<String> = kernel
        .lines()
        .filter(|l| !l.starts_with("/ "))
        .map(|l| {
            l.split(' ')
                .filter(|w| {
                    !w.starts_with("ino=")
                        && !w.starts_with("gid=")
                        && !w.starts_with("nlink=")
                        && !w.starts_with("mtime=")
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    lines.sort_by(|a, b| a.split(' ').next().cmp(&b.split(' ').next()));
    lines.join("\n") + "\n"
}

fn random_ops(opts: &[&str], seed: u64, n: usize) {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = scratch();
    let img = image(dir.path(), opts, "pass");
    let mut m: BTreeMap<String, Meta> = BTreeMap::new();
    let mut rng = Rng(seed | 1);
    let mut refused = 0;
    {
        let fs = open_rw(&img);
        for _ in 0..n {
            let dirs: Vec<String> = std::iter::once(String::new())
                .chain(
                    m.iter()
                        .filter(|(_, x)| x.node == Node::Dir)
                        .map(|(p, _)| p.clone()),
                )
                .collect();
            let files: Vec<String> = m
                .iter()
                .filter(|(_, x)| matches!(x.node, Node::File(_)))
                .map(|(p, _)| p.clone())
                .collect();
            let d = dirs[rng.below(dirs.len() as u64) as usize].clone();
            let dino = if d.is_empty() {
                fs.root_ino()
            } else {
                lookup(&fs, &d)
            };
            // Mostly a few short names (collisions: replace, EEXIST), sometimes one of many
            // long ones (directories grow into block and leaf form).
            let name = if rng.below(3) == 0 {
                format!("a-long-name-to-fill-directory-blocks-{:04}", rng.below(600))
            } else {
                format!("n{}", rng.below(40))
            };
            let path = format!("{d}/{name}");
            let op = rng.below(11);
            let r: Result<()> = match op {
                0 | 1 if !m.contains_key(&path) => {
                    let mode = 0o600 | rng.below(0o100) as u32;
                    fs.create(dino, OsStr::new(&name), mode, 0, 0).map(|_| {
                        m.insert(
                            path.clone(),
                            Meta {
                                node: Node::File(Vec::new()),
                                mode: 0o100000 | mode,
                                uid: 0,
                                xattrs: BTreeMap::new(),
                            },
                        );
                    })
                }
                2 if !m.contains_key(&path) => {
                    fs.mkdir(dino, OsStr::new(&name), 0o755, 0, 0).map(|_| {
                        m.insert(
                            path.clone(),
                            Meta {
                                node: Node::Dir,
                                mode: 0o040755,
                                uid: 0,
                                xattrs: BTreeMap::new(),
                            },
                        );
                    })
                }
                3 if !m.contains_key(&path) => {
                    let t = "t".repeat(1 + rng.below(300) as usize);
                    fs.symlink(dino, OsStr::new(&name), OsStr::new(&t), 0, 0)
                        .map(|_| {
                            m.insert(
                                path.clone(),
                                Meta {
                                    node: Node::Link(t.clone()),
                                    mode: 0o120777,
                                    uid: 0,
                                    xattrs: BTreeMap::new(),
                                },
                            );
                        })
                }
                4..=6 if !files.is_empty() => {
                    let f = &files[rng.below(files.len() as u64) as usize];
                    let ino = lookup(&fs, f);
                    let Node::File(cur) = &m[f].node else {
                        unreachable!()
                    };
                    let off = rng.below(cur.len() as u64 + 20000);
                    let big = rng.below(4) == 0;
                    let len = 1 + rng.below(if big { 300_000 } else { 5000 });
                    let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    fs.write(ino, off, &data).map(|_| {
                        let Some(Meta {
                            node: Node::File(cur),
                            ..
                        }) = m.get_mut(f)
                        else {
                            unreachable!()
                        };
                        let end = off as usize + data.len();
                        if cur.len() < end {
                            cur.resize(end, 0);
                        }
                        cur[off as usize..end].copy_from_slice(&data);
                    })
                }
                7 if !files.is_empty() => {
                    let f = files[rng.below(files.len() as u64) as usize].clone();
                    let ino = lookup(&fs, &f);
                    let size = rng.below(200_000);
                    fs.setattr(
                        ino,
                        &SetAttr {
                            size: Some(size),
                            mode: Some(0o640),
                            uid: Some(7),
                            ..Default::default()
                        },
                    )
                    .map(|_| {
                        let x = m.get_mut(&f).unwrap();
                        if let Node::File(c) = &mut x.node {
                            c.resize(size as usize, 0);
                        }
                        x.mode = 0o100640;
                        x.uid = 7;
                    })
                }
                8 => {
                    // Remove something (a file or an empty directory).
                    let all: Vec<String> = m.keys().cloned().collect();
                    if all.is_empty() {
                        Ok(())
                    } else {
                        let p = all[rng.below(all.len() as u64) as usize].clone();
                        let (pd, pn) = p.rsplit_once('/').unwrap();
                        let pino = if pd.is_empty() {
                            fs.root_ino()
                        } else {
                            lookup(&fs, pd)
                        };
                        if m[&p].node == Node::Dir {
                            let empty = !m.keys().any(|k| k.starts_with(&format!("{p}/")));
                            let r = fs.rmdir(pino, OsStr::new(pn));
                            match (&r, empty) {
                                (Ok(()), true) => {
                                    m.remove(&p);
                                    Ok(())
                                }
                                (Err(e), false) if vdisk_fs::errno(e) == errno::ENOTEMPTY => Ok(()),
                                _ => r,
                            }
                        } else {
                            fs.unlink(pino, OsStr::new(pn)).map(|_| {
                                m.remove(&p);
                            })
                        }
                    }
                }
                9 if !files.is_empty() => {
                    // Rename a file over or beside others, maybe across directories.
                    let f = files[rng.below(files.len() as u64) as usize].clone();
                    let (fd, fname) = f.rsplit_once('/').unwrap();
                    let fdino = if fd.is_empty() {
                        fs.root_ino()
                    } else {
                        lookup(&fs, fd)
                    };
                    if m.get(&path).is_some_and(|x| x.node == Node::Dir) || path == f {
                        Ok(())
                    } else {
                        fs.rename(fdino, OsStr::new(fname), dino, OsStr::new(&name), 0)
                            .map(|_| {
                                let x = m.remove(&f).unwrap();
                                m.insert(path.clone(), x);
                            })
                    }
                }
                10 if !files.is_empty() => {
                    let f = files[rng.below(files.len() as u64) as usize].clone();
                    let ino = lookup(&fs, &f);
                    let k = format!("user.a{}", rng.below(4));
                    if rng.below(3) == 0 {
                        match fs.removexattr(ino, OsStr::new(&k)) {
                            Ok(()) => {
                                m.get_mut(&f).unwrap().xattrs.remove(&k);
                                Ok(())
                            }
                            Err(e) if vdisk_fs::errno(&e) == errno::ENODATA => {
                                assert!(!m[&f].xattrs.contains_key(&k));
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    } else {
                        let v: Vec<u8> = (0..rng.below(60)).map(|_| rng.next() as u8).collect();
                        fs.setxattr(ino, OsStr::new(&k), &v, 0).map(|_| {
                            m.get_mut(&f).unwrap().xattrs.insert(k.clone(), v.clone());
                        })
                    }
                }
                _ => Ok(()),
            };
            if let Err(e) = r {
                assert_eq!(
                    vdisk_fs::errno(&e),
                    errno::EOPNOTSUPP,
                    "op {op} on {path}: {e}"
                );
                eprintln!("refused: {e}");
                refused += 1;
            }
        }
        fs.flush().unwrap();
    }
    eprintln!("seed {seed}: {n} operations, {refused} refused as not supported yet");
    let k = check(dir.path(), &img);
    let want = model_manifest(&m);
    let got = reduce(&k);
    let w: Vec<_> = want.lines().collect();
    let g: Vec<_> = got.lines().collect();
    for (a, b) in w.iter().zip(g.iter()) {
        assert_eq!(a, b, "first difference (model, kernel)");
    }
    assert_eq!(w.len(), g.len(), "model and kernel differ in entries");
    let _ = OsStrExt::as_bytes(OsStr::new(""));
    let _ = FileKind::File;
}

#[test]
fn random_ops_centos7() {
    for seed in [1, 2] {
        random_ops(CENTOS7, seed, 600);
    }
}

#[test]
fn random_ops_current_defaults() {
    for seed in [3, 4] {
        random_ops(DEFAULTS, seed, 600);
    }
}

/// Many small operations on a filesystem with the smallest log mkfs.xfs makes: the log head
/// wraps past its end several times (records split across the end, cycles bumped), and the
/// kernel still mounts a clean log and xfs_repair agrees.
#[test]
fn log_wraps() {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = scratch();
    std::env::set_var("TEST_DIR", "1");
    std::env::set_var("TEST_DEV", "1");
    std::env::set_var("QA_CHECK_FS", "1");
    let img = image(dir.path(), &["-l", "size=1368b"], BASE);
    let mut cycles = Vec::new();
    {
        let fs = open_rw(&img);
        let root = fs.root_ino();
        for k in 0..1500u32 {
            let name = format!("f{}", k % 7);
            if let Some(i) = fs.lookup(root, OsStr::new(&name)).unwrap() {
                fs.write(i, u64::from(k % 5) * 4096, &vec![k as u8; 3000])
                    .unwrap();
                if k % 3 == 0 {
                    fs.unlink(root, OsStr::new(&name)).unwrap();
                }
            } else {
                let a = fs.create(root, OsStr::new(&name), 0o644, k, 0).unwrap();
                fs.setxattr(
                    a.ino,
                    OsStr::new("security.selinux"),
                    b"x_u:object_r:y_t:s0\0",
                    0,
                )
                .unwrap();
            }
            if k % 100 == 0 {
                let f = std::fs::File::open(&img).unwrap();
                let n = f.metadata().unwrap().len();
                let dev = common::FileDev(f, n);
                let log = vdisk_xfs_log::Log::open(&dev).unwrap();
                let st = log.state().unwrap();
                assert!(st.clean);
                cycles.push(st.head_cycle);
            }
        }
    }
    assert!(
        cycles.last().unwrap() - cycles[0] >= 1,
        "the log did not wrap: cycles {cycles:?}"
    );
    check(dir.path(), &img);
}

/// A device that takes `budget` writes and then fails every write: a power cut.
struct CrashDev {
    inner: RwDev,
    budget: std::sync::atomic::AtomicI64,
}

impl BlockDevice for CrashDev {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self
            .budget
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            <= 0
        {
            return Err(vdisk_block::Error::io(
                "write",
                Some(offset),
                std::io::Error::other("simulated power cut"),
            ));
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
}

/// The steps of the crash test, one operation each: the sed -i workflow, then a directory
/// that converts from short form to a block, then a file's blocks freed.
fn crash_steps(fs: &dyn FileSystemMut, step: usize) -> Result<()> {
    let root = fs.root_ino();
    let ns = fs.resolve(b"/etc/sysconfig/network-scripts", true)?;
    match step {
        0 => fs.create(ns, OsStr::new("sedX1"), 0o644, 0, 0).map(|_| ()),
        1 => {
            let t = fs.lookup(ns, OsStr::new("sedX1"))?.unwrap();
            fs.write(t, 0, b"DEVICE=eth0\nIPADDR=192.168.1.9\n")
                .map(|_| ())
        }
        2 => {
            let t = fs.lookup(ns, OsStr::new("sedX1"))?.unwrap();
            fs.setxattr(
                t,
                OsStr::new("security.selinux"),
                b"system_u:object_r:net_conf_t:s0\0",
                0,
            )
        }
        3 => fs.rename(ns, OsStr::new("sedX1"), ns, OsStr::new("ifcfg-eth0"), 0),
        4 => fs.mkdir(root, OsStr::new("d"), 0o755, 0, 0).map(|_| ()),
        // Enough entries to turn the short-form directory into a block directory.
        5..=22 => {
            let d = fs.lookup(root, OsStr::new("d"))?.unwrap();
            let k = step - 5;
            fs.create(d, OsStr::new(&format!("entry-number-{k:04}")), 0o644, 0, 0)
                .map(|_| ())
        }
        23 => fs.unlink(root, OsStr::new("big")),
        _ => Ok(()),
    }
}

/// Kernel manifest without the times and inode numbers that differ between runs.
fn stable(kernel: &str) -> String {
    kernel
        .lines()
        .map(|l| {
            l.split(' ')
                .filter(|w| !w.starts_with("mtime="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Stop after the k-th device write (every k, or a sample: XFS_CRASH_STRIDE), let the kernel replay the log: every step is whole or
/// absent, xfs_repair -n is clean.
fn crash(opts: &[&str]) {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = scratch();
    let golden = image(dir.path(), opts, BASE);
    let work = dir.path().join("work.img");
    const STEPS: usize = 24;
    // The states after each prefix of steps (our reader, which the other tests hold to the
    // kernel's view), and the number of writes of a whole run.
    let mut states = Vec::new();
    std::fs::copy(&golden, &work).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&work)
        .unwrap();
    let n = f.metadata().unwrap().len();
    let dev = Arc::new(CrashDev {
        inner: RwDev(f, n),
        budget: std::sync::atomic::AtomicI64::new(i64::MAX),
    });
    {
        let fs = XfsRw::open(dev.clone()).unwrap();
        states.push(stable(&our_manifest(
            &vdisk_xfs::Xfs::open(open_dev(&work)).unwrap(),
        )));
        for s in 0..STEPS {
            crash_steps(&fs, s).unwrap();
            states.push(stable(&our_manifest(
                &vdisk_xfs::Xfs::open(open_dev(&work)).unwrap(),
            )));
        }
    }
    let total = i64::MAX - dev.budget.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        stable(&kernel_manifest(dir.path(), &work)),
        *states.last().unwrap()
    );
    eprintln!("{total} device writes for {STEPS} steps");
    // Every crash point takes a copy, a kernel mount (replay) and xfs_repair: CI samples them
    // (XFS_CRASH_STRIDE=1 tries every write).
    let stride: usize = std::env::var("XFS_CRASH_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
        .max(1);
    let mut replayed = 0;
    let mut points = 0;
    for k in (0..total).step_by(stride) {
        points += 1;
        std::fs::copy(&golden, &work).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&work)
            .unwrap();
        let n = f.metadata().unwrap().len();
        let dev = Arc::new(CrashDev {
            inner: RwDev(f, n),
            budget: std::sync::atomic::AtomicI64::new(k),
        });
        {
            let fs = XfsRw::open(dev.clone()).unwrap();
            for s in 0..STEPS {
                if crash_steps(&fs, s).is_err() {
                    break;
                }
            }
        }
        let dirty = {
            let f = std::fs::File::open(&work).unwrap();
            let n = f.metadata().unwrap().len();
            let d = common::FileDev(f, n);
            !vdisk_xfs_log::Log::open(&d).unwrap().state().unwrap().clean
        };
        replayed += usize::from(dirty);
        // The kernel's mount replays a dirty log; its unmount leaves it clean.
        let t0 = std::time::Instant::now();
        let m = stable(&kernel_manifest(dir.path(), &work));
        let t1 = t0.elapsed();
        xfs_repair_clean(&work);
        if std::env::var_os("XFS_CRASH_TIMES").is_some() {
            eprintln!("mount {t1:?} repair {:?}", t0.elapsed() - t1);
        }
        assert!(
            states.contains(&m),
            "after {k} writes: a state no prefix of the steps leads to:\n{m}"
        );
    }
    eprintln!("{points} crash points of {total}, {replayed} left a log for the kernel to replay");
    assert!(replayed > 0);
}

#[test]
fn crash_centos7() {
    crash(CENTOS7);
}

#[test]
fn crash_current_defaults() {
    crash(DEFAULTS);
}

/// Directories that outgrow one block become leaf directories (data blocks, a leaf block with
/// the bests table) and shrink back to block and short form; a leaf directory the kernel made
/// is edited too, and node directories (3,000 and 20,000 entries, block maps in B+tree
/// form).
fn leaf_dirs(opts: &[&str]) {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = scratch();
    let script = r#"
os.makedirs('kleaf')
for i in range(300):
    open('kleaf/kernel-made-entry-%05d' % i, 'w').write(str(i))
os.makedirs('knode')
for i in range(3000):
    open('knode/kernel-made-entry-%05d' % i, 'w').write(str(i))
os.makedirs('big20k')
for i in range(20000):
    os.close(os.open('big20k/e%05d' % i, os.O_CREAT | os.O_WRONLY))
"#;
    let img = image(dir.path(), opts, script);
    {
        let fs = open_rw(&img);
        let root = fs.root_ino();
        let d = fs.mkdir(root, OsStr::new("grow"), 0o755, 0, 0).unwrap();
        for k in 0..400 {
            let name = format!("a-rather-long-entry-name-number-{k:05}");
            fs.create(d.ino, OsStr::new(&name), 0o644, 0, 0).unwrap();
        }
        fs.mkdir(d.ino, OsStr::new("subdir"), 0o755, 0, 0).unwrap();
        let kl = lookup(&fs, "/kleaf");
        for k in (0..300).step_by(2) {
            let name = format!("kernel-made-entry-{k:05}");
            fs.unlink(kl, OsStr::new(&name)).unwrap();
        }
        let x = fs
            .create(kl, OsStr::new("added-by-vdisk"), 0o600, 0, 0)
            .unwrap();
        fs.write(x.ino, 0, b"leaf").unwrap();
        let kn = lookup(&fs, "/knode");
        fs.create(kn, OsStr::new("added-to-a-node-dir"), 0o644, 0, 0)
            .unwrap();
        for k in (0..3000).step_by(7) {
            let name = format!("kernel-made-entry-{k:05}");
            fs.unlink(kn, OsStr::new(&name)).unwrap();
        }
        let big = lookup(&fs, "/big20k");
        for k in 0..5 {
            let name = format!("vdisk-{k}");
            fs.create(big, OsStr::new(&name), 0o644, 0, 0).unwrap();
            let name = format!("e{:05}", k * 997);
            fs.unlink(big, OsStr::new(&name)).unwrap();
        }
        fs.flush().unwrap();
    }
    let k = check(dir.path(), &img);
    assert_eq!(k.matches("/grow/a-rather-long-entry-name").count(), 400);
    assert!(k.contains("/kleaf/added-by-vdisk "));
    assert!(k.contains("/knode/added-to-a-node-dir "));
    assert_eq!(k.matches("/big20k/").count(), 20000);
    assert!(k.contains("/big20k/vdisk-4 ") && !k.contains("/big20k/e00997 "));
    {
        let fs = open_rw(&img);
        let g = lookup(&fs, "/grow");
        for k in 0..397 {
            let name = format!("a-rather-long-entry-name-number-{k:05}");
            fs.unlink(g, OsStr::new(&name)).unwrap();
        }
    }
    let k = check(dir.path(), &img);
    assert_eq!(k.matches("/grow/a-rather-long-entry-name").count(), 3);
}

#[test]
fn leaf_dirs_centos7() {
    leaf_dirs(CENTOS7);
}

#[test]
fn leaf_dirs_current_defaults() {
    leaf_dirs(DEFAULTS);
}

/// 1 KiB blocks with 4 KiB directory blocks: directory blocks span four filesystem blocks,
/// inode chunks 32.
#[test]
fn random_ops_small_blocks_big_dir_blocks() {
    random_ops(
        &[
            "-b",
            "size=1024",
            "-n",
            "size=4096",
            "-m",
            "crc=1,finobt=0,reflink=0,rmapbt=0",
            "-i",
            "sparse=0",
        ],
        5,
        300,
    );
    random_ops(&["-b", "size=1024", "-n", "size=4096"], 6, 300);
}

#[test]
fn every_op_small_blocks_big_dir_blocks() {
    every_op(&["-b", "size=1024", "-n", "size=4096"]);
}

/// Files whose extents outgrow the inode get a block map B+tree (a root in the inode, leaves
/// in blocks), grow to several leaves, and shrink back to an extent list.
fn bmbt_files(opts: &[&str]) {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = scratch();
    let img = image(dir.path(), opts, BASE);
    let bs = {
        let fs = open_rw(&img);
        u64::from(fs.statfs().unwrap().block_size)
    };
    {
        let fs = open_rw(&img);
        let root = fs.root_ino();
        let f = fs.create(root, OsStr::new("frag"), 0o644, 0, 0).unwrap();
        // Every other block: one extent each.
        for k in 0..700u64 {
            fs.write(f.ino, 2 * k * bs, &[(k % 251) as u8; 100])
                .unwrap();
        }
        let g = fs.create(root, OsStr::new("frag2"), 0o644, 0, 0).unwrap();
        for k in 0..40u64 {
            fs.write(g.ino, 2 * k * bs, b"forty").unwrap();
        }
        fs.flush().unwrap();
    }
    let k = check(dir.path(), &img);
    assert!(k.contains("/frag "), "{k}");
    {
        let fs = open_rw(&img);
        let f = lookup(&fs, "/frag");
        fs.setattr(
            f,
            &SetAttr {
                size: Some(300 * bs),
                ..Default::default()
            },
        )
        .unwrap();
        let g = lookup(&fs, "/frag2");
        fs.setattr(
            g,
            &SetAttr {
                size: Some(10 * bs),
                ..Default::default()
            },
        )
        .unwrap();
        fs.unlink(fs.root_ino(), OsStr::new("frag")).unwrap();
    }
    check(dir.path(), &img);
}

#[test]
fn bmbt_files_centos7() {
    bmbt_files(CENTOS7);
}

#[test]
fn bmbt_files_current_defaults() {
    bmbt_files(DEFAULTS);
}

/// One operation whose transaction spans several log records (a 20,000-entry directory
/// re-laid): cut off after k device writes for k across the log records and the home
/// writes, the kernel's replay brings it back whole or absent.
#[test]
fn crash_in_a_multi_record_transaction() {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = scratch();
    let script = r#"
os.makedirs('big')
for i in range(20000):
    os.close(os.open('big/entry-made-by-the-kernel-%05d' % i, os.O_CREAT | os.O_WRONLY))
"#;
    let golden = image(dir.path(), CENTOS7, script);
    let work = dir.path().join("work.img");
    let run_op = |budget: i64| -> (i64, bool) {
        std::fs::copy(&golden, &work).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&work)
            .unwrap();
        let n = f.metadata().unwrap().len();
        let dev = Arc::new(CrashDev {
            inner: RwDev(f, n),
            budget: std::sync::atomic::AtomicI64::new(budget),
        });
        let ok = {
            let fs = XfsRw::open(dev.clone()).unwrap();
            let big = fs.resolve(b"/big", true).unwrap();
            // The first entry goes: every later entry moves up, every block is rewritten.
            fs.unlink(big, OsStr::new("entry-made-by-the-kernel-00000"))
                .is_ok()
        };
        (
            budget - dev.budget.load(std::sync::atomic::Ordering::SeqCst),
            ok,
        )
    };
    let f = std::fs::File::open(&golden).unwrap();
    let n = f.metadata().unwrap().len();
    let gdev = common::FileDev(f, n);
    let head0 = vdisk_xfs_log::Log::open(&gdev)
        .unwrap()
        .state()
        .unwrap()
        .head_blk;
    let (total, ok) = run_op(i64::MAX);
    assert!(ok);
    {
        // The records the operation wrote, up to the unmount record.
        let f = std::fs::File::open(&work).unwrap();
        let n = f.metadata().unwrap().len();
        let d = common::FileDev(f, n);
        let log = vdisk_xfs_log::Log::open(&d).unwrap();
        let st = log.state().unwrap();
        let mut blk = head0;
        let mut records = 0;
        while blk != st.last_record_blk {
            let (h, _) = log.read_record(blk).unwrap();
            blk = (blk + h.header_blocks() + h.data_blocks()) % log.geometry().log_bbs;
            records += 1;
            assert!(records < 100);
        }
        assert!(records >= 2, "the transaction fit in {records} record");
        eprintln!("the transaction took {records} log records");
    }
    let after = stable(&kernel_manifest(dir.path(), &work));
    std::fs::copy(&golden, &work).unwrap();
    let before = stable(&kernel_manifest(dir.path(), &work));
    // The log records come first (two writes each), then the home writes.
    // Inside the first record, between records, right after the last record (the commit is
    // in the log, nothing home yet), amid the home writes, before the unmount record.
    let points: Vec<i64> = vec![1, 4, 9, 10, 11, total / 2, total - 2];
    let mut replayed = 0;
    for k in points {
        let (_, ok) = run_op(k);
        assert!(!ok || k >= total);
        let f = std::fs::File::open(&work).unwrap();
        let n = f.metadata().unwrap().len();
        let d = common::FileDev(f, n);
        let st = vdisk_xfs_log::Log::open(&d).unwrap().state().unwrap();
        replayed += usize::from(!st.clean);
        let m = stable(&kernel_manifest(dir.path(), &work));
        xfs_repair_clean(&work);
        assert!(
            m == before || m == after,
            "after {k} of {total} writes: neither before nor after"
        );
    }
    eprintln!("{total} writes; {replayed} crash points left the log to the kernel");
    assert!(replayed > 0);
}

/// A log that needs recovery: writes are refused by name, nothing is changed.
#[test]
fn dirty_log_refuses_writes() {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = scratch();
    let golden = image(dir.path(), CENTOS7, BASE);
    let work = dir.path().join("work.img");
    std::fs::copy(&golden, &work).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&work)
        .unwrap();
    let n = f.metadata().unwrap().len();
    // Cut off after the log record of one operation: the log holds a committed transaction.
    let dev = Arc::new(CrashDev {
        inner: RwDev(f, n),
        budget: std::sync::atomic::AtomicI64::new(2),
    });
    {
        let fs = XfsRw::open(dev.clone()).unwrap();
        let h = fs.resolve(b"/etc/hostname", true).unwrap();
        assert!(fs
            .setattr(
                h,
                &SetAttr {
                    mode: Some(0o600),
                    ..Default::default()
                }
            )
            .is_err());
    }
    let before = std::fs::read(&work).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&work)
        .unwrap();
    let e = XfsRw::open(Arc::new(RwDev(f, n)))
        .err()
        .expect("a dirty log must refuse");
    assert_eq!(vdisk_fs::errno(&e), errno::EOPNOTSUPP, "{e}");
    assert!(e.to_string().contains("dirty"), "{e}");
    assert!(
        std::fs::read(&work).unwrap() == before,
        "the refused open changed the image"
    );
}
