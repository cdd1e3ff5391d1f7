//! DeepSeek-V4's configuration: [`V4Config`] from GGUF metadata ([`V4Config::from_gguf`]) or
//! `config.json` ([`config_from_json`]), its checks ([`V4Config::validate`]), and checkpoint
//! tensor names mapped to llama.cpp's ([`canonical_name`]).

use baicai_gguf::Gguf;
use serde_json::Value;

use crate::config::{Arch, IndexerConfig, KeySource, ModelConfig, MoeConfig, RopeStyle, Yarn};
use crate::error::ModelError;
use crate::moe::{GroupScore, RouterConfig, Scoring};

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
    /// Width of a query head and of the one K=V head.
    pub head_dim: usize,
    /// Values of a head that RoPE rotates (its trailing slice).
    pub rope_dim: usize,
    /// Rank of the low-rank query projection (`q_a`, then `q_b`).
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
    /// Residual streams of the hyper-connections (`N`).
    pub hc_mult: usize,
    /// Sinkhorn-Knopp iterations making `comb` doubly stochastic.
    pub hc_sinkhorn_iters: usize,
    /// Added to `pre`, to `comb` after its softmax, and to each Sinkhorn sum.
    pub hc_eps: f32,
    /// Head groups of the grouped output projection.
    pub o_groups: usize,
    /// Rank each head group is projected to before `o_b`.
    pub o_lora_rank: usize,
    /// The lightning indexer of CSA layers.
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

    /// Checks every value (see [`ModelConfig::validate`]): the per-layer compress rates, the
    /// counts, then the values the counts constrain, in that order.
    ///
    /// # Errors
    /// [`ModelError::BadValue`] naming the first key whose value breaks a rule.
    pub fn validate(&self, c: &ModelConfig, keys: &KeySource) -> Result<(), ModelError> {
        let rules = (self.layer_rules(c).into_iter())
            .chain(self.count_rules())
            .chain(self.value_rules(c));
        match rules.into_iter().find(|r| r.broken) {
            Some(r) => Err(bad(keys, r.gguf, r.hf, r.value, &r.rule)),
            None => Ok(()),
        }
    }

    /// One entry per layer in `layer_types` (GGUF files list the MTP layers after the trunk's
    /// too); compressing layers with a rate of 1 up to the context length.
    fn layer_rules(&self, c: &ModelConfig) -> Vec<Rule> {
        let n = self.kinds.len();
        let mut rules = vec![Rule::new(
            n < c.n_layer || self.hash.len() != n,
            ("attention.compress_ratios", "layer_types"),
            n,
            format!("has {n} entries for {} layers", c.n_layer),
        )];
        for &(kind, rate) in &self.kinds {
            let hf = match kind {
                AttnKind::Csa => "compress_rates.compressed_sparse_attention",
                _ => "compress_rates.heavily_compressed_attention",
            };
            rules.push(Rule::new(
                kind != AttnKind::Sliding && rate == 0,
                ("attention.compress_ratios", hf),
                0,
                AT_LEAST_1.into(),
            ));
            rules.push(Rule::new(
                rate > c.n_ctx_train,
                ("attention.compress_ratios", "compress_rates"),
                rate,
                format!("exceeds the context length {}", c.n_ctx_train),
            ));
        }
        rules
    }

    /// Sizes and counts: 1 to 2^24.
    fn count_rules(&self) -> Vec<Rule> {
        let ix = &self.index;
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
            (ix.n_head, "attention.indexer.head_count", "index_n_heads"),
            (
                ix.head_dim,
                "attention.indexer.key_length",
                "index_head_dim",
            ),
            (ix.top_k, "attention.indexer.top_k", "index_topk"),
        ];
        (counts.into_iter())
            .flat_map(|(v, g, h)| {
                [
                    Rule::new(v == 0, (g, h), v, AT_LEAST_1.into()),
                    Rule::new(v > 1 << 24, (g, h), v, "more than 16777216".into()),
                ]
            })
            .collect()
    }

    /// The RoPE slice, the output groups, the clamp, the epsilon, the compress RoPE and the
    /// widths the counts imply.
    fn value_rules(&self, c: &ModelConfig) -> Vec<Rule> {
        let rope = ("rope.dimension_count", "qk_rope_head_dim");
        let (r, hd) = (self.rope_dim, self.head_dim);
        let yarn_bad = self.compress_yarn.as_ref().map(|y| {
            let broken = !(y.factor.is_finite() && y.factor > 0.0) || y.original_context == 0;
            (broken, y.factor)
        });
        let widths = [
            c.n_head.checked_mul(self.head_dim),
            self.hc_mult.checked_mul(c.n_embd),
            self.index.n_head.checked_mul(self.index.head_dim),
            self.o_groups.checked_mul(self.o_lora_rank),
        ];
        vec![
            Rule::new(
                r < 2 || !r.is_multiple_of(2) || r > hd,
                rope,
                r,
                format!("must be even, at least 2 and at most the head dim {hd}"),
            ),
            Rule::new(
                r > self.index.head_dim,
                rope,
                r,
                format!("exceeds the indexer head dim {}", self.index.head_dim),
            ),
            Rule::new(
                !c.n_head.is_multiple_of(self.o_groups),
                ("attention.output_group_count", "o_groups"),
                self.o_groups,
                format!("does not divide the {} heads into equal groups", c.n_head),
            ),
            Rule::new(
                !(self.swiglu_limit.is_finite() && self.swiglu_limit > 0.0),
                ("swiglu_clamp_exp", "swiglu_limit"),
                self.swiglu_limit,
                ABOVE_0.into(),
            ),
            Rule::new(
                !(self.hc_eps.is_finite() && self.hc_eps >= 0.0),
                ("hyper_connection.epsilon", "hc_eps"),
                self.hc_eps,
                "must be a finite number, 0 or more".into(),
            ),
            Rule::new(
                !(self.compress_rope_base.is_finite() && self.compress_rope_base > 0.0),
                ("attention.compress_rope_freq_base", "compress_rope_theta"),
                self.compress_rope_base,
                ABOVE_0.into(),
            ),
            Rule::new(
                yarn_bad.is_some_and(|(broken, _)| broken),
                ("rope.scaling.factor", "rope_scaling.factor"),
                yarn_bad.map_or(0.0, |(_, f)| f),
                "must be a finite number above 0 with an original context".into(),
            ),
            Rule::new(
                widths.iter().any(|w| w.is_none_or(|w| w > 1 << 32)),
                ("hyper_connection.count", "hc_mult"),
                self.hc_mult,
                "the widths it implies overflow".into(),
            ),
        ]
    }
}

