//! MXFP4 (OCP Microscaling spec v1.0, FP4 E2M1 elements with an E8M0 scale per 32): ggml's
//! `block_mxfp4` (GGUF type 39), its scalar reference kernels, and the repacking of the packed
//! form Hugging Face checkpoints store it in.
//!
//! # Values
//! A block is one E8M0 scale byte `e` and 16 bytes `qs`; element `j < 16` is the low nibble of
//! `qs[j]`, element `j + 16` its high nibble (the nibble order of Q4_0). An element's value is
//! `KVALUES_MXFP4[code] * e8m0_to_f32_half(e)`: ggml stores the E2M1 values doubled (so they are
//! the integers ±{0, 1, 2, 3, 4, 6, 8, 12}) and halves the scale, `2^(e - 128)`; the product is
//! the spec's `E2M1 * 2^(e - 127)`. The dot product with Q8_0 activations is then an integer dot
//! per block, as for IQ4_NL, which is why llama.cpp chose the doubled table.
//!
//! Extreme scales follow ggml and gguf-py rather than the spec: `e = 0` and `1` give subnormal
//! scales (`2^-128`, `2^-127`), and `e = 255` is not NaN but `2^127`. Values beyond f32's range
//! become ±infinity (from `e = 253`: `12 * 2^125`); a zero code stays zero at every scale. The
//! kernels never panic on any block's bytes; a dot product with such a block gives ±inf or NaN as
//! the f32 arithmetic does (where it overflows may differ between the scalar and SIMD paths,
//! which multiply the scales in a different order). transformers decodes the same bytes to the
//! same values, infinities included, except that its code 8 is `-0.0` where ggml's is `+0.0`.
//!
//! # The checkpoints' packed form
//! gpt-oss (`*_blocks` u8 `[…, rows, cols/32, 16]` with `*_scales` u8 `[…, rows, cols/32]`),
//! DeepSeek-V4's routed experts and compressed-tensors' `mxfp4-pack-quantized` (`weight`
//! `[rows, cols/2]` with `scale` `[rows, cols/32]`) all store a row's elements two to a byte in
//! order: element `2i` in the low nibble of byte `i`, element `2i + 1` in the high nibble
//! (transformers' `convert_moe_packed_tensors`: `out[..., 0::2] = lut[blk & 0x0F]`,
//! `out[..., 1::2] = lut[blk >> 4]`, then `ldexp(out, scale - 127)`). The 4-bit codes are the
//! same in both forms (`FP4_VALUES` there is `KVALUES_MXFP4 / 2`), and so is the scale byte, so
//! [`repack_mxfp4`] only moves nibbles, as llama.cpp's converter does (`repack_mxfp4_blocks` in
//! `conversion/base.py`; gpt-oss's `transform_nibble_layout` is the same permutation).

use crate::dtype::{DType, QK};
use crate::quant::legacy::{block, dot_sym, nibbles, whole_blocks};
use crate::quant::tables::KVALUES_MXFP4;
use crate::quant::{as_blocks, as_blocks_mut, e8m0_to_f32_half, Block};

block!(
    /// MXFP4: 32 values `KVALUES_MXFP4[q] * 2^(e - 128)`, nibble order as Q4_0 (see the module
    /// docs).
    BlockMXFP4, 17, {
        /// The E8M0 scale: a biased exponent.
        e: u8,
        /// Packed 4-bit codes.
        qs: [u8; 16],
    }
);

impl BlockMXFP4 {
    /// The scale that goes with the doubled table: `2^(e - 128)`.
    #[inline]
    pub fn d(&self) -> f32 {
        e8m0_to_f32_half(self.e)
    }

    /// The 32 signed (doubled) E2M1 values of the block, in value order.
    #[inline]
    pub fn values(&self) -> [i8; 32] {
        nibbles(&self.qs).map(|q| KVALUES_MXFP4[q as usize])
    }

