//! The legacy ggml block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, IQ4_NL) and the float
//! storage types (F32, F16, BF16): block structs, scalar reference kernels, and their dispatch,
//! which also hands out the other 32-value format, MXFP4 ([`crate::quant::mxfp4`]).
//!
//! Every block struct is `#[repr(C)]` with only byte-array fields, so it has alignment 1, no
//! padding, and any bit pattern is a valid value. That lets a block slice be viewed straight from
//! a memory map at any offset ([`as_blocks`]) without unaligned references; scales are stored as
//! little-endian byte pairs and decoded through accessors.
//!
//! The scalar kernels follow ggml's reference implementations (`ggml-quants.c`,
//! `ggml-cpu/quants.c`): per block, integer sums of products, then one float multiply by the two
//! scales. They are the oracle the SIMD paths in [`crate::simd::avx2_legacy`] are tested against.

use std::mem::{align_of, size_of};

use half::{bf16, f16};

use crate::dtype::{DType, QK};
use crate::kernel::{DequantFn, DotFn, QuantFn, COLS_MAX};
use crate::quant::tables::KVALUES_IQ4NL;
pub use crate::quant::{as_blocks, as_blocks_mut, f16_le, Block};

/// Encodes `x` as a little-endian IEEE half, rounding to nearest even (as ggml's
/// `GGML_FP32_TO_FP16`).
#[inline]
pub fn f16_le_from(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

/// f32 → bf16 bits exactly as ggml's `ggml_compute_fp32_to_bf16`: NaNs are quieted, everything
/// else rounds to nearest even (infinities stay infinite, overflow becomes infinity).
#[inline]
pub fn bf16_bits_from(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

macro_rules! block {
    ($(#[$doc:meta])* $name:ident, $bytes:expr, { $($(#[$fdoc:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[allow(non_camel_case_types)]
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
        }
        const _: () = assert!(size_of::<$name>() == $bytes);
        const _: () = assert!(align_of::<$name>() == 1);
        // SAFETY: `#[repr(C)]`, only byte-array fields (checked: alignment 1, size = sum of fields).
        unsafe impl Block for $name {
            const NAME: &'static str = stringify!($name);
        }
    };
}
pub(crate) use block;

block!(
    /// Q4_0: 32 values `d * (q - 8)`, `q` a 4-bit code; value `j < 16` is the low nibble of
    /// `qs[j]`, value `j + 16` its high nibble.
    BlockQ4_0, 18, {
        /// Scale (f16, little-endian).
        d: [u8; 2],
        /// Packed 4-bit codes.
        qs: [u8; 16],
    }
);
block!(
    /// Q4_1: 32 values `d * q + m`, nibble order as [`BlockQ4_0`].
    BlockQ4_1, 20, {
        /// Scale (f16).
        d: [u8; 2],
        /// Minimum (f16).
        m: [u8; 2],
        /// Packed 4-bit codes.
        qs: [u8; 16],
    }
);
block!(
    /// Q5_0: 32 values `d * (q - 16)`, `q` 5 bits: the nibble as in [`BlockQ4_0`] plus bit `j`
    /// of the little-endian `qh` as bit 4 of value `j`.
    BlockQ5_0, 22, {
        /// Scale (f16).
        d: [u8; 2],
        /// Fifth bits, one per value (u32, little-endian).
        qh: [u8; 4],
        /// Packed low 4 bits.
        qs: [u8; 16],
    }
);
block!(
    /// Q5_1: 32 values `d * q + m`, `q` 5 bits laid out as in [`BlockQ5_0`].
    BlockQ5_1, 24, {
        /// Scale (f16).
        d: [u8; 2],
        /// Minimum (f16).
        m: [u8; 2],
        /// Fifth bits (u32, little-endian).
        qh: [u8; 4],
        /// Packed low 4 bits.
        qs: [u8; 16],
    }
);
block!(
    /// Q8_0: 32 values `d * q`, `q` a signed byte.
    BlockQ8_0, 34, {
        /// Scale (f16).
        d: [u8; 2],
        /// Codes.
        qs: [i8; 32],
    }
);
block!(
    /// Q8_1: as [`BlockQ8_0`] plus `s = d * sum(qs)` (used for the `m` term of Q4_1/Q5_1 dots).
    BlockQ8_1, 36, {
        /// Scale (f16).
        d: [u8; 2],
        /// `d * sum(qs)` (f16), with `d` the unrounded f32 scale, as ggml.
        s: [u8; 2],
        /// Codes.
        qs: [i8; 32],
    }
);
block!(
    /// IQ4_NL: 32 values `d * KVALUES_IQ4NL[q]`, nibble order as [`BlockQ4_0`].
    BlockIQ4_NL, 18, {
        /// Scale (f16).
        d: [u8; 2],
        /// Packed 4-bit indices into [`KVALUES_IQ4NL`].
        qs: [u8; 16],
    }
);

impl BlockQ4_0 {
    /// The scale as f32.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
}
impl BlockQ4_1 {
    /// The scale as f32.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
    /// The minimum as f32.
    #[inline]
    pub fn m(&self) -> f32 {
        f16_le(self.m)
    }
}
impl BlockQ5_0 {
    /// The scale as f32.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
    /// The 32 fifth bits.
    #[inline]
    pub fn qh(&self) -> u32 {
        u32::from_le_bytes(self.qh)
    }
}
impl BlockQ5_1 {
    /// The scale as f32.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
    /// The minimum as f32.
    #[inline]
    pub fn m(&self) -> f32 {
        f16_le(self.m)
    }
    /// The 32 fifth bits.
    #[inline]
    pub fn qh(&self) -> u32 {
        u32::from_le_bytes(self.qh)
    }
}
impl BlockQ8_0 {
    /// The scale as f32.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
}
impl BlockQ8_1 {
    /// The scale as f32.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
    /// `d * sum(qs)` as f32.
    #[inline]
    pub fn s(&self) -> f32 {
        f16_le(self.s)
    }
}
impl BlockIQ4_NL {
    /// The scale as f32.
    #[inline]
    pub fn d(&self) -> f32 {
        f16_le(self.d)
    }
}

/// The 32 unsigned 4-bit codes of a nibble-packed block, in value order.
#[inline]
pub(crate) fn nibbles(qs: &[u8; 16]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = qs[j] & 0x0f;
        q[j + 16] = qs[j] >> 4;
    }
    q
}

/// The 32 unsigned 5-bit codes of a Q5 block, in value order.
#[inline]
pub(crate) fn fives(qs: &[u8; 16], qh: u32) -> [u8; 32] {
    let mut q = nibbles(qs);
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((qh >> j) & 1) as u8) << 4;
    }
    q
}

