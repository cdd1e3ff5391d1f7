//! The matmul kernels as a CPU without AVX-512 runs them: this test binary turns the AVX-512
//! kernels off for its whole process (its only test), so the AVX2 tiles, two-row decode kernels
//! and dot products are what the batch-invariance check compares. On AVX2-only CPUs this repeats
//! `matmul.rs`'s check.

mod common;

#[test]
fn avx2_matmul_is_batch_invariant_bit_for_bit() {
    baicai_kernels::dispatch::disable_avx512();
    common::check_batch_invariance();
}
