//! DeepSeek-V4 attention: one K=V head (MQA) over a sliding window plus, per layer kind, the
//! compressed entries (HCA: every closed window; CSA: the lightning indexer's top-k), per-head
//! sinks, RoPE on a head's trailing slice with the output rotated back by the query position,
//! and a grouped low-rank output projection.

use baicai_kernels::attention::softmax_inplace as softmax;
use baicai_kernels::{matmul_batch, MatJob};

use super::cache::{RowLayout, Rows};
use super::compress::{Compressor, Indexer};
use super::{AttnKind, Deepseek4, LayerLoader, V4Config};
use crate::blocks::moe::top_k;
use crate::blocks::norm::rms_norm;
use crate::blocks::ops::dot;
use crate::blocks::rope::Rope;
use crate::decoder::Seg;
use crate::error::ModelError;
use crate::weights::Linear;

/// One layer's attention weights.
pub(super) struct Attn {
    /// `[q_lora_rank, D]`.
    pub(super) q_a: Linear,
    q_a_norm: Vec<f32>,
    /// `[n_head · head_dim, q_lora_rank]`.
    pub(super) q_b: Linear,
    /// `[head_dim, D]`: the window key (K = V).
    pub(super) kv: Linear,
    kv_norm: Vec<f32>,
    /// `o_a_proj`, one `[o_lora_rank, H·d/g]` block per group.
    pub(super) o_a: Vec<Linear>,
    /// `[D, g · o_lora_rank]`.
    pub(super) o_b: Linear,
    sinks: Vec<f32>,
    pub(super) comp: Option<Compressor>,
    pub(super) indexer: Option<Indexer>,
}

impl LayerLoader<'_> {
    /// Layer `il`'s attention: its compressor and indexer (by kind), projections and sinks.
    pub(super) fn attn(&self) -> Result<Attn, ModelError> {
        let (s, v4, dm) = (self.s, self.v4, self.cfg.n_embd);
        let (nh, hd) = (self.cfg.n_head, v4.head_dim);
        let (comp, indexer) = match v4.kinds[self.il].0 {
            AttnKind::Sliding => (None, None),
            AttnKind::Hca => (Some(self.compressor("attn_compressor", hd, false)?), None),
            AttnKind::Csa => (
                Some(self.compressor("attn_compressor", hd, true)?),
                Some(self.indexer()?),
            ),
        };
        let (g, rl) = (v4.o_groups, v4.o_lora_rank);
        let o_a_all = s.linear(&self.name("attn_output_a.weight"), g * rl, nh * hd / g)?;
        Ok(Attn {
            q_a: s.linear(&self.name("attn_q_a.weight"), v4.q_lora_rank, dm)?,
            q_a_norm: s.vector(&self.name("attn_q_a_norm.weight"), v4.q_lora_rank)?,
            q_b: s.linear(&self.name("attn_q_b.weight"), nh * hd, v4.q_lora_rank)?,
            kv: s.linear(&self.name("attn_kv.weight"), hd, dm)?,
            kv_norm: s.vector(&self.name("attn_kv_a_norm.weight"), hd)?,
            o_a: (0..g).map(|gi| o_a_all.rows_slice(gi * rl, rl)).collect(),
            o_b: s.linear(&self.name("attn_output_b.weight"), dm, g * rl)?,
            sinks: s.vector(&self.name("attn_sinks.weight"), nh)?,
            comp,
            indexer,
        })
    }
}

/// A step's projections of every token of one layer.
pub(super) struct Projected {
    /// `[n, n_head, head_dim]`: each head RMS-normalized (no weight), its RoPE slice rotated.
    q: Vec<f32>,
    /// `[n, head_dim]`: the window key (K = V), normalized and rotated.
    pub(super) kv: Vec<f32>,
    /// `[n, pw]` each: the compressor's kv and gate projections (`pw` 0 without a compressor).
    pub(super) ck: Vec<f32>,
    pub(super) cg: Vec<f32>,
    pub(super) pw: usize,
    /// `[n, ipw]` each: the indexer compressor's kv and gate projections.
    pub(super) ik: Vec<f32>,
    pub(super) ig: Vec<f32>,
    pub(super) ipw: usize,
    /// `[n, index_n_heads, index_head_dim]`: the indexer's queries, rotated by the compress RoPE.
    iq: Vec<f32>,
    /// `[n, index_n_heads]`: the indexer's head weights.
    iw: Vec<f32>,
    /// `index_n_heads` (0 without an indexer).
    ih: usize,
}