/// Splits `n` values into blocks of `block_len`, checking `bytes` holds them.
///
/// # Panics
/// If `n` is not a multiple of the block length or `bytes` is too short.
#[inline]
pub(crate) fn whole_blocks(dtype: DType, n: usize, bytes: &[u8]) -> &[u8] {
    let Some(len) = dtype.row_bytes(n) else {
        panic!("{n} values are not whole {} blocks", dtype.name());
    };
    assert!(
        bytes.len() >= len,
        "{n} {} values need {len} bytes, got {}",
        dtype.name(),
        bytes.len()
    );
    &bytes[..len]
}

// ---------------------------------------------------------------------------------------------
// Dequantization (scalar reference).

fn dequant_blocks<B: Block>(dtype: DType, src: &[u8], dst: &mut [f32], f: impl Fn(&B, &mut [f32])) {
    let src = whole_blocks(dtype, dst.len(), src);
    for (b, out) in as_blocks::<B>(src).iter().zip(dst.chunks_exact_mut(QK)) {
        f(b, out);
    }
}

/// Dequantizes Q4_0 (`dst.len()` values, a multiple of 32).
pub fn dequant_q4_0(src: &[u8], dst: &mut [f32]) {
    dequant_blocks(DType::Q4_0, src, dst, |b: &BlockQ4_0, out| {
        let d = b.d();
        for (o, q) in out.iter_mut().zip(nibbles(&b.qs)) {
            *o = (q as i32 - 8) as f32 * d;
        }
    });
}

