//! Token ids, decoded text and chat prompts against llama.cpp's outputs for the two real test
//! models (fixtures/llamacpp, see shared/fixtures/README.md). The models are fetched by
//! `scripts/fetch-models.sh`; without them these tests print a note and pass.

mod common;

use std::time::Instant;

use baicai_gguf::Gguf;
use baicai_tokenizer::{ChatMessage, ChatTemplate, StreamDecoder, Tokenizer};
use common::{first_difference, ids, load_tokenizer as load, model_path, read_json, GEMMA, QWEN};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    read_json(
        &common::repo_root()
            .join("fixtures/llamacpp")
            .join(format!("{name}.json")),
    )
}

/// Fails with the first differing position, both ids and their token texts.
fn assert_ids(tok: &Tokenizer, what: &str, got: &[u32], want: &[u32]) {
    if got != want {
        panic!("{what}: {}", first_difference(tok, got, want));
    }
}

fn check_tokenize(name: &str) {
    let Some(tok) = load(name) else { return };
    let fx = fixture(name);
    for case in fx["tokenize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        // The fixture's texts with special-token markup were tokenized with specials parsed.
        let plain = tok.encode(text, false, true);
        assert_ids(
            &tok,
            &format!("{name} tokenize {text:?}"),
            &plain,
            &ids(&case["ids"]),
        );
        let with_special = tok.encode(text, true, true);
        let want = ids(&case["ids_with_special"]);
        assert_ids(
            &tok,
            &format!("{name} tokenize+special {text:?}"),
            &with_special,
            &want,
        );
    }
}

fn check_complete(name: &str) {
    let Some(tok) = load(name) else { return };
    let fx = fixture(name);
    for case in fx["complete"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let got = tok.encode(prompt, true, true);
        assert_ids(
            &tok,
            &format!("{name} prompt {prompt:?}"),
            &got,
            &ids(&case["prompt_ids"]),
        );
        let out = ids(&case["ids"]);
        let want = case["text"].as_str().unwrap();
        let text = tok.decode(&out, true);
        if text != want {
            let pos = text.chars().zip(want.chars()).position(|(a, b)| a != b);
            panic!("{name} decode of completion for {prompt:?} differs at char {pos:?}:\n  got:       {text:?}\n  llama.cpp: {want:?}");
        }
        // Streaming one id at a time yields the same text and never a broken character.
        let mut dec = StreamDecoder::new(true);
        let mut streamed = String::new();
        for &id in &out {
            let part = dec.push(&tok, id);
            assert!(
                !part.contains('\u{FFFD}'),
                "{name}: stream emitted a broken character"
            );
            streamed.push_str(&part);
        }
        streamed.push_str(&dec.flush());
        assert_eq!(streamed, want, "{name}: streamed completion for {prompt:?}");
    }
}

fn check_chat(name: &str) {
    let Some(tok) = load(name) else { return };
    let template = ChatTemplate::for_tokenizer(&tok).unwrap();
    let fx = fixture(name);
    for case in fx["chat"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let got = template.render(&messages, true).unwrap();
        let want = case["prompt"].as_str().unwrap();
        assert_eq!(got, want, "{name}: chat prompt for {messages:?}");
    }
}

#[test]
fn qwen_tokenize_matches_llamacpp() {
    check_tokenize(QWEN);
}

#[test]
fn gemma_tokenize_matches_llamacpp() {
    check_tokenize(GEMMA);
}

#[test]
fn qwen_completion_prompt_and_text_match_llamacpp() {
    check_complete(QWEN);
}

#[test]
fn gemma_completion_prompt_and_text_match_llamacpp() {
    check_complete(GEMMA);
}

#[test]
fn qwen_chat_template_matches_llamacpp() {
    check_chat(QWEN);
}

#[test]
fn gemma_without_template_falls_back_to_chatml_like_llamacpp() {
    let Some(tok) = load(GEMMA) else { return };
    assert!(tok.chat_template().is_none());
    assert!(ChatTemplate::for_tokenizer(&tok).unwrap().is_fallback());
    check_chat(GEMMA);
}

const VARIED: &[&str] = &[
    "Hello, world!",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\r\n\n\n end",
    "深度求索用MoE架构将训练成本压至1/10。中国的首都是北京。",
    "emoji 🚀🥬👩‍👩‍👧 and accents: café naïve Ångström ñ",
    "code: fn main() { println!(\"{}\", 1 + 2); } // ok?",
    "numbers 1234567890 3.14159 1e-9 ½ ²",
    "mixed scripts: Привет мир, γειά σου, مرحبا, नमस्ते, こんにちは",
    "weird: \u{0}\u{1}\u{7f} \u{a0}nbsp \u{2028} zero\u{200b}width",
    "it's we're they'll I'd don't",
];

fn check_round_trip(name: &str) {
    let Some(tok) = load(name) else { return };
    for text in VARIED {
        let ids = tok.encode(text, false, false);
        assert_eq!(
            tok.decode(&ids, false),
            *text,
            "{name}: round trip of {text:?} via {ids:?}"
        );
        let with_bos = tok.encode(text, true, false);
        assert_eq!(
            tok.decode(&with_bos, true),
            *text,
            "{name}: round trip with BOS of {text:?}"
        );
    }
}

