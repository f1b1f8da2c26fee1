//! `vdisk filesystems`: the guest's filesystems, partitions, disks and LVM objects
//! (virt-filesystems), in its column layout.

use serde_json::{json, Value};
use vdisk::guest::Access;
use vdisk::guest::{self, DeviceRow, DeviceSelection};

use super::{open_disks, print_text, warn_scan, DiskArgs};
use crate::args::OutputFormat;
use crate::CmdResult;

/// `vdisk filesystems -a IMAGE… [--long] [--all] [--uuid] [--output human|json]`.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct FilesystemsArgs {
    #[command(flatten)]
    disks: DiskArgs,
    /// Everything: filesystems (swap and unknown ones too), partitions, disks, LVs, VGs, PVs.
    #[arg(long)]
    all: bool,
    /// Filesystems (the default when nothing else is selected).
    #[arg(long)]
    filesystems: bool,
    /// Swap and unrecognised content among the filesystems.
    #[arg(long)]
    extra: bool,
    /// Partitions.
    #[arg(long, visible_alias = "parts")]
    partitions: bool,
    /// Whole disks.
    #[arg(long, visible_alias = "blkdevs")]
    block_devices: bool,
    /// LVM logical volumes.
    #[arg(long, visible_alias = "lvs")]
    logical_volumes: bool,
    /// LVM volume groups.
    #[arg(long, visible_alias = "vgs")]
    volume_groups: bool,
    /// LVM physical volumes.
    #[arg(long, visible_alias = "pvs")]
    physical_volumes: bool,
    /// Columns: Name Type VFS Label MBR Size Parent (as virt-filesystems --long).
    #[arg(short = 'l', long)]
    long: bool,
    /// Add a UUID column.
    #[arg(long, visible_alias = "uuids")]
    uuid: bool,
    /// Sizes as 1.0G, 500M (powers of 1024).
    #[arg(short = 'h', long)]
    human_readable: bool,
    /// No title line in long listings.
    #[arg(long)]
    no_title: bool,
    /// Output format (json always has every field).
    #[arg(long, value_enum, default_value = "human", value_name = "OFMT")]
    output: OutputFormat,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// Prints the selected rows.
pub fn run(a: FilesystemsArgs) -> CmdResult {
    let mut sel = DeviceSelection {
        filesystems: a.filesystems,
        extra: a.extra,
        partitions: a.partitions,
        block_devices: a.block_devices,
        lvs: a.logical_volumes,
        vgs: a.volume_groups,
        pvs: a.physical_volumes,
    };
    if a.all {
        sel = DeviceSelection::all();
    }
    if sel.extra {
        sel.filesystems = true;
    }
    if sel == DeviceSelection::default() {
        sel.filesystems = true;
    }
    let disks = open_disks(&a.disks, Access::ReadOnly)?;
    warn_scan(&disks, &[]);
    let rows = guest::list_devices(&disks.guest, sel)?;
    let text = match a.output {
        OutputFormat::Json => {
            let v: Vec<Value> = rows.iter().map(to_json).collect();
            let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
            s.push('\n');
            s
        }
        OutputFormat::Human => table(&a, sel, &rows),
    };
    print_text(&text)
}

fn to_json(r: &DeviceRow) -> Value {
    json!({
        "name": r.name,
        "type": r.kind,
        "vfs": r.vfs,
        "label": r.label,
        "mbr": r.mbr,
        "size": r.size,
        "parents": r.parents,
        "uuid": r.uuid,
    })
}

/// virt-filesystems' text layout: columns as wide as their widest cell, "-" for an empty
/// cell, two spaces between columns (one when that would pass 72 characters), no trailing
/// blanks; a column with nothing in it at all is left out.
fn table(a: &FilesystemsArgs, sel: DeviceSelection, rows: &[DeviceRow]) -> String {
    let size = |n: u64| {
        if a.human_readable {
            human_size(n)
        } else {
            n.to_string()
        }
    };
    let mut heads: Vec<&str> = vec!["Name"];
    if a.long {
        heads.push("Type");
        if sel.filesystems {
            heads.extend(["VFS", "Label"]);
        }
        if sel.partitions {
            heads.push("MBR");
        }
        heads.extend(["Size", "Parent"]);
    }
    if a.long && a.uuid {
        heads.push("UUID");
    }
    let mut cells: Vec<Vec<Option<String>>> = Vec::new();
    if a.long && !a.no_title {
        cells.push(heads.iter().map(|h| Some(h.to_string())).collect());
    }
    for r in rows {
        let mut c = vec![Some(r.name.clone())];
        if a.long {
            c.push(Some(r.kind.to_string()));
            if sel.filesystems {
                c.push(r.vfs.clone());
                c.push(r.label.clone());
            }
            if sel.partitions {
                c.push(r.mbr.clone());
            }
            c.push(Some(size(r.size)));
            c.push(Some(r.parents.join(",")));
        }
        if a.long && a.uuid {
            c.push(r.uuid.clone());
        }
        cells.push(c);
    }
    let ncol = heads.len();
    let width: Vec<usize> = (0..ncol)
        .map(|j| {
            cells
                .iter()
                .filter_map(|r| r[j].as_ref().map(|s| s.len().max(1)))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let gap = if width.iter().map(|w| w + 2).sum::<usize>() > 72 {
        1
    } else {
        2
    };
    let mut out = String::new();
    for r in &cells {
        let mut pad = 0;
        for j in (0..ncol).filter(|&j| width[j] > 0) {
            out.extend(std::iter::repeat_n(' ', pad));
            let s = match r[j].as_deref() {
                None | Some("") => "-",
                Some(s) => s,
            };
            out.push_str(s);
            pad = width[j] - s.len() + gap;
        }
        out.push('\n');
    }
    out
}

/// gnulib's human_readable with autoscale, base 1024, SI suffixes and one decimal below 10
/// ("512", "1.5K", "16M", "10G").
fn human_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["K", "M", "G", "T", "P", "E", "Z"];
    if n < 1024 {
        return n.to_string();
    }
    let mut v = n as f64;
    let mut unit = 0;
    v /= 1024.0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    // Round to the precision shown; a carry to 1024 moves up a unit.
    if v < 10.0 && (v * 10.0).round() / 10.0 < 10.0 {
        format!("{:.1}{}", (v * 10.0).round() / 10.0, UNITS[unit])
    } else if v.round() >= 1024.0 && unit + 1 < UNITS.len() {
        format!("1.0{}", UNITS[unit + 1])
    } else {
        format!("{}{}", v.round() as u64, UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(512), "512");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(16 << 20), "16M");
        assert_eq!(human_size(10 << 30), "10G");
        assert_eq!(human_size(1 << 30), "1.0G");
    }
}
