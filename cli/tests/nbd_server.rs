//! `vdisk nbd` served to real NBD clients (qemu-img, qemu-io, nbdinfo, nbdcopy), side by
//! side with qemu-nbd on the same image, and to misbehaving clients.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A server process on a Unix socket, killed (SIGTERM) when dropped.
struct Served {
    child: Child,
    socket: PathBuf,
}

impl Served {
    fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        wait_bounded(&mut self.child)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_bounded(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_for_socket(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(p).is_err() {
        assert!(Instant::now() < deadline, "{} never came up", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts a server: `prog` is the vdisk binary (with "nbd" prepended) or qemu-nbd.
fn serve(dir: &Path, qemu: bool, name: &str, args: &[&str]) -> Served {
    let socket = dir.join(name);
    let mut cmd = if qemu {
        Command::new("qemu-nbd")
    } else {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vdisk"));
        c.arg("nbd");
        c
    };
    cmd.arg("-k").arg(&socket).args(args).current_dir(dir);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = cmd.spawn().expect("start server");
    // A probe connection counts as a client: serve persistently (-t) in these tests, except
    // where the test says otherwise and waits for the socket file instead.
    if args.contains(&"-t") {
        wait_for_socket(&socket);
    } else {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Served { child, socket }
}

/// A qcow2 overlay over a raw base, with data, zero clusters, discarded ranges and holes
/// at both layers.
fn chain(dir: &Path) {
    tool_ok(dir, "qemu-img", &["create", "-f", "raw", "base.raw", "64M"]);
    tool_ok(
        dir,
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x11 0 4M",
            "-c",
            "write -P 0x22 40M 1M",
            "base.raw",
        ],
    );
    tool_ok(
        dir,
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "top.qcow2",
        ],
    );
    tool_ok(
        dir,
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x33 1M 512k",
            "-c",
            "write -z 2M 1M",
            "-c",
            "write -P 0x44 20M 3M",
            "-c",
            "write -P 0x55 63M 1M",
            "top.qcow2",
        ],
    );
}

/// The same questions asked of vdisk nbd and qemu-nbd serving the same read-only chain
/// get the same answers.
#[test]
fn answers_as_qemu_nbd_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chain(d);
    let args = ["-r", "-t", "-e", "4", "-A", "-f", "qcow2", "top.qcow2"];
    let ours = serve(d, false, "ours.sock", &args);
    let theirs = serve(d, true, "qemu.sock", &args);
    for (what, tool_args) in [
        ("map", vec!["map", "--output=json", "-f", "raw"]),
        ("info", vec!["info", "--output=json", "-f", "raw"]),
    ] {
        let mut a = tool_args.clone();
        let uo = ours.uri("");
        a.push(&uo);
        let o = tool_ok(d, "qemu-img", &a);
        let mut b = tool_args.clone();
        let ut = theirs.uri("");
        b.push(&ut);
        let t = tool_ok(d, "qemu-img", &b);
        let norm = |s: &str| s.replace("ours.sock", "S").replace("qemu.sock", "S");
        assert_eq!(json(&norm(&o)), json(&norm(&t)), "qemu-img {what}");
    }
    for map in ["--map", "--map=qemu:allocation-depth"] {
        let o = tool_ok(d, "nbdinfo", &[map, &ours.uri("")]);
        let t = tool_ok(d, "nbdinfo", &[map, &theirs.uri("")]);
        assert_same_lines(&o, &t, map);
    }
    let o = tool_ok(d, "nbdinfo", &["--json", &ours.uri("")]);
    let info = json(&o);
    let e = &info["exports"][0];
    assert_eq!(e["export-size"], 64 << 20);
    assert_eq!(e["is_read_only"], true);
    assert_eq!(e["can_multi_conn"], true);
    // Contents: the export reads as the chain does, through either server.
    tool_ok(
        d,
        "qemu-img",
        &[
            "compare",
            "-U",
            "-f",
            "raw",
            "-F",
            "qcow2",
            &ours.uri(""),
            "top.qcow2",
        ],
    );
    tool_ok(
        d,
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            &ours.uri(""),
            &theirs.uri(""),
        ],
    );
    // Writes to a read-only export are refused.
    let out = tool(
        d,
        "qemu-io",
        &["-f", "raw", "-c", "write 0 4k", &ours.uri("")],
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("Operation not permitted")
            || text.contains("read-only")
            || text.contains("Permission denied"),
        "{text}"
    );
    assert!(ours.stop().success());
    let _ = theirs.stop();
}

/// qemu-io's write patterns through the server land in the image, which qemu-img check
/// finds clean after a SIGTERM; nbdcopy copies in both directions with four connections.
#[test]
fn writes_land_and_the_image_stays_clean() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chain(d);
    let s = serve(
        d,
        false,
        "w.sock",
        &[
            "-t",
            "-e",
            "8",
            "-f",
            "qcow2",
            "--discard=unmap",
            "top.qcow2",
        ],
    );
    let uri = s.uri("");
    tool_ok(
        d,
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x66 100k 300k",
            "-c",
            "write -z 1M 64k",
            "-c",
            "write -z -u 4M 2M",
            "-c",
            "discard 20M 1M",
            "-c",
            "write -f -P 0x77 30M 64k",
            "-c",
            "flush",
            "-c",
            "read -P 0x66 100k 300k",
            "-c",
            "read -P 0 1M 64k",
            "-c",
            "read -P 0 4M 2M",
            "-c",
            "read -P 0x44 21M 2M",
            &uri,
        ],
    );
    // nbdcopy out (4 connections) equals what qemu-img reads from the file afterwards.
    tool_ok(d, "nbdcopy", &["--connections=4", &uri, "out.raw"]);
    // And a raw file copied in through the export reads back.
    tool_ok(d, "qemu-img", &["create", "-f", "raw", "in.raw", "64M"]);
    tool_ok(
        d,
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x99 5M 7M",
            "-c",
            "write -P 0x98 50M 1M",
            "in.raw",
        ],
    );
    assert!(s.stop().success());
    tool_ok(d, "qemu-img", &["check", "top.qcow2"]);
    tool_ok(
        d,
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            "out.raw",
            "top.qcow2",
        ],
    );
    tool_ok(
        d,
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "read -P 0x66 100k 300k",
            "-c",
            "read -P 0x77 30M 64k",
            "-c",
            "read -P 0 20M 1M",
            "top.qcow2",
        ],
    );
    let s = serve(
        d,
        false,
        "w2.sock",
        &["-t", "-e", "4", "-f", "qcow2", "top.qcow2"],
    );
    tool_ok(d, "nbdcopy", &["--connections=4", "in.raw", &s.uri("")]);
    assert!(s.stop().success());
    tool_ok(d, "qemu-img", &["check", "top.qcow2"]);
    tool_ok(
        d,
        "qemu-img",
        &["compare", "-f", "raw", "-F", "qcow2", "in.raw", "top.qcow2"],
    );
}

