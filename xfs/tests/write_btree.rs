//! The writer on aged filesystems: free space fragmented (by the kernel and by us) until the
//! free-space B+trees have several levels, thousands of inodes (multi-level inobt and
//! finobt), and a file of thousands of extents (a block map B+tree of three levels with 1 KiB
//! blocks). After each phase `xfs_repair -n` is clean, a kernel loop mount reads exactly the
//! model (names and bytes), our reader agrees, and `xfs_db` shows the trees really grew (and
//! shrank) to the heights the phase is meant to reach.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use vdisk_fs::{FileSystem, FileSystemMut, SetAttr};
use vdisk_xfs::XfsRw;

const CENTOS7: &[&str] = &["-m", "crc=1,finobt=0,reflink=0,rmapbt=0", "-i", "sparse=0"];
const DEFAULTS: &[&str] = &[];
const SMALL: &[&str] = &["-b", "size=1024"];
const SMALL_CENTOS7: &[&str] = &[
    "-b",
    "size=1024",
    "-m",
    "crc=1,finobt=0,reflink=0,rmapbt=0",
    "-i",
    "sparse=0",
];

/// A scratch directory in memory when possible (the engine flushes after every operation).
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

fn skip() -> bool {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return true;
    }
    false
}

/// A 300 MiB image (mkfs.xfs's minimum) made with `opts`, then `script` (python, cwd = the
/// root) run on it through a kernel loop mount.
fn image(dir: &Path, opts: &[&str], script: &str) -> PathBuf {
    let img = dir.join("xfs.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(300 << 20).unwrap();
    drop(f);
    run(Command::new("timeout")
        .args(["60", "mkfs.xfs", "-q", "-f"])
        .args(opts)
        .arg(&img));
    if !script.is_empty() {
        let mnt = dir.join("mnt");
        mount(&img, &mnt);
        let pop = Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import os\nos.chdir({:?})\n{script}",
                mnt.to_str().unwrap()
            ))
            .output();
        umount(&mnt);
        let pop = pop.unwrap();
        assert!(
            pop.status.success(),
            "populate: {}",
            String::from_utf8_lossy(&pop.stderr)
        );
    }
    img
}

fn open(img: &Path) -> XfsRw {
    XfsRw::open(Arc::new(open_rw(img))).unwrap()
}

