//! The server side: one [`Export`] served to any number of connections.
//!
//! ```text
//!   accept loop (Server::serve)          at most `shared` connections at once
//!     └─ connection thread: handshake, then reads requests ──► bounded queue
//!          └─ worker threads (per connection): do the I/O, build the whole reply,
//!             write it under the connection's writer lock (replies never interleave)
//! ```
//!
//! Requests are answered out of order, as the protocol allows; a flush is answered only after
//! the writes replied to before it reached the image's flush. The image is shared by `&self`
//! across every worker and connection, which is what makes multi-connection safe: a flush on
//! one connection flushes what every connection wrote.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};

use vdisk_block::{BlockDeviceExt, Error, Image, MapKind, Result};

use crate::proto::*;

/// What a range of the export is, for block status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Bytes from the asked offset that share this status (at least 1).
    pub length: u64,
    /// Some layer stores data for the range (clear: `NBD_STATE_HOLE`).
    pub data: bool,
    /// The range reads as zeros (`NBD_STATE_ZERO`).
    pub zero: bool,
    /// Which layer of a backing chain allocates the range: 1 for the top image, 2 for its
    /// backing file and so on; `None` when no layer does (`qemu:allocation-depth`).
    pub depth: Option<u32>,
}

/// A source of block status for an export (a single image's mapping, or a whole chain's).
pub trait BlockStatus: Send + Sync {
    /// The status at `offset` for at most `max_len` bytes (`offset` is inside the export and
    /// `max_len` is at least 1).
    fn status(&self, offset: u64, max_len: u64) -> Result<Status>;
}

/// Block status from one image's own mapping, its backing chain not looked into.
pub struct ImageStatus(pub Arc<dyn Image>);

impl BlockStatus for ImageStatus {
    fn status(&self, offset: u64, max_len: u64) -> Result<Status> {
        let m = self.0.map(offset, max_len)?;
        let length = m.len.clamp(1, max_len);
        Ok(match m.kind {
            MapKind::Data { .. } | MapKind::Compressed => Status {
                length,
                data: true,
                zero: false,
                depth: Some(1),
            },
            MapKind::Zero { .. } => Status {
                length,
                data: false,
                zero: true,
                depth: Some(1),
            },
            _ => Status {
                length,
                data: false,
                zero: true,
                depth: None,
            },
        })
    }
}

/// What is served, and what it can do.
#[derive(Clone)]
pub struct Export {
    /// The export's name (`-x`); clients asking for another name are refused.
    pub name: String,
    /// A description for `NBD_INFO_DESCRIPTION` and `NBD_OPT_LIST` (`-D`).
    pub description: String,
    /// The guest bytes.
    pub image: Arc<dyn Image>,
    /// Serve read-only (`-r`): writes, trims and write-zeroes fail with `EPERM`.
    pub read_only: bool,
    /// Pass trim requests to the image's discard, when it has one (qemu-nbd's
    /// `--discard=unmap`); otherwise trim is accepted and ignored, which the protocol allows.
    /// Zeroing uses the image's write-zeroes when it has one (and then offers
    /// `NBD_CMD_FLAG_FAST_ZERO`).
    pub discard: bool,
    /// Block status for `base:allocation` (and `qemu:allocation-depth`).
    pub status: Arc<dyn BlockStatus>,
    /// Offer `qemu:allocation-depth` (qemu-nbd's `--allocation-depth`).
    pub allocation_depth: bool,
}

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// At most this many connections at once (qemu-nbd's `-e`, default 1); more wait to be
    /// accepted.
    pub shared: usize,
    /// Keep serving after the last client leaves (`-t`); otherwise the server returns once the
    /// first client and every later one have gone.
    pub persistent: bool,
    /// Requests handled at once per connection.
    pub workers: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            shared: 1,
            persistent: false,
            workers: 4,
        }
    }
}

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP (`-b`/`-p`).
    Tcp(TcpListener),
    /// A Unix socket (`-k`).
    Unix(UnixListener),
}

/// A connected stream, TCP or Unix, that can be split into a reading and a writing half.
pub trait Transport: Read + Write + Send + Sized + 'static {
    /// A second handle on the same connection.
    fn try_clone(&self) -> io::Result<Self>;
    /// Shuts the connection down in both directions (wakes a blocked reader).
    fn shutdown(&self);
}

