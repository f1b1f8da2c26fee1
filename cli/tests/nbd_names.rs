//! NBD names as image names: `vdisk info/map/compare/convert` on `nbd+unix://` URIs served
//! by real servers (qemu-nbd, nbdkit, `vdisk nbd`) agree with qemu-img doing the same against
//! the same server: text and JSON output, converted bytes, allocation of the converted image.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn out(dir: &Path, prog: &str, args: &[&str]) -> Output {
    let prog = if prog == "vdisk" {
        env!("CARGO_BIN_EXE_vdisk")
    } else {
        prog
    };
    Command::new("timeout")
        .arg("120")
        .arg(prog)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn run(dir: &Path, prog: &str, args: &[&str]) -> String {
    let o = out(dir, prog, args);
    assert!(
        o.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A server process, killed when the test ends (however it ends).
struct Server {
    child: Child,
    uri: String,
}

impl Drop for Server {
    /// SIGTERM to `timeout`, which passes it on to the server (a SIGKILL would leave the
    /// server running without its parent); SIGKILL only if that is not enough.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `prog sock_flag SOCKET args...` serving on the unix socket `dir/name.sock`, under
/// `timeout`, and waits for it to listen. `sock_flag` may be several words (`nbd -k`).
fn serve(dir: &Path, name: &str, prog: &str, sock_flag: &str, args: &[&str]) -> Server {
    let sock: PathBuf = dir.join(format!("{name}.sock"));
    let prog = if prog == "vdisk" {
        env!("CARGO_BIN_EXE_vdisk")
    } else {
        prog
    };
    let child = Command::new("timeout")
        .arg("300")
        .arg(prog)
        .args(sock_flag.split(' '))
        .arg(&sock)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        uri: format!("nbd+unix:///?socket={}", sock.display()),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "{prog} never came up");
        std::thread::sleep(Duration::from_millis(10));
    }
    server
}

fn qemu_nbd(dir: &Path, name: &str, fmt: &str, file: &str, read_only: bool) -> Server {
    let mut args = vec!["-t", "-e", "8", "-f", fmt];
    if read_only {
        args.push("-r");
    }
    args.push(file);
    serve(dir, name, "qemu-nbd", "-k", &args)
}

/// A sparse raw image: data at 1 MiB and 40 MiB, a zero-filled (but allocated) range, holes.
fn sparse_raw(dir: &Path) {
    run(dir, "qemu-img", &["create", "-f", "raw", "d.raw", "64M"]);
    run(
        dir,
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 1M 3M",
            "-c",
            "write -P 0x00 10M 1M",
            "-c",
            "write -P 0xa5 40M 64k",
            "d.raw",
        ],
    );
}

#[test]
fn info_and_map_of_an_export_match_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sparse_raw(d);
    let srv = qemu_nbd(d, "q", "raw", "d.raw", true);
    for args in [
        vec!["info"],
        vec!["info", "--output=json"],
        vec!["info", "-f", "raw"],
        vec!["map"],
        vec!["map", "--output=json"],
        vec!["map", "-f", "raw", "--output=json"],
    ] {
        let mut a = args.clone();
        a.push(&srv.uri);
        assert_eq!(run(d, "vdisk", &a), run(d, "qemu-img", &a), "{a:?}");
    }
}

#[test]
fn a_qcow2_inside_an_export_is_read_through_the_export() {
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
            "write -z 8M 1M",
            "a.qcow2",
        ],
    );
    // The export is the qcow2 file's bytes; the qcow2 driver runs in the client.
    let srv = qemu_nbd(d, "q", "raw", "a.qcow2", true);
    for args in [
        vec!["info", "-f", "qcow2"],
        vec!["info", "-f", "qcow2", "--output=json"],
        vec!["info"],
        vec!["map", "-f", "qcow2", "--output=json"],
    ] {
        let mut a = args.clone();
        a.push(&srv.uri);
        assert_eq!(run(d, "vdisk", &a), run(d, "qemu-img", &a), "{a:?}");
    }
    run(
        d,
        "vdisk",
        &["convert", "-f", "qcow2", "-O", "raw", &srv.uri, "v.raw"],
    );
    run(
        d,
        "qemu-img",
        &["compare", "-f", "qcow2", "a.qcow2", "v.raw"],
    );
}

