//! The `baicai` binary end to end, on the test models (`scripts/fetch-models.sh`): results on
//! stdout only, greedy text as llama.cpp's where it was confident, the documented `bench` JSON,
//! and every error as one line on stderr with a non-zero exit.

#[path = "../../baicai-models/tests/support/hostile.rs"]
mod hostile;

mod common;
use common::{baicai, model, root, stderr, stdout};

use std::process::Output;

use serde_json::{json, Value};

const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

fn fixture(model: &str) -> Value {
    let p = root()
        .join("fixtures/llamacpp")
        .join(model.replace(".gguf", ".json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Asserts a failed command: non-zero exit, nothing on stdout, one line on stderr containing
/// `needle`.
fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, stderr: {err}");
    assert!(o.stdout.is_empty(), "stdout: {}", stdout(o));
    assert_eq!(err.trim_end().lines().count(), 1, "stderr: {err}");
    assert!(err.starts_with("error: "), "stderr: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

#[test]
fn run_prints_llamacpps_greedy_text_where_it_was_confident() {
    let Some(m) = model(QWEN) else { return };
    let fx = fixture(QWEN);
    let mut compared = 0;
    for case in fx["complete"].as_array().unwrap().iter().take(3) {
        let prompt = case["prompt"].as_str().unwrap();
        // llama.cpp's tokens up to its first step whose top-2 gap is under 0.35 (where our
        // logits, which differ by quantization noise, may pick the other one), at most 12.
        let mut want = String::new();
        let mut n = 0;
        for step in case["steps"].as_array().unwrap().iter().take(12) {
            let top = step["top"].as_array().unwrap();
            let gap = top[0]["logprob"].as_f64().unwrap() - top[1]["logprob"].as_f64().unwrap();
            if gap < 0.35 {
                break;
            }
            want.push_str(step["token"].as_str().unwrap());
            n += 1;
        }
        if n == 0 {
            continue;
        }
        let o = baicai(&[
            "run",
            "-m",
            &m,
            "-p",
            prompt,
            "-n",
            &n.to_string(),
            "--temperature",
            "0",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o), format!("{want}\n"), "prompt {prompt:?}");
        compared += n;
    }
    assert!(compared >= 4, "only {compared} tokens compared");
}

#[test]
fn tokenize_prints_llamacpps_ids_as_json() {
    let Some(m) = model(QWEN) else { return };
    let fx = fixture(QWEN);
    for case in fx["tokenize"].as_array().unwrap().iter().take(5) {
        let o = baicai(&["tokenize", "-m", &m, case["text"].as_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let ids: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(ids, case["ids"], "{:?}", case["text"]);
    }
}

/// `--depth 8` on the tiny DeepSeek-V4 (window 4, compress rates 4 and 8): the fill crosses
/// the window and closes compressed entries before the timed tokens, and the JSON says so.
#[test]
fn bench_depth_fills_the_cache_before_the_timed_tests() {
    let m = root().join("fixtures/moe/deepseek-v4/model-f32.gguf");
    let m = m.to_str().unwrap();
    let o = baicai(&[
        "bench", "-m", m, "-d", "8", "-p", "4", "-n", "4", "-r", "1", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(j["depth"], json!(8));
    for key in [
        "depth_fill_s",
        "depth_fill_tokens_per_s",
        "pp_tokens_per_s",
        "tg_tokens_per_s",
    ] {
        assert!(j[key].as_f64().unwrap() > 0.0, "{key}: {}", j[key]);
    }
    let table = baicai(&[
        "bench", "-m", m, "--depth", "8", "-p", "0", "-n", "2", "-r", "1",
    ]);
    assert!(table.status.success(), "{}", stderr(&table));
    let out = stdout(&table);
    assert!(out.contains("tg2 @ d8"), "{out}");
    assert!(out.contains("depth 8: each of 1 fills took"), "{out}");
}

#[test]
fn bench_json_has_the_documented_fields_in_both_load_modes() {
    let Some(m) = model(QWEN) else { return };
    for load in ["mmap", "ram"] {
        let o = baicai(&[
            "bench", "-m", &m, "-p", "8", "-n", "4", "-r", "1", "--json", "--load", load,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let j: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        for key in [
            "pp_tokens_per_s",
            "tg_tokens_per_s",
            "peak_rss_mib",
            "roofline_fraction",
            "kv_bytes_per_token",
        ] {
            assert!(j[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {j}");
        }
        let weights = j["weights"][0].as_str().unwrap();
        let expect = if load == "ram" {
            "read into memory"
        } else {
            "memory-mapped"
        };
        assert!(weights.contains(expect), "{load}: {weights}");
        // The weights are held once: peak RSS stays under file + 100 MiB for this small cache.
        let (rss, file) = (
            j["peak_rss_mib"].as_f64().unwrap(),
            j["file_mib"].as_f64().unwrap(),
        );
        assert!(
            rss < file + 100.0,
            "{load}: peak RSS {rss} MiB, file {file} MiB"
        );
    }
}

#[test]
fn inspect_lists_metadata_tensors_and_sizes() {
    let Some(m) = model(QWEN) else { return };
    let o = baicai(&["inspect", "-m", &m]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "general.architecture = \"qwen2\"",
        "blk.0.attn_q.weight",
        "Q4_K",
        "token_embd.weight",
        // As `run` holds it; a model larger than memory adds that experts are read ahead.
        "weights in memory: all tensors: memory-mapped from the file, not copied",
    ] {
        assert!(out.contains(needle), "{needle} not in inspect output");
    }
}

#[test]
fn errors_are_one_line_on_stderr_with_a_nonzero_exit() {
    let missing = baicai(&["run", "-m", "/nonexistent/model.gguf", "-p", "hi"]);
    assert_one_line_error(&missing, "does not exist");

    let dir = std::env::temp_dir().join(format!("baicai-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("not-a-model.gguf");
    std::fs::write(&text, "hello, I am not a GGUF file\n").unwrap();
    let not_gguf = baicai(&["run", "-m", text.to_str().unwrap(), "-p", "hi"]);
    assert_one_line_error(&not_gguf, "not a GGUF file");
    let _ = std::fs::remove_dir_all(&dir);

    let Some(m) = model(QWEN) else { return };
    let long = baicai(&[
        "run",
        "-m",
        &m,
        "-p",
        "one two three four five six",
        "-c",
        "3",
        "-n",
        "2",
    ]);
    assert_one_line_error(&long, "more than the context size 3");
    let threads = baicai(&["bench", "-m", &m, "-t", "0", "-p", "8", "-n", "0"]);
    assert_one_line_error(&threads, "--threads must be at least 1");
}

/// Hostile model files (issue 13): values the file's tensors cannot back give one line naming
/// the key, its value and the rule, where they used to abort the process or panic.
#[test]
fn hostile_model_files_are_one_line_errors() {
    let dir = std::env::temp_dir().join(format!("baicai-cli-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gguf = dir.join("block-count.gguf");
    let bytes = hostile::gguf_with(
        &root().join("fixtures/moe/deepseek-v2-lite/model-f32.gguf"),
        &[(
            "deepseek2.block_count",
            Some(baicai_gguf::Value::U32(u32::MAX)),
        )],
    );
    std::fs::write(&gguf, bytes).unwrap();
    let o = baicai(&["run", "-m", gguf.to_str().unwrap(), "-p", "hi"]);
    assert_one_line_error(
        &o,
        "deepseek2.block_count = 4294967295: the file has tensors for 3 layers",
    );

    let cases = [
        (
            "layers",
            "num_hidden_layers",
            json!(4_000_000_000u64),
            "num_hidden_layers = 4000000000: the file has tensors for 3 layers",
        ),
        (
            "groups",
            "n_group",
            json!(16),
            "n_group = 16: more groups than n_routed_experts = 8",
        ),
    ];
    for (name, key, value, needle) in cases {
        let folder = hostile::hf_with(
            &root().join("fixtures/moe/deepseek-v3"),
            &dir.join(name),
            &[(key, Some(value))],
        );
        let o = baicai(&["run", "-m", folder.to_str().unwrap(), "-p", "hi"]);
        assert_one_line_error(&o, needle);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