impl Transport for TcpStream {
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn shutdown(&self) {
        let _ = TcpStream::shutdown(self, Shutdown::Both);
    }
}

impl Transport for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown(&self) {
        let _ = UnixStream::shutdown(self, Shutdown::Both);
    }
}

/// An NBD server for one export.
pub struct Server {
    export: Export,
    opts: ServerOptions,
    active: Mutex<usize>,
    changed: Condvar,
    stopping: AtomicBool,
    in_flight: AtomicUsize,
}

impl Server {
    /// A server for `export`.
    pub fn new(export: Export, opts: ServerOptions) -> Arc<Server> {
        Arc::new(Server {
            export,
            opts: ServerOptions {
                shared: opts.shared.max(1),
                workers: opts.workers.max(1),
                ..opts
            },
            active: Mutex::new(0),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// The export served.
    pub fn export(&self) -> &Export {
        &self.export
    }

    /// Accepts connections until the last client leaves (or forever with `persistent`), then
    /// flushes the image. Each connection is served on its own thread.
    pub fn serve(self: &Arc<Self>, listener: Listener) -> Result<()> {
        loop {
            {
                let mut n = lock(&self.active);
                while *n >= self.opts.shared {
                    n = self.changed.wait(n).unwrap_or_else(|e| e.into_inner());
                }
                *n += 1;
            }
            let me = self.clone();
            let accepted = match &listener {
                Listener::Tcp(l) => l.accept().map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    std::thread::spawn(move || me.connection(s))
                }),
                Listener::Unix(l) => l
                    .accept()
                    .map(|(s, _)| std::thread::spawn(move || me.connection(s))),
            };
            if let Err(e) = accepted {
                self.release();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::io("accept", None, e));
            }
            if !self.opts.persistent {
                // Like qemu-nbd without -t: serve until the number of clients drops to zero.
                let mut n = lock(&self.active);
                while *n > 0 {
                    n = self.changed.wait(n).unwrap_or_else(|e| e.into_inner());
                }
                drop(n);
                return self.export.image.flush();
            }
        }
    }

    fn release(&self) {
        *lock(&self.active) -= 1;
        self.changed.notify_all();
    }

    /// Serves one connection to its end; the connection is counted by the caller of
    /// [`Server::serve`]. Errors end the connection only.
    fn connection<T: Transport>(self: Arc<Self>, stream: T) {
        let _ = self.serve_stream(stream);
        self.release();
    }

    /// Serves one already-connected stream: handshake, then transmission until the client
    /// disconnects. Usable without [`Server::serve`] (tests, inetd-style use).
    pub fn serve_stream<T: Transport>(&self, stream: T) -> io::Result<()> {
        let mut reader = io::BufReader::with_capacity(256 << 10, stream.try_clone()?);
        let mut writer = stream;
        let Some(session) = self.handshake(&mut reader, &mut writer)? else {
            return Ok(());
        };
        self.transmission(session, reader, writer)
    }

    /// Asks [`Server::serve`]'s connections to end at their next request.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Stops the server for a process exit: new requests and options are refused with
    /// `ESHUTDOWN`, the requests in flight are waited for (up to 10 s), and the image is
    /// flushed.
    pub fn shutdown(&self) -> Result<()> {
        self.stop();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.in_flight.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.export.image.flush()
    }

    fn transmission_flags(&self, structured: bool) -> u16 {
        let e = &self.export;
        let mut f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_CACHE;
        if e.read_only {
            f |= FLAG_READ_ONLY;
        } else {
            f |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES;
            if e.image.as_write_zeroes().is_some() {
                f |= FLAG_SEND_FAST_ZERO;
            }
        }
        if structured {
            f |= FLAG_SEND_DF;
        }
        // One image object behind every connection: what one flushes, all see.
        f |= FLAG_CAN_MULTI_CONN;
        f
    }

