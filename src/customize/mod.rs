//! Template customization without a VM: virt-customize's and virt-sysprep's operations that
//! are file edits, and the network settings libguestfs leaves to sed.
//!
//! ```text
//!   argv / --commands-from-file  ->  ops::Plan (operations in command-line order, flags)
//!   Plan + GuestOs (inspection)  ->  apply::run  ->  GuestFiles (read, write, mkdir, ...)
//!                                      |              (the guest tree, or MemGuest in tests
//!   pure editors, old text -> new:     |               and --dry-run)
//!     hostname, hosts, ifcfg, NetworkManager keyfiles, interfaces, netplan, networkd,
//!     shadow (SHA-512 crypt), firstboot, timezone, ssh keys, sysprep operations
//! ```
//!
//! Everything here is independent of how the guest's files are reached: [`GuestFiles`] is the
//! handful of path-level operations the customizations need, implemented over the guest
//! filesystem tree by the caller and by [`mem::MemGuest`] (an in-memory tree) for tests and
//! dry runs.
//!
//! ```
//! use vdisk::customize::{apply, mem::MemGuest, ops::Plan, GuestOs};
//!
//! let mut g = MemGuest::new();
//! g.add_dir("/etc", 0o755);
//! g.add_file("/etc/hostname", b"template\n", 0o644);
//! let plan = Plan::parse(["--hostname", "test02"])?;
//! let os = GuestOs { distro: "centos".into(), major_version: 7, ..GuestOs::default() };
//! apply::run(&plan, &mut g, &os)?;
//! assert_eq!(g.file("/etc/hostname").unwrap(), b"test02\n");
//! # Ok::<(), vdisk_block::Error>(())
//! ```

pub mod apply;
pub mod firstboot;
pub mod glob;
pub mod hostname;
pub mod ini;
pub mod mem;
pub mod network;
pub mod ops;
pub mod password;
pub mod record;
pub mod selinux;
pub mod session;
pub mod shellvars;
pub mod ssh;
pub mod sysprep;
pub mod timezone;
pub mod tree;

use vdisk_block::Result;

/// The longest guest file the customizations read whole (configuration files are a few KiB;
/// the bound keeps a hostile guest from making us allocate its disk).
pub const MAX_FILE: u64 = 16 << 20;

/// What kind of object a guest path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (only seen when not following links).
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

/// The attributes of a guest path the customizations look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// File type.
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
}

/// Mode and owner for a file or directory that does not exist yet. An existing file keeps
/// its own when it is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewFile {
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl NewFile {
    /// A root-owned file or directory with `mode`.
    pub const fn root(mode: u32) -> NewFile {
        NewFile {
            mode,
            uid: 0,
            gid: 0,
        }
    }
}

/// The path-level operations on a guest tree that the customizations are made of. Paths are
/// absolute guest paths; symlinks in them resolve inside the guest. Every call leaves the
/// guest filesystem consistent.
pub trait GuestFiles {
    /// The attributes of `path` (of the link's target when `follow`), None if it does not
    /// exist.
    fn stat(&self, path: &str, follow: bool) -> Result<Option<Meta>>;
    /// The whole content of regular file `path` (symlinks followed), None if it does not
    /// exist; files longer than `limit` are refused.
    fn read(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>>;
    /// The target of symlink `path`, None if it does not exist or is not a symlink.
    fn read_link(&self, path: &str) -> Result<Option<String>>;
    /// The names in directory `path` (without "." and ".."), None if it does not exist.
    fn list(&self, path: &str) -> Result<Option<Vec<String>>>;
    /// Makes `path` hold `data`: an existing file is replaced as a whole (its mode, owner
    /// and extended attributes kept, so an SELinux label survives); a new one is created
    /// with `new`.
    fn write(&mut self, path: &str, data: &[u8], new: NewFile) -> Result<()>;
    /// Creates directory `path` and any missing parents (`mkdir -p`) with `new`.
    fn mkdir_p(&mut self, path: &str, new: NewFile) -> Result<()>;
    /// Removes `path` and, for a directory, everything below it (`rm -rf`); false when there
    /// was nothing to remove. Symlinks are removed, never followed.
    fn remove_all(&mut self, path: &str) -> Result<bool>;
    /// Makes `link` a symlink to `target`, replacing a file or symlink already there
    /// (`ln -sf`); when `link` is a directory the link goes inside it.
    fn symlink(&mut self, target: &str, link: &str) -> Result<()>;
    /// Sets the permission bits of `path`.
    fn chmod(&mut self, path: &str, mode: u32) -> Result<()>;
    /// Sets the owner and group of `path` (not following a final symlink).
    fn chown(&mut self, path: &str, uid: u32, gid: u32) -> Result<()>;
    /// Renames `from` to `to` (inside one filesystem).
    fn rename(&mut self, from: &str, to: &str) -> Result<()>;
    /// Creates an empty file (with `new`) or, if `path` exists, sets its times to now.
    fn touch(&mut self, path: &str, new: NewFile) -> Result<()>;
    /// Cuts regular file `path` to `size` bytes in place.
    fn truncate(&mut self, path: &str, size: u64) -> Result<()>;
    /// Writes `data` over the start of regular file `path` in place (the same inode and, where
    /// the engine allows, the same blocks), for `--scrub`.
    fn overwrite(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<()>;
    /// Sets extended attribute `name` of `path` (not following a final symlink).
    fn set_xattr(&mut self, path: &str, name: &str, value: &[u8]) -> Result<()>;
    /// Copies host file or tree `local` into the existing guest directory `remote_dir`
    /// (modes, owners and symlinks kept), as virt-copy-in does. The default walks the host
    /// tree and calls the methods above.
    fn copy_in(&mut self, local: &std::path::Path, remote_dir: &str) -> Result<()> {
        apply::copy_in_walk(self, local, remote_dir)
    }
}

/// What the customizations need to know about the guest's operating system (from
/// inspection: [`crate::guest::OsInfo`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestOs {
    /// "linux", or "" when unknown.
    pub os_type: String,
    /// libguestfs's distro name ("centos", "rhel", "fedora", "debian", "ubuntu", ...).
    pub distro: String,
    /// Major version.
    pub major_version: u32,
    /// "yum", "dnf", "apt", "zypper", ...
    pub package_management: Option<String>,
}

impl From<&crate::guest::OsInfo> for GuestOs {
    fn from(os: &crate::guest::OsInfo) -> GuestOs {
        GuestOs {
            os_type: os.os_type.clone(),
            distro: os.distro.clone(),
            major_version: os.major_version,
            package_management: os.package_management.clone(),
        }
    }
}

/// The distribution families whose configuration files differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Fedora, RHEL, CentOS, Rocky, Alma, Oracle, Scientific Linux.
    RedHat,
    /// Debian, Ubuntu, Kali, Mint.
    Debian,
    /// openSUSE, SLES.
    Suse,
    /// Anything else (Arch, Alpine, unknown).
    Other,
}

