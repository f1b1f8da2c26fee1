//! Reads of images with a dirty log, the kernel's own log recovery as the judge: an image is
//! populated, changed through a kernel mount (mutate.py), shut down with the log flushed but
//! nothing written home (`xfs_io shutdown -f`), and then
//!
//! - a copy mounted by the kernel (which replays the log) gives the expected tree;
//! - our read-only open of the unreplayed image (replay in memory) must show exactly that
//!   tree, and leave the image unchanged;
//! - our replay written home (`recover_home`) must pass `xfs_repair -n` and show the same tree
//!   to our reader and to a kernel mount that finds the log clean.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use vdisk_fs::FileSystem as _;
use vdisk_xfs::Xfs;

const CENTOS7: &[&str] = &[
    "-m",
    "crc=1,finobt=0",
    "-i",
    "sparse=0",
    "-m",
    "reflink=0,rmapbt=0",
];

fn mutate(mnt: &Path, round: &str) {
    run(Command::new("timeout")
        .arg("120")
        .arg("python3")
        .arg(tests_dir().join("mutate.py"))
        .arg(mnt)
        .arg(round));
}

fn sha(p: &Path) -> String {
    run(Command::new("sha256sum").arg(p))
}

/// Builds a populated image and leaves it with a dirty log; returns it with the kernel's
/// manifest of a replayed copy. With `hold`, files unlinked while open are on the AGI
/// unlinked lists at the crash; without, every inactivation has finished.
fn dirty_image(dir: &Path, opts: &[&str], hold: bool) -> (std::path::PathBuf, String) {
    dirty_image_mounted(dir, opts, hold, "loop")
}

/// As [`dirty_image`], the changes made through a mount with `mount_opts`.
fn dirty_image_mounted(
    dir: &Path,
    opts: &[&str],
    hold: bool,
    mount_opts: &str,
) -> (std::path::PathBuf, String) {
    let (img, _) = build_image(dir, opts);
    let mnt = dir.join("mnt");
    mount_with(&img, &mnt, mount_opts);
    mutate(&mnt, "data");
    run(&mut Command::new("sync"));
    mutate(&mnt, "meta");
    // The log forced and inactivations finished; metadata still not home.
    run(&mut Command::new("sync"));
    // Open but unlinked inodes at the crash, more than the AGI has buckets: the unlinked
    // lists chain through di_next_unlinked, logged in inode buffers.
    let held: Vec<std::fs::File> = (0..if hold { 80 } else { 0 })
        .map(|i| {
            let p = mnt.join(format!("new/held-{i}"));
            let f = std::fs::File::create(&p).unwrap();
            std::fs::remove_file(&p).unwrap();
            f
        })
        .collect();
    shutdown(&mnt);
    drop(held);
    umount(&mnt);
    let st = {
        let dev = open_dev(&img);
        let log = vdisk_xfs_log::Log::open(&*dev).unwrap();
        log.state().unwrap()
    };
    assert!(
        !st.clean,
        "the shut-down image must need log recovery: {st:?}"
    );
    log_covers_what_we_replay(&img, &st, hold);
    let kcopy = dir.join("kernel.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&img)
        .arg(&kcopy));
    let kernel = kernel_manifest(&kcopy, &mnt);
    std::fs::remove_file(&kcopy).unwrap();
    (img, kernel)
}

/// The dirty log really holds the item kinds replay must handle: buffers of the main v5
/// types (plain and inode buffers), ICREATE, and inode items with extent lists, local data,
/// B+tree roots and attribute forks.
fn log_covers_what_we_replay(img: &Path, st: &vdisk_xfs_log::LogState, hold: bool) {
    use std::collections::BTreeSet;
    let dev = open_dev(img);
    let log = vdisk_xfs_log::Log::open(&*dev).unwrap();
    let mut kinds = BTreeSet::new();
    for t in log.transactions(st).unwrap() {
        for it in t.items().unwrap() {
            let r = &it.regions[0];
            let le16 = |o: usize| u16::from_le_bytes([r[o], r[o + 1]]);
            match it.name() {
                Some("BUF") => {
                    let flags = le16(4);
                    if flags & 1 != 0 {
                        kinds.insert("inode-buffer".to_string());
                    } else if flags & 2 == 0 {
                        kinds.insert(format!("buf-type-{}", flags >> 11));
                    }
                }
                Some("INO") => {
                    let fields = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
                    for (bit, name) in [(2, "ddata"), (4, "dext"), (8, "dbroot"), (0x40, "adata")] {
                        if fields & bit != 0 {
                            kinds.insert(name.to_string());
                        }
                    }
                }
                Some(n) => {
                    kinds.insert(n.to_string());
                }
                None => {}
            }
        }
    }
    // btree, AGF, AGI, dir block, dir data, dir leafn, DA node.
    for want in [4, 5, 7, 10, 11, 14, 15] {
        assert!(
            kinds.contains(&format!("buf-type-{want}")),
            "type {want}: {kinds:?}"
        );
    }
    for want in ["ICR", "ddata", "dext", "dbroot", "adata"] {
        assert!(kinds.contains(want), "{want}: {kinds:?}");
    }
    if hold {
        assert!(kinds.contains("inode-buffer"), "{kinds:?}");
    }
}