const AT_LEAST_1: &str = "must be at least 1";
const ABOVE_0: &str = "must be a finite number above 0";

/// One check of [`V4Config::validate`]: whether the value breaks it, the keys naming the value
/// (GGUF without the arch prefix, `config.json`), the value and the rule.
struct Rule {
    broken: bool,
    gguf: &'static str,
    hf: &'static str,
    value: String,
    rule: String,
}

impl Rule {
    fn new(
        broken: bool,
        (gguf, hf): (&'static str, &'static str),
        value: impl ToString,
        rule: String,
    ) -> Rule {
        Rule {
            broken,
            gguf,
            hf,
            value: value.to_string(),
            rule,
        }
    }
}

/// An array of integers in GGUF metadata.
fn u64_array(g: &Gguf, key: &str) -> Result<Vec<u64>, ModelError> {
    gguf_array(g, key, baicai_gguf::Value::to_u64, "not unsigned integers")?
        .ok_or_else(|| ModelError::Config(format!("key {key} is missing")))
}

/// An array of floats in GGUF metadata (empty when absent).
fn f32_array(g: &Gguf, key: &str) -> Result<Vec<f32>, ModelError> {
    let to_f32 = |x: &baicai_gguf::Value| x.to_f64().map(|f| f as f32);
    Ok(gguf_array(g, key, to_f32, "not numbers")?.unwrap_or_default())
}

