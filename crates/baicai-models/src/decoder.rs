//! The loop every pre-norm decoder shares: embed, then per layer `x += attention(x)` and
//! `x += ffn(x)`, then the final norm and output head. Architectures supply the two blocks.

use std::ops::Range;

use crate::blocks::norm::rms_norm;
use crate::blocks::ops::add_inplace;
use crate::config::ModelConfig;
use crate::kv::KvCache;
use crate::weights::{Linear, WeightStore};
use crate::{Logits, ModelError, SeqInput, Trace};

/// One sequence's rows in a batched forward pass: rows `rows` of the activations are its tokens,
/// at positions `pos0..pos0 + rows.len()`, and their keys and values go to `cache`.
pub(crate) struct Seg<'a> {
    pub rows: Range<usize>,
    pub pos0: usize,
    pub cache: &'a mut KvCache,
}

impl Seg<'_> {
    /// Tokens of this sequence in the batch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }
}

/// The installed [`Trace`], if any: named trace points cost one branch without one.
#[derive(Default)]
pub(crate) struct Tracer(Option<Trace>);

impl Tracer {
    /// Installs (or with `None` removes) the trace.
    pub fn set(&mut self, trace: Option<Trace>) {
        self.0 = trace;
    }

    /// Trace point `name` of layer `il`.
    pub fn at(&self, name: &str, il: usize, x: &[f32]) {
        if let Some(t) = &self.0 {
            t(name, il, x);
        }
    }
}

/// The per-layer blocks of an architecture.
pub(crate) trait Blocks {
    /// Attention of layer `il` over `x` (`[n, n_embd]`, the rows of every sequence in `segs`),
    /// storing this step's keys/values in each sequence's cache, written to `out`
    /// (`[n, n_embd]`). Projections run over all rows at once (each weight row is read once per
    /// step); positions, caches and attention are per sequence.
    fn attention(&self, il: usize, x: &[f32], segs: &mut [Seg], out: &mut [f32]);
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

/// Runs every sequence's tokens through the decoder in one pass (see
/// [`crate::CausalLm::forward_batch`]).
pub(crate) fn forward(
    blocks: &impl Blocks,
    seqs: &mut [SeqInput],
) -> Result<Vec<Vec<f32>>, ModelError> {
    let (store, ends, cfg) = blocks.parts();
    let tokens = batch_tokens(seqs)?;
    let mut x = embed(store, &ends.tok_embd, &tokens, cfg.n_vocab)?; // [n, n_embd]
    if ends.embd_scale != 1.0 {
        x.iter_mut().for_each(|v| *v *= ends.embd_scale);
    }
    let kinds: Vec<Logits> = seqs.iter().map(|q| q.logits).collect();
    let mut segs = segments(seqs);
    let mut tmp = vec![0.0; x.len()]; // [n, n_embd]
    for il in 0..cfg.n_layer {
        blocks.attention(il, &x, &mut segs, &mut tmp);
        add_inplace(&mut x, &tmp);
        blocks.trace("ffn_inp", il, &x);
        blocks.ffn(il, &x, &mut tmp);
        add_inplace(&mut x, &tmp);
        blocks.trace("l_out", il, &x);
    }
    let wanted = finish_step(&mut segs, kinds);
    Ok(head(
        store,
        &x,
        &ends.output_norm,
        cfg.rms_eps,
        &ends.output,
        &wanted,
    ))
}

/// Ends a pass: every sequence's cache counts its new tokens; returns each sequence's rows with
/// the logits it asked for, for [`head`].
pub(crate) fn finish_step(segs: &mut [Seg], kinds: Vec<Logits>) -> Vec<(Range<usize>, Logits)> {
    for s in segs.iter_mut() {
        s.cache.advance(s.len());
    }
    segs.iter()
        .zip(kinds)
        .map(|(s, k)| (s.rows.clone(), k))
        .collect()
}

/// The tokens of all sequences, concatenated, after checking each sequence has tokens and room
/// for them in its cache.
pub(crate) fn batch_tokens(seqs: &[SeqInput]) -> Result<Vec<u32>, ModelError> {
    if seqs.is_empty() {
        return Err(ModelError::EmptyBatch);
    }
    let mut tokens = Vec::new();
    for s in seqs {
        if s.tokens.is_empty() {
            return Err(ModelError::EmptyBatch);
        }
        s.cache.reserve(s.tokens.len())?;
        tokens.extend_from_slice(s.tokens);
    }
    Ok(tokens)
}

/// The position of every row of a batch (`[n]`).
pub(crate) fn positions(segs: &[Seg]) -> Vec<usize> {
    segs.iter().flat_map(|s| s.pos0..s.pos0 + s.len()).collect()
}

/// Each sequence's rows and first position.
pub(crate) fn segments<'a>(seqs: &'a mut [SeqInput]) -> Vec<Seg<'a>> {
    let mut row = 0;
    seqs.iter_mut()
        .map(|s| {
            let n = s.tokens.len();
            let seg = Seg {
                rows: row..row + n,
                pos0: s.cache.len(),
                cache: &mut *s.cache,
            };
            row += n;
            seg
        })
        .collect()
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

/// Final norm and output head over the rows each sequence asks for, in one matmul (batch
/// invariant, so a sequence's logits do not depend on the others); one logits vector per
/// sequence (`[n_vocab]` or `[rows, n_vocab]`).
pub(crate) fn head(
    store: &WeightStore,
    x: &[f32],
    norm: &[f32],
    eps: f32,
    output: &Linear,
    wanted: &[(Range<usize>, Logits)],
) -> Vec<Vec<f32>> {
    let d = norm.len();
    let rows: Vec<Range<usize>> = wanted
        .iter()
        .map(|(r, l)| match l {
            Logits::Last => r.end - 1..r.end,
            Logits::All => r.clone(),
        })
        .collect();
    let n: usize = rows.iter().map(|r| r.len()).sum();
    let mut sel = Vec::with_capacity(n * d); // [n, n_embd]
    for r in &rows {
        sel.extend_from_slice(&x[r.start * d..r.end * d]);
    }
    let mut h = vec![0.0; sel.len()]; // [n, n_embd]
    rms_norm(&sel, norm, eps, &mut h);
    let v = output.rows;
    let mut out = vec![0.0; n * v]; // [n, n_vocab]
    store.matmul(output, &h, n, &mut out);
    let mut at = 0;
    rows.iter()
        .map(|r| {
            let o = out[at * v..(at + r.len()) * v].to_vec();
            at += r.len();
            o
        })
        .collect()
}
