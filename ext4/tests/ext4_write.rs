//! The ext4 write engine against a model: random operation sequences (the conformance
//! suite's, vdisk-fs-conformance) go through [`Ext4Rw`] and into an in-memory model;
//! afterwards `e2fsck -fn` must be silent and clean, and the kernel (loop mount), our own
//! reader and ext4-view must see exactly the model.

mod ext4_common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ext4_common::{run, run_status, scratch, Mount, RwDev};
use vdisk_block::{BlockDevice, Result};
use vdisk_ext4::Ext4Rw;
use vdisk_fs::{Capabilities, FileSystem, FileSystemMut, Ino, SetAttr};
use vdisk_fs_conformance::{self as conf, describe, hex, split, Kind, MNode, Model, Rng};

/// The shared model and operations (the conformance suite), with ext4's lost+found left out.
fn resolve(fs: &Ext4Rw, p: &str) -> Ino {
    conf::resolve(fs, p)
}

fn model_from_fs(fs: &Ext4Rw) -> Model {
    conf::model_from_fs(fs, SKIP)
}

fn step(r: &mut Rng, fs: &Ext4Rw, m: &mut Model, bs: u64, log: &mut Vec<String>) {
    conf::step(r, &conf::Lib(fs), m, &fs.capabilities(), bs, log)
}

/// Root entries the model leaves out.
const SKIP: &[&str] = &["lost+found"];

/// Makes an image of `mb` MiB with `mkfs` and `args`; with `src` populated from that tree.
fn mkimg(name: &str, mb: u64, mkfs: &str, args: &[&str], src: Option<&Path>) -> PathBuf {
    let img = scratch().join(format!("{name}.img"));
    let _ = std::fs::remove_file(&img);
    File::create(&img).unwrap().set_len(mb << 20).unwrap();
    let mut a = vec!["-q", "-F"];
    a.extend_from_slice(args);
    let s;
    if let Some(src) = src {
        s = src.to_str().unwrap().to_string();
        a.push("-d");
        a.push(&s);
    }
    a.push(img.to_str().unwrap());
    run(mkfs, &a);
    img
}

/// e2fsck -fn must exit 0 and print no complaint.
fn fsck_clean(img: &Path, what: &str) {
    let (code, out) = run_status("e2fsck", &["-fn", img.to_str().unwrap()]);
    let bad: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.contains("wrong") || l.contains("Fix") || l.contains("Inode") || l.contains('?')
        })
        .collect();
    assert!(
        code == 0 && bad.is_empty(),
        "e2fsck -fn exited {code}:\n{out}\n{what}"
    );
}

/// Checks the image against the model: e2fsck, the kernel, our reader, ext4-view.
fn verify(img: &Path, m: &Model, what: &str) {
    fsck_clean(img, what);
    // The kernel.
    let dir = tempfile::tempdir().unwrap().keep();
    run(
        "mount",
        &[
            "-o",
            "loop,ro",
            img.to_str().unwrap(),
            dir.to_str().unwrap(),
        ],
    );
    let guard = Mount { dir: dir.clone() };
    let k = conf::kernel_tree(&dir, SKIP);
    drop(guard);
    conf::check_kernel(&k, m, &Capabilities::POSIX, what);
    // Our own reader, opened afresh.
    let ours = vdisk_ext4::Ext4::open(RwDev::open(img)).unwrap();
    conf::check_reader(&ours, m, SKIP, what);
    // ext4-view, the independent reader.
    let v = match ext4_view::Ext4::load(Box::new(std::fs::read(img).unwrap())) {
        Ok(v) => v,
        // ext4-view 1.x refuses some features (inline_data); the kernel saw the model above.
        Err(e) if format!("{e:?}").contains("Incompatible") => {
            eprintln!("{what}: ext4-view cannot read this image: {e}");
            return;
        }
        Err(e) => panic!("{what}: ext4-view: {e}"),
    };
    for (p, id) in &m.names {
        if p.is_empty() {
            continue;
        }
        let path = format!("/{p}");
        let ctx = format!("{what}: ext4-view {p}");
        match &m.nodes[id].kind {
            Kind::File(d) => match v.read(path.as_str()) {
                Ok(got) => assert!(got == *d, "{ctx}"),
                // ext4-view 1.x reads a missing indirect block (a hole of an ext2/3 file) as
                // block 0 and calls it corrupt; the kernel and e2fsck (checked above) agree.
                Err(e) if format!("{e:?}").contains("BlockRead { block_index: 0,") => {
                    eprintln!("{ctx}: ext4-view cannot read a sparse block-mapped file");
                }
                Err(e) => panic!("{ctx}: {e}"),
            },
            Kind::Dir => {
                let n = v.read_dir(path.as_str()).unwrap().count();
                assert_eq!(n, m.children(p).len() + 2, "{ctx}");
            }
            Kind::Symlink(t) => {
                let l = v.read_link(path.as_str()).unwrap();
                let lb: &[u8] = l.as_ref();
                assert_eq!(lb, t.as_slice(), "{ctx}");
            }
        }
    }
}

/// Runs `seqs` sequences of `ops` random operations on a fresh image of each sequence.
fn property(name: &str, mb: u64, mkfs: &str, args: &[&str], seed: u64, seqs: u32, ops: u32) {
    property_on(name, mb, mkfs, args, seed, seqs, ops, None)
}

/// A small tree for images made with `mkfs -d`: files whose maps need indirect blocks on
/// ext2/3 (single and double), several extents on ext4, a subdirectory, a symlink.
fn populated_tree() -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    let mut r = Rng(7);
    std::fs::create_dir_all(src.path().join("etc/sub")).unwrap();
    std::fs::write(src.path().join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    std::fs::write(src.path().join("etc/sub/big"), r.bytes(2_300_000)).unwrap();
    std::fs::write(src.path().join("mid"), r.bytes(200_000)).unwrap();
    std::os::unix::fs::symlink("etc/hosts", src.path().join("link")).unwrap();
    src
}

#[allow(clippy::too_many_arguments)]
fn property_on(
    name: &str,
    mb: u64,
    mkfs: &str,
    args: &[&str],
    seed: u64,
    seqs: u32,
    ops: u32,
    src: Option<&Path>,
) {
    for s in 0..seqs {
        let img = mkimg(&format!("{name}-{s}"), mb, mkfs, args, src);
        let seed = seed.wrapping_mul(1000).wrapping_add(u64::from(s));
        let (m, log) = run_ops(RwDev::open(&img), seed, ops);
        verify(&img, &m, &describe(&format!("{name} seq {s}"), &log));
    }
}

/// Opens `dev` with [`Ext4Rw`], runs `ops` random operations from `seed` mirrored in a model
/// of the tree found there, flushes and closes. Returns the model and the operations' log.
fn run_ops(dev: Arc<dyn BlockDevice>, seed: u64, ops: u32) -> (Model, Vec<String>) {
    run_ops_with(dev, seed, ops, &|_, _, _| {})
}

