//! Hugging Face checkpoint folders: `config.json` + `model.safetensors` (or sharded
//! `model-*.safetensors` with `model.safetensors.index.json`). Tensors are memory-mapped and
//! renamed onto the canonical (GGUF) names; F32, F16 and BF16 stay in the file, FP8 E4M3 with
//! 128×128 block scales (`weight_scale_inv`, as the official DeepSeek-V3/R1 checkpoints ship)
//! is dequantized to F32 at load, which [`HfModel::held_in_memory`] reports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use baicai_kernels::DType;
use serde_json::Value;

use crate::config::{Arch, MlaConfig, ModelConfig, MoeConfig, RopeStyle, Yarn};
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
        let json: Value = serde_json::from_str(&text).map_err(|e| err(&cfg_path, e))?;
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

fn get_usize(path: &Path, v: &Value, key: &str) -> Result<usize, ModelError> {
    v[key]
        .as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| err(path, format!("'{key}' missing or not an integer")))
}

fn opt_usize(v: &Value, key: &str) -> Option<usize> {
    v[key].as_u64().map(|x| x as usize)
}

fn opt_f32(v: &Value, key: &str) -> Option<f32> {
    v[key].as_f64().map(|x| x as f32)
}

/// Parses the text of a `config.json`.
///
/// # Errors
/// Malformed JSON, missing keys, unsupported `model_type`.
pub fn parse_config(text: &str) -> Result<ModelConfig, ModelError> {
    let path = Path::new("config.json");
    let json: Value = serde_json::from_str(text).map_err(|e| err(path, e))?;
    config_from_json(path, &json)
}

/// Reads `config.json` into a [`ModelConfig`].
fn config_from_json(path: &Path, v: &Value) -> Result<ModelConfig, ModelError> {
    let model_type = v["model_type"]
        .as_str()
        .ok_or_else(|| err(path, "'model_type' missing"))?;
    let arch = match model_type {
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
    let n_embd = get_usize(path, v, "hidden_size")?;
    let n_head = get_usize(path, v, "num_attention_heads")?;
    let n_head_kv = opt_usize(v, "num_key_value_heads").unwrap_or(n_head);
    let head_dim = opt_usize(v, "head_dim").unwrap_or(n_embd / n_head.max(1));
    let rope = &v["rope_scaling"];
    let yarn = match rope["type"].as_str().or(rope["rope_type"].as_str()) {
        Some("yarn") => Some(Yarn {
            factor: opt_f32(rope, "factor").unwrap_or(1.0),
            original_context: opt_usize(rope, "original_max_position_embeddings").unwrap_or(4096),
            beta_fast: opt_f32(rope, "beta_fast").unwrap_or(32.0),
            beta_slow: opt_f32(rope, "beta_slow").unwrap_or(1.0),
            mscale_all_dim: opt_f32(rope, "mscale_all_dim").unwrap_or(0.0),
            mscale: opt_f32(rope, "mscale").unwrap_or(1.0),
        }),
        None => None,
        Some(other) => {
            return Err(err(
                path,
                format!("rope_scaling type '{other}' is not supported (supported: yarn)"),
            ))
        }
    };
    let mla = (arch == Arch::Deepseek2)
        .then(|| -> Result<MlaConfig, ModelError> {
            Ok(MlaConfig {
                q_lora_rank: opt_usize(v, "q_lora_rank"),
                kv_lora_rank: get_usize(path, v, "kv_lora_rank")?,
                qk_nope_head_dim: get_usize(path, v, "qk_nope_head_dim")?,
                qk_rope_head_dim: get_usize(path, v, "qk_rope_head_dim")?,
                v_head_dim: get_usize(path, v, "v_head_dim")?,
                yarn,
            })
        })
        .transpose()?;
    let n_expert = opt_usize(v, "n_routed_experts")
        .or(opt_usize(v, "num_experts"))
        .or(opt_usize(v, "num_local_experts"));
    let moe = match n_expert {
        Some(n_expert) => {
            let scoring = match v["scoring_func"].as_str().unwrap_or("softmax") {
                "softmax" => Scoring::Softmax,
                "sigmoid" => Scoring::Sigmoid,
                other => {
                    return Err(err(
                        path,
                        format!("scoring_func '{other}' is not supported"),
                    ))
                }
            };
            let topk_method = v["topk_method"].as_str().unwrap_or("greedy");
            let (n_group, topk_group) = match topk_method {
                "greedy" => (1, 1),
                "group_limited_greedy" | "noaux_tc" => (
                    opt_usize(v, "n_group").unwrap_or(1),
                    opt_usize(v, "topk_group").unwrap_or(1),
                ),
                other => return Err(err(path, format!("topk_method '{other}' is not supported"))),
            };
            let norm_default = matches!(arch, Arch::Mixtral);
            let n_ff_expert = opt_usize(v, "moe_intermediate_size")
                .or(opt_usize(v, "intermediate_size"))
                .ok_or_else(|| err(path, "'moe_intermediate_size' missing"))?;
            Some(MoeConfig {
                router: RouterConfig {
                    n_expert,
                    n_used: get_usize(path, v, "num_experts_per_tok")?,
                    scoring,
                    norm_topk_prob: v["norm_topk_prob"].as_bool().unwrap_or(norm_default),
                    scaling: opt_f32(v, "routed_scaling_factor").unwrap_or(1.0),
                    n_group: n_group.max(1),
                    topk_group,
                    group_score: if topk_method == "noaux_tc" {
                        GroupScore::Top2Sum
                    } else {
                        GroupScore::Max
                    },
                },
                n_ff_shared: match opt_usize(v, "shared_expert_intermediate_size") {
                    Some(w) => w,
                    None => opt_usize(v, "n_shared_experts").unwrap_or(0) * n_ff_expert,
                },
                n_ff_expert,
                first_dense: opt_usize(v, "first_k_dense_replace").unwrap_or(0),
            })
        }
        None => None,
    };
    Ok(ModelConfig {
        arch,
        arch_name: model_type.to_string(),
        n_layer: get_usize(path, v, "num_hidden_layers")?,
        n_embd,
        n_head,
        n_head_kv,
        head_dim_k: head_dim,
        head_dim_v: head_dim,
        n_ff: opt_usize(v, "intermediate_size").unwrap_or(0),
        n_vocab: get_usize(path, v, "vocab_size")?,
        n_ctx_train: opt_usize(v, "max_position_embeddings").unwrap_or(4096),
        rms_eps: opt_f32(v, "rms_norm_eps").unwrap_or(1e-6),
        rope_base: opt_f32(v, "rope_theta").unwrap_or(10_000.0),
        rope_base_swa: opt_f32(v, "rope_theta").unwrap_or(10_000.0),
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
