//! Hugging Face checkpoint folders: `config.json` + `model.safetensors` (or sharded
//! `model-*.safetensors` with `model.safetensors.index.json`). Tensors are memory-mapped and
//! renamed onto the canonical (GGUF) names; F32, F16 and BF16 stay in the file, FP8 E4M3 with
//! 128×128 block scales (`weight_scale_inv`, as the official DeepSeek-V3/R1 checkpoints ship)
//! is dequantized to F32 at load, which [`HfModel::held_in_memory`] reports.
//!
//! `config.json` is read as transformers 4.x (`rope_theta`, `rope_scaling`) and 5.x
//! (`rope_parameters`) write it. A key that changes the math and is absent takes the default of
//! transformers' configuration class for the `model_type` (`defaults`; the table is in the
//! README's "Supported" section); a value the model code cannot honour is an error naming the key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use baicai_kernels::DType;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{
    self, Arch, Field, FileTensors, KeySource, MlaConfig, ModelConfig, MoeConfig, Yarn,
};
use crate::error::ModelError;
use crate::moe::{GroupScore, RouterConfig, Scoring};
use crate::weights::{Bytes, TensorEntry, WeightStore};

/// A loaded checkpoint folder: config and tensors under canonical names.
pub struct HfModel {
    pub config: ModelConfig,
    pub store: WeightStore,
    /// How many tensors of each source type were loaded, and how they are held.
    pub held_in_memory: Vec<String>,
    /// Bytes of all shards.
    pub file_size: u64,
}

fn err(path: &Path, what: impl std::fmt::Display) -> ModelError {
    ModelError::Config(format!("{}: {what}", path.display()))
}

/// One tensor as a safetensors header describes it.
#[derive(Debug)]
struct RawTensor {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    start: usize,
    end: usize,
    file: usize,
}

/// Parses a safetensors header: u64 little-endian length, then that many bytes of JSON.
fn parse_header(path: &Path, bytes: &[u8], file: usize) -> Result<Vec<RawTensor>, ModelError> {
    if bytes.len() < 8 {
        return Err(err(
            path,
            "file shorter than the 8-byte safetensors header length",
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > (bytes.len() - 8) as u64 || n > 100 << 20 {
        return Err(err(
            path,
            format!("header length {n} exceeds the file ({} bytes)", bytes.len()),
        ));
    }
    let header: Value = serde_json::from_slice(&bytes[8..8 + n as usize])
        .map_err(|e| err(path, format!("header is not JSON: {e}")))?;
    let obj = header
        .as_object()
        .ok_or_else(|| err(path, "header is not a JSON object"))?;
    let data_start = 8 + n as usize;
    let data_len = bytes.len() - data_start;
    let mut out = Vec::new();
    for (name, t) in obj {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t["dtype"]
            .as_str()
            .ok_or_else(|| err(path, format!("tensor '{name}': no dtype")))?;
        let shape: Vec<u64> = t["shape"]
            .as_array()
            .ok_or_else(|| err(path, format!("tensor '{name}': no shape")))?
            .iter()
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| err(path, format!("tensor '{name}': bad shape")))
            })
            .collect::<Result<_, _>>()?;
        let offs = t["data_offsets"].as_array().filter(|a| a.len() == 2);
        let offs = offs.ok_or_else(|| err(path, format!("tensor '{name}': no data_offsets")))?;
        let (s, e) = (
            offs[0].as_u64().unwrap_or(u64::MAX),
            offs[1].as_u64().unwrap_or(u64::MAX),
        );
        if s > e || e > data_len as u64 {
            return Err(err(
                path,
                format!("tensor '{name}': data {s}..{e} outside the {data_len} data bytes"),
            ));
        }
        let elem = match dtype {
            "F32" => 4,
            "F16" | "BF16" => 2,
            "F8_E4M3" | "U8" | "I8" => 1,
            _ => 0,
        };
        let count = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        if elem > 0 && count.and_then(|c| c.checked_mul(elem)) != Some(e - s) {
            return Err(err(
                path,
                format!(
                    "tensor '{name}': {} bytes do not hold shape {shape:?} of {dtype}",
                    e - s
                ),
            ));
        }
        out.push(RawTensor {
            name: name.clone(),
            dtype: dtype.to_string(),
            shape,
            start: data_start + s as usize,
            end: data_start + e as usize,
            file,
        });
    }
    Ok(out)
}

