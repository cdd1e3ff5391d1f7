//! The lightning indexer of DeepSeek Sparse Attention (DeepSeek-V3.2 §2.1; transformers'
//! `DeepseekV32Indexer`, llama.cpp's `deepseek32.cpp`).
//!
//! Per query token `t` and cached token `s` the indexer scores
//! `I[t, s] = Σ_h w[t, h] · H^-½ · ReLU(q[t, h] · k[s] · D^-½)` with `H` small query heads of
//! width `D`, one shared key per token (kept in the cache beside the MLA latent) and per-head
//! weights projected from the token's hidden state. Attention then reads only the `top_k`
//! best-scoring cached tokens; while a query sees no more than `top_k` tokens it reads them all.
//!
//! transformers computes the scores directly; DeepSeek's kernel and llama.cpp first rotate q and k
//! by a Hadamard matrix (orthogonal, so the dot products are the same up to rounding) and quantize
//! them, which transformers and baicai skip.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::blocks::ops::dot;
use crate::config::IndexerConfig;
use crate::error::ModelError;
use crate::weights::{Linear, WeightStore};

/// One layer's indexer weights.
pub(crate) struct Indexer {
    /// `wq_b`: `[n_head · head_dim, q_lora_rank]`, applied to the normalized compressed query.
    pub q_b: Linear,
    /// `wk`: `[head_dim, n_embd]`.
    pub k: Linear,
    /// `k_norm`: a LayerNorm (weight and bias, ε = 1e-6) over the key.
    k_norm: Vec<f32>,
    k_norm_bias: Vec<f32>,
    /// `weights_proj`: `[n_head, n_embd]`, the per-head weights.
    pub proj: Linear,
    cfg: IndexerConfig,
}

/// The indexer's keys of one sequence and layer, `[pos, head_dim]`.
#[derive(Clone, Copy)]
pub(crate) enum IndexKeys<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// transformers' `nn.LayerNorm(head_dim, eps=1e-6)`.
const K_NORM_EPS: f64 = 1e-6;

impl Indexer {
    /// Loads layer `il`'s indexer (`blk.N.indexer.*`, llama.cpp's names).
    ///
    /// # Errors
    /// Missing tensors or wrong shapes, named.
    pub fn load(
        s: &WeightStore,
        il: usize,
        cfg: IndexerConfig,
        n_embd: usize,
        q_lora_rank: usize,
    ) -> Result<Indexer, ModelError> {
        let n = |t: &str| format!("blk.{il}.indexer.{t}");
        Ok(Indexer {
            q_b: s.linear(
                &n("attn_q_b.weight"),
                cfg.n_head * cfg.head_dim,
                q_lora_rank,
            )?,
            k: s.linear(&n("attn_k.weight"), cfg.head_dim, n_embd)?,
            k_norm: s.vector(&n("k_norm.weight"), cfg.head_dim)?,
            k_norm_bias: s.vector(&n("k_norm.bias"), cfg.head_dim)?,
            proj: s.linear(&n("proj.weight"), cfg.n_head, n_embd)?,
            cfg,
        })
    }

    /// The indexer's configuration.
    pub fn config(&self) -> IndexerConfig {
        self.cfg
    }

    /// Normalizes the projected keys `k` (`[n, head_dim]`) in place.
    pub fn norm_keys(&self, k: &mut [f32]) {
        for row in k.chunks_exact_mut(self.cfg.head_dim) {
            layer_norm(row, &self.k_norm, &self.k_norm_bias);
        }
    }

    /// The positions of `0..len` a query attends to (see [`select`]); the scores are computed
    /// in parallel over positions when `parallel` (a decode step's lone query).
    pub fn select(
        &self,
        q: &[f32],
        w: &[f32],
        keys: IndexKeys,
        len: usize,
        parallel: bool,
    ) -> Option<Vec<u32>> {
        if len <= self.cfg.top_k {
            return None;
        }
        let mut score = vec![0f32; len]; // [len]
        let w = head_weights(&self.cfg, w);
        if parallel {
            baicai_kernels::for_each_chunk_mut(&mut score, SCORE_CHUNK, |c, out| {
                scores(&self.cfg, q, &w, keys, c * SCORE_CHUNK, out)
            });
        } else {
            scores(&self.cfg, q, &w, keys, 0, &mut score);
        }
        Some(top_k(&score, self.cfg.top_k))
    }
}

/// Positions scored per parallel task.
const SCORE_CHUNK: usize = 512;

/// The head weights as the scores use them: `w · H^-½`.
fn head_weights(cfg: &IndexerConfig, w: &[f32]) -> Vec<f32> {
    let w_scale = (cfg.n_head as f32).powf(-0.5);
    w.iter().map(|&x| x * w_scale).collect() // [n_head]
}