    /// The option haggling. `None` when the client ended it without choosing an export.
    fn handshake<R: Read, W: Write>(&self, r: &mut R, w: &mut W) -> io::Result<Option<Session>> {
        let mut hello = Msg::with_capacity(18);
        hello
            .u64(NBDMAGIC)
            .u64(IHAVEOPT)
            .u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        hello.send(w)?;
        w.flush()?;
        let client_flags = read_u32(r)?;
        if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
            return Err(bad("client sent unknown handshake flags"));
        }
        let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
        let mut s = Session::default();
        loop {
            if read_u64(r)? != IHAVEOPT {
                return Err(bad("option without IHAVEOPT magic"));
            }
            let opt = read_u32(r)?;
            let len = read_u32(r)?;
            // Options are small (names and queries of at most 4 KiB); a huge one is a client
            // we cannot serve. Drain a moderate one and refuse it; hang up on the rest.
            if len as usize > 4 * MAX_STRING + 64 {
                if len > (1 << 20) {
                    return Err(bad("option payload too large"));
                }
                skip(r, u64::from(len))?;
                opt_reply(w, opt, REP_ERR_TOO_BIG, b"option too large")?;
                continue;
            }
            let mut data = vec![0; len as usize];
            r.read_exact(&mut data)?;
            if self.stopping.load(Ordering::SeqCst) && opt != OPT_ABORT {
                opt_reply(w, opt, REP_ERR_SHUTDOWN, b"server shutting down")?;
                continue;
            }
            match opt {
                OPT_EXPORT_NAME => {
                    let name = std::str::from_utf8(&data).unwrap_or("\u{fffd}");
                    if name != self.export.name && !name.is_empty() {
                        return Err(bad("client asked for an unknown export"));
                    }
                    let mut m = Msg::with_capacity(134);
                    m.u64(self.export.image.size())
                        .u16(self.transmission_flags(s.structured));
                    if !no_zeroes {
                        m.bytes(&[0; 124]);
                    }
                    m.send(w)?;
                    w.flush()?;
                    return Ok(Some(s));
                }
                OPT_ABORT => {
                    let _ = opt_reply(w, opt, REP_ACK, b"");
                    return Ok(None);
                }
                OPT_LIST => {
                    if !data.is_empty() {
                        opt_reply(w, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")?;
                        continue;
                    }
                    let name = self.export.name.as_bytes();
                    let mut m = Msg::default();
                    m.u32(name.len() as u32)
                        .bytes(name)
                        .bytes(self.export.description.as_bytes());
                    opt_reply(w, opt, REP_SERVER, &m.0)?;
                    opt_reply(w, opt, REP_ACK, b"")?;
                }
                OPT_STARTTLS => {
                    opt_reply(w, opt, REP_ERR_POLICY, b"TLS is not configured")?;
                }
                OPT_INFO | OPT_GO => {
                    if self.info(w, opt, &data, &s)? && opt == OPT_GO {
                        return Ok(Some(s));
                    }
                }
                OPT_STRUCTURED_REPLY => {
                    if !data.is_empty() {
                        opt_reply(w, opt, REP_ERR_INVALID, b"option takes no data")?;
                    } else if s.structured {
                        opt_reply(w, opt, REP_ERR_INVALID, b"structured replies already on")?;
                    } else {
                        s.structured = true;
                        opt_reply(w, opt, REP_ACK, b"")?;
                    }
                }
                OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                    self.meta_context(w, opt, &data, &mut s)?;
                }
                _ => {
                    opt_reply(w, opt, REP_ERR_UNSUP, b"option not supported")?;
                }
            }
            w.flush()?;
        }
    }

    /// `NBD_OPT_INFO` / `NBD_OPT_GO`. Returns whether the export was accepted.
    fn info<W: Write>(&self, w: &mut W, opt: u32, data: &[u8], s: &Session) -> io::Result<bool> {
        let mut p = Payload::new(data);
        let parsed = (|| {
            let name = p.string32()?;
            let n = p.u16()?;
            let mut wanted = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                wanted.push(p.u16()?);
            }
            p.is_empty().then_some((name, wanted))
        })();
        let Some((name, wanted)) = parsed else {
            opt_reply(w, opt, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/GO")?;
            return Ok(false);
        };
        if name != self.export.name && !name.is_empty() {
            let msg = format!("export '{name}' not present");
            opt_reply(w, opt, REP_ERR_UNKNOWN, msg.as_bytes())?;
            return Ok(false);
        }
        let e = &self.export;
        let mut m = Msg::default();
        m.u16(INFO_EXPORT)
            .u64(e.image.size())
            .u16(self.transmission_flags(s.structured));
        opt_reply(w, opt, REP_INFO, &m.0)?;
        if wanted.contains(&INFO_NAME) {
            let mut m = Msg::default();
            m.u16(INFO_NAME).bytes(e.name.as_bytes());
            opt_reply(w, opt, REP_INFO, &m.0)?;
        }
        if wanted.contains(&INFO_DESCRIPTION) && !e.description.is_empty() {
            let mut m = Msg::default();
            m.u16(INFO_DESCRIPTION).bytes(e.description.as_bytes());
            opt_reply(w, opt, REP_INFO, &m.0)?;
        }
        let mut m = Msg::default();
        m.u16(INFO_BLOCK_SIZE).u32(1).u32(4096).u32(MAX_PAYLOAD);
        opt_reply(w, opt, REP_INFO, &m.0)?;
        opt_reply(w, opt, REP_ACK, b"")?;
        w.flush()?;
        Ok(true)
    }

    /// The metadata contexts this export offers, with their ids.
    fn contexts(&self) -> Vec<(u32, &'static str)> {
        let mut v = vec![(CTX_BASE, CONTEXT_BASE_ALLOCATION)];
        if self.export.allocation_depth {
            v.push((CTX_DEPTH, CONTEXT_ALLOCATION_DEPTH));
        }
        v
    }

    /// `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
    fn meta_context<W: Write>(
        &self,
        w: &mut W,
        opt: u32,
        data: &[u8],
        s: &mut Session,
    ) -> io::Result<()> {
        if !s.structured {
            return opt_reply(
                w,
                opt,
                REP_ERR_INVALID,
                b"structured replies not negotiated",
            );
        }
        let mut p = Payload::new(data);
        let parsed = (|| {
            let name = p.string32()?;
            let n = p.u32()?;
            // Each query takes at least its 4-byte length: n is bounded by the payload.
            if n as usize > p.rest().len() / 4 {
                return None;
            }
            let mut queries = Vec::with_capacity(n as usize);
            for _ in 0..n {
                queries.push(p.string32()?);
            }
            p.is_empty().then_some((name, queries))
        })();
        let Some((name, queries)) = parsed else {
            return opt_reply(w, opt, REP_ERR_INVALID, b"malformed meta context option");
        };
        if name != self.export.name && !name.is_empty() {
            return opt_reply(w, opt, REP_ERR_UNKNOWN, b"export not present");
        }
        let offered = self.contexts();
        let mut chosen: Vec<(u32, &str)> = Vec::new();
        let listing = opt == OPT_LIST_META_CONTEXT;
        if queries.is_empty() && listing {
            chosen = offered.clone();
        }
        for q in &queries {
            for &(id, ctx) in &offered {
                let hit = if listing {
                    // A namespace alone ("base:", "qemu:") lists all of its contexts.
                    ctx == *q || (q.ends_with(':') && ctx.starts_with(q))
                } else {
                    ctx == *q
                };
                if hit && !chosen.iter().any(|&(i, _)| i == id) {
                    chosen.push((id, ctx));
                }
            }
        }
        for &(id, ctx) in &chosen {
            let mut m = Msg::default();
            m.u32(if listing { 0 } else { id }).bytes(ctx.as_bytes());
            opt_reply(w, opt, REP_META_CONTEXT, &m.0)?;
        }
        if !listing {
            s.base = chosen.iter().any(|&(i, _)| i == CTX_BASE);
            s.depth = chosen.iter().any(|&(i, _)| i == CTX_DEPTH);
        }
        opt_reply(w, opt, REP_ACK, b"")
    }

    fn transmission<T: Transport>(
        &self,
        s: Session,
        mut reader: io::BufReader<T>,
        writer: T,
    ) -> io::Result<()> {
        let conn = Conn {
            out: Mutex::new(io::BufWriter::with_capacity(256 << 10, writer)),
            session: s,
            dead: AtomicBool::new(false),
        };
        let workers = self.opts.workers;
        let (tx, rx) = sync_channel::<Request>(workers * 2);
        let rx = Mutex::new(rx);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| self.worker(&conn, &rx));
            }
            let r = self.read_requests(&mut reader, &conn, &tx);
            drop(tx);
            r
        })?;
        let mut out = lock(&conn.out);
        let _ = out.flush();
        out.get_ref().shutdown();
        Ok(())
    }

    /// The connection's reading side: parses requests and queues them for the workers.
    fn read_requests<R: Read>(
        &self,
        r: &mut R,
        conn: &Conn<impl Transport>,
        tx: &std::sync::mpsc::SyncSender<Request>,
    ) -> io::Result<()> {
        loop {
            if conn.dead.load(Ordering::SeqCst) {
                return Ok(());
            }
            let mut h = [0u8; 28];
            match r.read_exact(&mut h) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let mut p = Payload::new(&h);
            let magic = p.u32().unwrap_or(0);
            if magic != REQUEST_MAGIC {
                return Err(bad("request without the request magic"));
            }
            let flags = p.u16().unwrap_or(0);
            let kind = p.u16().unwrap_or(0);
            let cookie = p.u64().unwrap_or(0);
            let offset = p.u64().unwrap_or(0);
            let length = p.u32().unwrap_or(0);
            let mut req = Request {
                flags,
                kind,
                cookie,
                offset,
                length,
                payload: Vec::new(),
                error: None,
            };
            if kind == CMD_DISC {
                return Ok(());
            }
            if kind == CMD_WRITE {
                if length > MAX_PAYLOAD {
                    // Drain what the client sends, then refuse the request.
                    skip(r, u64::from(length))?;
                    req.error = Some(EINVAL);
                } else {
                    req.payload = vec![0; length as usize];
                    r.read_exact(&mut req.payload)?;
                }
            }
            if self.stopping.load(Ordering::SeqCst) {
                req.error = Some(ESHUTDOWN);
            }
            if tx.send(req).is_err() {
                return Ok(());
            }
        }
    }

    fn worker(&self, conn: &Conn<impl Transport>, rx: &Mutex<Receiver<Request>>) {
        loop {
            let req = match lock(rx).recv() {
                Ok(r) => r,
                Err(_) => return,
            };
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            let reply = self.handle(&conn.session, &req);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let mut out = lock(&conn.out);
            let sent = out.write_all(&reply.0).and_then(|_| {
                // Leave the buffer to fill while more replies are coming; the last one out
                // (or a small queue) flushes.
                out.flush()
            });
            if sent.is_err() {
                conn.dead.store(true, Ordering::SeqCst);
                out.get_ref().shutdown();
            }
        }
    }

    /// Does one request and builds its whole reply.
    fn handle(&self, s: &Session, req: &Request) -> Msg {
        if self.stopping.load(Ordering::SeqCst) {
            return error_reply(s, req.cookie, ESHUTDOWN, "server shutting down");
        }
        match self.execute(s, req) {
            Ok(reply) => reply,
            Err(errno) => error_reply(s, req.cookie, errno, ""),
        }
    }

    fn execute(&self, s: &Session, req: &Request) -> std::result::Result<Msg, u32> {
        if let Some(e) = req.error {
            return Err(e);
        }
        let e = &self.export;
        let size = e.image.size();
        let allowed = match req.kind {
            CMD_READ => CMD_FLAG_FUA | if s.structured { CMD_FLAG_DF } else { 0 },
            CMD_WRITE | CMD_TRIM | CMD_CACHE | CMD_FLUSH => CMD_FLAG_FUA,
            CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
            _ => return Err(EINVAL),
        };
        if req.flags & !allowed != 0 {
            return Err(EINVAL);
        }
        let len = u64::from(req.length);
        if req.kind != CMD_FLUSH && req.offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(EINVAL);
        }
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let writes = matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
        if writes && e.read_only {
            return Err(EPERM);
        }
        match req.kind {
            CMD_READ => return self.read(s, req),
            CMD_WRITE => e.image.write_at(&req.payload, req.offset).map_err(errno)?,
            CMD_FLUSH => e.image.flush().map_err(errno)?,
            CMD_TRIM => {
                if let Some(d) = e.image.as_discard().filter(|_| e.discard) {
                    if len > 0 {
                        d.discard(req.offset, len).map_err(errno)?;
                    }
                }
            }
            CMD_CACHE => {}
            CMD_WRITE_ZEROES => {
                let fast = req.flags & CMD_FLAG_FAST_ZERO != 0;
                let may_unmap = req.flags & CMD_FLAG_NO_HOLE == 0;
                match e.image.as_write_zeroes() {
                    Some(z) if len > 0 => {
                        z.write_zeroes(req.offset, len, may_unmap).map_err(errno)?
                    }
                    Some(_) => {}
                    None if fast => return Err(ENOTSUP),
                    None => e
                        .image
                        .write_zeroes_by_writing(req.offset, len)
                        .map_err(errno)?,
                }
            }
            CMD_BLOCK_STATUS => return self.block_status(s, req),
            _ => return Err(EINVAL),
        }
        if fua && writes {
            e.image.flush().map_err(errno)?;
        }
        Ok(ok_reply(s, req.cookie))
    }

    fn read(&self, s: &Session, req: &Request) -> std::result::Result<Msg, u32> {
        let img = &self.export.image;
        let len = req.length as usize;
        if req.length > MAX_PAYLOAD {
            return Err(EINVAL);
        }
        if !s.structured {
            let mut m = Msg::with_capacity(16 + len);
            m.u32(SIMPLE_REPLY_MAGIC).u32(0).u64(req.cookie);
            m.0.resize(16 + len, 0);
            img.read_at(&mut m.0[16..], req.offset).map_err(errno)?;
            return Ok(m);
        }
        let mut m = Msg::with_capacity(32 + len);
        let whole = req.flags & CMD_FLAG_DF != 0 || len == 0;
        let mut pos = req.offset;
        let end = req.offset + u64::from(req.length);
        while pos < end {
            // Holes and zero ranges go as OFFSET_HOLE chunks (sparse reads), data as
            // OFFSET_DATA; a DF read is one data chunk.
            let st = if whole {
                None
            } else {
                self.export.status.status(pos, end - pos).ok()
            };
            let run = st.map_or(end - pos, |st| st.length.min(end - pos)).max(1);
            if st.is_some_and(|st| st.zero) {
                chunk_header(&mut m, 0, REPLY_TYPE_OFFSET_HOLE, req.cookie, 12);
                m.u64(pos).u32(run as u32);
            } else {
                chunk_header(
                    &mut m,
                    0,
                    REPLY_TYPE_OFFSET_DATA,
                    req.cookie,
                    8 + run as u32,
                );
                m.u64(pos);
                let at = m.0.len();
                m.0.resize(at + run as usize, 0);
                if let Err(err) = img.read_at(&mut m.0[at..], pos) {
                    m.0.truncate(at - 28);
                    let text = err.to_string();
                    let text = &text.as_bytes()[..text.len().min(MAX_STRING)];
                    chunk_header(
                        &mut m,
                        REPLY_FLAG_DONE,
                        REPLY_TYPE_ERROR_OFFSET,
                        req.cookie,
                        4 + 2 + text.len() as u32 + 8,
                    );
                    m.u32(errno(err))
                        .u16(text.len() as u16)
                        .bytes(text)
                        .u64(pos);
                    return Ok(m);
                }
            }
            pos += run;
        }
        chunk_header(&mut m, REPLY_FLAG_DONE, REPLY_TYPE_NONE, req.cookie, 0);
        Ok(m)
    }

    fn block_status(&self, s: &Session, req: &Request) -> std::result::Result<Msg, u32> {
        if !s.structured || !(s.base || s.depth) {
            return Err(EINVAL);
        }
        if req.length == 0 {
            return Err(EINVAL);
        }
        let one = req.flags & CMD_FLAG_REQ_ONE != 0;
        let end = req.offset + u64::from(req.length);
        // Collect runs once; each context's descriptors merge the runs its flags cannot tell
        // apart. The walk is bounded in descriptors, as the protocol lets a server answer less
        // than the whole range.
        const MAX_DESCRIPTORS: usize = 16 << 10;
        let mut base: Vec<(u32, u32)> = Vec::new();
        let mut depth: Vec<(u32, u32)> = Vec::new();
        let mut pos = req.offset;
        while pos < end {
            let st = self.export.status.status(pos, end - pos).map_err(errno)?;
            let run = st.length.clamp(1, end - pos) as u32;
            let bflags =
                if st.data { 0 } else { STATE_HOLE } | if st.zero { STATE_ZERO } else { 0 };
            push_run(&mut base, run, bflags);
            push_run(&mut depth, run, st.depth.unwrap_or(0));
            pos += u64::from(run);
            if one || base.len().max(depth.len()) >= MAX_DESCRIPTORS {
                break;
            }
        }
        let mut m = Msg::default();
        let mut contexts = Vec::new();
        if s.base {
            contexts.push((CTX_BASE, base));
        }
        if s.depth {
            contexts.push((CTX_DEPTH, depth));
        }
        let last = contexts.len() - 1;
        for (i, (id, mut runs)) in contexts.into_iter().enumerate() {
            if one {
                runs.truncate(1);
            }
            let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
            chunk_header(
                &mut m,
                flags,
                REPLY_TYPE_BLOCK_STATUS,
                req.cookie,
                4 + 8 * runs.len() as u32,
            );
            m.u32(id);
            for (len, f) in runs {
                m.u32(len).u32(f);
            }
        }
        Ok(m)
    }
}

