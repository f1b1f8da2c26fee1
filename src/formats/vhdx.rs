//! VHDX in the registry: [`vdisk_vhdx`] opened and created with qemu-img's `vhdx` options,
//! names and `info` fields.
//!
//! qemu's vhdx driver reports no block status, so qemu-img map shows the whole disk as data
//! at depth 0 and no offsets; [`FormatImage::opaque_block_status`] says so and `map` and
//! `measure` follow it, while convert and compare still skip what the BAT says is zero.

use std::path::Path;
use std::sync::Arc;

use vdisk_block::{Error, Image, Result};
use vdisk_vhdx::{CreateOptions, ParentInfo, Vhdx};

use crate::open::{resolve_backing, Format};
use crate::options::parse_size;
use crate::registry::{CreateParams, FormatEntry, FormatImage, OpenContext};

/// The registry entry.
pub const ENTRY: FormatEntry = FormatEntry {
    format: Format::Vhdx,
    name: "vhdx",
    probe: |head, _| vdisk_vhdx::probe(head),
    open: Some(open),
    check_option: Some(check_option),
    create: Some(create),
    formatting_line: Some(formatting_line),
    create_help: "Supported vhdx options:\n  \
        block_size=<size>      - Block Size; min 1MB, max 256MB. 0 means auto-calculate based on image size.\n  \
        block_state_zero=<bool (on/off)> - Force use of payload blocks of type 'ZERO'. Non-standard, but default.  Do not set to 'off' when using 'qemu-img convert' with subformat=dynamic.\n  \
        log_size=<size>        - Log size; min 1MB.\n  \
        size=<size>            - Virtual disk size; max of 64TB.\n  \
        subformat=<str>        - VHDX format type, can be either 'dynamic' or 'fixed'. Default is 'dynamic'.\n",
    // qemu neither opens nor creates differencing VHDX; vdisk does both (`-b`).
    supports_backing: true,
};

fn open(ctx: &OpenContext<'_>) -> Result<Box<dyn FormatImage>> {
    Ok(Box::new(Vhdx::open(ctx.file.clone(), ctx.read_only)?))
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

fn parse_size_opt(key: &str, v: &str) -> Result<u64> {
    parse_size(v).map_err(|_| {
        Error::invalid(format!(
            "Parameter '{key}' expects a non-negative number below 2^64"
        ))
    })
}

fn check_option(k: &str, v: &str) -> Result<()> {
    match k {
        "subformat" => {
            if v != "dynamic" && v != "fixed" {
                return Err(Error::invalid(format!(
                    "Parameter 'subformat' does not accept value '{v}'"
                )));
            }
        }
        "block_state_zero" => {
            parse_bool(k, v)?;
        }
        "block_size" | "log_size" => {
            parse_size_opt(k, v)?;
        }
        _ => return Err(Error::invalid(format!("Invalid parameter '{k}'"))),
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

const MIB: u64 = 1 << 20;

fn create(path: &Path, p: &CreateParams<'_>) -> Result<Box<dyn FormatImage>> {
    if let Some(f) = p.backing_format {
        if f != "vhdx" {
            return Err(Error::invalid("the parent of a VHDX must be a vhdx image"));
        }
    }
    // qemu rounds silently: block and log sizes up to whole MiB, a block size above 256 MiB
    // down to 256 MiB, 0 means automatic.
    let block_size = match option(p, "block_size") {
        None => None,
        Some(v) => match parse_size_opt("block_size", v)?.next_multiple_of(MIB) {
            0 => None,
            b => Some(b.min(256 * MIB) as u32),
        },
    };
    let log_size = match option(p, "log_size") {
        None => MIB,
        Some(v) => parse_size_opt("log_size", v)?.next_multiple_of(MIB),
    };
    if log_size > u64::from(u32::MAX) {
        return Err(Error::invalid("Log size must be smaller than 4 GB"));
    }
    let mut o = CreateOptions {
        size: p.size,
        block_size,
        log_size: log_size as u32,
        fixed: option(p, "subformat") == Some("fixed"),
        block_state_zero: option(p, "block_state_zero")
            .map(|v| parse_bool("block_state_zero", v))
            .transpose()?
            .unwrap_or(true),
        parent: None,
    };
    let mut parent_image = None;
    if let Some(b) = p.backing_file {
        let full = resolve_backing(path, b);
        let parent = Vhdx::open_path(&full, true)?;
        o.parent = Some(ParentInfo {
            name: b.to_string(),
            data_write_guid: parent.header().data_write_guid,
            size: vdisk_block::BlockDevice::size(&parent),
        });
        o.size = vdisk_block::BlockDevice::size(&parent);
        o.fixed = false;
        drop(parent);
        parent_image = Some(full);
    }
    let mut v = vdisk_vhdx::create(path, &o)?;
    v.set_sync(!p.unsafe_cache);
    if let Some(full) = parent_image {
        // Writes into a new differencing disk copy the rest of each block from the parent.
        let parent = crate::open(
            &full,
            &crate::open::OpenOptions {
                format: Some(Format::Vhdx),
                read_only: true,
                force_share: true,
                ..Default::default()
            },
        )?;
        v.set_backing(parent.image());
    }
    Ok(Box::new(v))
}

/// qemu-img's line: size, log_size and block_size (they have defaults, so always, as given),
/// then subformat and block_state_zero if given.
fn formatting_line(path: &Path, p: &CreateParams<'_>, _size_text: &str) -> String {
    let size_of = |k: &str, default: u64| {
        option(p, k)
            .and_then(|v| parse_size(v).ok())
            .unwrap_or(default)
    };
    let mut line = format!("Formatting '{}', fmt=vhdx size={}", path.display(), p.size);
    if let Some(b) = p.backing_file {
        line.push_str(&format!(" backing_file={b}"));
    }
    if let Some(f) = p.backing_format {
        line.push_str(&format!(" backing_fmt={f}"));
    }
    line.push_str(&format!(
        " log_size={} block_size={}",
        size_of("log_size", MIB),
        size_of("block_size", 0)
    ));
    for k in ["subformat", "block_state_zero"] {
        if let Some(v) = option(p, k) {
            line.push_str(&format!(" {k}={v}"));
        }
    }
    line
}

impl FormatImage for Vhdx {
    fn into_image(self: Arc<Self>) -> Arc<dyn Image> {
        self
    }

    fn backing_file_name(&self) -> Option<&str> {
        self.parent_file_name()
    }

    fn backing_format(&self) -> Option<&str> {
        // A differencing VHDX's parent is a VHDX (the only locator type we accept).
        self.parent_file_name().map(|_| "vhdx")
    }

    fn set_backing(&mut self, backing: Arc<dyn Image>) -> Result<()> {
        Vhdx::set_backing(self, backing);
        Ok(())
    }

    fn cluster_size(&self) -> Option<u64> {
        Some(self.block_size())
    }

    fn opaque_block_status(&self) -> bool {
        // qemu opens no differencing VHDX, so there is nothing to agree with there: report
        // what the BAT and bitmaps say.
        self.parent_file_name().is_none()
    }

    fn check(&self) -> Option<Result<(u64, Vec<String>)>> {
        Some(Vhdx::check(self).map(|e| (e.len() as u64, e)))
    }

    fn check_repair(&self) -> Option<Result<(u64, u64, Vec<String>)>> {
        // qemu's repair is the log replay that opening read-write already did.
        Some(Vhdx::check(self).map(|e| (e.len() as u64, u64::from(self.log_replayed()), e)))
    }
}
