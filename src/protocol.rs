//! The protocol layer: what an image format reads its bytes from (qemu's "file" child node).
//!
//! ```text
//!   open("disk.qcow2")                         open("nbd+unix:///x?socket=/s")
//!     Protocol::File(RawFile: the host file)     Protocol::Nbd(Client: the export)
//!       -> format driver (raw, qcow2, ...)          -> format driver (raw, or -f qcow2)
//!
//!   open("https://h/dir/top.qcow2")
//!     Protocol::Http(HttpFile: ranged GETs, block cache, read-ahead; read-only)
//!       -> format driver (probed, as for a host file)
//! ```
//!
//! A name is an NBD export when it is an NBD URI ([`is_nbd_name`]), a file on a web server when
//! it is an `http://` or `https://` URL ([`is_http_name`]); everything else is a host file. As in
//! qemu, an NBD export is a protocol: it is opened raw unless a format is given, and its block
//! status (`base:allocation`) is the raw layer's map, so copies skip its holes. An HTTP file
//! is probed like a host file (qemu's curl node is too) and is all data.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vdisk_block::{
    BlockDevice, Discard, Error, Image, MapKind, Mapping, Preallocation, Resize, Result,
    WriteZeroes,
};
use vdisk_http::HttpFile;
use vdisk_nbd::client::{Client, Target};
use vdisk_raw::RawFile;

/// Whether `name` names an NBD export rather than a host file.
pub fn is_nbd_name(name: &Path) -> bool {
    name.to_str().is_some_and(Target::is_nbd_name)
}

/// Whether `name` is an `http://` or `https://` URL.
pub fn is_http_name(name: &Path) -> bool {
    name.to_str().is_some_and(vdisk_http::is_http_name)
}

/// Whether `name` is a network name (NBD or HTTP) rather than a host file.
pub fn is_remote_name(name: &Path) -> bool {
    is_nbd_name(name) || is_http_name(name)
}

/// The name qemu gives an NBD export once opened (`nbd_refresh_filename`): the port always
/// shown for TCP, an empty export name dropped.
pub fn nbd_display_name(target: &Target) -> String {
    match target {
        Target::Tcp { host, port, export } => {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            if export.is_empty() {
                format!("nbd://{host}:{port}")
            } else {
                format!("nbd://{host}:{port}/{export}")
            }
        }
        Target::Unix { socket, export } => {
            if export.is_empty() {
                format!("nbd+unix://?socket={socket}")
            } else {
                format!("nbd+unix:///{export}?socket={socket}")
            }
        }
    }
}

/// The bytes under an image format: a host file or an NBD export.
#[derive(Debug)]
pub enum Protocol {
    /// A host file or block device.
    File(Arc<RawFile>),
    /// An NBD export, with the name qemu reports for it.
    Nbd {
        /// The connected export.
        client: Client,
        /// The export's name as qemu prints it.
        name: PathBuf,
    },
    /// A file on a web server, read by ranges.
    Http(HttpFile),
}

impl Protocol {
    /// Opens `name`: an NBD export when it is an NBD URI, else the host file.
    pub fn open(name: &Path, opts: &vdisk_raw::OpenOptions) -> Result<Protocol> {
        if let Some(uri) = name.to_str().filter(|n| Target::is_nbd_name(n)) {
            let target = Target::parse(uri)?;
            let client = Client::connect(&target, uri).map_err(|e| e.with_path(uri))?;
            if !opts.read_only && client.is_read_only() {
                return Err(Error::invalid("the NBD export is read-only").with_path(uri));
            }
            return Ok(Protocol::Nbd {
                client,
                name: PathBuf::from(nbd_display_name(&target)),
            });
        }
        if let Some(url) = name.to_str().filter(|n| vdisk_http::is_http_name(n)) {
            if !opts.read_only {
                return Err(vdisk_http::read_only().with_path(url));
            }
            let o = vdisk_http::Options::from_env().map_err(|e| e.with_path(url))?;
            return Ok(Protocol::Http(HttpFile::open(url, &o)?));
        }
        Ok(Protocol::File(Arc::new(RawFile::open(name, opts)?)))
    }

    /// The name the protocol node reports: the host path, or the export's normalized URI.
    pub fn path(&self) -> &Path {
        match self {
            Protocol::File(f) => f.path(),
            Protocol::Nbd { name, .. } => name,
            Protocol::Http(h) => h.path(),
        }
    }

    /// The host file, when this is one.
    pub fn as_file(&self) -> Option<&Arc<RawFile>> {
        match self {
            Protocol::File(f) => Some(f),
            _ => None,
        }
    }

    /// The NBD export, when this is one.
    pub fn as_nbd(&self) -> Option<&Client> {
        match self {
            Protocol::Nbd { client, .. } => Some(client),
            _ => None,
        }
    }

    /// Whether this is a host block device.
    pub fn is_block_device(&self) -> bool {
        self.as_file().is_some_and(|f| f.is_block_device())
    }

    /// Host storage used (`qemu-img info`'s disk size); `None` where qemu says "unavailable"
    /// (an NBD export, an HTTP file).
    pub fn allocated_size(&self) -> Result<Option<u64>> {
        match self {
            Protocol::File(f) => f.allocated_size().map(Some),
            Protocol::Nbd { .. } | Protocol::Http(_) => Ok(None),
        }
    }

