//! What `qemu-img info` prints about a qcow2 image ("Format specific information" and the
//! `format-specific` object of `--output=json`).

use crate::header::CompressionType;

/// One persistent dirty bitmap, as `qemu-img info` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapInfo {
    /// The bitmap's name.
    pub name: String,
    /// Bytes of guest disk per bit.
    pub granularity: u64,
    /// Flag names in qemu's spelling: "in-use", "auto".
    pub flags: Vec<&'static str>,
}

/// The format-specific facts of a qcow2 image. Fields qemu prints only for compat 1.1 images
/// are `None` for version 2 images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Info {
    /// "0.10" for version 2, "1.1" for version 3.
    pub compat: &'static str,
    /// How compressed clusters are compressed.
    pub compression_type: CompressionType,
    /// Compatible feature "lazy refcounts" (version 3 only).
    pub lazy_refcounts: Option<bool>,
    /// "refcount_bits = 1 << refcount_order".
    pub refcount_bits: u32,
    /// Incompatible feature "corrupt" (version 3 only).
    pub corrupt: Option<bool>,
    /// Incompatible feature "extended L2 entries" (version 3 only).
    pub extended_l2: Option<bool>,
    /// The external data file name from the header extension, if any.
    pub data_file: Option<String>,
    /// Autoclear "raw external data": `Some` exactly when the image uses an external data file.
    pub data_file_raw: Option<bool>,
    /// Persistent bitmaps (empty when there are none, or when the bitmaps extension is not
    /// marked consistent by its autoclear bit).
    pub bitmaps: Vec<BitmapInfo>,
    /// Bytes per cluster (qemu-img's top-level "cluster-size").
    pub cluster_size: u64,
    /// Incompatible feature "dirty" (qemu-img's top-level "dirty-flag").
    pub dirty: bool,
}
