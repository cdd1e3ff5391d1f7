//! Model configuration read from GGUF metadata (`<arch>.*` keys, named as the file names them),
//! and the one validation every configuration passes, whichever file it came from
//! ([`ModelConfig::validate`]): it runs before anything is sized from the configuration, checks
//! every count against what the file's tensors can hold, computes every derived size with
//! checked arithmetic, and names the key, its value and the rule in each error.

use std::collections::HashSet;
use std::fmt::Display;

use baicai_gguf::{Gguf, Value};

use crate::error::ModelError;
use crate::SUPPORTED_ARCHITECTURES;

/// A supported architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3 (incl. llama3 rope scaling via `rope_freqs.weight`), Mistral.
    Llama,
    /// Qwen2 / Qwen2.5 / DeepSeek-R1-Distill-Qwen: Llama with qkv bias and NeoX RoPE.
    Qwen2,
    /// Qwen3 (dense): Llama with QK-norm, no qkv bias, NeoX RoPE.
    Qwen3,
    /// Gemma 3: interleaved sliding-window / global attention, QK-norm, pre/post norms.
    Gemma3,
    /// DeepSeek-V2/V2-Lite/V3/R1: Multi-head Latent Attention and DeepSeekMoE.
    Deepseek2,
    /// Qwen1.5/Qwen2-MoE: qkv bias, softmax routing, a sigmoid-gated shared expert.
    Qwen2Moe,
    /// Qwen3-MoE: QK-norm, softmax routing renormalized over the top-k.
    Qwen3Moe,
    /// Mixtral: Llama attention, softmax over the top-k router logits.
    Mixtral,
    /// DeepSeek-V4: hyper-connections, sliding-window attention with compressed (CSA/HCA)
    /// entries, hash and sqrt-softplus routed MoE ([`crate::models::deepseek4`]).
    Deepseek4,
}

/// YaRN RoPE scaling (Peng et al. 2023), as DeepSeek-V2/V3 configure it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    pub factor: f32,
    pub original_context: usize,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// `mscale_all_dim`: the softmax scale is multiplied by `(0.1·m·ln(factor) + 1)²`.
    pub mscale_all_dim: f32,
    /// `mscale`: cos/sin are multiplied by `yarn_mscale(mscale) / yarn_mscale(mscale_all_dim)`.
    pub mscale: f32,
}

/// Multi-head Latent Attention sizes (DeepSeek-V2 §2.1).
#[derive(Debug, Clone, PartialEq)]
pub struct MlaConfig {
    /// Rank of the query compression; `None` projects queries directly (V2-Lite).
    pub q_lora_rank: Option<usize>,
    /// Rank of the joint key/value compression: the latent the KV cache stores.
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    pub yarn: Option<Yarn>,
    /// DeepSeek Sparse Attention's lightning indexer (DeepSeek-V3.2), if the model has one.
    pub indexer: Option<IndexerConfig>,
}

/// The lightning indexer of DeepSeek Sparse Attention (DeepSeek-V3.2 §2.1): per query it scores
/// every cached token with `index_n_heads` small ReLU heads and MLA attends only to the
/// `index_topk` best.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexerConfig {
    /// `index_n_heads`.
    pub n_head: usize,
    /// `index_head_dim`: the width of each indexer query head and of the one indexer key.
    pub head_dim: usize,
    /// `index_topk`: tokens each query attends to.
    pub top_k: usize,
}

impl MlaConfig {
    /// Per-head query/key width before absorption.
    pub fn q_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Values cached per token and layer: the latent plus the shared RoPE key.
    pub fn cache_width(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }
}

/// Mixture-of-Experts sizes and routing.
#[derive(Debug, Clone)]
pub struct MoeConfig {
    pub router: crate::moe::RouterConfig,
    /// Width of the shared expert(s) run on every token (0: none); DeepSeek's
    /// `n_shared_experts × moe_intermediate_size`, Qwen2-MoE's `shared_expert_intermediate_size`.
    pub n_ff_shared: usize,
    pub n_ff_expert: usize,
    /// The first `first_dense` layers have a dense feed-forward block.
    pub first_dense: usize,
}

/// How RoPE pairs dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)` (Llama's original layout in GGUF).
    Interleaved,
    /// Halves `(i, i + d/2)` (GPT-NeoX, Qwen2, Gemma).
    Neox,
}

/// A dense decoder-only transformer's hyper-parameters.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    /// `general.architecture` as written in the file.
    pub arch_name: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim_k: usize,
    pub head_dim_v: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// RoPE base of sliding-window layers (Gemma 3: 10 000).
    pub rope_base_swa: f32,
    /// Linear RoPE scaling factor (positions are divided by it) for global layers.
    pub rope_linear_factor: f32,
    pub rope_style: RopeStyle,
    /// Sliding window of local layers, if the model has them.
    pub sliding_window: Option<usize>,
    /// Every `swa_period`-th layer (1-based) is global; the rest use the sliding window
    /// (0: every layer does, as in Mistral).
    pub swa_period: usize,
    /// Multi-head Latent Attention, for DeepSeek-V2/V3.
    pub mla: Option<MlaConfig>,
    /// Mixture-of-Experts feed-forward blocks.
    pub moe: Option<MoeConfig>,
    /// DeepSeek-V4's own hyper-parameters.
    pub v4: Option<Box<crate::models::deepseek4::V4Config>>,
}