    /// The host file, or an error naming what needs one (metadata rewrites in place, resize).
    pub fn host_file(&self, what: &str) -> Result<&Arc<RawFile>> {
        self.as_file().ok_or_else(|| {
            let over = if let Protocol::Http(_) = self {
                "HTTP"
            } else {
                "NBD"
            };
            Error::unsupported(format!("{what} is not supported over {over}"))
                .with_path(self.path())
        })
    }
}

impl From<RawFile> for Protocol {
    fn from(f: RawFile) -> Protocol {
        Protocol::File(Arc::new(f))
    }
}

impl BlockDevice for Protocol {
    fn size(&self) -> u64 {
        match self {
            Protocol::File(f) => f.size(),
            Protocol::Nbd { client, .. } => client.size(),
            Protocol::Http(h) => h.size(),
        }
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match self {
            Protocol::File(f) => f.read_at(buf, offset),
            Protocol::Nbd { client, .. } => client.read_at(buf, offset),
            Protocol::Http(h) => h.read_at(buf, offset),
        }
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        match self {
            Protocol::File(f) => f.write_at(buf, offset),
            Protocol::Nbd { client, .. } => client.write_at(buf, offset),
            Protocol::Http(h) => h.write_at(buf, offset),
        }
    }
    fn flush(&self) -> Result<()> {
        match self {
            Protocol::File(f) => f.flush(),
            Protocol::Nbd { client, .. } => client.flush(),
            Protocol::Http(h) => h.flush(),
        }
    }
    fn is_read_only(&self) -> bool {
        match self {
            Protocol::File(f) => f.is_read_only(),
            Protocol::Nbd { client, .. } => client.is_read_only(),
            Protocol::Http(_) => true,
        }
    }
}

impl Image for Protocol {
    fn format_name(&self) -> &'static str {
        match self {
            Protocol::File(f) => f.format_name(),
            Protocol::Nbd { .. } => "nbd",
            Protocol::Http(h) => h.protocol_name(),
        }
    }

    /// The host file's holes, or the export's `base:allocation`: zero ranges keep their
    /// offset, as a raw node over either reports them (`qemu-img map` prints it).
    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        match self {
            Protocol::File(f) => f.map(offset, max_len),
            Protocol::Nbd { client, .. } => {
                let mut m = client.map(offset, max_len)?;
                if let MapKind::Zero { host_offset: None } = m.kind {
                    m.kind = MapKind::Zero {
                        host_offset: Some(offset),
                    };
                }
                Ok(m)
            }
            Protocol::Http(h) => h.map(offset, max_len),
        }
    }

    fn as_write_zeroes(&self) -> Option<&(dyn WriteZeroes + Send + Sync)> {
        Some(self)
    }
    fn as_discard(&self) -> Option<&(dyn Discard + Send + Sync)> {
        Some(self)
    }
    fn as_resize(&self) -> Option<&(dyn Resize + Send + Sync)> {
        self.as_file().map(|_| self as &(dyn Resize + Send + Sync))
    }
}

impl WriteZeroes for Protocol {
    /// A host file punches or zeroes in place; an export gets `NBD_CMD_WRITE_ZEROES`
    /// (without `NO_HOLE` when `may_unmap`), or written zeros when it has no such command.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        match self {
            Protocol::File(f) => f.write_zeroes(offset, len, may_unmap),
            Protocol::Nbd { client, .. } => client.write_zeroes(offset, len, may_unmap),
            Protocol::Http(h) => Err(vdisk_http::read_only().with_path(h.path())),
        }
    }
}

impl Discard for Protocol {
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        match self {
            Protocol::File(f) => f.discard(offset, len),
            Protocol::Nbd { client, .. } => client.trim(offset, len),
            Protocol::Http(h) => Err(vdisk_http::read_only().with_path(h.path())),
        }
    }
}

impl Resize for Protocol {
    /// An NBD export keeps its size (qemu: "Cannot grow NBD nodes").
    fn resize(&self, new_size: u64, prealloc: Preallocation) -> Result<()> {
        match self {
            Protocol::File(f) => f.resize(new_size, prealloc),
            Protocol::Nbd { .. } => Err(Error::unsupported("Cannot grow NBD nodes")),
            Protocol::Http(h) => Err(vdisk_http::read_only().with_path(h.path())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shown_as_qemu_shows_them() {
        let t = Target::parse("nbd+unix:///?socket=/tmp/s").unwrap();
        assert_eq!(nbd_display_name(&t), "nbd+unix://?socket=/tmp/s");
        let t = Target::parse("nbd+unix:///disk?socket=/tmp/s").unwrap();
        assert_eq!(nbd_display_name(&t), "nbd+unix:///disk?socket=/tmp/s");
        let t = Target::parse("nbd://localhost/x").unwrap();
        assert_eq!(nbd_display_name(&t), "nbd://localhost:10809/x");
        assert!(is_nbd_name(Path::new("nbd://h/x")));
        assert!(!is_nbd_name(Path::new("./nbd://h/x")));
    }
}
