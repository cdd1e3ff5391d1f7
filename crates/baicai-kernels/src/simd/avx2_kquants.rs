//! AVX2 + FMA kernels for the K-quants and IQ4_XS against Q8_K activations, and an AVX2 Q8_K
//! quantizer.
//!
//! The integer scheme is llama.cpp's: `maddubs` multiplies unsigned weight levels by signed
//! activation bytes into i16 pair sums (no saturation: |level| ≤ 63 and |a| ≤ 128 keep each pair
//! under 2^15), `madd` with the sub-block scales widens to i32, and one FMA per super-block applies
//! `d_w * d_a`. Offsets are not applied per value: a level offset `o` (Q3_K: 4, Q6_K: 32) or a
//! per-sub-block min becomes `Σ_j scale_j * o * bsum_j`, from the 16-value sums Q8_K carries.
//! Integer sums are exact, so results differ from the scalar references in
//! [`crate::quant::kquants`] only by the order of float additions.
//!
//! Levels may be decoded from F16C too (`avx2,fma,f16c` is what `Isa::Avx2` means). The safe
//! wrappers here are handed out only by `dispatch::dot_fn` / `quant_fn` after checking the CPU.

use core::arch::x86_64::*;

use crate::dtype::{DType, QK_K};
use crate::kernel::{
    for_tokens, DotFn, QuantFn, TileFns, TileOut, COLS_MAX, TILE_ROWS, TILE_TOKENS,
};
use crate::quant::kquants::{
    finish_q8k, q8k_dst, row_blocks, scales_mins_k4, scales_q3k, BlockIq4Xs, BlockQ2K, BlockQ3K,
    BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K,
};
use crate::quant::legacy::check_cols;
use crate::quant::tables::KVALUES_IQ4NL;

/// Loads 32 bytes from the start of `s`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn ld_u8(s: &[u8]) -> __m256i {
    assert!(s.len() >= 32);
    // SAFETY: 32 readable bytes (checked); `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// Loads 32 signed bytes from the start of `s`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn ld_i8(s: &[i8]) -> __m256i {
    assert!(s.len() >= 32);
    // SAFETY: 32 readable bytes (checked); `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// Loads 16 bytes from the start of `s`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn ld128<T: Copy>(s: &[T]) -> __m128i {
    assert!(size_of_val(s) >= 16);
    // SAFETY: 16 readable bytes (checked); `loadu` has no alignment requirement; only called on
    // byte arrays, so every byte is initialised.
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}

/// Loads 8 f32 from the start of `s`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ld_f32(s: &[f32]) -> __m256 {
    assert!(s.len() >= 8);
    // SAFETY: 8 readable floats (checked); `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

/// The 16 `bsums` of a Q8_K block as i16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn ld_bsums(y: &BlockQ8K) -> __m256i {
    // SAFETY: `bsums` is 32 bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) }
}

/// Converts a little-endian f16 with F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_to_f32(b: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
        u16::from_le_bytes(b),
    ))))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum_ps128(s: __m128) -> f32 {
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

pub(super) use super::avx2_legacy::hsum_ps;

/// A Q4_K register tile's results: `hsum(acc) - hsum(acc_m)` per element.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q4k_tile_out<const R: usize, const T: usize>(
    acc: &[[__m256; T]; R],
    acc_m: &[[__m128; T]; R],
) -> [[f32; T]; R] {
    let mut out = [[0.0; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = hsum_ps(acc[r][t]) - hsum_ps128(acc_m[r][t]);
        }
    }
    out
}

/// For formats with sub-blocks of 16: the i8 scales `2c` and `2c+1` of `sc` widened to i16 and
/// repeated across the low and high 128-bit lane, matching the `maddubs` output of the 32
/// values `32c .. 32c+32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn scale_pair(sc: __m128i, c: usize) -> __m256i {
    const ONES: i64 = 0x0101_0101_0101_0101;
    let lo = (2 * c) as i64 * ONES;
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, _mm_set_epi64x(lo + ONES, lo)))
}

/// For Q4_K/Q5_K: a `pshufb` control repeating i16 lane `k` of each 128-bit half.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bcast_i16(k: usize) -> __m256i {
    _mm256_set1_epi16((((2 * k + 1) << 8) | (2 * k)) as i16)
}

/// The eight 6-bit Q4_K/Q5_K mins as i16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mins_k4(mins: [u8; 8]) -> __m128i {
    _mm_cvtepu8_epi16(_mm_cvtsi64_si128(i64::from_le_bytes(mins)))
}

/// The eight 6-bit Q4_K/Q5_K scales as i16, in both 128-bit lanes (for [`bcast_i16`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scales_k4(sc: [u8; 8]) -> __m256i {
    _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(i64::from_le_bytes(sc))))
}

/// The 16-value `bsums` of a Q8_K block summed in pairs: sums over the 32-value sub-blocks of
/// Q4_K/Q5_K, as i16 (each fits: ≤ 32 × 128).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bsums32(y: &BlockQ8K) -> __m128i {
    let bs = ld_bsums(y);
    _mm_hadd_epi16(
        _mm256_castsi256_si128(bs),
        _mm256_extracti128_si256::<1>(bs),
    )
}

