//! AVX2 + FMA + F16C kernels for the legacy formats and the float types.
//!
//! Each `unsafe fn …_avx2` works on raw block pointers; a safe wrapper of the same name without the
//! suffix checks the slice lengths and that the CPU has the features. The wrappers are what
//! [`crate::dispatch::dot_fn`], [`crate::dispatch::quant_fn`] and
//! [`crate::dispatch::tile_fns`] hand out for [`Isa::Avx2`].
//!
//! The integer dots use the usual `maddubs` trick (ggml's `mul_sum_i8_pairs_float`): the weight
//! codes' absolute values times the activations carrying the weights' signs, so the unsigned ×
//! signed byte multiply applies. That is exact only for activation codes in `-127..=127`, which
//! the Q8 quantizers guarantee (they never produce -128; a -128 would give a wrong sum, never
//! undefined behaviour). Sums differ from the scalar reference only by float rounding.
//!
//! The symmetric formats with Q8_0 activations (Q4_0, Q5_0, Q8_0, IQ4_NL, MXFP4) share one
//! register-tiled kernel, [`tile_sym_q8_0`]: several weight rows × several activation rows per
//! call, with each element reduced exactly as the 1×1 dot, so matmul can use tiles for speed and
//! stay batch invariant.

use std::arch::x86_64::*;
use std::ptr::read_unaligned;

use crate::dtype::{DType, QK};
use crate::kernel::{
    active_isa, for_tokens, DotFn, Isa, QuantFn, TileFns, TileOut, COLS_MAX, TILE_ROWS, TILE_TOKENS,
};
use crate::quant::e8m0_to_f32_half;
use crate::quant::legacy::{check_cols, f16_le_from, whole_blocks, whole_blocks_mut};
use crate::quant::tables::{KVALUES_IQ4NL, KVALUES_MXFP4};

/// Asserts the CPU features the `_avx2` functions need (a cached check, negligible per row).
#[inline]
fn assert_avx2() {
    assert!(
        active_isa() == Isa::Avx2,
        "AVX2 kernel called on a CPU without AVX2+FMA+F16C"
    );
}

/// Horizontal sum of 8 floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// A register tile's results: [`hsum_ps`] of each accumulator.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum_tile<const R: usize, const T: usize>(acc: &[[__m256; T]; R]) -> [[f32; T]; R] {
    // Loops, not `map`: a closure does not inherit `target_feature`.
    let mut out = [[0.0; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = hsum_ps(acc[r][t]);
        }
    }
    out
}

/// Product of the f16 values at `p` and `q` (block scales).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_product(p: *const u8, q: *const u8) -> __m128 {
    let a = read_unaligned(p.cast::<u16>()) as i32;
    let b = read_unaligned(q.cast::<u16>()) as i32;
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(a | (b << 16)));
    _mm_mul_ss(v, _mm_movehdup_ps(v))
}

/// `sum(u * s)` of unsigned × signed bytes, as 8 float partial sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum_u8_i8_ps(u: __m256i, s: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(u, s);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// The 32 nibbles of 16 packed bytes at `p`, in value order (low nibbles, then high nibbles).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let q = _mm_loadu_si128(p.cast());
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(q), q);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// As [`nibbles`], without a lane insert: the 16 bytes are broadcast to both 128-bit lanes by the
/// load, and the high lane shifted by a variable 64-bit shift (bits pulled in from the next byte
/// land in the high nibble, which the mask drops).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles_bcast(p: *const u8) -> __m256i {
    let q = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast()));
    let both = _mm256_srlv_epi64(q, _mm256_set_epi64x(4, 4, 0, 0));
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// Byte `j` is 0xFF where bit `j` of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bit_bytes(bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask)
}

const Q4_0_BYTES: usize = DType::Q4_0.block_bytes();
const Q4_1_BYTES: usize = DType::Q4_1.block_bytes();
const Q5_0_BYTES: usize = DType::Q5_0.block_bytes();
const Q5_1_BYTES: usize = DType::Q5_1.block_bytes();
const Q8_0_BYTES: usize = DType::Q8_0.block_bytes();
const Q8_1_BYTES: usize = DType::Q8_1.block_bytes();
const IQ4_NL_BYTES: usize = DType::IQ4_NL.block_bytes();
const MXFP4_BYTES: usize = DType::MXFP4.block_bytes();

