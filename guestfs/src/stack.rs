//! Several filesystems seen as one tree: what several `-m DEV:MOUNTPOINT` options build.
//!
//! ```text
//!   -m /dev/centos/root  -m /dev/sda1:/boot
//!
//!   layer 0 (root fs)          layer 1 (/dev/sda1)
//!   /                          /            <- replaces the directory /boot of layer 0
//!   ├── etc                    ├── grub2
//!   └── boot ──────────────────┘
//!
//!   stacked inode = (layer << 48) | inode inside the layer   (layer 0: the guest's own)
//! ```
//!
//! A [`Stack`] is itself a [`FileSystem`], so the FUSE adapter and the FUSE-less commands
//! serve one mounted device or a whole tree the same way, and [`FileSystem::resolve`] follows
//! symlinks and `..` across mountpoints as the guest's kernel would. A directory that a
//! later layer is mounted on is replaced by that layer's root, in lookups and in listings.
//!
//! Layers opened writable ([`FileSystem::writable`]) make the stack writable too: each change goes to the layer that owns the inode, a change to a
//! read-only layer fails with EROFS, links and renames between layers fail with EXDEV (as
//! across mountpoints in the kernel), and a mountpoint cannot be removed or renamed (EBUSY).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::sync::Arc;

use vdisk_block::{Error, Result};

use crate::fs::{
    errno, errno_error, Attr, Capabilities, DirEntry, FileKind, FileSystem, FileSystemMut, Ino,
    SetAttr, StatFs,
};

/// Cross-device link (EXDEV): a link or rename between two mounted filesystems.
const EXDEV: i32 = 18;
/// Device or resource busy (EBUSY): removing or renaming a mountpoint.
const EBUSY: i32 = 16;

/// The most filesystems one stack holds. libguestfs mounts one filesystem per fstab line;
/// real guests have a handful, and the bound keeps the layer field of inode numbers small.
pub const MAX_LAYERS: usize = 256;

/// Bits of a stacked inode number that hold the inode inside its layer. ext2/3/4 inode
/// numbers are 32 bits; 48 leaves room for filesystems with wider ones.
pub const LAYER_SHIFT: u32 = 48;

const LOCAL_MASK: u64 = (1 << LAYER_SHIFT) - 1;

struct Layer {
    /// Where it is mounted, as given ("/", "/boot").
    path: Vec<u8>,
    /// The filesystem; writable when it was opened so ([`FileSystem::writable`]).
    fs: Arc<dyn FileSystem>,
    /// The stacked inode of the directory holding the mountpoint ("..") of this layer's root.
    parent: Ino,
}

/// Filesystems mounted at guest paths, seen as one [`FileSystem`].
pub struct Stack {
    layers: Vec<Layer>,
    /// A stacked directory inode -> the layer mounted over it (the latest one).
    covered: HashMap<Ino, usize>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let paths: Vec<_> = self
            .layers
            .iter()
            .map(|l| String::from_utf8_lossy(&l.path).into_owned())
            .collect();
        f.debug_struct("Stack").field("mounts", &paths).finish()
    }
}

impl Stack {
    /// A stack with `root` mounted at `/`.
    pub fn new(root: Arc<dyn FileSystem>) -> Stack {
        let parent = root.root_ino();
        Stack {
            layers: vec![Layer {
                path: b"/".to_vec(),
                fs: root,
                parent,
            }],
            covered: HashMap::new(),
        }
    }

    /// Mounts `fs` over the directory at guest path `path` of the tree built so far
    /// (symlinks followed inside the guest tree). The directory must exist, as mount(8)
    /// requires.
    pub fn mount(&mut self, path: &[u8], fs: Arc<dyn FileSystem>) -> Result<()> {
        let shown = String::from_utf8_lossy(path).into_owned();
        if self.layers.len() >= MAX_LAYERS {
            return Err(Error::unsupported(format!(
                "{shown}: more than {MAX_LAYERS} filesystems mounted"
            )));
        }
        if !path.starts_with(b"/") {
            return Err(Error::invalid(format!(
                "mountpoint '{shown}' is not an absolute path"
            )));
        }
        let target = self.resolve(path, true).map_err(|e| {
            Error::invalid(format!(
                "mountpoint {shown} does not exist in the guest tree ({e})"
            ))
        })?;
        if self.getattr(target)?.kind != FileKind::Dir {
            return Err(Error::invalid(format!(
                "mountpoint {shown} is not a directory in the guest tree"
            )));
        }
        let mut up = path.to_vec();
        up.extend_from_slice(b"/..");
        let parent = self.resolve(&up, true)?;
        let index = self.layers.len();
        self.layers.push(Layer {
            path: path.to_vec(),
            fs,
            parent,
        });
        self.covered.insert(target, index);
        Ok(())
    }

