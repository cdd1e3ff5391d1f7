//! The K-quant family (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K) and IQ4_XS: block layouts, scalar
//! reference kernels and this family's dispatch.
//!
//! Every layout follows ggml's `ggml-common.h` byte for byte. Fields are byte arrays (f16 and f32
//! scales as little-endian bytes), so every block has alignment 1 and a byte slice at any offset
//! of a memory map can be viewed as a slice of blocks without copying ([`as_blocks`]).
//!
//! Weights of these types are multiplied against activations quantized to Q8_K
//! ([`quantize_row_q8k`]). The dot products keep ggml's numerics: each super-block contributes
//! `d_w * d_a * Σ_j scale_j * Σ_{i∈j} q_i a_i` with exact integer inner sums, and the formats with
//! a per-sub-block minimum subtract `dmin_w * d_a * Σ_j min_j * bsum_j`, using the 16-value sums
//! the Q8_K block carries (`bsums`) rather than re-reading the activations.

use crate::dtype::{DType, QK_K};
use crate::kernel::{DequantFn, DotFn, QuantFn};
use crate::quant::tables::KVALUES_IQ4NL;
pub use crate::quant::{as_blocks, as_blocks_mut, f16_le, Block};

/// The blocks holding the first `n` values of a row of `T`.
///
/// # Panics
/// If `n` is not a multiple of [`QK_K`] or `bytes` holds fewer than `n` values.
pub(crate) fn row_blocks<T: Block>(bytes: &[u8], n: usize) -> &[T] {
    let name = T::NAME;
    assert!(
        n.is_multiple_of(QK_K),
        "{name} row of {n} values is not a multiple of {QK_K}"
    );
    let len = n / QK_K * size_of::<T>();
    assert!(
        bytes.len() >= len,
        "{name} row of {n} values needs {len} bytes, got {}",
        bytes.len()
    );
    as_blocks(&bytes[..len])
}

macro_rules! block_type {
    ($t:ty, $dtype:expr, $size:expr) => {
        // SAFETY: the struct is `#[repr(C)]` over byte arrays only (alignment 1, no padding, any
        // bit pattern valid); the assertion below pins size and alignment.
        unsafe impl Block for $t {
            const NAME: &'static str = $dtype.name();
        }
        const _: () = assert!(
            size_of::<$t>() == $size
                && size_of::<$t>() == $dtype.block_bytes()
                && align_of::<$t>() == 1
        );
    };
}

/// Q2_K: 16 sub-blocks of 16 values, 2-bit levels `q`, value = `d*sc*q - dmin*m` with 4-bit
/// `sc`, `m` (ggml `block_q2_K`, 84 bytes, 2.625 bits per weight).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ2K {
    /// Low nibble: scale, high nibble: min, per sub-block of 16.
    pub scales: [u8; 16],
    /// Levels, four per byte: value `128*h + 32*s + l` is bits `2s..2s+2` of `qs[32*h + l]`.
    pub qs: [u8; 64],
    /// Super-block scale (f16).
    pub d: [u8; 2],
    /// Super-block scale of the mins (f16).
    pub dmin: [u8; 2],
}
block_type!(BlockQ2K, DType::Q2_K, 84);

/// Q3_K: 16 sub-blocks of 16 values, 3-bit levels in [-4, 3], value = `d*(sc-32)*q` with 6-bit
/// `sc` (ggml `block_q3_K`, 110 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ3K {
    /// High bit of each level, *inverted* (set means no -4): value `128*h + 32*s + l` uses bit
    /// `4*h + s` of `hmask[l]`.
    pub hmask: [u8; 32],
    /// Low two bits of each level, laid out as [`BlockQ2K::qs`].
    pub qs: [u8; 64],
    /// Sixteen 6-bit scales: low nibbles in bytes 0..8, high bit pairs in bytes 8..12.
    pub scales: [u8; 12],
    /// Super-block scale (f16).
    pub d: [u8; 2],
}
block_type!(BlockQ3K, DType::Q3_K, 110);

