//! Checks made before the first write.
