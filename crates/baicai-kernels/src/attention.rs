//! Attention primitives over an f16 key/value cache.
//!
//! The cache holds keys and values as f16, llama.cpp's default (`type_k = type_v = F16`): half the
//! memory of f32 and half the bytes read per decoded token. The arithmetic follows llama.cpp's
//! non-flash attention graph (`kq = mul_mat(k, q)`, `soft_max_ext`, `kqv = mul_mat(v, kq)`): a
//! matmul with an f16 weight converts its f32 operand to f16 first, so the query row is rounded
//! to f16 before `K·q` and the softmax probabilities are rounded to f16 before `P·V`; products are
//! summed in f32; the softmax sum is kept in f64 and applied as one f32 factor
//! (`ggml_vec_soft_max_f32`).
//!
//! [`dot_f16`] sums in 8 lanes of fused multiply-adds over the inner dimension and reduces the
//! lanes as `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`, the AVX2 horizontal sum; [`axpy_f16`] is one
//! fused multiply-add per element. The scalar references compute exactly the same operations in
//! the same order, so the AVX2 paths agree with them bit for bit (tested below), and results do not
//! depend on the ISA or on the batch.

use half::f16;

use crate::dispatch::{active_isa, Isa};

/// `sum_i a[i] * b[i]` in f32, reduced in 8 lanes (see the module docs).
///
/// # Panics
/// If the lengths differ.
pub fn dot_f16(a: &[f16], b: &[f16]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f16 operands differ in length");
    #[cfg(target_arch = "x86_64")]
    if active_isa() == Isa::Avx2 {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked by `active_isa`); lengths are equal.
        return unsafe { avx2::dot_f16(a, b) };
    }
    dot_f16_scalar(a, b)
}

/// `out[i] += w * v[i]`, one fused multiply-add per element.
///
/// # Panics
/// If the lengths differ.
pub fn axpy_f16(out: &mut [f32], w: f32, v: &[f16]) {
    assert_eq!(out.len(), v.len(), "axpy_f16 operands differ in length");
    #[cfg(target_arch = "x86_64")]
    if active_isa() == Isa::Avx2 {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked by `active_isa`); lengths are equal.
        return unsafe { avx2::axpy_f16(out, w, v) };
    }
    axpy_f16_scalar(out, w, v)
}

/// Scalar reference of [`dot_f16`].
pub fn dot_f16_scalar(a: &[f16], b: &[f16]) -> f32 {
    let mut acc = [0f32; 8];
    let body = a.len() / 8 * 8;
    for (ca, cb) in a[..body].chunks_exact(8).zip(b[..body].chunks_exact(8)) {
        for j in 0..8 {
            acc[j] = ca[j].to_f32().mul_add(cb[j].to_f32(), acc[j]);
        }
    }
    let l = acc;
    let mut s = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
    for (x, y) in a[body..].iter().zip(&b[body..]) {
        s = x.to_f32().mul_add(y.to_f32(), s);
    }
    s
}

/// Scalar reference of [`axpy_f16`].
pub fn axpy_f16_scalar(out: &mut [f32], w: f32, v: &[f16]) {
    for (o, x) in out.iter_mut().zip(v) {
        *o = w.mul_add(x.to_f32(), *o);
    }
}

/// Heads per register tile of [`dot_heads_f16`] and [`weighted_rows_f16`].
const HEADS: usize = 8;

/// Rows per pass of [`weighted_rows_f16`]: their slices stay in L2 while every lane chunk walks
/// them (a DeepSeek latent row is 1152 bytes).
const ROWS_PER_PASS: usize = 128;

/// `out[h] = dot_f16(q[h], k)` for every head `h` of `q` (`[heads, k.len()]`, f32 values that
/// are exactly f16, as llama.cpp rounds the query): one pass over `k` serves a tile of heads, and
/// each result is bit-identical to [`dot_f16`] on the f16 query.
///
/// # Panics
/// If `q.len()` is not `out.len() * k.len()`.
pub fn dot_heads_f16(q: &[f32], k: &[f16], out: &mut [f32]) {
    assert_eq!(q.len(), out.len() * k.len(), "q must be [heads, k.len()]");
    #[cfg(target_arch = "x86_64")]
    if active_isa() == Isa::Avx2 {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked by `active_isa`); lengths checked.
        return unsafe { avx2::dot_heads_f16(q, k, out) };
    }
    dot_heads_f16_scalar(q, k, out)
}