const CTX_BASE: u32 = 1;
const CTX_DEPTH: u32 = 2;

/// Appends a run, merging it into the last one when the flags are equal.
fn push_run(runs: &mut Vec<(u32, u32)>, len: u32, flags: u32) {
    if let Some(last) = runs.last_mut() {
        if last.1 == flags {
            if let Some(sum) = last.0.checked_add(len) {
                last.0 = sum;
                return;
            }
        }
    }
    runs.push((len, flags));
}

/// What the client negotiated.
#[derive(Debug, Default, Clone)]
struct Session {
    structured: bool,
    base: bool,
    depth: bool,
}

struct Conn<T: Transport> {
    out: Mutex<io::BufWriter<T>>,
    session: Session,
    dead: AtomicBool,
}

struct Request {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    length: u32,
    payload: Vec<u8>,
    error: Option<u32>,
}

/// The NBD error number for a vdisk error.
pub fn errno(e: Error) -> u32 {
    match &e {
        Error::InvalidArgument { .. } => EINVAL,
        Error::Unsupported { .. } => ENOTSUP,
        Error::Io { source, .. } => match source.raw_os_error() {
            Some(28) => ENOSPC,
            Some(1) | Some(13) | Some(30) => EPERM,
            Some(12) => ENOMEM,
            _ => EIO,
        },
        _ => EIO,
    }
}

