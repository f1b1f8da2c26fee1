//! `vdisk convert`: copy an image's guest content into a new image.

use crate::args::ConvertArgs;
use crate::cmd::progress::Progress;
use crate::cmd::{open_image, parse_format};
use crate::{CmdResult, Failure};
use vdisk::convert::{convert_to_raw, ConvertOptions};
use vdisk::options::parse_size;
use vdisk::{Format, OpenOptions};

/// Converts the source into the target.
pub fn run(a: ConvertArgs) -> CmdResult {
    let out_fmt = parse_format(&a.output_format)?;
    // The qcow2 driver accepts qemu's spellings: snapshot.id=, snapshot.name=, or id-or-name.
    let snapshot = a.snapshot.clone();
    let opts = OpenOptions {
        format: a.format.as_deref().map(parse_format).transpose()?,
        read_only: true,
        force_share: a.force_share,
        snapshot,
        ..Default::default()
    };
    let (target, sources) = a.files.split_last().expect("clap requires two files");
    if a.target_is_zero && !a.no_create {
        return Err(Failure::new("--target-is-zero requires use of -n flag"));
    }
    let sources = sources
        .iter()
        .map(|p| open_image(p, &opts))
        .collect::<Result<Vec<_>, _>>()?;
    let sparse_size = match &a.sparse_size {
        Some(s) => parse_size(s)?,
        None => 4096,
    };
    let workers = a.workers.unwrap_or(0);
    if a.workers == Some(0) || workers > 16 {
        return Err(Failure::new(
            "Invalid number of coroutines. Allowed number of coroutines is between 1 and 16",
        ));
    }
    let copts = ConvertOptions {
        sparse_size,
        target_is_zero: a.target_is_zero,
        workers,
        // qemu-img convert's default target cache mode is "unsafe": no final flush.
        flush: false,
    };
    let total = sources.iter().map(|s| s.image().size()).sum();
    let mut bar = Progress::new(a.progress && !a.quiet, total);
    match out_fmt {
        Format::Raw => convert_to_raw(&sources, target, a.no_create, copts, &mut |d, t| {
            bar.update(d, t)
        })?,
        Format::Qcow2 => {
            return Err(Failure::new(
                "writing qcow2 images is not implemented yet (it arrives with the qcow2 writer)",
            ))
        }
    }
    bar.finish();
    Ok(0)
}
