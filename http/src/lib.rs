//! Images read over HTTP(S), as qemu's curl block driver reads them: a URL is a read-only
//! protocol node whose bytes arrive by range requests.
//!
//! ```text
//!   HttpFile::open("https://h/dir/top.qcow2")
//!     GET Range: bytes=0-262143 --> 206, Content-Range: bytes 0-262143/SIZE  (size; no HEAD)
//!   read_at(buf, off)
//!     len >= DIRECT_READ: one ranged GET straight into buf
//!     else: 64 KiB blocks from the cache; a miss fetches the missing run in one GET,
//!           grown by read-ahead (256 KiB, doubling to 4 MiB while reads stay sequential)
//!   connections: a keep-alive pool (ureq's agent); parallel readers get one each
//! ```
//!
//! Never relying on HEAD matters: presigned object-store URLs are signed for GET only. A
//! server that answers a range request with the whole file (200) is refused at open, since
//! every read would transfer the image from its start.
//!
//! Settings come from [`Options`] (the environment for the CLI, see [`Options::from_env`]):
//! the timeout bounds every phase of a request (connect, each socket read or write, waiting
//! for the answer), so a stalled server is an error, never a hang; TLS verifies against the
//! Mozilla roots, a PEM bundle of our own (`VDISK_HTTP_CA`), or not at all
//! (`VDISK_HTTP_SSLVERIFY=off`, qemu's `sslverify=off`).
//!
//! ```no_run
//! use vdisk_block::BlockDevice;
//! let f = vdisk_http::HttpFile::open("http://127.0.0.1:8080/disk.raw", &Default::default())?;
//! let mut sector = [0u8; 512];
//! f.read_at(&mut sector, 0)?;
//! # Ok::<(), vdisk_block::Error>(())
//! ```

#![warn(missing_docs)]

mod url;

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
use vdisk_block::{BlockDevice, Error, Image, MapKind, Mapping, Result};

pub use url::{is_http_name, resolve};

/// Cache block: the unit the cache keeps and the alignment of every cached fetch.
pub const BLOCK: u64 = 64 << 10;
/// Read-ahead of a miss that does not continue the last one.
const READAHEAD_MIN: u64 = 256 << 10;
/// Read-ahead grows (doubling) to this while misses stay sequential. Four 64 KiB-cluster
/// reads per round trip would be slow over a WAN; a few MiB per request is where HTTP's
/// per-request overhead stops mattering.
const READAHEAD_MAX: u64 = 4 << 20;
/// Reads at least this long go to the server as they are, bypassing the cache: they are
/// already large enough to amortize a request (convert's 2 MiB windows).
pub const DIRECT_READ: u64 = 1 << 20;
/// Cache capacity in blocks (32 MiB): holds metadata tables and a few read-ahead windows per
/// reader thread.
const CACHE_BLOCKS: usize = 512;
/// Redirects followed per request (curl's default is unlimited, browsers stop at 20).
pub const MAX_REDIRECTS: u32 = 8;
/// Attempts per request when a pooled keep-alive connection turns out to be closed.
const ATTEMPTS: usize = 3;
/// The default of [`Options::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct Options {
    /// The longest wait for any one step of a request: connecting, sending, the first byte of
    /// the answer, each read of the body.
    pub timeout: Duration,
    /// Verify the server's certificate (qemu's `sslverify`, on by default).
    pub verify_tls: bool,
    /// Trust the certificates in this PEM file instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: DEFAULT_TIMEOUT,
            verify_tls: true,
            ca_file: None,
        }
    }
}

impl Options {
    /// The options the environment asks for:
    /// - `VDISK_HTTP_TIMEOUT=SECONDS` (default 30; fractions allowed);
    /// - `VDISK_HTTP_SSLVERIFY=off` (or `0`, `no`, `false`): accept any certificate;
    /// - `VDISK_HTTP_CA=FILE.pem`: trust these certificates (a self-signed server's own).
    pub fn from_env() -> Result<Options> {
        let mut o = Options::default();
        if let Ok(t) = std::env::var("VDISK_HTTP_TIMEOUT") {
            let secs: f64 = t
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s < 86400.0)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "VDISK_HTTP_TIMEOUT: '{t}' is not a number of seconds"
                    ))
                })?;
            o.timeout = Duration::from_secs_f64(secs);
        }
        if let Ok(v) = std::env::var("VDISK_HTTP_SSLVERIFY") {
            o.verify_tls = match v.trim().to_ascii_lowercase().as_str() {
                "off" | "0" | "no" | "false" => false,
                "on" | "1" | "yes" | "true" => true,
                _ => {
                    return Err(Error::invalid(format!(
                        "VDISK_HTTP_SSLVERIFY: '{v}' is neither on nor off"
                    )))
                }
            };
        }
        if let Some(ca) = std::env::var_os("VDISK_HTTP_CA").filter(|c| !c.is_empty()) {
            o.ca_file = Some(PathBuf::from(ca));
        }
        Ok(o)
    }
}

