//! `baicai perplexity` end to end on the test models (`scripts/fetch-models.sh`): llama-perplexity's
//! figures on a short text, `--save-logits` then `--kl-divergence` of the same run (no divergence),
//! and refusals of a saved file from another tokenizer or text, each one line on stderr.

use std::process::Output;

use serde_json::Value;

mod common;
use common::{baicai, model, root};

fn text(name: &str) -> String {
    root()
        .join("fixtures/exact")
        .join(name)
        .display()
        .to_string()
}

fn json(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("one JSON object on stdout")
}

fn assert_refused(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, stderr: {err}");
    assert!(o.stdout.is_empty());
    assert_eq!(err.trim_end().lines().count(), 1, "stderr: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

#[test]
fn perplexity_saves_and_compares_and_refuses_other_runs() {
    let (Some(gemma), Some(qwen)) = (
        model("gemma-3-270m-q4_k_m.gguf"),
        model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    ) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("baicai-ppl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join("gemma.lp").display().to_string();
    let prose = text("prose.txt");
    let run = |extra: &[&str]| {
        let mut a = vec![
            "perplexity",
            "-m",
            &gemma,
            "-f",
            &prose,
            "-c",
            "128",
            "--json",
        ];
        a.extend_from_slice(extra);
        baicai(&a)
    };
    let first = json(&run(&["--save-logits", &saved]));
    // 284 tokens: two windows of 128, each scoring positions 64..=126.
    assert_eq!(first["chunks"], 2);
    assert_eq!(first["tokens_scored"], 2 * 63);
    let ppl = first["ppl"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl < 200.0, "perplexity {ppl}");
    assert!(first["ppl_err"].as_f64().unwrap() > 0.0);
    assert!(first["kl_divergence"].is_null());

    // The same run in pieces of 32 tokens, against the saved one: nothing differs.
    let again = json(&run(&["-b", "32", "--kl-divergence", &saved]));
    let kl = &again["kl_divergence"];
    assert_eq!(kl["positions"], 126);
    assert!(kl["mean_kld"].as_f64().unwrap() < 1e-6, "{kl}");
    assert_eq!(kl["same_top"], 1.0);
    assert!((kl["ppl_base"].as_f64().unwrap() - ppl).abs() < 1e-4 * ppl);

    let compare = |model: &str, file: &str, ctx: &str| {
        baicai(&[
            "perplexity",
            "-m",
            model,
            "-f",
            file,
            "-c",
            ctx,
            "--kl-divergence",
            &saved,
        ])
    };
    let chat = text("chat.txt");
    assert_refused(
        &compare(&gemma, &chat, "128"),
        "saved over a different text",
    );
    assert_refused(&compare(&gemma, &prose, "64"), "set -c 128");
    assert_refused(&compare(&qwen, &prose, "128"), "different tokenizer");
    let o = baicai(&["perplexity", "-m", &gemma, "-f", &prose, "-c", "4096"]);
    assert_refused(&o, "fewer than one window");
    std::fs::remove_dir_all(&dir).ok();
}
