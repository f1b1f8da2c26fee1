//! The client side: an NBD export as a [`vdisk_block::Image`].
//!
//! Names are the ones qemu accepts: `nbd://HOST[:PORT]/EXPORT` (port 10809 by default) and
//! `nbd+unix:///EXPORT?socket=PATH`. The client negotiates fixed newstyle with structured
//! replies and `base:allocation`, so [`Image::map`] reports the server's holes and zero ranges
//! (qemu-img's convert and map skip them the same way). Requests on one client are sent one
//! at a time under a lock; open several clients for parallel I/O.

use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use vdisk_block::{BlockDevice, BlockDeviceExt, Error, Image, MapKind, Mapping, Result};

use crate::proto::*;

/// Where an export is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A TCP server.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// Export name.
        export: String,
    },
    /// A server on a Unix socket.
    Unix {
        /// The socket's path.
        socket: String,
        /// Export name.
        export: String,
    },
}

impl Target {
    /// Whether `name` is an NBD URI (and so must not be opened as a file).
    pub fn is_nbd_name(name: &str) -> bool {
        name.starts_with("nbd://")
            || name.starts_with("nbd+tcp://")
            || name.starts_with("nbd+unix://")
    }

    /// Parses `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH`.
    pub fn parse(name: &str) -> Result<Target> {
        let bad = |why: &str| Error::invalid(format!("{name}: {why}"));
        if let Some(rest) = name.strip_prefix("nbd+unix://") {
            let (path, query) = rest
                .split_once('?')
                .ok_or_else(|| bad("missing ?socket=PATH"))?;
            if !path.is_empty() && !path.starts_with('/') {
                return Err(bad("nbd+unix URIs take no host"));
            }
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .filter(|s| !s.is_empty())
                .ok_or_else(|| bad("missing ?socket=PATH"))?;
            return Ok(Target::Unix {
                socket: percent_decode(socket).ok_or_else(|| bad("bad %-escape"))?,
                export: percent_decode(path.trim_start_matches('/'))
                    .ok_or_else(|| bad("bad %-escape"))?,
            });
        }
        let rest = name
            .strip_prefix("nbd://")
            .or_else(|| name.strip_prefix("nbd+tcp://"))
            .ok_or_else(|| bad("not an nbd:// or nbd+unix:// URI"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if path.contains('?') {
            return Err(bad("nbd:// URIs take no query"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, tail) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in host"))?;
            (h.to_string(), tail.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = match port {
            None | Some("") => 10809,
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        };
        Ok(Target::Tcp {
            host,
            port,
            export: percent_decode(path).ok_or_else(|| bad("bad %-escape"))?,
        })
    }

    fn export(&self) -> &str {
        match self {
            Target::Tcp { export, .. } | Target::Unix { export, .. } => export,
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Wire {
    r: BufReader<Stream>,
    w: Stream,
    cookie: u64,
    broken: bool,
}

/// A connected NBD export.
pub struct Client {
    name: String,
    size: u64,
    flags: u16,
    base_context: Option<u32>,
    wire: Mutex<Wire>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("flags", &self.flags)
            .finish()
    }
}

fn proto_err(what: impl Into<String>) -> Error {
    Error::corrupt(format!("NBD server: {}", what.into()))
}

fn io_err(op: &'static str, e: io::Error) -> Error {
    Error::io(op, None, e)
}

impl Client {
    /// Connects to `name` (an NBD URI) and negotiates.
    pub fn open(name: &str) -> Result<Client> {
        let target = Target::parse(name)?;
        Client::connect(&target, name).map_err(|e| e.with_path(name))
    }

    /// Connects to `target`; `name` is what errors and `Debug` call it.
    pub fn connect(target: &Target, name: &str) -> Result<Client> {
        let stream = match target {
            Target::Tcp { host, port, .. } => {
                let s =
                    TcpStream::connect((host.as_str(), *port)).map_err(|e| io_err("connect", e))?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
            Target::Unix { socket, .. } => {
                Stream::Unix(UnixStream::connect(socket).map_err(|e| io_err("connect", e))?)
            }
        };
        let reader = match &stream {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone().map_err(|e| io_err("connect", e))?),
            Stream::Unix(s) => Stream::Unix(s.try_clone().map_err(|e| io_err("connect", e))?),
        };
        let mut wire = Wire {
            r: BufReader::with_capacity(256 << 10, reader),
            w: stream,
            cookie: 0,
            broken: false,
        };
        let (size, flags, base_context) =
            negotiate(&mut wire, target.export()).map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData | io::ErrorKind::Other => proto_err(e.to_string()),
                _ => io_err("negotiate", e),
            })?;
        Ok(Client {
            name: name.to_string(),
            size,
            flags,
            base_context,
            wire: Mutex::new(wire),
        })
    }

    /// The transmission flags the server sent.
    pub fn transmission_flags(&self) -> u16 {
        self.flags
    }

    /// Sends one request and reads its reply; `data` receives a read's bytes. Returns the
    /// block status descriptors of a block-status request.
    fn request(
        &self,
        kind: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
        data: Option<&mut [u8]>,
    ) -> Result<Vec<(u32, u32)>> {
        let mut wire = self.wire.lock().unwrap_or_else(|e| e.into_inner());
        if wire.broken {
            return Err(proto_err("connection lost after an earlier error"));
        }
        wire.cookie += 1;
        let cookie = wire.cookie;
        let r = exchange(
            &mut wire,
            kind,
            flags,
            cookie,
            offset,
            len,
            payload,
            data,
            self.base_context,
        );
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(errno)) => Err(Error::io(
                op_name(kind),
                Some(offset),
                io::Error::from_raw_os_error(errno as i32),
            )),
            Err(e) => {
                wire.broken = true;
                Err(match e.kind() {
                    io::ErrorKind::InvalidData => proto_err(e.to_string()),
                    _ => io_err(op_name(kind), e),
                })
            }
        }
    }
}

fn op_name(kind: u16) -> &'static str {
    match kind {
        CMD_READ => "NBD read",
        CMD_WRITE => "NBD write",
        CMD_FLUSH => "NBD flush",
        CMD_TRIM => "NBD trim",
        CMD_WRITE_ZEROES => "NBD write zeroes",
        CMD_BLOCK_STATUS => "NBD block status",
        _ => "NBD request",
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn send_opt(w: &mut Stream, opt: u32, data: &[u8]) -> io::Result<()> {
    let mut m = Msg::with_capacity(16 + data.len());
    m.u64(IHAVEOPT).u32(opt).u32(data.len() as u32).bytes(data);
    m.send(w)
}

/// Reads one option reply: (type, data). Data is capped so a hostile server cannot make us
/// allocate without bound.
fn read_opt_reply(r: &mut impl Read, opt: u32) -> io::Result<(u32, Vec<u8>)> {
    if read_u64(r)? != REPLY_MAGIC {
        return Err(bad("option reply without magic"));
    }
    if read_u32(r)? != opt {
        return Err(bad("reply to an option we did not send"));
    }
    let kind = read_u32(r)?;
    let len = read_u32(r)?;
    if len > 1 << 20 {
        return Err(bad("option reply too large"));
    }
    let mut data = vec![0; len as usize];
    r.read_exact(&mut data)?;
    Ok((kind, data))
}

fn negotiate(wire: &mut Wire, export: &str) -> io::Result<(u64, u16, Option<u32>)> {
    let r = &mut wire.r;
    if read_u64(r)? != NBDMAGIC {
        return Err(bad("not an NBD server (no NBDMAGIC)"));
    }
    if read_u64(r)? != IHAVEOPT {
        return Err(bad("oldstyle negotiation is not supported"));
    }
    let hflags = read_u16(r)?;
    if hflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(bad("server does not speak fixed newstyle negotiation"));
    }
    let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
    let mut cflags = FLAG_C_FIXED_NEWSTYLE;
    if no_zeroes {
        cflags |= FLAG_C_NO_ZEROES;
    }
    wire.w.write_all(&cflags.to_be_bytes())?;

    send_opt(&mut wire.w, OPT_STRUCTURED_REPLY, b"")?;
    let (kind, _) = read_opt_reply(&mut wire.r, OPT_STRUCTURED_REPLY)?;
    let structured = kind == REP_ACK;

    let mut base_context = None;
    if structured {
        let mut m = Msg::default();
        m.u32(export.len() as u32)
            .bytes(export.as_bytes())
            .u32(1)
            .u32(CONTEXT_BASE_ALLOCATION.len() as u32)
            .bytes(CONTEXT_BASE_ALLOCATION.as_bytes());
        send_opt(&mut wire.w, OPT_SET_META_CONTEXT, &m.0)?;
        loop {
            let (kind, data) = read_opt_reply(&mut wire.r, OPT_SET_META_CONTEXT)?;
            match kind {
                REP_META_CONTEXT => {
                    let mut p = Payload::new(&data);
                    let id = p.u32().ok_or_else(|| bad("short meta context reply"))?;
                    if p.rest() == CONTEXT_BASE_ALLOCATION.as_bytes() {
                        base_context = Some(id);
                    }
                }
                REP_ACK => break,
                // An error: no block status; plain reads still work.
                _ => break,
            }
        }
    }

    let mut m = Msg::default();
    m.u32(export.len() as u32)
        .bytes(export.as_bytes())
        .u16(1)
        .u16(INFO_BLOCK_SIZE);
    send_opt(&mut wire.w, OPT_GO, &m.0)?;
    let mut size_flags = None;
    loop {
        let (kind, data) = read_opt_reply(&mut wire.r, OPT_GO)?;
        match kind {
            REP_INFO => {
                let mut p = Payload::new(&data);
                if p.u16() == Some(INFO_EXPORT) {
                    let size = p.u64().ok_or_else(|| bad("short NBD_INFO_EXPORT"))?;
                    let flags = p.u16().ok_or_else(|| bad("short NBD_INFO_EXPORT"))?;
                    size_flags = Some((size, flags));
                }
            }
            REP_ACK => break,
            REP_ERR_UNSUP => {
                // An old server: NBD_OPT_EXPORT_NAME instead.
                send_opt(&mut wire.w, OPT_EXPORT_NAME, export.as_bytes())?;
                let size = read_u64(&mut wire.r)?;
                let flags = read_u16(&mut wire.r)?;
                if !no_zeroes {
                    skip(&mut wire.r, 124)?;
                }
                size_flags = Some((size, flags));
                break;
            }
            k if k & (1 << 31) != 0 => {
                let text = String::from_utf8_lossy(&data);
                let what = if k == REP_ERR_UNKNOWN {
                    format!("no export named '{export}'")
                } else {
                    format!("export refused ({text})")
                };
                return Err(io::Error::other(what));
            }
            _ => return Err(bad("unexpected reply to NBD_OPT_GO")),
        }
    }
    let (size, flags) = size_flags.ok_or_else(|| bad("server sent no export size"))?;
    Ok((size, flags, if structured { base_context } else { None }))
}

/// One request/reply exchange. The outer error is a broken connection; the inner one the
/// server's errno for this request.
#[allow(clippy::too_many_arguments)]
fn exchange(
    wire: &mut Wire,
    kind: u16,
    flags: u16,
    cookie: u64,
    offset: u64,
    len: u32,
    payload: &[u8],
    mut data: Option<&mut [u8]>,
    base_context: Option<u32>,
) -> io::Result<std::result::Result<Vec<(u32, u32)>, u32>> {
    let mut m = Msg::with_capacity(28 + payload.len());
    m.u32(REQUEST_MAGIC)
        .u16(flags)
        .u16(kind)
        .u64(cookie)
        .u64(offset)
        .u32(len)
        .bytes(payload);
    m.send(&mut wire.w)?;
    let r = &mut wire.r;
    let mut extents = Vec::new();
    let mut error = None;
    loop {
        let magic = read_u32(r)?;
        if magic == SIMPLE_REPLY_MAGIC {
            let errno = read_u32(r)?;
            if read_u64(r)? != cookie {
                return Err(bad("reply for a request we did not send"));
            }
            if errno != 0 {
                return Ok(Err(errno));
            }
            if let Some(buf) = data.as_deref_mut() {
                r.read_exact(buf)?;
            }
            return Ok(Ok(extents));
        }
        if magic != STRUCTURED_REPLY_MAGIC {
            return Err(bad("reply without a known magic"));
        }
        let cflags = read_u16(r)?;
        let ctype = read_u16(r)?;
        if read_u64(r)? != cookie {
            return Err(bad("reply for a request we did not send"));
        }
        let clen = read_u32(r)?;
        match ctype {
            REPLY_TYPE_NONE => {}
            REPLY_TYPE_OFFSET_DATA | REPLY_TYPE_OFFSET_HOLE => {
                let buf = data
                    .as_deref_mut()
                    .ok_or_else(|| bad("read data for a non-read"))?;
                let at = read_u64(r)?;
                let rel = at
                    .checked_sub(offset)
                    .filter(|&d| d <= buf.len() as u64)
                    .ok_or_else(|| bad("chunk outside the request"))?
                    as usize;
                let n = if ctype == REPLY_TYPE_OFFSET_DATA {
                    clen.checked_sub(8).ok_or_else(|| bad("short data chunk"))? as usize
                } else {
                    if clen != 12 {
                        return Err(bad("hole chunk of the wrong size"));
                    }
                    read_u32(r)? as usize
                };
                let dst = buf
                    .get_mut(rel..rel.checked_add(n).ok_or_else(|| bad("chunk overflow"))?)
                    .ok_or_else(|| bad("chunk outside the request"))?;
                if ctype == REPLY_TYPE_OFFSET_DATA {
                    r.read_exact(dst)?;
                } else {
                    dst.fill(0);
                }
            }
            REPLY_TYPE_BLOCK_STATUS => {
                if clen < 4 || (clen - 4) % 8 != 0 || clen > (1 << 24) {
                    return Err(bad("malformed block status chunk"));
                }
                let id = read_u32(r)?;
                for _ in 0..(clen - 4) / 8 {
                    let l = read_u32(r)?;
                    let f = read_u32(r)?;
                    if Some(id) == base_context {
                        extents.push((l, f));
                    }
                }
            }
            t if t & (1 << 15) != 0 => {
                if !(6..=(1 << 20)).contains(&clen) {
                    return Err(bad("malformed error chunk"));
                }
                let errno = read_u32(r)?;
                skip(r, u64::from(clen - 4))?;
                error = Some(if errno == 0 { EIO } else { errno });
            }
            _ => {
                // Unknown chunk types that are not errors may be skipped.
                if clen > (1 << 26) {
                    return Err(bad("oversized chunk"));
                }
                skip(r, u64::from(clen))?;
            }
        }
        if cflags & REPLY_FLAG_DONE != 0 {
            return Ok(match error {
                Some(e) => Err(e),
                None => Ok(extents),
            });
        }
    }
}

impl BlockDevice for Client {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_PAYLOAD as usize);
            let pos = offset + done as u64;
            self.request(
                CMD_READ,
                0,
                pos,
                n as u32,
                &[],
                Some(&mut buf[done..done + n]),
            )?;
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.is_read_only() {
            return Err(Error::invalid("the NBD export is read-only"));
        }
        self.check_range(offset, buf.len() as u64)?;
        for (i, chunk) in buf.chunks(MAX_PAYLOAD as usize).enumerate() {
            let pos = offset + (i * MAX_PAYLOAD as usize) as u64;
            self.request(CMD_WRITE, 0, pos, chunk.len() as u32, chunk, None)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        if self.flags & FLAG_SEND_FLUSH == 0 {
            return Ok(());
        }
        self.request(CMD_FLUSH, 0, 0, 0, &[], None).map(|_| ())
    }

    fn is_read_only(&self) -> bool {
        self.flags & FLAG_READ_ONLY != 0
    }
}

impl Client {
    /// Writes zeros over `[offset, offset + len)`, letting the server unmap them when
    /// `may_unmap`; falls back to writing zeros when the server has no write-zeroes.
    pub fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.check_range(offset, len)?;
        if self.flags & FLAG_SEND_WRITE_ZEROES == 0 {
            return self.write_zeroes_by_writing(offset, len);
        }
        let flags = if may_unmap { 0 } else { CMD_FLAG_NO_HOLE };
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(1 << 30);
            self.request(CMD_WRITE_ZEROES, flags, pos, n as u32, &[], None)?;
            pos += n;
        }
        Ok(())
    }

