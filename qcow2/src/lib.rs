//! The qcow2 image format (docs/interop/qcow2.rst in QEMU).
