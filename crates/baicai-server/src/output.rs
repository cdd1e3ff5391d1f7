//! A chat choice's generated text as OpenAI's message parts: `reasoning_content` (a reasoning
//! model's `<think>` section), `content`, and `tool_calls` — for a stream, as deltas of each.
//!
//! [`ChatOutput`] keeps the whole text and, after each new piece, re-reads it (the reasoning
//! split, then [`tools::parse`]) and sends what grew since the last read. The final message is
//! the same reading of the same text, so a streamed answer and a plain one agree.

use crate::protocol::{ChatDelta, FunctionCall, FunctionCallDelta, ToolCall, ToolCallDelta};
use crate::tools::{self, ToolFormat};

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

/// How a request's chat output is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutputSpec {
    /// The tool-call syntax to parse, when the request has tools.
    pub tools: Option<ToolFormat>,
    /// `Some(open)` for a reasoning model; `open` when the prompt already opened `<think>`.
    pub reasoning: Option<bool>,
}

impl OutputSpec {
    /// Whether the text needs reading at all (otherwise it is all content).
    pub fn is_plain(&self) -> bool {
        self.tools.is_none() && self.reasoning.is_none()
    }
}

/// A call already announced in the stream.
#[derive(Debug)]
struct SentCall {
    id: String,
    arguments: usize,
}

/// One choice's output so far.
#[derive(Debug)]
pub struct ChatOutput {
    spec: OutputSpec,
    text: String,
    sent_reasoning: usize,
    sent_content: usize,
    calls: Vec<SentCall>,
}

/// What the text says at one point.
struct Reading {
    reasoning: String,
    content: String,
    calls: Vec<tools::PartialCall>,
}

impl ChatOutput {
    /// Empty output read as `spec` says.
    pub fn new(spec: OutputSpec) -> ChatOutput {
        ChatOutput {
            spec,
            text: String::new(),
            sent_reasoning: 0,
            sent_content: 0,
            calls: Vec::new(),
        }
    }

    /// Adds generated text; returns the deltas it makes final.
    pub fn push(&mut self, text: &str) -> Vec<ChatDelta> {
        self.text.push_str(text);
        self.deltas(false)
    }

    /// The end of the text: whatever was held back.
    pub fn finish(&mut self) -> Vec<ChatDelta> {
        self.deltas(true)
    }

    /// Whether the answer is (also) tool calls.
    pub fn has_calls(&self) -> bool {
        !self.read(true).calls.is_empty()
    }

    /// The whole message: content (`None` when the answer is only calls), reasoning, calls.
    pub fn message(&self) -> (Option<String>, Option<String>, Vec<ToolCall>) {
        let r = self.read(true);
        let calls: Vec<ToolCall> = r
            .calls
            .into_iter()
            .enumerate()
            .map(|(i, c)| ToolCall {
                id: self
                    .calls
                    .get(i)
                    .map_or_else(|| self.new_id(), |s| s.id.clone()),
                kind: "function",
                function: FunctionCall {
                    name: c.name.unwrap_or_default(),
                    arguments: c.arguments,
                },
            })
            .collect();
        let content = if calls.is_empty() || !r.content.trim().is_empty() {
            Some(r.content)
        } else {
            None
        };
        let reasoning = (!r.reasoning.is_empty()).then_some(r.reasoning);
        (content, reasoning, calls)
    }

    fn new_id(&self) -> String {
        tools::call_id(self.spec.tools.unwrap_or(ToolFormat::Hermes))
    }

    /// Reads the text so far; `done` when it is final.
    fn read(&self, done: bool) -> Reading {
        let (reasoning, rest) = self.split_reasoning(done);
        let (content, calls) = match self.spec.tools {
            Some(f) => {
                let p = tools::parse(f, rest, done);
                (p.content, p.calls)
            }
            None => (rest.to_owned(), Vec::new()),
        };
        Reading {
            reasoning: reasoning.to_owned(),
            content,
            calls,
        }
    }

    /// The reasoning and the rest of the text.
    fn split_reasoning(&self, done: bool) -> (&str, &str) {
        let Some(open_at_start) = self.spec.reasoning else {
            return ("", &self.text);
        };
        let trimmed = self.text.trim_start();
        let (open, body) = match trimmed.strip_prefix(THINK_OPEN) {
            Some(b) => (true, b),
            None if !done && !trimmed.is_empty() && THINK_OPEN.starts_with(trimmed) => {
                return ("", "");
            }
            None => (open_at_start, self.text.as_str()),
        };
        if !open {
            return ("", &self.text);
        }
        match body.find(THINK_CLOSE) {
            Some(i) => (&body[..i], body[i + THINK_CLOSE.len()..].trim_start()),
            None if done => (body, ""),
            None => {
                let keep = body.len() - tools::held_back(body, &[THINK_CLOSE]);
                (&body[..keep], "")
            }
        }
    }