/// Without -t the server exits once its client has gone, flushing what it wrote.
#[test]
fn exits_after_the_last_client() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(d, "qemu-img", &["create", "-f", "qcow2", "a.qcow2", "8M"]);
    let mut s = serve(
        d,
        false,
        "once.sock",
        &["-f", "qcow2", "-x", "disk", "a.qcow2"],
    );
    tool_ok(
        d,
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0xa5 0 1M", &s.uri("disk")],
    );
    let st = wait_bounded(&mut s.child);
    assert!(st.success());
    assert!(!s.socket.exists(), "the socket file is removed on exit");
    tool_ok(d, "qemu-img", &["check", "a.qcow2"]);
    tool_ok(
        d,
        "qemu-io",
        &["-f", "qcow2", "-c", "read -P 0xa5 0 1M", "a.qcow2"],
    );
}

fn handshake(s: &mut UnixStream) {
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"NBDMAGIC");
    assert_eq!(&hello[8..16], b"IHAVEOPT");
    s.write_all(&3u32.to_be_bytes()).unwrap();
}

fn go(s: &mut UnixStream, name: &str) {
    let mut m = Vec::new();
    m.extend_from_slice(b"IHAVEOPT");
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
    m.extend_from_slice(&(name.len() as u32).to_be_bytes());
    m.extend_from_slice(name.as_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&m).unwrap();
    // Replies until ACK.
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut data = vec![0; len as usize];
        s.read_exact(&mut data).unwrap();
        assert!(kind & (1 << 31) == 0, "GO refused: {kind:#x}");
        if kind == 1 {
            return;
        }
    }
}