/// Q4_K: 8 sub-blocks of 32 values, 4-bit levels, value = `d*sc*q - dmin*m` with 6-bit `sc`, `m`
/// (ggml `block_q4_K`, 144 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4K {
    /// Super-block scale (f16).
    pub d: [u8; 2],
    /// Super-block scale of the mins (f16).
    pub dmin: [u8; 2],
    /// Eight 6-bit scales and eight 6-bit mins, packed (see [`scales_mins_k4`]).
    pub scales: [u8; 12],
    /// Levels: value `64*c + l` is the low nibble of `qs[32*c + l]`, value `64*c + 32 + l` its
    /// high nibble.
    pub qs: [u8; 128],
}
block_type!(BlockQ4K, DType::Q4_K, 144);

/// Q5_K: as Q4_K with a fifth bit per level (ggml `block_q5_K`, 176 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5K {
    /// Super-block scale (f16).
    pub d: [u8; 2],
    /// Super-block scale of the mins (f16).
    pub dmin: [u8; 2],
    /// Eight 6-bit scales and eight 6-bit mins, packed (see [`scales_mins_k4`]).
    pub scales: [u8; 12],
    /// Fifth bit: value `32*j + l` uses bit `j` of `qh[l]`.
    pub qh: [u8; 32],
    /// Low four bits, laid out as [`BlockQ4K::qs`].
    pub qs: [u8; 128],
}
block_type!(BlockQ5K, DType::Q5_K, 176);

/// Q6_K: 16 sub-blocks of 16 values, 6-bit levels, value = `d*sc*(q-32)` with signed 8-bit `sc`
/// (ggml `block_q6_K`, 210 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ6K {
    /// Low four bits: value `128*h + 32*k + l` is the low nibble of `ql[64*h + 32*(k%2) + l]`
    /// for k < 2, the high nibble for k ≥ 2.
    pub ql: [u8; 128],
    /// High two bits: value `128*h + 32*k + l` uses bits `2k..2k+2` of `qh[32*h + l]`.
    pub qh: [u8; 64],
    /// Scale per sub-block of 16.
    pub scales: [i8; 16],
    /// Super-block scale (f16).
    pub d: [u8; 2],
}
block_type!(BlockQ6K, DType::Q6_K, 210);

/// Q8_K: 256 signed 8-bit values with an f32 scale and the sum of each 16 values, the vec-dot
/// type of the K-quants (ggml `block_q8_K`, 292 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {
    /// Scale (f32, little-endian).
    pub d: [u8; 4],
    /// Values; [`quantize_row_q8k`] keeps them in [-127, 127].
    pub qs: [i8; 256],
    /// Sum of each 16 consecutive `qs` (i16, little-endian).
    pub bsums: [[u8; 2]; 16],
}
block_type!(BlockQ8K, DType::Q8_K, 292);

/// IQ4_XS: 8 sub-blocks of 32 values, 4-bit indices into the non-linear [`KVALUES_IQ4NL`],
/// value = `d*(ls-32)*kvalues[q]` with 6-bit `ls` (ggml `block_iq4_xs`, 136 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIq4Xs {
    /// Super-block scale (f16).
    pub d: [u8; 2],
    /// High two bits of the sub-block scales: bits `2j..2j+2` (u16, little-endian).
    pub scales_h: [u8; 2],
    /// Low four bits of the sub-block scales: nibble `j%2` of byte `j/2`.
    pub scales_l: [u8; 4],
    /// Indices: value `32*j + l` is the low nibble of `qs[16*j + l]` for l < 16, else the high
    /// nibble of `qs[16*j + l - 16]`.
    pub qs: [u8; 128],
}
block_type!(BlockIq4Xs, DType::IQ4_XS, 136);

