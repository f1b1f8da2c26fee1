//! VMDK in the registry: [`vdisk_vmdk`] opened and created with qemu-img's options, names
//! and `info` fields.

use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use vdisk_block::{Error, Image, Result};
use vdisk_raw::RawFile;
use vdisk_vmdk::{CreateOptions, Subformat, Vmdk};

use crate::open::{resolve_backing, Format};
use crate::registry::{CreateParams, FormatEntry, FormatImage, OpenContext};

/// The registry entry.
pub const ENTRY: FormatEntry = FormatEntry {
    format: Format::Vmdk,
    name: "vmdk",
    probe: |head, _| vdisk_vmdk::probe(head),
    open: Some(open),
    check_option: Some(check_option),
    create: Some(create),
    formatting_line: Some(formatting_line),
    create_help: "Supported vmdk options:\n  \
        adapter_type=<str>     - Virtual adapter type, can be one of ide (default), lsilogic, buslogic or legacyESX\n  \
        backing_file=<str>     - File name of a base image\n  \
        backing_fmt=<str>      - Must be 'vmdk' if present\n  \
        compat6=<bool (on/off)> - VMDK version 6 image\n  \
        hwversion=<str>        - VMDK hardware version\n  \
        size=<size>            - Virtual disk size\n  \
        subformat=<str>        - VMDK flat extent format, can be one of {monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse | twoGbMaxExtentFlat | streamOptimized} \n  \
        toolsversion=<str>     - VMware guest tools version\n  \
        zeroed_grain=<bool (on/off)> - Enable efficient zero writes using the zeroed-grain GTE feature\n",
    supports_backing: true,
};

fn open(ctx: &OpenContext<'_>) -> Result<Box<dyn FormatImage>> {
    let opts = vdisk_vmdk::OpenOptions {
        read_only: ctx.read_only,
        force_share: ctx.force_share,
        allowed_extent_files: Vec::new(),
    };
    Ok(Box::new(Vmdk::open(ctx.path, ctx.file.clone(), &opts)?))
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(Error::invalid(format!(
            "Parameter '{key}' expects 'on' or 'off'"
        ))),
    }
}

fn check_option(k: &str, v: &str) -> Result<()> {
    match k {
        "adapter_type" => {
            if !vdisk_vmdk::ADAPTER_TYPES.contains(&v) {
                return Err(Error::invalid(format!("Invalid parameter '{v}'")));
            }
        }
        "subformat" => {
            Subformat::parse(v)?;
        }
        "compat6" | "zeroed_grain" => {
            parse_bool(k, v)?;
        }
        "hwversion" | "toolsversion" => {}
        _ => {
            return Err(Error::invalid(format!(
                "Invalid parameter '{k}' for format vmdk (see 'vdisk create -f vmdk -o help')"
            )))
        }
    }
    Ok(())
}

fn option<'a>(p: &'a CreateParams<'_>, k: &str) -> Option<&'a str> {
    p.options
        .iter()
        .rev()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
}

fn create(path: &Path, p: &CreateParams<'_>) -> Result<Box<dyn FormatImage>> {
    if let Some(f) = p.backing_format {
        if f != "vmdk" {
            return Err(Error::invalid("backing_file must be a vmdk image"));
        }
    }
    let parent_cid = match p.backing_file {
        None => None,
        Some(b) => {
            let full = resolve_backing(path, b);
            let head = vdisk_raw::RawFile::open(
                &full,
                &vdisk_raw::OpenOptions {
                    read_only: true,
                    force_share: true,
                },
            )?;
            let len = vdisk_block::BlockDevice::size(&head).min(2048) as usize;
            let mut buf = vec![0u8; len];
            vdisk_block::BlockDevice::read_at(&head, &mut buf, 0)?;
            if vdisk_vmdk::probe(&buf) == 0 {
                return Err(Error::invalid(format!(
                    "Invalid backing file format: {}. Must be vmdk",
                    crate::registry::probe(&buf, &full).name()
                )));
            }
            Some(
                vdisk_vmdk::read_cid(&full)
                    .map_err(|_| Error::invalid("Failed to read parent CID"))?,
            )
        }
    };
    let hw = option(p, "hwversion").filter(|h| *h != "undefined");
    let o = CreateOptions {
        size: p.size,
        subformat: option(p, "subformat")
            .map(Subformat::parse)
            .transpose()?
            .unwrap_or_default(),
        adapter_type: option(p, "adapter_type").map(str::to_string),
        hwversion: hw.map(str::to_string),
        toolsversion: option(p, "toolsversion").map(str::to_string),
        compat6: option(p, "compat6")
            .map(|v| parse_bool("compat6", v))
            .transpose()?
            .unwrap_or(false),
        zeroed_grain: option(p, "zeroed_grain")
            .map(|v| parse_bool("zeroed_grain", v))
            .transpose()?
            .unwrap_or(false),
        backing_file: p.backing_file.map(str::to_string),
        parent_cid,
    };
    Ok(Box::new(vdisk_vmdk::create(path, &o)?))
}

