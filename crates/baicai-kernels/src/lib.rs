//! Tensor storage types, quantized block formats, dequantization, dot products and matmul.
//!
//! A key design decision made in this crate: every quant format has a `#[repr(C)]` block struct
//! whose size is asserted at compile time, a scalar reference implementation, and SIMD paths in a
//! module per ISA; [`dispatch`] is the one place that picks between them at run time. Weights are
//! multiplied against activations quantized once per row into the format's "vec-dot" type
//! (Q8_0, Q8_1 or Q8_K), as llama.cpp does, so results match its numerics.
//!
//! Imports run one way, leaves first: [`dtype`] and [`kernel`] (instruction sets, the kernels'
//! signatures and tile shapes) import nothing of the crate; [`quant`] (block formats and scalar
//! references) imports only them; [`simd`] imports those; [`dispatch`] picks among quant and
//! simd; [`matmul`], [`attention`], [`activation`] and [`roofline`] sit on top.
//!
//! This crate knows nothing of files or models: it sees byte slices and a [`DType`].

pub mod activation;
pub mod attention;
pub mod dispatch;
pub mod dtype;
pub mod kernel;
pub mod matmul;
pub mod pool;
pub mod quant;
pub mod roofline;
pub mod simd;

pub use activation::{geglu, swiglu};
pub use dispatch::{dequantize_row, quantize_row, vec_dot, Isa};
pub use dtype::DType;
pub use matmul::{matmul, matmul_batch, matmul_many, MatJob, Weight};
pub use pool::for_each_chunk_mut;