/// Unpacks the eight 6-bit scales and eight 6-bit mins of Q4_K and Q5_K (ggml's
/// `get_scale_min_k4`, on whole words). Bytes 0..4 hold scales 0..4 in their low six bits,
/// bytes 4..8 mins 0..4; bytes 8..12 hold the low nibbles of scales (low) and mins (high) 4..8,
/// whose top two bits sit in the spare top bits of bytes 0..8.
#[inline]
pub fn scales_mins_k4(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let word = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (a, b, c) = (word(0), word(4), word(8));
    let sc_lo = a & 0x3f3f_3f3f;
    let mn_lo = b & 0x3f3f_3f3f;
    let sc_hi = (c & 0x0f0f_0f0f) | (((a >> 6) & 0x0303_0303) << 4);
    let mn_hi = ((c >> 4) & 0x0f0f_0f0f) | (((b >> 6) & 0x0303_0303) << 4);
    let join = |lo: u32, hi: u32| (u64::from(lo) | (u64::from(hi) << 32)).to_le_bytes();
    (join(sc_lo, sc_hi), join(mn_lo, mn_hi))
}

/// Unpacks the sixteen 6-bit scales of Q3_K, minus 32: scale `i` has its low nibble in nibble
/// `i/8` of byte `i%8` and its top two bits at bits `2*(i/4)` of byte `8 + i%4`.
#[inline]
pub fn scales_q3k(s: &[u8; 12]) -> [i8; 16] {
    let word = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (a, b, c) = (word(0), word(4), word(8));
    let words = [
        (a & 0x0f0f_0f0f) | ((c & 0x0303_0303) << 4),
        (b & 0x0f0f_0f0f) | (((c >> 2) & 0x0303_0303) << 4),
        ((a >> 4) & 0x0f0f_0f0f) | (((c >> 4) & 0x0303_0303) << 4),
        ((b >> 4) & 0x0f0f_0f0f) | (((c >> 6) & 0x0303_0303) << 4),
    ];
    let mut out = [0i8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(words) {
        for (o, byte) in o.iter_mut().zip(w.to_le_bytes()) {
            *o = byte as i8 - 32;
        }
    }
    out
}

impl BlockQ2K {
    /// Super-block scale.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
    /// Super-block scale of the mins.
    #[inline]
    pub fn dmin(&self) -> f32 {
        f16_le(self.dmin)
    }
    /// The 256 levels, in [0, 3].
    pub fn levels(&self) -> [i8; QK_K] {
        let mut q = [0i8; QK_K];
        for (h, qs) in self.qs.chunks_exact(32).enumerate() {
            for s in 0..4 {
                for (l, &b) in qs.iter().enumerate() {
                    q[128 * h + 32 * s + l] = ((b >> (2 * s)) & 3) as i8;
                }
            }
        }
        q
    }
}

impl BlockQ3K {
    /// Super-block scale.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
    /// The 256 levels, in [-4, 3].
    pub fn levels(&self) -> [i8; QK_K] {
        let mut q = [0i8; QK_K];
        for (h, qs) in self.qs.chunks_exact(32).enumerate() {
            for s in 0..4 {
                let bit = 4 * h + s;
                for (l, &b) in qs.iter().enumerate() {
                    let low = ((b >> (2 * s)) & 3) as i8;
                    let high_clear = (self.hmask[l] >> bit) & 1 == 0;
                    q[128 * h + 32 * s + l] = low - if high_clear { 4 } else { 0 };
                }
            }
        }
        q
    }
}

impl BlockQ4K {
    /// Super-block scale.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
    /// Super-block scale of the mins.
    #[inline]
    pub fn dmin(&self) -> f32 {
        f16_le(self.dmin)
    }
    /// The 256 levels, in [0, 15].
    pub fn levels(&self) -> [i8; QK_K] {
        let mut q = [0i8; QK_K];
        for (c, qs) in self.qs.chunks_exact(32).enumerate() {
            for (l, &b) in qs.iter().enumerate() {
                q[64 * c + l] = (b & 0x0f) as i8;
                q[64 * c + 32 + l] = (b >> 4) as i8;
            }
        }
        q
    }
}

impl BlockQ5K {
    /// Super-block scale.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
    /// Super-block scale of the mins.
    #[inline]
    pub fn dmin(&self) -> f32 {
        f16_le(self.dmin)
    }
    /// The 256 levels, in [0, 31].
    pub fn levels(&self) -> [i8; QK_K] {
        let mut q = [0i8; QK_K];
        for (c, qs) in self.qs.chunks_exact(32).enumerate() {
            for (l, &b) in qs.iter().enumerate() {
                let h = self.qh[l];
                q[64 * c + l] = ((b & 0x0f) | (((h >> (2 * c)) & 1) << 4)) as i8;
                q[64 * c + 32 + l] = ((b >> 4) | (((h >> (2 * c + 1)) & 1) << 4)) as i8;
            }
        }
        q
    }
}

impl BlockQ6K {
    /// Super-block scale.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
    /// The 256 levels, offset by -32: in [-32, 31].
    pub fn levels(&self) -> [i8; QK_K] {
        let mut q = [0i8; QK_K];
        for h in 0..2 {
            let ql = &self.ql[64 * h..64 * h + 64];
            let qh = &self.qh[32 * h..32 * h + 32];
            for k in 0..4 {
                for l in 0..32 {
                    let low = (ql[32 * (k % 2) + l] >> (4 * (k / 2))) & 0x0f;
                    let high = (qh[l] >> (2 * k)) & 3;
                    q[128 * h + 32 * k + l] = (low | high << 4) as i8 - 32;
                }
            }
        }
        q
    }
}

impl BlockQ8K {
    /// Scale.
    #[inline]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }
    /// Sum of values `16*j .. 16*j + 16`.
    #[inline]
    pub fn bsum(&self, j: usize) -> i16 {
        i16::from_le_bytes(self.bsums[j])
    }
}

impl BlockIq4Xs {
    /// Super-block scale.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
    /// Scale of sub-block `j` (of 32 values), in [-32, 31].
    #[inline]
    pub fn scale(&self, j: usize) -> i32 {
        let low = (self.scales_l[j / 2] >> (4 * (j % 2))) & 0x0f;
        let high = (u16::from_le_bytes(self.scales_h) >> (2 * j)) & 3;
        (i32::from(low) | (i32::from(high) << 4)) - 32
    }
    /// The 256 values `kvalues[q]`, in [-127, 113].
    pub fn levels(&self) -> [i8; QK_K] {
        let mut q = [0i8; QK_K];
        for (j, qs) in self.qs.chunks_exact(16).enumerate() {
            for (l, &b) in qs.iter().enumerate() {
                q[32 * j + l] = KVALUES_IQ4NL[usize::from(b & 0x0f)];
                q[32 * j + 16 + l] = KVALUES_IQ4NL[usize::from(b >> 4)];
            }
        }
        q
    }
}

/// Checks the destination length of a dequantization and returns the source blocks.
fn dequant_blocks<'a, T: Block>(src: &'a [u8], dst: &[f32]) -> &'a [T] {
    row_blocks(src, dst.len())
}

