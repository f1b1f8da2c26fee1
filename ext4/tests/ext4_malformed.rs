//! Hostile images: patched superblock, inode, extent and directory bytes give one-line errors
//! of the right kind, never a panic or a hang; random corruption never panics.

mod ext4_common;

use std::ffi::OsStr;
use std::sync::{Arc, OnceLock};

use ext4_common::{run, scratch};
use vdisk_block::{BlockDevice, Error, MemDevice};
use vdisk_ext4::{self as ext4, Ext4, Run};
use vdisk_fs::{FileKind, FileSystem, Ino};

const POPULATE: &str = r#"
import os, sys
root = sys.argv[1]
os.makedirs(os.path.join(root, "d1/sub"))
open(os.path.join(root, "hello"), "wb").write(b"hello, world\n" * 100)
open(os.path.join(root, "d1/sub/inner"), "wb").write(b"inner\n")
with open(os.path.join(root, "frag"), "wb") as f:
    for i in range(40):
        f.seek(i * 8192); f.write(bytes([i]) * 4096)
os.symlink("d1/sub/inner", os.path.join(root, "link"))
os.setxattr(os.path.join(root, "hello"), "user.x", b"y" * 500)
"#;

/// A pristine small image (4 KiB blocks, metadata_csum unless `nocsum`), as bytes.
fn pristine(nocsum: bool) -> Vec<u8> {
    static CSUM: OnceLock<Vec<u8>> = OnceLock::new();
    static NOCSUM: OnceLock<Vec<u8>> = OnceLock::new();
    let cell = if nocsum { &NOCSUM } else { &CSUM };
    cell.get_or_init(|| {
        let name = if nocsum { "mal-nocsum" } else { "mal-csum" };
        let src = scratch().join(format!("{name}-src"));
        std::fs::create_dir_all(&src).unwrap();
        run("python3", &["-c", POPULATE, src.to_str().unwrap()]);
        let img = scratch().join(format!("{name}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let mut args = vec![
            "-q",
            "-F",
            "-T",
            "default",
            "-N",
            "128",
            "-d",
            src.to_str().unwrap(),
        ];
        if nocsum {
            args.extend_from_slice(&["-O", "^metadata_csum"]);
        }
        args.push(img.to_str().unwrap());
        run("mkfs.ext4", &args);
        std::fs::read(&img).unwrap()
    })
    .clone()
}

fn open(bytes: Vec<u8>) -> vdisk_block::Result<Ext4> {
    Ext4::open(Arc::new(MemDevice::from_vec(bytes)))
}

fn reseal_sb(b: &mut [u8]) {
    let raw: [u8; 1024] = b[1024..2048].try_into().unwrap();
    let c = ext4::superblock::compute_checksum(&raw);
    b[1024 + 0x3FC..1024 + 0x400].copy_from_slice(&c.to_le_bytes());
}

fn corrupt_text(r: vdisk_block::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(e @ Error::Corrupt { .. }) => e.to_string(),
        other => panic!("expected a Corrupt error, got {other:?}"),
    }
}

fn ino_of(fs: &Ext4, path: &str) -> Ino {
    fs.resolve(path.as_bytes(), false).unwrap()
}

