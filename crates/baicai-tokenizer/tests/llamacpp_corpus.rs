//! Differential test against llama.cpp itself: token ids (specials parsed or not, with and
//! without BOS/EOS) and detokenized text for ~350 awkward texts per model, dumped from the
//! reference llama.cpp by tools/tokenizer_llamacpp_fixture.py into tests/data/. Needs the real
//! models (scripts/fetch-models.sh); without them the tests print a note and pass.

use std::path::Path;

use baicai_gguf::Gguf;
use baicai_tokenizer::Tokenizer;
use serde_json::Value;

fn load(model: &str) -> Option<(Tokenizer, Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("../../models").join(format!("{model}.gguf"));
    if !path.exists() {
        eprintln!(
            "skipped: {} not found (run scripts/fetch-models.sh)",
            path.display()
        );
        return None;
    }
    let gguf = Gguf::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tok = Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{model}: {e}"));
    let data = root
        .join("tests/data")
        .join(format!("llamacpp_{model}.json"));
    let text = std::fs::read_to_string(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    Some((tok, serde_json::from_str(&text).unwrap()))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn describe(tok: &Tokenizer, got: &[u32], want: &[u32]) -> String {
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

/// Compares every case and fails once at the end, listing the first few mismatches.
fn check(model: &str) {
    let Some((tok, fx)) = load(model) else { return };
    let eog: Vec<u32> = ids(&fx["eog"]);
    assert_eq!(tok.eog_ids(), eog, "{model}: end-of-generation ids");
    assert_eq!(
        tok.bos_id(),
        fx["bos"].as_u64().map(|v| v as u32),
        "{model}: BOS"
    );
    assert_eq!(
        tok.eos_id(),
        fx["eos"].as_u64().map(|v| v as u32),
        "{model}: EOS"
    );
    assert_eq!(
        tok.eot_id(),
        fx["eot"].as_u64().map(|v| v as u32),
        "{model}: EOT"
    );
    let cases = fx["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let with_special = tok.encode(text, true, true);
        let runs = [
            (
                "plain (no specials)",
                tok.encode(text, false, false),
                ids(&case["plain"]),
            ),
            (
                "parse_special",
                tok.encode(text, false, true),
                ids(&case["parsed"]),
            ),
            (
                "add_special + parse_special",
                with_special.clone(),
                ids(&case["with_special"]),
            ),
        ];
        for (what, got, want) in runs {
            if got != want {
                failures.push(format!("{text:?} {what}: {}", describe(&tok, &got, &want)));
            }
        }
        let want_ids = ids(&case["with_special"]);
        for (skip, key) in [(false, "decoded"), (true, "decoded_skip")] {
            let got = tok.decode(&want_ids, skip);
            let want = case[key].as_str().unwrap();
            if got != want {
                failures.push(format!(
                    "{text:?} decode(skip_special={skip}): got {got:?}, llama.cpp {want:?}"
                ));
            }
        }
    }
    if !failures.is_empty() {
        panic!(
            "{model}: {} mismatches in {} cases; first ones:\n{}",
            failures.len(),
            cases.len(),
            failures
                .iter()
                .take(8)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn qwen_matches_llamacpp_on_awkward_corpus() {
    check("qwen2.5-coder-0.5b-instruct-q4_k_m");
}

#[test]
fn gemma_matches_llamacpp_on_awkward_corpus() {
    check("gemma-3-270m-q4_k_m");
}
