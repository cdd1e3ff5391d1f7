//! The packed kernels (see [`crate::quant::packed`] for the layout and the numerics): one group of
//! 8 interleaved weight rows against up to 8 Q8_0 activation rows. Per block and token the eight
//! rows' integer sums build up in one register, four products per row and instruction
//! (`vpdpbusd` with AVX-512 VNNI; `maddubs` and `madd` with AVX2), each activation word broadcast
//! to the eight lanes; then one float step per block covers the eight rows. Each result equals
//! [`crate::quant::packed::dot_packed_ref`] bit for bit: the integer sums are exact, and the
//! float steps (`fma(d_w · d_a, isum, acc)` per block, in block order) are the reference's.

// Index loops, not iterator closures: a closure does not inherit `target_feature`.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ptr::read_unaligned;

use super::avx2_legacy::bit_bytes;
use crate::dtype::DType;
use crate::kernel::{active_isa, avx512_available, ActBlock, Isa, PackedFn, COLS_MAX, PACK_ROWS};
use crate::quant::packed::{group_block_bytes, packed_offset};
use crate::quant::tables::{KVALUES_IQ4NL, KVALUES_MXFP4};

/// Bytes of a Q8_0 activation block.
const A_BLOCK: usize = DType::Q8_0.block_bytes();

/// A packed format: its 8 registers of codes per group block.
trait Packed {
    const DTYPE: DType;
    /// Bytes of a group block.
    const GB: usize = group_block_bytes(Self::DTYPE);
    /// The unsigned codes' offset.
    const OFFSET: i32 = packed_offset(Self::DTYPE);
    /// Register `k` (values `4k .. 4k+4` of each row, row `r` in lane `r`) of unsigned codes.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `gb` points at a whole group block.
    unsafe fn codes(gb: *const u8, k: usize) -> __m256i;
    /// [`Packed::codes`] with AVX-512 (where the format decodes faster with it).
    ///
    /// # Safety
    /// AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; `gb` points at a whole group block.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn codes_vnni(gb: *const u8, k: usize) -> __m256i {
        Self::codes(gb, k)
    }
    /// The 8 rows' scales of the group block at `gb`: by default 8 f16.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `gb` points at a whole group block.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales(gb: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(gb.cast()))
    }
    /// Whether the AVX2 kernel should take the codes as signed bytes (`code - 128`, the
    /// `maddubs` sign trick) because unsigned codes times activations could saturate its
    /// 16-bit pair sums.
    const SIGNED_AVX2: bool;
}

struct Q8_0;
struct Q5_0;
struct Q4_0;
#[allow(non_camel_case_types)]
struct IQ4_NL;
struct MXFP4;

/// Register `k` of the four nibble registers at `p` (Q4_0, IQ4_NL, MXFP4).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibble_reg(p: *const u8, k: usize) -> __m256i {
    let q = _mm256_loadu_si256(p.add(32 * (k % 4)).cast());
    let q = if k < 4 { q } else { _mm256_srli_epi16::<4>(q) };
    _mm256_and_si256(q, _mm256_set1_epi8(0x0f))
}

/// Register `k` of the nibble registers at `p` as table values plus 128 (IQ4_NL, MXFP4).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn table_codes(table: &[i8; 16], p: *const u8, k: usize) -> __m256i {
    let t = _mm_xor_si128(_mm_loadu_si128(table.as_ptr().cast()), _mm_set1_epi8(-128));
    _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(t), nibble_reg(p, k))
}

impl Packed for Q4_0 {
    const DTYPE: DType = DType::Q4_0;
    const SIGNED_AVX2: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(gb: *const u8, k: usize) -> __m256i {
        nibble_reg(gb.add(16), k)
    }
}

impl Packed for IQ4_NL {
    const DTYPE: DType = DType::IQ4_NL;
    /// Codes up to 241: `maddubs` pairs could saturate, so AVX2 takes the values signed.
    const SIGNED_AVX2: bool = true;
    /// The table's values plus 128, looked up by the nibbles.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(gb: *const u8, k: usize) -> __m256i {
        table_codes(&KVALUES_IQ4NL, gb.add(16), k)
    }
}

