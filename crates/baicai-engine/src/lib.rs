//! Sequences, KV cache, sampler and the generation loop.
//!
//! A key design decision made in this crate: generation is a plain loop over
//! `model.forward(tokens) -> logits`, `sampler.sample(logits) -> token`, with the sampler's state
//! (RNG, penalty history) owned by the sequence, so the same seed always yields the same text.

pub mod constraint;
mod core;
pub mod cost;
pub mod energy;
pub mod engine;
pub mod generation;
pub mod load;
mod prefix;
pub mod sampler;
pub mod scheduler;
pub mod session;
pub mod sysinfo;
pub mod tariff;
