//! Test support, not part of the library: hostile variants of the fixture models. Shared by the
//! bounded run in `tests/hostile_models.rs`, the `model_load` fuzz target (`fuzz/`, which includes
//! this file with `#[path]`) and the CLI's error tests.
//!
//! A [`Corpus`] holds the tiny fixture models (`fixtures/moe/*/model-f32.gguf`,
//! `fixtures/dense/llama/model-f32.gguf`, and the checkpoint folders `fixtures/moe/*`). A [`Case`]
//! is one of them with its metadata values or `config.json` fields changed: numbers set to 0, 1,
//! huge, negative or NaN, keys removed or added, types swapped. [`Case::run`] loads it and runs
//! one token, and says whether that gave a model or an error; a panic or an abort is the bug
//! these tools look for. Every choice comes from a [`Choices`]: a seeded [`Rng`] (reproducible
//! from its seed) or the fuzzer's bytes ([`ByteChoices`]).

#![allow(dead_code)] // each includer uses its part

use std::path::{Path, PathBuf};
use std::sync::Arc;

use baicai_gguf::{Gguf, TensorSpec, Value};
use baicai_models::{Logits, ModelError};
use serde_json::Value as Json;

/// Where every choice of a mutation comes from.
pub trait Choices {
    /// A number in `0..n` (`n` ≥ 1).
    fn below(&mut self, n: usize) -> usize;

    /// One of `items`.
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// SplitMix64: a seeded, reproducible [`Choices`].
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Choices for Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The fuzzer's bytes as choices: one byte per choice (two for more than 256 options), 0 once
/// they run out, so short inputs make simple cases and coverage guidance steers each choice.
pub struct ByteChoices<'a>(pub &'a [u8]);

impl Choices for ByteChoices<'_> {
    fn below(&mut self, n: usize) -> usize {
        let width = if n > 256 { 2 } else { 1 };
        let mut v = 0usize;
        for _ in 0..width {
            let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
            v = v << 8 | b as usize;
            self.0 = rest;
        }
        v % n
    }
}

/// One fixture model, read once.
pub enum Seed {
    /// A GGUF file: its metadata in file order and its tensors.
    Gguf {
        name: String,
        metadata: Vec<(String, Value)>,
        tensors: Vec<(TensorSpec, Vec<u8>)>,
    },
    /// A checkpoint folder: its `config.json`, and a working folder whose `model.safetensors`
    /// links to the fixture's, where mutated configurations are written.
    Hf {
        name: String,
        config: Json,
        work: PathBuf,
    },
}

impl Seed {
    /// The fixture's name (`deepseek-v3/model-f32.gguf`, `qwen2-moe/`).
    pub fn name(&self) -> &str {
        match self {
            Seed::Gguf { name, .. } | Seed::Hf { name, .. } => name,
        }
    }

    /// A GGUF fixture read into a seed.
    pub fn gguf(name: &str, path: &Path) -> Seed {
        let g = Gguf::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let metadata = g
            .metadata_keys_in_file_order()
            .iter()
            .map(|k| (k.clone(), g.get(k).expect("listed key").clone()))
            .collect();
        let tensors = g
            .tensors()
            .iter()
            .map(|t| {
                let spec = TensorSpec::new(t.name.clone(), &t.shape, t.ggml_type);
                (spec, g.tensor_data(t).to_vec())
            })
            .collect();
        Seed::Gguf {
            name: name.to_string(),
            metadata,
            tensors,
        }
    }

    /// A checkpoint folder fixture as a seed; mutated configurations go to `work`.
    pub fn hf(name: &str, dir: &Path, work: &Path) -> Seed {
        let text = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
        std::fs::create_dir_all(work).expect("work folder");
        let link = work.join("model.safetensors");
        let _ = std::fs::remove_file(&link);
        let target = dir
            .join("model.safetensors")
            .canonicalize()
            .expect("weights");
        std::os::unix::fs::symlink(target, &link).expect("link the weights");
        Seed::Hf {
            name: name.to_string(),
            config: serde_json::from_str(&text).expect("config.json is JSON"),
            work: work.to_path_buf(),
        }
    }
}

