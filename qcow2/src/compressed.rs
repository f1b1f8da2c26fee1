//! Compressed clusters ("Compressed Clusters Descriptor" in qcow2.rst): "decompression stops
//! when it has produced a cluster of data."
//!
//! Output is bounded to exactly one cluster: a stream that would produce more, or that ends
//! before filling the cluster, is corrupt. A zip bomb costs at most one cluster of memory and
//! the time to inflate one cluster plus one byte.

use flate2::{Decompress, FlushDecompress, Status};
use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

use crate::header::CompressionType;

/// Why a compressed cluster could not be decompressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    /// The stream is not valid for its compression type.
    Invalid,
    /// The stream ended before producing a whole cluster.
    Short,
    /// The stream produces more than one cluster.
    Long,
}

impl Bad {
    pub fn message(self) -> &'static str {
        match self {
            Bad::Invalid => "compressed cluster is not a valid compressed stream",
            Bad::Short => "compressed cluster decompresses to less than one cluster",
            Bad::Long => "compressed cluster decompresses to more than one cluster",
        }
    }
}

/// Fills `out` (one cluster) from the compressed bytes `input`.
pub(crate) fn decompress(kind: CompressionType, input: &[u8], out: &mut [u8]) -> Result<(), Bad> {
    match kind {
        CompressionType::Zlib => inflate(input, out),
        CompressionType::Zstd => unzstd(input, out),
    }
}

/// "clusters with the deflate compression type do not have zlib headers": raw deflate.
fn inflate(input: &[u8], out: &mut [u8]) -> Result<(), Bad> {
    let mut d = Decompress::new(false);
    loop {
        let in_pos = usize::try_from(d.total_in()).map_err(|_| Bad::Invalid)?;
        let out_pos = usize::try_from(d.total_out()).map_err(|_| Bad::Invalid)?;
        if out_pos >= out.len() {
            break;
        }
        let status = d
            .decompress(
                input.get(in_pos..).unwrap_or(&[]),
                &mut out[out_pos..],
                FlushDecompress::None,
            )
            .map_err(|_| Bad::Invalid)?;
        let progressed = d.total_in() as usize != in_pos || d.total_out() as usize != out_pos;
        match status {
            Status::StreamEnd => break,
            _ if !progressed => break,
            _ => {}
        }
    }
    let filled = usize::try_from(d.total_out()).map_err(|_| Bad::Invalid)?;
    if filled < out.len() {
        return Err(Bad::Short);
    }
    // Would the stream give more? Ask for one more byte.
    let in_pos = usize::try_from(d.total_in()).map_err(|_| Bad::Invalid)?;
    let mut extra = [0u8; 1];
    let before = d.total_out();
    match d.decompress(
        input.get(in_pos..).unwrap_or(&[]),
        &mut extra,
        FlushDecompress::None,
    ) {
        Ok(_) if d.total_out() > before => Err(Bad::Long),
        // A stream that has ended, or bytes after it that are not deflate (the next compressed
        // cluster may share the last sector), are fine: the cluster is complete.
        _ => Ok(()),
    }
}

/// zstd: one or more frames, as qemu decodes them, until the cluster is full.
fn unzstd(input: &[u8], out: &mut [u8]) -> Result<(), Bad> {
    let mut d = Decoder::new().map_err(|_| Bad::Invalid)?;
    let mut inb = InBuffer::around(input);
    let mut hint;
    let mut filled = 0usize;
    loop {
        let mut outb = OutBuffer::around(&mut out[filled..]);
        let in_before = inb.pos();
        hint = d.run(&mut inb, &mut outb).map_err(|_| Bad::Invalid)?;
        let produced = outb.pos();
        filled += produced;
        if filled >= out.len() {
            break;
        }
        if produced == 0 && inb.pos() == in_before {
            return Err(Bad::Short);
        }
    }
    if hint != 0 {
        // The frame has not ended: see whether it holds more output.
        let mut extra = [0u8; 1];
        let mut outb = OutBuffer::around(&mut extra[..]);
        if d.run(&mut inb, &mut outb).is_ok() && outb.pos() > 0 {
            return Err(Bad::Long);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn deflate_exact_cluster() {
        let data = vec![7u8; 4096];
        let mut c = deflate(&data);
        c.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]); // tail of the sector
        let mut out = vec![0u8; 4096];
        decompress(CompressionType::Zlib, &c, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn deflate_bomb_is_refused() {
        let c = deflate(&vec![0u8; 1 << 20]);
        let mut out = vec![0u8; 4096];
        assert_eq!(
            decompress(CompressionType::Zlib, &c, &mut out),
            Err(Bad::Long)
        );
    }

    #[test]
    fn deflate_short_is_refused() {
        let c = deflate(&[1u8; 100]);
        let mut out = vec![0u8; 4096];
        assert_eq!(
            decompress(CompressionType::Zlib, &c, &mut out),
            Err(Bad::Short)
        );
        assert_eq!(
            decompress(CompressionType::Zlib, &[0xff; 16], &mut out),
            Err(Bad::Invalid)
        );
    }

    #[test]
    fn zstd_round_trip_and_bounds() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let c = zstd::bulk::compress(&data, 3).unwrap();
        let mut out = vec![0u8; 65536];
        decompress(CompressionType::Zstd, &c, &mut out).unwrap();
        assert_eq!(out, data);
        let mut small = vec![0u8; 4096];
        assert_eq!(
            decompress(CompressionType::Zstd, &c, &mut small),
            Err(Bad::Long)
        );
        let mut big = vec![0u8; 1 << 17];
        assert_eq!(
            decompress(CompressionType::Zstd, &c, &mut big),
            Err(Bad::Short)
        );
    }
}