impl Deepseek4 {
    /// Attention of layer `il` over the normalized block input `h` (`[n, D]`), storing this
    /// step's rows in each sequence's cache; writes `out` (`[n, D]`).
    pub(super) fn attention(
        &self,
        il: usize,
        h: &[f32],
        tokens_pos: &[usize],
        segs: &mut [Seg],
        out: &mut [f32],
    ) {
        let (c, v) = (&self.cfg, &self.v4);
        let n = h.len() / c.n_embd;
        let p = self.project(il, h, tokens_pos);
        let mut o = vec![0.0; n * c.n_head * v.head_dim]; // [n, n_head, head_dim]
        for seg in segs.iter_mut() {
            self.store_step(il, seg, &p);
            self.attend_seq(il, seg, &p, &mut o);
        }
        self.output_projection(il, &o, out);
    }

    /// Every token's projections at once: queries through the low-rank `q_a`/`q_b`, the window
    /// key, the compressors' raw projections and the indexer's queries and head weights.
    fn project(&self, il: usize, h: &[f32], tokens_pos: &[usize]) -> Projected {
        let (c, v, s) = (&self.cfg, &self.v4, &self.store);
        let a = &self.layers[il].attn;
        let n = h.len() / c.n_embd;
        let (nh, hd) = (c.n_head, v.head_dim);
        let ix = a.indexer.as_ref();
        let pw = a.comp.as_ref().map_or(0, |cp| cp.kv.rows);
        let ipw = ix.map_or(0, |x| x.comp.kv.rows);
        let ih = ix.map_or(0, |x| x.proj.rows);
        let mut p = Projected {
            q: vec![0.0; n * nh * hd], // [n, n_head, head_dim]
            kv: vec![0.0; n * hd],     // [n, head_dim]
            ck: vec![0.0; n * pw],     // [n, pw]
            cg: vec![0.0; n * pw],     // [n, pw]
            pw,
            ik: vec![0.0; n * ipw], // [n, ipw]
            ig: vec![0.0; n * ipw], // [n, ipw]
            ipw,
            iq: vec![0.0; n * ih * v.index.head_dim], // [n, index_n_heads, index_head_dim]
            iw: vec![0.0; n * ih],                    // [n, index_n_heads]
            ih,
        };
        let mut qa = vec![0.0; n * v.q_lora_rank]; // [n, q_lora_rank]
        let mut kv = vec![0.0; n * hd]; // [n, head_dim]: before its norm
        {
            let mut ws: Vec<&Linear> = vec![&a.q_a, &a.kv];
            let mut outs: Vec<&mut [f32]> = vec![&mut qa[..], &mut kv[..]];
            if let Some(cp) = &a.comp {
                ws.extend([&cp.kv, &cp.gate]);
                outs.extend([&mut p.ck[..], &mut p.cg[..]]);
            }
            if let Some(x) = ix {
                ws.extend([&x.comp.kv, &x.comp.gate, &x.proj]);
                outs.extend([&mut p.ik[..], &mut p.ig[..], &mut p.iw[..]]);
            }
            s.matmul_many(&ws, h, n, &mut outs);
        }
        let mut q_res = vec![0.0; qa.len()]; // [n, q_lora_rank]
        rms_norm(&qa, &a.q_a_norm, c.rms_eps, &mut q_res);
        match ix {
            Some(x) => s.matmul_many(&[&a.q_b, &x.q_b], &q_res, n, &mut [&mut p.q, &mut p.iq]),
            None => s.matmul(&a.q_b, &q_res, n, &mut p.q),
        }
        rms_norm(&kv, &a.kv_norm, c.rms_eps, &mut p.kv);
        self.rotate(il, &mut p, tokens_pos);
        p
    }

