//! Running a [`Plan`] on a guest: the operations in command-line order, then the passwords
//! (all at once, as virt-customize sets them last), then the SELinux relabel request.

use std::collections::BTreeMap;
use std::path::Path;

use vdisk_block::{Error, Result};

use super::network::{Addressing, MacSpec, NetConfig};
use super::ops::{Op, Plan};
use super::record::Recorder;
use super::{
    firstboot, glob, hostname, network, password, ssh, sysprep, timezone, GuestFiles, GuestOs,
    Kind, Meta, NewFile, MAX_FILE,
};

/// The largest host file `--upload` / `--copy-in` / `--firstboot` reads (it is held in
/// memory while written).
pub const MAX_UPLOAD: u64 = 1 << 30;

/// Directory levels `--copy`, `--copy-in` and `--truncate-recursive` descend.
pub const MAX_DEPTH: usize = 256;

/// What a run did, for the command to print.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// One line per step, in virt-customize's wording ("Setting the hostname: test02").
    pub messages: Vec<String>,
    /// Passwords chosen by `random`, (user, password).
    pub random_passwords: Vec<(String, String)>,
    /// MAC addresses chosen by `--mac IFACE=random`, (iface, mac).
    pub macs: Vec<(String, String)>,
    /// The paths the run created (a copied tree by its top), for the SELinux step.
    pub created: Vec<String>,
}

fn exists(g: &dyn GuestFiles, p: &str) -> Result<Option<Meta>> {
    g.stat(p, false)
}

fn host_read(p: &Path) -> Result<Vec<u8>> {
    let m = std::fs::metadata(p).map_err(|e| Error::io("stat", None, e).with_path(p))?;
    if m.len() > MAX_UPLOAD {
        return Err(Error::invalid(format!(
            "{}: {} bytes is more than the {MAX_UPLOAD} a single file may have here",
            p.display(),
            m.len()
        )));
    }
    std::fs::read(p).map_err(|e| Error::io("read", None, e).with_path(p))
}