/// A symmetric weight format (`d * signed code`, `d` an f16 first in the block unless the format
/// says otherwise) whose dot product takes Q8_0 activations.
pub trait SymQ8_0 {
    /// The storage type.
    const DTYPE: DType;
    /// Bytes per block.
    const BYTES: usize;
    /// The 32 signed codes of the block at `x`, in value order.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `x` must point at a whole block.
    unsafe fn codes(x: *const u8) -> __m256i;
    /// [`SymQ8_0::codes`] for the AVX-512 VNNI kernels, which a format overrides where
    /// AVX-512 decodes it faster (Q5_0).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; `x` must point at a whole
    /// block.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn codes_avx512(x: *const u8) -> __m256i {
        Self::codes(x)
    }
    /// The block's scale at `x`, broadcast to 8 lanes: by default the f16 at its start.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `x` must point at a whole block.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale(x: *const u8) -> __m256 {
        broadcast_f16(x)
    }
    /// 0 when [`SymQ8_0::codes`] returns signed codes; otherwise the codes are unsigned and the
    /// values are `code - OFFSET`, which saves the sign trick (see [`tile_sym_q8_0`]).
    const OFFSET: i8 = 0;
}

/// Q8_0 weights.
pub struct Q8_0;
/// Q5_0 weights.
pub struct Q5_0;
/// Q4_0 weights.
pub struct Q4_0;
/// IQ4_NL weights.
#[allow(non_camel_case_types)]
pub struct IQ4_NL;
/// MXFP4 weights.
pub struct MXFP4;

impl SymQ8_0 for Q8_0 {
    const DTYPE: DType = DType::Q8_0;
    const BYTES: usize = Q8_0_BYTES;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(x: *const u8) -> __m256i {
        _mm256_loadu_si256(x.add(2).cast())
    }
}

impl SymQ8_0 for Q5_0 {
    const DTYPE: DType = DType::Q5_0;
    const BYTES: usize = Q5_0_BYTES;
    const OFFSET: i8 = 16;
    /// The nibble with the fifth bit as bit 4.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(x: *const u8) -> __m256i {
        let high = bit_bytes(read_unaligned(x.add(2).cast::<u32>()));
        _mm256_or_si256(
            nibbles_bcast(x.add(6)),
            _mm256_and_si256(high, _mm256_set1_epi8(0x10)),
        )
    }
    /// The fifth bits go straight into a mask register and come in with one masked add, where
    /// AVX2 spreads them to bytes with a shuffle, an and and a compare (the 1 × 1 dot from
    /// cache: 12.5 -> 14.1 GB/s).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn codes_avx512(x: *const u8) -> __m256i {
        let high: __mmask32 = read_unaligned(x.add(2).cast::<u32>());
        let low = nibbles_bcast(x.add(6));
        _mm256_mask_add_epi8(low, high, low, _mm256_set1_epi8(0x10))
    }
}

impl SymQ8_0 for Q4_0 {
    const DTYPE: DType = DType::Q4_0;
    const BYTES: usize = Q4_0_BYTES;
    const OFFSET: i8 = 8;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(x: *const u8) -> __m256i {
        nibbles(x.add(2))
    }
}

/// The 16 levels `table` of a non-linear 4-bit format (IQ4_NL, MXFP4), indexed by the 32
/// nibbles of the 16 bytes at `p` (in value order, as [`nibbles`]) with a byte shuffle.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn table_nibbles(table: &[i8; 16], p: *const u8) -> __m256i {
    let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(table.as_ptr().cast()));
    _mm256_shuffle_epi8(table, nibbles(p))
}

impl SymQ8_0 for IQ4_NL {
    const DTYPE: DType = DType::IQ4_NL;
    const BYTES: usize = IQ4_NL_BYTES;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(x: *const u8) -> __m256i {
        table_nibbles(&KVALUES_IQ4NL, x.add(2))
    }
}

/// [`e8m0_to_f32_half`] of every byte.
static E8M0_HALF: [f32; 256] = {
    let mut t = [0.0; 256];
    let mut e = 0;
    while e < 256 {
        t[e] = e8m0_to_f32_half(e as u8);
        e += 1;
    }
    t
};

