//! Never make a damaged filesystem worse (issue 19), checked in CI without e2fsprogs' test
//! images: each case builds a small filesystem with mkfs.ext4, damages it the way one of those
//! images is damaged (debugfs -w, or a byte patch), and runs the two writes users run
//! (`vdisk write … /newfile --from FILE` and `vdisk mkdir … /newdir`, here through the library
//! as the CLI does). Each must either be refused with one line, leaving the image's bytes as
//! they were, or succeed with `e2fsck -fn` reporting nothing it did not report before and the
//! new file reading back as written.
//!
//! The long run over the real e2fsprogs images is `scripts/ext4-hostile.sh`.

mod ext4_common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ext4_common::{run, run_status, scratch};
use vdisk_block::{BlockDevice, MemDevice};
use vdisk_ext4::{Ext4, Ext4Rw};
use vdisk_fs::{ops, FileKind, FileSystem, FileSystemMut};

/// The base filesystem's flavour.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Flavour {
    /// mkfs.ext4's defaults: metadata_csum, flex_bg, extents, 64bit.
    Csum,
    /// No checksums, no flex_bg, no extents (indirect blocks), no uninit_bg.
    Plain,
}

/// Where things are in a freshly made base image.
struct Layout {
    blocks: u64,
    ipg: u32,
    groups: u32,
    /// (block bitmap, inode bitmap, inode table) of each group.
    gd: Vec<(u64, u64, u64)>,
    /// (free blocks, free inodes) of each group.
    free: Vec<(u32, u32)>,
    /// The first data block of /a, /b and /big.
    a: u64,
    b: u64,
    big: u64,
    /// /big's indirect block (Plain only).
    big_ind: u64,
    /// The inode-table block holding inode 12.
    itable12: u64,
    /// The root directory's first block.
    root: u64,
    /// The number of blocks in the last group.
    last_n: u64,
}