    fn deltas(&mut self, done: bool) -> Vec<ChatDelta> {
        let r = self.read(done);
        let mut out = Vec::new();
        if let Some(new) = r
            .reasoning
            .get(self.sent_reasoning..)
            .filter(|s| !s.is_empty())
        {
            out.push(ChatDelta {
                reasoning_content: Some(new.to_owned()),
                ..ChatDelta::default()
            });
            self.sent_reasoning = r.reasoning.len();
        }
        if let Some(new) = r.content.get(self.sent_content..).filter(|s| !s.is_empty()) {
            out.push(ChatDelta {
                content: Some(new.to_owned()),
                ..ChatDelta::default()
            });
            self.sent_content = r.content.len();
        }
        for (index, call) in r.calls.iter().enumerate() {
            let Some(name) = &call.name else { break };
            if index == self.calls.len() {
                let id = self.new_id();
                out.push(call_delta(
                    index,
                    Some((id.clone(), name.clone())),
                    String::new(),
                ));
                self.calls.push(SentCall { id, arguments: 0 });
            }
            let sent = &mut self.calls[index];
            if let Some(new) = call
                .arguments
                .get(sent.arguments..)
                .filter(|s| !s.is_empty())
            {
                out.push(call_delta(index, None, new.to_owned()));
                sent.arguments = call.arguments.len();
            }
        }
        out
    }
}

/// A tool-call delta: the opening one (id and name) or a piece of the arguments.
fn call_delta(index: usize, head: Option<(String, String)>, arguments: String) -> ChatDelta {
    let (id, name) = head.unzip();
    ChatDelta {
        tool_calls: Some(vec![ToolCallDelta {
            index,
            kind: id.as_ref().map(|_| "function"),
            id,
            function: FunctionCallDelta {
                name,
                arguments: Some(arguments),
            },
        }]),
        ..ChatDelta::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(spec: OutputSpec, text: &str, piece: usize) -> (ChatOutput, Vec<ChatDelta>) {
        let mut out = ChatOutput::new(spec);
        let mut deltas = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for c in chars.chunks(piece) {
            deltas.extend(out.push(&c.iter().collect::<String>()));
        }
        deltas.extend(out.finish());
        (out, deltas)
    }

    #[test]
    fn streamed_call_deltas_add_up_to_the_message() {
        let spec = OutputSpec {
            tools: Some(ToolFormat::Hermes),
            reasoning: None,
        };
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        for piece in [1, 3, 7, 200] {
            let (out, deltas) = stream(spec, text, piece);
            let (content, _, calls) = out.message();
            assert_eq!(content, None);
            assert_eq!(calls.len(), 1);
            let mut args = String::new();
            let mut names = Vec::new();
            for d in &deltas {
                assert!(d.content.is_none(), "{d:?}");
                for c in d.tool_calls.iter().flatten() {
                    names.extend(c.function.name.clone());
                    args.push_str(c.function.arguments.as_deref().unwrap_or(""));
                    if c.id.is_some() {
                        assert_eq!(c.id.as_deref(), Some(calls[0].id.as_str()));
                    }
                }
            }
            assert_eq!(names, vec!["get_weather"]);
            assert_eq!(args, calls[0].function.arguments);
            assert_eq!(args, "{\"city\": \"Paris\"}");
        }
    }

    #[test]
    fn reasoning_is_split_from_the_answer() {
        let spec = OutputSpec {
            tools: None,
            reasoning: Some(false),
        };
        let (out, deltas) = stream(spec, "<think>\nIt is 4.\n</think>\n\n{\"answer\": 4}", 2);
        let (content, reasoning, _) = out.message();
        assert_eq!(content.as_deref(), Some("{\"answer\": 4}"));
        assert_eq!(reasoning.as_deref(), Some("\nIt is 4.\n"));
        let streamed: String = deltas.iter().filter_map(|d| d.content.clone()).collect();
        assert_eq!(streamed, "{\"answer\": 4}");
        let thought: String = deltas
            .iter()
            .filter_map(|d| d.reasoning_content.clone())
            .collect();
        assert_eq!(thought, "\nIt is 4.\n");
        // The prompt opened the section (DeepSeek-R1's template ends with `<think>\n`).
        let spec = OutputSpec {
            tools: None,
            reasoning: Some(true),
        };
        let (out, _) = stream(spec, "2+2=4</think>4", 3);
        let (content, reasoning, _) = out.message();
        assert_eq!(
            (content.as_deref(), reasoning.as_deref()),
            (Some("4"), Some("2+2=4"))
        );
    }

    #[test]
    fn plain_text_with_tools_is_content() {
        let spec = OutputSpec {
            tools: Some(ToolFormat::Hermes),
            reasoning: None,
        };
        let (out, deltas) = stream(spec, "It is sunny in Paris, 21 °C.", 4);
        let (content, _, calls) = out.message();
        assert!(calls.is_empty());
        assert_eq!(content.as_deref(), Some("It is sunny in Paris, 21 °C."));
        let streamed: String = deltas.iter().filter_map(|d| d.content.clone()).collect();
        assert_eq!(streamed, "It is sunny in Paris, 21 °C.");
    }
}
