//! `vdisk commit`: write an overlay's data into its backing file as qemu-img commit does (the
//! work is in [`vdisk::commit`]).

use std::path::PathBuf;

use crate::cmd::progress::Progress;
use crate::cmd::{parse_format, warn_probed};
use crate::CmdResult;
use vdisk::commit::{commit, open_commit, CommitOptions};

/// `vdisk commit`.
#[derive(Debug, clap::Args)]
pub struct CommitArgs {
    /// Image format (probed when omitted, with a warning).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Commit into this image of the backing chain (relative names are relative to the
    /// image's directory) instead of the immediate backing file; implies -d.
    #[arg(short = 'b', long = "base", value_name = "BASE")]
    pub base: Option<String>,
    /// Leave the image as it is; without -d it is emptied after the commit.
    #[arg(short = 'd', long = "drop")]
    pub drop: bool,
    /// Show a progress bar on stderr.
    #[arg(short = 'p', long = "progress")]
    pub progress: bool,
    /// Quiet: print nothing on success.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// The image whose data is committed.
    pub filename: PathBuf,
}

/// Commits the image.
pub fn run(a: CommitArgs) -> CmdResult {
    let opts = CommitOptions {
        format: a.format.as_deref().map(parse_format).transpose()?,
        base: a.base.clone(),
        drop: a.drop,
    };
    let plan = open_commit(&a.filename, &opts)?;
    for img in plan.images() {
        warn_probed(img, true);
    }
    let mut bar = Progress::new(a.progress && !a.quiet, plan.size());
    commit(plan, &mut |d, t| bar.update(d, t))?;
    bar.finish();
    if !a.quiet {
        println!("Image committed.");
    }
    Ok(0)
}
