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
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        let mut s = _mm_cvtss_f32(s);
        for (x, y) in a[body..].iter().zip(&b[body..]) {
            s = x.to_f32().mul_add(y.to_f32(), s);
        }
        s
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
