//! `vdisk dd`: copy part of an image into a new image as qemu-img dd does (the work is in
//! [`vdisk::dd`]).

use crate::cmd::{open_image, parse_format};
use crate::CmdResult;
use vdisk::dd::{dd, parse_operands};
use vdisk::OpenOptions;

/// `vdisk dd`.
#[derive(Debug, clap::Args)]
pub struct DdArgs {
    /// Input image format (probed when omitted, with a warning).
    #[arg(short = 'f', long = "format", value_name = "FMT")]
    pub format: Option<String>,
    /// Format of the image to create.
    #[arg(
        short = 'O',
        long = "output-format",
        value_name = "OUTPUT_FMT",
        default_value = "raw"
    )]
    pub output_format: String,
    /// Open the input without taking its lock.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// Operands: bs=BLOCK_SIZE (default 512, suffixes k, M, G, ...), count=BLOCKS (from the
    /// input's start), skip=BLOCKS, if=INPUT, of=OUTPUT (created).
    #[arg(value_name = "OPERAND")]
    pub operands: Vec<String>,
}

/// Copies.
pub fn run(a: DdArgs) -> CmdResult {
    let ops = parse_operands(&a.operands)?;
    let out_fmt = parse_format(&a.output_format)?;
    let src = open_image(
        &ops.input,
        &OpenOptions {
            format: a.format.as_deref().map(parse_format).transpose()?,
            read_only: true,
            force_share: a.force_share,
            ..Default::default()
        },
    )?;
    let plan = dd(&src, &ops, out_fmt)?;
    if plan.skip_past_end {
        // A warning, as dd(1) gives: the empty image is made and the exit status is 0.
        eprintln!(
            "vdisk: {}: cannot skip to specified offset",
            ops.input.display()
        );
    }
    Ok(0)
}
