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

use std::sync::Mutex;

use baicai_gguf::Gguf;
use baicai_kernels::attention::softmax_inplace as softmax;
use baicai_kernels::{matmul_batch, DType, MatJob};
use half::slice::HalfFloatSliceExt;
use serde_json::Value;

use super::ArchSpec;
use crate::blocks::moe::{sqrt_softplus, top_k, ExpertLoad, Experts};
use crate::blocks::norm::rms_norm;
use crate::blocks::ops::dot;
use crate::blocks::rope::{Rope, RopeParams};
use crate::config::{Arch, IndexerConfig, KeySource, ModelConfig, MoeConfig, RopeStyle, Yarn};
use crate::decoder::{self, Seg};
use crate::error::ModelError;
use crate::kv::KvCache;
use crate::moe::{GroupScore, RouterConfig, Scoring};
use crate::weights::{Linear, WeightStore};
use crate::{CausalLm, SeqInput};

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

/// What a layer's attention reads besides its sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnKind {
    /// The window only.
    Sliding,
    /// Compressed sparse attention: overlapping compressed entries chosen by the indexer.
    Csa,
    /// Heavily compressed attention: every closed compressed entry.
    Hca,
}

/// DeepSeek-V4's hyper-parameters beyond [`ModelConfig`]'s.
#[derive(Debug, Clone, PartialEq)]
pub struct V4Config {
    pub head_dim: usize,
    /// Values of a head that RoPE rotates (its trailing slice).
    pub rope_dim: usize,
    pub q_lora_rank: usize,
    /// `sliding_window`: keys `t - W < s ≤ t` are visible to query `t`.
    pub window: usize,
    /// Per layer: the attention kind and its compress rate (0 for sliding layers).
    pub kinds: Vec<(AttnKind, usize)>,
    /// Per layer: hash routing (`tid2eid`) instead of top-k.
    pub hash: Vec<bool>,
    /// RoPE base of CSA/HCA layers, their compressors and the indexer.
    pub compress_rope_base: f32,
    /// YaRN of the compress RoPE (transformers applies no cos/sin magnitude change).
    pub compress_yarn: Option<Yarn>,
    pub hc_mult: usize,
    pub hc_sinkhorn_iters: usize,
    pub hc_eps: f32,
    pub o_groups: usize,
    pub o_lora_rank: usize,
    pub index: IndexerConfig,
    /// Clamp of the routed and shared experts' gate (above) and up (both sides) projections.
    pub swiglu_limit: f32,
}

/// A bad value, named as the file spells its key.
fn bad(keys: &KeySource, gguf: &str, hf: &str, value: impl ToString, rule: &str) -> ModelError {
    let key = match keys {
        KeySource::Gguf { arch, .. } => format!("{arch}.{gguf}"),
        KeySource::Hf(_) => hf.to_string(),
    };
    ModelError::BadValue {
        key,
        value: value.to_string(),
        rule: rule.to_string(),
    }
}

impl V4Config {
    /// Reads the `deepseek4.*` keys llama.cpp's converter writes; a layer compresses when its
    /// ratio is nonzero or it has compressor tensors, and is CSA when it has indexer tensors
    /// (llama.cpp: ratio 4), HCA otherwise.
    ///
    /// # Errors
    /// Missing or ill-typed keys.
    pub fn from_gguf(g: &Gguf, arch: &str) -> Result<V4Config, ModelError> {
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| -> Result<usize, ModelError> { Ok(g.require_u64(&key(k))? as usize) };
        let f =
            |k: &str, d: f32| -> Result<f32, ModelError> { Ok(g.get_f32(&key(k))?.unwrap_or(d)) };
        let n_layer = u("block_count")?;
        let ratios = u64_array(g, &key("attention.compress_ratios"))?;
        let kinds = ratios
            .iter()
            .enumerate()
            .map(|(il, &r)| {
                // A layer with compressor tensors compresses, whatever its ratio says (a ratio
                // of 0 there is then refused by `validate`).
                let has = |t: &str| g.tensor(&format!("blk.{il}.{t}")).is_some();
                let compresses = r != 0 || has("attn_compressor_kv.weight");
                let kind = match (compresses, has("indexer.attn_q_b.weight")) {
                    (false, _) => AttnKind::Sliding,
                    (true, true) => AttnKind::Csa,
                    (true, false) => AttnKind::Hca,
                };
                (kind, r as usize)
            })
            .collect();
        let n_hash = g.get_u64(&key("hash_layer_count"))?.unwrap_or(0) as usize;
        let compress_yarn = match g.get_str(&key("rope.scaling.type"))? {
            Some("yarn") => Some(Yarn {
                factor: g.require_f32(&key("rope.scaling.factor"))?,
                original_context: u("rope.scaling.original_context_length")?,
                beta_fast: f("rope.scaling.yarn_beta_fast", 32.0)?,
                beta_slow: f("rope.scaling.yarn_beta_slow", 1.0)?,
                mscale: 0.0,
                mscale_all_dim: 0.0,
            }),
            _ => None,
        };
        let limits = f32_array(g, &key("swiglu_clamp_exp"))?;
        Ok(V4Config {
            head_dim: u("attention.key_length")?,
            rope_dim: u("rope.dimension_count")?,
            q_lora_rank: u("attention.q_lora_rank")?,
            window: u("attention.sliding_window")?,
            kinds,
            hash: (0..n_layer).map(|il| il < n_hash).collect(),
            compress_rope_base: f("attention.compress_rope_freq_base", 160_000.0)?,
            compress_yarn,
            hc_mult: u("hyper_connection.count")?,
            hc_sinkhorn_iters: u("hyper_connection.sinkhorn_iterations")?,
            hc_eps: f("hyper_connection.epsilon", 1e-6)?,
            o_groups: u("attention.output_group_count")?,
            o_lora_rank: u("attention.output_lora_rank")?,
            index: IndexerConfig {
                n_head: u("attention.indexer.head_count")?,
                head_dim: u("attention.indexer.key_length")?,
                top_k: u("attention.indexer.top_k")?,
            },
            swiglu_limit: limits.first().copied().unwrap_or(10.0),
        })
    }

