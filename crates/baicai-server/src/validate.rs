//! Validation: a parsed OpenAI request becomes a [`ValidRequest`] — prompts tokenized, every
//! value checked against its range and the model's context, OpenAI's defaults filled in — or an
//! [`ApiError`] that names the field and the limit.
//!
//! Defaults are OpenAI's, not llama.cpp's: a request that says nothing samples at temperature 1
//! with top-p 1 and no top-k or min-p, and generates until the context is full. Every
//! [`SamplerConfig`] field is set here explicitly, so the engine's own (llama.cpp) defaults never
//! leak into a served request.

use std::sync::{Arc, OnceLock};

use baicai_engine::engine::MAX_TOP_LOGPROBS;
use baicai_engine::sampler::SamplerConfig;
use baicai_tokenizer::{ChatTemplate, Tokenizer};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::output::OutputSpec;
use crate::protocol::{
    ChatCompletionRequest, CommonParams, CompletionRequest, Content, Message, Prompt,
    ResponseFormat, Tool, ToolChoice,
};
use crate::structured::{Compiled, Grammars};
use crate::tools::{self, ToolFormat};

/// Choices one request may ask for per prompt (`n`).
pub const MAX_N: usize = 8;
/// Choices one request may ask for in all (prompts × `n`).
pub const MAX_CHOICES: usize = 64;
/// Stop strings one request may give.
pub const MAX_STOP: usize = 16;

/// Which endpoint a request came in on; it decides the response's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

impl Endpoint {
    /// The label used in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat_completions",
            Endpoint::Completion => "completions",
        }
    }
}

/// One prompt of a request, ready for the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPrompt {
    /// Token ids: non-empty, each inside the vocabulary, shorter than the context.
    pub tokens: Vec<u32>,
    /// Tokens to generate at most; `tokens.len() + max_tokens <= n_ctx`.
    pub max_tokens: usize,
    /// The prompt's text, for `echo` (completions only).
    pub echo: Option<String>,
}

/// A request whose every field has been checked; what the handlers submit and shape.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    /// The endpoint, which decides the response's shape.
    pub endpoint: Endpoint,
    /// The prompts; choice `p * n + i` is the `i`-th sample of prompt `p`.
    pub prompts: Vec<ValidPrompt>,
    /// Samples per prompt.
    pub n: usize,
    /// Sampling settings of choice 0; [`ValidRequest::sampler_for`] gives the others.
    pub sampler: SamplerConfig,
    /// Strings that end generation (non-empty ones only).
    pub stop: Vec<String>,
    /// Whether end-of-generation tokens end generation.
    pub stop_at_eog: bool,
    /// `Some(k)`: return logprobs with `k` alternatives per token.
    pub logprobs: Option<usize>,
    /// Whether to answer with server-sent events.
    pub stream: bool,
    /// Whether a stream ends with a usage chunk.
    pub include_usage: bool,
    /// The client's `user` field, for the log.
    pub user: Option<String>,
    /// The grammar every choice's output must follow (`response_format`, forced tool calls).
    pub constraint: Option<Compiled>,
    /// How chat output is read back (tool calls, reasoning).
    pub output: OutputSpec,
}

impl ValidRequest {
    /// Choices in all (prompts × `n`).
    pub fn choices(&self) -> usize {
        self.prompts.len() * self.n
    }

    /// Sampling settings of choice `index`: a seeded request gives choice `i` the seed
    /// `seed + i`, so the choices differ yet the request as a whole is reproducible.
    pub fn sampler_for(&self, index: usize) -> SamplerConfig {
        let mut s = self.sampler.clone();
        s.seed = s
            .seed
            .map(|seed| seed.wrapping_add((index % self.n) as u64));
        s
    }
}

/// What validation needs to know about the served model.
pub struct Validator {
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    /// Context of one sequence, in tokens.
    n_ctx: usize,
    /// Vocabulary size (token ids must be below it).
    n_vocab: usize,
    /// The name clients address the model by.
    model_name: String,
    /// The template's tool-call syntax, if it has one.
    tool_format: Option<ToolFormat>,
    /// Whether the template is a reasoning model's (`<think>`).
    reasoning: bool,
    /// llguidance over the vocabulary, built on first use (or by [`Validator::warm_grammars`]).
    grammars: OnceLock<Result<Grammars, String>>,
}

