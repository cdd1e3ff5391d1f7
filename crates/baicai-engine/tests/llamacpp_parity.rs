//! Real models against llama.cpp (fixtures/llamacpp, produced by llama.cpp build 0c1e570 with the
//! same GGUF files): greedy completions identical up to the first near-tie (top-2 logprob gap
//! < 0.1 in llama.cpp's output), and top-5 logprobs within 0.05 over those steps.

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
        eprintln!("SKIP: {} missing; run scripts/fetch-models.sh", path.display());
        return None;
    }
    let fixture = root().join("fixtures/llamacpp").join(model.replace(".gguf", ".json"));
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let gguf = Arc::new(Gguf::open(&path).unwrap());
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    Some((gguf, tok, fixture))
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|&x| x as f64 - lse).collect()
}

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
    let prompt: Vec<u32> =
        case["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(tok.encode(prompt_text, true, false), prompt, "prompt ids of {prompt_text:?}");
    let model: Arc<dyn baicai_models::CausalLm> = baicai_models::load(gguf.clone()).unwrap().into();
    let mut session = Session::new(model, 256);
    let (mut logits, _) = session.prefill(&prompt).unwrap();
    let steps = case["steps"].as_array().unwrap();
    let mut compared = 0;
    for (i, step) in steps.iter().enumerate() {
        let top = step["top"].as_array().unwrap();
        let lp = |k: usize| top[k]["logprob"].as_f64().unwrap();
        let near_tie = lp(0) - lp(1) < 0.1;
        let ours = log_softmax(&logits);
        for t in top {
            let id = t["id"].as_u64().unwrap() as usize;
            let theirs = t["logprob"].as_f64().unwrap();
            assert!(
                (ours[id] - theirs).abs() < 0.05,
                "{prompt_text:?} step {i}: logprob of token {id} ({:?}) is {:.4}, llama.cpp {:.4}",
                t["token"],
                ours[id],
                theirs
            );
        }
        compared += 1;
        if near_tie {
            break;
        }
        let expected = step["id"].as_u64().unwrap() as u32;
        let got = argmax(&logits);
        assert_eq!(
            got, expected,
            "{prompt_text:?} step {i}: greedy token {got} differs from llama.cpp's {expected}"
        );
        logits = session.step(got).unwrap();
    }
    compared
}

fn check_model(model: &str) {
    let Some((gguf, tok, fixture)) = open(model) else { return };
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
