//! The write side.
