//! `vdisk edit`: virt-edit. Edit one guest file with sed-style substitutions (`-e`) or with
//! `$EDITOR` on a host copy.
//!
//! virt-edit's `-e` takes a Perl expression run on each line (`$_`); what we take of it is
//! [`vdisk_guestfs::ops::subst`]'s.
//!
//! As virt-edit does, the new content goes to a new file beside the old one, which receives
//! the old file's mode, owner and extended attributes (so the SELinux label survives), and is
//! then renamed over it: a crash leaves the old file or the new one, never half of either.

use std::ffi::OsString;
use std::io::Write;

use vdisk_guestfs::ops::subst::{apply, parse_expr};
use vdisk_guestfs::ops::{self, absolute, OpError};

use super::rw::Edit;
use super::{DiskArgs, MountSelect};
use crate::{CmdResult, Failure};

/// `vdisk edit -a IMAGE… (-m DEV… | -i) [-e EXPR] GUESTPATH`.
#[derive(Debug, clap::Args)]
pub struct EditArgs {
    #[command(flatten)]
    disks: DiskArgs,
    #[command(flatten)]
    select: MountSelect,
    /// Substitutions applied to each line: s/RE/REPL/[gimsx], several joined by ';'.
    #[arg(short = 'e', long = "expr", value_name = "EXPR")]
    expr: Option<String>,
    /// The guest file to edit (symlinks followed inside the guest).
    #[arg(value_name = "GUESTPATH")]
    path: OsString,
}

/// Edits the file, then flushes and closes the images.
pub fn run(a: EditArgs) -> CmdResult {
    let subs = match &a.expr {
        Some(e) => Some(parse_expr(e).map_err(Failure::new)?),
        None => None,
    };
    let edit = Edit::open(&a.disks, &a.select)?;
    let path = absolute(&a.path);
    let r = ops::edit_file(&*edit.tree, &path, |old| match &subs {
        Some(s) => Ok(apply(s, old)),
        None => run_editor(old, &path),
    })
    .map_err(Failure::from);
    edit.close(r).map(|()| 0)
}

/// Runs `$EDITOR` (else `vi`) on a host copy of `old`, as virt-edit does, and returns what
/// the editor saved.
fn run_editor(old: &[u8], path: &[u8]) -> Result<Vec<u8>, OpError> {
    let dir = std::env::temp_dir();
    let base = String::from_utf8_lossy(path)
        .rsplit('/')
        .next()
        .unwrap_or("file")
        .replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
            "_",
        );
    let tmp = dir.join(format!("vdisk-edit-{}-{base}", std::process::id()));
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(old)?;
        drop(f);
        let editor = std::env::var("EDITOR")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| "vi".into());
        // $EDITOR may carry arguments ("code --wait"): the shell splits it.
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(&tmp)
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "the editor ({editor}) failed: {status}"
            )));
        }
        std::fs::read(&tmp)
    })();
    let _ = std::fs::remove_file(&tmp);
    r.map_err(|e| OpError::Other(format!("{}: {e}", String::from_utf8_lossy(path))))
}