fn replayed_reads_match_the_kernel(opts: &[&str]) {
    replayed_reads_match_the_kernel_mounted(opts, "loop")
}

fn replayed_reads_match_the_kernel_mounted(opts: &[&str], mount_opts: &str) {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, kernel) = dirty_image_mounted(dir.path(), opts, false, mount_opts);
    assert!(kernel.contains("/new/a/f003 "), "{kernel}");
    // Read-only: replayed in memory, the image untouched.
    let before = sha(&img);
    {
        let fs = Xfs::open(open_dev(&img)).unwrap();
        assert!(fs.log_replayed_in_memory());
        assert_same_manifest(&kernel, &our_manifest(&fs), "replayed in memory");
    }
    assert_eq!(sha(&img), before, "a read-only open wrote the image");
    // Written home: clean for xfs_repair, the same tree for us and for the kernel.
    let home = dir.path().join("home.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&img)
        .arg(&home));
    let stats = vdisk_xfs_log::recover_home(&open_rw(&home))
        .unwrap()
        .expect("the log was dirty");
    eprintln!("replayed home: {stats:?}");
    assert!(stats.transactions > 0 && stats.buffers > 0 && stats.inodes > 0);
    {
        let dev = open_dev(&home);
        let log = vdisk_xfs_log::Log::open(&*dev).unwrap();
        assert!(log.state().unwrap().clean);
    }
    xfs_repair_clean(&home);
    let fs = Xfs::open(open_dev(&home)).unwrap();
    assert!(!fs.log_replayed_in_memory());
    assert_same_manifest(&kernel, &our_manifest(&fs), "replayed home");
    let mnt = dir.path().join("mnt");
    assert_same_manifest(&kernel, &kernel_manifest(&home, &mnt), "kernel after home");
    xfs_repair_clean(&home);
}

#[test]
fn centos7_feature_set() {
    replayed_reads_match_the_kernel(CENTOS7);
}

#[test]
fn current_defaults() {
    replayed_reads_match_the_kernel(&[]);
}

/// `Xfs::replay_home` on a filesystem opened over a dirty log: afterwards the device itself
/// reads the same tree and its log is clean.
#[test]
fn replay_home_through_the_engine() {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, kernel) = dirty_image(dir.path(), CENTOS7, false);
    let dev = std::sync::Arc::new(open_rw(&img));
    let mut fs = Xfs::open(dev.clone()).unwrap();
    assert!(fs.log_replayed_in_memory());
    assert!(fs.replay_home().unwrap());
    assert!(!fs.log_replayed_in_memory());
    assert!(!fs.replay_home().unwrap(), "nothing left to replay");
    assert_same_manifest(&kernel, &our_manifest(&fs), "after replay_home");
    drop(fs);
    xfs_repair_clean(&img);
}

/// Files unlinked while open at the crash: read-only reads still match the kernel; written
/// home, the inodes stay on the AGI unlinked lists (the kernel would free them after replay),
/// and `unlinked_inodes` names exactly the inodes `xfs_repair -n` then complains about.
#[test]
fn open_unlinked_inodes_at_the_crash() {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, kernel) = dirty_image(dir.path(), CENTOS7, true);
    let fs = Xfs::open(open_dev(&img)).unwrap();
    assert_same_manifest(&kernel, &our_manifest(&fs), "replayed in memory");
    let in_memory = vdisk_xfs_log::unlinked_inodes(&*open_dev(&img)).unwrap();
    assert!(in_memory.is_empty(), "on disk before replay: {in_memory:?}");
    drop(fs);
    vdisk_xfs_log::recover_home(&open_rw(&img))
        .unwrap()
        .unwrap();
    let mut ours = vdisk_xfs_log::unlinked_inodes(&*open_dev(&img)).unwrap();
    ours.sort();
    assert!(ours.len() >= 80, "{ours:?}");
    let out = Command::new("timeout")
        .args(["120", "xfs_repair", "-n"])
        .arg(&img)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let mut theirs = std::collections::BTreeSet::new();
    for l in text.lines() {
        let num = |s: &str| {
            s.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse::<u64>()
        };
        if let Some(r) = l.strip_prefix("disconnected inode ") {
            theirs.insert(num(r.split(',').next().unwrap()).unwrap());
        } else if let Some(r) = l.split("(inode=").nth(1) {
            theirs.insert(num(r).unwrap());
        } else if let Some(r) = l.strip_prefix("Would clear next_unlinked in inode ") {
            theirs.insert(num(r).unwrap());
        } else if let Some(r) = l.strip_prefix("would have reset inode ") {
            // Phase 7, for an inode phase 6 would move to lost+found.
            assert!(r.ends_with(" nlinks from 0 to 1"), "{l}");
            theirs.insert(num(r.split(' ').next().unwrap()).unwrap());
        } else {
            let benign = l.is_empty()
                || l.starts_with("Phase ")
                || l.starts_with("        - ")
                || l.starts_with("No modify flag set")
                || l.contains("host filesystem geometry")
                || l.contains("sector size mismatch")
                || l.starts_with("the image and the host");
            assert!(benign, "xfs_repair -n complains of more: {l}\n{text}");
        }
    }
    let ours: std::collections::BTreeSet<u64> = ours.into_iter().collect();
    assert_eq!(theirs, ours, "{text}");
    let mnt = dir.path().join("mnt");
    assert_same_manifest(&kernel, &kernel_manifest(&img, &mnt), "kernel after home");
}

