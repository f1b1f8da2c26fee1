//! `vdisk create`: new images with qemu-img's options (parsed and created by
//! [`vdisk::create`], which `convert` and `measure` share).

use crate::args::CreateArgs;
use crate::cmd::parse_format;
use crate::{CmdResult, Failure};
use vdisk::create::{create_help, create_image, parse_create_options, wants_help};

/// Creates the image.
pub fn run(a: CreateArgs) -> CmdResult {
    let format = parse_format(&a.format)?;
    if wants_help(&a.options)? {
        print!("{}", create_help(format));
        return Ok(0);
    }
    let Some(filename) = a.filename.clone() else {
        return Err(Failure::new("Expecting image file name"));
    };
    let named = |e: vdisk::block::Error| Failure::from(e.with_path(&filename));
    let mut req = parse_create_options(format, &a.options).map_err(|e| {
        // qemu-img names the image in option errors, but not in size errors.
        if e.message().starts_with("Invalid image size") {
            Failure::from(e)
        } else {
            named(e)
        }
    })?;
    req.set_size(a.size.as_deref()).map_err(|e| {
        if e.message().starts_with("Invalid image size") {
            Failure::from(e)
        } else {
            named(e)
        }
    })?;
    req.set_backing(a.backing.as_deref(), a.backing_format.as_deref());
    if let Some(warning) = req.resolve_backing(&filename, a.unsafe_backing)? {
        eprintln!("{warning}");
    }
    req.rounded_size(&filename)?;
    if !a.quiet {
        println!("{}", req.formatting_line(&filename));
    }
    drop(create_image(&filename, &req)?);
    Ok(0)
}