/// [`run_ops`] with `first` run (on the engine, the model, the block size) before the
/// random operations.
fn run_ops_with(
    dev: Arc<dyn BlockDevice>,
    seed: u64,
    ops: u32,
    first: &dyn Fn(&Ext4Rw, &mut Model, u64),
) -> (Model, Vec<String>) {
    let mut r = Rng(seed | 1);
    let mut log = Vec::new();
    let fs = Ext4Rw::open(dev).unwrap();
    let bs = u64::from(fs.statfs().unwrap().block_size);
    let mut m = model_from_fs(&fs);
    first(&fs, &mut m, bs);
    for _ in 0..ops {
        step(&mut r, &fs, &mut m, bs, &mut log);
    }
    fs.flush().unwrap();
    (m, log)
}

#[test]
fn model_default_features() {
    property("def4k", 64, "mkfs.ext4", &["-T", "default"], 1, 5, 200);
}

#[test]
fn model_centos7_features() {
    property(
        "c7",
        64,
        "mkfs.ext4",
        &["-T", "default", "-O", "^metadata_csum,^64bit"],
        2,
        4,
        200,
    );
}

/// CentOS 7's mkfs.ext4 (e2fsprogs 1.42.9) made no metadata_csum and no 64bit but
/// uninit_bg: crc16 group descriptor checksums, BLOCK_UNINIT / INODE_UNINIT groups, lazily
/// zeroed inode tables (itable_unused). 4 KiB and 1 KiB blocks (the latter: many groups).
#[test]
fn model_centos7_uninit_bg() {
    let c7 = "^metadata_csum,^64bit,uninit_bg";
    let probe = mkimg("c7u-probe", 64, "mkfs.ext4", &["-O", c7], None);
    let h = run("dumpe2fs", &["-h", probe.to_str().unwrap()]);
    assert!(
        h.contains("uninit_bg") && !h.contains("metadata_csum") && !h.contains("64bit"),
        "mkfs did not make a CentOS-7-like filesystem:\n{h}"
    );
    let lazy = "lazy_itable_init=1";
    property(
        "c7u4k",
        64,
        "mkfs.ext4",
        &["-T", "default", "-O", c7, "-E", lazy],
        8,
        2,
        250,
    );
    property(
        "c7u1k",
        64,
        "mkfs.ext4",
        &["-b", "1024", "-O", c7, "-E", lazy],
        9,
        2,
        250,
    );
}

/// A device over an image opened through the vdisk crate (a qcow2 chain).
struct ImageDev(Arc<dyn vdisk::block::Image>);

impl BlockDevice for ImageDev {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.0.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.0.flush()
    }
    fn is_read_only(&self) -> bool {
        self.0.is_read_only()
    }
}

fn file_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// An htree directory of thousands of entries ("big") and a file whose extent tree has
/// depth >= 2 ("deep": every other block written), made through `fs` and mirrored in `m`.
fn big_and_deep(fs: &Ext4Rw, m: &mut Model, bs: u64) {
    fs.mkdir(fs.root_ino(), OsStr::new("big"), 0o755, 0, 0)
        .unwrap();
    m.add(
        "big".into(),
        MNode {
            kind: Kind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
            xattrs: BTreeMap::new(),
            mtime: None,
        },
    );
    create_many(fs, m, "big", "entry-with-a-longer-name-", 3000);
    assert!(is_indexed(fs, "big"), "no htree index");
    let a = fs
        .create(fs.root_ino(), OsStr::new("deep"), 0o644, 0, 0)
        .unwrap();
    // Depth 2 needs more extents than four full leaves hold.
    let n = 4 * (bs - 12) / 12 + 40;
    let mut data = vec![0u8; ((2 * n - 1) * bs) as usize];
    let mut r = Rng(n);
    for i in 0..n {
        let bytes = r.bytes(bs as usize);
        fs.write(a.ino, 2 * i * bs, &bytes).unwrap();
        data[(2 * i * bs) as usize..((2 * i + 1) * bs) as usize].copy_from_slice(&bytes);
    }
    let i = fs.engine().live_inode(a.ino as u32).unwrap();
    let depth = u16::from_le_bytes([i.i_block[6], i.i_block[7]]);
    assert!(depth >= 2, "extent depth {depth}");
    m.add(
        "deep".into(),
        MNode {
            kind: Kind::File(data),
            perm: 0o644,
            uid: 0,
            gid: 0,
            xattrs: BTreeMap::new(),
            mtime: None,
        },
    );
}

/// Random operations on a 3-deep chain, qcow2 overlay -> qcow2 -> raw, opened writable with
/// `vdisk::open`: the middle layer holds the kernel's own edits of the base; afterwards both
/// backing files are byte-for-byte unchanged (an htree directory of thousands of entries and a
/// file of extent depth >= 2 are made first), `qemu-img check` finds the overlay clean, and
/// the flattened image is checked against the model.
#[test]
fn model_on_qcow2_chain() {
    let src = populated_tree();
    for (name, args, seed) in [
        ("q-def", &["-T", "default"][..], 21u64),
        (
            "q-c7",
            &["-b", "1024", "-O", "^metadata_csum,^64bit,uninit_bg"][..],
            22,
        ),
    ] {
        let base = mkimg(
            &format!("{name}-base"),
            64,
            "mkfs.ext4",
            args,
            Some(src.path()),
        );
        let edited = scratch().join(format!("{name}-edited.img"));
        run(
            "cp",
            &[
                "--sparse=always",
                base.to_str().unwrap(),
                edited.to_str().unwrap(),
            ],
        );
        let dir = tempfile::tempdir().unwrap().keep();
        run(
            "mount",
            &[
                "-o",
                "loop",
                edited.to_str().unwrap(),
                dir.to_str().unwrap(),
            ],
        );
        let guard = Mount { dir: dir.clone() };
        std::fs::create_dir(dir.join("from-mid")).unwrap();
        for i in 0..40 {
            std::fs::write(
                dir.join(format!("from-mid/f{i}")),
                Rng(i + 1).bytes(3000 * i as usize),
            )
            .unwrap();
        }
        std::fs::write(dir.join("etc/hosts"), b"10.1.1.1 mid\n").unwrap();
        drop(guard);
        let mid = scratch().join(format!("{name}-mid.qcow2"));
        let top = scratch().join(format!("{name}-top.qcow2"));
        let (b, e, mi, t) = (
            base.to_str().unwrap(),
            edited.to_str().unwrap(),
            mid.to_str().unwrap(),
            top.to_str().unwrap(),
        );
        run("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", e, mi]);
        run(
            "qemu-img",
            &["rebase", "-f", "qcow2", "-b", b, "-F", "raw", mi],
        );
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-b", mi, "-F", "qcow2", t],
        );
        let (base_before, mid_before) = (file_bytes(&base), file_bytes(&mid));
        let (m, log) = {
            let opts = vdisk::OpenOptions {
                format: Some(vdisk::Format::Qcow2),
                read_only: false,
                ..Default::default()
            };
            let img = vdisk::open(&top, &opts).unwrap();
            assert_eq!(img.chain().count(), 3, "{name}: chain depth");
            run_ops_with(Arc::new(ImageDev(img.image())), seed, 250, &big_and_deep)
        };
        assert!(m.names.contains_key("from-mid/f39") || log.iter().any(|l| l.contains("from-mid")));
        assert!(
            file_bytes(&base) == base_before,
            "{name}: the raw base changed"
        );
        assert!(
            file_bytes(&mid) == mid_before,
            "{name}: the middle qcow2 changed"
        );
        let (code, out) = run_status("qemu-img", &["check", t]);
        assert_eq!(code, 0, "{name}: qemu-img check: {out}");
        let flat = scratch().join(format!("{name}-flat.img"));
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "qcow2",
                "-O",
                "raw",
                t,
                flat.to_str().unwrap(),
            ],
        );
        verify(
            &flat,
            &m,
            &describe(&format!("{name} on a qcow2 chain"), &log),
        );
    }
}