/// `acc + dmin * Σ_j min_j * bsum32_j` lanes for Q4_K/Q5_K (`mins` widened to i16).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fma_mins(acc: __m128, dmin: f32, mins: __m128i, bs32: __m128i) -> __m128 {
    _mm_fmadd_ps(
        _mm_set1_ps(dmin),
        _mm_cvtepi32_ps(_mm_madd_epi16(mins, bs32)),
        acc,
    )
}

/// One Q4_K super-block of a tile, its mins part: `acc_m[r][t] = fma(dmin_r · d_t,
/// madd(mins_r, bsum32_t), acc_m[r][t])`; returns each row's eight 6-bit scales. The AVX2 and
/// AVX-512 tiles share it, so their float steps are the same by construction.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q4k_block_mins<const R: usize, const T: usize>(
    x: [&BlockQ4K; R],
    y: [&BlockQ8K; T],
    dy: [f32; T],
    acc_m: &mut [[__m128; T]; R],
) -> [[u8; 8]; R] {
    // Loops, not `map`: a closure does not inherit `target_feature`, so it would call the
    // intrinsics' wrappers out of line.
    let mut bs32 = [_mm_setzero_si128(); T];
    for t in 0..T {
        bs32[t] = bsums32(y[t]);
    }
    let mut scales = [[0u8; 8]; R];
    for r in 0..R {
        let (s, m) = scales_mins_k4(&x[r].scales);
        let mins = mins_k4(m);
        let dmin = f16_to_f32(x[r].dmin);
        for t in 0..T {
            acc_m[r][t] = fma_mins(acc_m[r][t], dmin * dy[t], mins, bs32[t]);
        }
        scales[r] = s;
    }
    scales
}

/// Dot products of `R` Q4_K weight rows with `T` Q8_K activation rows: a register tile that
/// unpacks each weight block's scales and nibbles once for `T` tokens and reads each activation
/// block once per row from L1.
///
/// Every element is reduced as the 1×1 tile ([`dot_q4k_q8k_avx2`]) reduces it, whatever `R` and
/// `T`: per super-block the exact i32 lane sums `Σ_c madd(maddubs(levels, a), scales)`, then
/// `acc = fma(d_w * d_a, sums, acc)` and `acc_m = fma(dmin_w * d_a, madd(mins, bsums), acc_m)` in
/// block order, and `hsum(acc) - hsum(acc_m)` at the end. Integer sums are exact, so only the float
/// operations fix the result, and they are the same per element. Rows hold `nb = w[0].len()`
/// blocks.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If a row holds fewer than `w[0].len()` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile_q4k_q8k_avx2<const R: usize, const T: usize>(
    w: [&[BlockQ4K]; R],
    a: [&[BlockQ8K]; T],
) -> [[f32; T]; R] {
    let nb = w[0].len();
    assert!(w.iter().all(|w| w.len() >= nb) && a.iter().all(|a| a.len() >= nb));
    let m4 = _mm256_set1_epi8(0x0f);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut acc_m = [[_mm_setzero_ps(); T]; R];
    for b in 0..nb {
        // SAFETY: `b < nb` and every row holds `nb` blocks (asserted above).
        let x = w.map(|w| unsafe { w.get_unchecked(b) });
        // SAFETY: as above.
        let y = a.map(|a| unsafe { a.get_unchecked(b) });
        let dy = y.map(|y| y.d());
        let scales = q4k_block_mins(x, y, dy, &mut acc_m);
        let mut sc = [_mm256_setzero_si256(); R];
        for r in 0..R {
            sc[r] = scales_k4(scales[r]);
        }
        let mut sumi = [[_mm256_setzero_si256(); T]; R];
        for c in 0..4 {
            for r in 0..R {
                let q = ld_u8(&x[r].qs[32 * c..]);
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                let sc_lo = _mm256_shuffle_epi8(sc[r], bcast_i16(2 * c));
                let sc_hi = _mm256_shuffle_epi8(sc[r], bcast_i16(2 * c + 1));
                for t in 0..T {
                    let p_lo = _mm256_maddubs_epi16(lo, ld_i8(&y[t].qs[64 * c..]));
                    let p_hi = _mm256_maddubs_epi16(hi, ld_i8(&y[t].qs[64 * c + 32..]));
                    let s = _mm256_add_epi32(
                        _mm256_madd_epi16(p_lo, sc_lo),
                        _mm256_madd_epi16(p_hi, sc_hi),
                    );
                    sumi[r][t] = _mm256_add_epi32(sumi[r][t], s);
                }
            }
        }
        for r in 0..R {
            let dx = f16_to_f32(x[r].d);
            for t in 0..T {
                let d = _mm256_set1_ps(dx * dy[t]);
                acc[r][t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[r][t]), acc[r][t]);
            }
        }
    }
    q4k_tile_out(&acc, &acc_m)
}

/// Dot product of Q4_K weights with Q8_K activations: the 1×1 [`tile_q4k_q8k_avx2`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4k_q8k_avx2(xs: &[BlockQ4K], ys: &[BlockQ8K]) -> f32 {
    tile_q4k_q8k_avx2::<1, 1>([xs], [ys])[0][0]
}

