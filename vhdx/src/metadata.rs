//! The metadata region: a 64 KiB table of items, then the items (file parameters, virtual
//! disk size, page 83 data, sector sizes and, for a differencing disk, the parent locator).

use vdisk_block::bytes::{le16, le32, le64, put};
use vdisk_block::{Error, Result};

use crate::guid::{self, Guid};

/// "metadata".
pub const SIGNATURE: u64 = 0x6174_6164_6174_656d;
/// Size of the table at the start of the region.
pub const TABLE_SIZE: usize = 64 * 1024;
/// The spec's limit on entries.
pub const MAX_ENTRIES: u16 = 2047;
/// The spec's limit on one item's length.
pub const MAX_ITEM_LENGTH: u32 = 1024 * 1024;
/// Entry flag: a user item.
pub const IS_USER: u32 = 1;
/// Entry flag: an item of the virtual disk (not of the file).
pub const IS_VIRTUAL_DISK: u32 = 2;
/// Entry flag: the parser must understand it to open the file.
pub const IS_REQUIRED: u32 = 4;
/// File parameters flag: "LeaveBlocksAllocated" (a fixed disk).
pub const LEAVE_BLOCKS_ALLOCATED: u32 = 1;
/// File parameters flag: "HasParent" (a differencing disk).
pub const HAS_PARENT: u32 = 2;
/// Smallest block size.
pub const MIN_BLOCK_SIZE: u32 = 1 << 20;
/// Largest block size.
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Largest virtual disk (64 TiB).
pub const MAX_DISK_SIZE: u64 = 64 << 40;
/// The most key/value pairs of a parent locator we read.
pub const MAX_LOCATOR_ENTRIES: u16 = 256;

/// One table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// "ItemId".
    pub item_id: Guid,
    /// "Offset" from the start of the region.
    pub offset: u32,
    /// "Length" of the item.
    pub length: u32,
    /// The flags (user, virtual disk, required).
    pub flags: u32,
}

/// The items vdisk understands, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// "BlockSize": bytes of each payload block, a power of two from 1 to 256 MiB.
    pub block_size: u32,
    /// "LeaveBlocksAllocated".
    pub leave_blocks_allocated: bool,
    /// "HasParent".
    pub has_parent: bool,
    /// "VirtualDiskSize".
    pub virtual_disk_size: u64,
    /// "Page83Data".
    pub page_83_data: Guid,
    /// "LogicalSectorSize": 512 or 4096.
    pub logical_sector_size: u32,
    /// "PhysicalSectorSize": 512 or 4096.
    pub physical_sector_size: u32,
    /// The parent locator, for a differencing disk.
    pub parent_locator: Option<ParentLocator>,
}

/// A parent locator: its type and its key/value pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLocator {
    /// "LocatorType".
    pub locator_type: Guid,
    /// The pairs, in order (keys such as `parent_linkage`, `relative_path`,
    /// `absolute_win32_path`).
    pub entries: Vec<(String, String)>,
}

impl ParentLocator {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn parse(b: &[u8]) -> Result<ParentLocator> {
        if b.len() < 20 {
            return Err(Error::corrupt("the VHDX parent locator is too short"));
        }
        let count = le16(b, 18);
        if count > MAX_LOCATOR_ENTRIES {
            return Err(Error::corrupt(format!(
                "the VHDX parent locator has {count} entries, more than {MAX_LOCATOR_ENTRIES}"
            )));
        }
        let text = |off: u32, len: u16| -> Result<String> {
            let (off, len) = (off as usize, len as usize);
            let s = b
                .get(off..off + len)
                .filter(|_| len % 2 == 0)
                .ok_or_else(|| {
                    Error::corrupt("a VHDX parent locator entry lies outside the locator")
                })?;
            let units: Vec<u16> = s
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units)
                .map_err(|_| Error::corrupt("a VHDX parent locator entry is not UTF-16"))
        };
        let mut entries = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let o = 20 + 12 * i;
            if o + 12 > b.len() {
                return Err(Error::corrupt(
                    "the VHDX parent locator's entries run past its end",
                ));
            }
            let k = text(le32(b, o), le16(b, o + 8))?;
            let v = text(le32(b, o + 4), le16(b, o + 10))?;
            entries.push((k, v));
        }
        Ok(ParentLocator {
            locator_type: Guid::from_slice(b, 0),
            entries,
        })
    }

    /// The item's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.entries.len();
        let mut b = vec![0u8; 20 + 12 * n];
        put(&mut b, 0, self.locator_type.0);
        put(&mut b, 18, (n as u16).to_le_bytes());
        for (i, (k, v)) in self.entries.iter().enumerate() {
            let mut put_text = |s: &str| -> (u32, u16) {
                let off = b.len() as u32;
                for u in s.encode_utf16() {
                    b.extend_from_slice(&u.to_le_bytes());
                }
                (off, (b.len() as u32 - off) as u16)
            };
            let (ko, kl) = put_text(k);
            let (vo, vl) = put_text(v);
            let o = 20 + 12 * i;
            put(&mut b, o, ko.to_le_bytes());
            put(&mut b, o + 4, vo.to_le_bytes());
            put(&mut b, o + 8, kl.to_le_bytes());
            put(&mut b, o + 10, vl.to_le_bytes());
        }
        b
    }
}