/// Dequantizes Q2_K: `d*sc*q - dmin*m` (the order of operations of ggml and gguf-py).
///
/// # Panics
/// If `dst.len()` is not a multiple of 256 or `src` is too short.
pub fn dequantize_row_q2k(src: &[u8], dst: &mut [f32]) {
    for (x, out) in dequant_blocks::<BlockQ2K>(src, dst)
        .iter()
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let (d, dmin, q) = (x.d(), x.dmin(), x.levels());
        for (j, (out, q)) in out.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let dl = d * f32::from(x.scales[j] & 0x0f);
            let ml = dmin * f32::from(x.scales[j] >> 4);
            for (o, &q) in out.iter_mut().zip(q) {
                *o = dl * f32::from(q) - ml;
            }
        }
    }
}

/// Dequantizes Q3_K: `d*(sc-32)*q`.
///
/// # Panics
/// If `dst.len()` is not a multiple of 256 or `src` is too short.
pub fn dequantize_row_q3k(src: &[u8], dst: &mut [f32]) {
    for (x, out) in dequant_blocks::<BlockQ3K>(src, dst)
        .iter()
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let (d, sc, q) = (x.d(), scales_q3k(&x.scales), x.levels());
        scale_levels(out, &q, 16, |j| d * f32::from(sc[j]));
    }
}