impl ModelConfig {
    /// Reads the configuration from a GGUF file's metadata.
    ///
    /// # Errors
    /// Unsupported architecture, missing or ill-typed keys, inconsistent values.
    pub fn from_gguf(g: &Gguf) -> Result<ModelConfig, ModelError> {
        let arch_name = g.require_str("general.architecture")?.to_string();
        let experts = || {
            Ok(g.get_u64(&format!("{arch_name}.expert_count"))?
                .unwrap_or(0)
                > 0)
        };
        let Some(spec) = crate::spec_by_gguf(&arch_name, experts)? else {
            return Err(ModelError::UnsupportedArch {
                found: arch_name,
                supported: SUPPORTED_ARCHITECTURES.join(", "),
            });
        };
        let arch = spec.arch;
        let key = |k: &str| format!("{arch_name}.{k}");
        let u = |k: &str| -> Result<usize, ModelError> { Ok(g.require_u64(&key(k))? as usize) };
        let n_embd = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        let n_head_kv = g
            .get_u64(&key("attention.head_count_kv"))?
            .map_or(n_head, |v| v as usize);
        // Per-head widths default to n_embd / n_head (a zero n_head is reported by `validate`).
        let head_dim_k = g
            .get_u64(&key("attention.key_length"))?
            .map_or(n_embd / n_head.max(1), |v| v as usize);
        let head_dim_v = g
            .get_u64(&key("attention.value_length"))?
            .map_or(n_embd / n_head.max(1), |v| v as usize);
        let n_vocab = match g.get_u64(&key("vocab_size"))? {
            Some(v) => v as usize,
            None => g
                .tensor("token_embd.weight")
                .and_then(|t| t.shape.get(1).copied())
                .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?
                as usize,
        };
        let rope_base = g.get_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0);
        let rope_linear_factor = match g.get_str(&key("rope.scaling.type"))? {
            Some("linear") => g.get_f32(&key("rope.scaling.factor"))?.unwrap_or(1.0),
            Some("none") | None => 1.0,
            Some(other) => {
                // llama3-style scaling is carried by the `rope_freqs.weight` tensor instead;
                // YaRN is read into `MlaConfig::yarn`.
                if other == "llama3"
                    || (other == "yarn" && matches!(arch, Arch::Deepseek2 | Arch::Deepseek4))
                {
                    1.0
                } else {
                    return Err(ModelError::BadValue {
                        key: key("rope.scaling.type"),
                        value: format!("'{other}'"),
                        rule: "not supported (supported: none, linear, llama3)".into(),
                    });
                }
            }
        };
        let (sliding_window, swa_period, rope_base_swa) = match arch {
            // Gemma 3: five local layers then one global (HF `sliding_window_pattern = 6`);
            // local layers use RoPE base 10 000 (llama.cpp's gemma3 defaults).
            Arch::Gemma3 => (
                g.get_u64(&key("attention.sliding_window"))?
                    .map(|v| v as usize),
                6,
                10_000.0,
            ),
            _ => (None, 1, rope_base),
        };
        let cfg = ModelConfig {
            arch,
            n_layer: trunk_layers(g, &arch_name)?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            // DeepSeek-V4 has no dense feed-forward blocks, hence no `feed_forward_length`.
            n_ff: match g.get_u64(&key("feed_forward_length"))? {
                Some(v) => v as usize,
                None if arch == Arch::Deepseek4 => u("expert_feed_forward_length")?,
                None => u("feed_forward_length")?,
            },
            n_vocab,
            n_ctx_train: u("context_length")?,
            rms_eps: g
                .get_f32(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6),
            rope_base,
            rope_base_swa,
            rope_linear_factor,
            rope_style: spec.rope_gguf,
            sliding_window,
            swa_period,
            mla: if arch == Arch::Deepseek2 {
                Some(mla_from_gguf(g, &arch_name)?)
            } else {
                None
            },
            moe: if spec.moe {
                Some(moe_from_gguf(g, &arch_name, spec.gguf_norm_topk_prob)?)
            } else {
                None
            },
            v4: if arch == Arch::Deepseek4 {
                Some(Box::new(crate::models::deepseek4::V4Config::from_gguf(
                    g, &arch_name,
                )?))
            } else {
                None
            },
            arch_name,
        };
        let keys = KeySource::Gguf {
            gguf: g,
            arch: &cfg.arch_name,
        };
        cfg.validate(&keys, &FileTensors::of_gguf(g))?;
        Ok(cfg)
    }

    /// Whether layer `il` (0-based) attends only within the sliding window.
    pub fn is_swa_layer(&self, il: usize) -> bool {
        self.sliding_window.is_some()
            && (self.swa_period == 0 || !(il + 1).is_multiple_of(self.swa_period))
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim_k
    }

    /// Width of all key heads together.
    pub fn k_dim(&self) -> usize {
        self.n_head_kv * self.head_dim_k
    }

    /// Width of all value heads together.
    pub fn v_dim(&self) -> usize {
        self.n_head_kv * self.head_dim_v
    }
}

