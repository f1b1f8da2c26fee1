//! The text descriptor: `key=value` lines, extent lines and the disk database (`ddb.*`).
//!
//! ```text
//! # Disk DescriptorFile
//! version=1
//! CID=67eb8c22
//! parentCID=ffffffff
//! createType="monolithicFlat"
//! RW 2048 FLAT "disk-flat.vmdk" 0
//! ddb.adapterType = "ide"
//! ```
//!
//! Parsed with nom, one line at a time, in two steps: text -> [`Line`]s, then the lines
//! -> a validated [`Descriptor`]. Unknown keys are kept; unknown extent access modes and
//! types are refused by name.

use nom::branch::alt;
use nom::bytes::complete::{is_not, tag, take_while1};
use nom::character::complete::{char, digit1, space0, space1};
use nom::combinator::{all_consuming, map, opt, rest};
use nom::sequence::{delimited, preceded};
use nom::{IResult, Parser};
use vdisk_block::{Error, Result};

/// The largest descriptor we read (qemu reads at most 1 MiB - 1).
pub const MAX_DESCRIPTOR_SIZE: usize = (1 << 20) - 1;
/// The most extents one descriptor may list: twoGbMaxExtent images of 64 TiB have 32768.
pub const MAX_EXTENTS: usize = 1 << 16;
/// The longest extent file name (qemu's limit is 511 bytes).
pub const MAX_NAME_LEN: usize = 511;

/// The kind of an extent, as the descriptor's extent line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentType {
    /// Guest bytes stored as is in a file, from a sector offset.
    Flat,
    /// A hosted sparse extent file (grain directory and tables).
    Sparse,
    /// Reads as zeros, stores nothing.
    Zero,
    /// A flat extent on a VMFS volume (the same layout as FLAT, offset 0).
    Vmfs,
}

impl ExtentType {
    /// The name in the descriptor.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtentType::Flat => "FLAT",
            ExtentType::Sparse => "SPARSE",
            ExtentType::Zero => "ZERO",
            ExtentType::Vmfs => "VMFS",
        }
    }
}

/// One extent line: `RW 2048 FLAT "disk-flat.vmdk" 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// `RW`, `RDONLY` or `NOACCESS`.
    pub access: String,
    /// The extent's size in 512-byte sectors.
    pub sectors: u64,
    /// Its type.
    pub kind: ExtentType,
    /// The file name (none for ZERO extents).
    pub file: Option<String>,
    /// For FLAT extents, the sector in the file where the extent starts.
    pub offset: u64,
}

/// A parsed, validated descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// `version=` (1, 2 or 3).
    pub version: u32,
    /// `CID=`: content id, changed on each write session.
    pub cid: u32,
    /// `parentCID=`: the parent's CID when this link was made (ffffffff: none).
    pub parent_cid: u32,
    /// `createType=`, e.g. `monolithicSparse`.
    pub create_type: String,
    /// `parentFileNameHint=`: the backing file.
    pub parent_file_name_hint: Option<String>,
    /// The extents in guest order.
    pub extents: Vec<ExtentLine>,
    /// Every `ddb.*` key and its value, in file order.
    pub ddb: Vec<(String, String)>,
}

/// One line of the descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line<'a> {
    Blank,
    Pair(&'a str, &'a str),
    Extent(&'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>),
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(v)
}

fn key(i: &str) -> IResult<&str, &str> {
    take_while1(|c: char| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-').parse(i)
}

fn pair(i: &str) -> IResult<&str, Line<'_>> {
    map(
        (key, space0, char('='), space0, rest),
        |(k, _, _, _, v): (&str, &str, char, &str, &str)| Line::Pair(k, unquote(v)),
    )
    .parse(i)
}

fn quoted(i: &str) -> IResult<&str, &str> {
    alt((
        delimited(char('"'), is_not("\""), char('"')),
        // An empty name parses, and is refused as such later.
        map(tag("\"\""), |_| ""),
    ))
    .parse(i)
}

fn extent(i: &str) -> IResult<&str, Line<'_>> {
    map(
        (
            alt((tag("RW"), tag("RDONLY"), tag("NOACCESS"))),
            space1,
            digit1,
            space1,
            take_while1(|c: char| c.is_ascii_alphabetic()),
            opt(preceded(space1, quoted)),
            opt(preceded(space1, digit1)),
            space0,
        ),
        |(a, _, n, _, t, f, o, _)| Line::Extent(a, n, t, f, o),
    )
    .parse(i)
}

