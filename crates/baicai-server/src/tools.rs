//! Tool calls in the model's own syntax: which syntax a chat template uses, the grammar that
//! constrains a forced call, and the parser that turns generated text back into OpenAI's
//! `tool_calls` — incrementally, so a stream can carry the arguments as they are written.
//!
//! Each family writes calls its own way (as vLLM's and llama.cpp's parsers read them):
//! - Hermes / Qwen2.5 / Qwen3: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, repeated;
//! - Llama 3.1+: the whole answer is `{"name": …, "parameters": {…}}` (after an optional
//!   `<|python_tag|>`), several separated by `;`;
//! - Mistral / Mixtral (v3 templates): `[TOOL_CALLS] [{"name": …, "arguments": {…}}, …]`;
//!   newer Mistral templates: `[TOOL_CALLS]name[ARGS]{…}`;
//! - DeepSeek-V3 / R1: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>name\n```json\n{…}\n```<｜tool▁call▁end｜>…`;
//!   V3.1: `<｜tool▁call▁begin｜>name<｜tool▁sep｜>{…}<｜tool▁call▁end｜>`.
//!
//! Parsing is one function of the text so far ([`parse`]): the content before the first call
//! and each call's name and the raw JSON text of its arguments as far as written. A stream sends
//! what grew since the last parse; a plain answer parses once at the end. Both therefore carry
//! the same arguments text, exactly as the model wrote it.

use serde_json::Value;

/// A tool-call syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{json}</tool_call>` (Hermes, Qwen2.5, Qwen3).
    Hermes,
    /// A bare JSON object (Llama 3.1, 3.2, 3.3).
    Llama3Json,
    /// `[TOOL_CALLS] [json, …]` (Mistral v3 templates, Mixtral).
    MistralJson,
    /// `[TOOL_CALLS]name[ARGS]{json}` (Mistral v11+ templates).
    MistralArgs,
    /// DeepSeek-V3 / R1 tool-call tokens (and V3.1's shorter form).
    DeepSeek,
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";
const MISTRAL_CALLS: &str = "[TOOL_CALLS]";
const MISTRAL_ARGS: &str = "[ARGS]";
const DS_CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
const DS_CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const DS_SEP: &str = "<｜tool▁sep｜>";
const DS_CALL_END: &str = "<｜tool▁call▁end｜>";
const DS_CALLS_END: &str = "<｜tool▁calls▁end｜>";

impl ToolFormat {
    /// The syntax a chat template writes tool calls in; `None` when it has no tool support.
    pub fn detect(template: &str) -> Option<ToolFormat> {
        if template.contains(DS_CALL_BEGIN) {
            Some(ToolFormat::DeepSeek)
        } else if template.contains(HERMES_OPEN) {
            Some(ToolFormat::Hermes)
        } else if template.contains(MISTRAL_CALLS) {
            if template.contains(MISTRAL_ARGS) {
                Some(ToolFormat::MistralArgs)
            } else {
                Some(ToolFormat::MistralJson)
            }
        } else if template.contains("<|python_tag|>")
            || (template.contains("ipython") && template.contains("tools"))
        {
            Some(ToolFormat::Llama3Json)
        } else {
            None
        }
    }

