//! Changing the format options of an existing image (`qemu-img amend`, qemu's
//! `qcow2_amend_options`): compatibility level, lazy refcounts, refcount width, backing file
//! and size.
//!
//! The order is qemu's: upgrade first (later changes may need version 3), then the backing
//! file, lazy refcounts, size and refcount width, and the downgrade last, once the features
//! version 2 cannot express are gone. A downgrade turns zero clusters into data clusters
//! (or unallocated ones where nothing shows through), as version 2 has no zero flag.

use std::sync::Arc;

use vdisk_block::{BlockDevice, Error, Preallocation, Result};

use crate::alloc::ImageFile;
use crate::extension::Extensions;
use crate::header::{compatible, incompatible, CompressionType};
use crate::l2::{L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO};
use crate::Qcow2;

/// What to change; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmendOptions {
    /// Version: 2 ("compat=0.10") or 3 ("compat=1.1").
    pub version: Option<u32>,
    /// Lazy refcounts on or off (version 3 only).
    pub lazy_refcounts: Option<bool>,
    /// Refcount entry width in bits: a power of two up to 64 (16 for version 2).
    pub refcount_bits: Option<u32>,
    /// New backing file name (`Some("")` removes the backing file).
    pub backing_file: Option<String>,
    /// New backing format.
    pub backing_fmt: Option<String>,
    /// New virtual size.
    pub size: Option<u64>,
}

/// Applies `opts` to the qcow2 image in `file` (open read-write, no other user).
pub fn amend<F: ImageFile + 'static>(file: Arc<F>, opts: &AmendOptions) -> Result<()> {
    let mut q = Qcow2::open_rw(Arc::clone(&file))?;
    let old_version = q.header.version;
    let new_version = opts.version.unwrap_or(old_version);
    if new_version != 2 && new_version != 3 {
        return Err(Error::invalid(format!(
            "Unknown compatibility level {new_version}"
        )));
    }
    if opts.lazy_refcounts == Some(true) && new_version < 3 {
        return Err(Error::invalid(
            "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)",
        ));
    }
    let new_order = match opts.refcount_bits {
        Some(b) if b == 0 || b > 64 || !b.is_power_of_two() => {
            return Err(Error::invalid(
                "Refcount width must be a power of two and may not exceed 64 bits",
            ))
        }
        Some(b) => Some(b.trailing_zeros()),
        None => None,
    };
    let final_order = new_order.unwrap_or(q.header.refcount_order);
    if new_version < 3 && final_order != 4 {
        return Err(Error::invalid(if new_order.is_some() {
            "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"
        } else {
            "compat=0.10 requires refcount_bits=16"
        }));
    }

    // Upgrade first.
    if new_version > old_version {
        q.header.version = new_version;
        q.header.header_length = 112;
        if q.extensions.feature_names.is_empty() {
            q.extensions.feature_names = Extensions::qemu_feature_names();
        }
        q.rewrite_header()?;
        q.geom.version = new_version;
    }

    if opts.backing_file.is_some() || opts.backing_fmt.is_some() {
        if let Some(b) = &opts.backing_file {
            q.backing_file_name = (!b.is_empty()).then(|| b.clone());
            if b.is_empty() {
                q.extensions.backing_format = None;
            }
        }
        if let Some(f) = &opts.backing_fmt {
            if q.backing_file_name.is_none() {
                return Err(Error::invalid("backing_fmt needs a backing file"));
            }
            q.extensions.backing_format = Some(f.clone());
        }
        q.rewrite_header()?;
    }

    if let Some(lazy) = opts.lazy_refcounts {
        let was = q.header.compatible_features & compatible::LAZY_REFCOUNTS != 0;
        if lazy != was {
            {
                // Clean first: flushing writes the refcounts and clears the dirty bit.
                let mut m = q.lock_meta()?;
                q.flush_meta(&mut m)?;
                m.lazy_refcounts = lazy;
            }
            if lazy {
                q.header.compatible_features |= compatible::LAZY_REFCOUNTS;
            } else {
                q.header.compatible_features &= !compatible::LAZY_REFCOUNTS;
            }
            q.rewrite_header()?;
        }
    }

    if let Some(size) = opts.size {
        q.resize_image(size, Preallocation::Off, true)?;
    }

    if let Some(order) = new_order.filter(|&o| o != q.header.refcount_order) {
        q.flush()?;
        drop(q);
        let ro = Qcow2::open(Arc::clone(&file) as Arc<dyn BlockDevice>)?;
        crate::check::change_refcount_order(&ro, &*file, order)?;
        drop(ro);
        // The old structures are leaked now: free them.
        let ro = Qcow2::open(Arc::clone(&file) as Arc<dyn BlockDevice>)?;
        let res = crate::check::check(&ro, Some((crate::check::Repair::Leaks, &*file)))?;
        if res.corruptions > 0 || res.check_errors > 0 {
            return Err(Error::corrupt(
                "the rewritten refcount structures are inconsistent",
            ));
        }
        drop(ro);
        q = Qcow2::open_rw(Arc::clone(&file))?;
    }

    // Downgrade last.
    if new_version < q.header.version {
        q.downgrade()?;
    }
    q.flush()
}

