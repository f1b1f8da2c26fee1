//! `vdisk ls`: list guest directories (virt-ls).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use vdisk::guest::Access;

use vdisk_guestfs::fs::{Attr, FileKind, FileSystem, Ino};

use super::{
    guest_path, open_disks, open_tree, output_result, path_error, stdout, DiskArgs, MountSelect,
};
use crate::{CmdResult, Failure};

/// How deep `-R` descends: a bound against hostile directory graphs (hard-linked directory
/// loops) that the kernel's own tools have as PATH_MAX.
const MAX_DEPTH: usize = 2048;

/// `vdisk ls -a IMAGE… (-m DEV… | -i) [-l] [-R] PATH`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    disks: DiskArgs,
    #[command(flatten)]
    select: MountSelect,
    /// Long listing: type, permissions, size and path (as virt-ls -l), and a symlink's target.
    #[arg(short = 'l', long = "long")]
    long: bool,
    /// List subdirectories too, with full paths.
    #[arg(short = 'R', long = "recursive")]
    recursive: bool,
    /// In long listings, the owner and group numbers.
    #[arg(long)]
    uids: bool,
    /// In long listings, atime, mtime and ctime as seconds since the epoch.
    #[arg(long)]
    times: bool,
    /// The guest directory (or file) to list.
    #[arg(value_name = "PATH")]
    path: OsString,
}

/// Lists the directory. Names are sorted bytewise; "." and ".." are left out.
pub fn run(a: LsArgs) -> CmdResult {
    let disks = open_disks(&a.disks, Access::ReadOnly)?;
    let fs = open_tree(&disks, &a.select, true, Access::ReadOnly)?;
    let path = guest_path(&a.path);
    let ino = fs.resolve(&path, true).map_err(|e| path_error(&path, e))?;
    let attr = fs.getattr(ino).map_err(|e| path_error(&path, e))?;
    let mut out = stdout();
    // Entries that could not be read: named on stderr as they are met, the listing goes on
    // (as `ls -R` does), and the exit status says so at the end.
    let mut bad = 0usize;
    let r = if attr.kind != FileKind::Dir {
        let mut lines = Vec::new();
        line(&*fs, &a, &path, &attr, &mut lines)?;
        emit(&mut out, &mut lines)
    } else {
        // The listed directory's own path, without a trailing slash ("/" stays "/").
        let mut base = path.clone();
        while base.len() > 1 && base.ends_with(b"/") {
            base.pop();
        }
        list(&*fs, &a, &base, ino, 0, &mut out, &mut bad)
    };
    match r {
        Ok(()) if bad > 0 => {
            output_result(out.flush())?;
            Err(Failure::new(format!(
                "{bad} {} could not be listed (named above); the rest was",
                if bad == 1 { "entry" } else { "entries" }
            )))
        }
        Ok(()) => output_result(out.flush()),
        Err(Halt::Out(e)) => output_result(Err(e)),
        Err(Halt::Fail(f) | Halt::Deep(f)) => Err(f),
    }
}

/// Why a listing stopped: a guest error, a tree nested too deep (a hostile directory loop:
/// the whole listing stops), or stdout went away or failed.
enum Halt {
    Fail(Failure),
    Deep(Failure),
    Out(std::io::Error),
}

impl From<Failure> for Halt {
    fn from(f: Failure) -> Halt {
        Halt::Fail(f)
    }
}

fn emit(out: &mut impl Write, lines: &mut Vec<Vec<u8>>) -> Result<(), Halt> {
    for l in lines.drain(..) {
        out.write_all(&l).map_err(Halt::Out)?;
    }
    Ok(())
}

fn list(
    fs: &dyn FileSystem,
    a: &LsArgs,
    dir: &[u8],
    ino: Ino,
    depth: usize,
    out: &mut impl Write,
    bad: &mut usize,
) -> Result<(), Halt> {
    if depth > MAX_DEPTH {
        return Err(Halt::Deep(Failure::new(format!(
            "{}: directories nested deeper than {MAX_DEPTH}",
            String::from_utf8_lossy(dir)
        ))));
    }
    let mut lines = Vec::new();
    let mut entries = fs.readdir_all(ino).map_err(|e| path_error(dir, e))?;
    entries.retain(|e| e.name != "." && e.name != "..");
    entries.sort_by(|x, y| x.name.as_bytes().cmp(y.name.as_bytes()));
    for e in entries {
        let mut full = dir.to_vec();
        if !full.ends_with(b"/") {
            full.push(b'/');
        }
        full.extend_from_slice(e.name.as_bytes());
        let shown = if a.recursive || a.long {
            full.clone()
        } else {
            e.name.as_bytes().to_vec()
        };
        if a.long {
            let r = fs
                .getattr(e.ino)
                .map_err(|x| path_error(&full, x))
                .and_then(|attr| line(fs, a, &shown, &attr, &mut lines));
            if let Err(f) = r {
                emit(out, &mut lines)?;
                super::warn_error(&f);
                *bad += 1;
                continue;
            }
        } else {
            let mut l = shown;
            l.push(b'\n');
            lines.push(l);
        }
        emit(out, &mut lines)?;
        if a.recursive && e.kind == FileKind::Dir {
            match list(fs, a, &full, e.ino, depth + 1, out, bad) {
                // A directory that cannot be read is named; its siblings are still listed.
                Err(Halt::Fail(f)) => {
                    out.flush().map_err(Halt::Out)?;
                    super::warn_error(&f);
                    *bad += 1;
                }
                other => other?,
            }
        }
    }
    Ok(())
}

/// One long line: `- 0644       1234 /etc/hosts` (virt-ls's layout), `-> target` for links.
fn line(
    fs: &dyn FileSystem,
    a: &LsArgs,
    shown: &[u8],
    attr: &Attr,
    lines: &mut Vec<Vec<u8>>,
) -> Result<(), Failure> {
    let mut l = Vec::new();
    if a.long {
        let t = match attr.kind {
            FileKind::File => '-',
            FileKind::Dir => 'd',
            FileKind::Symlink => 'l',
            FileKind::CharDev => 'c',
            FileKind::BlockDev => 'b',
            FileKind::Fifo => 'p',
            FileKind::Socket => 's',
        };
        l.extend_from_slice(format!("{t} {:04o} {:>10} ", attr.perm(), attr.size).as_bytes());
        if a.times {
            l.extend_from_slice(
                format!(
                    "{} {} {} ",
                    attr.atime.secs, attr.mtime.secs, attr.ctime.secs
                )
                .as_bytes(),
            );
        }
        if a.uids {
            l.extend_from_slice(format!("{:>5} {:>5} ", attr.uid, attr.gid).as_bytes());
        }
    }
    l.extend_from_slice(shown);
    if a.long && attr.kind == FileKind::Symlink {
        let target = fs.readlink(attr.ino).map_err(|e| path_error(shown, e))?;
        l.extend_from_slice(b" -> ");
        l.extend_from_slice(target.as_bytes());
    }
    l.push(b'\n');
    lines.push(l);
    Ok(())
}
