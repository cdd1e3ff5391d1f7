//! Helpers shared by the integration tests: locating the real models and fixtures, and failure
//! messages that name the first differing token.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::time::Instant;

use baicai_gguf::Gguf;
use baicai_tokenizer::Tokenizer;
use serde_json::Value;

pub const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m";
pub const GEMMA: &str = "gemma-3-270m-q4_k_m";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The path of `models/<name>.gguf`, or `None` (with a note) when it is absent.
pub fn model_path(name: &str) -> Option<PathBuf> {
    let path = repo_root().join("models").join(format!("{name}.gguf"));
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "skipped: {} not found (run scripts/fetch-models.sh)",
            path.display()
        );
        None
    }
}

/// The tokenizer of `models/<name>.gguf`, or `None` when the model is absent.
pub fn load_tokenizer(name: &str) -> Option<Tokenizer> {
    let path = model_path(name)?;
    let gguf = Gguf::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let t = Instant::now();
    let tok = Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!(
        "{name}: tokenizer built in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    Some(tok)
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// "first difference at position N: got <id text>, llama.cpp <id text>" and both sequences.
pub fn first_difference(tok: &Tokenizer, got: &[u32], want: &[u32]) -> String {
    let pos = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let show = |v: &[u32]| {
        v.get(pos)
            .map(|&id| format!("{id} {:?}", tok.token_text(id).unwrap_or("?")))
    };
    format!(
        "first difference at position {pos}: got {:?}, llama.cpp {:?}\n    got:       {got:?}\n    llama.cpp: {want:?}",
        show(got),
        show(want)
    )
}
