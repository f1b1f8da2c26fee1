//! The client against real servers: qemu-nbd serving a qcow2 chain, and nbdkit's memory
//! plugin as a writable export. Bytes read equal what qemu-io wrote; block status holes are
//! reported as zero ranges; writes land where qemu-img sees them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vdisk_block::{BlockDevice, Image, MapKind};
use vdisk_nbd::Client;

fn run(dir: &Path, prog: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("60")
        .arg(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "server never came up");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn reads_a_qemu_nbd_export_with_its_holes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(d, "qemu-img", &["create", "-f", "qcow2", "a.qcow2", "32M"]);
    run(
        d,
        "qemu-io",
        &[
            "-c",
            "write -P 0x5a 1M 3M",
            "-c",
            "write -P 0xa5 20M 64k",
            "a.qcow2",
        ],
    );
    let sock = d.join("q.sock");
    let _srv = Kill(
        Command::new("qemu-nbd")
            .args(["-t", "-e", "4", "-r", "-f", "qcow2", "-x", "exp", "-k"])
            .arg(&sock)
            .arg("a.qcow2")
            .current_dir(d)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&sock);
    let uri = format!("nbd+unix:///exp?socket={}", sock.display());
    let c = Client::open(&uri).unwrap();
    assert_eq!(c.size(), 32 << 20);
    assert!(c.is_read_only());
    let mut buf = vec![0u8; 5 << 20];
    c.read_at(&mut buf, 0).unwrap();
    assert!(buf[..1 << 20].iter().all(|&b| b == 0));
    assert!(buf[1 << 20..4 << 20].iter().all(|&b| b == 0x5a));
    assert!(buf[4 << 20..].iter().all(|&b| b == 0));
    let mut small = [0u8; 100];
    c.read_at(&mut small, (20 << 20) + 7).unwrap();
    assert!(small.iter().all(|&b| b == 0xa5));

    // Block status: zeros, data, zeros.
    let m = c.map(0, 32 << 20).unwrap();
    assert_eq!((m.offset, m.len), (0, 1 << 20));
    assert!(matches!(m.kind, MapKind::Zero { .. }));
    let m = c.map(1 << 20, 32 << 20).unwrap();
    assert_eq!(m.len, 3 << 20);
    assert!(matches!(m.kind, MapKind::Data { .. }));
    assert!(c.map(32 << 20, 1).unwrap().kind == MapKind::Eof);

    // Errors: past the end, a write to a read-only export, an unknown export.
    assert!(c.read_at(&mut small, (32 << 20) - 10).is_err());
    assert!(c.write_at(&small, 0).is_err());
    let e = Client::open(&format!("nbd+unix:///nope?socket={}", sock.display()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
    let e = Client::open("nbd+unix:///x?socket=/nonexistent/s")
        .unwrap_err()
        .to_string();
    assert!(e.contains("connect"), "{e}");
}

#[test]
fn writes_to_an_nbdkit_export() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sock = d.join("k.sock");
    let _srv = Kill(
        Command::new("nbdkit")
            .args(["-f", "-U"])
            .arg(&sock)
            .args(["memory", "size=16M"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&sock);
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let c = Client::open(&uri).unwrap();
    assert_eq!(c.size(), 16 << 20);
    let data: Vec<u8> = (0..(3 << 20) + 123).map(|i| (i % 251) as u8).collect();
    c.write_at(&data, 4096 + 5).unwrap();
    c.write_zeroes(8 << 20, 1 << 20, true).unwrap();
    c.trim(12 << 20, 1 << 20).unwrap();
    c.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    c.read_at(&mut back, 4096 + 5).unwrap();
    assert_eq!(back, data);
    // A second client (qemu-img over the same export) sees the same bytes.
    std::fs::write(d.join("expect.raw"), {
        let mut v = vec![0u8; 16 << 20];
        v[4101..4101 + data.len()].copy_from_slice(&data);
        v
    })
    .unwrap();
    drop(c);
    run(
        d,
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", &uri, "expect.raw"],
    );
}