    /// The mountpoints in mount order, `/` first.
    pub fn mountpoints(&self) -> Vec<&[u8]> {
        self.layers.iter().map(|l| l.path.as_slice()).collect()
    }

    /// The layer and local inode of a stacked inode.
    fn split(&self, ino: Ino) -> Result<(&Layer, Ino)> {
        let index = usize::try_from(ino >> LAYER_SHIFT).unwrap_or(usize::MAX);
        let layer = self
            .layers
            .get(index)
            .ok_or_else(|| errno_error("stack", errno::ENOENT))?;
        Ok((layer, ino & LOCAL_MASK))
    }

    /// The stacked inode of `local` in layer `index`, with a covered directory replaced by
    /// the root of the layer mounted over it.
    fn join(&self, index: usize, local: Ino) -> Result<Ino> {
        if local > LOCAL_MASK {
            return Err(Error::unsupported(format!(
                "inode number {local} is too large to stack (at most {LAYER_SHIFT} bits)"
            )));
        }
        let mut ino = ((index as u64) << LAYER_SHIFT) | local;
        // Each step goes to a later layer, so this ends within MAX_LAYERS steps.
        while let Some(&top) = self.covered.get(&ino) {
            ino = ((top as u64) << LAYER_SHIFT) | self.layers[top].fs.root_ino();
        }
        Ok(ino)
    }

    fn index_of(ino: Ino) -> usize {
        usize::try_from(ino >> LAYER_SHIFT).unwrap_or(usize::MAX)
    }

    /// The writable filesystem and local inode of a stacked inode (EROFS for a read-only
    /// layer).
    fn split_rw(&self, ino: Ino) -> Result<(&dyn FileSystemMut, Ino)> {
        let (layer, local) = self.split(ino)?;
        let rw = layer
            .fs
            .writable()
            .ok_or_else(|| errno_error("write", errno::EROFS))?;
        Ok((rw, local))
    }

    /// `attr` of layer `index`, renumbered as the stack numbers it.
    fn stacked(&self, index: usize, mut attr: Attr) -> Result<Attr> {
        attr.ino = self.join(index, attr.ino)?;
        Ok(attr)
    }

    /// EBUSY when `parent/name` is the root of a mounted layer (a mountpoint): it cannot be
    /// removed or renamed while mounted.
    fn not_a_mountpoint(&self, parent: Ino, name: &OsStr) -> Result<()> {
        let (layer, local) = self.split(parent)?;
        let Some(found) = layer.fs.lookup(local, name)? else {
            return Ok(());
        };
        let raw = ((Self::index_of(parent) as u64) << LAYER_SHIFT) | found;
        if self.covered.contains_key(&raw) {
            return Err(errno_error("stack", EBUSY));
        }
        Ok(())
    }

