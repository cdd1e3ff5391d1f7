//! OpenAI's HTTP schema as typed structs: request bodies in, response bodies and stream chunks
//! out. The one place that knows field names.
//!
//! Requests ignore fields they do not know, as OpenAI does, so clients that send newer or
//! vendor-specific fields keep working; values are only *typed* here — ranges and cross-field
//! rules are [`crate::validate`]'s. The fields that take several shapes (`stop`, `content`,
//! `prompt`) have their own visitors, so a wrong shape is reported as "expected a string or an
//! array of strings" at the field's path rather than serde's "did not match any variant".

use std::fmt;

use baicai_engine::tariff::Currency;
use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Parses a request body into `T`, mapping every failure to a 400 that names the field:
/// invalid UTF-8 (with the byte offset), malformed JSON (line and column), a wrong type or a
/// missing field (with its path, `messages[0].content`).
///
/// # Errors
/// The 400 described above.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::bad_request(format!(
            "The request body is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        )));
    }
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::bad_request(
                "The request body is empty: send a JSON object",
            ))
        }
        Some(b'{') => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "The request body must be a JSON object ({...})",
            ))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let e = match parsed {
        Ok(v) => {
            return match de.end() {
                Ok(()) => Ok(v),
                Err(e) => Err(ApiError::bad_request(format!(
                    "The request body is not valid JSON: {e}"
                ))),
            }
        }
        Err(e) => e,
    };
    let path = e.path().to_string();
    let inner = e.into_inner();
    if inner.is_syntax() || inner.is_eof() || inner.is_io() {
        return Err(ApiError::bad_request(format!(
            "The request body is not valid JSON: {inner}"
        )));
    }
    let msg = inner.to_string();
    // "missing field `messages` at line 1 column 2": the field is the one named, under `path`.
    if let Some(field) = msg
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
    {
        let param = if path == "." {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
        return Err(ApiError::invalid(
            param.clone(),
            format!("{param} is required"),
        ));
    }
    if path == "." {
        return Err(ApiError::bad_request(format!(
            "The request body must be a JSON object: {msg}"
        )));
    }
    Err(ApiError::invalid(path.clone(), format!("{path}: {msg}")))
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// Defines a request body struct: the sampling and output fields both endpoints share, the
/// endpoint's own fields, and `common()` to view the shared ones. (Not `#[serde(flatten)]`:
/// flattened fields lose their path in error messages.)
macro_rules! request_struct {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* pub $f:ident: $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Deserialize)]
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
            /// The served model's name; absent = the served model.
            pub model: Option<String>,
            /// Tokens to generate, at most.
            pub max_tokens: Option<i64>,
            /// Softmax temperature, 0..=2; 0 = greedy.
            pub temperature: Option<f64>,
            /// Nucleus sampling mass, (0, 1].
            pub top_p: Option<f64>,
            /// vLLM's extension: keep the `top_k` most likely tokens; 0 or -1 = off.
            pub top_k: Option<i64>,
            /// vLLM's extension: drop tokens below `min_p` × the top probability.
            pub min_p: Option<f64>,
            /// -2..=2, subtracted once from each token already generated.
            pub presence_penalty: Option<f64>,
            /// -2..=2, subtracted per occurrence of each token already generated.
            pub frequency_penalty: Option<f64>,
            /// vLLM's extension: llama.cpp's `repeat_penalty` (> 0, 1 = off).
            pub repetition_penalty: Option<f64>,
            /// Seed of the random draw; choice `i` uses `seed + i`.
            pub seed: Option<i64>,
            /// Strings that end generation; not included in the output.
            pub stop: Option<Stop>,
            /// Choices per prompt, 1..=8.
            pub n: Option<i64>,
            /// Stream the answer as server-sent events.
            pub stream: Option<bool>,
            /// Streaming options.
            pub stream_options: Option<StreamOptions>,
            /// End-user id: accepted and logged, nothing else.
            pub user: Option<String>,
            /// vLLM's extension: keep generating past end-of-generation tokens.
            pub ignore_eos: Option<bool>,
        }

        impl $name {
            /// The fields both endpoints share.
            pub fn common(&self) -> CommonParams {
                CommonParams {
                    model: self.model.clone(),
                    max_tokens: self.max_tokens,
                    temperature: self.temperature,
                    top_p: self.top_p,
                    top_k: self.top_k,
                    min_p: self.min_p,
                    presence_penalty: self.presence_penalty,
                    frequency_penalty: self.frequency_penalty,
                    repetition_penalty: self.repetition_penalty,
                    seed: self.seed,
                    stop: self.stop.clone(),
                    n: self.n,
                    stream: self.stream,
                    stream_options: self.stream_options.clone(),
                    user: self.user.clone(),
                    ignore_eos: self.ignore_eos,
                }
            }
        }
    };
}

