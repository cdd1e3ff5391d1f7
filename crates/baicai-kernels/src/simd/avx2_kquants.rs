//! AVX2 kernels (kquants): to be implemented.
