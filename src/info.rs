//! What `vdisk info` reports: qemu's `BlockGraphInfo`, as JSON and as qemu-img's human text.
//!
//! The JSON members are inserted in QAPI schema order (qapi/block-core.json: `BlockNodeInfo`,
//! then `ImageInfo`'s `backing-image`, then `BlockGraphInfo`'s `children`), which is what makes
//! [`crate::qapi::to_json`] print them in qemu's order.

use serde_json::{json, Map, Value};

use crate::open::{Driver, OpenedImage};
use crate::protocol::Protocol;
use crate::qapi::{dump_human, size_to_str};
use vdisk_block::{BlockDevice, Result};

/// The host file's node (qemu's `file` child): name, length rounded up to whole sectors as
/// qemu's block layer sees it, and the storage it occupies.
fn file_node(file: &Protocol, filename: &str) -> Result<Value> {
    let mut m = Map::new();
    m.insert("filename".into(), json!(filename));
    if let Protocol::Nbd { .. } = file {
        // qemu's nbd node: no get-info (so no dirty flag), no allocated size, no
        // format-specific data.
        m.insert("format".into(), json!("nbd"));
        m.insert("virtual-size".into(), json!(file.size()));
        m.insert("children".into(), json!([]));
        return Ok(Value::Object(m));
    }
    let actual = file.allocated_size()?.unwrap_or(0);
    m.insert(
        "format".into(),
        json!(if file.is_block_device() {
            "host_device"
        } else {
            "file"
        }),
    );
    m.insert("dirty-flag".into(), json!(false));
    m.insert("actual-size".into(), json!(actual));
    m.insert("virtual-size".into(), json!(file.size()));
    m.insert(
        "format-specific".into(),
        json!({"type": if file.is_block_device() { "host_device" } else { "file" }, "data": {}}),
    );
    m.insert("children".into(), json!([]));
    Ok(Value::Object(m))
}

