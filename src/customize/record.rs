//! A [`GuestFiles`] that passes every call through and remembers the paths it created, so
//! the SELinux step can label exactly those.

use std::path::Path;

use vdisk_block::Result;

use super::{GuestFiles, Kind, Meta, NewFile};

/// Records the paths created through it.
pub struct Recorder<'a> {
    inner: &'a mut dyn GuestFiles,
    /// Paths created, in order (a copied-in or copied tree is listed by its top).
    pub created: Vec<String>,
}

impl<'a> Recorder<'a> {
    /// Wraps `inner`.
    pub fn new(inner: &'a mut dyn GuestFiles) -> Self {
        Recorder {
            inner,
            created: Vec::new(),
        }
    }

    fn missing(&self, path: &str) -> Result<bool> {
        Ok(self.inner.stat(path, false)?.is_none())
    }
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

impl GuestFiles for Recorder<'_> {
    fn stat(&self, path: &str, follow: bool) -> Result<Option<Meta>> {
        self.inner.stat(path, follow)
    }
    fn read(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        self.inner.read(path, limit)
    }
    fn read_link(&self, path: &str) -> Result<Option<String>> {
        self.inner.read_link(path)
    }
    fn list(&self, path: &str) -> Result<Option<Vec<String>>> {
        self.inner.list(path)
    }
    fn write(&mut self, path: &str, data: &[u8], new: NewFile) -> Result<()> {
        let fresh = self.inner.stat(path, true)?.is_none();
        self.inner.write(path, data, new)?;
        if fresh {
            self.created.push(path.to_string());
        }
        Ok(())
    }
    fn mkdir_p(&mut self, path: &str, new: NewFile) -> Result<()> {
        let mut missing = Vec::new();
        let mut cur = String::new();
        for c in path.split('/').filter(|c| !c.is_empty()) {
            cur.push('/');
            cur.push_str(c);
            if self.inner.stat(&cur, true)?.is_none() {
                missing.push(cur.clone());
            }
        }
        self.inner.mkdir_p(path, new)?;
        self.created.extend(missing);
        Ok(())
    }
    fn remove_all(&mut self, path: &str) -> Result<bool> {
        self.inner.remove_all(path)
    }
    fn symlink(&mut self, target: &str, link: &str) -> Result<()> {
        let at = if self.inner.stat(link, true)?.map(|m| m.kind) == Some(Kind::Dir) {
            join(
                link,
                target
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or(target),
            )
        } else {
            link.to_string()
        };
        self.inner.symlink(target, link)?;
        // A replaced link is a new inode too.
        self.created.push(at);
        Ok(())
    }
    fn chmod(&mut self, path: &str, mode: u32) -> Result<()> {
        self.inner.chmod(path, mode)
    }
    fn chown(&mut self, path: &str, uid: u32, gid: u32) -> Result<()> {
        self.inner.chown(path, uid, gid)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.inner.rename(from, to)
    }
    fn touch(&mut self, path: &str, new: NewFile) -> Result<()> {
        let fresh = self.missing(path)?;
        self.inner.touch(path, new)?;
        if fresh {
            self.created.push(path.to_string());
        }
        Ok(())
    }
    fn truncate(&mut self, path: &str, size: u64) -> Result<()> {
        self.inner.truncate(path, size)
    }
    fn overwrite(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        self.inner.overwrite(path, offset, data)
    }
    fn set_xattr(&mut self, path: &str, name: &str, value: &[u8]) -> Result<()> {
        self.inner.set_xattr(path, name, value)
    }
    fn copy_in(&mut self, local: &Path, remote_dir: &str) -> Result<()> {
        self.inner.copy_in(local, remote_dir)?;
        if let Some(n) = local.file_name() {
            self.created.push(join(remote_dir, &n.to_string_lossy()));
        }
        Ok(())
    }
}
