//! `vdisk measure`: the file size a new image needs, as qemu-img measure prints it (the
//! numbers come from [`vdisk::measure`]).

use std::path::PathBuf;

use crate::args::OutputFormat;
use crate::cmd::{open_image, parse_format};
use crate::{CmdResult, Failure};
use vdisk::create::parse_create_options;
use vdisk::measure::measure;
use vdisk::options::parse_size;
use vdisk::{qapi, OpenOptions};

/// `vdisk measure`.
#[derive(Debug, clap::Args)]
pub struct MeasureArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "human", value_name = "OFMT")]
    pub output: OutputFormat,
    /// The format of the image to be created.
    #[arg(
        short = 'O',
        long = "target-format",
        value_name = "OUTPUT_FMT",
        default_value = "raw"
    )]
    pub target_format: String,
    /// Creation options of the target format (as for create), comma-separated; may repeat.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Measure a new image of this virtual size instead of a copy of FILENAME.
    #[arg(
        short = 's',
        long = "size",
        value_name = "SIZE",
        allow_hyphen_values = true
    )]
    pub size: Option<String>,
    /// Source image format (probed when omitted, with a warning).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Measure the content of this internal snapshot of FILENAME.
    #[arg(short = 'l', long = "snapshot", value_name = "SNAPSHOT_PARAM")]
    pub snapshot: Option<String>,
    /// Open the source without taking its lock.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// The image whose copy is measured.
    pub filename: Option<PathBuf>,
}

/// Measures and prints.
pub fn run(a: MeasureArgs) -> CmdResult {
    match (&a.filename, &a.size) {
        (Some(_), Some(_)) => {
            return Err(Failure::new(
                "--size N cannot be used together with a filename.",
            ))
        }
        (None, None) => {
            return Err(Failure::new(
                "Either --size N or one filename must be specified.",
            ))
        }
        (None, Some(_)) if a.format.is_some() || a.snapshot.is_some() => {
            return Err(Failure::new(
                "--image-opts, -f, and -l require a filename argument.",
            ))
        }
        _ => {}
    }
    let size = match &a.size {
        Some(s) if s.starts_with('-') => {
            return Err(Failure::new(
                "Invalid image size specified. Must be between 0 and 9223372036854775807.",
            ))
        }
        Some(s) => Some(parse_size(s).map_err(|e| {
            if e.message().starts_with("Image size must be less") {
                Failure::new(
                    "Invalid image size specified. Must be between 0 and 9223372036854775807.",
                )
            } else {
                Failure::from(e)
            }
        })?),
        None => None,
    };
    let source = match &a.filename {
        Some(f) => Some(open_image(
            f,
            &OpenOptions {
                format: a.format.as_deref().map(parse_format).transpose()?,
                read_only: true,
                force_share: a.force_share,
                snapshot: a.snapshot.clone(),
                ..Default::default()
            },
        )?),
        None => None,
    };
    let target = parse_format(&a.target_format)?;
    let mut req = parse_create_options(target, &a.options)?;
    if let Some(s) = size {
        req.set_size_bytes(s);
    }
    let m = measure(&req, source.as_ref())?;
    match a.output {
        OutputFormat::Human => print!("{}", m.human()),
        OutputFormat::Json => println!("{}", qapi::to_json(&m.to_json())),
    }
    Ok(0)
}
