//! Guests: the images given with `-a`, the filesystems on them, and the operating system they
//! hold — what guestmount, virt-ls/cat/copy-out, virt-filesystems and virt-inspector share.
//!
//! ```text
//!   -a test.qcow2 -a data.raw     -> GuestDisks (open images, chains followed, read-only)
//!     Guest: /dev/sda, /dev/sda1, /dev/centos/root, /dev/mapper/centos-root ...
//!   -m /dev/centos/root -m /dev/sda1:/boot   (or -i: inspect, then /etc/fstab)
//!     -> open_filesystem (detect the type -> its engine in FS_ENGINES) for each device
//!     -> Stack: one tree, "/" from the first, "/boot" from the second
//! ```
//!
//! Editing opens the same way with `OpenOptions { read_only: false, .. }`: the top image of
//! each chain is writable (and write-locked), its backing files stay read-only and are never
//! written (copy-on-write), partitions and LVs write through to their extents, and
//! [`mount_specs`] with [`Access::ReadWrite`] opens each filesystem with its engine's writer.
//!
//! ```no_run
//! use vdisk::guest::{mount_specs, Access, GuestDisks, MountSpec};
//! use vdisk::OpenOptions;
//! use vdisk_guestfs::fs::FileSystem;
//!
//! let disks = GuestDisks::open(&["test.qcow2".into()], &OpenOptions::default())?;
//! let specs: Vec<MountSpec> = vec!["/dev/centos/root".parse()?, "/dev/sda1:/boot".parse()?];
//! let tree = mount_specs(&disks.guest, &specs, Access::ReadOnly)?;
//! let ino = tree.resolve(b"/etc/hostname", true)?;
//! # Ok::<(), vdisk_block::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use vdisk_block::{BlockDevice, Error, Result};
use vdisk_guestfs::detect::detect;
use vdisk_guestfs::devices::{mapper_name, FilesystemEntry, Guest};
use vdisk_guestfs::ext4::{Ext4, Ext4Rw};
use vdisk_guestfs::fs::{errno, FileKind, FileSystem};
use vdisk_guestfs::partition::{PartitionInfo, TableKind};
use vdisk_guestfs::stack::Stack;

use crate::open::{open, Driver, OpenOptions, OpenedImage};

/// The longest guest configuration file inspection reads (/etc/fstab, os-release, ...);
/// longer ones are cut there. Real ones are a few KiB; the bound keeps a hostile guest from
/// making us allocate its whole disk.
pub const MAX_CONFIG_FILE: usize = 1 << 20;

/// The images of one guest, opened, with the devices they make.
pub struct GuestDisks {
    /// The images in `-a` order (disk `/dev/sda` first).
    pub images: Vec<OpenedImage>,
    /// Their devices as libguestfs names them.
    pub guest: Guest,
}

impl std::fmt::Debug for GuestDisks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestDisks")
            .field("images", &self.images.len())
            .field("guest", &self.guest)
            .finish()
    }
}

impl GuestDisks {
    /// Opens `paths` with `opts` (the same format for all, as guestmount's `--format`
    /// applies to every `-a` after it) and reads their partitions and LVM volumes.
    pub fn open(paths: &[PathBuf], opts: &OpenOptions) -> Result<GuestDisks> {
        let images = paths
            .iter()
            .map(|p| open(p, opts))
            .collect::<Result<Vec<_>>>()?;
        GuestDisks::from_images(images)
    }

    /// Makes every write durable: each image's flush (qcow2 metadata written back, then the
    /// host files synced). Backing files were opened read-only and have nothing to flush.
    pub fn flush(&self) -> Result<()> {
        for img in &self.images {
            image_device(img)
                .flush()
                .map_err(|e| e.with_path(&img.filename))?;
        }
        Ok(())
    }

    /// The guest made of images already open.
    ///
    /// A writable qcow2 image gets metadata write-through ([`vdisk_qcow2::Qcow2::set_write_through`]):
    /// the filesystem engine orders its writes so that a killed process loses at most the
    /// operation in flight, and that order only holds on the image if each write's new
    /// clusters are mapped in the file when the write returns, not in a cache the kill takes.
    pub fn from_images(images: Vec<OpenedImage>) -> Result<GuestDisks> {
        for img in &images {
            if let Driver::Qcow2(q) = &img.driver {
                if !q.is_read_only() {
                    q.set_write_through(true)
                        .map_err(|e| e.with_path(&img.filename))?;
                }
            }
        }
        let devices: Vec<Arc<dyn BlockDevice>> = images.iter().map(image_device).collect();
        let guest = Guest::new(devices)?;
        Ok(GuestDisks { images, guest })
    }
}

