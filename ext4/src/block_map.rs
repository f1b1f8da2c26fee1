//! Direct/indirect block addressing of ext2 and ext3 (files without EXT4_EXTENTS_FL):
//! `i_block[0..12]` map the first twelve file blocks, `i_block[12]` names a block of pointers,
//! `i_block[13]` a block of pointers to pointer blocks, `i_block[14]` one level more. A zero
//! pointer is a hole at whatever level it appears.

use std::sync::Arc;

use vdisk_block::{Error, Result};

use super::bytes::le32;
use super::Run;

/// Number of direct pointers in `i_block`.
pub const EXT4_NDIR_BLOCKS: u64 = 12;

/// Maps file block `logical` of a block-mapped inode. `ptrs` is the number of pointers per
/// block (block size / 4); `read` fetches a pointer block by number. The run returned never
/// extends past the pointer block that describes `logical`, so every call reads at most three
/// pointer blocks.
pub fn lookup(
    i_block: &[u8; 60],
    logical: u64,
    ptrs: u64,
    blocks_count: u64,
    read: &mut dyn FnMut(u64) -> Result<Arc<[u8]>>,
) -> Result<Run> {
    let check = |b: u64, what: &str| -> Result<u64> {
        if b >= blocks_count {
            Err(Error::corrupt(format!(
                "{what} points to block {b} outside the filesystem"
            )))
        } else {
            Ok(b)
        }
    };
    if logical < EXT4_NDIR_BLOCKS {
        let ptrs_here: Vec<u64> = (0..EXT4_NDIR_BLOCKS as usize)
            .map(|i| u64::from(le32(i_block, 4 * i)))
            .collect();
        return run_in(&ptrs_here, logical as usize, &check);
    }
    // Which tree (single, double, triple) and the index inside it.
    let mut rel = logical - EXT4_NDIR_BLOCKS;
    let mut span = ptrs; // file blocks covered by one tree of this level
    for level in 1..=3u32 {
        if rel < span {
            let top = u64::from(le32(i_block, 4 * (11 + level as usize)));
            return descend(top, level, rel, span, ptrs, &check, read);
        }
        rel -= span;
        span = match span.checked_mul(ptrs) {
            Some(s) => s,
            None => break,
        };
    }
    // Past the triple-indirect range: nothing can be mapped there.
    Ok(Run::Zero { len: u64::MAX / 2 })
}

fn descend(
    mut block: u64,
    level: u32,
    mut rel: u64,
    mut span: u64,
    ptrs: u64,
    check: &dyn Fn(u64, &str) -> Result<u64>,
    read: &mut dyn FnMut(u64) -> Result<Arc<[u8]>>,
) -> Result<Run> {
    for depth in (1..=level).rev() {
        if block == 0 {
            return Ok(Run::Zero { len: span - rel });
        }
        check(block, "indirect block pointer")?;
        let data = read(block)?;
        let per_child = span / ptrs;
        if depth == 1 {
            let v: Vec<u64> = (0..ptrs as usize)
                .map(|i| u64::from(le32(&data, 4 * i)))
                .collect();
            return run_in(&v, rel as usize, check);
        }
        let i = rel / per_child;
        block = u64::from(le32(&data, 4 * i as usize));
        rel %= per_child;
        span = per_child;
    }
    Ok(Run::Zero { len: 1 })
}

/// The run starting at index `i` of a list of leaf pointers: consecutive physical blocks, or
/// consecutive holes.
fn run_in(v: &[u64], i: usize, check: &dyn Fn(u64, &str) -> Result<u64>) -> Result<Run> {
    let first = v.get(i).copied().unwrap_or(0);
    if first == 0 {
        let n = v[i..].iter().take_while(|&&p| p == 0).count().max(1);
        return Ok(Run::Zero { len: n as u64 });
    }
    check(first, "block pointer")?;
    let mut n = 1u64;
    while let Some(&p) = v.get(i + n as usize) {
        if p != first + n {
            break;
        }
        n += 1;
    }
    check(first + n - 1, "block pointer")?;
    Ok(Run::Data {
        start: first,
        len: n,
    })
}
