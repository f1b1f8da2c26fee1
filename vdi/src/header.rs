//! The VDI pre-header and header (version 1.1): 512 bytes at offset 0, little-endian.

use vdisk_block::bytes::{le32, le64};
use vdisk_block::{Error, Result};

/// Size of the header on disk.
pub const HEADER_SIZE: usize = 512;
/// `u32Signature`.
pub const SIGNATURE: u32 = 0xbeda_107f;
/// Version 1.1, the only one qemu (and we) read.
pub const VERSION_1_1: u32 = 0x0001_0001;
/// A normal (dynamically growing) image.
pub const TYPE_DYNAMIC: u32 = 1;
/// A fixed (preallocated) image.
pub const TYPE_STATIC: u32 = 2;
/// The text qemu writes at the start of its images.
pub const QEMU_TEXT: &str = "<<< QEMU VM Virtual Disk Image >>>\n";
/// The only block size qemu reads and creates.
pub const BLOCK_SIZE: u32 = 1 << 20;

/// The header, with the field names of VirtualBox's `VDIHEADER1` as qemu spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The banner text ("<<< Oracle VM VirtualBox Disk Image >>>\n").
    pub text: [u8; 64],
    /// The signature, 0xbeda107f.
    pub signature: u32,
    /// The version (major in the high 16 bits).
    pub version: u32,
    /// Size of the header that follows the pre-header.
    pub header_size: u32,
    /// 1 = dynamic, 2 = static, 3 = undo, 4 = differencing.
    pub image_type: u32,
    /// Image flags.
    pub image_flags: u32,
    /// Free-text description.
    pub description: [u8; 256],
    /// Byte offset of the block map.
    pub offset_bmap: u32,
    /// Byte offset of the first data block.
    pub offset_data: u32,
    /// Legacy geometry: cylinders.
    pub cylinders: u32,
    /// Legacy geometry: heads.
    pub heads: u32,
    /// Legacy geometry: sectors.
    pub sectors: u32,
    /// Sector size (512).
    pub sector_size: u32,
    /// The disk's size in bytes.
    pub disk_size: u64,
    /// Size of a block in bytes.
    pub block_size: u32,
    /// Extra data before each block.
    pub block_extra: u32,
    /// Number of blocks the block map has entries for.
    pub blocks_in_image: u32,
    /// Number of blocks allocated in the file.
    pub blocks_allocated: u32,
    /// The image's UUID.
    pub uuid_image: [u8; 16],
    /// The UUID of the last snapshot.
    pub uuid_last_snap: [u8; 16],
    /// The link UUID (differencing images).
    pub uuid_link: [u8; 16],
    /// The parent's UUID (differencing images).
    pub uuid_parent: [u8; 16],
}

fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

impl Header {
    /// Whether `head` carries the VDI signature (qemu's probe).
    pub fn has_signature(head: &[u8]) -> bool {
        head.len() >= HEADER_SIZE && le32(head, 64) == SIGNATURE
    }

    /// Reads the fields (no validation: see [`Header::validate`]).
    pub fn parse(b: &[u8; HEADER_SIZE]) -> Header {
        Header {
            text: arr(b, 0),
            signature: le32(b, 64),
            version: le32(b, 68),
            header_size: le32(b, 72),
            image_type: le32(b, 76),
            image_flags: le32(b, 80),
            description: arr(b, 84),
            offset_bmap: le32(b, 340),
            offset_data: le32(b, 344),
            cylinders: le32(b, 348),
            heads: le32(b, 352),
            sectors: le32(b, 356),
            sector_size: le32(b, 360),
            disk_size: le64(b, 368),
            block_size: le32(b, 376),
            block_extra: le32(b, 380),
            blocks_in_image: le32(b, 384),
            blocks_allocated: le32(b, 388),
            uuid_image: arr(b, 392),
            uuid_last_snap: arr(b, 408),
            uuid_link: arr(b, 424),
            uuid_parent: arr(b, 440),
        }
    }

    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..64].copy_from_slice(&self.text);
        let mut put = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put(64, self.signature);
        put(68, self.version);
        put(72, self.header_size);
        put(76, self.image_type);
        put(80, self.image_flags);
        put(340, self.offset_bmap);
        put(344, self.offset_data);
        put(348, self.cylinders);
        put(352, self.heads);
        put(356, self.sectors);
        put(360, self.sector_size);
        put(376, self.block_size);
        put(380, self.block_extra);
        put(384, self.blocks_in_image);
        put(388, self.blocks_allocated);
        b[84..340].copy_from_slice(&self.description);
        b[368..376].copy_from_slice(&self.disk_size.to_le_bytes());
        b[392..408].copy_from_slice(&self.uuid_image);
        b[408..424].copy_from_slice(&self.uuid_last_snap);
        b[424..440].copy_from_slice(&self.uuid_link);
        b[440..456].copy_from_slice(&self.uuid_parent);
        b
    }

    /// qemu's checks, in qemu's order and words, plus our bound on the block map.
    pub fn validate(&self) -> Result<()> {
        if self.disk_size > crate::MAX_DISK_SIZE {
            return Err(Error::unsupported(format!(
                "Unsupported VDI image size (size is {:#x}, max supported is {:#x})",
                self.disk_size,
                crate::MAX_DISK_SIZE
            )));
        }
        let disk_size = self.disk_size.next_multiple_of(512);
        let bad = |what: String| {
            Err(Error::unsupported(format!(
                "unsupported VDI image ({what})"
            )))
        };
        if self.signature != SIGNATURE {
            return Err(Error::corrupt(format!(
                "Image not in VDI format (bad signature {:08x})",
                self.signature
            )));
        }
        if self.version != VERSION_1_1 {
            return bad(format!(
                "version {}.{}",
                self.version >> 16,
                self.version & 0xffff
            ));
        }
        if self.offset_bmap % 512 != 0 {
            return bad(format!(
                "unaligned block map offset {:#x}",
                self.offset_bmap
            ));
        }
        if self.offset_data % 512 != 0 {
            return bad(format!("unaligned data offset {:#x}", self.offset_data));
        }
        if self.sector_size != 512 {
            return bad(format!("sector size {} is not 512", self.sector_size));
        }
        if self.block_size != BLOCK_SIZE {
            return bad(format!(
                "block size {} is not {BLOCK_SIZE}",
                self.block_size
            ));
        }
        let room = u64::from(self.blocks_in_image) * u64::from(self.block_size);
        if disk_size > room {
            return bad(format!(
                "disk size {disk_size}, image bitmap has room for {room}"
            ));
        }
        if self.uuid_link != [0; 16] {
            return bad("non-NULL link UUID".into());
        }
        if self.uuid_parent != [0; 16] {
            return bad("non-NULL parent UUID".into());
        }
        if self.blocks_in_image > crate::MAX_BLOCKS {
            return bad(format!(
                "too many blocks {}, max is {}",
                self.blocks_in_image,
                crate::MAX_BLOCKS
            ));
        }
        if self.image_type != TYPE_DYNAMIC && self.image_type != TYPE_STATIC {
            return Err(Error::unsupported(format!(
                "VDI image type {} (only normal and fixed images are supported)",
                self.image_type
            )));
        }
        Ok(())
    }
}