/// Dequantizes Q4_1.
pub fn dequant_q4_1(src: &[u8], dst: &mut [f32]) {
    dequant_blocks(DType::Q4_1, src, dst, |b: &BlockQ4_1, out| {
        let (d, m) = (b.d(), b.m());
        for (o, q) in out.iter_mut().zip(nibbles(&b.qs)) {
            *o = q as f32 * d + m;
        }
    });
}

/// Dequantizes Q5_0.
pub fn dequant_q5_0(src: &[u8], dst: &mut [f32]) {
    dequant_blocks(DType::Q5_0, src, dst, |b: &BlockQ5_0, out| {
        let d = b.d();
        for (o, q) in out.iter_mut().zip(fives(&b.qs, b.qh())) {
            *o = (q as i32 - 16) as f32 * d;
        }
    });
}

/// Dequantizes Q5_1.
pub fn dequant_q5_1(src: &[u8], dst: &mut [f32]) {
    dequant_blocks(DType::Q5_1, src, dst, |b: &BlockQ5_1, out| {
        let (d, m) = (b.d(), b.m());
        for (o, q) in out.iter_mut().zip(fives(&b.qs, b.qh())) {
            *o = q as f32 * d + m;
        }
    });
}

/// Dequantizes Q8_0.
pub fn dequant_q8_0(src: &[u8], dst: &mut [f32]) {
    dequant_blocks(DType::Q8_0, src, dst, |b: &BlockQ8_0, out| {
        let d = b.d();
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    });
}

/// Dequantizes Q8_1 (the `s` field is not needed).
pub fn dequant_q8_1(src: &[u8], dst: &mut [f32]) {
    dequant_blocks(DType::Q8_1, src, dst, |b: &BlockQ8_1, out| {
        let d = b.d();
        for (o, &q) in out.iter_mut().zip(&b.qs) {
            *o = q as f32 * d;
        }
    });
}

/// Dequantizes IQ4_NL.
pub fn dequant_iq4_nl(src: &[u8], dst: &mut [f32]) {
    dequant_blocks(DType::IQ4_NL, src, dst, |b: &BlockIQ4_NL, out| {
        let d = b.d();
        for (o, q) in out.iter_mut().zip(nibbles(&b.qs)) {
            *o = KVALUES_IQ4NL[q as usize] as f32 * d;
        }
    });
}

/// Decodes little-endian F32.
pub fn dequant_f32(src: &[u8], dst: &mut [f32]) {
    let src = whole_blocks(DType::F32, dst.len(), src);
    for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// Decodes little-endian F16.
pub fn dequant_f16(src: &[u8], dst: &mut [f32]) {
    let src = whole_blocks(DType::F16, dst.len(), src);
    for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *o = f16_le([b[0], b[1]]);
    }
}

/// Decodes little-endian BF16.
pub fn dequant_bf16(src: &[u8], dst: &mut [f32]) {
    let src = whole_blocks(DType::BF16, dst.len(), src);
    for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *o = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    }
}

// ---------------------------------------------------------------------------------------------
// Activation quantization (scalar reference).

/// Output bytes for `n` values of `dtype`.
pub(crate) fn whole_blocks_mut(dtype: DType, n: usize, bytes: &mut [u8]) -> &mut [u8] {
    let Some(len) = dtype.row_bytes(n) else {
        panic!("{n} values are not whole {} blocks", dtype.name());
    };
    assert!(
        bytes.len() >= len,
        "{n} {} values need {len} bytes, got {}",
        dtype.name(),
        bytes.len()
    );
    &mut bytes[..len]
}

