//! The one dispatch point: picks the scalar reference or a SIMD path per format at run time.

use crate::dtype::DType;
use crate::quant::{kquants, legacy};

/// Stops handing out the AVX-512 kernels (prefill tiles) from now on, even where the CPU has
/// them. Results are identical with and without (the AVX-512 tiles equal the AVX2 ones bit for
/// bit); this exists to compare their speed. Call it before running a model.
pub fn disable_avx512() {
    #[cfg(target_arch = "x86_64")]
    crate::simd::avx512_kquants::DISABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Instruction set a kernel is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
}

impl Isa {
    /// The best ISA this CPU supports (AVX2 requires FMA and F16C too).
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }
}

/// Dequantizes `dst.len()` values from `src` (whole blocks of `dtype`).
pub type DequantFn = fn(src: &[u8], dst: &mut [f32]);
/// Quantizes `src` (a multiple of the block length) into `dst` (whole blocks).
pub type QuantFn = fn(src: &[f32], dst: &mut [u8]);
/// Dot product of `n` values: weights `w` of some type and activations `a` in its vec-dot type.
pub type DotFn = fn(n: usize, w: &[u8], a: &[u8]) -> f32;

/// The float types and the 32-value block formats, which `legacy` dispatches (MXFP4's block and
/// reference kernels live in `quant::mxfp4`; its SIMD paths are the symmetric legacy tiles').
fn is_legacy(dtype: DType) -> bool {
    use DType::*;
    matches!(
        dtype,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | MXFP4
    )
}

/// The dequantization function for `dtype` on `isa`.
pub fn dequant_fn(dtype: DType, isa: Isa) -> DequantFn {
    if is_legacy(dtype) {
        legacy::dequant_fn(dtype, isa)
    } else {
        kquants::dequant_fn(dtype, isa)
    }
}

/// The activation quantization function producing `dtype` (F32, F16, BF16, Q8_0, Q8_1, Q8_K).
pub fn quant_fn(dtype: DType, isa: Isa) -> QuantFn {
    if is_legacy(dtype) {
        legacy::quant_fn(dtype, isa)
    } else {
        kquants::quant_fn(dtype, isa)
    }
}

/// The dot product of weights of `dtype` with activations in `dtype.vec_dot_type()`.
pub fn dot_fn(dtype: DType, isa: Isa) -> DotFn {
    if is_legacy(dtype) {
        legacy::dot_fn(dtype, isa)
    } else {
        kquants::dot_fn(dtype, isa)
    }
}

/// The register-tiled kernels for weights of `dtype` on `isa`, where the format has them; each
/// element is bit-identical to [`dot_fn`]'s.
pub fn tile_fns(dtype: DType, isa: Isa) -> Option<legacy::TileFns> {
    if is_legacy(dtype) {
        legacy::tile_fns(dtype, isa)
    } else {
        kquants::tile_fns(dtype, isa)
    }
}

fn best_isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

/// Dequantizes a row with the best kernel for this CPU.
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) {
    dequant_fn(dtype, best_isa())(src, dst)
}

/// Quantizes an activation row into `dtype` with the best kernel for this CPU.
pub fn quantize_row(dtype: DType, src: &[f32], dst: &mut [u8]) {
    quant_fn(dtype, best_isa())(src, dst)
}

/// Dot product with the best kernel for this CPU.
pub fn vec_dot(dtype: DType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_fn(dtype, best_isa())(n, w, a)
}

/// The ISA the dispatch functions above use.
pub fn active_isa() -> Isa {
    best_isa()
}