impl GuestOs {
    /// The family of [`GuestOs::distro`].
    pub fn family(&self) -> Family {
        match self.distro.as_str() {
            "fedora" | "rhel" | "centos" | "scientificlinux" | "oraclelinux" | "redhat-based"
            | "rocky" | "alma" | "almalinux" | "circle" | "eurolinux" => Family::RedHat,
            "debian" | "ubuntu" | "kalilinux" | "linuxmint" => Family::Debian,
            "opensuse" | "sles" | "suse-based" => Family::Suse,
            _ => Family::Other,
        }
    }
}

/// The text of guest file `path`, None if it does not exist. A file that is not UTF-8 is
/// refused: rewriting it as text would replace the bytes we cannot read.
pub fn read_text(g: &dyn GuestFiles, path: &str) -> Result<Option<String>> {
    match g.read(path, MAX_FILE)? {
        None => Ok(None),
        Some(b) => String::from_utf8(b).map(Some).map_err(|_| {
            vdisk_block::Error::unsupported(format!(
                "{path}: not UTF-8 text, so it is not rewritten (edit it with vdisk edit)"
            ))
        }),
    }
}

/// Splits text into lines without their terminators (a final line without one included).
pub(crate) fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive('\n')
        .map(|l| l.strip_suffix('\n').unwrap_or(l))
}

/// Joins lines, each ending with a newline.
pub(crate) fn join_lines<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> String {
    let mut out = String::new();
    for l in lines {
        out.push_str(l.as_ref());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::mem::MemGuest;
    use super::network::{Addressing, NetConfig, StaticNet};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_that_is_not_utf8_is_refused_not_mangled() {
        let mut g = MemGuest::new();
        g.add_file("/etc/hostname", b"old\n", 0o644);
        g.add_file("/etc/hosts", b"127.0.1.1 old # caf\xe9\n", 0o644);
        let os = GuestOs {
            os_type: "linux".into(),
            distro: "debian".into(),
            major_version: 12,
            package_management: None,
        };
        let e = hostname::set(&mut g, &os, "new").unwrap_err();
        assert!(
            e.message().contains("/etc/hosts") && e.message().contains("UTF-8"),
            "{e}"
        );
        assert_eq!(g.file("/etc/hosts").unwrap(), b"127.0.1.1 old # caf\xe9\n");
    }

    proptest! {
        /// Guest files are hostile input: no editor panics on any text, and what it writes
        /// is parsed back by the next edit.
        #[test]
        fn editors_take_any_text(t in "(\\PC|\n|\t|=|#|\\[|\\]| ){0,300}") {
            let _ = hostname::hosts(&t, Some("a.b"), "c.d", true);
            let _ = shellvars::edit(&t, &[("IPADDR", Some("1.2.3.4")), ("HWADDR", None)]);
            let _ = shellvars::get(&t, "A");
            let _ = ini::edit(&t, &[ini::Set::one("ipv4", "method", "manual")]);
            let _ = ini::keys(&t, "ipv4");
            let _ = password::set_shadow(&t, "root", "*");
            let _ = ssh::lookup(&t, "root");
            let _ = ssh::authorized_keys(Some(&t), "ssh-ed25519 K");
            let st: StaticNet = "eth0=10.0.0.2/24,gw=10.0.0.1".parse().unwrap();
            let cfg = NetConfig {
                iface: "eth0".into(),
                addressing: Some(Addressing::Static(st)),
                mac: None,
            };
            let _ = network::interfaces(&t, &cfg);
            let k = network::keyfile(Some(&t), &cfg, "u");
            let m = ini::get(&k, "ipv4", "method");
            prop_assert_eq!(m.last().map(String::as_str), Some("manual"));
            let i = network::ifcfg(Some(&t), &cfg, "u");
            let ip = shellvars::get(&i, "IPADDR");
            prop_assert_eq!(ip.as_deref(), Some("10.0.0.2"));
            let _ = network::networkd(Some(&t), &cfg);
            let mut p = ops::Plan::default();
            let _ = p.add_commands(&t, 0);
        }
    }
}