/// Dot products of `R` Q5_K weight rows with `T` Q8_K activation rows, as
/// [`tile_q4k_q8k_avx2`] does for Q4_K (each weight block's scales, nibbles and fifth bits
/// unpacked once for `T` tokens); every element reduced as the 1×1 tile ([`dot_q5k_q8k_avx2`])
/// reduces it: per super-block the exact i32 lane sums, `acc = fma(d_w * d_a, sums, acc)` and
/// `acc_m = fma(dmin_w * d_a, madd(mins, bsums), acc_m)` in block order, `hsum(acc) -
/// hsum(acc_m)` at the end. Rows hold `nb = w[0].len()` blocks.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If a row holds fewer than `w[0].len()` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile_q5k_q8k_avx2<const R: usize, const T: usize>(
    w: [&[BlockQ5K]; R],
    a: [&[BlockQ8K]; T],
) -> [[f32; T]; R] {
    let nb = w[0].len();
    assert!(w.iter().all(|w| w.len() >= nb) && a.iter().all(|a| a.len() >= nb));
    let m4 = _mm256_set1_epi8(0x0f);
    let bit4 = _mm256_set1_epi8(0x10);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut acc_m = [[_mm_setzero_ps(); T]; R];
    for b in 0..nb {
        // SAFETY: `b < nb` and every row holds `nb` blocks (asserted above).
        let x = w.map(|w| unsafe { w.get_unchecked(b) });
        // SAFETY: as above.
        let y = a.map(|a| unsafe { a.get_unchecked(b) });
        let mut dy = [0.0f32; T];
        let mut bs32 = [_mm_setzero_si128(); T];
        for t in 0..T {
            dy[t] = y[t].d();
            bs32[t] = bsums32(y[t]);
        }
        let (mut sc, mut qh) = ([_mm256_setzero_si256(); R], [_mm256_setzero_si256(); R]);
        for r in 0..R {
            let (s, m) = scales_mins_k4(&x[r].scales);
            let (mins, dmin) = (mins_k4(m), f16_to_f32(x[r].dmin));
            for t in 0..T {
                acc_m[r][t] = fma_mins(acc_m[r][t], dmin * dy[t], mins, bs32[t]);
            }
            sc[r] = scales_k4(s);
            qh[r] = ld_u8(&x[r].qh);
        }
        let mut sumi = [[_mm256_setzero_si256(); T]; R];
        for c in 0..4 {
            for r in 0..R {
                // Sub-block j takes its fifth bit from bit j of `qh`; shift two bits out per
                // chunk (16-bit shifts only pull neighbouring bits into the top of each byte,
                // never bit 0/1).
                let q = ld_u8(&x[r].qs[32 * c..]);
                let h_lo = _mm256_and_si256(_mm256_slli_epi16::<4>(qh[r]), bit4);
                let h_hi = _mm256_and_si256(_mm256_slli_epi16::<3>(qh[r]), bit4);
                qh[r] = _mm256_srli_epi16::<2>(qh[r]);
                let lo = _mm256_or_si256(_mm256_and_si256(q, m4), h_lo);
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q), m4), h_hi);
                let sc_lo = _mm256_shuffle_epi8(sc[r], bcast_i16(2 * c));
                let sc_hi = _mm256_shuffle_epi8(sc[r], bcast_i16(2 * c + 1));
                for t in 0..T {
                    let p_lo = _mm256_maddubs_epi16(lo, ld_i8(&y[t].qs[64 * c..]));
                    let p_hi = _mm256_maddubs_epi16(hi, ld_i8(&y[t].qs[64 * c + 32..]));
                    let s_lo = _mm256_madd_epi16(p_lo, sc_lo);
                    let s_hi = _mm256_madd_epi16(p_hi, sc_hi);
                    sumi[r][t] = _mm256_add_epi32(sumi[r][t], _mm256_add_epi32(s_lo, s_hi));
                }
            }
        }
        for r in 0..R {
            let dx = f16_to_f32(x[r].d);
            for t in 0..T {
                let d = _mm256_set1_ps(dx * dy[t]);
                acc[r][t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[r][t]), acc[r][t]);
            }
        }
    }
    q4k_tile_out(&acc, &acc_m)
}

/// Dot product of Q5_K weights with Q8_K activations: the 1×1 [`tile_q5k_q8k_avx2`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5k_q8k_avx2(xs: &[BlockQ5K], ys: &[BlockQ8K]) -> f32 {
    tile_q5k_q8k_avx2::<1, 1>([xs], [ys])[0][0]
}

/// `sum + madd(p, s)`: one sub-block's pair sums `p`, scaled by `s`, added to the i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn madd_add(sum: __m256i, p: __m256i, s: __m256i) -> __m256i {
    _mm256_add_epi32(sum, _mm256_madd_epi16(p, s))
}

