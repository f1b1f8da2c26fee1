//! `vdisk compare`: exit 0 when identical, 1 when different, 2 on error (qemu-img's codes).

use crate::args::CompareArgs;
use crate::cmd::progress::Progress;
use crate::cmd::{open_image, parse_format};
use crate::{CmdResult, Failure};
use vdisk::compare::{compare, CompareOptions, Comparison};
use vdisk::OpenOptions;

/// Compares the two images.
pub fn run(a: CompareArgs) -> CmdResult {
    run_inner(&a).map_err(|f| Failure::with_code(f.msg, 2))
}

fn run_inner(a: &CompareArgs) -> CmdResult {
    let fmt_a = a.format_a.as_deref().map(parse_format).transpose()?;
    // qemu: -F defaults to -f.
    let fmt_b = match &a.format_b {
        Some(f) => Some(parse_format(f)?),
        None => fmt_a,
    };
    let open = |path, format| {
        open_image(
            path,
            &OpenOptions {
                format,
                read_only: true,
                // Like qemu-img compare: a shared read, whatever -U says.
                force_share: true,
                ..Default::default()
            },
        )
    };
    let ia = open(&a.a, fmt_a)?;
    let ib = open(&a.b, fmt_b)?;
    let say = |s: &str| {
        if !a.quiet {
            println!("{s}");
        }
    };
    let mut bar = Progress::new(
        a.progress && !a.quiet,
        ia.image().size().max(ib.image().size()),
    );
    let result = compare(
        &ia,
        &ib,
        CompareOptions { strict: a.strict },
        &mut |d, t| bar.update(d, t),
    )?;
    bar.finish();
    // qemu warns of the size mismatch once the common part compared equal, before it looks
    // at the longer image's tail: not at all when the common part already differs.
    let (sa, sb) = (ia.image().size(), ib.image().size());
    let tail_reached = match result {
        Comparison::Identical => true,
        Comparison::ContentMismatch(off) => off >= sa.min(sb),
        _ => false,
    };
    if sa != sb && !a.strict && tail_reached {
        say("Warning: Image size mismatch!");
    }
    Ok(match result {
        Comparison::Identical => {
            say("Images are identical.");
            0
        }
        Comparison::ContentMismatch(off) => {
            say(&format!("Content mismatch at offset {off}!"));
            1
        }
        Comparison::StrictSizeMismatch => {
            say("Strict mode: Image size mismatch!");
            1
        }
        Comparison::StrictStatusMismatch(off) => {
            say(&format!("Strict mode: Offset {off} block status mismatch!"));
            1
        }
    })
}
