//! Multithreaded matmul of quantized weights with f32 activations.

use crate::dtype::DType;

/// A weight matrix `[rows, cols]` (row-major, each row `cols` values of `dtype`), borrowed from
/// wherever it lives (usually a memory map).
#[derive(Debug, Clone, Copy)]
pub struct Weight<'a> {
    pub dtype: DType,
    pub data: &'a [u8],
    pub rows: usize,
    pub cols: usize,
}

/// `out[t, r] = sum_c w[r, c] * x[t, c]` for `n_tokens` rows of `x` (`[n_tokens, cols]`), writing
/// `out` (`[n_tokens, rows]`). Activations are quantized once to `w.dtype.vec_dot_type()`.
/// Runs on the current rayon pool. Each output element is reduced in the same order whatever
/// `n_tokens` is (batch invariance).
pub fn matmul(w: &Weight, x: &[f32], n_tokens: usize, out: &mut [f32]) {
    let _ = (w, x, n_tokens, out);
    todo!()
}