/// The guest bytes of an image (its backing chain included) as a device.
pub fn image_device(img: &OpenedImage) -> Arc<dyn BlockDevice> {
    img.driver.image()
}

/// How a filesystem is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing is written; the device may be read-only.
    ReadOnly,
    /// Opened by the engine's writer ([`FileSystem::writable`] answers); the device must be
    /// writable (its image opened read-write).
    ReadWrite,
}

/// How an engine opens the filesystem on a device.
pub type OpenFs = fn(Arc<dyn BlockDevice>, Access) -> Result<Arc<dyn FileSystem>>;

/// One filesystem engine: the types detection names that it serves, and how it opens one.
/// Adding an engine is a crate and one line in [`FS_ENGINES`].
pub struct FsEngine {
    /// The types it serves, as detection (and `-m DEV:MP:OPTS:FSTYPE`) names them.
    pub types: &'static [&'static str],
    /// Opens the filesystem on a device.
    pub open: OpenFs,
}

impl std::fmt::Debug for FsEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsEngine")
            .field("types", &self.types)
            .finish()
    }
}

fn open_ext4(dev: Arc<dyn BlockDevice>, access: Access) -> Result<Arc<dyn FileSystem>> {
    Ok(match access {
        Access::ReadOnly => Arc::new(Ext4::open(dev)?),
        Access::ReadWrite => Arc::new(Ext4Rw::open(dev)?),
    })
}

fn open_fat(dev: Arc<dyn BlockDevice>, access: Access) -> Result<Arc<dyn FileSystem>> {
    Ok(Arc::new(vdisk_fat::Fat::open(
        dev,
        access == Access::ReadWrite,
    )?))
}

/// XFS: read through the reader (a dirty log replayed in memory); written by [`XfsRw`]
/// (v5), after a dirty log has been replayed home as the kernel's mount would.
///
/// [`XfsRw`]: vdisk_xfs::XfsRw
fn open_xfs(dev: Arc<dyn BlockDevice>, access: Access) -> Result<Arc<dyn FileSystem>> {
    match access {
        Access::ReadOnly => Ok(Arc::new(vdisk_xfs::Xfs::open(dev)?)),
        Access::ReadWrite => {
            let mut reader = vdisk_xfs::Xfs::open(dev.clone())?;
            if reader.log_replayed_in_memory() {
                reader.replay_home()?;
            }
            drop(reader);
            Ok(Arc::new(vdisk_xfs::XfsRw::open(dev)?))
        }
    }
}

/// The filesystem engines, by the types they serve.
pub static FS_ENGINES: &[FsEngine] = &[
    FsEngine {
        types: &["ext2", "ext3", "ext4"],
        open: open_ext4,
    },
    FsEngine {
        types: &["xfs"],
        open: open_xfs,
    },
    FsEngine {
        types: &["vfat"],
        open: open_fat,
    },
];

/// The engine serving filesystem type `fs_type`, if one does.
pub fn fs_engine(fs_type: &str) -> Option<&'static FsEngine> {
    FS_ENGINES.iter().find(|e| e.types.contains(&fs_type))
}