/// The `BlockGraphInfo` of one image (its file child included, its backing image not).
pub fn image_info(img: &OpenedImage) -> Result<Value> {
    let filename = img.filename.to_string_lossy().into_owned();
    let mut m = Map::new();
    m.insert("filename".into(), json!(filename));
    m.insert("format".into(), json!(img.format.name()));
    let actual = img.file.allocated_size()?;
    match &img.driver {
        Driver::Other(o) => {
            let mut actual = actual;
            for (_, f) in o.extra_files() {
                actual = actual.map(|a| a.saturating_add(f.allocated_size().unwrap_or(0)));
            }
            m.insert("dirty-flag".into(), json!(false));
            if let Some(a) = actual {
                m.insert("actual-size".into(), json!(a));
            }
            m.insert("virtual-size".into(), json!(o.size()));
            if let Some(cs) = o.cluster_size() {
                m.insert("cluster-size".into(), json!(cs));
            }
            if let Some(name) = o.backing_file_name() {
                m.insert("backing-filename".into(), json!(name));
                let full = crate::open::resolve_backing(&img.filename, name);
                m.insert(
                    "full-backing-filename".into(),
                    json!(full.to_string_lossy()),
                );
                if let Some(fmt) = o.backing_format() {
                    m.insert("backing-filename-format".into(), json!(fmt));
                }
            }
            if let Some(fs) = o.format_specific() {
                m.insert("format-specific".into(), fs);
            }
        }
        Driver::Raw(raw) => {
            // Over NBD qemu has neither (the export answers no get-info, no allocated size).
            if let Some(a) = actual {
                m.insert("dirty-flag".into(), json!(false));
                m.insert("actual-size".into(), json!(a));
            }
            m.insert("virtual-size".into(), json!(raw.size()));
        }
        Driver::Qcow2(q) => {
            let qi = q.info();
            m.insert("dirty-flag".into(), json!(qi.dirty));
            if let Some(a) = actual {
                m.insert("actual-size".into(), json!(a));
            }
            m.insert("virtual-size".into(), json!(q.size()));
            m.insert("cluster-size".into(), json!(qi.cluster_size));
            if let Some(name) = q.backing_file_name() {
                m.insert("backing-filename".into(), json!(name));
                let full = crate::open::resolve_backing(&img.filename, name);
                m.insert(
                    "full-backing-filename".into(),
                    json!(full.to_string_lossy()),
                );
                if let Some(fmt) = q.backing_format() {
                    m.insert("backing-filename-format".into(), json!(fmt));
                }
            }
            let snaps: Vec<Value> = q
                .snapshots()
                .iter()
                .map(|s| {
                    let mut sm = Map::new();
                    sm.insert("id".into(), json!(s.id_str));
                    sm.insert("name".into(), json!(s.name));
                    sm.insert("vm-state-size".into(), json!(s.vm_state_size));
                    sm.insert("date-sec".into(), json!(s.date_sec));
                    sm.insert("date-nsec".into(), json!(s.date_nsec));
                    sm.insert(
                        "vm-clock-sec".into(),
                        json!(s.vm_clock_nsec / 1_000_000_000),
                    );
                    sm.insert(
                        "vm-clock-nsec".into(),
                        json!(s.vm_clock_nsec % 1_000_000_000),
                    );
                    if let Some(ic) = s.icount {
                        sm.insert("icount".into(), json!(ic));
                    }
                    Value::Object(sm)
                })
                .collect();
            if !snaps.is_empty() {
                m.insert("snapshots".into(), Value::Array(snaps));
            }
            let mut d = Map::new();
            d.insert("compat".into(), json!(qi.compat));
            if let Some(df) = &qi.data_file {
                d.insert("data-file".into(), json!(df));
            }
            if let Some(raw) = qi.data_file_raw {
                d.insert("data-file-raw".into(), json!(raw));
            }
            if let Some(v) = qi.extended_l2 {
                d.insert("extended-l2".into(), json!(v));
            }
            if let Some(v) = qi.lazy_refcounts {
                d.insert("lazy-refcounts".into(), json!(v));
            }
            if let Some(v) = qi.corrupt {
                d.insert("corrupt".into(), json!(v));
            }
            d.insert("refcount-bits".into(), json!(qi.refcount_bits));
            if !qi.bitmaps.is_empty() {
                let bms: Vec<Value> = qi
                    .bitmaps
                    .iter()
                    .map(|b| {
                        let mut bm = Map::new();
                        bm.insert("name".into(), json!(b.name));
                        bm.insert("granularity".into(), json!(b.granularity));
                        bm.insert("flags".into(), json!(b.flags));
                        Value::Object(bm)
                    })
                    .collect();
                d.insert("bitmaps".into(), Value::Array(bms));
            }
            d.insert(
                "compression-type".into(),
                json!(qi.compression_type.as_str()),
            );
            m.insert(
                "format-specific".into(),
                json!({"type": "qcow2", "data": Value::Object(d)}),
            );
        }
    }
    let mut children = Vec::new();
    if let Driver::Other(o) = &img.driver {
        // qemu lists children newest first: the extents (opened after the file), last
        // extent first, then the file.
        for (name, f) in o.extra_files().iter().rev() {
            let fname = f.path().to_string_lossy().into_owned();
            let f = Protocol::File(f.clone());
            children.push(json!({"name": name, "info": file_node(&f, &fname)?}));
        }
    }
    children.push(json!({"name": "file", "info": file_node(&img.file, &filename)?}));
    m.insert("children".into(), Value::Array(children));
    Ok(Value::Object(m))
}

/// The info of every image in the chain, top first (`--backing-chain`).
pub fn chain_info(img: &OpenedImage) -> Result<Value> {
    Ok(Value::Array(
        img.chain().map(image_info).collect::<Result<Vec<_>>>()?,
    ))
}

/// qemu-img's human text for one `BlockGraphInfo` (`dump_human_image_info`): the node, then
/// each child as `Child node '/name':` one level in.
pub fn human(info: &Value) -> String {
    let mut out = String::new();
    human_node(&mut out, info, 0, "/");
    out
}

fn human_node(out: &mut String, info: &Value, indent: usize, path: &str) {
    let children = info["children"].as_array().cloned().unwrap_or_default();
    node_dump(out, info, indent, children.is_empty());
    for child in &children {
        let name = child["name"].as_str().unwrap_or("");
        push_line(out, indent, &format!("Child node '{path}{name}':"));
        human_node(out, &child["info"], indent + 1, &format!("{path}{name}/"));
    }
}