impl Packed for MXFP4 {
    const DTYPE: DType = DType::MXFP4;
    /// Codes up to 140: `maddubs` pairs could saturate, so AVX2 takes the values signed.
    const SIGNED_AVX2: bool = true;
    /// The doubled E2M1 values plus 128, looked up by the nibbles.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(gb: *const u8, k: usize) -> __m256i {
        table_codes(&KVALUES_MXFP4, gb.add(8), k)
    }
    /// The 8 E8M0 bytes, halved as ggml does: `(e - 1) << 23` as f32 bits, and the two
    /// subnormals `2^-128`, `2^-127` for `e` = 0, 1 (bit-identical to `e8m0_to_f32_half`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales(gb: *const u8) -> __m256 {
        let e = _mm256_cvtepu8_epi32(_mm_loadl_epi64(gb.cast()));
        let normal = _mm256_slli_epi32::<23>(_mm256_sub_epi32(e, _mm256_set1_epi32(1)));
        let sub = _mm256_sllv_epi32(_mm256_set1_epi32(0x0020_0000), e);
        let is_normal = _mm256_cmpgt_epi32(e, _mm256_set1_epi32(1));
        _mm256_castsi256_ps(_mm256_blendv_epi8(sub, normal, is_normal))
    }
}

impl Packed for Q8_0 {
    const DTYPE: DType = DType::Q8_0;
    const SIGNED_AVX2: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(gb: *const u8, k: usize) -> __m256i {
        _mm256_loadu_si256(gb.add(16 + 32 * k).cast())
    }
}

impl Packed for Q5_0 {
    const DTYPE: DType = DType::Q5_0;
    const SIGNED_AVX2: bool = false;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn codes(gb: *const u8, k: usize) -> __m256i {
        let q = _mm256_loadu_si256(gb.add(16 + 32 * (k % 4)).cast());
        let q = if k < 4 { q } else { _mm256_srli_epi16::<4>(q) };
        let nib = _mm256_and_si256(q, _mm256_set1_epi8(0x0f));
        let high = bit_bytes(read_unaligned(gb.add(144 + 4 * k).cast::<u32>()));
        _mm256_or_si256(nib, _mm256_and_si256(high, _mm256_set1_epi8(0x10)))
    }
    /// The fifth bits go straight into a mask register and come in with one masked add.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn codes_vnni(gb: *const u8, k: usize) -> __m256i {
        let q = _mm256_loadu_si256(gb.add(16 + 32 * (k % 4)).cast());
        let q = if k < 4 { q } else { _mm256_srli_epi16::<4>(q) };
        let nib = _mm256_and_si256(q, _mm256_set1_epi8(0x0f));
        let high: __mmask32 = read_unaligned(gb.add(144 + 4 * k).cast::<u32>());
        _mm256_mask_add_epi8(nib, high, nib, _mm256_set1_epi8(0x10))
    }
}

/// The activation word of token row `y` (a Q8_0 row) for block `b`, register `k`, in all lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn act_word(y: *const u8, b: usize, k: usize) -> __m256i {
    _mm256_set1_epi32(read_unaligned(y.add(b * A_BLOCK + 2 + 4 * k).cast::<i32>()))
}

/// The float step of a block for `T` tokens: `acc[t] = fma(d_w · d_a, isum, acc[t])`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_step<F: Packed, const T: usize>(
    gb: *const u8,
    aux: *const ActBlock,
    nb: usize,
    b: usize,
    isum: &[__m256i; T],
    acc: &mut [__m256; T],
) {
    let dw = F::scales(gb);
    for t in 0..T {
        let da = _mm256_set1_ps((*aux.add(t * nb + b)).d);
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(isum[t]), acc[t]);
    }
}

/// One group × `T` tokens with AVX-512 VNNI.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; `g` points at `nb` group blocks, `a`
/// at `T` Q8_0 rows of `nb` blocks `a_row` bytes apart, `aux` at `T * nb` entries, `out` at `T`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn group_vnni<F: Packed, const T: usize>(
    nb: usize,
    g: *const u8,
    a: *const u8,
    a_row: usize,
    aux: *const ActBlock,
    out: *mut [f32; PACK_ROWS],
) {
    // `vpdpbusd` accumulates into its destination, so each sum is a chain of dependent
    // instructions; with few tokens the sums of a block are split over `chains` accumulators
    // (integer sums: the split changes no bit) so that enough of them are in flight.
    let chains = if T >= 4 {
        1
    } else if T >= 2 {
        2
    } else {
        4
    };
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let gb = g.add(b * F::GB);
        let mut part = [[_mm256_setzero_si256(); 4]; T];
        for t in 0..T {
            part[t][0] = _mm256_set1_epi32((*aux.add(t * nb + b)).neg_sum * F::OFFSET);
        }
        for k in 0..8 {
            let u = F::codes_vnni(gb, k);
            for t in 0..T {
                let y = act_word(a.add(t * a_row), b, k);
                let c = k % chains;
                part[t][c] = _mm256_dpbusd_epi32(part[t][c], u, y);
            }
        }
        let mut isum = [_mm256_setzero_si256(); T];
        for t in 0..T {
            isum[t] = part[t][0];
            for c in 1..chains {
                isum[t] = _mm256_add_epi32(isum[t], part[t][c]);
            }
        }
        block_step::<F, T>(gb, aux, nb, b, &isum, &mut acc);
    }
    for (t, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(t).cast(), *acc);
    }
}