#[test]
fn qwen_decode_inverts_encode() {
    check_round_trip(QWEN);
}

#[test]
fn gemma_decode_inverts_encode() {
    check_round_trip(GEMMA);
}

fn check_stream_split_characters(name: &str, text: &str) {
    let Some(tok) = load(name) else { return };
    let ids = tok.encode(text, false, false);
    // At least one token must be part of a character, or the test proves nothing.
    assert!(
        ids.iter()
            .any(|&id| std::str::from_utf8(&tok.token_bytes(id)).is_err()),
        "{name}: expected {text:?} to need partial-character tokens, got {ids:?}"
    );
    let mut dec = tok.stream_decoder(false);
    let mut out = String::new();
    for &id in &ids {
        let part = dec.push(&tok, id);
        assert!(
            !part.contains('\u{FFFD}'),
            "{name}: broken character after token {id}"
        );
        out.push_str(&part);
    }
    out.push_str(&dec.flush());
    assert_eq!(out, text);
}

#[test]
fn qwen_stream_decoder_holds_back_partial_utf8_of_byte_level_pieces() {
    check_stream_split_characters(QWEN, "emoji 🚀🥬 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 鿰");
}

#[test]
fn gemma_stream_decoder_holds_back_partial_utf8_of_byte_fallback_tokens() {
    check_stream_split_characters(GEMMA, "rare: 𝔘𝔫𝔦 \u{10FFFD} 鿰");
}

#[test]
fn special_tokens_are_parsed_only_when_asked() {
    if let Some(tok) = load(QWEN) {
        let text = "<|im_start|>user\nhi<|im_end|>";
        let parsed = tok.encode(text, false, true);
        assert_eq!(parsed[0], 151644);
        let literal = tok.encode(text, false, false);
        assert!(!literal.contains(&151644) && literal.len() > parsed.len());
        assert_eq!(
            tok.decode(&literal, true),
            text,
            "literal markup decodes back to itself"
        );
        assert_eq!(tok.decode(&parsed, false), text);
        assert_eq!(
            tok.decode(&parsed, true),
            "user\nhi",
            "control tokens skipped"
        );
    }
    if let Some(tok) = load(GEMMA) {
        let parsed = tok.encode("<start_of_turn>user\nhi<end_of_turn>", false, true);
        assert_eq!(parsed.first(), tok.token_id("<start_of_turn>").as_ref());
        assert_eq!(parsed.last(), tok.token_id("<end_of_turn>").as_ref());
        // User-defined tokens ("\n" is one in Gemma) are matched even without parse_special.
        let nl = tok.token_id("\n").unwrap();
        assert!(tok.encode("a\nb", false, false).contains(&nl));
    }
}

#[test]
fn end_of_generation_set_matches_llamacpp() {
    if let Some(tok) = load(QWEN) {
        assert_eq!(tok.bos_id(), Some(151643));
        assert_eq!(tok.eos_id(), Some(151645));
        assert_eq!(tok.eot_id(), Some(151645));
        assert!(!tok.add_bos());
        // <|endoftext|>, <|im_end|>, <|fim_pad|>, <|repo_name|>, <|file_sep|>, and the normal
        // token "</s>" that llama.cpp's EOG text list catches.
        let want = [128247, 151643, 151645, 151662, 151663, 151664];
        assert_eq!(
            tok.eog_ids(),
            want,
            "texts: {:?}",
            want.map(|i| tok.token_text(i))
        );
        assert!(!tok.is_eog(151644));
    }
    if let Some(tok) = load(GEMMA) {
        assert_eq!(tok.bos_id(), Some(2));
        assert!(tok.add_bos());
        let eot = tok.token_id("<end_of_turn>").unwrap();
        assert_eq!(tok.eot_id(), Some(eot));
        assert!(tok.is_eog(1) && tok.is_eog(eot));
        assert!(!tok.is_eog(tok.token_id("<start_of_turn>").unwrap()));
    }
}

#[test]
fn loading_and_encoding_are_fast() {
    for name in [QWEN, GEMMA] {
        let Some(path) = model_path(name) else {
            continue;
        };
        let gguf = Gguf::open(&path).unwrap();
        let t = Instant::now();
        let tok = Tokenizer::from_gguf(&gguf).unwrap();
        let load_s = t.elapsed().as_secs_f64();
        let prompt = VARIED.join(" ").repeat(4);
        let t = Instant::now();
        let encoded = tok.encode(&prompt, true, true);
        let enc_s = t.elapsed().as_secs_f64();
        eprintln!(
            "{name}: load {:.0} ms, encode {} tokens in {:.2} ms",
            load_s * 1e3,
            encoded.len(),
            enc_s * 1e3
        );
        // Generous bounds (shared CI cores); they catch quadratic behaviour, not jitter.
        assert!(load_s < 2.0, "{name}: loading took {load_s:.2} s");
        assert!(
            enc_s < 0.2,
            "{name}: encoding {} tokens took {enc_s:.3} s",
            encoded.len()
        );
    }
}
