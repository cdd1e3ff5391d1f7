//! `config.json` into a [`ModelConfig`]: the keys transformers 4.x and 5.x write, the reference
//! defaults per `model_type` for keys left out, and refusals naming each key whose value the
//! model code cannot honour.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::err;
use crate::config::{
    self, Arch, Field, FileTensors, IndexerConfig, KeySource, MlaConfig, ModelConfig, MoeConfig,
    Yarn,
};
use crate::error::ModelError;
use crate::moe::{GroupScore, RouterConfig, Scoring};

/// `config.json` as Hugging Face writes it, for the keys the engine reads (others, such as
/// `dtype` / `torch_dtype`, are ignored: tensors are held as the shards store them). Counts are
/// unsigned integers; a value of another type is an error naming its key.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: String,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    intermediate_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    // RoPE: transformers 4.x writes `rope_theta` and `rope_scaling` (and Gemma 3's
    // `rope_local_base_freq`), 5.x `rope_parameters`.
    rope_theta: Option<f64>,
    rope_scaling: Option<HfRope>,
    rope_parameters: Option<HfRope>,
    rope_local_base_freq: Option<f64>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    // Sliding-window attention (Mistral, Gemma 3; Qwen's `use_sliding_window`).
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    sliding_window_pattern: Option<usize>,
    layer_types: Option<Vec<String>>,
    // Gemma 3.
    query_pre_attn_scalar: Option<f64>,
    final_logit_softcapping: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    // Multi-head Latent Attention (DeepSeek-V2/V3).
    q_lora_rank: Option<usize>,
    kv_lora_rank: Option<usize>,
    qk_nope_head_dim: Option<usize>,
    qk_rope_head_dim: Option<usize>,
    v_head_dim: Option<usize>,
    // Mixture of Experts: DeepSeek, Qwen-MoE and Mixtral name the expert count differently.
    n_routed_experts: Option<usize>,
    num_experts: Option<usize>,
    num_local_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    moe_intermediate_size: Option<usize>,
    shared_expert_intermediate_size: Option<usize>,
    n_shared_experts: Option<usize>,
    n_group: Option<usize>,
    topk_group: Option<usize>,
    topk_method: Option<String>,
    scoring_func: Option<String>,
    norm_topk_prob: Option<bool>,
    routed_scaling_factor: Option<f64>,
    first_k_dense_replace: Option<usize>,
    /// transformers 5.x (DeepSeek-V3.2): `dense` / `sparse` per layer.
    mlp_layer_types: Option<Vec<String>>,
    // DeepSeek Sparse Attention (DeepSeek-V3.2).
    index_n_heads: Option<usize>,
    index_head_dim: Option<usize>,
    index_topk: Option<usize>,
}

/// `rope_scaling` (4.x) or `rope_parameters` (5.x) of `config.json`; in 5.x the latter holds
/// `rope_theta` too, and for Gemma 3 one such object per attention kind.
#[derive(Debug, Deserialize)]
struct HfRope {
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
    // Llama 3.
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    // YaRN.
    beta_fast: Option<f64>,
    beta_slow: Option<f64>,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
    // Gemma 3 under transformers 5.x.
    full_attention: Option<Box<HfRope>>,
    sliding_attention: Option<Box<HfRope>>,
}

impl HfRope {
    /// `rope_type` (or the older `type`); `default` when neither is written.
    fn kind(&self) -> &str {
        self.rope_type
            .as_deref()
            .or(self.kind.as_deref())
            .unwrap_or("default")
    }
}

/// Llama 3's RoPE scaling (`rope_type: llama3`), applied as llama.cpp's converter writes it: a
/// divisor per frequency (`rope_freqs.weight`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Llama3Rope {
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original_context: f64,
}

impl Llama3Rope {
    /// The divisor of each of the `head_dim / 2` frequencies of base `base`, as
    /// `_compute_llama3_parameters` of transformers scales them: long wavelengths by `factor`,
    /// short ones not at all, and a smooth blend between.
    pub(super) fn freq_factors(&self, base: f32, head_dim: usize) -> Vec<f32> {
        let low_wavelen = self.original_context / self.low_freq_factor;
        let high_wavelen = self.original_context / self.high_freq_factor;
        (0..head_dim / 2)
            .map(|i| {
                let freq = (base as f64).powf(-2.0 * i as f64 / head_dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                let f = if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    self.factor
                } else {
                    let smooth = (self.original_context / wavelen - self.low_freq_factor)
                        / (self.high_freq_factor - self.low_freq_factor);
                    1.0 / ((1.0 - smooth) / self.factor + smooth)
                };
                f as f32
            })
            .collect()
    }
}