/// The layers the forward pass runs: `block_count` less the multi-token-prediction layers that
/// llama.cpp's converter appends after them (`nextn_predict_layers`, DeepSeek-V3.2/V4, GLM).
fn trunk_layers(g: &Gguf, arch: &str) -> Result<usize, ModelError> {
    let blocks = g.require_u64(&format!("{arch}.block_count"))?;
    let nextn_key = format!("{arch}.nextn_predict_layers");
    let nextn = g.get_u64(&nextn_key)?.unwrap_or(0);
    match blocks.checked_sub(nextn) {
        Some(n) => Ok(n as usize),
        None => Err(ModelError::BadValue {
            key: nextn_key,
            value: nextn.to_string(),
            rule: format!("exceeds {arch}.block_count = {blocks}"),
        }),
    }
}

fn mla_from_gguf(g: &Gguf, arch: &str) -> Result<MlaConfig, ModelError> {
    let key = |k: &str| format!("{arch}.{k}");
    let u = |k: &str| -> Result<usize, ModelError> { Ok(g.require_u64(&key(k))? as usize) };
    let rope = u("rope.dimension_count")?;
    // Files converted for absorbed MLA carry the per-head sizes under `*_mla` keys and the
    // latent sizes under the plain keys.
    let head_k = match g.get_u64(&key("attention.key_length_mla"))? {
        Some(v) => v as usize,
        None => u("attention.key_length")?,
    };
    let head_v = match g.get_u64(&key("attention.value_length_mla"))? {
        Some(v) => v as usize,
        None => u("attention.value_length")?,
    };
    if head_k <= rope {
        let keys = KeySource::Gguf { gguf: g, arch };
        let rule = format!(
            "must exceed {} = {rope} (the key's RoPE part)",
            keys.key(Field::QkRopeHeadDim)
        );
        return Err(keys.error(Field::QkNopeHeadDim, head_k, rule));
    }
    let yarn = match g.get_str(&key("rope.scaling.type"))? {
        Some("yarn") => {
            // The converter writes 0.1 * mscale_all_dim as the log multiplier.
            let log_mul = g
                .get_f32(&key("rope.scaling.yarn_log_multiplier"))?
                .unwrap_or(0.0);
            Some(Yarn {
                factor: g.require_f32(&key("rope.scaling.factor"))?,
                original_context: u("rope.scaling.original_context_length")?,
                beta_fast: g
                    .get_f32(&key("rope.scaling.yarn_beta_fast"))?
                    .unwrap_or(32.0),
                beta_slow: g
                    .get_f32(&key("rope.scaling.yarn_beta_slow"))?
                    .unwrap_or(1.0),
                mscale_all_dim: log_mul / 0.1,
                mscale: log_mul / 0.1,
            })
        }
        _ => None,
    };
    // `deepseek32` files must describe the indexer; the keys in any other MLA file add one too.
    let has_indexer = arch == "deepseek32" || g.get(&key("attention.indexer.head_count")).is_some();
    let indexer = match has_indexer {
        true => Some(IndexerConfig {
            n_head: u("attention.indexer.head_count")?,
            head_dim: u("attention.indexer.key_length")?,
            top_k: u("attention.indexer.top_k")?,
        }),
        false => None,
    };
    Ok(MlaConfig {
        q_lora_rank: g
            .get_u64(&key("attention.q_lora_rank"))?
            .map(|v| v as usize)
            .filter(|&v| v > 0),
        kv_lora_rank: u("attention.kv_lora_rank")?,
        qk_nope_head_dim: head_k - rope,
        qk_rope_head_dim: rope,
        v_head_dim: head_v,
        yarn,
        indexer,
    })
}

