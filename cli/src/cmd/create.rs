//! `vdisk create`: new images with qemu-img's options.

use std::path::Path;

use crate::args::CreateArgs;
use crate::cmd::parse_format;
use crate::{CmdResult, Failure};
use vdisk::block::Preallocation;
use vdisk::options::{parse_opts, parse_size};
use vdisk::Format;
use vdisk_raw::RawFile;

/// Creates the image.
pub fn run(a: CreateArgs) -> CmdResult {
    let format = parse_format(&a.format)?;
    let mut opts = Vec::new();
    for o in &a.options {
        opts.extend(parse_opts(o)?);
    }
    if opts.iter().any(|(k, _)| k == "help" || k == "?") {
        print!("{}", help_text(format));
        return Ok(0);
    }
    let Some(filename) = a.filename.clone() else {
        return Err(Failure::new("Expecting image file name"));
    };
    match format {
        Format::Raw => create_raw(&a, &filename, &opts),
        Format::Qcow2 => create_qcow2(&a, &filename, &opts),
    }
}

fn help_text(format: Format) -> String {
    match format {
        Format::Raw => "Supported raw options:\n  \
             preallocation=<str (off, falloc, full)> - Preallocation mode (allowed values: off, falloc, full)\n  \
             size=<size>            - Virtual disk size\n"
            .to_string(),
        Format::Qcow2 => "Supported qcow2 options:\n  \
             backing_file=<str>     - File name of a base image\n  \
             backing_fmt=<str>      - Image format of the base image\n  \
             cluster_size=<size>    - qcow2 cluster size\n  \
             compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])\n  \
             compression_type=<str> - Compression method used for image cluster compression\n  \
             data_file=<str>        - File name of an external data file\n  \
             data_file_raw=<bool (on/off)> - The external data file must stay valid as a raw image\n  \
             extended_l2=<bool (on/off)> - Extended L2 tables\n  \
             lazy_refcounts=<bool (on/off)> - Postpone refcount updates\n  \
             preallocation=<str>    - Preallocation mode (allowed values: off, metadata, falloc, full)\n  \
             refcount_bits=<num>    - Width of a reference count entry in bits\n  \
             size=<size>            - Virtual disk size\n"
            .to_string(),
    }
}

fn create_raw(a: &CreateArgs, filename: &Path, opts: &[(String, String)]) -> CmdResult {
    let name = filename.display().to_string();
    if a.backing.is_some() || a.backing_format.is_some() {
        return Err(Failure::new(format!(
            "{name}: Backing file not supported for file format 'raw'"
        )));
    }
    let mut size = None;
    let mut prealloc = Preallocation::Off;
    let mut prealloc_given = false;
    for (k, v) in opts {
        match k.as_str() {
            "size" => size = Some(parse_size(v)?),
            "preallocation" => {
                prealloc = v.parse().map_err(Failure::from)?;
                if prealloc == Preallocation::Metadata {
                    return Err(Failure::new(format!(
                        "{name}: Invalid parameter 'metadata' (raw images support off, falloc, full)"
                    )));
                }
                prealloc_given = true;
            }
            _ => {
                return Err(Failure::new(format!(
                    "{name}: Invalid parameter '{k}' for format raw (see 'vdisk create -f raw -o help')"
                )))
            }
        }
    }
    if let Some(s) = &a.size {
        size = Some(parse_size(s)?);
    }
    let size =
        size.ok_or_else(|| Failure::new(format!("{name}: Image creation needs a size parameter")))?;
    if !a.quiet {
        let mut line = format!("Formatting '{name}', fmt=raw size={size}");
        if prealloc_given {
            line.push_str(&format!(" preallocation={}", prealloc.as_str()));
        }
        println!("{line}");
    }
    // qemu's block layer works in 512-byte sectors: a raw image's length is rounded up.
    let rounded = size.div_ceil(512).saturating_mul(512);
    RawFile::create(filename, rounded, prealloc)?;
    Ok(0)
}

/// A qemu boolean option value.
fn parse_bool(name: &str, key: &str, v: &str) -> Result<bool, Failure> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(Failure::new(format!(
            "{name}: Parameter '{key}' expects 'on' or 'off'"
        ))),
    }
}