/// Defines a Q6_K register tile `$name` for the target features `$features`, adding each
/// sub-block's scaled pair sums with `$pair_sum(sum, p, s)` (which must equal [`madd_add`] lane
/// for lane, so every definition gives the same bits). The AVX2 tile below and the AVX-512 VNNI
/// one share this body.
macro_rules! q6k_tile {
    ($(#[$doc:meta])* $name:ident, $features:literal, $pair_sum:path) => {
        $(#[$doc])*
        #[inline]
        #[target_feature(enable = $features)]
        pub unsafe fn $name<const R: usize, const T: usize>(
            w: [&[BlockQ6K]; R],
            a: [&[BlockQ8K]; T],
        ) -> [[f32; T]; R] {
            let nb = w[0].len();
            assert!(w.iter().all(|w| w.len() >= nb) && a.iter().all(|a| a.len() >= nb));
            let m4 = _mm256_set1_epi8(0x0f);
            let m30 = _mm256_set1_epi8(0x30);
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            for b in 0..nb {
                // SAFETY: `b < nb` and every row holds `nb` blocks (asserted above).
                let x = w.map(|w| unsafe { w.get_unchecked(b) });
                // SAFETY: as above.
                let y = a.map(|a| unsafe { a.get_unchecked(b) });
                let mut sc = [_mm_setzero_si128(); R];
                for r in 0..R {
                    sc[r] = ld128(&x[r].scales);
                }
                // Levels are stored +32; subtract 32 * Σ_j sc_j * bsum_j once per block.
                let mut sumi = [[_mm256_setzero_si256(); T]; R];
                for r in 0..R {
                    let sc16 = _mm256_cvtepi8_epi16(sc[r]);
                    for t in 0..T {
                        let offset = _mm256_madd_epi16(sc16, ld_bsums(y[t]));
                        sumi[r][t] = _mm256_sub_epi32(sumi[r][t], _mm256_slli_epi32::<5>(offset));
                    }
                }
                for h in 0..2 {
                    for r in 0..R {
                        let ql0 = ld_u8(&x[r].ql[64 * h..]);
                        let ql1 = ld_u8(&x[r].ql[64 * h + 32..]);
                        let qh = ld_u8(&x[r].qh[32 * h..]);
                        // Bits 2k..2k+2 of qh become bits 4..6 of level k.
                        let q = [
                            _mm256_or_si256(
                                _mm256_and_si256(ql0, m4),
                                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(ql1, m4),
                                _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                                _mm256_and_si256(qh, m30),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
                            ),
                        ];
                        for (k, q) in q.into_iter().enumerate() {
                            let c = 4 * h + k;
                            let s = scale_pair(sc[r], c);
                            for t in 0..T {
                                let p = _mm256_maddubs_epi16(q, ld_i8(&y[t].qs[32 * c..]));
                                sumi[r][t] = $pair_sum(sumi[r][t], p, s);
                            }
                        }
                    }
                }
                for r in 0..R {
                    let dx = f16_to_f32(x[r].d);
                    for t in 0..T {
                        let d = _mm256_set1_ps(dx * y[t].d());
                        acc[r][t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[r][t]), acc[r][t]);
                    }
                }
            }
            $crate::simd::avx2_legacy::hsum_tile(&acc)
        }
    };
}
pub(super) use q6k_tile;

q6k_tile!(
    /// Dot products of `R` Q6_K weight rows with `T` Q8_K activation rows, as
    /// [`tile_q4k_q8k_avx2`] does for Q4_K: each weight block's levels and scales unpacked once for
    /// `T` tokens, every element reduced as the 1×1 tile ([`dot_q6k_q8k_avx2`]) reduces it (exact i32
    /// lane sums per super-block, one FMA per block in block order, a fixed horizontal sum). Rows hold
    /// `nb = w[0].len()` blocks.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    ///
    /// # Panics
    /// If a row holds fewer than `w[0].len()` blocks.
    tile_q6k_q8k_avx2,
    "avx2,fma,f16c",
    madd_add
);

/// Dot product of Q6_K weights with Q8_K activations: the 1×1 [`tile_q6k_q8k_avx2`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6k_q8k_avx2(xs: &[BlockQ6K], ys: &[BlockQ8K]) -> f32 {
    tile_q6k_q8k_avx2::<1, 1>([xs], [ys])[0][0]
}

/// Dot products of `R` Q3_K weight rows with `T` Q8_K activation rows: each weight block's levels
/// and scales unpacked once for `T` tokens, every element reduced as the 1×1 tile
/// ([`dot_q3k_q8k_avx2`]) reduces it (exact i32 lane sums per super-block, `acc = fma(d_w * d_a,
/// sums, acc)` in block order, a fixed horizontal sum). Rows hold `nb = w[0].len()` blocks.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If a row holds fewer than `w[0].len()` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile_q3k_q8k_avx2<const R: usize, const T: usize>(
    w: [&[BlockQ3K]; R],
    a: [&[BlockQ8K]; T],
) -> [[f32; T]; R] {
    let nb = w[0].len();
    assert!(w.iter().all(|w| w.len() >= nb) && a.iter().all(|a| a.len() >= nb));
    let m3 = _mm256_set1_epi8(0x03);
    let bit2 = _mm256_set1_epi8(0x04);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        // SAFETY: `b < nb` and every row holds `nb` blocks (asserted above).
        let x = w.map(|w| unsafe { w.get_unchecked(b) });
        // SAFETY: as above.
        let y = a.map(|a| unsafe { a.get_unchecked(b) });
        let mut sumi = [[_mm256_setzero_si256(); T]; R];
        for r in 0..R {
            let sc = ld128(&scales_q3k(&x[r].scales));
            // Level = (low | inverted-high << 2) - 4; subtract 4 * Σ_j sc_j * bsum_j once.
            let sc16 = _mm256_cvtepi8_epi16(sc);
            for t in 0..T {
                let offset = _mm256_madd_epi16(sc16, ld_bsums(y[t]));
                sumi[r][t] =
                    _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<2>(offset));
            }
            // Chunk c takes its high bit from bit c of hmask, its low bits from bits 2(c%4)..
            // of qs.
            let mut hm = ld_u8(&x[r].hmask);
            for h in 0..2 {
                let mut qs = ld_u8(&x[r].qs[32 * h..]);
                for k in 0..4 {
                    let c = 4 * h + k;
                    let high = _mm256_and_si256(_mm256_slli_epi16::<2>(hm), bit2);
                    let q = _mm256_or_si256(_mm256_and_si256(qs, m3), high);
                    hm = _mm256_srli_epi16::<1>(hm);
                    qs = _mm256_srli_epi16::<2>(qs);
                    let s = scale_pair(sc, c);
                    for t in 0..T {
                        let p = _mm256_maddubs_epi16(q, ld_i8(&y[t].qs[32 * c..]));
                        sumi[r][t] = _mm256_add_epi32(sumi[r][t], _mm256_madd_epi16(p, s));
                    }
                }
            }
        }
        for r in 0..R {
            let dx = f16_to_f32(x[r].d);
            for t in 0..T {
                let d = _mm256_set1_ps(dx * y[t].d());
                acc[r][t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[r][t]), acc[r][t]);
            }
        }
    }
    crate::simd::avx2_legacy::hsum_tile(&acc)
}

