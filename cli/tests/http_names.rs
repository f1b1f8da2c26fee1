//! HTTP(S) URLs as image names, against real servers on loopback: nginx (ranges, keep-alive,
//! TLS with a certificate made here by openssl, a redirect) and Python's http.server (no
//! ranges). `vdisk info/map` agree with `qemu-img info/map` through qemu's curl driver on the
//! same URL; converted bytes equal qemu-img's conversion of the local file, backing file
//! fetched by relative URL; guest commands read a disk over HTTP; a stalled server, a 404, a
//! server without ranges, an untrusted certificate and writes fail with one line.

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{json, tool_ok};

/// Runs vdisk with extra environment, under a timeout.
fn vdisk_env(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new("timeout");
    c.arg("120")
        .arg(env!("CARGO_BIN_EXE_vdisk"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn vdisk_ok(dir: &Path, args: &[&str]) -> String {
    let o = vdisk_env(dir, &[], args);
    assert!(
        o.status.success(),
        "vdisk {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The error line of a vdisk run that must fail: exactly one line on stderr.
fn vdisk_err(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let o = vdisk_env(dir, env, args);
    assert!(!o.status.success(), "vdisk {args:?} succeeded");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let lines: Vec<&str> = err.lines().filter(|l| !l.contains("warning:")).collect();
    assert_eq!(lines.len(), 1, "vdisk {args:?}: not one error line:\n{err}");
    lines[0].to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} never came up");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A server process of ours, ended when the test ends (however it ends).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master takes its worker with it.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx serving `root` over HTTP and HTTPS (a self-signed certificate for 127.0.0.1 made
/// now), with `/old/X` redirecting to `/X`, logging each request with its connection.
struct Nginx {
    _proc: Proc,
    http: String,
    https: String,
    cert: PathBuf,
    log: PathBuf,
}

impl Nginx {
    fn start(dir: &Path, root: &Path) -> Nginx {
        let conf_dir = dir.join("nginx");
        std::fs::create_dir_all(conf_dir.join("tmp")).unwrap();
        let (cert, key) = (conf_dir.join("cert.pem"), conf_dir.join("key.pem"));
        tool_ok(
            dir,
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ],
        );
        let (hp, sp) = (free_port(), free_port());
        let c = conf_dir.display();
        let log = conf_dir.join("access.log");
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root root;\n\
             pid {c}/nginx.pid;\nerror_log {c}/error.log;\nevents {{ worker_connections 128; }}\n\
             http {{\n  log_format conn '$connection $status $request';\n\
             access_log {c}/access.log conn;\n  client_body_temp_path {c}/tmp;\n\
             proxy_temp_path {c}/tmp;\n  fastcgi_temp_path {c}/tmp;\n  uwsgi_temp_path {c}/tmp;\n\
             scgi_temp_path {c}/tmp;\n  default_type application/octet-stream;\n\
             server {{ listen 127.0.0.1:{hp}; root {r};\n\
               location /old/ {{ rewrite ^/old/(.*)$ /$1 redirect; }} }}\n\
             server {{ listen 127.0.0.1:{sp} ssl; root {r};\n\
               ssl_certificate {cert}; ssl_certificate_key {key}; }}\n}}\n",
            r = root.display(),
            cert = cert.display(),
            key = key.display(),
        );
        let conf_file = conf_dir.join("nginx.conf");
        std::fs::write(&conf_file, conf).unwrap();
        let child = Command::new("timeout")
            .arg("600")
            .arg("nginx")
            .arg("-e")
            .arg(conf_dir.join("error.log"))
            .arg("-c")
            .arg(&conf_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start nginx (Debian's nginx-light)");
        let proc = Proc(child);
        wait_listening(hp, "nginx");
        wait_listening(sp, "nginx (TLS)");
        Nginx {
            _proc: proc,
            http: format!("http://127.0.0.1:{hp}"),
            https: format!("https://127.0.0.1:{sp}"),
            cert,
            log,
        }
    }

    /// The requests logged so far: (connection number, status, request line).
    fn requests(&self) -> Vec<(u64, u16, String)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                Some((
                    it.next()?.parse().ok()?,
                    it.next()?.parse().ok()?,
                    it.next()?.to_string(),
                ))
            })
            .collect()
    }
}

/// `dir/www/dir/`: base.qcow2 (data at 0 and 8 MiB), top.qcow2 over it by the relative name
/// "base.qcow2" (data across the base's), a sparse raw file, and local copies to compare.
fn images(d: &Path) -> PathBuf {
    let www = d.join("www");
    let w = www.join("dir");
    std::fs::create_dir_all(&w).unwrap();
    let q = |args: &[&str]| tool_ok(&w, "qemu-img", args);
    let io = |args: &[&str]| tool_ok(&w, "qemu-io", args);
    q(&["create", "-f", "qcow2", "base.qcow2", "32M"]);
    io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0x11 0 3M",
        "-c",
        "write -P 0x33 8M 1M",
        "base.qcow2",
    ]);
    q(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "top.qcow2",
    ]);
    io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0x22 1M 4M",
        "-c",
        "write -z 16M 1M",
        "top.qcow2",
    ]);
    q(&["create", "-f", "raw", "d.raw", "8M"]);
    io(&[
        "-f",
        "raw",
        "-c",
        "write -P 0x5a 1M 1M",
        "-c",
        "write -P 0xa5 6M 64k",
        "d.raw",
    ]);
    www
}