#[test]
fn model_1k_blocks() {
    property("k1", 32, "mkfs.ext4", &["-b", "1024"], 3, 4, 200);
}

#[test]
fn model_ext2() {
    property("e2", 32, "mkfs.ext2", &["-b", "1024"], 4, 3, 200);
}

#[test]
fn model_populated_ext3_and_ext4() {
    let src = populated_tree();
    property_on(
        "p3",
        64,
        "mkfs.ext3",
        &["-b", "1024"],
        6,
        2,
        200,
        Some(src.path()),
    );
    property_on(
        "p4",
        64,
        "mkfs.ext4",
        &["-T", "default"],
        7,
        2,
        200,
        Some(src.path()),
    );
}

#[test]
fn model_ext3() {
    property("e3", 64, "mkfs.ext3", &["-T", "default"], 5, 3, 200);
}

/// Creates `n` empty files named `prefix{i}` in `dir` of `m` through `fs`.
fn create_many(fs: &Ext4Rw, m: &mut Model, dir: &str, prefix: &str, n: u32) {
    let d = resolve(fs, dir);
    for i in 0..n {
        let name = format!("{prefix}{i}");
        fs.create(d, OsStr::new(&name), 0o600, 7, 8).unwrap();
        m.add(
            format!("{dir}/{name}"),
            MNode {
                kind: Kind::File(vec![]),
                perm: 0o600,
                uid: 7,
                gid: 8,
                xattrs: BTreeMap::new(),
                mtime: None,
            },
        );
    }
}

fn is_indexed(fs: &Ext4Rw, path: &str) -> bool {
    let ino = resolve(fs, path) as u32;
    let i = fs.engine().live_inode(ino).unwrap();
    i.has_flag(vdisk_ext4::inode::EXT4_INDEX_FL)
}

/// An htree directory of thousands of entries (built by e2fsck -fyD) takes inserts until its
/// leaves split, its root gains a level (1 KiB blocks) and interior nodes split.
fn htree_case(name: &str, args: &[&str], files: u32, more: u32, want_levels: u8) {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("big")).unwrap();
    for i in 0..files {
        std::fs::write(
            src.path().join(format!("big/file-with-a-longish-name-{i}")),
            b"",
        )
        .unwrap();
    }
    let img = mkimg(name, 64, "mkfs.ext4", args, Some(src.path()));
    let (code, out) = run_status("e2fsck", &["-fyD", img.to_str().unwrap()]);
    assert!(code <= 1, "e2fsck -fyD: {out}");
    {
        let fs = Ext4Rw::open(RwDev::open(&img)).unwrap();
        assert!(is_indexed(&fs, "big"), "{name}: e2fsck -D built no index");
        let mut m = model_from_fs(&fs);
        create_many(&fs, &mut m, "big", "added-entry-", more);
        // Some removals and renames inside the indexed directory too.
        let big = resolve(&fs, "big");
        for i in (0..more).step_by(7) {
            let n = format!("added-entry-{i}");
            fs.unlink(big, OsStr::new(&n)).unwrap();
            m.names.remove(&format!("big/{n}"));
        }
        for i in (1..files).step_by(11) {
            let a = format!("file-with-a-longish-name-{i}");
            let b = format!("renamed-{i}");
            fs.rename(big, OsStr::new(&a), big, OsStr::new(&b), 0)
                .unwrap();
            let id = m.names.remove(&format!("big/{a}")).unwrap();
            m.names.insert(format!("big/{b}"), id);
        }
        m.gc();
        assert!(is_indexed(&fs, "big"), "{name}: the index was dropped");
        let levels = {
            let e = fs.engine();
            let i = e.live_inode(resolve(&fs, "big") as u32).unwrap();
            let vdisk_ext4::Run::Data { start, .. } = e.map(&i, 0).unwrap() else {
                panic!()
            };
            e.block(start, &String::new).unwrap()[0x1E]
        };
        assert_eq!(levels, want_levels, "{name}: htree levels");
        fs.flush().unwrap();
        drop(fs);
        verify(&img, &m, name);
    }
}

#[test]
fn htree_inserts_4k() {
    htree_case("htree4k", &["-T", "default", "-N", "16384"], 3000, 4000, 0);
}

#[test]
fn htree_inserts_1k_levels() {
    htree_case("htree1k", &["-b", "1024", "-N", "16384"], 2000, 3500, 1);
}

/// A directory we create grows past one block: it gets an index as the kernel would give it,
/// then takes thousands of entries through it.
#[test]
fn htree_grown_from_linear() {
    for (name, args) in [
        ("grown4k", &["-T", "default", "-N", "8192"][..]),
        (
            "grown1k-c7",
            &["-b", "1024", "-N", "8192", "-O", "^metadata_csum,^64bit"][..],
        ),
    ] {
        let img = mkimg(name, 64, "mkfs.ext4", args, None);
        let fs = Ext4Rw::open(RwDev::open(&img)).unwrap();
        let mut m = model_from_fs(&fs);
        fs.mkdir(fs.root_ino(), OsStr::new("grown"), 0o755, 0, 0)
            .unwrap();
        m.add(
            "grown".into(),
            MNode {
                kind: Kind::Dir,
                perm: 0o755,
                uid: 0,
                gid: 0,
                xattrs: BTreeMap::new(),
                mtime: None,
            },
        );
        create_many(&fs, &mut m, "grown", "entry-number-", 2500);
        assert!(is_indexed(&fs, "grown"), "{name}: no index");
        let g = resolve(&fs, "grown");
        for i in (0..2500).step_by(3) {
            let n = format!("entry-number-{i}");
            fs.unlink(g, OsStr::new(&n)).unwrap();
            m.names.remove(&format!("grown/{n}"));
        }
        m.gc();
        fs.flush().unwrap();
        drop(fs);
        verify(&img, &m, name);
    }
}