    /// Checks every value (see [`ModelConfig::validate`]).
    ///
    /// # Errors
    /// [`ModelError::BadValue`] naming the first key whose value breaks a rule.
    pub fn validate(&self, c: &ModelConfig, keys: &KeySource) -> Result<(), ModelError> {
        let at_least_1 = "must be at least 1";
        if self.kinds.len() != c.n_layer || self.hash.len() != c.n_layer {
            let rule = format!("has {} entries for {} layers", self.kinds.len(), c.n_layer);
            return Err(bad(
                keys,
                "attention.compress_ratios",
                "layer_types",
                self.kinds.len(),
                &rule,
            ));
        }
        for &(kind, rate) in &self.kinds {
            if kind != AttnKind::Sliding && rate == 0 {
                let hf = match kind {
                    AttnKind::Csa => "compress_rates.compressed_sparse_attention",
                    _ => "compress_rates.heavily_compressed_attention",
                };
                return Err(bad(keys, "attention.compress_ratios", hf, 0, at_least_1));
            }
            if rate > c.n_ctx_train {
                let rule = format!("exceeds the context length {}", c.n_ctx_train);
                return Err(bad(
                    keys,
                    "attention.compress_ratios",
                    "compress_rates",
                    rate,
                    &rule,
                ));
            }
        }
        let counts = [
            (self.head_dim, "attention.key_length", "head_dim"),
            (self.q_lora_rank, "attention.q_lora_rank", "q_lora_rank"),
            (self.window, "attention.sliding_window", "sliding_window"),
            (self.hc_mult, "hyper_connection.count", "hc_mult"),
            (
                self.hc_sinkhorn_iters,
                "hyper_connection.sinkhorn_iterations",
                "hc_sinkhorn_iters",
            ),
            (self.o_groups, "attention.output_group_count", "o_groups"),
            (
                self.o_lora_rank,
                "attention.output_lora_rank",
                "o_lora_rank",
            ),
            (
                self.index.n_head,
                "attention.indexer.head_count",
                "index_n_heads",
            ),
            (
                self.index.head_dim,
                "attention.indexer.key_length",
                "index_head_dim",
            ),
            (self.index.top_k, "attention.indexer.top_k", "index_topk"),
        ];
        for (v, g, h) in counts {
            if v == 0 {
                return Err(bad(keys, g, h, v, at_least_1));
            }
            if v > 1 << 24 {
                return Err(bad(keys, g, h, v, "more than 16777216"));
            }
        }
        if self.rope_dim < 2 || !self.rope_dim.is_multiple_of(2) || self.rope_dim > self.head_dim {
            let rule = format!(
                "must be even, at least 2 and at most the head dim {}",
                self.head_dim
            );
            return Err(bad(
                keys,
                "rope.dimension_count",
                "qk_rope_head_dim",
                self.rope_dim,
                &rule,
            ));
        }
        if self.rope_dim > self.index.head_dim {
            let rule = format!("exceeds the indexer head dim {}", self.index.head_dim);
            return Err(bad(
                keys,
                "rope.dimension_count",
                "qk_rope_head_dim",
                self.rope_dim,
                &rule,
            ));
        }
        if !c.n_head.is_multiple_of(self.o_groups) {
            let rule = format!("does not divide the {} heads into equal groups", c.n_head);
            return Err(bad(
                keys,
                "attention.output_group_count",
                "o_groups",
                self.o_groups,
                &rule,
            ));
        }
        if !(self.swiglu_limit.is_finite() && self.swiglu_limit > 0.0) {
            let rule = "must be a finite number above 0";
            return Err(bad(
                keys,
                "swiglu_clamp_exp",
                "swiglu_limit",
                self.swiglu_limit,
                rule,
            ));
        }
        if !(self.hc_eps.is_finite() && self.hc_eps >= 0.0) {
            let rule = "must be a finite number, 0 or more";
            return Err(bad(
                keys,
                "hyper_connection.epsilon",
                "hc_eps",
                self.hc_eps,
                rule,
            ));
        }
        if !(self.compress_rope_base.is_finite() && self.compress_rope_base > 0.0) {
            let (g, h) = ("attention.compress_rope_freq_base", "compress_rope_theta");
            return Err(bad(
                keys,
                g,
                h,
                self.compress_rope_base,
                "must be a finite number above 0",
            ));
        }
        if let Some(y) = &self.compress_yarn {
            if !(y.factor.is_finite() && y.factor > 0.0) || y.original_context == 0 {
                return Err(bad(
                    keys,
                    "rope.scaling.factor",
                    "rope_scaling.factor",
                    y.factor,
                    "must be a finite number above 0 with an original context",
                ));
            }
        }
        let widths = [
            c.n_head.checked_mul(self.head_dim),
            self.hc_mult.checked_mul(c.n_embd),
            self.index.n_head.checked_mul(self.index.head_dim),
            self.o_groups.checked_mul(self.o_lora_rank),
        ];
        if widths.iter().any(|w| w.is_none_or(|w| w > 1 << 32)) {
            return Err(bad(
                keys,
                "hyper_connection.count",
                "hc_mult",
                self.hc_mult,
                "the widths it implies overflow",
            ));
        }
        Ok(())
    }
}

/// An array of integers in GGUF metadata.
fn u64_array(g: &Gguf, key: &str) -> Result<Vec<u64>, ModelError> {
    let v = g
        .get(key)
        .ok_or_else(|| ModelError::Config(format!("key {key} is missing")))?;
    let arr = v
        .as_array()
        .ok_or_else(|| ModelError::Config(format!("{key}: not an array")))?;
    arr.iter()
        .map(|x| {
            x.to_u64()
                .ok_or_else(|| ModelError::Config(format!("{key}: not unsigned integers")))
        })
        .collect()
}

/// An array of floats in GGUF metadata (empty when absent).
fn f32_array(g: &Gguf, key: &str) -> Result<Vec<f32>, ModelError> {
    let Some(v) = g.get(key) else {
        return Ok(Vec::new());
    };
    let arr = v
        .as_array()
        .ok_or_else(|| ModelError::Config(format!("{key}: not an array")))?;
    arr.iter()
        .map(|x| {
            x.to_f64()
                .map(|f| f as f32)
                .ok_or_else(|| ModelError::Config(format!("{key}: not numbers")))
        })
        .collect()
}

