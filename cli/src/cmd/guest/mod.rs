//! The guest filesystem commands (libguestfs's tools): `mount`, `umount`, `filesystems`,
//! `ls`, `cat`, `copy-out`, `inspect`, and the FUSE-less edits `write`, `edit`, `copy-in`,
//! `rm`, `mkdir`, `chmod`, `chown`, `ln`.
//!
//! Each command parses its flags here (its clap `Args` lives in its own file) and calls
//! [`vdisk::guest`] and [`vdisk_guestfs`]: opening the `-a` images, choosing what to mount
//! (`-m` or `-i`), and building the one tree ([`vdisk_guestfs::stack::Stack`]) that both the
//! FUSE mount and the FUSE-less commands read.

pub mod cat;
pub mod copy_in;
pub mod copy_out;
pub mod edit;
pub mod files;
pub mod filesystems;
pub mod inspect;
pub mod ls;
pub mod mount;
pub mod rw;
pub mod umount;
pub mod write;

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use vdisk::guest::{self, Access, GuestDisks, MountSpec};
use vdisk::OpenOptions;
use vdisk_guestfs::stack::Stack;

use crate::cmd::parse_format;
use crate::Failure;

/// The disks of the guest: `-a IMAGE…` and `--format`.
#[derive(Debug, Clone, clap::Args)]
pub struct DiskArgs {
    /// A disk image of the guest; repeat for several disks (/dev/sda, /dev/sdb, ... in order).
    #[arg(short = 'a', long = "add", value_name = "IMAGE", required = true)]
    pub add: Vec<PathBuf>,
    /// The format of every image (raw, qcow2); probed, with a warning, when omitted.
    #[arg(long = "format", value_name = "FMT")]
    pub format: Option<String>,
}

/// What to mount: `-m DEV[:MOUNTPOINT[:OPTIONS[:FSTYPE]]]…` or `-i`.
#[derive(Debug, Clone, clap::Args)]
pub struct MountSelect {
    /// Mount guest device DEV at MOUNTPOINT (default /) of the guest tree; repeat to stack
    /// filesystems (-m /dev/centos/root -m /dev/sda1:/boot).
    #[arg(
        short = 'm',
        long = "mount",
        value_name = "DEV[:MOUNTPOINT[:OPTIONS[:FSTYPE]]]"
    )]
    pub mount: Vec<String>,
    /// Inspect the guest: mount its root filesystem and the others as its /etc/fstab says.
    #[arg(short = 'i', long = "inspector", conflicts_with = "mount")]
    pub inspector: bool,
}

/// Opens the `-a` images (warning when a format had to be probed) and reads their
/// partitions and volumes. With [`Access::ReadWrite`] each top image is opened read-write
/// (write-locked) and its backing files read-only.
pub fn open_disks(d: &DiskArgs, access: Access) -> Result<GuestDisks, Failure> {
    let opts = OpenOptions {
        format: d.format.as_deref().map(parse_format).transpose()?,
        read_only: access == Access::ReadOnly,
        ..OpenOptions::default()
    };
    let mut images = Vec::with_capacity(d.add.len());
    for p in &d.add {
        let img = vdisk::open(p, &opts)?;
        for layer in img.chain().filter(|l| l.probed) {
            warn(&format!(
                "the format of '{}' was not given; probing guessed {}. Probing is unsafe for \
                 images from untrusted sources: pass --format (or record the backing format \
                 with -F)",
                layer.filename.display(),
                layer.format
            ));
        }
        images.push(img);
    }
    // The scan's warnings are printed by the caller, once it knows which devices it opens:
    // see [`warn_scan`].
    Ok(GuestDisks::from_images(images)?)
}

/// Prints what the partition and LVM scan found wrong, except about the LVs in `opening`,
/// whose problem the caller is about to report as its error.
pub fn warn_scan(disks: &GuestDisks, opening: &[&str]) {
    for w in disks.guest.warnings_except(opening) {
        warn(w);
    }
}

/// The guest tree: the `-m` filesystems stacked, or (with `-i`, or with no `-m` at all when
/// `inspect_by_default`, as virt-cat and virt-ls do) the inspected OS's. With
/// [`Access::ReadWrite`] each filesystem is opened by its engine's writer (a
/// `-m DEV:MP:ro` one stays read-only); the disks must then be open read-write.
pub fn open_tree(
    disks: &GuestDisks,
    sel: &MountSelect,
    inspect_by_default: bool,
    access: Access,
) -> Result<Arc<Stack>, Failure> {
    if sel.inspector || (sel.mount.is_empty() && inspect_by_default) {
        warn_scan(disks, &[]);
        let os = guest::single_os(&disks.guest)?;
        let (stack, warnings) = guest::mount_inspected(&disks.guest, &os, access)?;
        for w in warnings {
            warn(&w);
        }
        return Ok(Arc::new(stack));
    }
    if sel.mount.is_empty() {
        warn_scan(disks, &[]);
        return Err(Failure::new(
            "nothing to mount: give -m DEV[:MOUNTPOINT] or -i",
        ));
    }
    let specs = sel
        .mount
        .iter()
        .map(|m| m.parse::<MountSpec>())
        .collect::<Result<Vec<_>, _>>()?;
    let devices: Vec<&str> = specs.iter().map(|s| s.device.as_str()).collect();
    warn_scan(disks, &devices);
    Ok(Arc::new(guest::mount_specs(&disks.guest, &specs, access)?))
}

/// Prints a warning on stderr.
pub fn warn(msg: &str) {
    eprintln!("vdisk: warning: {msg}");
}

/// Prints an error that does not stop the command (a damaged entry met in `ls -R` or
/// `copy-out`), as `cp -r` names each file it could not copy and goes on.
pub fn warn_error(f: &Failure) {
    eprintln!("vdisk: {}", f.message());
}

/// Turns an output error into the command's result: a reader that went away (`| head`) is
/// not a failure.
pub fn output_result(r: io::Result<()>) -> Result<u8, Failure> {
    match r {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(Failure::new(format!("write error: {e}"))),
    }
}

/// Standard output, buffered for bulk data.
pub fn stdout() -> io::BufWriter<io::StdoutLock<'static>> {
    io::BufWriter::with_capacity(1 << 16, io::stdout().lock())
}

/// Writes `text` (already laid out) to stdout.
pub fn print_text(text: &str) -> Result<u8, Failure> {
    let mut out = stdout();
    output_result(out.write_all(text.as_bytes()).and_then(|()| out.flush()))
}

/// A guest path as given on the command line, as bytes.
pub fn guest_path(p: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_bytes().to_vec()
}

/// A library error about guest path `path`, as one line.
pub fn path_error(path: &[u8], e: vdisk::block::Error) -> Failure {
    Failure::from(vdisk_guestfs::ops::OpError::guest(path, e))
}