/// `norm_topk_prob`: what the architecture's graph fixes, if it does.
fn moe_from_gguf(
    g: &Gguf,
    arch: &str,
    norm_topk_prob: Option<bool>,
) -> Result<MoeConfig, ModelError> {
    use crate::moe::{GroupScore, RouterConfig, Scoring};
    let key = |k: &str| format!("{arch}.{k}");
    let u = |k: &str| -> Result<usize, ModelError> { Ok(g.require_u64(&key(k))? as usize) };
    // 1 = softmax (V2, the default for files without the key), 2 = sigmoid (V3).
    let scoring = match g.get_u64(&key("expert_gating_func"))?.unwrap_or(1) {
        1 => Scoring::Softmax,
        2 => Scoring::Sigmoid,
        4 => Scoring::SqrtSoftplus,
        other => {
            return Err(KeySource::Gguf { gguf: g, arch }.error(
                Field::GatingFunc,
                other,
                "not supported (1 = softmax, 2 = sigmoid, 4 = sqrt-softplus)",
            ))
        }
    };
    let n_expert = u("expert_count")?;
    let n_group = g
        .get_u64(&key("expert_group_count"))?
        .map_or(1, |v| v as usize)
        .max(1);
    let router = RouterConfig {
        n_expert,
        n_used: u("expert_used_count")?,
        scoring,
        // Qwen3-MoE and Mixtral renormalize over the top-k; Qwen2-MoE does not (llama.cpp's
        // graphs hard-code these; DeepSeek files say it in `expert_weights_norm`).
        norm_topk_prob: match norm_topk_prob {
            Some(fixed) => fixed,
            None => g.get_bool(&key("expert_weights_norm"))?.unwrap_or(false),
        },
        scaling: g.get_f32(&key("expert_weights_scale"))?.unwrap_or(1.0),
        n_group,
        topk_group: g
            .get_u64(&key("expert_group_used_count"))?
            .map_or(n_group, |v| v as usize),
        // The reference scores groups by their max under softmax routing (V2) and by the sum of
        // the top two biased scores under sigmoid routing (V3).
        group_score: if scoring == Scoring::Sigmoid {
            GroupScore::Top2Sum
        } else {
            GroupScore::Max
        },
    };
    let n_ff_expert = match g.get_u64(&key("expert_feed_forward_length"))? {
        Some(v) => v as usize,
        None => u("feed_forward_length")?,
    };
    // Qwen2-MoE's single shared expert has its own width.
    let n_ff_shared = match g.get_u64(&key("expert_shared_feed_forward_length"))? {
        Some(w) => w as usize,
        None => {
            let n = g.get_u64(&key("expert_shared_count"))?;
            shared_width(
                &KeySource::Gguf { gguf: g, arch },
                n.map_or(0, |v| v as usize),
                n_ff_expert,
            )?
        }
    };
    Ok(MoeConfig {
        router,
        n_ff_shared,
        n_ff_expert,
        first_dense: g
            .get_u64(&key("leading_dense_block_count"))?
            .map_or(0, |v| v as usize),
    })
}

/// Width of `n` shared experts of `n_ff_expert` each (DeepSeek's `n_shared_experts ×
/// moe_intermediate_size`), checked.
pub(crate) fn shared_width(
    keys: &KeySource,
    n: usize,
    n_ff_expert: usize,
) -> Result<usize, ModelError> {
    n.checked_mul(n_ff_expert).ok_or_else(|| {
        keys.error(
            Field::SharedFf,
            n,
            format!("× {} = {n_ff_expert} overflows", keys.key(Field::ExpertFf)),
        )
    })
}

/// A configuration value, for naming it in errors as the file spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Field {
    NLayer,
    NEmbd,
    NHead,
    NHeadKv,
    HeadDimK,
    HeadDimV,
    NFf,
    NVocab,
    NCtxTrain,
    RmsEps,
    RopeBase,
    RopeLinearFactor,
    RopeType,
    SlidingWindow,
    QLoraRank,
    KvLoraRank,
    QkNopeHeadDim,
    QkRopeHeadDim,
    VHeadDim,
    YarnFactor,
    YarnOriginalContext,
    YarnBetaFast,
    YarnBetaSlow,
    YarnMscale,
    YarnMscaleAllDim,
    ExpertCount,
    ExpertUsed,
    ExpertGroups,
    ExpertGroupsUsed,
    ExpertFf,
    SharedFf,
    LeadingDense,
    ExpertScale,
    GatingFunc,
    IndexerHeads,
    IndexerHeadDim,
    IndexerTopK,
}

