//! `vdisk rebase`: change an overlay's backing file as qemu-img rebase does (the work is in
//! [`vdisk::rebase`]).

use std::path::PathBuf;

use crate::cmd::progress::Progress;
use crate::cmd::{parse_format, warn_probed};
use crate::{CmdResult, Failure};
use vdisk::block::BlockDevice;
use vdisk::rebase::{open_overlay, rebase, RebaseOptions};

/// `vdisk rebase`.
#[derive(Debug, clap::Args)]
pub struct RebaseArgs {
    /// Image format (probed when omitted, with a warning).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Unsafe: rewrite the backing file name and format only; the old backing file is not
    /// read and need not exist.
    #[arg(short = 'u', long = "backing-unsafe")]
    pub unsafe_mode: bool,
    /// Show a progress bar on stderr.
    #[arg(short = 'p', long = "progress")]
    pub progress: bool,
    /// Quiet: print nothing on success.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Write the clusters copied into the overlay compressed.
    #[arg(short = 'c', long = "compress")]
    pub compress: bool,
    /// Open the backing files without taking their locks.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// The new backing file ("" for none: the image becomes standalone).
    #[arg(short = 'b', long = "backing", value_name = "BACKING_FILE")]
    pub backing: Option<String>,
    /// The new backing file's format (required with a backing file, as in qemu 10).
    #[arg(short = 'F', long = "backing-format", value_name = "BACKING_FMT")]
    pub backing_format: Option<String>,
    /// The image to rebase.
    pub filename: PathBuf,
}

/// Rebases the image.
pub fn run(a: RebaseArgs) -> CmdResult {
    let backing = match (&a.backing, a.unsafe_mode) {
        (Some(b), _) => b.clone(),
        (None, true) => String::new(),
        (None, false) => {
            return Err(Failure::new(
                "Must specify backing file (-b) or use unsafe mode (-u)",
            ))
        }
    };
    let opts = RebaseOptions {
        format: a.format.as_deref().map(parse_format).transpose()?,
        backing,
        backing_format: a.backing_format.as_deref().map(parse_format).transpose()?,
        unsafe_mode: a.unsafe_mode,
        force_share: a.force_share,
        compress: a.compress,
    };
    let img = open_overlay(&a.filename, &opts).map_err(|e| {
        // qemu's line names no image: the message names the backing file it would record.
        if crate::as_qemu_img() && e.message().starts_with("Could not change the backing file") {
            Failure::new(e.message())
        } else {
            e.into()
        }
    })?;
    warn_probed(&img, true);
    let mut bar = Progress::new(a.progress && !a.quiet, img.image().size());
    rebase(img, &opts, &mut |d, t| bar.update(d, t))?;
    bar.finish();
    Ok(0)
}