/// Dot product of Q3_K weights with Q8_K activations: the 1×1 [`tile_q3k_q8k_avx2`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q3k_q8k_avx2(xs: &[BlockQ3K], ys: &[BlockQ8K]) -> f32 {
    tile_q3k_q8k_avx2::<1, 1>([xs], [ys])[0][0]
}

/// Dot products of `R` Q2_K weight rows with `T` Q8_K activation rows: each weight block's levels,
/// scales and mins unpacked once for `T` tokens, every element reduced as the 1×1 tile
/// ([`dot_q2k_q8k_avx2`]) reduces it: per super-block the exact i32 lane sums, `acc = fma(d_w *
/// d_a, sums, acc)` and `acc_m = fma(dmin_w * d_a, madd(mins, bsums), acc_m)` in block order,
/// `hsum(acc) - hsum(acc_m)` at the end. Rows hold `nb = w[0].len()` blocks.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If a row holds fewer than `w[0].len()` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile_q2k_q8k_avx2<const R: usize, const T: usize>(
    w: [&[BlockQ2K]; R],
    a: [&[BlockQ8K]; T],
) -> [[f32; T]; R] {
    let nb = w[0].len();
    assert!(w.iter().all(|w| w.len() >= nb) && a.iter().all(|a| a.len() >= nb));
    let m3 = _mm256_set1_epi8(0x03);
    let m4 = _mm_set1_epi8(0x0f);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut acc_m = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        // SAFETY: `b < nb` and every row holds `nb` blocks (asserted above).
        let x = w.map(|w| unsafe { w.get_unchecked(b) });
        // SAFETY: as above.
        let y = a.map(|a| unsafe { a.get_unchecked(b) });
        let mut sumi = [[_mm256_setzero_si256(); T]; R];
        for r in 0..R {
            let raw = ld128(&x[r].scales);
            let sc = _mm_and_si128(raw, m4);
            let mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(raw), m4));
            let dmin = f16_to_f32(x[r].dmin);
            for t in 0..T {
                let msum = _mm256_madd_epi16(mn, ld_bsums(y[t]));
                let dm = _mm256_set1_ps(dmin * y[t].d());
                acc_m[r][t] = _mm256_fmadd_ps(dm, _mm256_cvtepi32_ps(msum), acc_m[r][t]);
            }
            for h in 0..2 {
                let mut qs = ld_u8(&x[r].qs[32 * h..]);
                for k in 0..4 {
                    let c = 4 * h + k;
                    let q = _mm256_and_si256(qs, m3);
                    qs = _mm256_srli_epi16::<2>(qs);
                    let s = scale_pair(sc, c);
                    for t in 0..T {
                        let p = _mm256_maddubs_epi16(q, ld_i8(&y[t].qs[32 * c..]));
                        sumi[r][t] = _mm256_add_epi32(sumi[r][t], _mm256_madd_epi16(p, s));
                    }
                }
            }
        }
        for r in 0..R {
            let dx = f16_to_f32(x[r].d);
            for t in 0..T {
                let d = _mm256_set1_ps(dx * y[t].d());
                acc[r][t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[r][t]), acc[r][t]);
            }
        }
    }
    let mut out = [[0.0; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = hsum_ps(acc[r][t]) - hsum_ps(acc_m[r][t]);
        }
    }
    out
}

/// Dot product of Q2_K weights with Q8_K activations: the 1×1 [`tile_q2k_q8k_avx2`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q2k_q8k_avx2(xs: &[BlockQ2K], ys: &[BlockQ8K]) -> f32 {
    tile_q2k_q8k_avx2::<1, 1>([xs], [ys])[0][0]
}

