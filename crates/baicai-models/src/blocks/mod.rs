//! The building blocks architectures are made of, as llama.cpp's `build_attn`, `build_ffn`,
//! `build_moe_ffn` and `build_norm` serve its `src/models/*.cpp`: each block owns its tensors
//! (loaded by layer index under the canonical names) and its forward pass, and takes its
//! per-layer settings as a parameter struct. An architecture file chooses blocks and options and
//! writes its forward from them; it never repeats one.
//!
//! - [`attention`]: grouped-query attention ([`attention::Gqa`]: optional q/k/v biases,
//!   QK-norm, sliding window, sinks) and its kernels over f32 or f16 caches.
//! - [`ffn`]: the gated feed-forward block (SwiGLU, GeGLU).
//! - [`moe`]: routers (softmax, sigmoid with selection bias and groups), experts dispatched by
//!   expert, the shared expert with its optional sigmoid gate.
//! - [`norm`]: RMSNorm. [`rope`]: rotary embeddings incl. linear, llama3 and YaRN scaling.
//! - [`ops`]: element-wise operations.

pub mod attention;
pub mod ffn;
pub mod moe;
pub mod norm;
pub mod ops;
pub mod rope;