/// `config.json` of a DeepSeek-V4 checkpoint (transformers' keys, with the release's legacy
/// `compress_ratios`, `num_hash_layers`, `qk_rope_head_dim` and `rope_scaling`) into a
/// [`ModelConfig`], validated without the tensors.
///
/// # Errors
/// Keys missing or of the wrong type, values baicai cannot honour, rule violations.
pub(crate) fn config_from_json(
    path: &std::path::Path,
    v: &Value,
) -> Result<ModelConfig, ModelError> {
    let e = |what: String| ModelError::Config(format!("{}: {what}", path.display()));
    let uint = |k: &str, d: Option<u64>| -> Result<usize, ModelError> {
        match v.get(k).filter(|x| !x.is_null()) {
            Some(x) => x
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| e(format!("{k}: expected an unsigned integer, found {x}"))),
            None => d
                .map(|d| d as usize)
                .ok_or_else(|| e(format!("'{k}' missing"))),
        }
    };
    let float = |k: &str, d: f64| -> Result<f32, ModelError> {
        match v.get(k).filter(|x| !x.is_null()) {
            Some(x) => x
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| e(format!("{k}: expected a number, found {x}"))),
            None => Ok(d as f32),
        }
    };
    let n_layer = uint("num_hidden_layers", None)?;
    let head_dim = uint("head_dim", Some(512))?;
    let rope_dim = match v.get("partial_rotary_factor").and_then(Value::as_f64) {
        Some(p) => (head_dim as f64 * p) as usize,
        None => uint("qk_rope_head_dim", Some((head_dim / 8) as u64))?,
    };
    let rates = v.get("compress_rates");
    let rate_of = |k: &str, d: u64| -> Result<usize, ModelError> {
        match rates.and_then(|r| r.get(k)) {
            Some(x) => x.as_u64().map(|x| x as usize).ok_or_else(|| {
                e(format!(
                    "compress_rates.{k}: expected an unsigned integer, found {x}"
                ))
            }),
            None => Ok(d as usize),
        }
    };
    let (csa, hca) = (
        rate_of("compressed_sparse_attention", 4)?,
        rate_of("heavily_compressed_attention", 128)?,
    );
    let kinds: Vec<(AttnKind, usize)> = match (v.get("layer_types").and_then(Value::as_array), v.get("compress_ratios").and_then(Value::as_array)) {
        (Some(types), _) => types
            .iter()
            .enumerate()
            .map(|(il, t)| match t.as_str() {
                Some("sliding_attention") => Ok((AttnKind::Sliding, 0)),
                Some("compressed_sparse_attention") => Ok((AttnKind::Csa, csa)),
                Some("heavily_compressed_attention") => Ok((AttnKind::Hca, hca)),
                _ => Err(e(format!("layer_types[{il}] is {t}: one of sliding_attention, compressed_sparse_attention, heavily_compressed_attention"))),
            })
            .collect::<Result<_, _>>()?,
        // transformers maps the release's per-layer ratios through a fixed table.
        (None, Some(ratios)) => ratios
            .iter()
            .enumerate()
            .map(|(il, r)| match r.as_u64() {
                Some(0) => Ok((AttnKind::Sliding, 0)),
                Some(4) => Ok((AttnKind::Csa, 4)),
                Some(128) => Ok((AttnKind::Hca, 128)),
                _ => Err(e(format!("compress_ratios[{il}] is {r}: 0, 4 or 128 (other rates need layer_types and compress_rates)"))),
            })
            .collect::<Result<_, _>>()?,
        (None, None) => (0..n_layer)
            .map(|il| match (il < 2, il % 2) {
                (true, _) | (false, 0) => (AttnKind::Hca, hca),
                _ => (AttnKind::Csa, csa),
            })
            .collect(),
    };
    let hash: Vec<bool> = match v.get("mlp_layer_types").and_then(Value::as_array) {
        Some(types) => types
            .iter()
            .enumerate()
            .map(|(il, t)| match t.as_str() {
                Some("hash_moe") => Ok(true),
                Some("moe") => Ok(false),
                _ => Err(e(format!("mlp_layer_types[{il}] is {t}: hash_moe or moe"))),
            })
            .collect::<Result<_, _>>()?,
        None => {
            let n_hash = uint("num_hash_layers", Some(3))?;
            (0..n_layer).map(|il| il < n_hash).collect()
        }
    };
    // The compress RoPE's YaRN: `rope_parameters.compress` (transformers 5.x) or the release's
    // `rope_scaling`; transformers gives it no cos/sin magnitude (attention_factor 1).
    let yarn_src = v
        .get("rope_parameters")
        .and_then(|r| r.get("compress"))
        .or_else(|| v.get("rope_scaling"))
        .filter(|r| !r.is_null());
    let compress_yarn = match yarn_src {
        Some(r)
            if matches!(
                r.get("rope_type")
                    .or_else(|| r.get("type"))
                    .and_then(Value::as_str),
                Some("yarn")
            ) =>
        {
            if let Some(a) = r.get("attention_factor").and_then(Value::as_f64) {
                if a != 1.0 {
                    return Err(ModelError::BadValue {
                        key: "rope_parameters.compress.attention_factor".into(),
                        value: a.to_string(),
                        rule: "not supported (baicai applies DeepSeek-V4's 1.0)".into(),
                    });
                }
            }
            let num = |k: &str, d: f64| r.get(k).and_then(Value::as_f64).unwrap_or(d) as f32;
            Some(Yarn {
                factor: num("factor", 1.0),
                original_context: r
                    .get("original_max_position_embeddings")
                    .and_then(Value::as_u64)
                    .unwrap_or(4096) as usize,
                beta_fast: num("beta_fast", 32.0),
                beta_slow: num("beta_slow", 1.0),
                mscale: 0.0,
                mscale_all_dim: 0.0,
            })
        }
        Some(r) => match r
            .get("rope_type")
            .or_else(|| r.get("type"))
            .and_then(Value::as_str)
        {
            None | Some("default") => None,
            Some(other) => {
                return Err(ModelError::BadValue {
                    key: "rope_scaling.type".into(),
                    value: format!("'{other}'"),
                    rule: "not supported for deepseek_v4 (supported: default, yarn)".into(),
                })
            }
        },
        None => None,
    };
    let main_base = v
        .get("rope_parameters")
        .and_then(|r| r.get("main"))
        .and_then(|m| m.get("rope_theta"))
        .and_then(Value::as_f64)
        .map_or(float("rope_theta", 10_000.0), |x| Ok(x as f32))?;
    let scoring = match v
        .get("scoring_func")
        .and_then(Value::as_str)
        .unwrap_or("sqrtsoftplus")
    {
        "sqrtsoftplus" => Scoring::SqrtSoftplus,
        "sigmoid" => Scoring::Sigmoid,
        "softmax" => Scoring::Softmax,
        other => {
            return Err(ModelError::BadValue {
                key: "scoring_func".into(),
                value: format!("'{other}'"),
                rule: "not supported (supported: sqrtsoftplus, sigmoid, softmax)".into(),
            })
        }
    };
    let ff = uint("moe_intermediate_size", Some(2048))?;
    let n_expert = uint("n_routed_experts", Some(256))?;
    let v4 = V4Config {
        head_dim,
        rope_dim,
        q_lora_rank: uint("q_lora_rank", Some(1024))?,
        window: uint("sliding_window", Some(128))?,
        kinds,
        hash,
        compress_rope_base: float("compress_rope_theta", 160_000.0)?,
        compress_yarn,
        hc_mult: uint("hc_mult", Some(4))?,
        hc_sinkhorn_iters: uint("hc_sinkhorn_iters", Some(20))?,
        hc_eps: float("hc_eps", 1e-6)?,
        o_groups: uint("o_groups", Some(8))?,
        o_lora_rank: uint("o_lora_rank", Some(1024))?,
        index: IndexerConfig {
            n_head: uint("index_n_heads", Some(64))?,
            head_dim: uint("index_head_dim", Some(128))?,
            top_k: uint("index_topk", Some(512))?,
        },
        swiglu_limit: float("swiglu_limit", 10.0)?,
    };
    let n_head = uint("num_attention_heads", Some(64))?;
    let cfg = ModelConfig {
        arch: Arch::Deepseek4,
        arch_name: "deepseek_v4".into(),
        n_layer,
        n_embd: uint("hidden_size", Some(4096))?,
        n_head,
        n_head_kv: 1,
        head_dim_k: head_dim,
        head_dim_v: head_dim,
        n_ff: ff,
        n_vocab: uint("vocab_size", Some(129_280))?,
        n_ctx_train: uint("max_position_embeddings", Some(1 << 20))?,
        rms_eps: float("rms_norm_eps", 1e-6)?,
        rope_base: main_base,
        rope_base_swa: main_base,
        rope_linear_factor: 1.0,
        rope_style: RopeStyle::Interleaved,
        sliding_window: Some(v4.window),
        swa_period: 0,
        mla: None,
        moe: Some(MoeConfig {
            router: RouterConfig {
                n_expert,
                n_used: uint("num_experts_per_tok", Some(6))?,
                scoring,
                // transformers' V4 routers always renormalise (`norm_topk_prob` is not read).
                norm_topk_prob: true,
                scaling: float("routed_scaling_factor", 1.5)?,
                n_group: 1,
                topk_group: 1,
                group_score: GroupScore::Max,
            },
            n_ff_shared: ff,
            n_ff_expert: ff,
            first_dense: 0,
        }),
        v4: Some(Box::new(v4)),
    };
    Ok(cfg)
}

