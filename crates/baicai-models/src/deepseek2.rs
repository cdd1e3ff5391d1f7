//! DeepSeek-V2 / V2-Lite / V3 / R1 (`deepseek2`): Multi-head Latent Attention in the absorbed
//! form and DeepSeekMoE (DeepSeek-V2 §2.1–2.2, DeepSeek-V3 §2.1; llama.cpp's `deepseek2.cpp`).
//!
//! The KV cache holds only the normalized latent `c_kv` (`kv_lora_rank` values) and the shared
//! RoPE key (`qk_rope_head_dim` values) per token and layer. Queries are absorbed into the
//! latent space (`q_lat = W_UK^T q_nope`), attention runs over the latents, and `W_UV` expands
//! each head's attended latent afterwards, so keys and values are never decompressed.

use std::sync::Mutex;

use baicai_kernels::{attention, matmul_batch, DType, MatJob};
use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::blocks::ops::dot;
use crate::blocks::rope::{yarn_mscale, Rope, RopeParams};
use crate::config::{MlaConfig, ModelConfig, MoeConfig, RopeStyle, Yarn};
use crate::decoder::{self, Blocks, Ends, Seg};
use crate::error::ModelError;
use crate::indexer::{IndexKeys, Indexer};
use crate::kv::KvCache;
use crate::layers;
use crate::moe::{self, ExpertLoad, Experts};
use crate::weights::{Linear, WeightStore};
use crate::{CausalLm, SeqInput, Trace};

/// How `W_UK` is held for absorption.
enum KAbsorb {
    /// `attn_k_b`: per-head `[kv_lora_rank, qk_nope]` matrices, used as they are.
    Split(Vec<Linear>),
    /// From the older fused `attn_kv_b`: per head, `qk_nope` rows of `kv_lora_rank` values
    /// decoded to f32 at load (absorption needs their transpose).
    Dense(Vec<f32>),
}

struct Attn {
    q_a: Option<(Linear, Vec<f32>)>,
    q: Linear,
    kv_a: Linear,
    kv_a_norm: Vec<f32>,
    k_absorb: KAbsorb,
    /// `W_UV`: per head `[v_head_dim, kv_lora_rank]`.
    v_b: Vec<Linear>,
    wo: Linear,
    /// DeepSeek-V3.2's lightning indexer: attention reads only the cached tokens it selects.
    indexer: Option<Indexer>,
}

enum Ffn {
    Dense {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    Moe {
        router: Linear,
        bias: Option<Vec<f32>>,
        experts: Experts,
        shared: Option<(Linear, Linear, Linear)>,
    },
}

struct Block {
    attn_norm: Vec<f32>,
    attn: Attn,
    ffn_norm: Vec<f32>,
    ffn: Ffn,
}

/// A multi-token-prediction layer, kept for speculative decoding (issue 19 runs it); the
/// forward pass does not, hence no field is read yet.
#[allow(dead_code)]
struct Mtp {
    /// `[n_embd, 2·n_embd]`: projects `[enorm(embedding) | hnorm(hidden)]`.
    eh_proj: Linear,
    enorm: Vec<f32>,
    hnorm: Vec<f32>,
    /// Its own final norm and head, where the file has them (else the trunk's).
    head_norm: Option<Vec<f32>>,
    head: Option<Linear>,
    block: Block,
}

/// YaRN-scaled RoPE over the `dim` values of the rope slice.
fn mla_rope(dim: usize, base: f32, yarn: Option<&Yarn>, style: RopeStyle) -> Rope {
    Rope::new(RopeParams {
        head_dim: dim,
        base,
        linear_factor: 1.0,
        style,
        freq_factors: None,
        yarn,
    })
}

/// The cached latents of one layer, `[pos, kv_lora_rank | qk_rope]`.
#[derive(Clone, Copy)]
enum Latents<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// Absorbed attention over the latent cache, for one token and any number of heads.
#[derive(Clone, Copy)]
struct LatentAttention<'a> {
    rows: Latents<'a>,
    width: usize,
    lora: usize,
    scale: f32,
    /// With an f16 cache, q and the probabilities are rounded to f16 as llama.cpp does.
    half: bool,
}