/// Inline-data files are moved into blocks when written or truncated; their other
/// attributes stay.
#[test]
fn inline_data_files_converted() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("tiny"), b"hello, inline world\n").unwrap();
    std::fs::write(src.path().join("f100"), Rng(3).bytes(100)).unwrap();
    std::fs::write(src.path().join("small"), b"abc").unwrap();
    std::fs::write(src.path().join("empty"), b"").unwrap();
    let img = mkimg(
        "inline",
        64,
        "mkfs.ext4",
        &["-T", "default", "-O", "inline_data"],
        Some(src.path()),
    );
    let fs = Ext4Rw::open(RwDev::open(&img)).unwrap();
    let mut m = model_from_fs(&fs);
    let inline = |p: &str| {
        let e = fs.engine();
        let i = e.live_inode(resolve(&fs, p) as u32).unwrap();
        i.has_flag(vdisk_ext4::inode::EXT4_INLINE_DATA_FL)
    };
    assert!(
        inline("tiny") && inline("f100") && inline("small"),
        "mkfs made no inline files"
    );
    let mut r = Rng(11);
    let mut apply = |m: &mut Model, p: &str, off: u64, len: usize| {
        let bytes = r.bytes(len);
        fs.write(resolve(&fs, p), off, &bytes).unwrap();
        let id = m.names[p];
        let Kind::File(d) = &mut m.nodes.get_mut(&id).unwrap().kind else {
            panic!()
        };
        if d.len() < off as usize + len {
            d.resize(off as usize + len, 0);
        }
        d[off as usize..off as usize + len].copy_from_slice(&bytes);
    };
    fs.setxattr(resolve(&fs, "f100"), OsStr::new("user.kept"), b"v", 0)
        .unwrap();
    let id = m.names["f100"];
    m.nodes
        .get_mut(&id)
        .unwrap()
        .xattrs
        .insert(b"user.kept".to_vec(), b"v".to_vec());
    apply(&mut m, "tiny", 20, 5000);
    apply(&mut m, "f100", 10, 30);
    apply(&mut m, "empty", 7000, 10);
    fs.setattr(
        resolve(&fs, "small"),
        &SetAttr {
            size: Some(100),
            ..Default::default()
        },
    )
    .unwrap();
    let id = m.names["small"];
    let Kind::File(d) = &mut m.nodes.get_mut(&id).unwrap().kind else {
        panic!()
    };
    d.resize(100, 0);
    fs.flush().unwrap();
    drop(fs);
    verify(&img, &m, "inline data converted");
}

