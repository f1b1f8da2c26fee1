//! `vdisk clone TEMPLATE NEW.qcow2 [OPERATIONS…]`: the operators' createvm in one command —
//! a qcow2 overlay of the template (backing format recorded), sysprep's default operations
//! and the given customize operations applied to it. The template is only ever read.

use std::path::PathBuf;

use vdisk::customize::session::clone_overlay;
use vdisk::customize::sysprep;
use vdisk::Format;

use super::customize::{run_session, split, CustomizeArgs};
use super::guest::warn;
use super::sysprep::operation_lists;
use crate::{CmdResult, Failure};

/// Runs `vdisk clone`.
pub fn run(a: CustomizeArgs) -> CmdResult {
    let (plan, c) = split(&a.args, &[("--operations", true), ("--enable", true)])?;
    if !c.images.is_empty() {
        return Err(Failure::new(
            "clone: name the template and the new image as arguments, not with -a",
        ));
    }
    let pos: Vec<PathBuf> = c
        .rest
        .iter()
        .filter(|e| e.name.is_empty())
        .filter_map(|e| e.value.as_deref().map(PathBuf::from))
        .collect();
    let [template, new] = pos.as_slice() else {
        return Err(Failure::new(
            "clone: expected TEMPLATE NEW.qcow2 [customize options]",
        ));
    };
    let ops = sysprep::select(&operation_lists(&c.rest))?;
    if plan.dry_run {
        // Everything on a throw-away overlay of the template; NEW is not created.
        run_session(
            std::slice::from_ref(template),
            c.format,
            &c.mounts(),
            &plan,
            &ops,
        )?;
        return Ok(0);
    }
    if let Some(w) = clone_overlay(template, c.format, new)? {
        warn(&w);
    }
    let r = run_session(
        std::slice::from_ref(new),
        Some(Format::Qcow2),
        &c.mounts(),
        &plan,
        &ops,
    );
    if r.is_err() {
        // The overlay is ours, made a moment ago: a failed clone leaves nothing behind.
        let _ = std::fs::remove_file(new);
    }
    r?;
    Ok(0)
}
