//! AVX-512 VNNI register tiles for the symmetric 32-value formats (Q4_0, Q5_0, Q8_0, IQ4_NL,
//! MXFP4) against Q8_0 activations, used where the CPU has them: for prefill, for decode's two-row
//! kernels, and as the Q4_0 and Q5_0 dot products (from cache, one thread: Q5_0 decode
//! 12.5 GB/s with AVX2 dots, 14.1 with these, 16.9 with the two-row tile; Q8_0 29 -> 33.5).
//!
//! Each element equals [`super::avx2_legacy::tile_sym_q8_0`]'s bit for bit. Per block, the AVX2
//! kernel's i32 lane `m` is the exact `Σ_{b∈4m..4m+3} v[b]·y[b]` of the weight values `v` and the
//! activation codes `y`. `vpdpbusd` sums the same four products of an unsigned and a signed byte
//! in one instruction, so the weights go in as unsigned codes `u = v + o` (the format's own
//! offset, or 128 for signed codes) and the accumulator starts at `-o·Σ_{4 bytes} y`, computed
//! once per token and block: the lane comes out as the same integer. The float steps
//! (`fma(d_w·d_a, lanes, acc)` in block order, then the horizontal sum) are the AVX2 kernel's.

use std::arch::x86_64::*;

use super::avx2_legacy::{
    broadcast_f16, hsum_tile, sym_cols, sym_strip_rows, sym_tile_rows, token_rows, SymQ8_0, IQ4_NL,
    MXFP4, Q4_0, Q5_0, Q8_0,
};
use crate::dtype::{DType, QK};
use crate::kernel::{avx512_available, DotFn};
use crate::kernel::{for_tokens, TileFns, TileOut, COLS_MAX, TILE_ROWS, TILE_TOKENS};
use crate::quant::legacy::check_cols;

const Q8_0_BYTES: usize = DType::Q8_0.block_bytes();

/// `R` weight rows × `T` Q8_0 activation rows, `nb` blocks each (see the module docs).
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C
/// ([`super::avx512_kquants::available`]); every `w[r]` must point at `nb` blocks of `F` and
/// every `a[t]` at `nb` Q8_0 blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_sym_vnni<F: SymQ8_0, const R: usize, const T: usize>(
    nb: usize,
    w: [*const u8; R],
    a: [*const u8; T],
) -> [[f32; T]; R] {
    // Signed codes are shifted to unsigned by flipping the sign bit (adding 128).
    let offset: u8 = if F::OFFSET == 0 { 128 } else { F::OFFSET as u8 };
    let off = _mm256_set1_epi8(offset as i8);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let (mut u, mut dw) = ([_mm256_setzero_si256(); R], [_mm256_setzero_ps(); R]);
    for b in 0..nb {
        for r in 0..R {
            let x = w[r].add(b * F::BYTES);
            let q = F::codes_avx512(x);
            u[r] = if F::OFFSET == 0 {
                _mm256_xor_si256(q, off)
            } else {
                q
            };
            dw[r] = F::scale(x);
        }
        for t in 0..T {
            let y = a[t].add(b * Q8_0_BYTES);
            let qy = _mm256_loadu_si256(y.add(2).cast());
            let da = broadcast_f16(y);
            let start = _mm256_sub_epi32(
                _mm256_setzero_si256(),
                _mm256_dpbusd_epi32(_mm256_setzero_si256(), off, qy),
            );
            for r in 0..R {
                let s = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(start, u[r], qy));
                acc[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(dw[r], da), s, acc[r][t]);
            }
        }
    }
    hsum_tile(&acc)
}

/// Safe tile: checks the row lengths ([`tile_fns`] checked the CPU).
fn tile_sym<F: SymQ8_0, const R: usize, const T: usize>(
    n: usize,
    w: [&[u8]; R],
    a: [&[u8]; T],
) -> [[f32; T]; R] {
    let (w, a) = sym_tile_rows::<F, R, T>(n, w, a);
    // SAFETY: `tile_fns` hands this out only when the CPU has the features; every row holds
    // `n` values (checked just above).
    unsafe { tile_sym_vnni::<F, R, T>(n / QK, w, a) }
}

/// Safe strip: checks the rows once, then runs the tiles inline.
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
    // SAFETY: `tile_fns` hands this out only when the CPU has the features; every weight row
    // holds `n` values, and so does every activation row (the last was checked, and they are
    // `a_row` apart inside `a`).
    unsafe { strip_sym_vnni::<F>(n / QK, wp, a.as_ptr(), a_row, out) }
}

/// The loop of [`strip_sym`], inside the target features so the tiles inline.
///
/// # Safety
/// As [`tile_sym_vnni`] for every group of `TILE_TOKENS` rows `a_row` bytes apart from `a`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn strip_sym_vnni<F: SymQ8_0>(
    nb: usize,
    w: [*const u8; TILE_ROWS],
    a: *const u8,
    a_row: usize,
    out: &mut [TileOut],
) {
    // Two groups of tokens per tile where there are: 16 accumulators fit the 32 registers, and
    // each weight block's decoding then serves 8 tokens.
    let mut g = 0;
    while g + 2 <= out.len() {
        let ap = token_rows::<{ 2 * TILE_TOKENS }>(a, a_row, g * TILE_TOKENS);
        let v = tile_sym_vnni::<F, TILE_ROWS, { 2 * TILE_TOKENS }>(nb, w, ap);
        for (k, o) in out[g..g + 2].iter_mut().enumerate() {
            for (r, row) in o.iter_mut().enumerate() {
                row.copy_from_slice(&v[r][k * TILE_TOKENS..(k + 1) * TILE_TOKENS]);
            }
        }
        g += 2;
    }
    if g < out.len() {
        let ap = token_rows(a, a_row, g * TILE_TOKENS);
        out[g] = tile_sym_vnni::<F, TILE_ROWS, TILE_TOKENS>(nb, w, ap);
    }
}

// Pairs of rows for every token count: at most 16 accumulators of the 32 registers.
sym_cols!(
    cols_sym,
    cols_sym_vnni,
    tile_sym_vnni,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    COLS_MAX,
    // `tile_fns` hands this out only when the CPU has the features.
    ()
);

/// Safe 1×1 tile: one dot product, checked as [`tile_sym`].
fn dot_sym<F: SymQ8_0>(n: usize, w: &[u8], a: &[u8]) -> f32 {
    tile_sym::<F, 1, 1>(n, [w], [a])[0][0]
}

/// The AVX-512 VNNI dot product for `dtype` (bit-identical to the AVX2 one), where it is faster
/// and the CPU has the features: Q5_0 and Q4_0 (Q8_0's was slower, 27 against 29 GB/s).
pub(crate) fn dot_fn(dtype: DType) -> Option<DotFn> {
    if !avx512_available() {
        return None;
    }
    Some(match dtype {
        DType::Q5_0 => dot_sym::<Q5_0>,
        DType::Q4_0 => dot_sym::<Q4_0>,
        _ => return None,
    })
}

/// The AVX-512 VNNI tiles for `dtype`, when it is a symmetric legacy format and the CPU has them.
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
    if !avx512_available() {
        return None;
    }
    Some(match dtype {
        DType::Q4_0 => fns::<Q4_0>(),
        DType::Q5_0 => fns::<Q5_0>(),
        DType::Q8_0 => fns::<Q8_0>(),
        DType::IQ4_NL => fns::<IQ4_NL>(),
        DType::MXFP4 => fns::<MXFP4>(),
        _ => return None,
    })
}
