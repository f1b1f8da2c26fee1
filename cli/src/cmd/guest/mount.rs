//! `vdisk mount`: guestmount. Returns once the mount is usable and serves it from a
//! background process until `vdisk umount`.
//!
//! ```text
//!   vdisk mount ...                       (parent)
//!     open images, build the tree         errors print here, nothing is mounted
//!     pipe + fork ------------------------> child: setsid, stdio -> /dev/null
//!     wait on the pipe                      mount (fsname "vdisk:<pid>") + FUSE INIT
//!       "ok"  -> exit 0   <---------------- write "ok" (or "err <message>"), close
//!       "err" -> the message, exit 1        serve until unmounted (or SIGTERM/SIGINT/
//!                                           SIGHUP: unmount), flush, close images, exit
//! ```
//!
//! The images are opened (and locked) before the fork; the locks are OFD locks, owned by the
//! open file description, so they stay held by the child after the parent exits.
//!
//! Read-write is the default, as guestmount's: the top image of each `-a` chain is opened
//! for writing, its backing files read-only. When the session ends the server flushes the
//! filesystems (superblock state) and the images (qcow2 metadata, host file sync) before it
//! exits, and `vdisk umount` waits for that exit.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use vdisk_guestfs::ops::os_text;

use vdisk::guest::Access;
use vdisk::guest::GuestDisks;
use vdisk_guestfs::fs::FileSystem;
use vdisk_guestfs::fuse::{self, MountConfig};
use vdisk_guestfs::stack::Stack;

use super::{open_disks, open_tree, DiskArgs, MountSelect};
use crate::{CmdResult, Failure};

/// `vdisk mount -a IMAGE… [--format FMT] (-m DEV[:MOUNTPOINT[:OPTIONS]]… | -i) [--ro | --rw]
/// [-o OPTION…] [--foreground] MOUNTDIR`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    #[command(flatten)]
    disks: DiskArgs,
    #[command(flatten)]
    select: MountSelect,
    /// Mount read-only: the images are opened for reading only (and not write-locked).
    #[arg(short = 'r', long, conflicts_with = "rw")]
    ro: bool,
    /// Mount read-write (the default, as guestmount's).
    #[arg(short = 'w', long)]
    rw: bool,
    /// FUSE mount options, comma-separated, may repeat (allow_other, allow_root,
    /// default_permissions, noatime, ...).
    #[arg(short = 'o', long = "option", value_name = "OPTION")]
    options: Vec<String>,
    /// Serve in the foreground (do not fork); returns when unmounted.
    #[arg(long, visible_alias = "no-fork")]
    foreground: bool,
    /// Write the serving process's pid to this file once the mount is ready.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Threads serving FUSE requests (default: up to 4, one per core).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// The host directory to mount on.
    #[arg(value_name = "MOUNTDIR")]
    mountdir: PathBuf,
}

/// Mounts, then serves in the background (or in the foreground with `--foreground`).
pub fn run(mut a: MountArgs) -> CmdResult {
    match std::fs::metadata(&a.mountdir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Failure::new(format!(
                "{}: the mountpoint is not a directory",
                a.mountdir.display()
            )))
        }
        Err(e) => {
            return Err(Failure::new(format!(
                "{}: {}",
                a.mountdir.display(),
                os_text(&e)
            )))
        }
    }
    // The serving process leaves the current directory: keep its paths absolute.
    a.mountdir = std::fs::canonicalize(&a.mountdir)
        .map_err(|e| Failure::new(format!("{}: {}", a.mountdir.display(), os_text(&e))))?;
    if let Some(p) = a.pid_file.take() {
        a.pid_file = Some(std::path::absolute(&p)?);
    }
    let mut cfg = MountConfig::read_only(String::new());
    cfg.read_only = a.ro;
    for opt in a.options.iter().flat_map(|o| o.split(',')) {
        cfg.push_option(opt)?;
    }
    if let Some(n) = a.threads {
        cfg.threads = n.clamp(1, 64);
    }
    let access = if cfg.read_only {
        Access::ReadOnly
    } else {
        Access::ReadWrite
    };
    let disks = open_disks(&a.disks, access)?;
    let tree = open_tree(&disks, &a.select, false, access)?;

    if a.foreground {
        cfg.fsname = format!("vdisk:{}", std::process::id());
        let signals = block_stop_signals();
        let session = fuse::session(tree.clone(), &a.mountdir, &cfg)
            .map_err(|e| Failure::new(format!("{}: {e}", a.mountdir.display())))?;
        write_pid_file(&a)?;
        stop_on_signals(signals, a.mountdir.clone());
        let served = session.run();
        close(tree, &disks).map_err(|e| Failure::new(format!("{}: {e}", a.mountdir.display())))?;
        drop(disks);
        served.map_err(|e| Failure::new(format!("{}: {e}", a.mountdir.display())))?;
        return Ok(0);
    }

    let (rd, wr) = pipe()?;
    // SAFETY: fork has no memory-safety preconditions of its own; what makes it sound is
    // that this process is single-threaded here (nothing above spawns threads: the images,
    // the partition and LVM scans and the ext4 opens are synchronous), so the child's copy
    // of every lock and allocator state is consistent and it may run ordinary Rust code.
    match unsafe { libc::fork() } {
        -1 => Err(Failure::new(format!(
            "fork: {}",
            os_text(&std::io::Error::last_os_error())
        ))),
        0 => {
            drop(rd);
            let code = child(&a, cfg, tree, &disks, wr);
            drop(disks);
            std::process::exit(code);
        }
        _pid => {
            drop(wr);
            parent(rd, &a)
        }
    }
}