/// Checkpoint name → canonical (llama.cpp's GGUF) name, for what transformers' `save_pretrained`
/// writes (`model.layers.N.attn.wq_a.weight`, `head.weight`, …) and DeepSeek's release names
/// (`layers.N.…`, `embed.weight`, `hc_head_fn`); SPEC.md §8 has the table. `None`: unused
/// (the MTP layer, `mtp.*`), and the release's `….scale` companions of FP8 and MXFP4 weights,
/// which the loader consumes with their weight (`hf::quant`).
pub(crate) fn canonical_name(name: &str) -> Option<String> {
    // `.scale`, not the hyper-connections' `hc_*_scale`.
    if name.ends_with(".scale") {
        return None;
    }
    let fixed = match name {
        "model.embed_tokens.weight" | "embed.weight" => "token_embd.weight",
        "head.weight" | "lm_head.weight" => "output.weight",
        "model.norm.weight" | "norm.weight" => "output_norm.weight",
        "model.hc_head.hc_fn" | "hc_head_fn" => "output_hc_fn.weight",
        "model.hc_head.hc_base" | "hc_head_base" => "output_hc_base.weight",
        "model.hc_head.hc_scale" | "hc_head_scale" => "output_hc_scale.weight",
        _ => "",
    };
    if !fixed.is_empty() {
        return Some(fixed.to_string());
    }
    let rest = name
        .strip_prefix("model.layers.")
        .or_else(|| name.strip_prefix("layers."))?;
    let (il, rest) = rest.split_once('.')?;
    let il: usize = il.parse().ok()?;
    let map = |s: &str| Some(format!("blk.{il}.{s}"));
    if let Some(r) = rest.strip_prefix("ffn.experts.") {
        let (e, w) = r.split_once('.')?;
        let kind = match w {
            "w1.weight" => "gate",
            "w3.weight" => "up",
            "w2.weight" => "down",
            _ => return None,
        };
        return map(&format!("ffn_{kind}_exps.{e}.weight"));
    }
    let canon = match rest {
        "hc_attn_fn" => "hc_attn_fn.weight",
        "hc_attn_base" => "hc_attn_base.weight",
        "hc_attn_scale" => "hc_attn_scale.weight",
        "hc_ffn_fn" => "hc_ffn_fn.weight",
        "hc_ffn_base" => "hc_ffn_base.weight",
        "hc_ffn_scale" => "hc_ffn_scale.weight",
        "attn_norm.weight" => "attn_norm.weight",
        "ffn_norm.weight" => "ffn_norm.weight",
        "attn.wq_a.weight" => "attn_q_a.weight",
        "attn.q_norm.weight" => "attn_q_a_norm.weight",
        "attn.wq_b.weight" => "attn_q_b.weight",
        "attn.wkv.weight" => "attn_kv.weight",
        "attn.norm.weight" | "attn.kv_norm.weight" => "attn_kv_a_norm.weight",
        "attn.wo_a.weight" => "attn_output_a.weight",
        "attn.wo_b.weight" => "attn_output_b.weight",
        "attn.attn_sink" => "attn_sinks.weight",
        "attn.compressor.wkv.weight" => "attn_compressor_kv.weight",
        "attn.compressor.wgate.weight" => "attn_compressor_gate.weight",
        "attn.compressor.ape" => "attn_compressor_ape.weight",
        "attn.compressor.norm.weight" => "attn_compressor_norm.weight",
        "attn.indexer.compressor.wkv.weight" => "indexer_compressor_kv.weight",
        "attn.indexer.compressor.wgate.weight" => "indexer_compressor_gate.weight",
        "attn.indexer.compressor.ape" => "indexer_compressor_ape.weight",
        "attn.indexer.compressor.norm.weight" => "indexer_compressor_norm.weight",
        "attn.indexer.wq_b.weight" => "indexer.attn_q_b.weight",
        "attn.indexer.weights_proj.weight" => "indexer.proj.weight",
        "ffn.gate.weight" => "ffn_gate_inp.weight",
        "ffn.gate.bias" => "exp_probs_b.bias",
        "ffn.gate.tid2eid" => "ffn_gate_tid2eid.weight",
        "ffn.shared_experts.w1.weight" => "ffn_gate_shexp.weight",
        "ffn.shared_experts.w3.weight" => "ffn_up_shexp.weight",
        "ffn.shared_experts.w2.weight" => "ffn_down_shexp.weight",
        _ => return None,
    };
    map(canon)
}

/// One hyper-connection: `fn` `[(2+N)·N, N·D]`, `base` `[(2+N)·N]`, `scale` `[3]`.
struct HyperConnection {
    proj: Linear,
    base: Vec<f32>,
    scale: Vec<f32>,
}

/// The mixing weights of one token's streams.
struct HcWeights {
    /// `[N]`: collapse the streams into the block input.
    pre: Vec<f32>,
    /// `[N]`: expand the block output into the streams.
    post: Vec<f32>,
    /// `[N, N]`, doubly stochastic: `x'[k] += Σ_j comb[j][k] · x[j]`.
    comb: Vec<f32>,
}

/// A compressor: per token `kv_proj`/`gate_proj` of `2w` (overlapping, CSA) or `w` (HCA)
/// values, pooled per window with a softmax over positions, then RMSNorm and RoPE.
struct Compressor {
    kv: Linear,
    gate: Linear,
    /// `position_bias` (`ape`): `[m, proj width]`.
    ape: Vec<f32>,
    norm: Vec<f32>,
    /// Width of one entry.
    width: usize,
    /// Ca/Cb halves over windows of `2m` (CSA) rather than `m` (HCA).
    overlap: bool,
}

/// The lightning indexer of a CSA layer.
struct Indexer {
    comp: Compressor,
    q_b: Linear,
    proj: Linear,
}

struct Attn {
    q_a: Linear,
    q_a_norm: Vec<f32>,
    q_b: Linear,
    kv: Linear,
    kv_norm: Vec<f32>,
    /// `o_a_proj`, one `[o_lora_rank, H·d/g]` block per group.
    o_a: Vec<Linear>,
    o_b: Linear,
    sinks: Vec<f32>,
    comp: Option<Compressor>,
    indexer: Option<Indexer>,
}

enum Route {
    /// `tid2eid`: `[n_vocab, n_used]` expert ids per token id.
    Hash(Vec<u32>),
    /// `e_score_correction_bias` for the top-k selection.
    TopK(Vec<f32>),
}

struct Moe {
    router: Linear,
    route: Route,
    experts: Experts,
    shared: [Linear; 3],
}

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
    rope_main: Rope,
    rope_compress: Rope,
    load: Mutex<Vec<ExpertLoad>>,
}

/// Offsets of a cache row (per token and layer): the window key, the compressed entry and the
/// indexer's entry this token closes, the compressor's and the indexer's raw projections.
#[derive(Clone, Copy)]
struct RowLayout {
    kv: usize,
    entry: usize,
    ientry: usize,
    raw: usize,
    iraw: usize,
    width: usize,
}

