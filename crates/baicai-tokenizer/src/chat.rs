//! Chat templates: the model's `tokenizer.chat_template` (Jinja) rendered with minijinja, or
//! ChatML when the model has none (what llama.cpp falls back to).
//!
//! The environment follows Hugging Face `apply_chat_template`: `trim_blocks` and
//! `lstrip_blocks` on, Python string/dict methods (`.strip()`, `.split()`, `.items()`, …) through
//! minijinja-contrib's pycompat callback, `raise_exception(msg)` and `strftime_now(fmt)`, and the
//! context `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools`. `tojson` is
//! Python's `json.dumps` as HF's environment has it (`", "` / `": "` separators, key order kept,
//! no HTML escaping), so tool definitions reach the model in the form it was trained on.
//!
//! [`ChatTemplate::render`] takes plain text messages; [`ChatTemplate::render_json`] takes them
//! as JSON values, with the fields tool use needs (`tool_calls` of assistant messages,
//! `tool_call_id` and `name` of `tool` messages), and the `tools` list.

use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TokenizerError};
use crate::Tokenizer;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, …
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template.
pub struct ChatTemplate {
    /// `None`: the ChatML fallback.
    env: Option<Environment<'static>>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("fallback", &self.env.is_none())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `None` selects the ChatML fallback. `bos_token`/`eos_token` are the
    /// texts the template sees as `bos_token`/`eos_token`.
    ///
    /// # Errors
    /// [`TokenizerError::ChatTemplate`] when the template does not parse.
    pub fn new(source: Option<&str>, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let env = match source {
            None => None,
            Some(src) => {
                let mut env = Environment::new();
                env.set_trim_blocks(true);
                env.set_lstrip_blocks(true);
                env.set_unknown_method_callback(
                    minijinja_contrib::pycompat::unknown_method_callback,
                );
                env.add_function("raise_exception", raise_exception);
                env.add_function("strftime_now", strftime_now);
                env.add_filter("tojson", tojson);
                env.add_template_owned(TEMPLATE_NAME, src.to_string())
                    .map_err(template_error)?;
                Some(env)
            }
        };
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The tokenizer's template, with its BOS/EOS texts.
    ///
    /// # Errors
    /// As [`ChatTemplate::new`].
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Result<ChatTemplate> {
        let text = |id: Option<u32>| {
            id.map(|id| String::from_utf8_lossy(&tokenizer.token_bytes(id)).into_owned())
                .unwrap_or_default()
        };
        ChatTemplate::new(
            tokenizer.chat_template(),
            &text(tokenizer.bos_id()),
            &text(tokenizer.eos_id()),
        )
    }

    /// The template of a GGUF file (`tokenizer.chat_template`), with the texts of its
    /// `bos_token_id`/`eos_token_id` tokens.
    ///
    /// # Errors
    /// Metadata of the wrong type, or a template that does not parse.
    pub fn from_gguf(gguf: &baicai_gguf::Gguf) -> Result<ChatTemplate> {
        let source = gguf.get_str("tokenizer.chat_template")?;
        let tokens = gguf
            .get_str_array("tokenizer.ggml.tokens")?
            .unwrap_or_default();
        let text = |key: &str| -> Result<String> {
            Ok(gguf
                .get_u64(key)?
                .and_then(|id| tokens.get(usize::try_from(id).ok()?))
                .map(|s| s.to_string())
                .unwrap_or_default())
        };
        ChatTemplate::new(
            source,
            &text("tokenizer.ggml.bos_token_id")?,
            &text("tokenizer.ggml.eos_token_id")?,
        )
    }

    /// Whether this is the ChatML fallback (the model has no template).
    pub fn is_fallback(&self) -> bool {
        self.env.is_none()
    }

    /// Renders the conversation; with `add_generation_prompt`, ends with the opening of an
    /// assistant turn.
    ///
    /// # Errors
    /// [`TokenizerError::ChatTemplate`] when rendering fails (including `raise_exception`).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let Some(env) = &self.env else {
            return Ok(chatml(messages, add_generation_prompt));
        };
        self.render_env(
            env,
            Value::from_serialize(messages),
            Value::from(()),
            add_generation_prompt,
        )
    }

    /// Renders messages given as JSON objects (`role`, `content`, and where present
    /// `tool_calls`, `tool_call_id`, `name`), with `tools` (a list of OpenAI tool definitions)
    /// when given. The ChatML fallback renders `role` and `content` only.
    ///
    /// # Errors
    /// [`TokenizerError::ChatTemplate`] when rendering fails (including `raise_exception`).
    pub fn render_json(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let Some(env) = &self.env else {
            let text = |m: &serde_json::Value, k: &str| {
                m.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            let plain: Vec<ChatMessage> = messages
                .iter()
                .map(|m| ChatMessage::new(text(m, "role"), text(m, "content")))
                .collect();
            return Ok(chatml(&plain, add_generation_prompt));
        };
        let tools = tools.map_or(Value::from(()), Value::from_serialize);
        self.render_env(
            env,
            Value::from_serialize(messages),
            tools,
            add_generation_prompt,
        )
    }

    fn render_env(
        &self,
        env: &Environment<'static>,
        messages: Value,
        tools: Value,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = env.get_template(TEMPLATE_NAME).map_err(template_error)?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
                tools => tools,
            })
            .map_err(template_error)
    }

    /// The template's source (`None` for the ChatML fallback): tool-call and reasoning formats
    /// are recognised from it.
    pub fn source(&self) -> Option<String> {
        let env = self.env.as_ref()?;
        Some(env.get_template(TEMPLATE_NAME).ok()?.source().to_owned())
    }
}