/// Waits for the child's word: "ok", "err <message>", or nothing (it died).
fn parent(rd: OwnedFd, a: &MountArgs) -> CmdResult {
    let mut msg = String::new();
    let _ = File::from(rd).read_to_string(&mut msg);
    if msg == "ok" {
        return Ok(0);
    }
    match msg.strip_prefix("err ") {
        Some(m) => Err(Failure::new(m.to_string())),
        None => Err(Failure::new(format!(
            "{}: the serving process exited before the mount was ready",
            a.mountdir.display()
        ))),
    }
}

/// After the session: the filesystems' state, then the images (qcow2 metadata, host sync).
fn close(tree: Arc<Stack>, disks: &GuestDisks) -> vdisk::block::Result<()> {
    if let Some(t) = tree.writable() {
        t.flush()?;
    }
    drop(tree);
    disks.flush()
}

/// The serving process: detach, mount, report, serve, flush.
fn child(
    a: &MountArgs,
    mut cfg: MountConfig,
    tree: Arc<Stack>,
    disks: &GuestDisks,
    wr: OwnedFd,
) -> i32 {
    let mut report = File::from(wr);
    if let Err(e) = detach() {
        let _ = write!(report, "err cannot detach from the terminal: {e}");
        return 1;
    }
    cfg.fsname = format!("vdisk:{}", std::process::id());
    // Blocked before fuser starts its threads, so they all inherit the mask and only the
    // waiting thread takes these signals.
    let signals = block_stop_signals();
    let session = match fuse::session(tree.clone(), &a.mountdir, &cfg) {
        Ok(s) => s,
        Err(e) => {
            let _ = write!(report, "err {}: {e}", a.mountdir.display());
            return 1;
        }
    };
    if let Err(f) = write_pid_file(a) {
        let _ = write!(report, "err {}", f.msg);
        return 1;
    }
    if report.write_all(b"ok").is_err() {
        // Nobody is waiting: the mount stays, served as promised.
    }
    drop(report);
    stop_on_signals(signals, a.mountdir.clone());
    let served = session.run();
    let closed = close(tree, disks);
    match (served, closed) {
        (Ok(()), Ok(())) => 0,
        _ => 1,
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread (and the threads it starts later), and
/// returns the set for [`stop_on_signals`].
pub(crate) fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; these calls only edit it and this thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// A thread that waits for one of `set` and then unmounts `mountdir`, which ends the session
/// so the server flushes and closes the images as after `vdisk umount`. A busy mount is
/// detached lazily: the kernel keeps the connection (and we keep serving) until the last
/// open file is closed.
fn stop_on_signals(set: libc::sigset_t, mountdir: PathBuf) {
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialised sigset_t whose signals are blocked in every thread.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        use std::os::unix::ffi::OsStrExt;
        let Ok(path) = std::ffi::CString::new(mountdir.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: `path` is a NUL-terminated string alive for the calls.
        let done = unsafe {
            libc::umount2(path.as_ptr(), 0) == 0
                || libc::umount2(path.as_ptr(), libc::MNT_DETACH) == 0
        };
        if !done {
            // Not root: the setuid helper unmounts for us.
            let _ = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&mountdir)
                .status();
        }
    });
}

fn write_pid_file(a: &MountArgs) -> Result<(), Failure> {
    if let Some(p) = &a.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| Failure::new(format!("{}: {}", p.display(), os_text(&e))))?;
    }
    Ok(())
}

/// A new session without a terminal, stdio on /dev/null (so a caller reading our output,
/// `$(vdisk mount ...)`, is not kept waiting by the daemon), cwd "/" (so it pins no
/// directory).
pub(crate) fn detach() -> std::io::Result<()> {
    // SAFETY: setsid has no preconditions; a freshly forked child is never a group leader.
    if unsafe { libc::setsid() } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors with a descriptor we own; it only
        // replaces what fds 0-2 referred to.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    std::env::set_current_dir("/")
}

pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd), Failure> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass, which has room for two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(Failure::new(format!(
            "pipe: {}",
            os_text(&std::io::Error::last_os_error())
        )));
    }
    // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