/// `qemu-img map --output=json` of an image with the host offsets left out: where data,
/// zeros and holes are, which is what skipping holes decides.
fn allocation(dir: &Path, img: &str) -> Vec<serde_json::Value> {
    let text = run(dir, "qemu-img", &["map", "--output=json", img]);
    let v: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    v.into_iter()
        .map(|mut e| {
            e.as_object_mut().unwrap().remove("offset");
            e
        })
        .collect()
}

#[test]
fn converting_an_export_skips_its_holes_and_compares_equal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sparse_raw(d);
    let srv = qemu_nbd(d, "q", "raw", "d.raw", true);
    run(d, "vdisk", &["convert", "-O", "qcow2", &srv.uri, "v.qcow2"]);
    run(
        d,
        "qemu-img",
        &["convert", "-O", "qcow2", &srv.uri, "q.qcow2"],
    );
    run(d, "qemu-img", &["compare", "d.raw", "v.qcow2"]);
    assert_eq!(allocation(d, "v.qcow2"), allocation(d, "q.qcow2"));
    // Only the two data ranges are allocated (the zero-filled MiB is detected as zeros).
    let data: u64 = allocation(d, "v.qcow2")
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(data, (3 << 20) + (64 << 10));

    run(d, "vdisk", &["convert", "-O", "raw", &srv.uri, "v.raw"]);
    run(
        d,
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", "d.raw", "v.raw"],
    );

    // compare: identical, then one byte apart, with qemu-img's words and exit codes.
    let same = out(d, "vdisk", &["compare", &srv.uri, "v.qcow2"]);
    let qsame = out(d, "qemu-img", &["compare", &srv.uri, "v.qcow2"]);
    assert_eq!(same.stdout, qsame.stdout);
    assert_eq!(same.status.code(), Some(0));
    run(d, "qemu-io", &["-c", "write -P 1 40M 1", "v.qcow2"]);
    let diff = out(d, "vdisk", &["compare", &srv.uri, "v.qcow2"]);
    let qdiff = out(d, "qemu-img", &["compare", &srv.uri, "v.qcow2"]);
    assert_eq!(diff.stdout, qdiff.stdout);
    assert_eq!(diff.status.code(), qdiff.status.code());
    assert_eq!(diff.status.code(), Some(1));
}

#[test]
fn a_sparse_random_export_converts_like_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let srv = serve(
        d,
        "k",
        "nbdkit",
        "-U",
        &["-f", "-r", "sparse-random", "size=64M", "seed=7"],
    );
    run(d, "vdisk", &["convert", "-O", "qcow2", &srv.uri, "v.qcow2"]);
    run(
        d,
        "qemu-img",
        &["convert", "-O", "qcow2", &srv.uri, "q.qcow2"],
    );
    run(d, "qemu-img", &["compare", "v.qcow2", "q.qcow2"]);
    run(d, "qemu-img", &["compare", &srv.uri, "v.qcow2"]);
    assert_eq!(allocation(d, "v.qcow2"), allocation(d, "q.qcow2"));
    assert_eq!(
        run(d, "vdisk", &["map", "--output=json", &srv.uri]),
        run(d, "qemu-img", &["map", "--output=json", &srv.uri])
    );
}