impl LatentAttention<'_> {
    /// Calls `f` with the attention over the rows a query reads and their count: the first
    /// `len` rows, or only those in `selected` (DeepSeek Sparse Attention), gathered.
    fn with_rows<R>(
        &self,
        selected: Option<&[u32]>,
        len: usize,
        f: impl FnOnce(LatentAttention, usize) -> R,
    ) -> R {
        match selected {
            None => f(*self, len),
            Some(idx) => {
                let rows = Gathered::new(self.rows, self.width, idx);
                f(
                    LatentAttention {
                        rows: rows.latents(),
                        ..*self
                    },
                    idx.len(),
                )
            }
        }
    }

    /// Latent row `j` as f32 (`buf` holds the conversion of an f16 row).
    fn row<'b>(&'b self, j: usize, buf: &'b mut [f32]) -> &'b [f32] {
        let w = self.width;
        match self.rows {
            Latents::F32(r) => &r[j * w..(j + 1) * w],
            Latents::F16(r) => {
                r[j * w..(j + 1) * w].convert_to_f32_slice(buf);
                buf
            }
        }
    }

    /// `q`: `[heads, width]` absorbed queries of one token seeing `len` positions; writes
    /// `out`: `[heads, kv_lora_rank]`. Each head's result depends only on its own query, so it is
    /// the same whether heads are grouped per token (prefill) or run one by one (decode).
    fn attend(&self, q: &[f32], len: usize, out: &mut [f32]) {
        let (w, lora) = (self.width, self.lora);
        let heads = q.len() / w;
        let mut q = q.to_vec(); // [heads, width]
        if self.half {
            attention::round_f16_inplace(&mut q);
        }
        if let Latents::F16(rows) = self.rows {
            // The f16 cache: SIMD kernels that convert each latent row once for all heads.
            let mut sc = vec![0f32; heads * len]; // [heads, len]
            let mut col = vec![0f32; heads];
            for j in 0..len {
                attention::dot_heads_f16(&q, &rows[j * w..(j + 1) * w], &mut col);
                for (h, &v) in col.iter().enumerate() {
                    sc[h * len + j] = v * self.scale;
                }
            }
            for p in sc.chunks_exact_mut(len) {
                attention::softmax_inplace(p);
                attention::round_f16_inplace(p);
            }
            attention::weighted_rows_f16(&sc, len, rows, w, lora, out);
            return;
        }
        let mut buf = vec![0f32; w];
        let mut sc = vec![0f32; heads * len]; // [heads, len]
        for j in 0..len {
            let k = self.row(j, &mut buf);
            for h in 0..heads {
                sc[h * len + j] = dot(&q[h * w..(h + 1) * w], k) * self.scale;
            }
        }
        for p in sc.chunks_exact_mut(len) {
            attention::softmax_inplace(p);
            if self.half {
                attention::round_f16_inplace(p);
            }
        }
        out.fill(0.0);
        for j in 0..len {
            let c = &self.row(j, &mut buf)[..lora];
            for h in 0..heads {
                let p = sc[h * len + j];
                for (o, &cv) in out[h * lora..(h + 1) * lora].iter_mut().zip(c) {
                    *o += p * cv;
                }
            }
        }
    }
}

/// Latent rows copied out of the cache in the order of an index list (the tokens DeepSeek
/// Sparse Attention selected), so attention reads them as a contiguous run.
enum Gathered {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Gathered {
    fn new(rows: Latents, w: usize, idx: &[u32]) -> Gathered {
        fn pick<T: Copy>(rows: &[T], w: usize, idx: &[u32]) -> Vec<T> {
            idx.iter()
                .flat_map(|&j| &rows[j as usize * w..(j as usize + 1) * w])
                .copied()
                .collect()
        }
        match rows {
            Latents::F32(r) => Gathered::F32(pick(r, w, idx)),
            Latents::F16(r) => Gathered::F16(pick(r, w, idx)),
        }
    }

    fn latents(&self) -> Latents<'_> {
        match self {
            Gathered::F32(r) => Latents::F32(r),
            Gathered::F16(r) => Latents::F16(r),
        }
    }
}