/// The fixture models of the repository at `root`; checkpoint folders get working folders
/// under `work`.
pub struct Corpus {
    pub seeds: Vec<Seed>,
}

/// GGUF fixtures, relative to the repository root.
pub const GGUF_FIXTURES: &[&str] = &[
    "fixtures/dense/llama/model-f32.gguf",
    "fixtures/moe/deepseek-v2/model-f32.gguf",
    "fixtures/moe/deepseek-v2-lite/model-f32.gguf",
    "fixtures/moe/deepseek-v2-lite/model-f32-kv_b.gguf",
    "fixtures/moe/deepseek-v3/model-f32.gguf",
    "fixtures/moe/mixtral/model-f32.gguf",
    "fixtures/moe/qwen2-moe/model-f32.gguf",
    "fixtures/moe/qwen3-moe/model-f32.gguf",
    "fixtures/moe/deepseek-v32/model-f32.gguf",
    "fixtures/moe/kimi-k2/model-f32.gguf",
    "fixtures/moe/deepseek-v4/model-f32.gguf",
];

/// Checkpoint folder fixtures, relative to the repository root.
pub const HF_FIXTURES: &[&str] = &[
    "fixtures/moe/deepseek-v2",
    "fixtures/moe/deepseek-v2-lite",
    "fixtures/moe/deepseek-v3",
    "fixtures/moe/deepseek-v3-fp8",
    "fixtures/moe/mixtral",
    "fixtures/moe/qwen2-moe",
    "fixtures/moe/qwen3-moe",
    "fixtures/moe/deepseek-v32",
    "fixtures/moe/kimi-k2",
    "fixtures/moe/deepseek-v4",
    "fixtures/moe/deepseek-v4-release",
    "fixtures/moe/deepseek-v32-fp8",
];

impl Corpus {
    pub fn load(root: &Path, work: &Path) -> Corpus {
        let mut seeds: Vec<Seed> = GGUF_FIXTURES
            .iter()
            .map(|f| Seed::gguf(f.trim_start_matches("fixtures/"), &root.join(f)))
            .collect();
        for f in HF_FIXTURES {
            let name = f.trim_start_matches("fixtures/moe/");
            seeds.push(Seed::hf(name, &root.join(f), &work.join(name)));
        }
        Corpus { seeds }
    }

    /// A mutated copy of one seed, every choice from `c`.
    pub fn mutate(&self, c: &mut impl Choices) -> Case {
        let seed = &self.seeds[c.below(self.seeds.len())];
        let n = 1 + c.below(3);
        match seed {
            Seed::Gguf {
                name,
                metadata,
                tensors,
            } => {
                let mut md = metadata.clone();
                let arch = md
                    .iter()
                    .find(|(k, _)| k == "general.architecture")
                    .and_then(|(_, v)| v.as_str().map(String::from))
                    .unwrap_or_default();
                let changes = (0..n).map(|_| mutate_gguf(&mut md, &arch, c)).collect();
                let specs: Vec<(TensorSpec, &[u8])> = tensors
                    .iter()
                    .map(|(s, d)| (s.clone(), d.as_slice()))
                    .collect();
                let bytes = baicai_gguf::write_to_vec(&md, &specs).expect("write GGUF");
                Case {
                    fixture: name.clone(),
                    changes,
                    input: Input::Gguf(bytes),
                }
            }
            Seed::Hf { name, config, work } => {
                let mut cfg = config.clone();
                let changes = (0..n).map(|_| mutate_json(&mut cfg, c)).collect();
                Case {
                    fixture: name.clone(),
                    changes,
                    input: Input::Hf {
                        text: json_text(&cfg),
                        dir: work.clone(),
                    },
                }
            }
        }
    }
}

