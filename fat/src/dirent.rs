//! 32-byte directory entries: the short (8.3) entry, the VFAT long-name entries in front of
//! it with their checksum, short-name generation as Linux's vfat does it, and FAT dates.

use vdisk_block::bytes::le16;
use vdisk_fs::Timestamp;

/// Bytes in one directory entry.
pub const DIR_ENTRY_SIZE: usize = 32;
/// DIR_Attr: read-only.
pub const ATTR_READ_ONLY: u8 = 0x01;
/// DIR_Attr: hidden.
pub const ATTR_HIDDEN: u8 = 0x02;
/// DIR_Attr: system.
pub const ATTR_SYSTEM: u8 = 0x04;
/// DIR_Attr: the volume label.
pub const ATTR_VOLUME_ID: u8 = 0x08;
/// DIR_Attr: a directory.
pub const ATTR_DIRECTORY: u8 = 0x10;
/// DIR_Attr: changed since the last backup.
pub const ATTR_ARCHIVE: u8 = 0x20;
/// DIR_Attr of a long-name entry (read-only, hidden, system and volume together).
pub const ATTR_LONG_NAME: u8 = 0x0F;
/// DIR_Name[0] of a deleted entry.
pub const DELETED: u8 = 0xE5;
/// DIR_NTRes bit: show the base name in lower case (Windows NT, and Linux's vfat).
pub const CASE_LOWER_BASE: u8 = 0x08;
/// DIR_NTRes bit: show the extension in lower case.
pub const CASE_LOWER_EXT: u8 = 0x10;
/// UTF-16 units in one long-name entry.
pub const LFN_CHARS: usize = 13;
/// The longest long name, in UTF-16 units (Linux's FAT_LFN_LEN).
pub const MAX_LFN: usize = 255;
/// Long-name entries of the longest name (255 / 13, rounded up).
pub const MAX_LFN_SLOTS: usize = 20;
/// LDIR_Ord bit marking the last (first stored) long-name entry.
pub const LAST_LONG_ENTRY: u8 = 0x40;

/// The parts of a short entry the engine uses (spec section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortEntry {
    /// DIR_Name: 8 + 3 bytes, space padded.
    pub name: [u8; 11],
    /// DIR_Attr.
    pub attr: u8,
    /// DIR_NTRes: the case bits.
    pub lcase: u8,
    /// DIR_CrtTimeTenth: hundredths of a second (0..=199) of the creation time.
    pub ctime_cs: u8,
    /// DIR_CrtTime.
    pub ctime: u16,
    /// DIR_CrtDate.
    pub cdate: u16,
    /// DIR_LstAccDate.
    pub adate: u16,
    /// DIR_FstClusHI << 16 | DIR_FstClusLO (the high half only on FAT32).
    pub cluster: u32,
    /// DIR_WrtTime.
    pub mtime: u16,
    /// DIR_WrtDate.
    pub mdate: u16,
    /// DIR_FileSize.
    pub size: u32,
}

impl ShortEntry {
    /// Decodes a 32-byte short entry; `fat32` says whether DIR_FstClusHI counts.
    pub fn parse(b: &[u8], fat32: bool) -> ShortEntry {
        let mut name = [0u8; 11];
        name.copy_from_slice(&b[..11]);
        let hi = if fat32 { u32::from(le16(b, 20)) } else { 0 };
        ShortEntry {
            name,
            attr: b[11],
            lcase: b[12],
            ctime_cs: b[13],
            ctime: le16(b, 14),
            cdate: le16(b, 16),
            adate: le16(b, 18),
            cluster: (hi << 16) | u32::from(le16(b, 26)),
            mtime: le16(b, 22),
            mdate: le16(b, 24),
            size: u32::from_le_bytes([b[28], b[29], b[30], b[31]]),
        }
    }