/// Every type the engines serve, for messages ("ext2, ext3, ext4 and xfs").
fn served_types() -> String {
    let all: Vec<&str> = FS_ENGINES
        .iter()
        .flat_map(|e| e.types.iter().copied())
        .collect();
    match all.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Opens the filesystem on guest device `device` with the engine its detected type (or the
/// type `fstype` names) picks from [`FS_ENGINES`]. A type no engine serves is refused with
/// an Unsupported error naming it and listing what is served.
pub fn open_filesystem(
    guest: &Guest,
    device: &str,
    fstype: Option<&str>,
    access: Access,
) -> Result<Arc<dyn FileSystem>> {
    let dev = guest.open_device(device)?;
    let kind = match fstype {
        Some(t) => t.to_string(),
        None => match detect(&*dev).map_err(|e| e.with_path(device))? {
            Some(info) => info.fs_type.as_str().to_string(),
            None => {
                return Err(Error::unsupported(format!(
                    "{device}: no filesystem found on this device"
                )))
            }
        },
    };
    if let Some(engine) = fs_engine(&kind) {
        return (engine.open)(dev, access).map_err(|e| e.with_path(device));
    }
    Err(match kind.as_str() {
        "swap" => Error::unsupported(format!("{device}: this is a swap device, not a filesystem")),
        "LVM2_member" => Error::unsupported(format!(
            "{device}: this is an LVM physical volume; mount one of its logical volumes \
             (/dev/VG/LV) instead"
        )),
        other => Error::unsupported(format!(
            "{device}: {other} filesystems are not supported yet (vdisk reads {})",
            served_types()
        )),
    })
}

/// One `-m DEV[:MOUNTPOINT[:OPTIONS[:FSTYPE]]]`, as guestmount spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// The guest device ("/dev/centos/root").
    pub device: String,
    /// Where in the guest tree ("/" unless given).
    pub mountpoint: String,
    /// Mount options, as given. `ro` mounts this filesystem read-only in a read-write tree;
    /// the others are accepted and ignored.
    pub options: Option<String>,
    /// The filesystem type, overriding detection.
    pub fstype: Option<String>,
}

impl FromStr for MountSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<MountSpec> {
        let mut parts = s.splitn(4, ':');
        let device = parts.next().unwrap_or_default().to_string();
        if device.is_empty() {
            return Err(Error::invalid(format!(
                "-m '{s}': expected DEV[:MOUNTPOINT[:OPTIONS[:FSTYPE]]]"
            )));
        }
        let mountpoint = match parts.next() {
            None | Some("") => "/".to_string(),
            Some(m) if m.starts_with('/') => m.to_string(),
            Some(m) => {
                return Err(Error::invalid(format!(
                    "-m '{s}': the mountpoint '{m}' must be an absolute guest path"
                )))
            }
        };
        let nonempty = |p: Option<&str>| p.filter(|x| !x.is_empty()).map(str::to_string);
        let options = nonempty(parts.next());
        let fstype = nonempty(parts.next());
        Ok(MountSpec {
            device,
            mountpoint,
            options,
            fstype,
        })
    }
}

/// Mounts `specs` into one tree. Shallower mountpoints go first whatever the order given
/// (so `-m /dev/sda1:/boot -m /dev/sda2` works), and something must be mounted on `/`. With
/// [`Access::ReadWrite`] each filesystem is opened writable unless its options say `ro`
/// (the images must have been opened read-write).
pub fn mount_specs(guest: &Guest, specs: &[MountSpec], access: Access) -> Result<Stack> {
    let mut order: Vec<&MountSpec> = specs.iter().collect();
    order.sort_by_key(|s| depth(&s.mountpoint));
    let Some(first) = order.first().filter(|s| depth(&s.mountpoint) == 0) else {
        return Err(Error::invalid(
            "nothing is mounted on / (give -m DEV, or -m DEV:/, or -i)",
        ));
    };
    let open = |s: &MountSpec| {
        let a = if s.read_only() {
            Access::ReadOnly
        } else {
            access
        };
        open_filesystem(guest, &s.device, s.fstype.as_deref(), a)
    };
    let mut stack = Stack::new(open(first)?);
    for s in &order[1..] {
        stack
            .mount(s.mountpoint.as_bytes(), open(s)?)
            .map_err(|e| e.with_path(&s.device))?;
    }
    Ok(stack)
}

impl MountSpec {
    /// True when the options ask for a read-only mount (`ro`).
    pub fn read_only(&self) -> bool {
        self.options
            .as_deref()
            .is_some_and(|o| o.split(',').any(|x| x == "ro"))
    }
}

/// The number of components of a guest path ("/" = 0, "/boot" = 1).
fn depth(path: &str) -> usize {
    path.split('/').filter(|c| !c.is_empty()).count()
}

/// One line of `vdisk filesystems --long --all`, as virt-filesystems prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    /// "/dev/sda1", "/dev/centos/root", "/dev/centos" (a VG).
    pub name: String,
    /// "filesystem", "lv", "vg", "pv", "partition" or "device".
    pub kind: &'static str,
    /// The filesystem type of a filesystem row ("ext4", "swap", "unknown").
    pub vfs: Option<String>,
    /// The filesystem label.
    pub label: Option<String>,
    /// The MBR partition type byte, two hex digits ("83").
    pub mbr: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// What it lives on: the disk of a partition, the VG of an LV, the PVs of a VG.
    pub parents: Vec<String>,
    /// The filesystem UUID; the LVM UUID (without dashes) of an LV, VG or PV.
    pub uuid: Option<String>,
}

/// Which rows [`list_devices`] returns (virt-filesystems' selection options).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceSelection {
    /// Filesystems that can be mounted.
    pub filesystems: bool,
    /// Swap and unrecognised content among the filesystems (`--extra`).
    pub extra: bool,
    /// Partitions.
    pub partitions: bool,
    /// Whole disks.
    pub block_devices: bool,
    /// Logical volumes.
    pub lvs: bool,
    /// Volume groups.
    pub vgs: bool,
    /// Physical volumes.
    pub pvs: bool,
}

