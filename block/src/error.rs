//! The one error type of every vdisk layer.
//!
//! Errors say *what* went wrong and *where*: the file, the byte offset inside it when one is
//! known, and the operation. The kind separates a damaged image ([`Error::Corrupt`]) from a valid
//! image using something we do not implement ([`Error::Unsupported`]), a failure of the host
//! ([`Error::Io`]), a bad request from the caller ([`Error::InvalidArgument`]) and an image held
//! by another process ([`Error::Locked`]).
//!
//! Layers low in the stack often do not know the file's name; they return an error without a
//! path and the layer that opened the file adds it with [`Error::with_path`].

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with where it happened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The image's bytes break the format's rules: a table past the end of the file, a count
    /// that cannot be, a loop.
    #[error("{}{what}", Prefix(path, offset))]
    Corrupt {
        /// The file whose bytes are wrong.
        path: Option<PathBuf>,
        /// Where in that file, when one place is to blame.
        offset: Option<u64>,
        /// What is wrong, as one lower-case sentence without a final period.
        what: String,
    },
    /// The image is valid but uses a feature vdisk does not implement (encryption, an unknown
    /// incompatible feature bit).
    #[error("{}{what}", Prefix(path, &None))]
    Unsupported {
        /// The file that uses the feature.
        path: Option<PathBuf>,
        /// The feature, as one lower-case sentence.
        what: String,
    },
    /// The host refused an operation.
    #[error("{}{op}{}: {}", Prefix(path, &None), AtOffset(offset), IoText(source))]
    Io {
        /// The file the operation was on.
        path: Option<PathBuf>,
        /// The operation, such as "read" or "fallocate".
        op: &'static str,
        /// The byte offset the operation started at, when it has one.
        offset: Option<u64>,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The caller asked for something impossible: a read past the end, a bad option value.
    #[error("{}{what}", Prefix(path, &None))]
    InvalidArgument {
        /// The file the request was about, if any.
        path: Option<PathBuf>,
        /// What is wrong with the request.
        what: String,
    },
    /// A guest filesystem answered a request with an errno: no such file, not a directory,
    /// no space left in the filesystem, ... The guest's answer, not the host's ([`Error::Io`]).
    #[error("{}{op}: {}", Prefix(path, &None), IoText(&io::Error::from_raw_os_error(*errno)))]
    Guest {
        /// The device (or guest path) the request was about, if named.
        path: Option<PathBuf>,
        /// The operation, such as "lookup" or "rename".
        op: &'static str,
        /// The Linux errno a kernel filesystem would return (ENOENT = 2, ...).
        errno: i32,
    },
    /// Another process holds the lock that this open needs.
    #[error("{}{what}", Prefix(path, &None))]
    Locked {
        /// The locked file.
        path: Option<PathBuf>,
        /// Which lock could not be taken.
        what: String,
    },
}

struct Prefix<'a>(&'a Option<PathBuf>, &'a Option<u64>);

impl fmt::Display for Prefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.0 {
            write!(f, "{}: ", p.display())?;
        }
        if let Some(o) = self.1 {
            write!(f, "at offset {o:#x}: ")?;
        }
        Ok(())
    }
}

struct AtOffset<'a>(&'a Option<u64>);

impl fmt::Display for AtOffset<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(o) => write!(f, " at offset {o:#x}"),
            None => Ok(()),
        }
    }
}

/// An OS error's text without Rust's " (os error N)" suffix, as C tools print it.
struct IoText<'a>(&'a io::Error);

impl fmt::Display for IoText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string();
        match (self.0.raw_os_error(), text.rfind(" (os error ")) {
            (Some(_), Some(i)) => f.write_str(&text[..i]),
            _ => f.write_str(&text),
        }
    }
}

impl Error {
    /// A corrupt-image error without a path or offset.
    pub fn corrupt(what: impl Into<String>) -> Self {
        Error::Corrupt {
            path: None,
            offset: None,
            what: what.into(),
        }
    }

    /// A corrupt-image error blaming the bytes at `offset` of the file.
    pub fn corrupt_at(offset: u64, what: impl Into<String>) -> Self {
        Error::Corrupt {
            path: None,
            offset: Some(offset),
            what: what.into(),
        }
    }

    /// An unsupported-feature error.
    pub fn unsupported(what: impl Into<String>) -> Self {
        Error::Unsupported {
            path: None,
            what: what.into(),
        }
    }

    /// An invalid-argument error.
    pub fn invalid(what: impl Into<String>) -> Self {
        Error::InvalidArgument {
            path: None,
            what: what.into(),
        }
    }

