//! Concurrent reads from one open qcow2 image: throughput with 1, 2, 4 and 8 threads, for
//! 4 KiB reads (bound by our lookup and locking) and 64 KiB reads (bound by memory copies).
//!
//! `cargo bench --bench read_scaling` builds a 256 MiB qcow2 image of random data with
//! qemu-img (64 KiB clusters, so every read crosses the L2 cache), warms the page cache, then
//! has each thread count read random 64 KiB blocks for two seconds from the same `Qcow2`.
//! The image is in the page cache, so the numbers show our locking, not the disk.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdisk::{open, Format, OpenOptions};
use vdisk_block::BlockDevice;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let raw = dir.path().join("src.raw");
    let img = dir.path().join("img.qcow2");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 256M /dev/urandom > {0} && qemu-img convert -f raw -O qcow2 {0} {1}",
            raw.display(),
            img.display()
        ))
        .status()
        .expect("run qemu-img");
    assert!(status.success(), "building the image failed");
    let opened = open(
        &img,
        &OpenOptions {
            format: Some(Format::Qcow2),
            ..Default::default()
        },
    )
    .expect("open");
    let image = opened.image();
    let size = image.size();
    // Warm the page cache.
    let mut buf = vec![0u8; 1 << 20];
    for off in (0..size).step_by(1 << 20) {
        image.read_at(&mut buf, off).expect("read");
    }
    println!(
        "block  threads  MiB/s  reads/s   (random reads, one open image, {} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for (block, threads) in [4096u64, 65536]
        .into_iter()
        .flat_map(|b| [1usize, 2, 4, 8].map(move |t| (b, t)))
    {
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let image = image.clone();
                let bytes = bytes.clone();
                let stop = stop.clone();
                s.spawn(move || {
                    let mut buf = vec![0u8; block as usize];
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t as u64;
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let off = (x % (size / block)) * block;
                        image.read_at(&mut buf, off).expect("read");
                        bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
                    }
                });
            }
            std::thread::sleep(Duration::from_secs(2));
            stop.store(true, Ordering::Relaxed);
        });
        let secs = start.elapsed().as_secs_f64();
        let total = bytes.load(Ordering::Relaxed) as f64;
        println!(
            "{block:>5}  {threads:>7}  {:>5.0}  {:>7.0}",
            total / secs / (1 << 20) as f64,
            total / secs / block as f64
        );
    }
}