#[test]
fn info_map_convert_and_compare_over_http_match_qemu() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let www = images(d);
    let ng = Nginx::start(d, &www);
    let top = format!("{}/dir/top.qcow2", ng.http);
    let raw = format!("{}/dir/d.raw", ng.http);

    // info and map, text and JSON, against qemu-img's curl driver on the same URLs.
    for url in [&top, &raw] {
        for args in [
            vec!["info", "--output=json"],
            vec!["info", "--output=json", "--backing-chain"],
            vec!["map", "--output=json"],
        ] {
            let mut a = args.clone();
            a.push(url);
            assert_eq!(
                json(&vdisk_ok(d, &a)),
                json(&tool_ok(d, "qemu-img", &a)),
                "{a:?}"
            );
        }
        for args in [vec!["info"], vec!["map"]] {
            let mut a = args.clone();
            a.push(url);
            common::assert_same_lines(
                &vdisk_ok(d, &a),
                &tool_ok(d, "qemu-img", &a),
                &format!("{a:?}"),
            );
        }
    }

    // convert: the backing file comes by relative URL; the bytes are qemu-img's conversion
    // of the local files.
    let w = www.join("dir");
    tool_ok(
        d,
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            w.join("top.qcow2").to_str().unwrap(),
            "ref.raw",
        ],
    );
    vdisk_ok(d, &["convert", "-O", "raw", &top, "out.raw"]);
    assert!(
        std::fs::read(d.join("out.raw")).unwrap() == std::fs::read(d.join("ref.raw")).unwrap(),
        "convert over HTTP differs from qemu-img's of the local file"
    );
    vdisk_ok(d, &["convert", "-O", "qcow2", &top, "out.qcow2"]);
    tool_ok(d, "qemu-img", &["compare", "out.qcow2", "ref.raw"]);
    tool_ok(d, "qemu-img", &["check", "out.qcow2"]);
    // Through a redirect (its backing file's relative URL redirects too).
    let old = format!("{}/old/dir/top.qcow2", ng.http);
    vdisk_ok(d, &["convert", "-O", "raw", &old, "redir.raw"]);
    assert!(
        std::fs::read(d.join("redir.raw")).unwrap() == std::fs::read(d.join("ref.raw")).unwrap()
    );
    assert!(
        ng.requests()
            .iter()
            .any(|(_, s, r)| *s == 302 && r.contains("/old/dir/base.qcow2")),
        "the redirect was not taken"
    );

    // compare, both ways round, and with a difference found.
    vdisk_ok(d, &["compare", &top, "ref.raw"]);
    vdisk_ok(d, &["compare", "ref.raw", &top]);
    let mut changed = std::fs::read(w.join("d.raw")).unwrap();
    changed[(6 << 20) + 4097] ^= 1;
    std::fs::write(d.join("changed.raw"), changed).unwrap();
    let o = vdisk_env(d, &[], &["compare", &raw, "changed.raw"]);
    let q = common::tool(d, "qemu-img", &["compare", &raw, "changed.raw"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(o.status.code(), q.status.code());
    assert_eq!(o.stdout, q.stdout);

    // raw over HTTP converts to the same bytes.
    vdisk_ok(d, &["convert", "-O", "raw", &raw, "raw.out"]);
    assert!(std::fs::read(d.join("raw.out")).unwrap() == std::fs::read(w.join("d.raw")).unwrap());
}

#[test]
fn reads_are_cached_read_ahead_and_share_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let www = d.join("www");
    std::fs::create_dir_all(&www).unwrap();
    // A compressed image, as cloud images are: clusters of base64 noise deflate to about
    // 48 KiB each, stored back to back, so a copy reads the file in small sequential pieces.
    let mut noise = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    while noise.len() < 8 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push(alphabet[(x % 64) as usize]);
    }
    std::fs::write(d.join("noise.raw"), &noise).unwrap();
    tool_ok(
        d,
        "qemu-img",
        &[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "noise.raw",
            "www/frag.qcow2",
        ],
    );
    let ng = Nginx::start(d, &www);
    let url = format!("{}/frag.qcow2", ng.http);
    vdisk_ok(d, &["convert", "-O", "raw", &url, "out.raw"]);
    assert!(std::fs::read(d.join("out.raw")).unwrap() == noise);
    let reqs = ng.requests();
    let ranged = reqs.iter().filter(|(_, s, _)| *s == 206).count();
    let conns: std::collections::BTreeSet<u64> = reqs.iter().map(|r| r.0).collect();
    assert!(
        ranged <= 24,
        "{ranged} range requests for 128 compressed clusters: no read-ahead?\n{reqs:?}"
    );
    assert!(
        conns.len() < reqs.len() || reqs.len() == 1,
        "every request had its own connection: no keep-alive\n{reqs:?}"
    );
}

