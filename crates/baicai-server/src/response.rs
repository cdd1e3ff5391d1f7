//! Turning engine events into OpenAI's response objects.
//!
//! [`Choices`] holds what every choice of a request has produced so far. Each event is applied
//! once ([`Choices::apply`]) and yields an [`Update`]; the non-streaming handler keeps applying
//! until every choice is done and then builds the whole response, the streaming one turns each
//! update into a chunk. Both shapes come from the same state, so a streamed answer and a plain
//! one carry the same text, logprobs and usage.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use baicai_engine::engine::{Event, TokenOut};
use baicai_engine::session::FinishReason as EngineFinish;
use baicai_tokenizer::Tokenizer;

use crate::metrics::Metrics;
use crate::output::ChatOutput;
use crate::protocol::{
    AssistantMessage, ChatChoice, ChatChunk, ChatChunkChoice, ChatCompletion, ChatDelta,
    ChatLogprobs, ChatTokenLogprob, Completion, CompletionChoice, CompletionLogprobs, FinishReason,
    TopLogprob, TopLogprobMap, Usage,
};
use crate::validate::{Endpoint, ValidRequest};

/// Identity of one response: shared by all its chunks.
#[derive(Debug, Clone)]
pub struct Meta {
    /// `chatcmpl-…` or `cmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// When the request arrived (latencies are measured from here).
    pub arrived: Instant,
}

impl Meta {
    /// A fresh id and timestamp for a response of `endpoint`.
    pub fn new(endpoint: Endpoint, model: &str, arrived: Instant) -> Meta {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        Meta {
            id: format!("{prefix}-{}", random_hex()),
            created: now.as_secs(),
            model: model.to_owned(),
            arrived,
        }
    }
}

/// 24 hex digits, unique enough for response ids (std's randomly keyed hasher, no RNG crate).
fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let a = h.finish();
    h.write_u64(a);
    format!("{a:016x}{:08x}", h.finish() as u32)
}

/// What applying one event changed.
#[derive(Debug)]
pub enum Update {
    /// Choice `index` produced text (possibly empty) and tokens.
    Delta {
        /// The choice.
        index: usize,
        /// Text that became final.
        text: String,
        /// Logprobs of the new tokens, when asked for, in the endpoint's format.
        logprobs: Option<DeltaLogprobs>,
        /// For chat output that is read (tool calls, reasoning): the deltas `text` made
        /// final, in place of `text`.
        chat: Option<Vec<ChatDelta>>,
    },
    /// Choice `index` ended.
    Finished {
        /// The choice.
        index: usize,
        /// Why.
        finish: FinishReason,
        /// For chat output that is read: the deltas held back until the end.
        chat: Vec<ChatDelta>,
    },
    /// The engine failed on this request.
    Error(String),
}

/// Logprobs of some tokens, in the format of the request's endpoint.
#[derive(Debug, Clone)]
pub enum DeltaLogprobs {
    /// `/v1/chat/completions`.
    Chat(ChatLogprobs),
    /// `/v1/completions`.
    Completion(CompletionLogprobs),
}

/// One choice's progress.
#[derive(Debug, Default)]
struct ChoiceState {
    text: String,
    logprobs: Option<DeltaLogprobs>,
    /// Bytes of the choice's text so far, token by token (for `text_offset`).
    offset: usize,
    finish: Option<FinishReason>,
    usage: baicai_engine::engine::Usage,
    last_token: Option<Instant>,
    /// The reading of chat output with tools or reasoning.
    output: Option<ChatOutput>,
}

/// Every choice of a request, as events arrive.
pub struct Choices {
    req: Arc<ValidRequest>,
    tokenizer: Arc<Tokenizer>,
    metrics: Arc<Metrics>,
    meta: Meta,
    states: Vec<ChoiceState>,
}

impl Choices {
    /// Empty choices for `req`; echoed prompts already count as text.
    pub fn new(
        req: Arc<ValidRequest>,
        tokenizer: Arc<Tokenizer>,
        metrics: Arc<Metrics>,
        meta: Meta,
    ) -> Choices {
        let states = (0..req.choices())
            .map(|i| {
                let echo = req.prompts[i / req.n].echo.clone().unwrap_or_default();
                let logprobs = req.logprobs.map(|_| match req.endpoint {
                    Endpoint::Chat => DeltaLogprobs::Chat(ChatLogprobs::default()),
                    Endpoint::Completion => {
                        DeltaLogprobs::Completion(CompletionLogprobs::default())
                    }
                });
                let read = req.endpoint == Endpoint::Chat && !req.output.is_plain();
                ChoiceState {
                    offset: echo.len(),
                    text: echo,
                    logprobs,
                    output: read.then(|| ChatOutput::new(req.output)),
                    ..ChoiceState::default()
                }
            })
            .collect();
        Choices {
            req,
            tokenizer,
            metrics,
            meta,
            states,
        }
    }