impl SymQ8_0 for MXFP4 {
    const DTYPE: DType = DType::MXFP4;
    const BYTES: usize = MXFP4_BYTES;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(x: *const u8) -> __m256i {
        table_nibbles(&KVALUES_MXFP4, x.add(1))
    }
    /// The E8M0 byte, halved as ggml does, from a table: 256 floats are 16 cache lines (the
    /// f16 table `broadcast_f16` avoids was 256 KiB), and real scales use a few of them. One
    /// broadcast load instead of the branch-free bit arithmetic: 4096 × 4096 decode, one thread,
    /// 0.95 -> 0.87 ms (Q4_0 0.86).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale(x: *const u8) -> __m256 {
        _mm256_broadcast_ss(&E8M0_HALF[*x as usize])
    }
}

/// The f16 at `p`, converted and broadcast to 8 lanes. F16C rather than a lookup table: real
/// weights' scales spread over many table lines, which streaming weights evict, and the misses
/// made Qwen2.5-0.5B's decode matmuls 1.8x slower (27.8 vs 15.4 ms per token, `bench_decode`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn broadcast_f16(p: *const u8) -> __m256 {
    let bits = read_unaligned(p.cast::<u16>()) as i32;
    _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
}

/// Dot products of `R` weight rows with `T` Q8_0 activation rows, `nb` blocks each: a register
/// tile that decodes each weight block once for `T` tokens and loads each activation block once
/// for `R` rows.
///
/// Every element is reduced the same way whatever `R` and `T` (so a tile equals the 1×1 dot bit
/// for bit, which makes matmul batch invariant): per block, the exact integer lane sums
/// `s = madd(maddubs(|q|, sign(a, q)), 1)` as floats, `acc = fma(dw * da, s, acc)` in block
/// order, then a fixed horizontal sum. Formats with an [`SymQ8_0::OFFSET`] get the same exact
/// pair sums as `maddubs(u, a) - maddubs(OFFSET, a)`, the second term computed once per token.
///
/// Exact for activation codes in `-127..=127` (see the module docs).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; every `w[r]` must point at `nb` blocks of `F` and
/// every `a[t]` at `nb` Q8_0 blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile_sym_q8_0<F: SymQ8_0, const R: usize, const T: usize>(
    nb: usize,
    w: [*const u8; R],
    a: [*const u8; T],
) -> [[f32; T]; R] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    // Loops, not `map`: a closure does not inherit `target_feature`, so the intrinsics in it
    // would be calls (these were 10% of Qwen2.5's prefill).
    let (mut q, mut abs_q, mut dw) = (
        [_mm256_setzero_si256(); R],
        [_mm256_setzero_si256(); R],
        [_mm256_setzero_ps(); R],
    );
    for b in 0..nb {
        for r in 0..R {
            let x = w[r].add(b * F::BYTES);
            q[r] = F::codes(x);
            abs_q[r] = _mm256_sign_epi8(q[r], q[r]);
            dw[r] = F::scale(x);
        }
        for t in 0..T {
            let y = a[t].add(b * Q8_0_BYTES);
            let qy = _mm256_loadu_si256(y.add(2).cast());
            let da = broadcast_f16(y);
            let offset = _mm256_maddubs_epi16(_mm256_set1_epi8(F::OFFSET), qy);
            for r in 0..R {
                let pairs = if F::OFFSET == 0 {
                    _mm256_maddubs_epi16(abs_q[r], _mm256_sign_epi8(qy, q[r]))
                } else {
                    _mm256_sub_epi16(_mm256_maddubs_epi16(q[r], qy), offset)
                };
                let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                acc[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(dw[r], da), s, acc[r][t]);
            }
        }
    }
    hsum_tile(&acc)
}

/// The 1×1 tile: one dot product.
///
/// # Safety
/// As [`tile_sym_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_sym_q8_0_avx2<F: SymQ8_0>(nb: usize, w: *const u8, a: *const u8) -> f32 {
    tile_sym_q8_0::<F, 1, 1>(nb, [w], [a])[0][0]
}

