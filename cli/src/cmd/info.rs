//! `vdisk info`: qemu-img info's text and JSON.

use crate::args::{InfoArgs, OutputFormat};
use crate::cmd::{open_image, parse_format};
use crate::CmdResult;
use vdisk::{info, qapi, BackingPolicy, OpenOptions};

/// Prints the image's info (and its backing chain's with `--backing-chain`).
pub fn run(a: InfoArgs) -> CmdResult {
    let opts = OpenOptions {
        format: a.format.as_deref().map(parse_format).transpose()?,
        read_only: true,
        // qemu-img info takes no image locks, -U or not: it never disturbs a running VM.
        force_share: true,
        backing: if a.backing_chain {
            BackingPolicy::Follow
        } else {
            BackingPolicy::Ignore
        },
        snapshot: None,
    };
    let img = open_image(&a.filename, &opts)?;
    let value = if a.backing_chain {
        info::chain_info(&img)?
    } else {
        info::image_info(&img)?
    };
    match a.output {
        OutputFormat::Json => println!("{}", qapi::to_json(&value)),
        OutputFormat::Human => {
            let nodes = match &value {
                serde_json::Value::Array(items) => items.clone(),
                v => vec![v.clone()],
            };
            let texts: Vec<String> = nodes.iter().map(info::human).collect();
            print!("{}", texts.join("\n"));
        }
    }
    Ok(0)
}