    /// The name used in messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "hermes",
            ToolFormat::Llama3Json => "llama3_json",
            ToolFormat::MistralJson => "mistral",
            ToolFormat::MistralArgs => "mistral_args",
            ToolFormat::DeepSeek => "deepseek_v3",
        }
    }

    /// Where the calls begin in `text`, if they do (the rest is content).
    fn calls_start(self, text: &str) -> Option<usize> {
        match self {
            ToolFormat::Hermes => text.find(HERMES_OPEN),
            ToolFormat::MistralJson | ToolFormat::MistralArgs => text.find(MISTRAL_CALLS),
            ToolFormat::DeepSeek => text
                .find(DS_CALLS_BEGIN)
                .into_iter()
                .chain(text.find(DS_CALL_BEGIN))
                .min(),
            ToolFormat::Llama3Json => {
                let t = text.trim_start();
                (t.starts_with('{') || t.starts_with(PYTHON_TAG)).then_some(text.len() - t.len())
            }
        }
    }

    /// Markers whose beginning at the end of the text must be held back from the content.
    fn markers(self) -> &'static [&'static str] {
        match self {
            ToolFormat::Hermes => &[HERMES_OPEN],
            ToolFormat::MistralJson | ToolFormat::MistralArgs => &[MISTRAL_CALLS],
            ToolFormat::DeepSeek => &[DS_CALLS_BEGIN, DS_CALL_BEGIN],
            ToolFormat::Llama3Json => &[PYTHON_TAG],
        }
    }

    /// Calls in `region` (the text from [`ToolFormat::calls_start`] on).
    fn parse_calls(self, region: &str) -> Vec<PartialCall> {
        match self {
            ToolFormat::Hermes => region
                .split(HERMES_OPEN)
                .skip(1)
                .map(|body| {
                    let (body, closed) = match body.find(HERMES_CLOSE) {
                        Some(i) => (&body[..i], true),
                        None => (body, false),
                    };
                    let mut call = call_object(body);
                    call.complete &= closed || body.trim_end().ends_with('}');
                    call
                })
                .collect(),
            ToolFormat::Llama3Json => {
                let body = region.trim_start();
                let body = body.strip_prefix(PYTHON_TAG).unwrap_or(body);
                call_sequence(body, b';')
            }
            ToolFormat::MistralJson => region
                .split(MISTRAL_CALLS)
                .skip(1)
                .flat_map(|body| {
                    let body = body.trim_start();
                    match body.strip_prefix('[') {
                        Some(list) => call_sequence(list, b','),
                        None => call_sequence(body, b','),
                    }
                })
                .collect(),
            ToolFormat::MistralArgs => region
                .split(MISTRAL_CALLS)
                .skip(1)
                .filter_map(|body| {
                    let i = body.find(MISTRAL_ARGS)?;
                    let args = &body[i + MISTRAL_ARGS.len()..];
                    Some(named_call(body[..i].trim(), args))
                })
                .collect(),
            ToolFormat::DeepSeek => region
                .split(DS_CALL_BEGIN)
                .skip(1)
                .filter_map(|body| {
                    let body = body.split(DS_CALL_END).next().unwrap_or(body);
                    let i = body.find(DS_SEP)?;
                    let (head, rest) = (&body[..i], &body[i + DS_SEP.len()..]);
                    if head.trim() == "function" {
                        // V3: name\n```json\n{…}\n```
                        let nl = rest.find('\n')?;
                        let args = rest[nl + 1..].trim_start();
                        let args = args.strip_prefix("```json").unwrap_or(args);
                        Some(named_call(rest[..nl].trim(), args))
                    } else {
                        Some(named_call(head.trim(), rest))
                    }
                })
                .collect(),
        }
    }

    /// A Lark grammar (llguidance's syntax) for one call — or, with `parallel`, one or more —
    /// to any of `tools` (name and parameter schema), in this syntax. `token` gives the id of
    /// a marker when it is one token of the vocabulary, so the grammar asks for that token.
    pub fn grammar(
        self,
        tools: &[(String, Value)],
        parallel: bool,
        token: impl Fn(&str) -> Option<u32>,
    ) -> String {
        let lit = |s: &str| match token(s) {
            Some(id) => format!("<[{id}]>"),
            None => Value::String(s.to_owned()).to_string(),
        };
        let alternatives = |rule: &dyn Fn(usize) -> String| {
            (0..tools.len())
                .map(|i| format!("c{i}"))
                .collect::<Vec<_>>()
                .join(" | ")
                + "\n"
                + &(0..tools.len()).map(rule).collect::<String>()
        };
        let object = |key: &str| {
            let schema = |i: usize| {
                let (name, params) = &tools[i];
                let s = serde_json::json!({
                    "type": "object",
                    "properties": {"name": {"const": name}, key: params},
                    "required": ["name", key],
                    "additionalProperties": false,
                    "x-guidance": json_options(),
                });
                format!("c{i}: %json {s}\n")
            };
            alternatives(&schema)
        };
        let args = |i: usize| format!("a{i}: %json {}\n", with_options(&tools[i].1));
        let repeat = |one: &str, sep: &str| {
            if parallel && sep.is_empty() {
                format!("start: {one}+\n")
            } else if parallel {
                format!("start: {one} ({sep} {one})*\n")
            } else {
                format!("start: {one}\n")
            }
        };
        match self {
            ToolFormat::Hermes => {
                let (open, close) = (lit(HERMES_OPEN), lit(HERMES_CLOSE));
                repeat("call", "\"\\n\"")
                    + &format!("call: {open} \"\\n\" obj \"\\n\" {close}\nobj: ")
                    + &object("arguments")
            }
            ToolFormat::Llama3Json => repeat("obj", "\"; \"") + "obj: " + &object("parameters"),
            ToolFormat::MistralJson => {
                format!("start: {} \" [\" objs \"]\"\n", lit(MISTRAL_CALLS))
                    + &if parallel {
                        "objs: obj (\", \" obj)*\n".to_owned()
                    } else {
                        "objs: obj\n".to_owned()
                    }
                    + "obj: "
                    + &object("arguments")
            }
            ToolFormat::MistralArgs => {
                let (calls, args_tok) = (lit(MISTRAL_CALLS), lit(MISTRAL_ARGS));
                let named = |i: usize| {
                    let name = Value::String(tools[i].0.clone()).to_string();
                    format!("c{i}: {name} {args_tok} a{i}\n") + &args(i)
                };
                repeat("call", "") + &format!("call: {calls} one\none: ") + &alternatives(&named)
            }
            ToolFormat::DeepSeek => {
                let (begin, call, sep, end, calls_end) = (
                    lit(DS_CALLS_BEGIN),
                    lit(DS_CALL_BEGIN),
                    lit(DS_SEP),
                    lit(DS_CALL_END),
                    lit(DS_CALLS_END),
                );
                let named = |i: usize| {
                    let name = Value::String(tools[i].0.clone()).to_string();
                    format!("c{i}: \"function\" {sep} {name} \"\\n```json\\n\" a{i} \"\\n```\"\n")
                        + &args(i)
                };
                let one = format!("{call} one {end}");
                let calls = if parallel {
                    format!("{one} ({one})*")
                } else {
                    one
                };
                format!("start: {begin} {calls} {calls_end}\none: ") + &alternatives(&named)
            }
        }
    }
}