/// Sequential streams tracked at once: one per copy worker (convert starts one per core) and
/// a few more for metadata reads in between.
const STREAMS: usize = 8;

/// One sequential reader as the cache sees it: the block after its last fetched run, and
/// that run's read-ahead. A miss exactly there continues it.
#[derive(Clone, Copy)]
struct Stream {
    next: u64,
    window: u64,
    used: u64,
}

/// Blocks kept in memory and the read-ahead state.
#[derive(Default)]
struct Cache {
    /// Block index -> (bytes, last use). The last block of the file may be short.
    blocks: HashMap<u64, (Arc<[u8]>, u64)>,
    tick: u64,
    streams: Vec<Stream>,
}

impl Cache {
    fn get(&mut self, block: u64) -> Option<Arc<[u8]>> {
        self.tick += 1;
        let tick = self.tick;
        self.blocks.get_mut(&block).map(|(b, t)| {
            *t = tick;
            b.clone()
        })
    }

    fn insert(&mut self, block: u64, data: Arc<[u8]>) {
        if self.blocks.len() >= CACHE_BLOCKS && !self.blocks.contains_key(&block) {
            // Least recently used out: a scan of 512 entries, only on a miss that fetched.
            if let Some(old) = self
                .blocks
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|e| *e.0)
            {
                self.blocks.remove(&old);
            }
        }
        self.tick += 1;
        self.blocks.insert(block, (data, self.tick));
    }

    /// The read-ahead for a miss at `block`: doubled when it continues a stream, the minimum
    /// for a new one (which replaces the stream used longest ago). `end` is where the run
    /// fetched for it will stop, and so where the stream goes on.
    fn readahead(&mut self, block: u64) -> (usize, u64) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(i) = self.streams.iter().position(|s| s.next == block) {
            let s = &mut self.streams[i];
            s.window = (s.window * 2).clamp(READAHEAD_MIN, READAHEAD_MAX);
            s.used = tick;
            return (i, s.window);
        }
        let fresh = Stream {
            next: block,
            window: READAHEAD_MIN,
            used: tick,
        };
        let i = if self.streams.len() < STREAMS {
            self.streams.push(fresh);
            self.streams.len() - 1
        } else {
            let i = (0..self.streams.len())
                .min_by_key(|&i| self.streams[i].used)
                .unwrap_or(0);
            self.streams[i] = fresh;
            i
        };
        (i, READAHEAD_MIN)
    }
}

/// A file on an HTTP(S) server, read by ranges: qemu's `http`/`https` protocol node.
pub struct HttpFile {
    url: String,
    path: PathBuf,
    agent: ureq::Agent,
    timeout: Duration,
    /// The file's length on the server.
    len: u64,
    cache: Mutex<Cache>,
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl std::fmt::Debug for HttpFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFile")
            .field("url", &self.url)
            .field("len", &self.len)
            .finish()
    }
}

fn io_error(kind: io::ErrorKind, what: impl Into<String>) -> io::Error {
    io::Error::new(kind, what.into())
}

/// A ureq error as an I/O error with a message a user can act on.
fn transport_error(e: ureq::Error, timeout: Duration) -> io::Error {
    match e {
        ureq::Error::Timeout(t) => io_error(
            io::ErrorKind::TimedOut,
            format!(
                "no progress for {:.1}s ({t}; VDISK_HTTP_TIMEOUT sets the limit)",
                timeout.as_secs_f64()
            ),
        ),
        ureq::Error::Io(e) if e.kind() == io::ErrorKind::TimedOut => io_error(
            io::ErrorKind::TimedOut,
            format!(
                "no progress for {:.1}s (VDISK_HTTP_TIMEOUT sets the limit)",
                timeout.as_secs_f64()
            ),
        ),
        ureq::Error::Io(e) => e,
        ureq::Error::TooManyRedirects => io_error(
            io::ErrorKind::Other,
            format!("more than {MAX_REDIRECTS} redirects"),
        ),
        e => io_error(io::ErrorKind::Other, e.to_string()),
    }
}