impl Field {
    /// The keys that may state this value: GGUF (after `<arch>.`) and `config.json` (nested keys
    /// joined by `.`). The first one present in the file is named; the first if none is.
    fn keys(self) -> (&'static [&'static str], &'static [&'static str]) {
        use Field::*;
        match self {
            NLayer => (&["block_count"], &["num_hidden_layers"]),
            NEmbd => (&["embedding_length"], &["hidden_size"]),
            NHead => (&["attention.head_count"], &["num_attention_heads"]),
            NHeadKv => (&["attention.head_count_kv"], &["num_key_value_heads"]),
            HeadDimK => (&["attention.key_length"], &["head_dim"]),
            HeadDimV => (&["attention.value_length"], &["head_dim"]),
            NFf => (&["feed_forward_length"], &["intermediate_size"]),
            NVocab => (&["vocab_size"], &["vocab_size"]),
            NCtxTrain => (&["context_length"], &["max_position_embeddings"]),
            RmsEps => (&["attention.layer_norm_rms_epsilon"], &["rms_norm_eps"]),
            // transformers 5.x writes `rope_parameters` (per attention kind for Gemma 3), 4.x
            // `rope_theta` and `rope_scaling`.
            RopeBase => (
                &["rope.freq_base"],
                &[
                    "rope_parameters.full_attention.rope_theta",
                    "rope_parameters.rope_theta",
                    "rope_theta",
                ],
            ),
            RopeLinearFactor | YarnFactor => (
                &["rope.scaling.factor"],
                &[
                    "rope_parameters.full_attention.factor",
                    "rope_parameters.factor",
                    "rope_scaling.factor",
                ],
            ),
            RopeType => (
                &["rope.scaling.type"],
                &[
                    "rope_parameters.full_attention.rope_type",
                    "rope_parameters.rope_type",
                    "rope_scaling.rope_type",
                    "rope_scaling.type",
                ],
            ),
            SlidingWindow => (&["attention.sliding_window"], &["sliding_window"]),
            QLoraRank => (&["attention.q_lora_rank"], &["q_lora_rank"]),
            KvLoraRank => (&["attention.kv_lora_rank"], &["kv_lora_rank"]),
            QkNopeHeadDim => (
                &["attention.key_length_mla", "attention.key_length"],
                &["qk_nope_head_dim"],
            ),
            QkRopeHeadDim => (&["rope.dimension_count"], &["qk_rope_head_dim"]),
            VHeadDim => (
                &["attention.value_length_mla", "attention.value_length"],
                &["v_head_dim"],
            ),
            YarnOriginalContext => (
                &["rope.scaling.original_context_length"],
                &[
                    "rope_parameters.original_max_position_embeddings",
                    "rope_scaling.original_max_position_embeddings",
                ],
            ),
            YarnBetaFast => (
                &["rope.scaling.yarn_beta_fast"],
                &["rope_parameters.beta_fast", "rope_scaling.beta_fast"],
            ),
            YarnBetaSlow => (
                &["rope.scaling.yarn_beta_slow"],
                &["rope_parameters.beta_slow", "rope_scaling.beta_slow"],
            ),
            YarnMscale => (
                &["rope.scaling.yarn_log_multiplier"],
                &["rope_parameters.mscale", "rope_scaling.mscale"],
            ),
            YarnMscaleAllDim => (
                &["rope.scaling.yarn_log_multiplier"],
                &[
                    "rope_parameters.mscale_all_dim",
                    "rope_scaling.mscale_all_dim",
                ],
            ),
            ExpertCount => (
                &["expert_count"],
                &["n_routed_experts", "num_experts", "num_local_experts"],
            ),
            ExpertUsed => (&["expert_used_count"], &["num_experts_per_tok"]),
            ExpertGroups => (&["expert_group_count"], &["n_group"]),
            ExpertGroupsUsed => (&["expert_group_used_count"], &["topk_group"]),
            ExpertFf => (
                &["expert_feed_forward_length", "feed_forward_length"],
                &["moe_intermediate_size", "intermediate_size"],
            ),
            SharedFf => (
                &["expert_shared_feed_forward_length", "expert_shared_count"],
                &["shared_expert_intermediate_size", "n_shared_experts"],
            ),
            LeadingDense => (&["leading_dense_block_count"], &["first_k_dense_replace"]),
            ExpertScale => (&["expert_weights_scale"], &["routed_scaling_factor"]),
            GatingFunc => (&["expert_gating_func"], &["scoring_func"]),
            IndexerHeads => (&["attention.indexer.head_count"], &["index_n_heads"]),
            IndexerHeadDim => (&["attention.indexer.key_length"], &["index_head_dim"]),
            IndexerTopK => (&["attention.indexer.top_k"], &["index_topk"]),
        }
    }
}

/// Where a configuration came from, so that errors name its keys as that file spells them and
/// show the value written there.
#[derive(Clone, Copy)]
pub enum KeySource<'a> {
    /// GGUF metadata, keys `<arch>.<key>`.
    Gguf { gguf: &'a Gguf, arch: &'a str },
    /// A Hugging Face `config.json`.
    Hf(&'a serde_json::Value),
}

impl KeySource<'_> {
    /// The value written under `key`, formatted, if the file has it.
    fn written(&self, key: &str) -> Option<String> {
        match self {
            KeySource::Gguf { gguf, .. } => gguf.get(key).map(gguf_value),
            KeySource::Hf(json) => {
                let v = key.split('.').try_fold(*json, |v, k| v.get(k))?;
                (!v.is_null()).then(|| v.to_string())
            }
        }
    }

    /// The key that states `f` in this file.
    pub fn key(&self, f: Field) -> String {
        let (gguf, hf) = f.keys();
        let full = |k: &str| match self {
            KeySource::Gguf { arch, .. } => format!("{arch}.{k}"),
            KeySource::Hf(_) => k.to_string(),
        };
        let candidates = match self {
            KeySource::Gguf { .. } => gguf,
            KeySource::Hf(_) => hf,
        };
        candidates
            .iter()
            .map(|k| full(k))
            .find(|k| self.written(k).is_some())
            .unwrap_or_else(|| full(candidates[0]))
    }

    /// The error for `f` (whose value in the configuration is `value`) breaking `rule`: the key,
    /// the value the file writes there (or `value` marked as the default when it writes none).
    pub fn error(&self, f: Field, value: impl Display, rule: impl Into<String>) -> ModelError {
        let key = self.key(f);
        let value = self
            .written(&key)
            .unwrap_or_else(|| format!("{value} (the default)"));
        ModelError::BadValue {
            key,
            value,
            rule: rule.into(),
        }
    }
}