/// A DeepSeek-V2/V3/V3.2 model.
pub struct Deepseek2 {
    store: WeightStore,
    cfg: ModelConfig,
    mla: MlaConfig,
    moe: MoeConfig,
    ends: Ends,
    blocks: Vec<Block>,
    /// Multi-token-prediction layers, as the file carries them.
    mtp: Vec<Mtp>,
    /// RoPE of the MLA's rope slice (interleaved pairs, YaRN).
    rope: Rope,
    /// The same frequencies in NeoX pairs, for DeepSeek-V3.2's indexer.
    rope_neox: Rope,
    kq_scale: f32,
    load: Mutex<Vec<ExpertLoad>>,
    trace: Option<Trace>,
}

impl Deepseek2 {
    /// Loads and checks every tensor.
    ///
    /// # Errors
    /// Missing tensors, wrong shapes, unsupported types.
    pub fn load(s: WeightStore, cfg: ModelConfig) -> Result<Deepseek2, ModelError> {
        let mla = cfg
            .mla
            .clone()
            .ok_or_else(|| ModelError::Config("deepseek2 without MLA sizes".into()))?;
        let moe = cfg
            .moe
            .clone()
            .ok_or_else(|| ModelError::Config("deepseek2 without MoE sizes".into()))?;
        let ends = Ends::load(&s, &cfg)?;
        let loader = Loader {
            s: &s,
            cfg: &cfg,
            mla: &mla,
            moe: &moe,
        };
        let blocks = (0..cfg.n_layer)
            .map(|il| loader.block(il))
            .collect::<Result<Vec<_>, _>>()?;
        // The multi-token-prediction layers llama.cpp's converter appends (`blk.N.nextn.*` past
        // the trunk): loaded and kept for speculative decoding; the forward pass does not run
        // them.
        let mtp = (cfg.n_layer..)
            .take_while(|il| s.has(&format!("blk.{il}.nextn.eh_proj.weight")))
            .map(|il| loader.mtp(il))
            .collect::<Result<Vec<_>, _>>()?;
        let mscale = mla
            .yarn
            .as_ref()
            .map_or(1.0, |y| yarn_mscale(y.factor, y.mscale_all_dim));
        let kq_scale = mscale * mscale / (mla.q_head_dim() as f32).sqrt();
        let (rope, base, yarn) = (mla.qk_rope_head_dim, cfg.rope_base, mla.yarn.as_ref());
        Ok(Deepseek2 {
            rope: mla_rope(rope, base, yarn, RopeStyle::Interleaved),
            rope_neox: mla_rope(rope, base, yarn, RopeStyle::Neox),
            load: Mutex::new(vec![ExpertLoad::default(); cfg.n_layer]),
            trace: None,
            store: s,
            kq_scale,
            cfg,
            mla,
            moe,
            ends,
            blocks,
            mtp,
        })
    }
}

/// What loading a layer needs: the tensors and the configuration.
struct Loader<'a> {
    s: &'a WeightStore,
    cfg: &'a ModelConfig,
    mla: &'a MlaConfig,
    moe: &'a MoeConfig,
}