/// Scalar reference of [`dot_heads_f16`].
pub fn dot_heads_f16_scalar(q: &[f32], k: &[f16], out: &mut [f32]) {
    let w = k.len();
    for (o, qh) in out.iter_mut().zip(q.chunks_exact(w.max(1))) {
        let qh: Vec<f16> = qh.iter().map(|&v| f16::from_f32(v)).collect();
        *o = dot_f16_scalar(&qh, k);
    }
}

/// `out[h * n + j] = dot_f16(q[h], key_j) · scale` for the `n` keys `key_j =
/// keys[j * stride ..][..w]` and every head `h` of `q` (`[heads, w]`, f32 values that are exactly
/// f16): the scores of a run of query heads against a run of cached keys, each bit-identical to
/// [`dot_heads_f16`] of that key times `scale`. With AVX2 the keys go eight at a time, converted
/// once into a buffer that every head then reads, and eight keys' lane sums are reduced together
/// in the order [`dot_f16`] reduces one (a shuffle network instead of eight horizontal sums).
///
/// # Panics
/// If `q.len()` is not a multiple of `w`, `out.len()` is not `heads * n`, `w > stride`, or the
/// keys are out of range.
pub fn scores_f16(
    q: &[f32],
    w: usize,
    keys: &[f16],
    stride: usize,
    n: usize,
    scale: f32,
    out: &mut [f32],
) {
    let heads = q.len() / w.max(1);
    assert_eq!(q.len(), heads * w, "q must be [heads, w]");
    assert_eq!(out.len(), heads * n, "out must be [heads, n]");
    assert!(w <= stride || n <= 1, "keys are narrower than the query");
    if n > 0 {
        assert!((n - 1) * stride + w <= keys.len(), "{n} keys out of range");
    }
    #[cfg(target_arch = "x86_64")]
    if active_isa() == Isa::Avx2 && w.is_multiple_of(8) && w <= MAX_BUFFERED_WIDTH {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked by `active_isa`); shapes checked.
        return unsafe { avx2::scores_f16(q, w, keys, stride, n, scale, out) };
    }
    scores_f16_scalar(q, w, keys, stride, n, scale, out)
}

/// Widest key row [`scores_f16`]'s AVX2 path buffers (8 rows of f32 on the stack).
const MAX_BUFFERED_WIDTH: usize = 512;

/// Scalar reference of [`scores_f16`]: one key at a time through [`dot_heads_f16`].
pub fn scores_f16_scalar(
    q: &[f32],
    w: usize,
    keys: &[f16],
    stride: usize,
    n: usize,
    scale: f32,
    out: &mut [f32],
) {
    scores_from(0, q, w, keys, stride, n, scale, out);
}

/// [`scores_f16_scalar`] for the keys from `j0` on (the rest of `out` untouched): one key at a
/// time through [`dot_heads_f16`].
#[allow(clippy::too_many_arguments)]
fn scores_from(
    j0: usize,
    q: &[f32],
    w: usize,
    keys: &[f16],
    stride: usize,
    n: usize,
    scale: f32,
    out: &mut [f32],
) {
    let heads = q.len() / w.max(1);
    let mut col = vec![0f32; heads];
    for j in j0..n {
        dot_heads_f16(q, &keys[j * stride..][..w], &mut col);
        for (h, &c) in col.iter().enumerate() {
            out[h * n + j] = c * scale;
        }
    }
}