    /// The response's identity.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The echoed prompt of choice `index` (empty without `echo`).
    pub fn echo(&self, index: usize) -> &str {
        self.req.prompts[index / self.req.n]
            .echo
            .as_deref()
            .unwrap_or("")
    }

    /// Choices in all.
    pub fn count(&self) -> usize {
        self.states.len()
    }

    /// Whether every choice has ended.
    pub fn all_done(&self) -> bool {
        self.states.iter().all(|s| s.finish.is_some())
    }

    /// Applies one event of choice `index`.
    pub fn apply(&mut self, index: usize, event: Event) -> Update {
        let now = Instant::now();
        let Some(st) = self.states.get_mut(index) else {
            return Update::Error(format!("event for unknown choice {index}"));
        };
        match event {
            Event::Delta(d) => {
                if !d.tokens.is_empty() {
                    match st.last_token {
                        None => self.metrics.ttft(now - self.meta.arrived),
                        Some(t) => self.metrics.inter_token(now - t),
                    }
                    st.last_token = Some(now);
                }
                let logprobs = self.req.logprobs.map(|_| {
                    logprobs_of(
                        self.req.endpoint,
                        &self.tokenizer,
                        &d.tokens,
                        &mut st.offset,
                    )
                });
                if let (Some(all), Some(new)) = (&mut st.logprobs, &logprobs) {
                    extend(all, new);
                }
                st.text.push_str(&d.text);
                let chat = st.output.as_mut().map(|o| o.push(&d.text));
                Update::Delta {
                    index,
                    text: d.text,
                    logprobs,
                    chat,
                }
            }
            Event::Done(done) => {
                let mut finish = match done.finish {
                    EngineFinish::Stop => FinishReason::Stop,
                    EngineFinish::Length | EngineFinish::ContextFull => FinishReason::Length,
                };
                let chat = st.output.as_mut().map(|o| o.finish()).unwrap_or_default();
                if st.output.as_ref().is_some_and(|o| o.has_calls()) {
                    finish = FinishReason::ToolCalls;
                }
                st.finish = Some(finish);
                st.usage = done.usage;
                if self.all_done() {
                    self.metrics.e2e(now - self.meta.arrived);
                }
                Update::Finished {
                    index,
                    finish,
                    chat,
                }
            }
            Event::Error(msg) => Update::Error(msg),
        }
    }

    /// Token counts of the request (each prompt once, every choice's completion), and the
    /// energy and cost of all its sequences.
    pub fn usage(&self) -> Usage {
        let n = self.req.n;
        let mut u = Usage::default();
        for (i, s) in self.states.iter().enumerate() {
            if i % n == 0 {
                u.prompt_tokens += s.usage.prompt_tokens;
                u.prompt_tokens_details.cached_tokens += s.usage.cached_tokens;
            }
            u.completion_tokens += s.usage.completion_tokens;
            u.energy_joules += s.usage.energy_joules;
            u.cost += s.usage.cost;
            u.energy_source = s.usage.energy_source.as_str();
            u.currency = s.usage.currency;
        }
        u.total_tokens = u.prompt_tokens + u.completion_tokens;
        u
    }

    /// The whole chat response (call when [`Choices::all_done`]).
    pub fn chat_response(self) -> ChatCompletion {
        let usage = self.usage();
        ChatCompletion {
            id: self.meta.id,
            object: "chat.completion",
            created: self.meta.created,
            model: self.meta.model,
            choices: self
                .states
                .into_iter()
                .enumerate()
                .map(|(index, s)| ChatChoice {
                    index,
                    message: match &s.output {
                        Some(o) => {
                            let (content, reasoning_content, tool_calls) = o.message();
                            AssistantMessage {
                                role: "assistant",
                                content,
                                reasoning_content,
                                tool_calls,
                            }
                        }
                        None => AssistantMessage {
                            role: "assistant",
                            content: Some(s.text),
                            reasoning_content: None,
                            tool_calls: Vec::new(),
                        },
                    },
                    logprobs: match s.logprobs {
                        Some(DeltaLogprobs::Chat(l)) => Some(l),
                        _ => None,
                    },
                    finish_reason: s.finish.unwrap_or(FinishReason::Length),
                })
                .collect(),
            usage,
        }
    }

