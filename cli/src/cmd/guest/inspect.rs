//! `vdisk inspect`: what operating system the guest holds (virt-inspector).

use serde_json::{json, Value};
use vdisk::guest::Access;
use vdisk::guest::{self, OsInfo};

use super::{open_disks, print_text, warn_scan, DiskArgs};
use crate::args::OutputFormat;
use crate::{CmdResult, Failure};

/// `vdisk inspect -a IMAGE… [--output human|json]`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    disks: DiskArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "human", value_name = "OFMT")]
    output: OutputFormat,
}

/// Prints each operating system found: root device, type, distribution, version, hostname,
/// and the fstab mountpoints under our device names.
pub fn run(a: InspectArgs) -> CmdResult {
    let disks = open_disks(&a.disks, Access::ReadOnly)?;
    warn_scan(&disks, &[]);
    let found = guest::inspect(&disks.guest)?;
    if found.is_empty() {
        return Err(Failure::new(
            "no operating system could be detected inside this disk image",
        ));
    }
    let text = match a.output {
        OutputFormat::Json => {
            let oses: Vec<Value> = found.iter().map(to_json).collect();
            let mut s = serde_json::to_string_pretty(&json!({ "operatingsystems": oses }))
                .map_err(|e| Failure::new(e.to_string()))?;
            s.push('\n');
            s
        }
        OutputFormat::Human => found.iter().map(human).collect::<Vec<_>>().join("\n"),
    };
    print_text(&text)
}

/// virt-inspector's element names, as JSON.
fn to_json(os: &OsInfo) -> Value {
    json!({
        "root": os.root,
        "name": os.os_type,
        "distro": os.distro,
        "product_name": os.product_name,
        "major_version": os.major_version,
        "minor_version": os.minor_version,
        "arch": os.arch,
        "hostname": os.hostname,
        "package_format": os.package_format,
        "package_management": os.package_management,
        "firmware": os.firmware,
        "mountpoints": os.mountpoints.iter()
            .map(|(m, d)| json!({ "mountpoint": m, "device": d }))
            .collect::<Vec<_>>(),
    })
}

fn human(os: &OsInfo) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
    let mut s = format!("{}:\n", os.root);
    for (k, v) in [
        ("Type", os.os_type.clone()),
        ("Distribution", os.distro.clone()),
        ("Product name", opt(&os.product_name)),
        ("Version", os.version()),
        ("Architecture", opt(&os.arch)),
        ("Hostname", opt(&os.hostname)),
        ("Package format", opt(&os.package_format)),
        ("Package management", opt(&os.package_management)),
        ("Firmware", os.firmware.clone()),
    ] {
        s.push_str(&format!("  {:<20}{v}\n", format!("{k}:")));
    }
    s.push_str("  Mountpoints:\n");
    let w = os
        .mountpoints
        .iter()
        .map(|(m, _)| m.len())
        .max()
        .unwrap_or(0);
    for (m, d) in &os.mountpoints {
        s.push_str(&format!("    {m:<w$}  {d}\n"));
    }
    s
}
