//! vdisk: disk images by name.
//!
//! This crate is the facade the `vdisk` command and other programs link: it opens an image by
//! name with its format policy and backing chain ([`open()`]), reports what `qemu-img info`
//! reports ([`info`]), and speaks qemu's option and output syntax ([`options`], [`qapi`]).
//! Formats live in their own crates ([`vdisk_raw`], [`vdisk_qcow2`]) over the storage traits
//! of [`vdisk_block`].
//!
//! ```text
//!   vdisk (cli)  ->  vdisk::open  ->  qcow2 / raw  ->  vdisk_block::BlockDevice
//! ```
//!
//! ```no_run
//! use vdisk::{open, OpenOptions, Format};
//! use vdisk_block::BlockDevice;
//!
//! let img = open("centos7.qcow2", &OpenOptions { format: Some(Format::Qcow2), ..Default::default() })?;
//! let mut sector = [0u8; 512];
//! img.image().read_at(&mut sector, 0)?;
//! # Ok::<(), vdisk_block::Error>(())
//! ```

#![warn(missing_docs)]

pub mod customize;
pub mod guest;
pub mod info;
mod localtime;
pub mod open;
pub mod options;
pub mod protocol;
pub mod qapi;

pub use open::{
    open, open_for_check, BackingPolicy, Driver, Format, OpenOptions, OpenedImage,
    MAX_BACKING_DEPTH,
};
pub use vdisk_block as block;
pub mod commit;
pub mod compare;
pub mod convert;
pub mod create;
pub mod dd;
pub mod engine;
pub mod formats;
pub mod measure;
pub mod rebase;
pub mod registry;