    /// Encodes the entry.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..11].copy_from_slice(&self.name);
        b[11] = self.attr;
        b[12] = self.lcase;
        b[13] = self.ctime_cs;
        b[14..16].copy_from_slice(&self.ctime.to_le_bytes());
        b[16..18].copy_from_slice(&self.cdate.to_le_bytes());
        b[18..20].copy_from_slice(&self.adate.to_le_bytes());
        b[20..22].copy_from_slice(&((self.cluster >> 16) as u16).to_le_bytes());
        b[22..24].copy_from_slice(&self.mtime.to_le_bytes());
        b[24..26].copy_from_slice(&self.mdate.to_le_bytes());
        b[26..28].copy_from_slice(&(self.cluster as u16).to_le_bytes());
        b[28..32].copy_from_slice(&self.size.to_le_bytes());
        b
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.attr & ATTR_DIRECTORY != 0
    }

    /// The name as Linux's vfat shows an entry without a long name (shortname=mixed: the
    /// stored case, or lower case where DIR_NTRes says so), in UTF-8.
    pub fn display_name(&self) -> Vec<u8> {
        let mut base: Vec<u8> = self.name[..8].to_vec();
        if base[0] == 0x05 {
            base[0] = DELETED;
        }
        while base.last() == Some(&b' ') {
            base.pop();
        }
        let mut ext: Vec<u8> = self.name[8..].to_vec();
        while ext.last() == Some(&b' ') {
            ext.pop();
        }
        let mut s = String::new();
        let push = |s: &mut String, bytes: &[u8], lower: bool| {
            for &c in bytes {
                let ch = cp437(c);
                if lower {
                    s.push(ch.to_ascii_lowercase());
                } else {
                    s.push(ch);
                }
            }
        };
        push(&mut s, &base, self.lcase & CASE_LOWER_BASE != 0);
        if !ext.is_empty() {
            s.push('.');
            push(&mut s, &ext, self.lcase & CASE_LOWER_EXT != 0);
        }
        s.into_bytes()
    }
}

/// The checksum a long-name entry carries of the short name it belongs to (spec 7.2).
pub fn lfn_checksum(name: &[u8; 11]) -> u8 {
    name.iter()
        .fold(0u8, |s, &c| (s >> 1).wrapping_add(s << 7).wrapping_add(c))
}

/// The long-name entries for `name` (UTF-16) in the order they are stored (last part first).
pub fn lfn_entries(name: &[u16], checksum: u8) -> Vec<[u8; 32]> {
    let n = name.len().div_ceil(LFN_CHARS);
    let mut out = Vec::with_capacity(n);
    for k in (1..=n).rev() {
        let mut b = [0u8; 32];
        b[0] = k as u8 | if k == n { LAST_LONG_ENTRY } else { 0 };
        b[11] = ATTR_LONG_NAME;
        b[13] = checksum;
        let start = (k - 1) * LFN_CHARS;
        for (j, &o) in LFN_OFFSETS.iter().enumerate() {
            let i = start + j;
            let u = match i.cmp(&name.len()) {
                std::cmp::Ordering::Less => name[i],
                std::cmp::Ordering::Equal => 0,
                std::cmp::Ordering::Greater => 0xFFFF,
            };
            b[o..o + 2].copy_from_slice(&u.to_le_bytes());
        }
        out.push(b);
    }
    out
}

/// Where the 13 UTF-16 units of a long-name entry sit (LDIR_Name1, LDIR_Name2, LDIR_Name3).
const LFN_OFFSETS: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

/// Collects the long-name entries in front of a short entry, checking their order and
/// checksum; a broken sequence is dropped (the short name is shown), as Linux does.
#[derive(Debug, Default)]
pub struct LfnBuilder {
    units: Vec<u16>,
    /// The LDIR_Ord expected next (0: no sequence in progress).
    expect: u8,
    checksum: u8,
    /// Slot index of the sequence's first entry.
    pub start: usize,
    valid: bool,
}

impl LfnBuilder {
    /// Feeds long-name entry `b` found at slot `slot`.
    pub fn push(&mut self, b: &[u8], slot: usize) {
        let ord = b[0];
        if ord & LAST_LONG_ENTRY != 0 {
            let n = ord & 0x1F;
            if n == 0 || usize::from(n) > MAX_LFN_SLOTS || b[12] != 0 {
                self.reset();
                return;
            }
            self.units = vec![0xFFFF; usize::from(n) * LFN_CHARS];
            self.expect = n;
            self.checksum = b[13];
            self.start = slot;
            self.valid = true;
        } else if !self.valid || self.expect == 0 || ord != self.expect || b[13] != self.checksum {
            self.reset();
            return;
        }
        let k = usize::from(self.expect - 1);
        for (j, &o) in LFN_OFFSETS.iter().enumerate() {
            self.units[k * LFN_CHARS + j] = le16(b, o);
        }
        self.expect -= 1;
    }

    /// Drops any sequence in progress.
    pub fn reset(&mut self) {
        self.valid = false;
        self.expect = 0;
        self.units.clear();
    }