    /// Flushes every read-write layer, reporting the first error after trying them all.
    fn flush_all(&self) -> Result<()> {
        let mut first = None;
        for l in &self.layers {
            if let Some(rw) = l.fs.writable() {
                if let Err(e) = rw.flush() {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl FileSystem for Stack {
    fn root_ino(&self) -> Ino {
        let root = self.layers[0].fs.root_ino();
        self.join(0, root).unwrap_or(root)
    }

    fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Option<Ino>> {
        let (layer, local) = self.split(parent)?;
        if name == ".." && local == layer.fs.root_ino() {
            return Ok(Some(layer.parent));
        }
        match layer.fs.lookup(local, name)? {
            Some(found) => self.join(Self::index_of(parent), found).map(Some),
            None => Ok(None),
        }
    }

    fn getattr(&self, ino: Ino) -> Result<Attr> {
        let (layer, local) = self.split(ino)?;
        let mut a = layer.fs.getattr(local)?;
        a.ino = ino;
        Ok(a)
    }

    fn readdir(&self, ino: Ino, offset: u64, f: &mut dyn FnMut(DirEntry) -> bool) -> Result<()> {
        let (layer, local) = self.split(ino)?;
        let index = Self::index_of(ino);
        let is_root = local == layer.fs.root_ino();
        let mut err = None;
        layer.fs.readdir(local, offset, &mut |mut e| {
            e.ino = if is_root && e.name == ".." {
                layer.parent
            } else {
                match self.join(index, e.ino) {
                    Ok(i) => i,
                    Err(x) => {
                        err = Some(x);
                        return false;
                    }
                }
            };
            f(e)
        })?;
        err.map_or(Ok(()), Err)
    }

    fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let (layer, local) = self.split(ino)?;
        layer.fs.read(local, offset, buf)
    }

    fn readlink(&self, ino: Ino) -> Result<OsString> {
        let (layer, local) = self.split(ino)?;
        layer.fs.readlink(local)
    }

    fn listxattr(&self, ino: Ino) -> Result<Vec<OsString>> {
        let (layer, local) = self.split(ino)?;
        layer.fs.listxattr(local)
    }

    fn getxattr(&self, ino: Ino, name: &OsStr) -> Result<Option<Vec<u8>>> {
        let (layer, local) = self.split(ino)?;
        layer.fs.getxattr(local, name)
    }

    /// The root filesystem's counts: [`FileSystem::statfs`] names no inode, so a stacked
    /// `/boot` cannot report its own.
    fn statfs(&self) -> Result<StatFs> {
        self.layers[0].fs.statfs()
    }

    /// The stack itself, when any layer is writable (a change to a read-only layer still
    /// fails with EROFS).
    fn writable(&self) -> Option<&dyn FileSystemMut> {
        if self.layers.iter().any(|l| l.fs.writable().is_some()) {
            Some(self)
        } else {
            None
        }
    }

    /// The root filesystem's.
    fn capabilities(&self) -> Capabilities {
        self.layers[0].fs.capabilities()
    }

    fn generation(&self, ino: Ino) -> Result<u64> {
        let (layer, local) = self.split(ino)?;
        layer.fs.generation(local)
    }
}

impl FileSystemMut for Stack {
    fn create(&self, parent: Ino, name: &OsStr, mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        let (fs, local) = self.split_rw(parent)?;
        let a = fs.create(local, name, mode, uid, gid)?;
        self.stacked(Self::index_of(parent), a)
    }

    fn mkdir(&self, parent: Ino, name: &OsStr, mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        let (fs, local) = self.split_rw(parent)?;
        let a = fs.mkdir(local, name, mode, uid, gid)?;
        self.stacked(Self::index_of(parent), a)
    }

    fn mknod(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let (fs, local) = self.split_rw(parent)?;
        let a = fs.mknod(local, name, mode, rdev, uid, gid)?;
        self.stacked(Self::index_of(parent), a)
    }

    fn symlink(
        &self,
        parent: Ino,
        name: &OsStr,
        target: &OsStr,
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        let (fs, local) = self.split_rw(parent)?;
        let a = fs.symlink(local, name, target, uid, gid)?;
        self.stacked(Self::index_of(parent), a)
    }

    fn link(&self, ino: Ino, newparent: Ino, newname: &OsStr) -> Result<Attr> {
        if Self::index_of(ino) != Self::index_of(newparent) {
            return Err(errno_error("link", EXDEV));
        }
        let (fs, local) = self.split_rw(ino)?;
        let (_, local_parent) = self.split(newparent)?;
        let a = fs.link(local, local_parent, newname)?;
        self.stacked(Self::index_of(ino), a)
    }

    fn unlink(&self, parent: Ino, name: &OsStr) -> Result<()> {
        let (fs, local) = self.split_rw(parent)?;
        self.not_a_mountpoint(parent, name)?;
        fs.unlink(local, name)
    }

    fn rmdir(&self, parent: Ino, name: &OsStr) -> Result<()> {
        let (fs, local) = self.split_rw(parent)?;
        self.not_a_mountpoint(parent, name)?;
        fs.rmdir(local, name)
    }

    fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        if Self::index_of(parent) != Self::index_of(newparent) {
            return Err(errno_error("rename", EXDEV));
        }
        let (fs, local) = self.split_rw(parent)?;
        let (_, local_new) = self.split(newparent)?;
        self.not_a_mountpoint(parent, name)?;
        self.not_a_mountpoint(newparent, newname)?;
        fs.rename(local, name, local_new, newname, flags)
    }

    fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        let (fs, local) = self.split_rw(ino)?;
        fs.write(local, offset, data)
    }

    fn setattr(&self, ino: Ino, changes: &SetAttr) -> Result<Attr> {
        let (fs, local) = self.split_rw(ino)?;
        let mut a = fs.setattr(local, changes)?;
        a.ino = ino;
        Ok(a)
    }

    fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: u32) -> Result<()> {
        let (fs, local) = self.split_rw(ino)?;
        fs.setxattr(local, name, value, flags)
    }

    fn removexattr(&self, ino: Ino, name: &OsStr) -> Result<()> {
        let (fs, local) = self.split_rw(ino)?;
        fs.removexattr(local, name)
    }

    /// Flushes every read-write layer.
    fn flush(&self) -> Result<()> {
        self.flush_all()
    }

    fn unlink_kept(&self, parent: Ino, name: &OsStr) -> Result<Option<Ino>> {
        let (fs, local) = self.split_rw(parent)?;
        self.not_a_mountpoint(parent, name)?;
        match fs.unlink_kept(local, name)? {
            Some(o) => self.join(Self::index_of(parent), o).map(Some),
            None => Ok(None),
        }
    }

    fn rmdir_kept(&self, parent: Ino, name: &OsStr) -> Result<Option<Ino>> {
        let (fs, local) = self.split_rw(parent)?;
        self.not_a_mountpoint(parent, name)?;
        match fs.rmdir_kept(local, name)? {
            Some(o) => self.join(Self::index_of(parent), o).map(Some),
            None => Ok(None),
        }
    }

    fn rename_kept(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> Result<Option<Ino>> {
        if Self::index_of(parent) != Self::index_of(newparent) {
            return Err(errno_error("rename", EXDEV));
        }
        let (fs, local) = self.split_rw(parent)?;
        let (_, local_new) = self.split(newparent)?;
        self.not_a_mountpoint(parent, name)?;
        self.not_a_mountpoint(newparent, newname)?;
        match fs.rename_kept(local, name, local_new, newname, flags)? {
            Some(o) => self.join(Self::index_of(parent), o).map(Some),
            None => Ok(None),
        }
    }

    fn release_orphan(&self, ino: Ino) -> Result<()> {
        let (fs, local) = self.split_rw(ino)?;
        fs.release_orphan(local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Timestamp;
    use std::collections::BTreeMap;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};

    /// One in-memory inode: kind, parent, children, content (or link target).
    type Node = (FileKind, Ino, Vec<(Vec<u8>, Ino)>, Vec<u8>);

    /// A tiny in-memory tree.
    struct Mem {
        nodes: BTreeMap<Ino, Node>,
    }

    impl Mem {
        /// `spec`: (ino, parent, name, kind, content or link target); inode 2 is the root.
        fn build(spec: &[(Ino, Ino, &str, FileKind, &str)]) -> Arc<dyn FileSystem> {
            let mut nodes = BTreeMap::new();
            nodes.insert(2, (FileKind::Dir, 2, vec![], vec![]));
            for &(ino, parent, name, kind, data) in spec {
                nodes.insert(ino, (kind, parent, vec![], data.as_bytes().to_vec()));
                nodes
                    .get_mut(&parent)
                    .unwrap()
                    .2
                    .push((name.as_bytes().to_vec(), ino));
            }
            Arc::new(Mem { nodes })
        }
        fn node(&self, ino: Ino) -> Result<&Node> {
            self.nodes
                .get(&ino)
                .ok_or_else(|| errno_error("mem", errno::ENOENT))
        }
    }

    impl FileSystem for Mem {
        fn root_ino(&self) -> Ino {
            2
        }
        fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Option<Ino>> {
            let n = self.node(parent)?;
            if name == ".." {
                return Ok(Some(n.1));
            }
            Ok(n.2
                .iter()
                .find(|(k, _)| k.as_slice() == name.as_bytes())
                .map(|e| e.1))
        }
        fn getattr(&self, ino: Ino) -> Result<Attr> {
            let n = self.node(ino)?;
            Ok(Attr {
                ino,
                size: n.3.len() as u64,
                blocks: 0,
                kind: n.0,
                mode: 0o755,
                nlink: 1,
                uid: 0,
                gid: 0,
                atime: Timestamp::default(),
                mtime: Timestamp::default(),
                ctime: Timestamp::default(),
                crtime: None,
                rdev: 0,
                blksize: 4096,
            })
        }
        fn readdir(
            &self,
            ino: Ino,
            offset: u64,
            f: &mut dyn FnMut(DirEntry) -> bool,
        ) -> Result<()> {
            let n = self.node(ino)?;
            let mut all = vec![(b".".to_vec(), ino), (b"..".to_vec(), n.1)];
            all.extend(n.2.iter().cloned());
            for (i, (name, child)) in all.into_iter().enumerate().skip(offset as usize) {
                let kind = self.node(child)?.0;
                let e = DirEntry {
                    name: OsString::from_vec(name),
                    ino: child,
                    kind,
                    next_offset: i as u64 + 1,
                };
                if !f(e) {
                    break;
                }
            }
            Ok(())
        }
        fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
            let d = &self.node(ino)?.3;
            let start = (offset as usize).min(d.len());
            let n = buf.len().min(d.len() - start);
            buf[..n].copy_from_slice(&d[start..start + n]);
            Ok(n)
        }
        fn readlink(&self, ino: Ino) -> Result<OsString> {
            Ok(OsString::from_vec(self.node(ino)?.3.clone()))
        }
        fn listxattr(&self, _: Ino) -> Result<Vec<OsString>> {
            Ok(vec![])
        }
        fn getxattr(&self, _: Ino, _: &OsStr) -> Result<Option<Vec<u8>>> {
            Ok(None)
        }
        fn statfs(&self) -> Result<StatFs> {
            Err(errno_error("statfs", errno::EOPNOTSUPP))
        }
    }

    fn tree() -> Stack {
        use FileKind::*;
        let root = Mem::build(&[
            (10, 2, "etc", Dir, ""),
            (11, 10, "hostname", File, "rootfs\n"),
            (12, 2, "boot", Dir, ""),
            (13, 12, "hidden", File, "under the mount"),
            (14, 2, "kernel", Symlink, "boot/vmlinuz"),
            (15, 2, "up", Symlink, "/boot/../etc/hostname"),
        ]);
        let boot = Mem::build(&[
            (10, 2, "vmlinuz", File, "kernel image"),
            (11, 2, "grub", Dir, ""),
            (12, 11, "esc", Symlink, "../../../etc/hostname"),
        ]);
        let mut s = Stack::new(root);
        s.mount(b"/boot", boot).unwrap();
        s
    }

    fn cat(s: &Stack, path: &str) -> String {
        let ino = s.resolve(path.as_bytes(), true).unwrap();
        let mut b = vec![0u8; 100];
        let n = s.read(ino, 0, &mut b).unwrap();
        String::from_utf8(b[..n].to_vec()).unwrap()
    }

    #[test]
    fn mountpoints_are_replaced_by_the_layer_root() {
        let s = tree();
        assert_eq!(cat(&s, "/etc/hostname"), "rootfs\n");
        assert_eq!(cat(&s, "/boot/vmlinuz"), "kernel image");
        assert_eq!(cat(&s, "/kernel"), "kernel image");
        assert_eq!(cat(&s, "/up"), "rootfs\n");
        // .. out of the mounted layer climbs into the root layer, and no further.
        assert_eq!(cat(&s, "/boot/grub/esc"), "rootfs\n");
        assert!(s.resolve(b"/boot/hidden", true).is_err());
        let boot = s.resolve(b"/boot", true).unwrap();
        assert_eq!(boot, (1 << LAYER_SHIFT) | 2);
        assert_eq!(s.getattr(boot).unwrap().ino, boot);
        // Listing the root shows /boot as the mounted root; listing /boot gives stacked
        // inodes and ".." leads back to the root layer.
        let root = s.readdir_all(s.root_ino()).unwrap();
        let e = root.iter().find(|e| e.name == "boot").unwrap();
        assert_eq!(e.ino, boot);
        let inner = s.readdir_all(boot).unwrap();
        let dotdot = inner.iter().find(|e| e.name == "..").unwrap();
        assert_eq!(dotdot.ino, s.root_ino());
        let v = inner.iter().find(|e| e.name == "vmlinuz").unwrap();
        assert_eq!(v.ino, (1 << LAYER_SHIFT) | 10);
        assert_eq!(s.lookup(boot, OsStr::new("..")).unwrap(), Some(2));
        // Root-layer inodes keep their numbers.
        assert_eq!(s.resolve(b"/etc", true).unwrap(), 10);
    }

    #[test]
    fn bad_mountpoints_and_inodes() {
        let mut s = tree();
        let fs = Mem::build(&[]);
        let e = s.mount(b"/nope", fs.clone()).unwrap_err().to_string();
        assert!(e.contains("mountpoint /nope does not exist"), "{e}");
        let e = s
            .mount(b"/etc/hostname", fs.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a directory"), "{e}");
        assert!(s.mount(b"boot", fs.clone()).is_err());
        assert!(s.getattr(7 << LAYER_SHIFT).is_err());
        // A second mount on the same place covers the first.
        s.mount(b"/boot", fs).unwrap();
        assert!(s.resolve(b"/boot/vmlinuz", true).is_err());
        assert_eq!(s.resolve(b"/boot", true).unwrap(), (2 << LAYER_SHIFT) | 2);
    }
}