/// The Q8 scale of a block as ggml computes it: `d = amax / 127`, `id = 1/d` (0 for an all-zero
/// block).
#[inline]
pub fn q8_scale(x: &[f32]) -> (f32, f32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, id)
}

/// Quantizes f32 to Q8_0 exactly as ggml's `quantize_row_q8_0_ref` (round half away from zero).
pub fn quant_q8_0(src: &[f32], dst: &mut [u8]) {
    let dst = whole_blocks_mut(DType::Q8_0, src.len(), dst);
    for (x, b) in src
        .chunks_exact(QK)
        .zip(as_blocks_mut::<BlockQ8_0>(dst).iter_mut())
    {
        let (d, id) = q8_scale(x);
        b.d = f16_le_from(d);
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
    }
}

/// Quantizes f32 to Q8_1 exactly as ggml's `quantize_row_q8_1_ref`: as Q8_0, plus
/// `s = d * sum(qs)` with the unrounded `d`.
pub fn quant_q8_1(src: &[f32], dst: &mut [u8]) {
    let dst = whole_blocks_mut(DType::Q8_1, src.len(), dst);
    for (x, b) in src
        .chunks_exact(QK)
        .zip(as_blocks_mut::<BlockQ8_1>(dst).iter_mut())
    {
        let (d, id) = q8_scale(x);
        b.d = f16_le_from(d);
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        b.s = f16_le_from(sum as f32 * d);
    }
}

/// Copies f32 values as little-endian bytes.
pub fn quant_f32(src: &[f32], dst: &mut [u8]) {
    let dst = whole_blocks_mut(DType::F32, src.len(), dst);
    for (b, v) in dst.chunks_exact_mut(4).zip(src) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// Converts f32 to F16, rounding to nearest even.
pub fn quant_f16(src: &[f32], dst: &mut [u8]) {
    let dst = whole_blocks_mut(DType::F16, src.len(), dst);
    for (b, &v) in dst.chunks_exact_mut(2).zip(src) {
        b.copy_from_slice(&f16_le_from(v));
    }
}

/// Converts f32 to BF16 as ggml ([`bf16_bits_from`]).
pub fn quant_bf16(src: &[f32], dst: &mut [u8]) {
    let dst = whole_blocks_mut(DType::BF16, src.len(), dst);
    for (b, &v) in dst.chunks_exact_mut(2).zip(src) {
        b.copy_from_slice(&bf16_bits_from(v).to_le_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Dot products (scalar reference). `n` values of weights `w` against activations `a` in the
// weight type's `vec_dot_type`.

/// The block views of a dot product's operands.
#[inline]
fn dot_blocks<'a, W: Block, A: Block>(
    wt: DType,
    at: DType,
    n: usize,
    w: &'a [u8],
    a: &'a [u8],
) -> (&'a [W], &'a [A]) {
    (
        as_blocks::<W>(whole_blocks(wt, n, w)),
        as_blocks::<A>(whole_blocks(at, n, a)),
    )
}

/// Sum over blocks of `sumi * dw * da`, with `sumi` the integer dot of signed codes (ggml's
/// reference for the symmetric formats).
#[inline]
pub(crate) fn dot_sym<W: Block>(
    wt: DType,
    n: usize,
    w: &[u8],
    a: &[u8],
    codes: impl Fn(&W) -> ([i8; 32], f32),
) -> f32 {
    let (wb, ab) = dot_blocks::<W, BlockQ8_0>(wt, DType::Q8_0, n, w, a);
    let mut sumf = 0.0f32;
    for (x, y) in wb.iter().zip(ab) {
        let (q, d) = codes(x);
        let sumi: i32 = q
            .iter()
            .zip(&y.qs)
            .map(|(&u, &v)| u as i32 * v as i32)
            .sum();
        sumf += sumi as f32 * d * y.d();
    }
    sumf
}

/// Q4_0 × Q8_0.
pub fn dot_q4_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_sym(DType::Q4_0, n, w, a, |b: &BlockQ4_0| {
        (nibbles(&b.qs).map(|q| q as i8 - 8), b.d())
    })
}

/// Q5_0 × Q8_0.
pub fn dot_q5_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_sym(DType::Q5_0, n, w, a, |b: &BlockQ5_0| {
        (fives(&b.qs, b.qh()).map(|q| q as i8 - 16), b.d())
    })
}

/// Q8_0 × Q8_0.
pub fn dot_q8_0_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_sym(DType::Q8_0, n, w, a, |b: &BlockQ8_0| (b.qs, b.d()))
}