/// Defines an AVX2 dot of an offset format (`d * unsigned code + m`) with Q8_1 activations:
/// `$codes` turns a weight block pointer `$x` into its 32 unsigned codes; `d` is at offset 0 and
/// `m` at 2 in both the weight and the activation (`s`) blocks.
macro_rules! dot_offset_q8_1 {
    ($(#[$doc:meta])* $name:ident, $wbytes:expr, |$x:ident| $codes:expr) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C; `w` and `a` must hold `nb` blocks each.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name(nb: usize, w: *const u8, a: *const u8) -> f32 {
            let mut acc = _mm256_setzero_ps();
            let mut offsets = _mm_setzero_ps();
            for i in 0..nb {
                let $x = w.add(i * $wbytes);
                let y = a.add(i * Q8_1_BYTES);
                let q: __m256i = $codes;
                let qy = _mm256_loadu_si256(y.add(4).cast());
                let d = _mm256_broadcastss_ps(f16_product($x, y));
                offsets = _mm_add_ss(offsets, f16_product($x.add(2), y.add(2)));
                acc = _mm256_fmadd_ps(d, mul_sum_u8_i8_ps(q, qy), acc);
            }
            hsum_ps(acc) + _mm_cvtss_f32(offsets)
        }
    };
}

dot_offset_q8_1!(
    /// Q4_1 × Q8_1.
    dot_q4_1_q8_1_avx2, Q4_1_BYTES, |x| nibbles(x.add(4))
);

dot_offset_q8_1!(
    /// Q5_1 × Q8_1.
    dot_q5_1_q8_1_avx2, Q5_1_BYTES, |x| {
        let high = bit_bytes(read_unaligned(x.add(4).cast::<u32>()));
        _mm256_or_si256(nibbles(x.add(8)), _mm256_and_si256(high, _mm256_set1_epi8(0x10)))
    }
);

/// Defines an AVX2 float dot: `$load` turns a pointer to 8 stored values into 8 f32; `$scalar`
/// decodes one value for the tail.
macro_rules! dot_float {
    ($(#[$doc:meta])* $name:ident, $width:expr, |$p:ident| $load:expr, |$s:ident| $scalar:expr) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C; `w` and `a` must hold `n` values each.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name(n: usize, w: *const u8, a: *const u8) -> f32 {
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn load8($p: *const u8) -> __m256 {
                $load
            }
            #[inline]
            unsafe fn load1($s: *const u8) -> f32 {
                $scalar
            }
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (k, acc) in acc.iter_mut().enumerate() {
                    let o = (i + 8 * k) * $width;
                    *acc = _mm256_fmadd_ps(load8(w.add(o)), load8(a.add(o)), *acc);
                }
                i += 32;
            }
            while i + 8 <= n {
                let o = i * $width;
                acc[0] = _mm256_fmadd_ps(load8(w.add(o)), load8(a.add(o)), acc[0]);
                i += 8;
            }
            let mut sum = hsum_ps(_mm256_add_ps(
                _mm256_add_ps(acc[0], acc[1]),
                _mm256_add_ps(acc[2], acc[3]),
            ));
            while i < n {
                sum += load1(w.add(i * $width)) * load1(a.add(i * $width));
                i += 1;
            }
            sum
        }
    };
}

dot_float!(
    /// F32 × F32.
    dot_f32_f32_avx2, 4,
    |p| _mm256_loadu_ps(p.cast()),
    |p| read_unaligned(p.cast::<f32>())
);

dot_float!(
    /// F16 × F16.
    dot_f16_f16_avx2, 2,
    |p| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
    |p| half::f16::from_bits(read_unaligned(p.cast::<u16>())).to_f32()
);

dot_float!(
    /// BF16 × BF16 (bf16 → f32 is a 16-bit left shift).
    dot_bf16_bf16_avx2, 2,
    |p| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))),
    |p| f32::from_bits((read_unaligned(p.cast::<u16>()) as u32) << 16)
);

/// Rounds half away from zero, exactly as C's `roundf` (which ggml's reference quantizers use);
/// `_mm256_round_ps` only offers half-to-even.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_away_ps(v: __m256) -> __m256 {
    let sign = _mm256_set1_ps(-0.0);
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
    // v - trunc(v) is exact.
    let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
    let step = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0));
    _mm256_add_ps(t, _mm256_and_ps(up, step))
}