/// Parses the table (the region's first 64 KiB) into its entries.
pub fn parse_table(b: &[u8], region_offset: u64) -> Result<Vec<Entry>> {
    if b.len() < TABLE_SIZE || le64(b, 0) != SIGNATURE {
        return Err(Error::corrupt_at(
            region_offset,
            "the VHDX metadata table has a bad signature",
        ));
    }
    let count = le16(b, 10);
    if count > MAX_ENTRIES {
        return Err(Error::corrupt_at(
            region_offset,
            format!("the VHDX metadata table has {count} entries, more than {MAX_ENTRIES}"),
        ));
    }
    Ok((0..count as usize)
        .map(|i| {
            let o = 32 + 32 * i;
            Entry {
                item_id: Guid::from_slice(b, o),
                offset: le32(b, o + 16),
                length: le32(b, o + 20),
                flags: le32(b, o + 24),
            }
        })
        .collect())
}

/// Finds and validates the items. `item(entry)` returns the item's bytes (the caller has
/// checked nothing; this function checks the entry lies inside a region of `region_len`).
pub fn parse(
    entries: &[Entry],
    region_len: u32,
    mut item: impl FnMut(&Entry) -> Result<Vec<u8>>,
) -> Result<Metadata> {
    let known = [
        guid::FILE_PARAMETERS,
        guid::VIRTUAL_DISK_SIZE,
        guid::PAGE_83_DATA,
        guid::LOGICAL_SECTOR_SIZE,
        guid::PHYSICAL_SECTOR_SIZE,
        guid::PARENT_LOCATOR,
    ];
    let mut found: [Option<Entry>; 6] = [None; 6];
    for e in entries {
        match known.iter().position(|g| *g == e.item_id) {
            Some(i) => {
                if found[i].is_some() {
                    return Err(Error::corrupt(format!(
                        "the VHDX metadata table lists item {} twice",
                        e.item_id
                    )));
                }
                if e.length > MAX_ITEM_LENGTH
                    || u64::from(e.offset) + u64::from(e.length) > u64::from(region_len)
                    || (e.length > 0 && (e.offset as usize) < TABLE_SIZE)
                {
                    return Err(Error::corrupt(format!(
                        "the VHDX metadata item {} ({} bytes at {:#x}) lies outside the metadata region",
                        e.item_id, e.length, e.offset
                    )));
                }
                found[i] = Some(*e);
            }
            None if e.flags & IS_REQUIRED != 0 => {
                return Err(Error::unsupported(format!(
                    "the VHDX file requires metadata item {}, which vdisk does not know",
                    e.item_id
                )))
            }
            None => {}
        }
    }
    let names = [
        "file parameters",
        "virtual disk size",
        "page 83 data",
        "logical sector size",
        "physical sector size",
    ];
    let mut bytes: Vec<Vec<u8>> = Vec::with_capacity(5);
    for (i, name) in names.iter().enumerate() {
        let e = found[i]
            .ok_or_else(|| Error::corrupt(format!("the VHDX metadata has no {name} item")))?;
        let b = item(&e)?;
        let need = [8, 8, 16, 4, 4][i];
        if b.len() < need {
            return Err(Error::corrupt(format!(
                "the VHDX {name} item is {} bytes, less than {need}",
                b.len()
            )));
        }
        bytes.push(b);
    }
    let block_size = le32(&bytes[0], 0);
    let flags = le32(&bytes[0], 4);
    let md = Metadata {
        block_size,
        leave_blocks_allocated: flags & LEAVE_BLOCKS_ALLOCATED != 0,
        has_parent: flags & HAS_PARENT != 0,
        virtual_disk_size: le64(&bytes[1], 0),
        page_83_data: Guid::from_slice(&bytes[2], 0),
        logical_sector_size: le32(&bytes[3], 0),
        physical_sector_size: le32(&bytes[4], 0),
        parent_locator: None,
    };
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(Error::corrupt(format!(
            "the VHDX block size {block_size} is not a power of two from 1 MiB to 256 MiB"
        )));
    }
    for (what, v) in [
        ("logical", md.logical_sector_size),
        ("physical", md.physical_sector_size),
    ] {
        if v != 512 && v != 4096 {
            return Err(Error::corrupt(format!(
                "the VHDX {what} sector size {v} is neither 512 nor 4096"
            )));
        }
    }
    if md.virtual_disk_size > MAX_DISK_SIZE
        || md.virtual_disk_size % u64::from(md.logical_sector_size) != 0
    {
        return Err(Error::corrupt(format!(
            "the VHDX virtual disk size {} is not a multiple of the sector size up to 64 TiB",
            md.virtual_disk_size
        )));
    }
    let parent_locator = match (md.has_parent, found[5]) {
        (false, _) => None,
        (true, None) => {
            return Err(Error::corrupt(
                "the VHDX file has a parent but no parent locator",
            ))
        }
        (true, Some(e)) => Some(ParentLocator::parse(&item(&e)?)?),
    };
    Ok(Metadata {
        parent_locator,
        ..md
    })
}