    /// The long name (UTF-8) for short entry `name`, when a whole matching sequence precedes
    /// it; resets for the next entry.
    pub fn finish(&mut self, name: &[u8; 11]) -> Option<(Vec<u8>, usize)> {
        let ok = self.valid && self.expect == 0 && lfn_checksum(name) == self.checksum;
        let units = std::mem::take(&mut self.units);
        let start = self.start;
        self.reset();
        if !ok {
            return None;
        }
        let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
        if end == 0 {
            return None;
        }
        let s: String = char::decode_utf16(units[..end].iter().copied())
            .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect();
        Some((s.into_bytes(), start))
    }
}

/// True when `c` may not appear in a long name (Linux's vfat_bad_char).
fn bad_long_char(c: u16) -> bool {
    c < 0x20
        || matches!(
            c,
            0x2A | 0x3F | 0x3C | 0x3E | 0x7C | 0x22 | 0x3A | 0x2F | 0x5C
        )
}

/// Why a name cannot be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// Empty after trailing dots are dropped (ENOENT, as vfat answers).
    Empty,
    /// Not UTF-8, or holds a character FAT forbids (EINVAL).
    Invalid,
    /// Longer than 255 UTF-16 units (ENAMETOOLONG).
    TooLong,
    /// Its short name is taken, or every numeric and hex tail is (EEXIST).
    Exists,
}

/// The name as vfat stores and looks it up: trailing dots dropped (vfat_striptail_len).
pub fn strip_tail(name: &[u8]) -> &[u8] {
    let mut n = name.len();
    while n > 0 && name[n - 1] == b'.' {
        n -= 1;
    }
    &name[..n]
}

/// Checks a new name (after [`strip_tail`]) and gives its UTF-16 form.
pub fn long_name_units(name: &[u8]) -> Result<Vec<u16>, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let s = std::str::from_utf8(name).map_err(|_| NameError::Invalid)?;
    let u: Vec<u16> = s.encode_utf16().collect();
    if u.len() > MAX_LFN {
        return Err(NameError::TooLong);
    }
    if u.iter().any(|&c| bad_long_char(c)) {
        return Err(NameError::Invalid);
    }
    Ok(u)
}

