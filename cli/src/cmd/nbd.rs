//! `vdisk nbd`: serve an image over NBD, with qemu-nbd's flags.
//!
//! The image (any format vdisk opens, backing chain included) is opened once and shared by
//! every connection; block status comes from the chain walk `map` uses, so clients see the
//! same holes, zeros and depths `qemu-img map` prints. Without `-t` the server exits when the
//! last client has gone; SIGTERM, SIGINT and SIGHUP stop it after the requests in flight and
//! a flush.

use std::io::Write as _;
use std::net::{TcpListener, ToSocketAddrs};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::cmd::guest::mount::{block_stop_signals, detach, pipe};
use crate::cmd::{open_image, parse_format};
use crate::{CmdResult, Failure};
use vdisk::engine::chain_status;
use vdisk::{OpenOptions, OpenedImage};
use vdisk_block::Result as BlockResult;
use vdisk_guestfs::ops::os_text;
use vdisk_nbd::{BlockStatus, Export, Listener, Server, ServerOptions, Status};

/// `vdisk nbd` flags (qemu-nbd's).
#[derive(Debug, Args)]
pub struct NbdArgs {
    /// The image's format (probed when not given).
    #[arg(short = 'f', long = "format")]
    pub format: Option<String>,
    /// Export read-only.
    #[arg(short = 'r', long = "read-only")]
    pub read_only: bool,
    /// The export's name.
    #[arg(short = 'x', long = "export-name", default_value = "")]
    pub export_name: String,
    /// A description of the export for clients.
    #[arg(short = 'D', long = "description", default_value = "")]
    pub description: String,
    /// TCP port to listen on.
    #[arg(short = 'p', long = "port", default_value_t = 10809)]
    pub port: u16,
    /// Address to listen on.
    #[arg(short = 'b', long = "bind", default_value = "0.0.0.0")]
    pub bind: String,
    /// Listen on this Unix socket instead of TCP.
    #[arg(short = 'k', long = "socket")]
    pub socket: Option<PathBuf>,
    /// Keep serving after the last client disconnects.
    #[arg(short = 't', long = "persistent")]
    pub persistent: bool,
    /// Serve at most this many clients at once (0: no limit).
    #[arg(short = 'e', long = "shared", default_value_t = 1)]
    pub shared: usize,
    /// Return once the server is listening, leaving it running in the background.
    #[arg(long = "fork")]
    pub fork: bool,
    /// Write the server's process id to this file.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Offer the qemu:allocation-depth metadata context.
    #[arg(short = 'A', long = "allocation-depth")]
    pub allocation_depth: bool,
    /// Serve this internal snapshot (id or name), read-only.
    #[arg(short = 'l', long = "load-snapshot")]
    pub snapshot: Option<String>,
    /// What trim requests do: `ignore` (qemu-nbd's default) or `unmap`.
    #[arg(long = "discard", default_value = "ignore")]
    pub discard: String,
    /// Requests handled at once per connection.
    #[arg(long = "threads", default_value_t = 4)]
    pub threads: usize,
    /// The image.
    pub filename: PathBuf,
}

/// Block status of the whole backing chain, as `qemu-img map` walks it.
struct ChainStatus(OpenedImage);

impl BlockStatus for ChainStatus {
    fn status(&self, offset: u64, max_len: u64) -> BlockResult<Status> {
        match chain_status(&self.0, offset, max_len)? {
            Some(e) => Ok(Status {
                length: e.length,
                data: e.data,
                zero: e.zero,
                depth: e.present.then(|| e.depth as u32 + 1),
            }),
            None => Err(vdisk_block::Error::invalid("block status past the end")),
        }
    }
}

