//! A filesystem whose journal needs recovery: our in-memory replay must show what the kernel
//! shows after its own recovery (done here by e2fsck -fy on a copy), never the stale blocks.
//!
//! The image is taken while mounted: with `data=journal,commit=1` the kernel commits every
//! second but writes the journaled blocks home only when the flusher gets to them (30 s), so a
//! copy taken 3 s after the writes holds committed, un-checkpointed transactions.

mod ext4_common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use ext4_common::{run, run_status, scratch, FileDev, Mount};
use vdisk_ext4::{Ext4, OpenOptions};
use vdisk_fs::{FileKind, FileSystem, Ino};

fn walk(fs: &Ext4) -> BTreeMap<Vec<u8>, Ino> {
    let mut out = BTreeMap::new();
    let mut todo = vec![(Vec::new(), fs.root_ino())];
    while let Some((path, ino)) = todo.pop() {
        for e in fs.readdir_all(ino).unwrap() {
            let name = e.name.as_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let mut p = path.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(name);
            if e.kind == FileKind::Dir {
                todo.push((p.clone(), e.ino));
            }
            out.insert(p, e.ino);
        }
    }
    out
}

/// Makes an image copy with committed but unreplayed transactions; returns its path.
fn dirty_image(name: &str, mkfs_args: &[&str]) -> std::path::PathBuf {
    let img = scratch().join(format!("{name}.img"));
    let copy = scratch().join(format!("{name}-dirty.img"));
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut a = vec!["-q", "-F"];
    a.extend_from_slice(mkfs_args);
    a.push(img.to_str().unwrap());
    run("mkfs.ext4", &a);
    let dir = tempfile::tempdir().unwrap().keep();
    let d = dir.to_str().unwrap();
    run(
        "mount",
        &["-o", "loop,data=journal,commit=1", img.to_str().unwrap(), d],
    );
    let guard = Mount { dir: dir.clone() };
    std::fs::write(
        dir.join("replayed.txt"),
        b"only in the journal\n".repeat(300),
    )
    .unwrap();
    std::fs::create_dir(dir.join("newdir")).unwrap();
    for i in 0..50 {
        std::fs::write(dir.join(format!("newdir/f{i}")), format!("file {i}\n")).unwrap();
    }
    std::fs::write(dir.join("big"), vec![0x5Au8; 300_000]).unwrap();
    // A second transaction rewrites blocks of the first: the newer copy must win.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::fs::write(
        dir.join("replayed.txt"),
        b"rewritten in a later transaction\n",
    )
    .unwrap();
    for i in 0..50 {
        std::fs::write(dir.join(format!("newdir/g{i}")), format!("second {i}\n")).unwrap();
    }
    std::fs::remove_file(dir.join("newdir/f7")).unwrap();
    // Let the commit thread commit (commit=1), but not the flusher write back (30 s).
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
    copy
}

/// How many blocks the journal of `dirty` would replay over a home copy that differs.
fn replayed_blocks_that_differ(name: &str, dirty: &std::path::Path) -> usize {
    let fs = Ext4::open(FileDev::open(dirty)).unwrap();
    assert!(
        fs.superblock()
            .has_incompat(vdisk_ext4::superblock::incompat::RECOVER),
        "{name}: the copy does not need recovery"
    );
    // Usually two transactions; under load the kernel may fold both batches into one.
    assert!(fs.replayed_transactions() > 0, "{name}: nothing replayed");
    let dev = FileDev::open(dirty);
    let bs = u64::from(fs.superblock().block_size);
    let mut differs = 0;
    for &blk in fs.journal_overlay().keys() {
        let mut home = vec![0u8; bs as usize];
        let mut new = vec![0u8; bs as usize];
        dev.read_at(&mut home, blk * bs).unwrap();
        fs.read_bytes(&mut new, blk * bs).unwrap();
        differs += usize::from(home != new);
    }
    eprintln!(
        "{name}: {} transactions, {} blocks replayed, {differs} differ from home",
        fs.replayed_transactions(),
        fs.journal_overlay().len()
    );
    differs
}

fn check(name: &str, mkfs_args: &[&str]) {
    // Replay matters only if some journaled block differs from its stale home copy. On a
    // loaded machine the kernel may checkpoint everything home before the copy is taken; such
    // an image tests nothing, so it is made again (a few times at most).
    let mut dirty = dirty_image(name, mkfs_args);
    let mut attempts = 1;
    while replayed_blocks_that_differ(name, &dirty) == 0 {
        assert!(
            attempts < 4,
            "{name}: every journaled block was already home, {attempts} times"
        );
        eprintln!("{name}: the kernel had checkpointed everything; making the image again");
        dirty = dirty_image(name, mkfs_args);
        attempts += 1;
    }
    let fs = Ext4::open(FileDev::open(&dirty)).unwrap();
    // Refusing instead of replaying is an Unsupported error, never stale data.
    let strict = Ext4::open_with(
        FileDev::open(&dirty),
        OpenOptions {
            replay_journal: false,
        },
    );
    assert!(matches!(
        strict,
        Err(vdisk_block::Error::Unsupported { .. })
    ));

    // The kernel's view after e2fsck replays the journal on a second copy.
    let fixed = scratch().join(format!("{name}-fixed.img"));
    std::fs::copy(&dirty, &fixed).unwrap();
    let (code, out) = run_status("e2fsck", &["-fy", fixed.to_str().unwrap()]);
    assert!(code <= 1, "e2fsck -fy: {code}\n{out}");
    let m = Mount::new(&fixed, "ext4").expect("mount the recovered copy");
    let ours = walk(&fs);
    assert!(
        ours.contains_key(&b"replayed.txt"[..]),
        "{name}: replayed.txt missing"
    );
    let mut theirs = 0;
    for (rel, &ino) in &ours {
        let hp = m.dir.join(OsStr::from_bytes(rel));
        let md = std::fs::symlink_metadata(&hp).unwrap();
        let a = fs.getattr(ino).unwrap();
        let ctx = String::from_utf8_lossy(rel);
        assert_eq!(
            (a.ino, a.size, a.mode),
            (md.ino(), md.size(), md.mode()),
            "{ctx}"
        );
        if a.kind == FileKind::File {
            let mut v = vec![0u8; a.size as usize];
            assert_eq!(fs.read(ino, 0, &mut v).unwrap(), v.len());
            assert!(v == std::fs::read(&hp).unwrap(), "bytes of {ctx}");
        }
        theirs += 1;
    }
    let count = walkdir_count(&m.dir);
    assert_eq!(
        count, theirs,
        "{name}: the kernel sees a different number of files"
    );
}

fn walkdir_count(p: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        n += 1;
        if e.file_type().unwrap().is_dir() {
            n += walkdir_count(&e.path());
        }
    }
    n
}

#[test]
fn ext4_journal_replay_csum_v3() {
    check("jdefault", &["-T", "default"]);
}

#[test]
fn ext4_journal_replay_no_csum_32bit() {
    check(
        "jcentos7",
        &["-T", "default", "-O", "^metadata_csum,^64bit"],
    );
}
