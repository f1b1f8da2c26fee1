//! VDI in the registry: [`vdisk_vdi`] opened, created and checked with qemu-img's `vdi`
//! options, names and `info` fields.

use std::path::Path;
use std::sync::Arc;

use vdisk_block::{Error, Image, Result};
use vdisk_vdi::{CreateOptions, Vdi};

use crate::open::Format;
use crate::registry::{CreateParams, FormatEntry, FormatImage, OpenContext};

/// The registry entry.
pub const ENTRY: FormatEntry = FormatEntry {
    format: Format::Vdi,
    name: "vdi",
    probe: |head, _| vdisk_vdi::probe(head),
    open: Some(open),
    check_option: Some(check_option),
    create: Some(create),
    formatting_line: Some(formatting_line),
    create_help: "Supported vdi options:\n  \
        size=<size>            - Virtual disk size\n  \
        static=<bool (on/off)> - VDI static (pre-allocated) image\n",
    supports_backing: false,
};

fn open(ctx: &OpenContext<'_>) -> Result<Box<dyn FormatImage>> {
    Ok(Box::new(Vdi::open(ctx.file.clone(), ctx.read_only)?))
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(Error::invalid(format!(
            "Parameter '{key}' expects 'on' or 'off'"
        ))),
    }
}

fn check_option(k: &str, v: &str) -> Result<()> {
    match k {
        "static" => {
            parse_bool(k, v)?;
        }
        "preallocation" => match v {
            "off" => {}
            "metadata" => {
                return Err(Error::unsupported(
                    "Unsupported preallocation mode: metadata",
                ))
            }
            "falloc" | "full" => {
                return Err(Error::unsupported(format!(
                    "preallocation={v} is not supported for vdi images yet"
                )))
            }
            _ => {
                return Err(Error::invalid(format!(
                    "Parameter 'preallocation' does not accept value '{v}'"
                )))
            }
        },
        _ => {
            return Err(Error::invalid(format!(
                "Invalid parameter '{k}' for format vdi (see 'vdisk create -f vdi -o help')"
            )))
        }
    }
    Ok(())
}

fn option<'a>(p: &'a CreateParams<'_>, k: &str) -> Option<&'a str> {
    p.options
        .iter()
        .rev()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
}

fn create(path: &Path, p: &CreateParams<'_>) -> Result<Box<dyn FormatImage>> {
    let o = CreateOptions {
        size: p.size,
        static_image: option(p, "static")
            .map(|v| parse_bool("static", v))
            .transpose()?
            .unwrap_or(false),
    };
    let mut v = vdisk_vdi::create(path, &o)?;
    v.set_sync(!p.unsafe_cache);
    Ok(Box::new(v))
}

/// qemu-img's line: size, static (it has a default, so always), then preallocation if given.
fn formatting_line(path: &Path, p: &CreateParams<'_>, _size_text: &str) -> String {
    let mut line = format!(
        "Formatting '{}', fmt=vdi size={} static={}",
        path.display(),
        p.size,
        option(p, "static").unwrap_or("off")
    );
    if let Some(v) = option(p, "preallocation") {
        line.push_str(&format!(" preallocation={v}"));
    }
    line
}

impl FormatImage for Vdi {
    fn into_image(self: Arc<Self>) -> Arc<dyn Image> {
        self
    }

    fn cluster_size(&self) -> Option<u64> {
        Some(self.block_size())
    }

    fn recurse_file(&self, _offset: u64) -> Option<Arc<vdisk_raw::RawFile>> {
        // qemu's BDRV_BLOCK_RECURSE for static images: holes in the file read as zeros.
        self.is_static().then(|| self.file().clone())
    }

    fn check(&self) -> Option<Result<(u64, Vec<String>)>> {
        Some(Vdi::check(self).map(|r| (r.errors.len() as u64, r.errors)))
    }
}
