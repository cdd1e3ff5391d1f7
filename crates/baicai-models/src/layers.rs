//! Layers shared by the architectures: norms, RoPE, attention, activations.

use baicai_kernels::attention;
use half::f16;
use rayon::prelude::*;

use crate::config::RopeStyle;

/// `1 / sqrt(mean(x²) + eps)` as llama.cpp's `ggml_compute_forward_rms_norm_f32` computes it:
/// squares in f32, summed in f64, the mean rounded to f32.
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// RMSNorm of each row of `x` (`[n, w.len()]`) into `out`: `x / sqrt(mean(x²) + eps) * w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let scale = rms_scale(xr, eps);
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// RMSNorm in place, per chunk of `w.len()` values (per-head QK-norm).
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for xr in x.chunks_exact_mut(d) {
        let scale = rms_scale(xr, eps);
        for (v, &g) in xr.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
}

/// Rotary position embedding tables for one head dimension and base.
#[derive(Debug, Clone)]
pub struct Rope {
    /// `inv_freq[i] = base^(-2i/d) / freq_factor[i]`, `[d/2]`.
    inv_freq: Vec<f64>,
    /// Positions are multiplied by this (1 / linear scaling factor).
    pos_scale: f64,
    style: RopeStyle,
}

/// Settings of a [`Rope`].
#[derive(Debug, Clone, Copy)]
pub struct RopeParams<'a> {
    pub head_dim: usize,
    pub base: f32,
    pub linear_factor: f32,
    pub style: RopeStyle,
    /// Per-frequency divisors (llama3 scaling writes them as `rope_freqs.weight`).
    pub freq_factors: Option<&'a [f32]>,
}

impl Rope {
    pub fn new(p: RopeParams) -> Rope {
        let half = p.head_dim / 2;
        let inv_freq = (0..half)
            .map(|i| {
                let f = (p.base as f64).powf(-2.0 * i as f64 / p.head_dim as f64);
                f / p.freq_factors.map_or(1.0, |ff| ff[i] as f64)
            })
            .collect();
        Rope {
            inv_freq,
            pos_scale: 1.0 / p.linear_factor as f64,
            style: p.style,
        }
    }

    /// Rotates every head of `x` (`[n_tokens, n_heads, head_dim]`), token `t` at `pos0 + t`.
    pub fn apply(&self, x: &mut [f32], n_tokens: usize, pos0: usize) {
        let d = self.inv_freq.len() * 2;
        let per_tok = x.len() / n_tokens;
        let mut cs = vec![(0f32, 0f32); d / 2];
        for (t, xt) in x.chunks_exact_mut(per_tok).enumerate() {
            let pos = (pos0 + t) as f64 * self.pos_scale;
            for (c, &f) in cs.iter_mut().zip(&self.inv_freq) {
                let (s, co) = (pos * f).sin_cos();
                *c = (co as f32, s as f32);
            }
            for head in xt.chunks_exact_mut(d) {
                for (i, &(c, s)) in cs.iter().enumerate() {
                    let (a, b) = match self.style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::Neox => (i, i + d / 2),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * c - x1 * s;
                    head[b] = x0 * s + x1 * c;
                }
            }
        }
    }
}

/// Settings of one causal attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnParams {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    /// Multiplies q·k.
    pub scale: f32,
    /// Position of the first query token.
    pub pos0: usize,
    /// Keys at distance ≥ window are masked (Gemma's local layers).
    pub window: Option<usize>,
}