impl RowLayout {
    fn new(v: &V4Config) -> RowLayout {
        let (d, c) = (v.head_dim, v.index.head_dim);
        let kv = 0;
        let entry = d;
        let ientry = entry + d;
        let raw = ientry + c;
        let iraw = raw + 4 * d; // kv and gate of 2d each (CSA; HCA uses half)
        RowLayout {
            kv,
            entry,
            ientry,
            raw,
            iraw,
            width: iraw + 4 * c,
        }
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
        let moe_cfg = cfg
            .moe
            .clone()
            .ok_or_else(|| ModelError::Config("deepseek4 without MoE sizes".into()))?;
        let (dm, nh, hd, n) = (cfg.n_embd, cfg.n_head, v4.head_dim, v4.hc_mult);
        let hc = |p: &str| -> Result<HyperConnection, ModelError> {
            let m = (2 + n) * n;
            Ok(HyperConnection {
                proj: s.linear(&format!("{p}_fn.weight"), m, n * dm)?,
                base: s.vector(&format!("{p}_base.weight"), m)?,
                scale: s.vector(&format!("{p}_scale.weight"), 3)?,
            })
        };
        let ne = moe_cfg.router.n_expert;
        let ff = moe_cfg.n_ff_expert;
        let k = moe_cfg.router.n_used;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for il in 0..cfg.n_layer {
            let b = |t: &str| format!("blk.{il}.{t}");
            let (kind, rate) = v4.kinds[il];
            let compressor =
                |prefix: &str, width: usize, overlap: bool| -> Result<Compressor, ModelError> {
                    let pw = if overlap { 2 * width } else { width };
                    let ape_l = s.linear(&b(&format!("{prefix}_ape.weight")), rate, pw)?;
                    let mut ape = vec![0.0; rate * pw];
                    for (r, row) in ape.chunks_exact_mut(pw).enumerate() {
                        s.row(&ape_l, r, row);
                    }
                    Ok(Compressor {
                        kv: s.linear(&b(&format!("{prefix}_kv.weight")), pw, dm)?,
                        gate: s.linear(&b(&format!("{prefix}_gate.weight")), pw, dm)?,
                        ape,
                        norm: s.vector(&b(&format!("{prefix}_norm.weight")), width)?,
                        width,
                        overlap,
                    })
                };
            let (comp, indexer) = match kind {
                AttnKind::Sliding => (None, None),
                AttnKind::Hca => (Some(compressor("attn_compressor", hd, false)?), None),
                AttnKind::Csa => {
                    let ix = v4.index;
                    (
                        Some(compressor("attn_compressor", hd, true)?),
                        Some(Indexer {
                            comp: compressor("indexer_compressor", ix.head_dim, true)?,
                            q_b: s.linear(
                                &b("indexer.attn_q_b.weight"),
                                ix.n_head * ix.head_dim,
                                v4.q_lora_rank,
                            )?,
                            proj: s.linear(&b("indexer.proj.weight"), ix.n_head, dm)?,
                        }),
                    )
                }
            };
            let group_in = nh * hd / v4.o_groups;
            let o_a_all = s.linear(
                &b("attn_output_a.weight"),
                v4.o_groups * v4.o_lora_rank,
                group_in,
            )?;
            let attn = Attn {
                q_a: s.linear(&b("attn_q_a.weight"), v4.q_lora_rank, dm)?,
                q_a_norm: s.vector(&b("attn_q_a_norm.weight"), v4.q_lora_rank)?,
                q_b: s.linear(&b("attn_q_b.weight"), nh * hd, v4.q_lora_rank)?,
                kv: s.linear(&b("attn_kv.weight"), hd, dm)?,
                kv_norm: s.vector(&b("attn_kv_a_norm.weight"), hd)?,
                o_a: (0..v4.o_groups)
                    .map(|g| o_a_all.rows_slice(g * v4.o_lora_rank, v4.o_lora_rank))
                    .collect(),
                o_b: s.linear(&b("attn_output_b.weight"), dm, v4.o_groups * v4.o_lora_rank)?,
                sinks: s.vector(&b("attn_sinks.weight"), nh)?,
                comp,
                indexer,
            };
            let route = if v4.hash[il] {
                let name = b("ffn_gate_tid2eid.weight");
                let t = s.linear(&name, cfg.n_vocab, k)?;
                let mut ids = vec![0u32; cfg.n_vocab * k];
                let mut row = vec![0.0; k];
                for tok in 0..cfg.n_vocab {
                    s.row(&t, tok, &mut row);
                    for (j, &x) in row.iter().enumerate() {
                        if !(x >= 0.0 && x.fract() == 0.0 && (x as usize) < ne) {
                            return Err(ModelError::Config(format!(
                                "tensor '{name}': token {tok} routes to expert {x}, outside 0..{ne}"
                            )));
                        }
                        ids[tok * k + j] = x as u32;
                    }
                }
                Route::Hash(ids)
            } else {
                Route::TopK(
                    s.vector_opt(&b("exp_probs_b.bias"), ne)?
                        .unwrap_or_else(|| vec![0.0; ne]),
                )
            };
            let moe = Moe {
                router: s.linear(&b("ffn_gate_inp.weight"), ne, dm)?,
                route,
                experts: Experts::load(&s, &format!("blk.{il}"), ne, dm, ff)?,
                shared: [
                    s.linear(&b("ffn_gate_shexp.weight"), ff, dm)?,
                    s.linear(&b("ffn_up_shexp.weight"), ff, dm)?,
                    s.linear(&b("ffn_down_shexp.weight"), dm, ff)?,
                ],
            };
            layers.push(Layer {
                attn_hc: hc(&b("hc_attn"))?,
                ffn_hc: hc(&b("hc_ffn"))?,
                attn_norm: s.vector(&b("attn_norm.weight"), dm)?,
                ffn_norm: s.vector(&b("ffn_norm.weight"), dm)?,
                attn,
                moe,
            });
        }
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
            store: s,
            cfg,
            v4,
        })
    }

    fn rope(&self, il: usize) -> &Rope {
        match self.v4.kinds[il].0 {
            AttnKind::Sliding => &self.rope_main,
            _ => &self.rope_compress,
        }
    }

    /// The mixing weights of every token's streams (`x`: `[n, N·D]`).
    fn hc_weights(&self, hc: &HyperConnection, x: &[f32]) -> Vec<HcWeights> {
        let nd = self.v4.hc_mult * self.cfg.n_embd;
        let (nn, eps) = (self.v4.hc_mult, self.v4.hc_eps);
        let n_tok = x.len() / nd;
        let m = (2 + nn) * nn;
        let mut f = vec![0.0; x.len()]; // [n, N·D]: unweighted RMSNorm of all streams
        rms_norm(x, &vec![1.0; nd], self.cfg.rms_eps, &mut f);
        let mut y = vec![0.0; n_tok * m]; // [n, (2+N)·N]
        self.store.matmul(&hc.proj, &f, n_tok, &mut y);
        let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
        y.chunks_exact(m)
            .map(|y| {
                let pre = (0..nn)
                    .map(|i| sigmoid(y[i] * hc.scale[0] + hc.base[i]) + eps)
                    .collect();
                let post = (0..nn)
                    .map(|i| 2.0 * sigmoid(y[nn + i] * hc.scale[1] + hc.base[nn + i]))
                    .collect();
                let mut comb: Vec<f32> = (0..nn * nn)
                    .map(|i| y[2 * nn + i] * hc.scale[2] + hc.base[2 * nn + i])
                    .collect();
                for row in comb.chunks_exact_mut(nn) {
                    softmax(row);
                    row.iter_mut().for_each(|v| *v += eps);
                }
                // Sinkhorn-Knopp, columns first and last (transformers' order).
                let cols = |c: &mut [f32]| {
                    for j in 0..nn {
                        let s: f32 = (0..nn).map(|i| c[i * nn + j]).sum::<f32>() + eps;
                        (0..nn).for_each(|i| c[i * nn + j] /= s);
                    }
                };
                cols(&mut comb);
                for _ in 1..self.v4.hc_sinkhorn_iters {
                    for row in comb.chunks_exact_mut(nn) {
                        let s: f32 = row.iter().sum::<f32>() + eps;
                        row.iter_mut().for_each(|v| *v /= s);
                    }
                    cols(&mut comb);
                }
                HcWeights { pre, post, comb }
            })
            .collect()
    }

    /// Collapses each token's streams with `pre` into `[n, D]`.
    fn collapse(&self, w: &[HcWeights], x: &[f32]) -> Vec<f32> {
        let d = self.cfg.n_embd;
        let nn = self.v4.hc_mult;
        let mut out = vec![0.0; w.len() * d];
        for (t, (o, hw)) in out.chunks_exact_mut(d).zip(w).enumerate() {
            let xt = &x[t * nn * d..(t + 1) * nn * d];
            for (i, od) in o.iter_mut().enumerate() {
                *od = (0..nn).map(|s| hw.pre[s] * xt[s * d + i]).sum();
            }
        }
        out
    }

    /// `x'[k] = post[k] · block + Σ_j comb[j][k] · x[j]`, per token.
    fn expand(&self, w: &[HcWeights], x: &mut [f32], block: &[f32]) {
        let d = self.cfg.n_embd;
        let nn = self.v4.hc_mult;
        for (t, hw) in w.iter().enumerate() {
            let xt = &mut x[t * nn * d..(t + 1) * nn * d];
            let old = xt.to_vec();
            let bt = &block[t * d..(t + 1) * d];
            for k in 0..nn {
                for i in 0..d {
                    let mixed: f32 = (0..nn).map(|j| hw.comb[j * nn + k] * old[j * d + i]).sum();
                    xt[k * d + i] = hw.post[k] * bt[i] + mixed;
                }
            }
        }
    }
}

