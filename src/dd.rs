//! `dd`: copy part of an image into a new image, as `qemu-img dd` does.
//!
//! ```text
//!   input guest bytes:  [0 ........ skip*bs ............ end ........ size)
//!                                   '---- copied -------'
//!   end = min(count*bs, size)      (count counts from the input's start, as in qemu)
//!   new image of (end - skip*bs) bytes, written from its offset 0, every byte written
//! ```
//!
//! qemu-img dd writes every block, zeros included, so the new image is fully allocated; we
//! do the same, in large writes (the block size only decides the sizes, never the result).
//! A skip past the input's end is not an error: like dd(1), qemu-img warns and creates an
//! empty image.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use vdisk_block::{BlockDevice, Error, Result};

use crate::create::{create_image, parse_create_options, remove_image};
use crate::open::{Format, OpenedImage};
use crate::options::parse_size;

/// Bytes copied per read and write.
const CHUNK: u64 = 1 << 20;
/// qemu's largest block size (`INT_MAX`).
const MAX_BS: u64 = i32::MAX as u64;
/// qemu's largest count and skip (`INT64_MAX`).
const MAX_COUNT: u64 = i64::MAX as u64;

/// The `key=value` operands of `qemu-img dd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DdOperands {
    /// `bs=`: bytes per block (default 512).
    pub bs: u64,
    /// `count=`: blocks, counted from the start of the input.
    pub count: Option<u64>,
    /// `skip=`: blocks of the input to skip.
    pub skip: Option<u64>,
    /// `if=`: the input image.
    pub input: PathBuf,
    /// `of=`: the image to create.
    pub output: PathBuf,
}

/// Parses the operands as qemu-img does (a later operand overrides an earlier one), with its
/// messages.
pub fn parse_operands(args: &[impl AsRef<str>]) -> Result<DdOperands> {
    let (mut bs, mut count, mut skip, mut input, mut output) = (512, None, None, None, None);
    for a in args {
        let a = a.as_ref();
        let Some((key, value)) = a.split_once('=') else {
            return Err(Error::invalid(format!("unrecognized operand {a}")));
        };
        match key {
            "bs" => bs = parse_bs(value)?,
            "count" => count = Some(parse_blocks("count", value)?),
            "skip" => skip = Some(parse_blocks("skip", value)?),
            "if" => input = Some(PathBuf::from(value)),
            "of" => output = Some(PathBuf::from(value)),
            _ => return Err(Error::invalid(format!("unrecognized operand {key}"))),
        }
    }
    let (Some(input), Some(output)) = (input, output) else {
        return Err(Error::invalid("Must specify both input and output files"));
    };
    Ok(DdOperands {
        bs,
        count,
        skip,
        input,
        output,
    })
}

/// `bs=`: a size with qemu's suffixes, 1 to `INT_MAX` bytes.
fn parse_bs(v: &str) -> Result<u64> {
    let range = || {
        Error::invalid(format!(
            "Invalid bs specified. Must be between 1 and {MAX_BS}."
        ))
    };
    if v.starts_with('-') {
        return Err(range());
    }
    match parse_size(v) {
        Ok(n) if (1..=MAX_BS).contains(&n) => Ok(n),
        Ok(_) => Err(range()),
        Err(e) if e.message().starts_with("Image size must be less") => Err(range()),
        Err(_) => Err(Error::invalid(format!("Invalid bs specified: '{v}'."))),
    }
}

/// `count=` and `skip=`: a plain decimal number of blocks, 0 to `INT64_MAX`.
fn parse_blocks(name: &str, v: &str) -> Result<u64> {
    let range = || {
        Error::invalid(format!(
            "Invalid {name} specified. Must be between 0 and {MAX_COUNT}."
        ))
    };
    let digits = v.strip_prefix('+').unwrap_or(v);
    if let Some(neg) = digits.strip_prefix('-') {
        if !neg.is_empty() && neg.bytes().all(|b| b.is_ascii_digit()) {
            return Err(range());
        }
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid(format!("Invalid {name} specified: '{v}'.")));
    }
    match digits.parse::<u64>() {
        Ok(n) if n <= MAX_COUNT => Ok(n),
        _ => Err(range()),
    }
}

/// Which input bytes go where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DdPlan {
    /// The new image's size (rounded up to 512 bytes when created).
    pub out_size: u64,
    /// First input byte copied.
    pub start: u64,
    /// One past the last input byte copied.
    pub end: u64,
    /// `skip` reaches past the input's end (qemu warns and copies nothing).
    pub skip_past_end: bool,
}

