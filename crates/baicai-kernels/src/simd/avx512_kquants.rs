//! AVX-512 (BW + VNNI) register tiles for Q4_K weights against Q8_K activations, used for
//! prefill where the CPU has them. Decode keeps the AVX2 dot: it is memory bound.
//!
//! Each tile element equals [`super::avx2_kquants::tile_q4k_q8k_avx2`]'s (and so the AVX2 dot's)
//! bit for bit, which keeps matmul batch invariant across the two kernels. The AVX2 kernel's
//! integer lane `m` of a super-block is `Σ_c s_{2c}·Σ_{b∈4m..4m+3} lo_c[b]·y[64c+b] +
//! s_{2c+1}·Σ_{b∈4m..4m+3} hi_c[b]·y[64c+32+b]` (`maddubs`, then `madd` with the broadcast
//! sub-block scale). Here one 512-bit register holds a chunk's low nibbles in its lower half and
//! its high nibbles in its upper half, against the 64 contiguous activation bytes they multiply;
//! `maddubs` then `dpwssd` with the two scales gives the two halves' terms in lanes `m` and
//! `8 + m`, which are added once per super-block. Integer sums are exact (no saturation: levels
//! ≤ 15, |a| ≤ 128), and the float steps are the AVX2 kernel's, in the same order.

use core::arch::x86_64::*;

use super::avx2_kquants::{
    f16_to_f32, ld128, ld_bsums, ld_i8, ld_u8, q4k_block_mins, q4k_tile_out, q6k_tile, safe_cols,
    safe_strip, safe_tile, scale_pair,
};
use crate::dtype::DType;
use crate::kernel::{avx512_available as available, for_tokens, COLS_MAX};
use crate::kernel::{TileFns, TileOut, TILE_ROWS, TILE_TOKENS};
use crate::quant::kquants::{row_blocks, BlockQ4K, BlockQ6K, BlockQ8K};
use crate::quant::legacy::check_cols;