    /// The whole text completion response (call when [`Choices::all_done`]).
    pub fn completion_response(self) -> Completion {
        let usage = self.usage();
        Completion {
            id: self.meta.id,
            object: "text_completion",
            created: self.meta.created,
            model: self.meta.model,
            choices: self
                .states
                .into_iter()
                .enumerate()
                .map(|(index, s)| CompletionChoice {
                    index,
                    text: s.text,
                    logprobs: match s.logprobs {
                        Some(DeltaLogprobs::Completion(l)) => Some(l),
                        _ => None,
                    },
                    finish_reason: Some(s.finish.unwrap_or(FinishReason::Length)),
                })
                .collect(),
            usage: Some(usage),
        }
    }

    /// A chat chunk with one choice's `delta`.
    pub fn chat_chunk(
        &self,
        index: usize,
        delta: ChatDelta,
        logprobs: Option<DeltaLogprobs>,
        finish: Option<FinishReason>,
    ) -> ChatChunk {
        ChatChunk {
            id: self.meta.id.clone(),
            object: "chat.completion.chunk",
            created: self.meta.created,
            model: self.meta.model.clone(),
            choices: vec![ChatChunkChoice {
                index,
                delta,
                logprobs: match logprobs {
                    Some(DeltaLogprobs::Chat(l)) => Some(l),
                    _ => None,
                },
                finish_reason: finish,
            }],
            usage: None,
        }
    }

    /// A text completion chunk with one choice's new `text`.
    pub fn completion_chunk(
        &self,
        index: usize,
        text: String,
        logprobs: Option<DeltaLogprobs>,
        finish: Option<FinishReason>,
    ) -> Completion {
        Completion {
            id: self.meta.id.clone(),
            object: "text_completion",
            created: self.meta.created,
            model: self.meta.model.clone(),
            choices: vec![CompletionChoice {
                index,
                text,
                logprobs: match logprobs {
                    Some(DeltaLogprobs::Completion(l)) => Some(l),
                    _ => None,
                },
                finish_reason: finish,
            }],
            usage: None,
        }
    }
}

/// The logprobs of `tokens` in `endpoint`'s format; `offset` is the choice's text length in
/// bytes before them and is advanced past them.
fn logprobs_of(
    endpoint: Endpoint,
    tok: &Tokenizer,
    tokens: &[TokenOut],
    offset: &mut usize,
) -> DeltaLogprobs {
    let piece = |id: u32| {
        let bytes = tok.token_bytes(id);
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    };
    match endpoint {
        Endpoint::Chat => DeltaLogprobs::Chat(ChatLogprobs {
            content: tokens
                .iter()
                .map(|t| {
                    let (token, bytes) = piece(t.id);
                    ChatTokenLogprob {
                        token,
                        logprob: t.logprob.unwrap_or(0.0),
                        bytes,
                        top_logprobs: t
                            .top
                            .iter()
                            .map(|&(id, logprob)| {
                                let (token, bytes) = piece(id);
                                TopLogprob {
                                    token,
                                    logprob,
                                    bytes,
                                }
                            })
                            .collect(),
                    }
                })
                .collect(),
        }),
        Endpoint::Completion => {
            let mut l = CompletionLogprobs::default();
            for t in tokens {
                let (token, bytes) = piece(t.id);
                l.text_offset.push(*offset);
                *offset += bytes.len();
                l.tokens.push(token);
                l.token_logprobs.push(t.logprob.unwrap_or(0.0));
                l.top_logprobs.push(TopLogprobMap(
                    t.top.iter().map(|&(id, lp)| (piece(id).0, lp)).collect(),
                ));
            }
            DeltaLogprobs::Completion(l)
        }
    }
}

/// Appends `new` to `all` (same endpoint format).
fn extend(all: &mut DeltaLogprobs, new: &DeltaLogprobs) {
    match (all, new) {
        (DeltaLogprobs::Chat(a), DeltaLogprobs::Chat(n)) => {
            a.content.extend(n.content.iter().cloned())
        }
        (DeltaLogprobs::Completion(a), DeltaLogprobs::Completion(n)) => {
            a.tokens.extend(n.tokens.iter().cloned());
            a.token_logprobs.extend(&n.token_logprobs);
            a.top_logprobs.extend(n.top_logprobs.iter().cloned());
            a.text_offset.extend(&n.text_offset);
        }
        _ => {}
    }
}
