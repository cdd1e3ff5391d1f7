//! Block formats with their scalar reference kernels.
//!
//! Every block type is a `#[repr(C)]` struct of byte arrays implementing [`Block`], so slices of a
//! memory map at any offset can be viewed as blocks without copying ([`as_blocks`]).

pub mod fp8;
pub mod kquants;
pub mod legacy;
pub mod mxfp4;
pub mod packed;
pub mod tables;

use half::f16;

/// A quantized block: a `#[repr(C)]` struct of byte arrays.
///
/// # Safety
/// Implementors must have alignment 1, no padding, and accept every bit pattern, so that any
/// byte slice of the right length is a valid slice of blocks.
pub unsafe trait Block: Copy + 'static {
    /// The block type's name, for messages.
    const NAME: &'static str;
}

/// Views `bytes` as a slice of blocks.
///
/// # Panics
/// If `bytes.len()` is not a multiple of the block size.
pub fn as_blocks<T: Block>(bytes: &[u8]) -> &[T] {
    let size = size_of::<T>();
    assert!(
        bytes.len().is_multiple_of(size),
        "{} bytes are not whole {} blocks of {size} bytes",
        bytes.len(),
        T::NAME
    );
    // SAFETY: `Block` guarantees alignment 1, no padding and validity of any bit pattern; the
    // length is a whole number of blocks and the lifetime is tied to `bytes`.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) }
}

/// Views `bytes` as a mutable slice of blocks.
///
/// # Panics
/// If `bytes.len()` is not a multiple of the block size.
pub fn as_blocks_mut<T: Block>(bytes: &mut [u8]) -> &mut [T] {
    let size = size_of::<T>();
    assert!(
        bytes.len().is_multiple_of(size),
        "{} bytes are not whole {} blocks of {size} bytes",
        bytes.len(),
        T::NAME
    );
    // SAFETY: as in `as_blocks`; the exclusive borrow of `bytes` moves to the result.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), bytes.len() / size) }
}

/// Decodes a little-endian IEEE half stored as two bytes.
#[inline]
pub fn f16_le(b: [u8; 2]) -> f32 {
    f16::from_bits(u16::from_le_bytes(b)).to_f32()
}

/// Decodes an E8M0 scale (OCP Microscaling spec v1.0 §5.4.1: an 8-bit biased exponent, no sign,
/// no mantissa): `2^(e - 127)`. `e = 0` is `2^-127` (an f32 subnormal, exact); `e = 255` is the
/// spec's NaN, as PyTorch's `float8_e8m0fnu` decodes it (DeepSeek-V4's `ue8m0` FP8 scales go
/// through that type in llama.cpp's converter).
#[inline]
pub const fn e8m0_to_f32(e: u8) -> f32 {
    match e {
        0 => f32::from_bits(0x0040_0000),
        255 => f32::NAN,
        _ => f32::from_bits((e as u32) << 23),
    }
}

/// Half an E8M0 scale, `2^(e - 128)`, exactly as ggml's `ggml_e8m0_to_fp32_half` (and gguf-py's
/// `MXFP4.e8m0_to_fp32_half`): the MXFP4 scale that goes with the doubled
/// [`tables::KVALUES_MXFP4`]. `e = 0` and `1` give the subnormals `2^-128` and `2^-127`; `e = 255`
/// is not treated as NaN but gives `2^127`, as ggml does.
#[inline]
pub const fn e8m0_to_f32_half(e: u8) -> f32 {
    let e = e as u32;
    let bits = if e < 2 {
        0x0020_0000 << e
    } else {
        (e - 1) << 23
    };
    f32::from_bits(bits)
}