/// The shard files of a folder.
fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|e| {
        err(
            dir,
            format!("no model.safetensors and no readable index ({e})"),
        )
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| err(&index, e))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| err(&index, "no weight_map"))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    files.sort();
    files.dedup();
    for f in &files {
        if f.contains('/') || f.contains("..") {
            return Err(err(
                &index,
                format!("shard name '{f}' is not a plain file name"),
            ));
        }
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// HF name → canonical name. `None` for tensors the engine does not use. The text model of a
/// multimodal checkpoint (`model.language_model.…` as transformers 5.x saves it,
/// `language_model.model.…` as 4.x did) is read as a text-only one; its vision tower is unused.
fn canonical_name(arch: Arch, name: &str) -> Option<String> {
    let name = match name
        .strip_prefix("model.language_model.")
        .or_else(|| name.strip_prefix("language_model.model."))
    {
        Some(rest) => format!("model.{rest}"),
        None => name
            .strip_prefix("language_model.")
            .unwrap_or(name)
            .to_string(),
    };
    let name = name.as_str();
    let fixed = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (il, rest) = rest.split_once('.')?;
    let il: usize = il.parse().ok()?;
    let map = |s: &str| Some(format!("blk.{il}.{s}"));
    if let Some(r) = rest
        .strip_prefix("mlp.experts.")
        .or_else(|| rest.strip_prefix("block_sparse_moe.experts."))
    {
        // Experts keep their index: blk.N.ffn_{gate,up,down}_exps.E.weight
        let (e, w) = r.split_once('.')?;
        let kind = match w {
            "gate_proj.weight" | "w1.weight" => "gate",
            "up_proj.weight" | "w3.weight" => "up",
            "down_proj.weight" | "w2.weight" => "down",
            "gate_proj.weight_scale_inv" => return map(&format!("ffn_gate_exps.{e}.scale_inv")),
            "up_proj.weight_scale_inv" => return map(&format!("ffn_up_exps.{e}.scale_inv")),
            "down_proj.weight_scale_inv" => return map(&format!("ffn_down_exps.{e}.scale_inv")),
            _ => return None,
        };
        return map(&format!("ffn_{kind}_exps.{e}.weight"));
    }
    let (base, suffix) = match rest.strip_suffix(".weight_scale_inv") {
        Some(b) => (b, "scale_inv"),
        None => match rest.rsplit_once('.') {
            Some((b, s)) => (b, s),
            None => return None,
        },
    };
    let canon = match base {
        "input_layernorm" => "attn_norm",
        // Gemma normalizes the attention's output with it, and the feed-forward block's input
        // with `pre_feedforward_layernorm`; the others normalize the feed-forward input with it.
        "post_attention_layernorm" if arch == Arch::Gemma3 => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "self_attn.q_a_proj" => "attn_q_a",
        "self_attn.q_a_layernorm" => "attn_q_a_norm",
        "self_attn.q_b_proj" => "attn_q_b",
        "self_attn.kv_a_proj_with_mqa" => "attn_kv_a_mqa",
        "self_attn.kv_a_layernorm" => "attn_kv_a_norm",
        "self_attn.kv_b_proj" => "attn_kv_b",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "mlp.gate" | "block_sparse_moe.gate" => {
            if suffix == "e_score_correction_bias" {
                return map("exp_probs_b.bias");
            }
            "ffn_gate_inp"
        }
        "mlp.shared_experts.gate_proj" | "mlp.shared_expert.gate_proj" => "ffn_gate_shexp",
        "mlp.shared_experts.up_proj" | "mlp.shared_expert.up_proj" => "ffn_up_shexp",
        "mlp.shared_experts.down_proj" | "mlp.shared_expert.down_proj" => "ffn_down_shexp",
        "mlp.shared_expert_gate" => "ffn_gate_inp_shexp",
        _ => return None,
    };
    map(&format!("{canon}.{suffix}"))
}

/// Little-endian F32, F16 or BF16 values as f32.
fn decode_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect(),
    }
}

fn fp8_e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((b >> 3) & 0x0f) as i32;
    let m = (b & 0x07) as f32;
    if e == 0x0f && (b & 0x07) == 0x07 {
        return f32::NAN;
    }
    if e == 0 {
        sign * (m / 8.0) * 2f32.powi(-6)
    } else {
        sign * (1.0 + m / 8.0) * 2f32.powi(e - 7)
    }
}

