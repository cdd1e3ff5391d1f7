//! A tiny seeded Llama (GQA, llama3 RoPE scaling via `rope_freqs.weight`) converted to GGUF by
//! llama.cpp's converter, against Hugging Face transformers (fixtures/dense/llama, made by
//! tools/dense_oracle.py). The model runs with its default f16 KV cache, so the bound is that of
//! the cache's rounding; greedy continuations must be identical.

use std::path::PathBuf;
use std::sync::Arc;

use baicai_models::Logits;
use serde_json::Value;

mod common;

#[test]
fn llama_gguf_matches_transformers() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/dense/llama");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let g = Arc::new(baicai_gguf::Gguf::open(&dir.join("model-f32.gguf")).unwrap());
    let m = baicai_models::load(g).unwrap();
    let vocab = m.config().n_vocab;
    for (pi, p) in reference["prompts"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = common::u32s(&p["ids"]);
        let mut cache = m.new_cache(128);
        let logits = m.forward(&ids, &mut cache, Logits::All).unwrap();
        let worst = common::worst_logit(&logits, &p["logits"], vocab).0;
        eprintln!(
            "llama prompt {pi} ({} tokens): max |Δlogit| {worst:.2e}",
            ids.len()
        );
        assert!(
            worst < 1e-2,
            "llama prompt {pi}: a logit differs by {worst} from transformers"
        );
        let expected: Vec<u32> = common::u32s(&p["greedy"]);
        let margins: Vec<f64> = p["greedy_margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let mut next = common::argmax(&logits[(ids.len() - 1) * vocab..]);
        for (step, (&e, &margin)) in expected.iter().zip(&margins).enumerate() {
            if margin < 2e-2 {
                break; // a tie within the f16 cache's rounding
            }
            assert_eq!(
                next, e,
                "llama prompt {pi} step {step}: greedy token differs from transformers"
            );
            next = common::argmax(&m.forward(&[next], &mut cache, Logits::Last).unwrap());
        }
    }
}
