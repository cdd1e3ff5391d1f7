//! A synthetic byte-level BPE tokenizer that both engines load, so that servers can take text
//! and chat requests on random-weight files.

use baicai_gguf::Value;

/// A byte-level BPE vocabulary of `n_vocab` tokens that both engines load: the 256 byte tokens
/// (GPT-2's byte-to-character mapping), one merge (two spaces), the ChatML control tokens and a
/// ChatML template, then filler tokens `<|synth_N|>`. Text tokenizes to about a token per byte;
/// the random weights generate fillers, which detokenize to their names.
pub fn tokenizer(n_vocab: u64) -> Vec<(String, Value)> {
    const NORMAL: i32 = 1;
    const CONTROL: i32 = 3;
    let mut tokens: Vec<String> = byte_chars().into_iter().map(String::from).collect();
    let mut types = vec![NORMAL; tokens.len()];
    tokens.push("\u{120}\u{120}".into());
    types.push(NORMAL);
    let special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let first_special = tokens.len() as u32;
    for t in special {
        tokens.push(t.into());
        types.push(CONTROL);
    }
    while (tokens.len() as u64) < n_vocab {
        tokens.push(format!("<|synth_{}|>", tokens.len()));
        types.push(NORMAL);
    }
    let s = |x: &str| Value::String(x.into());
    let template = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + \
                    message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}\
                    {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    vec![
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("default")),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![s("\u{120} \u{120}")]),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(first_special),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(first_special + 2),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), s(template)),
    ]
}

/// GPT-2's printable stand-ins for the 256 byte values, in byte order.
fn byte_chars() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("printable byte")
            } else {
                extra += 1;
                char::from_u32(255 + extra).expect("stand-in char")
            }
        })
        .collect()
}