fn base_name(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or(p)
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Applies `plan`'s operations (not its sysprep part) to `g`.
pub fn run(plan: &Plan, g: &mut dyn GuestFiles, os: &GuestOs) -> Result<Report> {
    let mut rec = Recorder::new(g);
    let mut r = run_recorded(plan, &mut rec, os)?;
    r.created.append(&mut rec.created);
    Ok(r)
}

fn run_recorded(plan: &Plan, g: &mut dyn GuestFiles, os: &GuestOs) -> Result<Report> {
    let mut r = Report::default();
    random_seed(g, &mut r)?;
    // Network operations for one interface are merged and written once, where the first
    // of them stands (a later one overrides an earlier one's field).
    let mut nets: BTreeMap<String, NetConfig> = BTreeMap::new();
    for op in &plan.ops {
        let iface = match op {
            Op::NetworkStatic(st) => &st.iface,
            Op::NetworkDhcp(i) | Op::Mac { iface: i, .. } => i,
            _ => continue,
        };
        let c = nets.entry(iface.clone()).or_insert_with(|| NetConfig {
            iface: iface.clone(),
            ..NetConfig::default()
        });
        match op {
            Op::NetworkStatic(st) => c.addressing = Some(Addressing::Static(st.clone())),
            Op::NetworkDhcp(_) => c.addressing = Some(Addressing::Dhcp),
            Op::Mac { mac, .. } => {
                c.mac = Some(match mac {
                    MacSpec::Fixed(m) => *m,
                    MacSpec::Random => network::Mac::random()?,
                })
            }
            _ => {}
        }
    }
    let mut passwords: Vec<(&str, &password::Selector)> = Vec::new();
    for op in &plan.ops {
        step(plan, op, g, os, &mut nets, &mut passwords, &mut r)?;
    }
    if !passwords.is_empty() {
        r.messages.push("Setting passwords".into());
        let mut text = super::read_text(g, "/etc/shadow")?
            .ok_or_else(|| Error::invalid("/etc/shadow: not found in the guest"))?;
        let read_file = |p: &Path| -> Result<String> {
            Ok(String::from_utf8_lossy(&host_read(p)?).into_owned())
        };
        for (user, sel) in passwords {
            let (field, random) = password::shadow_field(sel, plan.crypto, &read_file)?;
            text = password::set_shadow(&text, user, &field)?;
            if let Some(p) = random {
                r.messages
                    .push(format!("Setting random password of {user} to {p}"));
                r.random_passwords.push((user.to_string(), p));
            }
        }
        g.write("/etc/shadow", text.as_bytes(), NewFile::root(0))?;
    }
    Ok(r)
}

/// Whether the guest uses SELinux (`SELINUX=enforcing` or `permissive` in
/// /etc/selinux/config).
pub fn selinux_enabled(g: &dyn GuestFiles) -> Result<bool> {
    Ok(match g.read("/etc/selinux/config", MAX_FILE)? {
        Some(b) => matches!(
            super::shellvars::get(&String::from_utf8_lossy(&b), "SELINUX").as_deref(),
            Some("enforcing") | Some("permissive")
        ),
        None => false,
    })
}

/// The SELinux step that ends a run. On a guest that uses SELinux (or with
/// `--selinux-relabel`), each file the run created gets the label the guest's own
/// file_contexts gives it (a rewritten file kept its label: the atomic replace copies it).
/// When the guest has no file_contexts, or one of them matches no spec, `/.autorelabel` is
/// touched instead so the guest relabels at next boot; `--selinux-relabel` touches it in any
/// case (virt-customize's relabel covers the whole filesystem). `--no-selinux-relabel` does
/// nothing.
pub fn finish_selinux(plan: &Plan, g: &mut dyn GuestFiles, r: &mut Report) -> Result<()> {
    let forced = plan.selinux_relabel == Some(true);
    if plan.selinux_relabel == Some(false) || !(forced || selinux_enabled(g)?) {
        return Ok(());
    }
    let mut fallback = forced;
    if !r.created.is_empty() {
        match super::selinux::load(g)? {
            Some(ctx) => {
                let mut labelled = 0usize;
                let created = std::mem::take(&mut r.created);
                for top in &created {
                    label_tree(g, &ctx, top, 0, &mut labelled, &mut fallback)?;
                }
                r.created = created;
                r.messages.push(format!(
                    "SELinux: labelled {labelled} new files from the guest's file_contexts"
                ));
            }
            None => fallback = true,
        }
    }
    if fallback {
        r.messages
            .push("SELinux relabelling at next boot (/.autorelabel)".into());
        g.touch("/.autorelabel", NewFile::root(0o644))?;
    }
    Ok(())
}

fn label_tree(
    g: &mut dyn GuestFiles,
    ctx: &super::selinux::Contexts,
    path: &str,
    depth: usize,
    labelled: &mut usize,
    fallback: &mut bool,
) -> Result<()> {
    let Some(m) = g.stat(path, false)? else {
        return Ok(()); // created, then removed by a later operation
    };
    match ctx.lookup(path, m.kind) {
        Some(Some(label)) => {
            let mut v = label.as_bytes().to_vec();
            v.push(0);
            g.set_xattr(path, super::selinux::XATTR, &v)?;
            *labelled += 1;
        }
        Some(None) => {}
        None => *fallback = true,
    }
    if m.kind == Kind::Dir && depth < MAX_DEPTH {
        for n in g.list(path)?.unwrap_or_default() {
            let child = join(path, &n);
            // Only what the run made: a directory that existed keeps its other entries' labels.
            if g.stat(&child, false)?.is_some() {
                label_tree(g, ctx, &child, depth + 1, labelled, fallback)?;
            }
        }
    }
    Ok(())
}

/// Runs virt-sysprep operations, in name order.
pub fn run_sysprep(
    ops: &[&sysprep::Operation],
    g: &mut dyn GuestFiles,
    os: &GuestOs,
    r: &mut Report,
) -> Result<()> {
    let mut rec = Recorder::new(g);
    for op in ops {
        r.messages.push(format!("Performing \"{}\" ...", op.name));
        sysprep::perform(&mut rec, os, op)?;
    }
    r.created.append(&mut rec.created);
    Ok(())
}

fn random_seed(g: &mut dyn GuestFiles, r: &mut Report) -> Result<()> {
    // Only seed files the guest already has are refilled: creating one would leave an
    // unlabelled file on SELinux guests for a small gain.
    for p in [
        "/var/lib/random-seed",
        "/var/lib/urandom/random-seed",
        "/var/lib/systemd/random-seed",
    ] {
        if exists(g, p)?.map(|m| m.kind) == Some(Kind::File) {
            let mut seed = vec![0u8; 512];
            getrandom::fill(&mut seed)
                .map_err(|e| Error::io("getrandom", None, std::io::Error::other(e.to_string())))?;
            g.write(p, &seed, NewFile::root(0o600))?;
            r.messages.push(format!("Setting a random seed: {p}"));
        }
    }
    Ok(())
}

/// Writes `data` to `path` (the recorder notes a created file).
fn put(g: &mut dyn GuestFiles, path: &str, data: &[u8], new: NewFile) -> Result<()> {
    g.write(path, data, new)
}

#[allow(clippy::too_many_arguments)]
fn step<'p>(
    plan: &'p Plan,
    op: &'p Op,
    g: &mut dyn GuestFiles,
    os: &GuestOs,
    nets: &mut BTreeMap<String, NetConfig>,
    passwords: &mut Vec<(&'p str, &'p password::Selector)>,
    r: &mut Report,
) -> Result<()> {
    let m = &mut r.messages;
    match op {
        Op::AppendLine { file, line } => {
            m.push(format!("Appending line to {file}"));
            let old = g.read(file, MAX_FILE)?;
            let mut t = old.clone().unwrap_or_default();
            let nl: &[u8] = if t.ends_with(b"\r\n") { b"\r\n" } else { b"\n" };
            if !t.is_empty() && !t.ends_with(b"\n") {
                t.extend_from_slice(nl);
            }
            t.extend_from_slice(line.as_bytes());
            t.extend_from_slice(nl);
            put(g, file, &t, NewFile::root(0o644))?;
        }
        Op::Chmod { mode, path } => {
            m.push(format!("Changing permissions of {path} to {mode:o}"));
            g.chmod(path, *mode)?;
        }
        Op::Chown { uid, gid, path } => {
            m.push(format!("Changing owner of {path} to {uid}:{gid}"));
            g.chown(path, *uid, *gid)?;
        }
        Op::Copy { src, dest } => {
            m.push(format!("Copying (in guest): {src} to {dest}"));
            let meta = exists(g, src)?.ok_or_else(|| {
                Error::invalid(format!("--copy: {src}: No such file or directory"))
            })?;
            let to = match g.stat(dest, true)?.map(|x| x.kind) {
                Some(Kind::Dir) => join(dest, base_name(src)),
                _ => dest.clone(),
            };
            copy_guest(g, src, &to, meta, 0)?;
        }
        Op::CopyIn { local, remote_dir } => {
            m.push(format!("Copying: {} to {remote_dir}", local.display()));
            if g.stat(remote_dir, true)?.map(|x| x.kind) != Some(Kind::Dir) {
                return Err(Error::invalid(format!(
                    "--copy-in: {remote_dir} is not a directory in the guest (it must exist)"
                )));
            }
            let name = local
                .file_name()
                .ok_or_else(|| {
                    Error::invalid(format!("--copy-in {}: no file name", local.display()))
                })?
                .to_string_lossy()
                .into_owned();
            copy_in(g, local, &join(remote_dir, &name), 0)?;
        }
        Op::Delete(pat) => {
            m.push(format!("Deleting: {pat}"));
            for p in glob::expand(g, pat)? {
                g.remove_all(&p)?;
            }
        }
        Op::Edit { file, expr } => {
            m.push(format!("Editing: {file}"));
            let subs = vdisk_guestfs::ops::subst::parse_expr(expr)
                .map_err(|e| Error::invalid(format!("--edit {file}: {e}")))?;
            if g.stat(file, true)?.map(|x| x.kind) != Some(Kind::File) {
                return Err(Error::invalid(format!(
                    "--edit: {file} is not a regular file in the guest"
                )));
            }
            let old = g.read(file, MAX_FILE)?.unwrap_or_default();
            let new = vdisk_guestfs::ops::subst::apply(&subs, &old);
            g.write(file, &new, NewFile::root(0o644))?;
        }
        Op::FirstbootScript(path) => {
            m.push(format!("Installing firstboot script: {}", path.display()));
            let body = host_read(path)?;
            firstboot::add_script(g, os, &path.display().to_string(), &body)?;
        }
        Op::FirstbootCommand(cmd) => {
            m.push(format!("Installing firstboot command: {cmd}"));
            firstboot::add_script(g, os, cmd, format!("{cmd}\n").as_bytes())?;
        }
        Op::FirstbootInstall(pkgs) => {
            m.push(format!("Installing firstboot packages: {}", pkgs.join(" ")));
            let cmd = firstboot::install_command(os, pkgs)?;
            firstboot::add_script(
                g,
                os,
                &format!("install {}", pkgs.join(" ")),
                cmd.as_bytes(),
            )?;
        }
        Op::Hostname(h) => {
            m.push(format!("Setting the hostname: {h}"));
            hostname::set(g, os, h)?;
        }
        Op::Link { target, links } => {
            for l in links {
                r.messages.push(format!("Linking: {l} -> {target}"));
                g.symlink(target, l)?;
            }
        }
        Op::Mkdir(d) => {
            m.push(format!("Making directory: {d}"));
            g.mkdir_p(d, NewFile::root(0o755))?;
        }
        Op::Move { src, dest } => {
            m.push(format!("Moving: {src} -> {dest}"));
            g.rename(src, dest)?;
        }
        Op::Password { user, selector } => {
            if passwords.iter().any(|(u, _)| *u == user.as_str()) {
                return Err(Error::invalid(format!(
                    "multiple --root-password/--password options set the password for user '{user}' twice"
                )));
            }
            passwords.push((user.as_str(), selector));
        }
        Op::Scrub(f) => {
            m.push(format!("Scrubbing: {f}"));
            if let Some(meta) = g.stat(f, true)? {
                if meta.kind == Kind::Dir {
                    return Err(Error::invalid(format!(
                        "--scrub: {f} is a directory (only regular files are scrubbed)"
                    )));
                }
                if meta.kind == Kind::File {
                    let zeros = vec![0u8; 1 << 16];
                    let mut off = 0u64;
                    while off < meta.size {
                        let n = (meta.size - off).min(zeros.len() as u64);
                        g.overwrite(f, off, &zeros[..n as usize])?;
                        off += n;
                    }
                }
                g.remove_all(f)?;
            }
        }
        Op::SshInject { user, key } => {
            m.push(format!("SSH key inject: {user}"));
            let k = key.read()?;
            ssh::inject(g, user, &k)?;
        }
        Op::Timezone(tz) => {
            m.push(format!("Setting the timezone: {tz}"));
            timezone::set(g, os, tz)?;
        }
        Op::Touch(f) => {
            m.push(format!("Running touch: {f}"));
            g.touch(f, NewFile::root(0o644))?;
        }
        Op::Truncate(f) => {
            m.push(format!("Truncating: {f}"));
            g.truncate(f, 0)?;
        }
        Op::TruncateRecursive(p) => {
            m.push(format!("Recursively truncating: {p}"));
            truncate_tree(g, p, 0)?;
        }
        Op::Upload { local, dest } => {
            m.push(format!("Uploading: {} to {dest}", local.display()));
            let to = match g.stat(dest, true)?.map(|x| x.kind) {
                Some(Kind::Dir) => join(
                    dest,
                    &local
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
                _ => dest.clone(),
            };
            let data = host_read(local)?;
            let hm = std::fs::metadata(local)
                .map_err(|e| Error::io("stat", None, e).with_path(local))?;
            use std::os::unix::fs::MetadataExt;
            let new = NewFile {
                mode: hm.mode() & 0o7777,
                uid: hm.uid(),
                gid: hm.gid(),
            };
            put(g, &to, &data, new)?;
            g.chmod(&to, new.mode)?;
            g.chown(&to, new.uid, new.gid)?;
        }
        Op::Write { file, content } => {
            m.push(format!("Writing: {file}"));
            put(g, file, content.as_bytes(), NewFile::root(0o644))?;
        }
        Op::NetworkStatic(_) | Op::NetworkDhcp(_) | Op::Mac { .. } => {
            let iface = match op {
                Op::NetworkStatic(s) => s.iface.as_str(),
                Op::NetworkDhcp(i) => i.as_str(),
                Op::Mac { iface, .. } => iface.as_str(),
                _ => return Ok(()),
            };
            // The first operation for an interface writes everything asked for it.
            let Some(cfg) = nets.remove(iface) else {
                return Ok(());
            };
            let c = network::configure(g, os, &cfg)?;
            let mut what = Vec::new();
            match &cfg.addressing {
                Some(Addressing::Static(s)) => what.push(format!("{}/{}", s.addr, s.prefix)),
                Some(Addressing::Dhcp) => what.push("dhcp".into()),
                None => {}
            }
            if let Some(mac) = cfg.mac {
                what.push(format!("mac {mac}"));
                if matches!(
                    plan.ops
                        .iter()
                        .find(|o| matches!(o, Op::Mac { iface: i, .. } if i == iface)),
                    Some(Op::Mac {
                        mac: MacSpec::Random,
                        ..
                    })
                ) {
                    r.macs.push((iface.to_string(), mac.to_string()));
                }
            }
            r.messages.push(format!(
                "Configuring {iface} ({}) in {}: {}",
                what.join(", "),
                c.backend.name(),
                c.files.join(", ")
            ));
        }
    }
    Ok(())
}

fn copy_guest(
    g: &mut dyn GuestFiles,
    src: &str,
    dest: &str,
    meta: Meta,
    depth: usize,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::invalid(format!("--copy {src}: nested too deeply")));
    }
    let new = NewFile {
        mode: meta.mode,
        uid: meta.uid,
        gid: meta.gid,
    };
    match meta.kind {
        Kind::File => {
            let data = g
                .read(src, MAX_UPLOAD)?
                .ok_or_else(|| Error::invalid(format!("{src}: vanished")))?;
            g.write(dest, &data, new)?;
        }
        Kind::Symlink => {
            let t = g.read_link(src)?.unwrap_or_default();
            g.symlink(&t, dest)?;
        }
        Kind::Dir => {
            g.mkdir_p(dest, new)?;
            for n in g.list(src)?.unwrap_or_default() {
                let s = join(src, &n);
                if let Some(m) = g.stat(&s, false)? {
                    copy_guest(g, &s, &join(dest, &n), m, depth + 1)?;
                }
            }
        }
        Kind::Other => {
            return Err(Error::unsupported(format!(
                "--copy {src}: device, FIFO and socket files are not copied"
            )))
        }
    }
    g.chmod(dest, meta.mode).ok();
    g.chown(dest, meta.uid, meta.gid)?;
    Ok(())
}