/// One group × `T` (at most 4: AVX2 has 16 registers) tokens with AVX2.
///
/// # Safety
/// As [`group_vnni`], with AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_avx2<F: Packed, const T: usize>(
    nb: usize,
    g: *const u8,
    a: *const u8,
    a_row: usize,
    aux: *const ActBlock,
    out: *mut [f32; PACK_ROWS],
) {
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(-128);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let gb = g.add(b * F::GB);
        let mut isum = [_mm256_setzero_si256(); T];
        if !F::SIGNED_AVX2 {
            for t in 0..T {
                isum[t] = _mm256_set1_epi32((*aux.add(t * nb + b)).neg_sum * F::OFFSET);
            }
        }
        for k in 0..8 {
            let u = F::codes(gb, k);
            if F::SIGNED_AVX2 {
                let w = _mm256_xor_si256(u, flip);
                let aw = _mm256_abs_epi8(w);
                for t in 0..T {
                    let y = _mm256_sign_epi8(act_word(a.add(t * a_row), b, k), w);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, y), ones);
                    isum[t] = _mm256_add_epi32(isum[t], p);
                }
            } else {
                for t in 0..T {
                    let y = act_word(a.add(t * a_row), b, k);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), ones);
                    isum[t] = _mm256_add_epi32(isum[t], p);
                }
            }
        }
        block_step::<F, T>(gb, aux, nb, b, &isum, &mut acc);
    }
    for (t, acc) in acc.iter().enumerate() {
        _mm256_storeu_ps(out.add(t).cast(), *acc);
    }
}

/// Checks a [`PackedFn`]'s arguments.
fn check<F: Packed>(
    nb: usize,
    group: &[u8],
    a: &[u8],
    a_row: usize,
    aux: &[ActBlock],
    n_tok: usize,
    out: &[[f32; PACK_ROWS]],
) {
    assert!(
        (1..=COLS_MAX).contains(&n_tok),
        "1 to {COLS_MAX} tokens, not {n_tok}"
    );
    assert!(group.len() >= nb * F::GB, "a packed group of {nb} blocks");
    assert!(
        a_row >= nb * A_BLOCK && a.len() >= (n_tok - 1) * a_row + nb * A_BLOCK,
        "{n_tok} activation rows of {nb} blocks"
    );
    assert!(aux.len() >= n_tok * nb && out.len() >= n_tok);
}

/// The AVX-512 VNNI [`PackedFn`] of `F`.
fn packed_vnni<F: Packed>(
    nb: usize,
    group: &[u8],
    a: &[u8],
    a_row: usize,
    aux: &[ActBlock],
    n_tok: usize,
    out: &mut [[f32; PACK_ROWS]],
) {
    check::<F>(nb, group, a, a_row, aux, n_tok, out);
    let (g, a, x, o) = (group.as_ptr(), a.as_ptr(), aux.as_ptr(), out.as_mut_ptr());
    // SAFETY: `packed_fn` hands this out only where the CPU has the features; the slices hold
    // what the kernel reads and writes (checked just above).
    crate::kernel::for_tokens!(n_tok, T => unsafe { group_vnni::<F, T>(nb, g, a, a_row, x, o) });
}