/// qemu-img's line: size, then the options in the order of qemu's option list, compat6 and
/// hwversion always (they have defaults), the others when given.
fn formatting_line(path: &Path, p: &CreateParams<'_>, _size_text: &str) -> String {
    let mut line = format!("Formatting '{}', fmt=vmdk size={}", path.display(), p.size);
    if let Some(v) = option(p, "adapter_type") {
        line.push_str(&format!(" adapter_type={v}"));
    }
    if let Some(b) = p.backing_file {
        line.push_str(&format!(" backing_file={b}"));
    }
    if let Some(f) = p.backing_format {
        line.push_str(&format!(" backing_fmt={f}"));
    }
    line.push_str(&format!(
        " compat6={}",
        option(p, "compat6").unwrap_or("off")
    ));
    line.push_str(&format!(
        " hwversion={}",
        option(p, "hwversion").unwrap_or("undefined")
    ));
    for k in ["toolsversion", "subformat", "zeroed_grain"] {
        if let Some(v) = option(p, k) {
            line.push_str(&format!(" {k}={v}"));
        }
    }
    line
}

impl FormatImage for Vmdk {
    fn into_image(self: Arc<Self>) -> Arc<dyn Image> {
        self
    }

    fn backing_file_name(&self) -> Option<&str> {
        self.parent_file_name()
    }

    fn backing_format(&self) -> Option<&str> {
        // qemu records the parent of a VMDK as a VMDK.
        self.parent_file_name().map(|_| "vmdk")
    }

    fn set_backing(&mut self, backing: Arc<dyn Image>) -> Result<()> {
        Vmdk::set_backing(self, backing);
        Ok(())
    }

    fn cluster_size(&self) -> Option<u64> {
        Vmdk::cluster_size(self)
    }

    fn format_specific(&self) -> Option<Value> {
        let extents: Vec<Value> = self
            .extents()
            .iter()
            .map(|e| {
                let mut m = Map::new();
                m.insert(
                    "filename".into(),
                    json!(e
                        .file_name
                        .as_ref()
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default()),
                );
                m.insert("format".into(), json!(e.type_name));
                m.insert("virtual-size".into(), json!(e.len));
                if let vdisk_vmdk::ExtentData::Sparse(s) = &e.data {
                    if s.compressed() {
                        m.insert("compressed".into(), json!(true));
                    }
                    m.insert("cluster-size".into(), json!(s.grain_bytes()));
                }
                Value::Object(m)
            })
            .collect();
        let d = self.descriptor();
        Some(json!({
            "type": "vmdk",
            "data": {
                "cid": d.cid,
                "parent-cid": d.parent_cid,
                "create-type": self.create_type(),
                "extents": extents,
            }
        }))
    }

    fn data_file_name(&self, offset: u64) -> Option<String> {
        self.extents()
            .iter()
            .find(|e| offset >= e.guest_start && offset - e.guest_start < e.len)
            .and_then(|e| e.file_name.as_ref())
            .map(|p| p.to_string_lossy().into_owned())
    }

    fn recurse_file(&self, offset: u64) -> Option<Arc<RawFile>> {
        self.extents()
            .iter()
            .find(|e| offset >= e.guest_start && offset - e.guest_start < e.len)
            .and_then(|e| match &e.data {
                vdisk_vmdk::ExtentData::Flat { file, .. } => Some(file.clone()),
                _ => None,
            })
    }

    fn extra_files(&self) -> Vec<(String, Arc<RawFile>)> {
        self.extents()
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.in_image_file)
            .filter_map(|(i, e)| e.file().map(|f| (format!("extents.{i}"), f.clone())))
            .collect()
    }
}
