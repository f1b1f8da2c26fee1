//! `vdisk resize`: change an image's virtual size as qemu-img resize does.

use std::path::PathBuf;

use crate::cmd::{open_image, parse_format};
use crate::{CmdResult, Failure};
use vdisk::block::{BlockDevice, Preallocation, Resize};
use vdisk::options::parse_size;
use vdisk::{BackingPolicy, Driver, OpenOptions};
use vdisk_qcow2::Qcow2;

/// `vdisk resize`.
#[derive(Debug, clap::Args)]
pub struct ResizeArgs {
    /// Image format (probed when omitted, with a warning).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Allow the image to become smaller (data past the new end is lost).
    #[arg(long)]
    pub shrink: bool,
    /// How to reserve the added space: off, metadata (qcow2), falloc, full.
    #[arg(long, value_name = "MODE")]
    pub preallocation: Option<String>,
    /// Quiet: print nothing on success.
    #[arg(short = 'q')]
    pub quiet: bool,
    /// The image.
    pub filename: PathBuf,
    /// The new size, or +SIZE / -SIZE relative to the current one (suffixes k, M, G, T, ...).
    #[arg(allow_hyphen_values = true)]
    pub size: String,
}

/// Resizes the image.
pub fn run(a: ResizeArgs) -> CmdResult {
    let opts = OpenOptions {
        format: a.format.as_deref().map(parse_format).transpose()?,
        read_only: false,
        force_share: false,
        backing: BackingPolicy::Follow,
        snapshot: None,
    };
    let prealloc: Preallocation = match &a.preallocation {
        Some(p) => p.parse().map_err(Failure::from)?,
        None => Preallocation::Off,
    };
    let img = open_image(&a.filename, &opts)?;
    let current = img.image().size();
    let (sign, num) = match a.size.as_bytes().first() {
        Some(b'+') => (1, &a.size[1..]),
        Some(b'-') => (-1, &a.size[1..]),
        _ => (0, a.size.as_str()),
    };
    let n = parse_size(num).map_err(|_| {
        Failure::new("Invalid image size specified. You may use k, M, G, T, P or E suffixes for")
    })?;
    let new_size = match sign {
        1 => current.checked_add(n),
        -1 => current.checked_sub(n),
        _ => Some(n),
    }
    .ok_or_else(|| Failure::new("New image size must be positive."))?;
    if new_size == 0 && sign == -1 {
        return Err(Failure::new("New image size must be positive."));
    }
    if new_size < current && !a.shrink {
        eprintln!(
            "{}: Use the --shrink option to perform a shrink operation.",
            crate::prog()
        );
        return Err(Failure::new(
            "warning: Shrinking an image will delete all data beyond the shrunken image's end. \
             Before performing such an operation, make sure there is no important data there.",
        ));
    }
    match &img.driver {
        Driver::Raw(_) => {
            if prealloc == Preallocation::Metadata {
                return Err(Failure::new("Unsupported preallocation mode 'metadata'"));
            }
            if new_size < current && prealloc != Preallocation::Off {
                return Err(Failure::new(
                    "Preallocation can only be used for growing images",
                ));
            }
            img.file.resize(new_size, prealloc)?;
            img.file.flush()?;
        }
        Driver::Qcow2(_) => {
            let file = img.file.clone();
            // The backing image decides whether the grown range must be zeroed.
            let backing = img.backing.as_ref().map(|b| b.image());
            drop(img);
            let mut q = Qcow2::open_rw(file)?;
            if let Some(b) = backing {
                q.set_backing(b);
            }
            q.resize_image(new_size, prealloc, a.shrink)?;
            q.flush()?;
        }
        _ => return Err(Failure::new("Image format driver does not support resize")),
    }
    if !a.quiet {
        println!("Image resized.");
    }
    Ok(0)
}