/// The AVX2 [`PackedFn`] of `F`: tokens four at a time.
fn packed_avx2<F: Packed>(
    nb: usize,
    group: &[u8],
    a: &[u8],
    a_row: usize,
    aux: &[ActBlock],
    n_tok: usize,
    out: &mut [[f32; PACK_ROWS]],
) {
    check::<F>(nb, group, a, a_row, aux, n_tok, out);
    let mut t0 = 0;
    while t0 < n_tok {
        let n = (n_tok - t0).min(4);
        let g = group.as_ptr();
        let ap = a[t0 * a_row..].as_ptr();
        let x = aux[t0 * nb..].as_ptr();
        let o = out[t0..].as_mut_ptr();
        // SAFETY: as in `packed_vnni`, for tokens `t0 .. t0 + n` (inside the checked ranges).
        unsafe {
            match n {
                1 => group_avx2::<F, 1>(nb, g, ap, a_row, x, o),
                2 => group_avx2::<F, 2>(nb, g, ap, a_row, x, o),
                3 => group_avx2::<F, 3>(nb, g, ap, a_row, x, o),
                _ => group_avx2::<F, 4>(nb, g, ap, a_row, x, o),
            }
        }
        t0 += n;
    }
}

/// The packed kernel for `dtype` on this CPU: AVX-512 VNNI where available and not turned off,
/// else AVX2 (bit-identical); `None` without them or for a format without a packed layout.
pub(crate) fn packed_fn(dtype: DType) -> Option<PackedFn> {
    if active_isa() != Isa::Avx2 {
        return None;
    }
    let vnni = avx512_available();
    Some(match (dtype, vnni) {
        (DType::Q8_0, true) => packed_vnni::<Q8_0>,
        (DType::Q8_0, false) => packed_avx2::<Q8_0>,
        (DType::Q5_0, true) => packed_vnni::<Q5_0>,
        (DType::Q5_0, false) => packed_avx2::<Q5_0>,
        (DType::Q4_0, true) => packed_vnni::<Q4_0>,
        (DType::Q4_0, false) => packed_avx2::<Q4_0>,
        (DType::IQ4_NL, true) => packed_vnni::<IQ4_NL>,
        (DType::IQ4_NL, false) => packed_avx2::<IQ4_NL>,
        (DType::MXFP4, true) => packed_vnni::<MXFP4>,
        (DType::MXFP4, false) => packed_avx2::<MXFP4>,
        (DType::Q4_K, true) => packed_q4k_vnni,
        (DType::Q4_K, false) => packed_q4k_avx2,
        (DType::Q5_K, true) => packed_q5k_vnni,
        (DType::Q5_K, false) => packed_q5k_avx2,
        (DType::Q6_K, true) => packed_q6k_vnni,
        (DType::Q6_K, false) => packed_q6k_avx2,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// K-quants: Q4_K and Q6_K against Q8_K activations, with AVX-512 VNNI.

/// Bytes of a Q8_K activation block: `d` (f32), 256 codes, 16 sums of 16.
const K_BLOCK: usize = DType::Q8_K.block_bytes();

/// The 8 rows' byte `i` of a transposed table at `p` (8 bytes per `i`), zero-extended to lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lanes_u8(p: *const u8, i: usize) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8 * i).cast()))
}

/// Q4_K's 6-bit scale of sub-block `j` for the 8 rows, from the transposed scale bytes at `st`
/// (the unpacking of `scales_mins_k4`, lanes for rows). AVX2 only, so the AVX-512 kernels inline
/// it too.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_scale(st: *const u8, j: usize) -> __m256i {
    if j < 4 {
        _mm256_and_si256(lanes_u8(st, j), _mm256_set1_epi32(63))
    } else {
        _mm256_or_si256(
            _mm256_and_si256(lanes_u8(st, j + 4), _mm256_set1_epi32(0x0f)),
            _mm256_and_si256(
                _mm256_srli_epi32::<2>(lanes_u8(st, j - 4)),
                _mm256_set1_epi32(0x30),
            ),
        )
    }
}

/// Q4_K's 6-bit min of sub-block `j` for the 8 rows, as [`q4k_scale`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_min(st: *const u8, j: usize) -> __m256i {
    if j < 4 {
        _mm256_and_si256(lanes_u8(st, j + 4), _mm256_set1_epi32(63))
    } else {
        _mm256_or_si256(
            _mm256_srli_epi32::<4>(lanes_u8(st, j + 4)),
            _mm256_and_si256(
                _mm256_srli_epi32::<2>(lanes_u8(st, j)),
                _mm256_set1_epi32(0x30),
            ),
        )
    }
}