impl DeviceSelection {
    /// Everything (`--all`).
    pub fn all() -> DeviceSelection {
        DeviceSelection {
            filesystems: true,
            extra: true,
            partitions: true,
            block_devices: true,
            lvs: true,
            vgs: true,
            pvs: true,
        }
    }
}

/// The guest's filesystems, LVs, VGs, PVs, partitions and disks, in virt-filesystems' order.
pub fn list_devices(guest: &Guest, sel: DeviceSelection) -> Result<Vec<DeviceRow>> {
    let mut rows = Vec::new();
    let row = |name: String, kind: &'static str, size: u64| DeviceRow {
        name,
        kind,
        vfs: None,
        label: None,
        mbr: None,
        size,
        parents: Vec::new(),
        uuid: None,
    };
    if sel.filesystems {
        for f in guest.list_filesystems()? {
            let extra = matches!(f.fs_type.as_str(), "swap" | "unknown");
            if extra && !sel.extra {
                continue;
            }
            rows.push(DeviceRow {
                vfs: Some(f.fs_type.clone()),
                label: f.label.clone(),
                uuid: f.uuid.clone(),
                ..row(f.device.clone(), "filesystem", f.size)
            });
        }
    }
    let vgs = guest.volume_groups();
    if sel.lvs {
        for name in guest.list_lvs() {
            let Some((vg, lv)) = name["/dev/".len()..].split_once('/') else {
                continue;
            };
            let Ok(dev) = guest.open_device(&name) else {
                continue;
            };
            let id = vgs
                .iter()
                .find(|g| g.name() == vg)
                .and_then(|g| g.metadata.lvs.iter().find(|l| l.name == lv))
                .map(|l| l.id.replace('-', ""));
            rows.push(DeviceRow {
                parents: vec![format!("/dev/{vg}")],
                uuid: id,
                ..row(name.clone(), "lv", dev.size())
            });
        }
    }
    if sel.vgs {
        let mut sorted: Vec<_> = vgs.iter().collect();
        sorted.sort_by(|a, b| a.name().cmp(b.name()));
        for vg in sorted {
            let m = &vg.metadata;
            let extents: u64 = m.pvs.iter().map(|p| p.pe_count).sum();
            rows.push(DeviceRow {
                parents: vg.pv_names.iter().flatten().cloned().collect(),
                uuid: Some(m.id.replace('-', "")),
                ..row(
                    format!("/dev/{}", m.name),
                    "vg",
                    extents.saturating_mul(m.extent_size),
                )
            });
        }
    }
    if sel.pvs {
        for name in guest.list_pvs() {
            let dev = guest.open_device(&name)?;
            // A PV in a VG is as big as its extents, as `pvs -o pv_size` reports.
            let in_vg = vgs.iter().find_map(|g| {
                let i = g
                    .pv_names
                    .iter()
                    .position(|n| n.as_deref() == Some(&*name))?;
                Some((g.metadata.pvs.get(i)?, g.metadata.extent_size))
            });
            let size = in_vg.map_or(dev.size(), |(p, es)| p.pe_count.saturating_mul(es));
            let uuid = detect(&*dev)
                .ok()
                .flatten()
                .and_then(|f| f.uuid)
                .map(|u| u.replace('-', ""));
            rows.push(DeviceRow {
                uuid,
                ..row(name.clone(), "pv", size)
            });
        }
    }
    if sel.partitions {
        for d in guest.disks() {
            for p in d.partitions() {
                let mbr = match (&p.info, d.table.as_ref().map(|t| t.kind)) {
                    (PartitionInfo::Mbr { type_byte, .. }, Some(TableKind::Mbr)) => {
                        Some(format!("{type_byte:02x}"))
                    }
                    _ => None,
                };
                rows.push(DeviceRow {
                    mbr,
                    parents: vec![d.name.clone()],
                    ..row(d.partition_name(p), "partition", p.size)
                });
            }
        }
    }
    if sel.block_devices {
        for d in guest.disks() {
            rows.push(row(d.name.clone(), "device", d.device.size()));
        }
    }
    Ok(rows)
}