/// `acc + Σ pairs a·b` per i32 lane (`vpdpwssd`), as an instruction: LLVM splits the intrinsic
/// back into `vpmaddwd` + `vpaddd`, two double-pumped 512-bit operations on Zen 4 instead of one.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn dpwssd(mut acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    // SAFETY: the instruction only reads and writes these registers; the CPU supports it (this
    // function's target features).
    unsafe {
        core::arch::asm!(
            "vpdpwssd {acc}, {a}, {b}",
            acc = inout(zmm_reg) acc,
            a = in(zmm_reg) a,
            b = in(zmm_reg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// `R` Q4_K weight rows × `T` Q8_K activation rows (see the module docs).
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C.
///
/// # Panics
/// If a row holds fewer than `w[0].len()` blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn tile_q4k_q8k_avx512<const R: usize, const T: usize>(
    w: [&[BlockQ4K]; R],
    a: [&[BlockQ8K]; T],
) -> [[f32; T]; R] {
    let nb = w[0].len();
    assert!(w.iter().all(|w| w.len() >= nb) && a.iter().all(|a| a.len() >= nb));
    let m4 = _mm512_set1_epi8(0x0f);
    // The upper half's 64-bit lanes shift right by 4: high nibbles there, low ones below.
    let shifts = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut acc_m = [[_mm_setzero_ps(); T]; R];
    for b in 0..nb {
        // SAFETY: `b < nb` and every row holds `nb` blocks (asserted above).
        let x = w.map(|w| unsafe { w.get_unchecked(b) });
        // SAFETY: as above.
        let y = a.map(|a| unsafe { a.get_unchecked(b) });
        let dy = y.map(|y| y.d());
        let scales = q4k_block_mins(x, y, dy, &mut acc_m);
        let mut sumi = [[_mm512_setzero_si512(); T]; R];
        for c in 0..4 {
            for r in 0..R {
                // SAFETY: `qs` is 128 bytes, so `32c .. 32c + 32` is inside it.
                let q = unsafe { _mm256_loadu_si256(x[r].qs.as_ptr().add(32 * c).cast()) };
                let q = _mm512_broadcast_i64x4(q);
                let levels = _mm512_and_si512(_mm512_srlv_epi64(q, shifts), m4);
                let sc = _mm512_mask_blend_epi16(
                    0xffff_0000,
                    _mm512_set1_epi16(i16::from(scales[r][2 * c])),
                    _mm512_set1_epi16(i16::from(scales[r][2 * c + 1])),
                );
                for t in 0..T {
                    // SAFETY: `qs` is 256 bytes, so `64c .. 64c + 64` is inside it.
                    let yv = unsafe { _mm512_loadu_si512(y[t].qs.as_ptr().add(64 * c).cast()) };
                    let p = _mm512_maddubs_epi16(levels, yv);
                    sumi[r][t] = dpwssd(sumi[r][t], p, sc);
                }
            }
        }
        for r in 0..R {
            let dx = f16_to_f32(x[r].d);
            for t in 0..T {
                let s = _mm256_add_epi32(
                    _mm512_castsi512_si256(sumi[r][t]),
                    _mm512_extracti64x4_epi64::<1>(sumi[r][t]),
                );
                let d = _mm256_set1_ps(dx * dy[t]);
                acc[r][t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[r][t]);
            }
        }
    }
    q4k_tile_out(&acc, &acc_m)
}

/// [`dpwssd`] on 256-bit registers (AVX-512 VL), for the same reason.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn dpwssd256(mut acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: as `dpwssd`.
    unsafe {
        core::arch::asm!(
            "vpdpwssd {acc}, {a}, {b}",
            acc = inout(ymm_reg) acc,
            a = in(ymm_reg) a,
            b = in(ymm_reg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

q6k_tile!(
    /// `R` Q6_K weight rows × `T` Q8_K activation rows:
    /// [`super::avx2_kquants::tile_q6k_q8k_avx2`]'s body with each `madd` + `add` of a
    /// sub-block's scaled pair sums fused into one `vpdpwssd` (the same exact i32 lanes), so
    /// every element equals the AVX2 tile's and dot's bit for bit.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C.
    ///
    /// # Panics
    /// If a row holds fewer than `w[0].len()` blocks.
    tile_q6k_q8k_avx512,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    dpwssd256
);

safe_tile!(tile_q4k, tile_q4k_q8k_avx512, BlockQ4K);
safe_tile!(tile_q6k, tile_q6k_q8k_avx512, BlockQ6K);
safe_strip!(
    strip_q4k,
    strip_q4k_avx512,
    tile_q4k_q8k_avx512,
    BlockQ4K,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"
);
safe_strip!(
    strip_q6k,
    strip_q6k_avx512,
    tile_q6k_q8k_avx512,
    BlockQ6K,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"
);

safe_cols!(
    cols_q4k,
    cols_q4k_avx512,
    tile_q4k_q8k_avx512,
    BlockQ4K,
    DType::Q4_K,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"
);
safe_cols!(
    cols_q6k,
    cols_q6k_avx512,
    tile_q6k_q8k_avx512,
    BlockQ6K,
    DType::Q6_K,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"
);

/// The AVX-512 tiles for `dtype` (Q4_K, Q6_K), when the CPU has them.
pub(crate) fn tile_fns(dtype: DType) -> Option<TileFns> {
    if !available() {
        return None;
    }
    match dtype {
        DType::Q4_K => Some(TileFns {
            tile: tile_q4k::<TILE_ROWS, TILE_TOKENS>,
            strip: strip_q4k,
            // Slower than two dots (23 -> 16 GB/s from cache).
            pair: None,
            cols: Some(cols_q4k),
            cols_for_prompts: true,
        }),
        DType::Q6_K => Some(TileFns {
            tile: tile_q6k::<TILE_ROWS, TILE_TOKENS>,
            strip: strip_q6k,
            // 26 -> 29 GB/s from cache.
            pair: Some(tile_q6k::<2, 1>),
            cols: Some(cols_q6k),
            cols_for_prompts: true,
        }),
        _ => None,
    }
}