/// What a case loads.
pub enum Input {
    /// A whole GGUF file.
    Gguf(Vec<u8>),
    /// A `config.json` text, to be written into `dir` beside the fixture's weights.
    Hf { text: String, dir: PathBuf },
}

/// A fixture with some values changed.
pub struct Case {
    pub fixture: String,
    /// The changes, as `key: old -> new` lines.
    pub changes: Vec<String>,
    pub input: Input,
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.fixture, self.changes.join("; "))
    }
}

impl Case {
    /// Loads the case and runs two tokens then one more: `Ok` when that works, the error when it
    /// does not. A panic or abort is a bug.
    pub fn run(&self) -> Result<(), ModelError> {
        let model = match &self.input {
            Input::Gguf(bytes) => {
                let g = Gguf::from_bytes(bytes.clone())?;
                baicai_models::load(Arc::new(g))?
            }
            Input::Hf { text, dir } => {
                std::fs::write(dir.join("config.json"), text).expect("write config.json");
                baicai_models::load_hf(dir)?.0
            }
        };
        let mut cache = model.new_cache(8);
        model.forward(&[1, 2], &mut cache, Logits::Last)?;
        model.forward(&[3], &mut cache, Logits::All)?;
        Ok(())
    }
}

/// GGUF keys (after `<arch>.`) a mutation may add, beside those the file has: every key a
/// configuration reads.
const GGUF_KEYS: &[&str] = &[
    "block_count",
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "vocab_size",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.key_length_mla",
    "attention.value_length_mla",
    "attention.layer_norm_rms_epsilon",
    "attention.sliding_window",
    "attention.q_lora_rank",
    "attention.kv_lora_rank",
    "rope.freq_base",
    "rope.dimension_count",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.original_context_length",
    "rope.scaling.yarn_beta_fast",
    "rope.scaling.yarn_beta_slow",
    "rope.scaling.yarn_log_multiplier",
    "expert_count",
    "expert_used_count",
    "expert_group_count",
    "expert_group_used_count",
    "expert_gating_func",
    "expert_weights_norm",
    "expert_weights_scale",
    "expert_feed_forward_length",
    "expert_shared_feed_forward_length",
    "expert_shared_count",
    "leading_dense_block_count",
];

/// An architecture name for `general.architecture` or a key prefix: a supported one, or one
/// that is not.
fn arch_name(c: &mut impl Choices) -> &'static str {
    let supported = baicai_models::SUPPORTED_ARCHITECTURES;
    let i = c.below(supported.len() + 2);
    supported
        .get(i)
        .copied()
        .unwrap_or_else(|| ["mixtral", ""][i - supported.len()])
}

const STRINGS: &[&str] = &[
    "yarn",
    "linear",
    "llama3",
    "none",
    "",
    "softmax",
    "sigmoid",
    "greedy",
    "noaux_tc",
    "group_limited_greedy",
    "deepseek_v3",
    "qwen2_moe",
    "mixtral",
    "bogus",
];

/// Integers a count may become: the edges and the huge.
const INTS: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    16,
    1 << 16,
    1 << 31,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    1 << 62,
    u64::MAX,
];

const FLOATS: &[f64] = &[
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    0.0,
    -0.0,
    -1.0,
    0.5,
    1.0,
    1e-30,
    1e30,
    f64::MAX,
];

/// A hostile GGUF value near `old` (or of any type, when the type is swapped).
fn gguf_value(old: Option<&Value>, c: &mut impl Choices) -> Value {
    let near = old.and_then(Value::to_u64).unwrap_or(4);
    match c.below(10) {
        0 => Value::U32(near.wrapping_add(1) as u32),
        1 => Value::U32(near.saturating_sub(1) as u32),
        2 => Value::U32(near.wrapping_mul(2) as u32),
        3 => Value::U32(*c.pick(INTS) as u32),
        4 => Value::U64(*c.pick(INTS)),
        5 => Value::I32(*c.pick(&[-1, -2, -1000, i32::MIN])),
        6 => Value::F32(*c.pick(FLOATS) as f32),
        7 => Value::F64(*c.pick(FLOATS)),
        8 => match c.below(3) {
            0 => Value::Bool(c.below(2) == 0),
            1 => Value::Array(vec![Value::U32(near as u32); c.below(3)]),
            _ => Value::String(arch_name(c).to_string()),
        },
        _ => Value::String(c.pick(STRINGS).to_string()),
    }
}