fn ok_reply(s: &Session, cookie: u64) -> Msg {
    let mut m = Msg::with_capacity(28);
    if s.structured {
        chunk_header(&mut m, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0);
    } else {
        m.u32(SIMPLE_REPLY_MAGIC).u32(0).u64(cookie);
    }
    m
}

fn error_reply(s: &Session, cookie: u64, errno: u32, text: &str) -> Msg {
    let mut m = Msg::with_capacity(64);
    if s.structured {
        let text = &text.as_bytes()[..text.len().min(MAX_STRING)];
        chunk_header(
            &mut m,
            REPLY_FLAG_DONE,
            REPLY_TYPE_ERROR,
            cookie,
            6 + text.len() as u32,
        );
        m.u32(errno).u16(text.len() as u16).bytes(text);
    } else {
        m.u32(SIMPLE_REPLY_MAGIC).u32(errno).u64(cookie);
    }
    m
}

fn chunk_header(m: &mut Msg, flags: u16, kind: u16, cookie: u64, len: u32) {
    m.u32(STRUCTURED_REPLY_MAGIC)
        .u16(flags)
        .u16(kind)
        .u64(cookie)
        .u32(len);
}

fn opt_reply<W: Write>(w: &mut W, opt: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut m = Msg::with_capacity(20 + data.len());
    m.u64(REPLY_MAGIC)
        .u32(opt)
        .u32(kind)
        .u32(data.len() as u32)
        .bytes(data);
    m.send(w)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
