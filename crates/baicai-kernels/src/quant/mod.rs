//! Block formats with their scalar reference kernels.
//!
//! Every block type is a `#[repr(C)]` struct of byte arrays implementing [`Block`], so slices of a
//! memory map at any offset can be viewed as blocks without copying ([`as_blocks`]).

pub mod kquants;
pub mod legacy;
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