/// One change to GGUF metadata: a value replaced, a key removed, or a key added; returns it as
/// `key: old -> new`.
fn mutate_gguf(md: &mut Vec<(String, Value)>, arch: &str, c: &mut impl Choices) -> String {
    // Only the keys the configuration reads matter; tokenizer keys are left alone.
    let model_keys: Vec<usize> = (0..md.len())
        .filter(|&i| md[i].0.starts_with(&format!("{arch}.")) || md[i].0 == "general.architecture")
        .collect();
    match c.below(8) {
        0 if !model_keys.is_empty() => {
            let i = *c.pick(&model_keys);
            let (k, v) = md.remove(i);
            format!("{k}: {v:?} -> removed")
        }
        1 => {
            let a = if c.below(4) == 0 { arch_name(c) } else { arch };
            let k = format!("{a}.{}", c.pick(GGUF_KEYS));
            let v = gguf_value(None, c);
            let line = format!("{k}: added {v:?}");
            match md.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v,
                None => md.push((k, v)),
            }
            line
        }
        2 => {
            let i = md.iter().position(|(k, _)| k == "general.architecture");
            let new = Value::String(arch_name(c).to_string());
            let line = format!("general.architecture -> {new:?}");
            match i {
                Some(i) => md[i].1 = new,
                None => md.push(("general.architecture".into(), new)),
            }
            line
        }
        _ if !model_keys.is_empty() => {
            let i = *c.pick(&model_keys);
            let new = gguf_value(Some(&md[i].1), c);
            let line = format!("{}: {:?} -> {new:?}", md[i].0, md[i].1);
            md[i].1 = new;
            line
        }
        _ => "nothing".into(),
    }
}

/// `config.json` keys a mutation may add, beside those the file has.
const JSON_KEYS: &[&str] = &[
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "intermediate_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "n_routed_experts",
    "num_experts",
    "num_local_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "n_shared_experts",
    "n_group",
    "topk_group",
    "topk_method",
    "scoring_func",
    "norm_topk_prob",
    "routed_scaling_factor",
    "first_k_dense_replace",
    "model_type",
];

const ROPE_KEYS: &[&str] = &[
    "type",
    "rope_type",
    "factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
];

/// Stands for a literal the JSON data model cannot hold (`NaN`, `1e999`); [`json_text`] writes
/// it out as is.
const RAW: &str = "\u{1}raw:";

/// A hostile JSON value near `old` (or of any type, when the type is swapped).
fn json_value(old: Option<&Json>, c: &mut impl Choices) -> Json {
    let near = old.and_then(Json::as_u64).unwrap_or(4);
    match c.below(11) {
        0 => Json::from(near.saturating_add(1)),
        1 => Json::from(near.saturating_sub(1)),
        2 => Json::from(near.saturating_mul(2)),
        3 => Json::from(*c.pick(INTS)),
        4 => Json::from(4_000_000_000u64),
        5 => Json::from(-(1 + c.below(1000) as i64)),
        6 => match serde_json::Number::from_f64(*c.pick(FLOATS)) {
            Some(n) => Json::Number(n),
            None => Json::String(format!("{RAW}{}", c.pick(&["NaN", "Infinity", "1e999"]))),
        },
        7 => Json::String(c.pick(STRINGS).to_string()),
        8 => match c.below(4) {
            0 => Json::Null,
            1 => Json::Bool(c.below(2) == 0),
            2 => Json::Array(vec![Json::from(near)]),
            _ => serde_json::json!({ "type": "yarn", "factor": *c.pick(&[0.0, 1.0, 4.0, -1.0]) }),
        },
        9 => Json::from(near as f64 + 0.5),
        _ => Json::String(format!(
            "{RAW}{}",
            c.pick(&["NaN", "-Infinity", "1e999", "-0"])
        )),
    }
}