fn push_line(out: &mut String, indent: usize, line: &str) {
    out.extend(std::iter::repeat_n(' ', indent * 4));
    out.push_str(line);
    out.push('\n');
}

/// `bdrv_node_info_dump`: a protocol node (one without children) prints its file length; a
/// format node prints its virtual size.
fn node_dump(out: &mut String, info: &Value, indent: usize, protocol: bool) {
    let s = |k: &str| info[k].as_str().unwrap_or("").to_string();
    let n = |k: &str| info[k].as_u64().unwrap_or(0);
    let vsize = n("virtual-size");
    let dsize = match info["actual-size"].as_u64() {
        Some(a) => size_to_str(a),
        None => "unavailable".into(),
    };
    if protocol {
        push_line(out, indent, &format!("filename: {}", s("filename")));
        push_line(out, indent, &format!("protocol type: {}", s("format")));
        push_line(
            out,
            indent,
            &format!("file length: {} ({vsize} bytes)", size_to_str(vsize)),
        );
        push_line(out, indent, &format!("disk size: {dsize}"));
    } else {
        push_line(out, indent, &format!("image: {}", s("filename")));
        push_line(out, indent, &format!("file format: {}", s("format")));
        push_line(
            out,
            indent,
            &format!("virtual size: {} ({vsize} bytes)", size_to_str(vsize)),
        );
        push_line(out, indent, &format!("disk size: {dsize}"));
    }
    if info["encrypted"].as_bool() == Some(true) {
        push_line(out, indent, "encrypted: yes");
    }
    if let Some(cs) = info["cluster-size"].as_u64() {
        push_line(out, indent, &format!("cluster_size: {cs}"));
    }
    if info["dirty-flag"].as_bool() == Some(true) {
        push_line(out, indent, "cleanly shut down: no");
    }
    if let Some(bf) = info["backing-filename"].as_str() {
        let mut line = format!("backing file: {bf}");
        match info["full-backing-filename"].as_str() {
            None => line.push_str(" (cannot determine actual path)"),
            Some(full) if full != bf => line.push_str(&format!(" (actual path: {full})")),
            Some(_) => {}
        }
        push_line(out, indent, &line);
        if let Some(bff) = info["backing-filename-format"].as_str() {
            push_line(out, indent, &format!("backing file format: {bff}"));
        }
    }
    if let Some(snaps) = info["snapshots"].as_array() {
        push_line(out, indent, "Snapshot list:");
        push_line(out, indent, &snapshot_header());
        for sn in snaps {
            push_line(out, indent, &snapshot_row(sn));
        }
    }
    if let Some(data) = info["format-specific"]["data"].as_object() {
        if !data.is_empty() {
            push_line(out, indent, "Format specific information:");
            dump_human(out, &info["format-specific"]["data"], indent + 1);
        }
    }
}

/// The header line of qemu's snapshot table (`bdrv_snapshot_dump(NULL)`).
pub fn snapshot_header() -> String {
    format!(
        "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}",
        "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"
    )
}

/// One row of qemu's snapshot table, from a `SnapshotInfo` JSON object. The date is in the
/// local time zone, as qemu prints it.
pub fn snapshot_row(sn: &Value) -> String {
    let n = |k: &str| sn[k].as_u64().unwrap_or(0);
    let date = crate::localtime::format_local(sn["date-sec"].as_i64().unwrap_or(0));
    let clock_ns = n("vm-clock-sec")
        .saturating_mul(1_000_000_000)
        .saturating_add(n("vm-clock-nsec"));
    let secs = clock_ns / 1_000_000_000;
    let clock = format!(
        "{:04}:{:02}:{:02}.{:03}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        (clock_ns / 1_000_000) % 1000
    );
    let icount = match sn["icount"].as_u64() {
        Some(i) => i.to_string(),
        None => "--".into(),
    };
    format!(
        "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}",
        sn["id"].as_str().unwrap_or(""),
        sn["name"].as_str().unwrap_or(""),
        size_to_str(n("vm-state-size")),
        date,
        clock,
        icount
    )
}