impl Validator {
    /// A validator for the model served as `model_name`.
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        template: ChatTemplate,
        n_ctx: usize,
        n_vocab: usize,
        model_name: String,
    ) -> Validator {
        let source = template.source().unwrap_or_default();
        Validator {
            tokenizer,
            tool_format: ToolFormat::detect(&source),
            reasoning: source.contains("<think>"),
            template,
            n_ctx,
            n_vocab,
            model_name,
            grammars: OnceLock::new(),
        }
    }

    /// Builds the grammar engine's view of the vocabulary now rather than at the first
    /// constrained request.
    pub fn warm_grammars(&self) {
        let _ = self.grammars();
    }

    fn grammars(&self) -> Result<&Grammars, ApiError> {
        self.grammars
            .get_or_init(|| Grammars::new(self.tokenizer.clone()))
            .as_ref()
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "structured output is not available for this model: {e}"
                ))
            })
    }

    /// The tool-call syntax of the served model's template, if it has one.
    pub fn tool_format(&self) -> Option<ToolFormat> {
        self.tool_format
    }

    /// The served model's name.
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// The tokenizer, for detokenizing logprob tokens and echoed prompts.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// Validates a chat request: renders the conversation with the model's chat template.
    ///
    /// # Errors
    /// The first rule the request breaks, naming the field.
    pub fn chat(&self, req: &ChatCompletionRequest) -> Result<ValidRequest, ApiError> {
        let common = req.common();
        self.check_model(&common)?;
        if req.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "messages must not be empty: give at least one message",
            ));
        }
        let messages = req
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| chat_message(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let tools = self.tools(req)?;
        let tool_defs: Option<Vec<Value>> = tools
            .as_ref()
            .map(|t| t.tools.iter().map(tool_json).collect());
        let text = self
            .template
            .render_json(&messages, tool_defs.as_deref(), true)
            .map_err(|e| {
                ApiError::invalid("messages", format!("cannot apply the chat template: {e}"))
            })?;
        // Templates that write the BOS token themselves must not get a second one (as `chat`).
        let tok = &self.tokenizer;
        let bos_in_text = tok
            .bos_id()
            .and_then(|b| tok.token_text(b))
            .is_some_and(|b| !b.is_empty() && text.starts_with(b));
        let tokens = tok.encode(&text, !bos_in_text, true);
        let max_tokens = req.max_completion_tokens.or(common.max_tokens);
        let max_field = if req.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        let prompt = self.prompt(tokens, max_tokens, max_field, "messages", None)?;
        let logprobs = match (req.logprobs, req.top_logprobs) {
            (Some(true), top) => Some(range_usize(
                "top_logprobs",
                top.unwrap_or(0),
                MAX_TOP_LOGPROBS,
            )?),
            (_, Some(_)) => {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "top_logprobs needs logprobs to be true",
                ))
            }
            _ => None,
        };
        let mut valid = self.finish(Endpoint::Chat, vec![prompt], &common, logprobs)?;
        valid.output = OutputSpec {
            tools: tools.as_ref().map(|t| t.format),
            reasoning: self.reasoning.then(|| text.trim_end().ends_with("<think>")),
        };
        valid.constraint = match (&tools, &req.response_format) {
            (Some(t), _) if t.forced => Some(self.tool_grammar(t, req)?),
            (_, Some(f)) => self.json_grammar(f)?,
            _ => None,
        };
        Ok(valid)
    }

    /// The request's tools and how they may be called; `None` without tools or with
    /// `tool_choice: "none"`.
    fn tools<'r>(
        &self,
        req: &'r ChatCompletionRequest,
    ) -> Result<Option<RequestTools<'r>>, ApiError> {
        let tools = req.tools.as_deref().unwrap_or_default();
        for (i, t) in tools.iter().enumerate() {
            check_tool(i, t)?;
        }
        let (forced, named) = match &req.tool_choice {
            None => (false, None),
            Some(ToolChoice::Mode(m)) => match m.as_str() {
                "auto" => (false, None),
                "none" => return Ok(None),
                "required" => (true, None),
                other => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!(
                            "tool_choice '{other}' is not supported: use \"none\", \"auto\", \
                             \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
                        ),
                    ))
                }
            },
            Some(ToolChoice::Function(name)) => (true, Some(name.as_str())),
        };
        if tools.is_empty() {
            if forced {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "tool_choice asks for a tool call, but the request has no tools",
                ));
            }
            return Ok(None);
        }
        if let Some(name) = named {
            if !tools.iter().any(|t| t.function.name == name) {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!(
                        "tool_choice names the function '{name}', which is not among tools ({})",
                        tools
                            .iter()
                            .map(|t| t.function.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        let Some(format) = self.tool_format else {
            return Err(ApiError::invalid(
                "tools",
                format!(
                    "the model '{}' cannot call tools: its chat template has no tool-call \
                     syntax (supported: Qwen2.5/Qwen3/Hermes <tool_call>, Llama 3.1+ JSON, \
                     Mistral [TOOL_CALLS], DeepSeek-V3/R1)",
                    self.model_name
                ),
            ));
        };
        Ok(Some(RequestTools {
            tools,
            format,
            forced,
            named,
        }))
    }

    /// The grammar of a forced call (`tool_choice` `required` or a named function).
    fn tool_grammar(
        &self,
        t: &RequestTools,
        req: &ChatCompletionRequest,
    ) -> Result<Compiled, ApiError> {
        let callable: Vec<(String, Value)> = t
            .tools
            .iter()
            .filter(|tool| t.named.is_none_or(|n| n == tool.function.name))
            .map(|tool| {
                let params = tool
                    .function
                    .parameters
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                (tool.function.name.clone(), params)
            })
            .collect();
        let parallel = t.named.is_none() && req.parallel_tool_calls.unwrap_or(true);
        let single_token = |marker: &str| {
            let ids = self.tokenizer.encode(marker, false, true);
            (ids.len() == 1).then(|| ids[0])
        };
        let lark = t.format.grammar(&callable, parallel, single_token);
        self.compile(&lark).map_err(|e| {
            ApiError::invalid(
                "tools",
                format!("the tools' parameter schemas cannot be compiled into a grammar: {e}"),
            )
        })
    }

    /// The grammar of `response_format`; `None` for text.
    fn json_grammar(&self, f: &ResponseFormat) -> Result<Option<Compiled>, ApiError> {
        let (schema, param) = match f {
            ResponseFormat::Text => return Ok(None),
            ResponseFormat::JsonObject => (json!({"type": "object"}), "response_format"),
            ResponseFormat::JsonSchema { json_schema } => (
                json_schema
                    .schema
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object"})),
                "response_format.json_schema.schema",
            ),
        };
        if !schema.is_object() && !schema.is_boolean() {
            return Err(ApiError::invalid(
                param,
                format!("{param} must be a JSON schema (an object)"),
            ));
        }
        let lark = format!("start: %json {}\n", tools::with_options(&schema));
        self.compile(&lark)
            .map(Some)
            .map_err(|e| ApiError::invalid(param, format!("{param} cannot be compiled: {e}")))
    }

    /// Compiles a Lark grammar; for a reasoning model, a `<think>` section may come first and
    /// is not constrained.
    fn compile(&self, lark: &str) -> Result<Compiled, String> {
        let close = self.tokenizer.encode("</think>", false, true);
        let lark = match close.as_slice() {
            [close] if self.reasoning => format!(
                "start: think? body\nthink: <[^{close}]>* <[{close}]>\n{}",
                lark.replacen("start:", "body:", 1)
            ),
            _ => lark.to_owned(),
        };
        self.grammars()
            .map_err(|e| e.message)?
            .compile(llguidance::api::TopLevelGrammar::from_lark(lark))
    }

    /// Validates a text completion request: tokenizes each prompt.
    ///
    /// Text prompts get the BOS token where the model asks for one, and control tokens written
    /// in the text (`<|im_start|>`) are read as those tokens — as llama-server does, and as
    /// Hugging Face tokenizers (hence vLLM) do — so a prompt formatted for the chat template by
    /// the client means the same here.
    ///
    /// # Errors
    /// The first rule the request breaks, naming the field.
    pub fn completion(&self, req: &CompletionRequest) -> Result<ValidRequest, ApiError> {
        let common = req.common();
        self.check_model(&common)?;
        if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid(
                "suffix",
                "suffix is not supported: this server does not do fill-in-the-middle completion",
            ));
        }
        let echo = req.echo.unwrap_or(false);
        let tok = &self.tokenizer;
        let encode = |text: &str| tok.encode(text, true, true);
        let raw: Vec<(Vec<u32>, String, Option<String>)> = match &req.prompt {
            Prompt::Text(t) => vec![(encode(t), "prompt".into(), Some(t.clone()))],
            Prompt::Texts(ts) => ts
                .iter()
                .enumerate()
                .map(|(i, t)| (encode(t), format!("prompt[{i}]"), Some(t.clone())))
                .collect(),
            Prompt::Tokens(ids) => vec![(self.token_ids(ids, "prompt")?, "prompt".into(), None)],
            Prompt::TokenLists(lists) => lists
                .iter()
                .enumerate()
                .map(|(i, ids)| {
                    let field = format!("prompt[{i}]");
                    Ok((self.token_ids(ids, &field)?, field, None))
                })
                .collect::<Result<_, ApiError>>()?,
        };
        if raw.is_empty() {
            return Err(ApiError::invalid("prompt", "prompt must not be empty"));
        }
        let prompts = raw
            .into_iter()
            .map(|(tokens, field, text)| {
                let echo_text = echo.then(|| text.unwrap_or_else(|| tok.decode(&tokens, false)));
                self.prompt(tokens, common.max_tokens, "max_tokens", &field, echo_text)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let logprobs = req
            .logprobs
            .map(|k| range_usize("logprobs", k, MAX_TOP_LOGPROBS))
            .transpose()?;
        self.finish(Endpoint::Completion, prompts, &common, logprobs)
    }

    fn check_model(&self, common: &CommonParams) -> Result<(), ApiError> {
        match &common.model {
            Some(m) if *m != self.model_name => Err(ApiError::model_not_found(m)),
            _ => Ok(()),
        }
    }

    /// Token ids from the request, each checked against the vocabulary.
    fn token_ids(&self, ids: &[i64], field: &str) -> Result<Vec<u32>, ApiError> {
        ids.iter()
            .enumerate()
            .map(|(i, &t)| {
                u32::try_from(t)
                    .ok()
                    .filter(|&t| (t as usize) < self.n_vocab)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            format!("{field}[{i}]"),
                            format!(
                                "token id {t} in {field}[{i}] is outside the vocabulary (0..{})",
                                self.n_vocab
                            ),
                        )
                    })
            })
            .collect()
    }

    /// Checks one prompt's length and its `max_tokens` against the context.
    fn prompt(
        &self,
        tokens: Vec<u32>,
        max_tokens: Option<i64>,
        max_field: &str,
        prompt_field: &str,
        echo: Option<String>,
    ) -> Result<ValidPrompt, ApiError> {
        let n_ctx = self.n_ctx;
        if tokens.is_empty() {
            return Err(ApiError::invalid(
                prompt_field,
                format!("{prompt_field} must not be empty"),
            ));
        }
        if tokens.len() >= n_ctx {
            return Err(ApiError::invalid(
                prompt_field,
                format!(
                    "This model's maximum context length is {n_ctx} tokens, but {prompt_field} \
                     has {} tokens, which leaves no room to generate (--ctx-size)",
                    tokens.len()
                ),
            ));
        }
        let room = n_ctx - tokens.len();
        let max_tokens = match max_tokens {
            None => room,
            Some(m) if m < 1 => {
                return Err(ApiError::invalid(
                    max_field,
                    format!("{max_field} must be at least 1, got {m}"),
                ))
            }
            Some(m) if m as u64 > room as u64 => {
                return Err(ApiError::invalid(
                    max_field,
                    format!(
                        "This model's maximum context length is {n_ctx} tokens. However, you \
                         requested {} tokens ({} in {prompt_field}, {m} in {max_field}); \
                         lower {max_field} to at most {room}",
                        tokens.len() as u64 + m as u64,
                        tokens.len()
                    ),
                ))
            }
            Some(m) => m as usize,
        };
        Ok(ValidPrompt {
            tokens,
            max_tokens,
            echo,
        })
    }

    /// The checks and defaults both endpoints share.
    fn finish(
        &self,
        endpoint: Endpoint,
        prompts: Vec<ValidPrompt>,
        c: &CommonParams,
        logprobs: Option<usize>,
    ) -> Result<ValidRequest, ApiError> {
        let n = match c.n {
            None => 1,
            Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
            Some(n) => {
                return Err(ApiError::invalid(
                    "n",
                    format!("n must be between 1 and {MAX_N}, got {n}"),
                ))
            }
        };
        if prompts.len() * n > MAX_CHOICES {
            return Err(ApiError::invalid(
                "prompt",
                format!(
                    "{} prompts × n={n} asks for {} choices; at most {MAX_CHOICES} per request",
                    prompts.len(),
                    prompts.len() * n
                ),
            ));
        }
        let temperature = in_range("temperature", c.temperature, 1.0, 0.0..=2.0)?;
        let top_p = c.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("top_p must be in (0, 1], got {top_p}"),
            ));
        }
        let top_k = match c.top_k {
            None | Some(-1) => 0,
            Some(k) if k >= 0 => usize::try_from(k).unwrap_or(usize::MAX),
            Some(k) => {
                return Err(ApiError::invalid(
                    "top_k",
                    format!("top_k must be -1 (off), 0 (off) or positive, got {k}"),
                ))
            }
        };
        let min_p = in_range("min_p", c.min_p, 0.0, 0.0..=1.0)?;
        let presence = in_range("presence_penalty", c.presence_penalty, 0.0, -2.0..=2.0)?;
        let frequency = in_range("frequency_penalty", c.frequency_penalty, 0.0, -2.0..=2.0)?;
        let repetition = c.repetition_penalty.unwrap_or(1.0);
        if !(repetition > 0.0 && repetition.is_finite()) {
            return Err(ApiError::invalid(
                "repetition_penalty",
                format!("repetition_penalty must be greater than 0, got {repetition}"),
            ));
        }
        let penalties = presence != 0.0 || frequency != 0.0 || repetition != 1.0;
        let stop = match &c.stop {
            None => Vec::new(),
            Some(s) if s.0.len() > MAX_STOP => {
                return Err(ApiError::invalid(
                    "stop",
                    format!(
                        "stop may hold at most {MAX_STOP} strings, got {}",
                        s.0.len()
                    ),
                ))
            }
            Some(s) => s.0.iter().filter(|s| !s.is_empty()).cloned().collect(),
        };
        let sampler = SamplerConfig {
            temperature: temperature as f32,
            top_k,
            top_p: top_p as f32,
            min_p: min_p as f32,
            repeat_penalty: repetition as f32,
            // OpenAI's penalties count every token generated so far: the window is the context.
            repeat_last_n: if penalties { self.n_ctx } else { 0 },
            presence_penalty: presence as f32,
            frequency_penalty: frequency as f32,
            seed: c.seed.map(|s| s as u64),
        };
        let stream = c.stream.unwrap_or(false);
        Ok(ValidRequest {
            endpoint,
            prompts,
            n,
            sampler,
            stop,
            stop_at_eog: !c.ignore_eos.unwrap_or(false),
            logprobs,
            stream,
            include_usage: stream
                && c.stream_options
                    .as_ref()
                    .and_then(|o| o.include_usage)
                    .unwrap_or(false),
            user: c.user.clone(),
            constraint: None,
            output: OutputSpec::default(),
        })
    }
}