/// An array in GGUF metadata, each element converted by `conv` (`None` when absent); `what`
/// says what the elements failing `conv` are not.
fn gguf_array<T>(
    g: &Gguf,
    key: &str,
    conv: impl Fn(&baicai_gguf::Value) -> Option<T>,
    what: &str,
) -> Result<Option<Vec<T>>, ModelError> {
    let Some(v) = g.get(key) else {
        return Ok(None);
    };
    let arr = v
        .as_array()
        .ok_or_else(|| ModelError::Config(format!("{key}: not an array")))?;
    (arr.iter())
        .map(|x| conv(x).ok_or_else(|| ModelError::Config(format!("{key}: {what}"))))
        .collect::<Result<_, _>>()
        .map(Some)
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
    let j = Json { path, v };
    let n_layer = j.uint("num_hidden_layers", None)?;
    let head_dim = j.uint("head_dim", Some(512))?;
    let rope_dim = match v.get("partial_rotary_factor").and_then(Value::as_f64) {
        Some(p) => (head_dim as f64 * p) as usize,
        None => j.uint("qk_rope_head_dim", Some((head_dim / 8) as u64))?,
    };
    // The release's `compress_ratios` lists the MTP layers after the trunk (llama.cpp's
    // converter requires as much); every per-layer list covers them then.
    let kinds = attn_kinds(&j, n_layer)?;
    let hash = hash_layers(&j, kinds.len().max(n_layer))?;
    let compress_yarn = compress_yarn(v)?;
    let main_base = v
        .get("rope_parameters")
        .and_then(|r| r.get("main"))
        .and_then(|m| m.get("rope_theta"))
        .and_then(Value::as_f64)
        .map_or(j.float("rope_theta", 10_000.0), |x| Ok(x as f32))?;
    let scoring = scoring(&j)?;
    let ff = j.uint("moe_intermediate_size", Some(2048))?;
    let n_expert = j.uint("n_routed_experts", Some(256))?;
    let v4 = V4Config {
        head_dim,
        rope_dim,
        q_lora_rank: j.uint("q_lora_rank", Some(1024))?,
        window: j.uint("sliding_window", Some(128))?,
        kinds,
        hash,
        compress_rope_base: j.float("compress_rope_theta", 160_000.0)?,
        compress_yarn,
        hc_mult: j.uint("hc_mult", Some(4))?,
        hc_sinkhorn_iters: j.uint("hc_sinkhorn_iters", Some(20))?,
        hc_eps: j.float("hc_eps", 1e-6)?,
        o_groups: j.uint("o_groups", Some(8))?,
        o_lora_rank: j.uint("o_lora_rank", Some(1024))?,
        index: IndexerConfig {
            n_head: j.uint("index_n_heads", Some(64))?,
            head_dim: j.uint("index_head_dim", Some(128))?,
            top_k: j.uint("index_topk", Some(512))?,
        },
        swiglu_limit: j.float("swiglu_limit", 10.0)?,
    };
    let n_head = j.uint("num_attention_heads", Some(64))?;
    // Keys are read in a fixed order, so a file with several bad values names the same one.
    Ok(ModelConfig {
        arch: Arch::Deepseek4,
        arch_name: "deepseek_v4".into(),
        n_layer,
        n_embd: j.uint("hidden_size", Some(4096))?,
        n_head,
        n_head_kv: 1,
        head_dim_k: head_dim,
        head_dim_v: head_dim,
        n_ff: ff,
        n_vocab: j.uint("vocab_size", Some(129_280))?,
        n_ctx_train: j.uint("max_position_embeddings", Some(1 << 20))?,
        rms_eps: j.float("rms_norm_eps", 1e-6)?,
        rope_base: main_base,
        rope_base_swa: main_base,
        rope_linear_factor: 1.0,
        rope_style: RopeStyle::Interleaved,
        sliding_window: Some(v4.window),
        swa_period: 0,
        mla: None,
        moe: Some(MoeConfig {
            router: router(&j, scoring, n_expert)?,
            n_ff_shared: ff,
            n_ff_expert: ff,
            first_dense: 0,
        }),
        v4: Some(Box::new(v4)),
    })
}