/// [`GuestFiles::copy_in`]'s default: `local` copied to `remote_dir/NAME` through the
/// other methods.
pub fn copy_in_walk<G: GuestFiles + ?Sized>(
    g: &mut G,
    local: &Path,
    remote_dir: &str,
) -> Result<()> {
    let name = local
        .file_name()
        .ok_or_else(|| Error::invalid(format!("--copy-in {}: no file name", local.display())))?
        .to_string_lossy()
        .into_owned();
    copy_in(g, local, &join(remote_dir, &name), 0)
}

fn copy_in<G: GuestFiles + ?Sized>(
    g: &mut G,
    local: &Path,
    dest: &str,
    depth: usize,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if depth > MAX_DEPTH {
        return Err(Error::invalid(format!(
            "--copy-in {}: nested too deeply",
            local.display()
        )));
    }
    let hm = std::fs::symlink_metadata(local)
        .map_err(|e| Error::io("stat", None, e).with_path(local))?;
    let new = NewFile {
        mode: hm.mode() & 0o7777,
        uid: hm.uid(),
        gid: hm.gid(),
    };
    let ft = hm.file_type();
    if ft.is_symlink() {
        let t = std::fs::read_link(local)
            .map_err(|e| Error::io("readlink", None, e).with_path(local))?;
        g.symlink(&t.to_string_lossy(), dest)?;
        g.chown(dest, new.uid, new.gid)?;
        return Ok(());
    }
    if ft.is_dir() {
        g.mkdir_p(dest, new)?;
        let mut names: Vec<_> = std::fs::read_dir(local)
            .map_err(|e| Error::io("readdir", None, e).with_path(local))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for n in names {
            copy_in(
                g,
                &local.join(&n),
                &join(dest, &n.to_string_lossy()),
                depth + 1,
            )?;
        }
    } else if ft.is_file() {
        let data = host_read(local)?;
        g.write(dest, &data, new)?;
    } else {
        return Err(Error::unsupported(format!(
            "--copy-in {}: device, FIFO and socket files are not copied",
            local.display()
        )));
    }
    g.chmod(dest, new.mode)?;
    g.chown(dest, new.uid, new.gid)?;
    Ok(())
}

