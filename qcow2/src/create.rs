//! Creating images (`qemu-img create -f qcow2`), with qemu's options and layout: the header
//! cluster, the refcount table, one refcount block, then the L1 table (and, with
//! preallocation, L2 tables and data clusters).

use std::sync::Arc;

use vdisk_block::{BlockDevice, BlockDeviceExt, Error, Preallocation, Result};

use crate::alloc::ImageFile;
use crate::extension::Extensions;
use crate::header::{
    autoclear, compatible, incompatible, l1_entries_for, l2_bits, CompressionType, Header,
    MAX_BACKING_FILE_NAME, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS, MIN_EXTENDED_L2_CLUSTER_BITS,
    V2_HEADER_LENGTH,
};
use crate::l2::OFLAG_COPIED;
use crate::refcount::set_refcount;
use crate::Qcow2;

/// What `qemu-img create -f qcow2 -o ...` accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// Virtual disk size in bytes (qemu's `size`).
    pub size: u64,
    /// 2 for `compat=0.10`, 3 for `compat=1.1` (the default).
    pub version: u32,
    /// Bytes per cluster, a power of two from 512 to 2 MiB (default 64 KiB).
    pub cluster_size: u64,
    /// Bits per refcount, a power of two from 1 to 64 (default 16; version 2 allows only 16).
    pub refcount_bits: u32,
    /// Compatible feature "lazy refcounts" (version 3).
    pub lazy_refcounts: bool,
    /// Extended L2 entries with 32 subclusters (version 3, clusters of 16 KiB or more).
    pub extended_l2: bool,
    /// How compressed clusters are compressed (zstd needs version 3).
    pub compression_type: CompressionType,
    /// What to allocate up front.
    pub preallocation: Preallocation,
    /// The backing file name to record, as given.
    pub backing_file: Option<String>,
    /// The backing file's format, recorded in the backing format extension.
    pub backing_format: Option<String>,
    /// The external data file name to record (the caller creates and attaches the file).
    pub data_file: Option<String>,
    /// Autoclear "raw external data": the data file is a raw image of the guest disk.
    pub data_file_raw: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: 0,
            version: 3,
            cluster_size: 65536,
            refcount_bits: 16,
            lazy_refcounts: false,
            extended_l2: false,
            compression_type: CompressionType::Zlib,
            preallocation: Preallocation::Off,
            backing_file: None,
            backing_format: None,
            data_file: None,
            data_file_raw: false,
        }
    }
}

