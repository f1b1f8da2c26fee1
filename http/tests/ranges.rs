//! `HttpFile` against a small range server of our own on loopback: every read of any length at
//! any offset (across cache blocks, read-ahead windows and the sector-rounded tail) returns the
//! file's bytes, sequential small reads cost few requests, and answers that break the rules
//! (no ranges, a wrong range, a changed length, no answer) are errors.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdisk_block::BlockDevice;
use vdisk_http::{HttpFile, Options};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Ranges,
    WholeFile,
    WrongRange,
    Silent,
}

/// Serves `data` at any path until the test ends; counts the requests.
fn serve(data: Arc<Vec<u8>>, mode: Mode) -> (String, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/img", l.local_addr().unwrap());
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (data, c) = (data.clone(), c.clone());
            std::thread::spawn(move || {
                let _ = connection(s, &data, mode, &c);
            });
        }
    });
    (url, count)
}

fn connection(s: TcpStream, data: &[u8], mode: Mode, count: &AtomicU64) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    loop {
        let mut range = None;
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            if h.trim().is_empty() {
                break;
            }
            if let Some(v) = h
                .strip_prefix("range: bytes=")
                .or(h.strip_prefix("Range: bytes="))
            {
                let (a, b) = v.trim().split_once('-').unwrap();
                range = Some((a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()));
            }
        }
        count.fetch_add(1, Ordering::Relaxed);
        if mode == Mode::Silent {
            std::thread::sleep(Duration::from_secs(30));
            return Ok(());
        }
        let len = data.len() as u64;
        let (a, b) = range.unwrap_or((0, len - 1));
        if mode == Mode::WholeFile {
            write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n")?;
            w.write_all(data)?;
            continue;
        }
        let b = b.min(len - 1);
        let shown_a = if mode == Mode::WrongRange && a > 0 {
            a + 1
        } else {
            a
        };
        write!(
            w,
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {shown_a}-{b}/{len}\r\n\
             Content-Length: {}\r\n\r\n",
            b - a + 1
        )?;
        w.write_all(&data[a as usize..=b as usize])?;
    }
}

fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn every_read_returns_the_file_bytes() {
    // Not a multiple of 512: the tail up to the sector boundary reads as zeros.
    let data = Arc::new(noise(3 * 1024 * 1024 + 777));
    let (url, _) = serve(data.clone(), Mode::Ranges);
    let f = HttpFile::open(&url, &Options::default()).unwrap();
    assert_eq!(f.file_length(), data.len() as u64);
    assert_eq!(f.size(), (data.len() as u64).div_ceil(512) * 512);
    let mut want = data.to_vec();
    want.resize(f.size() as usize, 0);
    let mut x = 12345u64;
    for i in 0..400 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = match i % 4 {
            0 => (x >> 40) % 512 + 1,
            1 => (x >> 40) % (200 << 10) + 1,
            2 => (x >> 40) % (3 << 20) + 1,
            _ => 65536,
        };
        let off = (x >> 8) % (f.size() - len.min(f.size()) + 1);
        let mut buf = vec![0u8; len as usize];
        f.read_at(&mut buf, off).unwrap();
        assert!(
            buf == want[off as usize..(off + len) as usize],
            "read of {len} at {off}"
        );
    }
    let mut past = [0u8; 2];
    assert!(f.read_at(&mut past, f.size() - 1).is_err());
    assert!(f.write_at(&past, 0).is_err());
}

#[test]
fn sequential_small_reads_are_read_ahead() {
    let data = Arc::new(noise(16 << 20));
    let (url, count) = serve(data.clone(), Mode::Ranges);
    let f = HttpFile::open(&url, &Options::default()).unwrap();
    let mut buf = vec![0u8; 4096];
    for off in (0..16u64 << 20).step_by(4096) {
        f.read_at(&mut buf, off).unwrap();
        assert!(buf == data[off as usize..off as usize + 4096]);
    }
    // 4096 reads; windows of 256 KiB doubling to 4 MiB: open plus about 8 fetches.
    let n = count.load(Ordering::Relaxed);
    assert!(n <= 12, "{n} requests for 16 MiB read 4 KiB at a time");
}

#[test]
fn broken_servers_are_errors() {
    let data = Arc::new(noise(1 << 20));
    let (url, _) = serve(data.clone(), Mode::WholeFile);
    let e = HttpFile::open(&url, &Options::default()).unwrap_err();
    assert!(e.to_string().contains("range requests"), "{e}");

    let (url, _) = serve(data.clone(), Mode::WrongRange);
    let f = HttpFile::open(&url, &Options::default()).unwrap();
    let mut buf = vec![0u8; 4096];
    let e = f.read_at(&mut buf, 512 << 10).unwrap_err();
    assert!(e.to_string().contains("different range"), "{e}");

    let (url, _) = serve(data, Mode::Silent);
    let t = Instant::now();
    let opts = Options {
        timeout: Duration::from_millis(500),
        ..Options::default()
    };
    let e = HttpFile::open(&url, &opts).unwrap_err();
    assert!(e.to_string().contains("no progress"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn nothing_listening_is_an_error_naming_the_url() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/x");
    let e = HttpFile::open(&url, &Options::default()).unwrap_err();
    assert!(e.to_string().starts_with(&url), "{e}");
}