#[test]
fn failures_are_one_line_and_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let www = images(d);
    let ng = Nginx::start(d, &www);

    // 404 names the URL.
    let url = format!("{}/dir/nope.qcow2", ng.http);
    let e = vdisk_err(d, &[], &["info", &url]);
    assert!(e.contains(&url) && e.contains("404"), "{e}");

    // Writes are refused: a new image, an existing one opened for writing.
    let top = format!("{}/dir/top.qcow2", ng.http);
    for args in [
        vec!["create", "-f", "qcow2", &top, "1M"],
        vec!["convert", "-O", "raw", "www/dir/d.raw", &top],
        vec!["convert", "-n", "-O", "qcow2", "www/dir/d.raw", &top],
        vec!["resize", &top, "64M"],
    ] {
        let e = vdisk_err(d, &[], &args);
        assert!(e.contains("read-only") && e.contains(&top), "{args:?}: {e}");
    }
    assert!(!d.join("http:").exists(), "a write made a local file");

    // A server without ranges (Python's http.server answers 200 with the whole file).
    let port = free_port();
    let _py = Proc(
        Command::new("timeout")
            .args(["300", "python3", "-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .current_dir(&www)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port, "python3 -m http.server");
    let url = format!("http://127.0.0.1:{port}/dir/top.qcow2");
    let e = vdisk_err(d, &[], &["info", &url]);
    assert!(e.contains(&url) && e.contains("range requests"), "{e}");

    // A server that accepts and never answers: an error within the timeout, not a hang.
    let stall = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = stall.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        stall.set_nonblocking(true).unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end && held.len() < 8 {
            if let Ok((s, _)) = stall.accept() {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let url = format!("http://127.0.0.1:{port}/x.qcow2");
    let t = Instant::now();
    let e = vdisk_err(d, &[("VDISK_HTTP_TIMEOUT", "1.5")], &["info", &url]);
    let took = t.elapsed();
    assert!(e.contains(&url) && e.contains("no progress"), "{e}");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(10),
        "stalled server: gave up after {took:?}"
    );
    drop(holder);
}

#[test]
fn https_verifies_the_certificate_unless_told() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let www = images(d);
    let ng = Nginx::start(d, &www);
    let url = format!("{}/dir/top.qcow2", ng.https);
    let e = vdisk_err(d, &[], &["info", &url]);
    assert!(e.contains(&url) && e.contains("certificate"), "{e}");

    let ca = ng.cert.to_str().unwrap();
    let via_ca = [("VDISK_HTTP_CA", ca)];
    let o = vdisk_env(d, &via_ca, &["convert", "-O", "raw", &url, "ca.raw"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = vdisk_env(
        d,
        &[("VDISK_HTTP_SSLVERIFY", "off")],
        &["convert", "-O", "raw", &url, "off.raw"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    tool_ok(
        d,
        "qemu-img",
        &["convert", "-O", "raw", "www/dir/top.qcow2", "ref.raw"],
    );
    let reference = std::fs::read(d.join("ref.raw")).unwrap();
    assert!(std::fs::read(d.join("ca.raw")).unwrap() == reference);
    assert!(std::fs::read(d.join("off.raw")).unwrap() == reference);

    // The same as qemu's https node with sslverify=off reports.
    let o = vdisk_env(d, &via_ca, &["info", "--output=json", &url]);
    let ours = json(&String::from_utf8_lossy(&o.stdout));
    let qemu_name = format!(
        "json:{{\"file.driver\":\"https\",\"file.url\":\"{url}\",\"file.sslverify\":\"off\"}}"
    );
    let mut theirs = json(&tool_ok(
        d,
        "qemu-img",
        &["info", "--output=json", &qemu_name],
    ));
    // qemu names a json: image by its json: name and resolves the backing file the same way.
    theirs["filename"] = ours["filename"].clone();
    assert_eq!(ours["children"][0]["info"]["format"], "https");
    assert_eq!(ours["virtual-size"], theirs["virtual-size"]);
    assert_eq!(ours["backing-filename"], theirs["backing-filename"]);
    assert_eq!(ours["format-specific"], theirs["format-specific"]);
}

#[test]
fn guest_files_read_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let www = d.join("www");
    let tree = d.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(tree.join("etc/hostname"), "web.example\n").unwrap();
    std::fs::write(tree.join("etc/motd"), "served by nginx\n").unwrap();
    // One partition from 1 MiB, ext4 inside it, converted to qcow2.
    let disk = d.join("disk.raw");
    tool_ok(d, "truncate", &["-s", "24M", disk.to_str().unwrap()]);
    let mut sf = Command::new("sfdisk")
        .args(["-q", disk.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    sf.stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, type=83\n")
        .unwrap();
    assert!(sf.wait().unwrap().success());
    tool_ok(
        d,
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "offset=1048576",
            "-d",
            tree.to_str().unwrap(),
            disk.to_str().unwrap(),
            "20M",
        ],
    );
    tool_ok(
        d,
        "qemu-img",
        &[
            "convert",
            "-O",
            "qcow2",
            disk.to_str().unwrap(),
            www.join("disk.qcow2").to_str().unwrap(),
        ],
    );
    let ng = Nginx::start(d, &www);
    let url = format!("{}/disk.qcow2", ng.http);
    let out = vdisk_ok(d, &["cat", "-a", &url, "-m", "/dev/sda1", "/etc/hostname"]);
    assert_eq!(out, "web.example\n");
    let ls = vdisk_ok(d, &["ls", "-a", &url, "-m", "/dev/sda1", "/etc"]);
    let mut names: Vec<&str> = ls.lines().collect();
    names.sort();
    assert_eq!(names, ["hostname", "motd"]);
}
