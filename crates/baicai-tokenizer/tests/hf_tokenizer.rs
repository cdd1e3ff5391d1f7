//! Checkpoint folders' `tokenizer.json` + `tokenizer_config.json`: the chat template renders as
//! transformers rendered it and the text encodes to the ids the Hugging Face `tokenizers` library
//! produced (fixtures/moe/*/reference.json `chat_example`, made by tools/moe_oracle.py).

use std::path::PathBuf;

use baicai_tokenizer::{ChatMessage, ChatTemplate, Tokenizer, TokenizerSpec};
use serde_json::Value;

#[test]
fn checkpoint_tokenizer_and_template_match_transformers() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/moe");
    let mut checked = 0;
    for name in ["deepseek-v3", "qwen2-moe", "mixtral"] {
        let dir = root.join(name);
        let reference: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let ex = &reference["chat_example"];
        let tok = Tokenizer::from_spec(TokenizerSpec::from_hf_dir(&dir).unwrap()).unwrap();
        let template = ChatTemplate::for_tokenizer(&tok).unwrap();
        let messages: Vec<ChatMessage> = ex["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let text = template
            .render(&messages, ex["add_generation_prompt"].as_bool().unwrap())
            .unwrap();
        assert_eq!(
            text,
            ex["text"].as_str().unwrap(),
            "{name}: chat template rendering"
        );
        let expected: Vec<u32> = ex["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = tok.encode(&text, false, true);
        assert_eq!(ids, expected, "{name}: token ids of the rendered chat");
        assert_eq!(tok.decode(&ids, false), text, "{name}: decode round trip");
        checked += 1;
    }
    assert_eq!(checked, 3);
}