/// A GGUF metadata value as an error shows it.
fn gguf_value(v: &Value) -> String {
    if let Some(s) = v.as_str() {
        return format!("'{s}'");
    }
    if let Some(b) = v.as_bool() {
        return b.to_string();
    }
    if let Some(i) = v.to_i64() {
        return i.to_string();
    }
    if let Some(u) = v.to_u64() {
        return u.to_string();
    }
    match v.to_f64() {
        Some(x) => x.to_string(),
        None => format!("<{}>", v.type_name()),
    }
}

/// What a model file's tensors can hold, the bound configuration values are checked against.
#[derive(Debug, Clone)]
pub struct FileTensors {
    /// Layers `0..layers` each have at least one tensor (`blk.N.*`).
    layers: usize,
    /// Values in all tensors together.
    total: u64,
    /// Shape of `token_embd.weight` (ggml order: `[n_embd, n_vocab]`).
    token_embd: Option<Vec<u64>>,
}

impl FileTensors {
    /// From tensor names (canonical, GGUF style) and shapes (ggml order).
    pub fn new<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [u64])>) -> FileTensors {
        let mut layers = HashSet::new();
        let mut total = 0u64;
        let mut token_embd = None;
        for (name, shape) in tensors {
            total = total.saturating_add(shape.iter().fold(1u64, |a, &d| a.saturating_mul(d)));
            if name == "token_embd.weight" {
                token_embd = Some(shape.to_vec());
            }
            let layer = name.strip_prefix("blk.").and_then(|r| r.split_once('.'));
            if let Some(il) = layer.and_then(|(il, _)| il.parse::<usize>().ok()) {
                layers.insert(il);
            }
        }
        FileTensors {
            // Counted from 0 up to the first missing layer, never from the largest index, so a
            // hostile name like `blk.4000000000.x` does not vouch for four billion layers.
            layers: (0..).find(|il| !layers.contains(il)).unwrap_or(0),
            total,
            token_embd,
        }
    }

    /// The tensors of a GGUF file.
    pub fn of_gguf(g: &Gguf) -> FileTensors {
        FileTensors::new(
            g.tensors()
                .iter()
                .map(|t| (t.name.as_str(), t.shape.as_slice())),
        )
    }

    /// No file: only the rules that need none are checked, and derived sizes must not overflow.
    pub fn unknown() -> FileTensors {
        FileTensors {
            layers: usize::MAX,
            total: u64::MAX,
            token_embd: None,
        }
    }
}

/// Checks of one configuration against one file.
struct Check<'a> {
    keys: &'a KeySource<'a>,
    file: &'a FileTensors,
}

impl Check<'_> {
    /// A count of at least 1 that no more than the file's values.
    fn count(&self, f: Field, v: usize) -> Result<(), ModelError> {
        if v == 0 {
            return Err(self.keys.error(f, v, "must be at least 1"));
        }
        self.within_file(f, v)
    }

    /// A size no larger than all the file's tensors together.
    fn within_file(&self, f: Field, v: usize) -> Result<(), ModelError> {
        if v as u64 > self.file.total {
            let rule = format!(
                "more than the {} values all the file's tensors hold",
                self.file.total
            );
            return Err(self.keys.error(f, v, rule));
        }
        Ok(())
    }

    /// The product of sizes (a derived width), checked for overflow and against the file; the
    /// error names the first factor.
    fn product(&self, factors: &[(Field, usize)]) -> Result<usize, ModelError> {
        let p = factors
            .iter()
            .try_fold(1usize, |a, &(_, v)| a.checked_mul(v));
        let (f, v) = factors[0];
        let others: Vec<String> = factors[1..]
            .iter()
            .map(|&(f, v)| format!("{} = {v}", self.keys.key(f)))
            .collect();
        let times = others.join(" × ");
        match p {
            None => Err(self.keys.error(f, v, format!("× {times} overflows"))),
            Some(p) if p as u64 > self.file.total => {
                let rule = format!(
                    "× {times} = {p}, more than the {} values all the file's tensors hold",
                    self.file.total
                );
                Err(self.keys.error(f, v, rule))
            }
            Some(p) => Ok(p),
        }
    }

    /// A finite number, above 0 when `positive`, else at least 0.
    fn finite(&self, f: Field, x: f32, positive: bool) -> Result<(), ModelError> {
        match positive {
            true if !(x.is_finite() && x > 0.0) => {
                Err(self.keys.error(f, x, "must be a finite number above 0"))
            }
            false if !(x.is_finite() && x >= 0.0) => {
                Err(self.keys.error(f, x, "must be a finite number, 0 or more"))
            }
            _ => Ok(()),
        }
    }

    /// A RoPE width: even and at least 2 (RoPE rotates pairs of values).
    fn rope_width(&self, f: Field, v: usize) -> Result<(), ModelError> {
        self.count(f, v)?;
        if v < 2 || !v.is_multiple_of(2) {
            return Err(self.keys.error(
                f,
                v,
                "must be even and at least 2 (RoPE rotates pairs of values)",
            ));
        }
        Ok(())
    }
}

