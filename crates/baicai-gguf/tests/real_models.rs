//! Reads the real small models if `scripts` fetched them into `models/`; skips otherwise.

use std::path::Path;

use baicai_gguf::{GgmlType, Gguf};

fn open_or_skip(path: &str) -> Option<Gguf> {
    let path = Path::new(path);
    if !path.exists() {
        eprintln!(
            "skipping: {} is not present (fetch the models to run this test)",
            path.display()
        );
        return None;
    }
    Some(Gguf::open(path).unwrap_or_else(|e| panic!("{e}")))
}

#[test]
fn qwen2_5_coder_0_5b_header_matches_llama_cpp() {
    let Some(g) = open_or_skip(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    )) else {
        return;
    };
    assert_eq!(g.version(), 3);
    assert_eq!(g.require_str("general.architecture").unwrap(), "qwen2");
    assert_eq!(g.require_u64("qwen2.block_count").unwrap(), 24);
    assert_eq!(g.tensors().len(), 291);
    let out = g.tensor("output.weight").expect("output.weight");
    assert_eq!(out.ggml_type, GgmlType::Q8_0);
    assert_eq!(out.shape, vec![896, 151936]);
    assert_eq!(out.n_bytes, 896 / 32 * 34 * 151936);
    assert_eq!(g.tensor_data(out).len() as u64, out.n_bytes);
    let tokens = g
        .get_str_array("tokenizer.ggml.tokens")
        .unwrap()
        .expect("vocabulary");
    assert_eq!(tokens.len(), 151936);
    assert!(g.get_f32("qwen2.rope.freq_base").unwrap().is_some());
    // Every tensor's bytes lie inside the file.
    let total: u64 = g
        .tensors()
        .iter()
        .map(|t| g.tensor_data(t).len() as u64)
        .sum();
    assert!(total < g.file_size());
}

#[test]
fn gemma3_270m_header_matches_llama_cpp() {
    let Some(g) = open_or_skip(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/gemma-3-270m-q4_k_m.gguf"
    )) else {
        return;
    };
    assert_eq!(g.require_str("general.architecture").unwrap(), "gemma3");
    assert_eq!(g.tensors().len(), 236);
    assert!(g.require_u64("gemma3.block_count").unwrap() > 0);
    for t in g.tensors() {
        assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes, "{}", t.name);
    }
}