/// What `config.json` says beyond [`ModelConfig`], for loading the tensors.
pub(super) struct HfExtra {
    /// `tie_word_embeddings`: the head is the token embedding.
    pub(super) tie_embeddings: bool,
    /// Llama 3 RoPE scaling, turned into `rope_freqs.weight` once the configuration is checked.
    pub(super) llama3: Option<Llama3Rope>,
}

/// The reference implementation's default for a value `config.json` may leave out, per
/// `model_type` (the `*Config` classes of transformers 4.57 / 5.x; the table in the crate README).
struct Defaults {
    rope_theta: f64,
    rms_norm_eps: f64,
    /// `None`: `hidden_size / num_attention_heads`.
    head_dim: Option<usize>,
    /// `None`: `num_attention_heads`.
    num_key_value_heads: Option<usize>,
    tie_word_embeddings: bool,
    /// The window when `sliding_window` is absent (`null` means none).
    sliding_window: Option<usize>,
    max_position_embeddings: usize,
}

fn defaults(arch: Arch, model_type: &str) -> Defaults {
    let base = Defaults {
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
        head_dim: None,
        num_key_value_heads: None,
        tie_word_embeddings: false,
        sliding_window: None,
        max_position_embeddings: 2048,
    };
    match (arch, model_type) {
        (_, "mistral") => Defaults {
            num_key_value_heads: Some(8),
            sliding_window: Some(4096),
            max_position_embeddings: 131_072,
            ..base
        },
        (Arch::Qwen2, _) => Defaults {
            num_key_value_heads: Some(32),
            max_position_embeddings: 32_768,
            ..base
        },
        (Arch::Qwen2Moe, _) => Defaults {
            num_key_value_heads: Some(16),
            max_position_embeddings: 32_768,
            ..base
        },
        (Arch::Qwen3Moe, _) => Defaults {
            num_key_value_heads: Some(4),
            max_position_embeddings: 32_768,
            ..base
        },
        (Arch::Qwen3, _) => Defaults {
            head_dim: Some(128),
            num_key_value_heads: Some(32),
            max_position_embeddings: 32_768,
            ..base
        },
        (Arch::Gemma3, _) => Defaults {
            rope_theta: 1_000_000.0,
            head_dim: Some(256),
            num_key_value_heads: Some(4),
            tie_word_embeddings: true,
            sliding_window: Some(4096),
            max_position_embeddings: 131_072,
            ..base
        },
        (Arch::Mixtral, _) => Defaults {
            num_key_value_heads: Some(8),
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 131_072,
            ..base
        },
        (Arch::Deepseek2, _) => Defaults {
            max_position_embeddings: 4096,
            ..base
        },
        _ => base,
    }
}

/// Parses the text of a `config.json` and validates it on its own (without the tensors of a
/// checkpoint, see [`ModelConfig::validate`]).
///
/// # Errors
/// Malformed JSON, a key missing or of the wrong type, an unsupported `model_type`, a value
/// baicai cannot honour, a value that breaks a rule of [`ModelConfig::validate`].
pub fn parse_config(text: &str) -> Result<ModelConfig, ModelError> {
    let path = Path::new("config.json");
    let json = read_config_json(path, text)?;
    let (cfg, _) = config_from_json(path, &json)?;
    cfg.validate(&KeySource::Hf(text_config(&json)), &FileTensors::unknown())?;
    Ok(cfg)
}

/// The JSON of a `config.json`.
pub(super) fn read_config_json(path: &Path, text: &str) -> Result<Value, ModelError> {
    serde_json::from_str(text).map_err(|e| err(path, e))
}

/// The text model's part of a `config.json`: its `text_config` where it has one (multimodal
/// checkpoints such as `Gemma3ForConditionalGeneration`), else all of it.
pub(super) fn text_config(v: &Value) -> &Value {
    v.get("text_config").filter(|t| t.is_object()).unwrap_or(v)
}

/// An error for a value baicai cannot honour, naming the key.
fn cannot_honour(key: impl Into<String>, value: impl std::fmt::Display, rule: &str) -> ModelError {
    ModelError::BadValue {
        key: key.into(),
        value: value.to_string(),
        rule: rule.into(),
    }
}