/// What inspection found about one operating system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsInfo {
    /// The root filesystem's device ("/dev/centos/root").
    pub root: String,
    /// "linux" (the only type recognised so far).
    pub os_type: String,
    /// The distribution as libguestfs names it ("centos", "rhel", "fedora", "debian",
    /// "ubuntu", ...), or "unknown".
    pub distro: String,
    /// The product name ("CentOS Linux 7 (Core)").
    pub product_name: Option<String>,
    /// Major version.
    pub major_version: u32,
    /// Minor version.
    pub minor_version: u32,
    /// The architecture of the guest's binaries ("x86_64").
    pub arch: Option<String>,
    /// The hostname.
    pub hostname: Option<String>,
    /// "rpm", "deb", ...
    pub package_format: Option<String>,
    /// "yum", "dnf", "apt", ...
    pub package_management: Option<String>,
    /// Mountpoint → our device name, from /etc/fstab, "/" first then by length.
    pub mountpoints: Vec<(String, String)>,
    /// fstab entries that name no device of this guest (network filesystems, missing
    /// disks), as "SPEC MOUNTPOINT".
    pub unresolved: Vec<String>,
    /// "uefi" when the guest boots through UEFI (an EFI system partition on one of its
    /// disks, or a vfat /boot/efi in its fstab), else "bios".
    pub firmware: String,
}

impl OsInfo {
    /// "7.9" (major.minor).
    pub fn version(&self) -> String {
        format!("{}.{}", self.major_version, self.minor_version)
    }
}

/// Finds the operating systems on the guest's filesystems, as virt-inspector does: a
/// filesystem whose /etc holds fstab, os-release or hosts is a Linux root.
/// Filesystems we cannot read (unsupported types) are skipped.
pub fn inspect(guest: &Guest) -> Result<Vec<OsInfo>> {
    let fss = guest.list_filesystems()?;
    let mut out = Vec::new();
    for f in &fss {
        if fs_engine(&f.fs_type).is_none() {
            continue;
        }
        let Ok(fs) = open_filesystem(guest, &f.device, Some(&f.fs_type), Access::ReadOnly) else {
            continue;
        };
        if is_linux_root(&*fs) {
            out.push(inspect_linux(guest, &fss, &f.device, &*fs)?);
        }
    }
    Ok(out)
}

fn is_linux_root(fs: &dyn FileSystem) -> bool {
    let kind = |p: &[u8]| {
        fs.resolve(p, true)
            .and_then(|i| fs.getattr(i))
            .map(|a| a.kind)
            .ok()
    };
    kind(b"/etc") == Some(FileKind::Dir)
        && [&b"/etc/fstab"[..], b"/etc/os-release", b"/etc/hosts"]
            .iter()
            .any(|p| kind(p) == Some(FileKind::File))
}

/// Reads a guest file whole (up to [`MAX_CONFIG_FILE`] bytes); None when it does not exist
/// or is not a regular file.
pub fn read_guest_file(fs: &dyn FileSystem, path: &[u8]) -> Result<Option<Vec<u8>>> {
    let ino = match fs.resolve(path, true) {
        Ok(i) => i,
        Err(e) if matches!(errno(&e), errno::ENOENT | errno::ENOTDIR | errno::ELOOP) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let attr = fs.getattr(ino)?;
    if attr.kind != FileKind::File {
        return Ok(None);
    }
    let len = usize::try_from(attr.size)
        .unwrap_or(usize::MAX)
        .min(MAX_CONFIG_FILE);
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = fs.read(ino, done as u64, &mut buf[done..])?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(Some(buf))
}

fn read_text(fs: &dyn FileSystem, path: &str) -> Option<String> {
    read_guest_file(fs, path.as_bytes())
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// `KEY=value` lines of a shell-style file (os-release, sysconfig/network, lsb-release):
/// quotes removed, backslash escapes inside double quotes resolved.
pub fn parse_shell_vars(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim().trim_start_matches("export ").trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let v = v.trim();
        let value = if let Some(inner) = v.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
            let mut s = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        s.push(n);
                    }
                } else {
                    s.push(c);
                }
            }
            s
        } else if let Some(inner) = v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
            inner.to_string()
        } else {
            v.to_string()
        };
        m.insert(k.to_string(), value);
    }
    m
}

