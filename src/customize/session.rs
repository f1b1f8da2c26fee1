//! One customization run on disk images: the images opened once (top images read-write,
//! backing files read-only), the guest tree mounted once (`-m` specs or inspection), every
//! operation applied through [`TreeFiles`], then the filesystems and images flushed.
//!
//! ```text
//!   Session::open(-a.., --format, -m.. | -i) -> sysprep ops (name order) -> customize ops
//!     (command-line order) -> passwords -> SELinux relabel request -> close (flush)
//!   clone_overlay(TEMPLATE, NEW.qcow2): qcow2 overlay, backing format recorded; the
//!     template is only ever opened read-only
//! ```

use std::path::{Path, PathBuf};

use vdisk_block::{Error, Result};
use vdisk_guestfs::fs::FileSystemMut;
use vdisk_guestfs::stack::Stack;

use super::apply::{self, Report};
use super::ops::Plan;
use super::sysprep::Operation;
use super::tree::TreeFiles;
use super::{shellvars, GuestFiles, GuestOs};
use crate::guest::{self, Access, GuestDisks, MountSpec};
use crate::open::{Format, OpenOptions};

/// An open guest, ready for operations.
pub struct Session {
    disks: GuestDisks,
    tree: Stack,
    /// Throw-away overlays of a dry run, removed when the session ends.
    scratch: Vec<PathBuf>,
    /// What inspection says about the guest's operating system.
    pub os: GuestOs,
    /// Warnings to show the user (probed formats, scan problems, filesystems not mounted).
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("os", &self.os).finish()
    }
}

/// Where the guest tree comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mounts {
    /// Inspection (`-i`): the root and what its /etc/fstab mounts.
    Inspect,
    /// These `-m` specs, stacked in order.
    Specs(Vec<MountSpec>),
}

impl Session {
    /// Opens `images` (with `format` for all, else probed with a warning) for writing, or
    /// read-only when `read_only`, and mounts the tree.
    pub fn open(
        images: &[PathBuf],
        format: Option<Format>,
        mounts: &Mounts,
        read_only: bool,
    ) -> Result<Session> {
        let opts = OpenOptions {
            format,
            read_only,
            ..OpenOptions::default()
        };
        let mut warnings = Vec::new();
        let mut opened = Vec::with_capacity(images.len());
        for p in images {
            let img = crate::open(p, &opts)?;
            for layer in img.chain().filter(|l| l.probed) {
                warnings.push(format!(
                    "the format of '{}' was not given; probing guessed {}. Probing is unsafe \
                     for images from untrusted sources: pass --format (or record the backing \
                     format with -F)",
                    layer.filename.display(),
                    layer.format
                ));
            }
            opened.push(img);
        }
        let disks = GuestDisks::from_images(opened)?;
        let access = if read_only {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        };
        let (tree, info) = match mounts {
            Mounts::Inspect => {
                warnings.extend(
                    disks
                        .guest
                        .warnings_except(&[])
                        .iter()
                        .map(|s| s.to_string()),
                );
                let os = guest::single_os(&disks.guest)?;
                let (stack, w) = guest::mount_inspected(&disks.guest, &os, access)?;
                warnings.extend(w);
                (stack, Some(os))
            }
            Mounts::Specs(specs) => {
                if specs.is_empty() {
                    return Err(Error::invalid(
                        "nothing to mount: give -m DEV[:MOUNTPOINT] or -i",
                    ));
                }
                let devices: Vec<&str> = specs.iter().map(|s| s.device.as_str()).collect();
                warnings.extend(
                    disks
                        .guest
                        .warnings_except(&devices)
                        .iter()
                        .map(|s| s.to_string()),
                );
                let stack = guest::mount_specs(&disks.guest, specs, access)?;
                // The OS whose root is the filesystem mounted on "/".
                let root = specs
                    .iter()
                    .find(|s| s.mountpoint == "/")
                    .map(|s| &s.device);
                let info = guest::inspect(&disks.guest)
                    .ok()
                    .and_then(|v| v.into_iter().find(|o| Some(&o.root) == root));
                (stack, info)
            }
        };
        let os = match info {
            Some(i) => GuestOs::from(&i),
            None => os_from_tree(&TreeFiles::new(&tree))?,
        };
        Ok(Session {
            disks,
            tree,
            scratch: Vec::new(),
            os,
            warnings,
        })
    }