/// Reads `config.json` into a [`ModelConfig`] through [`HfConfig`]; a key of the wrong type is
/// named (`num_hidden_layers: invalid type: string "x", expected usize`).
pub(super) fn config_from_json(
    path: &Path,
    v: &Value,
) -> Result<(ModelConfig, HfExtra), ModelError> {
    let v = text_config(v);
    // DeepSeek-V4 reads its own keys (per-layer attention kinds, compress rates, two RoPEs).
    if v.get("model_type").and_then(Value::as_str) == Some("deepseek_v4") {
        let cfg = crate::models::deepseek4::config_from_json(path, v)?;
        let extra = HfExtra {
            tie_embeddings: false,
            llama3: None,
        };
        return Ok((cfg, extra));
    }
    let h: HfConfig = serde_path_to_error::deserialize(v).map_err(|e| {
        let key = e.path().to_string();
        match key.as_str() {
            "." => err(path, e.into_inner()),
            _ => err(path, format!("{key}: {}", e.into_inner())),
        }
    })?;
    let Some(spec) = crate::spec_by_hf(&h.model_type) else {
        let supported: Vec<&str> = crate::ARCHITECTURES
            .iter()
            .flat_map(|s| s.hf)
            .copied()
            .collect();
        return Err(ModelError::UnsupportedArch {
            found: h.model_type.clone(),
            supported: supported.join(", "),
        });
    };
    let arch = spec.arch;
    let d = defaults(arch, &h.model_type);
    let keys = KeySource::Hf(v);
    check_unsupported(arch, &h)?;
    let head_dim = h
        .head_dim
        .or(d.head_dim)
        .unwrap_or(h.hidden_size / h.num_attention_heads.max(1));
    let rope = rope_from_hf(&keys, arch, &d, &h)?;
    let (sliding_window, swa_period) = sliding_from_hf(v, arch, &d, &h)?;
    if arch == Arch::Gemma3 {
        // The attention scale is 1/√query_pre_attn_scalar; the model uses 1/√head_dim.
        let scalar = h.query_pre_attn_scalar.unwrap_or(256.0);
        if scalar != head_dim as f64 {
            let rule = format!("must equal head_dim = {head_dim} (baicai scales by 1/√head_dim)");
            return Err(cannot_honour("query_pre_attn_scalar", scalar, &rule));
        }
    }
    let mla = (arch == Arch::Deepseek2)
        .then(|| mla_from_hf(path, &h, rope.yarn))
        .transpose()?;
    let moe = moe_from_hf(path, &keys, arch, &h)?;
    let cfg = ModelConfig {
        arch,
        arch_name: h.model_type.clone(),
        n_layer: h.num_hidden_layers,
        n_embd: h.hidden_size,
        n_head: h.num_attention_heads,
        n_head_kv: h
            .num_key_value_heads
            .or(d.num_key_value_heads)
            .unwrap_or(h.num_attention_heads),
        head_dim_k: head_dim,
        head_dim_v: head_dim,
        n_ff: h.intermediate_size.unwrap_or(0),
        n_vocab: h.vocab_size,
        n_ctx_train: h
            .max_position_embeddings
            .unwrap_or(d.max_position_embeddings),
        rms_eps: h.rms_norm_eps.unwrap_or(d.rms_norm_eps) as f32,
        rope_base: rope.base,
        rope_base_swa: rope.base_swa,
        rope_linear_factor: rope.linear_factor,
        rope_style: spec.rope_hf,
        sliding_window,
        swa_period,
        mla,
        moe,
        v4: None,
    };
    let extra = HfExtra {
        tie_embeddings: h.tie_word_embeddings.unwrap_or(d.tie_word_embeddings),
        llama3: rope.llama3,
    };
    Ok((cfg, extra))
}

/// Refuses settings that change the math in ways the model code does not implement.
fn check_unsupported(arch: Arch, h: &HfConfig) -> Result<(), ModelError> {
    // Gemma's feed-forward gate is GELU (tanh approximation), every other family's SiLU.
    let (act_key, act, want) = match arch {
        Arch::Gemma3 => match &h.hidden_activation {
            Some(a) => ("hidden_activation", Some(a), "gelu_pytorch_tanh"),
            None => ("hidden_act", h.hidden_act.as_ref(), "gelu_pytorch_tanh"),
        },
        _ => ("hidden_act", h.hidden_act.as_ref(), "silu"),
    };
    if let Some(a) = act.filter(|a| a.as_str() != want) {
        let rule = format!("not supported for {} (supported: {want})", h.model_type);
        return Err(cannot_honour(act_key, format!("'{a}'"), &rule));
    }
    // Qwen2's q/k/v biases are part of the architecture; `attention_bias` elsewhere adds an
    // output-projection bias too, which no model here has.
    if h.attention_bias == Some(true) {
        return Err(cannot_honour(
            "attention_bias",
            true,
            "not supported (projection biases)",
        ));
    }
    if h.mlp_bias == Some(true) {
        return Err(cannot_honour(
            "mlp_bias",
            true,
            "not supported (feed-forward biases)",
        ));
    }
    for (key, v) in [
        ("final_logit_softcapping", h.final_logit_softcapping),
        ("attn_logit_softcapping", h.attn_logit_softcapping),
    ] {
        if let Some(v) = v {
            return Err(cannot_honour(key, v, "not supported (logit soft-capping)"));
        }
    }
    Ok(())
}