/// Dequantizes Q4_K: `d*sc*q - dmin*m`.
///
/// # Panics
/// If `dst.len()` is not a multiple of 256 or `src` is too short.
pub fn dequantize_row_q4k(src: &[u8], dst: &mut [f32]) {
    for (x, out) in dequant_blocks::<BlockQ4K>(src, dst)
        .iter()
        .zip(dst.chunks_exact_mut(QK_K))
    {
        dequant_k4(x.d(), x.dmin(), &x.scales, &x.levels(), out);
    }
}

/// Dequantizes Q5_K: `d*sc*q - dmin*m`.
///
/// # Panics
/// If `dst.len()` is not a multiple of 256 or `src` is too short.
pub fn dequantize_row_q5k(src: &[u8], dst: &mut [f32]) {
    for (x, out) in dequant_blocks::<BlockQ5K>(src, dst)
        .iter()
        .zip(dst.chunks_exact_mut(QK_K))
    {
        dequant_k4(x.d(), x.dmin(), &x.scales, &x.levels(), out);
    }
}

/// Dequantizes Q6_K: `d*sc*(q-32)`.
///
/// # Panics
/// If `dst.len()` is not a multiple of 256 or `src` is too short.
pub fn dequantize_row_q6k(src: &[u8], dst: &mut [f32]) {
    for (x, out) in dequant_blocks::<BlockQ6K>(src, dst)
        .iter()
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let (d, q) = (x.d(), x.levels());
        scale_levels(out, &q, 16, |j| d * f32::from(x.scales[j]));
    }
}

/// Dequantizes Q8_K: `d*q`.
///
/// # Panics
/// If `dst.len()` is not a multiple of 256 or `src` is too short.
pub fn dequantize_row_q8k(src: &[u8], dst: &mut [f32]) {
    for (x, out) in dequant_blocks::<BlockQ8K>(src, dst)
        .iter()
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = x.d();
        for (o, &q) in out.iter_mut().zip(&x.qs) {
            *o = d * f32::from(q);
        }
    }
}

/// Dequantizes IQ4_XS: `d*(ls-32)*kvalues[q]`.
///
/// # Panics
/// If `dst.len()` is not a multiple of 256 or `src` is too short.
pub fn dequantize_row_iq4xs(src: &[u8], dst: &mut [f32]) {
    for (x, out) in dequant_blocks::<BlockIq4Xs>(src, dst)
        .iter()
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let (d, q) = (x.d(), x.levels());
        scale_levels(out, &q, 32, |j| d * x.scale(j) as f32);
    }
}

/// `out[i] = scale(i / sub) * q[i]`, the scale computed once per sub-block.
fn scale_levels(out: &mut [f32], q: &[i8], sub: usize, scale: impl Fn(usize) -> f32) {
    for (j, (out, q)) in out
        .chunks_exact_mut(sub)
        .zip(q.chunks_exact(sub))
        .enumerate()
    {
        let dl = scale(j);
        for (o, &q) in out.iter_mut().zip(q) {
            *o = dl * f32::from(q);
        }
    }
}

/// Q4_K and Q5_K share scales, mins and the dequantization formula.
fn dequant_k4(d: f32, dmin: f32, scales: &[u8; 12], q: &[i8; QK_K], out: &mut [f32]) {
    let (sc, mn) = scales_mins_k4(scales);
    for (j, (out, q)) in out.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
        let dl = d * f32::from(sc[j]);
        let ml = dmin * f32::from(mn[j]);
        for (o, &q) in out.iter_mut().zip(q) {
            *o = dl * f32::from(q) - ml;
        }
    }
}

/// Quantizes f32 activations to Q8_K exactly as ggml's `quantize_row_q8_K_ref`: per block the
/// value of largest magnitude `max` (the first one, sign kept) maps to -127, each value to
/// `round_ties_even(x * -127/max)` capped at 127, `d = 1/iscale`, and `bsums` are the sums of each
/// 16. An all-zero block gets `d = 0`, zero values and zero sums.
///
/// # Panics
/// If `src.len()` is not a multiple of 256 or `dst` is not exactly the Q8_K size of `src`.
pub fn quantize_row_q8k(src: &[f32], dst: &mut [u8]) {
    let ys = q8k_dst(src, dst);
    for (x, y) in src.chunks_exact(QK_K).zip(ys) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *y = BlockQ8K {
                d: [0; 4],
                qs: [0; QK_K],
                bsums: [[0; 2]; 16],
            };
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            // ggml's `nearest_int` adds 1.5*2^23, which rounds half to even.
            *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
        }
        finish_q8k(y, 1.0 / iscale);
    }
}