impl Loader<'_> {
    /// Layer `il`'s tensors (`blk.{il}.*`).
    fn block(&self, il: usize) -> Result<Block, ModelError> {
        let (s, cfg) = (self.s, self.cfg);
        let n = |t: &str| format!("blk.{il}.{t}");
        let d = cfg.n_embd;
        Ok(Block {
            attn_norm: s.vector(&n("attn_norm.weight"), d)?,
            attn: self.attn(il)?,
            ffn_norm: s.vector(&n("ffn_norm.weight"), d)?,
            ffn: self.ffn(il)?,
        })
    }

    /// Layer `il`'s Multi-head Latent Attention (and V3.2's indexer).
    fn attn(&self, il: usize) -> Result<Attn, ModelError> {
        let (s, cfg, mla) = (self.s, self.cfg, self.mla);
        let n = |t: &str| format!("blk.{il}.{t}");
        let (d, nh, qd) = (cfg.n_embd, cfg.n_head, mla.q_head_dim());
        let (nope, rope, vd, lora) = (
            mla.qk_nope_head_dim,
            mla.qk_rope_head_dim,
            mla.v_head_dim,
            mla.kv_lora_rank,
        );
        let (q_a, q) = match mla.q_lora_rank {
            Some(r) => (
                Some((
                    s.linear(&n("attn_q_a.weight"), r, d)?,
                    s.vector(&n("attn_q_a_norm.weight"), r)?,
                )),
                s.linear(&n("attn_q_b.weight"), nh * qd, r)?,
            ),
            None => (None, s.linear(&n("attn_q.weight"), nh * qd, d)?),
        };
        let (k_absorb, v_b) = if s.has(&n("attn_k_b.weight")) {
            (
                KAbsorb::Split(s.stacked(&n("attn_k_b.weight"), nh, lora, nope)?),
                s.stacked(&n("attn_v_b.weight"), nh, vd, lora)?,
            )
        } else {
            let kv_b = s.linear(&n("attn_kv_b.weight"), nh * (nope + vd), lora)?;
            let mut dense = vec![0.0; nh * nope * lora]; // [n_head, qk_nope, kv_lora_rank]
            for h in 0..nh {
                for i in 0..nope {
                    let r = h * (nope + vd) + i;
                    s.row(&kv_b, r, &mut dense[(h * nope + i) * lora..][..lora]);
                }
            }
            let v_b = (0..nh)
                .map(|h| kv_b.rows_slice(h * (nope + vd) + nope, vd))
                .collect();
            (KAbsorb::Dense(dense), v_b)
        };
        Ok(Attn {
            q_a,
            q,
            kv_a: s.linear(&n("attn_kv_a_mqa.weight"), lora + rope, d)?,
            kv_a_norm: s.vector(&n("attn_kv_a_norm.weight"), lora)?,
            k_absorb,
            v_b,
            wo: s.linear(&n("attn_output.weight"), d, nh * vd)?,
            indexer: match (mla.indexer, mla.q_lora_rank) {
                (Some(ix), Some(r)) => Some(Indexer::load(s, il, ix, d, r)?),
                // `validate` refuses an indexer without a compressed query.
                _ => None,
            },
        })
    }

    /// Layer `il`'s feed-forward block: dense for the leading layers, else DeepSeekMoE.
    fn ffn(&self, il: usize) -> Result<Ffn, ModelError> {
        let (s, cfg, moe) = (self.s, self.cfg, self.moe);
        let n = |t: &str| format!("blk.{il}.{t}");
        let d = cfg.n_embd;
        if il < moe.first_dense {
            return Ok(Ffn::Dense {
                gate: s.linear(&n("ffn_gate.weight"), cfg.n_ff, d)?,
                up: s.linear(&n("ffn_up.weight"), cfg.n_ff, d)?,
                down: s.linear(&n("ffn_down.weight"), d, cfg.n_ff)?,
            });
        }
        let (ne, ff, w) = (moe.router.n_expert, moe.n_ff_expert, moe.n_ff_shared);
        let shared = if w > 0 {
            Some((
                s.linear(&n("ffn_gate_shexp.weight"), w, d)?,
                s.linear(&n("ffn_up_shexp.weight"), w, d)?,
                s.linear(&n("ffn_down_shexp.weight"), d, w)?,
            ))
        } else {
            None
        };
        Ok(Ffn::Moe {
            router: s.linear(&n("ffn_gate_inp.weight"), ne, d)?,
            bias: s.vector_opt(&n("exp_probs_b.bias"), ne)?,
            experts: Experts::load(s, &format!("blk.{il}"), ne, d, ff)?,
            shared,
        })
    }

    /// The multi-token-prediction layer at `blk.{il}` (DeepSeek-V3 §2.2: the next token's
    /// embedding and the trunk's last hidden state, each normalized, concatenated and projected
    /// by `eh_proj`, then one full decoder layer and the shared head).
    fn mtp(&self, il: usize) -> Result<Mtp, ModelError> {
        let (s, cfg) = (self.s, self.cfg);
        let n = |t: &str| format!("blk.{il}.nextn.{t}");
        let d = cfg.n_embd;
        let head = match s.has(&n("shared_head_head.weight")) {
            true => Some(s.linear(&n("shared_head_head.weight"), cfg.n_vocab, d)?),
            false => None,
        };
        Ok(Mtp {
            eh_proj: s.linear(&n("eh_proj.weight"), d, 2 * d)?,
            enorm: s.vector(&n("enorm.weight"), d)?,
            hnorm: s.vector(&n("hnorm.weight"), d)?,
            head_norm: s.vector_opt(&n("shared_head_norm.weight"), d)?,
            head,
            block: self.block(il)?,
        })
    }
}

