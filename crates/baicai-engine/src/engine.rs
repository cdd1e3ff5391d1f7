//! The serving engine: one thread owns the model, the KV cache budget and every sequence, and
//! runs `step() = schedule → forward → postprocess` for as long as requests arrive.
//!
//! Handlers (the HTTP server, tests) never touch the model: they [`EngineHandle::submit`] a
//! [`Request`] carrying an [`EventSink`], and the engine thread delivers that request's
//! [`Event`]s to the sink as tokens are produced. A sink whose receiver is gone cancels its
//! request: the engine checks [`EventSink::is_closed`] before every step and frees the sequence's
//! KV blocks at once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use baicai_models::CausalLm;
use baicai_tokenizer::Tokenizer;

use crate::constraint::TokenConstraint;
use crate::cost::Accounting;
use crate::energy::EnergySource;
use crate::sampler::SamplerConfig;
use crate::session::FinishReason;
use crate::tariff::Currency;

/// Settings of the serving engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences decoded together in one step, at most.
    pub max_seqs: usize,
    /// Bytes of KV cache all sequences share (the block budget).
    pub kv_cache_bytes: u64,
    /// Tokens per KV block.
    pub block_tokens: usize,
    /// Context of one sequence (prompt + generated tokens), at most.
    pub n_ctx: usize,
    /// Tokens computed in one step, at most (decode tokens plus prefill chunks).
    pub max_batch_tokens: usize,
    /// Requests waiting to be scheduled, at most; more are refused with
    /// [`SubmitError::QueueFull`].
    pub max_queue: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_seqs: 32,
            kv_cache_bytes: 1 << 30,
            block_tokens: 16,
            n_ctx: 4096,
            max_batch_tokens: 512,
            max_queue: 256,
        }
    }
}

/// One generation request, as the engine runs it (already validated and tokenized).
pub struct Request {
    /// The prompt's token ids (non-empty, each below the vocabulary size).
    pub prompt: Vec<u32>,
    /// Tokens to generate, at most.
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Generation ends before any of these strings; they are not emitted.
    pub stop: Vec<String>,
    /// Whether end-of-generation tokens end generation (`false` = ignore EOS).
    pub stop_at_eog: bool,
    /// `Some(k)`: report each generated token's logprob and its `k` most likely alternatives
    /// (`k` ≤ [`MAX_TOP_LOGPROBS`]); `None`: no logprobs.
    pub logprobs: Option<usize>,
    /// Limits which tokens may be generated (structured output); `None`: any token.
    pub constraint: Option<Box<dyn TokenConstraint>>,
    /// Where the request's events go.
    pub sink: Box<dyn EventSink>,
}

/// Most alternatives a request may ask logprobs for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The receiving end of one request's events.
pub trait EventSink: Send {
    /// Delivers an event; `false` when the receiver is gone (the request is then cancelled).
    fn send(&mut self, event: Event) -> bool;
    /// Whether the receiver is gone; checked before every step, also while the prompt is
    /// being processed.
    fn is_closed(&self) -> bool;
}

/// What happens to a request, in order: any number of `Delta`s, then exactly one `Done` or
/// `Error`.
#[derive(Debug, Clone)]
pub enum Event {
    /// The first token's arrival is the time to first token.
    Delta(Delta),
    /// Generation ended normally.
    Done(Done),
    /// The request failed inside the engine (a model error); the message says why.
    Error(String),
}

/// New output of a request.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    /// Text that became final with this step (may be empty: incomplete UTF-8, or text held back
    /// while it may be the start of a stop string).
    pub text: String,
    /// The tokens generated in this step (one per step, none after a stop string): id and,
    /// when asked for, logprobs.
    pub tokens: Vec<TokenOut>,
}

/// One generated token.
#[derive(Debug, Clone)]
pub struct TokenOut {
    pub id: u32,
    /// Natural log of its probability under the model's raw distribution (before penalties,
    /// temperature and truncation, as OpenAI reports it); `None` unless logprobs were asked for.
    pub logprob: Option<f32>,
    /// The most likely tokens and their logprobs, most likely first (empty unless asked for).
    pub top: Vec<(u32, f32)>,
}

/// The end of a request.
#[derive(Debug, Clone)]
pub struct Done {
    pub finish: FinishReason,
    pub usage: Usage,
}

/// Token counts, energy and cost of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_tokens: usize,
    /// Joules of the steps this request was in, each split over its sequences by the tokens
    /// each computed.
    pub energy_joules: f64,
    /// Whether `energy_joules` was measured (RAPL) or estimated.
    pub energy_source: EnergySource,
    /// Energy at the tariff in force plus the hardware's time, split like the energy.
    pub cost: f64,
    pub currency: Currency,
}

/// Why a request was not accepted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the queue is full ({waiting} requests waiting, limit {limit})")]
    QueueFull { waiting: usize, limit: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the prompt has {prompt} tokens; with max_tokens {max_tokens} that exceeds the context of {n_ctx}")]
    TooLong {
        prompt: usize,
        max_tokens: usize,
        n_ctx: usize,
    },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {id} is outside the vocabulary (size {n_vocab})")]
    BadToken { id: u32, n_vocab: usize },
}

