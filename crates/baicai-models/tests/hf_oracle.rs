//! Dense Hugging Face checkpoint folders as transformers 4.x and 5.x save them (fixtures/hf, made
//! by tools/hf_oracle.py: BF16, F16 and F32 shards; `rope_parameters` and `rope_theta` /
//! `rope_scaling`; `head_dim: null`; Llama 3 and linear RoPE scaling; Mistral's and Gemma 3's
//! sliding windows, which the 40-token prompt overruns) against transformers' float32 logits
//! over the same stored weights, and the Qwen3 folder's GGUF conversion by llama.cpp. The models
//! run with their f16 KV cache and, for BF16/F16 weights, their 16-bit matmul paths, hence the
//! bound; greedy continuations must agree wherever transformers' top-2 gap is wider than it.

use std::path::PathBuf;
use std::sync::Arc;

use baicai_models::{CausalLm, Logits};
use serde_json::Value;

mod common;

/// Max |Δlogit| allowed for F32 and F16 weights (f32 activations, the f16 KV cache's rounding;
/// the logits span about ±5).
const BOUND: f32 = 2e-2;
/// For BF16 weights, whose matmuls take BF16-rounded activations (as llama.cpp's BF16 path does).
const BOUND_BF16: f32 = 5e-2;
/// Gemma 3 with BF16 weights: its √d-scaled embeddings and `1 + w` norms carry the activations'
/// rounding further (the F32 Gemma fixture, `gemma3-tf4`, holds to [`BOUND`]).
const BOUND_GEMMA_BF16: f32 = 2.5e-1;