/// "7.9.2009" → (7, 9); "7" → (7, 0); "buster/sid" → None.
fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim().split(['.', '-', ' ']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// The version after "release " in a redhat-release style line.
fn release_version(line: &str) -> Option<(u32, u32)> {
    let at = line.find("release ")?;
    parse_version(line[at + "release ".len()..].split_whitespace().next()?)
}

/// libguestfs's distro name for an os-release ID.
fn distro_from_id(id: &str) -> String {
    match id {
        "rhel" | "redhat" => "rhel",
        "arch" => "archlinux",
        "alpine" => "alpinelinux",
        "opensuse" | "opensuse-leap" | "opensuse-tumbleweed" => "opensuse",
        "sles" | "sled" => "sles",
        "ol" => "oraclelinux",
        "almalinux" => "alma",
        "rocky" => "rocky",
        other => other,
    }
    .to_string()
}

fn inspect_linux(
    guest: &Guest,
    fss: &[FilesystemEntry],
    root: &str,
    fs: &dyn FileSystem,
) -> Result<OsInfo> {
    let mut os = OsInfo {
        root: root.to_string(),
        os_type: "linux".into(),
        distro: "unknown".into(),
        ..OsInfo::default()
    };
    let mut have_minor = false;
    if let Some(t) = read_text(fs, "/etc/os-release") {
        let v = parse_shell_vars(&t);
        if let Some(id) = v.get("ID") {
            os.distro = distro_from_id(id);
        }
        os.product_name = v.get("PRETTY_NAME").or(v.get("NAME")).cloned();
        if let Some((ma, mi)) = v.get("VERSION_ID").and_then(|x| parse_version(x)) {
            os.major_version = ma;
            os.minor_version = mi;
            have_minor = v.get("VERSION_ID").is_some_and(|x| x.contains('.'));
        }
    }
    // Red Hat family: the release file names the product and (before version 8, whose
    // os-release says only "7") the minor version.
    for (file, distro) in [
        ("/etc/centos-release", "centos"),
        ("/etc/rocky-release", "rocky"),
        ("/etc/fedora-release", "fedora"),
        ("/etc/redhat-release", ""),
    ] {
        let Some(t) = read_text(fs, file) else {
            continue;
        };
        let line = t.lines().next().unwrap_or_default().trim().to_string();
        if os.distro == "unknown" {
            os.distro = if !distro.is_empty() {
                distro.to_string()
            } else if line.starts_with("CentOS") {
                "centos".into()
            } else if line.starts_with("Fedora") {
                "fedora".into()
            } else if line.starts_with("Red Hat") {
                "rhel".into()
            } else {
                "redhat-based".into()
            };
        }
        if let Some((ma, mi)) = release_version(&line) {
            if !have_minor && (os.major_version == 0 || os.major_version == ma) {
                os.major_version = ma;
                os.minor_version = mi;
            }
        }
        if os.product_name.is_none() && !line.is_empty() {
            os.product_name = Some(line);
        }
        break;
    }
    if os.distro == "unknown" {
        if let Some(t) = read_text(fs, "/etc/debian_version") {
            os.distro = "debian".into();
            if let Some((ma, mi)) = parse_version(&t) {
                os.major_version = ma;
                os.minor_version = mi;
            }
        }
    }
    (os.package_format, os.package_management) = match os.distro.as_str() {
        "centos" | "rhel" | "rocky" | "alma" | "oraclelinux" | "redhat-based" => (
            Some("rpm".into()),
            Some(if os.major_version >= 8 { "dnf" } else { "yum" }.into()),
        ),
        "fedora" => (Some("rpm".into()), Some("dnf".into())),
        "opensuse" | "sles" => (Some("rpm".into()), Some("zypper".into())),
        "debian" | "ubuntu" | "linuxmint" => (Some("deb".into()), Some("apt".into())),
        "archlinux" => (Some("pacman".into()), Some("pacman".into())),
        "alpinelinux" => (Some("apk".into()), Some("apk".into())),
        _ => (None, None),
    };
    os.hostname = read_text(fs, "/etc/hostname")
        .and_then(|t| t.lines().next().map(|l| l.trim().to_string()))
        .filter(|h| !h.is_empty())
        .or_else(|| {
            read_text(fs, "/etc/sysconfig/network")
                .and_then(|t| parse_shell_vars(&t).get("HOSTNAME").cloned())
        })
        .or_else(|| {
            read_text(fs, "/etc/HOSTNAME")
                .and_then(|t| t.lines().next().map(|l| l.trim().to_string()))
        })
        .filter(|h| !h.is_empty());
    os.arch = guest_arch(fs);
    let mut mps: Vec<(String, String)> = vec![("/".into(), root.to_string())];
    if let Some(t) = read_text(fs, "/etc/fstab") {
        for (spec, mp, vfs, opts) in parse_fstab(&t) {
            if !mp.starts_with('/')
                || matches!(
                    vfs.as_str(),
                    "swap"
                        | "proc"
                        | "sysfs"
                        | "devpts"
                        | "tmpfs"
                        | "devtmpfs"
                        | "cgroup"
                        | "cgroup2"
                        | "debugfs"
                        | "securityfs"
                        | "nfs"
                        | "nfs4"
                        | "cifs"
                        | "none"
                )
                || opts.split(',').any(|o| o == "bind")
            {
                continue;
            }
            match resolve_fstab_device(guest, fss, &spec) {
                Some(dev) => {
                    if mp == "/" {
                        continue;
                    }
                    mps.retain(|(m, _)| *m != mp);
                    mps.push((mp, dev));
                }
                None => os.unresolved.push(format!("{spec} {mp}")),
            }
        }
    }
    mps.sort_by(|a, b| (depth(&a.0), &a.0).cmp(&(depth(&b.0), &b.0)));
    let efi_in_fstab = mps.iter().any(|(m, _)| m == "/boot/efi");
    os.mountpoints = mps;
    os.firmware = if efi_in_fstab || has_esp(guest) {
        "uefi"
    } else {
        "bios"
    }
    .into();
    Ok(os)
}

/// The GPT type GUID of an EFI system partition, as it reads on disk (mixed-endian).
const ESP_TYPE: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];

