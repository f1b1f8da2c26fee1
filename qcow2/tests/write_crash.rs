//! Crash test: a child process writes self-identifying sectors with periodic flushes and logs
//! what each flush made durable; it is killed with SIGKILL at a random moment. Afterwards
//! `qemu-img check` finds no corruption (leaks are allowed) and every flushed write reads
//! back (or a newer one).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use vdisk_block::{BlockDevice, Preallocation};
use vdisk_qcow2::{CreateOptions, Qcow2};
use vdisk_raw::RawFile;

const SIZE: u64 = 48 << 20;
const SLOT: u64 = 12 << 10;

fn slot_data(slot: u64, gen: u64) -> Vec<u8> {
    (0..SLOT / 512)
        .flat_map(|_| {
            let mut s = [0xc3u8; 512];
            s[..8].copy_from_slice(&slot.to_le_bytes());
            s[8..16].copy_from_slice(&gen.to_le_bytes());
            s
        })
        .collect()
}

/// The child: runs only when the parent sets CRASH_IMG.
#[test]
#[ignore]
fn crash_child() {
    let Ok(img) = std::env::var("CRASH_IMG") else {
        return;
    };
    let log_path = std::env::var("CRASH_LOG").unwrap();
    let seed: u64 = std::env::var("CRASH_SEED").unwrap().parse().unwrap();
    let f = Arc::new(
        RawFile::open(
            &img,
            &vdisk_raw::OpenOptions {
                read_only: false,
                force_share: false,
            },
        )
        .unwrap(),
    );
    let q = Qcow2::open_rw(f).unwrap();
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_path)
        .unwrap();
    let mut x = seed | 1;
    let mut pending: HashMap<u64, u64> = HashMap::new();
    for gen in 1.. {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let slot = x % (SIZE / SLOT);
        q.write_at(&slot_data(slot, gen), slot * SLOT).unwrap();
        pending.insert(slot, gen);
        if gen % 16 == 0 {
            q.flush().unwrap();
            let mut text = String::new();
            for (s, g) in pending.drain() {
                text.push_str(&format!("{s} {g}\n"));
            }
            log.write_all(text.as_bytes()).unwrap();
        }
    }
}

fn verify(img: &Path, log: &Path) -> usize {
    let out = Command::new("qemu-img")
        .arg("check")
        .arg(img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "qemu-img check found corruption ({:?}): {text}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut flushed: HashMap<u64, u64> = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap().lines() {
        let mut it = line.split(' ');
        // A line torn by the kill is incomplete: ignore it.
        let (Some(s), Some(g)) = (it.next(), it.next()) else {
            continue;
        };
        let (Ok(s), Ok(g)) = (s.parse::<u64>(), g.parse::<u64>()) else {
            continue;
        };
        let e = flushed.entry(s).or_default();
        *e = (*e).max(g);
    }
    let q = Qcow2::open(Arc::new(common::FileDev::open(img))).unwrap();
    let mut buf = vec![0u8; SLOT as usize];
    for (&slot, &gen) in &flushed {
        q.read_at(&mut buf, slot * SLOT).unwrap();
        for s in buf.chunks(512) {
            let got_slot = u64::from_le_bytes(s[..8].try_into().unwrap());
            let got_gen = u64::from_le_bytes(s[8..16].try_into().unwrap());
            assert!(
                got_slot == slot && got_gen >= gen && s[16..].iter().all(|&b| b == 0xc3),
                "slot {slot}: flushed generation {gen} lost (read slot {got_slot} gen {got_gen})"
            );
        }
    }
    flushed.len()
}

#[test]
fn killed_writer_leaves_a_consistent_image() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let configs = [
        CreateOptions {
            size: SIZE,
            ..Default::default()
        },
        CreateOptions {
            size: SIZE,
            cluster_size: 4096,
            ..Default::default()
        },
        CreateOptions {
            size: SIZE,
            cluster_size: 512,
            refcount_bits: 64,
            ..Default::default()
        },
        CreateOptions {
            size: SIZE,
            cluster_size: 64 << 10,
            extended_l2: true,
            ..Default::default()
        },
        CreateOptions {
            size: SIZE,
            version: 2,
            ..Default::default()
        },
        CreateOptions {
            size: SIZE,
            lazy_refcounts: true,
            ..Default::default()
        },
    ];
    let mut total = 0;
    for i in 0..24u64 {
        let img = dir.path().join(format!("crash{i}.qcow2"));
        let log = dir.path().join(format!("crash{i}.log"));
        std::fs::write(&log, "").unwrap();
        let f = Arc::new(RawFile::create(&img, 0, Preallocation::Off).unwrap());
        drop(Qcow2::create(f, &configs[i as usize % configs.len()]).unwrap());
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--ignored", "--nocapture"])
            .env("CRASH_IMG", &img)
            .env("CRASH_LOG", &log)
            .env("CRASH_SEED", (i * 7919 + 13).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150 + (i * 37) % 400));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        total += verify(&img, &log);
    }
    assert!(
        total > 100,
        "the children flushed too little to test anything ({total} slots)"
    );
}