/// IQ4_NL × Q8_0.
pub fn dot_iq4_nl_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_sym(DType::IQ4_NL, n, w, a, |b: &BlockIQ4_NL| {
        (nibbles(&b.qs).map(|q| KVALUES_IQ4NL[q as usize]), b.d())
    })
}

/// Sum over blocks of `dw * da * sumi + m * s` for the offset formats (ggml's reference).
#[inline]
fn dot_offset<W: Block>(
    wt: DType,
    n: usize,
    w: &[u8],
    a: &[u8],
    codes: impl Fn(&W) -> ([u8; 32], f32, f32),
) -> f32 {
    let (wb, ab) = dot_blocks::<W, BlockQ8_1>(wt, DType::Q8_1, n, w, a);
    let mut sumf = 0.0f32;
    for (x, y) in wb.iter().zip(ab) {
        let (q, d, m) = codes(x);
        let sumi: i32 = q
            .iter()
            .zip(&y.qs)
            .map(|(&u, &v)| u as i32 * v as i32)
            .sum();
        sumf += (d * y.d()) * sumi as f32 + m * y.s();
    }
    sumf
}

/// Q4_1 × Q8_1.
pub fn dot_q4_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_offset(DType::Q4_1, n, w, a, |b: &BlockQ4_1| {
        (nibbles(&b.qs), b.d(), b.m())
    })
}

/// Q5_1 × Q8_1.
pub fn dot_q5_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_offset(DType::Q5_1, n, w, a, |b: &BlockQ5_1| {
        (fives(&b.qs, b.qh()), b.d(), b.m())
    })
}

/// Q8_1 × Q8_1 (ggml has no such kernel; provided so every legacy type has a dot product).
pub fn dot_q8_1_q8_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = dot_blocks::<BlockQ8_1, BlockQ8_1>(DType::Q8_1, DType::Q8_1, n, w, a);
    let mut sumf = 0.0f32;
    for (x, y) in wb.iter().zip(ab) {
        let sumi: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&u, &v)| u as i32 * v as i32)
                .sum();
        sumf += sumi as f32 * x.d() * y.d();
    }
    sumf
}

/// Float dot with an f64 accumulator, as ggml's scalar `ggml_vec_dot_f32/f16/bf16`.
#[inline]
fn dot_float(
    dtype: DType,
    n: usize,
    w: &[u8],
    a: &[u8],
    width: usize,
    decode: impl Fn(&[u8]) -> f32,
) -> f32 {
    let w = whole_blocks(dtype, n, w);
    let a = whole_blocks(dtype, n, a);
    let mut sum = 0.0f64;
    for (x, y) in w.chunks_exact(width).zip(a.chunks_exact(width)) {
        sum += (decode(x) * decode(y)) as f64;
    }
    sum as f32
}

/// F32 × F32.
pub fn dot_f32_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_float(DType::F32, n, w, a, 4, |b| {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    })
}

/// F16 × F16.
pub fn dot_f16_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_float(DType::F16, n, w, a, 2, |b| f16_le([b[0], b[1]]))
}

/// BF16 × BF16.
pub fn dot_bf16_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_float(DType::BF16, n, w, a, 2, |b| {
        bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
    })
}

// ---------------------------------------------------------------------------------------------
// The operands of the small-batch kernels.

