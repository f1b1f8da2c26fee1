//! Output exactly as qemu-img prints it: its JSON writer, its human dump of nested
//! dictionaries, and its size strings.
//!
//! qemu builds its JSON from a `QDict`, a hash table of 512 buckets. Printing walks the buckets in
//! order and, inside one bucket, the most recently inserted key first. Scripts compare qemu-img's
//! output as text more often than they should, so we reproduce that order: values are built as a
//! [`serde_json::Value`] with keys inserted in QAPI schema order (the order qemu's visitor inserts
//! them), and [`to_json`] / [`dump_human`] reorder each object the way the hash table would.

use serde_json::Value;

/// Buckets in a qemu `QDict` (`QDICT_BUCKET_MAX`).
const QDICT_BUCKETS: u32 = 512;

/// The bucket qemu's `QDict` puts `key` in (its `tdb_hash`, modulo the bucket count).
fn qdict_bucket(key: &str) -> u32 {
    let bytes = key.as_bytes();
    let mut value = 0x238F_13AFu32.wrapping_mul(bytes.len() as u32);
    for (i, &c) in bytes.iter().enumerate() {
        value = value.wrapping_add(u32::from(c) << ((i * 5) % 24));
    }
    1_103_515_243u32.wrapping_mul(value).wrapping_add(12345) % QDICT_BUCKETS
}

/// The members of an object in the order qemu's hash table yields them.
fn qdict_order(map: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<(usize, &String, &Value)> = map
        .iter()
        .enumerate()
        .map(|(i, (k, v))| (i, k, v))
        .collect();
    // Bucket ascending; inside a bucket, the last inserted first.
    entries.sort_by_key(|&(i, k, _)| (qdict_bucket(k), std::cmp::Reverse(i)));
    entries.into_iter().map(|(_, k, v)| (k, v)).collect()
}

/// Renders `value` as qemu's pretty JSON writer does (four-space indents, `"key": value`,
/// empty containers split over two lines, non-ASCII escaped), without a final newline.
pub fn to_json(value: &Value) -> String {
    let mut out = String::new();
    write_json(&mut out, value, 0);
    out
}

fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    out.extend(std::iter::repeat_n(' ', depth * 4));
}

fn write_json(out: &mut String, value: &Value, depth: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => quote(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, depth + 1);
                write_json(out, item, depth + 1);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in qdict_order(map).into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, depth + 1);
                quote(out, k);
                out.push_str(": ");
                write_json(out, v, depth + 1);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

/// qemu's JSON string quoting: the short escapes, `\uXXXX` for other control characters, DEL
/// and everything outside ASCII (as UTF-16 units).
fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04X}"));
                }
            }
        }
    }
    out.push('"');
}

/// qemu's human dump of a dictionary (`dump_qdict` in block/qapi.c): one `key: value` line per
/// member at `indent` levels of four spaces, dashes in keys shown as spaces, nested containers
/// on the lines below, list items as `[i]:`.
pub fn dump_human(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) => {
            for (k, v) in qdict_order(map) {
                out.extend(std::iter::repeat_n(' ', indent * 4));
                out.push_str(&k.replace('-', " "));
                dump_member(out, v, indent);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                out.extend(std::iter::repeat_n(' ', indent * 4));
                out.push_str(&format!("[{i}]"));
                dump_member(out, v, indent);
            }
        }
        scalar => {
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

fn dump_member(out: &mut String, v: &Value, indent: usize) {
    if v.is_object() || v.is_array() {
        out.push_str(":\n");
        dump_human(out, v, indent + 1);
    } else {
        out.push_str(": ");
        out.push_str(&scalar_text(v));
        out.push('\n');
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        _ => String::new(),
    }
}

/// A byte count as qemu's `size_to_str` writes it: three significant digits and a binary unit,
/// switching to the next unit once the number reaches 1000 ("0.977 KiB", "1.5 MiB", "10 GiB").
pub fn size_to_str(val: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    // qemu: frexp(val / (1000.0 / 1024.0), &e); i = (e - 1) / 10 (C division truncates).
    let scaled = val as f64 / (1000.0 / 1024.0);
    let e = if scaled == 0.0 {
        0
    } else {
        // frexp's exponent: the e with scaled = m * 2^e, m in [0.5, 1).
        scaled.log2().floor() as i32 + 1
    };
    let i = ((e - 1) / 10).clamp(0, 6) as usize;
    let div = (1u64 << (i * 10)) as f64;
    format!("{} {}B", format_g3(val as f64 / div), SUFFIXES[i])
}

/// C's `printf("%0.3g", x)` for non-negative finite `x`.
fn format_g3(x: f64) -> String {
    const P: i32 = 3;
    if x == 0.0 {
        return "0".into();
    }
    // The decimal exponent after rounding to P significant digits decides the style.
    let sci = format!("{:.*e}", (P - 1) as usize, x);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..P).contains(&exp) {
        let fixed = format!("{:.*}", (P - 1 - exp) as usize, x);
        strip_zeros(&fixed).to_string()
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", strip_zeros(mantissa), exp.abs())
    }
}

fn strip_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_as_qemu_prints_them() {
        // Values read off qemu-img 10.0 output.
        assert_eq!(size_to_str(0), "0 B");
        assert_eq!(size_to_str(1024), "1 KiB");
        assert_eq!(size_to_str(4096), "4 KiB");
        assert_eq!(size_to_str(335872), "328 KiB");
        assert_eq!(size_to_str(393728), "384 KiB");
        assert_eq!(size_to_str(1572864), "1.5 MiB");
        assert_eq!(size_to_str(10737418240), "10 GiB");
        assert_eq!(size_to_str(25232932864), "23.5 GiB");
        assert_eq!(size_to_str(9116319744), "8.49 GiB");
        assert_eq!(size_to_str(51838976), "49.4 MiB");
        // Below 1000 B and just under a unit switch.
        assert_eq!(size_to_str(999), "999 B");
        assert_eq!(size_to_str(1000), "0.977 KiB");
        assert_eq!(size_to_str(1023999), "1e+03 KiB");
        assert_eq!(size_to_str(u64::MAX), "16 EiB");
    }

    #[test]
    fn keys_in_qdict_order() {
        let v = json!({
            "filename": "a.raw", "format": "raw", "dirty-flag": false,
            "actual-size": 4096, "virtual-size": 1024, "children": []
        });
        let text = to_json(&v);
        let keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"'))
            .map(|l| l.split('"').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "children",
                "virtual-size",
                "filename",
                "format",
                "actual-size",
                "dirty-flag"
            ]
        );
        assert!(text.contains("\"children\": [\n    ],"));
    }

    #[test]
    fn json_quoting() {
        assert_eq!(
            to_json(&json!("a\"b\\c\n\u{1}é\u{1F600}")),
            r#""a\"b\\c\n\u0001\u00E9\uD83D\uDE00""#
        );
    }

    #[test]
    fn human_dump_nests() {
        let v = json!({"compat": "1.1", "lazy-refcounts": false, "bitmaps": [{"name": "b"}]});
        let mut s = String::new();
        dump_human(&mut s, &v, 1);
        assert!(s.contains("    lazy refcounts: false\n"));
        assert!(s.contains("    bitmaps:\n        [0]:\n            name: b\n"));
    }
}