/// Dot products of `R` IQ4_XS weight rows with `T` Q8_K activation rows: each sub-block's levels
/// looked up once for `T` tokens, every element reduced as the 1×1 tile ([`dot_iq4xs_q8k_avx2`])
/// reduces it (exact i32 lane sums per super-block, `acc = fma(d_w * d_a, sums, acc)` in block
/// order, a fixed horizontal sum). Rows hold `nb = w[0].len()` blocks.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
///
/// # Panics
/// If a row holds fewer than `w[0].len()` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile_iq4xs_q8k_avx2<const R: usize, const T: usize>(
    w: [&[BlockIq4Xs]; R],
    a: [&[BlockQ8K]; T],
) -> [[f32; T]; R] {
    let nb = w[0].len();
    assert!(w.iter().all(|w| w.len() >= nb) && a.iter().all(|a| a.len() >= nb));
    let m4 = _mm256_set1_epi8(0x0f);
    let table = _mm256_broadcastsi128_si256(ld128(&KVALUES_IQ4NL));
    // The 16 index bytes of a sub-block go to both lanes; the high lane takes the high nibbles.
    let nibble = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        // SAFETY: `b < nb` and every row holds `nb` blocks (asserted above).
        let x = w.map(|w| unsafe { w.get_unchecked(b) });
        // SAFETY: as above.
        let y = a.map(|a| unsafe { a.get_unchecked(b) });
        let mut sumi = [[_mm256_setzero_si256(); T]; R];
        for j in 0..8 {
            for r in 0..R {
                let q = _mm256_broadcastsi128_si256(ld128(&x[r].qs[16 * j..]));
                let v =
                    _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srlv_epi32(q, nibble), m4));
                let abs_v = _mm256_abs_epi8(v);
                let s = _mm256_set1_epi16(x[r].scale(j) as i16);
                for t in 0..T {
                    let a = ld_i8(&y[t].qs[32 * j..]);
                    let p = _mm256_maddubs_epi16(abs_v, _mm256_sign_epi8(a, v));
                    sumi[r][t] = _mm256_add_epi32(sumi[r][t], _mm256_madd_epi16(p, s));
                }
            }
        }
        for r in 0..R {
            let dx = f16_to_f32(x[r].d);
            for t in 0..T {
                let d = _mm256_set1_ps(dx * y[t].d());
                acc[r][t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi[r][t]), acc[r][t]);
            }
        }
    }
    crate::simd::avx2_legacy::hsum_tile(&acc)
}

/// Dot product of IQ4_XS weights with Q8_K activations: the 1×1 [`tile_iq4xs_q8k_avx2`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_iq4xs_q8k_avx2(xs: &[BlockIq4Xs], ys: &[BlockQ8K]) -> f32 {
    tile_iq4xs_q8k_avx2::<1, 1>([xs], [ys])[0][0]
}

/// Quantizes to Q8_K; bit-identical to [`crate::quant::kquants::quantize_row_q8k`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_q8k_avx2(src: &[f32], ys: &mut [BlockQ8K]) {
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (x, y) in src.chunks_exact(QK_K).zip(ys) {
        let mut vmax = _mm256_setzero_ps();
        for v in x.chunks_exact(8) {
            // `max_ps` returns its second operand when either is NaN: NaNs are skipped, as in
            // the scalar scan.
            vmax = _mm256_max_ps(_mm256_and_ps(ld_f32(v), abs), vmax);
        }
        let m = _mm_max_ps(
            _mm256_castps256_ps128(vmax),
            _mm256_extractf128_ps::<1>(vmax),
        );
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        if amax == 0.0 {
            *y = BlockQ8K {
                d: [0; 4],
                qs: [0; QK_K],
                bsums: [[0; 2]; 16],
            };
            continue;
        }
        // The scalar scan keeps the first value of largest magnitude, with its sign.
        let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
        let iscale = -127.0 / max;
        let vs = _mm256_set1_ps(iscale);
        for (v, out) in x.chunks_exact(32).zip(y.qs.chunks_exact_mut(32)) {
            let q = |k: usize| {
                let p = _mm256_mul_ps(ld_f32(&v[8 * k..]), vs);
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(p);
                _mm256_cvtps_epi32(r)
            };
            // Saturating packs cap at 127 like the scalar `min(127)`; the permute undoes the
            // per-lane interleaving of the two packs.
            let packed = _mm256_packs_epi16(
                _mm256_packs_epi32(q(0), q(1)),
                _mm256_packs_epi32(q(2), q(3)),
            );
            let packed = _mm256_permutevar8x32_epi32(packed, order);
            // SAFETY: `out` is 32 bytes; `storeu` has no alignment requirement.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), packed) };
        }
        finish_q8k(y, 1.0 / iscale);
    }
}

macro_rules! safe_dot {
    ($name:ident, $kernel:ident, $block:ty) => {
        /// Safe wrapper over the AVX2 kernel of the same name, with the row checks of the
        /// scalar reference. Only handed out by `dispatch::dot_fn` on CPUs with AVX2.
        pub(crate) fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let (xs, ys) = (row_blocks::<$block>(w, n), row_blocks::<BlockQ8K>(a, n));
            // SAFETY: `dispatch::dot_fn` returns this function only after checking that the CPU
            // supports AVX2, FMA and F16C.
            unsafe { $kernel(xs, ys) }
        }
    };
}

safe_dot!(dot_q2k_q8k, dot_q2k_q8k_avx2, BlockQ2K);
safe_dot!(dot_q3k_q8k, dot_q3k_q8k_avx2, BlockQ3K);
safe_dot!(dot_q4k_q8k, dot_q4k_q8k_avx2, BlockQ4K);
safe_dot!(dot_q5k_q8k, dot_q5k_q8k_avx2, BlockQ5K);
safe_dot!(dot_q6k_q8k, dot_q6k_q8k_avx2, BlockQ6K);
safe_dot!(dot_iq4xs_q8k, dot_iq4xs_q8k_avx2, BlockIq4Xs);

