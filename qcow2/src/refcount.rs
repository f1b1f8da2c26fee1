//! Refcount table and refcount blocks: how many references each host cluster has.
//!
//! "qcow2 manages the allocation of host clusters by maintaining a reference count for each
//! host cluster." A two-level structure: the refcount table (its offset and size in clusters
//! are in the header) points to refcount blocks, each one cluster of `refcount_bits`-wide
//! big-endian entries. Entries narrower than a byte are packed starting at the least
//! significant bit, as qemu packs them.

use vdisk_block::{BlockDevice, Error, Result};

use crate::header::Header;
use crate::l2::decode_table;
use crate::util::read_vec;

/// "Refcount table entry: bits 9-63: bits 9-63 of the offset into the image file at which the
/// refcount block starts." Bits 0-8 are reserved.
pub(crate) const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;

/// Reads entry `index` of a refcount block.
pub(crate) fn get_refcount(block: &[u8], index: u64, refcount_order: u32) -> u64 {
    let bits = 1u64 << refcount_order;
    match refcount_order {
        0..=2 => {
            let per_byte = 8 / bits;
            let byte = block.get((index / per_byte) as usize).copied().unwrap_or(0);
            let shift = (index % per_byte) * bits;
            (u64::from(byte) >> shift) & ((1 << bits) - 1)
        }
        _ => {
            let width = (bits / 8) as usize;
            let start = index as usize * width;
            block.get(start..start + width).map_or(0, |b| {
                b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
            })
        }
    }
}

/// Writes entry `index` of a refcount block; `value` must fit in `1 << refcount_order` bits.
pub(crate) fn set_refcount(block: &mut [u8], index: u64, refcount_order: u32, value: u64) {
    let bits = 1u64 << refcount_order;
    match refcount_order {
        0..=2 => {
            let per_byte = 8 / bits;
            let shift = (index % per_byte) * bits;
            let mask = (((1u64 << bits) - 1) << shift) as u8;
            if let Some(b) = block.get_mut((index / per_byte) as usize) {
                *b = (*b & !mask) | (((value << shift) as u8) & mask);
            }
        }
        _ => {
            let width = (bits / 8) as usize;
            let start = index as usize * width;
            if let Some(b) = block.get_mut(start..start + width) {
                b.copy_from_slice(&value.to_be_bytes()[8 - width..]);
            }
        }
    }
}

/// Counts the host clusters `0..end_cluster` whose refcount is not zero. Reads the refcount
/// table and each refcount block once; a refcount block past the end of the file is an error.
pub(crate) fn count_referenced(
    file: &dyn BlockDevice,
    header: &Header,
    end_cluster: u64,
) -> Result<u64> {
    let cluster_bits = header.cluster_bits;
    let cluster_size = 1u64 << cluster_bits;
    let table_len = u64::from(header.refcount_table_clusters) << cluster_bits;
    let table = decode_table(&read_vec(
        file,
        header.refcount_table_offset,
        table_len,
        "refcount table",
    )?);
    // Entries per refcount block: cluster_size * 8 / refcount_bits.
    let entries_bits = cluster_bits + 3 - header.refcount_order;
    let per_block = 1u64 << entries_bits;
    let mut count = 0u64;
    let mut cluster = 0u64;
    while cluster < end_cluster {
        let t = cluster >> entries_bits;
        let Some(&entry) = usize::try_from(t).ok().and_then(|t| table.get(t)) else {
            break;
        };
        let block_end = (t + 1).saturating_mul(per_block).min(end_cluster);
        let offset = entry & REFT_OFFSET_MASK;
        if offset != 0 {
            if offset & (cluster_size - 1) != 0 {
                return Err(Error::corrupt_at(
                    offset,
                    format!("refcount block offset {offset:#x} is not cluster aligned"),
                ));
            }
            let block = read_vec(file, offset, cluster_size, "refcount block")?;
            count += (cluster..block_end)
                .filter(|&c| get_refcount(&block, c - t * per_block, header.refcount_order) != 0)
                .count() as u64;
        }
        cluster = block_end;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_entries_lsb_first() {
        // refcount_bits = 1: bit i of byte 0 is entry i.
        assert_eq!(get_refcount(&[0b0000_0101], 0, 0), 1);
        assert_eq!(get_refcount(&[0b0000_0101], 1, 0), 0);
        assert_eq!(get_refcount(&[0b0000_0101], 2, 0), 1);
        // refcount_bits = 4: low nibble first.
        assert_eq!(get_refcount(&[0x3a], 0, 2), 0xa);
        assert_eq!(get_refcount(&[0x3a], 1, 2), 0x3);
        // refcount_bits = 16, 64: big-endian.
        assert_eq!(get_refcount(&[0, 1, 0x12, 0x34], 1, 4), 0x1234);
        assert_eq!(get_refcount(&[0, 0, 0, 0, 0, 0, 1, 2], 0, 6), 0x102);
        // Past the block: zero, never a panic.
        assert_eq!(get_refcount(&[1], 99, 4), 0);
        for order in 0..=6 {
            let mut b = vec![0u8; 64];
            let max = if order == 6 {
                u64::MAX
            } else {
                (1u64 << (1 << order)) - 1
            };
            set_refcount(&mut b, 3, order, max);
            set_refcount(&mut b, 4, order, 1);
            assert_eq!(get_refcount(&b, 3, order), max);
            assert_eq!(get_refcount(&b, 4, order), 1);
            assert_eq!(get_refcount(&b, 2, order), 0);
        }
    }
}