/// A request's tools, validated.
struct RequestTools<'r> {
    tools: &'r [Tool],
    format: ToolFormat,
    /// `tool_choice` `required` or named: the answer must be calls.
    forced: bool,
    /// The function `tool_choice` names.
    named: Option<&'r str>,
}

/// Checks `tools[i]`: a function with a usable name and an object schema.
fn check_tool(i: usize, t: &Tool) -> Result<(), ApiError> {
    if t.kind != "function" {
        return Err(ApiError::invalid(
            format!("tools[{i}].type"),
            format!(
                "tools[{i}].type '{}' is not supported: use \"function\"",
                t.kind
            ),
        ));
    }
    let name = &t.function.name;
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(ApiError::invalid(
            format!("tools[{i}].function.name"),
            format!(
                "tools[{i}].function.name '{name}' must be 1 to 64 letters, digits, '_', '-' or '.'"
            ),
        ));
    }
    if let Some(p) = &t.function.parameters {
        if !p.is_object() {
            return Err(ApiError::invalid(
                format!("tools[{i}].function.parameters"),
                format!("tools[{i}].function.parameters must be a JSON schema object, got {p}"),
            ));
        }
    }
    Ok(())
}

/// A tool definition as templates take it (`{"type": "function", "function": {…}}`).
fn tool_json(t: &Tool) -> Value {
    let mut f = json!({"name": t.function.name});
    if let Some(d) = &t.function.description {
        f["description"] = json!(d);
    }
    f["parameters"] = t
        .function
        .parameters
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    json!({"type": "function", "function": f})
}

