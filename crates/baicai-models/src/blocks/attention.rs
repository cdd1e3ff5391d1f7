//! Grouped-query attention: the kernels (causal softmax attention over an f32 or f16 cache, with
//! an optional sliding window and optional per-head sinks) and the block every Llama-style
//! architecture shares ([`Gqa`]: q/k/v projections with optional biases, optional per-head
//! QK-norm, RoPE, the cache, the output projection).

use baicai_kernels::attention;
use half::f16;
use rayon::prelude::*;

use super::norm::rms_norm_inplace;
use super::ops::add_bias;
use super::ops::dot;
use super::rope::Rope;
use crate::config::ModelConfig;
use crate::decoder::{Seg, Tracer};
use crate::error::ModelError;
use crate::weights::{Linear, WeightStore};

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
    pub fn causal(c: &ModelConfig, pos0: usize) -> AttnParams {
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

/// Causal multi-head attention with grouped KV heads.
/// `q`: `[n_tokens, n_head, head_dim_k]`; `k`, `v`: `[pos0 + n_tokens, n_head_kv, dim]` (the
/// cache including the new tokens); `out`: `[n_tokens, n_head, head_dim_v]`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], p: AttnParams, out: &mut [f32]) {
    attention_sinks(q, k, v, p, None, out);
}

/// [`attention`] with an optional learned logit per head (`[n_head]`) that joins each softmax
/// and takes part of its mass without contributing a value (attention sinks, gpt-oss).
fn attention_sinks(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p: AttnParams,
    sinks: Option<&[f32]>,
    out: &mut [f32],
) {
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
        let sink = sinks.map(|s| s[h]);
        let max = scores
            .iter()
            .cloned()
            .fold(sink.unwrap_or(f32::NEG_INFINITY), f32::max);
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        if let Some(s) = sink {
            sum += (s - max).exp();
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

/// [`baicai_kernels::attention::softmax_inplace`] with one more logit, `sink`, whose
/// probability is dropped (its f64 sum and f32 rounding as the kernel's).
fn softmax_with_sink_inplace(x: &mut [f32], sink: f32) {
    let max = x.iter().cloned().fold(sink, f32::max);
    let mut sum = ((sink - max).exp()) as f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    x.iter_mut().for_each(|v| *v *= inv);
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
    attention_f16_seqs(q, &[view], p, None, out);
}

/// [`attention_f16`] for the rows of several sequences at once, each over its own cache, in
/// one parallel region (`p.pos0` is ignored: each [`KvView`] has its own), with optional
/// per-head sinks (`[n_head]`, see [`attention`]). Each (token, head) result is the same as
/// running its sequence alone.
pub fn attention_f16_seqs(
    q: &[f32],
    seqs: &[KvView],
    p: AttnParams,
    sinks: Option<&[f32]>,
    out: &mut [f32],
) {
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
        let keys = &k[start * kw + kvh * dk..];
        attention::scores_f16(&qg, dk, keys, kw, len, p.scale, &mut scores);
        for (h, s) in scores.chunks_exact_mut(len).enumerate() {
            match sinks {
                None => attention::softmax_inplace(s),
                Some(sk) => softmax_with_sink_inplace(s, sk[h0 + h]),
            }
            attention::round_f16_inplace(s);
        }
        attention::weighted_rows_f16(&scores, len, &v[start * vw + kvh * dv..], vw, dv, o);
    });
}

/// Whether a family's attention has an optional set of tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Never loaded, even if the file has them.
    Absent,
    /// Loaded where the file has them.
    Optional,
    /// Every layer must have them: a file without them is another model.
    Required,
}

/// Which optional tensors a family's [`Gqa`] has.
#[derive(Debug, Clone, Copy)]
pub struct GqaTensors {
    /// `attn_{q,k,v}.bias` (Qwen2).
    pub bias: Presence,
    /// `attn_{q,k}_norm.weight`, an RMSNorm over each query and key head before RoPE (Qwen3,
    /// Gemma 3).
    pub qk_norm: Presence,
    /// `attn_sinks.weight`, one logit per query head joining the softmax (gpt-oss).
    pub sinks: Presence,
}