/// `out[h, :] = Σ_j p[h, j] · rows[j][..out width]` for every head `h`, the sum over `j` in
/// order, one fused multiply-add per term: bit-identical to zeroing `out[h]` and calling
/// [`axpy_f16`] for `j = 0, 1, …`. `p` is `[heads, n]`; row `j` starts at `rows[j * stride]`;
/// `out` is `[heads, width]`. Each row slice is converted once for a tile of heads.
///
/// # Panics
/// If `p.len()` is not `heads * n`, `out.len()` not `heads * width`, or a row is out of range.
pub fn weighted_rows_f16(
    p: &[f32],
    n: usize,
    rows: &[f16],
    stride: usize,
    width: usize,
    out: &mut [f32],
) {
    let heads = out.len() / width.max(1);
    assert_eq!(out.len(), heads * width, "out must be [heads, width]");
    assert_eq!(p.len(), heads * n, "p must be [heads, n]");
    assert!(width <= stride, "rows are narrower than the output");
    if n > 0 {
        assert!(
            (n - 1) * stride + width <= rows.len(),
            "{n} rows of stride {stride} exceed the {} values given",
            rows.len()
        );
    }
    #[cfg(target_arch = "x86_64")]
    if active_isa() == Isa::Avx2 {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked by `active_isa`); shapes checked.
        return unsafe { avx2::weighted_rows_f16(p, n, rows, stride, width, out) };
    }
    weighted_rows_f16_scalar(p, n, rows, stride, width, out)
}

/// Scalar reference of [`weighted_rows_f16`].
pub fn weighted_rows_f16_scalar(
    p: &[f32],
    n: usize,
    rows: &[f16],
    stride: usize,
    width: usize,
    out: &mut [f32],
) {
    for (h, o) in out.chunks_exact_mut(width.max(1)).enumerate() {
        o.fill(0.0);
        for j in 0..n {
            axpy_f16_scalar(o, p[h * n + j], &rows[j * stride..][..width]);
        }
    }
}

/// Rounds every value of `x` to the nearest f16 (ties to even) and back to f32, as llama.cpp's
/// matmuls with an f16 operand see an f32 query or probability row. Bit-identical to
/// `f16::from_f32(v).to_f32()` per value (tested), eight values per instruction pair with F16C.
pub fn round_f16_inplace(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if active_isa() == Isa::Avx2 {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked by `active_isa`).
        return unsafe { avx2::round_f16_inplace(x) };
    }
    round_f16_inplace_scalar(x)
}

/// Scalar reference of [`round_f16_inplace`].
pub fn round_f16_inplace_scalar(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32());
}

