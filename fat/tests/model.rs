//! Writes: model-based random operation sequences through the library, mirrored in an
//! in-memory model. After each sequence `fsck.fat -n` must be clean, and mtools (`mdir -/`,
//! `mcopy -s -m`) and a fresh open of our engine must see exactly the model. On FAT12, FAT16
//! and FAT32 (the latter with 512-byte clusters, so directories grow and shrink often).

#![allow(clippy::map_entry)] // the model's branches read better as if/else

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;

use common::*;
use vdisk_block::Error;
use vdisk_fat::Fat;
use vdisk_fs::{errno, FileSystem, FileSystemMut, Ino, SetAttr, TimeSet, Timestamp};

#[derive(Debug, Clone)]
struct MNode {
    dir: bool,
    data: Vec<u8>,
    /// Set explicitly (even seconds), else written during the run.
    mtime: Option<i64>,
}

type Model = BTreeMap<String, MNode>;

const NAMES: &[&str] = &[
    "a.txt",
    "B.TXT",
    "readme",
    "Long File Name.txt",
    "Long File Name 2.txt",
    "Long File Name 3.txt",
    "longfile name.txt",
    "x",
    "grub.cfg",
    "EFI",
    "Boot Order Entry",
    "dots.in.name.tar.gz",
    "ünïcödé",
    "Mixed Case",
    "a very long name that needs more than two long-name entries to hold it all.bin",
    ".hidden",
    "spaces in name",
    "12345678.123",
    // Case variants of names above: FAT matches them as the same name.
    "A.TXT",
    "README",
    "efi",
    "GRUB.CFG",
    "long file name.TXT",
];

/// The model key that `p` names, matching without regard to ASCII case as vfat does.
fn find(m: &Model, p: &str) -> Option<String> {
    m.keys().find(|k| k.eq_ignore_ascii_case(p)).cloned()
}

fn split(p: &str) -> (&str, &str) {
    let i = p.rfind('/').unwrap();
    (if i == 0 { "/" } else { &p[..i] }, &p[i + 1..])
}

fn join(d: &str, n: &str) -> String {
    if d == "/" {
        format!("/{n}")
    } else {
        format!("{d}/{n}")
    }
}

fn children(m: &Model, d: &str) -> Vec<String> {
    m.keys()
        .filter(|k| split(k).0 == d && k.as_str() != d)
        .cloned()
        .collect()
}

fn dirs(m: &Model) -> Vec<String> {
    let mut v = vec!["/".to_string()];
    v.extend(m.iter().filter(|(_, n)| n.dir).map(|(k, _)| k.clone()));
    v
}

fn res(fs: &Fat, p: &str) -> Ino {
    fs.resolve(p.as_bytes(), true)
        .unwrap_or_else(|e| panic!("resolve {p}: {e}"))
}

fn code(e: &Error) -> i32 {
    errno(e)
}

fn pick<'a>(r: &mut Rng, v: &'a [String]) -> Option<&'a String> {
    if v.is_empty() {
        None
    } else {
        Some(&v[r.below(v.len() as u64) as usize])
    }
}