impl DdOperands {
    /// The copy for an input of `input_size` bytes, with qemu's arithmetic.
    pub fn plan(&self, input_size: u64) -> DdPlan {
        let mut end = input_size;
        if let Some(c) = self.count {
            if let Some(bytes) = c.checked_mul(self.bs).filter(|&b| b <= MAX_COUNT) {
                end = end.min(bytes);
            }
        }
        let skip = self.skip.unwrap_or(0);
        match skip
            .checked_mul(self.bs)
            .filter(|&b| b <= MAX_COUNT && b <= end)
        {
            Some(start) => DdPlan {
                out_size: end - start,
                start,
                end,
                skip_past_end: false,
            },
            None => DdPlan {
                out_size: 0,
                start: end,
                end,
                skip_past_end: true,
            },
        }
    }
}

/// Creates `ops.output` as a `format` image and copies `src`'s bytes into it as planned.
/// On a failure after the image was created, the image is removed.
pub fn dd(src: &OpenedImage, ops: &DdOperands, format: Format) -> Result<DdPlan> {
    let input = src.image();
    let plan = ops.plan(input.size());
    let out = &ops.output;
    let same = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    };
    if src.chain().any(|layer| same(&layer.filename, out)) {
        // Creating it would empty the input (qemu's lock refuses it; so do we, earlier).
        return Err(Error::invalid(
            "error while creating output image: it is the input (or one of its backing files)",
        )
        .with_path(out));
    }
    let mut req = parse_create_options(format, &[] as &[&str])?;
    req.set_size_bytes(plan.out_size);
    let created = create_image(out, &req).map_err(|e| {
        Error::invalid(format!(
            "error while creating output image: {}",
            e.message()
        ))
        .with_path(out)
    })?;
    let result = (|| -> Result<()> {
        let dev = created.device();
        let mut buf = vdisk_block::AlignedBuf::new(CHUNK.min(plan.end - plan.start) as usize);
        let mut pos = plan.start;
        while pos < plan.end {
            let n = (plan.end - pos).min(CHUNK) as usize;
            input.read_at(&mut buf[..n], pos)?;
            dev.write_at(&buf[..n], pos - plan.start)
                .map_err(|e| e.with_path(out))?;
            pos += n as u64;
        }
        dev.flush().map_err(|e| e.with_path(out))
    })();
    drop(created);
    if let Err(e) = result {
        remove_image(out, &req);
        return Err(e);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(args: &[&str]) -> Result<DdOperands> {
        parse_operands(args)
    }

    #[test]
    fn operands_as_qemu_reads_them() {
        let o = ops(&["bs=1.5k", "count=3", "skip=1", "if=a", "of=b", "bs=2k"]).unwrap();
        assert_eq!((o.bs, o.count, o.skip), (2048, Some(3), Some(1)));
        let msg = |a: &[&str]| ops(a).unwrap_err().to_string();
        assert_eq!(
            msg(&["bs=abc", "if=a", "of=b"]),
            "Invalid bs specified: 'abc'."
        );
        assert_eq!(
            msg(&["bs=0", "if=a", "of=b"]),
            "Invalid bs specified. Must be between 1 and 2147483647."
        );
        assert_eq!(
            msg(&["bs=2G", "if=a", "of=b"]),
            "Invalid bs specified. Must be between 1 and 2147483647."
        );
        assert_eq!(
            msg(&["count=1k", "if=a", "of=b"]),
            "Invalid count specified: '1k'."
        );
        assert_eq!(
            msg(&["skip=-1", "if=a", "of=b"]),
            "Invalid skip specified. Must be between 0 and 9223372036854775807."
        );
        assert_eq!(
            msg(&["conv=notrunc", "if=a", "of=b"]),
            "unrecognized operand conv"
        );
        assert_eq!(
            msg(&["extra", "if=a", "of=b"]),
            "unrecognized operand extra"
        );
        assert_eq!(msg(&["if=a"]), "Must specify both input and output files");
    }

    #[test]
    fn count_counts_from_the_input_start() {
        // qemu-img dd bs=64k count=10 skip=2 makes a 512 KiB image from a 3 MiB input.
        let o = ops(&["bs=64k", "count=10", "skip=2", "if=a", "of=b"]).unwrap();
        let p = o.plan(3 << 20);
        assert_eq!(
            (p.out_size, p.start, p.end),
            (512 << 10, 128 << 10, 640 << 10)
        );
        let o = ops(&["skip=100000", "if=a", "of=b"]).unwrap();
        assert!(o.plan(3 << 20).skip_past_end);
        assert_eq!(o.plan(3 << 20).out_size, 0);
        let o = ops(&["bs=2147483647", "count=9223372036854775807", "if=a", "of=b"]).unwrap();
        assert_eq!(o.plan(1 << 20).out_size, 1 << 20);
    }
}
