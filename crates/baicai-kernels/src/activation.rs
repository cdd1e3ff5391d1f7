//! Gated activations of the feed-forward blocks: SwiGLU and GeGLU (tanh approximation).
//!
//! Qwen2.5-0.5B evaluates 4864 SiLUs per layer and token, Gemma 3 as many GELUs; with libm's
//! scalar `expf`/`tanhf` they were ~10% of Gemma's prefill. The AVX2 path uses a vectorised
//! `exp` (Cephes' `expf`: `2^n · p(r)` with `|r| ≤ ln2/2`, a degree-6 polynomial, within 2 ulp)
//! and `0.5·v·(1 + tanh(u)) = v / (1 + exp(-2u))`. Results differ from the scalar references here
//! by rounding only (see the tests: where the reference's `1 + tanh(u)` cancels, ours is the more
//! accurate), and do not depend on the position of a value in the slice or its length, so decode
//! and prefill agree bit for bit.

/// `a[i] = silu(a[i]) * b[i]` (SwiGLU), scalar reference.
pub fn swiglu_scalar(a: &mut [f32], b: &[f32]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x = silu(*x) * y;
    }
}

/// `a[i] = gelu(a[i]) * b[i]` with the tanh approximation (GeGLU), scalar reference.
pub fn geglu_scalar(a: &mut [f32], b: &[f32]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x = gelu_tanh(*x) * y;
    }
}

/// `√(2/π)`, the scale inside GELU's tanh approximation.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of GELU's tanh approximation.
const GELU_COEF_A: f32 = 0.044_715;

#[inline]
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

#[inline]
fn gelu_tanh(v: f32) -> f32 {
    0.5 * v * (1.0 + (SQRT_2_OVER_PI * (v + GELU_COEF_A * v * v * v)).tanh())
}

/// `a[i] = silu(a[i]) * b[i]` (SwiGLU) with the best kernel for this CPU.
///
/// # Panics
/// If `a` and `b` differ in length.
pub fn swiglu(a: &mut [f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "swiglu operands differ in length");
    #[cfg(target_arch = "x86_64")]
    if crate::dispatch::active_isa() == crate::Isa::Avx2 {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
        unsafe { avx2::glu::<avx2::Silu>(a, b) };
        return;
    }
    swiglu_scalar(a, b);
}

