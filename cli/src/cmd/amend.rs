//! `vdisk amend`: change qcow2 format options in place, as qemu-img amend does.

use std::path::PathBuf;

use crate::cmd::{open_image, parse_format};
use crate::{CmdResult, Failure};
use vdisk::options::{parse_opts, parse_size};
use vdisk::{BackingPolicy, Driver, OpenOptions};
use vdisk_qcow2::amend::{amend, AmendOptions};

/// `vdisk amend`.
#[derive(Debug, clap::Args)]
pub struct AmendArgs {
    /// Image format (probed when omitted, with a warning).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Options to change, comma-separated key=value: compat, lazy_refcounts, refcount_bits,
    /// backing_file, backing_fmt, size; may repeat.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Quiet: print nothing on success.
    #[arg(short = 'q')]
    pub quiet: bool,
    /// The image.
    pub filename: PathBuf,
}

/// Options `qemu-img create` takes that amend cannot change.
const CREATE_ONLY: &[&str] = &[
    "cluster_size",
    "preallocation",
    "extended_l2",
    "compression_type",
    "encryption",
    "encrypt.format",
    "data_file",
    "data_file_raw",
];

fn parse_bool(key: &str, v: &str) -> Result<bool, Failure> {
    match v {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(Failure::new(format!(
            "Parameter '{key}' expects 'on' or 'off'"
        ))),
    }
}

/// Parses `-o` into what the library changes.
pub fn parse_amend_options(list: &[String]) -> Result<AmendOptions, Failure> {
    if list.is_empty() {
        return Err(Failure::new("Must specify options (-o)"));
    }
    let mut o = AmendOptions::default();
    for s in list {
        for (k, v) in parse_opts(s)? {
            match k.as_str() {
                "compat" => {
                    o.version = Some(match v.as_str() {
                        "0.10" | "v2" => 2,
                        "1.1" | "v3" => 3,
                        _ => return Err(Failure::new(format!("Unknown compatibility level {v}"))),
                    })
                }
                "lazy_refcounts" => o.lazy_refcounts = Some(parse_bool(&k, &v)?),
                "refcount_bits" => {
                    o.refcount_bits = Some(v.parse().map_err(|_| {
                        Failure::new(
                            "Refcount width must be a power of two and may not exceed 64 bits",
                        )
                    })?)
                }
                "backing_file" => o.backing_file = Some(v),
                "backing_fmt" => o.backing_fmt = Some(v),
                "size" => o.size = Some(parse_size(&v)?),
                k if CREATE_ONLY.contains(&k) => {
                    eprintln!("{}: Invalid parameter '{k}'", crate::prog());
                    return Err(Failure::hint(
                        "This option is only supported for image creation",
                    ));
                }
                k => return Err(Failure::new(format!("Invalid parameter '{k}'"))),
            }
        }
    }
    Ok(o)
}

/// Amends the image.
pub fn run(a: AmendArgs) -> CmdResult {
    let o = parse_amend_options(&a.options)?;
    let opts = OpenOptions {
        format: a.format.as_deref().map(parse_format).transpose()?,
        read_only: false,
        force_share: false,
        backing: BackingPolicy::Ignore,
        snapshot: None,
    };
    let img = open_image(&a.filename, &opts)?;
    let Driver::Qcow2(_) = &img.driver else {
        return Err(Failure::new(format!(
            "Format driver '{}' does not support option amendment",
            img.format
        )));
    };
    let file = img.file.clone();
    drop(img);
    amend(file, &o)?;
    Ok(0)
}