/// The Q4_K group kernel, for an instruction set: `$dot4(acc, u, y)` adds to each 32-bit lane
/// the products of its four unsigned and four signed bytes (exactly: `vpdpbusd`, or `maddubs`
/// then `madd` where no product pair can saturate 16 bits, as here: 15 · 127 · 2 < 2^15).
macro_rules! q4k_group {
    ($name:ident, $features:literal, $dot4:path, $fifth:path) => {
        /// One Q4_K group × `T` Q8_K tokens (see [`crate::quant::packed`]): per block
        /// `acc = fma(d·d_a, Σ_j sc_j isum_j, acc)`, then
        /// `acc = fma(-(dmin·d_a), Σ_j m_j bsum_j, acc)`.
        ///
        /// # Safety
        /// The CPU has the kernel's features; `g` points at `nb` group blocks, `a` at `T` Q8_K
        /// rows of `nb` blocks `a_row` bytes apart, `out` at `T` outputs.
        #[inline]
        #[target_feature(enable = $features)]
        ///
        /// With `FIVE` the group is Q5_K's: the same, plus each value's fifth bit from the masks
        /// after the nibbles.
        unsafe fn $name<const T: usize, const FIVE: bool>(
            nb: usize,
            g: *const u8,
            a: *const u8,
            a_row: usize,
            out: *mut [f32; PACK_ROWS],
        ) {
            let gbb = if FIVE {
                group_block_bytes(DType::Q5_K)
            } else {
                group_block_bytes(DType::Q4_K)
            };
            let m4 = _mm256_set1_epi8(0x0f);
            let ones = _mm256_set1_epi16(1);
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nb {
                let gb = g.add(b * gbb);
                let st = gb.add(32);
                let mut total = [_mm256_setzero_si256(); T];
                for c in 0..4 {
                    let (j0, j1) = (2 * c, 2 * c + 1);
                    // The 6-bit scales of sub-blocks 2c and 2c+1.
                    let (s0, s1) = (q4k_scale(st, j0), q4k_scale(st, j1));
                    let mut lo = [_mm256_setzero_si256(); T];
                    let mut hi = [_mm256_setzero_si256(); T];
                    for s in 0..8 {
                        // Q5_K's chunks hold their fifth bits' masks after the nibbles.
                        let chunk = gb.add(128 + if FIVE { 320 } else { 256 } * c);
                        let q = _mm256_loadu_si256(chunk.add(32 * s).cast());
                        let mut ql = _mm256_and_si256(q, m4);
                        let mut qh = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                        if FIVE {
                            let m = chunk.add(256 + 8 * s);
                            ql = $fifth(ql, read_unaligned(m.cast::<u32>()));
                            qh = $fifth(qh, read_unaligned(m.add(4).cast::<u32>()));
                        }
                        for t in 0..T {
                            let y = a.add(t * a_row + b * K_BLOCK + 4 + 64 * c + 4 * s);
                            let yl = _mm256_set1_epi32(read_unaligned(y.cast::<i32>()));
                            let yh = _mm256_set1_epi32(read_unaligned(y.add(32).cast::<i32>()));
                            lo[t] = $dot4(lo[t], ql, yl);
                            hi[t] = $dot4(hi[t], qh, yh);
                        }
                    }
                    for t in 0..T {
                        let s = _mm256_add_epi32(
                            _mm256_mullo_epi32(lo[t], s0),
                            _mm256_mullo_epi32(hi[t], s1),
                        );
                        total[t] = _mm256_add_epi32(total[t], s);
                    }
                }
                // The mins, as 16-bit pairs (m_{2i}, m_{2i+1}) per row.
                let mut mp = [_mm256_setzero_si256(); 4];
                for (i, mp) in mp.iter_mut().enumerate() {
                    *mp = _mm256_or_si256(
                        q4k_min(st, 2 * i),
                        _mm256_slli_epi32::<16>(q4k_min(st, 2 * i + 1)),
                    );
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(gb.cast()));
                let dmw = _mm256_cvtph_ps(_mm_loadu_si128(gb.add(16).cast()));
                for t in 0..T {
                    let y = a.add(t * a_row + b * K_BLOCK);
                    // Sums of the sub-blocks of 32 (lane j), packed to 16 bits: dwords 0, 1, 4, 5 hold
                    // the pairs (2i, 2i+1) for i = 0..4.
                    let bs = _mm256_madd_epi16(_mm256_loadu_si256(y.add(260).cast()), ones);
                    let bp = _mm256_packs_epi32(bs, bs);
                    let mut msum = _mm256_setzero_si256();
                    for (i, mp) in mp.iter().enumerate() {
                        let idx = _mm256_set1_epi32([0, 1, 4, 5][i]);
                        let pair = _mm256_permutevar8x32_epi32(bp, idx);
                        msum = _mm256_add_epi32(msum, _mm256_madd_epi16(*mp, pair));
                    }
                    let da = _mm256_set1_ps(read_unaligned(y.cast::<f32>()));
                    acc[t] = _mm256_fmadd_ps(
                        _mm256_mul_ps(dw, da),
                        _mm256_cvtepi32_ps(total[t]),
                        acc[t],
                    );
                    acc[t] =
                        _mm256_fnmadd_ps(_mm256_mul_ps(dmw, da), _mm256_cvtepi32_ps(msum), acc[t]);
                }
            }
            for (t, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.add(t).cast(), *acc);
            }
        }
    };
}

