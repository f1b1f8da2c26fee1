//! Image locking, byte for byte as qemu's `file-posix` driver does it, so that vdisk and
//! qemu (qemu-img, qemu-io, qemu-nbd, a running VM) see each other.
//!
//! qemu describes every user of a file by two sets of *permissions*: those it holds (`perm`)
//! and those it lets others hold (`shared`). It publishes both as shared open-file-description
//! locks (`F_OFD_SETLK`, `F_RDLCK`) on single bytes:
//!
//! ```text
//!   byte 100 + i   "I hold permission i"
//!   byte 200 + i   "I do not share permission i"
//!
//!   i   permission          (qemu's BLK_PERM_*)
//!   0   consistent read     CONSISTENT_READ
//!   1   write               WRITE
//!   2   write unchanged     WRITE_UNCHANGED
//!   3   resize              RESIZE
//! ```
//!
//! An opener first takes its own bytes, then tests (`F_OFD_GETLK` with `F_WRLCK`, which only
//! sees *other* descriptions' locks) byte `200 + i` for each permission it wants and byte
//! `100 + i` for each permission it refuses to share. Taking before testing means two racing
//! openers cannot both miss each other. The locks go away when the file is closed.
//!
//! qemu 10 has the four permissions above (`BLK_PERM_ALL` = 0xf); qemu 2.10 to 5.x also had
//! "change children" (graph-mod, bytes 104/204), which no raw-file user ever refused to share,
//! so leaving it out changes no outcome.
//!
//! What each vdisk open mode takes, and the qemu user it behaves like:
//!
//! | open mode                  | holds          | refuses to share | like                        |
//! |----------------------------|----------------|------------------|-----------------------------|
//! | read-write                 | 100, 101, 103  | 201, 203         | a VM's disk (share-rw=off)  |
//! | read-only                  | 100            | 201, 203         | `qemu-img convert` source   |
//! | read-only + force-share    | 100            | nothing          | `qemu-img -U`, `qemu-io -r` |

use std::fs::File;
use std::io;
use std::path::Path;

use vdisk_block::{Error, Result};

use crate::sys;

/// Byte `PERM_BASE + i` locked: "I hold permission i". Libvirt owns byte 0; qemu starts at
/// 100 to leave room.
const PERM_BASE: u64 = 100;
/// Byte `SHARED_BASE + i` locked: "I do not let others hold permission i".
const SHARED_BASE: u64 = 200;

/// A set of qemu block permissions (`BLK_PERM_*` bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Perms(u8);

impl Perms {
    /// Reading gives a self-consistent view of the data.
    pub(crate) const CONSISTENT_READ: Perms = Perms(0x1);
    /// Changing the data.
    pub(crate) const WRITE: Perms = Perms(0x2);
    /// Writing data that does not change what the image reads as.
    pub(crate) const WRITE_UNCHANGED: Perms = Perms(0x4);
    /// Changing the size.
    pub(crate) const RESIZE: Perms = Perms(0x8);
    /// Every permission qemu knows.
    pub(crate) const ALL: Perms = Perms(0xf);

    /// The names qemu prints in its lock errors (`bdrv_perm_names`), by bit index.
    const NAMES: [&'static str; 4] = ["consistent read", "write", "write unchanged", "resize"];

    const fn or(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }

    fn has(self, bit: usize) -> bool {
        self.0 & (1 << bit) != 0
    }
}

/// The permissions one open holds and shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LockMode {
    pub(crate) perm: Perms,
    pub(crate) shared: Perms,
}

impl LockMode {
    /// A writer that owns the image: reads, writes and resizes, and lets others only read.
    pub(crate) const READ_WRITE: LockMode = LockMode {
        perm: Perms::CONSISTENT_READ.or(Perms::WRITE).or(Perms::RESIZE),
        shared: Perms::CONSISTENT_READ.or(Perms::WRITE_UNCHANGED),
    };
    /// A reader that wants the data to hold still while it reads.
    pub(crate) const READ_ONLY: LockMode = LockMode {
        perm: Perms::CONSISTENT_READ,
        shared: Perms::CONSISTENT_READ.or(Perms::WRITE_UNCHANGED),
    };
    /// A reader that accepts whatever others do (`-U`).
    pub(crate) const READ_ONLY_SHARED: LockMode = LockMode {
        perm: Perms::CONSISTENT_READ,
        shared: Perms::ALL,
    };
}

fn io_error(e: io::Error) -> Error {
    Error::io("lock", None, e)
}

fn is_conflict(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES))
}

/// Takes `mode`'s lock bytes on `file` and checks that no other user conflicts, as qemu's
/// `raw_handle_perm_lock(RAW_PL_PREPARE)`. On failure the caller drops `file`, which releases
/// whatever was taken.
pub(crate) fn acquire(file: &File, mode: LockMode, _path: &Path) -> Result<()> {
    // qemu puts this question on a second line; our errors are one line, and the caller
    // prefixes the path.
    let hint = " (is another process using the image?)";
    let bits = 0..Perms::NAMES.len();
    // raw_apply_lock_bytes: our own bytes first.
    for i in bits.clone().filter(|&i| mode.perm.has(i)) {
        take(file, PERM_BASE + i as u64, hint)?;
    }
    for i in bits.clone().filter(|&i| !mode.shared.has(i)) {
        take(file, SHARED_BASE + i as u64, hint)?;
    }
    // raw_check_lock_bytes: does anyone refuse what we want, or hold what we refuse?
    for i in bits.clone().filter(|&i| mode.perm.has(i)) {
        if sys::ofd_byte_is_locked(file, SHARED_BASE + i as u64).map_err(io_error)? {
            return Err(Error::Locked {
                path: None,
                what: format!("Failed to get \"{}\" lock{hint}", Perms::NAMES[i]),
            });
        }
    }
    for i in bits.filter(|&i| !mode.shared.has(i)) {
        if sys::ofd_byte_is_locked(file, PERM_BASE + i as u64).map_err(io_error)? {
            return Err(Error::Locked {
                path: None,
                what: format!("Failed to get shared \"{}\" lock{hint}", Perms::NAMES[i]),
            });
        }
    }
    Ok(())
}

fn take(file: &File, byte: u64, hint: &str) -> Result<()> {
    match sys::ofd_lock_shared(file, byte) {
        Ok(()) => Ok(()),
        // Someone holds a write lock on a byte qemu only ever read-locks: not qemu's scheme,
        // but it is still somebody else's claim on the image.
        Err(e) if is_conflict(&e) => Err(Error::Locked {
            path: None,
            what: format!("Failed to lock byte {byte}{hint}"),
        }),
        Err(e) => Err(io_error(e)),
    }
}
