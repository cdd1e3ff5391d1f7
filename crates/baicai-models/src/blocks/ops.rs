//! Element-wise operations: residual adds, biases, gated activations.

/// `a[i] = silu(a[i]) * b[i]` (SwiGLU).
pub fn swiglu(a: &mut [f32], b: &[f32]) {
    baicai_kernels::swiglu(a, b);
}

/// `a[i] = gelu(a[i]) * b[i]` with the tanh approximation (GeGLU, Gemma).
pub fn geglu(a: &mut [f32], b: &[f32]) {
    baicai_kernels::geglu(a, b);
}

/// `x[i] += y[i]`.
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Adds `bias` to every row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_inplace(row, bias);
    }
}

/// Dot product with eight independent partial sums, so the compiler vectorizes it (the remainder
/// of a length that is not a multiple of 8 is added after them).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}