/// Many discontiguous writes give a file an extent tree of depth >= 2; writes into an
/// unwritten (fallocated) extent convert it; truncates shrink the tree again.
#[test]
fn extent_tree_depth_and_unwritten() {
    let img = mkimg("deep", 64, "mkfs.ext4", &["-b", "1024"], None);
    // An fallocated file (unwritten extents) made by the kernel.
    let dir = tempfile::tempdir().unwrap().keep();
    run(
        "mount",
        &["-o", "loop", img.to_str().unwrap(), dir.to_str().unwrap()],
    );
    let guard = Mount { dir: dir.clone() };
    run(
        "fallocate",
        &["-l", "3000000", dir.join("prealloc").to_str().unwrap()],
    );
    drop(guard);
    let fs = Ext4Rw::open(RwDev::open(&img)).unwrap();
    let mut m = model_from_fs(&fs);
    let root = fs.root_ino();
    fs.create(root, OsStr::new("deep"), 0o644, 0, 0).unwrap();
    let deep = resolve(&fs, "deep");
    let mut r = Rng(99);
    let mut data = Vec::new();
    // Every other 1 KiB block, in a shuffled order, 900 times: ~900 extents.
    let mut order: Vec<u64> = (0..900).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, r.below(i as u64 + 1) as usize);
    }
    for b in order {
        let bytes = r.bytes(1024);
        let off = b * 2048;
        fs.write(deep, off, &bytes).unwrap();
        if data.len() < (off + 1024) as usize {
            data.resize((off + 1024) as usize, 0);
        }
        data[off as usize..off as usize + 1024].copy_from_slice(&bytes);
    }
    let depth = |fs: &Ext4Rw| {
        let i = fs.engine().live_inode(deep as u32).unwrap();
        u16::from_le_bytes([i.i_block[6], i.i_block[7]])
    };
    assert!(depth(&fs) >= 2, "depth {}", depth(&fs));
    // Into the unwritten extent: partial blocks and a run.
    let pre = resolve(&fs, "prealloc");
    let Kind::File(pd) = &mut m.nodes.get_mut(&m.names["prealloc"]).unwrap().kind else {
        panic!()
    };
    for (off, len) in [
        (300_000u64, 100usize),
        (1_000_000, 50_000),
        (2_999_990, 10),
        (5, 3),
    ] {
        let bytes = r.bytes(len);
        fs.write(pre, off, &bytes).unwrap();
        pd[off as usize..off as usize + len].copy_from_slice(&bytes);
    }
    m.add(
        "deep".into(),
        MNode {
            kind: Kind::File(data.clone()),
            perm: 0o644,
            uid: 0,
            gid: 0,
            xattrs: BTreeMap::new(),
            mtime: None,
        },
    );
    fs.flush().unwrap();
    drop(fs);
    verify(&img, &m, "deep extents");
    // Shrink: the tree loses depth; the freed blocks return.
    let fs = Ext4Rw::open(RwDev::open(&img)).unwrap();
    let deep = resolve(&fs, "deep");
    fs.setattr(
        deep,
        &SetAttr {
            size: Some(9000),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(depth(&fs) <= 1, "depth {}", depth(&fs));
    data.truncate(9000);
    let id = m.names["deep"];
    m.nodes.get_mut(&id).unwrap().kind = Kind::File(data);
    fs.flush().unwrap();
    drop(fs);
    verify(&img, &m, "deep extents truncated");
}

const IFCFG: &str = "TYPE=Ethernet\nBOOTPROTO=none\nNAME=eth0\nDEVICE=eth0\nONBOOT=yes\nIPADDR=192.168.122.10\nPREFIX=24\nGATEWAY=192.168.122.1\n";
const LABEL: &[u8] = b"system_u:object_r:net_conf_t:s0\0";
const IFCFG_PATH: &str = "etc/sysconfig/network-scripts/ifcfg-eth0";

/// The kernel's view of one file: content and its security.selinux label (python).
fn kernel_file(img: &Path, path: &str) -> (Vec<u8>, Option<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap().keep();
    run(
        "mount",
        &[
            "-o",
            "loop,ro",
            img.to_str().unwrap(),
            dir.to_str().unwrap(),
        ],
    );
    let guard = Mount { dir: dir.clone() };
    let p = dir.join(path);
    let content = std::fs::read(&p).unwrap();
    let out = run(
        "python3",
        &[
            "-c",
            "import os,sys\ntry: print(os.getxattr(sys.argv[1], 'security.selinux').hex())\nexcept OSError: print('none')",
            p.to_str().unwrap(),
        ],
    );
    drop(guard);
    let out = out.trim();
    let label = (out != "none").then(|| {
        (0..out.len() / 2)
            .map(|i| u8::from_str_radix(&out[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    });
    (content, label)
}

/// The seed edit: IPADDR changed in place (overwrite + truncate, the label kept) and
/// editor-style (new file renamed over the old), on CentOS-7-like and default features.
#[test]
fn seed_edit_ifcfg() {
    for (name, args) in [
        (
            "seed-c7",
            &["-T", "default", "-O", "^metadata_csum,^64bit"][..],
        ),
        ("seed-def", &["-T", "default"][..]),
    ] {
        let src = tempfile::tempdir().unwrap();
        let d = src.path().join("etc/sysconfig/network-scripts");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ifcfg-eth0"), IFCFG).unwrap();
        std::fs::write(d.join("ifcfg-lo"), "DEVICE=lo\n").unwrap();
        let img = mkimg(name, 64, "mkfs.ext4", args, Some(src.path()));
        // The label, set by the kernel as an installer would.
        let dir = tempfile::tempdir().unwrap().keep();
        run(
            "mount",
            &["-o", "loop", img.to_str().unwrap(), dir.to_str().unwrap()],
        );
        let guard = Mount { dir: dir.clone() };
        run(
            "python3",
            &[
                "-c",
                "import os,sys\nos.setxattr(sys.argv[1], 'security.selinux', bytes.fromhex(sys.argv[2]))",
                dir.join(IFCFG_PATH).to_str().unwrap(),
                &hex(LABEL),
            ],
        );
        drop(guard);
        // In place, as sed -i's write-back through FUSE would without a rename.
        let new1 = IFCFG.replace("192.168.122.10", "10.0.0.5");
        {
            let fs = Ext4Rw::open(RwDev::open(&img)).unwrap();
            let ino = resolve(&fs, IFCFG_PATH);
            assert_eq!(
                fs.getxattr(ino, OsStr::new("security.selinux"))
                    .unwrap()
                    .as_deref(),
                Some(LABEL)
            );
            fs.write(ino, 0, new1.as_bytes()).unwrap();
            fs.setattr(
                ino,
                &SetAttr {
                    size: Some(new1.len() as u64),
                    ..Default::default()
                },
            )
            .unwrap();
            fs.flush().unwrap();
        }
        fsck_clean(&img, &format!("{name}: in place"));
        let (content, label) = kernel_file(&img, IFCFG_PATH);
        assert_eq!(content, new1.as_bytes(), "{name}: in-place content");
        assert_eq!(label.as_deref(), Some(LABEL), "{name}: label lost");
        // Editor-style: write a new file, copy the label, rename it over the old one.
        let new2 = new1.replace("10.0.0.5", "172.16.1.200");
        {
            let fs = Ext4Rw::open(RwDev::open(&img)).unwrap();
            let dir = resolve(&fs, "etc/sysconfig/network-scripts");
            let a = fs
                .create(dir, OsStr::new(".ifcfg-eth0.swp"), 0o644, 0, 0)
                .unwrap();
            fs.write(a.ino, 0, new2.as_bytes()).unwrap();
            fs.setxattr(a.ino, OsStr::new("security.selinux"), LABEL, 0)
                .unwrap();
            fs.rename(
                dir,
                OsStr::new(".ifcfg-eth0.swp"),
                dir,
                OsStr::new("ifcfg-eth0"),
                0,
            )
            .unwrap();
            fs.flush().unwrap();
        }
        fsck_clean(&img, &format!("{name}: rename over"));
        let (content, label) = kernel_file(&img, IFCFG_PATH);
        assert_eq!(content, new2.as_bytes(), "{name}: renamed content");
        assert_eq!(
            label.as_deref(),
            Some(LABEL),
            "{name}: label on the new file"
        );
    }
}

/// A filesystem whose journal needs recovery is replayed (for real) before the first write.
#[test]
fn journal_replayed_then_written() {
    let img = scratch().join("jw.img");
    let copy = scratch().join("jw-dirty.img");
    File::create(&img).unwrap().set_len(64 << 20).unwrap();
    run(
        "mkfs.ext4",
        &["-q", "-F", "-T", "default", img.to_str().unwrap()],
    );
    let dir = tempfile::tempdir().unwrap().keep();
    run(
        "mount",
        &[
            "-o",
            "loop,data=journal,commit=1",
            img.to_str().unwrap(),
            dir.to_str().unwrap(),
        ],
    );
    let guard = Mount { dir: dir.clone() };
    std::fs::write(
        dir.join("replayed.txt"),
        b"only in the journal\n".repeat(300),
    )
    .unwrap();
    std::fs::create_dir(dir.join("newdir")).unwrap();
    for i in 0..30 {
        std::fs::write(dir.join(format!("newdir/f{i}")), format!("file {i}\n")).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(3000));
    run(
        "cp",
        &[
            "--sparse=always",
            img.to_str().unwrap(),
            copy.to_str().unwrap(),
        ],
    );
    drop(guard);
    {
        let fs = vdisk_ext4::Ext4::open(ext4_common::FileDev::open(&copy)).unwrap();
        assert!(
            fs.superblock()
                .has_incompat(vdisk_ext4::superblock::incompat::RECOVER),
            "the copy does not need recovery"
        );
    }
    let fs = Ext4Rw::open(RwDev::open(&copy)).unwrap();
    let mut m = model_from_fs(&fs);
    assert!(
        m.names.contains_key("newdir/f29"),
        "replayed entries missing"
    );
    let nd = resolve(&fs, "newdir");
    let a = fs
        .create(nd, OsStr::new("after-replay"), 0o640, 1, 2)
        .unwrap();
    fs.write(a.ino, 0, b"written after replay\n").unwrap();
    fs.unlink(nd, OsStr::new("f3")).unwrap();
    m.names.remove("newdir/f3");
    m.gc();
    m.add(
        "newdir/after-replay".into(),
        MNode {
            kind: Kind::File(b"written after replay\n".to_vec()),
            perm: 0o640,
            uid: 1,
            gid: 2,
            xattrs: BTreeMap::new(),
            mtime: None,
        },
    );
    fs.flush().unwrap();
    drop(fs);
    verify(&copy, &m, "journal replayed then written");
}

// ---------------------------------------------------------------------------------------------
// Crash test: a child process runs random operations and is killed with SIGKILL at random
// moments; e2fsck -fy must repair what it finds without harming any file the operation in
// flight did not touch, and a second e2fsck -fn must be clean.

/// Environment variable that makes [`crash_child`] the writer:
/// "IMAGE|PROGRESS|SEED|OPS|DIE_AT" (DIE_AT: the device write before which the child has
/// itself killed with SIGKILL, 0 for never).
const CRASH_ENV: &str = "VDISK_EXT4_CRASH_CHILD";

/// The child's device: counts writes; before write number `die_at` the process is killed
/// (SIGKILL, sent by kill(1): nothing of the process runs after it).
struct DyingDev {
    inner: Arc<dyn BlockDevice>,
    writes: std::sync::atomic::AtomicU64,
    die_at: u64,
}

impl BlockDevice for DyingDev {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let n = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if n == self.die_at {
            let me = std::process::id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-9", &me])
                .status();
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
}

/// The child side: runs the operations, recording in PROGRESS (two u64: operations started,
/// operations finished) where it is, so the parent knows which operation was in flight.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CRASH_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let img = Path::new(parts[0]);
    let progress = OpenOptions::new().write(true).open(parts[1]).unwrap();
    let seed: u64 = parts[2].parse().unwrap();
    let ops: u64 = parts[3].parse().unwrap();
    let die_at: u64 = parts[4].parse().unwrap();
    let mut r = Rng(seed | 1);
    let mut log = Vec::new();
    // A qcow2 overlay is opened as users open it, through the vdisk crate.
    let mut opened = None;
    let inner: Arc<dyn BlockDevice> = if img.extension().is_some_and(|e| e == "qcow2") {
        let opts = vdisk::OpenOptions {
            format: Some(vdisk::Format::Qcow2),
            read_only: false,
            ..Default::default()
        };
        let o = vdisk::open(img, &opts).unwrap();
        // As vdisk's guest commands and mount open it: qcow2 metadata written through to
        // the file at the end of every write, so that the engine's ordering survives a kill.
        if let vdisk::Driver::Qcow2(q) = &o.driver {
            q.set_write_through(true).unwrap();
        }
        let dev = Arc::new(ImageDev(o.image()));
        opened = Some(o);
        dev
    } else {
        RwDev::open(img)
    };
    let dev = Arc::new(DyingDev {
        inner,
        writes: 0.into(),
        die_at,
    });
    let fs = Ext4Rw::open(dev.clone()).unwrap();
    // No write barriers (no flushes) over qcow2 either: write-through keeps the order.
    let _ = &opened;
    let bs = u64::from(fs.statfs().unwrap().block_size);
    let mut m = model_from_fs(&fs);
    for i in 0..ops {
        progress.write_all_at(&(i + 1).to_le_bytes(), 0).unwrap();
        step(&mut r, &fs, &mut m, bs, &mut log);
        progress.write_all_at(&(i + 1).to_le_bytes(), 8).unwrap();
    }
    fs.flush().unwrap();
    let writes = dev.writes.load(std::sync::atomic::Ordering::SeqCst);
    progress.write_all_at(&writes.to_le_bytes(), 16).unwrap();
}

/// The model inode ids one logged operation touches (for a directory rename, everything
/// under it too), looked up in the models before and after it.
fn touched(op: &str, before: &Model, after: &Model) -> std::collections::HashSet<usize> {
    let words: Vec<&str> = op.split(' ').collect();
    let paths: &[&str] = match words[0] {
        "rename" | "link" => &words[1..3],
        _ => &words[1..2],
    };
    let mut ids = std::collections::HashSet::new();
    for m in [before, after] {
        for p in paths {
            for (q, id) in &m.names {
                if q == p || q.starts_with(&format!("{p}/")) {
                    ids.insert(*id);
                }
            }
        }
    }
    ids
}

/// What the kernel shows at `p` (from [`kernel_tree`]) matches model node `n` of `m`.
fn kernel_matches(
    k: &serde_json::Map<String, serde_json::Value>,
    p: &str,
    n: &MNode,
    m: &Model,
) -> bool {
    let Some(e) = k.get(p) else {
        return false;
    };
    match &n.kind {
        Kind::File(d) => e["kind"] == "f" && e["data"].as_str() == Some(hex(d).as_str()),
        Kind::Symlink(t) => e["kind"] == "l" && e["data"].as_str() == Some(hex(t).as_str()),
        Kind::Dir => {
            let pre = format!("{p}/");
            let names: Vec<&str> = k
                .keys()
                .filter(|q| q.starts_with(&pre) && !q[pre.len()..].contains('/'))
                .map(|q| &q[pre.len()..])
                .collect();
            let want: Vec<String> = m
                .children(p)
                .iter()
                .map(|c| split(c).1.to_string())
                .collect();
            // The operation in flight may add or remove one name; all others are there.
            e["kind"] == "d"
                && want.iter().filter(|w| !names.contains(&w.as_str())).count() <= 1
                && names
                    .iter()
                    .filter(|w| !want.iter().any(|x| x == *w))
                    .count()
                    <= 1
        }
    }
}

/// The kernel's view of the whole tree (loop mount, python dump).
fn kernel_tree(img: &Path) -> serde_json::Map<String, serde_json::Value> {
    let dir = tempfile::tempdir().unwrap().keep();
    run(
        "mount",
        &[
            "-o",
            "loop,ro",
            img.to_str().unwrap(),
            dir.to_str().unwrap(),
        ],
    );
    let guard = Mount { dir: dir.clone() };
    let v = conf::kernel_tree(&dir, SKIP);
    drop(guard);
    v
}

/// One crash run on a copy of `pristine`: returns a line saying what happened. With
/// `die_at` 0 the parent kills the child at a random moment; otherwise the child is killed
/// just before its device write number `die_at`.
#[allow(clippy::too_many_arguments)]
fn crash_run(
    pristine: &Path,
    name: &str,
    run_no: u32,
    seed: u64,
    ops: u64,
    die_at: u64,
    journaled: bool,
    r: &mut Rng,
) -> (String, u64) {
    let img = scratch().join(format!("{name}-crash.img"));
    // "cr-q…": the writer edits a qcow2 overlay over the pristine raw image, which must stay
    // byte-for-byte unchanged; the overlay is checked with qemu-img and flattened to `img`.
    let qcow2 = name.starts_with("cr-q");
    let top = scratch().join(format!("{name}-top.qcow2"));
    if qcow2 {
        let _ = std::fs::remove_file(&top);
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                pristine.to_str().unwrap(),
                "-F",
                "raw",
                top.to_str().unwrap(),
            ],
        );
    } else {
        run(
            "cp",
            &[
                "--sparse=always",
                pristine.to_str().unwrap(),
                img.to_str().unwrap(),
            ],
        );
    }
    let target_img = if qcow2 { &top } else { &img };
    let progress = scratch().join(format!("{name}-progress"));
    std::fs::write(&progress, [0u8; 24]).unwrap();
    let read_progress = || {
        let b = std::fs::read(&progress).unwrap_or_else(|e| panic!("{}: {e}", progress.display()));
        (
            u64::from_le_bytes(b[..8].try_into().unwrap()),
            u64::from_le_bytes(b[8..16].try_into().unwrap()),
        )
    };
    let target = r.below(ops * 9 / 10);
    let extra_us = r.below(3000);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(
            CRASH_ENV,
            format!(
                "{}|{}|{seed}|{ops}|{die_at}",
                target_img.display(),
                progress.display()
            ),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut exited = None;
    while exited.is_none() && read_progress().1 < target {
        exited = child.try_wait().unwrap();
        assert!(
            t0.elapsed().as_secs() < 60,
            "{name}: the child makes no progress"
        );
        std::thread::yield_now();
    }
    if exited.is_none() && die_at == 0 {
        std::thread::sleep(std::time::Duration::from_micros(extra_us));
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let killed = !out.status.success() && out.status.code().is_none();
    assert!(
        killed || out.status.success(),
        "{name} run {run_no}: the child failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (started, done) = read_progress();
    let total_writes = u64::from_le_bytes(
        std::fs::read(&progress).unwrap()[16..24]
            .try_into()
            .unwrap(),
    );
    if die_at == u64::MAX {
        // A calibration run: only its number of writes is wanted.
        return (String::new(), total_writes);
    }
    if qcow2 {
        let t = top.to_str().unwrap();
        let (code, out) = run_status("qemu-img", &["check", "-r", "all", t]);
        assert!(
            code == 0,
            "{name} run {run_no}: qemu-img check -r all exited {code}:\n{out}"
        );
        run(
            "qemu-img",
            &[
                "convert",
                "-f",
                "qcow2",
                "-O",
                "raw",
                t,
                img.to_str().unwrap(),
            ],
        );
    }
    // Replay on a fresh copy: the model after `done` operations, and the one in flight.
    let replay = scratch().join(format!("{name}-replay.img"));
    run(
        "cp",
        &[
            "--sparse=always",
            pristine.to_str().unwrap(),
            replay.to_str().unwrap(),
        ],
    );
    let (before, after, inflight) = {
        let fs = Ext4Rw::open(RwDev::open(&replay)).unwrap();
        let bs = u64::from(fs.statfs().unwrap().block_size);
        let mut rr = Rng(seed | 1);
        let mut log = Vec::new();
        let mut m = model_from_fs(&fs);
        for _ in 0..done {
            step(&mut rr, &fs, &mut m, bs, &mut log);
        }
        let before = m.clone();
        let n = log.len();
        if started > done {
            step(&mut rr, &fs, &mut m, bs, &mut log);
        }
        let inflight = log.get(n).cloned();
        (before, m, inflight)
    };
    let how = if die_at == 0 {
        "killed at a random time".to_string()
    } else {
        format!("killed before write {die_at}")
    };
    let what = format!(
        "{name} run {run_no} (seed {seed}): {how}: killed={killed} after {done} ops, in flight: {inflight:?}"
    );
    let i = img.to_str().unwrap();
    let skip = inflight
        .as_deref()
        .map(|op| touched(op, &before, &after))
        .unwrap_or_default();
    if journaled {
        // Recovery alone must leave a consistent filesystem holding each operation whole or
        // not at all: by the kernel (a read-write mount) or by e2fsck -fy, which then must
        // find nothing to repair.
        let by_kernel = (run_no / 2) % 2 == 0;
        let fix = if by_kernel {
            let dir = tempfile::tempdir().unwrap().keep();
            run("mount", &["-o", "loop", i, dir.to_str().unwrap()]);
            drop(Mount { dir });
            String::new()
        } else {
            let (code, fix) = run_status("e2fsck", &["-fy", i]);
            assert!(code <= 1, "{what}: e2fsck -fy exited {code}:\n{fix}");
            let repairs: Vec<&str> = fix.lines().filter(|l| l.contains('?')).collect();
            assert!(
                repairs.is_empty(),
                "{what}: e2fsck -fy repaired after journal recovery:\n{fix}"
            );
            fix
        };
        fsck_clean(
            &img,
            &format!(
                "{what}: e2fsck -fn after recovery by {}:\n{fix}",
                if by_kernel { "the kernel" } else { "e2fsck" }
            ),
        );
        // A write or truncate in flight may have reached the file's data (data=ordered).
        let relax = match inflight.as_deref().map(|op| op.split(' ').next()) {
            Some(Some("write" | "truncate")) => skip.clone(),
            _ => Default::default(),
        };
        let k = kernel_tree(&img);
        let b = tree_diff(&k, &before, &relax);
        let a = tree_diff(&k, &after, &relax);
        assert!(
            b.is_none() || a.is_none(),
            "{what}: after recovery the tree is neither the state before the operation in flight ({}) nor after it ({})",
            b.unwrap_or_default(),
            a.unwrap_or_default()
        );
        let whole = if started > done {
            if b.is_none() {
                "undone"
            } else {
                "done"
            }
        } else {
            "none"
        };
        return (
            format!(
                "{what}: recovered by {}, operation in flight {whole}",
                if by_kernel { "kernel" } else { "e2fsck" }
            ),
            total_writes,
        );
    }
    let (code, fix) = run_status("e2fsck", &["-fy", i]);
    assert!(code <= 1, "{what}: e2fsck -fy exited {code}:\n{fix}");
    fsck_clean(
        &img,
        &format!("{what}: second e2fsck after -fy repaired:\n{fix}"),
    );
    let k = kernel_tree(&img);
    for (p, id) in &before.names {
        if p.is_empty() || skip.contains(id) {
            continue;
        }
        let n = &before.nodes[id];
        assert!(
            kernel_matches(&k, p, n, &before) || kernel_matches(&k, p, &after.nodes[id], &after),
            "{what}: {p} was harmed; e2fsck -fy said:\n{fix}"
        );
    }
    let repaired = fix.lines().filter(|l| l.contains('?')).count();
    (
        format!("{what}: e2fsck -fy exit {code}, {repaired} repairs"),
        total_writes,
    )
}

/// The first difference between the kernel's tree `k` and model `m` (contents of the model
/// inodes in `relax` not compared), or None.
fn tree_diff(
    k: &serde_json::Map<String, serde_json::Value>,
    m: &Model,
    relax: &std::collections::HashSet<usize>,
) -> Option<String> {
    let want: Vec<&String> = m.names.keys().filter(|p| !p.is_empty()).collect();
    let mut got: Vec<&String> = k.keys().collect();
    got.sort();
    if want != got {
        let missing: Vec<_> = want.iter().filter(|p| !got.contains(p)).collect();
        let extra: Vec<_> = got.iter().filter(|p| !want.contains(p)).collect();
        return Some(format!("missing {missing:?}, unexpected {extra:?}"));
    }
    for (p, id) in &m.names {
        if p.is_empty() {
            continue;
        }
        let n = &m.nodes[id];
        let e = &k[p.as_str()];
        let same = match &n.kind {
            Kind::File(d) => {
                e["kind"] == "f"
                    && (relax.contains(id) || e["data"].as_str() == Some(hex(d).as_str()))
            }
            Kind::Symlink(t) => e["kind"] == "l" && e["data"].as_str() == Some(hex(t).as_str()),
            Kind::Dir => e["kind"] == "d",
        };
        let xattrs = || {
            let got: BTreeMap<String, String> = e["x"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let want: BTreeMap<String, String> = n
                .xattrs
                .iter()
                .filter(|(k, _)| k.starts_with(b"user."))
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), hex(v)))
                .collect();
            got == want
        };
        let mtime_ok = match (n.mtime, &n.kind) {
            (Some(t), Kind::File(_)) => e["mtime"].as_i64() == Some(t),
            _ => true,
        };
        let attrs = matches!(n.kind, Kind::Symlink(_))
            || (e["mode"].as_u64() == Some(u64::from(n.perm))
                && e["uid"].as_u64() == Some(u64::from(n.uid))
                && e["gid"].as_u64() == Some(u64::from(n.gid))
                && mtime_ok
                && xattrs());
        if !same || !attrs {
            return Some(format!("{p} differs"));
        }
    }
    None
}

/// Operations a crash child runs.
const OPS: u64 = 300;

/// Kills the writer at random moments. With a journal (ext4 default and CentOS-7-like, ext3
/// with block-mapped files) recovery by the kernel or e2fsck must leave a clean filesystem
/// with the operation in flight whole or undone; without one (ext2, ext4 ^has_journal)
/// e2fsck -fy repairs, every file the operation in flight did not touch survives, and a second
/// e2fsck -fn is clean.
#[test]
fn crash_kill9() {
    let runs: u32 = std::env::var("VDISK_CRASH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let src = populated_tree();
    for i in 0..30 {
        std::fs::write(
            src.path().join(format!("etc/small{i}")),
            Rng(i + 5).bytes(500 * i as usize),
        )
        .unwrap();
    }
    let mut summary = Vec::new();
    // (name, mkfs, options, vdisk writes through the journal)
    for (name, mkfs, args, journaled) in [
        ("cr-def", "mkfs.ext4", &["-T", "default"][..], true),
        (
            "cr-c7",
            "mkfs.ext4",
            &["-b", "1024", "-O", "^metadata_csum,^64bit,uninit_bg"][..],
            true,
        ),
        ("cr-e3", "mkfs.ext3", &["-b", "1024"][..], true),
        ("cr-qcow2", "mkfs.ext4", &["-T", "default"][..], true),
        ("cr-e2", "mkfs.ext2", &["-b", "1024"][..], false),
        (
            "cr-nj",
            "mkfs.ext4",
            &["-T", "default", "-O", "^has_journal"][..],
            false,
        ),
    ] {
        if std::env::var("VDISK_CRASH_ONLY").is_ok_and(|o| o != name) {
            continue;
        }
        let ops = OPS;
        let pristine = mkimg(name, 32, mkfs, args, Some(src.path()));
        let pristine_bytes = file_bytes(&pristine);
        let mut r = Rng(0xC0FFEE ^ u64::from(name.as_bytes()[3]));
        let (mut repairs, mut inflight, mut atomic) = (0, 0, 0);
        for k in 0..runs {
            let seed = 1000 + u64::from(k) * 7 + u64::from(name.as_bytes()[3]);
            // Odd runs: a calibration-free random moment; even runs: a random device write
            // (the child reports how many writes a whole run makes when it is not killed).
            let die_at = if k % 2 == 0 {
                let (_, total) =
                    crash_run(&pristine, name, k, seed, ops, u64::MAX, journaled, &mut r);
                1 + r.below(total)
            } else {
                0
            };
            let (line, _) = crash_run(&pristine, name, k, seed, ops, die_at, journaled, &mut r);
            if !line.ends_with(" 0 repairs") && !journaled {
                repairs += 1;
            }
            if line.ends_with("operation in flight undone") || line.ends_with("flight done") {
                atomic += 1;
            }
            if !line.contains("in flight: None") {
                inflight += 1;
            } else if line.ends_with("flight done") || line.ends_with("flight undone") {
                atomic -= 1;
            }
            eprintln!("{line}");
        }
        assert!(
            file_bytes(&pristine) == pristine_bytes,
            "{name}: the base image changed"
        );
        summary.push(if journaled {
            format!("{name}: {runs} kills, {inflight} inside an operation, {atomic} of them recovered whole or undone")
        } else {
            format!("{name}: {runs} kills, {inflight} inside an operation, {repairs} needed repairs")
        });
    }
    eprintln!("{}", summary.join("\n"));
}

/// A lookup of a name longer than 255 bytes answers ENAMETOOLONG, as the kernel's ext4 does
/// (pjdfstest checks it), through the read-write engine and the read-only one.
#[test]
fn lookup_of_a_too_long_name_is_enametoolong() {
    let img = mkimg("longname", 8, "mkfs.ext4", &[], None);
    let long = OsStr::from_bytes(&[b'x'; 256]);
    let ok = OsStr::from_bytes(&[b'x'; 255]);
    {
        let fs = Ext4Rw::open(RwDev::open(&img)).unwrap();
        let root = fs.root_ino();
        let e = fs.lookup(root, long).unwrap_err();
        assert_eq!(vdisk_fs::errno(&e), 36, "{e}");
        assert_eq!(fs.lookup(root, ok).unwrap(), None);
    }
    let ro = vdisk_ext4::Ext4::open(RwDev::open(&img)).unwrap();
    let e = ro.lookup(ro.root_ino(), long).unwrap_err();
    assert_eq!(vdisk_fs::errno(&e), 36, "{e}");
    assert_eq!(ro.lookup(ro.root_ino(), ok).unwrap(), None);
    fsck_clean(&img, "after lookups");
}

/// Never make a damaged filesystem worse: with lost+found's inode-bitmap bit cleared, or a
/// file's block marked free, the first write is refused with one line suggesting e2fsck, and
/// the image is byte-identical afterwards (what e2fsck says about it is unchanged).
#[test]
fn damaged_bitmaps_refuse_the_first_write() {
    let src = populated_tree();
    for (case, req) in [("ibit", "freei <11>"), ("bbit", "freeb 0")] {
        let img = mkimg(
            &format!("damaged-{case}"),
            8,
            "mkfs.ext4",
            &[],
            Some(src.path()),
        );
        let req = if case == "bbit" {
            // The first data block of a file mkfs copied in.
            let out = run("debugfs", &["-R", "blocks /mid", img.to_str().unwrap()]);
            format!("freeb {}", out.split_whitespace().next().unwrap())
        } else {
            req.to_string()
        };
        run("debugfs", &["-w", "-R", &req, img.to_str().unwrap()]);
        let before = std::fs::read(&img).unwrap();
        let fs = Ext4Rw::open(RwDev::open(&img)).unwrap();
        let root = fs.root_ino();
        let e = fs
            .create(root, OsStr::new("new"), 0o644, 0, 0)
            .map(|_| ())
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("refusing to write") && msg.contains("e2fsck -fy") && !msg.contains('\n'),
            "{case}: {msg}"
        );
        // Refused again, still without writing.
        assert!(fs.mkdir(root, OsStr::new("d"), 0o755, 0, 0).is_err());
        drop(fs);
        assert!(
            std::fs::read(&img).unwrap() == before,
            "{case}: the image changed"
        );
    }
}
