//! `vdisk sysprep`: virt-sysprep's file-edit operations ([`vdisk::customize::sysprep`]) and
//! the customize operations, in one open of the image.

use vdisk::customize::sysprep;

use super::customize::{run_session, split, CustomizeArgs};
use crate::{CmdResult, Failure};

/// The options sysprep adds to customize's.
pub const SYSPREP_OPTIONS: &[(&str, bool)] = &[
    ("--operations", true),
    ("--enable", true),
    ("--list-operations", false),
];

/// The `--operations`/`--enable` lists in order (`--enable X` is `--operations X`).
pub fn operation_lists(rest: &[vdisk::customize::ops::Extra]) -> Vec<String> {
    rest.iter()
        .filter(|e| e.name == "--operations" || e.name == "--enable")
        .filter_map(|e| e.value.clone())
        .collect()
}

/// Runs `vdisk sysprep`.
pub fn run(a: CustomizeArgs) -> CmdResult {
    let (plan, c) = split(&a.args, SYSPREP_OPTIONS)?;
    if c.rest.iter().any(|e| e.name == "--list-operations") {
        print!("{}", sysprep::list_operations());
        return Ok(0);
    }
    if let Some(e) = c.rest.iter().find(|e| e.name.is_empty()) {
        return Err(Failure::new(format!(
            "sysprep: unexpected argument '{}'",
            e.value.as_deref().unwrap_or_default()
        )));
    }
    if c.images.is_empty() {
        return Err(Failure::new("sysprep: give the disk image with -a IMAGE"));
    }
    let ops = sysprep::select(&operation_lists(&c.rest))?;
    run_session(&c.images, c.format, &c.mounts(), &plan, &ops)?;
    Ok(0)
}
