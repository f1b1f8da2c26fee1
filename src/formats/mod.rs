//! The adapters between the registry and the format crates outside raw and qcow2: one file
//! per format, each an [`ENTRY`](vmdk::ENTRY) that [`crate::registry::FORMATS`] lists.

pub mod qed;
pub mod vdi;
pub mod vhdx;
pub mod vmdk;
pub mod vpc;
