//! AVX2 kernels (legacy): to be implemented.
