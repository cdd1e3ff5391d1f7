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
}

impl ModelConfig {
    /// Reads the configuration from a GGUF file's metadata.
    ///
    /// # Errors
    /// Unsupported architecture, missing or ill-typed keys, inconsistent values.
    pub fn from_gguf(g: &Gguf) -> Result<ModelConfig, ModelError> {
        let arch_name = g.require_str("general.architecture")?.to_string();
        let arch = match arch_name.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "gemma3" => Arch::Gemma3,
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
            return Err(ModelError::Config("head_count and embedding_length must be > 0".into()));
        }
        let n_head_kv = g.get_u64(&key("attention.head_count_kv"))?.map_or(n_head, |v| v as usize);
        let head_dim_k =
            g.get_u64(&key("attention.key_length"))?.map_or(n_embd / n_head, |v| v as usize);
        let head_dim_v =
            g.get_u64(&key("attention.value_length"))?.map_or(n_embd / n_head, |v| v as usize);
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(ModelError::Config(format!(
                "head_count {n_head} is not a multiple of head_count_kv {n_head_kv}"
            )));
        }
        if head_dim_k % 2 != 0 || head_dim_k == 0 {
            return Err(ModelError::Config(format!("key_length {head_dim_k} must be even")));
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
                // llama3-style scaling is carried by the `rope_freqs.weight` tensor instead.
                if other == "llama3" {
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
                g.get_u64(&key("attention.sliding_window"))?.map(|v| v as usize),
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
            rms_eps: g.get_f32(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6),
            rope_base,
            rope_base_swa,
            rope_linear_factor,
            rope_style: match arch {
                Arch::Llama => RopeStyle::Interleaved,
                Arch::Qwen2 | Arch::Gemma3 => RopeStyle::Neox,
            },
            sliding_window,
            swa_period,
            arch_name,
        };
        Ok(cfg)
    }

    /// Whether layer `il` (0-based) attends only within the sliding window.
    pub fn is_swa_layer(&self, il: usize) -> bool {
        self.sliding_window.is_some() && (il + 1) % self.swa_period != 0
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
