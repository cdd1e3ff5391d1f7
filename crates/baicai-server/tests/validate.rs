//! Parsing and validation: every rule gives a 400 (or 404) naming the field, and a valid
//! request gets OpenAI's defaults, not the engine's. No model runs; the tokenizer is Qwen2.5's.

mod common;

use baicai_server::error::ApiError;
use baicai_server::protocol::{parse, ChatCompletionRequest, CompletionRequest, Prompt, Stop};
use baicai_server::validate::ValidRequest;
use common::{validator, MODEL_NAME, N_CTX};

fn chat(body: &str) -> Result<ValidRequest, ApiError> {
    validator(N_CTX).chat(&parse::<ChatCompletionRequest>(body.as_bytes())?)
}

fn completion(body: &str) -> Result<ValidRequest, ApiError> {
    validator(N_CTX).completion(&parse::<CompletionRequest>(body.as_bytes())?)
}

/// Asserts `r` failed with `status`, `param` and a message containing `words`.
#[track_caller]
fn assert_err(r: Result<ValidRequest, ApiError>, status: u16, param: Option<&str>, words: &str) {
    let e = r.expect_err("the request should have been refused");
    assert_eq!(e.status.as_u16(), status, "{e:?}");
    assert_eq!(e.param.as_deref(), param, "{e:?}");
    assert!(
        e.message.to_lowercase().contains(&words.to_lowercase()),
        "message {:?} lacks {words:?}",
        e.message
    );
}

const USER: &str = r#""messages":[{"role":"user","content":"Say hi."}]"#;

#[test]
fn silent_request_gets_openai_defaults_not_llamacpp_ones() {
    let v = chat(&format!("{{{USER}}}")).unwrap();
    let s = &v.sampler;
    assert_eq!(
        (s.temperature, s.top_p, s.top_k, s.min_p),
        (1.0, 1.0, 0, 0.0)
    );
    assert_eq!((s.repeat_penalty, s.repeat_last_n), (1.0, 0));
    assert_eq!(s.seed, None);
    assert_eq!(v.n, 1);
    assert!(v.stop_at_eog && !v.stream && !v.include_usage && v.logprobs.is_none());
    let p = &v.prompts[0];
    assert_eq!(
        p.max_tokens + p.tokens.len(),
        N_CTX,
        "default max_tokens = rest of context"
    );
}

#[test]
fn chat_prompt_is_the_rendered_template() {
    let v = chat(&format!("{{{USER}}}")).unwrap();
    let text = common::tokenizer().decode(&v.prompts[0].tokens, false);
    assert!(
        text.contains("<|im_start|>user\nSay hi.<|im_end|>"),
        "{text:?}"
    );
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text:?}");
    // Text parts are concatenated; developer is the system role.
    let parts = chat(
        r#"{"messages":[{"role":"developer","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Say "},{"type":"text","text":"hi."}]}]}"#,
    )
    .unwrap();
    let text = common::tokenizer().decode(&parts.prompts[0].tokens, false);
    assert!(
        text.contains("<|im_start|>system\nBe brief.<|im_end|>"),
        "{text:?}"
    );
    assert!(text.contains("user\nSay hi.<|im_end|>"), "{text:?}");
}

#[test]
fn sampling_fields_map_to_the_sampler() {
    let v = chat(&format!(
        r#"{{{USER},"temperature":0.5,"top_p":0.9,"top_k":-1,"min_p":0.1,"presence_penalty":0.5,
           "frequency_penalty":-0.5,"repetition_penalty":1.1,"seed":7,"n":3,"stop":"x",
           "max_completion_tokens":5,"max_tokens":9,"logprobs":true,"top_logprobs":4,
           "stream":true,"stream_options":{{"include_usage":true}},"user":"u1",
           "ignore_eos":true,"some_future_field":{{"a":1}}}}"#
    ))
    .unwrap();
    let s = &v.sampler;
    assert_eq!(
        (s.temperature, s.top_p, s.top_k, s.min_p),
        (0.5, 0.9, 0, 0.1)
    );
    assert_eq!(
        (s.presence_penalty, s.frequency_penalty, s.repeat_penalty),
        (0.5, -0.5, 1.1)
    );
    assert_eq!(s.repeat_last_n, N_CTX, "penalties look at the whole window");
    assert_eq!(v.stop, vec!["x".to_owned()]);
    assert_eq!(v.prompts[0].max_tokens, 5, "max_completion_tokens wins");
    assert_eq!(v.logprobs, Some(4));
    assert!(v.stream && v.include_usage && !v.stop_at_eog);
    assert_eq!(v.user.as_deref(), Some("u1"));
    let seeds: Vec<_> = (0..3).map(|i| v.sampler_for(i).seed).collect();
    assert_eq!(seeds, vec![Some(7), Some(8), Some(9)]);
}