/// Quantizes the 32 floats at `x` as ggml's `quantize_row_q8_0_ref`, storing the codes at `qs`;
/// returns the unrounded scale `d` and the codes' sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quant_block_q8(x: *const f32, qs: *mut u8) -> (f32, i32) {
    let sign = _mm256_set1_ps(-0.0);
    // Spelled out, not `map`: closures do not inherit `target_feature`.
    let v = [
        _mm256_loadu_ps(x),
        _mm256_loadu_ps(x.add(8)),
        _mm256_loadu_ps(x.add(16)),
        _mm256_loadu_ps(x.add(24)),
    ];
    let m = _mm256_max_ps(
        _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
        _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
    );
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let mut q = [_mm256_setzero_si256(); 4];
    for k in 0..4 {
        q[k] = _mm256_cvtps_epi32(round_away_ps(_mm256_mul_ps(v[k], id)));
    }
    let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let sum = _mm_add_epi32(
        _mm256_castsi256_si128(sum),
        _mm256_extracti128_si256::<1>(sum),
    );
    let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b01_00_11_10>(sum));
    let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b10_11_00_01>(sum));
    // packs works per 128-bit lane: the bytes come out as q0lo q1lo q2lo q3lo | q0hi q1hi …;
    // the dword permute restores value order.
    let packed = _mm256_packs_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    let packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(qs.cast(), packed);
    (d, _mm_cvtsi128_si32(sum))
}

/// f32 → Q8_0, bit-identical to the scalar reference.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `x` must hold `nb * 32` values and `y` `nb` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quant_q8_0_avx2(nb: usize, x: *const f32, y: *mut u8) {
    for i in 0..nb {
        let b = y.add(i * Q8_0_BYTES);
        let (d, _) = quant_block_q8(x.add(i * QK), b.add(2));
        let d = f16_le_from(d);
        b.copy_from_nonoverlapping(d.as_ptr(), 2);
    }
}

/// f32 → Q8_1, bit-identical to the scalar reference.
///
/// # Safety
/// As [`quant_q8_0_avx2`], with Q8_1 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quant_q8_1_avx2(nb: usize, x: *const f32, y: *mut u8) {
    for i in 0..nb {
        let b = y.add(i * Q8_1_BYTES);
        let (d, sum) = quant_block_q8(x.add(i * QK), b.add(4));
        b.copy_from_nonoverlapping(f16_le_from(d).as_ptr(), 2);
        b.add(2)
            .copy_from_nonoverlapping(f16_le_from(sum as f32 * d).as_ptr(), 2);
    }
}

/// f32 → F16 with round-to-nearest-even, as the scalar reference.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `x` must hold `n` values and `y` `2 * n` bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quant_f16_avx2(n: usize, x: *const f32, y: *mut u8) {
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(x.add(i)));
        _mm_storeu_si128(y.add(2 * i).cast(), h);
        i += 8;
    }
    while i < n {
        y.add(2 * i)
            .copy_from_nonoverlapping(f16_le_from(*x.add(i)).as_ptr(), 2);
        i += 1;
    }
}

/// Safe wrappers: check lengths and CPU features, then call the `_avx2` kernel.
macro_rules! safe_dot {
    ($name:ident, $kernel:path, $wt:expr, $at:expr, blocks) => {
        safe_dot!(@ $name, $kernel, $wt, $at, |n| n / QK);
    };
    ($name:ident, $kernel:path, $wt:expr, $at:expr, values) => {
        safe_dot!(@ $name, $kernel, $wt, $at, |n| n);
    };
    (@ $name:ident, $kernel:path, $wt:expr, $at:expr, |$n:ident| $count:expr) => {
        #[doc = concat!("Safe wrapper of `", stringify!($kernel), "`.")]
        ///
        /// # Panics
        /// If the slices are too short for `n` values or the CPU lacks AVX2/FMA/F16C.
        pub fn $name($n: usize, w: &[u8], a: &[u8]) -> f32 {
            let w = whole_blocks($wt, $n, w);
            let a = whole_blocks($at, $n, a);
            assert_avx2();
            // SAFETY: the features were just checked and both slices hold the `n` values.
            unsafe { $kernel($count, w.as_ptr(), a.as_ptr()) }
        }
    };
}