/// `a[i] = gelu(a[i]) * b[i]` (GeGLU, tanh approximation) with the best kernel for this CPU.
///
/// # Panics
/// If `a` and `b` differ in length.
pub fn geglu(a: &mut [f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "geglu operands differ in length");
    #[cfg(target_arch = "x86_64")]
    if crate::dispatch::active_isa() == crate::Isa::Avx2 {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
        unsafe { avx2::glu::<avx2::GeluTanh>(a, b) };
        return;
    }
    geglu_scalar(a, b);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::*;

    use super::{GELU_COEF_A, SQRT_2_OVER_PI};

    /// `exp(x)` on 8 lanes (Cephes `expf`); inputs are clamped to [-86.6, 88.37], so very
    /// negative ones give ~2e-38 rather than subnormals and very positive ones ~2.4e38 rather
    /// than infinity (both vanish next to the 1 they are added to here).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn exp_ps(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-86.6)),
            _mm256_set1_ps(88.376_26),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        // ln 2 in two parts, so `n · ln2_hi` is exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_2e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(
            _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        // 2^n from the exponent field, as 2^(n-1) · 2: n is in [-125, 128] after the clamp, and
        // 128 has no field of its own.
        let n = _mm256_cvtps_epi32(n);
        let half = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            n,
            _mm256_set1_epi32(126),
        )));
        _mm256_mul_ps(_mm256_mul_ps(y, half), _mm256_set1_ps(2.0))
    }

    /// An activation on 8 lanes.
    pub trait Act {
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        unsafe fn v(x: __m256) -> __m256;
    }

    pub struct Silu;
    impl Act for Silu {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn v(x: __m256) -> __m256 {
            let one = _mm256_set1_ps(1.0);
            let e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), x));
            _mm256_div_ps(x, _mm256_add_ps(one, e))
        }
    }

    pub struct GeluTanh;
    impl Act for GeluTanh {
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn v(x: __m256) -> __m256 {
            let one = _mm256_set1_ps(1.0);
            let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
            let u = _mm256_mul_ps(
                _mm256_set1_ps(SQRT_2_OVER_PI),
                _mm256_fmadd_ps(_mm256_set1_ps(GELU_COEF_A), x3, x),
            );
            // 0.5·x·(1 + tanh(u)) = x / (1 + exp(-2u)): no cancellation where tanh(u) ≈ -1.
            let e = exp_ps(_mm256_mul_ps(u, _mm256_set1_ps(-2.0)));
            _mm256_div_ps(x, _mm256_add_ps(one, e))
        }
    }

    /// `a[i] = act(a[i]) * b[i]`; the tail (under 8 values) is padded into a vector, so every
    /// value takes the vector path whatever its position.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `a` and `b` have the same length.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn glu<A: Act>(a: &mut [f32], b: &[f32]) {
        let mut ac = a.chunks_exact_mut(8);
        let mut bc = b.chunks_exact(8);
        for (x, y) in (&mut ac).zip(&mut bc) {
            let v = _mm256_mul_ps(
                A::v(_mm256_loadu_ps(x.as_ptr())),
                _mm256_loadu_ps(y.as_ptr()),
            );
            _mm256_storeu_ps(x.as_mut_ptr(), v);
        }
        let (x, y) = (ac.into_remainder(), bc.remainder());
        if !x.is_empty() {
            let (mut xb, mut yb) = ([0.0f32; 8], [0.0f32; 8]);
            xb[..x.len()].copy_from_slice(x);
            yb[..y.len()].copy_from_slice(y);
            let v = _mm256_mul_ps(
                A::v(_mm256_loadu_ps(xb.as_ptr())),
                _mm256_loadu_ps(yb.as_ptr()),
            );
            _mm256_storeu_ps(xb.as_mut_ptr(), v);
            x.copy_from_slice(&xb[..x.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Values over the range activations take, the clamps and the special points.
    fn inputs() -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xac7);
        let mut x: Vec<f32> = (0..20_000).map(|_| rng.gen_range(-30.0f32..30.0)).collect();
        x.extend((0..2000).map(|_| rng.gen_range(-1e-3f32..1e-3)));
        x.extend([
            0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 100.0, -100.0, 1e4, -1e4, 9.0, -9.0,
        ]);
        x.push(1.5); // odd length: a tail
        x
    }

    fn check(name: &str, f: fn(&mut [f32], &[f32]), r: fn(&mut [f32], &[f32])) {
        let x = inputs();
        let b: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, _)| 0.5 + (i % 7) as f32 * 0.25)
            .collect();
        let (mut got, mut want) = (x.clone(), x.clone());
        f(&mut got, &b);
        r(&mut want, &b);
        for i in 0..x.len() {
            // A few ulp of the output, plus one of |x·b|: the reference GELU's `1 + tanh(u)`
            // cancels for negative x, leaving it an absolute error of that size.
            let tol = 4e-7 * want[i].abs() + 1.2e-7 * (x[i] * b[i]).abs() + 1e-37;
            assert!(
                (got[i] - want[i]).abs() <= tol,
                "{name}({}) * {}: {} vs reference {} (tolerance {tol})",
                x[i],
                b[i],
                got[i],
                want[i]
            );
        }
        // Position independence: each value alone gives the same bits as in the batch.
        for i in (0..x.len()).step_by(997) {
            let mut one = [x[i]];
            f(&mut one, &b[i..i + 1]);
            assert_eq!(
                one[0].to_bits(),
                got[i].to_bits(),
                "{name} of value {i} alone"
            );
        }
    }

    #[test]
    fn swiglu_matches_scalar_reference() {
        check("silu", swiglu, swiglu_scalar);
    }

    #[test]
    fn geglu_matches_scalar_reference() {
        check("gelu", geglu, geglu_scalar);
    }
}