fn line(i: &str) -> IResult<&str, Line<'_>> {
    let (i, _) = space0(i)?;
    if i.is_empty() || i.starts_with('#') {
        return Ok(("", Line::Blank));
    }
    all_consuming(alt((extent, pair))).parse(i)
}

fn number<T: std::str::FromStr>(what: &str, v: &str) -> Result<T> {
    v.parse()
        .map_err(|_| Error::corrupt(format!("descriptor: invalid {what} '{v}'")))
}

fn hex32(what: &str, v: &str) -> Result<u32> {
    u32::from_str_radix(v, 16)
        .map_err(|_| Error::corrupt(format!("descriptor: invalid {what} '{v}'")))
}

/// Parses descriptor text. Errors say which line is wrong.
pub fn parse(text: &str) -> Result<Descriptor> {
    if text.len() > MAX_DESCRIPTOR_SIZE {
        return Err(Error::unsupported("descriptor is larger than 1 MiB"));
    }
    let mut d = Descriptor {
        parent_cid: u32::MAX,
        ..Default::default()
    };
    let mut have_version = false;
    let mut have_type = false;
    for raw in text.split('\n') {
        let raw = raw.trim_end_matches('\r');
        let parsed = line(raw).map(|(_, l)| l).map_err(|_| {
            let shown: String = raw.chars().take(80).collect();
            Error::corrupt(format!("descriptor: cannot parse line '{shown}'"))
        })?;
        match parsed {
            Line::Blank => {}
            Line::Pair(k, v) => match k {
                "version" => {
                    d.version = number("version", v)?;
                    have_version = true;
                }
                "CID" => d.cid = hex32("CID", v)?,
                "parentCID" => d.parent_cid = hex32("parentCID", v)?,
                "createType" => {
                    d.create_type = v.to_string();
                    have_type = true;
                }
                "parentFileNameHint" => d.parent_file_name_hint = Some(v.to_string()),
                k if k.starts_with("ddb.") => d.ddb.push((k.to_string(), v.to_string())),
                _ => {}
            },
            Line::Extent(access, sectors, kind, file, offset) => {
                if d.extents.len() >= MAX_EXTENTS {
                    return Err(Error::unsupported(format!(
                        "descriptor lists more than {MAX_EXTENTS} extents"
                    )));
                }
                let kind = match kind {
                    "FLAT" => ExtentType::Flat,
                    "SPARSE" => ExtentType::Sparse,
                    "ZERO" => ExtentType::Zero,
                    "VMFS" => ExtentType::Vmfs,
                    other => {
                        return Err(Error::unsupported(format!(
                            "Unsupported extent type '{other}'"
                        )))
                    }
                };
                let sectors: u64 = number("extent size", sectors)?;
                if sectors == 0 {
                    return Err(Error::corrupt(format!("Invalid extent line: {raw}")));
                }
                let offset = match (kind, offset) {
                    (ExtentType::Flat, Some(o)) => number("extent offset", o)?,
                    (ExtentType::Flat, None) => {
                        return Err(Error::corrupt(format!("Invalid extent line: {raw}")))
                    }
                    (_, None) => 0,
                    (_, Some(_)) => {
                        return Err(Error::corrupt(format!("Invalid extent line: {raw}")))
                    }
                };
                match (kind, file) {
                    (ExtentType::Zero, _) => {}
                    (_, None) => return Err(Error::corrupt(format!("Invalid extent line: {raw}"))),
                    (_, Some(f)) if f.is_empty() || f.len() > MAX_NAME_LEN => {
                        return Err(Error::corrupt(format!(
                            "descriptor: invalid extent file name in '{raw}'"
                        )))
                    }
                    _ => {}
                }
                d.extents.push(ExtentLine {
                    access: access.to_string(),
                    sectors,
                    kind,
                    file: file.map(str::to_string),
                    offset,
                });
            }
        }
    }
    if !have_version || !have_type {
        return Err(Error::corrupt("invalid VMDK image descriptor"));
    }
    if !(1..=3).contains(&d.version) {
        return Err(Error::unsupported(format!(
            "Unsupported VMDK descriptor version {}",
            d.version
        )));
    }
    Ok(d)
}