/// Reads the whole tree, tolerating errors (each must be one line), within a budget.
fn walk_tolerant(fs: &Xfs, ino: u64, depth: u32, budget: &mut u32) {
    use vdisk_fs::{FileKind, FileSystem};
    let one_line = |e: vdisk_block::Error| {
        let t = e.to_string();
        assert!(!t.is_empty() && !t.contains('\n'), "{t:?}");
    };
    let entries = match fs.readdir_all(ino) {
        Ok(e) => e,
        Err(e) => return one_line(e),
    };
    for e in entries {
        if *budget == 0 || e.name == "." || e.name == ".." {
            continue;
        }
        *budget -= 1;
        match fs.getattr(e.ino) {
            Err(err) => one_line(err),
            Ok(a) => match a.kind {
                FileKind::File => {
                    let mut buf = vec![0u8; 64 << 10];
                    if let Err(err) = fs.read(e.ino, 0, &mut buf) {
                        one_line(err);
                    }
                }
                FileKind::Symlink => {
                    if let Err(err) = fs.readlink(e.ino) {
                        one_line(err);
                    }
                }
                FileKind::Dir if depth < 12 => walk_tolerant(fs, e.ino, depth + 1, budget),
                _ => {}
            },
        }
        match fs.listxattr(e.ino) {
            Ok(names) => {
                for n in names {
                    if let Err(err) = fs.getxattr(e.ino, &n) {
                        one_line(err);
                    }
                }
            }
            Err(err) => one_line(err),
        }
    }
}

/// A hostile log: random bytes of the committed records changed, and (in half the rounds)
/// the record CRCs recomputed so the change reaches the item parsers. Opening and reading
/// the whole tree answers with one-line errors or reads; never a panic or a hang.
#[test]
fn hostile_log_records() {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    use vdisk_block::BlockDevice;
    use vdisk_xfs_log::record::record_crc;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("h.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    run(Command::new("timeout")
        .args(["60", "mkfs.xfs", "-q", "-f"])
        .args(CENTOS7)
        .arg(&img));
    let mnt = dir.path().join("mnt");
    mount(&img, &mnt);
    let out = Command::new("python3")
        .arg(tests_dir().join("populate.py"))
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(out.status.success());
    shutdown(&mnt);
    umount(&mnt);
    let dev = open_rw(&img);
    let log = vdisk_xfs_log::Log::open(&dev).unwrap();
    let st = log.state().unwrap();
    assert!(!st.clean);
    let base = log.geometry().log_offset;
    // The records from tail to head: (block, header blocks, data blocks, h_len).
    let mut recs = Vec::new();
    let mut blk = u64::from(st.tail.block());
    while blk != st.head_blk {
        let (h, _) = log.read_record(blk).unwrap();
        recs.push((blk, h.header_blocks(), h.data_blocks(), h.h_len as usize));
        blk = (blk + h.header_blocks() + h.data_blocks()) % log.geometry().log_bbs;
        assert!(recs.len() < 100_000);
    }
    assert!(!recs.is_empty());
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut errors, mut opened) = (0, 0);
    for round in 0..60 {
        let (rblk, hblks, dblks, h_len) = recs[(next() % recs.len() as u64) as usize];
        let span = ((hblks + dblks) * 512) as usize;
        let at = base + rblk * 512;
        let mut saved = vec![0u8; span];
        dev.read_at(&mut saved, at).unwrap();
        let mut rec = saved.clone();
        let hdr_len = (hblks * 512) as usize;
        for _ in 0..1 + next() % 3 {
            let o = hdr_len + (next() % h_len.max(1) as u64) as usize;
            // Keep each sector's cycle stamp: only the words behind it change.
            if o % 512 >= 4 {
                rec[o] ^= next() as u8 | 1;
            }
        }
        if round % 2 == 0 {
            let exts: Vec<&[u8]> = rec[512..hdr_len].chunks(512).collect();
            let crc = record_crc(&rec[..512], &exts, &rec[hdr_len..hdr_len + h_len]);
            rec[32..36].copy_from_slice(&crc.to_le_bytes());
        }
        dev.write_at(&rec, at).unwrap();
        match Xfs::open(std::sync::Arc::new(open_rw(&img))) {
            Ok(fs) => {
                opened += 1;
                let mut budget = 1500;
                walk_tolerant(&fs, fs.root_ino(), 0, &mut budget);
            }
            Err(e) => {
                errors += 1;
                let t = e.to_string();
                assert!(!t.is_empty() && !t.contains('\n'), "{t:?}");
            }
        }
        dev.write_at(&saved, at).unwrap();
    }
    eprintln!("hostile log: {errors} opens refused, {opened} opened and read");
    assert!(errors > 0 && opened > 0, "errors {errors}, opened {opened}");
}