/// Counters and gauges of the engine, for metrics.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    /// Requests waiting to be scheduled.
    pub waiting: usize,
    /// Sequences being computed.
    pub running: usize,
    /// KV blocks held by live sequences.
    pub kv_blocks_used: usize,
    /// KV blocks held by the prefix cache (finished sequences' keys and values kept for reuse,
    /// given up whenever live sequences need them).
    pub prefix_cache_blocks: usize,
    pub kv_blocks_total: usize,
    /// Prompt tokens found in the prefix cache, since start.
    pub prefix_hit_tokens: u64,
    /// Sequences preempted (and later recomputed), since start.
    pub preemptions: u64,
    /// Prompt tokens computed, since start.
    pub prompt_tokens: u64,
    /// Tokens generated, since start.
    pub generated_tokens: u64,
    /// Steps run, since start.
    pub steps: u64,
    /// For MoE models: tokens routed to each expert of each layer since start.
    pub expert_load: Option<Vec<Vec<u64>>>,
    /// Joules of all steps since start.
    pub energy_joules: f64,
    /// Whether `energy_joules` is measured (RAPL) or estimated.
    pub energy_source: EnergySource,
    /// Cost of all steps since start (energy at the tariff in force, plus hardware time).
    pub cost: f64,
    pub currency: Currency,
    /// Wall-clock seconds of all steps' forward passes since start (the engine's busy time).
    pub busy_seconds: f64,
}

/// Fixed facts about the served model.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub max_seqs: usize,
    pub kv_blocks_total: usize,
    pub block_tokens: usize,
}

/// State the engine thread shares with handles.
pub(crate) struct Shared {
    /// Requests submitted and not yet taken in by the engine thread.
    pub(crate) waiting: AtomicUsize,
    /// Requests taken in and waiting for their first step (or preempted).
    pub(crate) queued: AtomicUsize,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) stats: Mutex<EngineStats>,
    pub(crate) submitted: AtomicU64,
}

/// A cheap, cloneable handle to a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    info: EngineInfo,
    cfg: EngineConfig,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl EngineHandle {
    /// Starts the engine thread for `model`, with the default energy and cost accounting.
    pub fn start(
        model: Arc<dyn CausalLm>,
        tokenizer: Arc<Tokenizer>,
        cfg: EngineConfig,
    ) -> EngineHandle {
        EngineHandle::start_with(model, tokenizer, cfg, Accounting::default())
    }

    /// Starts the engine thread for `model`, accounting energy and cost with `accounting`.
    pub fn start_with(
        model: Arc<dyn CausalLm>,
        tokenizer: Arc<Tokenizer>,
        cfg: EngineConfig,
        accounting: Accounting,
    ) -> EngineHandle {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            waiting: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            stats: Mutex::new(EngineStats::default()),
            submitted: AtomicU64::new(0),
        });
        let mut core = crate::core::Core::new(
            model.clone(),
            tokenizer,
            cfg.clone(),
            shared.clone(),
            accounting,
        );
        let n_ctx = core.clamp_ctx();
        let info = EngineInfo {
            n_ctx,
            n_vocab: model.config().n_vocab,
            max_seqs: cfg.max_seqs,
            kv_blocks_total: core.blocks_total(),
            block_tokens: cfg.block_tokens,
        };
        let thread = std::thread::Builder::new()
            .name("baicai-engine".into())
            .spawn(move || core.run(rx))
            .expect("cannot start the engine thread");
        EngineHandle {
            tx,
            shared,
            info,
            cfg,
            thread: Arc::new(Mutex::new(Some(thread))),
        }
    }

    /// Queues a request.
    ///
    /// # Errors
    /// The queue is full, the engine is shutting down, or the request cannot run (empty or too
    /// long prompt, a token outside the vocabulary).
    pub fn submit(&self, req: Request) -> Result<(), SubmitError> {
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        if req.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if let Some(&id) = req
            .prompt
            .iter()
            .find(|&&t| t as usize >= self.info.n_vocab)
        {
            return Err(SubmitError::BadToken {
                id,
                n_vocab: self.info.n_vocab,
            });
        }
        if req.prompt.len().saturating_add(req.max_tokens.max(1)) > self.info.n_ctx {
            return Err(SubmitError::TooLong {
                prompt: req.prompt.len(),
                max_tokens: req.max_tokens,
                n_ctx: self.info.n_ctx,
            });
        }
        let waiting = self.shared.waiting.fetch_add(1, Ordering::SeqCst)
            + self.shared.queued.load(Ordering::SeqCst);
        if waiting >= self.cfg.max_queue {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull {
                waiting,
                limit: self.cfg.max_queue,
            });
        }
        self.shared.submitted.fetch_add(1, Ordering::SeqCst);
        self.tx.send(req).map_err(|_| {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            SubmitError::ShuttingDown
        })
    }

    /// A snapshot of the engine's counters.
    pub fn stats(&self) -> EngineStats {
        let mut s = self
            .shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        s.waiting += self.shared.waiting.load(Ordering::SeqCst);
        s
    }

    /// Facts about the served model.
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// Refuses new requests from now on; those already submitted run to their end.
    pub fn begin_shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Refuses new requests, lets the submitted ones finish, and waits for the engine thread to
    /// end (every handle's sender must be dropped or shutdown begun).
    pub fn shutdown_and_wait(&self) {
        self.begin_shutdown();
        let t = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}
