//! Shared helpers for the integration tests: a tiny read-only file device, runners for
//! qemu-img / qemu-io, and comparisons against their output.

#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use vdisk_block::{BlockDevice, BlockDeviceExt, Error, Image, MapKind, Mapping, Result};
use vdisk_qcow2::Qcow2;

/// A read-only file, as a device and as a raw image.
#[derive(Debug)]
pub struct FileDev {
    file: File,
    size: u64,
}

impl FileDev {
    pub fn open(path: &Path) -> FileDev {
        let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let size = file.metadata().unwrap().len();
        FileDev { file, size }
    }
}

impl BlockDevice for FileDev {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io("read", Some(offset), e))
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(Error::unsupported("read-only test device"))
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        true
    }
}

impl Image for FileDev {
    fn format_name(&self) -> &'static str {
        "raw"
    }
    fn map(&self, offset: u64, max_len: u64) -> Result<Mapping> {
        if offset >= self.size {
            return Ok(Mapping {
                offset,
                len: 0,
                kind: MapKind::Eof,
            });
        }
        Ok(Mapping {
            offset,
            len: max_len.min(self.size - offset),
            kind: MapKind::Data {
                host_offset: offset,
            },
        })
    }
}

/// Runs a command under `timeout`, panicking with its output when it fails.
pub fn run(prog: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new("timeout")
        .arg("120")
        .arg(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn qemu_img(args: &[&str]) -> Vec<u8> {
    run("qemu-img", args)
}

/// Runs qemu-io commands on a qcow2 image, one `-c` per command.
pub fn qemu_io(path: &Path, cmds: &[String]) {
    let mut args: Vec<&str> = vec!["-f", "qcow2"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let p = path.to_str().unwrap();
    args.push(p);
    let out = run("qemu-io", &args);
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.contains("error") && !text.contains("failed"),
        "qemu-io {cmds:?}: {text}"
    );
}

/// The guest bytes as qemu sees them.
pub fn qemu_raw(path: &Path, extra: &[&str]) -> Vec<u8> {
    let out = path.with_extension(format!("{}.out.raw", std::process::id()));
    let mut args = vec!["convert"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-O", "raw", path.to_str().unwrap(), out.to_str().unwrap()]);
    qemu_img(&args);
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    data
}

/// Opens a qcow2 image with its backing chain and data file, as the root crate would.
pub fn open_chain(path: &Path) -> Qcow2 {
    let dev = Arc::new(FileDev::open(path));
    let mut q = Qcow2::open(dev).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if q.needs_data_file() {
        let name = q.data_file_name().expect("data file name");
        let p = resolve(path, name);
        q.set_data_file(Arc::new(FileDev::open(&p)));
    }
    if let Some(name) = q.backing_file_name() {
        let p = resolve(path, name);
        let backing: Arc<dyn Image> = match q.backing_format() {
            Some("raw") => Arc::new(FileDev::open(&p)),
            _ => Arc::new(open_chain(&p)),
        };
        q.set_backing(backing);
    }
    q
}

fn resolve(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        image.parent().unwrap().join(p)
    }
}

/// Every byte of `q`, read in one request and again in odd-sized pieces.
pub fn read_all(q: &dyn BlockDevice) -> Vec<u8> {
    let size = q.size() as usize;
    let mut whole = vec![0u8; size];
    q.read_at(&mut whole, 0).unwrap();
    let mut pieces = vec![0u8; size];
    let step = 4097 * 3;
    let mut at = 0;
    while at < size {
        let n = step.min(size - at);
        q.read_at(&mut pieces[at..at + n], at as u64).unwrap();
        at += n;
    }
    assert!(whole == pieces, "whole and piecewise reads differ");
    whole
}

/// Asserts two byte images are equal, reporting the first difference.
pub fn assert_same(ours: &[u8], theirs: &[u8], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: sizes differ");
    if let Some(i) = ours.iter().zip(theirs).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i:#x}: ours {:#04x}, qemu {:#04x}",
            ours[i], theirs[i]
        );
    }
}

/// One extent in qemu-img map's terms: (start, length, present, zero, data, compressed, offset).
pub type MapEntry = (u64, u64, bool, bool, bool, bool, Option<u64>);

/// Our map of a single image (no backing), in qemu-img map's terms, merged like qemu merges.
/// qemu's "zero" for data extents comes from looking into the file below (a hole reads as
/// zero), which is not part of a qcow2 mapping (the root crate's engine adds it), so that
/// field is normalised on both sides.
pub fn our_map(q: &Qcow2) -> Vec<MapEntry> {
    let mut out: Vec<MapEntry> = Vec::new();
    let mut off = 0;
    loop {
        let m = q.map(off, u64::MAX).unwrap();
        let e = match m.kind {
            MapKind::Eof => break,
            MapKind::Data { host_offset } => {
                (m.offset, m.len, true, false, true, false, Some(host_offset))
            }
            MapKind::Zero { host_offset } => {
                (m.offset, m.len, true, true, false, false, host_offset)
            }
            MapKind::Unallocated { host_offset } => {
                (m.offset, m.len, false, true, false, false, host_offset)
            }
            MapKind::Compressed => (m.offset, m.len, true, false, true, true, None),
            other => panic!("qcow2 returned a mapping kind it never makes: {other:?}"),
        };
        assert!(m.len > 0);
        off = m.end();
        push_merged(&mut out, e);
    }
    out
}

fn push_merged(out: &mut Vec<MapEntry>, e: MapEntry) {
    if let Some(last) = out.last_mut() {
        let same = (last.2, last.3, last.4, last.5) == (e.2, e.3, e.4, e.5);
        let contiguous = match (last.6, e.6) {
            (Some(a), Some(b)) => a + last.1 == b,
            (None, None) => true,
            _ => false,
        };
        if same && contiguous && last.0 + last.1 == e.0 {
            last.1 += e.1;
            return;
        }
    }
    out.push(e);
}

/// qemu-img map --output=json of a single image, normalised as [`our_map`] explains.
pub fn qemu_map(path: &Path) -> Vec<MapEntry> {
    let out = qemu_img(&[
        "map",
        "--output=json",
        "-f",
        "qcow2",
        path.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let mut res = Vec::new();
    for e in v.as_array().unwrap() {
        assert_eq!(e["depth"], 0);
        let data = e["data"].as_bool().unwrap();
        let present = e["present"].as_bool().unwrap();
        let entry = (
            e["start"].as_u64().unwrap(),
            e["length"].as_u64().unwrap(),
            present,
            e["zero"].as_bool().unwrap() && !data,
            data,
            e["compressed"].as_bool().unwrap(),
            e["offset"].as_u64(),
        );
        push_merged(&mut res, entry);
    }
    res
}

/// A scratch directory for one test.
pub fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vdisk-qcow2-")
        .tempdir()
        .unwrap()
}

/// Compares our bytes and map of the image at `path` with qemu's.
pub fn check_image(path: &Path, what: &str) {
    let q = open_chain(path);
    let ours = read_all(&q);
    assert_same(&ours, &qemu_raw(path, &[]), what);
    if q.backing_file_name().is_none() {
        assert_eq!(our_map(&q), qemu_map(path), "{what}: map differs");
    }
}