/// llguidance's JSON options for generated JSON: the separators models write (`", "`,
/// `": "`) and no free whitespace, so a sampled answer cannot wander off into blank space.
pub fn json_options() -> Value {
    serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
    })
}

/// `schema` with [`json_options`] (kept where it sets its own).
pub fn with_options(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Some(obj) = s.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(json_options);
    }
    s
}

/// A call as far as it is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartialCall {
    /// The function's name, once written out in full.
    pub name: Option<String>,
    /// The raw JSON text of the arguments so far.
    pub arguments: String,
    /// Whether the arguments' JSON value is complete.
    pub complete: bool,
}

/// What the text so far says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Text before the first call, less a held-back marker start (unless at the end).
    pub content: String,
    /// The calls.
    pub calls: Vec<PartialCall>,
}

/// Parses `text` in `format`; `done` when the text is final (nothing is held back then).
pub fn parse(format: ToolFormat, text: &str, done: bool) -> Parsed {
    match format.calls_start(text) {
        Some(i) => {
            let mut calls = format.parse_calls(&text[i..]);
            if done {
                // A call cut off (by max_tokens) is dropped; an answer that only looked like a
                // call (Llama's bare JSON that is not one) is content after all.
                calls.retain(|c| c.name.is_some() && c.complete);
                if calls.is_empty() {
                    return Parsed {
                        content: text.to_owned(),
                        calls,
                    };
                }
            }
            Parsed {
                content: text[..i].to_owned(),
                calls,
            }
        }
        None if done => Parsed {
            content: text.to_owned(),
            calls: Vec::new(),
        },
        None => {
            let mut keep = text.len() - held_back(text, format.markers());
            if format == ToolFormat::Llama3Json && text.trim().is_empty() {
                keep = 0;
            }
            Parsed {
                content: text[..keep].to_owned(),
                calls: Vec::new(),
            }
        }
    }
}