impl Qcow2 {
    /// Rewrites the header cluster from `self.header`, the extensions and the backing name.
    fn rewrite_header(&self) -> Result<()> {
        let mut m = self.lock_meta()?;
        self.flush_meta(&mut m)?;
        self.write_header(&m)
    }

    /// Turns a version 3 image into a version 2 one (`qcow2_downgrade`).
    fn downgrade(&mut self) -> Result<()> {
        if self.header.refcount_order != 4 {
            return Err(Error::unsupported("compat=0.10 requires refcount_bits=16"));
        }
        if self.needs_data_file() {
            return Err(Error::unsupported(
                "Cannot downgrade an image with a data file",
            ));
        }
        let size = self.view.size;
        if self
            .snapshots
            .iter()
            .any(|s| s.vm_state_size > u64::from(u32::MAX) || s.disk_size != size)
        {
            return Err(Error::unsupported(
                "Internal snapshots prevent downgrade of image",
            ));
        }
        let features = self.header.incompatible_features & !incompatible::DIRTY;
        if features & !incompatible::COMPRESSION_TYPE != 0 {
            return Err(Error::unsupported(format!(
                "Cannot downgrade an image with incompatible features {:#x} set",
                features & !incompatible::COMPRESSION_TYPE
            )));
        }
        self.expand_zero_clusters()?;
        if self.header.compression_type != CompressionType::Zlib {
            if self.has_compressed_clusters()? {
                return Err(Error::unsupported(
                    "Cannot downgrade an image with zstd compression type and existing compressed clusters",
                ));
            }
            self.header.compression_type = CompressionType::Zlib;
            self.header.incompatible_features &= !incompatible::COMPRESSION_TYPE;
        }
        {
            let mut m = self.lock_meta()?;
            self.flush_meta(&mut m)?;
            m.lazy_refcounts = false;
        }
        self.header.version = 2;
        self.header.header_length = 72;
        self.header.compatible_features = 0;
        self.header.autoclear_features = 0;
        self.header.incompatible_features = 0;
        self.rewrite_header()?;
        self.geom.version = 2;
        Ok(())
    }

    /// Every L1 table: the active one and each snapshot's.
    fn all_l1_tables(&self) -> Result<Vec<Vec<u64>>> {
        let mut out = vec![self
            .view
            .l1
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()];
        for s in &self.snapshots {
            out.push(self.read_l1(s.l1_table_offset, s.l1_size)?);
        }
        Ok(out)
    }

    /// Whether any table holds a compressed cluster.
    fn has_compressed_clusters(&self) -> Result<bool> {
        let words = self.geom.words_per_entry();
        for l1 in self.all_l1_tables()? {
            for l1e in l1 {
                let l2 = l1e & L1E_OFFSET_MASK;
                if l2 == 0 {
                    continue;
                }
                let t = self.l2_table(l2)?;
                if t.iter().step_by(words).any(|e| e & OFLAG_COMPRESSED != 0) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Replaces zero clusters by data clusters holding zeros, or by unallocated clusters when
    /// there is no backing file (`qcow2_expand_zero_clusters`).
    fn expand_zero_clusters(&mut self) -> Result<()> {
        let cs = self.geom.cluster_size();
        let per_l2 = 1u64 << self.geom.l2_bits;
        let backed = self.backing_file_name.is_some();
        let zeros = vec![0u8; cs as usize];
        let mut m = self.lock_meta()?;
        for l1 in self.all_l1_tables()? {
            for l1e in l1 {
                let l2 = l1e & L1E_OFFSET_MASK;
                if l2 == 0 {
                    continue;
                }
                let l2_refcount = self.refcount(&mut m, l2 / cs)?;
                for j in 0..per_l2 {
                    let (e, _) = self.l2_entry(l2, j)?;
                    if e & OFLAG_COMPRESSED != 0 || e & OFLAG_ZERO == 0 {
                        continue;
                    }
                    let mut offset = e & L2E_OFFSET_MASK;
                    if offset == 0 {
                        if !backed {
                            self.set_l2_entry(&mut m, l2, j, 0, 0)?;
                            continue;
                        }
                        offset = self.alloc_clusters(&mut m, 1)?;
                        if l2_refcount > 1 {
                            self.update_refcount(&mut m, offset, cs, l2_refcount as i64 - 1)?;
                        }
                    }
                    self.rw()?.file.write_at(&zeros, offset)?;
                    let ne = if l2_refcount == 1 {
                        offset | OFLAG_COPIED
                    } else {
                        offset
                    };
                    self.set_l2_entry(&mut m, l2, j, ne, 0)?;
                }
                self.maybe_flush_meta(&mut m)?;
            }
        }
        self.fix_copied_flags(&mut m)?;
        self.flush_meta(&mut m)
    }
}