    /// Asks the server to discard `[offset, offset + len)` (a no-op when it cannot).
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        if self.flags & FLAG_SEND_TRIM == 0 {
            return Ok(());
        }
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(1 << 30);
            self.request(CMD_TRIM, 0, pos, n as u32, &[], None)?;
            pos += n;
        }
        Ok(())
    }
}

impl Image for Client {
    fn format_name(&self) -> &'static str {
        "nbd"
    }

    /// From `base:allocation`: a range with `NBD_STATE_ZERO` reads as zeros, anything else
    /// is data at the same offset of the export. Without block status everything is data.
    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        if offset >= self.size {
            return Ok(Mapping {
                offset,
                len: 0,
                kind: MapKind::Eof,
            });
        }
        let limit = max_len
            .min(self.size - offset)
            .min(u64::from(u32::MAX) & !0xfff);
        let data = Mapping {
            offset,
            len: limit,
            kind: MapKind::Data {
                host_offset: offset,
            },
        };
        if self.base_context.is_none() || limit == 0 {
            return Ok(data);
        }
        let ext = self.request(CMD_BLOCK_STATUS, 0, offset, limit as u32, &[], None)?;
        let Some(&(len, flags)) = ext.first() else {
            return Err(proto_err("block status reply without descriptors"));
        };
        if len == 0 {
            return Err(proto_err("block status descriptor of length 0"));
        }
        let len = u64::from(len).min(limit);
        Ok(Mapping {
            offset,
            len,
            kind: if flags & STATE_ZERO != 0 {
                MapKind::Zero { host_offset: None }
            } else {
                MapKind::Data {
                    host_offset: offset,
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_style_names() {
        assert_eq!(
            Target::parse("nbd://localhost:10810/disk").unwrap(),
            Target::Tcp {
                host: "localhost".into(),
                port: 10810,
                export: "disk".into()
            }
        );
        assert_eq!(
            Target::parse("nbd://[::1]/").unwrap(),
            Target::Tcp {
                host: "::1".into(),
                port: 10809,
                export: "".into()
            }
        );
        assert_eq!(
            Target::parse("nbd+unix:///my%20disk?socket=/tmp/s.sock").unwrap(),
            Target::Unix {
                socket: "/tmp/s.sock".into(),
                export: "my disk".into()
            }
        );
        for bad in [
            "nbd://",
            "nbd://h:port/x",
            "nbd+unix:///x",
            "nbd+unix://host/x?socket=/s",
            "nbd://h/%zz",
        ] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(bad), "{bad}: {e}");
        }
    }
}
