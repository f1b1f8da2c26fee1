//! VHD in the registry: [`vdisk_vhd`] opened and created with qemu-img's `vpc` options,
//! names and `info` fields.

use std::path::Path;
use std::sync::Arc;

use vdisk_block::{Error, Image, Result};
use vdisk_vhd::{CreateOptions, ParentInfo, Subformat, Vhd};

use crate::open::{resolve_backing, Format};
use crate::registry::{CreateParams, FormatEntry, FormatImage, OpenContext};

/// The registry entry.
pub const ENTRY: FormatEntry = FormatEntry {
    format: Format::Vpc,
    name: "vpc",
    probe: |head, _| vdisk_vhd::probe(head),
    open: Some(open),
    check_option: Some(check_option),
    create: Some(create),
    formatting_line: Some(formatting_line),
    create_help: "Supported vpc options:\n  \
        force_size=<bool (on/off)> - Force disk size calculation to use the actual size specified, rather than using the nearest CHS-based calculation\n  \
        size=<size>            - Virtual disk size\n  \
        subformat=<str>        - Type of virtual hard disk format. Supported formats are {dynamic (default) | fixed} \n",
    // qemu creates no differencing VHDs; vdisk does (`-b`), and opens their parents.
    supports_backing: true,
};

fn open(ctx: &OpenContext<'_>) -> Result<Box<dyn FormatImage>> {
    Ok(Box::new(Vhd::open(ctx.file.clone(), ctx.read_only)?))
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
        "subformat" => {
            Subformat::parse(v)?;
        }
        "force_size" => {
            parse_bool(k, v)?;
        }
        "preallocation" => match v {
            "off" => {}
            "falloc" | "full" => {
                return Err(Error::unsupported(format!(
                    "preallocation={v} is not supported for vpc images yet"
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
                "Invalid parameter '{k}' for format vpc (see 'vdisk create -f vpc -o help')"
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
    if let Some(f) = p.backing_format {
        if f != "vpc" {
            return Err(Error::invalid("the parent of a VHD must be a vpc image"));
        }
    }
    let subformat = option(p, "subformat")
        .map(Subformat::parse)
        .transpose()?
        .unwrap_or_default();
    let force_size = option(p, "force_size")
        .map(|v| parse_bool("force_size", v))
        .transpose()?
        .unwrap_or(false);
    let parent = match p.backing_file {
        None => None,
        Some(b) => {
            let full = resolve_backing(path, b);
            let (footer, size) = vdisk_vhd::read_footer(&full)?;
            Some(ParentInfo {
                name: b.to_string(),
                absolute: full,
                footer,
                size,
            })
        }
    };
    let o = CreateOptions {
        size: p.size,
        subformat,
        force_size,
        parent,
    };
    let mut v = vdisk_vhd::create(path, &o)?;
    v.set_sync(!p.unsafe_cache);
    if let Some(b) = p.backing_file {
        // Writes into a new differencing disk copy the rest of each block from the parent.
        let full = resolve_backing(path, b);
        if let Ok(parent) = crate::open(
            &full,
            &crate::open::OpenOptions {
                format: Some(Format::Vpc),
                read_only: true,
                force_share: true,
                ..Default::default()
            },
        ) {
            v.set_backing(parent.image());
        }
    }
    Ok(Box::new(v))
}

/// qemu-img's line: size, then subformat and force_size as given, in qemu's option order.
fn formatting_line(path: &Path, p: &CreateParams<'_>, _size_text: &str) -> String {
    let mut line = format!("Formatting '{}', fmt=vpc size={}", path.display(), p.size);
    if let Some(b) = p.backing_file {
        line.push_str(&format!(" backing_file={b}"));
    }
    if let Some(f) = p.backing_format {
        line.push_str(&format!(" backing_fmt={f}"));
    }
    for k in ["subformat", "force_size", "preallocation"] {
        if let Some(v) = option(p, k) {
            line.push_str(&format!(" {k}={v}"));
        }
    }
    line
}

impl FormatImage for Vhd {
    fn into_image(self: Arc<Self>) -> Arc<dyn Image> {
        self
    }

    fn backing_file_name(&self) -> Option<&str> {
        self.parent_file_name()
    }

    fn backing_format(&self) -> Option<&str> {
        // A differencing VHD's parent is a VHD.
        self.parent_file_name().map(|_| "vpc")
    }

    fn set_backing(&mut self, backing: Arc<dyn Image>) -> Result<()> {
        Vhd::set_backing(self, backing);
        Ok(())
    }

    fn cluster_size(&self) -> Option<u64> {
        self.block_size()
    }

    fn recurse_file(&self, _offset: u64) -> Option<Arc<vdisk_raw::RawFile>> {
        // A fixed disk's data is its file's bytes (qemu's BDRV_BLOCK_RECURSE): holes in the
        // file read as zeros.
        self.block_size().is_none().then(|| self.file().clone())
    }
}