/// Checks the lengths of a Q8_K quantization and returns the destination blocks.
pub(crate) fn q8k_dst<'a>(src: &[f32], dst: &'a mut [u8]) -> &'a mut [BlockQ8K] {
    assert!(
        src.len().is_multiple_of(QK_K),
        "Q8_K row of {} values is not a multiple of {QK_K}",
        src.len()
    );
    let len = src.len() / QK_K * size_of::<BlockQ8K>();
    assert!(
        dst.len() == len,
        "Q8_K row of {} values needs {len} bytes, got {}",
        src.len(),
        dst.len()
    );
    as_blocks_mut(dst)
}

/// Stores the scale and the 16-value sums of a Q8_K block whose `qs` are set.
pub(crate) fn finish_q8k(y: &mut BlockQ8K, d: f32) {
    y.d = d.to_le_bytes();
    for (s, q) in y.bsums.iter_mut().zip(y.qs.chunks_exact(16)) {
        *s = (q.iter().map(|&v| i16::from(v)).sum::<i16>()).to_le_bytes();
    }
}

/// `Σ_j scale(j) * Σ_{i in sub-block j} q_i a_i` over sub-blocks of `sub` values.
fn scaled_isum(q: &[i8; QK_K], a: &[i8; QK_K], sub: usize, scale: impl Fn(usize) -> i32) -> i32 {
    q.chunks_exact(sub)
        .zip(a.chunks_exact(sub))
        .enumerate()
        .map(|(j, (q, a))| {
            let s: i32 = q
                .iter()
                .zip(a)
                .map(|(&q, &a)| i32::from(q) * i32::from(a))
                .sum();
            scale(j) * s
        })
        .sum()
}

/// Sum of the activations of each sub-block of 32 (two Q8_K `bsums`).
fn bsums_32(y: &BlockQ8K) -> [i32; 8] {
    std::array::from_fn(|j| i32::from(y.bsum(2 * j)) + i32::from(y.bsum(2 * j + 1)))
}

/// Checks the arguments of a dot product and pairs weight blocks with activation blocks.
fn dot_blocks<'a, W: Block>(
    n: usize,
    w: &'a [u8],
    a: &'a [u8],
) -> impl Iterator<Item = (&'a W, &'a BlockQ8K)> {
    row_blocks::<W>(w, n)
        .iter()
        .zip(row_blocks::<BlockQ8K>(a, n))
}

/// Scalar reference dot product of `n` Q2_K weights with Q8_K activations.
///
/// # Panics
/// If `n` is not a multiple of 256 or a slice holds fewer than `n` values.
pub fn dot_q2k_q8k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_blocks::<BlockQ2K>(n, w, a)
        .map(|(x, y)| {
            let isum = scaled_isum(&x.levels(), &y.qs, 16, |j| i32::from(x.scales[j] & 0x0f));
            let msum: i32 = (0..16)
                .map(|j| i32::from(x.scales[j] >> 4) * i32::from(y.bsum(j)))
                .sum();
            x.d() * y.d() * isum as f32 - x.dmin() * y.d() * msum as f32
        })
        .sum()
}

/// Scalar reference dot product of `n` Q3_K weights with Q8_K activations.
///
/// # Panics
/// If `n` is not a multiple of 256 or a slice holds fewer than `n` values.
pub fn dot_q3k_q8k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_blocks::<BlockQ3K>(n, w, a)
        .map(|(x, y)| {
            let sc = scales_q3k(&x.scales);
            let isum = scaled_isum(&x.levels(), &y.qs, 16, |j| i32::from(sc[j]));
            x.d() * y.d() * isum as f32
        })
        .sum()
}