/// The metadata region's first 64 KiB plus the items, as qemu lays them out: the table, then
/// the items back to back from 64 KiB (file parameters, size, page 83, logical and physical
/// sector size, and the parent locator when there is one).
pub fn region_bytes(md: &Metadata) -> Vec<u8> {
    let mut table = vec![0u8; TABLE_SIZE];
    let mut items: Vec<u8> = Vec::new();
    let mut flags = 0;
    if md.leave_blocks_allocated {
        flags |= LEAVE_BLOCKS_ALLOCATED;
    }
    if md.has_parent {
        flags |= HAS_PARENT;
    }
    let mut fp = md.block_size.to_le_bytes().to_vec();
    fp.extend_from_slice(&u32::to_le_bytes(flags));
    let mut list: Vec<(Guid, Vec<u8>, u32)> = vec![
        (guid::FILE_PARAMETERS, fp, IS_REQUIRED),
        (
            guid::VIRTUAL_DISK_SIZE,
            md.virtual_disk_size.to_le_bytes().to_vec(),
            IS_REQUIRED | IS_VIRTUAL_DISK,
        ),
        (
            guid::PAGE_83_DATA,
            md.page_83_data.0.to_vec(),
            IS_REQUIRED | IS_VIRTUAL_DISK,
        ),
        (
            guid::LOGICAL_SECTOR_SIZE,
            md.logical_sector_size.to_le_bytes().to_vec(),
            IS_REQUIRED | IS_VIRTUAL_DISK,
        ),
        (
            guid::PHYSICAL_SECTOR_SIZE,
            md.physical_sector_size.to_le_bytes().to_vec(),
            IS_REQUIRED | IS_VIRTUAL_DISK,
        ),
    ];
    if let Some(pl) = &md.parent_locator {
        list.push((guid::PARENT_LOCATOR, pl.to_bytes(), IS_REQUIRED));
    }
    put(&mut table, 0, SIGNATURE.to_le_bytes());
    put(&mut table, 10, (list.len() as u16).to_le_bytes());
    for (i, (g, b, f)) in list.iter().enumerate() {
        let o = 32 + 32 * i;
        put(&mut table, o, g.0);
        put(
            &mut table,
            o + 16,
            ((TABLE_SIZE + items.len()) as u32).to_le_bytes(),
        );
        put(&mut table, o + 20, (b.len() as u32).to_le_bytes());
        put(&mut table, o + 24, f.to_le_bytes());
        items.extend_from_slice(b);
    }
    table.extend_from_slice(&items);
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(parent: bool) -> Metadata {
        Metadata {
            block_size: 8 << 20,
            leave_blocks_allocated: false,
            has_parent: parent,
            virtual_disk_size: 100 << 20,
            page_83_data: Guid([3; 16]),
            logical_sector_size: 512,
            physical_sector_size: 4096,
            parent_locator: parent.then(|| ParentLocator {
                locator_type: guid::PARENT_TYPE_VHDX,
                entries: vec![
                    ("parent_linkage".into(), Guid([9; 16]).to_string()),
                    ("relative_path".into(), ".\\base.vhdx".into()),
                ],
            }),
        }
    }

    fn reparse(b: &[u8]) -> Result<Metadata> {
        let entries = parse_table(b, 0)?;
        parse(&entries, 1 << 20, |e| {
            Ok(b[e.offset as usize..(e.offset + e.length) as usize].to_vec())
        })
    }

    #[test]
    fn roundtrip() {
        for parent in [false, true] {
            let md = sample(parent);
            assert_eq!(reparse(&region_bytes(&md)).unwrap(), md);
        }
    }

    #[test]
    fn bad_items_are_named() {
        let mut b = region_bytes(&sample(false));
        // Block size 3 MiB.
        put(&mut b, TABLE_SIZE, (3u32 << 20).to_le_bytes());
        let e = reparse(&b).unwrap_err().to_string();
        assert!(
            e.contains("block size 3145728 is not a power of two"),
            "{e}"
        );
        let mut b = region_bytes(&sample(false));
        // The size item's offset points into the table.
        put(&mut b, 32 + 32 + 16, 100u32.to_le_bytes());
        let e = reparse(&b).unwrap_err().to_string();
        assert!(e.contains("lies outside the metadata region"), "{e}");
    }
}