/// RoPE as `config.json` states it, in the 4.x or the 5.x spelling.
struct HfRopeSpec<'a> {
    base: f32,
    base_swa: f32,
    linear_factor: f32,
    llama3: Option<Llama3Rope>,
    yarn: Option<&'a HfRope>,
}

fn rope_from_hf<'a>(
    keys: &KeySource,
    arch: Arch,
    d: &Defaults,
    h: &'a HfConfig,
) -> Result<HfRopeSpec<'a>, ModelError> {
    // 5.x: `rope_parameters` (per attention kind for Gemma 3); 4.x: `rope_scaling`.
    let (global, local, prefix) = match &h.rope_parameters {
        Some(p) if p.full_attention.is_some() || p.sliding_attention.is_some() => (
            p.full_attention.as_deref(),
            p.sliding_attention.as_deref(),
            "rope_parameters.full_attention",
        ),
        Some(p) => (Some(p), None, "rope_parameters"),
        None => (h.rope_scaling.as_ref(), None, "rope_scaling"),
    };
    let theta = global.and_then(|g| g.rope_theta);
    if let (Some(a), Some(b)) = (theta, h.rope_theta) {
        if a != b {
            let rule = format!("disagrees with rope_theta = {b}");
            return Err(keys.error(Field::RopeBase, a, rule));
        }
    }
    let base = theta.or(h.rope_theta).unwrap_or(d.rope_theta) as f32;
    let base_swa = match arch {
        Arch::Gemma3 => {
            if let Some(l) = local.filter(|l| l.kind() != "default") {
                let key = "rope_parameters.sliding_attention.rope_type";
                return Err(cannot_honour(
                    key,
                    format!("'{}'", l.kind()),
                    "not supported (supported: default)",
                ));
            }
            local
                .and_then(|l| l.rope_theta)
                .or(h.rope_local_base_freq)
                .unwrap_or(10_000.0) as f32
        }
        _ => base,
    };
    let mut spec = HfRopeSpec {
        base,
        base_swa,
        linear_factor: 1.0,
        llama3: None,
        yarn: None,
    };
    let Some(g) = global else {
        return Ok(spec);
    };
    let need = |v: Option<f64>, k: &str| {
        v.ok_or_else(|| {
            cannot_honour(
                format!("{prefix}.{k}"),
                "missing",
                "required by this rope_type",
            )
        })
    };
    match (g.kind(), arch) {
        ("default", _) => {}
        ("linear", Arch::Llama | Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3) => {
            spec.linear_factor = need(g.factor, "factor")? as f32;
        }
        ("llama3", Arch::Llama | Arch::Qwen2 | Arch::Qwen3) => {
            let l = Llama3Rope {
                factor: need(g.factor, "factor")?,
                low_freq_factor: need(g.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need(g.high_freq_factor, "high_freq_factor")?,
                original_context: need(
                    g.original_max_position_embeddings.map(|v| v as f64),
                    "original_max_position_embeddings",
                )?,
            };
            let ok = |x: f64| x.is_finite() && x > 0.0;
            if !(ok(l.factor) && ok(l.low_freq_factor) && ok(l.original_context)) {
                let rule = "factor, low_freq_factor and original_max_position_embeddings must be \
                            finite numbers above 0";
                return Err(cannot_honour(format!("{prefix}.factor"), l.factor, rule));
            }
            if !(l.high_freq_factor.is_finite() && l.high_freq_factor > l.low_freq_factor) {
                let rule = format!("must exceed low_freq_factor = {}", l.low_freq_factor);
                let key = format!("{prefix}.high_freq_factor");
                return Err(cannot_honour(key, l.high_freq_factor, &rule));
            }
            spec.llama3 = Some(l);
        }
        ("yarn", Arch::Deepseek2) => spec.yarn = Some(g),
        (other, _) => {
            let rule = format!(
                "not supported for {} (supported: default{})",
                h.model_type,
                match arch {
                    Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => ", linear, llama3",
                    Arch::Gemma3 => ", linear",
                    Arch::Deepseek2 => ", yarn",
                    _ => "",
                }
            );
            return Err(keys.error(Field::RopeType, format!("'{other}'"), rule));
        }
    }
    Ok(spec)
}

