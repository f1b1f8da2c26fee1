//! The network block device protocol for vdisk.
//!
//! - [`server`]: serves any [`vdisk_block::Image`] (with its optional abilities and a block
//!   status source) to NBD clients, as `qemu-nbd` does: fixed newstyle negotiation with
//!   `NBD_OPT_INFO`/`GO`/`LIST`, structured replies with sparse reads, the `base:allocation` and
//!   `qemu:allocation-depth` metadata contexts, several requests in flight per connection and
//!   several connections per export.
//! - [`client`]: an NBD export as a [`vdisk_block::Image`], so `nbd://` and `nbd+unix://` names
//!   open like files and their holes are known from block status.
//!
//! [`proto`] holds the wire format both sides share.

#![warn(missing_docs)]

pub mod client;
pub mod proto;
pub mod server;

pub use client::{Client, Target};
pub use server::{BlockStatus, Export, ImageStatus, Listener, Server, ServerOptions, Status};