impl ModelConfig {
    /// Checks every value against the rules of the architecture and against `file`'s tensors,
    /// before anything is sized from them: counts are at least 1 and no more than the file can
    /// hold (no more layers than it has tensors for, the embedding's width and vocabulary as
    /// `token_embd.weight` has them), heads and expert groups divide evenly, top-k values lie
    /// within their bounds, floats are finite, and every derived width is computed with checked
    /// arithmetic. Shared by GGUF metadata and Hugging Face `config.json`.
    ///
    /// # Errors
    /// [`ModelError::BadValue`] for the first rule broken, naming the key as `keys` spells it.
    pub fn validate(&self, keys: &KeySource, file: &FileTensors) -> Result<(), ModelError> {
        let c = Check { keys, file };
        if self.n_layer == 0 {
            return Err(keys.error(Field::NLayer, 0, "must be at least 1"));
        }
        if self.n_layer > file.layers {
            let rule = format!("the file has tensors for {} layers", file.layers);
            return Err(keys.error(Field::NLayer, self.n_layer, rule));
        }
        c.count(Field::NEmbd, self.n_embd)?;
        c.count(Field::NVocab, self.n_vocab)?;
        if let Some([embd, vocab]) = file.token_embd.as_deref() {
            if self.n_embd as u64 != *embd {
                let rule = format!("token_embd.weight holds {embd} values per token");
                return Err(keys.error(Field::NEmbd, self.n_embd, rule));
            }
            if self.n_vocab as u64 != *vocab {
                let rule = format!("token_embd.weight holds {vocab} tokens");
                return Err(keys.error(Field::NVocab, self.n_vocab, rule));
            }
        }
        if self.n_ctx_train == 0 {
            return Err(keys.error(Field::NCtxTrain, 0, "must be at least 1"));
        }
        c.finite(Field::RmsEps, self.rms_eps, false)?;
        c.finite(Field::RopeBase, self.rope_base, true)?;
        c.finite(Field::RopeBase, self.rope_base_swa, true)?;
        c.finite(Field::RopeLinearFactor, self.rope_linear_factor, true)?;
        if let Some(w) = self.sliding_window {
            c.count(Field::SlidingWindow, w)?;
        }
        self.validate_heads(&c)?;
        if let Some(mla) = &self.mla {
            self.validate_mla(&c, mla)?;
        }
        let dense_layers = self.moe.as_ref().map_or(self.n_layer, |m| m.first_dense);
        if dense_layers > 0 {
            c.count(Field::NFf, self.n_ff)?;
        }
        if let Some(moe) = &self.moe {
            self.validate_moe(&c, moe)?;
        }
        if let Some(v4) = &self.v4 {
            v4.validate(self, keys)?;
        }
        Ok(())
    }

