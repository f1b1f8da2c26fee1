//! LVM2 text metadata: the config-tree syntax parsed with nom, then read into a
//! [`VgMetadata`].
//!
//! ```text
//!   centos {                      # a section
//!       id = "Xx..."              # string
//!       seqno = 3                 # integer
//!       status = ["READ", "WRITE"]  # list
//!       physical_volumes { pv0 { id = "..." pe_start = 2048 pe_count = 255 } }
//!       logical_volumes { root { segment1 { start_extent = 0 extent_count = 200
//!           type = "striped" stripe_count = 1 stripes = ["pv0", 0] } } }
//!   }
//! ```

use nom::branch::alt;
use nom::bytes::complete::{tag, take_till, take_while1};
use nom::character::complete::{char, digit1, multispace1};
use nom::combinator::{opt, recognize};
use nom::multi::many0_count;
use nom::sequence::pair;
use nom::{IResult, Parser};

use vdisk_block::{Error, Result};

/// Sections nest at most this deep. LVM writes four levels (VG, `logical_volumes`, LV,
/// segment); the bound stops recursion on hostile text.
pub const MAX_DEPTH: usize = 16;
/// Lists nest at most this deep (LVM writes flat lists).
pub const MAX_LIST_DEPTH: usize = 4;

/// A value in the metadata tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// A quoted string, escapes removed.
    Str(String),
    /// `[a, b, ...]`.
    List(Vec<Value>),
}

/// A node: either `key = value` or `key { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `key = value`.
    Value(Value),
    /// `key { ... }`.
    Section(Section),
}

/// The items of one section, in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Section {
    /// (key, node) pairs.
    pub items: Vec<(String, Node)>,
}

impl Section {
    /// The first node named `key`.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.items.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }

    /// The subsection named `key`.
    pub fn section(&self, key: &str) -> Option<&Section> {
        match self.get(key) {
            Some(Node::Section(s)) => Some(s),
            _ => None,
        }
    }