/// Adds how to trust a certificate to an error about one (rustls reports it as an I/O error
/// of the handshake or as its own).
fn with_tls_hint(e: io::Error) -> io::Error {
    let text = e.to_string();
    if text.to_ascii_lowercase().contains("certificate") {
        io_error(
            e.kind(),
            format!(
                "TLS: {text} (VDISK_HTTP_CA=FILE.pem trusts a server's certificate, \
                 VDISK_HTTP_SSLVERIFY=off any)"
            ),
        )
    } else {
        e
    }
}

/// Whether a failed attempt is worth repeating: a keep-alive connection the server closed
/// between requests fails this way. Timeouts are not repeated (the bound is the bound).
fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// A parsed `Content-Range`: the byte range sent (first, last; `None` for `*`), and the
/// file's length (`None` for `*`).
type ContentRange = (Option<(u64, u64)>, Option<u64>);

/// `Content-Range: bytes FIRST-LAST/TOTAL` (TOTAL may be `*`), or `bytes */TOTAL` of a 416.
fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let range = match range.trim() {
        "*" => None,
        r => {
            let (a, b) = r.split_once('-')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        }
    };
    Some((range, total))
}

impl HttpFile {
    /// Opens `url`: learns the length from a range request for the first bytes (kept in the
    /// cache) and refuses a server that does not serve ranges.
    pub fn open(url: &str, opts: &Options) -> Result<HttpFile> {
        Self::open_inner(url, opts).map_err(|e| e.with_path(url))
    }