/// The sampling and output fields `/v1/chat/completions` and `/v1/completions` share (see the
/// request structs for each field's meaning).
#[allow(missing_docs)]
#[derive(Debug, Clone, Default)]
pub struct CommonParams {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    pub ignore_eos: Option<bool>,
}

request_struct!(
    /// Body of `POST /v1/chat/completions`.
    ChatCompletionRequest {
        /// The conversation so far.
        pub messages: Vec<Message>,
        /// The newer name of `max_tokens`; wins when both are given.
        pub max_completion_tokens: Option<i64>,
        /// Whether to return the chosen tokens' logprobs.
        pub logprobs: Option<bool>,
        /// Alternatives per token to return (0..=20); needs `logprobs: true`.
        pub top_logprobs: Option<i64>,
        /// Functions the model may call.
        pub tools: Option<Vec<Tool>>,
        /// `none`, `auto`, `required`, or `{"type": "function", "function": {"name": …}}`.
        pub tool_choice: Option<ToolChoice>,
        /// Whether the model may call several tools in one answer (default true).
        pub parallel_tool_calls: Option<bool>,
        /// `{"type": "text" | "json_object" | "json_schema", …}`.
        pub response_format: Option<ResponseFormat>,
    }
);

request_struct!(
    /// Body of `POST /v1/completions`.
    CompletionRequest {
        /// The prompt(s).
        pub prompt: Prompt,
        /// Prepend the prompt to each choice's text.
        pub echo: Option<bool>,
        /// Text after the insertion point; not supported (refused in validation).
        pub suffix: Option<String>,
        /// Alternatives per token to return (0..=20); `null` = no logprobs.
        pub logprobs: Option<i64>,
    }
);

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` and no choices before `[DONE]`.
    pub include_usage: Option<bool>,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// The author: `system`, `user`, `assistant`, `tool` (or `developer`, read as `system`).
    pub role: String,
    /// `null` is allowed (OpenAI allows it for assistant messages with tool calls).
    #[serde(default)]
    pub content: Option<Content>,
    /// The calls an assistant message made.
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
    /// The author's name (for `tool` messages: the function's).
    pub name: Option<String>,
}

/// A tool the model may call: `{"type": "function", "function": {...}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Tool {
    /// Only `function` is served.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionDef,
}

/// A function definition.
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionDef {
    /// The name the model calls it by.
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// Its arguments as a JSON schema (an object schema); absent = no arguments.
    pub parameters: Option<serde_json::Value>,
    /// Accepted; arguments of constrained calls always follow `parameters`.
    pub strict: Option<bool>,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// `none`, `auto` or `required` (checked in validation).
    Mode(String),
    /// The function that must be called.
    Function(String),
}

/// `{"type": "function", "function": {"name": …}}` of `tool_choice`.
#[derive(Deserialize)]
struct NamedToolChoice {
    function: NamedFunction,
}

#[derive(Deserialize)]
struct NamedFunction {
    name: String,
}

/// A call made by an earlier assistant message.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolCallIn {
    /// The call's id, which a `tool` message's `tool_call_id` refers to.
    pub id: Option<String>,
    /// The function and its arguments.
    pub function: FunctionCallIn,
}

/// The function of an earlier call.
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionCallIn {
    /// The function's name.
    pub name: String,
    /// The arguments: a JSON string, as OpenAI sends them (an object is accepted too).
    #[serde(default)]
    pub arguments: serde_json::Value,
}

/// `response_format`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text (the default).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON that validates against a schema.
    JsonSchema {
        /// The schema and its name.
        json_schema: JsonSchemaFormat,
    },
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JsonSchemaFormat {
    /// The schema's name.
    pub name: Option<String>,
    /// The JSON schema; absent = any JSON object.
    pub schema: Option<serde_json::Value>,
    /// Accepted; output always follows the schema.
    pub strict: Option<bool>,
}

/// A message's content: a string, or an array of typed parts.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts, concatenated.
    Parts(Vec<ContentPart>),
}

/// One part of an array `content`. Only `{"type": "text", "text": …}` is served; other types
/// are refused by validation, naming the part.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ContentPart {
    /// The part type; only `text` is served.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Stop(pub Vec<String>);

/// `prompt` of `/v1/completions`, in each of the four shapes OpenAI accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// One text.
    Text(String),
    /// One prompt as token ids.
    Tokens(Vec<i64>),
    /// Several texts, each its own prompt.
    Texts(Vec<String>),
    /// Several prompts as token ids.
    TokenLists(Vec<Vec<i64>>),
}