impl AttnParams {
    /// Causal attention of the model's heads from position `pos0`, scaled by 1/√head_dim_k,
    /// without a window.
    pub fn causal(c: &crate::config::ModelConfig, pos0: usize) -> AttnParams {
        AttnParams {
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim_k: c.head_dim_k,
            head_dim_v: c.head_dim_v,
            scale: 1.0 / (c.head_dim_k as f32).sqrt(),
            pos0,
            window: None,
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums so the compiler vectorizes the loop.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for j in 0..8 {
            acc[j] += a[c * 8 + j] * b[c * 8 + j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for j in chunks * 8..a.len() {
        s += a[j] * b[j];
    }
    s
}

/// Causal multi-head attention with grouped KV heads.
/// `q`: `[n_tokens, n_head, head_dim_k]`; `k`, `v`: `[pos0 + n_tokens, n_head_kv, dim]` (the
/// cache including the new tokens); `out`: `[n_tokens, n_head, head_dim_v]`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], p: AttnParams, out: &mut [f32]) {
    let group = p.n_head / p.n_head_kv;
    let (dk, dv) = (p.head_dim_k, p.head_dim_v);
    let (kw, vw) = (p.n_head_kv * dk, p.n_head_kv * dv);
    out.par_chunks_mut(dv).enumerate().for_each(|(i, o)| {
        let (t, h) = (i / p.n_head, i % p.n_head);
        let kvh = h / group;
        let pos = p.pos0 + t;
        let start = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let qh = &q[(t * p.n_head + h) * dk..][..dk];
        let mut scores: Vec<f32> = (start..=pos)
            .map(|j| dot(qh, &k[j * kw + kvh * dk..][..dk]) * p.scale)
            .collect();
        let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        o.fill(0.0);
        for (j, s) in (start..=pos).zip(&scores) {
            let w = s / sum;
            let vj = &v[j * vw + kvh * dv..][..dv];
            for (oo, &vv) in o.iter_mut().zip(vj) {
                *oo += w * vv;
            }
        }
    });
}

/// One sequence's keys and values for [`attention_f16_seqs`]: `[pos0 + rows.len(), n_head_kv,
/// dim]` f16, queried by rows `rows` of the batch at positions `pos0..`.
pub struct KvView<'a> {
    pub k: &'a [f16],
    pub v: &'a [f16],
    pub rows: std::ops::Range<usize>,
    pub pos0: usize,
}

/// Causal multi-head attention over an f16 KV cache, with llama.cpp's rounding steps (its
/// non-flash graph with the default F16 cache): the query row is rounded to f16 before `K·q`,
/// the softmax probabilities to f16 before `P·V` (see [`baicai_kernels::attention`]).
/// `q`: `[n_tokens, n_head, head_dim_k]` f32; `k`, `v`: `[pos0 + n_tokens, n_head_kv, dim]` f16;
/// `out`: `[n_tokens, n_head, head_dim_v]`. Parallel over (token, head) pairs.
pub fn attention_f16(q: &[f32], k: &[f16], v: &[f16], p: AttnParams, out: &mut [f32]) {
    let n_tokens = out.len() / (p.n_head * p.head_dim_v).max(1);
    let view = KvView {
        k,
        v,
        rows: 0..n_tokens,
        pos0: p.pos0,
    };
    attention_f16_seqs(q, &[view], p, out);
}

/// [`attention_f16`] for the rows of several sequences at once, each over its own cache, in
/// one parallel region (`p.pos0` is ignored: each [`KvView`] has its own). Each (token, head)
/// result is the same as running its sequence alone.
pub fn attention_f16_seqs(q: &[f32], seqs: &[KvView], p: AttnParams, out: &mut [f32]) {
    let group = p.n_head / p.n_head_kv;
    let (dk, dv) = (p.head_dim_k, p.head_dim_v);
    let (kw, vw) = (p.n_head_kv * dk, p.n_head_kv * dv);
    let seq_of: Vec<usize> = seqs
        .iter()
        .enumerate()
        .flat_map(|(i, s)| std::iter::repeat_n(i, s.rows.len()))
        .collect();
    // Work items are runs of query heads that share a KV head, so each key/value row is
    // converted once for all of them; decode splits a group into single heads when there would
    // be too few items for the threads. Either way each head's result is the same (the kernels
    // are bit-identical to one head at a time).
    let n_tokens = out.len() / (p.n_head * dv).max(1);
    let threads = rayon::current_num_threads();
    let per = if n_tokens * p.n_head_kv >= 2 * threads {
        group
    } else {
        1
    };
    // The kernels' pool: its threads are still spinning from the q/k/v matmul.
    baicai_kernels::for_each_chunk_mut(out, per * dv, |i, o| {
        let h0 = i * per % p.n_head;
        let t = i * per / p.n_head;
        let s = &seqs[seq_of[t]];
        let (k, v) = (s.k, s.v);
        let nh = o.len() / dv;
        let kvh = h0 / group;
        let pos = s.pos0 + t - s.rows.start;
        let start = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let len = pos + 1 - start;
        // The queries rounded to f16, as f32.
        let mut qg = q[(t * p.n_head + h0) * dk..][..nh * dk].to_vec();
        attention::round_f16_inplace(&mut qg);
        let mut scores = vec![0f32; nh * len]; // [heads, len]
        let mut col = vec![0f32; nh];
        for j in start..=pos {
            attention::dot_heads_f16(&qg, &k[j * kw + kvh * dk..][..dk], &mut col);
            for (h, &c) in col.iter().enumerate() {
                scores[h * len + j - start] = c * p.scale;
            }
        }
        for s in scores.chunks_exact_mut(len) {
            attention::softmax_inplace(s);
            attention::round_f16_inplace(s);
        }
        attention::weighted_rows_f16(&scores, len, &v[start * vw + kvh * dv..], vw, dv, o);
    });
}

/// Stores each sequence's new keys and values (rows of `qkv[1]`, `qkv[2]`) in its f16 cache and
/// runs causal attention of its queries (rows of `qkv[0]`) over that cache, into its rows of
/// `out` (`[n, n_head, head_dim_v]`), all sequences in one parallel region; `window` masks keys
/// at that distance or more.
pub(crate) fn attention_segments_f16(
    c: &crate::config::ModelConfig,
    il: usize,
    segs: &mut [crate::decoder::Seg],
    qkv: [&[f32]; 3],
    window: Option<usize>,
    out: &mut [f32],
) {
    let [q, k, v] = qkv;
    let (kw, vw) = (c.k_dim(), c.v_dim());
    for seg in segs.iter_mut() {
        let r = seg.rows.clone();
        seg.cache.store(
            il,
            &k[r.start * kw..r.end * kw],
            &v[r.start * vw..r.end * vw],
        );
    }
    let views: Vec<KvView> = segs
        .iter()
        .map(|seg| {
            let (k, v) = seg.cache.layer_f16(il, seg.pos0 + seg.len()); // [pos0 + len, n_head_kv, head_dim]
            KvView {
                k,
                v,
                rows: seg.rows.clone(),
                pos0: seg.pos0,
            }
        })
        .collect();
    let p = AttnParams {
        window,
        ..AttnParams::causal(c, 0)
    };
    attention_f16_seqs(q, &views, p, out);
}

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