safe_dot!(
    dot_q8_0_q8_0,
    dot_sym_q8_0_avx2::<Q8_0>,
    DType::Q8_0,
    DType::Q8_0,
    blocks
);
safe_dot!(
    dot_q5_0_q8_0,
    dot_sym_q8_0_avx2::<Q5_0>,
    DType::Q5_0,
    DType::Q8_0,
    blocks
);
safe_dot!(
    dot_q4_0_q8_0,
    dot_sym_q8_0_avx2::<Q4_0>,
    DType::Q4_0,
    DType::Q8_0,
    blocks
);
safe_dot!(
    dot_iq4_nl_q8_0,
    dot_sym_q8_0_avx2::<IQ4_NL>,
    DType::IQ4_NL,
    DType::Q8_0,
    blocks
);
safe_dot!(
    dot_mxfp4_q8_0,
    dot_sym_q8_0_avx2::<MXFP4>,
    DType::MXFP4,
    DType::Q8_0,
    blocks
);
safe_dot!(
    dot_q4_1_q8_1,
    dot_q4_1_q8_1_avx2,
    DType::Q4_1,
    DType::Q8_1,
    blocks
);
safe_dot!(
    dot_q5_1_q8_1,
    dot_q5_1_q8_1_avx2,
    DType::Q5_1,
    DType::Q8_1,
    blocks
);
safe_dot!(
    dot_f32_f32,
    dot_f32_f32_avx2,
    DType::F32,
    DType::F32,
    values
);
safe_dot!(
    dot_f16_f16,
    dot_f16_f16_avx2,
    DType::F16,
    DType::F16,
    values
);
safe_dot!(
    dot_bf16_bf16,
    dot_bf16_bf16_avx2,
    DType::BF16,
    DType::BF16,
    values
);

macro_rules! safe_quant {
    ($name:ident, $kernel:ident, $dt:expr, |$n:ident| $count:expr) => {
        #[doc = concat!("Safe wrapper of [`", stringify!($kernel), "`].")]
        ///
        /// # Panics
        /// If `src` is not whole blocks, `dst` is too short, or the CPU lacks AVX2/FMA/F16C.
        pub fn $name(src: &[f32], dst: &mut [u8]) {
            let $n = src.len();
            let dst = whole_blocks_mut($dt, $n, dst);
            assert_avx2();
            // SAFETY: the features were just checked; `dst` holds the blocks for `src`.
            unsafe { $kernel($count, src.as_ptr(), dst.as_mut_ptr()) }
        }
    };
}

safe_quant!(quant_q8_0, quant_q8_0_avx2, DType::Q8_0, |n| n / QK);
safe_quant!(quant_q8_1, quant_q8_1_avx2, DType::Q8_1, |n| n / QK);
safe_quant!(quant_f16, quant_f16_avx2, DType::F16, |n| n);

/// Safe wrapper of [`tile_sym_q8_0`]: checks the row lengths and the CPU features.
///
/// # Panics
/// If a row is too short for `n` values or the CPU lacks AVX2/FMA/F16C.
pub fn tile_sym<F: SymQ8_0, const R: usize, const T: usize>(
    n: usize,
    w: [&[u8]; R],
    a: [&[u8]; T],
) -> [[f32; T]; R] {
    let (w, a) = sym_tile_rows::<F, R, T>(n, w, a);
    assert_avx2();
    // SAFETY: the features were just checked and every row holds `n` values.
    unsafe { tile_sym_q8_0::<F, R, T>(n / QK, w, a) }
}

/// The rows of a symmetric-format tile as pointers, each checked to hold `n` values (weights of
/// `F`, Q8_0 activations).
///
/// # Panics
/// If a row is too short.
pub(super) fn sym_tile_rows<F: SymQ8_0, const R: usize, const T: usize>(
    n: usize,
    w: [&[u8]; R],
    a: [&[u8]; T],
) -> ([*const u8; R], [*const u8; T]) {
    (
        w.map(|w| whole_blocks(F::DTYPE, n, w).as_ptr()),
        a.map(|a| whole_blocks(DType::Q8_0, n, a).as_ptr()),
    )
}

