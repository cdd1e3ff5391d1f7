//! SIMD kernels, one module per ISA and format family.

#[cfg(target_arch = "x86_64")]
pub mod avx2_kquants;
#[cfg(target_arch = "x86_64")]
pub mod avx2_legacy;
#[cfg(target_arch = "x86_64")]
pub mod avx512_kquants;
#[cfg(target_arch = "x86_64")]
pub mod avx512_legacy;
#[cfg(target_arch = "x86_64")]
pub mod packed;
