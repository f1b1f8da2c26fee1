//! Throughput beside mtools, run only when FAT_BENCH=1 (use --release):
//! `FAT_BENCH=1 cargo test --release -p vdisk-fat --test bench -- --nocapture`.

mod common;

use std::ffi::OsStr;
use std::process::Command;
use std::time::Instant;

use common::*;
use vdisk_fs::{FileSystem, FileSystemMut};

#[test]
fn throughput_against_mtools() {
    if std::env::var("FAT_BENCH").is_err() || !have_tools() {
        eprintln!("skipped: set FAT_BENCH=1");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("bench.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    run(Command::new("mkfs.fat").args(["-F", "32"]).arg(&img));
    let mb = 128usize;
    let data = Rng(1).bytes(mb << 20);
    let host = dir.path().join("host.bin");
    std::fs::write(&host, &data).unwrap();

    let t = Instant::now();
    run(mtool("mcopy", &img).arg(&host).arg("::/mtools.bin"));
    let mt_write = t.elapsed().as_secs_f64();

    let fs = open_fat(&img, true);
    let t = Instant::now();
    let f = fs
        .create(1, OsStr::new("ours.bin"), 0o644, 0, 0)
        .unwrap()
        .ino;
    for (i, c) in data.chunks(128 << 10).enumerate() {
        fs.write(f, (i * (128 << 10)) as u64, c).unwrap();
    }
    // mcopy does not fsync; neither does this figure (the flush comes after).
    let our_write = t.elapsed().as_secs_f64();
    fs.flush().unwrap();

    let out = dir.path().join("out.bin");
    let t = Instant::now();
    run(mtool("mcopy", &img).arg("::/mtools.bin").arg(&out));
    let mt_read = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut buf = vec![0u8; 128 << 10];
    let mut off = 0u64;
    let mut sum = 0u64;
    loop {
        let n = fs.read(f, off, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        sum = sum.wrapping_add(u64::from(buf[n - 1]));
        off += n as u64;
    }
    let our_read = t.elapsed().as_secs_f64();
    assert_eq!(off as usize, data.len());
    let _ = sum;
    drop(fs);
    fsck_clean(&img, "bench");
    let m = mb as f64;
    eprintln!(
        "write {mb} MiB: ours {:.0} MiB/s (128 KiB writes), mcopy {:.0} MiB/s; read: ours {:.0} MiB/s (128 KiB reads), mcopy out {:.0} MiB/s",
        m / our_write,
        m / mt_write,
        m / our_read,
        m / mt_read
    );
}
