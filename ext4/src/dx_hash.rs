//! The directory-index name hashes of htree directories (`ext4fs_dirhash()`): legacy,
//! half-MD4 and TEA, each in a signed- and an unsigned-char variant (`s_flags` says which the
//! filesystem was made with). The write side uses them to put a new entry into the leaf the
//! index names and to split full leaves.

/// `dx_root_info.hash_version` values.
pub const DX_HASH_LEGACY: u8 = 0;
/// Half MD4.
pub const DX_HASH_HALF_MD4: u8 = 1;
/// TEA.
pub const DX_HASH_TEA: u8 = 2;
/// The unsigned variants are the signed ones plus this.
pub const DX_HASH_UNSIGNED_DELTA: u8 = 3;
/// `s_flags`: directory hashes use unsigned chars.
pub const EXT2_FLAGS_UNSIGNED_HASH: u32 = 0x2;

/// Packs name bytes into `out` as the kernel's `str2hashbuf_{signed,unsigned}`.
fn str2hashbuf(msg: &[u8], out: &mut [u32], unsigned: bool) {
    let len = msg.len() as u32;
    let mut pad = len | (len << 8);
    pad |= pad << 16;
    let mut val = pad;
    let take = msg.len().min(out.len() * 4);
    let mut o = 0;
    for (i, &c) in msg[..take].iter().enumerate() {
        let ch = if unsigned {
            u32::from(c)
        } else {
            i32::from(c as i8) as u32
        };
        val = ch.wrapping_add(val << 8);
        if i % 4 == 3 {
            out[o] = val;
            o += 1;
            val = pad;
        }
    }
    if o < out.len() {
        out[o] = val;
        o += 1;
    }
    while o < out.len() {
        out[o] = pad;
        o += 1;
    }
}

fn half_md4_transform(buf: &mut [u32; 4], x: &[u32; 8]) {
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    const K2: u32 = 0o13240474631;
    const K3: u32 = 0o15666365641;
    let [mut a, mut b, mut c, mut d] = *buf;
    macro_rules! round {
        ($f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a
                .wrapping_add($f($b, $c, $d))
                .wrapping_add($x)
                .rotate_left($s);
        };
    }
    round!(f, a, b, c, d, x[0], 3);
    round!(f, d, a, b, c, x[1], 7);
    round!(f, c, d, a, b, x[2], 11);
    round!(f, b, c, d, a, x[3], 19);
    round!(f, a, b, c, d, x[4], 3);
    round!(f, d, a, b, c, x[5], 7);
    round!(f, c, d, a, b, x[6], 11);
    round!(f, b, c, d, a, x[7], 19);
    round!(g, a, b, c, d, x[1].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[3].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[5].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[7].wrapping_add(K2), 13);
    round!(g, a, b, c, d, x[0].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[2].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[4].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[6].wrapping_add(K2), 13);
    round!(h, a, b, c, d, x[3].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[7].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[2].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[6].wrapping_add(K3), 15);
    round!(h, a, b, c, d, x[1].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[5].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[0].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[4].wrapping_add(K3), 15);
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

fn tea_transform(buf: &mut [u32; 4], x: &[u32; 4]) {
    let mut sum = 0u32;
    let (mut b0, mut b1) = (buf[0], buf[1]);
    let [a, b, c, d] = *x;
    for _ in 0..16 {
        sum = sum.wrapping_add(0x9E37_79B9);
        b0 = b0.wrapping_add(
            ((b1 << 4).wrapping_add(a)) ^ (b1.wrapping_add(sum)) ^ ((b1 >> 5).wrapping_add(b)),
        );
        b1 = b1.wrapping_add(
            ((b0 << 4).wrapping_add(c)) ^ (b0.wrapping_add(sum)) ^ ((b0 >> 5).wrapping_add(d)),
        );
    }
    buf[0] = buf[0].wrapping_add(b0);
    buf[1] = buf[1].wrapping_add(b1);
}

fn dx_hack_hash(name: &[u8], unsigned: bool) -> u32 {
    let (mut h0, mut h1) = (0x12a3_fe2du32, 0x37ab_e8f9u32);
    for &c in name {
        let ch = if unsigned {
            u32::from(c)
        } else {
            i32::from(c as i8) as u32
        };
        let mut h = h1.wrapping_add(h0 ^ ch.wrapping_mul(7_152_373));
        if h & 0x8000_0000 != 0 {
            h = h.wrapping_sub(0x7fff_ffff);
        }
        h1 = h0;
        h0 = h;
    }
    h0 << 1
}

/// The major hash of `name` for hash version `version` (0..=5, unsigned variants included)
/// with the filesystem's `seed` (`s_hash_seed`); None for an unknown version.
pub fn dirhash(name: &[u8], version: u8, seed: &[u32; 4]) -> Option<u32> {
    let mut buf: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    if seed.iter().any(|&s| s != 0) {
        buf = *seed;
    }
    let unsigned = version >= DX_HASH_UNSIGNED_DELTA;
    let hash = match version % DX_HASH_UNSIGNED_DELTA {
        DX_HASH_LEGACY if version <= 5 => dx_hack_hash(name, unsigned),
        DX_HASH_HALF_MD4 if version <= 5 => {
            let mut p = name;
            loop {
                let mut x = [0u32; 8];
                str2hashbuf(p, &mut x, unsigned);
                half_md4_transform(&mut buf, &x);
                if p.len() <= 32 {
                    break;
                }
                p = &p[32..];
            }
            buf[1]
        }
        DX_HASH_TEA if version <= 5 => {
            let mut p = name;
            loop {
                let mut x = [0u32; 4];
                str2hashbuf(p, &mut x, unsigned);
                tea_transform(&mut buf, &x);
                if p.len() <= 16 {
                    break;
                }
                p = &p[16..];
            }
            buf[0]
        }
        _ => return None,
    };
    let mut hash = hash & !1;
    if hash == 0x7fff_ffff << 1 {
        hash = (0x7fff_ffff - 1) << 1;
    }
    Some(hash)
}