    /// The subsections, with their names.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Section)> {
        self.items.iter().filter_map(|(k, n)| match n {
            Node::Section(s) => Some((k.as_str(), s)),
            Node::Value(_) => None,
        })
    }

    fn value(&self, key: &str) -> Option<&Value> {
        match self.get(key) {
            Some(Node::Value(v)) => Some(v),
            _ => None,
        }
    }

    /// The integer `key`, or an error naming `ctx` (where we are) and the key.
    pub fn int(&self, key: &str, ctx: &str) -> Result<i64> {
        match self.value(key) {
            Some(Value::Int(i)) => Ok(*i),
            Some(_) => Err(Error::corrupt(format!(
                "LVM metadata: {ctx}: {key} is not an integer"
            ))),
            None => Err(Error::corrupt(format!("LVM metadata: {ctx}: no {key}"))),
        }
    }

    /// The non-negative integer `key`.
    pub fn uint(&self, key: &str, ctx: &str) -> Result<u64> {
        let i = self.int(key, ctx)?;
        u64::try_from(i)
            .map_err(|_| Error::corrupt(format!("LVM metadata: {ctx}: {key} = {i} is negative")))
    }

    /// The string `key`.
    pub fn str(&self, key: &str, ctx: &str) -> Result<&str> {
        match self.value(key) {
            Some(Value::Str(s)) => Ok(s),
            Some(_) => Err(Error::corrupt(format!(
                "LVM metadata: {ctx}: {key} is not a string"
            ))),
            None => Err(Error::corrupt(format!("LVM metadata: {ctx}: no {key}"))),
        }
    }

    /// The strings of list `key` (absent = empty).
    pub fn str_list(&self, key: &str) -> Vec<&str> {
        match self.value(key) {
            Some(Value::List(l)) => l
                .iter()
                .filter_map(|v| match v {
                    Value::Str(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The list `key`.
    pub fn list(&self, key: &str, ctx: &str) -> Result<&[Value]> {
        match self.value(key) {
            Some(Value::List(l)) => Ok(l),
            Some(_) => Err(Error::corrupt(format!(
                "LVM metadata: {ctx}: {key} is not a list"
            ))),
            None => Err(Error::corrupt(format!("LVM metadata: {ctx}: no {key}"))),
        }
    }
}

// ---- the grammar -------------------------------------------------------------------------

/// Whitespace and `#` comments.
fn ws(i: &str) -> IResult<&str, ()> {
    many0_count(alt((
        multispace1,
        recognize(pair(char('#'), take_till(|c| c == '\n'))),
    )))
    .map(|_| ())
    .parse(i)
}

fn ident(i: &str) -> IResult<&str, &str> {
    take_while1(|c: char| c.is_ascii_alphanumeric() || "_.+-".contains(c)).parse(i)
}

fn number(i: &str) -> IResult<&str, Value> {
    let (rest, text) =
        recognize((opt(char('-')), digit1, opt(pair(char('.'), digit1)))).parse(i)?;
    let v = if text.contains('.') {
        text.parse::<f64>().ok().map(Value::Float)
    } else {
        text.parse::<i64>().ok().map(Value::Int)
    };
    match v {
        Some(v) => Ok((rest, v)),
        // An integer too large for i64.
        None => Err(nom::Err::Failure(nom::error::Error::new(
            i,
            nom::error::ErrorKind::Digit,
        ))),
    }
}

fn string(i: &str) -> IResult<&str, Value> {
    let (mut rest, _) = char('"').parse(i)?;
    let mut out = String::new();
    loop {
        let mut chars = rest.char_indices();
        match chars.next() {
            None => {
                return Err(nom::Err::Failure(nom::error::Error::new(
                    i,
                    nom::error::ErrorKind::Char,
                )))
            }
            Some((_, '"')) => return Ok((&rest[1..], Value::Str(out))),
            Some((_, '\\')) => match chars.next() {
                Some((j, c)) => {
                    out.push(c);
                    rest = &rest[j + c.len_utf8()..];
                }
                None => {
                    return Err(nom::Err::Failure(nom::error::Error::new(
                        i,
                        nom::error::ErrorKind::Escaped,
                    )))
                }
            },
            Some((_, c)) => {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
}

fn value(i: &str, depth: usize) -> IResult<&str, Value> {
    if i.starts_with('[') {
        return list(i, depth);
    }
    alt((string, number)).parse(i)
}

fn list(i: &str, depth: usize) -> IResult<&str, Value> {
    if depth >= MAX_LIST_DEPTH {
        return Err(nom::Err::Failure(nom::error::Error::new(
            i,
            nom::error::ErrorKind::TooLarge,
        )));
    }
    let (mut i, _) = (char('['), ws).parse(i)?;
    let mut items = Vec::new();
    if let Ok((rest, _)) = char::<_, nom::error::Error<&str>>(']').parse(i) {
        return Ok((rest, Value::List(items)));
    }
    loop {
        let (rest, v) = value(i, depth + 1)?;
        items.push(v);
        let (rest, _) = ws(rest)?;
        let (rest, sep) = alt((char(','), char(']'))).parse(rest)?;
        let (rest, _) = ws(rest)?;
        i = rest;
        if sep == ']' {
            return Ok((i, Value::List(items)));
        }
    }
}

/// Items until `}` (inside a section) or the end of input (at the top).
fn items(mut i: &str, depth: usize) -> IResult<&str, Section> {
    if depth >= MAX_DEPTH {
        return Err(nom::Err::Failure(nom::error::Error::new(
            i,
            nom::error::ErrorKind::TooLarge,
        )));
    }
    let mut sec = Section::default();
    loop {
        let (rest, _) = ws(i)?;
        i = rest;
        if i.is_empty() || i.starts_with('}') {
            return Ok((i, sec));
        }
        let (rest, key) = ident(i)?;
        let (rest, _) = ws(rest)?;
        let (rest, node) = if let Some(r) = rest.strip_prefix('=') {
            let (r, _) = ws(r)?;
            let (r, v) = value(r, 0)?;
            (r, Node::Value(v))
        } else {
            let (r, _) = (tag("{"), ws).parse(rest)?;
            let (r, s) = items(r, depth + 1)?;
            let (r, _) = char('}').parse(r)?;
            (r, Node::Section(s))
        };
        sec.items.push((key.to_string(), node));
        i = rest;
    }
}

/// Parses a whole metadata text into its top-level section.
pub fn parse_tree(text: &str) -> Result<Section> {
    match items(text, 0) {
        Ok(("", sec)) => Ok(sec),
        Ok((rest, _)) => Err(syntax_error(text, rest)),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(syntax_error(text, e.input)),
        Err(nom::Err::Incomplete(_)) => Err(Error::corrupt("LVM metadata: text ends too early")),
    }
}

fn syntax_error(text: &str, rest: &str) -> Error {
    let at = text.len().saturating_sub(rest.len());
    let line = text[..at].matches('\n').count() + 1;
    let near: String = rest.chars().take(20).collect();
    Error::corrupt(format!(
        "LVM metadata: syntax error on line {line} near {near:?}"
    ))
}

// ---- the volume group --------------------------------------------------------------------

/// A PV as the VG metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvMeta {
    /// Its key in the metadata ("pv0").
    pub name: String,
    /// The PV UUID without dashes.
    pub id: String,
    /// The device name LVM last saw it on (a hint only).
    pub device_hint: Option<String>,
    /// Where the first extent starts, in bytes from the PV's start.
    pub pe_start: u64,
    /// The number of extents.
    pub pe_count: u64,
}

/// One area of a striped segment: a run of extents on one PV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeArea {
    /// Index into [`VgMetadata::pvs`].
    pub pv: usize,
    /// The first PV extent.
    pub start_extent: u64,
}

/// How a segment maps LV extents to PV extents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentKind {
    /// `type = "striped"`: one area is linear, several interleave `stripe_size`-byte chunks.
    Striped {
        /// Chunk size in bytes (0 when there is one stripe).
        stripe_size: u64,
        /// The areas, one per stripe, each `extent_count / stripes` extents long.
        stripes: Vec<StripeArea>,
    },
    /// A type we do not map (mirror, raid*, thin, cache, snapshot, ...).
    Unsupported(String),
}

/// A run of LV extents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Its key ("segment1").
    pub name: String,
    /// The first LV extent it covers.
    pub start_extent: u64,
    /// How many extents.
    pub extent_count: u64,
    /// The mapping.
    pub kind: SegmentKind,
}

/// A logical volume as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvMeta {
    /// The LV name.
    pub name: String,
    /// The LV UUID with dashes, as stored.
    pub id: String,
    /// The status flags ("READ", "WRITE", "VISIBLE").
    pub status: Vec<String>,
    /// The segments in file order.
    pub segments: Vec<Segment>,
}

impl LvMeta {
    /// True for an LV users see (internal LVs such as thin-pool metadata are not VISIBLE).
    pub fn is_visible(&self) -> bool {
        self.status.iter().any(|s| s == "VISIBLE")
    }
}

/// A volume group as one copy of its metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgMetadata {
    /// The VG name.
    pub name: String,
    /// The VG UUID with dashes, as stored.
    pub id: String,
    /// The metadata sequence number: the copy with the highest one is current.
    pub seqno: u64,
    /// The extent size in bytes.
    pub extent_size: u64,
    /// The PVs.
    pub pvs: Vec<PvMeta>,
    /// The LVs, in file order.
    pub lvs: Vec<LvMeta>,
}

/// Names LVM accepts for VGs and LVs: `[A-Za-z0-9+_.-]`, not starting with '-', not "." or
/// "..", at most 127 bytes (lvm2 `NAME_LEN` - 1).
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() < 128
        && !n.starts_with('-')
        && n != "."
        && n != ".."
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+_.-".contains(c))
}