impl Blocks for Deepseek2 {
    fn parts(&self) -> (&WeightStore, &Ends, &ModelConfig) {
        (&self.store, &self.ends, &self.cfg)
    }

    fn trace(&self, name: &str, il: usize, x: &[f32]) {
        if let Some(t) = &self.trace {
            t(name, il, x);
        }
    }

    fn attention(&self, il: usize, x: &[f32], segs: &mut [Seg], out: &mut [f32]) {
        let (c, m, b, s) = (&self.cfg, &self.mla, &self.blocks[il].attn, &self.store);
        let n = x.len() / c.n_embd;
        let nh = c.n_head;
        let (nope, rope, vd, lora) = (
            m.qk_nope_head_dim,
            m.qk_rope_head_dim,
            m.v_head_dim,
            m.kv_lora_rank,
        );
        let qd = m.q_head_dim();
        let pos = decoder::positions(segs); // [n]
        let mut h = vec![0.0; x.len()]; // [n, n_embd]
        layers::rms_norm(x, &self.blocks[il].attn_norm, c.rms_eps, &mut h);
        let mut q = vec![0.0; n * nh * qd]; // [n, n_head, q_head_dim]
        let w = lora + rope;
        let mut kv = vec![0.0; n * w]; // [n, kv_lora_rank + qk_rope]
        let ix = b.indexer.as_ref();
        let (ix_h, ix_d) = ix.map_or((0, 0), |ix| (ix.config().n_head, ix.config().head_dim));
        let mut ix_q = vec![0.0; n * ix_h * ix_d]; // [n, index_n_heads, index_head_dim]
        let mut ix_k = vec![0.0; n * ix_d]; // [n, index_head_dim]
        let mut ix_w = vec![0.0; n * ix_h]; // [n, index_n_heads]
        match (&b.q_a, ix) {
            (Some((q_a, q_a_norm)), ix) => {
                let r = q_a.rows;
                let mut qa = vec![0.0; n * r]; // [n, q_lora_rank]
                match ix {
                    Some(ix) => s.matmul_many(
                        &[q_a, &b.kv_a, &ix.k, &ix.proj],
                        &h,
                        n,
                        &mut [&mut qa, &mut kv, &mut ix_k, &mut ix_w],
                    ),
                    None => s.matmul_many(&[q_a, &b.kv_a], &h, n, &mut [&mut qa, &mut kv]),
                }
                let mut qn = vec![0.0; n * r]; // [n, q_lora_rank]
                layers::rms_norm(&qa, q_a_norm, c.rms_eps, &mut qn);
                match ix {
                    Some(ix) => s.matmul_many(&[&b.q, &ix.q_b], &qn, n, &mut [&mut q, &mut ix_q]),
                    None => s.matmul(&b.q, &qn, n, &mut q),
                }
            }
            (None, _) => s.matmul_many(&[&b.q, &b.kv_a], &h, n, &mut [&mut q, &mut kv]),
        }
        if let Some(ix) = ix {
            // Keys: LayerNorm, then RoPE on their first qk_rope values (NeoX pairs); queries
            // likewise per head.
            ix.norm_keys(&mut ix_k);
            for t in 0..n {
                self.rope_neox
                    .rotate(&mut ix_k[t * ix_d..][..rope], pos[t], false);
                for hh in 0..ix_h {
                    self.rope_neox.rotate(
                        &mut ix_q[(t * ix_h + hh) * ix_d..][..rope],
                        pos[t],
                        false,
                    );
                }
            }
        }
        let mut latent = vec![0.0; n * w]; // [n, kv_lora_rank | qk_rope]: what the cache stores
        for t in 0..n {
            let (src, dst) = (&kv[t * w..(t + 1) * w], &mut latent[t * w..(t + 1) * w]);
            layers::rms_norm(&src[..lora], &b.kv_a_norm, c.rms_eps, &mut dst[..lora]);
            dst[lora..].copy_from_slice(&src[lora..]);
            self.rope.rotate(&mut dst[lora..], pos[t], false);
        }
        for seg in segs.iter_mut() {
            let rows = seg.rows.clone();
            seg.cache.store(
                il,
                &latent[rows.start * w..rows.end * w],
                &ix_k[rows.start * ix_d..rows.end * ix_d],
            );
        }
        // Absorbed queries: [n, n_head, kv_lora_rank | qk_rope].
        let mut qa = vec![0.0; n * nh * w];
        for t in 0..n {
            for hh in 0..nh {
                let qh = &mut q[(t * nh + hh) * qd..][..qd];
                self.rope.rotate(&mut qh[nope..], pos[t], false);
                qa[(t * nh + hh) * w + lora..][..rope].copy_from_slice(&qh[nope..]);
            }
        }
        // Each head absorbs its own W_UK; the heads' matmuls share one parallel region.
        let q_nope: Vec<Vec<f32>> = (0..nh)
            .map(|hh| {
                let mut qn = vec![0.0; n * nope]; // [n, qk_nope] of head hh
                for t in 0..n {
                    qn[t * nope..(t + 1) * nope].copy_from_slice(&q[(t * nh + hh) * qd..][..nope]);
                }
                qn
            })
            .collect();
        let mut absorbed: Vec<Vec<f32>> = vec![vec![0.0; n * lora]; nh]; // [n, kv_lora_rank] each
        match &b.k_absorb {
            KAbsorb::Split(wk) => {
                let mut jobs: Vec<MatJob> = wk
                    .iter()
                    .zip(&q_nope)
                    .zip(&mut absorbed)
                    .map(|((w, qn), ql)| MatJob {
                        w: w.weight(),
                        x: qn,
                        n_tokens: n,
                        out: ql,
                    })
                    .collect();
                matmul_batch(&mut jobs);
            }
            KAbsorb::Dense(wk) => {
                for (hh, (qn, ql)) in q_nope.iter().zip(&mut absorbed).enumerate() {
                    for t in 0..n {
                        let o = &mut ql[t * lora..(t + 1) * lora];
                        for i in 0..nope {
                            let qi = qn[t * nope + i];
                            let row = &wk[(hh * nope + i) * lora..][..lora];
                            for (oo, &r) in o.iter_mut().zip(row) {
                                *oo += qi * r;
                            }
                        }
                    }
                }
            }
        }
        for (hh, ql) in absorbed.iter().enumerate() {
            for t in 0..n {
                qa[(t * nh + hh) * w..][..lora].copy_from_slice(&ql[t * lora..(t + 1) * lora]);
            }
        }
        let mut ol = vec![0.0; n * nh * lora]; // [n, n_head, kv_lora_rank]
                                               // Each sequence's latents, including this step's; `seg_of[t]`: the sequence of row t.
        let atts: Vec<LatentAttention> = segs
            .iter()
            .map(|seg| {
                let end = seg.pos0 + seg.len();
                let (half, rows) = if seg.cache.is_f16() {
                    (true, Latents::F16(seg.cache.layer_f16(il, end).0))
                } else {
                    (false, Latents::F32(seg.cache.layer(il, end).0))
                };
                LatentAttention {
                    rows,
                    width: w,
                    lora,
                    scale: self.kq_scale,
                    half,
                }
            })
            .collect();
        let seg_of: Vec<usize> = segs
            .iter()
            .enumerate()
            .flat_map(|(i, s)| std::iter::repeat_n(i, s.len()))
            .collect();
        // DeepSeek Sparse Attention: the cached tokens each query reads (`None`: all it sees).
        let mut sel: Vec<Option<Vec<u32>>> = vec![None; n];
        if let Some(ix) = ix {
            let keys: Vec<IndexKeys> = segs
                .iter()
                .map(|seg| {
                    let end = seg.pos0 + seg.len();
                    match seg.cache.is_f16() {
                        true => IndexKeys::F16(seg.cache.layer_f16(il, end).1),
                        false => IndexKeys::F32(seg.cache.layer(il, end).1),
                    }
                })
                .collect();
            baicai_kernels::for_each_chunk_mut(&mut sel, 1, |t, out| {
                let q = &ix_q[t * ix_h * ix_d..(t + 1) * ix_h * ix_d];
                let w = &ix_w[t * ix_h..(t + 1) * ix_h];
                out[0] = ix.select(q, w, keys[seg_of[t]], pos[t] + 1, n == 1);
            });
            if self.trace.is_some() {
                // `[n, index_topk]`: each token's selected positions, -1 where it keeps all.
                let k = ix.config().top_k;
                let mut rows = vec![-1.0; n * k];
                for (row, s) in rows.chunks_exact_mut(k).zip(&sel) {
                    for (r, &j) in row.iter_mut().zip(s.iter().flatten()) {
                        *r = j as f32;
                    }
                }
                self.trace("top_k", il, &rows);
            }
        }
        let threads = rayon::current_num_threads();
        if n < threads {
            // Decode: per token, heads split evenly over the threads, each thread's heads
            // sharing every latent row it reads (and converts from f16).
            let group = nh.div_ceil(threads).max(1);
            for (t, ot) in ol.chunks_exact_mut(nh * lora).enumerate() {
                let qt = &qa[t * nh * w..(t + 1) * nh * w];
                atts[seg_of[t]].with_rows(sel[t].as_deref(), pos[t] + 1, |att, len| {
                    baicai_kernels::for_each_chunk_mut(ot, group * lora, |g, o| {
                        let h0 = g * group;
                        att.attend(&qt[h0 * w..(h0 + o.len() / lora) * w], len, o)
                    })
                });
            }
        } else {
            // Prefill and batched decode: tokens in parallel, each latent row read once for
            // all heads.
            baicai_kernels::for_each_chunk_mut(&mut ol, nh * lora, |t, o| {
                let qt = &qa[t * nh * w..(t + 1) * nh * w];
                atts[seg_of[t]].with_rows(sel[t].as_deref(), pos[t] + 1, |att, len| {
                    att.attend(qt, len, o)
                })
            });
        }
        drop(atts);
        let mut o = vec![0.0; n * nh * vd]; // [n, n_head, v_head_dim]
        let latents: Vec<Vec<f32>> = (0..nh)
            .map(|hh| {
                let mut lat = vec![0.0; n * lora]; // [n, kv_lora_rank] of head hh
                for t in 0..n {
                    lat[t * lora..(t + 1) * lora]
                        .copy_from_slice(&ol[(t * nh + hh) * lora..][..lora]);
                }
                lat
            })
            .collect();
        let mut expanded: Vec<Vec<f32>> = vec![vec![0.0; n * vd]; nh]; // [n, v_head_dim] each
        let mut jobs: Vec<MatJob> = b
            .v_b
            .iter()
            .zip(&latents)
            .zip(&mut expanded)
            .map(|((w, lat), vh)| MatJob {
                w: w.weight(),
                x: lat,
                n_tokens: n,
                out: vh,
            })
            .collect();
        matmul_batch(&mut jobs);
        drop(jobs);
        for (hh, vh) in expanded.iter().enumerate() {
            for t in 0..n {
                o[(t * nh + hh) * vd..][..vd].copy_from_slice(&vh[t * vd..(t + 1) * vd]);
            }
        }
        s.matmul(&b.wo, &o, n, out); // [n, n_embd]
    }