/// `config.json`'s values, read with errors that name the file and the key.
struct Json<'a> {
    path: &'a std::path::Path,
    v: &'a Value,
}

impl Json<'_> {
    fn err(&self, what: String) -> ModelError {
        ModelError::Config(format!("{}: {what}", self.path.display()))
    }

    /// `k`'s value converted by `conv`; `None` when absent or null, an error naming `what` was
    /// expected when `conv` refuses it.
    fn typed<T>(
        &self,
        k: &str,
        conv: impl Fn(&Value) -> Option<T>,
        what: &str,
    ) -> Result<Option<T>, ModelError> {
        (self.v.get(k).filter(|x| !x.is_null()))
            .map(|x| conv(x).ok_or_else(|| self.err(format!("{k}: expected {what}, found {x}"))))
            .transpose()
    }

    /// An unsigned integer; `d` when absent or null (required when `d` is `None`).
    fn uint(&self, k: &str, d: Option<u64>) -> Result<usize, ModelError> {
        (self.typed(k, Value::as_u64, "an unsigned integer")?.or(d))
            .map(|x| x as usize)
            .ok_or_else(|| self.err(format!("'{k}' missing")))
    }

    /// A number; `d` when absent or null.
    fn float(&self, k: &str, d: f64) -> Result<f32, ModelError> {
        Ok(self.typed(k, Value::as_f64, "a number")?.unwrap_or(d) as f32)
    }

    /// `compress_rates.{k}`; `d` when absent.
    fn rate(&self, k: &str, d: u64) -> Result<usize, ModelError> {
        match self.v.get("compress_rates").and_then(|r| r.get(k)) {
            Some(x) => x.as_u64().map(|x| x as usize).ok_or_else(|| {
                self.err(format!(
                    "compress_rates.{k}: expected an unsigned integer, found {x}"
                ))
            }),
            None => Ok(d as usize),
        }
    }
}

/// Each layer's attention kind and compress rate: from `layer_types` (rates from
/// `compress_rates`), else the release's `compress_ratios`, else transformers' default (HCA for
/// the first two layers, then CSA and HCA alternating).
fn attn_kinds(j: &Json, n_layer: usize) -> Result<Vec<(AttnKind, usize)>, ModelError> {
    let csa = j.rate("compressed_sparse_attention", 4)?;
    let hca = j.rate("heavily_compressed_attention", 128)?;
    let array = |k: &str| j.v.get(k).and_then(Value::as_array);
    match (array("layer_types"), array("compress_ratios")) {
        (Some(types), _) => (types.iter().enumerate())
            .map(|(il, t)| match t.as_str() {
                Some("sliding_attention") => Ok((AttnKind::Sliding, 0)),
                Some("compressed_sparse_attention") => Ok((AttnKind::Csa, csa)),
                Some("heavily_compressed_attention") => Ok((AttnKind::Hca, hca)),
                _ => Err(j.err(format!(
                    "layer_types[{il}] is {t}: one of sliding_attention, \
                     compressed_sparse_attention, heavily_compressed_attention"
                ))),
            })
            .collect(),
        // transformers maps the release's per-layer ratios through a fixed table.
        (None, Some(ratios)) => (ratios.iter().enumerate())
            .map(|(il, r)| match r.as_u64() {
                Some(0) => Ok((AttnKind::Sliding, 0)),
                Some(4) => Ok((AttnKind::Csa, 4)),
                Some(128) => Ok((AttnKind::Hca, 128)),
                _ => Err(j.err(format!(
                    "compress_ratios[{il}] is {r}: 0, 4 or 128 \
                     (other rates need layer_types and compress_rates)"
                ))),
            })
            .collect(),
        (None, None) => Ok((0..n_layer)
            .map(|il| match (il < 2, il % 2) {
                (true, _) | (false, 0) => (AttnKind::Hca, hca),
                _ => (AttnKind::Csa, csa),
            })
            .collect()),
    }
}

