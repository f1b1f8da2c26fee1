//! `vdisk convert`: copy the guest content of images (concatenated) into a raw or qcow2
//! image, new (`-O FMT -o OPTIONS`, the options `create` takes) or existing (`-n`).

use crate::args::ConvertArgs;
use crate::cmd::progress::Progress;
use crate::cmd::{open_image, parse_format};
use crate::{CmdResult, Failure};
use vdisk::convert::{convert, ConvertOptions, ConvertTarget};
use vdisk::create::{create_help, parse_create_options, wants_help};
use vdisk::options::parse_size;
use vdisk::{Format, OpenOptions};

/// The largest `-S` qemu-img accepts.
const MAX_SPARSE_SIZE: u64 = 16 << 20;

/// Converts the sources into the target.
pub fn run(a: ConvertArgs) -> CmdResult {
    let out_fmt = parse_format(&a.output_format)
        .map_err(|_| Failure::new(format!("Unknown file format '{}'", a.output_format)))?;
    if wants_help(&a.options)? {
        print!("{}", create_help(out_fmt));
        return Ok(0);
    }
    let (target, sources) = match a.files.split_last() {
        Some((t, s)) if !s.is_empty() => (t, s),
        _ => return Err(Failure::new("Must specify image file name")),
    };
    if a.target_is_zero && !a.no_create {
        return Err(Failure::new("--target-is-zero requires use of -n flag"));
    }
    if a.no_create && !a.options.is_empty() {
        return Err(Failure::new(
            "-o has no effect when skipping image creation",
        ));
    }
    let sparse_size = match &a.sparse_size {
        Some(s) => {
            let v = parse_size(s)
                .ok()
                .filter(|v| v % 512 == 0 && *v <= MAX_SPARSE_SIZE);
            v.ok_or_else(|| {
                Failure::new(
                    "Invalid buffer size for sparse output specified. Valid sizes are multiples \
                     of 512 up to 16777216. Select 0 to disable sparse detection (fully \
                     allocates output).",
                )
            })?
        }
        None => 4096,
    };
    if a.workers
        .is_some_and(|w| w == 0 || w > vdisk::convert::MAX_WORKERS)
    {
        return Err(Failure::new(
            "Invalid number of coroutines specified. Must be between 1 and 16.",
        ));
    }
    // The target's creation request, checked before any source is read.
    let conv_target = if a.no_create {
        if a.backing.is_some() && out_fmt == Format::Raw {
            return Err(Failure::new(
                "Backing file not supported for file format 'raw'",
            ));
        }
        ConvertTarget::Existing(out_fmt)
    } else {
        let mut req = parse_create_options(out_fmt, &a.options)
            .map_err(|e| Failure::from(e.with_path(target)))?;
        req.set_backing(a.backing.as_deref(), a.backing_format.as_deref());
        if req.backing_file.is_some() {
            if out_fmt == Format::Raw {
                return Err(Failure::new(
                    "Backing file not supported for file format 'raw'",
                ));
            }
            if req.backing_format.is_none() {
                return Err(Failure::new(
                    "Use of backing file requires explicit backing format",
                ));
            }
        }
        ConvertTarget::New(Box::new(req))
    };

    let opts = OpenOptions {
        format: a.format.as_deref().map(parse_format).transpose()?,
        read_only: true,
        force_share: a.force_share,
        // The qcow2 driver accepts qemu's spellings: snapshot.id=, snapshot.name=, or
        // id-or-name.
        snapshot: a.snapshot.clone(),
        ..Default::default()
    };
    let sources = sources
        .iter()
        .map(|p| open_image(p, &opts))
        .collect::<Result<Vec<_>, _>>()?;

    if let ConvertTarget::New(req) = &conv_target {
        if let (Some(b), Some(f)) = (&req.backing_file, &req.backing_format) {
            // qemu opens the new image's backing file: a name that does not resolve fails.
            let bpath = vdisk::open::resolve_backing(target, b);
            let bopts = OpenOptions {
                format: Some(parse_format(f)?),
                read_only: true,
                force_share: true,
                ..Default::default()
            };
            vdisk::open(&bpath, &bopts).map_err(|e| {
                Failure::new(format!(
                    "Could not open '{}': Could not open backing file: {}",
                    target.display(),
                    e
                ))
            })?;
        }
    }

    let copts = ConvertOptions {
        sparse_size,
        target_is_zero: a.target_is_zero,
        workers: a.workers.unwrap_or(0),
        // qemu-img convert's default target cache mode is "unsafe": no flush.
        flush: false,
        keep_backing: a.backing.is_some(),
        compress: a.compress,
        out_of_order: a.out_of_order,
    };
    let total = sources.iter().map(|s| s.image().size()).sum();
    let mut bar = Progress::new(a.progress && !a.quiet, total);
    convert(&sources, target, conv_target, copts, &mut |d, t| {
        bar.update(d, t)
    })?;
    bar.finish();
    Ok(0)
}
