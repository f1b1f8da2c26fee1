//! Helpers for the partition/LVM/detection tests: shell commands, loop devices, a private LVM
//! configuration, a file-backed device, and the reference tools' output parsed.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use vdisk_block::{BlockDevice, BlockDeviceExt, Error, Result};

/// Runs `script` with bash -e; panics with its stderr when it fails. Returns stdout.
pub fn sh(script: &str) -> String {
    let out = Command::new("bash")
        .arg("-ec")
        .arg(script)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "command failed: {script}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks that every named reference tool is installed, and fails the test when one is not.
pub fn have(tools: &[&str]) -> bool {
    for t in tools {
        if Command::new("bash")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            // A reference tool that is missing must fail the test, not skip it: a skipped
            // differential test proves nothing. .ci/run installs every tool.
            panic!("{t} is not installed (run .ci/run, which installs the reference tools)");
        }
    }
    true
}

/// One row of `lvs --segments`: (lv, seg_start bytes, seg_size bytes, stripe_size bytes,
/// [(pv device, first extent)]).
pub type LvSegment = (String, u64, u64, u64, Vec<(String, u64)>);

/// A file opened read-write as a device.
pub struct FileDev {
    file: File,
    size: u64,
}

impl FileDev {
    pub fn open(path: &Path) -> Arc<dyn BlockDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let size = file.metadata().unwrap().len();
        Arc::new(FileDev { file, size })
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
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io("write", Some(offset), e))
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// A loop device over (part of) a file, detached on drop.
pub struct Loop(pub String);

impl Loop {
    pub fn new(file: &Path, offset: u64, size: Option<u64>) -> Loop {
        let limit = size.map(|s| format!("--sizelimit {s}")).unwrap_or_default();
        let dev = sh(&format!(
            "losetup -f --show -o {offset} {limit} {}",
            file.display()
        ));
        Loop(dev.trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// An LVM configuration that sees only the given devices and never touches udev, device-mapper
/// or the host's /etc/lvm.
pub struct LvmEnv {
    pub dir: PathBuf,
}

impl LvmEnv {
    pub fn new(dir: &Path, devices: &[&Loop]) -> LvmEnv {
        let etc = dir.join("lvm-etc");
        std::fs::create_dir_all(&etc).unwrap();
        let accept: Vec<String> = devices
            .iter()
            .map(|l| format!("\"a|^{}$|\"", l.0))
            .collect();
        let filter = format!("[ {}, \"r|.*|\" ]", accept.join(", "));
        std::fs::write(
            etc.join("lvm.conf"),
            format!(
                "devices {{\n filter = {filter}\n global_filter = {filter}\n \
                 obtain_device_list_from_udev = 0\n use_devicesfile = 0\n \
                 external_device_info_source = \"none\"\n hints = \"none\"\n}}\n\
                 global {{ locking_dir = \"{}\" use_lvmlockd = 0 event_activation = 0 }}\n\
                 activation {{ udev_sync = 0 udev_rules = 0 monitoring = 0 }}\n\
                 backup {{ backup = 0 archive = 0 }}\n",
                dir.join("lvm-lock").display()
            ),
        )
        .unwrap();
        LvmEnv { dir: etc }
    }

    /// Runs an lvm command line under this configuration; stderr noise about device-mapper
    /// is expected (the kernel here has none).
    pub fn run(&self, cmd: &str) -> String {
        sh(&format!(
            "export LVM_SYSTEM_DIR={}; {cmd} 2>/dev/null",
            self.dir.display()
        ))
    }

    /// `pvcreate --restorefile` for each (device, uuid), then `vgcfgrestore`.
    pub fn restore(&self, meta: &Path, vg: &str, pvs: &[(&Loop, &str)]) {
        for (l, uuid) in pvs {
            self.run(&format!(
                "pvcreate -ff -y --restorefile {} --uuid {uuid} {}",
                meta.display(),
                l.0
            ));
        }
        self.run(&format!("vgcfgrestore -f {} {vg}", meta.display()));
    }

    /// PV device → pe_start in bytes.
    pub fn pe_starts(&self) -> HashMap<String, u64> {
        let out = self.run("pvs --noheadings --units b --nosuffix -o pv_name,pe_start");
        out.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.to_string(), w.next()?.parse().ok()?))
            })
            .collect()
    }

    /// LV segments: (lv, seg_start bytes, seg_size bytes, stripe_size bytes, [(pv dev, first
    /// extent)]).
    pub fn segments(&self, vg: &str) -> Vec<LvSegment> {
        let out = self.run(&format!(
            "lvs --segments --noheadings --units b --nosuffix --separator ';' \
             -o lv_name,seg_start,seg_size,stripe_size,seg_pe_ranges {vg}"
        ));
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.trim().split(';').collect();
                let ranges = f[4]
                    .split_whitespace()
                    .map(|r| {
                        let (dev, ext) = r.rsplit_once(':').unwrap();
                        let first = ext.split('-').next().unwrap().parse().unwrap();
                        (dev.to_string(), first)
                    })
                    .collect();
                (
                    f[0].to_string(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                    ranges,
                )
            })
            .collect()
    }
}