/// One layer's grouped-query attention weights.
pub struct Gqa {
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// Per-head QK-norm weights (`[head_dim_k]` each).
    pub qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// Per-head sink logits (`[n_head]`).
    pub sinks: Option<Vec<f32>>,
}

/// One layer's attention call: what varies per layer besides the weights.
pub(crate) struct GqaStep<'a> {
    pub cfg: &'a ModelConfig,
    pub il: usize,
    pub rope: &'a Rope,
    /// Keys at distance ≥ window are masked.
    pub window: Option<usize>,
    pub trace: &'a Tracer,
}

/// A vector that `p` says is absent, optional or required.
fn vector_as(
    s: &WeightStore,
    p: Presence,
    name: &str,
    n: usize,
) -> Result<Option<Vec<f32>>, ModelError> {
    match p {
        Presence::Absent => Ok(None),
        Presence::Optional => s.vector_opt(name, n),
        Presence::Required => s.vector(name, n).map(Some),
    }
}

impl Gqa {
    /// Loads and checks layer `il`'s attention tensors (`blk.{il}.attn_*`).
    ///
    /// # Errors
    /// Missing tensors (required ones included), wrong shapes, unsupported types.
    pub fn load(
        s: &WeightStore,
        cfg: &ModelConfig,
        il: usize,
        has: GqaTensors,
    ) -> Result<Gqa, ModelError> {
        let n = |t: &str| format!("blk.{il}.{t}");
        let d = cfg.n_embd;
        let bias = |t: &str, w| vector_as(s, has.bias, &n(t), w);
        let norm = |t: &str| vector_as(s, has.qk_norm, &n(t), cfg.head_dim_k);
        let (wq, wk, wv, wo) = (
            s.linear(&n("attn_q.weight"), cfg.q_dim(), d)?,
            s.linear(&n("attn_k.weight"), cfg.k_dim(), d)?,
            s.linear(&n("attn_v.weight"), cfg.v_dim(), d)?,
            s.linear(&n("attn_output.weight"), d, cfg.n_head * cfg.head_dim_v)?,
        );
        let (bq, bk, bv) = (
            bias("attn_q.bias", cfg.q_dim())?,
            bias("attn_k.bias", cfg.k_dim())?,
            bias("attn_v.bias", cfg.v_dim())?,
        );
        let qk_norm = match (norm("attn_q_norm.weight")?, norm("attn_k_norm.weight")?) {
            (Some(q), Some(k)) => Some((q, k)),
            _ => None,
        };
        let sinks = vector_as(s, has.sinks, &n("attn_sinks.weight"), cfg.n_head)?;
        Ok(Gqa {
            wq,
            wk,
            wv,
            wo,
            bq,
            bk,
            bv,
            qk_norm,
            sinks,
        })
    }

    /// The projection matrices, read for every token.
    pub fn weights(&self) -> [&Linear; 4] {
        [&self.wq, &self.wk, &self.wv, &self.wo]
    }

