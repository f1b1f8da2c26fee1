//! QED in the registry: [`vdisk_qed`] opened and created with qemu-img's `qed` options,
//! names and `info` fields.

use std::path::Path;
use std::sync::Arc;

use vdisk_block::{Error, Image, Result};
use vdisk_qed::{CreateOptions, Qed};

use crate::open::{resolve_backing, Format};
use crate::registry::{CreateParams, FormatEntry, FormatImage, OpenContext};

/// The registry entry.
pub const ENTRY: FormatEntry = FormatEntry {
    format: Format::Qed,
    name: "qed",
    probe: |head, _| vdisk_qed::probe(head),
    open: Some(open),
    check_option: Some(check_option),
    create: Some(create),
    formatting_line: Some(formatting_line),
    create_help: "Supported qed options:\n  \
        backing_file=<str>     - File name of a base image\n  \
        backing_fmt=<str>      - Image format of the base image\n  \
        cluster_size=<size>    - Cluster size (in bytes)\n  \
        size=<size>            - Virtual disk size\n  \
        table_size=<size>      - L1/L2 table size (in clusters)\n",
    supports_backing: true,
};

fn open(ctx: &OpenContext<'_>) -> Result<Box<dyn FormatImage>> {
    Ok(Box::new(Qed::open(ctx.file.clone(), ctx.read_only)?))
}

fn parse_u32(k: &str, v: &str) -> Result<u32> {
    let n = crate::options::parse_size(v)?;
    u32::try_from(n).map_err(|_| {
        Error::invalid(format!(
            "Parameter '{k}' expects a non-negative number below 2^32"
        ))
    })
}

fn check_option(k: &str, v: &str) -> Result<()> {
    match k {
        "cluster_size" | "table_size" => {
            parse_u32(k, v)?;
        }
        "preallocation" => match v {
            "off" => {}
            "falloc" | "full" => {
                return Err(Error::unsupported(format!(
                    "preallocation={v} is not supported for qed images yet"
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
                "Invalid parameter '{k}' for format qed (see 'vdisk create -f qed -o help')"
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
    let mut o = CreateOptions {
        size: p.size,
        backing_file: p.backing_file.map(str::to_owned),
        backing_raw: p.backing_format == Some("raw"),
        ..Default::default()
    };
    if let Some(v) = option(p, "cluster_size") {
        o.cluster_size = parse_u32("cluster_size", v)?;
    }
    if let Some(v) = option(p, "table_size") {
        o.table_size = parse_u32("table_size", v)?;
    }
    let mut q = vdisk_qed::create(path, &o)?;
    q.set_sync(!p.unsafe_cache);
    if let Some(b) = p.backing_file {
        // Writes into part of a cluster copy the rest from the backing file.
        let full = resolve_backing(path, b);
        let format = p.backing_format.and_then(|f| f.parse::<Format>().ok());
        if let Ok(parent) = crate::open(
            &full,
            &crate::open::OpenOptions {
                format,
                read_only: true,
                force_share: true,
                ..Default::default()
            },
        ) {
            q.set_backing(parent.image());
        }
    }
    Ok(Box::new(q))
}

/// qemu-img's line: size, backing, then cluster_size (it has a default, so always) and
/// table_size as given.
fn formatting_line(path: &Path, p: &CreateParams<'_>, _size_text: &str) -> String {
    let mut line = format!("Formatting '{}', fmt=qed size={}", path.display(), p.size);
    if let Some(b) = p.backing_file {
        line.push_str(&format!(" backing_file={b}"));
    }
    if let Some(f) = p.backing_format {
        line.push_str(&format!(" backing_fmt={f}"));
    }
    let cs = option(p, "cluster_size")
        .and_then(|v| crate::options::parse_size(v).ok())
        .unwrap_or(u64::from(vdisk_qed::header::QED_DEFAULT_CLUSTER_SIZE));
    line.push_str(&format!(" cluster_size={cs}"));
    if let Some(v) = option(p, "table_size") {
        let ts = crate::options::parse_size(v).unwrap_or(0);
        line.push_str(&format!(" table_size={ts}"));
    }
    if let Some(v) = option(p, "preallocation") {
        line.push_str(&format!(" preallocation={v}"));
    }
    line
}

impl FormatImage for Qed {
    fn into_image(self: Arc<Self>) -> Arc<dyn Image> {
        self
    }

    fn backing_file_name(&self) -> Option<&str> {
        Qed::backing_file_name(self)
    }

    fn backing_format(&self) -> Option<&str> {
        Qed::backing_format(self)
    }

    fn set_backing(&mut self, backing: Arc<dyn Image>) -> Result<()> {
        Qed::set_backing(self, backing);
        Ok(())
    }

    fn cluster_size(&self) -> Option<u64> {
        Some(Qed::cluster_size(self))
    }
}
