//! Server-sent events: a submitted request's events as OpenAI stream chunks.
//!
//! `data: {chunk}\n\n` per chunk: for chat, each choice first gets a chunk with
//! `delta.role`; then text deltas; then a chunk with `finish_reason`; then, when
//! `stream_options.include_usage` is set, a chunk with `choices: []` and `usage`; then
//! `data: [DONE]`. An engine error after the stream started becomes `data: {"error": …}` followed
//! by `[DONE]` (the status line has already gone out as 200).
//!
//! hyper polls the body only as the socket takes data, so a client that stops reading stops the
//! polling, events pile up in the request's channel, and the sinks report the request closed
//! (see [`crate::queue`]). A client that disconnects drops the body, and with it the receiver.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use futures_util::stream;
use serde::Serialize;

use crate::error::ApiError;
use crate::protocol::{ChatChunk, ChatDelta, Completion};
use crate::queue::Submitted;
use crate::response::{Choices, DeltaLogprobs, Update};
use crate::validate::Endpoint;

enum Phase {
    Start,
    Events,
    Finish,
    End,
}

struct Sse {
    choices: Choices,
    /// Resolves when the server is closing: the stream ends with an error event.
    closing: Pin<Box<dyn Future<Output = ()> + Send>>,
    sub: Submitted,
    endpoint: Endpoint,
    include_usage: bool,
    phase: Phase,
}

/// `data: {json}\n\n`.
fn event(out: &mut String, value: &impl Serialize) {
    out.push_str("data: ");
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
    out.push_str("\n\n");
}

const DONE: &str = "data: [DONE]\n\n";

impl Sse {
    /// The next piece of the body; `None` at the end.
    async fn next(&mut self) -> Option<String> {
        let mut out = String::new();
        loop {
            match self.phase {
                Phase::Start => {
                    self.phase = Phase::Events;
                    self.start(&mut out);
                    if !out.is_empty() {
                        return Some(out);
                    }
                }
                Phase::Events => {
                    let next = tokio::select! {
                        ev = self.sub.rx.recv() => ev,
                        () = &mut self.closing => {
                            self.phase = Phase::End;
                            let e = ApiError::unavailable(
                                "The server is shutting down; this answer was cut off",
                            );
                            event(&mut out, &e.body());
                            out.push_str(DONE);
                            return Some(out);
                        }
                    };
                    let Some((index, ev)) = next else {
                        self.phase = Phase::End;
                        let e = ApiError::internal("the engine dropped the request");
                        event(&mut out, &e.body());
                        out.push_str(DONE);
                        return Some(out);
                    };
                    self.sub.clock.read();
                    match self.choices.apply(index, ev) {
                        Update::Delta {
                            text,
                            logprobs,
                            chat: None,
                            ..
                        } if text.is_empty() && logprobs.is_none() => continue,
                        Update::Delta {
                            chat: Some(deltas),
                            logprobs: None,
                            ..
                        } if deltas.is_empty() => continue,
                        Update::Delta {
                            index,
                            text,
                            logprobs,
                            chat,
                        } => match self.endpoint {
                            Endpoint::Chat => {
                                let deltas = chat.unwrap_or_else(|| {
                                    vec![ChatDelta {
                                        content: Some(text),
                                        ..ChatDelta::default()
                                    }]
                                });
                                self.chat_deltas(&mut out, index, deltas, logprobs);
                            }
                            Endpoint::Completion => {
                                event(
                                    &mut out,
                                    &self.choices.completion_chunk(index, text, logprobs, None),
                                );
                            }
                        },
                        Update::Finished {
                            index,
                            finish,
                            chat,
                        } => {
                            match self.endpoint {
                                Endpoint::Chat => {
                                    if !chat.is_empty() {
                                        self.chat_deltas(&mut out, index, chat, None);
                                    }
                                    event(
                                        &mut out,
                                        &self.choices.chat_chunk(
                                            index,
                                            ChatDelta::default(),
                                            None,
                                            Some(finish),
                                        ),
                                    )
                                }
                                Endpoint::Completion => event(
                                    &mut out,
                                    &self.choices.completion_chunk(
                                        index,
                                        String::new(),
                                        None,
                                        Some(finish),
                                    ),
                                ),
                            }
                            if self.choices.all_done() {
                                self.phase = Phase::Finish;
                            }
                        }
                        Update::Error(msg) => {
                            self.phase = Phase::End;
                            event(&mut out, &ApiError::internal(msg).body());
                            out.push_str(DONE);
                        }
                    }
                    return Some(out);
                }
                Phase::Finish => {
                    self.phase = Phase::End;
                    if self.include_usage {
                        self.usage(&mut out);
                    }
                    out.push_str(DONE);
                    return Some(out);
                }
                Phase::End => return None,
            }
        }
    }

    /// One chunk per delta of choice `index`; `logprobs` go with the first (alone when there is
    /// no delta).
    fn chat_deltas(
        &self,
        out: &mut String,
        index: usize,
        deltas: Vec<ChatDelta>,
        mut logprobs: Option<DeltaLogprobs>,
    ) {
        if deltas.is_empty() {
            let chunk = self
                .choices
                .chat_chunk(index, ChatDelta::default(), logprobs, None);
            return event(out, &chunk);
        }
        for delta in deltas {
            event(
                out,
                &self.choices.chat_chunk(index, delta, logprobs.take(), None),
            );
        }
    }

    /// The chunks that open each choice: the role (chat) or the echoed prompt (completions).
    fn start(&self, out: &mut String) {
        for index in 0..self.choices.count() {
            match self.endpoint {
                Endpoint::Chat => {
                    let delta = ChatDelta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                        ..ChatDelta::default()
                    };
                    event(out, &self.choices.chat_chunk(index, delta, None, None));
                }
                Endpoint::Completion => {
                    let echo = self.choices.echo(index);
                    if !echo.is_empty() {
                        let chunk =
                            self.choices
                                .completion_chunk(index, echo.to_owned(), None, None);
                        event(out, &chunk);
                    }
                }
            }
        }
    }

    /// The usage chunk: no choices, the request's token counts.
    fn usage(&self, out: &mut String) {
        let usage = Some(self.choices.usage());
        let meta = self.choices.meta();
        match self.endpoint {
            Endpoint::Chat => event(
                out,
                &ChatChunk {
                    id: meta.id.clone(),
                    object: "chat.completion.chunk",
                    created: meta.created,
                    model: meta.model.clone(),
                    choices: Vec::new(),
                    usage,
                },
            ),
            Endpoint::Completion => event(
                out,
                &Completion {
                    id: meta.id.clone(),
                    object: "text_completion",
                    created: meta.created,
                    model: meta.model.clone(),
                    choices: Vec::new(),
                    usage,
                },
            ),
        }
    }
}

/// The streaming response for a submitted request; it ends early, with an error event, when
/// `closing` resolves.
pub fn response(
    closing: impl Future<Output = ()> + Send + 'static,
    choices: Choices,
    sub: Submitted,
    endpoint: Endpoint,
    include_usage: bool,
) -> Response {
    let sse = Sse {
        closing: Box::pin(closing),
        choices,
        sub,
        endpoint,
        include_usage,
        phase: Phase::Start,
    };
    let body = stream::unfold(sse, |mut sse| async move {
        let piece = sse.next().await?;
        Some((Ok::<_, Infallible>(Bytes::from(piece)), sse))
    });
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}
