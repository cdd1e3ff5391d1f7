//! Diagnostic companion of `llamacpp_parity.rs`: follows llama.cpp's greedy tokens until the first
//! near-tie or divergence and prints per-prompt max/mean |Δ logprob| over the top-5 tokens,
//! without asserting. Run with
//! `cargo test --release -p baicai-engine --test llamacpp_parity_report -- --ignored --nocapture`.

use std::path::PathBuf;
use std::sync::Arc;

use baicai_engine::session::Session;
use baicai_gguf::Gguf;
use serde_json::Value;

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&x| x as f64 - lse).collect()
}

fn report(model: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = root.join("models").join(model);
    if !path.exists() {
        eprintln!("SKIP: {} missing", path.display());
        return;
    }
    // A directory of fixtures in the same format (e.g. from another llama.cpp build) may replace
    // the committed ones.
    let dir = std::env::var("PARITY_FIXTURE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("fixtures/llamacpp"));
    let fixture = dir.join(model.replace(".gguf", ".json"));
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let gguf = Arc::new(Gguf::open(&path).unwrap());
    let lm: Arc<dyn baicai_models::CausalLm> = baicai_models::load(gguf).unwrap().into();
    let (mut all_max, mut all_sum, mut all_n) = (0f64, 0f64, 0usize);
    for (ci, case) in fixture["complete"].as_array().unwrap().iter().enumerate() {
        let prompt: Vec<u32> = case["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mut session = Session::new(lm.clone(), 256);
        let (mut logits, _) = session.prefill(&prompt).unwrap();
        let mut devs = Vec::new();
        for step in case["steps"].as_array().unwrap() {
            let top = step["top"].as_array().unwrap();
            let ours = log_softmax(&logits);
            let dev = top
                .iter()
                .map(|t| {
                    (ours[t["id"].as_u64().unwrap() as usize] - t["logprob"].as_f64().unwrap())
                        .abs()
                })
                .fold(0.0, f64::max);
            devs.push(dev);
            let lp = |k: usize| top[k]["logprob"].as_f64().unwrap();
            if lp(0) - lp(1) < 0.1 {
                break;
            }
            logits = session.step(step["id"].as_u64().unwrap() as u32).unwrap();
        }
        let max = devs.iter().cloned().fold(0.0, f64::max);
        let sum: f64 = devs.iter().sum();
        eprintln!(
            "{model} prompt {ci}: {} steps, max {max:.4} mean {:.4}; first: {}",
            devs.len(),
            sum / devs.len() as f64,
            devs.iter()
                .take(8)
                .map(|d| format!("{d:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        all_max = all_max.max(max);
        all_sum += sum;
        all_n += devs.len();
    }
    eprintln!(
        "{model}: ALL {all_n} steps, max {all_max:.4} mean {:.4}",
        all_sum / all_n as f64
    );
}

#[test]
#[ignore = "diagnostic report, prints only"]
fn report_qwen2() {
    report("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
}

#[test]
#[ignore = "diagnostic report, prints only"]
fn report_gemma3() {
    report("gemma-3-270m-q4_k_m.gguf");
}

/// Writes every trace point of one prefill of `prompt` as raw little-endian f32 to
/// `$TRACE_DIR/{name}-{layer}.bin` (the names llama.cpp's eval callback sees), for diffing.
fn dump_trace(model: &str, prompt: &[u32]) {
    let Ok(dir) = std::env::var("TRACE_DIR") else {
        eprintln!("SKIP: set TRACE_DIR");
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let gguf = Arc::new(Gguf::open(&root.join("models").join(model)).unwrap());
    let mut lm = baicai_models::load(gguf).unwrap();
    lm.set_trace(Some(Arc::new(move |name: &str, il: usize, x: &[f32]| {
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(format!("{dir}/{name}-{il}.bin"), bytes).unwrap();
    })));
    let mut cache = lm.new_cache(64);
    lm.forward(prompt, &mut cache, baicai_models::Logits::Last)
        .unwrap();
}

#[test]
#[ignore = "diagnostic dump, needs TRACE_DIR"]
fn trace_qwen2_prompt() {
    dump_trace(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        &[785, 6722, 315, 9625, 374],
    );
}
