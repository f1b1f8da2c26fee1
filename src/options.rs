//! qemu's option syntax: sizes (`10G`, `1.5M`) and `-o key=value,key=value` lists.

use vdisk_block::{Error, Result};

/// Parses a size as qemu-img does: a number of bytes, optionally with a fraction and one of
/// the binary suffixes `b k K M G T P E` (`k` and `K` both mean KiB), or a plain hexadecimal
/// number of bytes (`0x10000`).
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || Error::invalid(format!("Invalid image size specified: '{s}'."));
    let t = s.trim();
    // qemu_strtosz reads a hexadecimal byte count too (`cluster_size=0x10000`), without a
    // fraction or a unit.
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let value = u64::from_str_radix(hex, 16).map_err(|_| bad())?;
        if value > i64::MAX as u64 {
            return Err(Error::invalid("Image size must be less than 8 EiB!"));
        }
        return Ok(value);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() || num.starts_with('.') {
        return Err(bad());
    }
    let shift = match suffix {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        "P" | "p" => 50,
        "E" | "e" => 60,
        _ => return Err(bad()),
    };
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    if frac_part.contains('.') {
        return Err(bad());
    }
    let int: u64 = int_part.parse().map_err(|_| bad())?;
    let mut value = int.checked_mul(1u64 << shift).ok_or_else(bad)?;
    if !frac_part.is_empty() {
        // A fraction is allowed with a unit; qemu rejects fractional bytes.
        if shift == 0 {
            return Err(bad());
        }
        let frac: f64 = format!("0.{frac_part}").parse().map_err(|_| bad())?;
        value = value
            .checked_add((frac * (1u64 << shift) as f64) as u64)
            .ok_or_else(bad)?;
    }
    if value > i64::MAX as u64 {
        return Err(Error::invalid("Image size must be less than 8 EiB!"));
    }
    Ok(value)
}

/// Splits a qemu `-o` option string into `(key, value)` pairs. A doubled comma is a literal
/// comma; a bare key (`help`, `lazy_refcounts`) gets the value "on".
pub fn parse_opts(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut parts = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    for p in parts {
        if p.is_empty() {
            continue;
        }
        match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => out.push((k.to_string(), v.to_string())),
            Some(_) => return Err(Error::invalid(format!("Invalid option '{p}'"))),
            None => out.push((p, "on".to_string())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("1.5M").unwrap(), 1572864);
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        assert_eq!(parse_size("7E").unwrap(), 7 << 60);
        assert!(parse_size("8E").is_err());
        assert!(parse_size("10X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1.5").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert_eq!(parse_size("0x10000").unwrap(), 65536);
        assert_eq!(parse_size("0X1f").unwrap(), 31);
        assert!(parse_size("0x").is_err());
        assert!(parse_size("0x1.5").is_err());
        assert!(parse_size("0x8000000000000000").is_err());
    }

    #[test]
    fn opts() {
        assert_eq!(
            parse_opts("size=1G,preallocation=full").unwrap(),
            vec![
                ("size".into(), "1G".into()),
                ("preallocation".into(), "full".into())
            ]
        );
        assert_eq!(
            parse_opts("backing_file=a,,b.raw,help").unwrap(),
            vec![
                ("backing_file".into(), "a,b.raw".into()),
                ("help".into(), "on".into())
            ]
        );
        assert!(parse_opts("=x").is_err());
    }
}