/// Bytes at the end of `text` that may be the start of one of `markers`.
pub fn held_back(text: &str, markers: &[&str]) -> usize {
    let mut n = 0;
    for m in markers {
        for k in (1..m.len()).rev() {
            if m.is_char_boundary(k) && text.ends_with(&m[..k]) {
                n = n.max(k);
                break;
            }
        }
    }
    n
}

/// A call written as `{"name": …, "arguments": {…}}` (or `"parameters"`).
fn call_object(body: &str) -> PartialCall {
    let b = body.as_bytes();
    let mut call = PartialCall::default();
    let Some(mut i) = skip_ws(b, 0).filter(|&i| b[i] == b'{') else {
        return call;
    };
    i += 1;
    loop {
        let Some(k) = skip_ws(b, i) else { return call };
        match b[k] {
            b'}' => {
                call.complete = call.name.is_some();
                return call;
            }
            b',' => {
                i = k + 1;
                continue;
            }
            b'"' => {}
            _ => return call,
        }
        let Some(key_end) = scan_value(b, k) else {
            return call;
        };
        let key: String = serde_json::from_str(&body[k..key_end]).unwrap_or_default();
        let Some(colon) = skip_ws(b, key_end).filter(|&c| b[c] == b':') else {
            return call;
        };
        let Some(v) = skip_ws(b, colon + 1) else {
            return call;
        };
        let end = scan_value(b, v);
        match key.as_str() {
            "name" => {
                let Some(end) = end else { return call };
                call.name = serde_json::from_str(&body[v..end]).ok();
            }
            "arguments" | "parameters" => {
                call.arguments = body[v..end.unwrap_or(b.len())].to_owned();
                if end.is_none() {
                    return call;
                }
            }
            _ => {}
        }
        let Some(end) = end else { return call };
        i = end;
    }
}

/// Calls written as JSON objects one after another, separated by `sep` (and whitespace).
fn call_sequence(body: &str, sep: u8) -> Vec<PartialCall> {
    let b = body.as_bytes();
    let mut calls = Vec::new();
    let mut i = 0;
    while let Some(k) = skip_ws(b, i) {
        if b[k] == sep {
            i = k + 1;
            continue;
        }
        if b[k] != b'{' {
            break;
        }
        let end = scan_value(b, k);
        let mut call = call_object(&body[k..end.unwrap_or(b.len())]);
        call.complete &= end.is_some();
        calls.push(call);
        match end {
            Some(e) => i = e,
            None => break,
        }
    }
    calls
}

/// A call whose name stands apart and whose arguments are a JSON value at `args`.
fn named_call(name: &str, args: &str) -> PartialCall {
    let b = args.as_bytes();
    let Some(v) = skip_ws(b, 0) else {
        return PartialCall {
            name: Some(name.to_owned()),
            ..PartialCall::default()
        };
    };
    let end = scan_value(b, v);
    PartialCall {
        name: Some(name.to_owned()),
        arguments: args[v..end.unwrap_or(b.len())].to_owned(),
        complete: end.is_some(),
    }
}

/// The first non-whitespace byte at or after `i`.
fn skip_ws(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    (i < b.len()).then_some(i)
}

/// The end of the JSON value starting at `i`, or `None` when it is not complete yet.
fn scan_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => {
            let mut j = i + 1;
            while j < b.len() {
                match b[j] {
                    b'\\' => j += 2,
                    b'"' => return Some(j + 1),
                    _ => j += 1,
                }
            }
            None
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = scan_value(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            // A number, true, false or null: complete once something follows it.
            let j = (i..b.len()).find(|&j| {
                matches!(
                    b[j],
                    b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t' | b';'
                )
            })?;
            Some(j)
        }
    }
}

