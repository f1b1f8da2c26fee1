//! Replays every saved fuzz input (fuzz/regressions/<target>/: crashers found by cargo-fuzz,
//! now fixed, and a few seeds) through the same functions the libFuzzer targets call, on
//! stable, in the normal test suite. fuzz/FINDINGS.md says what each crasher was.
//!
//! A new crasher goes in with `cp fuzz/artifacts/<target>/crash-… fuzz/regressions/<target>/`.

#[path = "../../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What one saved input may take here (release build, no sanitizer): libFuzzer's -timeout
/// for the fuzz runs is 10 s under ASan, and every input here takes milliseconds.
const MAX_WALL: Duration = Duration::from_secs(5);

fn regressions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions")
}

/// The saved inputs of `target`, sorted.
fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = regressions().join(target);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.expect("read regressions dir").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn replay(target: &str) {
    let f = harness::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .map(|(_, f)| *f)
        .expect("a known target");
    let files = inputs(target);
    for p in &files {
        let data = std::fs::read(p).expect("read saved input");
        eprintln!("{target}: {} ({} bytes)", p.display(), data.len());
        let t = Instant::now();
        f(&data);
        let wall = t.elapsed();
        assert!(wall < MAX_WALL, "{}: took {wall:?}", p.display());
    }
    eprintln!("{target}: {} inputs replayed", files.len());
}

/// The qcow2_rw oracle too slow for the fuzz loop: every input in `files` whose image our
/// check found clean before the operations must leave an image `qemu-img check` finds free
/// of corruption (leaks are allowed, as in qemu). Returns (inputs checked by qemu-img,
/// failures).
fn qemu_check_qcow2_rw(files: &[PathBuf]) -> (usize, Vec<String>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let img = dir.path().join("out.qcow2");
    let mut checked = 0;
    let mut failures = Vec::new();
    for p in files {
        let data = std::fs::read(p).expect("read saved input");
        let Some(out) = harness::qcow2_rw_outcome(&data) else {
            continue;
        };
        if !out.clean_before || out.external_data {
            continue;
        }
        std::fs::write(&img, &out.image).expect("write image");
        // The fuzzed header may name any backing file: check the image alone.
        let spec = format!(
            r#"json:{{"driver":"qcow2","backing":null,"file":{{"driver":"file","filename":"{}"}}}}"#,
            img.display()
        );
        let r = std::process::Command::new("qemu-img")
            .args(["check", "-U", &spec])
            .output()
            .expect("run qemu-img");
        checked += 1;
        // 0: clean, 3: leaks only. 1 (could not check) and 2 (corruption) are failures.
        if !matches!(r.status.code(), Some(0 | 3)) {
            failures.push(format!(
                "{}: qemu-img check exit {:?}: {}{}",
                p.display(),
                r.status.code(),
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            ));
        }
    }
    (checked, failures)
}

#[test]
fn qcow2_rw_regressions_pass_qemu_img_check() {
    let (checked, failures) = qemu_check_qcow2_rw(&inputs("qcow2_rw"));
    eprintln!("qcow2_rw: {checked} images checked by qemu-img");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same over a corpus: `VDISK_FUZZ_QEMU_CHECK=fuzz/corpus/qcow2_rw cargo test --release
/// -p vdisk-cli --test fuzz_regressions qemu_check_env -- --ignored --nocapture`.
#[test]
#[ignore]
fn qemu_check_env() {
    let dir = std::env::var("VDISK_FUZZ_QEMU_CHECK").expect("VDISK_FUZZ_QEMU_CHECK=dir");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read corpus dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let (checked, failures) = qemu_check_qcow2_rw(&files);
    eprintln!(
        "{} inputs, {checked} images checked by qemu-img, {} failures",
        files.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Replays the files or directories named by `VDISK_FUZZ_REPLAY=target:path[:path…]` (for
/// triage of fresh artifacts on stable: `cargo test --release --test fuzz_regressions
/// replay_env -- --ignored --nocapture`).
#[test]
#[ignore]
fn replay_env() {
    let spec = std::env::var("VDISK_FUZZ_REPLAY").expect("VDISK_FUZZ_REPLAY=target:path…");
    let mut parts = spec.split(':');
    let target = parts.next().unwrap();
    let f = harness::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .map(|(_, f)| *f)
        .expect("a known target");
    for p in parts {
        let p = Path::new(p);
        let files: Vec<PathBuf> = if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            v.sort();
            v
        } else {
            vec![p.to_path_buf()]
        };
        for p in files {
            let data = std::fs::read(&p).unwrap();
            let t = Instant::now();
            let r = std::panic::catch_unwind(|| f(&data));
            eprintln!(
                "{}: {:?} {}",
                p.display(),
                t.elapsed(),
                if r.is_ok() { "ok" } else { "PANIC" }
            );
        }
    }
}

/// Every directory under fuzz/regressions/ is a target's, so no saved input goes unplayed.
#[test]
fn every_regressions_dir_is_a_target() {
    for e in std::fs::read_dir(regressions()).expect("fuzz/regressions exists") {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            harness::TARGETS.iter().any(|(n, _)| *n == name),
            "fuzz/regressions/{name} names no target"
        );
    }
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*
        /// The list above names every target of the harness.
        #[test]
        fn every_target_is_replayed() {
            let here = [$(stringify!($name)),*];
            for (n, _) in harness::TARGETS {
                assert!(here.contains(n), "{n} is not replayed");
            }
        }
    };
}

targets!(
    qcow2_open_read,
    qcow2_snapshot,
    qcow2_rw,
    probe_open,
    vmdk_open_read,
    vhd_open_rw,
    vdi_open_rw,
    vhdx_open_rw,
    qed_open_rw,
    partition_table,
    lvm,
    detect,
    guest,
    ext4_read,
    ext4_write,
);