    /// A host I/O error from operation `op`.
    pub fn io(op: &'static str, offset: Option<u64>, source: io::Error) -> Self {
        Error::Io {
            path: None,
            op,
            offset,
            source,
        }
    }

    /// A guest filesystem's refusal of operation `op` with Linux errno `errno`.
    pub fn guest(op: &'static str, errno: i32) -> Self {
        Error::Guest {
            path: None,
            op,
            errno,
        }
    }

    /// The path this error names, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::Corrupt { path, .. }
            | Error::Unsupported { path, .. }
            | Error::Io { path, .. }
            | Error::Guest { path, .. }
            | Error::InvalidArgument { path, .. }
            | Error::Locked { path, .. } => path.as_deref(),
        }
    }

    /// Names `path` as the file this error is about, unless a lower layer already named one
    /// (the lower layer knows better: a backing file, an external data file).
    #[must_use]
    pub fn with_path(mut self, new: impl AsRef<Path>) -> Self {
        let slot = match &mut self {
            Error::Corrupt { path, .. }
            | Error::Unsupported { path, .. }
            | Error::Io { path, .. }
            | Error::Guest { path, .. }
            | Error::InvalidArgument { path, .. }
            | Error::Locked { path, .. } => path,
        };
        if slot.is_none() {
            *slot = Some(new.as_ref().to_path_buf());
        }
        self
    }

    /// The message without the path prefix, for callers that print the path their own way.
    pub fn message(&self) -> String {
        match self {
            Error::Corrupt { offset, what, .. } => Prefix(&None, offset).to_string() + what,
            Error::Unsupported { what, .. }
            | Error::InvalidArgument { what, .. }
            | Error::Locked { what, .. } => what.clone(),
            Error::Io {
                op, offset, source, ..
            } => format!("{op}{}: {}", AtOffset(offset), IoText(source)),
            Error::Guest { op, errno, .. } => {
                format!("{op}: {}", IoText(&io::Error::from_raw_os_error(*errno)))
            }
        }
    }
}

impl From<Error> for io::Error {
    /// For callers that speak `std::io` (FUSE, VMM device code): the kind maps to the closest
    /// `io::ErrorKind`, and the message is kept.
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Corrupt { .. } => io::ErrorKind::InvalidData,
            Error::Unsupported { .. } => io::ErrorKind::Unsupported,
            Error::InvalidArgument { .. } => io::ErrorKind::InvalidInput,
            Error::Locked { .. } => io::ErrorKind::WouldBlock,
            Error::Io { source, .. } => source.kind(),
            Error::Guest { errno, .. } => io::Error::from_raw_os_error(*errno).kind(),
        };
        match e {
            // Keep the raw OS error so errno reaches FUSE unchanged.
            Error::Io { source, .. } if source.raw_os_error().is_some() => source,
            Error::Guest { errno, .. } => io::Error::from_raw_os_error(errno),
            e => io::Error::new(kind, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_errors_carry_their_errno() {
        let e = Error::guest("lookup", 2).with_path("/dev/sda1");
        assert_eq!(
            e.to_string(),
            "/dev/sda1: lookup: No such file or directory"
        );
        assert_eq!(e.message(), "lookup: No such file or directory");
        let io: io::Error = e.into();
        assert_eq!(io.raw_os_error(), Some(2));
    }

    #[test]
    fn messages_name_file_and_offset() {
        let e = Error::corrupt_at(0x50000, "L2 table lies beyond the end of the file")
            .with_path("test.qcow2");
        assert_eq!(
            e.to_string(),
            "test.qcow2: at offset 0x50000: L2 table lies beyond the end of the file"
        );
        let e = Error::io("read", Some(512), io::Error::from_raw_os_error(libc_eio()))
            .with_path("a.raw");
        assert_eq!(
            e.to_string(),
            "a.raw: read at offset 0x200: Input/output error"
        );
    }

    #[test]
    fn inner_path_wins() {
        let e = Error::corrupt("bad")
            .with_path("base.raw")
            .with_path("top.qcow2");
        assert_eq!(e.path(), Some(Path::new("base.raw")));
    }

    #[test]
    fn io_error_keeps_errno() {
        let e = Error::io("read", None, io::Error::from_raw_os_error(libc_eio()));
        let io: io::Error = e.into();
        assert_eq!(io.raw_os_error(), Some(libc_eio()));
        let io: io::Error = Error::corrupt("x").into();
        assert_eq!(io.kind(), io::ErrorKind::InvalidData);
    }

    fn libc_eio() -> i32 {
        5
    }
}