    /// Attention of the normalized rows `h` (`[n, n_embd]`, the rows of every sequence in
    /// `segs`), storing this step's keys and values in each sequence's cache, projected into
    /// `out` (`[n, n_embd]`). Projections run over all rows at once; positions, caches and
    /// attention are per sequence.
    pub(crate) fn forward(
        &self,
        s: &WeightStore,
        p: GqaStep,
        h: &[f32],
        segs: &mut [Seg],
        out: &mut [f32],
    ) {
        let (c, il, tr) = (p.cfg, p.il, p.trace);
        let n = h.len() / c.n_embd;
        let mut q = vec![0.0; n * c.q_dim()]; // [n, n_head, head_dim_k]
        let mut k = vec![0.0; n * c.k_dim()]; // [n, n_head_kv, head_dim_k]
        let mut v = vec![0.0; n * c.v_dim()]; // [n, n_head_kv, head_dim_v]
        s.matmul_many(
            &[&self.wq, &self.wk, &self.wv],
            h,
            n,
            &mut [&mut q, &mut k, &mut v],
        );
        for (t, bias) in [(&mut q, &self.bq), (&mut k, &self.bk), (&mut v, &self.bv)] {
            if let Some(bias) = bias {
                add_bias(t, bias);
            }
        }
        if let Some((qn, kn)) = &self.qk_norm {
            rms_norm_inplace(&mut q, qn, c.rms_eps);
            rms_norm_inplace(&mut k, kn, c.rms_eps);
            tr.at("Qcur_normed", il, &q);
        }
        for seg in segs.iter() {
            let (qs, ks) = (seg.rows.start * c.q_dim(), seg.rows.start * c.k_dim());
            let qseg = &mut q[qs..qs + seg.len() * c.q_dim()]; // [len, n_head, head_dim_k]
            p.rope.apply(qseg, seg.len(), seg.pos0);
            let kseg = &mut k[ks..ks + seg.len() * c.k_dim()]; // [len, n_head_kv, head_dim_k]
            p.rope.apply(kseg, seg.len(), seg.pos0);
        }
        tr.at("Qcur", il, &q);
        tr.at("Kcur", il, &k);
        tr.at("Vcur", il, &v);
        let mut attn = vec![0.0; n * c.n_head * c.head_dim_v]; // [n, n_head, head_dim_v]
        let params = AttnParams {
            window: p.window,
            ..AttnParams::causal(c, 0)
        };
        let sinks = self.sinks.as_deref();
        attend_cached(il, segs, [&q, &k, &v], params, sinks, &mut attn);
        tr.at("kqv_out", il, &attn);
        s.matmul(&self.wo, &attn, n, out); // [n, n_embd]
        tr.at("attn_out", il, out);
    }
}

/// Stores each sequence's new keys and values (rows of `qkv[1]`, `qkv[2]`) in its cache and runs
/// causal attention of its queries (rows of `qkv[0]`) over that cache, into its rows of `out`
/// (`[n, n_head, head_dim_v]`). The cache's precision chooses the kernel: f16 caches get
/// llama.cpp's rounding steps, all sequences in one parallel region; f32 caches exact f32.
fn attend_cached(
    il: usize,
    segs: &mut [Seg],
    qkv: [&[f32]; 3],
    p: AttnParams,
    sinks: Option<&[f32]>,
    out: &mut [f32],
) {
    let [q, k, v] = qkv;
    let (qw, kw) = (p.n_head * p.head_dim_k, p.n_head_kv * p.head_dim_k);
    let (vw, ow) = (p.n_head_kv * p.head_dim_v, p.n_head * p.head_dim_v);
    for seg in segs.iter_mut() {
        let r = seg.rows.clone();
        seg.cache.store(
            il,
            &k[r.start * kw..r.end * kw],
            &v[r.start * vw..r.end * vw],
        );
    }
    if segs.iter().all(|s| s.cache.is_f16()) {
        let views: Vec<KvView> = segs
            .iter()
            .map(|s| f16_view(il, s, s.rows.clone()))
            .collect();
        attention_f16_seqs(q, &views, p, sinks, out);
        return;
    }
    for seg in segs.iter() {
        let r = seg.rows.clone();
        let qs = &q[r.start * qw..r.end * qw]; // [len, n_head, head_dim_k]
        let o = &mut out[r.start * ow..r.end * ow]; // [len, n_head, head_dim_v]
        if seg.cache.is_f16() {
            attention_f16_seqs(qs, &[f16_view(il, seg, 0..r.len())], p, sinks, o);
        } else {
            let (kc, vc) = seg.cache.layer(il, seg.pos0 + r.len()); // [pos0 + len, n_head_kv, dim]
            let p = AttnParams {
                pos0: seg.pos0,
                ..p
            };
            attention_sinks(qs, kc, vc, p, sinks, o);
        }
    }
}

/// Layer `il` of a sequence's f16 cache up to its last new token, queried by rows `rows`.
fn f16_view<'a>(il: usize, seg: &'a Seg, rows: std::ops::Range<usize>) -> KvView<'a> {
    let (k, v) = seg.cache.layer_f16(il, seg.pos0 + seg.len()); // [pos0 + len, n_head_kv, dim]
    KvView {
        k,
        v,
        rows,
        pos0: seg.pos0,
    }
}
