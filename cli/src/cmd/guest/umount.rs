//! `vdisk umount`: guestunmount. Returns after the filesystem is released and the process
//! that served it has closed the images and exited.
//!
//! The serving process named the mount "vdisk:<pid>" (see `mount`); we find that name in
//! /proc/self/mountinfo, take a pidfd on the process, unmount (umount2 as root, else
//! `fusermount3 -u`), then wait on the pidfd: it becomes readable when the process exits.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};
use vdisk_guestfs::ops::os_text;

use crate::{CmdResult, Failure};

/// `vdisk umount [--timeout SECS] [--retry N] MOUNTDIR`.
#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    /// Seconds to wait for the serving process to finish and exit.
    #[arg(long, value_name = "SECS", default_value = "30")]
    timeout: u64,
    /// Times to retry while the filesystem is busy (a process has a file open there).
    #[arg(long, value_name = "N", default_value = "5")]
    retry: u32,
    /// The directory a `vdisk mount` mounted on.
    #[arg(value_name = "MOUNTDIR")]
    mountdir: PathBuf,
}

/// One line of /proc/self/mountinfo that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// "fuse", "fuse.vdisk", ...
    pub fstype: String,
    /// The source ("vdisk:1234").
    pub source: String,
}

impl MountEntry {
    /// The serving process of a vdisk mount.
    pub fn vdisk_pid(&self) -> Option<i32> {
        if !self.fstype.starts_with("fuse") {
            return None;
        }
        self.source.strip_prefix("vdisk:")?.parse().ok()
    }
}

/// Unmounts and waits. Exit 2 when nothing is mounted there (as guestunmount).
pub fn run(a: UmountArgs) -> CmdResult {
    let dir = absolute(&a.mountdir)?;
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Failure::new(format!("/proc/self/mountinfo: {e}")))?;
    let Some(entry) = parse_mountinfo(&text)
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == dir)
    else {
        return Err(Failure::with_code(
            format!("{}: not mounted", a.mountdir.display()),
            2,
        ));
    };
    if !entry.fstype.starts_with("fuse") {
        return Err(Failure::new(format!(
            "{}: not a FUSE mount ({} from {}); use umount(8)",
            a.mountdir.display(),
            entry.fstype,
            entry.source
        )));
    }
    // Take hold of the server before unmounting, so its pid cannot be reused meanwhile.
    let server = entry
        .vdisk_pid()
        .and_then(|pid| pidfd_open(pid).ok().map(|fd| (pid, fd)));
    unmount(&dir, a.retry)?;
    if let Some((pid, fd)) = server {
        if !wait_exit(&fd, Duration::from_secs(a.timeout))? {
            return Err(Failure::new(format!(
                "{}: unmounted, but the serving process {pid} has not exited after {} s",
                a.mountdir.display(),
                a.timeout
            )));
        }
    }
    Ok(0)
}

/// The mounts in /proc/self/mountinfo order (later mounts stack over earlier ones).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mountpoint = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let source = post.next()?;
            Some(MountEntry {
                mountpoint: PathBuf::from(unescape(mountpoint)),
                fstype: unescape(fstype),
                source: unescape(source),
            })
        })
        .collect()
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path as the kernel records it. A dead FUSE mount cannot be stat'ed (ENOTCONN), so
/// when canonicalizing fails the parent is canonicalized and the name appended.
fn absolute(p: &Path) -> Result<PathBuf, Failure> {
    if let Ok(c) = std::fs::canonicalize(p) {
        return Ok(c);
    }
    let abs = std::path::absolute(p)?;
    let mut clean = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            c => clean.push(c),
        }
    }
    match (clean.parent(), clean.file_name()) {
        (Some(parent), Some(name)) => Ok(std::fs::canonicalize(parent)
            .map(|d| d.join(name))
            .unwrap_or(clean.clone())),
        _ => Ok(clean),
    }
}

fn unmount(dir: &Path, retries: u32) -> Result<(), Failure> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut delay = Duration::from_millis(100);
    for attempt in 0..=retries {
        let r = if root {
            umount2(dir)
        } else {
            fusermount_u(dir)
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < retries => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(Failure::new(format!(
                    "{}: the filesystem is busy (a process has a file open or its current \
                     directory there)",
                    dir.display()
                )))
            }
            Err(e) => return Err(Failure::new(format!("{}: {}", dir.display(), os_text(&e)))),
        }
    }
    Ok(())
}

fn umount2(dir: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated path alive for the call; umount2 reads only it.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fusermount3 -u` (fusermount for FUSE 2 systems), for unprivileged users.
fn fusermount_u(dir: &Path) -> io::Result<()> {
    let mut last = io::Error::from(io::ErrorKind::NotFound);
    for prog in ["fusermount3", "fusermount"] {
        match std::process::Command::new(prog)
            .arg("-u")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                if err.contains("busy") {
                    return Err(io::Error::from_raw_os_error(libc::EBUSY));
                }
                return Err(io::Error::other(err.trim().to_string()));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; it reads
    // no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just returned to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until the process behind `fd` exits (true) or `timeout` passes (false).
fn wait_exit(fd: &OwnedFd, timeout: Duration) -> Result<bool, Failure> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one pollfd, valid for the call; poll writes only its revents.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        match r {
            1.. => return Ok(true),
            0 => return Ok(false),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(Failure::new(format!("poll: {}", os_text(&e))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo() {
        let t = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                 99 22 0:50 / /tmp/my\\040mnt ro,nosuid,nodev - fuse.vdisk vdisk:4242 ro,user_id=0\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mountpoint, Path::new("/tmp/my mnt"));
        assert_eq!(m[1].vdisk_pid(), Some(4242));
        assert_eq!(m[0].vdisk_pid(), None);
    }
}