impl VgMetadata {
    /// Parses a metadata text.
    pub fn parse(text: &str) -> Result<VgMetadata> {
        let tree = parse_tree(text)?;
        let mut vgs = tree.sections();
        let (name, vg) = vgs
            .next()
            .ok_or_else(|| Error::corrupt("LVM metadata: no volume group section"))?;
        VgMetadata::from_section(name, vg)
    }

    /// Reads a VG from its section.
    pub fn from_section(name: &str, vg: &Section) -> Result<VgMetadata> {
        if !valid_name(name) {
            return Err(Error::corrupt(format!(
                "LVM metadata: invalid VG name {name:?}"
            )));
        }
        let ctx = format!("VG {name}");
        let extent_sectors = vg.uint("extent_size", &ctx)?;
        // extent_size is a u32 count of sectors in lvm2.
        if extent_sectors == 0 || extent_sectors > u64::from(u32::MAX) {
            return Err(Error::corrupt(format!(
                "LVM metadata: {ctx}: extent size of {extent_sectors} sectors"
            )));
        }
        let extent_size = extent_sectors * 512;
        let format = vg.str("format", &ctx).unwrap_or("lvm2");
        if format != "lvm2" {
            return Err(Error::unsupported(format!(
                "LVM metadata: {ctx}: format {format:?}"
            )));
        }
        let mut pvs = Vec::new();
        if let Some(list) = vg.section("physical_volumes") {
            for (pv_name, pv) in list.sections() {
                let pctx = format!("{ctx}: PV {pv_name}");
                let pe_start = vg_sectors(pv.uint("pe_start", &pctx)?, "pe_start", &pctx)?;
                pvs.push(PvMeta {
                    name: pv_name.to_string(),
                    id: pv.str("id", &pctx)?.replace('-', ""),
                    device_hint: pv.str("device", &pctx).ok().map(str::to_string),
                    pe_start,
                    pe_count: pv.uint("pe_count", &pctx)?,
                });
            }
        }
        let mut lvs = Vec::new();
        if let Some(list) = vg.section("logical_volumes") {
            for (lv_name, lv) in list.sections() {
                if !valid_name(lv_name) {
                    return Err(Error::corrupt(format!(
                        "LVM metadata: {ctx}: invalid LV name {lv_name:?}"
                    )));
                }
                let lctx = format!("{ctx}: LV {lv_name}");
                let mut segments = Vec::new();
                for (seg_name, seg) in lv.sections() {
                    let sctx = format!("{lctx}: {seg_name}");
                    segments.push(parse_segment(seg_name, seg, &sctx, &pvs)?);
                }
                lvs.push(LvMeta {
                    name: lv_name.to_string(),
                    id: lv.str("id", &lctx).unwrap_or("").to_string(),
                    status: lv
                        .str_list("status")
                        .into_iter()
                        .map(str::to_string)
                        .collect(),
                    segments,
                });
            }
        }
        Ok(VgMetadata {
            name: name.to_string(),
            id: vg.str("id", &ctx)?.to_string(),
            seqno: vg.uint("seqno", &ctx)?,
            extent_size,
            pvs,
            lvs,
        })
    }
}

