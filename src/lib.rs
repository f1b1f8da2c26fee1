//! vdisk