/// Case-insensitive equality as vfat's lookups compare (ASCII letters fold: the utf8
/// character set folds no others).
pub fn names_equal(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[derive(Clone, Copy)]
struct Info {
    lower: bool,
    upper: bool,
    valid: bool,
}

/// One character of a short name, as vfat's to_shortname_char makes it: `None` for a
/// character that is skipped ('.' and ' ').
fn short_char(c: u16, info: &mut Info) -> Option<u8> {
    if c == u16::from(b'.') || c == u16::from(b' ') {
        info.valid = false;
        return None;
    }
    if matches!(c, 0x2B | 0x2C | 0x3B | 0x3D | 0x5B | 0x5D) {
        info.valid = false;
        return Some(b'_');
    }
    if c >= 0x80 {
        // Characters outside ASCII have no one-byte form we write (the kernel maps some of
        // them to code page 437; the long name keeps them either way).
        info.valid = false;
        return Some(b'_');
    }
    let b = c as u8;
    let up = b.to_ascii_uppercase();
    if up.is_ascii_alphabetic() {
        if up == b {
            info.lower = false;
        } else {
            info.upper = false;
        }
    }
    Some(up)
}

/// The short name for long name `name` (UTF-16, already checked) in a directory where
/// `taken` says whether a short name is in use, as Linux's vfat_create_shortname makes it
/// with the default options (shortname=mixed, numeric tails). Returns the 11 bytes and
/// whether a long name must be stored beside them. A name with nothing left for a short name
/// (only dots and spaces) is [`NameError::Invalid`], as vfat answers EINVAL.
pub fn make_short_name(
    name: &[u16],
    taken: &mut dyn FnMut(&[u8; 11]) -> bool,
    seed: u32,
) -> Result<([u8; 11], bool), NameError> {
    let len = name.len();
    let dot = u16::from(b'.');
    // The extension starts after the last dot, unless the name ends in it or only
    // skipped characters stand before it.
    let mut ext_start = None;
    let mut sz = len;
    if let Some(p) = name.iter().rposition(|&c| c == dot) {
        if p != len - 1 {
            let lead_skip = name[..p].iter().all(|&c| c == dot || c == u16::from(b' '));
            if !lead_skip {
                sz = p;
                ext_start = Some(p + 1);
            }
        }
    }
    let mut is_short = true;
    let mut base_info = Info {
        lower: true,
        upper: true,
        valid: true,
    };
    let mut ext_info = base_info;
    let mut base = Vec::with_capacity(8);
    let mut numtail_baselen = 6;
    let mut numtail2_baselen = 2;
    for (i, &c) in name[..sz].iter().enumerate() {
        let Some(b) = short_char(c, &mut base_info) else {
            continue;
        };
        if base.len() < 2 && base.len() + 1 > 2 {
            numtail2_baselen = base.len();
        }
        if base.len() < 6 && base.len() + 1 > 6 {
            numtail_baselen = base.len();
        }
        base.push(b);
        if base.len() >= 8 {
            if i + 1 < sz {
                is_short = false;
            }
            break;
        }
    }
    if base.is_empty() {
        return Err(NameError::Invalid);
    }
    let mut ext = Vec::with_capacity(3);
    if let Some(es) = ext_start {
        for (i, &c) in name[es..].iter().enumerate() {
            let Some(b) = short_char(c, &mut ext_info) else {
                continue;
            };
            ext.push(b);
            if ext.len() >= 3 {
                if es + i + 1 != len {
                    is_short = false;
                }
                break;
            }
        }
    }
    if base[0] == DELETED {
        base[0] = 0x05;
    }
    let mut res = [b' '; 11];
    res[..base.len()].copy_from_slice(&base);
    res[8..8 + ext.len()].copy_from_slice(&ext);
    if is_short && base_info.valid && ext_info.valid {
        if taken(&res) {
            return Err(NameError::Exists);
        }
        // shortname=mixed creates as Windows 95 does: no long name only when all upper case.
        return Ok((res, !(base_info.upper && ext_info.upper)));
    }
    let mut baselen = base.len();
    if baselen > 6 {
        baselen = numtail_baselen;
        res[7] = b' ';
    }
    res[baselen] = b'~';
    for i in 1..10u8 {
        res[baselen + 1] = b'0' + i;
        if !taken(&res) {
            return Ok((res, true));
        }
    }
    // Nine tails taken: Linux switches to a hex tail from the clock; we use `seed`.
    let mut x = seed;
    let sz = (seed >> 16) & 7;
    if baselen > 2 {
        baselen = numtail2_baselen;
        res[7] = b' ';
    }
    res[baselen + 4] = b'~';
    res[baselen + 5] = b'1' + sz as u8;
    for _ in 0..0x10000 {
        let hex = format!("{:04X}", x & 0xFFFF);
        res[baselen..baselen + 4].copy_from_slice(hex.as_bytes());
        if !taken(&res) {
            return Ok((res, true));
        }
        x = x.wrapping_sub(11);
    }
    Err(NameError::Exists)
}

/// The first day FAT can store: 1980-01-01 00:00:00 UTC.
pub const FAT_EPOCH: i64 = 315_532_800;
/// The last second FAT can store: 2107-12-31 23:59:58 UTC.
pub const FAT_END: i64 = 4_354_819_198;

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A FAT date and time as a timestamp. FAT stores local time without a zone; like Linux's
/// vfat mounted with tz=UTC (and by default on a host whose kernel time zone is UTC, which
/// is what the kernel's sys_tz is unless userspace sets it), the fields are read as UTC.
/// Out-of-range fields are clamped the way the kernel's fat_time_fat2unix treats them.
pub fn fat_to_unix(time: u16, date: u16, cs: u8) -> Timestamp {
    let year = 1980 + i64::from(date >> 9);
    let month = i64::from((date >> 5) & 0xF).clamp(1, 12);
    let day = i64::from(date & 0x1F).max(1);
    let secs = days_from_civil(year, month, day) * 86_400
        + i64::from(time >> 11) * 3600
        + i64::from((time >> 5) & 0x3F) * 60
        + i64::from(time & 0x1F) * 2;
    let cs = u32::from(cs.min(199));
    Timestamp {
        secs: secs + i64::from(cs / 100),
        nanos: (cs % 100) * 10_000_000,
    }
}

/// A timestamp as FAT (time, date, hundredths), clamped to what FAT can hold (1980 to 2107)
/// as the kernel's fat_time_unix2fat clamps.
pub fn unix_to_fat(t: Timestamp) -> (u16, u16, u8) {
    if t.secs < FAT_EPOCH {
        return (0, (1 << 5) | 1, 0);
    }
    if t.secs > FAT_END {
        return (
            (23 << 11) | (59 << 5) | 29,
            (127 << 9) | (12 << 5) | 31,
            199,
        );
    }
    let days = t.secs.div_euclid(86_400);
    let rem = t.secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    let time = ((h << 11) | (mi << 5) | (s / 2)) as u16;
    let date = (((y - 1980) << 9) | (m << 5) | d) as u16;
    let cs = ((s % 2) * 100) as u8 + (t.nanos / 10_000_000) as u8;
    (time, date, cs)
}

/// Code page 437, the short names' character set on PCs: bytes 0x80..=0xFF.
const CP437_HIGH: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}";