/// `vpdpbusd` as a function for [`q4k_group`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn dot4_vnni(acc: __m256i, u: __m256i, y: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(acc, u, y)
}

/// [`dot4_vnni`] with AVX2, for unsigned bytes below 128 (`maddubs` pair sums cannot saturate).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_avx2(acc: __m256i, u: __m256i, y: __m256i) -> __m256i {
    let pairs = _mm256_maddubs_epi16(u, y);
    _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Adds 16 to the bytes whose bit is set in `bits` (Q5_K's fifth bits), with a mask register.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn fifth_vnni(v: __m256i, bits: u32) -> __m256i {
    _mm256_mask_add_epi8(v, bits, v, _mm256_set1_epi8(0x10))
}

/// [`fifth_vnni`] with AVX2: the bits spread to bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fifth_avx2(v: __m256i, bits: u32) -> __m256i {
    _mm256_or_si256(v, _mm256_and_si256(bit_bytes(bits), _mm256_set1_epi8(0x10)))
}

q4k_group!(
    group_q4k_vnni,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    dot4_vnni,
    fifth_vnni
);
q4k_group!(group_q4k_avx2, "avx2,fma,f16c", dot4_avx2, fifth_avx2);

/// The Q6_K kernels (a sub-block and a group), for an instruction set, as [`q4k_group`] (codes
/// below 64: `maddubs` pair sums stay below 2^15).
macro_rules! q6k_group {
    ($name:ident, $sub:ident, $features:literal, $dot4:path) => {
        /// Sub-block `j` of a Q6_K group block (registers `4j .. 4j+4`, read in memory order) for `T`
        /// tokens: `total[t] += sc_j · isum_j`, the sum started at `-32 · bsum_j`.
        ///
        /// # Safety
        /// As the group kernel, for the group block at `gb` and block `b` of the tokens.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $sub<const T: usize>(
            gb: *const u8,
            j: usize,
            a: *const u8,
            a_row: usize,
            b: usize,
            total: &mut [__m256i; T],
        ) {
            let m4 = _mm256_set1_epi8(0x0f);
            let m30 = _mm256_set1_epi8(0x30);
            let sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(gb.add(16 + 8 * j).cast()));
            let mut isum = [_mm256_setzero_si256(); T];
            for t in 0..T {
                let y = a.add(t * a_row + b * K_BLOCK);
                let bsum = i32::from(read_unaligned(y.add(260 + 2 * j).cast::<i16>()));
                isum[t] = _mm256_set1_epi32(-32 * bsum);
            }
            let sb = gb.add(144 + 96 * j);
            let n0 = _mm256_loadu_si256(sb.cast());
            let n1 = _mm256_loadu_si256(sb.add(32).cast());
            let hb = _mm256_loadu_si256(sb.add(64).cast());
            let nib = [
                n0,
                _mm256_srli_epi16::<4>(n0),
                n1,
                _mm256_srli_epi16::<4>(n1),
            ];
            let high = [
                _mm256_slli_epi16::<4>(hb),
                _mm256_slli_epi16::<2>(hb),
                hb,
                _mm256_srli_epi16::<2>(hb),
            ];
            for kk in 0..4 {
                let u = _mm256_or_si256(
                    _mm256_and_si256(nib[kk], m4),
                    _mm256_and_si256(high[kk], m30),
                );
                for t in 0..T {
                    let y = a.add(t * a_row + b * K_BLOCK + 4 + 4 * (4 * j + kk));
                    let yw = _mm256_set1_epi32(read_unaligned(y.cast::<i32>()));
                    isum[t] = $dot4(isum[t], u, yw);
                }
            }
            for t in 0..T {
                total[t] = _mm256_add_epi32(total[t], _mm256_mullo_epi32(isum[t], sc));
            }
        }

        /// One Q6_K group × `T` Q8_K tokens: per block `acc = fma(d·d_a, Σ_j sc_j isum_j, acc)` over the
        /// 16 sub-blocks of 16, the codes unsigned (`q + 32`) and each sub-block's sum started at
        /// `-32 · bsum_j`.
        ///
        /// # Safety
        /// The CPU has the kernel's features; `g` points at `nb` group blocks, `a` at `T` Q8_K
        /// rows of `nb` blocks `a_row` bytes apart, `out` at `T` outputs.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn $name<const T: usize>(
            nb: usize,
            g: *const u8,
            a: *const u8,
            a_row: usize,
            out: *mut [f32; PACK_ROWS],
        ) {
            const GB: usize = group_block_bytes(DType::Q6_K);
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nb {
                let gb = g.add(b * GB);
                let mut total = [_mm256_setzero_si256(); T];
                for j in 0..16 {
                    $sub::<T>(gb, j, a, a_row, b, &mut total);
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(gb.cast()));
                for t in 0..T {
                    let da = _mm256_set1_ps(read_unaligned(
                        a.add(t * a_row + b * K_BLOCK).cast::<f32>(),
                    ));
                    acc[t] = _mm256_fmadd_ps(
                        _mm256_mul_ps(dw, da),
                        _mm256_cvtepi32_ps(total[t]),
                        acc[t],
                    );
                }
            }
            for (t, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.add(t).cast(), *acc);
            }
        }
    };
}