/// Defines a visitor-backed `Deserialize` for a type that accepts several JSON shapes.
macro_rules! shape_visitor {
    ($ty:ty, $expecting:literal, { $($body:tt)* }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    $($body)*
                }
                d.deserialize_any(V)
            }
        }
    };
}

shape_visitor!(Stop, "a string or an array of strings", {
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Stop, E> {
        Ok(Stop(vec![s.to_owned()]))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Stop, A::Error> {
        let mut v = Vec::new();
        while let Some(s) = seq.next_element::<String>()? {
            v.push(s);
        }
        Ok(Stop(v))
    }
});

shape_visitor!(
    ToolChoice,
    "\"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
    {
        fn visit_str<E: de::Error>(self, s: &str) -> Result<ToolChoice, E> {
            Ok(ToolChoice::Mode(s.to_owned()))
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<ToolChoice, A::Error> {
            let named = NamedToolChoice::deserialize(de::value::MapAccessDeserializer::new(map))?;
            Ok(ToolChoice::Function(named.function.name))
        }
    }
);

shape_visitor!(Content, "a string or an array of content parts", {
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Content, E> {
        Ok(Content::Text(s.to_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
        let mut v = Vec::new();
        while let Some(p) = seq.next_element::<ContentPart>()? {
            v.push(p);
        }
        Ok(Content::Parts(v))
    }
});

/// One element of an array `prompt`: a text, a token id, or a list of token ids.
enum PromptItem {
    Text(String),
    Token(i64),
    Tokens(Vec<i64>),
}

shape_visitor!(
    PromptItem,
    "a string, a token id or an array of token ids",
    {
        fn visit_str<E: de::Error>(self, s: &str) -> Result<PromptItem, E> {
            Ok(PromptItem::Text(s.to_owned()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<PromptItem, E> {
            Ok(PromptItem::Token(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<PromptItem, E> {
            Ok(PromptItem::Token(i64::try_from(v).unwrap_or(i64::MAX)))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PromptItem, A::Error> {
            let mut v = Vec::new();
            while let Some(t) = seq.next_element::<i64>()? {
                v.push(t);
            }
            Ok(PromptItem::Tokens(v))
        }
    }
);

shape_visitor!(
    Prompt,
    "a string, an array of token ids, or an array of strings or of token-id arrays",
    {
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Prompt, E> {
            Ok(Prompt::Text(s.to_owned()))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Prompt, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<PromptItem>()? {
                items.push(item);
            }
            let mixed = || {
                de::Error::custom(
                    "prompt arrays must hold only token ids, only strings, or only token-id arrays",
                )
            };
            match items.first() {
                None => Ok(Prompt::Texts(Vec::new())),
                Some(PromptItem::Token(_)) => items
                    .into_iter()
                    .map(|i| match i {
                        PromptItem::Token(t) => Ok(t),
                        _ => Err(mixed()),
                    })
                    .collect::<Result<_, _>>()
                    .map(Prompt::Tokens),
                Some(PromptItem::Text(_)) => items
                    .into_iter()
                    .map(|i| match i {
                        PromptItem::Text(t) => Ok(t),
                        _ => Err(mixed()),
                    })
                    .collect::<Result<_, _>>()
                    .map(Prompt::Texts),
                Some(PromptItem::Tokens(_)) => items
                    .into_iter()
                    .map(|i| match i {
                        PromptItem::Tokens(t) => Ok(t),
                        _ => Err(mixed()),
                    })
                    .collect::<Result<_, _>>()
                    .map(Prompt::TokenLists),
            }
        }
    }
);

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// Token counts of a response, with baicai's energy and cost of computing it (extra fields,
/// which OpenAI clients keep: the official Python client's models allow unknown fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Prompt tokens, each prompt counted once.
    pub prompt_tokens: usize,
    /// Generated tokens of all choices.
    pub completion_tokens: usize,
    /// The sum of both.
    pub total_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub prompt_tokens_details: PromptTokensDetails,
    /// Joules of the engine steps that computed the request, each step split over its sequences
    /// by the tokens each computed.
    pub energy_joules: f64,
    /// `rapl` (measured) or `estimate` (CPU time × the power model).
    pub energy_source: &'static str,
    /// The energy at the tariff in force when it was spent, plus the machine's hardware time.
    pub cost: f64,
    /// ISO 4217 code of `cost`.
    #[serde(serialize_with = "currency_code")]
    pub currency: Currency,
}

fn currency_code<S: serde::Serializer>(c: &Currency, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.code())
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

/// `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the context reached.
    Length,
    /// The answer is tool calls.
    ToolCalls,
}

/// Response of `/v1/chat/completions` without streaming.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    /// `chatcmpl-…` / `cmpl-…`, shared by every chunk of a response.
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// One per choice, by `index`.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// One choice of a chat completion.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    /// The choice: `prompt_index * n + i`.
    pub index: usize,
    /// The generated message.
    pub message: AssistantMessage,
    /// Logprobs, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop` or `length`; `null` in chunks before the last.
    pub finish_reason: FinishReason,
}

/// The generated message.
#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The text; `null` when the answer is tool calls only.
    pub content: Option<String>,
    /// A reasoning model's thinking (the text between `<think>` and `</think>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The calls the model made.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

/// A call the model made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    /// `call_…`, unique per call.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The function and its arguments.
    pub function: FunctionCall,
}

/// The function of a call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// The arguments as a JSON text.
    pub arguments: String,
}

/// A piece of a call in a stream: the first carries `id`, `type` and the name, the next ones
/// pieces of the arguments.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallDelta {
    /// The call's position among the answer's calls.
    pub index: usize,
    /// The call's id (first piece only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function` (first piece only).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// The name (first piece) or a piece of the arguments.
    pub function: FunctionCallDelta,
}

/// A piece of a call's function.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FunctionCallDelta {
    /// The function's name (first piece only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// More of the arguments' JSON text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// One chunk of a streamed chat completion.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunk {
    /// `chatcmpl-…` / `cmpl-…`, shared by every chunk of a response.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// One per choice, by `index`.
    pub choices: Vec<ChatChunkChoice>,
    /// Token counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One choice's part of a chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunkChoice {
    /// The choice: `prompt_index * n + i`.
    pub index: usize,
    /// New text of this choice.
    pub delta: ChatDelta,
    /// Logprobs, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop` or `length`; `null` in chunks before the last.
    pub finish_reason: Option<FinishReason>,
}

/// New text of a choice; the first chunk of each choice carries the role.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatDelta {
    /// The author: `system`, `user`, `assistant` (or `developer`, read as `system`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// The text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// More of a reasoning model's thinking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Pieces of tool calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// Chat logprobs: one entry per generated token.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatLogprobs {
    /// The text.
    pub content: Vec<ChatTokenLogprob>,
}

/// A generated token with its logprob and the most likely alternatives.
#[derive(Debug, Clone, Serialize)]
pub struct ChatTokenLogprob {
    /// The token as text (lossy where it is part of a UTF-8 character).
    pub token: String,
    /// Natural log of its probability.
    pub logprob: f32,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// The most likely alternatives, most likely first.
    pub top_logprobs: Vec<TopLogprob>,
}

/// An alternative token.
#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    /// The token as text (lossy where it is part of a UTF-8 character).
    pub token: String,
    /// Natural log of its probability.
    pub logprob: f32,
    /// The token's bytes.
    pub bytes: Vec<u8>,
}

/// Response of `/v1/completions`, and each chunk of its stream (same object, as OpenAI has it).
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// `chatcmpl-…` / `cmpl-…`, shared by every chunk of a response.
    pub id: String,
    /// Always `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// One per choice, by `index`.
    pub choices: Vec<CompletionChoice>,
    /// Token counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One choice of a text completion.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    /// The choice: `prompt_index * n + i`.
    pub index: usize,
    /// The choice's text (new text, in a chunk).
    pub text: String,
    /// Logprobs, when asked for.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length`; `null` in chunks before the last.
    pub finish_reason: Option<FinishReason>,
}

/// The legacy logprobs format of `/v1/completions`: parallel arrays.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompletionLogprobs {
    /// The generated tokens as text.
    pub tokens: Vec<String>,
    /// Each token's logprob.
    pub token_logprobs: Vec<f32>,
    /// Per token, its alternatives as `{token: logprob}`.
    pub top_logprobs: Vec<TopLogprobMap>,
    /// Per token, its byte offset in the choice's text (including an echoed prompt).
    pub text_offset: Vec<usize>,
}

/// A token's alternatives, most likely first, serialized as the JSON object
/// `{token: logprob}` (in that order; a later duplicate token text replaces nothing).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopLogprobMap(pub Vec<(String, f32)>);

impl Serialize for TopLogprobMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut seen = std::collections::HashSet::new();
        let mut m = s.serialize_map(None)?;
        for (token, logprob) in &self.0 {
            if seen.insert(token.as_str()) {
                m.serialize_entry(token, logprob)?;
            }
        }
        m.end()
    }
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// The served models.
    pub data: Vec<ModelCard>,
}

/// One served model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    /// The model name clients use.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// Always `baicai`.
    pub owned_by: &'static str,
}