/// `<|im_start|>{role}\n{content}<|im_end|>\n` per message (llama.cpp's built-in "chatml").
fn chatml(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str("<|im_start|>");
        out.push_str(&m.role);
        out.push('\n');
        out.push_str(&m.content);
        out.push_str("<|im_end|>\n");
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

fn template_error(e: Error) -> TokenizerError {
    let mut msg = e.to_string();
    if let Some(detail) = e.detail() {
        if !msg.contains(detail) {
            msg = format!("{msg}: {detail}");
        }
    }
    TokenizerError::ChatTemplate(msg)
}

/// `x | tojson(indent=None)` as transformers defines it: `json.dumps(x, ensure_ascii=False,
/// indent=indent)`, i.e. `", "` and `": "` separators without indent, keys in their order.
fn tojson(value: Value, kwargs: minijinja::value::Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    write_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let (item_sep, key_sep) = if indent.is_some() {
        (",", ": ")
    } else {
        (", ", ": ")
    };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&J::String(k.clone()).to_string());
                out.push_str(key_sep);
                write_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("template raised: {message}"),
    ))
}

/// `strftime_now(format)` as HF templates use it (Llama 3.x: `"%d %b %Y"`), in UTC.
fn strftime_now(format: String) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    strftime(&format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A strftime subset (%Y %y %m %d %e %H %I %M %S %p %b %B %a %A %j %%) for Unix time `secs`.
fn strftime(format: &str, secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{:02}", (h + 11) % 12 + 1)),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_fallback_without_template() {
        let t = ChatTemplate::new(None, "", "").unwrap();
        assert!(t.is_fallback());
        let out = t.render(&[ChatMessage::new("user", "hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception() {
        let src = "{{ bos_token }}{% for m in messages %}{{ m['content'].strip().upper() }}\
                   {% endfor %}{% if messages|length > 1 %}{{ raise_exception('too many') }}{% endif %}";
        let t = ChatTemplate::new(Some(src), "<s>", "</s>").unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  hi ")], false)
                .unwrap(),
            "<s>HI"
        );
        let two = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
        let e = t.render(&two, false).unwrap_err().to_string();
        assert!(e.contains("too many"), "{e}");
    }

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-02-29T13:05:09Z, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(
            strftime("%A %B %e %H:%M:%S %j %y %I%p %%", t),
            "Thursday February 29 13:05:09 060 24 01PM %"
        );
        assert_eq!(strftime("%Y-%m-%d %a", 0), "1970-01-01 Thu");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let src = "{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}";
        let t = ChatTemplate::new(Some(src), "", "").unwrap();
        let tools = [serde_json::json!({"type": "function", "b": [1, "<x>"], "a": {}})];
        let out = t.render_json(&[], Some(&tools), false).unwrap();
        assert_eq!(
            out,
            "[{\"type\": \"function\", \"b\": [1, \"<x>\"], \"a\": {}}]|\
             {\n  \"type\": \"function\",\n  \"b\": [\n    1,\n    \"<x>\"\n  ],\n  \"a\": {}\n}"
        );
    }

    #[test]
    fn render_json_passes_tool_calls_and_tools() {
        let src = "{% for m in messages %}{{ m.role }}:{% if m.tool_calls is defined %}\
                   {{ m.tool_calls[0].function.name }}{{ m.tool_calls[0].function.arguments.city }}\
                   {% else %}{{ m.content }}{% endif %};{% endfor %}{{ tools | length }}";
        let t = ChatTemplate::new(Some(src), "", "").unwrap();
        let messages = [
            serde_json::json!({"role": "user", "content": "hi"}),
            serde_json::json!({"role": "assistant", "content": "",
                "tool_calls": [{"function": {"name": "w", "arguments": {"city": "Oslo"}}}]}),
            serde_json::json!({"role": "tool", "content": "sunny", "tool_call_id": "c1"}),
        ];
        let tools = [serde_json::json!({"type": "function"})];
        let out = t.render_json(&messages, Some(&tools), false).unwrap();
        assert_eq!(out, "user:hi;assistant:wOslo;tool:sunny;1");
    }

    #[test]
    fn syntax_error_is_reported() {
        let e = ChatTemplate::new(Some("{% if %}"), "", "").unwrap_err();
        assert!(matches!(e, TokenizerError::ChatTemplate(_)), "{e}");
    }
}
