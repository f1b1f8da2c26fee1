//! `vdisk check`: qemu-img check's report, repairs and exit codes.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::ValueEnum;
use serde_json::{json, Map, Value};

use crate::args::OutputFormat;
use crate::cmd::parse_format;
use crate::{CmdResult, Failure};
use vdisk::{qapi, BackingPolicy, Driver, OpenOptions, OpenedImage};
use vdisk_qcow2::check::{check, CheckResult, Repair};

/// What `-r` repairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RepairArg {
    /// Free leaked clusters.
    Leaks,
    /// Free leaks and fix corruptions (refcounts, OFLAG_COPIED).
    All,
}

/// `vdisk check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Image format (probed when omitted, with a warning).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Repair what the check finds: leaks, or all.
    #[arg(short = 'r', value_enum, value_name = "leaks|all")]
    pub repair: Option<RepairArg>,
    /// Output format.
    #[arg(long, value_enum, default_value = "human", value_name = "OFMT")]
    pub output: OutputFormat,
    /// Quiet: print no report (messages about errors still go to stderr).
    #[arg(short = 'q')]
    pub quiet: bool,
    /// Open the image read-only without taking locks, even if another process writes it.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// The image.
    pub filename: PathBuf,
}

/// Checks (and repairs) the image; the exit code says what was found.
pub fn run(a: CheckArgs) -> CmdResult {
    if a.repair.is_some() && a.force_share {
        return Err(Failure::new("--force-share/-U is not allowed with -r"));
    }
    let opts = OpenOptions {
        format: a.format.as_deref().map(parse_format).transpose()?,
        read_only: a.repair.is_none(),
        force_share: a.force_share,
        backing: BackingPolicy::Ignore,
        snapshot: None,
    };
    let img = open_checked(&a.filename, &opts)?;
    let format_name = img.format.name();
    let repair = a.repair.map(|r| match r {
        RepairArg::Leaks => Repair::Leaks,
        RepairArg::All => Repair::All,
    });
    let mut res = run_check(&img, repair)?;
    let name = a.filename.display().to_string();
    // qemu-img's stdout is fully buffered into a pipe, so what the second check writes to
    // stderr comes before the whole report; on a terminal the lines come as they are made.
    let mut report = String::new();
    let deferred = !std::io::stdout().is_terminal();
    if res.leaks_fixed > 0 || res.corruptions_fixed > 0 {
        if a.output == OutputFormat::Human && !a.quiet {
            report.push_str(&format!(
                "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
                res.leaks_fixed, res.corruptions_fixed
            ));
            if !deferred {
                print!("{report}");
                report.clear();
            }
        }
        let (lf, cf) = (res.leaks_fixed, res.corruptions_fixed);
        drop(img);
        let img = open_checked(&a.filename, &opts)?;
        res = run_check(&img, None)?;
        res.leaks_fixed = lf;
        res.corruptions_fixed = cf;
    }
    if !a.quiet {
        match a.output {
            OutputFormat::Human => report.push_str(&human(&res)),
            OutputFormat::Json => {
                report.push_str(&qapi::to_json(&json_report(&res, &name, format_name)));
                report.push('\n');
            }
        }
    }
    print!("{report}");
    if res.check_errors > 0 {
        return Err(Failure::new("Check failed"));
    }
    Ok(res.exit_code())
}

/// Opens the image to check: as any command would, but a qcow2 L1 table past the end of the
/// file is a corruption to count, not a reason to refuse.
fn open_checked(path: &std::path::Path, opts: &OpenOptions) -> Result<OpenedImage, Failure> {
    let img = vdisk::open_for_check(path, opts).map_err(|e| crate::cmd::open_failure(path, e))?;
    crate::cmd::warn_probed(&img, !opts.read_only);
    Ok(img)
}