    /// Normalizes each query head and rotates the RoPE slices of the queries, the window keys
    /// and the indexer's queries (the latter always by the compress RoPE).
    fn rotate(&self, il: usize, p: &mut Projected, tokens_pos: &[usize]) {
        let (nh, hd, r, ic) = (
            self.cfg.n_head,
            self.v4.head_dim,
            self.v4.rope_dim,
            self.v4.index.head_dim,
        );
        let rope = self.rope(il);
        let ones = vec![1.0; hd];
        for (t, qt) in p.q.chunks_exact_mut(nh * hd).enumerate() {
            for head in qt.chunks_exact_mut(hd) {
                let x = head.to_vec(); // [head_dim]
                rms_norm(&x, &ones, self.cfg.rms_eps, head);
                rope.rotate(&mut head[hd - r..], tokens_pos[t], false);
            }
        }
        for (t, row) in p.kv.chunks_exact_mut(hd).enumerate() {
            rope.rotate(&mut row[hd - r..], tokens_pos[t], false);
        }
        if p.ih > 0 {
            for (t, qt) in p.iq.chunks_exact_mut(p.ih * ic).enumerate() {
                for head in qt.chunks_exact_mut(ic) {
                    self.rope_compress
                        .rotate(&mut head[ic - r..], tokens_pos[t], false);
                }
            }
        }
    }

    /// Attention of each of sequence `seg`'s tokens (its rows already stored) into `o`
    /// (`[n, n_head, head_dim]`, the whole step): its window, then its entries. A lone token
    /// (decode) splits its heads over the threads; several tokens run in parallel.
    fn attend_seq(&self, il: usize, seg: &Seg, p: &Projected, o: &mut [f32]) {
        let (c, v) = (&self.cfg, &self.v4);
        let (nh, hd) = (c.n_head, v.head_dim);
        let (kind, m) = v.kinds[il];
        let lay = RowLayout::new(v);
        let (rows, p0) = (seg.rows.clone(), seg.pos0);
        let sa = SeqAttention {
            rows: Rows::of(seg.cache, il, p0 + rows.len(), lay.width),
            lay,
            v,
            kind,
            m,
            q: &p.q,
            nh,
            indexer: self.layers[il]
                .attn
                .indexer
                .as_ref()
                .map(|_| (&p.iq[..], &p.iw[..], p.ih)),
            sinks: &self.layers[il].attn.sinks,
            rope: self.rope(il),
        };
        let ot = &mut o[rows.start * nh * hd..rows.end * nh * hd]; // [len, n_head, head_dim]
        let threads = rayon::current_num_threads();
        if rows.len() < threads {
            let group = nh.div_ceil(threads).max(1);
            for (i, oi) in ot.chunks_exact_mut(nh * hd).enumerate() {
                let (t, p) = (rows.start + i, p0 + i);
                let keys = sa.keys(t, p); // [n_keys, head_dim]
                baicai_kernels::for_each_chunk_mut(oi, group * hd, |g, o| {
                    sa.attend(t, p, &keys, g * group, o)
                });
            }
        } else {
            baicai_kernels::for_each_chunk_mut(ot, nh * hd, |i, oi| {
                let (t, p) = (rows.start + i, p0 + i);
                sa.attend(t, p, &sa.keys(t, p), 0, oi)
            });
        }
    }

    /// Grouped output projection of the heads `o` (`[n, n_head, head_dim]`): each group of
    /// heads to `o_lora_rank` (`o_a`, one batch of matmuls), then `o_b`; writes `out` (`[n, D]`).
    fn output_projection(&self, il: usize, o: &[f32], out: &mut [f32]) {
        let a = &self.layers[il].attn;
        let (g, rl) = (self.v4.o_groups, self.v4.o_lora_rank);
        let nhd = self.cfg.n_head * self.v4.head_dim;
        let n = o.len() / nhd;
        let gin = nhd / g;
        let inputs: Vec<Vec<f32>> = (0..g)
            .map(|gi| {
                let mut x = vec![0.0; n * gin]; // [n, H·d/g]
                for t in 0..n {
                    x[t * gin..(t + 1) * gin]
                        .copy_from_slice(&o[t * nhd + gi * gin..t * nhd + (gi + 1) * gin]);
                }
                x
            })
            .collect();
        let mut zs: Vec<Vec<f32>> = vec![vec![0.0; n * rl]; g]; // [n, o_lora_rank] each
        let mut jobs: Vec<MatJob> = (a.o_a.iter().zip(&inputs).zip(&mut zs))
            .map(|((w, x), z)| MatJob {
                w: w.weight(),
                x,
                n_tokens: n,
                out: z,
            })
            .collect();
        matmul_batch(&mut jobs);
        drop(jobs);
        let mut z = vec![0.0; n * g * rl]; // [n, g·o_lora_rank]
        for (gi, zg) in zs.iter().enumerate() {
            for t in 0..n {
                z[t * g * rl + gi * rl..t * g * rl + (gi + 1) * rl]
                    .copy_from_slice(&zg[t * rl..(t + 1) * rl]);
            }
        }
        self.store.matmul(&a.o_b, &z, n, out); // [n, D]
    }
}