#[test]
fn converting_into_an_export_writes_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(d, "qemu-img", &["create", "-f", "qcow2", "s.qcow2", "16M"]);
    run(
        d,
        "qemu-io",
        &[
            "-c",
            "write -P 0x33 2M 1M",
            "-c",
            "write -P 0x44 15M 4k",
            "s.qcow2",
        ],
    );
    let srv = serve(d, "m", "nbdkit", "-U", &["-f", "memory", "size=16M"]);
    // Old content the conversion must overwrite, holes included.
    let garbage = ["-f", "raw", "-c", "write -P 0xee 0 16M", &srv.uri];
    run(d, "qemu-io", &garbage);
    run(
        d,
        "vdisk",
        &["convert", "-n", "-O", "raw", "s.qcow2", &srv.uri],
    );
    run(
        d,
        "qemu-img",
        &["compare", "-F", "raw", "s.qcow2", &srv.uri],
    );
    run(d, "vdisk", &["compare", "-F", "raw", "s.qcow2", &srv.uri]);

    // Without -n, as qemu's simple create: the export is reused, never grown.
    run(d, "qemu-io", &garbage);
    run(d, "vdisk", &["convert", "-O", "raw", "s.qcow2", &srv.uri]);
    run(
        d,
        "qemu-img",
        &["compare", "-F", "raw", "s.qcow2", &srv.uri],
    );

    run(
        d,
        "qemu-img",
        &["create", "-f", "qcow2", "big.qcow2", "32M"],
    );
    for n in [&["-n"][..], &[]] {
        let mut a = vec!["convert"];
        a.extend_from_slice(n);
        a.extend_from_slice(&["-O", "raw", "big.qcow2", &srv.uri]);
        let v = out(d, "vdisk", &a);
        let q = out(d, "qemu-img", &a);
        assert_eq!(v.status.code(), Some(1), "{a:?}");
        assert_eq!(q.status.code(), Some(1), "{a:?}");
        let msg = if n.is_empty() {
            "Cannot grow NBD nodes"
        } else {
            "output file is smaller than input file"
        };
        for o in [&v, &q] {
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(e.contains(msg), "{a:?}: {e}");
        }
    }
    // A new qcow2 inside an export is refused by name rather than half-made.
    let e = out(d, "vdisk", &["convert", "-O", "qcow2", "s.qcow2", &srv.uri]);
    assert_eq!(e.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&e.stderr).contains("not supported"));
}

#[test]
fn vdisk_reads_its_own_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(d, "qemu-img", &["create", "-f", "qcow2", "a.qcow2", "32M"]);
    run(d, "qemu-io", &["-c", "write -P 0x77 5M 2M", "a.qcow2"]);
    let srv = serve(
        d,
        "v",
        "vdisk",
        "nbd -k",
        &["-r", "-t", "-f", "qcow2", "a.qcow2"],
    );
    for args in [vec!["info"], vec!["map", "--output=json"]] {
        let mut a = args.clone();
        a.push(&srv.uri);
        assert_eq!(run(d, "vdisk", &a), run(d, "qemu-img", &a), "{a:?}");
    }
    run(d, "vdisk", &["convert", "-O", "qcow2", &srv.uri, "v.qcow2"]);
    run(d, "qemu-img", &["compare", "a.qcow2", "v.qcow2"]);
    assert_eq!(allocation(d, "v.qcow2"), allocation(d, "a.qcow2"));
}

