//! The loop every pre-norm decoder shares: embed, then per layer `x += attention(x)` and
//! `x += ffn(x)`, then the final norm and output head. Architectures supply the two blocks.

use crate::kv::KvCache;
use crate::layers;
use crate::llama::{embed, head};
use crate::weights::{Linear, WeightStore};
use crate::{Logits, ModelError};

/// The per-layer blocks of an architecture.
pub(crate) trait Blocks {
    /// Attention of layer `il` over `x` (`[n, n_embd]`), storing this step's keys/values in
    /// `cache`, written to `out` (`[n, n_embd]`).
    fn attention(&self, il: usize, x: &[f32], cache: &mut KvCache, out: &mut [f32]);
    /// Feed-forward block of layer `il`.
    fn ffn(&self, il: usize, x: &[f32], out: &mut [f32]);
}

/// The shared ends of the model.
pub(crate) struct Ends<'a> {
    pub store: &'a WeightStore,
    pub tok_embd: &'a Linear,
    pub output_norm: &'a [f32],
    pub output: &'a Linear,
    pub rms_eps: f32,
    pub n_vocab: usize,
    pub n_layer: usize,
}

/// Runs `tokens` through the decoder (see [`crate::CausalLm::forward`]).
pub(crate) fn forward(
    blocks: &impl Blocks,
    ends: &Ends,
    tokens: &[u32],
    cache: &mut KvCache,
    logits: Logits,
) -> Result<Vec<f32>, ModelError> {
    cache.reserve(tokens.len())?;
    let mut x = embed(ends.store, ends.tok_embd, tokens, ends.n_vocab)?; // [n, n_embd]
    let mut tmp = vec![0.0; x.len()]; // [n, n_embd]
    for il in 0..ends.n_layer {
        blocks.attention(il, &x, cache, &mut tmp);
        layers::add_inplace(&mut x, &tmp);
        blocks.ffn(il, &x, &mut tmp);
        layers::add_inplace(&mut x, &tmp);
    }
    cache.advance(tokens.len());
    Ok(head(
        ends.store,
        &x,
        ends.output_norm,
        ends.rms_eps,
        ends.output,
        logits,
    ))
}