    /// The block of one 32-element group of the checkpoints' packed form: scale byte `e` and the
    /// 16 bytes holding elements `2i` (low nibble) and `2i + 1` (high nibble) of the group.
    #[inline]
    pub fn from_packed(e: u8, packed: &[u8; 16]) -> BlockMXFP4 {
        let code = |k: usize| (packed[k / 2] >> (4 * (k % 2))) & 0x0f;
        BlockMXFP4 {
            e,
            qs: std::array::from_fn(|j| code(j) | (code(j + 16) << 4)),
        }
    }
}

/// Dequantizes MXFP4 (`dst.len()` values, a multiple of 32).
///
/// # Panics
/// If `dst.len()` is not a multiple of 32 or `src` holds fewer blocks.
pub fn dequant_mxfp4(src: &[u8], dst: &mut [f32]) {
    let src = whole_blocks(DType::MXFP4, dst.len(), src);
    for (b, out) in as_blocks::<BlockMXFP4>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let d = b.d();
        for (o, q) in out.iter_mut().zip(b.values()) {
            *o = q as f32 * d;
        }
    }
}

/// MXFP4 × Q8_0: per block the integer dot of the doubled values with the activation codes,
/// times both scales (ggml's `ggml_vec_dot_mxfp4_q8_0_generic`).
///
/// # Panics
/// If `n` is not a multiple of 32 or a slice holds fewer than `n` values.
pub fn dot_mxfp4_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_sym(DType::MXFP4, n, w, a, |b: &BlockMXFP4| (b.values(), b.d()))
}

/// Repacks MXFP4 from the checkpoints' packed form (see the module docs) into GGUF
/// [`BlockMXFP4`]s, written to `out`: group `g` (32 elements) is `packed[16 g..16 g + 16]` with
/// scale `scales[g]`, and becomes block `g`. Lossless; the groups of a `[rows, cols]` matrix
/// come row by row in both forms, so `out` is the GGUF tensor's bytes.
///
/// # Panics
/// If `packed` is not 16 bytes per scale, or `out` is not 17 bytes per scale.
pub fn repack_mxfp4_into(packed: &[u8], scales: &[u8], out: &mut [u8]) {
    assert_eq!(
        packed.len(),
        16 * scales.len(),
        "MXFP4: {} packed bytes for {} scales, expected 16 per scale",
        packed.len(),
        scales.len()
    );
    assert_eq!(
        out.len(),
        DType::MXFP4.block_bytes() * scales.len(),
        "MXFP4: an output of {} bytes for {} blocks",
        out.len(),
        scales.len()
    );
    let groups = packed.chunks_exact(16).zip(scales);
    for (b, (p, &e)) in as_blocks_mut::<BlockMXFP4>(out).iter_mut().zip(groups) {
        *b = BlockMXFP4::from_packed(e, p.try_into().expect("16 bytes"));
    }
}

/// [`repack_mxfp4_into`] a new buffer: the GGUF MXFP4 bytes (17 per scale) of `packed` and
/// `scales`, ready to be used as a [`crate::Weight`] of [`DType::MXFP4`] with no dequantization.
///
/// # Panics
/// If `packed` is not 16 bytes per scale.
pub fn repack_mxfp4(packed: &[u8], scales: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; DType::MXFP4.block_bytes() * scales.len()];
    repack_mxfp4_into(packed, scales, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_packed_puts_element_k_at_its_gguf_nibble() {
        // Element k of the group carries code k % 16: packed byte i is (2i+1)%16 << 4 | (2i)%16.
        let packed: [u8; 16] = std::array::from_fn(|i| {
            let (lo, hi) = ((2 * i) % 16, (2 * i + 1) % 16);
            (lo | (hi << 4)) as u8
        });
        let b = BlockMXFP4::from_packed(7, &packed);
        assert_eq!(b.e, 7);
        let codes = nibbles(&b.qs);
        let want: [u8; 32] = std::array::from_fn(|k| (k % 16) as u8);
        assert_eq!(codes, want);
    }
}
