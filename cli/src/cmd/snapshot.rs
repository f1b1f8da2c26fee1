//! `vdisk snapshot`: list, create, apply and delete internal snapshots as qemu-img does.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::cmd::{open_image, parse_format};
use crate::{CmdResult, Failure};
use vdisk::{info, BackingPolicy, Driver, OpenOptions};
use vdisk_qcow2::{Qcow2, SnapshotInfo};

/// `vdisk snapshot`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("action").args(["list", "create", "apply", "delete"])))]
pub struct SnapshotArgs {
    /// List the snapshots (the default).
    #[arg(short = 'l')]
    pub list: bool,
    /// Create a snapshot named NAME.
    #[arg(short = 'c', value_name = "NAME")]
    pub create: Option<String>,
    /// Apply (revert the disk to) the snapshot with this ID or name.
    #[arg(short = 'a', value_name = "NAME")]
    pub apply: Option<String>,
    /// Delete the snapshot with this ID or name.
    #[arg(short = 'd', value_name = "NAME")]
    pub delete: Option<String>,
    /// Image format (probed when omitted, with a warning).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    /// Quiet: print nothing on success.
    #[arg(short = 'q')]
    pub quiet: bool,
    /// Open the image read-only without taking locks (only with -l).
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
    /// The image.
    pub filename: PathBuf,
}

/// Runs the snapshot action.
pub fn run(a: SnapshotArgs) -> CmdResult {
    let listing = a.create.is_none() && a.apply.is_none() && a.delete.is_none();
    if a.force_share && !listing {
        return Err(Failure::new("--force-share/-U is only allowed with -l"));
    }
    let opts = OpenOptions {
        format: a.format.as_deref().map(parse_format).transpose()?,
        read_only: listing,
        force_share: a.force_share,
        backing: BackingPolicy::Ignore,
        snapshot: None,
    };
    let img = open_image(&a.filename, &opts)?;
    let Driver::Qcow2(q) = &img.driver else {
        return Err(if listing {
            // qemu lists nothing for formats without snapshots.
            return Ok(0);
        } else {
            Failure::new(format!(
                "Could not {} snapshot '{}': Operation not supported",
                verb(&a),
                target(&a)
            ))
        });
    };
    if listing {
        print!("{}", list(q));
        return Ok(0);
    }
    // Reopen the image read-write on the same (locked, writable) file.
    let file = img.file.clone();
    drop(img);
    let mut q = Qcow2::open_rw(Arc::clone(&file)).map_err(|e| {
        Failure::new(format!(
            "Could not {} snapshot '{}': {}",
            verb(&a),
            target(&a),
            e.message()
        ))
    })?;
    let r = if let Some(name) = &a.create {
        q.create_snapshot(&SnapshotInfo {
            name: name.clone(),
            icount: Some(0),
            ..Default::default()
        })
    } else if let Some(name) = &a.apply {
        q.apply_snapshot(name).map_err(|e| {
            if e.message().contains("not found") {
                vdisk::block::Error::invalid("Failed to load snapshot: No such file or directory")
            } else {
                e
            }
        })
    } else if let Some(name) = &a.delete {
        q.delete_snapshot(name).map_err(|e| {
            if e.message().contains("not found") {
                vdisk::block::Error::invalid("snapshot not found")
            } else {
                e
            }
        })
    } else {
        Ok(())
    };
    r.and_then(|()| vdisk::block::BlockDevice::flush(&q))
        .map_err(|e| {
            Failure::new(format!(
                "Could not {} snapshot '{}': {}",
                verb(&a),
                target(&a),
                e.message()
            ))
        })?;
    Ok(0)
}

fn verb(a: &SnapshotArgs) -> &'static str {
    if a.create.is_some() {
        "create"
    } else if a.apply.is_some() {
        "apply"
    } else {
        "delete"
    }
}

fn target(a: &SnapshotArgs) -> &str {
    a.create
        .as_deref()
        .or(a.apply.as_deref())
        .or(a.delete.as_deref())
        .unwrap_or_default()
}

/// qemu-img's "Snapshot list:" table; empty when there are no snapshots.
pub fn list(q: &Qcow2) -> String {
    let snaps = q.snapshots();
    if snaps.is_empty() {
        return String::new();
    }
    let mut out = String::from("Snapshot list:\n");
    out.push_str(&info::snapshot_header());
    out.push('\n');
    for s in snaps {
        let mut v = json!({
            "id": s.id_str,
            "name": s.name,
            "vm-state-size": s.vm_state_size,
            "date-sec": s.date_sec,
            "date-nsec": s.date_nsec,
            "vm-clock-sec": s.vm_clock_nsec / 1_000_000_000,
            "vm-clock-nsec": s.vm_clock_nsec % 1_000_000_000,
        });
        if let Some(ic) = s.icount {
            v["icount"] = Value::from(ic);
        }
        out.push_str(&info::snapshot_row(&v));
        out.push('\n');
    }
    out
}