#[test]
fn an_overlay_backed_by_an_export_and_measure_and_dd() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sparse_raw(d);
    let srv = qemu_nbd(d, "q", "raw", "d.raw", true);
    // qemu takes an NBD URI backing name as it is (absolute), not next to the overlay.
    run(
        d,
        "qemu-img",
        &[
            "create", "-f", "qcow2", "-b", &srv.uri, "-F", "raw", "o.qcow2",
        ],
    );
    run(d, "qemu-io", &["-c", "write -P 0x11 2M 64k", "o.qcow2"]);
    for a in [
        &["info", "o.qcow2"][..],
        &["info", "--backing-chain", "--output=json", "o.qcow2"],
        &["map", "--output=json", "o.qcow2"],
        &["measure", "-O", "qcow2", &srv.uri],
        &["measure", "-O", "qcow2", "o.qcow2"],
    ] {
        assert_eq!(run(d, "vdisk", a), run(d, "qemu-img", a), "{a:?}");
    }
    run(d, "vdisk", &["convert", "-O", "raw", "o.qcow2", "flat.raw"]);
    run(d, "qemu-img", &["compare", "o.qcow2", "flat.raw"]);
    let ifp = format!("if={}", srv.uri);
    run(
        d,
        "vdisk",
        &["dd", "-O", "raw", &ifp, "of=v.raw", "bs=1M", "count=5"],
    );
    run(
        d,
        "qemu-img",
        &["dd", "-O", "raw", &ifp, "of=q.raw", "bs=1M", "count=5"],
    );
    assert_eq!(
        std::fs::read(d.join("v.raw")).unwrap(),
        std::fs::read(d.join("q.raw")).unwrap()
    );
}

#[test]
fn guest_files_are_read_and_written_through_an_export() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("root")).unwrap();
    std::fs::write(d.join("root/hello.txt"), "hi from nbd\n").unwrap();
    run(d, "truncate", &["-s", "64M", "fs.raw"]);
    run(d, "mkfs.ext4", &["-q", "-F", "-d", "root", "fs.raw"]);
    let srv = qemu_nbd(d, "q", "raw", "fs.raw", false);
    let a = ["-a", &srv.uri, "-m", "/dev/sda"];
    let cat = |p: &str| {
        let mut v = vec!["cat"];
        v.extend_from_slice(&a);
        v.push(p);
        run(d, "vdisk", &v)
    };
    assert_eq!(cat("/hello.txt"), "hi from nbd\n");
    let mut w = vec!["write", "--from", "root/hello.txt"];
    w.extend_from_slice(&a);
    w.push("/copy.txt");
    run(d, "vdisk", &w);
    assert_eq!(cat("/copy.txt"), "hi from nbd\n");
    drop(srv);
    run(d, "e2fsck", &["-fn", "fs.raw"]);
    assert!(run(d, "debugfs", &["-R", "cat /copy.txt", "fs.raw"]).contains("hi from nbd"));
}

#[test]
fn a_tcp_export_is_named_and_read_as_qemu_img_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sparse_raw(d);
    // A free port: bound and released (another process could take it in between; the
    // server then fails to start and the test says so).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut child = Server {
        child: Command::new("timeout")
            .args([
                "300",
                "qemu-nbd",
                "-t",
                "-r",
                "-f",
                "raw",
                "-b",
                "127.0.0.1",
            ])
            .args(["-p", &port, "-x", "exp", "d.raw"])
            .current_dir(d)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
        uri: format!("nbd://127.0.0.1:{port}/exp"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_err() {
        assert!(Instant::now() < deadline, "qemu-nbd never came up");
        assert!(child.child.try_wait().unwrap().is_none(), "qemu-nbd exited");
        std::thread::sleep(Duration::from_millis(10));
    }
    let uri = child.uri.clone();
    for a in [
        &["info", "--output=json", &uri][..],
        &["info", &uri],
        &["map", "--output=json", &uri],
    ] {
        assert_eq!(run(d, "vdisk", a), run(d, "qemu-img", a), "{a:?}");
    }
    run(d, "vdisk", &["convert", "-O", "qcow2", &uri, "v.qcow2"]);
    run(d, "qemu-img", &["compare", "d.raw", "v.qcow2"]);
    let bad = format!("nbd://127.0.0.1:{port}/nope");
    let e = out(d, "vdisk", &["info", &bad]);
    assert_eq!(e.status.code(), Some(1));
    let e = String::from_utf8_lossy(&e.stderr);
    assert!(
        e.contains(&bad) && e.contains("no export named 'nope'"),
        "{e}"
    );
    drop(child);
}