/// FP8 E4M3 `[rows, cols]` with `[ceil(rows/128), ceil(cols/128)]` f32 block scales → f32 bytes.
fn dequant_fp8(w: &[u8], scales: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    let sc = cols.div_ceil(128);
    let mut out = Vec::with_capacity(rows * cols * 4);
    for r in 0..rows {
        for c in 0..cols {
            let v = fp8_e4m3_to_f32(w[r * cols + c]) * scales[(r / 128) * sc + c / 128];
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

impl HfModel {
    /// Opens a checkpoint folder.
    ///
    /// # Errors
    /// Missing or malformed files, unsupported `model_type` or dtypes, each named.
    pub fn open(dir: &Path) -> Result<HfModel, ModelError> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| err(&cfg_path, e))?;
        let json = read_config_json(&cfg_path, &text)?;
        let (config, extra) = config_from_json(&cfg_path, &json)?;
        let mut maps = Vec::new();
        let mut raw = Vec::new();
        let mut file_size = 0;
        for (i, p) in shard_paths(dir)?.iter().enumerate() {
            let f = std::fs::File::open(p).map_err(|e| err(p, e))?;
            // SAFETY: the file is mapped read-only; like every mmap-based loader we rely on it not
            // being truncated while the model runs.
            let m = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| err(p, e))?;
            // 2 MiB mappings where the page cache allows, as for GGUF files (a refused hint
            // changes nothing).
            #[cfg(target_os = "linux")]
            let _ = m.advise(memmap2::Advice::HugePage);
            file_size += m.len() as u64;
            raw.extend(parse_header(p, &m, i)?);
            maps.push(Arc::new(m));
        }
        // The configuration is checked against the tensors' names and shapes before anything is
        // sized from it (or FP8 weights are converted).
        let canonical: Vec<(String, Vec<u64>)> = raw
            .iter()
            .filter_map(|t| {
                let shape = t.shape.iter().rev().copied().collect();
                canonical_name(config.arch, &t.name).map(|n| (n, shape))
            })
            .collect();
        let file = FileTensors::new(canonical.iter().map(|(n, s)| (n.as_str(), s.as_slice())));
        config.validate(&KeySource::Hf(text_config(&json)), &file)?;
        if !extra.tie_embeddings && !canonical.iter().any(|(n, _)| n == "output.weight") {
            return Err(err(
                dir,
                "no lm_head.weight, and tie_word_embeddings is false (the head is not the embedding)",
            ));
        }
        let by_name: HashMap<String, &RawTensor> =
            raw.iter().map(|t| (t.name.clone(), t)).collect();
        let mut tensors = HashMap::new();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for t in &raw {
            let Some(canon) = canonical_name(config.arch, &t.name) else {
                continue;
            };
            // Tied embeddings: transformers uses the embedding as the head even where the file
            // also holds `lm_head.weight`.
            if canon.ends_with(".scale_inv") || (extra.tie_embeddings && canon == "output.weight") {
                continue;
            }
            // ggml order: innermost dimension first.
            let shape: Vec<u64> = t.shape.iter().rev().copied().collect();
            let bytes = Bytes::mapped(maps[t.file].clone(), t.start, t.end - t.start);
            let (dtype, bytes, held) = match t.dtype.as_str() {
                "F32" => (DType::F32, bytes, "F32, mapped from the file"),
                "F16" => (DType::F16, bytes, "F16, mapped from the file"),
                "BF16" => (DType::BF16, bytes, "BF16, mapped from the file"),
                "F8_E4M3" => {
                    let scale_name = t.name.replace(".weight", ".weight_scale_inv");
                    let s = by_name.get(&scale_name).ok_or_else(|| {
                        err(
                            dir,
                            format!("FP8 tensor '{}' has no '{scale_name}'", t.name),
                        )
                    })?;
                    if t.shape.len() != 2 || s.dtype != "F32" {
                        return Err(err(
                            dir,
                            format!("FP8 tensor '{}' must be 2-D with F32 scales", t.name),
                        ));
                    }
                    let (rows, cols) = (t.shape[0] as usize, t.shape[1] as usize);
                    let need = rows.div_ceil(128) * cols.div_ceil(128);
                    let sb = &maps[s.file][s.start..s.end];
                    if sb.len() != need * 4 {
                        return Err(err(
                            dir,
                            format!(
                                "'{scale_name}' has {} values, expected {need}",
                                sb.len() / 4
                            ),
                        ));
                    }
                    let scales: Vec<f32> = sb
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                        .collect();
                    let w = &maps[t.file][t.start..t.end];
                    (
                        DType::F32,
                        Bytes::owned(dequant_fp8(w, &scales, rows, cols)),
                        "FP8 E4M3 → F32 at load (128×128 block scales applied)",
                    )
                }
                other => {
                    return Err(err(
                        dir,
                        format!(
                            "tensor '{}' has dtype {other}; supported: F32, F16, BF16, F8_E4M3",
                            t.name
                        ),
                    ))
                }
            };
            *counts.entry(held.to_string()).or_default() += 1;
            // Gemma's RMSNorm multiplies by `1 + w` (Gemma3RMSNorm); the GGUF converter stores
            // `1 + w`, which the model code expects.
            let (dtype, bytes) = if config.arch == Arch::Gemma3 && canon.ends_with("norm.weight") {
                let w = decode_f32(dtype, bytes.as_slice());
                let plus_one: Vec<u8> = w.iter().flat_map(|v| (1.0 + v).to_le_bytes()).collect();
                (DType::F32, Bytes::owned(plus_one))
            } else {
                (dtype, bytes)
            };
            tensors.insert(
                canon,
                TensorEntry {
                    shape,
                    dtype,
                    bytes,
                },
            );
        }
        if let Some(l) = extra.llama3 {
            let factors = l.freq_factors(config.rope_base, config.head_dim_k);
            // Llama 3's RoPE scaling as llama.cpp's converter writes it: one divisor per frequency.
            tensors.insert(
                "rope_freqs.weight".into(),
                TensorEntry {
                    shape: vec![factors.len() as u64],
                    dtype: DType::F32,
                    bytes: Bytes::owned(factors.iter().flat_map(|v| v.to_le_bytes()).collect()),
                },
            );
        }
        let mut held_in_memory: Vec<String> = counts
            .into_iter()
            .map(|(k, v)| format!("{v} tensors: {k}"))
            .collect();
        held_in_memory.sort();
        Ok(HfModel {
            config,
            store: WeightStore::from_entries(tensors),
            held_in_memory,
            file_size,
        })
    }
}

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
struct Llama3Rope {
    factor: f64,
    low_freq_factor: f64,
    high_freq_factor: f64,
    original_context: f64,
}