fn vg_sectors(n: u64, key: &str, ctx: &str) -> Result<u64> {
    n.checked_mul(512).ok_or_else(|| {
        Error::corrupt(format!(
            "LVM metadata: {ctx}: {key} = {n} sectors overflows"
        ))
    })
}

fn parse_segment(name: &str, seg: &Section, ctx: &str, pvs: &[PvMeta]) -> Result<Segment> {
    let start_extent = seg.uint("start_extent", ctx)?;
    let extent_count = seg.uint("extent_count", ctx)?;
    let ty = seg.str("type", ctx)?;
    let kind = if ty == "striped" {
        let stripe_count = seg.uint("stripe_count", ctx)?;
        let list = seg.list("stripes", ctx)?;
        if stripe_count == 0 || u64::try_from(list.len()).ok() != stripe_count.checked_mul(2) {
            return Err(Error::corrupt(format!(
                "LVM metadata: {ctx}: stripe_count {stripe_count} does not match the {} items of \
                 its stripes list",
                list.len()
            )));
        }
        let mut stripes = Vec::new();
        for pair in list.chunks_exact(2) {
            let (Value::Str(pv_name), Value::Int(pe)) = (&pair[0], &pair[1]) else {
                return Err(Error::corrupt(format!(
                    "LVM metadata: {ctx}: stripes must be (\"pvN\", extent) pairs"
                )));
            };
            let pv = pvs.iter().position(|p| &p.name == pv_name).ok_or_else(|| {
                Error::corrupt(format!(
                    "LVM metadata: {ctx}: stripe on {pv_name}, which the VG does not list"
                ))
            })?;
            let start_extent = u64::try_from(*pe).map_err(|_| {
                Error::corrupt(format!(
                    "LVM metadata: {ctx}: negative extent {pe} on {pv_name}"
                ))
            })?;
            stripes.push(StripeArea { pv, start_extent });
        }
        let stripe_size = if stripe_count > 1 {
            let s = seg.uint("stripe_size", ctx)?;
            if s == 0 || !s.is_power_of_two() {
                return Err(Error::corrupt(format!(
                    "LVM metadata: {ctx}: stripe_size {s} sectors is not a power of two"
                )));
            }
            vg_sectors(s, "stripe_size", ctx)?
        } else {
            0
        };
        SegmentKind::Striped {
            stripe_size,
            stripes,
        }
    } else {
        SegmentKind::Unsupported(ty.to_string())
    };
    Ok(Segment {
        name: name.to_string(),
        start_extent,
        extent_count,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"vg0 {
id = "abc"
seqno = 7
format = "lvm2" # comment
status = ["RESIZEABLE", "READ", "WRITE"]
extent_size = 8192
physical_volumes {
pv0 {
id = "aaaaaa-bbbb-cccc-dddd-eeee-ffff-gggggg"
device = "/dev/loop0"
pe_start = 2048
pe_count = 10
}
}
logical_volumes {
lv\u{2d}x {
id = "x"
status = ["READ", "WRITE", "VISIBLE"]
segment1 {
start_extent = 0
extent_count = 4
type = "striped"
stripe_count = 1 # linear
stripes = [
"pv0", 2
]
}
}
}
}
contents = "Text Format Volume Group"
description = "a \"quoted\" \\ text"
"#;

    #[test]
    fn parses_vg() {
        let text = TEXT.replace("lv\\u{2d}x", "lv-x");
        let vg = VgMetadata::parse(&text).unwrap();
        assert_eq!(vg.name, "vg0");
        assert_eq!(vg.seqno, 7);
        assert_eq!(vg.extent_size, 4 << 20);
        assert_eq!(vg.pvs[0].id, "aaaaaabbbbccccddddeeeeffffgggggg");
        assert_eq!(vg.pvs[0].pe_start, 1 << 20);
        assert_eq!(vg.lvs[0].name, "lv-x");
        assert!(vg.lvs[0].is_visible());
        assert_eq!(
            vg.lvs[0].segments[0].kind,
            SegmentKind::Striped {
                stripe_size: 0,
                stripes: vec![StripeArea {
                    pv: 0,
                    start_extent: 2
                }]
            }
        );
        let tree = parse_tree(&text).unwrap();
        assert_eq!(
            tree.str("description", "top").unwrap(),
            "a \"quoted\" \\ text"
        );
    }

    #[test]
    fn errors() {
        let e = VgMetadata::parse("vg0 {\nid = \"x\"\nseqno = \n}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("syntax error on line 4 near \"}\""), "{e}");
        let deep = "a {".repeat(100);
        let e = VgMetadata::parse(&deep).unwrap_err().to_string();
        assert!(e.contains("syntax error"), "{e}");
        let e = VgMetadata::parse("vg0 { id = \"x\" seqno = 1 extent_size = 0 }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("extent size of 0 sectors"), "{e}");
        let e = VgMetadata::parse("vg0 { x = 99999999999999999999999 }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("syntax error"), "{e}");
    }
}