/// Scalar reference dot product of `n` Q4_K weights with Q8_K activations.
///
/// # Panics
/// If `n` is not a multiple of 256 or a slice holds fewer than `n` values.
pub fn dot_q4k_q8k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_blocks::<BlockQ4K>(n, w, a)
        .map(|(x, y)| dot_k4(x.d(), x.dmin(), &x.scales, &x.levels(), y))
        .sum()
}

/// Scalar reference dot product of `n` Q5_K weights with Q8_K activations.
///
/// # Panics
/// If `n` is not a multiple of 256 or a slice holds fewer than `n` values.
pub fn dot_q5k_q8k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_blocks::<BlockQ5K>(n, w, a)
        .map(|(x, y)| dot_k4(x.d(), x.dmin(), &x.scales, &x.levels(), y))
        .sum()
}

/// One super-block of Q4_K or Q5_K against Q8_K.
fn dot_k4(d: f32, dmin: f32, scales: &[u8; 12], q: &[i8; QK_K], y: &BlockQ8K) -> f32 {
    let (sc, mn) = scales_mins_k4(scales);
    let isum = scaled_isum(q, &y.qs, 32, |j| i32::from(sc[j]));
    let msum: i32 = bsums_32(y)
        .iter()
        .zip(mn)
        .map(|(&b, m)| b * i32::from(m))
        .sum();
    d * y.d() * isum as f32 - dmin * y.d() * msum as f32
}

/// Scalar reference dot product of `n` Q6_K weights with Q8_K activations.
///
/// # Panics
/// If `n` is not a multiple of 256 or a slice holds fewer than `n` values.
pub fn dot_q6k_q8k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_blocks::<BlockQ6K>(n, w, a)
        .map(|(x, y)| {
            let isum = scaled_isum(&x.levels(), &y.qs, 16, |j| i32::from(x.scales[j]));
            x.d() * y.d() * isum as f32
        })
        .sum()
}

/// Scalar reference dot product of `n` IQ4_XS weights with Q8_K activations.
///
/// # Panics
/// If `n` is not a multiple of 256 or a slice holds fewer than `n` values.
pub fn dot_iq4xs_q8k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_blocks::<BlockIq4Xs>(n, w, a)
        .map(|(x, y)| {
            let isum = scaled_isum(&x.levels(), &y.qs, 32, |j| x.scale(j));
            x.d() * y.d() * isum as f32
        })
        .sum()
}

/// The scalar dequantization function for a K-quant `dtype` (dequantization is off the decode
/// path; [`crate::dispatch`] hands this out on every ISA).
///
/// # Panics
/// If `dtype` is not a K-quant or IQ4_XS.
pub fn dequant_fn(dtype: DType) -> DequantFn {
    match dtype {
        DType::Q2_K => dequantize_row_q2k,
        DType::Q3_K => dequantize_row_q3k,
        DType::Q4_K => dequantize_row_q4k,
        DType::Q5_K => dequantize_row_q5k,
        DType::Q6_K => dequantize_row_q6k,
        DType::Q8_K => dequantize_row_q8k,
        DType::IQ4_XS => dequantize_row_iq4xs,
        _ => panic!("{} is not a K-quant type", dtype.name()),
    }
}

/// The scalar quantizer producing `dtype`; only Q8_K is an activation type here.
///
/// # Panics
/// If `dtype` is not Q8_K.
pub fn quant_fn(dtype: DType) -> QuantFn {
    assert!(
        dtype == DType::Q8_K,
        "activations are never quantized to {}",
        dtype.name()
    );
    quantize_row_q8k
}

/// The scalar reference dot product of `dtype` weights with Q8_K activations.
///
/// # Panics
/// If `dtype` has no dot product here (Q8_K, non-K types).
pub fn dot_fn(dtype: DType) -> DotFn {
    match dtype {
        DType::Q2_K => dot_q2k_q8k,
        DType::Q3_K => dot_q3k_q8k,
        DType::Q4_K => dot_q4k_q8k,
        DType::Q5_K => dot_q5k_q8k,
        DType::Q6_K => dot_q6k_q8k,
        DType::IQ4_XS => dot_iq4xs_q8k,
        _ => panic!("no dot product for {} weights", dtype.name()),
    }
}
