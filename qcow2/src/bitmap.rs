//! The bitmap directory ("Bitmap directory" in qcow2.rst): "Each bitmap saved in the image is
//! described in a bitmap directory entry."
//!
//! We parse it far enough to list the bitmaps (what `qemu-img info` prints); the bitmap tables
//! and data are not read.

use vdisk_block::{BlockDevice, Error, Result};

use crate::extension::BitmapsExtension;
use crate::util::{be16, be32, be64, read_vec};

/// "QEMU currently doesn't support values greater than 1023" for the name size.
pub const MAX_BITMAP_NAME: u16 = 1023;

/// Extra data is undefined by the spec; qemu refuses more than this much per entry.
pub const MAX_BITMAP_EXTRA_DATA: u32 = 1024;

/// The fixed part of a bitmap directory entry.
const ENTRY_HEADER: usize = 24;

/// "in_use: The bitmap was not saved correctly and may be inconsistent."
pub const FLAG_IN_USE: u32 = 1 << 0;
/// "auto: The bitmap must reflect all changes of the virtual disk".
pub const FLAG_AUTO: u32 = 1 << 1;
/// "extra_data_compatible: ... If it is set, the bitmap may be used as expected".
pub const FLAG_EXTRA_DATA_COMPATIBLE: u32 = 1 << 2;

/// One bitmap directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    /// "The name of the bitmap".
    pub name: String,
    /// "Offset into the image file at which the bitmap table ... for the bitmap starts."
    pub bitmap_table_offset: u64,
    /// "Number of entries in the bitmap table of the bitmap."
    pub bitmap_table_size: u32,
    /// "flags": [`FLAG_IN_USE`], [`FLAG_AUTO`], [`FLAG_EXTRA_DATA_COMPATIBLE`].
    pub flags: u32,
    /// "type ... 1: Dirty tracking bitmap".
    pub bitmap_type: u8,
    /// "granularity = 1 << granularity_bits".
    pub granularity_bits: u8,
}

impl Bitmap {
    /// "A bitmap's granularity is how many bytes of the image accounts for one bit of the
    /// bitmap."
    pub fn granularity(&self) -> u64 {
        1u64.checked_shl(u32::from(self.granularity_bits))
            .unwrap_or(0)
    }

    /// The flag names qemu-img prints ("in-use", "auto").
    pub fn flag_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.flags & FLAG_IN_USE != 0 {
            v.push("in-use");
        }
        if self.flags & FLAG_AUTO != 0 {
            v.push("auto");
        }
        v
    }
}

/// Reads and parses the bitmap directory that `ext` points at.
pub fn read_directory(file: &dyn BlockDevice, ext: &BitmapsExtension) -> Result<Vec<Bitmap>> {
    let dir = read_vec(
        file,
        ext.bitmap_directory_offset,
        ext.bitmap_directory_size,
        "bitmap directory",
    )?;
    let mut at = 0usize;
    let mut out = Vec::new();
    for _ in 0..ext.nb_bitmaps {
        let here = ext.bitmap_directory_offset.saturating_add(at as u64);
        let short = || {
            Error::corrupt_at(
                here,
                "bitmap directory entry crosses the end of the directory",
            )
        };
        let head = at
            .checked_add(ENTRY_HEADER)
            .and_then(|e| dir.get(at..e))
            .ok_or_else(short)?;
        let name_size = be16(head, 18);
        let extra_data_size = be32(head, 20);
        if name_size == 0 || name_size > MAX_BITMAP_NAME {
            return Err(Error::corrupt_at(
                here,
                format!("bitmap name size {name_size} is invalid"),
            ));
        }
        if extra_data_size > MAX_BITMAP_EXTRA_DATA {
            return Err(Error::corrupt_at(
                here,
                format!("bitmap extra data of {extra_data_size} bytes is too large"),
            ));
        }
        let name_start = at + ENTRY_HEADER + extra_data_size as usize;
        let name_end = name_start + name_size as usize;
        let name = dir.get(name_start..name_end).ok_or_else(short)?;
        out.push(Bitmap {
            name: String::from_utf8_lossy(name).into_owned(),
            bitmap_table_offset: be64(head, 0),
            bitmap_table_size: be32(head, 8),
            flags: be32(head, 12),
            bitmap_type: head[16],
            granularity_bits: head[17],
        });
        // "Padding to round up the bitmap directory entry size to the next multiple of 8."
        at = name_end.next_multiple_of(8);
    }
    Ok(out)
}
