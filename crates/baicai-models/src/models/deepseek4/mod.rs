//! DeepSeek-V4 (`deepseek4`; transformers' `DeepseekV4ForCausalLM`, llama.cpp's `deepseek4.cpp`),
//! as transformers 5.25 computes it (fixtures/moe/deepseek-v4/SPEC.md walks through it with line
//! references):
//!
//! - **Manifold-constrained hyper-connections**: the residual is `hc_mult` streams; before each
//!   block a learned projection of all streams gives `pre` (collapse into the block input),
//!   `post` (expand the block output) and `comb` (mix the streams, made doubly stochastic by
//!   Sinkhorn-Knopp).
//! - **Attention**: one K=V head (MQA) over a sliding window, plus, per `layer_types`, compressed
//!   entries: heavily compressed (HCA: one softmax-pooled entry per `m'` tokens, all visible) or
//!   compressed sparse (CSA: overlapping windows of `2m` tokens, a lightning indexer picks
//!   `index_topk` entries per query). Per-head attention sinks, RoPE on the trailing slice of a
//!   head (interleaved pairs), the output rotated back by the query position, a grouped low-rank
//!   output projection.
//! - **MoE**: hash-routed layers (`tid2eid[token]`) and top-k layers with sqrt-softplus scores
//!   (bias for selection only), clamped SwiGLU experts and shared expert.
//!
//! The cache keeps, per token and layer, the window key, the compressed entries a token closes
//! (at its row) and the un-pooled compressor projections a later window still needs; see
//! [`Deepseek4::new_cache`].
//!
//! The files follow the model: `config` (hyper-parameters from GGUF or `config.json`), `hc`
//! (hyper-connections), `attention` (projections, per-token attention, grouped output),
//! `compress` (compressors and the indexer's), `cache` (the cache row a step writes), `moe`
//! (routing and experts); this file holds the weights and the forward pass.

use std::sync::Mutex;

use baicai_kernels::DType;

use super::ArchSpec;
use crate::blocks::moe::ExpertLoad;
use crate::blocks::norm::rms_norm;
use crate::blocks::rope::{Rope, RopeParams};
use crate::config::{Arch, ModelConfig, MoeConfig, RopeStyle, Yarn};
use crate::decoder::{self, Seg};
use crate::error::ModelError;
use crate::kv::KvCache;
use crate::weights::{Linear, WeightStore};
use crate::{CausalLm, SeqInput};

mod attention;
mod cache;
mod compress;
mod config;
mod hc;
mod moe;

use attention::Attn;
use cache::RowLayout;
pub(crate) use config::{canonical_name, config_from_json, place_mtp};
pub use config::{AttnKind, V4Config};
use hc::HyperConnection;
use moe::Moe;

pub(crate) const SPEC: ArchSpec = ArchSpec {
    arch: Arch::Deepseek4,
    gguf: "deepseek4",
    hf: &["deepseek_v4"],
    moe: true,
    rope_gguf: RopeStyle::Interleaved,
    rope_hf: RopeStyle::Interleaved,
    gguf_norm_topk_prob: Some(true),
    build: |s, cfg| Ok(Box::new(Deepseek4::load(s, cfg)?)),
};

/// One block: hyper-connections and norms around attention and the MoE.
struct Layer {
    attn_hc: HyperConnection,
    ffn_hc: HyperConnection,
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    attn: Attn,
    moe: Moe,
}

/// A DeepSeek-V4 model.
pub struct Deepseek4 {
    store: WeightStore,
    cfg: ModelConfig,
    v4: V4Config,
    tok_embd: Linear,
    output: Linear,
    output_norm: Vec<f32>,
    /// `hc_head`: `fn` `[N, N·D]`, `base` `[N]`, `scale`.
    head_hc: (Linear, Vec<f32>, f32),
    layers: Vec<Layer>,
    /// Multi-token-prediction layers, as the file carries them (kept for speculative decoding;
    /// the forward pass does not run them).
    mtp: Vec<Mtp>,
    rope_main: Rope,
    rope_compress: Rope,
    load: Mutex<Vec<ExpertLoad>>,
}

/// A multi-token-prediction layer (llama.cpp's `blk.N.nextn.*` past the trunk): the next
/// token's embedding and the trunk's hidden state, normalized and projected by `eh_proj`, then a
/// full V4 block and the shared head. Kept, not run yet (no field is read).
#[allow(dead_code)]
struct Mtp {
    /// `[D, 2·D]`.
    eh_proj: Linear,
    enorm: Vec<f32>,
    hnorm: Vec<f32>,
    head_norm: Option<Vec<f32>>,
    layer: Layer,
}

/// What loading layer `il` reads: the store, the sizes, and tensor names `blk.{il}.…`.
struct LayerLoader<'a> {
    s: &'a WeightStore,
    cfg: &'a ModelConfig,
    v4: &'a V4Config,
    moe: &'a MoeConfig,
    il: usize,
}