/// The weight rows of a symmetric-format strip as pointers, each checked to hold `n` values,
/// after checking that `a` holds `groups * TILE_TOKENS` Q8_0 rows `a_row` bytes apart; `None`
/// when there are no groups.
///
/// # Panics
/// If a row is too short.
pub(super) fn sym_strip_rows<F: SymQ8_0>(
    n: usize,
    w: [&[u8]; TILE_ROWS],
    a: &[u8],
    a_row: usize,
    groups: usize,
) -> Option<[*const u8; TILE_ROWS]> {
    let wp = w.map(|w| whole_blocks(F::DTYPE, n, w).as_ptr());
    let tokens = groups * TILE_TOKENS;
    if tokens == 0 {
        return None;
    }
    whole_blocks(DType::Q8_0, n, &a[(tokens - 1) * a_row..]);
    Some(wp)
}

/// Safe [`StripFn`] over [`tile_sym_q8_0`]: checks the rows once, then runs the tiles inline.
///
/// # Panics
/// If a row is too short for `n` values, `a` holds fewer than `out.len() * TILE_TOKENS` rows of
/// `a_row` bytes, or the CPU lacks AVX2/FMA/F16C.
fn strip_sym<F: SymQ8_0>(
    n: usize,
    w: [&[u8]; TILE_ROWS],
    a: &[u8],
    a_row: usize,
    out: &mut [TileOut],
) {
    let Some(wp) = sym_strip_rows::<F>(n, w, a, a_row, out.len()) else {
        return;
    };
    assert_avx2();
    // SAFETY: the features were just checked; every weight row holds `n` values, and so does
    // every activation row (the last was checked, and they are `a_row` apart inside `a`).
    unsafe { strip_sym_avx2::<F>(n / QK, wp, a.as_ptr(), a_row, out) }
}

/// Pointers to the `N` activation rows from row `first` on, `a_row` bytes apart from `a`.
///
/// # Safety
/// Those rows must lie inside the allocation `a` points into.
#[inline]
pub(super) unsafe fn token_rows<const N: usize>(
    a: *const u8,
    a_row: usize,
    first: usize,
) -> [*const u8; N] {
    // SAFETY: the caller guarantees the rows are inside `a`'s allocation.
    std::array::from_fn(|t| unsafe { a.add((first + t) * a_row) })
}

/// The loop of [`strip_sym`], inside the target features so the tiles inline.
///
/// # Safety
/// As [`tile_sym_q8_0`] for every group of `TILE_TOKENS` rows `a_row` bytes apart from `a`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn strip_sym_avx2<F: SymQ8_0>(
    nb: usize,
    w: [*const u8; TILE_ROWS],
    a: *const u8,
    a_row: usize,
    out: &mut [TileOut],
) {
    for (g, o) in out.iter_mut().enumerate() {
        let ap = token_rows(a, a_row, g * TILE_TOKENS);
        *o = tile_sym_q8_0::<F, TILE_ROWS, TILE_TOKENS>(nb, w, ap);
    }
}

