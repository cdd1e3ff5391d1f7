//! The loop every pre-norm decoder shares: embed, then per layer `x += attention(x)` and
//! `x += ffn(x)`, then the final norm and output head. Architectures supply the two blocks.

use crate::config::ModelConfig;
use crate::kv::KvCache;
use crate::layers;
use crate::weights::{Linear, WeightStore};
use crate::{Logits, ModelError};

/// The per-layer blocks of an architecture.
pub(crate) trait Blocks {
    /// Attention of layer `il` over `x` (`[n, n_embd]`), storing this step's keys/values in
    /// `cache`, written to `out` (`[n, n_embd]`).
    fn attention(&self, il: usize, x: &[f32], cache: &mut KvCache, out: &mut [f32]);
    /// Feed-forward block of layer `il`.
    fn ffn(&self, il: usize, x: &[f32], out: &mut [f32]);
    /// Named trace point (see [`crate::Trace`]); none by default.
    fn trace(&self, _name: &str, _il: usize, _x: &[f32]) {}
    /// The model's weights, decoder ends and configuration.
    fn parts(&self) -> (&WeightStore, &Ends, &ModelConfig);
}

/// The two ends of a decoder: token embedding, final norm, output head (tied to the embedding
/// when the file has no `output.weight`).
pub(crate) struct Ends {
    pub tok_embd: Linear,
    pub output_norm: Vec<f32>,
    pub output: Linear,
    /// Multiplies the embeddings (Gemma: √d_model); 1 elsewhere.
    pub embd_scale: f32,
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
            embd_scale: 1.0,
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
    tokens: &[u32],
    cache: &mut KvCache,
    logits: Logits,
) -> Result<Vec<f32>, ModelError> {
    let (store, ends, cfg) = blocks.parts();
    cache.reserve(tokens.len())?;
    let mut x = embed(store, &ends.tok_embd, tokens, cfg.n_vocab)?; // [n, n_embd]
    if ends.embd_scale != 1.0 {
        x.iter_mut().for_each(|v| *v *= ends.embd_scale);
    }
    let mut tmp = vec![0.0; x.len()]; // [n, n_embd]
    for il in 0..cfg.n_layer {
        blocks.attention(il, &x, cache, &mut tmp);
        layers::add_inplace(&mut x, &tmp);
        blocks.trace("ffn_inp", il, &x);
        blocks.ffn(il, &x, &mut tmp);
        layers::add_inplace(&mut x, &tmp);
        blocks.trace("l_out", il, &x);
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

/// Embedding lookup of `tokens` into `[n, n_embd]`.
fn embed(
    store: &WeightStore,
    tok_embd: &Linear,
    tokens: &[u32],
    n_vocab: usize,
) -> Result<Vec<f32>, ModelError> {
    let d = tok_embd.cols;
    let mut x = vec![0.0; tokens.len() * d];
    for (&t, row) in tokens.iter().zip(x.chunks_exact_mut(d)) {
        if t as usize >= n_vocab {
            return Err(ModelError::BadToken { id: t, n_vocab });
        }
        store.row(tok_embd, t as usize, row);
    }
    Ok(x)
}

/// Final norm and output head over the rows `logits` asks for.
fn head(
    store: &WeightStore,
    x: &[f32],
    norm: &[f32],
    eps: f32,
    output: &Linear,
    logits: Logits,
) -> Vec<f32> {
    let d = norm.len();
    let rows = match logits {
        Logits::Last => &x[x.len() - d..],
        Logits::All => x,
    };
    let n = rows.len() / d;
    let mut h = vec![0.0; rows.len()]; // [n, n_embd]
    layers::rms_norm(rows, norm, eps, &mut h);
    let mut out = vec![0.0; n * output.rows]; // [n, n_vocab]
    store.matmul(output, &h, n, &mut out);
    out
}