/// `blkid -p -o export FILE` as a map (empty when blkid finds nothing).
pub fn blkid(path: &Path) -> HashMap<String, String> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A stamp for LV sector `n` of the LV tagged `tag`: 512 bytes nobody else has.
pub fn stamp(tag: u8, n: u64) -> [u8; 512] {
    let mut s = [tag; 512];
    for (i, c) in s.chunks_exact_mut(16).enumerate() {
        c[..8].copy_from_slice(&n.to_le_bytes());
        c[8..16].copy_from_slice(&(i as u64).to_le_bytes());
        c[8] = tag;
    }
    s
}

/// Builds a fake PV image: label in sector 1, one metadata area at 4 KiB holding `text`,
/// data from 1 MiB. CRCs are computed, so only what the test breaks on purpose is wrong.
pub fn synth_pv(size: usize, pv_uuid: &str, text: &str) -> Vec<u8> {
    use vdisk_guestfs::lvm::label::{calc_crc, INITIAL_CRC, MDA_MAGIC};
    let mut d = vec![0u8; size];
    let mda_off = 4096u64;
    let mda_size = (1u64 << 20) - mda_off;
    // label sector 1
    let s = &mut d[512..1024];
    s[..8].copy_from_slice(b"LABELONE");
    s[8..16].copy_from_slice(&1u64.to_le_bytes());
    s[20..24].copy_from_slice(&32u32.to_le_bytes());
    s[24..32].copy_from_slice(b"LVM2 001");
    s[32..64].copy_from_slice(pv_uuid.replace('-', "").as_bytes());
    s[64..72].copy_from_slice(&(size as u64).to_le_bytes());
    // data area: 1 MiB to the end; then terminator; metadata area; terminator.
    s[72..80].copy_from_slice(&(1u64 << 20).to_le_bytes());
    s[104..112].copy_from_slice(&mda_off.to_le_bytes());
    s[112..120].copy_from_slice(&mda_size.to_le_bytes());
    let crc = calc_crc(INITIAL_CRC, &s[20..]);
    s[16..20].copy_from_slice(&crc.to_le_bytes());
    // metadata text at mda + 512
    let t = text.as_bytes();
    let at = mda_off as usize + 512;
    d[at..at + t.len()].copy_from_slice(t);
    let h = &mut d[mda_off as usize..mda_off as usize + 512];
    h[4..20].copy_from_slice(MDA_MAGIC);
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[24..32].copy_from_slice(&mda_off.to_le_bytes());
    h[32..40].copy_from_slice(&mda_size.to_le_bytes());
    h[40..48].copy_from_slice(&512u64.to_le_bytes());
    h[48..56].copy_from_slice(&(t.len() as u64).to_le_bytes());
    h[56..60].copy_from_slice(&calc_crc(INITIAL_CRC, t).to_le_bytes());
    let crc = calc_crc(INITIAL_CRC, &h[4..]);
    h[0..4].copy_from_slice(&crc.to_le_bytes());
    d
}