fn step(r: &mut Rng, fs: &Fat, m: &mut Model, cs: u64, log: &mut Vec<String>) {
    let files: Vec<String> = m
        .iter()
        .filter(|(_, n)| !n.dir)
        .map(|(k, _)| k.clone())
        .collect();
    let ds = dirs(m);
    match r.below(100) {
        0..=17 => {
            let d = pick(r, &ds).unwrap().clone();
            let n = NAMES[r.below(NAMES.len() as u64) as usize];
            let p = join(&d, n);
            log.push(format!("create {p}"));
            let got = fs.create(res(fs, &d), OsStr::new(n), 0o644, 0, 0);
            if find(m, &p).is_some() {
                assert_eq!(code(&got.unwrap_err()), errno::EEXIST, "create {p}");
            } else {
                let a = got.unwrap_or_else(|e| panic!("create {p}: {e}"));
                assert_eq!(a.size, 0);
                m.insert(
                    p,
                    MNode {
                        dir: false,
                        data: Vec::new(),
                        mtime: None,
                    },
                );
            }
        }
        18..=24 => {
            let d = pick(r, &ds).unwrap().clone();
            let n = NAMES[r.below(NAMES.len() as u64) as usize];
            let p = join(&d, n);
            log.push(format!("mkdir {p}"));
            let got = fs.mkdir(res(fs, &d), OsStr::new(n), 0o755, 0, 0);
            if find(m, &p).is_some() {
                assert_eq!(code(&got.unwrap_err()), errno::EEXIST, "mkdir {p}");
            } else {
                got.unwrap_or_else(|e| panic!("mkdir {p}: {e}"));
                m.insert(
                    p,
                    MNode {
                        dir: true,
                        data: Vec::new(),
                        mtime: None,
                    },
                );
            }
        }
        25..=49 => {
            let Some(p) = pick(r, &files).cloned() else {
                return;
            };
            let node = m.get_mut(&p).unwrap();
            let len = node.data.len() as u64;
            let off = match r.below(3) {
                0 => len,                   // append
                1 => r.below(len + 1),      // overwrite
                _ => len + r.below(3 * cs), // past the end: a zero gap
            };
            let n = if r.below(8) == 0 {
                r.below(40 * cs)
            } else {
                r.below(2 * cs) + 1
            } as usize;
            let data = r.bytes(n);
            log.push(format!("write {p} off={off} len={n}"));
            let ino = res(fs, &p);
            assert_eq!(
                fs.write(ino, off, &data)
                    .unwrap_or_else(|e| panic!("write {p}: {e}")),
                n
            );
            let end = off as usize + n;
            if node.data.len() < end && n > 0 {
                node.data.resize(end, 0);
            }
            node.data[off as usize..end].copy_from_slice(&data);
            node.mtime = None;
        }
        50..=57 => {
            let Some(p) = pick(r, &files).cloned() else {
                return;
            };
            let node = m.get_mut(&p).unwrap();
            let size = r.below(node.data.len() as u64 + 2 * cs);
            log.push(format!("truncate {p} {size}"));
            let a = fs
                .setattr(
                    res(fs, &p),
                    &SetAttr {
                        size: Some(size),
                        ..Default::default()
                    },
                )
                .unwrap_or_else(|e| panic!("truncate {p}: {e}"));
            assert_eq!(a.size, size);
            node.data.resize(size as usize, 0);
            node.mtime = None;
        }
        58..=63 => {
            let Some(p) = pick(r, &files).cloned() else {
                return;
            };
            let t = 631_152_000 + r.below(1_300_000_000) as i64;
            log.push(format!("utime {p} {t}"));
            let a = fs
                .setattr(
                    res(fs, &p),
                    &SetAttr {
                        mtime: Some(TimeSet::At(Timestamp { secs: t, nanos: 5 })),
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_eq!(a.mtime.secs, t & !1, "{p}");
            m.get_mut(&p).unwrap().mtime = Some(t & !1);
        }
        64..=73 => {
            let Some(p) = pick(r, &files).cloned() else {
                return;
            };
            let (d, n) = split(&p);
            log.push(format!("unlink {p}"));
            fs.unlink(res(fs, d), OsStr::new(n))
                .unwrap_or_else(|e| panic!("unlink {p}: {e}"));
            m.remove(&p);
        }
        74..=79 => {
            let Some(p) = pick(r, &ds[1..]).cloned() else {
                return;
            };
            let (d, n) = split(&p);
            log.push(format!("rmdir {p}"));
            let got = fs.rmdir(res(fs, d), OsStr::new(n));
            if children(m, &p).is_empty() {
                got.unwrap_or_else(|e| panic!("rmdir {p}: {e}"));
                m.remove(&p);
            } else {
                assert_eq!(code(&got.unwrap_err()), errno::ENOTEMPTY, "rmdir {p}");
            }
        }
        _ => {
            let all: Vec<String> = m.keys().cloned().collect();
            let Some(src) = pick(r, &all).cloned() else {
                return;
            };
            let nd = pick(r, &ds).unwrap().clone();
            let nn = NAMES[r.below(NAMES.len() as u64) as usize];
            let dst = join(&nd, nn);
            let (sd, sn) = split(&src);
            log.push(format!("rename {src} -> {dst}"));
            let sino = res(fs, &src);
            let got = fs.rename(res(fs, sd), OsStr::new(sn), res(fs, &nd), OsStr::new(nn), 0);
            let sdir = m[&src].dir;
            let (sl, dl) = (src.to_ascii_lowercase(), dst.to_ascii_lowercase());
            let same = sl == dl;
            let inside = dl.starts_with(&format!("{sl}/"));
            let target = find(m, &dst);
            let want = if same {
                Ok(())
            } else if sdir && inside {
                Err(errno::EINVAL)
            } else if let Some(t) = &target {
                match (sdir, m[t].dir) {
                    (true, false) => Err(errno::ENOTDIR),
                    (false, true) => Err(errno::EISDIR),
                    (true, true) if !children(m, t).is_empty() => Err(errno::ENOTEMPTY),
                    _ => Ok(()),
                }
            } else {
                Ok(())
            };
            // Where the object ends up: a replaced target keeps its spelling (vfat reuses
            // its entry), otherwise the new name as given (trailing dots are never drawn).
            let dst = match (&target, same) {
                (Some(t), false) => t.clone(),
                _ => dst,
            };
            match want {
                Err(c) => assert_eq!(code(&got.unwrap_err()), c, "rename {src} -> {dst}"),
                Ok(()) => {
                    got.unwrap_or_else(|e| panic!("rename {src} -> {dst}: {e}"));
                    if dst != src {
                        let moved: Vec<String> = m
                            .keys()
                            .filter(|k| *k == &src || k.starts_with(&format!("{src}/")))
                            .cloned()
                            .collect();
                        if !same {
                            m.remove(&dst);
                        }
                        let vals: Vec<(String, MNode)> = moved
                            .into_iter()
                            .map(|k| {
                                let v = m.remove(&k).unwrap();
                                (format!("{dst}{}", &k[src.len()..]), v)
                            })
                            .collect();
                        m.extend(vals);
                    }
                    // The object keeps its inode number under its new name.
                    assert_eq!(res(fs, &dst), sino, "rename {src} -> {dst}: inode changed");
                }
            }
        }
    }
}

fn check_against(tree: &BTreeMap<String, Item>, m: &Model, t0: i64, t1: i64, what: &str) {
    let names: Vec<&String> = tree.keys().collect();
    let want: Vec<&String> = m.keys().collect();
    assert_eq!(names, want, "{what}: names differ");
    for (p, n) in m {
        let it = &tree[p];
        assert_eq!(it.dir, n.dir, "{what}: {p}: kind");
        if n.dir {
            continue;
        }
        assert!(
            it.data == n.data,
            "{what}: {p}: content differs ({} vs {} bytes)",
            it.data.len(),
            n.data.len()
        );
        match n.mtime {
            Some(t) => assert_eq!(it.mtime, t, "{what}: {p}: mtime"),
            None => assert!(
                it.mtime >= t0 - 2 && it.mtime <= t1 + 2,
                "{what}: {p}: mtime {} outside the run [{t0}, {t1}]",
                it.mtime
            ),
        }
    }
}

fn describe(log: &[String]) -> String {
    let n = log.len();
    log[n.saturating_sub(12)..].join("\n")
}

/// Sequences per run: `FAT_MODEL_SEEDS` raises it for long local runs.
fn seeds(default: u64) -> u64 {
    std::env::var("FAT_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn property(bits: u32, mb: u64, seeds: u64, ops: usize) {
    if !have_tools() {
        eprintln!("skipped: mkfs.fat or mtools missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for seed in 1..=seeds {
        let img = mkfs(dir.path(), bits, mb);
        let mut m = Model::new();
        let mut r = Rng(seed * 0x9E37_79B9 + u64::from(bits));
        let mut log = Vec::new();
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        {
            let fs = open_fat(&img, true);
            let cs = u64::from(fs.geometry().cluster_size);
            for _ in 0..ops {
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    step(&mut r, &fs, &mut m, cs, &mut log)
                }));
                if let Err(e) = res {
                    eprintln!("FAT{bits} seed {seed}, last ops:\n{}", describe(&log));
                    std::panic::resume_unwind(e);
                }
            }
            fs.flush().unwrap();
        }
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let what = format!(
            "FAT{bits} seed {seed} after {ops} ops; last:\n{}",
            describe(&log)
        );
        eprintln!(
            "FAT{bits} seed {seed}: {} paths, {} bytes",
            m.len(),
            m.values().map(|n| n.data.len()).sum::<usize>()
        );
        fsck_clean(&img, &what);
        let theirs = mtools_tree(&img, dir.path());
        check_against(&theirs, &m, start, end, &format!("mtools: {what}"));
        let fs = open_fat(&img, false);
        let ours = our_tree(&fs);
        check_against(&ours, &m, start, end, &format!("reopened: {what}"));
        // statfs agrees with mdir's count of free bytes.
        let listing = run(mtool("mdir", &img).arg("::/"));
        let free_line = listing.lines().find(|l| l.contains("bytes free")).unwrap();
        let free: u64 = free_line
            .split_whitespace()
            .take_while(|w| *w != "bytes")
            .collect::<String>()
            .parse()
            .unwrap();
        let s = fs.statfs().unwrap();
        assert_eq!(s.blocks_free * u64::from(s.block_size), free, "{what}");
    }
}

#[test]
fn model_fat32() {
    property(32, 40, seeds(3), 250);
}

#[test]
fn model_fat16() {
    property(16, 16, seeds(3), 250);
}

#[test]
fn model_fat12() {
    property(12, 4, seeds(3), 250);
}
