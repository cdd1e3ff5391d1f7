//! What constrained decoding costs per token, without a model: builds llguidance's view of a
//! GGUF file's vocabulary, compiles a JSON schema, and walks a fixed JSON answer token by token,
//! timing each mask (the work added to a constrained sequence's postprocess step) and commit.
//!
//! ```sh
//! cargo run --release -p baicai-server --example mask_cost -- models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
//! ```

use std::sync::Arc;
use std::time::Instant;

use baicai_engine::constraint::{TokenConstraint, TokenMask};
use baicai_server::structured::Grammars;
use baicai_server::tools::with_options;
use llguidance::api::TopLevelGrammar;

fn main() -> Result<(), String> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf".into());
    let gguf = baicai_gguf::Gguf::open(std::path::Path::new(&path)).map_err(|e| e.to_string())?;
    let tok = Arc::new(baicai_tokenizer::Tokenizer::from_gguf(&gguf).map_err(|e| e.to_string())?);
    let t0 = Instant::now();
    let grammars = Grammars::new(tok.clone())?;
    println!(
        "vocabulary {} tokens: trie and factory built in {:.0} ms",
        tok.vocab_size(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "person": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 80},
                "tags": {"type": "array", "items": {"enum": ["a", "bb", "ccc"]}, "maxItems": 4},
                "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                "required": ["name", "tags", "age"], "additionalProperties": false},
            "article": {"type": "string"}},
        "required": ["person", "article"], "additionalProperties": false});
    let answer = "{\"person\": {\"name\": \"Augusta Ada King, Countess of Lovelace, mathematician and writer\", \"tags\": [\"a\", \"ccc\"], \"age\": 36}, \
                  \"article\": \"The Analytical Engine weaves algebraic patterns just as the Jacquard \
                  loom weaves flowers and leaves. It was the first design for a general-purpose \
                  computer, and its notes contain the first published program.\"}";
    let t0 = Instant::now();
    let lark = format!("start: %json {}\n", with_options(&schema));
    let compiled = grammars.compile(TopLevelGrammar::from_lark(lark))?;
    println!(
        "schema compiled in {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let tokens = tok.encode(answer, false, false);
    let mut mask = TokenMask::default();
    let mut times = Vec::new();
    for round in 0..5 {
        let mut c = compiled.constraint();
        for (i, &t) in tokens.iter().enumerate() {
            let t0 = Instant::now();
            if round == 0 && i == 0 {
                mask.reset(tok.vocab_size());
                c.mask(&mut mask);
                println!(
                    "first mask of a fresh grammar: {:.1} ms",
                    t0.elapsed().as_secs_f64() * 1e3
                );
            }
            mask.reset(tok.vocab_size());
            c.mask(&mut mask);
            assert!(mask.is_allowed(t), "token {t} not allowed");
            c.commit(t);
            if round > 0 {
                times.push(t0.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!("{} tokens × 4 rounds: mask + commit per token mean {mean:.0} µs, p50 {:.0} µs, p99 {:.0} µs",
             tokens.len(), times[times.len() / 2], times[times.len() * 99 / 100]);
    Ok(())
}