fn cp437(b: u8) -> char {
    if b < 0x80 {
        char::from(b)
    } else {
        CP437_HIGH.chars().nth(usize::from(b - 0x80)).unwrap_or('?')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(name: &str, taken: &[&str]) -> (String, bool) {
        let u: Vec<u16> = name.encode_utf16().collect();
        let taken: Vec<[u8; 11]> = taken
            .iter()
            .map(|t| {
                let mut a = [0u8; 11];
                a.copy_from_slice(t.as_bytes());
                a
            })
            .collect();
        let (n, lfn) = make_short_name(&u, &mut |n| taken.contains(n), 0).unwrap();
        assert_eq!(
            make_short_name(&[0x20, 0x2E], &mut |_| false, 0),
            Err(NameError::Invalid)
        );
        (String::from_utf8(n.to_vec()).unwrap(), lfn)
    }

    #[test]
    fn short_names_as_linux_makes_them() {
        assert_eq!(short("README.TXT", &[]), ("README  TXT".into(), false));
        assert_eq!(short("readme.txt", &[]), ("README  TXT".into(), true));
        assert_eq!(short("grub.cfg", &[]), ("GRUB    CFG".into(), true));
        assert_eq!(
            short("Long File Name.txt", &[]),
            ("LONGFI~1TXT".into(), true)
        );
        assert_eq!(
            short("Long File Name.txt", &["LONGFI~1TXT", "LONGFI~2TXT"]),
            ("LONGFI~3TXT".into(), true)
        );
        assert_eq!(short(".bashrc", &[]), ("BASHRC~1   ".into(), true));
        assert_eq!(short("a+b.tar.gz", &[]), ("A_BTAR~1GZ ".into(), true));
        assert_eq!(short("123", &[]), ("123        ".into(), false));
        let all: Vec<String> = (1..10).map(|i| format!("LONGFI~{i}TXT")).collect();
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let (n, _) = short("Long File Name.txt", &refs);
        assert!(n.starts_with("LO") && n.contains('~') && !refs.contains(&n.as_str()));
    }

    #[test]
    fn checksum_and_lfn_round_trip() {
        let name: Vec<u16> = "A long name for testing.txt".encode_utf16().collect();
        let sn = *b"ALONGN~1TXT";
        let ck = lfn_checksum(&sn);
        let ents = lfn_entries(&name, ck);
        assert_eq!(ents.len(), 3);
        let mut b = LfnBuilder::default();
        for (i, e) in ents.iter().enumerate() {
            b.push(e, i);
        }
        let (got, start) = b.finish(&sn).unwrap();
        assert_eq!(got, b"A long name for testing.txt");
        assert_eq!(start, 0);
        // A wrong checksum drops the long name.
        let mut b = LfnBuilder::default();
        for (i, e) in ents.iter().enumerate() {
            b.push(e, i);
        }
        assert!(b.finish(b"ALONGN~2TXT").is_none());
        // An entry numbered 0 after a whole sequence breaks it (and must not underflow).
        let mut b = LfnBuilder::default();
        for (i, e) in ents.iter().enumerate() {
            b.push(e, i);
        }
        let mut zero = ents[2];
        zero[0] = 0;
        b.push(&zero, 3);
        assert!(b.finish(&sn).is_none());
    }

    #[test]
    fn times_round_trip_and_clamp() {
        let t = Timestamp {
            secs: 1_700_000_001,
            nanos: 0,
        };
        let (tm, d, cs) = unix_to_fat(t);
        assert_eq!(fat_to_unix(tm, d, cs), t);
        assert_eq!(fat_to_unix(tm, d, 0).secs, 1_700_000_000);
        let (tm, d, _) = unix_to_fat(Timestamp { secs: 0, nanos: 0 });
        assert_eq!(fat_to_unix(tm, d, 0).secs, FAT_EPOCH);
        let (tm, d, _) = unix_to_fat(Timestamp {
            secs: i64::MAX,
            nanos: 0,
        });
        assert_eq!(fat_to_unix(tm, d, 0).secs, FAT_END);
    }

    #[test]
    fn display_names() {
        let mut e = ShortEntry::parse(&[0u8; 32], false);
        e.name = *b"README  TXT";
        assert_eq!(e.display_name(), b"README.TXT");
        e.lcase = CASE_LOWER_BASE;
        assert_eq!(e.display_name(), b"readme.TXT");
        e.name = *b"\x05ABC       ";
        e.lcase = 0;
        assert_eq!(e.display_name(), "σABC".as_bytes());
    }
}