fn truncate_tree(g: &mut dyn GuestFiles, p: &str, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::invalid(format!(
            "--truncate-recursive {p}: nested too deeply"
        )));
    }
    match g.stat(p, false)?.map(|m| m.kind) {
        Some(Kind::File) => g.truncate(p, 0),
        Some(Kind::Dir) => {
            for n in g.list(p)?.unwrap_or_default() {
                truncate_tree(g, &join(p, &n), depth + 1)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customize::mem::MemGuest;

    fn centos7() -> (MemGuest, GuestOs) {
        let mut g = MemGuest::new();
        g.add_file("/etc/hostname", b"template\n", 0o644);
        g.add_file(
            "/etc/shadow",
            b"root:$6$old$hash:18000:0:99999:7:::\nalice:!!:18000:0:99999:7:::\n",
            0,
        );
        g.add_file(
            "/etc/passwd",
            b"root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n",
            0o644,
        );
        g.add_file(
            "/etc/sysconfig/network-scripts/ifcfg-eth0",
            b"TYPE=Ethernet\nBOOTPROTO=dhcp\nDEVICE=eth0\nONBOOT=yes\nUUID=old\nHWADDR=52:54:00:00:00:01\n",
            0o644,
        );
        g.add_dir("/etc/systemd/system", 0o755);
        g.add_dir("/root", 0o550);
        g.add_file(
            "/etc/selinux/config",
            b"SELINUX=enforcing\nSELINUXTYPE=targeted\n",
            0o644,
        );
        g.add_file("/usr/share/zoneinfo/Asia/Tokyo", b"TZif", 0o644);
        g.add_file("/var/lib/random-seed", b"old", 0o600);
        let os = GuestOs {
            os_type: "linux".into(),
            distro: "centos".into(),
            major_version: 7,
            package_management: Some("yum".into()),
        };
        (g, os)
    }

    #[test]
    fn a_clone_plan_on_a_centos_tree() {
        let (mut g, os) = centos7();
        let plan = Plan::parse([
            "--hostname",
            "test02",
            "--network-static",
            "eth0=192.168.174.13/24,gw=192.168.174.1,dns=192.168.174.1",
            "--mac",
            "eth0=random",
            "--root-password",
            "password:secret",
            "--password",
            "alice:locked:random",
            "--timezone",
            "Asia/Tokyo",
            "--ssh-inject",
            "root:string:ssh-ed25519 AAAAC3 op@host",
            "--firstboot-command",
            "echo booted",
            "--write",
            "/etc/motd:hello\n",
            "--append-line",
            "/etc/motd:second",
        ])
        .unwrap();
        let mut r = run(&plan, &mut g, &os).unwrap();
        finish_selinux(&plan, &mut g, &mut r).unwrap();
        assert_eq!(g.text("/etc/hostname").unwrap(), "test02\n");
        let ifcfg = g.text("/etc/sysconfig/network-scripts/ifcfg-eth0").unwrap();
        assert!(
            ifcfg.contains("IPADDR=192.168.174.13\nPREFIX=24\nGATEWAY=192.168.174.1\n"),
            "{ifcfg}"
        );
        assert!(ifcfg.contains("BOOTPROTO=none\n"), "{ifcfg}");
        assert!(!ifcfg.contains("UUID=old"), "{ifcfg}");
        assert_eq!(r.macs.len(), 1);
        assert!(
            ifcfg.contains(&format!("HWADDR={}\n", r.macs[0].1.to_uppercase())),
            "{ifcfg}"
        );
        let shadow = g.text("/etc/shadow").unwrap();
        assert!(shadow.starts_with("root:$6$"), "{shadow}");
        assert!(shadow.contains("\nalice:!$6$"), "{shadow}");
        assert_eq!(r.random_passwords.len(), 1);
        assert_eq!(g.stat("/etc/shadow", true).unwrap().unwrap().mode, 0);
        assert_eq!(
            g.read_link("/etc/localtime").unwrap().as_deref(),
            Some("/usr/share/zoneinfo/Asia/Tokyo")
        );
        assert_eq!(
            g.text("/root/.ssh/authorized_keys").unwrap(),
            "ssh-ed25519 AAAAC3 op@host\n"
        );
        assert!(g
            .text("/usr/lib/virt-sysprep/scripts/0001-echo-booted")
            .is_some());
        assert_eq!(g.text("/etc/motd").unwrap(), "hello\nsecond\n");
        assert!(
            g.file("/.autorelabel").is_some(),
            "SELinux guest with new files"
        );
        assert_ne!(g.file("/var/lib/random-seed").unwrap(), b"old");
        assert!(
            r.messages.iter().any(|m| m.contains("ifcfg")),
            "{:?}",
            r.messages
        );
    }

    #[test]
    fn twice_the_same_password_is_refused() {
        let (mut g, os) = centos7();
        let plan =
            Plan::parse(["--root-password", "disabled", "--password", "root:random"]).unwrap();
        let e = run(&plan, &mut g, &os).unwrap_err();
        assert!(e.message().contains("twice"), "{e}");
    }

    #[test]
    fn file_operations() {
        let (mut g, os) = centos7();
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("tree")).unwrap();
        std::fs::write(t.path().join("tree/a.conf"), "a=1\n").unwrap();
        std::os::unix::fs::symlink("a.conf", t.path().join("tree/link")).unwrap();
        let local = t.path().join("tree");
        let up = t.path().join("up.sh");
        std::fs::write(&up, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&up, std::fs::Permissions::from_mode(0o750)).unwrap();
        let plan = Plan::parse([
            "--mkdir".to_string(),
            "/srv/data/x".into(),
            format!("--copy-in={}:/srv/nonexistent", local.display()),
        ])
        .unwrap();
        assert!(run(&plan, &mut g, &os).is_err());
        let plan = Plan::parse([
            "--mkdir".to_string(),
            "/srv/data/x".into(),
            format!("--copy-in={}:/srv/data", local.display()),
            "--mkdir".into(),
            "/usr/local/bin".into(),
            format!("--upload={}:/usr/local/bin", up.display()),
            "--copy".into(),
            "/srv/data/tree:/srv/copy".into(),
            "--move".into(),
            "/srv/data/x:/srv/y".into(),
            "--link".into(),
            "/srv/y:/srv/l1:/srv/l2".into(),
            "--touch".into(),
            "/srv/t".into(),
            "--chmod".into(),
            "0600:/srv/t".into(),
            "--chown".into(),
            "1000:1000:/srv/t".into(),
            "--write".into(),
            "/srv/secret:abc".into(),
            "--scrub".into(),
            "/srv/secret".into(),
            "--truncate-recursive".into(),
            "/srv/copy".into(),
            "--delete".into(),
            "/srv/l*".into(),
            "--no-selinux-relabel".into(),
        ])
        .unwrap();
        let mut r = run(&plan, &mut g, &os).unwrap();
        finish_selinux(&plan, &mut g, &mut r).unwrap();
        assert_eq!(g.text("/srv/data/tree/a.conf").unwrap(), "a=1\n");
        assert_eq!(
            g.read_link("/srv/data/tree/link").unwrap().as_deref(),
            Some("a.conf")
        );
        assert_eq!(
            g.stat("/usr/local/bin/up.sh", true).unwrap().unwrap().mode,
            0o750
        );
        assert_eq!(g.file("/srv/copy/a.conf").unwrap(), b"");
        assert!(g.stat("/srv/y", false).unwrap().is_some());
        assert!(g.stat("/srv/data/x", false).unwrap().is_none());
        assert!(g.stat("/srv/l1", false).unwrap().is_none());
        let t = g.stat("/srv/t", false).unwrap().unwrap();
        assert_eq!((t.mode, t.uid), (0o600, 1000));
        assert!(g.stat("/srv/secret", false).unwrap().is_none());
        assert!(g.file("/.autorelabel").is_none());
        let plan = Plan::parse(["--edit", "/etc/hostname:s/^t(.*)e$/T$1E/"]).unwrap();
        run(&plan, &mut g, &os).unwrap();
        assert_eq!(g.text("/etc/hostname").unwrap(), "TemplatE\n");
        let plan = Plan::parse(["--edit", "/etc/hostname:y/a/b/"]).unwrap();
        assert!(run(&plan, &mut g, &os).is_err());
    }
}
