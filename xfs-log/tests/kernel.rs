//! The log state of images made by mkfs.xfs and left dirty by the kernel (`xfs_io shutdown -f`),
//! checked against `xfs_logprint`. Needs root, loop devices and xfsprogs; skips otherwise.

use std::path::Path;
use std::process::Command;
use vdisk_raw::{OpenOptions, RawFile};
use vdisk_xfs_log::Log;

fn have_tools() -> bool {
    Command::new("mkfs.xfs").arg("-V").output().is_ok()
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("60")
        .arg(cmd)
        .args(args)
        .output()
        .expect("run tool");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mkfs(path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(300 << 20).unwrap();
    run("mkfs.xfs", &["-q", "-f", path.to_str().unwrap()]);
}

fn state(path: &Path) -> vdisk_xfs_log::LogState {
    let dev = RawFile::open(
        path,
        &OpenOptions {
            read_only: true,
            force_share: true,
        },
    )
    .unwrap();
    let log = Log::open(&dev).unwrap();
    log.state().unwrap()
}

#[test]
fn fresh_mkfs_log_is_clean() {
    if !have_tools() {
        eprintln!("skipped: no mkfs.xfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.xfs");
    mkfs(&img);
    let s = state(&img);
    assert!(s.clean, "{s:?}");
    let lp = run("xfs_logprint", &["-d", img.to_str().unwrap()]);
    assert!(lp.contains("HEADER Cycle 1"), "{lp}");
}

#[test]
fn godown_leaves_a_dirty_log() {
    if !have_tools() || !nix_root() {
        eprintln!("skipped: needs root and xfsprogs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.xfs");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    mkfs(&img);
    let (i, m) = (img.to_str().unwrap(), mnt.to_str().unwrap());
    run("mount", &["-o", "loop", i, m]);
    for k in 0..50 {
        std::fs::create_dir_all(mnt.join(format!("d{}/e{k}", k % 5))).unwrap();
        std::fs::write(mnt.join(format!("d{}/f{k}", k % 5)), b"hello").unwrap();
    }
    let godown = Command::new("timeout")
        .args(["60", "xfs_io", "-x", "-c", "shutdown -f", m])
        .status();
    let _ = Command::new("umount").arg(m).status();
    assert!(godown.unwrap().success());
    let s = state(&img);
    assert!(!s.clean, "{s:?}");
    assert!(u64::from(s.tail.block()) != s.head_blk || s.tail.cycle() != s.head_cycle);
    // The transactions we read are the ones xfs_logprint -t prints, item by item.
    {
        let dev = RawFile::open(
            &img,
            &OpenOptions {
                read_only: true,
                force_share: true,
            },
        )
        .unwrap();
        let log = Log::open(&dev).unwrap();
        let txs = log.transactions(&s).unwrap();
        assert!(!txs.is_empty());
        let mut ours = Vec::new();
        for t in &txs {
            ours.push(format!("TRANS:{:#x}", t.tid));
            for it in t.items().unwrap() {
                ours.push(it.name().unwrap_or("?").to_string());
            }
        }
        let lp = run("xfs_logprint", &["-t", i]);
        let theirs: Vec<String> = lp
            .lines()
            .filter_map(|l| {
                if let Some(rest) = l.strip_prefix("TRANS: tid:") {
                    let tid = rest.split_whitespace().next()?;
                    return Some(format!("TRANS:{tid}"));
                }
                let (tok, _) = l.split_once(": ")?;
                (!tok.starts_with([' ', '\t']) && tok.chars().all(|c| c.is_ascii_uppercase()))
                    .then(|| tok.to_string())
            })
            .collect();
        assert!(ours.len() > 10, "{ours:?}");
        // Every committed transaction replays into the overlay, buffers and inodes both.
        let ov = vdisk_xfs_log::recover::Overlay::new(&dev);
        let stats = vdisk_xfs_log::recover::recover(&log, &s, &ov).unwrap();
        let committed = txs.iter().filter(|t| t.committed).count();
        assert_eq!(stats.transactions, committed, "{stats:?}");
        assert!(stats.buffers > 0 && stats.inodes > 0, "{stats:?}");
        assert_eq!(ours, theirs, "{lp}");
    }
    // A copy with one flipped byte in the last record's data fails its CRC, in one line.
    let bad = dir.path().join("bad.xfs");
    run("cp", &["--sparse=always", i, bad.to_str().unwrap()]);
    {
        use vdisk_block::BlockDevice;
        let dev = RawFile::open(&bad, &OpenOptions::default()).unwrap();
        let log = Log::open(&dev).unwrap();
        let off = log.geometry().log_offset + (s.last_record_blk + 1) * 512 + 100;
        let mut b = [0u8; 1];
        dev.read_at(&mut b, off).unwrap();
        b[0] ^= 0x55;
        dev.write_at(&b, off).unwrap();
        let e = log.state().unwrap_err().to_string();
        assert!(e.contains("CRC mismatch"), "{e}");
    }
    // The kernel agrees that the log needs replay: mounting replays it, then it is clean.
    run("mount", &["-o", "loop", i, m]);
    assert!(mnt.join("d0/f0").exists());
    run("umount", &[m]);
    let s = state(&img);
    assert!(s.clean, "{s:?}");
}

fn nix_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

#[test]
fn kernel_replays_our_buffer_transaction() {
    if !have_tools() || !nix_root() {
        eprintln!("skipped: needs root and xfsprogs");
        return;
    }
    use vdisk_block::BlockDevice;
    use vdisk_xfs_log::writer::{BufUpdate, XFS_BLFT_SB_BUF};
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.xfs");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    mkfs(&img);
    let (i, m) = (img.to_str().unwrap(), mnt.to_str().unwrap());
    {
        let dev = RawFile::open(&img, &OpenOptions::default()).unwrap();
        let log = Log::open(&dev).unwrap();
        let st = log.state().unwrap();
        let mut sb = vec![0u8; 512];
        dev.read_at(&mut sb, 0).unwrap();
        let before = sb.clone();
        sb[108..120].copy_from_slice(b"vdisklog\0\0\0\0");
        let upd = BufUpdate {
            daddr: 0,
            data: sb,
            blft: XFS_BLFT_SB_BUF,
        };
        let st2 = log.write_buffers(&st, 0x1234_5678, &[upd]).unwrap();
        assert!(!st2.clean, "{st2:?}");
        // Nothing went home: the superblock on disk is unchanged.
        let mut now = vec![0u8; 512];
        dev.read_at(&mut now, 0).unwrap();
        assert_eq!(now, before);
        // We read our own transaction back.
        let txs = log.transactions(&st2).unwrap();
        assert_eq!(txs.len(), 1);
        assert!(txs[0].committed);
        let items = txs[0].items().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].name(), Some("BUF"));
    }
    let lp = run("xfs_logprint", &["-t", i]);
    assert!(
        lp.contains("<DIRTY>") && lp.contains("TRANS: tid:0x12345678"),
        "{lp}"
    );
    assert!(lp.contains("SUPER Block Buffer"), "{lp}");
    // The kernel's recovery applies it.
    run("mount", &["-o", "loop", i, m]);
    run("umount", &[m]);
    let label = run(
        "xfs_db",
        &["-r", "-c", "sb 0", "-c", "p fname", "-c", "p lsn", i],
    );
    assert!(label.contains("fname = \"vdisklog\\000"), "{label}");
    let out = Command::new("timeout")
        .args(["120", "xfs_repair", "-n", i])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hostile_log_bytes_never_panic() {
    if !have_tools() || !nix_root() {
        eprintln!("skipped: needs root and xfsprogs");
        return;
    }
    use vdisk_block::BlockDevice;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.xfs");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    mkfs(&img);
    let (i, m) = (img.to_str().unwrap(), mnt.to_str().unwrap());
    run("mount", &["-o", "loop", i, m]);
    for k in 0..20 {
        std::fs::write(mnt.join(format!("f{k}")), b"x").unwrap();
    }
    let _ = Command::new("timeout")
        .args(["60", "xfs_io", "-x", "-c", "shutdown -f", m])
        .status();
    let _ = Command::new("umount").arg(m).status();
    let dev = RawFile::open(&img, &OpenOptions::default()).unwrap();
    let log = Log::open(&dev).unwrap();
    let st = log.state().unwrap();
    assert!(!st.clean);
    let base = log.geometry().log_offset;
    let span = (st.head_blk + 8) * 512;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut errors = 0;
    for _ in 0..300 {
        let flips: Vec<(u64, u8)> = (0..1 + next() % 4)
            .map(|_| (base + next() % span, next() as u8 | 1))
            .collect();
        let mut saved = Vec::new();
        for &(off, x) in &flips {
            let mut b = [0u8; 1];
            dev.read_at(&mut b, off).unwrap();
            saved.push((off, b[0]));
            dev.write_at(&[b[0] ^ x], off).unwrap();
        }
        let r = log.state().and_then(|s| {
            let ov = vdisk_xfs_log::recover::Overlay::new(&dev);
            log.transactions(&s)?;
            vdisk_xfs_log::recover::recover(&log, &s, &ov)
        });
        if let Err(e) = r {
            errors += 1;
            let text = e.to_string();
            assert!(!text.contains('\n') && !text.is_empty(), "{text}");
        }
        for (off, b) in saved.into_iter().rev() {
            dev.write_at(&[b], off).unwrap();
        }
    }
    assert!(errors > 0);
}

#[test]
fn inode_items_replay_as_the_kernel_does() {
    if !have_tools() || !nix_root() {
        eprintln!("skipped: needs root and xfsprogs");
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use vdisk_xfs_log::recover::{recover, Overlay};
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.xfs");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    mkfs(&img);
    let (i, m) = (img.to_str().unwrap(), mnt.to_str().unwrap());
    run("mount", &["-o", "loop", i, m]);
    let f = mnt.join("f");
    std::fs::write(&f, b"hello").unwrap();
    run("sync", &[]);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
    let ino = std::fs::metadata(&f).unwrap().ino();
    let _ = Command::new("timeout")
        .args(["60", "xfs_io", "-x", "-c", "shutdown -f", m])
        .status();
    let _ = Command::new("umount").arg(m).status();
    let theirs = dir.path().join("k.xfs");
    let ours = dir.path().join("o.xfs");
    for c in [&theirs, &ours] {
        run("cp", &["--sparse=always", i, c.to_str().unwrap()]);
    }
    // Read-only: the overlay sees the new mode, the image does not change.
    let mode_at = |p: &Path| {
        run(
            "xfs_db",
            &[
                "-r",
                "-c",
                &format!("inode {ino}"),
                "-c",
                "p core.mode",
                p.to_str().unwrap(),
            ],
        )
    };
    let before = mode_at(&img);
    {
        let dev = RawFile::open(&ours, &OpenOptions::default()).unwrap();
        let log = Log::open(&dev).unwrap();
        let st = log.state().unwrap();
        assert!(!st.clean);
        // Whole recovery works (tests/dirty_log.rs in vdisk-xfs compares it with the
        // kernel's); the inode items alone are replayed here and must give the kernel's inode.
        recover(&log, &st, &Overlay::new(&dev)).unwrap();
        let mut txs = log.transactions(&st).unwrap();
        for t in &mut txs {
            let mut keep = vec![t.regions[0].clone()];
            for it in t.items().unwrap() {
                if it.name() == Some("INO") {
                    keep.extend(it.regions.iter().cloned());
                }
            }
            t.regions = keep;
        }
        txs.retain(|t| t.committed);
        let g = log.geometry();
        let ov = Overlay::new(&dev);
        let stats =
            vdisk_xfs_log::recover::replay(&txs, g.v5, g.sectsize, g.inodesize, &ov).unwrap();
        assert!(stats.inodes >= 1, "{stats:?}");
        vdisk_xfs_log::recover::replay(&txs, g.v5, g.sectsize, g.inodesize, &dev).unwrap();
    }
    assert_eq!(mode_at(&img), before);
    assert!(!before.contains("0100640"), "{before}");
    run("mount", &["-o", "loop", theirs.to_str().unwrap(), m]);
    run("umount", &[m]);
    let (k, o) = (mode_at(&theirs), mode_at(&ours));
    assert!(k.contains("0100640"), "{k}");
    assert_eq!(k, o);
    // The whole inode, not just its mode: core fields as xfs_db prints them, CRC included.
    let core = |p: &Path| {
        run(
            "xfs_db",
            &[
                "-r",
                "-c",
                &format!("inode {ino}"),
                "-c",
                "print",
                p.to_str().unwrap(),
            ],
        )
        .lines()
        .filter(|l| {
            !l.starts_with("core.lsn")
                && !l.starts_with("core.crc")
                && !l.starts_with("v3.lsn")
                && !l.starts_with("v3.crc")
        })
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    assert_eq!(core(&theirs), core(&ours));
    let crc = run(
        "xfs_db",
        &[
            "-r",
            "-c",
            &format!("inode {ino}"),
            "-c",
            "print v3.crc",
            ours.to_str().unwrap(),
        ],
    );
    assert!(crc.contains("(correct)"), "{crc}");
}

/// Transactions larger than one record (regions split across records) and records that
/// wrap at the end of the log, judged by the kernel's recovery: many transactions are logged,
/// written home and closed with unmount records until the head has gone round the log, and the
/// last one is left for the kernel to replay.
#[test]
fn big_transactions_and_log_wrap_replay_in_the_kernel() {
    if !have_tools() || !nix_root() {
        eprintln!("skipped: needs root and xfsprogs");
        return;
    }
    use vdisk_block::BlockDevice;
    use vdisk_xfs_log::writer::BufUpdate;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.xfs");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let out = Command::new("timeout")
        .env("TEST_DIR", "/tmp")
        .env("TEST_DEV", "/dev/null")
        .env("QA_CHECK_FS", "xfs")
        .args(["60", "mkfs.xfs", "-q", "-f", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (i, m) = (img.to_str().unwrap(), mnt.to_str().unwrap());
    let dev = RawFile::open(&img, &OpenOptions::default()).unwrap();
    let log = Log::open(&dev).unwrap();
    let g = log.geometry().clone();
    // Twelve blocks at the end of AG 1, free in a new filesystem: 48 KiB per transaction.
    let mut sb = [0u8; 512];
    dev.read_at(&mut sb, 0).unwrap();
    let agblocks = u64::from(u32::from_be_bytes(sb[84..88].try_into().unwrap()));
    let bs = u64::from(g.blocksize);
    let first = (2 * agblocks - 40) * bs / 512;
    let bufs = |round: u32| -> Vec<BufUpdate> {
        (0..12u64)
            .map(|k| {
                let mut data = vec![0u8; bs as usize];
                for (n, w) in data.chunks_mut(4).enumerate() {
                    w.copy_from_slice(&(round ^ (k as u32) << 24 ^ n as u32).to_le_bytes());
                }
                BufUpdate {
                    daddr: first + k * bs / 512,
                    data,
                    blft: 0,
                }
            })
            .collect()
    };
    let mut st = log.state().unwrap();
    assert!(st.clean);
    let start_cycle = st.head_cycle;
    let mut crossed = false;
    let mut round = 0u32;
    // Until the head has wrapped, one transaction's records crossed the end, and the head is
    // close enough to the end again that the next transaction must cross it too.
    while !(crossed && st.head_cycle > start_cycle && g.log_bbs - st.head_blk < 60) {
        round += 1;
        assert!(round < 10_000, "the head never wrapped");
        let before = st.head_blk;
        let ups = bufs(round);
        let logged = log.write_buffers(&st, round, &ups).unwrap();
        assert!(!logged.clean);
        if round % 16 == 1 || logged.head_blk < before {
            // Our own reader gets the transaction back whole, split regions rejoined.
            let txs = log.transactions(&logged).unwrap();
            assert_eq!(txs.len(), 1);
            assert!(txs[0].committed);
            let items = txs[0].items().unwrap();
            assert_eq!(items.len(), 12);
            assert!(items.iter().all(|it| it.regions[1].len() == bs as usize));
        }
        crossed |= logged.head_blk < before && logged.head_blk > 0;
        for u in &ups {
            dev.write_at(&u.data, u.daddr * 512).unwrap();
        }
        dev.flush().unwrap();
        st = log.write_unmount(&logged).unwrap();
        assert!(st.clean, "{st:?}");
    }
    // The last transaction is left in the log for the kernel.
    let last = bufs(0xdead_beef);
    let logged = log.write_buffers(&st, 0xdead_beef, &last).unwrap();
    assert!(logged.head_blk < st.head_blk, "the last transaction wraps");
    let ov = vdisk_xfs_log::recover::Overlay::new(&dev);
    let stats = vdisk_xfs_log::recover::recover(&log, &logged, &ov).unwrap();
    assert_eq!(stats.buffers, 12, "{stats:?}");
    let lp = run("xfs_logprint", &["-t", i]);
    assert!(lp.contains("TRANS: tid:0xdeadbeef"), "{lp}");
    drop(ov);
    drop(dev);
    run("mount", &["-o", "loop", i, m]);
    run("umount", &[m]);
    let dev = RawFile::open(&img, &OpenOptions::default()).unwrap();
    for u in &last {
        let mut b = vec![0u8; u.data.len()];
        dev.read_at(&mut b, u.daddr * 512).unwrap();
        assert!(b == u.data, "block at daddr {} not replayed", u.daddr);
    }
    assert!(Log::open(&dev).unwrap().state().unwrap().clean);
    let out = Command::new("timeout")
        .args(["120", "xfs_repair", "-n", i])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("{round} transactions, log of {} blocks", g.log_bbs);
}

/// Inode items we log (core, extent list, short-form directory, local symlink) are replayed
/// by the kernel into the inodes we asked for; our own recovery gives the same inodes.
#[test]
fn kernel_replays_our_inode_items() {
    if !have_tools() || !nix_root() {
        eprintln!("skipped: needs root and xfsprogs");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    use vdisk_block::BlockDevice;
    use vdisk_xfs_log::writer::InodeUpdate;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.xfs");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    mkfs(&img);
    let (i, m) = (img.to_str().unwrap(), mnt.to_str().unwrap());
    run("mount", &["-o", "loop", i, m]);
    std::fs::write(mnt.join("f"), b"hello").unwrap();
    std::fs::create_dir(mnt.join("d")).unwrap();
    for k in 0..3 {
        std::fs::write(mnt.join(format!("d/e{k}")), b"x").unwrap();
    }
    std::os::unix::fs::symlink("target-of-link", mnt.join("s")).unwrap();
    // A file of 60 extents: its data fork is a B+tree (root in the inode).
    {
        use std::os::unix::fs::FileExt;
        let b = std::fs::File::create(mnt.join("b")).unwrap();
        for k in (0..120u64).step_by(2) {
            b.write_all_at(&[k as u8 + 1; 4096], k * 4096).unwrap();
        }
        b.sync_all().unwrap();
    }
    let bdata = std::fs::read(mnt.join("b")).unwrap();
    let inos: Vec<u64> = ["f", "d", "s", "b"]
        .iter()
        .map(|n| std::fs::symlink_metadata(mnt.join(n)).unwrap().ino())
        .collect();
    run("umount", &[m]);
    let dev = RawFile::open(&img, &OpenOptions::default()).unwrap();
    let log = Log::open(&dev).unwrap();
    let g = log.geometry().clone();
    let mut sb = [0u8; 512];
    dev.read_at(&mut sb, 0).unwrap();
    let agblocks = u64::from(u32::from_be_bytes(sb[84..88].try_into().unwrap()));
    let inopblog = u32::from(sb[123]);
    let agblklog = u32::from(sb[124]);
    let inoalign = u64::from(u32::from_be_bytes(sb[180..184].try_into().unwrap()));
    let (bs, isz) = (u64::from(g.blocksize), u64::from(g.inodesize));
    // The kernel's inode cluster (xfs_ialloc_setup_geometry, v5).
    let big = 8192 * (isz / 256);
    let cluster = if inoalign >= big / bs { big } else { 8192 };
    let bpc = (cluster / bs).max(1);
    let updates: Vec<InodeUpdate> = inos
        .iter()
        .enumerate()
        .map(|(k, &ino)| {
            let agno = ino >> (agblklog + inopblog);
            let agino = ino & ((1 << (agblklog + inopblog)) - 1);
            let agbno = agino >> inopblog;
            let cl = agbno - agbno % bpc;
            let offset = ((agbno - cl) * (bs / isz) + agino % (bs / isz)) * isz;
            let daddr = (agno * agblocks + cl) * bs / 512;
            let mut dinode = vec![0u8; isz as usize];
            dev.read_at(&mut dinode, daddr * 512 + offset).unwrap();
            // New owner and a new mtime; the mode's permission bits too.
            dinode[8..12].copy_from_slice(&(4000 + k as u32).to_be_bytes());
            let flags2 = u64::from_be_bytes(dinode[120..128].try_into().unwrap());
            if flags2 & (1 << 3) != 0 {
                // bigtime: nanoseconds since 1901-12-13 (the legacy epoch's minimum).
                let t = (1_000_000_000u64 + (1 << 31)) * 1_000_000_000;
                dinode[40..48].copy_from_slice(&t.to_be_bytes());
            } else {
                dinode[40..44].copy_from_slice(&1_000_000_000u32.to_be_bytes());
                dinode[44..48].fill(0);
            }
            let mode = u16::from_be_bytes([dinode[2], dinode[3]]) & !0o777 | 0o640;
            dinode[2..4].copy_from_slice(&mode.to_be_bytes());
            InodeUpdate {
                ino,
                cluster_daddr: daddr,
                cluster_bbs: (cluster / 512) as u16,
                offset: offset as u32,
                dinode,
            }
        })
        .collect();
    let st = log.state().unwrap();
    let logged = log
        .write_transaction(&st, 0x1a0d_e000, &[], &updates)
        .unwrap();
    let txs = log.transactions(&logged).unwrap();
    let names: Vec<_> = txs[0].items().unwrap().iter().map(|it| it.name()).collect();
    assert_eq!(names, vec![Some("INO"); 4]);
    // Our recovery: the inodes as asked, with a good CRC (checked below by xfs_db too).
    let ov = vdisk_xfs_log::recover::Overlay::new(&dev);
    let stats = vdisk_xfs_log::recover::recover(&log, &logged, &ov).unwrap();
    assert_eq!(stats.inodes, 4, "{stats:?}");
    assert_eq!(updates[3].dinode[5], 3, "b has a B+tree data fork");
    let ours: Vec<Vec<u8>> = updates
        .iter()
        .map(|u| {
            let mut b = vec![0u8; u.dinode.len()];
            ov.read_at(&mut b, u.cluster_daddr * 512 + u64::from(u.offset))
                .unwrap();
            b
        })
        .collect();
    drop(ov);
    drop(dev);
    let lp = run("xfs_logprint", &["-t", i]);
    assert!(lp.contains("TRANS: tid:0x1a0de000"), "{lp}");
    run("mount", &["-o", "loop", i, m]);
    for (k, n) in ["f", "d", "s", "b"].iter().enumerate() {
        let md = std::fs::symlink_metadata(mnt.join(n)).unwrap();
        assert_eq!(md.uid(), 4000 + k as u32, "{n}");
        assert_eq!(md.mtime(), 1_000_000_000, "{n}");
        if *n != "s" {
            assert_eq!(md.mode() & 0o777, 0o640, "{n}");
        }
    }
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"hello");
    assert!(
        std::fs::read(mnt.join("b")).unwrap() == bdata,
        "B+tree file contents"
    );
    assert_eq!(std::fs::read_dir(mnt.join("d")).unwrap().count(), 3);
    assert_eq!(
        std::fs::read_link(mnt.join("s")).unwrap().to_str(),
        Some("target-of-link")
    );
    run("umount", &[m]);
    let dev = RawFile::open(&img, &OpenOptions::default()).unwrap();
    for (u, o) in updates.iter().zip(&ours) {
        let mut b = vec![0u8; u.dinode.len()];
        dev.read_at(&mut b, u.cluster_daddr * 512 + u64::from(u.offset))
            .unwrap();
        // The kernel's replay, before the mount changed anything else: same as ours but for
        // the LSN, the CRC and the change counter, which a mount may move on.
        let strip = |x: &[u8]| {
            let mut x = x.to_vec();
            x[100..120].fill(0);
            x[32..40].fill(0); // atime
            x
        };
        assert_eq!(strip(&b), strip(o), "inode {}", u.ino);
    }
    let out = Command::new("timeout")
        .args(["120", "xfs_repair", "-n", i])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