/// A fresh call id: `call_` and 24 hex digits, or 9 letters and digits where Mistral's
/// templates require exactly that.
pub fn call_id(format: ToolFormat) -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let (a, b) = (h.finish(), {
        h.write_u8(1);
        h.finish()
    });
    match format {
        ToolFormat::MistralJson | ToolFormat::MistralArgs => {
            const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
            (0..9)
                .map(|k| ALNUM[((a >> (k * 6)) % ALNUM.len() as u64) as usize] as char)
                .collect()
        }
        _ => format!("call_{a:016x}{:08x}", b as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(format: ToolFormat, text: &str) -> Vec<(String, String)> {
        let p = parse(format, text, true);
        p.calls
            .into_iter()
            .map(|c| (c.name.unwrap(), c.arguments))
            .collect()
    }

    fn weather(args: &str) -> Vec<(String, String)> {
        vec![("get_weather".into(), args.into())]
    }

    #[test]
    fn detects_formats_from_templates() {
        let qwen = "{{- '<tool_call>\\n{\"name\": \"' }}";
        assert_eq!(ToolFormat::detect(qwen), Some(ToolFormat::Hermes));
        let llama = "{%- if tools %}Environment: ipython{% endif %}<|python_tag|>";
        assert_eq!(ToolFormat::detect(llama), Some(ToolFormat::Llama3Json));
        assert_eq!(
            ToolFormat::detect("[AVAILABLE_TOOLS]{{ tools }}[TOOL_CALLS]"),
            Some(ToolFormat::MistralJson)
        );
        assert_eq!(
            ToolFormat::detect("[TOOL_CALLS]{{ name }}[ARGS]{{ args }}"),
            Some(ToolFormat::MistralArgs)
        );
        assert_eq!(
            ToolFormat::detect("{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>'}}"),
            Some(ToolFormat::DeepSeek)
        );
        assert_eq!(ToolFormat::detect("{{ bos_token }}<start_of_turn>"), None);
    }

    #[test]
    fn qwen_hermes_calls_and_content() {
        // Qwen2.5-Instruct's answer to "weather in Paris and Oslo?".
        let out = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"unit\": \"celsius\"}}\n</tool_call>";
        let p = parse(ToolFormat::Hermes, out, true);
        assert_eq!(p.content, "Let me check.\n");
        assert_eq!(
            calls(ToolFormat::Hermes, out),
            vec![
                ("get_weather".into(), "{\"city\": \"Paris\"}".into()),
                (
                    "get_weather".into(),
                    "{\"city\": \"Oslo\", \"unit\": \"celsius\"}".into()
                )
            ]
        );
    }

    #[test]
    fn hermes_prefixes_grow_monotonically() {
        let out = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa\\\"ris\", \"n\": [1, {\"x\": 2}]}}\n</tool_call>";
        let mut last = Parsed::default();
        for end in (0..=out.len()).filter(|&e| out.is_char_boundary(e)) {
            let p = parse(ToolFormat::Hermes, &out[..end], false);
            assert!(p.content.starts_with(&last.content) || p.content.is_empty());
            for (i, c) in p.calls.iter().enumerate() {
                if let Some(old) = last.calls.get(i) {
                    assert!(
                        c.arguments.starts_with(&old.arguments),
                        "at {end}: {c:?} after {old:?}"
                    );
                    assert!(old.name.is_none() || old.name == c.name);
                }
            }
            last = p;
        }
        assert_eq!(last.calls.len(), 1);
        assert!(last.calls[0].complete);
        assert_eq!(
            last.calls[0].arguments,
            "{\"city\": \"Pa\\\"ris\", \"n\": [1, {\"x\": 2}]}"
        );
    }

    #[test]
    fn content_holds_back_a_marker_start() {
        let p = parse(ToolFormat::Hermes, "Sure <tool_", false);
        assert_eq!(p.content, "Sure ");
        assert_eq!(
            parse(ToolFormat::Hermes, "Sure <tool_", true).content,
            "Sure <tool_"
        );
        assert_eq!(parse(ToolFormat::Hermes, "a < b", false).content, "a < b");
    }

    #[test]
    fn llama3_json_calls() {
        // Llama-3.1-8B-Instruct with tools in the user message.
        let out = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}";
        assert_eq!(
            calls(ToolFormat::Llama3Json, out),
            weather("{\"city\": \"Paris\"}")
        );
        let two = "<|python_tag|>{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"x\": 1}}";
        assert_eq!(
            calls(ToolFormat::Llama3Json, two),
            vec![("a".into(), "{}".into()), ("b".into(), "{\"x\": 1}".into())]
        );
        // Plain JSON that is not a call stays content.
        let p = parse(ToolFormat::Llama3Json, "{\"answer\": 42}", true);
        assert_eq!((p.content.as_str(), p.calls.len()), ("{\"answer\": 42}", 0));
        let p = parse(ToolFormat::Llama3Json, "The answer is 42.", true);
        assert_eq!(p.content, "The answer is 42.");
    }

    #[test]
    fn mistral_calls() {
        // Mistral-7B-Instruct-v0.3.
        let out = "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"get_time\", \"arguments\": {}}]";
        assert_eq!(
            calls(ToolFormat::MistralJson, out),
            vec![
                ("get_weather".into(), "{\"city\": \"Paris\"}".into()),
                ("get_time".into(), "{}".into())
            ]
        );
        // Mistral-Small-3.2 (v11 template).
        let out = "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}";
        assert_eq!(
            calls(ToolFormat::MistralArgs, out),
            weather("{\"city\": \"Paris\"}")
        );
    }

    #[test]
    fn deepseek_calls() {
        // DeepSeek-V3 / R1 (after the reasoning).
        let out = "I'll look it up.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        let p = parse(ToolFormat::DeepSeek, out, true);
        assert_eq!(p.content, "I'll look it up.");
        assert_eq!(
            calls(ToolFormat::DeepSeek, out),
            weather("{\"city\": \"Paris\"}")
        );
        // DeepSeek-V3.1.
        let out = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        assert_eq!(
            calls(ToolFormat::DeepSeek, out),
            weather("{\"city\": \"Paris\"}")
        );
    }

    #[test]
    fn incomplete_call_at_the_end_is_dropped_or_content() {
        let cut = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa";
        let p = parse(ToolFormat::Hermes, cut, true);
        assert!(p.calls.is_empty());
        assert_eq!(p.content, cut);
        let one = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>\n";
        let p = parse(ToolFormat::Hermes, &format!("{one}{cut}"), true);
        assert_eq!((p.content.as_str(), p.calls.len()), ("", 1));
    }

    #[test]
    fn grammars_name_every_tool() {
        let tools = vec![
            (
                "get_weather".to_owned(),
                serde_json::json!({"type": "object"}),
            ),
            ("get_time".to_owned(), serde_json::json!({"type": "object"})),
        ];
        for f in [
            ToolFormat::Hermes,
            ToolFormat::Llama3Json,
            ToolFormat::MistralJson,
            ToolFormat::MistralArgs,
            ToolFormat::DeepSeek,
        ] {
            let g = f.grammar(&tools, true, |_| None);
            assert!(g.starts_with("start: "), "{g}");
            assert!(g.contains("get_time") && g.contains("c1"), "{g}");
        }
        let g = ToolFormat::Hermes.grammar(&tools[..1], false, |m| (m == HERMES_OPEN).then_some(7));
        assert!(g.contains("<[7]>") && g.contains("\"</tool_call>\""), "{g}");
    }

    #[test]
    fn call_ids_are_unique_and_mistral_ids_have_nine_characters() {
        assert_ne!(call_id(ToolFormat::Hermes), call_id(ToolFormat::Hermes));
        let m = call_id(ToolFormat::MistralJson);
        assert!(
            m.len() == 9 && m.chars().all(|c| c.is_ascii_alphanumeric()),
            "{m}"
        );
    }
}