    fn ffn(&self, il: usize, x: &[f32], out: &mut [f32]) {
        let (c, s) = (&self.cfg, &self.store);
        let n = x.len() / c.n_embd;
        let mut h = vec![0.0; x.len()]; // [n, n_embd]
        layers::rms_norm(x, &self.blocks[il].ffn_norm, c.rms_eps, &mut h);
        let swiglu = |gate: &Linear, up: &Linear, down: &Linear, out: &mut [f32]| {
            let mut g = vec![0.0; n * gate.rows]; // [n, n_ff]
            let mut u = vec![0.0; n * up.rows]; // [n, n_ff]
            s.matmul_many(&[gate, up], &h, n, &mut [&mut g, &mut u]);
            layers::swiglu(&mut g, &u);
            s.matmul(down, &g, n, out); // [n, n_embd]
        };
        match &self.blocks[il].ffn {
            Ffn::Dense { gate, up, down } => swiglu(gate, up, down, out),
            Ffn::Moe {
                router,
                bias,
                experts,
                shared,
            } => {
                let mut load = self.load.lock().ok();
                let layer_load = load.as_mut().map(|l| &mut l[il]);
                let route = |l: &[f32]| moe::route(l, &self.moe.router, bias.as_deref());
                let shared = shared.as_ref().map(|(g, u, d)| [g, u, d]);
                let shared_out = experts.forward(&h, router, route, shared, out, layer_load);
                // Routed sum first, then the shared experts, as the reference adds them.
                if let Some(so) = shared_out {
                    out.iter_mut().zip(&so).for_each(|(o, s)| *o += s);
                }
            }
        }
    }
}