    /// A dry run's session: each image gets a throw-away qcow2 overlay in the temporary
    /// directory (the image itself only read), the operations run on the overlays, and the
    /// overlays are removed when the session ends — so a dry run meets every error a real run
    /// would, and writes nothing the user named.
    pub fn open_dry_run(
        images: &[PathBuf],
        format: Option<Format>,
        mounts: &Mounts,
    ) -> Result<Session> {
        let mut scratch = Vec::new();
        let mut warnings = Vec::new();
        let r = (|| {
            for (i, img) in images.iter().enumerate() {
                let abs = std::path::absolute(img)
                    .map_err(|e| Error::io("path", None, e).with_path(img))?;
                let ov = std::env::temp_dir()
                    .join(format!("vdisk-dry-run-{}-{i}.qcow2", std::process::id()));
                let _ = std::fs::remove_file(&ov);
                if let Some(w) = clone_overlay(&abs, format, &ov)? {
                    warnings.push(w);
                }
                scratch.push(ov);
            }
            let fmt = Some(Format::Qcow2);
            Session::open(&scratch, fmt, mounts, false)
        })();
        match r {
            Ok(mut s) => {
                s.scratch = scratch;
                warnings.append(&mut s.warnings);
                s.warnings = warnings;
                Ok(s)
            }
            Err(e) => {
                for p in &scratch {
                    let _ = std::fs::remove_file(p);
                }
                Err(e)
            }
        }
    }

    /// The guest tree as [`GuestFiles`].
    pub fn files(&self) -> TreeFiles<'_> {
        TreeFiles::new(&self.tree)
    }

    /// Runs `sysprep` operations (in name order), then `plan`'s operations, then the SELinux
    /// step; the filesystems stay consistent after each operation.
    pub fn run(&self, plan: &Plan, sysprep: &[&Operation]) -> Result<Report> {
        let mut g = self.files();
        let mut r = Report::default();
        apply::run_sysprep(sysprep, &mut g, &self.os, &mut r)?;
        let more = apply::run(plan, &mut g, &self.os)?;
        r.messages.extend(more.messages);
        r.random_passwords = more.random_passwords;
        r.macs = more.macs;
        r.created.extend(more.created);
        apply::finish_selinux(plan, &mut g, &mut r)?;
        Ok(r)
    }

    /// Makes everything durable: the filesystems, then the images (a dry run's overlays are
    /// removed instead).
    pub fn close(self) -> Result<()> {
        if !self.scratch.is_empty() {
            return Ok(());
        }
        self.tree.flush()?;
        self.disks.flush()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for p in &self.scratch {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The OS facts from the tree itself, for a `-m` root inspection did not recognise:
/// /etc/os-release's ID and VERSION_ID.
fn os_from_tree(g: &dyn GuestFiles) -> Result<GuestOs> {
    let mut os = GuestOs {
        os_type: "linux".into(),
        distro: "unknown".into(),
        ..GuestOs::default()
    };
    if let Some(b) = g.read("/etc/os-release", super::MAX_FILE)? {
        let t = String::from_utf8_lossy(&b);
        if let Some(id) = shellvars::get(&t, "ID") {
            os.distro = id;
        }
        if let Some(v) = shellvars::get(&t, "VERSION_ID") {
            os.major_version = v
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
        }
    }
    Ok(os)
}

/// Creates `new` as a qcow2 overlay of `template` (its format given, or probed with the
/// warning returned), recording the template's absolute name and its format, as
/// `qemu-img create -f qcow2 -b TEMPLATE -F FMT NEW` does. The template is opened read-only
/// and never written; `new` must not exist.
pub fn clone_overlay(
    template: &Path,
    template_format: Option<Format>,
    new: &Path,
) -> Result<Option<String>> {
    if std::fs::symlink_metadata(new).is_ok() {
        return Err(
            Error::invalid("the new image already exists; clone never overwrites").with_path(new),
        );
    }
    let mut req = crate::create::parse_create_options(Format::Qcow2, &[] as &[&str])?;
    // The name is recorded absolute: qemu resolves a relative backing name against the
    // overlay's directory, not against the directory the user typed it in.
    let template = std::path::absolute(template)
        .map_err(|e| Error::io("path", None, e).with_path(template))?;
    let tname = template.to_string_lossy().into_owned();
    let fmt = template_format.map(|f| f.to_string());
    req.set_backing(Some(&tname), fmt.as_deref());
    let warning = req.resolve_backing(new, false)?;
    drop(crate::create::create_image(new, &req)?);
    Ok(warning)
}