impl Llama3Rope {
    /// The divisor of each of the `head_dim / 2` frequencies of base `base`, as
    /// `_compute_llama3_parameters` of transformers scales them: long wavelengths by `factor`,
    /// short ones not at all, and a smooth blend between.
    fn freq_factors(&self, base: f32, head_dim: usize) -> Vec<f32> {
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
struct HfExtra {
    /// `tie_word_embeddings`: the head is the token embedding.
    tie_embeddings: bool,
    /// Llama 3 RoPE scaling, turned into `rope_freqs.weight` once the configuration is checked.
    llama3: Option<Llama3Rope>,
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
fn read_config_json(path: &Path, text: &str) -> Result<Value, ModelError> {
    serde_json::from_str(text).map_err(|e| err(path, e))
}

/// The text model's part of a `config.json`: its `text_config` where it has one (multimodal
/// checkpoints such as `Gemma3ForConditionalGeneration`), else all of it.
fn text_config(v: &Value) -> &Value {
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
fn config_from_json(path: &Path, v: &Value) -> Result<(ModelConfig, HfExtra), ModelError> {
    let v = text_config(v);
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
    Ok(MlaConfig {
        q_lora_rank: h.q_lora_rank,
        kv_lora_rank: need(h.kv_lora_rank, "kv_lora_rank")?,
        qk_nope_head_dim: need(h.qk_nope_head_dim, "qk_nope_head_dim")?,
        qk_rope_head_dim: need(h.qk_rope_head_dim, "qk_rope_head_dim")?,
        v_head_dim: need(h.v_head_dim, "v_head_dim")?,
        yarn,
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
    let scoring = match h.scoring_func.as_deref().unwrap_or("softmax") {
        "softmax" => Scoring::Softmax,
        "sigmoid" => Scoring::Sigmoid,
        other => return Err(keys.error(Field::GatingFunc, other, "not supported")),
    };
    let topk_method = h.topk_method.as_deref().unwrap_or("greedy");
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
        first_dense: h.first_k_dense_replace.unwrap_or(0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from the OCP 8-bit floating point specification (E4M3: bias 7, no infinities,
    /// S.1111.111 is NaN).
    #[test]
    fn fp8_e4m3_decodes_spec_values() {
        assert_eq!(fp8_e4m3_to_f32(0x00), 0.0);
        assert_eq!(fp8_e4m3_to_f32(0x01), 2f32.powi(-9)); // smallest subnormal
        assert_eq!(fp8_e4m3_to_f32(0x07), 0.875 * 2f32.powi(-6)); // largest subnormal
        assert_eq!(fp8_e4m3_to_f32(0x08), 2f32.powi(-6)); // smallest normal
        assert_eq!(fp8_e4m3_to_f32(0x38), 1.0);
        assert_eq!(fp8_e4m3_to_f32(0xB8), -1.0);
        assert_eq!(fp8_e4m3_to_f32(0x7E), 448.0); // largest normal
        assert!(fp8_e4m3_to_f32(0x7F).is_nan());
        assert!(fp8_e4m3_to_f32(0xFF).is_nan());
    }

    #[test]
    fn hostile_safetensors_headers_are_rejected() {
        let p = Path::new("x.safetensors");
        assert!(parse_header(p, &[1, 2, 3], 0).is_err());
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(parse_header(p, &huge, 0)
            .unwrap_err()
            .to_string()
            .contains("header length"));
        let mk = |json: &str, data: usize| {
            let mut v = (json.len() as u64).to_le_bytes().to_vec();
            v.extend_from_slice(json.as_bytes());
            v.extend(std::iter::repeat_n(0u8, data));
            v
        };
        let out_of_range = mk(
            r#"{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}}"#,
            8,
        );
        assert!(parse_header(p, &out_of_range, 0)
            .unwrap_err()
            .to_string()
            .contains("outside"));
        let wrong_size = mk(
            r#"{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#,
            8,
        );
        assert!(parse_header(p, &wrong_size, 0)
            .unwrap_err()
            .to_string()
            .contains("do not hold"));
        let overflow = mk(
            r#"{"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 8]}}"#,
            8,
        );
        assert!(parse_header(p, &overflow, 0).is_err());
        let ok = mk(
            r#"{"__metadata__": {}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#,
            8,
        );
        assert_eq!(parse_header(p, &ok, 0).unwrap().len(), 1);
    }

    #[test]
    fn checkpoint_names_map_onto_gguf_names() {
        let m = |s: &str| canonical_name(Arch::Deepseek2, s);
        assert_eq!(
            m("model.layers.3.self_attn.kv_a_proj_with_mqa.weight").as_deref(),
            Some("blk.3.attn_kv_a_mqa.weight")
        );
        assert_eq!(
            m("model.layers.1.mlp.experts.7.down_proj.weight").as_deref(),
            Some("blk.1.ffn_down_exps.7.weight")
        );
        assert_eq!(
            m("model.layers.1.block_sparse_moe.experts.2.w3.weight").as_deref(),
            Some("blk.1.ffn_up_exps.2.weight")
        );
        assert_eq!(
            m("model.layers.2.mlp.gate.e_score_correction_bias").as_deref(),
            Some("blk.2.exp_probs_b.bias")
        );
        assert_eq!(
            m("model.layers.0.mlp.shared_expert_gate.weight").as_deref(),
            Some("blk.0.ffn_gate_inp_shexp.weight")
        );
        assert_eq!(m("model.layers.0.self_attn.rotary_emb.inv_freq"), None);
        let g = |s: &str| canonical_name(Arch::Gemma3, s);
        assert_eq!(
            g("model.layers.0.post_attention_layernorm.weight").as_deref(),
            Some("blk.0.post_attention_norm.weight")
        );
        assert_eq!(
            g("model.language_model.layers.1.pre_feedforward_layernorm.weight").as_deref(),
            Some("blk.1.ffn_norm.weight")
        );
        assert_eq!(
            g("language_model.model.norm.weight").as_deref(),
            Some("output_norm.weight")
        );
        assert_eq!(
            g("language_model.lm_head.weight").as_deref(),
            Some("output.weight")
        );
        assert_eq!(
            g("model.vision_tower.vision_model.post_layernorm.weight"),
            None
        );
    }

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
