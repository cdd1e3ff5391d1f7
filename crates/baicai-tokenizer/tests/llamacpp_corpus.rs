//! Differential test against llama.cpp itself: token ids (specials parsed or not, with and
//! without BOS/EOS) and detokenized text for ~350 awkward texts per model, dumped from the
//! reference llama.cpp by tools/tokenizer_llamacpp_fixture.py into tests/data/. Needs the real
//! models (scripts/fetch-models.sh); without them the tests print a note and pass.

mod common;

use baicai_tokenizer::Tokenizer;
use common::{first_difference, ids, load_tokenizer, read_json, GEMMA, QWEN};
use serde_json::Value;

fn load(model: &str) -> Option<(Tokenizer, Value)> {
    let tok = load_tokenizer(model)?;
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(format!("llamacpp_{model}.json"));
    Some((tok, read_json(&data)))
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
                failures.push(format!(
                    "{text:?} {what}: {}",
                    first_difference(&tok, &got, &want)
                ));
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
    check(QWEN);
}

#[test]
fn gemma_matches_llamacpp_on_awkward_corpus() {
    check(GEMMA);
}