/// Rounds values to f16 precision in place.
fn round_f16(x: &mut [f32]) {
    x.iter_mut()
        .for_each(|v| *v = half::f16::from_f32(*v).to_f32());
}

/// A sequence's cache rows of one layer, `[positions, row width]`, read part by part (an f16
/// cache converts only what is read).
#[derive(Clone, Copy)]
enum Rows<'a> {
    F32(&'a [f32], usize),
    F16(&'a [half::f16], usize),
}

impl<'a> Rows<'a> {
    fn of(cache: &'a KvCache, il: usize, end: usize, width: usize) -> Rows<'a> {
        match cache.is_f16() {
            true => Rows::F16(cache.layer_f16(il, end).0, width),
            false => Rows::F32(cache.layer(il, end).0, width),
        }
    }

    /// Values `off..off + out.len()` of row `pos` into `out`.
    fn read_into(&self, pos: usize, off: usize, out: &mut [f32]) {
        match *self {
            Rows::F32(r, w) => out.copy_from_slice(&r[pos * w + off..pos * w + off + out.len()]),
            Rows::F16(r, w) => {
                r[pos * w + off..pos * w + off + out.len()].convert_to_f32_slice(out)
            }
        }
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

impl Compressor {
    /// The entry of window `w` (rate `m`) from the raw rows: `raw(pos)` gives token `pos`'s
    /// kv then gate projections (`[2 · proj width]`, the gate without the position bias).
    fn entry(
        &self,
        w: usize,
        m: usize,
        raw: impl Fn(usize) -> Vec<f32>,
        eps: f32,
        rope: &Rope,
        rope_dim: usize,
    ) -> Vec<f32> {
        let cw = self.width;
        let pw = if self.overlap { 2 * cw } else { cw };
        // Rows of window w (and for CSA of window w−1, whose Ca halves join).
        let first = if self.overlap && w > 0 {
            (w - 1) * m
        } else {
            w * m
        };
        let rows: Vec<Vec<f32>> = (first..(w + 1) * m).map(raw).collect();
        let row = |pos: usize| &rows[pos - first];
        // Slots: (kv value, gate logit) per channel; for CSA, Ca of window w−1 then Cb of w.
        let mut out = vec![0.0; cw];
        let mut logits = Vec::with_capacity(2 * m);
        let mut vals = Vec::with_capacity(2 * m);
        for (ch, o) in out.iter_mut().enumerate() {
            logits.clear();
            vals.clear();
            if self.overlap {
                for j in 0..m {
                    if w == 0 {
                        logits.push(f32::NEG_INFINITY);
                        vals.push(0.0);
                    } else {
                        let r = row((w - 1) * m + j);
                        logits.push(r[pw + ch] + self.ape[j * pw + ch]);
                        vals.push(r[ch]);
                    }
                }
                for j in 0..m {
                    let r = row(w * m + j);
                    logits.push(r[pw + cw + ch] + self.ape[j * pw + cw + ch]);
                    vals.push(r[cw + ch]);
                }
            } else {
                for j in 0..m {
                    let r = row(w * m + j);
                    logits.push(r[pw + ch] + self.ape[j * pw + ch]);
                    vals.push(r[ch]);
                }
            }
            softmax(&mut logits);
            *o = vals.iter().zip(&logits).map(|(v, p)| v * p).sum();
        }
        let mut e = vec![0.0; cw];
        rms_norm(&out, &self.norm, eps, &mut e);
        rope.rotate(&mut e[cw - rope_dim..], w * m, false);
        e
    }
}

impl Deepseek4 {
    /// Attention of layer `il` over the normalized block input `h` (`[n, D]`), storing this
    /// step's rows in each sequence's cache; writes `out` (`[n, D]`).
    fn attention(
        &self,
        il: usize,
        h: &[f32],
        tokens_pos: &[usize],
        segs: &mut [Seg],
        out: &mut [f32],
    ) {
        let (c, v, s) = (&self.cfg, &self.v4, &self.store);
        let a = &self.layers[il].attn;
        let n = h.len() / c.n_embd;
        let (nh, hd, r) = (c.n_head, v.head_dim, v.rope_dim);
        let rope = self.rope(il);
        let lay = RowLayout::new(v);
        let (kind, m) = v.kinds[il];
        // Projections of every token at once.
        let mut qa = vec![0.0; n * v.q_lora_rank]; // [n, q_lora_rank]
        let mut kv = vec![0.0; n * hd]; // [n, head_dim]
        let pw = a.comp.as_ref().map_or(0, |cp| cp.kv.rows);
        let (mut ck, mut cg) = (vec![0.0; n * pw], vec![0.0; n * pw]); // [n, proj width]
        let ix = a.indexer.as_ref();
        let ipw = ix.map_or(0, |x| x.comp.kv.rows);
        let (mut ik, mut ig) = (vec![0.0; n * ipw], vec![0.0; n * ipw]); // [n, 2c]
        let ih = ix.map_or(0, |x| x.proj.rows);
        let mut iw = vec![0.0; n * ih]; // [n, index_n_heads]
        {
            let mut ws: Vec<&Linear> = vec![&a.q_a, &a.kv];
            let mut outs: Vec<&mut [f32]> = vec![&mut qa[..], &mut kv[..]];
            if let Some(cp) = &a.comp {
                ws.extend([&cp.kv, &cp.gate]);
                outs.extend([&mut ck[..], &mut cg[..]]);
            }
            if let Some(x) = ix {
                ws.extend([&x.comp.kv, &x.comp.gate, &x.proj]);
                outs.extend([&mut ik[..], &mut ig[..], &mut iw[..]]);
            }
            s.matmul_many(&ws, h, n, &mut outs);
        }
        let mut q_res = vec![0.0; qa.len()]; // [n, q_lora_rank]
        rms_norm(&qa, &a.q_a_norm, c.rms_eps, &mut q_res);
        let mut q = vec![0.0; n * nh * hd]; // [n, n_head, head_dim]
        let ic = v.index.head_dim;
        let mut iq = vec![0.0; n * ih * ic]; // [n, index_n_heads, index_head_dim]
        match ix {
            Some(x) => s.matmul_many(&[&a.q_b, &x.q_b], &q_res, n, &mut [&mut q, &mut iq]),
            None => s.matmul(&a.q_b, &q_res, n, &mut q),
        }
        let ones = vec![1.0; hd];
        for (t, qt) in q.chunks_exact_mut(nh * hd).enumerate() {
            for head in qt.chunks_exact_mut(hd) {
                let x = head.to_vec();
                rms_norm(&x, &ones, c.rms_eps, head);
                rope.rotate(&mut head[hd - r..], tokens_pos[t], false);
            }
        }
        let mut kvn = vec![0.0; kv.len()]; // [n, head_dim]
        rms_norm(&kv, &a.kv_norm, c.rms_eps, &mut kvn);
        for (t, row) in kvn.chunks_exact_mut(hd).enumerate() {
            rope.rotate(&mut row[hd - r..], tokens_pos[t], false);
        }
        if ix.is_some() {
            for (t, qt) in iq.chunks_exact_mut(ih * ic).enumerate() {
                for head in qt.chunks_exact_mut(ic) {
                    self.rope_compress
                        .rotate(&mut head[ic - r..], tokens_pos[t], false);
                }
            }
        }
        // Per sequence: this step's cache rows (window key, raw projections, entries closed).
        let mut o = vec![0.0; n * nh * hd]; // [n, n_head, head_dim]
        for seg in segs.iter_mut() {
            let (rows, p0) = (seg.rows.clone(), seg.pos0);
            let mut new = vec![0.0; rows.len() * lay.width]; // [len, width]
            for (i, t) in rows.clone().enumerate() {
                let row = &mut new[i * lay.width..(i + 1) * lay.width];
                row[lay.kv..lay.kv + hd].copy_from_slice(&kvn[t * hd..(t + 1) * hd]);
                row[lay.raw..lay.raw + pw].copy_from_slice(&ck[t * pw..(t + 1) * pw]);
                row[lay.raw + pw..lay.raw + 2 * pw].copy_from_slice(&cg[t * pw..(t + 1) * pw]);
                row[lay.iraw..lay.iraw + ipw].copy_from_slice(&ik[t * ipw..(t + 1) * ipw]);
                row[lay.iraw + ipw..lay.iraw + 2 * ipw]
                    .copy_from_slice(&ig[t * ipw..(t + 1) * ipw]);
            }
            // An f16 cache: this step's rows are used as the cache will return them, so a
            // token's result does not depend on which step wrote the rows it reads.
            let half = seg.cache.is_f16();
            if half {
                round_f16(&mut new);
            }
            if let Some(cp) = &a.comp {
                let old = Rows::of(seg.cache, il, p0, lay.width);
                // Token `pos`'s values `off..off + len` of its row, from the cache or this step.
                let part = |pos: usize, off: usize, len: usize| -> Vec<f32> {
                    if pos < p0 {
                        let mut v = vec![0.0; len];
                        old.read_into(pos, off, &mut v);
                        v
                    } else {
                        let r0 = (pos - p0) * lay.width + off;
                        new[r0..r0 + len].to_vec()
                    }
                };
                let mut entries = Vec::new();
                for i in 0..rows.len() {
                    let p = p0 + i;
                    if (p + 1) % m != 0 {
                        continue;
                    }
                    let w = (p + 1) / m - 1;
                    let e = cp.entry(
                        w,
                        m,
                        |pos| part(pos, lay.raw, 2 * pw),
                        c.rms_eps,
                        &self.rope_compress,
                        r,
                    );
                    let ie = ix.map(|x| {
                        let raw = |pos| part(pos, lay.iraw, 2 * ipw);
                        x.comp.entry(w, m, raw, c.rms_eps, &self.rope_compress, r)
                    });
                    entries.push((i, e, ie));
                }
                for (i, e, ie) in entries {
                    let row = &mut new[i * lay.width..(i + 1) * lay.width];
                    row[lay.entry..lay.entry + hd].copy_from_slice(&e);
                    if let Some(ie) = ie {
                        row[lay.ientry..lay.ientry + ic].copy_from_slice(&ie);
                    }
                }
                if half {
                    round_f16(&mut new);
                }
            }
            seg.cache.store(il, &new, &[]);
            drop(new);
            let sa = SeqAttention {
                rows: Rows::of(seg.cache, il, p0 + rows.len(), lay.width),
                lay,
                v,
                kind,
                m,
                q: &q,
                nh,
                indexer: ix.map(|_| (&iq[..], &iw[..], ih)),
                sinks: &a.sinks,
                rope,
            };
            // Attention of each of this sequence's tokens: its window, then its entries. A lone
            // token (decode) splits its heads over the threads; several run in parallel.
            let ot = &mut o[rows.start * nh * hd..rows.end * nh * hd];
            let threads = rayon::current_num_threads();
            if rows.len() < threads {
                let group = nh.div_ceil(threads).max(1);
                for (i, oi) in ot.chunks_exact_mut(nh * hd).enumerate() {
                    let (t, p) = (rows.start + i, p0 + i);
                    let keys = sa.keys(t, p);
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
        // Grouped output projection: each group of heads to o_lora_rank, then o_b.
        let g = v.o_groups;
        let gin = nh * hd / g;
        let inputs: Vec<Vec<f32>> = (0..g)
            .map(|gi| {
                let mut x = vec![0.0; n * gin]; // [n, H·d/g]
                for t in 0..n {
                    x[t * gin..(t + 1) * gin]
                        .copy_from_slice(&o[t * nh * hd + gi * gin..t * nh * hd + (gi + 1) * gin]);
                }
                x
            })
            .collect();
        let rl = v.o_lora_rank;
        let mut zs: Vec<Vec<f32>> = vec![vec![0.0; n * rl]; g]; // [n, o_lora_rank] each
        let mut jobs: Vec<MatJob> = a
            .o_a
            .iter()
            .zip(&inputs)
            .zip(&mut zs)
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
        s.matmul(&a.o_b, &z, n, out); // [n, D]
    }

    /// The MoE of layer `il` over `h` (`[n, D]`, normalized) for `tokens`; writes `out`.
    fn moe(&self, il: usize, h: &[f32], tokens: &[u32], out: &mut [f32]) {
        let (c, s) = (&self.cfg, &self.store);
        let mo = &self.layers[il].moe;
        let rc = &c.moe.as_ref().expect("deepseek4 has MoE sizes").router;
        let d = c.n_embd;
        let n = h.len() / d;
        let ne = rc.n_expert;
        let mut logits = vec![0.0; n * ne]; // [n, n_expert]
        s.matmul(&mo.router, h, n, &mut logits);
        let score = |l: f32| match rc.scoring {
            Scoring::SqrtSoftplus => sqrt_softplus(l),
            Scoring::Sigmoid => 1.0 / (1.0 + (-l).exp()),
            Scoring::Softmax => l, // softmax over all experts below
        };
        let mut by_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); ne];
        for (t, l) in logits.chunks_exact(ne).enumerate() {
            let mut sc: Vec<f32> = l.iter().map(|&x| score(x)).collect();
            if rc.scoring == Scoring::Softmax {
                softmax(&mut sc);
            }
            let sel: Vec<usize> = match &mo.route {
                Route::Hash(ids) => {
                    let k = rc.n_used;
                    ids[tokens[t] as usize * k..(tokens[t] as usize + 1) * k]
                        .iter()
                        .map(|&e| e as usize)
                        .collect()
                }
                Route::TopK(bias) => {
                    let biased: Vec<f32> = sc.iter().zip(bias).map(|(x, b)| x + b).collect();
                    top_k(&biased, rc.n_used)
                }
            };
            let sum: f32 = sel.iter().map(|&e| sc[e]).sum::<f32>() + 1e-20;
            for e in sel {
                by_expert[e].push((t, sc[e] / sum * rc.scaling));
            }
        }
        if let Ok(mut load) = self.load.lock() {
            let l = &mut load[il];
            l.tokens.resize(ne, 0);
            for (e, toks) in by_expert.iter().enumerate() {
                l.tokens[e] += toks.len() as u64;
            }
        }
        self.run_experts(mo, h, &by_expert, out);
    }

    /// The routed experts (tokens grouped by expert, each expert read once) and the shared
    /// expert on `h` (`[n, D]`), in two parallel regions: every gate/up, then every down.
    /// `out[t] = Σ_e w_{t,e} · expert_e(h_t)` (experts in index order) `+ shared(h_t)`.
    fn run_experts(&self, mo: &Moe, h: &[f32], by_expert: &[Vec<(usize, f32)>], out: &mut [f32]) {
        let d = self.cfg.n_embd;
        let n = h.len() / d;
        let limit = self.v4.swiglu_limit;
        // Clamped SwiGLU (the routed experts and the shared expert alike).
        let act = |g: &mut [f32], u: &[f32]| {
            for (gv, &uv) in g.iter_mut().zip(u) {
                let gc = gv.min(limit);
                let uc = uv.clamp(-limit, limit);
                *gv = gc / (1.0 + (-gc).exp()) * uc;
            }
        };
        let active: Vec<usize> = (0..by_expert.len())
            .filter(|&e| !by_expert[e].is_empty())
            .collect();
        // Each active expert's input rows (the whole input when it has every token).
        let inputs: Vec<Option<Vec<f32>>> = active
            .iter()
            .map(|&e| {
                let toks = &by_expert[e];
                (toks.len() < n).then(|| {
                    let mut xe = vec![0.0; toks.len() * d]; // [tokens, D]
                    for (row, &(t, _)) in xe.chunks_exact_mut(d).zip(toks) {
                        row.copy_from_slice(&h[t * d..(t + 1) * d]);
                    }
                    xe
                })
            })
            .collect();
        let [sg, su, sd] = &mo.shared;
        let ff = sg.rows;
        let mut gates: Vec<Vec<f32>> = active
            .iter()
            .map(|&e| vec![0.0; by_expert[e].len() * mo.experts.experts[e].0.rows])
            .chain(std::iter::once(vec![0.0; n * ff]))
            .collect(); // [tokens, ff] per active expert, then the shared expert's [n, ff]
        let mut ups = gates.clone();
        {
            let mut jobs = Vec::with_capacity(2 * gates.len());
            // (gate, up, input, tokens) per active expert, then the shared expert's.
            let all = active
                .iter()
                .zip(&inputs)
                .map(|(&e, x)| {
                    let (gate, up, _) = &mo.experts.experts[e];
                    (gate, up, x.as_deref().unwrap_or(h), by_expert[e].len())
                })
                .chain(std::iter::once((sg, su, h, n)));
            for (((gate, up, x, nt), g), u) in all.zip(&mut gates).zip(&mut ups) {
                jobs.push(MatJob {
                    w: gate.weight(),
                    x,
                    n_tokens: nt,
                    out: g,
                });
                jobs.push(MatJob {
                    w: up.weight(),
                    x,
                    n_tokens: nt,
                    out: u,
                });
            }
            matmul_batch(&mut jobs);
        }
        for (g, u) in gates.iter_mut().zip(&ups) {
            act(g, u);
        }
        let downs = active
            .iter()
            .map(|&e| (&mo.experts.experts[e].2, by_expert[e].len()));
        let mut ys: Vec<Vec<f32>> = downs
            .clone()
            .map(|(_, nt)| vec![0.0; nt * d])
            .chain(std::iter::once(vec![0.0; n * d]))
            .collect(); // [tokens, D] per active expert, then the shared expert's [n, D]
        let mut jobs: Vec<MatJob> = downs
            .chain(std::iter::once((sd, n)))
            .zip(&gates)
            .zip(&mut ys)
            .map(|(((w, nt), g), y)| MatJob {
                w: w.weight(),
                x: g,
                n_tokens: nt,
                out: y,
            })
            .collect();
        matmul_batch(&mut jobs);
        drop(jobs);
        out.fill(0.0);
        for (&e, y) in active.iter().zip(&ys) {
            for (row, &(t, w)) in y.chunks_exact(d).zip(&by_expert[e]) {
                for (acc, v) in out[t * d..(t + 1) * d].iter_mut().zip(row) {
                    *acc += v * w;
                }
            }
        }
        let shared = ys.last().expect("the shared expert's output");
        out.iter_mut().zip(shared).for_each(|(o, v)| *o += v);
    }
}

impl CausalLm for Deepseek4 {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn forward_batch(&self, seqs: &mut [SeqInput]) -> Result<Vec<Vec<f32>>, ModelError> {
        let tokens = decoder::batch_tokens(seqs)?;
        let (d, nn) = (self.cfg.n_embd, self.v4.hc_mult);
        let n = tokens.len();
        let mut e = vec![0.0; d];
        let mut x = vec![0.0; n * nn * d]; // [n, N, D]: the streams
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
        let kinds: Vec<crate::Logits> = seqs.iter().map(|q| q.logits).collect();
        let mut segs = decoder::segments(seqs);
        let pos = decoder::positions(&segs);
        let mut tmp = vec![0.0; n * d]; // [n, D]
        for il in 0..self.cfg.n_layer {
            let l = &self.layers[il];
            let w = self.hc_weights(&l.attn_hc, &x);
            let collapsed = self.collapse(&w, &x);
            let mut hn = vec![0.0; n * d];
            rms_norm(&collapsed, &l.attn_norm, self.cfg.rms_eps, &mut hn);
            self.attention(il, &hn, &pos, &mut segs, &mut tmp);
            self.expand(&w, &mut x, &tmp);
            let w = self.hc_weights(&l.ffn_hc, &x);
            let collapsed = self.collapse(&w, &x);
            rms_norm(&collapsed, &l.ffn_norm, self.cfg.rms_eps, &mut hn);
            self.moe(il, &hn, &tokens, &mut tmp);
            self.expand(&w, &mut x, &tmp);
        }
        // hc_head: one more collapse, with sigmoid weights only.
        let (hc_fn, hc_base, hc_scale) = &self.head_hc;
        let nd = nn * d;
        let mut f = vec![0.0; x.len()];
        rms_norm(&x, &vec![1.0; nd], self.cfg.rms_eps, &mut f);
        let mut mix = vec![0.0; n * nn]; // [n, N]
        self.store.matmul(hc_fn, &f, n, &mut mix);
        let mut h = vec![0.0; n * d]; // [n, D]
        for (t, ht) in h.chunks_exact_mut(d).enumerate() {
            let pre: Vec<f32> = (0..nn)
                .map(|i| {
                    1.0 / (1.0 + (-(mix[t * nn + i] * hc_scale + hc_base[i])).exp())
                        + self.v4.hc_eps
                })
                .collect();
            let xt = &x[t * nd..(t + 1) * nd];
            for (i, hv) in ht.iter_mut().enumerate() {
                *hv = (0..nn).map(|s| pre[s] * xt[s * d + i]).sum();
            }
        }
        let wanted: Vec<(std::ops::Range<usize>, crate::Logits)> = segs
            .iter()
            .zip(kinds)
            .map(|(s, k)| (s.rows.clone(), k))
            .collect();
        for s in &mut segs {
            s.cache.advance(s.len());
        }
        Ok(decoder::head(
            &self.store,
            &h,
            &self.output_norm,
            self.cfg.rms_eps,
            &self.output,
            &wanted,
        ))
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
