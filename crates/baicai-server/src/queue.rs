//! Queueing a validated request: one engine [`Request`] per choice, all feeding one bounded
//! channel that the handler reads.
//!
//! The channel is the back-pressure point between the engine thread and a client. The engine
//! never blocks on it: a [`ChannelSink`] whose channel is full — or whose reader has not taken
//! an event for longer than the stall timeout while events wait — reports itself closed, and
//! the engine cancels the sequence and frees its KV blocks. A client that disconnects drops the
//! handler's future and with it the receiver, which closes every sink of the request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baicai_engine::engine::{Event, EventSink, Request, SubmitError};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::validate::ValidRequest;
use crate::Backend;

/// An event of choice `.0`.
pub type ChoiceEvent = (usize, Event);

/// Events one choice may have waiting in the channel before it is cancelled.
pub const EVENTS_PER_CHOICE: usize = 1024;

/// When the reader last took an event, shared by the reader and every sink of a request.
#[derive(Debug)]
pub struct ReadClock {
    start: Instant,
    /// Milliseconds since `start` of the last read.
    last_read_ms: AtomicU64,
    stall: Duration,
}

impl ReadClock {
    fn new(stall: Duration) -> ReadClock {
        ReadClock {
            start: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            stall,
        }
    }

    /// The reader took an event now.
    pub fn read(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_read_ms.store(ms, Ordering::Relaxed);
    }

    fn stalled(&self) -> bool {
        let last = Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last) > self.stall
    }
}

/// The sink of one choice: forwards its events into the request's channel, tagged with the
/// choice index.
struct ChannelSink {
    index: usize,
    tx: mpsc::Sender<ChoiceEvent>,
    clock: Arc<ReadClock>,
}

impl EventSink for ChannelSink {
    fn send(&mut self, event: Event) -> bool {
        // Into an empty channel: the stall clock starts now, not at the last read (which may be
        // long ago when the request waited in the queue).
        if self.tx.capacity() == self.tx.max_capacity() {
            self.clock.read();
        }
        // Full: the reader is far behind; dropping the request is what frees its decode slot.
        self.tx.try_send((self.index, event)).is_ok()
    }

    fn is_closed(&self) -> bool {
        let waiting = self.tx.capacity() < self.tx.max_capacity();
        self.tx.is_closed() || (waiting && self.clock.stalled())
    }
}

/// The receiving side of a submitted request.
pub struct Submitted {
    /// Events of every choice, in the order the engine produced them.
    pub rx: mpsc::Receiver<ChoiceEvent>,
    /// Call [`ReadClock::read`] whenever an event is taken.
    pub clock: Arc<ReadClock>,
}

/// Submits every choice of `req`. If one is refused, the ones already queued are cancelled
/// (their receiver is dropped) and the request fails as a whole.
///
/// # Errors
/// 429 when the queue is full, 503 while shutting down, 400 for what the engine refuses.
pub fn submit(
    backend: &dyn Backend,
    req: &ValidRequest,
    stall: Duration,
) -> Result<Submitted, ApiError> {
    let (tx, rx) = mpsc::channel(EVENTS_PER_CHOICE * req.choices());
    let clock = Arc::new(ReadClock::new(stall));
    for (p, prompt) in req.prompts.iter().enumerate() {
        for i in 0..req.n {
            let index = p * req.n + i;
            let sink = ChannelSink {
                index,
                tx: tx.clone(),
                clock: clock.clone(),
            };
            backend
                .submit(Request {
                    prompt: prompt.tokens.clone(),
                    max_tokens: prompt.max_tokens,
                    sampler: req.sampler_for(index),
                    stop: req.stop.clone(),
                    stop_at_eog: req.stop_at_eog,
                    logprobs: req.logprobs,
                    constraint: req
                        .constraint
                        .as_ref()
                        .map(|c| Box::new(c.constraint()) as Box<_>),
                    sink: Box::new(sink),
                })
                .map_err(submit_error)?;
        }
    }
    Ok(Submitted { rx, clock })
}

/// The HTTP error for a request the engine refused.
fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::QueueFull { waiting, limit } => ApiError::queue_full(waiting, limit),
        SubmitError::ShuttingDown => ApiError::unavailable("The server is shutting down"),
        // Validation checks these first; the engine's own check is the backstop.
        e @ SubmitError::TooLong { .. } => ApiError::invalid("max_tokens", e.to_string()),
        e @ (SubmitError::EmptyPrompt | SubmitError::BadToken { .. }) => {
            ApiError::invalid("prompt", e.to_string())
        }
    }
}