/// The sliding window and which layers use it: Mistral's on every layer, Gemma 3's on all but
/// every `sliding_window_pattern`-th; Qwen's (`use_sliding_window`) is refused.
fn sliding_from_hf(
    v: &Value,
    arch: Arch,
    d: &Defaults,
    h: &HfConfig,
) -> Result<(Option<usize>, usize), ModelError> {
    // An absent key takes the default; `null` means no window.
    let window = match v.get("sliding_window") {
        None => d.sliding_window,
        Some(_) => h.sliding_window,
    };
    if h.use_sliding_window == Some(true) {
        return Err(cannot_honour(
            "use_sliding_window",
            true,
            "not supported (Qwen's sliding window)",
        ));
    }
    match (arch, h.model_type.as_str()) {
        (_, "mistral") => Ok((window, 0)),
        (Arch::Gemma3, _) => {
            // `layer_types` (4.5x and later) says it layer by layer; it must be the periodic
            // pattern the model implements, whose period its first global layer gives.
            let first_global = h.layer_types.as_ref().map(|types| {
                types
                    .iter()
                    .position(|t| t == "full_attention")
                    .map_or(h.num_hidden_layers + 1, |il| il + 1)
            });
            let period = first_global
                .or(h.sliding_window_pattern)
                .unwrap_or(6)
                .max(1);
            if let Some(types) = &h.layer_types {
                let expected = |il: usize| match (il + 1).is_multiple_of(period) {
                    true => "full_attention",
                    false => "sliding_attention",
                };
                let differs = types.len() != h.num_hidden_layers
                    || types.iter().enumerate().any(|(il, t)| t != expected(il));
                if differs {
                    let rule = format!(
                        "must be one global layer after every {} sliding ones, for each of the \
                         {} layers",
                        period - 1,
                        h.num_hidden_layers
                    );
                    return Err(cannot_honour("layer_types", format!("{types:?}"), &rule));
                }
            }
            Ok((window, period))
        }
        _ => {
            if let Some(t) = h
                .layer_types
                .iter()
                .flatten()
                .find(|t| *t != "full_attention")
            {
                let rule = "not supported for this model_type (supported: full_attention)";
                return Err(cannot_honour("layer_types", format!("'{t}'"), rule));
            }
            Ok((None, 1))
        }
    }
}

/// The MLA sizes and YaRN scaling of a DeepSeek `config.json`.
fn mla_from_hf(path: &Path, h: &HfConfig, yarn: Option<&HfRope>) -> Result<MlaConfig, ModelError> {
    let need = |v: Option<usize>, key: &str| v.ok_or_else(|| err(path, format!("'{key}' missing")));
    let yarn = yarn.map(|r| Yarn {
        factor: r.factor.unwrap_or(1.0) as f32,
        original_context: r.original_max_position_embeddings.unwrap_or(4096),
        beta_fast: r.beta_fast.unwrap_or(32.0) as f32,
        beta_slow: r.beta_slow.unwrap_or(1.0) as f32,
        mscale_all_dim: r.mscale_all_dim.unwrap_or(0.0) as f32,
        mscale: r.mscale.unwrap_or(1.0) as f32,
    });
    let indexer = match (h.model_type.as_str(), h.index_n_heads) {
        ("deepseek_v32", _) | (_, Some(_)) => Some(IndexerConfig {
            n_head: need(h.index_n_heads, "index_n_heads")?,
            head_dim: need(h.index_head_dim, "index_head_dim")?,
            top_k: need(h.index_topk, "index_topk")?,
        }),
        _ => None,
    };
    Ok(MlaConfig {
        q_lora_rank: h.q_lora_rank,
        kv_lora_rank: need(h.kv_lora_rank, "kv_lora_rank")?,
        qk_nope_head_dim: need(h.qk_nope_head_dim, "qk_nope_head_dim")?,
        qk_rope_head_dim: need(h.qk_rope_head_dim, "qk_rope_head_dim")?,
        v_head_dim: need(h.v_head_dim, "v_head_dim")?,
        yarn,
        indexer,
    })
}