impl LayerLoader<'_> {
    /// Tensor `t` of this layer: `blk.{il}.{t}`.
    fn name(&self, t: &str) -> String {
        format!("blk.{}.{t}", self.il)
    }

    /// The whole block, read in the order the checks report a missing tensor: attention, MoE,
    /// hyper-connections, norms.
    fn layer(&self) -> Result<Layer, ModelError> {
        let dm = self.cfg.n_embd;
        let attn = self.attn()?;
        let moe = self.moe()?;
        Ok(Layer {
            attn_hc: self.hc("hc_attn")?,
            ffn_hc: self.hc("hc_ffn")?,
            attn_norm: self.s.vector(&self.name("attn_norm.weight"), dm)?,
            ffn_norm: self.s.vector(&self.name("ffn_norm.weight"), dm)?,
            attn,
            moe,
        })
    }
}

impl Deepseek4 {
    /// Loads and checks every tensor.
    ///
    /// # Errors
    /// Missing tensors, wrong shapes, unsupported types, hash tables naming experts that do not
    /// exist.
    pub fn load(s: WeightStore, cfg: ModelConfig) -> Result<Deepseek4, ModelError> {
        let v4 = *cfg
            .v4
            .clone()
            .ok_or_else(|| ModelError::Config("deepseek4 without its configuration".into()))?;
        let moe = cfg
            .moe
            .clone()
            .ok_or_else(|| ModelError::Config("deepseek4 without MoE sizes".into()))?;
        let (dm, n) = (cfg.n_embd, v4.hc_mult);
        let layers = (0..cfg.n_layer)
            .map(|il| {
                let (s, cfg, v4, moe) = (&s, &cfg, &v4, &moe);
                LayerLoader {
                    s,
                    cfg,
                    v4,
                    moe,
                    il,
                }
                .layer()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mtp = (cfg.n_layer..v4.kinds.len())
            .take_while(|il| s.has(&format!("blk.{il}.nextn.eh_proj.weight")))
            .map(|il| {
                let (s, cfg, v4, moe) = (&s, &cfg, &v4, &moe);
                let l = LayerLoader {
                    s,
                    cfg,
                    v4,
                    moe,
                    il,
                };
                Ok(Mtp {
                    eh_proj: s.linear(&l.name("nextn.eh_proj.weight"), dm, 2 * dm)?,
                    enorm: s.vector(&l.name("nextn.enorm.weight"), dm)?,
                    hnorm: s.vector(&l.name("nextn.hnorm.weight"), dm)?,
                    head_norm: s.vector_opt(&l.name("nextn.shared_head_norm.weight"), dm)?,
                    layer: l.layer()?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let tok_embd = s.linear("token_embd.weight", cfg.n_vocab, dm)?;
        let output = s.linear("output.weight", cfg.n_vocab, dm)?;
        let head_hc = (
            s.linear("output_hc_fn.weight", n, n * dm)?,
            s.vector("output_hc_base.weight", n)?,
            s.vector("output_hc_scale.weight", 1)?[0],
        );
        let rope = |base: f32, yarn: Option<&Yarn>| {
            Rope::new(RopeParams {
                head_dim: v4.rope_dim,
                base,
                linear_factor: 1.0,
                style: RopeStyle::Interleaved,
                freq_factors: None,
                yarn,
            })
        };
        Ok(Deepseek4 {
            rope_main: rope(cfg.rope_base, None),
            rope_compress: rope(v4.compress_rope_base, v4.compress_yarn.as_ref()),
            output_norm: s.vector("output_norm.weight", dm)?,
            load: Mutex::new(vec![ExpertLoad::default(); cfg.n_layer]),
            tok_embd,
            output,
            head_hc,
            layers,
            mtp,
            store: s,
            cfg,
            v4,
        })
    }

    /// Layer `il`'s RoPE: the main one for sliding layers, the compress one (its own base and
    /// YaRN) for CSA and HCA layers.
    fn rope(&self, il: usize) -> &Rope {
        match self.v4.kinds[il].0 {
            AttnKind::Sliding => &self.rope_main,
            _ => &self.rope_compress,
        }
    }

    /// The streams of every token: its embedding, `N` times (`[n, N·D]`).
    ///
    /// # Errors
    /// [`ModelError::BadToken`] for an id outside the vocabulary.
    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let (d, nn) = (self.cfg.n_embd, self.v4.hc_mult);
        let mut e = vec![0.0; d]; // [D]
        let mut x = vec![0.0; tokens.len() * nn * d]; // [n, N, D]: the streams
        for (&tok, xt) in tokens.iter().zip(x.chunks_exact_mut(nn * d)) {
            if tok as usize >= self.cfg.n_vocab {
                return Err(ModelError::BadToken {
                    id: tok,
                    n_vocab: self.cfg.n_vocab,
                });
            }
            self.store.row(&self.tok_embd, tok as usize, &mut e);
            xt.chunks_exact_mut(d).for_each(|s| s.copy_from_slice(&e));
        }
        Ok(x)
    }

    /// Block `il` on the streams `x` (`[n, N·D]`): attention, then the MoE, each between a
    /// hyper-connection's collapse and expand.
    fn block(&self, il: usize, x: &mut [f32], tokens: &[u32], pos: &[usize], segs: &mut [Seg]) {
        let l = &self.layers[il];
        let n = tokens.len();
        let d = self.cfg.n_embd;
        let mut tmp = vec![0.0; n * d]; // [n, D]: a block's output
        let mut hn = vec![0.0; n * d]; // [n, D]: a block's normalized input
        let w = self.hc_weights(&l.attn_hc, x);
        let collapsed = self.collapse(&w, x); // [n, D]
        rms_norm(&collapsed, &l.attn_norm, self.cfg.rms_eps, &mut hn);
        self.attention(il, &hn, pos, segs, &mut tmp);
        self.expand(&w, x, &tmp);
        let w = self.hc_weights(&l.ffn_hc, x);
        let collapsed = self.collapse(&w, x); // [n, D]
        rms_norm(&collapsed, &l.ffn_norm, self.cfg.rms_eps, &mut hn);
        self.moe(il, &hn, tokens, &mut tmp);
        self.expand(&w, x, &tmp);
    }
}

impl CausalLm for Deepseek4 {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn forward_batch(&self, seqs: &mut [SeqInput]) -> Result<Vec<Vec<f32>>, ModelError> {
        let tokens = decoder::batch_tokens(seqs)?;
        let mut x = self.embed(&tokens)?; // [n, N, D]
        let kinds: Vec<crate::Logits> = seqs.iter().map(|q| q.logits).collect();
        let mut segs = decoder::segments(seqs);
        let pos = decoder::positions(&segs);
        for il in 0..self.cfg.n_layer {
            self.block(il, &mut x, &tokens, &pos, &mut segs);
        }
        let h = self.head_collapse(&x); // [n, D]
        let wanted = decoder::finish_step(&mut segs, kinds);
        Ok(decoder::head(
            &self.store,
            &h,
            &self.output_norm,
            self.cfg.rms_eps,
            &self.output,
            &wanted,
        ))
    }

    fn mtp_layers(&self) -> usize {
        self.mtp.len()
    }

    fn expert_load(&self) -> Option<Vec<ExpertLoad>> {
        self.load.lock().ok().map(|l| l.clone())
    }

    /// Per token and layer: the window key, the compressed entry (and indexer entry) the token
    /// closes, and the compressors' raw projections later windows pool. f32 for F32 weights
    /// (exactness against the reference), f16 otherwise, as llama.cpp's default cache.
    fn new_cache(&self, n_ctx: usize) -> KvCache {
        let w = RowLayout::new(&self.v4).width;
        if self
            .layers
            .first()
            .is_some_and(|l| l.attn.q_a.dtype == DType::F32)
        {
            KvCache::new(self.cfg.n_layer, n_ctx, w, 0)
        } else {
            KvCache::new_f16(self.cfg.n_layer, n_ctx, w, 0)
        }
    }

    fn weight_bytes_per_token(&self) -> u64 {
        let s = &self.store;
        let n_used = self.cfg.moe.as_ref().map_or(0, |m| m.router.n_used) as u64;
        let mut total = 0u64;
        for l in &self.layers {
            let a = &l.attn;
            total += [
                &a.q_a,
                &a.q_b,
                &a.kv,
                &a.o_b,
                &l.attn_hc.proj,
                &l.ffn_hc.proj,
            ]
            .iter()
            .map(|w| s.bytes(w))
            .sum::<u64>();
            total += a.o_a.iter().map(|w| s.bytes(w)).sum::<u64>();
            if let Some(cp) = &a.comp {
                total += s.bytes(&cp.kv) + s.bytes(&cp.gate);
            }
            if let Some(x) = &a.indexer {
                total += s.bytes(&x.comp.kv)
                    + s.bytes(&x.comp.gate)
                    + s.bytes(&x.q_b)
                    + s.bytes(&x.proj);
            }
            total += s.bytes(&l.moe.router);
            total += l.moe.shared.iter().map(|w| s.bytes(w)).sum::<u64>();
            total += l.moe.experts.bytes_per_expert() * n_used;
        }
        let row = self
            .tok_embd
            .dtype
            .row_bytes(self.tok_embd.cols)
            .unwrap_or(0) as u64;
        total + s.bytes(&self.output) + row
    }
}