/// Defines `$name`, the safe [`crate::quant::legacy::TileFn`] over the SIMD tile `$kernel` of
/// `$block` weights, with the row checks of the scalar reference. Only to be handed out (by
/// `dispatch::tile_fns`) on CPUs with the kernel's features.
macro_rules! safe_tile {
    ($name:ident, $kernel:ident, $block:ty) => {
        fn $name<const R: usize, const T: usize>(
            n: usize,
            w: [&[u8]; R],
            a: [&[u8]; T],
        ) -> [[f32; T]; R] {
            let w = w.map(|w| row_blocks::<$block>(w, n));
            let a = a.map(|a| row_blocks::<BlockQ8K>(a, n));
            // SAFETY: `dispatch::tile_fns` returns this function only after checking that the
            // CPU supports the kernel's features.
            unsafe { $kernel::<R, T>(w, a) }
        }
    };
}
pub(super) use safe_tile;

safe_tile!(tile_q4k, tile_q4k_q8k_avx2, BlockQ4K);
safe_tile!(tile_q6k, tile_q6k_q8k_avx2, BlockQ6K);
safe_tile!(tile_q5k, tile_q5k_q8k_avx2, BlockQ5K);
safe_tile!(tile_q3k, tile_q3k_q8k_avx2, BlockQ3K);
safe_tile!(tile_q2k, tile_q2k_q8k_avx2, BlockQ2K);
safe_tile!(tile_iq4xs, tile_iq4xs_q8k_avx2, BlockIq4Xs);

/// Defines `$name`, the safe [`crate::quant::legacy::StripFn`] over the SIMD tile `$kernel`,
/// and `$inner`, its loop compiled with the kernel's `$features` so the tiles inline. Only to be
/// handed out (by `dispatch::tile_fns`) on CPUs with those features.
macro_rules! safe_strip {
    ($name:ident, $inner:ident, $kernel:ident, $block:ty, $features:literal) => {
        fn $name(n: usize, w: [&[u8]; TILE_ROWS], a: &[u8], a_row: usize, out: &mut [TileOut]) {
            let w: [&[$block]; TILE_ROWS] = std::array::from_fn(|r| row_blocks(w[r], n));
            // SAFETY: `dispatch::tile_fns` returns this function only after checking that the
            // CPU supports the kernel's features.
            unsafe { $inner(n, w, a, a_row, out) }
        }

        #[target_feature(enable = $features)]
        fn $inner(
            n: usize,
            w: [&[$block]; TILE_ROWS],
            a: &[u8],
            a_row: usize,
            out: &mut [TileOut],
        ) {
            for (g, o) in out.iter_mut().enumerate() {
                let mut ys: [&[BlockQ8K]; TILE_TOKENS] = [&[]; TILE_TOKENS];
                for (t, y) in ys.iter_mut().enumerate() {
                    *y = row_blocks(&a[(g * TILE_TOKENS + t) * a_row..], n);
                }
                // SAFETY: this function only runs with the features enabled (its attribute).
                *o = unsafe { $kernel::<TILE_ROWS, TILE_TOKENS>(w, ys) };
            }
        }
    };
}

pub(super) use safe_strip;

safe_strip!(
    strip_q4k,
    strip_q4k_avx2,
    tile_q4k_q8k_avx2,
    BlockQ4K,
    "avx2,fma,f16c"
);
safe_strip!(
    strip_q2k,
    strip_q2k_avx2,
    tile_q2k_q8k_avx2,
    BlockQ2K,
    "avx2,fma,f16c"
);
safe_strip!(
    strip_q3k,
    strip_q3k_avx2,
    tile_q3k_q8k_avx2,
    BlockQ3K,
    "avx2,fma,f16c"
);
safe_strip!(
    strip_iq4xs,
    strip_iq4xs_avx2,
    tile_iq4xs_q8k_avx2,
    BlockIq4Xs,
    "avx2,fma,f16c"
);
safe_strip!(
    strip_q5k,
    strip_q5k_avx2,
    tile_q5k_q8k_avx2,
    BlockQ5K,
    "avx2,fma,f16c"
);
safe_strip!(
    strip_q6k,
    strip_q6k_avx2,
    tile_q6k_q8k_avx2,
    BlockQ6K,
    "avx2,fma,f16c"
);