impl CausalLm for Deepseek2 {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn forward_batch(&self, seqs: &mut [SeqInput]) -> Result<Vec<Vec<f32>>, ModelError> {
        decoder::forward(self, seqs)
    }

    fn expert_load(&self) -> Option<Vec<ExpertLoad>> {
        self.load.lock().ok().map(|l| l.clone())
    }

    fn set_trace(&mut self, trace: Option<Trace>) {
        self.trace = trace;
    }

    fn mtp_layers(&self) -> usize {
        self.mtp.len()
    }

    fn new_cache(&self, n_ctx: usize) -> KvCache {
        // The cache's precision follows the weights: F32 checkpoints (run for exactness against
        // the reference) keep an f32 latent; anything lower-precision gets llama.cpp's default
        // f16 cache, which halves its size (DeepSeek-V2-Lite, 32k tokens: 0.95 GiB).
        let w = self.mla.cache_width();
        // DeepSeek-V3.2 keeps each token's indexer key beside its latent.
        let ix = self.mla.indexer.map_or(0, |ix| ix.head_dim);
        if self
            .blocks
            .first()
            .is_some_and(|b| b.attn.kv_a.dtype == DType::F32)
        {
            KvCache::new(self.cfg.n_layer, n_ctx, w, ix)
        } else {
            KvCache::new_f16(self.cfg.n_layer, n_ctx, w, ix)
        }
    }