/// Whether a disk of the guest has an EFI system partition (GPT type C12A7328-..., or MBR
/// type 0xef).
fn has_esp(guest: &Guest) -> bool {
    guest
        .disks()
        .iter()
        .flat_map(|d| d.partitions())
        .any(|p| match &p.info {
            PartitionInfo::Gpt { type_guid, .. } => type_guid.0 == ESP_TYPE,
            PartitionInfo::Mbr { type_byte, .. } => *type_byte == 0xef,
        })
}

/// The architecture of the first of the usual binaries that is an ELF file.
fn guest_arch(fs: &dyn FileSystem) -> Option<String> {
    for p in [
        "/bin/bash",
        "/bin/ls",
        "/bin/sh",
        "/usr/bin/bash",
        "/usr/bin/ls",
    ] {
        let Ok(ino) = fs.resolve(p.as_bytes(), true) else {
            continue;
        };
        let mut h = [0u8; 20];
        if fs.read(ino, 0, &mut h).ok() != Some(20) || &h[..4] != b"\x7fELF" {
            continue;
        }
        let machine = if h[5] == 2 {
            u16::from_be_bytes([h[18], h[19]])
        } else {
            u16::from_le_bytes([h[18], h[19]])
        };
        let name = match (machine, h[4], h[5]) {
            (3, _, _) => "i386",
            (62, _, _) => "x86_64",
            (183, _, _) => "aarch64",
            (40, _, _) => "armv7l",
            (8, 1, _) => "mips",
            (8, 2, _) => "mips64",
            (20, _, _) => "ppc",
            (21, _, 1) => "ppc64le",
            (21, _, _) => "ppc64",
            (22, _, _) => "s390x",
            (243, _, _) => "riscv64",
            _ => continue,
        };
        return Some(name.to_string());
    }
    None
}

/// fstab lines as (spec, mountpoint, type, options), with fstab's octal escapes (`\040`)
/// decoded.
pub fn parse_fstab(text: &str) -> Vec<(String, String, String, String)> {
    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\'
                && i + 3 < b.len()
                && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
            {
                let v = (b[i + 1] - b'0') as u32 * 64
                    + (b[i + 2] - b'0') as u32 * 8
                    + (b[i + 3] - b'0') as u32;
                out.push(v as u8);
                i += 4;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 3 {
                return None;
            }
            Some((
                unescape(f[0]),
                unescape(f[1]),
                f[2].to_string(),
                f.get(3).copied().unwrap_or("defaults").to_string(),
            ))
        })
        .collect()
}

/// Our name for the device an fstab spec names: `UUID=`, `LABEL=`, /dev/disk/by-uuid|label,
/// /dev/mapper/VG-LV, /dev/VG/LV, /dev/sdXN (and vd, hd, xvd spellings).
pub fn resolve_fstab_device(guest: &Guest, fss: &[FilesystemEntry], spec: &str) -> Option<String> {
    let unquote = |s: &str| s.trim_matches('"').to_string();
    let by = |pick: &dyn Fn(&FilesystemEntry) -> Option<String>, want: &str| {
        fss.iter()
            .find(|f| pick(f).is_some_and(|v| v.eq_ignore_ascii_case(want)))
            .map(|f| f.device.clone())
    };
    if let Some(u) = spec
        .strip_prefix("UUID=")
        .or(spec.strip_prefix("/dev/disk/by-uuid/"))
    {
        return by(&|f| f.uuid.clone(), &unquote(u));
    }
    if let Some(l) = spec
        .strip_prefix("LABEL=")
        .or(spec.strip_prefix("/dev/disk/by-label/"))
    {
        let l = unquote(l);
        return fss
            .iter()
            .find(|f| f.label.as_deref() == Some(&*l))
            .map(|f| f.device.clone());
    }
    if spec.starts_with("/dev/mapper/") {
        for vg in guest.volume_groups() {
            for lv in vg.visible_lvs() {
                if mapper_name(vg.name(), &lv.name) == spec {
                    return Some(format!("/dev/{}/{}", vg.name(), lv.name));
                }
            }
        }
        return None;
    }
    let rest = spec.strip_prefix("/dev/")?;
    // /dev/xvdb1 is the guest's second Xen disk: our /dev/sdb1 as libguestfs maps it.
    let name = ["xvd", "sd", "vd", "hd"]
        .iter()
        .find_map(|p| rest.strip_prefix(p))
        .map(|tail| format!("/dev/sd{tail}"))
        .unwrap_or_else(|| spec.to_string());
    fss.iter()
        .find(|f| f.device == name)
        .map(|f| f.device.clone())
        .or_else(|| guest.list_lvs().into_iter().find(|l| *l == name))
}

