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