/// Softmax of `x` in place: `exp(x - max) * (1 / sum)` with the sum in f64 and the factor
/// rounded to f32 once, as `ggml_vec_soft_max_f32` and `ggml_compute_forward_soft_max_f32` do.
/// Entries of `-inf` (masked) become 0.
pub fn softmax_inplace(x: &mut [f32]) {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    x.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    use crate::simd::avx2_legacy::hsum_ps as hsum;

    /// Loads 8 f16 values at `p` as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        // SAFETY: the caller guarantees 8 readable values at `p`.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }

    /// AVX2 [`super::dot_f16`].
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; `a.len() == b.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(a: &[f16], b: &[f16]) -> f32 {
        let body = a.len() / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < body {
            // SAFETY: `i + 8 <= body <= len` for both slices.
            acc =
                unsafe { _mm256_fmadd_ps(load8(a.as_ptr().add(i)), load8(b.as_ptr().add(i)), acc) };
            i += 8;
        }
        let mut s = hsum(acc);
        for (x, y) in a[body..].iter().zip(&b[body..]) {
            s = x.to_f32().mul_add(y.to_f32(), s);
        }
        s
    }

    /// AVX2 [`super::dot_heads_f16`]: tiles of up to [`super::HEADS`] heads, `k` converted once
    /// per tile; each head's lanes and tail as in [`dot_f16`].
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; `q.len() == out.len() * k.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_heads_f16(q: &[f32], k: &[f16], out: &mut [f32]) {
        const H: usize = super::HEADS;
        let w = k.len();
        let body = w / 8 * 8;
        let mut h0 = 0;
        while h0 < out.len() {
            let nh = (out.len() - h0).min(H);
            let mut acc = [_mm256_setzero_ps(); H];
            let qp = q.as_ptr().add(h0 * w);
            let mut i = 0;
            while i < body {
                // SAFETY: `i + 8 <= body <= w`; rows `h0..h0 + nh` of q exist.
                let kv = load8(k.as_ptr().add(i));
                for (h, a) in acc.iter_mut().enumerate().take(nh) {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(h * w + i)), kv, *a);
                }
                i += 8;
            }
            for (h, a) in acc.iter().enumerate().take(nh) {
                let mut s = hsum(*a);
                for (x, y) in q[(h0 + h) * w + body..(h0 + h + 1) * w]
                    .iter()
                    .zip(&k[body..])
                {
                    s = x.mul_add(y.to_f32(), s);
                }
                out[h0 + h] = s;
            }
            h0 += nh;
        }
    }

    /// The eight horizontal sums of `a`, in order, each bit-identical to [`hsum`] of one:
    /// `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`, the same additions done eight at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum8(a: &[__m256; 8]) -> __m256 {
        // [l_i + l_{i+4} of key k | of key k+1]
        let pair = |k: usize| {
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(a[k], a[k + 1]),
                _mm256_permute2f128_ps::<0x31>(a[k], a[k + 1]),
            )
        };
        let (p01, p23, p45, p67) = (pair(0), pair(2), pair(4), pair(6));
        // Lane 0 of each half: (x_k, y_k, x_{k+2}, y_{k+2}) with x = m0 + m2, y = m1 + m3.
        let xy = |a: __m256, b: __m256| {
            _mm256_add_ps(
                _mm256_shuffle_ps::<0x44>(a, b),
                _mm256_shuffle_ps::<0xEE>(a, b),
            )
        };
        let (q0, q4) = (xy(p01, p23), xy(p45, p67));
        // (s0, s2, s4, s6 | s1, s3, s5, s7) with s = x + y.
        let s = _mm256_add_ps(
            _mm256_shuffle_ps::<0x88>(q0, q4),
            _mm256_shuffle_ps::<0xDD>(q0, q4),
        );
        _mm256_permutevar8x32_ps(s, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    /// AVX2 [`super::scores_f16`]: keys eight at a time (converted once into a buffer), every
    /// head's eight dot products in registers, reduced by [`hsum8`]; the keys left over one at a
    /// time as [`super::scores_f16_scalar`] does them.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; the shapes checked by the safe wrapper, `w` a
    /// multiple of 8 and at most [`super::MAX_BUFFERED_WIDTH`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores_f16(
        q: &[f32],
        w: usize,
        keys: &[f16],
        stride: usize,
        n: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let heads = q.len() / w;
        let mut buf = [0f32; 8 * super::MAX_BUFFERED_WIDTH];
        let (bp, kp, qp) = (buf.as_mut_ptr(), keys.as_ptr(), q.as_ptr());
        let sc = _mm256_set1_ps(scale);
        let mut j0 = 0;
        while j0 + 8 <= n {
            for k in 0..8 {
                let mut i = 0;
                while i < w {
                    // SAFETY: key j0 + k < n is in range (checked by the wrapper), i + 8 <= w.
                    _mm256_storeu_ps(bp.add(k * w + i), load8(kp.add((j0 + k) * stride + i)));
                    i += 8;
                }
            }
            for h in 0..heads {
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut i = 0;
                while i < w {
                    let qv = _mm256_loadu_ps(qp.add(h * w + i));
                    for (k, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(bp.add(k * w + i)), *a);
                    }
                    i += 8;
                }
                let s = _mm256_mul_ps(hsum8(&acc), sc);
                _mm256_storeu_ps(out.as_mut_ptr().add(h * n + j0), s);
            }
            j0 += 8;
        }
        super::scores_from(j0, q, w, keys, stride, n, scale, out);
    }

    /// AVX2 [`super::weighted_rows_f16`]: for each 8-lane chunk of the output, a tile of up to
    /// [`super::HEADS`] heads' accumulators stays in registers while the rows pass by, in passes
    /// of [`super::ROWS_PER_PASS`] rows (accumulators stored between passes; the order of the
    /// sum over rows never changes). The tail lanes are summed the scalar way.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; the shapes checked by the safe wrapper.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_rows_f16(
        p: &[f32],
        n: usize,
        rows: &[f16],
        stride: usize,
        width: usize,
        out: &mut [f32],
    ) {
        const H: usize = super::HEADS;
        let heads = out.len() / width.max(1);
        let body = width / 8 * 8;
        out.fill(0.0);
        let (rp, op, pp) = (rows.as_ptr(), out.as_mut_ptr(), p.as_ptr());
        let mut j0 = 0;
        while j0 < n {
            let j1 = (j0 + super::ROWS_PER_PASS).min(n);
            let mut h0 = 0;
            while h0 < heads {
                let nh = (heads - h0).min(H);
                let mut i = 0;
                while i < body {
                    let mut acc = [_mm256_setzero_ps(); H];
                    for (h, a) in acc.iter_mut().enumerate().take(nh) {
                        *a = _mm256_loadu_ps(op.add((h0 + h) * width + i));
                    }
                    for j in j0..j1 {
                        // SAFETY: row j's lanes `i..i + 8` are inside `rows` (checked by the
                        // wrapper: `(n - 1) * stride + width <= rows.len()`).
                        let c = load8(rp.add(j * stride + i));
                        for (h, a) in acc.iter_mut().enumerate().take(nh) {
                            let ph = _mm256_broadcast_ss(&*pp.add((h0 + h) * n + j));
                            *a = _mm256_fmadd_ps(ph, c, *a);
                        }
                    }
                    for (h, a) in acc.iter().enumerate().take(nh) {
                        _mm256_storeu_ps(op.add((h0 + h) * width + i), *a);
                    }
                    i += 8;
                }
                for h in h0..h0 + nh {
                    for j in j0..j1 {
                        let w = p[h * n + j];
                        for (o, x) in out[h * width + body..(h + 1) * width]
                            .iter_mut()
                            .zip(&rows[j * stride + body..j * stride + width])
                        {
                            *o = w.mul_add(x.to_f32(), *o);
                        }
                    }
                }
                h0 += nh;
            }
            j0 = j1;
        }
    }

    /// AVX2 [`super::round_f16_inplace`].
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn round_f16_inplace(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 values; `loadu`/`storeu` have no alignment requirement.
            unsafe {
                let v = _mm256_loadu_ps(c.as_ptr());
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm256_storeu_ps(c.as_mut_ptr(), _mm256_cvtph_ps(h));
            }
        }
        super::round_f16_inplace_scalar(chunks.into_remainder());
    }

    /// AVX2 [`super::axpy_f16`].
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be available; `out.len() == v.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_f16(out: &mut [f32], w: f32, v: &[f16]) {
        let body = out.len() / 8 * 8;
        let wv = _mm256_set1_ps(w);
        let mut i = 0;
        while i < body {
            // SAFETY: `i + 8 <= body <= len` for both slices.
            unsafe {
                let o = out.as_mut_ptr().add(i);
                _mm256_storeu_ps(
                    o,
                    _mm256_fmadd_ps(wv, load8(v.as_ptr().add(i)), _mm256_loadu_ps(o)),
                );
            }
            i += 8;
        }
        for (o, x) in out[body..].iter_mut().zip(&v[body..]) {
            *o = w.mul_add(x.to_f32(), *o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, rng: &mut impl Rng) -> Vec<f16> {
        (0..n)
            .map(|_| f16::from_f32(rng.gen_range(-4.0..4.0)))
            .collect()
    }

    #[test]
    fn simd_dot_and_axpy_equal_scalar_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for n in [1, 7, 8, 9, 64, 100, 128, 256] {
            let (a, b) = (random(n, &mut rng), random(n, &mut rng));
            assert_eq!(
                dot_f16(&a, &b).to_bits(),
                dot_f16_scalar(&a, &b).to_bits(),
                "dot n={n}"
            );
            let w = rng.gen_range(-1.0..1.0);
            let mut o1: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut o2 = o1.clone();
            axpy_f16(&mut o1, w, &b);
            axpy_f16_scalar(&mut o2, w, &b);
            assert_eq!(o1, o2, "axpy n={n}");
        }
    }

    #[test]
    fn batched_scores_equal_one_key_at_a_time_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (heads, w, stride, n) in [
            (7, 64, 128, 1),
            (7, 64, 128, 8),
            (7, 64, 128, 29),
            (4, 128, 256, 70),
            (1, 256, 256, 16),
            (3, 72, 144, 17),
            (2, 12, 12, 9),
        ] {
            let q: Vec<f32> = random(heads * w, &mut rng)
                .iter()
                .map(|v| v.to_f32())
                .collect();
            let keys = random(n * stride, &mut rng);
            let scale = 0.125f32;
            let mut a = vec![f32::NAN; heads * n];
            let mut b = vec![f32::NAN; heads * n];
            scores_f16(&q, w, &keys, stride, n, scale, &mut a);
            scores_f16_scalar(&q, w, &keys, stride, n, scale, &mut b);
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert_eq!(x.to_bits(), y.to_bits(), "{heads}x{w}, {n} keys: score {i}");
            }
            // The reference is the plain dot product, key by key.
            for h in 0..heads {
                for j in 0..n {
                    let qh: Vec<f16> = q[h * w..][..w].iter().map(|&v| f16::from_f32(v)).collect();
                    let d = dot_f16_scalar(&qh, &keys[j * stride..][..w]) * scale;
                    assert_eq!(b[h * n + j].to_bits(), d.to_bits());
                }
            }
        }
    }

    #[test]
    fn head_tiles_equal_one_head_at_a_time_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for (heads, w, n) in [
            (1, 8, 1),
            (3, 13, 5),
            (8, 576, 7),
            (16, 576, 300),
            (11, 64, 129),
        ] {
            let q: Vec<f32> = random(heads * w, &mut rng)
                .iter()
                .map(|v| v.to_f32())
                .collect();
            let k = random(w, &mut rng);
            let mut got = vec![0.0; heads];
            dot_heads_f16(&q, &k, &mut got);
            let mut want = vec![0.0; heads];
            dot_heads_f16_scalar(&q, &k, &mut want);
            for (h, (g, w_)) in got.iter().zip(&want).enumerate() {
                let qh: Vec<f16> = q[h * w..(h + 1) * w]
                    .iter()
                    .map(|&v| f16::from_f32(v))
                    .collect();
                assert_eq!(g.to_bits(), dot_f16(&qh, &k).to_bits(), "dot h={h} w={w}");
                assert_eq!(g.to_bits(), w_.to_bits(), "scalar h={h} w={w}");
            }
            // Weighted sum of n rows of stride w + 3, first w - 1 lanes.
            let (stride, width) = (w + 3, w - 1);
            let rows = random(n * stride, &mut rng);
            let p: Vec<f32> = (0..heads * n).map(|_| rng.gen_range(0.0..1.0)).collect();
            let mut got = vec![f32::NAN; heads * width];
            weighted_rows_f16(&p, n, &rows, stride, width, &mut got);
            let mut want = vec![f32::NAN; heads * width];
            weighted_rows_f16_scalar(&p, n, &rows, stride, width, &mut want);
            let mut by_axpy = vec![0.0; heads * width];
            for h in 0..heads {
                for j in 0..n {
                    axpy_f16(
                        &mut by_axpy[h * width..(h + 1) * width],
                        p[h * n + j],
                        &rows[j * stride..][..width],
                    );
                }
            }
            assert_eq!(got, want, "weighted rows vs scalar, heads={heads} n={n}");
            assert_eq!(got, by_axpy, "weighted rows vs axpy, heads={heads} n={n}");
        }
    }

    #[test]
    fn f16_rounding_equals_half_bit_for_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        // Ordinary values, ties, values that overflow or underflow f16, subnormals, specials,
        // and a length that leaves a remainder after the 8-value chunks.
        let mut x: Vec<f32> = (0..1000)
            .map(|_| rng.gen_range(-70000.0f32..70000.0) * 10f32.powi(rng.gen_range(-12..1)))
            .collect();
        x.extend([
            0.0,
            -0.0,
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
            65504.0,
            65520.0,
            -1e9,
            6e-8,
            3e-8,
            2.98e-8,
            1e-5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
        ]);
        let mut want = x.clone();
        round_f16_inplace_scalar(&mut want);
        round_f16_inplace(&mut x);
        for (i, (a, b)) in x.iter().zip(&want).enumerate() {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "value {i}: {a:e} vs {b:e}"
            );
        }
    }

    #[test]
    fn dot_is_close_to_f64() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let (a, b) = (random(256, &mut rng), random(256, &mut rng));
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| x.to_f64() * y.to_f64()).sum();
        assert!((dot_f16(&a, &b) as f64 - exact).abs() < 1e-3, "{exact}");
    }

    #[test]
    fn softmax_sums_to_one_and_masks() {
        let mut x = vec![1.0, 2.0, f32::NEG_INFINITY, 0.5];
        softmax_inplace(&mut x);
        assert_eq!(x[2], 0.0);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[0] && x[0] > x[3]);
    }
}