/// Runs the check on an opened image, printing qemu's stderr lines as it would.
fn run_check(img: &OpenedImage, repair: Option<Repair>) -> Result<CheckResult, Failure> {
    let q = match &img.driver {
        Driver::Qcow2(q) => q,
        // The registry's formats check without repairing (qemu: -ENOTSUP for -r).
        Driver::Other(o) if repair.is_none() => {
            if let Some(r) = o.check() {
                let (corruptions, messages) =
                    r.map_err(|e| Failure::new(format!("Check failed: {}", e.message())))?;
                for m in &messages {
                    eprintln!("{m}");
                }
                return Ok(CheckResult {
                    corruptions,
                    messages,
                    ..Default::default()
                });
            }
            return Err(Failure::with_code(
                "This image format does not support checks",
                63,
            ));
        }
        Driver::Other(o) => {
            if let Some(r) = o.check_repair() {
                let (corruptions, corruptions_fixed, messages) =
                    r.map_err(|e| Failure::new(format!("Check failed: {}", e.message())))?;
                for m in &messages {
                    eprintln!("{m}");
                }
                return Ok(CheckResult {
                    corruptions,
                    corruptions_fixed,
                    messages,
                    ..Default::default()
                });
            }
            return Err(Failure::with_code(
                "This image format does not support checks",
                63,
            ));
        }
        _ => {
            return Err(Failure::with_code(
                "This image format does not support checks",
                63,
            ))
        }
    };
    let result = match repair {
        Some(r) => check(q, Some((r, &*img.file))),
        None => check(q, None),
    };
    match result {
        Ok(res) => {
            for m in &res.messages {
                eprintln!("{m}");
            }
            if let Some(f) = &res.failure {
                return Err(Failure::new(format!("Check failed: {f}")));
            }
            Ok(res)
        }
        Err(e) => Err(Failure::new(format!("Check failed: {}", e.message()))),
    }
}

/// qemu-img's human report (`dump_human_image_check`).
pub fn human(c: &CheckResult) -> String {
    let mut out = String::new();
    if c.corruptions == 0 && c.leaks == 0 && c.check_errors == 0 {
        out.push_str("No errors were found on the image.\n");
    } else {
        if c.corruptions > 0 {
            out.push_str(&format!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                c.corruptions
            ));
        }
        if c.leaks > 0 {
            out.push_str(&format!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                c.leaks
            ));
        }
        if c.check_errors > 0 {
            out.push_str(&format!(
                "\n{} internal errors have occurred during the check.\n",
                c.check_errors
            ));
        }
    }
    if c.total_clusters != 0 && c.allocated_clusters != 0 {
        let a = c.allocated_clusters as f64;
        out.push_str(&format!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            c.allocated_clusters,
            c.total_clusters,
            a * 100.0 / c.total_clusters as f64,
            c.fragmented_clusters as f64 * 100.0 / a,
            c.compressed_clusters as f64 * 100.0 / a
        ));
    }
    if c.image_end_offset != 0 {
        out.push_str(&format!("Image end offset: {}\n", c.image_end_offset));
    }
    out
}

/// qemu's `ImageCheck` object: members in schema order, optional ones only when non-zero.
pub fn json_report(c: &CheckResult, filename: &str, format: &str) -> Value {
    let mut m = Map::new();
    m.insert("filename".into(), json!(filename));
    m.insert("format".into(), json!(format));
    m.insert("check-errors".into(), json!(c.check_errors));
    let optional = [
        ("image-end-offset", c.image_end_offset),
        ("corruptions", c.corruptions),
        ("leaks", c.leaks),
        ("corruptions-fixed", c.corruptions_fixed),
        ("leaks-fixed", c.leaks_fixed),
        ("total-clusters", c.total_clusters),
        ("allocated-clusters", c.allocated_clusters),
        ("fragmented-clusters", c.fragmented_clusters),
        ("compressed-clusters", c.compressed_clusters),
    ];
    for (k, v) in optional {
        if v != 0 {
            m.insert(k.into(), json!(v));
        }
    }
    Value::Object(m)
}