/// The experts and routing of a MoE `config.json`; `None` without an expert count.
fn moe_from_hf(
    path: &Path,
    keys: &KeySource,
    arch: Arch,
    h: &HfConfig,
) -> Result<Option<MoeConfig>, ModelError> {
    let Some(n_expert) = h.n_routed_experts.or(h.num_experts).or(h.num_local_experts) else {
        return Ok(None);
    };
    // transformers' DeepSeek-V3 (and V3.2, Kimi K2) router is always sigmoid scoring with the
    // bias-corrected group-limited selection; its config class has neither key.
    let v3_router = matches!(
        h.model_type.as_str(),
        "deepseek_v3" | "deepseek_v32" | "kimi_k2"
    );
    let default_scoring = if v3_router { "sigmoid" } else { "softmax" };
    let scoring = match h.scoring_func.as_deref().unwrap_or(default_scoring) {
        "softmax" => Scoring::Softmax,
        "sigmoid" => Scoring::Sigmoid,
        other => return Err(keys.error(Field::GatingFunc, other, "not supported")),
    };
    let default_method = if v3_router { "noaux_tc" } else { "greedy" };
    let topk_method = h.topk_method.as_deref().unwrap_or(default_method);
    let (n_group, topk_group) = match topk_method {
        "greedy" => (1, 1),
        "group_limited_greedy" | "noaux_tc" => (h.n_group.unwrap_or(1), h.topk_group.unwrap_or(1)),
        other => return Err(err(path, format!("topk_method '{other}' is not supported"))),
    };
    let n_ff_expert = h
        .moe_intermediate_size
        .or(h.intermediate_size)
        .ok_or_else(|| err(path, "'moe_intermediate_size' missing"))?;
    let n_ff_shared = match h.shared_expert_intermediate_size {
        Some(w) => w,
        None => config::shared_width(keys, h.n_shared_experts.unwrap_or(0), n_ff_expert)?,
    };
    let n_used = h
        .num_experts_per_tok
        .ok_or_else(|| err(path, "'num_experts_per_tok' missing"))?;
    Ok(Some(MoeConfig {
        router: RouterConfig {
            n_expert,
            n_used,
            scoring,
            norm_topk_prob: h.norm_topk_prob.unwrap_or(arch == Arch::Mixtral),
            scaling: h.routed_scaling_factor.unwrap_or(1.0) as f32,
            n_group,
            topk_group,
            group_score: if topk_method == "noaux_tc" {
                GroupScore::Top2Sum
            } else {
                GroupScore::Max
            },
        },
        n_ff_shared,
        n_ff_expert,
        first_dense: first_dense_from_hf(path, h)?,
    }))
}

/// The leading dense layers: `first_k_dense_replace`, or the `dense` entries that open
/// `mlp_layer_types` (transformers 5.x), which must then agree with it.
fn first_dense_from_hf(path: &Path, h: &HfConfig) -> Result<usize, ModelError> {
    let Some(types) = &h.mlp_layer_types else {
        return Ok(h.first_k_dense_replace.unwrap_or(0));
    };
    let dense = types.iter().take_while(|t| *t == "dense").count();
    if let Some(bad) = types[dense..].iter().position(|t| t != "sparse") {
        let (il, t) = (dense + bad, &types[dense + bad]);
        return Err(err(
            path,
            format!(
                "mlp_layer_types[{il}] is '{t}': baicai runs leading 'dense' layers then \
                 'sparse' (MoE) ones"
            ),
        ));
    }
    if types.len() != h.num_hidden_layers {
        return Err(err(
            path,
            format!(
                "mlp_layer_types has {} entries for num_hidden_layers = {}",
                types.len(),
                h.num_hidden_layers
            ),
        ));
    }
    match h.first_k_dense_replace {
        Some(k) if k != dense => Err(err(
            path,
            format!(
                "first_k_dense_replace = {k} but mlp_layer_types opens with {dense} dense layers"
            ),
        )),
        _ => Ok(dense),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama 3.1's published scaling (factor 8, low 1, high 4, original context 8192, base
    /// 500 000, head_dim 128) against the values llama.cpp's converter writes into
    /// `rope_freqs.weight` for it: 1 for short wavelengths, 8 for long ones, a blend between.
    #[test]
    fn llama3_rope_factors_match_the_converter() {
        let l = Llama3Rope {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192.0,
        };
        let f = l.freq_factors(500_000.0, 128);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]), "{f:?}");
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0));
    }
}
