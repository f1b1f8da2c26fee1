//! `vdisk`: qemu-img's verbs over the vdisk libraries.
//!
//! The binary is thin: clap parses flags into [`args`] structs, each command in [`cmd`] turns
//! them into library calls, and [`main`] maps every error to one line on stderr and qemu-img's
//! exit code.

mod args;
mod cmd;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// A failure to report: the message (one line) and the exit code.
#[derive(Debug)]
pub struct Failure {
    msg: String,
    code: u8,
    /// Printed after the program's name (`qemu-img: ...`); a hint qemu appends to an error
    /// already printed is not.
    prefixed: bool,
}

impl Failure {
    /// A failure with qemu-img's usual exit code 1.
    pub fn new(msg: impl Into<String>) -> Self {
        Failure {
            msg: msg.into(),
            code: 1,
            prefixed: true,
        }
    }

    /// A failure printed as it is, without the program's name: the hint line qemu prints
    /// under an error it has already reported.
    pub fn hint(msg: impl Into<String>) -> Self {
        Failure {
            prefixed: false,
            ..Failure::new(msg)
        }
    }

    /// The message, as printed after the program's name.
    pub fn message(&self) -> &str {
        &self.msg
    }

    /// A failure with a specific exit code (compare uses 2 for errors, check 1..3).
    pub fn with_code(msg: impl Into<String>, code: u8) -> Self {
        Failure {
            msg: msg.into(),
            code,
            prefixed: true,
        }
    }
}

impl From<vdisk::block::Error> for Failure {
    fn from(e: vdisk::block::Error) -> Self {
        Failure::new(e.to_string())
    }
}

impl From<vdisk_guestfs::ops::OpError> for Failure {
    fn from(e: vdisk_guestfs::ops::OpError) -> Self {
        Failure::new(e.to_string())
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::new(e.to_string())
    }
}

/// The name messages start with: `qemu-img` when invoked under that name (a symlink or copy
/// named so, as qemu's iotests run it), so the output is qemu-img's; else `vdisk`.
pub fn prog() -> &'static str {
    static PROG: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    PROG.get_or_init(|| {
        let arg0 = std::env::args_os().next().unwrap_or_default();
        let base = std::path::Path::new(&arg0).file_name().unwrap_or_default();
        if base == "qemu-img" {
            "qemu-img"
        } else {
            "vdisk"
        }
    })
}

/// Whether vdisk runs as `qemu-img` (see [`prog`]) and so speaks as qemu-img does.
pub fn as_qemu_img() -> bool {
    prog() == "qemu-img"
}

/// Result of a command: Ok(exit code) or a failure to print.
pub type CmdResult = Result<u8, Failure>;

fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = cmd::run(cli);
    // Whatever the command printed must reach the pipe; a closed pipe is not our failure.
    let _ = std::io::stdout().flush();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            if f.prefixed {
                eprintln!("{}: {}", prog(), f.msg);
            } else {
                eprintln!("{}", f.msg);
            }
            ExitCode::from(f.code)
        }
    }
}

/// Help and version go to stdout with status 0; usage errors become one line on stderr.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("{p}: {first} (try '{p} --help')", p = prog());
            ExitCode::from(1)
        }
    }
}