#[test]
fn every_out_of_range_value_is_refused_naming_its_field() {
    let cases: &[(&str, &str, &str)] = &[
        (r#""temperature":-0.1"#, "temperature", "between 0 and 2"),
        (r#""temperature":2.5"#, "temperature", "between 0 and 2"),
        (r#""top_p":0"#, "top_p", "(0, 1]"),
        (r#""top_p":1.5"#, "top_p", "(0, 1]"),
        (r#""top_k":-2"#, "top_k", "top_k"),
        (r#""min_p":1.5"#, "min_p", "min_p"),
        (
            r#""presence_penalty":3"#,
            "presence_penalty",
            "between -2 and 2",
        ),
        (
            r#""frequency_penalty":-3"#,
            "frequency_penalty",
            "between -2 and 2",
        ),
        (
            r#""repetition_penalty":0"#,
            "repetition_penalty",
            "greater than 0",
        ),
        (r#""n":0"#, "n", "between 1 and 8"),
        (r#""n":9"#, "n", "between 1 and 8"),
        (r#""max_tokens":0"#, "max_tokens", "at least 1"),
        (r#""max_tokens":-5"#, "max_tokens", "at least 1"),
        (r#""max_tokens":100000"#, "max_tokens", "context length"),
        (
            r#""max_completion_tokens":0"#,
            "max_completion_tokens",
            "at least 1",
        ),
        (
            r#""logprobs":true,"top_logprobs":21"#,
            "top_logprobs",
            "between 0 and 20",
        ),
        (r#""top_logprobs":2"#, "top_logprobs", "logprobs"),
        (
            r#""stop":["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"]"#,
            "stop",
            "at most",
        ),
    ];
    for (field, param, words) in cases {
        assert_err(
            chat(&format!("{{{USER},{field}}}")),
            400,
            Some(param),
            words,
        );
    }
}

#[test]
fn messages_rules() {
    assert_err(
        chat(r#"{"messages":[]}"#),
        400,
        Some("messages"),
        "must not be empty",
    );
    assert_err(
        chat(r#"{"model":"x"}"#),
        400,
        Some("messages"),
        "messages is required",
    );
    assert_err(
        chat(r#"{"messages":[{"role":"user","content":"a"},{"role":"wizard","content":"b"}]}"#),
        400,
        Some("messages[1].role"),
        "'wizard' is not supported",
    );
    assert_err(
        chat(r#"{"messages":[{"role":"user"}]}"#),
        400,
        Some("messages[0].content"),
        "missing",
    );
    assert_err(
        chat(r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#),
        400,
        Some("messages[0].content[0].type"),
        "image_url",
    );
    assert_err(
        chat(r#"{"messages":[{"role":"user","content":5}]}"#),
        400,
        Some("messages[0].content"),
        "expected a string or an array of content parts",
    );
    assert_err(
        chat(&format!(
            r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#,
            "cabbage ".repeat(N_CTX)
        )),
        400,
        Some("messages"),
        "context length",
    );
    // An assistant message may have null content.
    chat(r#"{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":null},{"role":"user","content":"b"}]}"#).unwrap();
}

#[test]
fn unknown_model_is_404_model_not_found() {
    let e = chat(&format!(r#"{{{USER},"model":"gpt-9"}}"#)).unwrap_err();
    assert_eq!((e.status.as_u16(), e.code), (404, Some("model_not_found")));
    assert!(e.message.contains("gpt-9"));
    chat(&format!(r#"{{{USER},"model":"{MODEL_NAME}"}}"#)).unwrap();
}

#[test]
fn completion_prompts_in_every_shape() {
    let one = completion(r#"{"prompt":"def add(a, b):"}"#).unwrap();
    assert_eq!(one.prompts.len(), 1);
    assert_eq!(
        one.prompts[0].tokens,
        common::tokenizer().encode("def add(a, b):", true, true)
    );
    let ids = completion(r#"{"prompt":[9707, 11]}"#).unwrap();
    assert_eq!(ids.prompts[0].tokens, vec![9707, 11]);
    let texts = completion(r#"{"prompt":["a","b"],"n":2,"seed":1,"echo":true}"#).unwrap();
    assert_eq!((texts.prompts.len(), texts.choices()), (2, 4));
    assert_eq!(texts.prompts[1].echo.as_deref(), Some("b"));
    // Choice p*n+i has seed+i.
    assert_eq!(texts.sampler_for(3).seed, Some(2));
    let lists = completion(r#"{"prompt":[[1,2],[3]],"echo":true}"#).unwrap();
    assert_eq!(lists.prompts[1].tokens, vec![3]);
    assert!(lists.prompts[0].echo.is_some());
    // Control tokens written in a text prompt are read as those tokens (like llama-server).
    let special = completion(r#"{"prompt":"<|im_start|>user"}"#).unwrap();
    assert_eq!(
        special.prompts[0].tokens[0],
        common::tokenizer().token_id("<|im_start|>").unwrap()
    );
}

#[test]
fn completion_rules() {
    assert_err(
        completion(r#"{"max_tokens":3}"#),
        400,
        Some("prompt"),
        "prompt is required",
    );
    assert_err(
        completion(r#"{"prompt":""}"#),
        400,
        Some("prompt"),
        "must not be empty",
    );
    assert_err(
        completion(r#"{"prompt":[]}"#),
        400,
        Some("prompt"),
        "must not be empty",
    );
    assert_err(
        completion(r#"{"prompt":{"text":"hi"}}"#),
        400,
        Some("prompt"),
        "expected a string",
    );
    assert_err(
        completion(r#"{"prompt":[1,"a"]}"#),
        400,
        Some("prompt"),
        "only token ids",
    );
    assert_err(
        completion(r#"{"prompt":[9707, 10000000]}"#),
        400,
        Some("prompt[1]"),
        "outside the vocabulary",
    );
    assert_err(
        completion(r#"{"prompt":[9707, -3]}"#),
        400,
        Some("prompt[1]"),
        "outside the vocabulary",
    );
    assert_err(
        completion(r#"{"prompt":[[1],[2, 999999]]}"#),
        400,
        Some("prompt[1][1]"),
        "outside the vocabulary",
    );
    assert_err(
        completion(&format!(
            r#"{{"prompt":[{}]}}"#,
            vec!["9707"; N_CTX].join(",")
        )),
        400,
        Some("prompt"),
        "context length",
    );
    assert_err(
        completion(r#"{"prompt":"a","suffix":"b"}"#),
        400,
        Some("suffix"),
        "not supported",
    );
    assert_err(
        completion(r#"{"prompt":"a","logprobs":21}"#),
        400,
        Some("logprobs"),
        "between 0 and 20",
    );
    assert_err(
        completion(r#"{"prompt":"a","max_tokens":-1}"#),
        400,
        Some("max_tokens"),
        "at least 1",
    );
    assert_err(
        completion(r#"{"prompt":"a","top_p":-0.5}"#),
        400,
        Some("top_p"),
        "top_p",
    );
    assert_err(
        completion(r#"{"prompt":["a","b","c","d","e","f","g","h","i"],"n":8}"#),
        400,
        Some("prompt"),
        "at most 64",
    );
    completion(r#"{"prompt":"a","suffix":""}"#).unwrap();
}

#[test]
fn malformed_bodies_are_400_with_a_reason() {
    let cases: &[(&[u8], &str, Option<&str>)] = &[
        (br#"{"messages": ["#, "not valid json", None),
        (
            b"{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}",
            "utf-8",
            None,
        ),
        (b"[1, 2, 3]", "json object", None),
        (b"", "empty", None),
        (br#"{"messages": "hi"}"#, "messages", Some("messages")),
        (
            br#"{"messages": [], "temperature": "hot"}"#,
            "temperature",
            Some("temperature"),
        ),
        (
            br#"{"messages": [], "stream": "yes"}"#,
            "stream",
            Some("stream"),
        ),
        (
            br#"{"messages": [], "stop": 5}"#,
            "a string or an array of strings",
            Some("stop"),
        ),
        (
            br#"{"messages": [], "max_tokens": "ten"}"#,
            "max_tokens",
            Some("max_tokens"),
        ),
        (
            br#"{"messages": [{"content": "x"}]}"#,
            "messages[0].role is required",
            Some("messages[0].role"),
        ),
        (br#"{"messages": []} trailing"#, "not valid json", None),
    ];
    for (body, words, param) in cases {
        let e = parse::<ChatCompletionRequest>(body).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert_eq!(e.param.as_deref(), *param, "{e:?}");
        assert!(
            e.message.to_lowercase().contains(words),
            "{:?} lacks {words:?}",
            e.message
        );
    }
}

#[test]
fn multi_shape_fields_parse() {
    let r: CompletionRequest = parse(br#"{"prompt":["a","b"],"stop":["x","y"]}"#).unwrap();
    assert_eq!(r.prompt, Prompt::Texts(vec!["a".into(), "b".into()]));
    assert_eq!(r.stop, Some(Stop(vec!["x".into(), "y".into()])));
    let r: CompletionRequest = parse(br#"{"prompt":[[1],[2,3]],"stop":null}"#).unwrap();
    assert_eq!(r.prompt, Prompt::TokenLists(vec![vec![1], vec![2, 3]]));
    assert_eq!(r.stop, None);
}