/// One change to a `config.json` (or to its `rope_scaling`), returned as `key: old -> new`.
fn mutate_json(cfg: &mut Json, c: &mut impl Choices) -> String {
    let into_rope = c.below(6) == 0 && cfg.get("rope_scaling").is_some_and(Json::is_object);
    let (obj, prefix, known) = if into_rope {
        let o = cfg["rope_scaling"].as_object_mut().expect("checked");
        (o, "rope_scaling.", ROPE_KEYS)
    } else {
        let Some(o) = cfg.as_object_mut() else {
            return "nothing".into();
        };
        (o, "", JSON_KEYS)
    };
    let keys: Vec<String> = obj.keys().cloned().collect();
    match c.below(6) {
        0 if !keys.is_empty() => {
            let k = c.pick(&keys).clone();
            let old = obj.remove(&k);
            format!("{prefix}{k}: {} -> removed", old.unwrap_or_default())
        }
        1 => {
            let k = c.pick(known).to_string();
            let v = json_value(None, c);
            let line = format!("{prefix}{k}: set to {v}");
            obj.insert(k, v);
            line
        }
        _ if !keys.is_empty() => {
            let k = c.pick(&keys).clone();
            let old = obj.get(&k).cloned();
            let v = json_value(old.as_ref(), c);
            let line = format!("{prefix}{k}: {} -> {v}", old.unwrap_or_default());
            obj.insert(k, v);
            line
        }
        _ => "nothing".into(),
    }
}

/// The text of a mutated `config.json`, with the raw literals of [`RAW`] values written out.
pub fn json_text(cfg: &Json) -> String {
    let text = serde_json::to_string_pretty(cfg).expect("JSON");
    let marker = serde_json::to_string(RAW).expect("JSON");
    let marker = marker.trim_end_matches('"');
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find(marker) {
        out.push_str(&rest[..i]);
        let after = &rest[i + marker.len()..];
        let end = after.find('"').expect("closing quote");
        out.push_str(&after[..end]);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A GGUF fixture with `changes` applied (`None` removes the key), as file bytes: for regression
/// tests and the CLI's.
pub fn gguf_with(path: &Path, changes: &[(&str, Option<Value>)]) -> Vec<u8> {
    let Seed::Gguf {
        mut metadata,
        tensors,
        ..
    } = Seed::gguf("", path)
    else {
        unreachable!()
    };
    for (key, value) in changes {
        metadata.retain(|(k, _)| k != key);
        if let Some(v) = value {
            metadata.push((key.to_string(), v.clone()));
        }
    }
    let specs: Vec<(TensorSpec, &[u8])> = tensors
        .iter()
        .map(|(s, d)| (s.clone(), d.as_slice()))
        .collect();
    baicai_gguf::write_to_vec(&metadata, &specs).expect("write GGUF")
}

/// A checkpoint folder in `work` whose weights link to `fixture`'s and whose `config.json` is the
/// fixture's with `changes` applied (`None` removes the key): for regression tests and the CLI's.
pub fn hf_with(fixture: &Path, work: &Path, changes: &[(&str, Option<Json>)]) -> PathBuf {
    let Seed::Hf { mut config, .. } = Seed::hf("", fixture, work) else {
        unreachable!()
    };
    let obj = config.as_object_mut().expect("config.json is an object");
    for (key, value) in changes {
        match value {
            Some(v) => obj.insert(key.to_string(), v.clone()),
            None => obj.remove(*key),
        };
    }
    std::fs::write(work.join("config.json"), json_text(&config)).expect("write config.json");
    work.to_path_buf()
}