/// Defines `$name`, the safe [`crate::quant::legacy::ColsFn`] over the SIMD tile `$kernel`, and
/// `$inner`, its loop compiled with the kernel's `$features` so the tiles inline: one weight row
/// at a time with all the step's tokens (a super-block is 256 values, so accumulators that do not
/// fit the registers cost a spill per 256 values, not per 32). Only to be handed out (by
/// `dispatch::tile_fns`) on CPUs with those features.
macro_rules! safe_cols {
    ($name:ident, $inner:ident, $kernel:ident, $block:ty, $dtype:expr, $features:literal) => {
        fn $name(
            n: usize,
            w: [&[u8]; 2],
            w_row: usize,
            a: &[u8],
            a_row: usize,
            n_tok: usize,
            out: [&mut [[f32; COLS_MAX]]; 2],
        ) {
            let rows = [out[0].len(), out[1].len()];
            check_cols(($dtype, DType::Q8_K), n, (w, w_row, rows), (a, a_row, n_tok));
            // SAFETY: `dispatch::tile_fns` returns this function only after checking that the
            // CPU supports the kernel's features.
            unsafe { $inner(n, (w, w_row), (a, a_row, n_tok), out) }
        }

        #[target_feature(enable = $features)]
        fn $inner(
            n: usize,
            (w, w_row): ([&[u8]; 2], usize),
            (a, a_row, n_tok): (&[u8], usize, usize),
            out: [&mut [[f32; COLS_MAX]]; 2],
        ) {
            for_tokens!(n_tok, T => {
                let mut ys: [&[BlockQ8K]; T] = [&[]; T];
                for (t, y) in ys.iter_mut().enumerate() {
                    *y = row_blocks(&a[t * a_row..], n);
                }
                let [lo, hi] = out;
                for k in 0..lo.len() {
                    for (s, o) in [&mut *lo, &mut *hi].into_iter().enumerate() {
                        if let Some(o) = o.get_mut(k) {
                            let x: &[$block] = row_blocks(&w[s][k * w_row..], n);
                            // SAFETY: this function only runs with the features enabled (its
                            // attribute).
                            let v = unsafe { $kernel::<1, T>([x], ys) };
                            o[..T].copy_from_slice(&v[0]);
                        }
                    }
                }
            })
        }
    };
}
pub(super) use safe_cols;

safe_cols!(
    cols_q4k,
    cols_q4k_avx2,
    tile_q4k_q8k_avx2,
    BlockQ4K,
    DType::Q4_K,
    "avx2,fma,f16c"
);
safe_cols!(
    cols_q2k,
    cols_q2k_avx2,
    tile_q2k_q8k_avx2,
    BlockQ2K,
    DType::Q2_K,
    "avx2,fma,f16c"
);
safe_cols!(
    cols_q3k,
    cols_q3k_avx2,
    tile_q3k_q8k_avx2,
    BlockQ3K,
    DType::Q3_K,
    "avx2,fma,f16c"
);
safe_cols!(
    cols_iq4xs,
    cols_iq4xs_avx2,
    tile_iq4xs_q8k_avx2,
    BlockIq4Xs,
    DType::IQ4_XS,
    "avx2,fma,f16c"
);
safe_cols!(
    cols_q5k,
    cols_q5k_avx2,
    tile_q5k_q8k_avx2,
    BlockQ5K,
    DType::Q5_K,
    "avx2,fma,f16c"
);
safe_cols!(
    cols_q6k,
    cols_q6k_avx2,
    tile_q6k_q8k_avx2,
    BlockQ6K,
    DType::Q6_K,
    "avx2,fma,f16c"
);

/// The register-tiled kernels for K-quant weights of `dtype`, where there are (every K-quant
/// and IQ4_XS).
pub(crate) fn tile_fns(dtype: DType) -> Option<TileFns> {
    // Every K-quant the same way: no 2 × 1 tiles (they were no faster than two dots here: Q4_K
    // 23 -> 22, Q6_K 26 -> 22 GB/s from cache), prompts through the small-batch kernels.
    macro_rules! fns {
        ($tile:ident, $strip:ident, $cols:ident) => {
            TileFns {
                tile: $tile::<TILE_ROWS, TILE_TOKENS>,
                strip: $strip,
                pair: None,
                cols: Some($cols),
                cols_for_prompts: true,
            }
        };
    }
    Some(match dtype {
        DType::Q4_K => fns!(tile_q4k, strip_q4k, cols_q4k),
        DType::Q2_K => fns!(tile_q2k, strip_q2k, cols_q2k),
        DType::Q3_K => fns!(tile_q3k, strip_q3k, cols_q3k),
        DType::IQ4_XS => fns!(tile_iq4xs, strip_iq4xs, cols_iq4xs),
        DType::Q5_K => fns!(tile_q5k, strip_q5k, cols_q5k),
        DType::Q6_K => fns!(tile_q6k, strip_q6k, cols_q6k),
        _ => return None,
    })
}

/// The AVX2 dot product for weights of `dtype` (the K-quants and IQ4_XS), if there is one.
pub(crate) fn dot_fn(dtype: DType) -> Option<DotFn> {
    Some(match dtype {
        DType::Q2_K => dot_q2k_q8k,
        DType::Q3_K => dot_q3k_q8k,
        DType::Q4_K => dot_q4k_q8k,
        DType::Q5_K => dot_q5k_q8k,
        DType::Q6_K => dot_q6k_q8k,
        DType::IQ4_XS => dot_iq4xs_q8k,
        _ => return None,
    })
}

/// The AVX2 activation quantizer into `dtype` (Q8_K), if there is one.
pub(crate) fn quant_fn(dtype: DType) -> Option<QuantFn> {
    (dtype == DType::Q8_K).then_some(quantize_row_q8k as QuantFn)
}

/// Safe wrapper over [`quantize_row_q8k_avx2`] with the checks of the scalar quantizer. Only
/// handed out by `dispatch::quant_fn` on CPUs with AVX2.
pub(crate) fn quantize_row_q8k(src: &[f32], dst: &mut [u8]) {
    let ys = q8k_dst(src, dst);
    // SAFETY: `dispatch::quant_fn` returns this function only after checking that the CPU
    // supports AVX2, FMA and F16C.
    unsafe { quantize_row_q8k_avx2(src, ys) }
}