/// qemu's probe of a text descriptor: comment and blank lines, then `version=1|2|3`.
pub fn looks_like_descriptor(head: &[u8]) -> bool {
    let mut p = head;
    loop {
        match p.first() {
            None => return false,
            Some(b'#') => match p.iter().position(|&c| c == b'\n') {
                Some(n) => p = &p[n + 1..],
                None => return false,
            },
            Some(b' ') => {
                let n = p.iter().take_while(|&&c| c == b' ').count();
                p = &p[n..];
                if p.first() == Some(&b'\r') {
                    p = &p[1..];
                }
                match p.first() {
                    Some(b'\n') => p = &p[1..],
                    _ => return false,
                }
            }
            Some(_) => {
                return [b'1', b'2', b'3'].iter().any(|v| {
                    let mut a = b"version=X\n".to_vec();
                    a[8] = *v;
                    let mut b = b"version=X\r\n".to_vec();
                    b[8] = *v;
                    p.starts_with(&a) || p.starts_with(&b)
                })
            }
        }
    }
}

/// Writes a descriptor in the layout qemu-img creates.
pub fn render(d: &Descriptor) -> String {
    let mut s = String::new();
    s.push_str("# Disk DescriptorFile\n");
    s.push_str(&format!("version={}\n", d.version));
    s.push_str(&format!("CID={:x}\n", d.cid));
    s.push_str(&format!("parentCID={:x}\n", d.parent_cid));
    s.push_str(&format!("createType=\"{}\"\n", d.create_type));
    if let Some(p) = &d.parent_file_name_hint {
        s.push_str(&format!("parentFileNameHint=\"{p}\""));
    }
    s.push_str("\n# Extent description\n");
    for e in &d.extents {
        s.push_str(&format!("{} {} {}", e.access, e.sectors, e.kind.as_str()));
        if let Some(f) = &e.file {
            s.push_str(&format!(" \"{f}\""));
        }
        if e.kind == ExtentType::Flat {
            s.push_str(&format!(" {}", e.offset));
        }
        s.push('\n');
    }
    s.push_str("\n# The Disk Data Base\n#DDB\n\n");
    for (k, v) in &d.ddb {
        s.push_str(&format!("{k} = \"{v}\"\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_FLAT: &str = "# Disk DescriptorFile\nversion=1\nCID=67eb8c22\nparentCID=ffffffff\n\
        createType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT \"fxf-flat.vmdk\" 0\n\n\
        # The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"2\"\n\
        ddb.adapterType = \"ide\"\n";

    #[test]
    fn parses_what_qemu_writes_and_renders_it_back() {
        let d = parse(QEMU_FLAT).unwrap();
        assert_eq!(d.cid, 0x67eb8c22);
        assert_eq!(d.parent_cid, u32::MAX);
        assert_eq!(d.create_type, "monolithicFlat");
        assert_eq!(
            d.extents,
            vec![ExtentLine {
                access: "RW".into(),
                sectors: 2048,
                kind: ExtentType::Flat,
                file: Some("fxf-flat.vmdk".into()),
                offset: 0
            }]
        );
        assert_eq!(d.ddb[0], ("ddb.virtualHWVersion".into(), "4".into()));
        assert_eq!(parse(&render(&d)).unwrap(), d);
        assert!(looks_like_descriptor(QEMU_FLAT.as_bytes()));
        assert!(!looks_like_descriptor(b"hello\nversion=1\n"));
    }

    #[test]
    fn refuses_bad_lines_by_name() {
        let bad = |s: &str| parse(s).unwrap_err().to_string();
        let base = "version=1\ncreateType=\"x\"\n";
        assert_eq!(
            bad(&format!("{base}RW 10 FOO \"a\"\n")),
            "Unsupported extent type 'FOO'"
        );
        assert_eq!(
            bad(&format!("{base}RW 10 FLAT \"a\"\n")),
            "Invalid extent line: RW 10 FLAT \"a\""
        );
        assert!(
            bad(&format!("{base}RW 99999999999999999999999 SPARSE \"a\"\n"))
                .contains("invalid extent size")
        );
        assert_eq!(bad("createType=\"x\"\n"), "invalid VMDK image descriptor");
        assert!(bad("version=1\ncreateType=\"x\"\n\u{1}\n").contains("cannot parse line"));
        let d = parse(&format!("{base}RW 10 ZERO\n")).unwrap();
        assert_eq!(d.extents[0].kind, ExtentType::Zero);
    }
}