/// Bytes of the test file written into every damaged filesystem.
fn payload() -> Vec<u8> {
    (0..3000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// Makes the base image of `flavour` at `img` and returns its layout.
fn base(flavour: Flavour, img: &Path) -> Layout {
    let src = scratch().join(format!("hostile-src-{flavour:?}"));
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(src.join("dir")).unwrap();
    std::fs::write(src.join("a"), vec![b'a'; 3000]).unwrap();
    std::fs::write(src.join("b"), vec![b'b'; 5000]).unwrap();
    std::fs::write(src.join("dir/c"), vec![b'c'; 100]).unwrap();
    std::fs::write(src.join("big"), vec![b'g'; 40 * 1024]).unwrap();
    std::fs::write(src.join("big2"), vec![b'h'; 40 * 1024]).unwrap();
    let _ = std::fs::remove_file(img);
    // 16000 KiB of 1 KiB blocks: two groups, the last one short (its bitmap has padding).
    std::fs::File::create(img)
        .unwrap()
        .set_len(16000 << 10)
        .unwrap();
    let mut args = vec!["-q", "-F", "-b", "1024", "-N", "512", "-d"];
    let s = src.to_str().unwrap().to_string();
    args.push(&s);
    if flavour == Flavour::Plain {
        args.extend_from_slice(&["-O", "^metadata_csum,^uninit_bg,^extent,^flex_bg,^64bit"]);
    }
    args.push(img.to_str().unwrap());
    run("mkfs.ext4", &args);
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::from_vec(std::fs::read(img).unwrap()));
    let fs = Ext4::open(dev).unwrap();
    let sb = fs.superblock();
    let groups = sb.group_count;
    assert!(groups >= 2, "the base image has {groups} groups");
    let gds: Vec<_> = (0..groups).map(|g| fs.group_desc(g).unwrap()).collect();
    let gd = gds
        .iter()
        .map(|d| (d.bg_block_bitmap, d.bg_inode_bitmap, d.bg_inode_table))
        .collect();
    let free = gds
        .iter()
        .map(|d| (d.bg_free_blocks_count, d.bg_free_inodes_count))
        .collect();
    let bmap = |f: &str, l: u32| -> u64 {
        let out = run(
            "debugfs",
            &["-R", &format!("bmap /{f} {l}"), img.to_str().unwrap()],
        );
        out.trim().parse().unwrap()
    };
    let big_ind = if flavour == Flavour::Plain {
        let out = run("debugfs", &["-R", "stat /big", img.to_str().unwrap()]);
        // "(IND):1234" in the BLOCKS list.
        let at = out.find("(IND):").expect("/big has an indirect block") + 6;
        out[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    } else {
        0
    };
    let itable12 = fs.inode_offset(12).unwrap() / u64::from(sb.block_size);
    let root = run("debugfs", &["-R", "bmap <2> 0", img.to_str().unwrap()]);
    Layout {
        blocks: sb.s_blocks_count,
        ipg: sb.s_inodes_per_group,
        groups,
        gd,
        free,
        a: bmap("a", 0),
        b: bmap("b", 0),
        big: bmap("big", 0),
        big_ind,
        itable12,
        root: root.trim().parse().unwrap(),
        last_n: sb.blocks_in_group(groups - 1),
    }
}

/// Runs `cmds` in one debugfs -w session (so a later command still works on a filesystem an
/// earlier one damaged).
/// Each `set_bg N` is followed by `set_bg N checksum calc`: the damage is in the fields, not
/// in the descriptor's checksum (which would be refused before anything else is looked at).
fn debugfs(img: &Path, cmds: &[String]) {
    let f = img.with_extension("cmds");
    let mut script = String::new();
    for c in cmds {
        script += c;
        script.push('\n');
        if let Some(g) = c.strip_prefix("set_bg ") {
            let g = g.split(' ').next().unwrap();
            script += &format!("set_bg {g} checksum calc\n");
        }
    }
    std::fs::write(&f, script).unwrap();
    let (code, out) = run_status(
        "debugfs",
        &["-w", "-f", f.to_str().unwrap(), img.to_str().unwrap()],
    );
    // debugfs exits 0 whatever its commands say: any line but the echo of a command, its
    // banner and "already clear/set" warnings is a failed command.
    let bad: Vec<&str> = out
        .lines()
        .filter(|l| {
            !(l.starts_with("debugfs")
                || l.contains("Warning: ")
                || l.starts_with("Checksum set to")
                || l.is_empty())
        })
        .collect();
    assert!(
        code == 0 && bad.is_empty(),
        "debugfs {cmds:?}: {}",
        bad.join("\n")
    );
}

/// Writes `bytes` at byte `off` of the image.
fn patch(img: &Path, off: u64, bytes: &[u8]) {
    let mut b = std::fs::read(img).unwrap();
    b[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
    std::fs::write(img, b).unwrap();
}

/// Clears bits `from..8192` of the 1 KiB bitmap block `blk` (the padding after the group's
/// last block or inode, which must stay set; a block bitmap's checksum covers it).
fn clear_padding(img: &Path, blk: u64, from: u64) {
    let mut b = std::fs::read(img).unwrap();
    let base = (blk * 1024) as usize;
    for i in from as usize..8192 {
        b[base + i / 8] &= !(1 << (i % 8));
    }
    std::fs::write(img, b).unwrap();
}

/// What e2fsck -fn complains about: its problem lines, with the numbers of count lines
/// normalised (a new file changes a count that was already wrong, not its wrongness). None
/// when e2fsck cannot check the filesystem at all (exit 8 and up).
fn complaints(img: &Path) -> Option<BTreeSet<String>> {
    let p = img.to_str().unwrap();
    let (code, out) = run_status("e2fsck", &["-fn", p]);
    if !(0..8).contains(&code) {
        return None;
    }
    let set = out
        .lines()
        .map(str::trim)
        .filter(|l| {
            !(l.is_empty()
                || l.starts_with(&format!("{p}: "))
                || l.starts_with("e2fsck ")
                || l.starts_with("Pass ")
                || l.starts_with("***")
                || l.contains("WARNING"))
        })
        .map(|l| {
            if l.contains("count") {
                l.chars()
                    .map(|c| if c.is_ascii_digit() { 'N' } else { c })
                    .collect::<String>()
            } else {
                l.to_string()
            }
        })
        .collect();
    Some(set)
}

/// What a case does to the image.
type Damage = Box<dyn Fn(&Layout, &Path)>;

/// One damage: a name, the base flavour, and what to do to the image.
struct Case {
    name: &'static str,
    flavour: Flavour,
    damage: Damage,
}

fn dbg(cmds: impl Fn(&Layout) -> Vec<String> + 'static) -> Damage {
    Box::new(move |l, img| debugfs(img, &cmds(l)))
}

fn cases() -> Vec<Case> {
    use Flavour::*;
    let c = |name, flavour, damage| Case {
        name,
        flavour,
        damage,
    };
    let all = |f: Flavour| -> Vec<Case> {
        vec![
            // f_bitmaps: a cleared inode-bitmap bit (lost+found's, a file's, a directory's,
            // a reserved inode's) and a cleared block-bitmap bit of a file's block.
            c(
                "lost+found inode bit clear",
                f,
                dbg(|_| vec!["freei <11>".into()]),
            ),
            c("file inode bit clear", f, dbg(|_| vec!["freei /a".into()])),
            c(
                "directory inode bit clear",
                f,
                dbg(|_| vec!["freei /dir".into()]),
            ),
            c(
                "reserved inode bit clear",
                f,
                dbg(|_| vec!["freei <7>".into()]),
            ),
            c(
                "file block bit clear",
                f,
                dbg(|l| vec![format!("freeb {}", l.a)]),
            ),
            // j_recover_csum2_*: empty bitmaps (a replay that leaves them zeroed), counts
            // kept in step (debugfs) or not (the bitmap blocks zeroed under them).
            c(
                "empty bitmaps, counts in step",
                f,
                dbg(|l| {
                    vec![
                        "freeb 1 8192".into(),
                        format!("freei <1> {}", l.ipg),
                        "set_bg 0 free_blocks_count 8192".into(),
                        format!("set_bg 0 free_inodes_count {}", l.ipg),
                    ]
                }),
            ),
            c(
                "bitmap blocks zeroed",
                f,
                dbg(|l| {
                    vec![
                        format!("zap_block {}", l.gd[0].0),
                        format!("zap_block {}", l.gd[0].1),
                    ]
                }),
            ),
            // f_miss_blk_bmap and friends: descriptor pointers at 0 or into metadata/data.
            c(
                "block bitmap at 0",
                f,
                dbg(|_| vec!["set_bg 0 block_bitmap 0".into()]),
            ),
            c(
                "group 1 block bitmap at 0",
                f,
                dbg(|_| vec!["set_bg 1 block_bitmap 0".into()]),
            ),
            c(
                "block bitmap on the superblock",
                f,
                dbg(|_| vec!["set_bg 1 block_bitmap 1".into()]),
            ),
            c(
                "block bitmap inside an inode table",
                f,
                dbg(|l| vec![format!("set_bg 0 block_bitmap {}", l.gd[0].2 + 1)]),
            ),
            c(
                "block bitmap on a file's data",
                f,
                dbg(|l| vec![format!("set_bg 0 block_bitmap {}", l.b)]),
            ),
            c(
                "inode bitmap at 0",
                f,
                dbg(|_| vec!["set_bg 0 inode_bitmap 0".into()]),
            ),
            c(
                "inode bitmap on a block bitmap",
                f,
                dbg(|l| vec![format!("set_bg 1 inode_bitmap {}", l.gd[1].0)]),
            ),
            // f_illitable_flexbg: the inode table at 0, on another table, on file data.
            c(
                "inode table at 0",
                f,
                dbg(|_| vec!["set_bg 1 inode_table 0".into()]),
            ),
            c(
                "inode table on another group's",
                f,
                dbg(|l| vec![format!("set_bg 1 inode_table {}", l.gd[0].2)]),
            ),
            c(
                "inode table on a file's data",
                f,
                dbg(|l| vec![format!("set_bg 1 inode_table {}", l.a)]),
            ),
            // f_dup: a block owned by two files.
            c(
                "block owned by two files",
                f,
                dbg(|l| vec![format!("set_inode_field /b bmap[0] {}", l.a)]),
            ),
            c(
                "file block on an inode table",
                f,
                dbg(|l| vec![format!("set_inode_field /big bmap[1] {}", l.itable12)]),
            ),
            // f_badtable: inodes inside a block of the bad-blocks list; a bad block in a file.
            c(
                "bad block in the inode table",
                f,
                dbg(|l| {
                    vec![
                        format!("set_inode_field <1> block[0] {}", l.itable12),
                        "set_inode_field <1> size 1024".into(),
                        "set_inode_field <1> blocks 2".into(),
                    ]
                }),
            ),
            c(
                "bad block in a file",
                f,
                dbg(|l| {
                    vec![
                        format!("set_inode_field <1> block[0] {}", l.big),
                        "set_inode_field <1> size 1024".into(),
                        "set_inode_field <1> blocks 2".into(),
                    ]
                }),
            ),
            // f_overfsblks and wrong counts: group counts, superblock totals.
            c(
                "group free blocks too high",
                f,
                dbg(|_| vec!["set_bg 0 free_blocks_count 7000".into()]),
            ),
            c(
                "group free blocks too low",
                f,
                dbg(|_| vec!["set_bg 1 free_blocks_count 3".into()]),
            ),
            c(
                "group free blocks past the group",
                f,
                dbg(|_| vec!["set_bg 1 free_blocks_count 9000".into()]),
            ),
            c(
                "group free inodes wrong",
                f,
                dbg(|_| vec!["set_bg 0 free_inodes_count 250".into()]),
            ),
            c(
                "group directory count wrong",
                f,
                dbg(|_| vec!["set_bg 0 used_dirs_count 9".into()]),
            ),
            c(
                "superblock free blocks wrong",
                f,
                dbg(|_| vec!["set_super_value free_blocks_count 12".into()]),
            ),
            c(
                "superblock free inodes wrong",
                f,
                dbg(|_| vec!["set_super_value free_inodes_count 5".into()]),
            ),
            // A leak (a bit set for a free block or inode): harmless, the writer may go on.
            c(
                "leaked block, counts in step",
                f,
                dbg(|l| {
                    vec![
                        format!("setb {}", l.blocks - 10),
                        format!(
                            "set_bg {} free_blocks_count {}",
                            l.groups - 1,
                            l.free[l.groups as usize - 1].0 - 1
                        ),
                    ]
                }),
            ),
            c(
                "leaked block",
                f,
                dbg(|l| vec![format!("setb {}", l.a + 200)]),
            ),
            c(
                "leaked inode, counts in step",
                f,
                dbg(|l| {
                    vec![
                        "seti <20>".into(),
                        format!("set_bg 0 free_inodes_count {}", l.free[0].1 - 1),
                    ]
                }),
            ),
            c("leaked inode", f, dbg(|_| vec!["seti <20>".into()])),
            // A directory entry naming a free inode: the allocator must not hand it out.
            c(
                "free inode still linked",
                f,
                dbg(|l| {
                    vec![
                        "freei /a".into(),
                        "set_inode_field /a links_count 0".into(),
                        format!("set_bg 0 free_inodes_count {}", l.free[0].1 + 1),
                    ]
                }),
            ),
            c(
                "cleared inode still linked",
                f,
                dbg(|l| {
                    vec![
                        "clri /a".into(),
                        "freei /a".into(),
                        format!("set_bg 0 free_inodes_count {}", l.free[0].1 + 1),
                    ]
                }),
            ),
            c(
                "directory inode cleared",
                f,
                dbg(|_| vec!["clri /dir".into()]),
            ),
            c("resize inode cleared", f, dbg(|_| vec!["clri <7>".into()])),
            c("journal inode cleared", f, dbg(|_| vec!["clri <8>".into()])),
            c(
                "journal on a file's data",
                f,
                dbg(|l| vec![format!("set_inode_field <8> bmap[3] {}", l.b)]),
            ),
            c("root inode cleared", f, dbg(|_| vec!["clri <2>".into()])),
            // f_baddir: the root directory's first entry's rec_len past the block.
            c(
                "root directory rec_len past the block",
                f,
                Box::new(|l, img| patch(img, l.root * 1024 + 4, &4000u16.to_le_bytes())),
            ),
            // f_end-bitmap: the padding of the last group's block bitmap and of an inode
            // bitmap cleared.
            c(
                "block bitmap padding clear",
                f,
                Box::new(|l, img| clear_padding(img, l.gd[l.groups as usize - 1].0, l.last_n)),
            ),
            c(
                "inode bitmap padding clear",
                f,
                Box::new(|l, img| clear_padding(img, l.gd[0].1, u64::from(l.ipg))),
            ),
            // f_zero_group: a whole primary descriptor zeroed.
            c(
                "group descriptor zeroed",
                f,
                dbg(|_| {
                    [
                        "block_bitmap",
                        "inode_bitmap",
                        "inode_table",
                        "free_blocks_count",
                        "free_inodes_count",
                        "used_dirs_count",
                    ]
                    .iter()
                    .map(|k| format!("set_bg 0 {k} 0"))
                    .collect()
                }),
            ),
        ]
    };
    let mut v = all(Csum);
    v.extend(all(Plain));
    v.extend([
        // f_uninit_disable: uninit flags and bg_itable_unused without uninit_bg.
        c(
            "itable_unused without uninit_bg",
            Plain,
            dbg(|_| vec!["set_bg 0 itable_unused 100".into()]),
        ),
        c(
            "uninit flags without uninit_bg",
            Plain,
            dbg(|_| vec!["set_bg 1 flags 3".into()]),
        ),
        // f_uninit_bad_free_inodes: more unused inodes than free ones.
        c(
            "itable_unused past the used inodes",
            Csum,
            dbg(|l| vec![format!("set_bg 0 itable_unused {}", l.ipg - 2)]),
        ),
        // f_uninit_set_inode_not_set: an inode in use in the never-used part of a table.
        c(
            "inode in use in the unused tail",
            Csum,
            dbg(|l| {
                vec![
                    "seti <100>".into(),
                    "set_inode_field <100> mode 0100644".into(),
                    "set_inode_field <100> links_count 1".into(),
                    format!("set_bg 0 free_inodes_count {}", l.free[0].1 - 1),
                    format!("set_bg 0 itable_unused {}", l.ipg - 20),
                ]
            }),
        ),
        c(
            "root directory block changed under its checksum",
            Csum,
            Box::new(|l, img| patch(img, l.root * 1024 + 1000, b"junk")),
        ),
        // j_recover_csum2_*: a journal whose replay empties group 0's bitmaps.
        c(
            "journal replay empties the bitmaps",
            Csum,
            Box::new(|l, img| {
                let z = img.with_extension("zeros");
                std::fs::write(&z, vec![0u8; 2048]).unwrap();
                let (bb, ib, _) = l.gd[0];
                debugfs(
                    img,
                    &[
                        "jo".into(),
                        format!("jw -b {bb},{ib} {}", z.display()),
                        "jc".into(),
                    ],
                );
            }),
        ),
        // f_extent_bad_node / f_zeroed_ext_header: a file's extent header overwritten.
        c(
            "extent header zeroed",
            Csum,
            dbg(|_| vec!["set_inode_field /big block[0] 0".into()]),
        ),
        // f_ind_inode_collision: an indirect block shared with another file or on metadata.
        c(
            "indirect block shared with a file",
            Plain,
            dbg(|l| vec![format!("set_inode_field /big2 block[IND] {}", l.big_ind)]),
        ),
        c(
            "indirect block on file data",
            Plain,
            dbg(|l| vec![format!("set_inode_field /big block[IND] {}", l.a)]),
        ),
        c(
            "indirect block on an inode table",
            Plain,
            dbg(|l| vec![format!("set_inode_field /big block[IND] {}", l.itable12)]),
        ),
        c(
            "file block on another file's indirect block",
            Plain,
            dbg(|l| vec![format!("set_inode_field /b block[0] {}", l.big_ind)]),
        ),
    ]);
    v
}

/// A user's write: `vdisk write /newfile --from FILE`, or `vdisk mkdir /newdir`.
#[derive(Clone, Copy, Debug)]
enum Op {
    Write,
    Mkdir,
}

/// Runs `op` on a copy of `damaged` through the read-write engine; the image after, or the
/// refusal.
fn apply(damaged: &[u8], op: Op) -> (Vec<u8>, Option<String>) {
    let dev = Arc::new(MemDevice::from_vec(damaged.to_vec()));
    let r = (|| -> Result<(), String> {
        let fs = Ext4Rw::open(dev.clone()).map_err(|e| e.to_string())?;
        match op {
            Op::Write => ops::write_file(&fs, b"/newfile", &mut payload().as_slice())
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Op::Mkdir => ops::mkdir(&fs, b"/newdir", 0o755, false)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }?;
        // As the CLI does before it exits: an error here is the command's error.
        FileSystemMut::flush(&fs).map_err(|e| e.to_string())
    })();
    (dev.to_vec(), r.err())
}

/// Reads back what `op` made, with the read-only engine.
fn read_back(img: &[u8], op: Op) -> Result<(), String> {
    let fs = Ext4::open(Arc::new(MemDevice::from_vec(img.to_vec()))).map_err(|e| e.to_string())?;
    match op {
        Op::Write => {
            let got = ops::read_file(&fs, b"/newfile").map_err(|e| e.to_string())?;
            if got != payload() {
                return Err(format!("/newfile reads back {} other bytes", got.len()));
            }
        }
        Op::Mkdir => {
            let ino = fs.resolve(b"/newdir", true).map_err(|e| e.to_string())?;
            let a = fs.getattr(ino).map_err(|e| e.to_string())?;
            if a.kind != FileKind::Dir {
                return Err(format!("/newdir is a {:?}", a.kind));
            }
        }
    }
    Ok(())
}

fn path_of(name: &str) -> PathBuf {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    scratch().join(format!("hostile-{s}.img"))
}

#[test]
fn damaged_filesystems_are_refused_or_not_made_worse() {
    let mut bases = Vec::new();
    for f in [Flavour::Csum, Flavour::Plain] {
        let img = scratch().join(format!("hostile-base-{f:?}.img"));
        let l = base(f, &img);
        let bytes = std::fs::read(&img).unwrap();
        // The harness itself: on the undamaged image both writes succeed and e2fsck stays
        // silent.
        assert!(
            complaints(&img).is_some_and(|c| c.is_empty()),
            "{f:?} base image not clean"
        );
        for op in [Op::Write, Op::Mkdir] {
            let (after, err) = apply(&bytes, op);
            assert_eq!(err, None, "{f:?} base: {op:?} failed");
            let p = img.with_extension("after");
            std::fs::write(&p, &after).unwrap();
            let c = complaints(&p);
            assert!(
                c.as_ref().is_some_and(|c| c.is_empty()),
                "{f:?} base: {op:?} left {c:?}"
            );
            read_back(&after, op).unwrap();
        }
        bases.push((f, l, bytes));
    }
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for case in cases() {
        let (_, l, bytes) = bases.iter().find(|b| b.0 == case.flavour).unwrap();
        let img = path_of(&format!("{:?} {}", case.flavour, case.name));
        std::fs::write(&img, bytes).unwrap();
        (case.damage)(l, &img);
        let damaged = std::fs::read(&img).unwrap();
        let what = format!("{:?}: {}", case.flavour, case.name);
        assert!(&damaged != bytes, "{what}: the damage changed nothing");
        // A journal to recover is replayed before anything else, by the writer as by the
        // kernel: the "before" is e2fsck's view after the same replay, and a refusal may come
        // after the replay was written.
        let recover = u32::from_le_bytes(damaged[0x460..0x464].try_into().unwrap()) & 0x4 != 0;
        if recover {
            let p = img.with_extension("replayed");
            std::fs::write(&p, &damaged).unwrap();
            run_status("e2fsck", &["-E", "journal_only", "-y", p.to_str().unwrap()]);
            std::fs::rename(&p, &img).unwrap();
        }
        // None: e2fsck cannot check it, so the only right answer is a refusal.
        let before = complaints(&img);
        if before.as_ref().is_some_and(|b| b.is_empty()) {
            failures.push(format!("{what}: e2fsck sees no damage"));
            continue;
        }
        for op in [Op::Write, Op::Mkdir] {
            let (after, err) = apply(&damaged, op);
            match err {
                Some(msg) => {
                    report.push(format!("{what}: {op:?} refused: {msg}"));
                    if msg.contains('\n') || msg.is_empty() {
                        failures.push(format!("{what}: {op:?} refused with not one line: {msg:?}"));
                    }
                    if recover && after != damaged {
                        let p = img.with_extension("after");
                        std::fs::write(&p, &after).unwrap();
                        let new = match (complaints(&p), &before) {
                            (Some(now), Some(b)) => now.difference(b).cloned().collect(),
                            _ => vec!["e2fsck -fn cannot check it".to_string()],
                        };
                        if !new.is_empty() {
                            failures.push(format!(
                                "{what}: {op:?} replayed the journal, refused ({msg}), and left {new:?}"
                            ));
                        }
                    } else if after != damaged {
                        failures.push(format!(
                            "{what}: {op:?} refused ({msg}) but changed the image"
                        ));
                    }
                }
                None => {
                    let p = img.with_extension("after");
                    std::fs::write(&p, &after).unwrap();
                    let Some(before) = &before else {
                        failures.push(format!(
                            "{what}: {op:?} wrote a filesystem e2fsck -fn cannot check"
                        ));
                        continue;
                    };
                    let Some(now) = complaints(&p) else {
                        failures.push(format!("{what}: {op:?} left e2fsck -fn unable to check"));
                        continue;
                    };
                    let new: Vec<_> = now.difference(before).cloned().collect();
                    report.push(format!("{what}: {op:?} done, new e2fsck lines: {new:?}"));
                    if !new.is_empty() {
                        failures.push(format!("{what}: {op:?} made it worse: {new:?}"));
                    }
                    if let Err(e) = read_back(&after, op) {
                        failures.push(format!("{what}: {op:?} done but {e}"));
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&img);
        let _ = std::fs::remove_file(img.with_extension("after"));
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