/// Defines `$safe`, a [`crate::quant::legacy::ColsFn`] over the symmetric-format tile `$tile`
/// (generic over the format `F`, like [`tile_sym_q8_0`]), and `$inner`, its loop compiled with
/// the tile's `$features` so the tiles inline. `$safe` checks the rows once, then runs `$cpu`
/// (which must make sure the CPU has `$features`). Up to `$pair_tokens` tokens, a row of each set
/// at a time (two streams); more, one row at a time (the accumulators of two rows would not fit
/// the registers), the two sets' rows alternating; the first set's odd row last. The AVX2 and
/// AVX-512 small-batch kernels share this body.
macro_rules! sym_cols {
    ($safe:ident, $inner:ident, $tile:ident, $features:literal, $pair_tokens:expr, $cpu:expr) => {
        fn $safe<F: SymQ8_0>(
            n: usize,
            w: [&[u8]; 2],
            w_row: usize,
            a: &[u8],
            a_row: usize,
            n_tok: usize,
            out: [&mut [[f32; COLS_MAX]]; 2],
        ) {
            let rows = [out[0].len(), out[1].len()];
            let operands = ((w, w_row, rows), (a, a_row, n_tok));
            check_cols((F::DTYPE, DType::Q8_0), n, operands.0, operands.1);
            $cpu;
            let w = (w.map(<[u8]>::as_ptr), w_row);
            // SAFETY: the CPU has the features (`$cpu`); every weight and activation row holds
            // `n` values (checked just above).
            unsafe { $inner::<F>(n / QK, w, (a.as_ptr(), a_row, n_tok), out) }
        }

        /// # Safety
        /// As the tile for each weight row of the two sets and the `n_tok` activation rows.
        #[target_feature(enable = $features)]
        unsafe fn $inner<F: SymQ8_0>(
            nb: usize,
            (w, w_row): ([*const u8; 2], usize),
            (a, a_row, n_tok): (*const u8, usize, usize),
            [lo, hi]: [&mut [[f32; COLS_MAX]]; 2],
        ) {
            for_tokens!(n_tok, T => {
                let ap = token_rows::<T>(a, a_row, 0);
                for (k, (l, u)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
                    let wp = [w[0].add(k * w_row), w[1].add(k * w_row)];
                    if T <= $pair_tokens {
                        let v = $tile::<F, 2, T>(nb, wp, ap);
                        l[..T].copy_from_slice(&v[0]);
                        u[..T].copy_from_slice(&v[1]);
                    } else {
                        l[..T].copy_from_slice(&$tile::<F, 1, T>(nb, [wp[0]], ap)[0]);
                        u[..T].copy_from_slice(&$tile::<F, 1, T>(nb, [wp[1]], ap)[0]);
                    }
                }
                if lo.len() > hi.len() {
                    let v = $tile::<F, 1, T>(nb, [w[0].add(hi.len() * w_row)], ap);
                    lo[hi.len()][..T].copy_from_slice(&v[0]);
                }
            })
        }
    };
}
pub(super) use sym_cols;

// Up to 4 tokens in pairs of rows: 8 accumulators of the 16 registers.
sym_cols!(
    cols_sym,
    cols_sym_avx2,
    tile_sym_q8_0,
    "avx2,fma,f16c",
    4,
    assert_avx2()
);

/// The register-tiled kernels for weights of `dtype`, if there are.
pub(crate) fn tile_fns(dtype: DType) -> Option<TileFns> {
    fn fns<F: SymQ8_0>() -> TileFns {
        TileFns {
            tile: tile_sym::<F, TILE_ROWS, TILE_TOKENS>,
            strip: strip_sym::<F>,
            pair: Some(tile_sym::<F, 2, 1>),
            cols: Some(cols_sym::<F>),
            cols_for_prompts: false,
        }
    }
    use DType::*;
    Some(match dtype {
        Q4_0 => fns::<self::Q4_0>(),
        Q5_0 => fns::<self::Q5_0>(),
        Q8_0 => fns::<self::Q8_0>(),
        IQ4_NL => fns::<self::IQ4_NL>(),
        MXFP4 => fns::<self::MXFP4>(),
        _ => return None,
    })
}

/// The AVX2 dot product for weights of `dtype`, if there is one.
pub(crate) fn dot_fn(dtype: DType) -> Option<DotFn> {
    use DType::*;
    Some(match dtype {
        F32 => dot_f32_f32,
        F16 => dot_f16_f16,
        BF16 => dot_bf16_bf16,
        Q4_0 => dot_q4_0_q8_0,
        Q4_1 => dot_q4_1_q8_1,
        Q5_0 => dot_q5_0_q8_0,
        Q5_1 => dot_q5_1_q8_1,
        Q8_0 => dot_q8_0_q8_0,
        IQ4_NL => dot_iq4_nl_q8_0,
        MXFP4 => dot_mxfp4_q8_0,
        _ => return None,
    })
}

/// The AVX2 activation quantizer into `dtype`, if there is one.
pub(crate) fn quant_fn(dtype: DType) -> Option<QuantFn> {
    use DType::*;
    Some(match dtype {
        Q8_0 => quant_q8_0,
        Q8_1 => quant_q8_1,
        F16 => quant_f16,
        _ => return None,
    })
}
