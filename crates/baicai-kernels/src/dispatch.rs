//! The one dispatch point: picks the scalar reference ([`crate::quant`]) or a SIMD kernel
//! ([`crate::simd`]) per format at run time. It sits above both (see [`crate::kernel`] for the
//! layers); nothing below it imports it.

use crate::dtype::DType;
pub use crate::kernel::{
    active_isa, disable_avx512, DequantFn, DotFn, Isa, PackedFn, QuantFn, TileFns,
};
use crate::quant::{kquants, legacy};

/// The float types and the 32-value block formats (MXFP4's block and reference kernels live in
/// `quant::mxfp4`; its SIMD paths are the symmetric legacy tiles').
fn is_legacy(dtype: DType) -> bool {
    use DType::*;
    matches!(
        dtype,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4_NL | MXFP4
    )
}

/// Whether the AVX2 kernels may run: `isa` asks for them and this CPU has them. Asking for AVX2
/// on a CPU without it yields the scalar kernels rather than undefined behaviour.
#[inline]
fn use_avx2(isa: Isa) -> bool {
    isa == Isa::Avx2 && active_isa() == Isa::Avx2
}

/// The dequantization function for `dtype` on `isa` (the scalar one on every ISA:
/// dequantization is off the hot path).
pub fn dequant_fn(dtype: DType, isa: Isa) -> DequantFn {
    let _ = isa;
    if is_legacy(dtype) {
        legacy::dequant_fn(dtype)
    } else {
        kquants::dequant_fn(dtype)
    }
}

/// The activation quantization function producing `dtype` (F32, F16, BF16, Q8_0, Q8_1, Q8_K).
pub fn quant_fn(dtype: DType, isa: Isa) -> QuantFn {
    #[cfg(target_arch = "x86_64")]
    if use_avx2(isa) {
        let simd = if is_legacy(dtype) {
            crate::simd::avx2_legacy::quant_fn(dtype)
        } else {
            crate::simd::avx2_kquants::quant_fn(dtype)
        };
        if let Some(f) = simd {
            return f;
        }
    }
    let _ = isa;
    if is_legacy(dtype) {
        legacy::quant_fn(dtype)
    } else {
        kquants::quant_fn(dtype)
    }
}

/// The dot product of weights of `dtype` with activations in `dtype.vec_dot_type()`.
pub fn dot_fn(dtype: DType, isa: Isa) -> DotFn {
    #[cfg(target_arch = "x86_64")]
    if use_avx2(isa) {
        let simd = if is_legacy(dtype) {
            crate::simd::avx512_legacy::dot_fn(dtype)
                .or_else(|| crate::simd::avx2_legacy::dot_fn(dtype))
        } else {
            crate::simd::avx2_kquants::dot_fn(dtype)
        };
        if let Some(f) = simd {
            return f;
        }
    }
    let _ = isa;
    if is_legacy(dtype) {
        legacy::dot_fn(dtype)
    } else {
        kquants::dot_fn(dtype)
    }
}

/// The register-tiled kernels for weights of `dtype` on `isa`, where the format has them; each
/// element is bit-identical to [`dot_fn`]'s. Otherwise use [`dot_fn`] per element.
pub fn tile_fns(dtype: DType, isa: Isa) -> Option<TileFns> {
    #[cfg(target_arch = "x86_64")]
    if use_avx2(isa) {
        return if is_legacy(dtype) {
            crate::simd::avx512_legacy::tile_fns(dtype)
                .or_else(|| crate::simd::avx2_legacy::tile_fns(dtype))
        } else {
            crate::simd::avx512_kquants::tile_fns(dtype)
                .or_else(|| crate::simd::avx2_kquants::tile_fns(dtype))
        };
    }
    let _ = (dtype, isa);
    None
}

/// The kernel for weights of `dtype` packed in groups of 8 rows (`quant::packed`) on `isa`:
/// SIMD where the CPU has it, else the scalar reference; `None` for a format without a packed
/// layout. Every choice gives the same bits.
pub fn packed_fn(dtype: DType, isa: Isa) -> Option<PackedFn> {
    #[cfg(target_arch = "x86_64")]
    if use_avx2(isa) {
        if let Some(f) = crate::simd::packed::packed_fn(dtype) {
            return Some(f);
        }
    }
    let _ = isa;
    crate::quant::packed::packed_ref_fn(dtype)
}

/// Whether models should pack matrices of `dtype` at load on this CPU: where SIMD packed kernels
/// exist (AVX2 and AVX-512 VNNI, equal bit for bit, so the choice does not depend on
/// `--no-avx512`) and measured faster than the row-major kernels on every path: Q8_0, Q5_0, Q4_0,
/// IQ4_NL, MXFP4, Q4_K, Q5_K and Q6_K (2 threads, VNNI: Q5_K 2048×2816 512 tokens 32 -> 13 ms,
/// decode 0.126 -> 0.123 ms; Q4_K 2048×2816 512 tokens 26 -> 11 ms, decode
/// 0.12 -> 0.11 ms; Q6_K 22.4 -> 11.9 ms, 8 tokens 0.48 -> 0.37 ms, decode 0.13 -> 0.09-0.14 ms;
/// Q4_0 4864×896 24.4 -> 8.7 ms, decode 0.097 -> 0.076 ms; IQ4_NL 25.9 -> 9.0, 0.113 -> 0.074;
/// MXFP4 25.4 -> 9.7, 0.109 -> 0.078).
pub fn pack_at_load(dtype: DType) -> bool {
    #[cfg(target_arch = "x86_64")]
    if active_isa() == Isa::Avx2 {
        use DType::*;
        return matches!(
            dtype,
            Q8_0 | Q5_0 | Q4_0 | IQ4_NL | MXFP4 | Q4_K | Q5_K | Q6_K
        );
    }
    let _ = dtype;
    false
}

/// Dequantizes a row with the best kernel for this CPU.
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) {
    dequant_fn(dtype, active_isa())(src, dst)
}

/// Quantizes an activation row into `dtype` with the best kernel for this CPU.
pub fn quantize_row(dtype: DType, src: &[f32], dst: &mut [u8]) {
    quant_fn(dtype, active_isa())(src, dst)
}

/// Dot product with the best kernel for this CPU.
pub fn vec_dot(dtype: DType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_fn(dtype, active_isa())(n, w, a)
}