/// Mounts what inspection found: the root on `/`, then its fstab mountpoints, each opened
/// with `access`. A filesystem that cannot be mounted (an unsupported type, a missing
/// mountpoint directory) is skipped with a warning, as guestmount -i does.
pub fn mount_inspected(guest: &Guest, os: &OsInfo, access: Access) -> Result<(Stack, Vec<String>)> {
    let mut warnings = Vec::new();
    let mut stack = Stack::new(open_filesystem(guest, &os.root, None, access)?);
    for (mp, dev) in os.mountpoints.iter().filter(|(m, _)| m != "/") {
        let r = open_filesystem(guest, dev, None, access)
            .and_then(|fs| stack.mount(mp.as_bytes(), fs).map_err(|e| e.with_path(dev)));
        if let Err(e) = r {
            warnings.push(format!("{mp}: not mounted: {e}"));
        }
    }
    Ok((stack, warnings))
}

/// The one operating system of an `-i` mount: inspection must find exactly one.
pub fn single_os(guest: &Guest) -> Result<OsInfo> {
    let mut found = inspect(guest)?;
    match found.len() {
        0 => Err(Error::invalid(
            "no operating system was found on this disk (use -m to name a filesystem)",
        )),
        1 => Ok(found.remove(0)),
        _ => Err(Error::unsupported(format!(
            "multi-boot operating systems are not supported by -i (roots: {}); use -m",
            found
                .iter()
                .map(|o| o.root.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_specs_parse() {
        let m: MountSpec = "/dev/sda1".parse().unwrap();
        assert_eq!(
            (m.device.as_str(), m.mountpoint.as_str()),
            ("/dev/sda1", "/")
        );
        let m: MountSpec = "/dev/sda1:/boot:ro,noatime:ext4".parse().unwrap();
        assert_eq!(m.mountpoint, "/boot");
        assert_eq!(m.options.as_deref(), Some("ro,noatime"));
        assert_eq!(m.fstype.as_deref(), Some("ext4"));
        let m: MountSpec = "/dev/sda1::".parse().unwrap();
        assert_eq!(m.mountpoint, "/");
        assert!("".parse::<MountSpec>().is_err());
        assert!("/dev/sda1:boot".parse::<MountSpec>().is_err());
    }

    #[test]
    fn shell_vars_and_versions() {
        let v = parse_shell_vars(
            "NAME=\"CentOS Linux\"\nVERSION_ID=\"7\"\n# c\nID='centos'\nX=a\\\"b\nPRETTY_NAME=\"A \\\"q\\\"\"\n",
        );
        assert_eq!(v["NAME"], "CentOS Linux");
        assert_eq!(v["ID"], "centos");
        assert_eq!(v["VERSION_ID"], "7");
        assert_eq!(v["PRETTY_NAME"], "A \"q\"");
        assert_eq!(parse_version("7.9.2009"), Some((7, 9)));
        assert_eq!(parse_version("10"), Some((10, 0)));
        assert_eq!(parse_version("buster/sid"), None);
        assert_eq!(
            release_version("CentOS Linux release 7.9.2009 (Core)"),
            Some((7, 9))
        );
    }

    #[test]
    fn fstab() {
        let t = "# comment\n/dev/mapper/centos-root / xfs defaults 0 0\n\
                 UUID=abc /boot ext4 defaults 1 2\n/dev/x /my\\040dir ext4 ro\nshort line\n";
        let f = parse_fstab(t);
        assert_eq!(f.len(), 3);
        assert_eq!(f[2].1, "/my dir");
        assert_eq!(f[2].3, "ro");
    }
}