    /// Attention heads: counts, grouping and widths (MLA models have their own, see
    /// [`ModelConfig::validate_mla`]).
    fn validate_heads(&self, c: &Check) -> Result<(), ModelError> {
        c.count(Field::NHead, self.n_head)?;
        c.count(Field::NHeadKv, self.n_head_kv)?;
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            let rule = format!(
                "does not divide {} = {} (query heads share key/value heads in equal groups)",
                c.keys.key(Field::NHead),
                self.n_head
            );
            return Err(c.keys.error(Field::NHeadKv, self.n_head_kv, rule));
        }
        if self.mla.is_some() {
            return Ok(());
        }
        c.rope_width(Field::HeadDimK, self.head_dim_k)?;
        c.count(Field::HeadDimV, self.head_dim_v)?;
        c.product(&[
            (Field::NHead, self.n_head),
            (Field::HeadDimK, self.head_dim_k),
        ])?;
        c.product(&[
            (Field::NHead, self.n_head),
            (Field::HeadDimV, self.head_dim_v),
        ])?;
        Ok(())
    }

    /// Multi-head Latent Attention widths and YaRN settings.
    fn validate_mla(&self, c: &Check, m: &MlaConfig) -> Result<(), ModelError> {
        if let Some(r) = m.q_lora_rank {
            c.count(Field::QLoraRank, r)?;
        }
        c.count(Field::KvLoraRank, m.kv_lora_rank)?;
        c.count(Field::QkNopeHeadDim, m.qk_nope_head_dim)?;
        c.rope_width(Field::QkRopeHeadDim, m.qk_rope_head_dim)?;
        c.count(Field::VHeadDim, m.v_head_dim)?;
        // Each width the forward pass sizes from these, per head and for all heads; with every
        // factor within the file, their sums (`qk_nope + qk_rope`, `kv_lora + qk_rope`,
        // `qk_nope + v_head`) cannot overflow.
        let nh = (Field::NHead, self.n_head);
        let (nope, lora) = (
            (Field::QkNopeHeadDim, m.qk_nope_head_dim),
            (Field::KvLoraRank, m.kv_lora_rank),
        );
        c.product(&[nh, nope])?;
        c.product(&[nh, (Field::QkRopeHeadDim, m.qk_rope_head_dim)])?;
        c.product(&[nh, (Field::VHeadDim, m.v_head_dim)])?;
        c.product(&[nh, lora])?;
        c.product(&[nh, nope, lora])?;
        if let Some(y) = &m.yarn {
            c.finite(Field::YarnFactor, y.factor, true)?;
            c.count(Field::YarnOriginalContext, y.original_context)?;
            c.finite(Field::YarnBetaFast, y.beta_fast, true)?;
            c.finite(Field::YarnBetaSlow, y.beta_slow, true)?;
            if !y.mscale.is_finite() {
                return Err(c.keys.error(Field::YarnMscale, y.mscale, "must be finite"));
            }
            if !y.mscale_all_dim.is_finite() {
                let f = Field::YarnMscaleAllDim;
                return Err(c.keys.error(f, y.mscale_all_dim, "must be finite"));
            }
        }
        if let Some(ix) = &m.indexer {
            c.count(Field::IndexerHeads, ix.n_head)?;
            c.count(Field::IndexerHeadDim, ix.head_dim)?;
            if ix.head_dim < m.qk_rope_head_dim {
                let rule = format!(
                    "is less than {} = {} (the indexer rotates that many of its values)",
                    c.keys.key(Field::QkRopeHeadDim),
                    m.qk_rope_head_dim
                );
                return Err(c.keys.error(Field::IndexerHeadDim, ix.head_dim, rule));
            }
            c.product(&[
                (Field::IndexerHeads, ix.n_head),
                (Field::IndexerHeadDim, ix.head_dim),
            ])?;
            if m.q_lora_rank.is_none() {
                let rule = "is set but q_lora_rank is not (the indexer's queries are \
                            projected from the compressed query)";
                return Err(c.keys.error(Field::IndexerHeads, ix.n_head, rule));
            }
            if ix.top_k == 0 || ix.top_k > self.n_ctx_train {
                let rule = format!(
                    "must lie in 1..={} ({}): more tokens than the context holds",
                    self.n_ctx_train,
                    c.keys.key(Field::NCtxTrain)
                );
                return Err(c.keys.error(Field::IndexerTopK, ix.top_k, rule));
            }
        }
        Ok(())
    }

    /// Expert counts, routing bounds and widths.
    fn validate_moe(&self, c: &Check, m: &MoeConfig) -> Result<(), ModelError> {
        let r = &m.router;
        let k = |f| c.keys.key(f);
        c.count(Field::ExpertCount, r.n_expert)?;
        if r.n_used == 0 || r.n_used > r.n_expert {
            let rule = format!("must lie in 1..={} ({})", r.n_expert, k(Field::ExpertCount));
            return Err(c.keys.error(Field::ExpertUsed, r.n_used, rule));
        }
        c.count(Field::ExpertGroups, r.n_group)?;
        if r.n_group > r.n_expert {
            let rule = format!(
                "more groups than {} = {}",
                k(Field::ExpertCount),
                r.n_expert
            );
            return Err(c.keys.error(Field::ExpertGroups, r.n_group, rule));
        }
        if !r.n_expert.is_multiple_of(r.n_group) {
            let rule = format!(
                "does not divide {} = {} into equal groups",
                k(Field::ExpertCount),
                r.n_expert
            );
            return Err(c.keys.error(Field::ExpertGroups, r.n_group, rule));
        }
        if r.n_group > 1 {
            if r.topk_group == 0 || r.topk_group > r.n_group {
                let rule = format!("must lie in 1..={} ({})", r.n_group, k(Field::ExpertGroups));
                return Err(c.keys.error(Field::ExpertGroupsUsed, r.topk_group, rule));
            }
            let kept = r.topk_group * (r.n_expert / r.n_group);
            if r.n_used > kept {
                let rule = format!(
                    "more than the {kept} experts of the {} groups kept ({})",
                    r.topk_group,
                    k(Field::ExpertGroupsUsed)
                );
                return Err(c.keys.error(Field::ExpertUsed, r.n_used, rule));
            }
        }
        if !r.scaling.is_finite() {
            return Err(c
                .keys
                .error(Field::ExpertScale, r.scaling, "must be finite"));
        }
        c.count(Field::ExpertFf, m.n_ff_expert)?;
        c.within_file(Field::SharedFf, m.n_ff_shared)?;
        c.product(&[
            (Field::ExpertCount, r.n_expert),
            (Field::ExpertFf, m.n_ff_expert),
        ])?;
        if m.first_dense > self.n_layer {
            let rule = format!("exceeds {} = {}", k(Field::NLayer), self.n_layer);
            return Err(c.keys.error(Field::LeadingDense, m.first_dense, rule));
        }
        Ok(())
    }
}