fn request(kind: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&kind.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m.extend_from_slice(&offset.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    m
}

fn simple_reply(s: &mut UnixStream) -> (u32, u64) {
    let mut r = [0u8; 16];
    s.read_exact(&mut r).unwrap();
    assert_eq!(u32::from_be_bytes(r[..4].try_into().unwrap()), 0x6744_6698);
    (
        u32::from_be_bytes(r[4..8].try_into().unwrap()),
        u64::from_be_bytes(r[8..].try_into().unwrap()),
    )
}

/// Garbage, half requests, requests past the end and oversized lengths end (at worst) the
/// connection that sent them; other clients keep being served and the image stays clean.
#[test]
fn misbehaving_clients_hurt_only_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tool_ok(d, "qemu-img", &["create", "-f", "qcow2", "a.qcow2", "16M"]);
    tool_ok(d, "qemu-io", &["-c", "write -P 0x3c 0 1M", "a.qcow2"]);
    let s = serve(
        d,
        false,
        "bad.sock",
        &["-t", "-e", "16", "-f", "qcow2", "-x", "e", "a.qcow2"],
    );

    // Not an NBD client at all.
    let mut c = UnixStream::connect(&s.socket).unwrap();
    let mut hello = [0u8; 18];
    c.read_exact(&mut hello).unwrap();
    let _ = c.write_all(b"GET / HTTP/1.1\r\n\r\n");
    drop(c);

    // A huge option length, then hang-up.
    let mut c = UnixStream::connect(&s.socket).unwrap();
    handshake(&mut c);
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(&u32::MAX.to_be_bytes());
    let _ = c.write_all(&m);
    drop(c);

    // An unknown export name is refused with an error reply, and the client may try again.
    let mut c = UnixStream::connect(&s.socket).unwrap();
    handshake(&mut c);
    let mut m = b"IHAVEOPT".to_vec();
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(&(4u32 + 4 + 2).to_be_bytes());
    m.extend_from_slice(&4u32.to_be_bytes());
    m.extend_from_slice(b"nope");
    m.extend_from_slice(&0u16.to_be_bytes());
    c.write_all(&m).unwrap();
    let mut h = [0u8; 20];
    c.read_exact(&mut h).unwrap();
    let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
    assert_eq!(kind, (1 << 31) | 6, "NBD_REP_ERR_UNKNOWN");
    let mut rest = vec![0; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
    c.read_exact(&mut rest).unwrap();
    go(&mut c, "e");
    // Past the end, and an oversized read: EINVAL, connection still usable.
    c.write_all(&request(0, 1, 16 << 20, 4096)).unwrap();
    assert_eq!(simple_reply(&mut c), (22, 1));
    c.write_all(&request(0, 2, 0, 64 << 20)).unwrap();
    assert_eq!(simple_reply(&mut c), (22, 2));
    c.write_all(&request(0, 3, u64::MAX - 10, 4096)).unwrap();
    assert_eq!(simple_reply(&mut c), (22, 3));
    c.write_all(&request(99, 4, 0, 0)).unwrap();
    assert_eq!(simple_reply(&mut c), (22, 4));
    c.write_all(&request(0, 5, 0, 512)).unwrap();
    assert_eq!(simple_reply(&mut c), (0, 5));
    let mut data = vec![0u8; 512];
    c.read_exact(&mut data).unwrap();
    assert!(data.iter().all(|&b| b == 0x3c));
    // A write whose payload never comes: the client hangs up mid-request.
    let mut w = request(1, 6, 4 << 20, 1 << 20);
    w.extend_from_slice(&[0xee; 1000]);
    c.write_all(&w).unwrap();
    drop(c);

    // A client that stalls in the middle of a request does not stop others.
    let mut slow = UnixStream::connect(&s.socket).unwrap();
    handshake(&mut slow);
    go(&mut slow, "e");
    slow.write_all(&request(1, 7, 0, 4096)[..20]).unwrap();

    let out = tool_ok(
        d,
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0x3c 0 1M",
            "-c",
            "write -P 0x4d 8M 64k",
            &s.uri("e"),
        ],
    );
    assert!(out.contains("read 1048576/1048576"), "{out}");
    drop(slow);
    assert!(s.stop().success());
    tool_ok(d, "qemu-img", &["check", "a.qcow2"]);
    tool_ok(
        d,
        "qemu-io",
        &[
            "-c",
            "read -P 0 4M 1M",
            "-c",
            "read -P 0x4d 8M 64k",
            "a.qcow2",
        ],
    );
}

/// Command-line errors are one line naming the problem.
#[test]
fn bad_invocations_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = vdisk(d, &["nbd", "-k", "x.sock", "missing.qcow2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("missing.qcow2"), "{err}");
    tool_ok(d, "qemu-img", &["create", "-f", "raw", "a.raw", "1M"]);
    let out = vdisk(
        d,
        &["nbd", "-f", "raw", "-k", "/nonexistent-dir/x.sock", "a.raw"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/nonexistent-dir/x.sock"), "{err}");
}