/// Per layer (`n_layer` of them, MTP layers included) whether its MoE is hash-routed:
/// `mlp_layer_types` (layers past its end, MTP layers, are top-k), else the first
/// `num_hash_layers` (default 3).
fn hash_layers(j: &Json, n_layer: usize) -> Result<Vec<bool>, ModelError> {
    match j.v.get("mlp_layer_types").and_then(Value::as_array) {
        Some(types) => {
            let mut hash = (types.iter().enumerate())
                .map(|(il, t)| match t.as_str() {
                    Some("hash_moe") => Ok(true),
                    Some("moe") => Ok(false),
                    _ => Err(j.err(format!("mlp_layer_types[{il}] is {t}: hash_moe or moe"))),
                })
                .collect::<Result<Vec<bool>, ModelError>>()?;
            if hash.len() < n_layer {
                hash.resize(n_layer, false);
            }
            Ok(hash)
        }
        None => {
            let n_hash = j.uint("num_hash_layers", Some(3))?;
            Ok((0..n_layer).map(|il| il < n_hash).collect())
        }
    }
}

/// The compress RoPE's YaRN: `rope_parameters.compress` (transformers 5.x) or the release's
/// `rope_scaling`; transformers gives it no cos/sin magnitude (attention_factor 1).
fn compress_yarn(v: &Value) -> Result<Option<Yarn>, ModelError> {
    let Some(r) = v
        .get("rope_parameters")
        .and_then(|r| r.get("compress"))
        .or_else(|| v.get("rope_scaling"))
        .filter(|r| !r.is_null())
    else {
        return Ok(None);
    };
    let kind = r.get("rope_type").or_else(|| r.get("type"));
    match kind.and_then(Value::as_str) {
        Some("yarn") => {}
        None | Some("default") => return Ok(None),
        Some(other) => {
            return Err(ModelError::BadValue {
                key: "rope_scaling.type".into(),
                value: format!("'{other}'"),
                rule: "not supported for deepseek_v4 (supported: default, yarn)".into(),
            })
        }
    }
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
    Ok(Some(Yarn {
        factor: num("factor", 1.0),
        original_context: r
            .get("original_max_position_embeddings")
            .and_then(Value::as_u64)
            .unwrap_or(4096) as usize,
        beta_fast: num("beta_fast", 32.0),
        beta_slow: num("beta_slow", 1.0),
        mscale: 0.0,
        mscale_all_dim: 0.0,
    }))
}

/// `scoring_func`: sqrt-softplus (the default), sigmoid or softmax.
fn scoring(j: &Json) -> Result<Scoring, ModelError> {
    Ok(
        match j
            .v
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
        },
    )
}

/// The router of `n_expert` experts scored by `scoring`: top-k and scaling.
fn router(j: &Json, scoring: Scoring, n_expert: usize) -> Result<RouterConfig, ModelError> {
    Ok(RouterConfig {
        n_expert,
        n_used: j.uint("num_experts_per_tok", Some(6))?,
        scoring,
        // transformers' V4 routers always renormalise (`norm_topk_prob` is not read).
        norm_topk_prob: true,
        scaling: j.float("routed_scaling_factor", 1.5)?,
        n_group: 1,
        topk_group: 1,
        group_score: GroupScore::Max,
    })
}

/// The release's MTP layer `i` (`mtp.{i}.…`, after `mtp.`) under the placeholder
/// `mtp.{i}.…` with GGUF suffixes (the layer's block number needs the trunk's length, which
/// [`place_mtp`] knows): `e_proj`/`h_proj` (joined into `nextn.eh_proj` there), `enorm`,
/// `hnorm`, `norm` (the shared head's norm) and a decoder layer named as the trunk's. Its own
/// hyper-connection head (`hc_head_*`) is for its logits, which the trunk does not need.
fn mtp_name(rest: &str) -> Option<String> {
    let (i, suffix) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let canon = match suffix {
        "e_proj.weight" => "nextn.e_proj.weight".to_string(),
        "h_proj.weight" => "nextn.h_proj.weight".to_string(),
        "enorm.weight" => "nextn.enorm.weight".to_string(),
        "hnorm.weight" => "nextn.hnorm.weight".to_string(),
        "norm.weight" => "nextn.shared_head_norm.weight".to_string(),
        _ if suffix.starts_with("hc_head_") => return None,
        _ => canonical_name(&format!("layers.0.{suffix}"))?
            .strip_prefix("blk.0.")?
            .to_string(),
    };
    Some(format!("mtp.{i}.{canon}"))
}