q6k_group!(
    group_q6k_vnni,
    q6k_sub_block_vnni,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    dot4_vnni
);
q6k_group!(
    group_q6k_avx2,
    q6k_sub_block_avx2,
    "avx2,fma,f16c",
    dot4_avx2
);

/// A K-quant [`PackedFn`]: tokens `chunk` at a time through `kernel`.
macro_rules! packed_k {
    ($name:ident, $kernel:ident, $dtype:expr, $chunk:expr) => {
        packed_k!($name, $kernel, $dtype, $chunk, []);
    };
    ($name:ident, $kernel:ident, $dtype:expr, $chunk:expr, [$($extra:expr)?]) => {
        fn $name(
            nb: usize,
            group: &[u8],
            a: &[u8],
            a_row: usize,
            _aux: &[ActBlock],
            n_tok: usize,
            out: &mut [[f32; PACK_ROWS]],
        ) {
            assert!((1..=COLS_MAX).contains(&n_tok), "1 to {COLS_MAX} tokens, not {n_tok}");
            assert!(group.len() >= nb * group_block_bytes($dtype), "a packed group of {nb} blocks");
            assert!(
                a_row >= nb * K_BLOCK && a.len() >= (n_tok - 1) * a_row + nb * K_BLOCK,
                "{n_tok} activation rows of {nb} blocks"
            );
            assert!(out.len() >= n_tok);
            let mut t0 = 0;
            while t0 < n_tok {
                let n = (n_tok - t0).min($chunk);
                let (g, ap, o) = (group.as_ptr(), a[t0 * a_row..].as_ptr(), out[t0..].as_mut_ptr());
                // SAFETY: `packed_fn` hands this out only where the CPU has the features; tokens
                // `t0 .. t0 + n` lie inside the rows checked above.
                crate::kernel::for_tokens!(n, T => unsafe {
                    $kernel::<T $(, $extra)?>(nb, g, ap, a_row, o)
                });
                t0 += n;
            }
        }
    };
}

packed_k!(packed_q4k_vnni, group_q4k_vnni, DType::Q4_K, 4, [false]);
packed_k!(packed_q5k_vnni, group_q4k_vnni, DType::Q5_K, 4, [true]);
// AVX2 has 16 registers: two tokens' sums at a time.
packed_k!(packed_q4k_avx2, group_q4k_avx2, DType::Q4_K, 2, [false]);
packed_k!(packed_q5k_avx2, group_q4k_avx2, DType::Q5_K, 2, [true]);
packed_k!(packed_q6k_vnni, group_q6k_vnni, DType::Q6_K, 8);
packed_k!(packed_q6k_avx2, group_q6k_avx2, DType::Q6_K, 4);
