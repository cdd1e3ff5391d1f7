//! The loop every pre-norm decoder shares: embed, then per layer `x += attention(x)` and
//! `x += ffn(x)`, then the final norm and output head. Architectures supply the two blocks.

use crate::config::ModelConfig;
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

/// The two ends of a decoder: token embedding, final norm, output head (tied to the embedding
/// when the file has no `output.weight`).
pub(crate) struct Ends {
    pub tok_embd: Linear,
    pub output_norm: Vec<f32>,
    pub output: Linear,
}

impl Ends {
    /// Loads and checks the three tensors.
    pub fn load(s: &WeightStore, cfg: &ModelConfig) -> Result<Ends, ModelError> {
        let tok_embd = s.linear("token_embd.weight", cfg.n_vocab, cfg.n_embd)?;
        let output = if s.has("output.weight") {
            s.linear("output.weight", cfg.n_vocab, cfg.n_embd)?
        } else {
            tok_embd.clone()
        };
        let output_norm = s.vector("output_norm.weight", cfg.n_embd)?;
        Ok(Ends {
            tok_embd,
            output_norm,
            output,
        })
    }

    /// Bytes of the head plus the one embedding row a token reads.
    pub fn bytes_per_token(&self) -> u64 {
        let row = self
            .tok_embd
            .dtype
            .row_bytes(self.tok_embd.cols)
            .unwrap_or(0) as u64;
        self.output.n_bytes() + row
    }
}

/// Runs `tokens` through the decoder (see [`crate::CausalLm::forward`]).
pub(crate) fn forward(
    blocks: &impl Blocks,
    store: &WeightStore,
    ends: &Ends,
    cfg: &ModelConfig,
    tokens: &[u32],
    cache: &mut KvCache,
    logits: Logits,
) -> Result<Vec<f32>, ModelError> {
    cache.reserve(tokens.len())?;
    let mut x = embed(store, &ends.tok_embd, tokens, cfg.n_vocab)?; // [n, n_embd]
    let mut tmp = vec![0.0; x.len()]; // [n, n_embd]
    for il in 0..cfg.n_layer {
        blocks.attention(il, &x, cache, &mut tmp);
        layers::add_inplace(&mut x, &tmp);
        blocks.ffn(il, &x, &mut tmp);
        layers::add_inplace(&mut x, &tmp);
    }
    cache.advance(tokens.len());
    Ok(head(
        store,
        &x,
        &ends.output_norm,
        cfg.rms_eps,
        &ends.output,
        logits,
    ))
}