impl CreateOptions {
    /// Refuses combinations qemu refuses, with qemu's messages.
    pub fn validate(&self) -> Result<()> {
        let cs = self.cluster_size;
        if !cs.is_power_of_two() || !(1 << MIN_CLUSTER_BITS..=1 << MAX_CLUSTER_BITS).contains(&cs) {
            return Err(Error::invalid(
                "Cluster size must be a power of two between 512 and 2048k",
            ));
        }
        if !self.refcount_bits.is_power_of_two() || self.refcount_bits > 64 {
            return Err(Error::invalid(
                "Refcount width must be a power of two and may not exceed 64 bits",
            ));
        }
        if self.version != 2 && self.version != 3 {
            return Err(Error::invalid(format!(
                "Invalid compatibility level: version {}",
                self.version
            )));
        }
        if self.version == 2 {
            if self.refcount_bits != 16 {
                return Err(Error::invalid("Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)"));
            }
            if self.lazy_refcounts {
                return Err(Error::invalid("Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
            }
            if self.extended_l2 {
                return Err(Error::invalid("Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
            }
            if self.compression_type != CompressionType::Zlib {
                return Err(Error::invalid("Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)"));
            }
            if self.data_file.is_some() {
                return Err(Error::invalid(
                    "External data files are only supported with compatibility level 1.1 and above",
                ));
            }
        }
        if self.extended_l2 && cs < 1 << MIN_EXTENDED_L2_CLUSTER_BITS {
            return Err(Error::invalid(
                "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
            ));
        }
        if self.data_file_raw && self.data_file.is_none() {
            return Err(Error::invalid("data-file-raw requires data-file"));
        }
        if self.data_file_raw && self.backing_file.is_some() {
            return Err(Error::invalid(
                "Backing file and data-file-raw cannot be used at the same time",
            ));
        }
        if self.backing_file.is_some()
            && self.preallocation != Preallocation::Off
            && !self.extended_l2
        {
            return Err(Error::invalid("Backing file and preallocation can only be used at the same time if extended_l2 is on"));
        }
        if self.backing_format.is_some() && self.backing_file.is_none() {
            return Err(Error::invalid(
                "Backing format cannot be used without backing file",
            ));
        }
        if let Some(b) = &self.backing_file {
            if b.len() > MAX_BACKING_FILE_NAME as usize {
                return Err(Error::invalid("Backing file name too long"));
            }
        }
        let l2b = l2_bits(cs.trailing_zeros(), self.extended_l2);
        if l1_entries_for(self.size, cs.trailing_zeros(), l2b) * 8 > crate::header::MAX_L1_BYTES {
            return Err(Error::invalid(
                "The image size is too large for file format 'qcow2' (try using a larger cluster size)",
            ));
        }
        if self.size % 512 != 0 {
            return Err(Error::invalid("Image size must be a multiple of 512 bytes"));
        }
        Ok(())
    }
}

/// The header cluster's bytes: the header (with `h.backing_file_offset`/`size` filled in),
/// the extension area, the backing file name. Errors when it does not fit in one cluster.
pub(crate) fn header_cluster(
    h: &mut Header,
    ext: &Extensions,
    backing: Option<&str>,
) -> Result<Vec<u8>> {
    let hlen = if h.version == 2 {
        V2_HEADER_LENGTH as usize
    } else {
        h.to_bytes().len()
    };
    let mut area = ext.to_bytes(h.version);
    let name_len = backing.map_or(0, str::len);
    if (hlen + area.len() + name_len) as u64 > h.cluster_size() && !ext.feature_names.is_empty() {
        // qemu leaves the feature name table out when it does not fit (small clusters).
        let mut lean = ext.clone();
        lean.feature_names.clear();
        area = lean.to_bytes(h.version);
    }
    let name_at = hlen + area.len();
    match backing {
        Some(b) => {
            h.backing_file_offset = name_at as u64;
            h.backing_file_size = b.len() as u32;
        }
        None => {
            h.backing_file_offset = 0;
            h.backing_file_size = 0;
        }
    }
    let mut out = h.to_bytes();
    out.extend_from_slice(&area);
    if let Some(b) = backing {
        out.extend_from_slice(b.as_bytes());
    }
    if out.len() as u64 > h.cluster_size() {
        return Err(Error::invalid(
            "the header, its extensions and the backing file name do not fit in one cluster",
        ));
    }
    Ok(out)
}

impl Qcow2 {
    /// Formats `file` (empty, open read-write) as a new qcow2 image and returns it open
    /// read-write. The caller creates an external data file and attaches it with
    /// [`Qcow2::set_data_file_rw`] *before* preallocating: so with a data file, preallocation
    /// other than `off` is done by [`Qcow2::preallocate`] after attaching it.
    pub fn create<F: ImageFile + 'static>(file: Arc<F>, opts: &CreateOptions) -> Result<Qcow2> {
        opts.validate()?;
        let cluster_bits = opts.cluster_size.trailing_zeros();
        let cs = opts.cluster_size;
        let v3 = opts.version == 3;
        let mut incompat = 0;
        if opts.extended_l2 {
            incompat |= incompatible::EXTENDED_L2;
        }
        if opts.compression_type != CompressionType::Zlib {
            incompat |= incompatible::COMPRESSION_TYPE;
        }
        if opts.data_file.is_some() {
            incompat |= incompatible::DATA_FILE;
        }
        let mut header = Header {
            version: opts.version,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits,
            size: 0,
            crypt_method: 0,
            l1_size: 0,
            l1_table_offset: 0,
            refcount_table_offset: cs,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: incompat,
            compatible_features: if opts.lazy_refcounts {
                compatible::LAZY_REFCOUNTS
            } else {
                0
            },
            autoclear_features: if opts.data_file_raw {
                autoclear::DATA_FILE_RAW
            } else {
                0
            },
            refcount_order: opts.refcount_bits.trailing_zeros(),
            header_length: if v3 { 112 } else { V2_HEADER_LENGTH },
            compression_type: opts.compression_type,
        };
        let ext = Extensions {
            backing_format: opts.backing_file.as_ref().and(opts.backing_format.clone()),
            feature_names: if v3 {
                Extensions::qemu_feature_names()
            } else {
                Vec::new()
            },
            data_file: opts.data_file.clone(),
            ..Extensions::default()
        };
        let first = header_cluster(&mut header, &ext, opts.backing_file.as_deref())?;

        // Header, refcount table, one refcount block describing the first three clusters.
        file.resize(3 * cs, Preallocation::Off)?;
        let mut hc = first;
        hc.resize(cs as usize, 0);
        file.write_at(&hc, 0)?;
        let mut table = vec![0u8; cs as usize];
        table[..8].copy_from_slice(&(2 * cs).to_be_bytes());
        file.write_at(&table, cs)?;
        let mut block = vec![0u8; cs as usize];
        for i in 0..3 {
            set_refcount(&mut block, i, header.refcount_order, 1);
        }
        file.write_at(&block, 2 * cs)?;
        file.flush()?;

        let mut q = Qcow2::open_rw(file)?;
        // Grow to the size: the L1 table goes into the next free clusters, as in qemu.
        let l2b = l2_bits(cluster_bits, opts.extended_l2);
        let l1_entries = l1_entries_for(opts.size, cluster_bits, l2b);
        if l1_entries > 0 {
            q.grow_l1(l1_entries)?;
        }
        q.header.size = opts.size;
        q.view.size = opts.size;
        {
            let m = q.lock_meta()?;
            q.write_header(&m)?;
        }
        if opts.preallocation != Preallocation::Off && opts.data_file.is_none() {
            q.preallocate(opts.preallocation)?;
        } else if q.header.l1_size > 0 {
            // qemu's file ends where its last write ends, inside the L1 table's cluster when
            // that comes last; the rest of the cluster reads as zeros all the same.
            let end = q.header.l1_table_offset + u64::from(q.header.l1_size) * 8;
            let file = Arc::clone(&q.rw()?.file);
            if file.size() == end.next_multiple_of(cs) && end % cs != 0 {
                file.resize(end, Preallocation::Off)?;
            }
        }
        Ok(q)
    }

    /// Allocates every L2 table and data cluster of the image (`metadata`), and reserves
    /// (`falloc`) or zeroes (`full`) the file up to its end.
    pub fn preallocate(&self, mode: Preallocation) -> Result<()> {
        if mode == Preallocation::Off {
            return Ok(());
        }
        let g = self.geom;
        let cs = g.cluster_size();
        let clusters = self.view.size.div_ceil(cs);
        let per_l2 = 1u64 << g.l2_bits;
        let mut m = self.lock_meta()?;
        let mut cluster = 0;
        let mut runs = Vec::new();
        while cluster < clusters {
            let l1i = cluster >> g.l2_bits;
            let l2 = self.l2_for_write(&mut m, l1i)?;
            let end = ((l1i + 1) * per_l2).min(clusters);
            // Chunks small enough for first-fit next to self-describing refcount blocks.
            let chunk = ((1u64 << (g.cluster_bits + 3 - self.header.refcount_order)) / 8).max(1);
            while cluster < end {
                let n = (end - cluster).min(chunk);
                let host = if g.external_data {
                    cluster * cs
                } else {
                    self.alloc_clusters(&mut m, n)?
                };
                let mut used = 0;
                for i in 0..n {
                    let idx = (cluster + i) & (per_l2 - 1);
                    let (e, bm) = self.l2_entry(l2, idx)?;
                    if e != 0 || bm & 0xffff_ffff != 0 {
                        continue;
                    }
                    // As qemu's preallocation: with extended L2 entries the subclusters stay
                    // unallocated (the guest reads zeros, or the backing file through them).
                    self.set_l2_entry(&mut m, l2, idx, (host + i * cs) | OFLAG_COPIED, 0)?;
                    used += 1;
                }
                if used < n && !g.external_data {
                    // Only on an image that already had data: give back what went unused.
                    self.update_refcount(&mut m, host, n * cs, -1)?;
                    return Err(Error::unsupported(
                        "preallocation of an image that already holds data",
                    ));
                }
                runs.push((host, (n * cs).min(self.view.size - cluster * cs)));
                cluster += n;
            }
        }
        self.flush_meta(&mut m)?;
        drop(m);
        let rw = self.rw()?;
        let dev: &dyn ImageFile = if g.external_data {
            match &rw.data_file {
                Some(d) => &**d,
                None => return Ok(()),
            }
        } else {
            &*rw.file
        };
        if g.external_data && dev.size() < self.view.size {
            dev.resize(self.view.size, Preallocation::Off)?;
        }
        for (host, len) in runs {
            match mode {
                Preallocation::Falloc => dev.write_zeroes(host, len, false)?,
                Preallocation::Full => dev.write_zeroes_by_writing(host, len)?,
                _ => {}
            }
        }
        dev.flush()
    }
}
