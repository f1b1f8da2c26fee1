//! `vdisk create`: new images with qemu-img's options.

use std::path::Path;

use crate::args::CreateArgs;
use crate::cmd::parse_format;
use crate::{CmdResult, Failure};
use vdisk::block::Preallocation;
use vdisk::options::{parse_opts, parse_size};
use vdisk::Format;
use vdisk_raw::RawFile;

/// Creates the image.
pub fn run(a: CreateArgs) -> CmdResult {
    let format = parse_format(&a.format)?;
    let mut opts = Vec::new();
    for o in &a.options {
        opts.extend(parse_opts(o)?);
    }
    if opts.iter().any(|(k, _)| k == "help" || k == "?") {
        print!("{}", help_text(format));
        return Ok(0);
    }
    let Some(filename) = a.filename.clone() else {
        return Err(Failure::new("Expecting image file name"));
    };
    match format {
        Format::Raw => create_raw(&a, &filename, &opts),
        Format::Qcow2 => Err(Failure::new(
            "creating qcow2 images is not implemented yet (it arrives with the qcow2 writer)",
        )),
    }
}

fn help_text(format: Format) -> String {
    match format {
        Format::Raw => "Supported raw options:\n  \
             preallocation=<str (off, falloc, full)> - Preallocation mode (allowed values: off, falloc, full)\n  \
             size=<size>            - Virtual disk size\n"
            .to_string(),
        Format::Qcow2 => "Supported qcow2 options: none yet (qcow2 creation is not implemented)\n".to_string(),
    }
}

fn create_raw(a: &CreateArgs, filename: &Path, opts: &[(String, String)]) -> CmdResult {
    let name = filename.display().to_string();
    if a.backing.is_some() || a.backing_format.is_some() {
        return Err(Failure::new(format!(
            "{name}: Backing file not supported for file format 'raw'"
        )));
    }
    let mut size = None;
    let mut prealloc = Preallocation::Off;
    let mut prealloc_given = false;
    for (k, v) in opts {
        match k.as_str() {
            "size" => size = Some(parse_size(v)?),
            "preallocation" => {
                prealloc = v.parse().map_err(Failure::from)?;
                if prealloc == Preallocation::Metadata {
                    return Err(Failure::new(format!(
                        "{name}: Invalid parameter 'metadata' (raw images support off, falloc, full)"
                    )));
                }
                prealloc_given = true;
            }
            _ => {
                return Err(Failure::new(format!(
                    "{name}: Invalid parameter '{k}' for format raw (see 'vdisk create -f raw -o help')"
                )))
            }
        }
    }
    if let Some(s) = &a.size {
        size = Some(parse_size(s)?);
    }
    let size =
        size.ok_or_else(|| Failure::new(format!("{name}: Image creation needs a size parameter")))?;
    if !a.quiet {
        let mut line = format!("Formatting '{name}', fmt=raw size={size}");
        if prealloc_given {
            line.push_str(&format!(" preallocation={}", prealloc.as_str()));
        }
        println!("{line}");
    }
    // qemu's block layer works in 512-byte sectors: a raw image's length is rounded up.
    let rounded = size.div_ceil(512).saturating_mul(512);
    RawFile::create(filename, rounded, prealloc)?;
    Ok(0)
}