/// What one sequence's tokens attend over in one layer: its cache rows (this step's stored),
/// the queries of every token of the step, and the indexer's queries and head weights.
struct SeqAttention<'a> {
    rows: Rows<'a>,
    lay: RowLayout,
    v: &'a V4Config,
    kind: AttnKind,
    /// Compress rate (0 for sliding layers).
    m: usize,
    /// `[n, n_head, head_dim]`, normalized and rotated.
    q: &'a [f32],
    nh: usize,
    /// The indexer's queries `[n, heads, head_dim]`, head weights `[n, heads]` and head count.
    indexer: Option<(&'a [f32], &'a [f32], usize)>,
    sinks: &'a [f32],
    rope: &'a Rope,
}

impl SeqAttention<'_> {
    /// Token `t` (at position `p`)'s keys, `[n_keys, head_dim]`: the window `p − W < s ≤ p`,
    /// then the compressed entries it sees (HCA: every closed window; CSA: the indexer's top-k
    /// of them, in window order).
    fn keys(&self, t: usize, p: usize) -> Vec<f32> {
        let (v, lay, hd, m) = (self.v, self.lay, self.v.head_dim, self.m);
        let window = (p + 1).saturating_sub(v.window)..=p;
        let mut keys = vec![0.0; (window.end() + 1 - window.start()) * hd];
        for (j, k) in window.zip(keys.chunks_exact_mut(hd)) {
            self.rows.read_into(j, lay.kv, k);
        }
        if self.kind == AttnKind::Sliding {
            return keys;
        }
        let closed = (p + 1) / m;
        let row_of = |w: usize| (w + 1) * m - 1;
        let chosen: Vec<usize> = match self.indexer {
            None => (0..closed).collect(),
            Some((iq, iw, ih)) => {
                let ic = v.index.head_dim;
                let qi = &iq[t * ih * ic..(t + 1) * ih * ic];
                let wi = &iw[t * ih..(t + 1) * ih];
                let (w_scale, s_scale) = ((ih as f32).powf(-0.5), (ic as f32).powf(-0.5));
                let mut k = vec![0.0; ic];
                let scores: Vec<f32> = (0..closed)
                    .map(|w| {
                        self.rows.read_into(row_of(w), lay.ientry, &mut k);
                        (0..ih)
                            .map(|hh| {
                                dot(&qi[hh * ic..(hh + 1) * ic], &k).max(0.0)
                                    * s_scale
                                    * (wi[hh] * w_scale)
                            })
                            .sum()
                    })
                    .collect();
                let mut sel = top_k(&scores, v.index.top_k.min(closed));
                sel.sort_unstable();
                sel
            }
        };
        let n0 = keys.len();
        keys.resize(n0 + chosen.len() * hd, 0.0);
        for (w, k) in chosen.into_iter().zip(keys[n0..].chunks_exact_mut(hd)) {
            self.rows.read_into(row_of(w), lay.entry, k);
        }
        keys
    }

    /// Heads `h0..` of token `t` over `keys` (K = V) with their sinks, the output's RoPE slice
    /// rotated back by `p`; `out`: `[heads, head_dim]`.
    fn attend(&self, t: usize, p: usize, keys: &[f32], h0: usize, out: &mut [f32]) {
        let (hd, r) = (self.v.head_dim, self.v.rope_dim);
        let n_keys = keys.len() / hd;
        let qt = &self.q[t * self.nh * hd..(t + 1) * self.nh * hd];
        let scale = (hd as f32).powf(-0.5);
        let mut logits = vec![0.0; n_keys + 1];
        for (hh, oh) in (h0..).zip(out.chunks_exact_mut(hd)) {
            let qh = &qt[hh * hd..(hh + 1) * hd];
            for (l, k) in logits.iter_mut().zip(keys.chunks_exact(hd)) {
                *l = dot(qh, k) * scale;
            }
            logits[n_keys] = self.sinks[hh];
            softmax(&mut logits);
            oh.fill(0.0);
            for (k, &pj) in keys.chunks_exact(hd).zip(&logits) {
                for (od, &kd) in oh.iter_mut().zip(k) {
                    *od += pj * kd;
                }
            }
            self.rope.rotate(&mut oh[hd - r..], p, true);
        }
    }
}