    fn weight_bytes_per_token(&self) -> u64 {
        // Attention, dense, router and shared weights are read every token; of the routed
        // experts only n_used of n_expert per layer.
        let s = &self.store;
        let mut total = 0u64;
        for b in &self.blocks {
            let a = &b.attn;
            total += s.bytes(&a.q) + s.bytes(&a.kv_a) + s.bytes(&a.wo);
            total += a.v_b.iter().map(|l| s.bytes(l)).sum::<u64>();
            total += a.q_a.as_ref().map_or(0, |(l, _)| s.bytes(l));
            if let KAbsorb::Split(l) = &a.k_absorb {
                total += l.iter().map(|l| s.bytes(l)).sum::<u64>();
            }
            if let Some(ix) = &a.indexer {
                total += s.bytes(&ix.q_b) + s.bytes(&ix.k) + s.bytes(&ix.proj);
            }
            match &b.ffn {
                Ffn::Dense { gate, up, down } => {
                    total += s.bytes(gate) + s.bytes(up) + s.bytes(down)
                }
                Ffn::Moe {
                    router,
                    experts,
                    shared,
                    ..
                } => {
                    total += s.bytes(router);
                    total += experts.bytes_per_expert() * self.moe.router.n_used as u64;
                    if let Some((g, u, d)) = shared {
                        total += s.bytes(g) + s.bytes(u) + s.bytes(d);
                    }
                }
            }
        }
        total + self.ends.bytes_per_token()
    }
}
