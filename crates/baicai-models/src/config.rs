//! Model configuration read from GGUF metadata (`<arch>.*` keys, named as the file names them).

use baicai_gguf::Gguf;

use crate::error::ModelError;
use crate::SUPPORTED_ARCHITECTURES;

/// A supported architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3 (incl. llama3 rope scaling via `rope_freqs.weight`), Mistral.
    Llama,
    /// Qwen2 / Qwen2.5 / DeepSeek-R1-Distill-Qwen: Llama with qkv bias and NeoX RoPE.
    Qwen2,
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
    /// Every `swa_period`-th layer (1-based) is global; the rest use the sliding window.
    pub swa_period: usize,
    /// Multi-head Latent Attention, for DeepSeek-V2/V3.
    pub mla: Option<MlaConfig>,
    /// Mixture-of-Experts feed-forward blocks.
    pub moe: Option<MoeConfig>,
}

impl ModelConfig {
    /// Reads the configuration from a GGUF file's metadata.
    ///
    /// # Errors
    /// Unsupported architecture, missing or ill-typed keys, inconsistent values.
    pub fn from_gguf(g: &Gguf) -> Result<ModelConfig, ModelError> {
        let arch_name = g.require_str("general.architecture")?.to_string();
        let arch = match arch_name.as_str() {
            // Mixtral ships as `llama` with expert tensors.
            "llama" if g.get_u64("llama.expert_count")?.unwrap_or(0) > 0 => Arch::Mixtral,
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3" => Arch::Gemma3,
            "deepseek2" => Arch::Deepseek2,
            "qwen2moe" => Arch::Qwen2Moe,
            "qwen3moe" => Arch::Qwen3Moe,
            other => {
                return Err(ModelError::UnsupportedArch {
                    found: other.to_string(),
                    supported: SUPPORTED_ARCHITECTURES.join(", "),
                })
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let u = |k: &str| -> Result<usize, ModelError> { Ok(g.require_u64(&key(k))? as usize) };
        let n_embd = u("embedding_length")?;
        let n_head = u("attention.head_count")?;
        if n_head == 0 || n_embd == 0 {
            return Err(ModelError::Config(
                "head_count and embedding_length must be > 0".into(),
            ));
        }
        let n_head_kv = g
            .get_u64(&key("attention.head_count_kv"))?
            .map_or(n_head, |v| v as usize);
        let head_dim_k = g
            .get_u64(&key("attention.key_length"))?
            .map_or(n_embd / n_head, |v| v as usize);
        let head_dim_v = g
            .get_u64(&key("attention.value_length"))?
            .map_or(n_embd / n_head, |v| v as usize);
        if n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
            return Err(ModelError::Config(format!(
                "head_count {n_head} is not a multiple of head_count_kv {n_head_kv}"
            )));
        }
        if !head_dim_k.is_multiple_of(2) || head_dim_k == 0 {
            return Err(ModelError::Config(format!(
                "key_length {head_dim_k} must be even"
            )));
        }
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
                if other == "llama3" || (other == "yarn" && arch == Arch::Deepseek2) {
                    1.0
                } else {
                    return Err(ModelError::Config(format!(
                        "rope scaling type '{other}' is not supported (supported: none, linear, llama3)"
                    )));
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
            n_layer: u("block_count")?,
            n_embd,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            n_ff: u("feed_forward_length")?,
            n_vocab,
            n_ctx_train: u("context_length")?,
            rms_eps: g
                .get_f32(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6),
            rope_base,
            rope_base_swa,
            rope_linear_factor,
            rope_style: match arch {
                Arch::Llama | Arch::Deepseek2 | Arch::Mixtral => RopeStyle::Interleaved,
                Arch::Qwen2 | Arch::Gemma3 | Arch::Qwen2Moe | Arch::Qwen3Moe => RopeStyle::Neox,
            },
            sliding_window,
            swa_period,
            mla: if arch == Arch::Deepseek2 {
                Some(mla_from_gguf(g, &arch_name)?)
            } else {
                None
            },
            moe: match arch {
                Arch::Deepseek2 | Arch::Qwen2Moe | Arch::Qwen3Moe | Arch::Mixtral => {
                    Some(moe_from_gguf(g, &arch_name, arch)?)
                }
                _ => None,
            },
            arch_name,
        };
        Ok(cfg)
    }

    /// Whether layer `il` (0-based) attends only within the sliding window.
    pub fn is_swa_layer(&self, il: usize) -> bool {
        self.sliding_window.is_some() && !(il + 1).is_multiple_of(self.swa_period)
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
        return Err(ModelError::Config(format!(
            "key length {head_k} must exceed the RoPE dimension {rope}"
        )));
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
    })
}

fn moe_from_gguf(g: &Gguf, arch: &str, kind: Arch) -> Result<MoeConfig, ModelError> {
    use crate::moe::{GroupScore, RouterConfig, Scoring};
    let key = |k: &str| format!("{arch}.{k}");
    let u = |k: &str| -> Result<usize, ModelError> { Ok(g.require_u64(&key(k))? as usize) };
    // 1 = softmax (V2, the default for files without the key), 2 = sigmoid (V3).
    let scoring = match g.get_u64(&key("expert_gating_func"))?.unwrap_or(1) {
        1 => Scoring::Softmax,
        2 => Scoring::Sigmoid,
        other => {
            return Err(ModelError::Config(format!(
                "expert_gating_func {other} is not supported (1 = softmax, 2 = sigmoid)"
            )))
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
        norm_topk_prob: match kind {
            Arch::Qwen3Moe | Arch::Mixtral => true,
            Arch::Qwen2Moe => false,
            _ => g.get_bool(&key("expert_weights_norm"))?.unwrap_or(false),
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
    if router.n_used == 0 || router.n_used > n_expert || !n_expert.is_multiple_of(n_group) {
        return Err(ModelError::Config(format!(
            "expert_used_count {} / expert_count {n_expert} / expert_group_count {n_group} are inconsistent",
            router.n_used
        )));
    }
    let n_ff_expert = match g.get_u64(&key("expert_feed_forward_length"))? {
        Some(v) => v as usize,
        None => u("feed_forward_length")?,
    };
    // Qwen2-MoE's single shared expert has its own width.
    let n_ff_shared = match g.get_u64(&key("expert_shared_feed_forward_length"))? {
        Some(w) => w as usize,
        None => {
            g.get_u64(&key("expert_shared_count"))?
                .map_or(0, |v| v as usize)
                * n_ff_expert
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