/// Serves the image.
pub fn run(a: NbdArgs) -> CmdResult {
    let unmap = match a.discard.as_str() {
        "ignore" | "off" => false,
        "unmap" | "on" => true,
        other => {
            return Err(Failure::new(format!(
                "invalid discard mode '{other}' (ignore or unmap)"
            )))
        }
    };
    let read_only = a.read_only || a.snapshot.is_some();
    let opts = OpenOptions {
        format: a.format.as_deref().map(parse_format).transpose()?,
        read_only,
        snapshot: a.snapshot.clone(),
        ..Default::default()
    };
    let img = open_image(&a.filename, &opts)?;
    let export = Export {
        name: a.export_name.clone(),
        description: a.description.clone(),
        image: img.image(),
        read_only,
        discard: unmap,
        status: Arc::new(ChainStatus(img.clone())),
        allocation_depth: a.allocation_depth,
    };
    let listener = bind(&a)?;
    let server = Server::new(
        export,
        ServerOptions {
            shared: if a.shared == 0 { usize::MAX } else { a.shared },
            persistent: a.persistent,
            workers: a.threads,
        },
    );
    if a.fork {
        return fork_and_serve(&a, server, listener);
    }
    write_pid_file(&a)?;
    serve(&a, &server, listener)
}

fn bind(a: &NbdArgs) -> Result<Listener, Failure> {
    if let Some(path) = &a.socket {
        let l = UnixListener::bind(path)
            .map_err(|e| Failure::new(format!("{}: {}", path.display(), os_text(&e))))?;
        return Ok(Listener::Unix(l));
    }
    let addrs: Vec<_> = (a.bind.as_str(), a.port)
        .to_socket_addrs()
        .map_err(|e| Failure::new(format!("{}: {}", a.bind, os_text(&e))))?
        .collect();
    let l = TcpListener::bind(&addrs[..])
        .map_err(|e| Failure::new(format!("{}:{}: {}", a.bind, a.port, os_text(&e))))?;
    Ok(Listener::Tcp(l))
}

fn write_pid_file(a: &NbdArgs) -> Result<(), Failure> {
    if let Some(p) = &a.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| Failure::new(format!("{}: {}", p.display(), os_text(&e))))?;
    }
    Ok(())
}

/// Runs the server in this process until it ends or a stop signal arrives.
fn serve(a: &NbdArgs, server: &Arc<Server>, listener: Listener) -> CmdResult {
    let signals = block_stop_signals();
    let stopper = server.clone();
    let cleanup = Cleanup {
        socket: a.socket.clone(),
        pid_file: a.pid_file.clone(),
    };
    let on_signal = cleanup.clone();
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `signals` is an initialised sigset_t whose signals are blocked in every
        // thread (the mask was set before any thread was spawned).
        if unsafe { libc::sigwait(&signals, &mut sig) } != 0 {
            return;
        }
        let code = match stopper.shutdown() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("vdisk: {e}");
                1
            }
        };
        on_signal.run();
        std::process::exit(code);
    });
    let r = server.serve(listener);
    cleanup.run();
    r?;
    Ok(0)
}

/// Files the server made, removed when it ends.
#[derive(Clone)]
struct Cleanup {
    socket: Option<PathBuf>,
    pid_file: Option<PathBuf>,
}

impl Cleanup {
    fn run(&self) {
        for p in [&self.socket, &self.pid_file].into_iter().flatten() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn fork_and_serve(a: &NbdArgs, server: Arc<Server>, listener: Listener) -> CmdResult {
    let (rd, wr) = pipe()?;
    // SAFETY: fork has no memory-safety preconditions of its own; this process is
    // single-threaded here (opening the image and binding the socket spawn no threads), so
    // the child's copy of every lock and of the allocator is consistent.
    match unsafe { libc::fork() } {
        -1 => Err(Failure::new(format!(
            "fork: {}",
            os_text(&std::io::Error::last_os_error())
        ))),
        0 => {
            drop(rd);
            let mut wr = std::fs::File::from(wr);
            let ready = detach()
                .map_err(|e| Failure::new(format!("detach: {}", os_text(&e))))
                .and_then(|()| write_pid_file(a));
            match ready {
                Ok(()) => {
                    let _ = wr.write_all(b"ok");
                    drop(wr);
                    let code = serve(a, &server, listener).unwrap_or(1);
                    std::process::exit(i32::from(code));
                }
                Err(f) => {
                    let _ = write!(wr, "err {}", f.msg);
                    std::process::exit(1);
                }
            }
        }
        _pid => {
            drop(wr);
            use std::io::Read as _;
            let mut msg = String::new();
            let _ = std::fs::File::from(rd).read_to_string(&mut msg);
            if msg == "ok" {
                return Ok(0);
            }
            Err(Failure::new(
                msg.strip_prefix("err ")
                    .unwrap_or("the server exited before it was ready")
                    .to_string(),
            ))
        }
    }
}