    fn open_inner(url: &str, opts: &Options) -> Result<HttpFile> {
        if !is_http_name(url) {
            return Err(Error::invalid("not an http:// or https:// URL"));
        }
        let mut tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .disable_verification(!opts.verify_tls);
        if let Some(ca) = &opts.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| Error::io("read the CA file", None, e).with_path(ca))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect::<Vec<Certificate<'static>>>();
            if certs.is_empty() {
                return Err(Error::invalid("no PEM certificate in the CA file").with_path(ca));
            }
            tls = tls.root_certs(RootCerts::new_with_certs(&certs));
        }
        let t = Some(opts.timeout);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(MAX_REDIRECTS)
            .max_redirects_will_error(true)
            .max_idle_connections(64)
            .max_idle_connections_per_host(32)
            .timeout_resolve(t)
            .timeout_connect(t)
            .timeout_send_request(t)
            .timeout_recv_response(t)
            .timeout_per_read(t)
            .timeout_per_write(t)
            .user_agent(concat!("vdisk/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .into();
        let mut f = HttpFile {
            url: url.to_string(),
            path: PathBuf::from(url),
            agent,
            timeout: opts.timeout,
            len: 0,
            cache: Mutex::new(Cache::default()),
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        };
        let (len, head) = f.probe()?;
        f.len = len;
        let mut cache = f.lock();
        for (i, chunk) in head.chunks(BLOCK as usize).enumerate() {
            cache.insert(i as u64, Arc::from(chunk));
        }
        cache.streams.push(Stream {
            next: head.len() as u64 / BLOCK,
            window: READAHEAD_MIN,
            used: 0,
        });
        drop(cache);
        Ok(f)
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // The cache holds no invariant a panicking reader could break halfway.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL as a path, for errors and reports.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `"https"` or `"http"`: qemu's name for the protocol node.
    pub fn protocol_name(&self) -> &'static str {
        if self.url[..5].eq_ignore_ascii_case("https") {
            "https"
        } else {
            "http"
        }
    }

    /// The file's length on the server (before rounding to sectors).
    pub fn file_length(&self) -> u64 {
        self.len
    }

    /// Requests sent and body bytes received so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// One GET of `Range: bytes=first-last`, attempted again on a closed keep-alive
    /// connection. `Ok(Err(status))` for an answer that is not 206 / 416.
    fn get(&self, first: u64, last: u64) -> io::Result<http_response::Response> {
        let mut last_err = None;
        for _ in 0..ATTEMPTS {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let r = self
                .agent
                .get(&self.url)
                .header("Range", format!("bytes={first}-{last}"))
                .header("Accept-Encoding", "identity")
                .call();
            match r {
                Ok(r) => return Ok(r),
                Err(e) => {
                    let e = with_tls_hint(transport_error(e, self.timeout));
                    if !retryable(&e) {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| io_error(io::ErrorKind::Other, "request failed")))
    }

    /// A status the reads cannot use, as one line.
    fn status_error(r: &http_response::Response) -> Error {
        let s = r.status();
        let text = format!("HTTP {} {}", s.as_u16(), s.canonical_reason().unwrap_or(""));
        let kind = match s.as_u16() {
            404 | 410 => io::ErrorKind::NotFound,
            401 | 403 => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::Other,
        };
        Error::io("GET", None, io_error(kind, text.trim_end().to_string()))
    }

    /// The first request: the length, and the first bytes.
    fn probe(&self) -> Result<(u64, Vec<u8>)> {
        let want = READAHEAD_MIN;
        let mut r = self
            .get(0, want - 1)
            .map_err(|e| Error::io("GET", None, e))?;
        let cr = r
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match r.status().as_u16() {
            206 => {}
            416 => {
                // An empty file: nothing satisfies any range.
                if let Some((None, Some(0))) = cr.as_deref().and_then(parse_content_range) {
                    return Ok((0, Vec::new()));
                }
                return Err(Self::status_error(&r));
            }
            200 => {
                return Err(Error::unsupported(
                    "the server does not support range requests (it answered a Range \
                     request with the whole file, HTTP 200)",
                ))
            }
            _ => return Err(Self::status_error(&r)),
        }
        let Some((Some((first, last)), total)) = cr.as_deref().and_then(parse_content_range) else {
            return Err(Error::unsupported(format!(
                "the server answered 206 without a usable Content-Range ({})",
                cr.as_deref().unwrap_or("none")
            )));
        };
        let Some(total) = total else {
            return Err(Error::unsupported(
                "the server does not say the file's length (Content-Range: .../*)",
            ));
        };
        if first != 0 || last < first || last >= total || last >= want {
            return Err(Error::corrupt(format!(
                "the server sent bytes {first}-{last} of {total} for bytes 0-{}",
                want - 1
            )));
        }
        let n = last - first + 1;
        // n <= want, a small constant.
        let mut head = vec![0u8; n as usize];
        Self::read_body(&mut r, &mut head).map_err(|e| Error::io("GET", Some(0), e))?;
        self.bytes.fetch_add(n, Ordering::Relaxed);
        Ok((total, head))
    }

    /// Reads exactly `buf.len()` body bytes and checks the body ends there (so the
    /// connection goes back to the pool).
    fn read_body(r: &mut http_response::Response, buf: &mut [u8]) -> io::Result<()> {
        let mut reader = r.body_mut().as_reader();
        reader.read_exact(buf)?;
        let mut extra = [0u8; 1];
        if reader.read(&mut extra)? != 0 {
            return Err(io_error(
                io::ErrorKind::InvalidData,
                "the server sent more bytes than the range asked",
            ));
        }
        Ok(())
    }

    /// Fetches file bytes `[start, start + buf.len())`, all inside the file.
    fn fetch(&self, buf: &mut [u8], start: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let last = start + buf.len() as u64 - 1;
        let mut r = self
            .get(start, last)
            .map_err(|e| Error::io("GET", Some(start), e))?;
        match r.status().as_u16() {
            206 => {}
            200 => {
                return Err(Error::unsupported(
                    "the server stopped serving range requests (HTTP 200)",
                ))
            }
            _ => return Err(Self::status_error(&r)),
        }
        let cr = r
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_content_range);
        match cr {
            Some((Some((a, b)), total)) if a == start && b == last => {
                if total.is_some_and(|t| t != self.len) {
                    return Err(Error::io(
                        "GET",
                        Some(start),
                        io_error(
                            io::ErrorKind::Other,
                            "the file changed length on the server while open",
                        ),
                    ));
                }
            }
            _ => {
                return Err(Error::corrupt(format!(
                    "the server answered bytes={start}-{last} with a different range"
                )))
            }
        }
        Self::read_body(&mut r, buf).map_err(|e| Error::io("GET", Some(start), e))?;
        self.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Reads file bytes `[offset, offset + buf.len())` (inside the file) through the cache.
    fn read_cached(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset + buf.len() as u64;
        let first_block = offset / BLOCK;
        let last_block = (end - 1) / BLOCK;
        let file_blocks = self.len.div_ceil(BLOCK);
        let mut b = first_block;
        while b <= last_block {
            let hit = self.lock().get(b);
            let data = match hit {
                Some(d) => d,
                None => {
                    // The run of missing blocks the read needs, plus read-ahead.
                    let (fetch_end, _) = {
                        let mut c = self.lock();
                        let mut need_end = b + 1;
                        while need_end <= last_block && !c.blocks.contains_key(&need_end) {
                            need_end += 1;
                        }
                        let (stream, window) = c.readahead(b);
                        let mut ra_end = (b + window / BLOCK).max(need_end).min(file_blocks);
                        // Stop the read-ahead at the first block already cached.
                        let mut e = need_end;
                        while e < ra_end && !c.blocks.contains_key(&e) {
                            e += 1;
                        }
                        ra_end = e;
                        c.streams[stream].next = ra_end;
                        (ra_end, ())
                    };
                    let start = b * BLOCK;
                    let stop = (fetch_end * BLOCK).min(self.len);
                    // At most READAHEAD_MAX or one read's blocks: fits in memory.
                    let mut run = vec![0u8; (stop - start) as usize];
                    self.fetch(&mut run, start)?;
                    let mut c = self.lock();
                    let mut first = None;
                    for (i, chunk) in run.chunks(BLOCK as usize).enumerate() {
                        let block: Arc<[u8]> = Arc::from(chunk);
                        if i == 0 {
                            first = Some(block.clone());
                        }
                        c.insert(b + i as u64, block);
                    }
                    drop(c);
                    match first {
                        Some(f) => f,
                        None => {
                            return Err(Error::corrupt("empty fetch inside the file"));
                        }
                    }
                }
            };
            // Copy this block's part of the read.
            let block_start = b * BLOCK;
            let from = offset.max(block_start);
            let to = end.min(block_start + data.len() as u64);
            if to <= from {
                return Err(Error::corrupt(format!(
                    "cache block {b} is shorter than the file"
                )));
            }
            let src = &data[(from - block_start) as usize..(to - block_start) as usize];
            buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(src);
            b += 1;
        }
        Ok(())
    }
}

/// The response type of the client, named once.
mod http_response {
    /// A response with its body still to read.
    pub type Response = ureq::http::Response<ureq::Body>;
}

impl BlockDevice for HttpFile {
    /// The length rounded up to whole sectors, as qemu's block layer sees any protocol node;
    /// the tail reads as zeros.
    fn size(&self) -> u64 {
        self.len.div_ceil(512) * 512
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.size())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "read of {} bytes at {offset} is past the end ({})",
                    buf.len(),
                    self.size()
                ))
                .with_path(&self.path)
            })?;
        let data_end = end.min(self.len);
        let (data, tail) = if offset < data_end {
            buf.split_at_mut((data_end - offset) as usize)
        } else {
            buf.split_at_mut(0)
        };
        tail.fill(0);
        if data.is_empty() {
            return Ok(());
        }
        if data.len() as u64 >= DIRECT_READ {
            self.fetch(data, offset)
        } else {
            self.read_cached(data, offset)
        }
        .map_err(|e| e.with_path(&self.path))
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(read_only().with_path(&self.path))
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn is_read_only(&self) -> bool {
        true
    }
}

/// The refusal of every write.
pub fn read_only() -> Error {
    Error::unsupported("images read over HTTP are read-only")
}

impl Image for HttpFile {
    fn format_name(&self) -> &'static str {
        self.protocol_name()
    }

    /// All data: a web server says nothing about holes.
    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        let size = self.size();
        if offset >= size {
            return Ok(Mapping {
                offset,
                len: 0,
                kind: MapKind::Eof,
            });
        }
        Ok(Mapping {
            offset,
            len: max_len.min(size - offset),
            kind: MapKind::Data {
                host_offset: offset,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 0-511/1024"),
            Some((Some((0, 511)), Some(1024)))
        );
        assert_eq!(
            parse_content_range("bytes 0-511/*"),
            Some((Some((0, 511)), None))
        );
        assert_eq!(parse_content_range("bytes */0"), Some((None, Some(0))));
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes 0-x/2"), None);
    }
}
