//! An in-memory guest tree that implements [`GuestFiles`]: the customizations' unit tests
//! run on it, and a dry run can apply a plan to a copy of what it reads.

use std::collections::BTreeMap;

use vdisk_block::{Error, Result};

use super::{GuestFiles, Kind, Meta, NewFile};

/// Symlinks followed in one path resolution before ELOOP, as Linux's limit.
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    File(Vec<u8>),
    Dir,
    Link(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    body: Body,
    mode: u32,
    uid: u32,
    gid: u32,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// A guest tree held in memory, keyed by canonical absolute path.
#[derive(Debug, Clone)]
pub struct MemGuest {
    nodes: BTreeMap<String, Node>,
    /// Times `touch` was called on existing paths (the tree keeps no times).
    pub touched: Vec<String>,
}

impl Default for MemGuest {
    fn default() -> Self {
        MemGuest::new()
    }
}

fn parent_of(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn enoent(p: &str) -> Error {
    Error::invalid(format!("{p}: No such file or directory"))
}

impl MemGuest {
    /// An empty tree (just "/").
    pub fn new() -> MemGuest {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "/".to_string(),
            Node {
                body: Body::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                xattrs: BTreeMap::new(),
            },
        );
        MemGuest {
            nodes,
            touched: Vec::new(),
        }
    }

    /// Adds directory `path` and its parents (root-owned).
    pub fn add_dir(&mut self, path: &str, mode: u32) {
        self.mkdir_p(path, NewFile::root(mode)).expect("add_dir");
    }

    /// Adds a root-owned file (and its parent directories, 0755).
    pub fn add_file(&mut self, path: &str, data: &[u8], mode: u32) {
        self.mkdir_p(parent_of(path), NewFile::root(0o755))
            .expect("add_file parent");
        self.write(path, data, NewFile::root(mode))
            .expect("add_file");
    }

    /// Adds a symlink.
    pub fn add_link(&mut self, target: &str, path: &str) {
        self.mkdir_p(parent_of(path), NewFile::root(0o755))
            .expect("add_link parent");
        self.symlink(target, path).expect("add_link");
    }

    /// The content of regular file `path` (links followed).
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.read(path, u64::MAX).ok().flatten()
    }

    /// The content of regular file `path` as text.
    pub fn text(&self, path: &str) -> Option<String> {
        self.file(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// Extended attribute `name` of `path` (not following a final symlink).
    pub fn xattr(&self, path: &str, name: &str) -> Option<Vec<u8>> {
        let p = self.resolve(path, false).ok()?;
        self.nodes.get(&p)?.xattrs.get(name).cloned()
    }

    /// Every path in the tree, sorted.
    pub fn paths(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// Canonical path for `path`: symlinks in the directory part followed (and the last
    /// component's when `follow`), "." and ".." applied. Missing components are kept
    /// literally, so the result names where a new entry would go.
    fn resolve(&self, path: &str, follow: bool) -> Result<String> {
        let mut todo: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .rev()
            .map(str::to_string)
            .collect();
        let mut cur = "/".to_string();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            if c == "." {
                continue;
            }
            if c == ".." {
                cur = parent_of(&cur).to_string();
                continue;
            }
            let next = join(&cur, &c);
            let last = todo.is_empty();
            match self.nodes.get(&next).map(|n| &n.body) {
                Some(Body::Link(t)) if !last || follow => {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return Err(Error::invalid(format!(
                            "{path}: Too many levels of symbolic links"
                        )));
                    }
                    if t.starts_with('/') {
                        cur = "/".into();
                    }
                    todo.extend(
                        t.split('/')
                            .filter(|c| !c.is_empty())
                            .rev()
                            .map(str::to_string),
                    );
                }
                _ => cur = next,
            }
        }
        Ok(cur)
    }

    fn node(&self, path: &str, follow: bool) -> Result<Option<(&Node, String)>> {
        let p = self.resolve(path, follow)?;
        Ok(self.nodes.get(&p).map(|n| (n, p)))
    }

    fn need_parent_dir(&self, canon: &str) -> Result<()> {
        match self.nodes.get(parent_of(canon)).map(|n| &n.body) {
            Some(Body::Dir) => Ok(()),
            Some(_) => Err(Error::invalid(format!("{canon}: Not a directory"))),
            None => Err(enoent(canon)),
        }
    }
}

impl GuestFiles for MemGuest {
    fn stat(&self, path: &str, follow: bool) -> Result<Option<Meta>> {
        Ok(self.node(path, follow)?.map(|(n, _)| Meta {
            kind: match n.body {
                Body::File(_) => Kind::File,
                Body::Dir => Kind::Dir,
                Body::Link(_) => Kind::Symlink,
            },
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            size: match &n.body {
                Body::File(d) => d.len() as u64,
                Body::Link(t) => t.len() as u64,
                Body::Dir => 0,
            },
        }))
    }

    fn read(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        match self.node(path, true)? {
            None => Ok(None),
            Some((n, _)) => match &n.body {
                Body::File(d) if d.len() as u64 <= limit => Ok(Some(d.clone())),
                Body::File(_) => Err(Error::invalid(format!("{path}: file too large"))),
                _ => Err(Error::invalid(format!("{path}: not a regular file"))),
            },
        }
    }

    fn read_link(&self, path: &str) -> Result<Option<String>> {
        Ok(match self.node(path, false)? {
            Some((
                Node {
                    body: Body::Link(t),
                    ..
                },
                _,
            )) => Some(t.clone()),
            _ => None,
        })
    }

    fn list(&self, path: &str) -> Result<Option<Vec<String>>> {
        let Some((n, canon)) = self.node(path, true)? else {
            return Ok(None);
        };
        if n.body != Body::Dir {
            return Err(Error::invalid(format!("{path}: Not a directory")));
        }
        let prefix = if canon == "/" {
            "/".to_string()
        } else {
            format!("{canon}/")
        };
        Ok(Some(
            self.nodes
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .filter(|(k, _)| k.len() > prefix.len() && !k[prefix.len()..].contains('/'))
                .map(|(k, _)| k[prefix.len()..].to_string())
                .collect(),
        ))
    }

    fn write(&mut self, path: &str, data: &[u8], new: NewFile) -> Result<()> {
        let canon = self.resolve(path, true)?;
        self.need_parent_dir(&canon)?;
        match self.nodes.get_mut(&canon) {
            Some(n) => match n.body {
                Body::Dir => return Err(Error::invalid(format!("{path}: Is a directory"))),
                _ => n.body = Body::File(data.to_vec()),
            },
            None => {
                self.nodes.insert(
                    canon,
                    Node {
                        body: Body::File(data.to_vec()),
                        mode: new.mode,
                        uid: new.uid,
                        gid: new.gid,
                        xattrs: BTreeMap::new(),
                    },
                );
            }
        }
        Ok(())
    }

    fn mkdir_p(&mut self, path: &str, new: NewFile) -> Result<()> {
        let mut cur = String::new();
        for c in path.split('/').filter(|c| !c.is_empty()) {
            cur.push('/');
            cur.push_str(c);
            let canon = self.resolve(&cur, true)?;
            match self.nodes.get(&canon).map(|n| &n.body) {
                Some(Body::Dir) => {}
                Some(_) => return Err(Error::invalid(format!("{cur}: File exists"))),
                None => {
                    self.nodes.insert(
                        canon,
                        Node {
                            body: Body::Dir,
                            mode: new.mode,
                            uid: new.uid,
                            gid: new.gid,
                            xattrs: BTreeMap::new(),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    fn remove_all(&mut self, path: &str) -> Result<bool> {
        let canon = self.resolve(path, false)?;
        if canon == "/" {
            return Err(Error::invalid("/: refusing to remove the root"));
        }
        if self.nodes.remove(&canon).is_none() {
            return Ok(false);
        }
        let prefix = format!("{canon}/");
        let below: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            self.nodes.remove(&k);
        }
        Ok(true)
    }

    fn symlink(&mut self, target: &str, link: &str) -> Result<()> {
        let mut canon = self.resolve(link, false)?;
        if let Some(Body::Dir) = self.nodes.get(&self.resolve(link, true)?).map(|n| &n.body) {
            let name = target.rsplit('/').next().unwrap_or(target);
            canon = join(&self.resolve(link, true)?, name);
        }
        self.need_parent_dir(&canon)?;
        if let Some(Node {
            body: Body::Dir, ..
        }) = self.nodes.get(&canon)
        {
            return Err(Error::invalid(format!("{link}: Is a directory")));
        }
        self.nodes.insert(
            canon,
            Node {
                body: Body::Link(target.to_string()),
                mode: 0o777,
                uid: 0,
                gid: 0,
                xattrs: BTreeMap::new(),
            },
        );
        Ok(())
    }

    fn chmod(&mut self, path: &str, mode: u32) -> Result<()> {
        let canon = self.resolve(path, true)?;
        let n = self.nodes.get_mut(&canon).ok_or_else(|| enoent(path))?;
        n.mode = mode & 0o7777;
        Ok(())
    }

    fn chown(&mut self, path: &str, uid: u32, gid: u32) -> Result<()> {
        let canon = self.resolve(path, false)?;
        let n = self.nodes.get_mut(&canon).ok_or_else(|| enoent(path))?;
        n.uid = uid;
        n.gid = gid;
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let src = self.resolve(from, false)?;
        let mut dst = self.resolve(to, false)?;
        if let Some(Body::Dir) = self.nodes.get(&self.resolve(to, true)?).map(|n| &n.body) {
            let name = src.rsplit('/').next().unwrap_or("");
            dst = join(&self.resolve(to, true)?, name);
        }
        if !self.nodes.contains_key(&src) {
            return Err(enoent(from));
        }
        self.need_parent_dir(&dst)?;
        if dst.starts_with(&format!("{src}/")) {
            return Err(Error::invalid(format!("{to}: Invalid argument")));
        }
        let prefix = format!("{src}/");
        let moved: Vec<(String, Node)> = self
            .nodes
            .range(src.clone()..)
            .take_while(|(k, _)| **k == src || k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.remove_all(&dst)?;
        for (k, _) in &moved {
            self.nodes.remove(k);
        }
        for (k, v) in moved {
            self.nodes.insert(format!("{dst}{}", &k[src.len()..]), v);
        }
        Ok(())
    }

    fn touch(&mut self, path: &str, new: NewFile) -> Result<()> {
        if self.stat(path, true)?.is_some() {
            self.touched.push(path.to_string());
            Ok(())
        } else {
            self.write(path, b"", new)
        }
    }

    fn truncate(&mut self, path: &str, size: u64) -> Result<()> {
        let canon = self.resolve(path, true)?;
        match self.nodes.get_mut(&canon).map(|n| &mut n.body) {
            Some(Body::File(d)) => {
                d.resize(
                    usize::try_from(size).map_err(|_| Error::invalid("size"))?,
                    0,
                );
                Ok(())
            }
            Some(_) => Err(Error::invalid(format!("{path}: not a regular file"))),
            None => Err(enoent(path)),
        }
    }

    fn set_xattr(&mut self, path: &str, name: &str, value: &[u8]) -> Result<()> {
        let canon = self.resolve(path, false)?;
        let n = self.nodes.get_mut(&canon).ok_or_else(|| enoent(path))?;
        n.xattrs.insert(name.to_string(), value.to_vec());
        Ok(())
    }

    fn overwrite(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        let canon = self.resolve(path, true)?;
        match self.nodes.get_mut(&canon).map(|n| &mut n.body) {
            Some(Body::File(d)) => {
                let off = usize::try_from(offset).map_err(|_| Error::invalid("offset"))?;
                let end = off
                    .checked_add(data.len())
                    .ok_or_else(|| Error::invalid("offset"))?;
                if d.len() < end {
                    d.resize(end, 0);
                }
                d[off..end].copy_from_slice(data);
                Ok(())
            }
            Some(_) => Err(Error::invalid(format!("{path}: not a regular file"))),
            None => Err(enoent(path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_inside_the_tree() {
        let mut g = MemGuest::new();
        g.add_file("/usr/share/zoneinfo/UTC", b"TZif", 0o644);
        g.add_link("../usr/share/zoneinfo/UTC", "/etc/localtime");
        assert_eq!(g.file("/etc/localtime").unwrap(), b"TZif");
        assert_eq!(
            g.read_link("/etc/localtime").unwrap().as_deref(),
            Some("../usr/share/zoneinfo/UTC")
        );
        assert_eq!(
            g.stat("/etc/localtime", false).unwrap().unwrap().kind,
            Kind::Symlink
        );
        g.add_link("/loop", "/loop");
        assert!(g.read("/loop", 10).is_err());
        assert!(g.remove_all("/etc").unwrap());
        assert!(g.stat("/etc/localtime", false).unwrap().is_none());
        assert!(g.file("/usr/share/zoneinfo/UTC").is_some());
    }
}