/// Index scores of positions `j0..j0 + out.len()`: `Σ_h w[h] · ReLU(q[h] · k[j] · D^-½)` with
/// `w` from [`head_weights`].
fn scores(cfg: &IndexerConfig, q: &[f32], w: &[f32], keys: IndexKeys, j0: usize, out: &mut [f32]) {
    let (nh, d) = (cfg.n_head, cfg.head_dim);
    let scale = (d as f32).powf(-0.5);
    let mut buf = vec![0f32; d];
    for (j, sc) in (j0..).zip(out.iter_mut()) {
        let k = match keys {
            IndexKeys::F32(k) => &k[j * d..(j + 1) * d],
            IndexKeys::F16(k) => {
                k[j * d..(j + 1) * d].convert_to_f32_slice(&mut buf);
                &buf
            }
        };
        *sc = (0..nh)
            .map(|h| w[h] * (dot(&q[h * d..(h + 1) * d], k) * scale).max(0.0))
            .sum();
    }
}

/// The `k` best-scoring positions (`k ≤ score.len()`, `k ≥ 1`), ascending. Ties go to the
/// earlier position, so the choice never depends on the batch.
fn top_k(score: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..score.len() as u32).collect();
    let by_score = |a: &u32, b: &u32| {
        score[*b as usize]
            .total_cmp(&score[*a as usize])
            .then(a.cmp(b))
    };
    idx.select_nth_unstable_by(k - 1, by_score);
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

/// The `top_k` positions of `0..len` that query `q` (`[n_head, head_dim]`, rotated) with head
/// weights `w` (`[n_head]`, as projected) selects among `keys`, ascending; `None` when
/// `len ≤ top_k` (every position is kept, as the reference's top-k then returns them all).
#[cfg(test)]
fn select(
    cfg: &IndexerConfig,
    q: &[f32],
    w: &[f32],
    keys: IndexKeys,
    len: usize,
) -> Option<Vec<u32>> {
    if len <= cfg.top_k {
        return None;
    }
    let mut score = vec![0f32; len];
    scores(cfg, q, &head_weights(cfg, w), keys, 0, &mut score);
    Some(top_k(&score, cfg.top_k))
}

/// LayerNorm with weight and bias (mean and variance accumulated in f64).
fn layer_norm(x: &mut [f32], w: &[f32], b: &[f32]) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + K_NORM_EPS).sqrt();
    for ((v, &w), &b) in x.iter_mut().zip(w).zip(b) {
        *v = ((*v as f64 - mean) * inv) as f32 * w + b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The selection is the brute-force top-k of the score formula, with ties to the earlier
    /// position.
    #[test]
    fn select_keeps_best_scores_in_position_order() {
        let cfg = IndexerConfig {
            n_head: 2,
            head_dim: 2,
            top_k: 2,
        };
        // Head 0 looks along x, head 1 along y; head 1 weighs negative.
        let q = [1.0, 0.0, 0.0, 1.0];
        let w = [1.0, -1.0];
        // Scores ∝ relu(x) - relu(y): 1, -1, 2, 0, 2.
        let keys = [1.0, 0.0, 0.0, 1.0, 2.0, 0.0, -1.0, -1.0, 2.0, 0.0];
        let keys = IndexKeys::F32(&keys);
        assert_eq!(select(&cfg, &q, &w, keys, 5).unwrap(), vec![2, 4]);
        // Sequences no longer than top_k keep everything.
        assert_eq!(select(&cfg, &q, &w, keys, 2), None);
        // With top_k 3, position 0 (score 1) joins.
        let cfg3 = IndexerConfig { top_k: 3, ..cfg };
        assert_eq!(select(&cfg3, &q, &w, keys, 5).unwrap(), vec![0, 2, 4]);
        // Ties go to the earlier position: scores 2 and 2 at 2 and 4, top_k 1 keeps 2.
        let cfg1 = IndexerConfig { top_k: 1, ..cfg };
        assert_eq!(select(&cfg1, &q, &w, keys, 5).unwrap(), vec![2]);
    }

    #[test]
    fn layer_norm_matches_definition() {
        let mut x = [1.0f32, 2.0, 3.0, 6.0];
        layer_norm(&mut x, &[1.0, 2.0, 1.0, 1.0], &[0.0, 0.0, 0.5, 0.0]);
        // mean 3, variance 3.5
        let s = (3.5f64 + 1e-6).sqrt();
        let want = [-2.0 / s, -2.0 / s, 0.5, 3.0 / s];
        for (a, b) in x.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
