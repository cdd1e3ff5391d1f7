//! Real models against llama.cpp (fixtures/llamacpp, produced by llama.cpp build 0c1e570 with the
//! same GGUF files): greedy completions identical wherever llama.cpp was confident.
//!
//! This test checks only what one engine can ask of another: the same greedy token where
//! llama.cpp's top-2 logprob gap is wide. Logprob closeness is not checked here: llama.cpp's own
//! builds differ from each other by up to 0.37 (8-bit activation rounding landing differently,
//! flash or not, batch sizes), so its logprobs are no standard for ours. How close each engine is
//! to the model's exact math is measured against an exact reference instead, by KL-divergence and
//! top-1 agreement over every position of committed texts (crates/baicai-cli/tests/
//! exact_reference.rs, fixtures/exact), where baicai must be at least as close as llama.cpp.

use std::path::PathBuf;
use std::sync::Arc;

use baicai_engine::session::Session;
use baicai_gguf::Gguf;
use baicai_tokenizer::Tokenizer;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn open(model: &str) -> Option<(Arc<Gguf>, Tokenizer, Value)> {
    let path = root().join("models").join(model);
    if !path.exists() {
        eprintln!(
            "SKIP: {} missing; run scripts/fetch-models.sh",
            path.display()
        );
        return None;
    }
    let fixture = root()
        .join("fixtures/llamacpp")
        .join(model.replace(".gguf", ".json"));
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let gguf = Arc::new(Gguf::open(&path).unwrap());
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    Some((gguf, tok, fixture))
}

/// Comparison ends at llama.cpp's first step with a top-2 logprob gap below this (the issue's
/// near-tie).
const NEAR_TIE: f64 = 0.1;

/// A greedy token may differ from llama.cpp's only where llama.cpp itself was this close to a tie
/// (top-2 gap); comparison ends there. Anywhere llama.cpp was
/// more confident, a different token fails the test.
const TIE_WITHIN_NOISE: f64 = 0.35;

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Returns the number of steps compared.
fn check_completion(gguf: &Arc<Gguf>, tok: &Tokenizer, case: &Value) -> usize {
    let prompt_text = case["prompt"].as_str().unwrap();
    let prompt: Vec<u32> = case["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        tok.encode(prompt_text, true, false),
        prompt,
        "prompt ids of {prompt_text:?}"
    );
    let model: Arc<dyn baicai_models::CausalLm> = baicai_models::load(gguf.clone()).unwrap().into();
    let mut session = Session::new(model, 256);
    let (mut logits, _) = session.prefill(&prompt).unwrap();
    let steps = case["steps"].as_array().unwrap();
    let mut compared = 0;
    for (i, step) in steps.iter().enumerate() {
        let top = step["top"].as_array().unwrap();
        let lp = |k: usize| top[k]["logprob"].as_f64().unwrap();
        let gap = lp(0) - lp(1);
        if gap < NEAR_TIE {
            break;
        }
        compared += 1;
        let expected = step["id"].as_u64().unwrap() as u32;
        let got = argmax(&logits);
        if got != expected {
            assert!(
                gap < TIE_WITHIN_NOISE,
                "{prompt_text:?} step {i}: greedy token {got} differs from llama.cpp's {expected}, \
                 which llama.cpp preferred by a logprob gap of {gap:.3}"
            );
            eprintln!("{prompt_text:?} step {i}: tokens part at llama.cpp top-2 gap {gap:.3}");
            break;
        }
        logits = session.step(got).unwrap();
    }
    compared
}

fn check_model(model: &str) {
    let Some((gguf, tok, fixture)) = open(model) else {
        return;
    };
    let mut total = 0;
    for case in fixture["complete"].as_array().unwrap() {
        total += check_completion(&gguf, &tok, case);
    }
    eprintln!("{model}: {total} steps compared with llama.cpp");
    assert!(total >= 10, "too few steps compared ({total})");
}

#[test]
fn qwen2_greedy_matches_llamacpp_until_first_near_tie() {
    check_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
}

#[test]
fn gemma3_greedy_matches_llamacpp_until_first_near_tie() {
    check_model("gemma-3-270m-q4_k_m.gguf");
}
