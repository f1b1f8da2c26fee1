//! `vdisk map`: where the guest data lives, as qemu-img map prints it.

use std::fmt::Write as _;

use crate::args::{MapArgs, OutputFormat};
use crate::cmd::{open_image, parse_format};
use crate::{CmdResult, Failure};
use vdisk::engine::{chain_extents, ChainExtent};
use vdisk::options::parse_size;
use vdisk::OpenOptions;

/// Prints the map.
pub fn run(a: MapArgs) -> CmdResult {
    let opts = OpenOptions {
        format: a.format.as_deref().map(parse_format).transpose()?,
        read_only: true,
        // Like qemu-img map: a shared read, whatever -U says.
        force_share: true,
        ..Default::default()
    };
    let img = open_image(&a.filename, &opts)?;
    let size = img.image().size();
    let start = parse_size(&a.start_offset)?;
    let len = match &a.max_length {
        Some(l) => parse_size(l)?,
        None => size,
    };
    let mut out = String::new();
    match a.output {
        OutputFormat::Json => {
            out.push('[');
            let mut first = true;
            for e in chain_extents(&img, start, len) {
                let e = e?;
                if !first {
                    out.push_str(",\n");
                }
                first = false;
                out.push_str(&json_entry(&e));
            }
            out.push_str("]\n");
        }
        OutputFormat::Human => {
            let _ = writeln!(
                out,
                "{:<16}{:<16}{:<16}File",
                "Offset", "Length", "Mapped to"
            );
            for e in chain_extents(&img, start, len) {
                let e = e?;
                if e.data && e.offset.is_none() {
                    print!("{out}");
                    return Err(Failure::new(
                        "File contains external, encrypted or compressed clusters.",
                    ));
                }
                if let (true, false, Some(off)) = (e.data, e.zero, e.offset) {
                    let _ = writeln!(
                        out,
                        "{:<16}{:<16}{:<16}{}",
                        hex(e.start),
                        hex(e.length),
                        hex(off),
                        e.file.as_deref().unwrap_or("")
                    );
                }
            }
        }
    }
    print!("{out}");
    Ok(0)
}

/// C's `%#x`: "0" for zero, "0x..." otherwise.
fn hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

fn json_entry(e: &ChainExtent) -> String {
    let mut s = format!(
        "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
        e.start, e.length, e.depth, e.present, e.zero, e.data, e.compressed
    );
    if let Some(o) = e.offset {
        let _ = write!(s, ", \"offset\": {o}");
    }
    s.push('}');
    s
}