fn fixture(name: &str) -> (PathBuf, Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/hf")
        .join(name);
    let text = std::fs::read_to_string(dir.join("reference.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    (dir, serde_json::from_str(&text).unwrap())
}

fn check(m: &dyn CausalLm, reference: &Value, label: &str, bound: f32) {
    let vocab = m.config().n_vocab;
    for (pi, p) in reference["prompts"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = common::u32s(&p["ids"]);
        let mut cache = m.new_cache(128);
        let logits = m.forward(&ids, &mut cache, Logits::All).unwrap();
        let (worst, pos, tok) = common::worst_logit(&logits, &p["logits"], vocab);
        eprintln!(
            "{label} prompt {pi} ({} tokens): max |Δlogit| {worst:.2e}",
            ids.len()
        );
        assert!(
            worst < bound,
            "{label} prompt {pi}: logit of token {tok} at position {pos} differs by {worst:.2e} \
             from transformers"
        );
        let expected: Vec<u32> = common::u32s(&p["greedy"]);
        let margins = p["greedy_margins"].as_array().unwrap();
        let mut next = common::argmax(&logits[(ids.len() - 1) * vocab..]);
        for (step, (&e, margin)) in expected.iter().zip(margins).enumerate() {
            if margin.as_f64().unwrap() < 2.0 * bound as f64 {
                break; // a tie within the bound
            }
            assert_eq!(
                next, e,
                "{label} prompt {pi} step {step}: greedy token differs"
            );
            next = common::argmax(&m.forward(&[next], &mut cache, Logits::Last).unwrap());
        }
    }
}

fn folder(name: &str, bound: f32) {
    let (dir, reference) = fixture(name);
    let (m, _) = baicai_models::load_hf(&dir).unwrap();
    check(m.as_ref(), &reference, name, bound);
}

#[test]
fn llama_folder_tf5_matches_transformers() {
    folder("llama-tf5", BOUND_BF16);
}

#[test]
fn mistral_folder_tf5_matches_transformers() {
    folder("mistral-tf5", BOUND);
}

#[test]
fn mistral_folder_tf4_head_dim_null_matches_transformers() {
    folder("mistral-tf4", BOUND);
}

#[test]
fn qwen2_folder_tf5_tied_matches_transformers() {
    folder("qwen2-tf5", BOUND_BF16);
}

#[test]
fn qwen3_folder_tf5_matches_transformers() {
    folder("qwen3-tf5", BOUND_BF16);
}

#[test]
fn qwen3_folder_tf4_matches_transformers() {
    folder("qwen3-tf4", BOUND);
}

#[test]
fn gemma3_folder_tf5_matches_transformers() {
    folder("gemma3-tf5", BOUND_GEMMA_BF16);
}

#[test]
fn gemma3_folder_tf4_matches_transformers() {
    folder("gemma3-tf4", BOUND);
}

#[test]
fn qwen3_gguf_matches_transformers() {
    let (dir, reference) = fixture("qwen3-tf4");
    let g = Arc::new(baicai_gguf::Gguf::open(&dir.join("model-f32.gguf")).unwrap());
    let m = baicai_models::load(g).unwrap();
    assert_eq!(m.config().arch, baicai_models::Arch::Qwen3);
    check(m.as_ref(), &reference, "qwen3 (GGUF)", BOUND);
}

/// The 5.x spelling states the rotary base in `rope_parameters` only; it must be the one used
/// (before, a 5.x folder silently ran with the default base 10 000).
#[test]
fn tf5_rope_parameters_set_the_rotary_base() {
    for (name, base, swa) in [
        ("llama-tf5", 500_000.0, 500_000.0),
        ("qwen3-tf5", 1e6, 1e6),
        ("gemma3-tf5", 1e6, 10_000.0),
        ("gemma3-tf4", 1e6, 10_000.0),
    ] {
        let (dir, _) = fixture(name);
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        let c = baicai_models::hf::parse_config(&text).unwrap();
        assert_eq!((c.rope_base, c.rope_base_swa), (base, swa), "{name}");
    }
    let (dir, _) = fixture("gemma3-tf5");
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let c = baicai_models::hf::parse_config(&text).unwrap();
    assert_eq!(c.rope_linear_factor, 2.0);
    assert_eq!(c.sliding_window, Some(4));
    assert!(c.is_swa_layer(0) && !c.is_swa_layer(1));
}

fn parse_err(json: &str) -> String {
    baicai_models::hf::parse_config(json)
        .unwrap_err()
        .to_string()
}

const LLAMA: &str = r#""model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "vocab_size": 320, "intermediate_size": 96"#;

/// Absent keys take transformers' defaults; values baicai cannot honour are errors naming the
/// key, never a guess.
#[test]
fn config_defaults_and_refusals_name_the_key() {
    let c = baicai_models::hf::parse_config(&format!("{{{LLAMA}}}")).unwrap();
    assert_eq!((c.rope_base, c.rms_eps, c.head_dim_k), (10_000.0, 1e-6, 16));
    // Unlike Llama's, these classes' default KV head count is a number (Qwen3: 32, Mistral: 8).
    let kv = "\"num_key_value_heads\": 2";
    let qwen3 = LLAMA.replace("\"llama\"", "\"qwen3\"") + ", " + kv;
    let c = baicai_models::hf::parse_config(&format!("{{{qwen3}, \"head_dim\": null}}")).unwrap();
    assert_eq!(c.head_dim_k, 128, "Qwen3Config's default head_dim");
    let mistral = LLAMA.replace("\"llama\"", "\"mistral\"") + ", " + kv;
    let c = baicai_models::hf::parse_config(&format!("{{{mistral}}}")).unwrap();
    assert_eq!(
        c.sliding_window,
        Some(4096),
        "MistralConfig's default window"
    );
    let c = baicai_models::hf::parse_config(&format!("{{{mistral}, \"sliding_window\": null}}"))
        .unwrap();
    assert_eq!(c.sliding_window, None);
    for (extra, key) in [
        (
            r#""rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}"#,
            "rope_parameters.rope_type",
        ),
        (
            r#""rope_scaling": {"type": "dynamic", "factor": 2}"#,
            "rope_scaling.type",
        ),
        (
            r#""rope_theta": 1e4, "rope_parameters": {"rope_theta": 5e5}"#,
            "rope_parameters.rope_theta",
        ),
        (
            r#""rope_scaling": {"rope_type": "linear"}"#,
            "rope_scaling.factor",
        ),
        (r#""hidden_act": "gelu""#, "hidden_act"),
        (r#""attention_bias": true"#, "attention_bias"),
        (
            r#""rope_parameters": {"rope_type": "default", "rope_theta": -1}"#,
            "rope_parameters.rope_theta",
        ),
    ] {
        let e = parse_err(&format!("{{{LLAMA}, {extra}}}"));
        assert!(e.contains(key), "{extra}: {e}");
    }
    let qwen2 = LLAMA.replace("\"llama\"", "\"qwen2\"");
    assert!(
        parse_err(&format!("{{{qwen2}, \"use_sliding_window\": true}}"))
            .contains("use_sliding_window")
    );
    let gemma = LLAMA.replace("\"llama\"", "\"gemma3_text\"");
    let e = parse_err(&format!(
        "{{{gemma}, \"head_dim\": 16, \"query_pre_attn_scalar\": 256}}"
    ));
    assert!(e.contains("query_pre_attn_scalar"), "{e}");
    let e = parse_err(&format!("{{{gemma}, \"head_dim\": 16, \"query_pre_attn_scalar\": 16, \"final_logit_softcapping\": 30.0}}"));
    assert!(e.contains("final_logit_softcapping"), "{e}");
}

/// A multimodal checkpoint's `text_config` is read as the text model's configuration.
#[test]
fn nested_text_config_is_read() {
    let c = baicai_models::hf::parse_config(
        r#"{"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
            "text_config": {"model_type": "gemma3_text", "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "head_dim": 16, "query_pre_attn_scalar": 16,
              "vocab_size": 320, "intermediate_size": 96,
              "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}},
            "vision_config": {"hidden_size": 1152}}"#,
    )
    .unwrap();
    assert_eq!(c.arch, baicai_models::Arch::Gemma3);
    assert_eq!((c.n_embd, c.rope_base, c.rope_base_swa), (64, 1e6, 1e4));
}