/// A crash in the middle of the last log write, as the kernel meets it: (a) the last record
/// torn (its CRC fails), (b) data blocks of a record written without its header. The kernel
/// cuts such a head off and replays the rest; our read-only open must show what a kernel
/// mount of the same damaged image shows, and our replay written home must pass
/// `xfs_repair -n` and show it too.
#[test]
fn torn_and_unfinished_last_writes() {
    if !can_loop_mount() {
        eprintln!("skipped: needs root, mkfs.xfs and loop devices");
        return;
    }
    use vdisk_block::BlockDevice;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("t.img");
    // An odd size: the last AG is shorter than the others.
    std::fs::File::create(&img)
        .unwrap()
        .set_len((311 << 20) + 7 * 4096)
        .unwrap();
    run(Command::new("timeout")
        .args(["60", "mkfs.xfs", "-q", "-f"])
        .args(CENTOS7)
        .arg(&img));
    let mnt = dir.path().join("mnt");
    mount(&img, &mnt);
    for round in 0..3 {
        for i in 0..40 {
            let d = mnt.join(format!("r{round}/d{}", i % 4));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("f{i}")), vec![b'a' + round as u8; 100 * i]).unwrap();
        }
        run(&mut Command::new("sync"));
    }
    shutdown(&mnt);
    umount(&mnt);
    let (st, last, log_offset) = {
        let dev = open_dev(&img);
        let log = vdisk_xfs_log::Log::open(&*dev).unwrap();
        let st = log.state().unwrap();
        (st.clone(), st.last_record_blk, log.geometry().log_offset)
    };
    assert!(!st.clean);
    for case in ["torn", "unfinished"] {
        let bad = dir.path().join(format!("{case}.img"));
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg(&img)
            .arg(&bad));
        {
            let dev = open_rw(&bad);
            if case == "torn" {
                let off = log_offset + (last + 1) * 512 + 200;
                let mut b = [0u8; 1];
                dev.read_at(&mut b, off).unwrap();
                dev.write_at(&[b[0] ^ 0x5a], off).unwrap();
            } else {
                // Stamped like the data of a record of the current cycle, with no header.
                for k in 0..12u64 {
                    let mut blk = [0x77u8; 512];
                    blk[..4].copy_from_slice(&st.head_cycle.to_be_bytes());
                    dev.write_at(&blk, log_offset + (st.head_blk + k) * 512)
                        .unwrap();
                }
            }
            dev.flush().unwrap();
        }
        let kcopy = dir.path().join("k.img");
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg(&bad)
            .arg(&kcopy));
        let kernel = kernel_manifest(&kcopy, &mnt);
        std::fs::remove_file(&kcopy).unwrap();
        let fs = Xfs::open(open_dev(&bad)).unwrap();
        assert_same_manifest(&kernel, &our_manifest(&fs), case);
        drop(fs);
        vdisk_xfs_log::recover_home(&open_rw(&bad)).unwrap();
        xfs_repair_clean(&bad);
        let fs = Xfs::open(open_dev(&bad)).unwrap();
        assert!(!fs.log_replayed_in_memory(), "{case}: log clean after home");
        assert_same_manifest(&kernel, &our_manifest(&fs), case);
        drop(fs);
        assert_same_manifest(&kernel, &kernel_manifest(&bad, &mnt), case);
    }
}

#[test]
fn rmapbt_and_small_blocks() {
    replayed_reads_match_the_kernel(&["-m", "rmapbt=1", "-b", "size=1024", "-n", "size=4096"]);
}

/// Log records of 256 KiB (`logbsize=256k`): extended record headers, cycle data for every
/// 32 KiB of a record.
#[test]
fn big_log_records() {
    replayed_reads_match_the_kernel_mounted(&[], "loop,logbsize=256k");
}
