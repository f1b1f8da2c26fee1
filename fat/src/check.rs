//! What is checked before the first write: the FAT copies agree, the FAT32 backup boot
//! sector matches, and every chain reached from the root is whole, in range, loop-free, not
//! shared with another chain and as long as its file. A volume failing any of these is never
//! written into (fsck.fat is the tool to repair it), so a damaged FAT is not made worse.

use crate::bpb::FatType;
use crate::{DirLoc, Fat, State};

/// Directories deeper than this are refused (no real volume comes near it; it bounds the
/// walk's path strings).
pub const MAX_DEPTH: usize = 256;

impl Fat {
    /// The reason this volume may not be written, if there is one.
    pub(crate) fn pre_write_check(&self, st: &State) -> std::result::Result<(), String> {
        let g = &self.geo;
        if !g.mirrored {
            return Err("FAT32 mirroring is off (BPB_ExtFlags bit 7): one active FAT is not supported for writing".into());
        }
        // Every copy of the FAT equals the one we read.
        let len = st.fat.bytes_len();
        let chunk = 1 << 20;
        let mut buf = vec![0u8; chunk];
        for n in 0..g.num_fats {
            if n == g.active_fat {
                continue;
            }
            let mut off = 0;
            while off < len {
                let m = chunk.min(len - off);
                self.dev
                    .read_at(&mut buf[..m], g.fat_offset(n) + off as u64)
                    .map_err(|e| e.to_string())?;
                if buf[..m] != st.fat.bytes()[off..off + m] {
                    return Err(format!(
                        "FAT copy {} differs from FAT copy {}",
                        n + 1,
                        g.active_fat + 1
                    ));
                }
                off += m;
            }
        }
        if g.fat_type == FatType::Fat32 && g.backup_boot_sector != 0 {
            let bps = u64::from(g.bytes_per_sector);
            let mut a = vec![0u8; 512];
            let mut b = vec![0u8; 512];
            self.dev.read_at(&mut a, 0).map_err(|e| e.to_string())?;
            self.dev
                .read_at(&mut b, u64::from(g.backup_boot_sector) * bps)
                .map_err(|e| e.to_string())?;
            // Linux keeps its dirty flag in the primary's state byte only.
            a[g.state_offset] = 0;
            b[g.state_offset] = 0;
            if a != b {
                return Err("the boot sector and its backup differ".into());
            }
        }
        // Walk the tree, marking each cluster: a second mark is a cross-link.
        let mut owned = vec![0u64; (st.fat.entries() as usize).div_ceil(64)];
        let mut mark = |c: u32, what: &str| -> std::result::Result<(), String> {
            let (w, b) = (c as usize / 64, c % 64);
            if owned[w] & (1 << b) != 0 {
                return Err(format!(
                    "{what}: cluster {c} belongs to two chains (cross-linked)"
                ));
            }
            owned[w] |= 1 << b;
            Ok(())
        };
        let mut stack: Vec<(DirLoc, String, usize)> = vec![(self.root_loc(), String::new(), 0)];
        while let Some((loc, path, depth)) = stack.pop() {
            if depth > MAX_DEPTH {
                return Err(format!("{path}: directories nest deeper than {MAX_DEPTH}"));
            }
            let d = self
                .read_dir(st, loc)
                .map_err(|e| format!("{}: {}", show(&path), e.message()))?;
            for &c in &d.clusters {
                mark(c, show(&path))?;
            }
            for e in self.entries(&d) {
                let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
                let s = &e.short;
                if s.is_dir() {
                    let loc = self
                        .dir_loc_of(s)
                        .map_err(|e| format!("{p}: {}", e.message()))?;
                    stack.push((loc, p, depth + 1));
                    continue;
                }
                let need = u64::from(s.size).div_ceil(u64::from(g.cluster_size)) as u32;
                if s.cluster == 0 {
                    if need != 0 {
                        return Err(format!("{p}: {} bytes but no clusters", s.size));
                    }
                    continue;
                }
                let (chain, _) = st
                    .fat
                    .chain(s.cluster, st.fat.entries())
                    .map_err(|e| format!("{p}: {}", e.message()))?;
                if chain.len() as u32 != need {
                    return Err(format!(
                        "{p}: {} bytes in a chain of {} clusters",
                        s.size,
                        chain.len()
                    ));
                }
                for c in chain {
                    mark(c, &p)?;
                }
            }
        }
        Ok(())
    }
}

fn show(p: &str) -> &str {
    if p.is_empty() {
        "/"
    } else {
        p
    }
}