/// `xfs_db -r -c <cmd> -c "p <fields>"`, parsed as `name = number`.
fn db(img: &Path, cmd: &str, fields: &str) -> BTreeMap<String, u64> {
    let out = run(Command::new("xfs_db")
        .args(["-r", "-c", cmd, "-c", &format!("p {fields}")])
        .arg(img));
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(" = ")?;
            let v = v.split_whitespace().next()?;
            Some((k.trim().to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The heights of AG `ag`'s trees: (bnobt, cntbt, inobt, finobt or 0).
fn levels(img: &Path, ag: u32) -> (u64, u64, u64, u64) {
    let f = db(img, &format!("agf {ag}"), "bnolevel cntlevel");
    let i = db(img, &format!("agi {ag}"), "level free_level");
    (
        f["bnolevel"],
        f["cntlevel"],
        i["level"],
        i.get("free_level").copied().unwrap_or(0),
    )
}

/// The files of the model: path (from the root, no leading slash) -> contents.
type Model = BTreeMap<String, Vec<u8>>;

/// xfs_repair -n clean; the kernel and our reader both see exactly `model` (every regular
/// file, with its bytes; directories as the paths imply); every tree's shape right.
fn check(dir: &Path, img: &Path, model: &Model) {
    check_with(dir, img, model, &[]);
}

/// [`check`], and the block map B+trees of `inodes` checked as well.
fn check_with(dir: &Path, img: &Path, model: &Model, inodes: &[u64]) {
    xfs_repair_clean(img);
    // The shapes xfs_repair does not look at: sibling chains, fill, keys, header fields.
    let out = Command::new("python3")
        .arg(tests_dir().join("btcheck.py"))
        .arg(img)
        .args(inodes.iter().map(|i| i.to_string()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mnt = dir.join("mnt");
    mount(img, &mnt);
    let mut seen = Model::new();
    let mut stack = vec![mnt.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(&mnt).unwrap().to_str().unwrap().to_string();
                seen.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    umount(&mnt);
    let diff: Vec<_> = model
        .keys()
        .filter(|k| seen.get(*k) != model.get(*k))
        .chain(seen.keys().filter(|k| !model.contains_key(*k)))
        .take(5)
        .collect();
    assert!(diff.is_empty(), "the kernel sees otherwise: {diff:?}");
    // Our reader, reopened on the image, agrees line for line with the kernel.
    let ours = our_manifest(&vdisk_xfs::Xfs::open(open_dev(img)).unwrap());
    let kernel = kernel_manifest(img, &mnt);
    assert_same_manifest(&kernel, &ours, "kernel vs our reader");
}

fn read_all(fs: &XfsRw, ino: u64) -> Vec<u8> {
    let size = fs.getattr(ino).unwrap().size as usize;
    let mut v = vec![0u8; size];
    let mut off = 0;
    while off < size {
        let n = fs.read(ino, off as u64, &mut v[off..]).unwrap();
        assert!(n > 0);
        off += n;
    }
    v
}

/// Creates `path` (its directory made if missing) holding `data`.
fn create_at(fs: &XfsRw, path: &str, data: &[u8]) {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let mut parent = fs.root_ino();
    if !dir.is_empty() {
        parent = match fs.lookup(parent, OsStr::new(dir)).unwrap() {
            Some(i) => i,
            None => fs.mkdir(parent, OsStr::new(dir), 0o755, 0, 0).unwrap().ino,
        };
    }
    let a = fs.create(parent, OsStr::new(name), 0o644, 0, 0).unwrap();
    if !data.is_empty() {
        assert_eq!(fs.write(a.ino, 0, data).unwrap(), data.len());
    }
}

fn unlink_at(fs: &XfsRw, path: &str) {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let parent = fs.resolve(format!("/{dir}").as_bytes(), false).unwrap();
    fs.unlink(parent, OsStr::new(name)).unwrap();
}

/// Our files are spread over directories (all in AG 0, with the root): a directory is
/// re-encoded whole when it changes, and thousands of entries in one would dominate the run.
fn ours(k: usize) -> String {
    format!("w{:02}/w{k:05}", k % 32)
}

fn content(k: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + k * 13) as u8).collect()
}

/// Python for the kernel: `n` one-block files in the root, then every other one removed.
fn kernel_fragments(n: usize, bs: usize) -> String {
    format!(
        "for k in range({n}):\n    open('k%05d' % k, 'wb').write(bytes([k % 256]) * {bs})\n\
         os.sync()\n\
         for k in range(0, {n}, 2):\n    os.unlink('k%05d' % k)\n"
    )
}

/// Free space fragmented by the kernel into a multi-level bnobt/cntbt; then we fill holes,
/// fragment it further ourselves (the trees grow), and free everything (they shrink).
fn free_space_trees(opts: &[&str], bs: usize) {
    if skip() {
        return;
    }
    let dir = scratch();
    // Records per free-space leaf: (bs - 56) / 8; more holes than that need two levels.
    let per_leaf = (bs - 56) / 8;
    let n = per_leaf + per_leaf / 4;
    let img = image(dir.path(), opts, &kernel_fragments(2 * n, bs));
    let (b0, c0, _, _) = levels(&img, 0);
    assert!(b0 >= 2 && c0 >= 2, "the kernel left levels {b0}/{c0}");
    let mut model = Model::new();
    for k in (1..2 * n).step_by(2) {
        model.insert(format!("k{k:05}"), vec![(k % 256) as u8; bs]);
    }
    // Phase 1: our files of one and three blocks into the kernel's holes and beyond.
    {
        let fs = open(&img);
        for k in 0..2 * n {
            let len = if k % 5 == 0 { 3 * bs - 100 } else { bs };
            let c = content(k, len);
            create_at(&fs, &ours(k), &c);
            model.insert(ours(k), c);
        }
        // Every other of ours removed: new holes everywhere.
        for k in (0..2 * n).step_by(2) {
            unlink_at(&fs, &ours(k));
            model.remove(&ours(k));
        }
        // Read back through the writer itself.
        for k in (1..2 * n).step_by(74) {
            let ino = fs
                .resolve(format!("/{}", ours(k)).as_bytes(), false)
                .unwrap();
            assert_eq!(read_all(&fs, ino), model[&ours(k)], "{}", ours(k));
        }
        fs.flush().unwrap();
    }
    check(dir.path(), &img, &model);
    let (b1, c1, _, _) = levels(&img, 0);
    assert!(
        b1 >= 2 && c1 >= 2,
        "after our fragmenting: levels {b1}/{c1}"
    );
    // The kernel allocates from and frees into the trees we wrote (its own B+tree code
    // walking our blocks, siblings and keys), then repair and the shape check again.
    let mnt = dir.path().join("mnt");
    mount(&img, &mnt);
    for k in 0..200 {
        std::fs::write(
            mnt.join(format!("kern{k:03}")),
            content(k, bs * (1 + k % 3)),
        )
        .unwrap();
    }
    run(&mut Command::new("sync"));
    for k in (0..200).step_by(2) {
        std::fs::remove_file(mnt.join(format!("kern{k:03}"))).unwrap();
    }
    for k in (3..2 * n).step_by(8) {
        std::fs::remove_file(mnt.join(format!("k{k:05}"))).unwrap();
        model.remove(&format!("k{k:05}"));
    }
    umount(&mnt);
    for k in (1..200).step_by(2) {
        model.insert(format!("kern{k:03}"), content(k, bs * (1 + k % 3)));
    }
    check(dir.path(), &img, &model);
    // The AGFL was refilled to the kernel's minimum for the trees' heights
    // (xfs_alloc_min_freelist: 2 * min(height + 1, maxlevels) - 2 for each).
    let agblocks = db(&img, "sb 0", "agblocks")["agblocks"];
    let (leaf_min, node_min) = ((bs as u64 - 56) / 8 / 2, (bs as u64 - 56) / 12 / 2);
    let mut maxlevels = 1;
    let mut blocks = agblocks.div_ceil(2).div_ceil(leaf_min);
    while blocks > 1 {
        blocks = blocks.div_ceil(node_min);
        maxlevels += 1;
    }
    let need = (b1 + 1).min(maxlevels) * 2 - 2 + (c1 + 1).min(maxlevels) * 2 - 2;
    let f = db(&img, "agf 0", "flcount btreeblks");
    assert!(f["flcount"] >= need, "{f:?}, want {need}");
    assert!(f["btreeblks"] >= 2, "{f:?}");
    // Phase 2: everything removed: free space coalesces, the trees shrink to one block.
    {
        let fs = open(&img);
        for name in std::mem::take(&mut model).keys() {
            unlink_at(&fs, name);
        }
        fs.flush().unwrap();
    }
    check(dir.path(), &img, &model);
    let (b2, c2, _, _) = levels(&img, 0);
    assert_eq!((b2, c2), (1, 1), "after freeing everything");
    // The AGFL drained back to the kernel's minimum for one-level trees (2 + 2).
    let f = db(&img, "agf 0", "flcount btreeblks");
    assert_eq!(f["flcount"], 4, "{f:?}");
    assert_eq!(f["btreeblks"], 0, "{f:?}");
}

/// Free space fragmented by us alone, from a fresh filesystem: the trees grow from one level.
fn free_space_grows_from_one_level(opts: &[&str], bs: usize) {
    if skip() {
        return;
    }
    let dir = scratch();
    let img = image(dir.path(), opts, "");
    assert_eq!(levels(&img, 0).0, 1);
    let per_leaf = (bs - 56) / 8;
    let n = 2 * per_leaf + 10;
    let mut model = Model::new();
    {
        let fs = open(&img);
        for k in 0..2 * n {
            let c = content(k, bs / 2);
            create_at(&fs, &ours(k), &c);
            model.insert(ours(k), c);
        }
        for k in (0..2 * n).step_by(2) {
            unlink_at(&fs, &ours(k));
            model.remove(&ours(k));
        }
        fs.flush().unwrap();
    }
    check(dir.path(), &img, &model);
    let (b, c, _, _) = levels(&img, 0);
    assert!(b >= 2 && c >= 2, "levels {b}/{c}");
    {
        let fs = open(&img);
        for name in std::mem::take(&mut model).keys() {
            unlink_at(&fs, name);
        }
    }
    check(dir.path(), &img, &model);
    assert_eq!(levels(&img, 0).0, 1);
}

#[test]
fn free_space_trees_centos7() {
    free_space_trees(CENTOS7, 4096);
}

#[test]
fn free_space_trees_current_defaults() {
    free_space_trees(DEFAULTS, 4096);
}

#[test]
fn free_space_trees_1k_blocks() {
    free_space_trees(SMALL, 1024);
}

#[test]
fn free_space_grows_from_one_level_1k_centos7() {
    free_space_grows_from_one_level(SMALL_CENTOS7, 1024);
}

/// Thousands of inodes in one AG: the inobt (and the finobt, when there is one) grow past one
/// block; removing every other file fills the finobt.
fn inode_trees(opts: &[&str], finobt: bool) {
    if skip() {
        return;
    }
    let dir = scratch();
    let img = image(dir.path(), opts, "");
    let bs = 1024;
    // inobt leaf: (1024 - 56) / 16 = 60 records of 64 inodes.
    let files = 64 * 70;
    let mut model = Model::new();
    {
        let fs = open(&img);
        let root = fs.root_ino();
        let mut dirs = Vec::new();
        for d in 0..40 {
            let a = fs
                .mkdir(root, OsStr::new(&format!("d{d:02}")), 0o755, 0, 0)
                .unwrap();
            dirs.push(a.ino);
        }
        for k in 0..files {
            let d = k % dirs.len();
            let name = format!("i{k:05}");
            let a = fs.create(dirs[d], OsStr::new(&name), 0o644, 0, 0).unwrap();
            let c = if k % 10 == 0 {
                content(k, 100 + k % bs)
            } else {
                Vec::new()
            };
            if !c.is_empty() {
                fs.write(a.ino, 0, &c).unwrap();
            }
            model.insert(format!("d{d:02}/{name}"), c);
        }
        fs.flush().unwrap();
    }
    check(dir.path(), &img, &model);
    let (_, _, il, _) = levels(&img, 0);
    assert!(il >= 2, "inobt levels {il}");
    {
        let fs = open(&img);
        let root = fs.root_ino();
        for k in (0..files).step_by(2) {
            let d = k % 40;
            let name = format!("i{k:05}");
            let dir = fs
                .lookup(root, OsStr::new(&format!("d{d:02}")))
                .unwrap()
                .unwrap();
            fs.unlink(dir, OsStr::new(&name)).unwrap();
            model.remove(&format!("d{d:02}/{name}"));
        }
        // New files take the freed inodes (found through the finobt, when there is one).
        for k in 0..200 {
            let name = format!("again{k:03}");
            let a = fs.create(root, OsStr::new(&name), 0o644, 0, 0).unwrap();
            let c = content(k, 10);
            fs.write(a.ino, 0, &c).unwrap();
            model.insert(name, c);
        }
        fs.flush().unwrap();
    }
    check(dir.path(), &img, &model);
    let (_, _, il, fl) = levels(&img, 0);
    assert!(il >= 2, "inobt levels {il}");
    if finobt {
        assert!(fl >= 2, "finobt levels {fl}");
    }
}

#[test]
fn inode_trees_1k_centos7() {
    inode_trees(SMALL_CENTOS7, false);
}

#[test]
fn inode_trees_1k_current_defaults() {
    inode_trees(SMALL, true);
}

/// The inode's root level of its data fork B+tree (0 when the fork is an extent list).
fn bmbt_root_level(img: &Path, ino: u64) -> u64 {
    let f = db(img, &format!("inode {ino}"), "core.format");
    if f.get("core.format") != Some(&3) {
        let out = run(Command::new("xfs_db")
            .args(["-r", "-c", &format!("inode {ino}"), "-c", "p core.format"])
            .arg(img));
        assert!(out.contains("extents"), "{out}");
        return 0;
    }
    db(img, &format!("inode {ino}"), "u3.bmbt.level")["u3.bmbt.level"]
}

/// A file of ~3000 extents (every other block written): with 1 KiB blocks its block map
/// needs a B+tree of three levels; holes filled in the middle merge records, truncation
/// shrinks the tree back to one level and then to an extent list.
fn many_extents(opts: &[&str]) {
    if skip() {
        return;
    }
    let dir = scratch();
    let img = image(dir.path(), opts, "");
    let bs = 1024u64;
    let n = 3000u64;
    let mut want = Vec::new();
    let ino;
    {
        let fs = open(&img);
        let root = fs.root_ino();
        let a = fs.create(root, OsStr::new("frag"), 0o644, 0, 0).unwrap();
        ino = a.ino;
        for k in 0..n {
            let c = content(k as usize, 700);
            fs.write(ino, 2 * k * bs, &c).unwrap();
            let end = (2 * k * bs) as usize;
            want.resize(end, 0);
            want.extend_from_slice(&c);
        }
        assert_eq!(read_all(&fs, ino), want);
        fs.flush().unwrap();
    }
    let model = |w: &Vec<u8>| Model::from([("frag".to_string(), w.clone())]);
    check_with(dir.path(), &img, &model(&want), &[ino]);
    let l = bmbt_root_level(&img, ino);
    assert!(l >= 2, "bmbt root level {l}");
    let nex = db(&img, &format!("inode {ino}"), "core.nextents")["core.nextents"];
    assert_eq!(nex, n);
    // Holes filled here and there: neighbouring extents merge (records deleted across
    // leaves), or stay apart where the blocks are not contiguous.
    {
        let fs = open(&img);
        for k in (0..n - 1).filter(|k| k % 3 == 0 || (1000..1400).contains(k)) {
            let off = (2 * k + 1) * bs;
            let c = content(k as usize + 5, bs as usize);
            fs.write(ino, off, &c).unwrap();
            want[off as usize..(off + bs) as usize].copy_from_slice(&c);
        }
        assert_eq!(read_all(&fs, ino), want);
    }
    check_with(dir.path(), &img, &model(&want), &[ino]);
    // Truncated to a tenth: fewer leaves, the root comes down a level.
    let keep = 2 * (n / 10) * bs;
    {
        let fs = open(&img);
        fs.setattr(
            ino,
            &SetAttr {
                size: Some(keep),
                ..Default::default()
            },
        )
        .unwrap();
        want.truncate(keep as usize);
        assert_eq!(read_all(&fs, ino), want);
    }
    check_with(dir.path(), &img, &model(&want), &[ino]);
    let l2 = bmbt_root_level(&img, ino);
    assert_eq!(l2, 1, "bmbt root level after truncation");
    // Down to a few extents: back to an extent list in the inode.
    {
        let fs = open(&img);
        fs.setattr(
            ino,
            &SetAttr {
                size: Some(9 * bs),
                ..Default::default()
            },
        )
        .unwrap();
        want.truncate(9 * bs as usize);
    }
    check_with(dir.path(), &img, &model(&want), &[ino]);
    assert_eq!(bmbt_root_level(&img, ino), 0);
}

#[test]
fn many_extents_1k_current_defaults() {
    many_extents(SMALL);
}

#[test]
fn many_extents_1k_centos7() {
    many_extents(SMALL_CENTOS7);
}

/// rmapbt is not written yet: opening such a filesystem for writing is refused by name, and
/// the image is left as it was.
#[test]
fn rmapbt_refused_by_name() {
    if skip() {
        return;
    }
    let dir = scratch();
    let img = image(
        dir.path(),
        &["-m", "rmapbt=1"],
        "open('f', 'w').write('x')\n",
    );
    let before = std::fs::read(&img).unwrap();
    let e = match XfsRw::open(Arc::new(open_rw(&img))) {
        Ok(_) => panic!("an rmapbt filesystem was opened for writing"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("rmapbt"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    assert!(std::fs::read(&img).unwrap() == before, "the image changed");
    // Read-only use still works.
    let fs = vdisk_xfs::Xfs::open(open_dev(&img)).unwrap();
    assert!(fs.lookup(fs.root_ino(), OsStr::new("f")).unwrap().is_some());
}

/// A device whose writes fail after a budget runs out (a power cut).
struct CrashDev {
    inner: RwFileDev,
    budget: std::sync::atomic::AtomicI64,
}

impl vdisk_block::BlockDevice for CrashDev {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vdisk_block::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> vdisk_block::Result<()> {
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
    fn flush(&self) -> vdisk_block::Result<()> {
        self.inner.flush()
    }
}

/// One transaction that reshapes trees a lot: unlinking a file of 300 one-block extents
/// interleaved (by the kernel, with direct I/O) with 300 one-block holes frees a two-level
/// block map and merges every hole, so the free-space B+trees collapse from two levels to
/// one. Cut off after k device writes for k across the whole transaction, the kernel's
/// replay brings back the file whole or nothing of it, and xfs_repair -n is clean.
#[test]
fn crash_while_trees_collapse() {
    if skip() {
        return;
    }
    let dir = scratch();
    let script = r#"
import mmap
buf = mmap.mmap(-1, 1024)
fa = os.open('a', os.O_CREAT | os.O_WRONLY | os.O_DIRECT)
fb = os.open('b', os.O_CREAT | os.O_WRONLY | os.O_DIRECT)
for k in range(300):
    buf[:] = bytes([k % 251]) * 1024
    os.pwrite(fa, buf, k * 1024)
    buf[:] = bytes([7]) * 1024
    os.pwrite(fb, buf, k * 1024)
os.close(fa)
os.close(fb)
os.unlink('b')
open('keep', 'w').write('kept')
"#;
    let golden = image(dir.path(), SMALL, script);
    let (b0, _, _, _) = levels(&golden, 0);
    assert!(b0 >= 2, "the kernel left a bnobt of {b0} levels");
    let a: Vec<u8> = (0..300).flat_map(|k| vec![(k % 251) as u8; 1024]).collect();
    let before = Model::from([("a".to_string(), a), ("keep".to_string(), b"kept".to_vec())]);
    let after = Model::from([("keep".to_string(), b"kept".to_vec())]);
    let work = dir.path().join("work.img");
    let run_op = |budget: i64| -> i64 {
        std::fs::copy(&golden, &work).unwrap();
        let dev = Arc::new(CrashDev {
            inner: open_rw(&work),
            budget: std::sync::atomic::AtomicI64::new(budget),
        });
        let fs = XfsRw::open(dev.clone()).unwrap();
        let _ = fs.unlink(fs.root_ino(), OsStr::new("a"));
        drop(fs);
        budget - dev.budget.load(std::sync::atomic::Ordering::SeqCst)
    };
    let total = run_op(i64::MAX / 2);
    check(dir.path(), &work, &after);
    let (b1, c1, _, _) = levels(&work, 0);
    assert_eq!((b1, c1), (1, 1), "the trees did not collapse");
    eprintln!("{total} device writes");
    let points = total.min(7);
    let mut replayed = 0;
    for j in 0..points {
        let k = j * total / points;
        run_op(k);
        let dirty = {
            let d = FileDev(std::fs::File::open(&work).unwrap(), 300 << 20);
            !vdisk_xfs_log::Log::open(&d).unwrap().state().unwrap().clean
        };
        replayed += usize::from(dirty);
        // The kernel's mount replays what the log holds (xfs_repair -n, in check, would
        // refuse a dirty log); the state is one of the two.
        let mnt = dir.path().join("mnt");
        mount(&work, &mnt);
        let has_a = mnt.join("a").exists();
        umount(&mnt);
        check(dir.path(), &work, if has_a { &before } else { &after });
    }
    assert!(replayed > 0, "no cut left a log to replay");
}

/// Trees the kernel grew, edited by us: a two-level inobt (4,000 files in the root), a file whose block
/// map is a B+tree (300 extents interleaved with another file's blocks, by direct I/O), and
/// two-level free-space trees; we append to and truncate the file, create and remove files.
fn kernel_made_trees(opts: &[&str], finobt: bool) {
    if skip() {
        return;
    }
    let dir = scratch();
    let script = r#"
import mmap
buf = mmap.mmap(-1, 1024)
fa = os.open('a', os.O_CREAT | os.O_WRONLY | os.O_DIRECT)
fb = os.open('b', os.O_CREAT | os.O_WRONLY | os.O_DIRECT)
for k in range(300):
    buf[:] = bytes([k % 251]) * 1024
    os.pwrite(fa, buf, k * 1024)
    buf[:] = bytes([7]) * 1024
    os.pwrite(fb, buf, k * 1024)
os.close(fa)
os.close(fb)
os.unlink('b')
for k in range(4000):
    open('r%04d' % k, 'w').close()
"#;
    let img = image(dir.path(), opts, script);
    let (b0, c0, i0, _) = levels(&img, 0);
    assert!(
        b0 >= 2 && c0 >= 2 && i0 >= 2,
        "kernel levels {b0}/{c0}/{i0}"
    );
    let mut a: Vec<u8> = (0..300).flat_map(|k| vec![(k % 251) as u8; 1024]).collect();
    let mut model = Model::new();
    for k in 0..4000 {
        model.insert(format!("r{k:04}"), Vec::new());
    }
    let ia = open(&img).resolve(b"/a", false).unwrap();
    {
        let fs = open(&img);
        // Appends far apart (new extents in the kernel's tree), a truncation into it.
        for k in 0..100u64 {
            let off = 300 * 1024 + k * 4096;
            let c = content(k as usize, 1024);
            fs.write(ia, off, &c).unwrap();
            a.resize(off as usize, 0);
            a.extend_from_slice(&c);
        }
        fs.setattr(
            ia,
            &SetAttr {
                size: Some(250 * 1024),
                ..Default::default()
            },
        )
        .unwrap();
        a.truncate(250 * 1024);
        // New files (in the kernel's inobt).
        for k in 0..300 {
            let p = ours(k);
            let c = content(k, 1 + k % 3000);
            create_at(&fs, &p, &c);
            model.insert(p, c);
        }
        // Then some of the kernel's files removed: two in each of its chunks, so every chunk
        // has a free inode and the finobt grows past one block.
        for k in (0..4000).step_by(32) {
            let p = format!("r{k:04}");
            unlink_at(&fs, &p);
            model.remove(&p);
        }
        assert_eq!(read_all(&fs, ia), a);
        fs.flush().unwrap();
    }
    model.insert("a".to_string(), a);
    check_with(dir.path(), &img, &model, &[ia]);
    let (_, _, i1, f1) = levels(&img, 0);
    assert!(i1 >= 2, "inobt levels {i1}");
    if finobt {
        assert!(f1 >= 2, "finobt levels {f1}");
    }
}

#[test]
fn kernel_made_trees_1k_current_defaults() {
    kernel_made_trees(SMALL, true);
}

#[test]
fn kernel_made_trees_1k_centos7() {
    kernel_made_trees(SMALL_CENTOS7, false);
}