/// Checks a [`crate::kernel::ColsFn`]'s operands: `rows[s]` weight rows of `n` values of `w_dtype` (whole
/// blocks) `w_row` bytes apart in `w[s]` (`rows[1]` equal to `rows[0]` or one fewer), and `n_tok`
/// activation rows of `a_dtype` `a_row` bytes apart in `a`.
///
/// # Panics
/// If a row is too short, a stride is shorter than a row, the sets' sizes do not match, or
/// `n_tok` is not 1 to [`COLS_MAX`].
pub(crate) fn check_cols(
    (w_dtype, a_dtype): (DType, DType),
    n: usize,
    (w, w_row, rows): ([&[u8]; 2], usize, [usize; 2]),
    (a, a_row, n_tok): (&[u8], usize, usize),
) {
    assert!(
        (1..=COLS_MAX).contains(&n_tok),
        "a small batch has 1 to {COLS_MAX} tokens, not {n_tok}"
    );
    assert!(
        rows[1] == rows[0] || rows[1] + 1 == rows[0],
        "the second set of rows has as many as the first or one fewer, not {} and {}",
        rows[0],
        rows[1]
    );
    let wb = w_dtype.row_bytes(n).expect("whole weight blocks");
    let ab = a_dtype.row_bytes(n).expect("whole activation blocks");
    assert!(w_row >= wb && a_row >= ab, "row strides shorter than a row");
    for (w, rows) in w.into_iter().zip(rows) {
        if rows > 0 {
            whole_blocks(w_dtype, n, &w[(rows - 1) * w_row..]);
        }
    }
    whole_blocks(a_dtype, n, &a[(n_tok - 1) * a_row..]);
}

// ---------------------------------------------------------------------------------------------
// The scalar kernels by type.

/// The scalar dequantization function for a legacy or float `dtype` (dequantization is off the
/// hot path; [`crate::dispatch`] hands this out on every ISA).
///
/// # Panics
/// If `dtype` is not a legacy or float type.
pub fn dequant_fn(dtype: DType) -> DequantFn {
    use DType::*;
    match dtype {
        F32 => dequant_f32,
        F16 => dequant_f16,
        BF16 => dequant_bf16,
        Q4_0 => dequant_q4_0,
        Q4_1 => dequant_q4_1,
        Q5_0 => dequant_q5_0,
        Q5_1 => dequant_q5_1,
        Q8_0 => dequant_q8_0,
        Q8_1 => dequant_q8_1,
        IQ4_NL => dequant_iq4_nl,
        MXFP4 => crate::quant::mxfp4::dequant_mxfp4,
        _ => panic!("{} is not a legacy format", dtype.name()),
    }
}

/// The scalar activation quantizer producing a legacy `dtype`.
///
/// # Panics
/// If `dtype` is not one of F32, F16, BF16, Q8_0, Q8_1.
pub fn quant_fn(dtype: DType) -> QuantFn {
    use DType::*;
    match dtype {
        F32 => quant_f32,
        F16 => quant_f16,
        BF16 => quant_bf16,
        Q8_0 => quant_q8_0,
        Q8_1 => quant_q8_1,
        _ => panic!("no activation quantizer into {}", dtype.name()),
    }
}

/// The scalar reference dot product of legacy weights `dtype` with activations in
/// `dtype.vec_dot_type()`.
///
/// # Panics
/// If `dtype` is not a legacy or float type.
pub fn dot_fn(dtype: DType) -> DotFn {
    use DType::*;
    match dtype {
        F32 => dot_f32_f32,
        F16 => dot_f16_f16,
        BF16 => dot_bf16_bf16,
        Q4_0 => dot_q4_0_q8_0,
        Q4_1 => dot_q4_1_q8_1,
        Q5_0 => dot_q5_0_q8_0,
        Q5_1 => dot_q5_1_q8_1,
        Q8_0 => dot_q8_0_q8_0,
        Q8_1 => dot_q8_1_q8_1,
        IQ4_NL => dot_iq4_nl_q8_0,
        MXFP4 => crate::quant::mxfp4::dot_mxfp4_q8_0,
        _ => panic!("{} is not a legacy format", dtype.name()),
    }
}
