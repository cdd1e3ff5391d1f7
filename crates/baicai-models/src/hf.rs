//! Hugging Face checkpoint folders: `config.json` + `model.safetensors` (or sharded
//! `model-*.safetensors` with `model.safetensors.index.json`). Tensors are memory-mapped and
//! renamed onto the canonical (GGUF) names; F32, F16 and BF16 stay in the file, FP8 E4M3 with
//! 128×128 block scales (`weight_scale_inv`, as the official DeepSeek-V3/R1 checkpoints ship)
//! is dequantized to F32 at load, which [`HfModel::held_in_memory`] reports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use baicai_kernels::DType;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{
    self, Arch, Field, FileTensors, KeySource, MlaConfig, ModelConfig, MoeConfig, RopeStyle, Yarn,
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

/// HF name → canonical name. `None` for tensors the engine does not use.
fn canonical_name(name: &str) -> Option<String> {
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
        "post_attention_layernorm" => "ffn_norm",
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
        let config = config_from_json(&cfg_path, &json)?;
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
                canonical_name(&t.name).map(|n| (n, shape))
            })
            .collect();
        let file = FileTensors::new(canonical.iter().map(|(n, s)| (n.as_str(), s.as_slice())));
        config.validate(&KeySource::Hf(&json), &file)?;
        let by_name: HashMap<String, &RawTensor> =
            raw.iter().map(|t| (t.name.clone(), t)).collect();
        let mut tensors = HashMap::new();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for t in &raw {
            let Some(canon) = canonical_name(&t.name) else {
                continue;
            };
            if canon.ends_with(".scale_inv") {
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
            tensors.insert(
                canon,
                TensorEntry {
                    shape,
                    dtype,
                    bytes,
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

/// `config.json` as Hugging Face writes it, for the keys the engine reads (others are ignored).
/// Counts are unsigned integers; a value of another type is an error naming its key.
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
    rope_theta: Option<f64>,
    rope_scaling: Option<HfRopeScaling>,
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

/// `rope_scaling` of `config.json` (YaRN, as DeepSeek-V2/V3 configure it).
#[derive(Debug, Deserialize)]
struct HfRopeScaling {
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_type: Option<String>,
    factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
    beta_fast: Option<f64>,
    beta_slow: Option<f64>,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
}

/// Parses the text of a `config.json` and validates it on its own (without the tensors of a
/// checkpoint, see [`ModelConfig::validate`]).
///
/// # Errors
/// Malformed JSON, a key missing or of the wrong type, an unsupported `model_type`, a value that
/// breaks a rule of [`ModelConfig::validate`].
pub fn parse_config(text: &str) -> Result<ModelConfig, ModelError> {
    let path = Path::new("config.json");
    let json = read_config_json(path, text)?;
    let cfg = config_from_json(path, &json)?;
    cfg.validate(&KeySource::Hf(&json), &FileTensors::unknown())?;
    Ok(cfg)
}

/// The JSON of a `config.json`.
fn read_config_json(path: &Path, text: &str) -> Result<Value, ModelError> {
    serde_json::from_str(text).map_err(|e| err(path, e))
}

/// Reads `config.json` into a [`ModelConfig`] through [`HfConfig`]; a key of the wrong type is
/// named (`num_hidden_layers: invalid type: string "x", expected usize`).
fn config_from_json(path: &Path, v: &Value) -> Result<ModelConfig, ModelError> {
    let h: HfConfig = serde_path_to_error::deserialize(v).map_err(|e| {
        let key = e.path().to_string();
        match key.as_str() {
            "." => err(path, e.into_inner()),
            _ => err(path, format!("{key}: {}", e.into_inner())),
        }
    })?;
    let arch = match h.model_type.as_str() {
        "deepseek_v2" | "deepseek_v3" => Arch::Deepseek2,
        "qwen2_moe" => Arch::Qwen2Moe,
        "qwen3_moe" => Arch::Qwen3Moe,
        "mixtral" => Arch::Mixtral,
        other => {
            return Err(ModelError::UnsupportedArch {
                found: other.to_string(),
                supported: "deepseek_v2, deepseek_v3, qwen2_moe, qwen3_moe, mixtral".into(),
            })
        }
    };
    let keys = KeySource::Hf(v);
    let head_dim = h
        .head_dim
        .unwrap_or(h.hidden_size / h.num_attention_heads.max(1));
    let rope_base = h.rope_theta.unwrap_or(10_000.0) as f32;
    let mla = (arch == Arch::Deepseek2)
        .then(|| mla_from_hf(path, &h))
        .transpose()?;
    let moe = moe_from_hf(path, &keys, arch, &h)?;
    Ok(ModelConfig {
        arch,
        arch_name: h.model_type.clone(),
        n_layer: h.num_hidden_layers,
        n_embd: h.hidden_size,
        n_head: h.num_attention_heads,
        n_head_kv: h.num_key_value_heads.unwrap_or(h.num_attention_heads),
        head_dim_k: head_dim,
        head_dim_v: head_dim,
        n_ff: h.intermediate_size.unwrap_or(0),
        n_vocab: h.vocab_size,
        n_ctx_train: h.max_position_embeddings.unwrap_or(4096),
        rms_eps: h.rms_norm_eps.unwrap_or(1e-6) as f32,
        rope_base,
        rope_base_swa: rope_base,
        rope_linear_factor: 1.0,
        // DeepSeek's HF code de-interleaves before rotate_half, i.e. rotates adjacent pairs;
        // the others rotate halves of the unpermuted HF weights.
        rope_style: if arch == Arch::Deepseek2 {
            RopeStyle::Interleaved
        } else {
            RopeStyle::Neox
        },
        sliding_window: None,
        swa_period: 1,
        mla,
        moe,
    })
}

/// The MLA sizes and YaRN scaling of a DeepSeek `config.json`.
fn mla_from_hf(path: &Path, h: &HfConfig) -> Result<MlaConfig, ModelError> {
    let need = |v: Option<usize>, key: &str| v.ok_or_else(|| err(path, format!("'{key}' missing")));
    let yarn = match &h.rope_scaling {
        None => None,
        Some(r) => match r.kind.as_deref().or(r.rope_type.as_deref()) {
            Some("yarn") => Some(Yarn {
                factor: r.factor.unwrap_or(1.0) as f32,
                original_context: r.original_max_position_embeddings.unwrap_or(4096),
                beta_fast: r.beta_fast.unwrap_or(32.0) as f32,
                beta_slow: r.beta_slow.unwrap_or(1.0) as f32,
                mscale_all_dim: r.mscale_all_dim.unwrap_or(0.0) as f32,
                mscale: r.mscale.unwrap_or(1.0) as f32,
            }),
            None => None,
            Some(other) => {
                return Err(err(
                    path,
                    format!("rope_scaling type '{other}' is not supported (supported: yarn)"),
                ))
            }
        },
    };
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
        let m = |s: &str| canonical_name(s);
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
    }
}
