//! Hugging Face checkpoint folders: `config.json` + `model.safetensors` (or sharded
//! `model-*.safetensors` with `model.safetensors.index.json`). Tensors are memory-mapped and
//! renamed onto the canonical (GGUF) names; F32, F16 and BF16 stay in the file. Quantized weights
//! come with a scale tensor ([`quant`]): FP8 E4M3 with 128×128 block scales (F32
//! `weight_scale_inv` as DeepSeek-V3/R1 ship them, E8M0 `scale` as DeepSeek-V4 does) is
//! dequantized to F32 at load; DeepSeek-V4's packed MXFP4 experts become GGUF MXFP4 blocks.
//! [`HfModel::held_in_memory`] reports both.
//!
//! `config.json` is read as transformers 4.x (`rope_theta`, `rope_scaling`) and 5.x
//! (`rope_parameters`) write it. A key that changes the math and is absent takes the default of
//! transformers' configuration class for the `model_type` (`defaults`; the table is in the
//! README's "Supported" section); a value the model code cannot honour is an error naming the key.
//!
//! [`safetensors`] reads the shards, [`names`] maps tensor names onto the canonical ones,
//! [`quant`] decodes or repacks quantized weights, [`config_json`] translates `config.json`;
//! [`HfModel::open`] puts them together.

mod config_json;
mod names;
mod quant;
mod safetensors;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use baicai_kernels::DType;

pub use config_json::parse_config;
use config_json::{config_from_json, read_config_json, text_config};
use names::canonical_name;
use safetensors::{decode_f32, parse_header, shard_paths, RawTensor};

use crate::config::{Arch, FileTensors, KeySource, ModelConfig};
use crate::error::ModelError;
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

pub(super) fn err(path: &Path, what: impl std::fmt::Display) -> ModelError {
    ModelError::Config(format!("{}: {what}", path.display()))
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
            let mut shape: Vec<u64> = t.shape.iter().rev().copied().collect();
            let bytes = Bytes::mapped(maps[t.file].clone(), t.start, t.end - t.start);
            let (dtype, bytes, held) = match t.dtype.as_str() {
                "F32" => (DType::F32, bytes, "F32, mapped from the file"),
                "F16" => (DType::F16, bytes, "F16, mapped from the file"),
                "BF16" => (DType::BF16, bytes, "BF16, mapped from the file"),
                "F8_E4M3" => {
                    let s = quant::scale_of(dir, t, quant::FP8_SCALES, &by_name)?;
                    let q = quant::Scaled::new(t, s, &maps);
                    (
                        DType::F32,
                        Bytes::owned(quant::fp8_to_f32(dir, &q)?),
                        "FP8 E4M3 → F32 at load (128×128 block scales applied)",
                    )
                }
                // Bytes with a scale companion: MXFP4 in the checkpoints' packing (DeepSeek-V4's
                // routed experts); the ggml shape counts values, two a byte.
                "U8" | "I8" => {
                    let s = quant::scale_of(dir, t, quant::MXFP4_SCALES, &by_name)?;
                    let q = quant::Scaled::new(t, s, &maps);
                    let (mx_shape, blocks) = quant::mxfp4_to_gguf(dir, &q)?;
                    shape = mx_shape;
                    (
                        DType::MXFP4,
                        Bytes::owned(blocks),
                        "MXFP4 (checkpoint packing) → GGUF MXFP4 blocks at load",
                    )
                }
                // Integer tables (DeepSeek-V4's hash routing `tid2eid`), held as f32: the model
                // checks every value is a whole number in range.
                "I32" | "I64" => {
                    let raw = &maps[t.file][t.start..t.end];
                    let vals: Vec<f32> = match t.dtype.as_str() {
                        "I32" => raw
                            .chunks_exact(4)
                            .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as f32)
                            .collect(),
                        _ => raw
                            .chunks_exact(8)
                            .map(|c| i64::from_le_bytes(c.try_into().expect("8")) as f32)
                            .collect(),
                    };
                    (
                        DType::F32,
                        Bytes::owned(vals.iter().flat_map(|v| v.to_le_bytes()).collect()),
                        "integers → F32 at load",
                    )
                }
                other => {
                    return Err(err(
                        dir,
                        format!(
                            "tensor '{}' has dtype {other}; supported: F32, F16, BF16, F8_E4M3 and U8/I8 (packed MXFP4) with scales, I32, I64",
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
        if config.arch == Arch::Deepseek4 {
            crate::models::deepseek4::place_mtp(config.n_layer, &mut tensors)
                .map_err(|e| err(dir, e))?;
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