fn create_qcow2(a: &CreateArgs, filename: &Path, opts: &[(String, String)]) -> CmdResult {
    use vdisk_qcow2::{CompressionType, CreateOptions, Qcow2};

    let name = filename.display().to_string();
    let fail = |m: String| Failure::new(format!("{name}: {m}"));
    let mut o = CreateOptions::default();
    let mut size_opt: Option<(u64, String)> = None;
    // The "Formatting" line repeats options as given.
    let mut given: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    let mut backing_file = a.backing.clone();
    let mut backing_fmt = a.backing_format.clone();
    for (k, v) in opts {
        match k.as_str() {
            "size" => size_opt = Some((parse_size(v)?, v.clone())),
            "compat" => {
                o.version = match v.as_str() {
                    "0.10" | "v2" => 2,
                    "1.1" | "v3" => 3,
                    _ => {
                        return Err(fail(format!(
                            "Parameter 'version' does not accept value '{v}'"
                        )))
                    }
                };
                given.insert("compat", v.clone());
            }
            "cluster_size" => o.cluster_size = parse_size(v)?,
            "refcount_bits" => {
                o.refcount_bits = v
                    .parse()
                    .map_err(|_| fail(format!("Parameter 'refcount_bits' expects a number")))?;
            }
            "lazy_refcounts" => {
                o.lazy_refcounts = parse_bool(&name, k, v)?;
                given.insert("lazy_refcounts", v.clone());
            }
            "extended_l2" => {
                o.extended_l2 = parse_bool(&name, k, v)?;
                given.insert("extended_l2", v.clone());
            }
            "data_file_raw" => {
                o.data_file_raw = parse_bool(&name, k, v)?;
                given.insert("data_file_raw", v.clone());
            }
            "compression_type" => {
                o.compression_type = match v.as_str() {
                    "zlib" => CompressionType::Zlib,
                    "zstd" => CompressionType::Zstd,
                    _ => {
                        return Err(fail(format!(
                            "Parameter 'compression-type' does not accept value '{v}'"
                        )))
                    }
                };
                given.insert("compression_type", v.clone());
            }
            "preallocation" => {
                o.preallocation = v.parse().map_err(Failure::from)?;
                given.insert("preallocation", v.clone());
            }
            "backing_file" => backing_file = Some(v.clone()),
            "backing_fmt" => backing_fmt = Some(v.clone()),
            "data_file" => o.data_file = Some(v.clone()),
            k if k == "encryption" || k.starts_with("encrypt.") => {
                return Err(fail("encrypted images are not supported".to_string()))
            }
            _ => {
                return Err(fail(format!(
                    "Invalid parameter '{k}' for format qcow2 (see 'vdisk create -f qcow2 -o help')"
                )))
            }
        }
    }
    let mut size = match (&a.size, size_opt) {
        (Some(_), Some(_)) => {
            return Err(fail("The image size must be specified only once".into()))
        }
        (Some(s), None) => Some((parse_size(s)?, None)),
        (None, Some((v, text))) => Some((v, Some(text))),
        (None, None) => None,
    };
    if let Some(b) = &backing_file {
        let bpath = vdisk::open::resolve_backing(filename, b);
        if a.unsafe_backing {
            if backing_fmt.is_none() {
                return Err(fail(
                    "Backing file specified without backing format (give -F with -u)".into(),
                ));
            }
        } else {
            let format = match &backing_fmt {
                Some(f) => Some(f.parse::<Format>().map_err(|e| fail(e.to_string()))?),
                None => None,
            };
            let opened = vdisk::open(
                &bpath,
                &vdisk::OpenOptions {
                    format,
                    read_only: true,
                    force_share: true,
                    ..Default::default()
                },
            )
            .map_err(|e| fail(format!("{e}\nCould not open backing image.")))?;
            if backing_fmt.is_none() {
                eprintln!(
                    "vdisk: warning: backing file '{b}' specified without backing format; \
                     probing detected {} and it is recorded as backing_fmt={}",
                    opened.format, opened.format
                );
                backing_fmt = Some(opened.format.name().to_string());
            }
            if size.is_none() {
                size = Some((opened.image().size(), None));
            }
        }
    }
    let Some((size, size_text)) = size else {
        return Err(fail("Image creation needs a size parameter".into()));
    };
    o.size = size.div_ceil(512).saturating_mul(512);
    o.backing_file = backing_file.clone();
    o.backing_format = backing_fmt.clone();

    if !a.quiet {
        let mut line = format!(
            "Formatting '{name}', fmt=qcow2 cluster_size={} extended_l2={}",
            o.cluster_size,
            given.get("extended_l2").map_or("off", String::as_str)
        );
        if let Some(p) = given.get("preallocation") {
            line.push_str(&format!(" preallocation={p}"));
        }
        line.push_str(&format!(
            " compression_type={} size={}",
            given.get("compression_type").map_or("zlib", String::as_str),
            size_text.unwrap_or_else(|| size.to_string())
        ));
        if let Some(c) = given.get("compat") {
            line.push_str(&format!(" compat={c}"));
        }
        if let Some(b) = &backing_file {
            line.push_str(&format!(" backing_file={b}"));
        }
        if let Some(f) = &backing_fmt {
            line.push_str(&format!(" backing_fmt={f}"));
        }
        if let Some(d) = &o.data_file {
            line.push_str(&format!(" data_file={d}"));
        }
        if let Some(r) = given.get("data_file_raw") {
            line.push_str(&format!(" data_file_raw={r}"));
        }
        line.push_str(&format!(
            " lazy_refcounts={} refcount_bits={}",
            given.get("lazy_refcounts").map_or("off", String::as_str),
            o.refcount_bits
        ));
        println!("{line}");
    }
    o.validate().map_err(|e| fail(e.to_string()))?;

    let existed_data = o.data_file.as_ref().is_some_and(|d| Path::new(d).exists());
    let result = (|| -> vdisk::block::Result<()> {
        let file = std::sync::Arc::new(RawFile::create(filename, 0, Preallocation::Off)?);
        let data = match &o.data_file {
            // qemu resolves a data file name against the current directory.
            Some(d) => Some(std::sync::Arc::new(RawFile::create(
                d,
                o.size,
                Preallocation::Off,
            )?)),
            None => None,
        };
        let mut q = Qcow2::create(file, &o)?;
        if let Some(d) = data {
            q.set_data_file_rw(d);
            q.preallocate(o.preallocation)?;
        }
        vdisk::block::BlockDevice::flush(&q)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(filename);
        if let (Some(d), false) = (&o.data_file, existed_data) {
            let _ = std::fs::remove_file(d);
        }
        let msg = e.to_string();
        let msg = msg
            .strip_prefix(&format!("{name}: "))
            .map(str::to_string)
            .unwrap_or(msg);
        return Err(fail(msg));
    }
    Ok(0)
}
