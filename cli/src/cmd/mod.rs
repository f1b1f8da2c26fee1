//! One module per command; [`run`] dispatches.

pub mod amend;
pub mod check;
mod clone;
pub mod commit;
mod compare;
mod convert;
mod create;
pub mod customize;
pub mod dd;
pub mod guest;
mod info;
mod map;
pub mod measure;
pub mod nbd;
mod progress;
pub mod rebase;
pub mod resize;
pub mod snapshot;
mod sysprep;

use std::path::Path;

use crate::args::{Cli, Command};
use crate::{CmdResult, Failure};
use vdisk::{Format, OpenOptions, OpenedImage};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> CmdResult {
    match cli.command {
        Command::Create(a) => create::run(a),
        Command::Info(a) => info::run(a),
        Command::Map(a) => map::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Check(a) => check::run(a),
        Command::Snapshot(a) => snapshot::run(a),
        Command::Resize(a) => resize::run(a),
        Command::Amend(a) => amend::run(a),
        Command::Rebase(a) => rebase::run(a),
        Command::Commit(a) => commit::run(a),
        Command::Measure(a) => measure::run(a),
        Command::Dd(a) => dd::run(a),
        Command::Nbd(a) => nbd::run(a),
        Command::Mount(a) => guest::mount::run(a),
        Command::Umount(a) => guest::umount::run(a),
        Command::Filesystems(a) => guest::filesystems::run(a),
        Command::Ls(a) => guest::ls::run(a),
        Command::Cat(a) => guest::cat::run(a),
        Command::CopyOut(a) => guest::copy_out::run(a),
        Command::Inspect(a) => guest::inspect::run(a),
        Command::Write(a) => guest::write::run(a),
        Command::Edit(a) => guest::edit::run(a),
        Command::CopyIn(a) => guest::copy_in::run(a),
        Command::Rm(a) => guest::files::rm(a),
        Command::Mkdir(a) => guest::files::mkdir(a),
        Command::Chmod(a) => guest::files::chmod(a),
        Command::SetLabel(a) => guest::files::set_label(a),
        Command::Chown(a) => guest::files::chown(a),
        Command::Ln(a) => guest::files::ln(a),
        Command::Customize(a) => customize::run(a),
        Command::Sysprep(a) => sysprep::run(a),
        Command::Clone(a) => clone::run(a),
    }
}

/// Parses a `-f`/`-F`/`-O` value.
pub fn parse_format(s: &str) -> Result<Format, Failure> {
    s.parse::<Format>().map_err(Failure::from)
}

/// Opens an image for a command, warning on stderr when its format (or a backing file's) had to
/// be guessed.
pub fn open_image(path: &Path, opts: &OpenOptions) -> Result<OpenedImage, Failure> {
    let img = vdisk::open(path, opts).map_err(|e| open_failure(path, e))?;
    warn_probed(&img, !opts.read_only);
    Ok(img)
}

/// The failure to open the image at `path`. Run as `qemu-img`, in qemu's words when the image
/// itself is to blame: `Could not open 'FILE': MESSAGE` (qemu names the file twice when the
/// host refuses it), so the iotests' filters see qemu's lines.
pub fn open_failure(path: &Path, e: vdisk::block::Error) -> Failure {
    if !crate::as_qemu_img() || e.path() != Some(path) {
        return e.into();
    }
    let name = path.display();
    match &e {
        vdisk::block::Error::Io {
            op: "open", source, ..
        } => {
            let text = source.to_string();
            let text = text.split(" (os error ").next().unwrap_or(&text);
            Failure::new(format!(
                "Could not open '{name}': Could not open '{name}': {text}"
            ))
        }
        // qemu names no offset.
        vdisk::block::Error::Corrupt { what, .. } => {
            Failure::new(format!("Could not open '{name}': {what}"))
        }
        _ => Failure::new(format!("Could not open '{name}': {}", e.message())),
    }
}

/// Warns on stderr for each image of the chain whose format had to be guessed. Run as
/// `qemu-img`, warns as qemu does instead: only for an image opened `writable` whose format was
/// guessed raw (backing files are opened read-only), in qemu's words.
pub fn warn_probed(img: &OpenedImage, writable: bool) {
    if crate::as_qemu_img() {
        if writable && img.probed && img.format == vdisk::Format::Raw {
            eprintln!(
                "WARNING: Image format was not specified for '{}' and probing guessed raw.\n         \
                 Automatically detecting the format is dangerous for raw images, write \
                 operations on block 0 will be restricted.\n         Specify the 'raw' format \
                 explicitly to remove the restrictions.",
                img.filename.display()
            );
        }
        return;
    }
    for layer in img.chain() {
        if layer.probed {
            eprintln!(
                "vdisk: warning: the format of '{}' was not given; probing guessed {}. Probing is \
                 unsafe for images from untrusted sources: pass -f (or record the backing format \
                 with -F).",
                layer.filename.display(),
                layer.format
            );
        }
    }
}