fn put32(b: &mut [u8], off: u64, v: u32) {
    let o = off as usize;
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

/// Rewrites inode `ino`'s slot with `f` and re-seals its checksum.
fn patch_inode(b: &mut [u8], ino: u32, f: impl FnOnce(&mut [u8])) {
    let fs = open(b.to_vec()).unwrap();
    let off = fs.inode_offset(ino).unwrap() as usize;
    let isz = usize::from(fs.superblock().s_inode_size);
    let seed = fs.superblock().csum_seed;
    let slot = &mut b[off..off + isz];
    f(slot);
    if let Some(seed) = seed {
        let c = ext4::inode::compute_checksum(seed, ino, slot, true);
        slot[0x7C..0x7E].copy_from_slice(&(c as u16).to_le_bytes());
        slot[0x82..0x84].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
    }
}

#[test]
fn superblock_fields_are_validated() {
    let mut b = pristine(false);
    put32(&mut b, 1024, 0);
    reseal_sb(&mut b);
    let t = corrupt_text(open(b));
    assert!(t.contains("s_inodes_count 0"), "{t}");

    let mut b = pristine(false);
    put32(&mut b, 1024 + 0x18, 30);
    reseal_sb(&mut b);
    let t = corrupt_text(open(b));
    assert!(t.contains("s_log_block_size 30 is out of range"), "{t}");

    let mut b = pristine(false);
    put32(&mut b, 1024 + 0x28, 0);
    reseal_sb(&mut b);
    assert!(corrupt_text(open(b)).contains("s_inodes_per_group 0"));

    let mut b = pristine(false);
    put32(&mut b, 1024 + 0x4, u32::MAX);
    reseal_sb(&mut b);
    assert!(corrupt_text(open(b)).contains("larger than its device"));

    let mut b = pristine(false);
    b[1024 + 0x38] = 0;
    assert!(corrupt_text(open(b)).contains("bad magic"));

    // A flipped byte without re-sealing: the superblock checksum catches it.
    let mut b = pristine(false);
    b[1024 + 0x100] ^= 1;
    let t = corrupt_text(open(b));
    assert!(
        t.starts_with("at offset 0x7fc: superblock: checksum"),
        "{t}"
    );
}

#[test]
fn unknown_features_refused_by_name() {
    let mut b = pristine(false);
    let f = u32::from_le_bytes(b[1024 + 0x60..1024 + 0x64].try_into().unwrap());
    put32(&mut b, 1024 + 0x60, f | 0x0100_0000);
    reseal_sb(&mut b);
    match open(b) {
        Err(Error::Unsupported { what, .. }) => {
            assert!(
                what.contains("unknown incompatible feature bits 0x1000000"),
                "{what}"
            )
        }
        other => panic!("{other:?}"),
    }
    let mut b = pristine(false);
    let f = u32::from_le_bytes(b[1024 + 0x60..1024 + 0x64].try_into().unwrap());
    put32(&mut b, 1024 + 0x60, f | 0x1);
    reseal_sb(&mut b);
    match open(b) {
        Err(Error::Unsupported { what, .. }) => assert!(what.contains("compression"), "{what}"),
        other => panic!("{other:?}"),
    }
    // An unknown read-only-compatible feature still reads, and says why it is read-only.
    let mut b = pristine(false);
    let f = u32::from_le_bytes(b[1024 + 0x64..1024 + 0x68].try_into().unwrap());
    put32(&mut b, 1024 + 0x64, f | 0x0080_0000);
    reseal_sb(&mut b);
    let fs = open(b).unwrap();
    assert!(fs.superblock().read_only_reason().is_some());
    assert_eq!(
        fs.resolve(b"/link", true).unwrap(),
        ino_of(&fs, "/d1/sub/inner")
    );
}

#[test]
fn inode_checksum_and_huge_size() {
    let b = pristine(false);
    let fs = open(b.clone()).unwrap();
    let hello = ino_of(&fs, "/hello") as u32;
    let off = fs.inode_offset(hello).unwrap() as usize;
    let mut bad = b.clone();
    bad[off + 0x10] ^= 0xFF; // i_mtime, not re-sealed
    let fs2 = open(bad).unwrap();
    let t = corrupt_text(fs2.getattr(u64::from(hello)));
    assert!(t.contains(&format!("inode {hello}: checksum")), "{t}");

    let mut huge = b.clone();
    patch_inode(&mut huge, hello, |s| {
        s[0x4..0x8].copy_from_slice(&[0xFF; 4]);
        s[0x6C..0x70].copy_from_slice(&[0xFF; 4]);
    });
    // A size past 2^63 is refused as the kernel refuses it (a reader would otherwise stream
    // 2^64 bytes of zeros); one just below is a legal sparse file.
    let fs3 = open(huge).unwrap();
    let t = corrupt_text(fs3.getattr(u64::from(hello)));
    assert!(
        t.contains(&format!("inode {hello}: bad i_size value")),
        "{t}"
    );
    let mut big = b.clone();
    patch_inode(&mut big, hello, |s| {
        s[0x4..0x8].copy_from_slice(&[0xFF; 4]);
        s[0x6C..0x70].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0x7F]);
    });
    let fs3 = open(big).unwrap();
    assert_eq!(fs3.getattr(u64::from(hello)).unwrap().size, i64::MAX as u64);
    let mut buf = vec![1u8; 8192];
    assert_eq!(fs3.read(u64::from(hello), 1 << 62, &mut buf).unwrap(), 8192);
    assert!(buf.iter().all(|&x| x == 0));
    assert_eq!(fs3.read(u64::from(hello), 0, &mut buf[..13]).unwrap(), 13);
    assert_eq!(&buf[..13], b"hello, world\n");

    // Out-of-range inode numbers are refused, not read.
    assert!(matches!(fs.getattr(0), Err(Error::InvalidArgument { .. })));
    assert!(matches!(
        fs.getattr(1 << 40),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(fs
        .getattr(u64::from(fs.superblock().s_inodes_count) + 1)
        .is_err());
}

#[test]
fn extent_tree_cycle_and_checksum() {
    let b = pristine(false);
    let fs = open(b.clone()).unwrap();
    let frag = ino_of(&fs, "/frag") as u32;
    let inode = fs.inode(frag).unwrap();
    // 40 extents: the root (4 slots) is an index over one leaf block.
    let depth = u16::from_le_bytes([inode.i_block[6], inode.i_block[7]]);
    assert_eq!(depth, 1, "frag should have a one-level extent tree");
    let leaf = u64::from(u32::from_le_bytes(
        inode.i_block[16..20].try_into().unwrap(),
    ));
    let bs = fs.superblock().block_size as usize;
    let seed = inode.csum_seed(fs.superblock().csum_seed.unwrap());
    let at = leaf as usize * bs;

    // The leaf claims depth 1 and points at itself: a cycle.
    let mut cyc = b.clone();
    {
        let blk = &mut cyc[at..at + bs];
        blk[6..8].copy_from_slice(&1u16.to_le_bytes());
        blk[12..16].copy_from_slice(&0u32.to_le_bytes());
        blk[16..20].copy_from_slice(&(leaf as u32).to_le_bytes());
        blk[20..22].copy_from_slice(&0u16.to_le_bytes());
        ext4::extent::set_checksum(seed, blk);
    }
    let fs2 = open(cyc).unwrap();
    let mut buf = vec![0u8; 4096];
    let t = corrupt_text(fs2.read(u64::from(frag), 0, &mut buf));
    assert!(t.contains("a cycle or a damaged tree"), "{t}");

    // Overlapping extents in the leaf.
    let mut ovl = b.clone();
    {
        let blk = &mut ovl[at..at + bs];
        // extent 1 starts where extent 0 starts
        let e0 = blk[12..16].to_vec();
        blk[24..28].copy_from_slice(&e0);
        ext4::extent::set_checksum(seed, blk);
    }
    let fs3 = open(ovl).unwrap();
    let t = corrupt_text(fs3.read(u64::from(frag), 0, &mut buf));
    assert!(t.contains("overlaps"), "{t}");

    // A flipped byte in the leaf: the extent block checksum names it.
    let mut flip = b.clone();
    flip[at + 100] ^= 0x40;
    let fs4 = open(flip).unwrap();
    let t = corrupt_text(fs4.read(u64::from(frag), 0, &mut buf));
    assert!(t.contains("extent block checksum"), "{t}");

    // The untouched file reads as written: block i holds byte i, holes between.
    let fs = open(b).unwrap();
    let mut all = vec![0u8; 40 * 8192];
    let n = fs.read(u64::from(frag), 0, &mut all).unwrap();
    assert_eq!(n, 39 * 8192 + 4096);
    for i in 0..40usize {
        assert!(all[i * 8192..i * 8192 + 4096].iter().all(|&x| x == i as u8));
        if i < 39 {
            assert!(all[i * 8192 + 4096..(i + 1) * 8192].iter().all(|&x| x == 0));
        }
    }
    assert!(matches!(
        fs.map(&fs.inode(frag).unwrap(), 1).unwrap(),
        Run::Zero { len: 1 }
    ));
}

#[test]
fn directory_loop_and_checksum() {
    let b = pristine(false);
    let fs = open(b.clone()).unwrap();
    let d1 = ino_of(&fs, "/d1") as u32;
    let dir = fs.inode(d1).unwrap();
    let Run::Data { start, .. } = fs.map(&dir, 0).unwrap() else {
        panic!("d1 has no block")
    };
    let bs = fs.superblock().block_size as usize;
    let at = start as usize * bs;
    let pos = b[at..at + bs].windows(3).position(|w| w == b"sub").unwrap();
    let seed = dir.csum_seed(fs.superblock().csum_seed.unwrap());

    // d1/sub now names d1 itself: a directory loop.
    let mut lp = b.clone();
    {
        let blk = &mut lp[at..at + bs];
        blk[pos - 8..pos - 4].copy_from_slice(&d1.to_le_bytes());
        ext4::dir_entry::set_checksum(seed, blk);
    }
    let fs2 = open(lp).unwrap();
    let deep = "/d1".to_string() + &"/sub".repeat(1000);
    assert_eq!(fs2.resolve(deep.as_bytes(), true).unwrap(), u64::from(d1));
    let back = "/d1".to_string() + &"/sub/..".repeat(500) + "/../hello";
    assert_eq!(
        fs2.resolve(back.as_bytes(), true).unwrap(),
        ino_of(&fs, "/hello")
    );
    // A walk that remembers directories ends.
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![fs2.root_ino()];
    let mut steps = 0;
    while let Some(d) = todo.pop() {
        if !seen.insert(d) {
            continue;
        }
        for e in fs2.readdir_all(d).unwrap() {
            steps += 1;
            if e.kind == FileKind::Dir && e.name != "." && e.name != ".." {
                todo.push(e.ino);
            }
        }
    }
    assert!(steps < 100);

    // A flipped byte in the block: its checksum names the directory block.
    let mut flip = b.clone();
    flip[at + pos] ^= 1;
    let fs3 = open(flip).unwrap();
    let t = corrupt_text(fs3.lookup(u64::from(d1), OsStr::new("sub")));
    assert!(t.contains(&format!("directory inode {d1} block 0")), "{t}");
    assert!(t.contains("directory block checksum"), "{t}");

    // rec_len pointing past the block (checksums off, so the parser itself must catch it).
    let b = pristine(true);
    let fs = open(b.clone()).unwrap();
    let d1 = ino_of(&fs, "/d1") as u32;
    let Run::Data { start, .. } = fs.map(&fs.inode(d1).unwrap(), 0).unwrap() else {
        panic!()
    };
    let at = start as usize * bs;
    let mut bad = b;
    bad[at + 4..at + 6].copy_from_slice(&0xFFF0u16.to_le_bytes());
    let fs4 = open(bad).unwrap();
    let t = corrupt_text(fs4.readdir_all(u64::from(d1)));
    assert!(t.contains("runs past the end of the block"), "{t}");
}

/// Walks everything reachable, bounded, ignoring errors: the point is that nothing panics.
fn bounded_walk(fs: &Ext4) {
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![fs.root_ino()];
    let mut budget = 5000;
    let mut buf = vec![0u8; 65536];
    while let Some(d) = todo.pop() {
        if !seen.insert(d) {
            continue;
        }
        let _ = fs.listxattr(d);
        let Ok(entries) = fs.readdir_all(d) else {
            continue;
        };
        for e in entries {
            budget -= 1;
            if budget == 0 {
                return;
            }
            let _ = fs.getattr(e.ino);
            let _ = fs.listxattr(e.ino);
            let _ = fs.getxattr(e.ino, OsStr::new("user.x"));
            match e.kind {
                FileKind::Dir => todo.push(e.ino),
                FileKind::Symlink => {
                    let _ = fs.readlink(e.ino);
                }
                _ => {
                    let _ = fs.read(e.ino, 0, &mut buf);
                }
            }
        }
    }
    let _ = fs.resolve(b"/d1/sub/../../link", true);
}

#[test]
fn random_corruption_never_panics() {
    for nocsum in [false, true] {
        let base = pristine(nocsum);
        // Metadata lives in the first megabyte of this small image.
        let span = 1 << 20;
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(nocsum);
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..500 {
            let mut b = base.clone();
            for _ in 0..1 + next() % 16 {
                let i = (next() % span) as usize;
                b[i] = next() as u8;
            }
            let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::from_vec(b));
            if let Ok(fs) = Ext4::open(dev) {
                bounded_walk(&fs);
            }
        }
    }
}
