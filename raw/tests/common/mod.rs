//! Helpers shared by the integration tests: running qemu tools with time limits, reading
//! their JSON, and reading the kernel's lock table.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vdisk_block::{Image, MapKind, Mapping};
use vdisk_raw::RawFile;

/// Runs `prog args..` under `timeout 60`, so a stuck tool fails the test instead of hanging it.
pub fn run(prog: &str, args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .arg("60")
        .arg(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    assert_ne!(out.status.code(), Some(124), "{prog} {args:?} timed out");
    out
}

/// Runs a command that must succeed and returns its stdout.
pub fn run_ok(prog: &str, args: &[&str]) -> String {
    let out = run(prog, args);
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One extent as `qemu-img map --output=json` prints it, reduced to what raw decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub length: u64,
    pub data: bool,
    pub zero: bool,
    pub offset: Option<u64>,
}

/// `qemu-img map --output=json -f raw path`, parsed.
pub fn qemu_map(path: &Path) -> Vec<Extent> {
    let out = run_ok(
        "qemu-img",
        &[
            "map",
            "-U",
            "--output=json",
            "-f",
            "raw",
            path.to_str().unwrap(),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| Extent {
            start: e["start"].as_u64().unwrap(),
            length: e["length"].as_u64().unwrap(),
            data: e["data"].as_bool().unwrap(),
            zero: e["zero"].as_bool().unwrap(),
            offset: e.get("offset").and_then(|o| o.as_u64()),
        })
        .collect()
}

/// Walks `img.map` over the whole image with a small `max_len` (to exercise splitting),
/// merges touching extents the way qemu-img map does, and returns them as qemu prints them.
pub fn our_map(img: &RawFile) -> Vec<Extent> {
    let mut merged: Vec<Mapping> = Vec::new();
    let mut off = 0;
    loop {
        let m = img.map(off, 12 * 1024).unwrap();
        assert_eq!(m.offset, off);
        if m.kind == MapKind::Eof {
            assert_eq!(off, vdisk_block::BlockDevice::size(img));
            break;
        }
        assert!(m.len > 0 && m.len <= 12 * 1024, "{m:?}");
        match merged.last_mut() {
            Some(last) if last.can_merge(&m) => last.len += m.len,
            _ => merged.push(m),
        }
        off = m.end();
    }
    merged
        .into_iter()
        .map(|m| match m.kind {
            MapKind::Data { host_offset } => Extent {
                start: m.offset,
                length: m.len,
                data: true,
                zero: false,
                offset: Some(host_offset),
            },
            MapKind::Zero { host_offset } => Extent {
                start: m.offset,
                length: m.len,
                data: false,
                zero: true,
                offset: host_offset,
            },
            k => panic!("raw file mapped as {k:?}"),
        })
        .collect()
}

/// `qemu-img info --output=json` of a raw file: (virtual-size, actual-size).
pub fn qemu_info_sizes(path: &Path) -> (u64, u64) {
    let out = run_ok(
        "qemu-img",
        &[
            "info",
            "-U",
            "--output=json",
            "-f",
            "raw",
            path.to_str().unwrap(),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    (
        v["virtual-size"].as_u64().unwrap(),
        v["actual-size"].as_u64().unwrap(),
    )
}

/// The bytes of `path` that some open file description holds an OFD lock on, from
/// /proc/locks.
pub fn locked_bytes(path: &Path) -> BTreeSet<u64> {
    let ino = std::fs::metadata(path).unwrap().ino();
    let table = std::fs::read_to_string("/proc/locks").unwrap();
    let mut bytes = BTreeSet::new();
    for line in table.lines() {
        // "1: OFDLCK ADVISORY  READ -1 fe:00:10010767 100 101"; blocked waiters start "->".
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[1] != "OFDLCK" {
            continue;
        }
        let dev_ino = f[5];
        if dev_ino
            .rsplit(':')
            .next()
            .and_then(|i| i.parse::<u64>().ok())
            != Some(ino)
        {
            continue;
        }
        let start: u64 = f[6].parse().unwrap();
        let end: u64 = f[7].parse().unwrap_or(start + 1000);
        bytes.extend(start..=end);
    }
    bytes
}

/// Serializes the tests of one binary that drop an image and expect its locks gone at once.
///
/// A process that forks while an image is open (another test thread starting qemu-img) gives
/// the child a reference to the open file description, and the OFD locks live until the child
/// calls exec. Tests that reopen right after closing hold this guard so no fork can overlap.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls until `cond` holds, for at most 20 seconds.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when dropped, so a failing test leaves nothing running.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `qemu-io` holding `path` open (read-write unless `extra` says otherwise) for up to
/// ten minutes, and waits until its locks are visible.
pub fn qemu_io_holding(path: &Path, extra: &[&str], expect_bytes: &[u64]) -> Killed {
    // Not under `timeout`: killing `timeout` would leave qemu-io running. qemu-io's own sleep
    // (in milliseconds) bounds its life if this process dies first.
    let child = Command::new("qemu-io")
        .args(["-f", "raw"])
        .args(extra)
        .args(["-c", "sleep 600000"]) // qemu-io's sleep counts milliseconds
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Killed(child);
    let want: BTreeSet<u64> = expect_bytes.iter().copied().collect();
    wait_for("qemu-io's locks", || locked_bytes(path) == want);
    guard
}

/// Starts this test binary running the ignored test `helper` with `VDISK_RAW_TEST_PATH=path`,
/// and waits for it to print "ready".
pub fn helper_process(helper: &str, path: &Path) -> Killed {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            helper,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VDISK_RAW_TEST_PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = Killed(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains("ready") => return guard,
            Ok(_) => {}
            Err(e) => panic!("helper {helper} never became ready: {e}"),
        }
    }
}

/// A file of `len` bytes with a recognizable byte pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}