/// Gives the MTP layers' tensors (placeholder names from [`canonical_name`]) their blocks after
/// the trunk's `n_layer`, as llama.cpp's converter numbers them, and joins each layer's
/// `e_proj` and `h_proj` (`[d, d]` each) into `nextn.eh_proj` (`[d, 2d]`: embedding columns,
/// then hidden-state columns), as the converter does.
///
/// # Errors
/// An MTP layer with only one of the two projections, or two of different types or shapes.
pub(crate) fn place_mtp(
    n_layer: usize,
    tensors: &mut std::collections::HashMap<String, crate::weights::TensorEntry>,
) -> Result<(), ModelError> {
    let names: Vec<String> = tensors
        .keys()
        .filter(|n| n.starts_with("mtp."))
        .cloned()
        .collect();
    for name in names {
        let rest = &name["mtp.".len()..];
        let (i, suffix) = rest
            .split_once('.')
            .expect("placeholder names are mtp.{i}.…");
        let il = n_layer + i.parse::<usize>().expect("placeholder numbers parse");
        let entry = tensors.remove(&name).expect("listed just above");
        tensors.insert(format!("blk.{il}.{suffix}"), entry);
    }
    for il in n_layer.. {
        let (e, h) = (
            format!("blk.{il}.nextn.e_proj.weight"),
            format!("blk.{il}.nextn.h_proj.weight"),
        );
        let (e, h) = match (tensors.remove(&e), tensors.remove(&h)) {
            (Some(e), Some(h)) => (e, h),
            (None, None) => break,
            _ => {
                return Err(ModelError::Config(format!(
                    "MTP layer {}: mtp.{}.e_proj and h_proj come together; one is missing",
                    il - n_layer,
                    il - n_layer
                )))
            }
        };
        if e.dtype != h.dtype || e.shape != h.shape || e.shape.len() != 2 {
            return Err(ModelError::Config(format!(
                "MTP layer {}: e_proj ({} {:?}) and h_proj ({} {:?}) differ in type or shape",
                il - n_layer,
                e.dtype.name(),
                e.shape,
                h.dtype.name(),
                h.shape
            )));
        }
        let cols = e.shape[0] as usize;
        let row = e.dtype.row_bytes(cols).ok_or_else(|| {
            ModelError::Config(format!(
                "MTP layer {}: e_proj rows are not whole blocks",
                il - n_layer
            ))
        })?;
        let (eb, hb) = (e.bytes.as_slice(), h.bytes.as_slice());
        let mut joined = Vec::with_capacity(eb.len() + hb.len());
        for (er, hr) in eb.chunks_exact(row).zip(hb.chunks_exact(row)) {
            joined.extend_from_slice(er);
            joined.extend_from_slice(hr);
        }
        let shape = vec![2 * e.shape[0], e.shape[1]];
        let entry = crate::weights::TensorEntry {
            shape,
            dtype: e.dtype,
            bytes: crate::weights::Bytes::owned(joined),
        };
        tensors.insert(format!("blk.{il}.nextn.eh_proj.weight"), entry);
    }
    Ok(())
}

/// Checkpoint name → canonical (llama.cpp's GGUF) name, for what transformers' `save_pretrained`
/// writes (`model.layers.N.attn.wq_a.weight`, `head.weight`, …) and DeepSeek's release names
/// (`layers.N.…`, `embed.weight`, `hc_head_fn`); SPEC.md §8 has the table. The release's MTP
/// layers (`mtp.*`) get placeholder names ([`mtp_name`], placed by [`place_mtp`]). `None`:
/// unused, and the release's `….scale` companions of FP8 and MXFP4 weights, which the loader
/// consumes with their weight (`hf::quant`).
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
    if let Some(rest) = name.strip_prefix("mtp.") {
        return mtp_name(rest);
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
