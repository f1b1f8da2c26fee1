//! Where guest bytes live: the answer an [`Image`](crate::Image) gives for a range.

/// What one extent of guest bytes is, in the layer that answered.
/// New kinds may be added as formats need them: match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapKind {
    /// Stored uncompressed in this layer's data file, starting at `host_offset`; reading the
    /// extent reads the same number of bytes there.
    Data {
        /// Byte offset in the file that holds the data.
        host_offset: u64,
    },
    /// Reads as zeros, and this layer says so (a hole in a raw file, a qcow2 zero cluster): the
    /// backing file is not consulted.
    Zero {
        /// The storage still reserved for the range, if any (qemu-img map prints it).
        host_offset: Option<u64>,
    },
    /// This layer does not hold the range: its backing image does, or it reads as zeros when
    /// there is none.
    Unallocated {
        /// Storage reserved for the range although it is not in use (an unallocated
        /// subcluster of an allocated qcow2 extended-L2 cluster); qemu-img map prints it when
        /// no backing image answers instead.
        host_offset: Option<u64>,
    },
    /// Stored compressed; only the format can read it.
    Compressed,
    /// Past the end of the image.
    Eof,
}

impl MapKind {
    /// True when the range is known to read as zeros in this layer.
    pub fn is_zero(&self) -> bool {
        matches!(self, MapKind::Zero { .. })
    }

    /// True when this layer holds data for the range (qemu-img map's `"data": true`).
    pub fn is_data(&self) -> bool {
        matches!(self, MapKind::Data { .. } | MapKind::Compressed)
    }

    /// True when this layer decides what the range reads as (qemu-img map's `"present"` at
    /// this depth).
    pub fn is_allocated(&self) -> bool {
        !matches!(self, MapKind::Unallocated { .. } | MapKind::Eof)
    }
}

/// One extent of guest bytes `[offset, offset + len)` that share a [`MapKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The guest offset the extent starts at.
    pub offset: u64,
    /// Its length in bytes; never zero unless `kind` is [`MapKind::Eof`].
    pub len: u64,
    /// Where the bytes live.
    pub kind: MapKind,
}

impl Mapping {
    /// The guest offset one past the extent.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }

    /// Whether two extents that touch can be reported as one: the same kind and, for data,
    /// contiguous host offsets.
    pub fn can_merge(&self, next: &Mapping) -> bool {
        if self.end() != next.offset {
            return false;
        }
        match (self.kind, next.kind) {
            (MapKind::Data { host_offset: a }, MapKind::Data { host_offset: b })
            | (
                MapKind::Zero {
                    host_offset: Some(a),
                },
                MapKind::Zero {
                    host_offset: Some(b),
                },
            )
            | (
                MapKind::Unallocated {
                    host_offset: Some(a),
                },
                MapKind::Unallocated {
                    host_offset: Some(b),
                },
            ) => a.checked_add(self.len) == Some(b),
            (a, b) => a == b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_needs_contiguous_host_offsets() {
        let a = Mapping {
            offset: 0,
            len: 10,
            kind: MapKind::Data { host_offset: 100 },
        };
        let b = Mapping {
            offset: 10,
            len: 5,
            kind: MapKind::Data { host_offset: 110 },
        };
        let c = Mapping {
            offset: 10,
            len: 5,
            kind: MapKind::Data { host_offset: 200 },
        };
        assert!(a.can_merge(&b));
        assert!(!a.can_merge(&c));
        let z1 = Mapping {
            offset: 15,
            len: 5,
            kind: MapKind::Unallocated { host_offset: None },
        };
        let z2 = Mapping {
            offset: 20,
            len: 5,
            kind: MapKind::Unallocated { host_offset: None },
        };
        assert!(z1.can_merge(&z2));
        assert!(!b.can_merge(&z2));
    }
}