/// The chat message `m` (at `messages[i]`) as the template takes it: `role`, `content`, and
/// the tool fields. Calls' arguments become objects, as HF templates expect (and vLLM does).
fn chat_message(i: usize, m: &Message) -> Result<Value, ApiError> {
    let role = match m.role.as_str() {
        r @ ("system" | "user" | "assistant" | "tool") => r,
        // OpenAI's newer name for the system role.
        "developer" => "system",
        other => {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!(
                    "messages[{i}].role '{other}' is not supported: use system, user, assistant \
                     or tool"
                ),
            ))
        }
    };
    let content = match &m.content {
        Some(Content::Text(t)) => t.clone(),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => text.push_str(t),
                    ("text", None) => {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content[{j}].text"),
                            format!("messages[{i}].content[{j}].text is missing"),
                        ))
                    }
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content[{j}].type"),
                            format!(
                                "messages[{i}].content[{j}].type '{kind}' is not supported: \
                                 this model takes text parts only"
                            ),
                        ))
                    }
                }
            }
            text
        }
        None if role == "assistant" => String::new(),
        None => {
            return Err(ApiError::invalid(
                format!("messages[{i}].content"),
                format!("messages[{i}].content is missing"),
            ))
        }
    };
    let mut v = json!({"role": role, "content": content});
    if let Some(calls) = m.tool_calls.as_ref().filter(|c| !c.is_empty()) {
        let calls: Vec<Value> = calls
            .iter()
            .map(|c| {
                let args = match &c.function.arguments {
                    Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
                    Value::Null => json!({}),
                    other => other.clone(),
                };
                let mut call = json!({"type": "function",
                    "function": {"name": c.function.name, "arguments": args}});
                if let Some(id) = &c.id {
                    call["id"] = json!(id);
                }
                call
            })
            .collect();
        v["tool_calls"] = Value::Array(calls);
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    if let Some(name) = &m.name {
        v["name"] = json!(name);
    }
    Ok(v)
}

/// `value` (default `default`) if it lies in `range`, else a 400 naming `field`.
fn in_range(
    field: &str,
    value: Option<f64>,
    default: f64,
    range: std::ops::RangeInclusive<f64>,
) -> Result<f64, ApiError> {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::invalid(
            field,
            format!(
                "{field} must be between {} and {}, got {v}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// `value` as a count in `0..=max`, else a 400 naming `field`.
fn range_usize(field: &str, value: i64, max: usize) -> Result<usize, ApiError> {
    usize::try_from(value)
        .ok()
        .filter(|&v| v <= max)
        .ok_or_else(|| {
            ApiError::invalid(
                field,
                format!("{field} must be between 0 and {max}, got {value}"),
            )
        })
}
