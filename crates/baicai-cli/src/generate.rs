//! `run` (raw completion) and `chat` (templated, multi-turn).

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use anyhow::{Context, Result};
use baicai_engine::engine::{EngineConfig, EngineHandle, Event, EventSink, Request};
use baicai_engine::sampler::SamplerConfig;
use baicai_engine::session::{FinishReason, GenerateParams, GenerateStats, PREFILL_CHUNK};
use baicai_tokenizer::{ChatMessage, ChatTemplate};
use clap::Args;

use crate::load::{load, Loaded, ModelArgs};

/// Sampling and length options shared by `run` and `chat`.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 256)]
    pub max_tokens: usize,
    /// Context size in tokens (prompt + generation).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    pub ctx_size: usize,
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = off).
    #[arg(long = "top-p", default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than min-p times the most likely one (0 = off).
    #[arg(long = "min-p", default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty over the last `--repeat-last-n` tokens (1 = off).
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Window of the repetition, presence and frequency penalties.
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Presence penalty (0 = off).
    #[arg(long = "presence-penalty", default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Frequency penalty (0 = off).
    #[arg(long = "frequency-penalty", default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Random seed: the same seed gives the same output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Keep generating after end-of-generation tokens.
    #[arg(long = "ignore-eos")]
    pub ignore_eos: bool,
}

/// Largest accepted context (the KV cache is sized from it).
const MAX_CTX: usize = 1 << 21;

/// Warns when the context exceeds what the model was trained for.
fn check_ctx(model: &dyn baicai_models::CausalLm, ctx: usize) {
    let train = model.config().n_ctx_train;
    if ctx > train {
        eprintln!("warning: --ctx-size {ctx} exceeds the model's training context {train}");
    }
}

impl SamplingArgs {
    fn params(&self) -> Result<GenerateParams> {
        if self.ctx_size == 0 || self.ctx_size > MAX_CTX {
            anyhow::bail!(
                "--ctx-size must lie in 1..={MAX_CTX}, got {}",
                self.ctx_size
            );
        }
        if !(0.0..=1.0).contains(&self.top_p) || !(0.0..=1.0).contains(&self.min_p) {
            anyhow::bail!("--top-p and --min-p must lie in [0, 1]");
        }
        if self.temperature < 0.0 || !self.temperature.is_finite() {
            anyhow::bail!("--temperature must be a finite number ≥ 0");
        }
        Ok(GenerateParams {
            max_tokens: self.max_tokens,
            sampler: SamplerConfig {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                repeat_last_n: self.repeat_last_n,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                seed: self.seed,
            },
            stop: self.stop.clone(),
            stop_at_eog: !self.ignore_eos,
        })
    }
}

/// Arguments of `run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt, completed as is (no chat template).
    #[arg(short = 'p', long = "prompt")]
    pub prompt: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print timing to stderr at the end.
    #[arg(long)]
    pub verbose: bool,
    /// Print per-layer expert load to stderr at the end (MoE models).
    #[arg(long = "moe-stats")]
    pub moe_stats: bool,
}

/// One line per MoE layer: how many tokens each expert received.
pub fn expert_load_lines(model: &dyn baicai_models::CausalLm) -> Vec<String> {
    let Some(load) = model.expert_load() else {
        return vec!["not a Mixture-of-Experts model".into()];
    };
    load.iter()
        .enumerate()
        .filter(|(_, l)| !l.tokens.is_empty())
        .map(|(il, l)| {
            let total: u64 = l.tokens.iter().sum();
            let used = l.tokens.iter().filter(|&&t| t > 0).count();
            let max = l.tokens.iter().copied().max().unwrap_or(0);
            format!(
                "layer {il:>3}: {used}/{} experts used, {total} routings, busiest expert {max} ({:.1}%), tokens per expert {:?}",
                l.tokens.len(),
                100.0 * max as f64 / total.max(1) as f64,
                l.tokens
            )
        })
        .collect()
}

fn report(stats: &GenerateStats) {
    let pp = stats.prompt_tokens - stats.cached_prompt_tokens;
    eprintln!(
        "[prompt {} tokens ({} cached) in {:.2}s, {:.1} tok/s; generated {} tokens in {:.2}s, {:.1} tok/s; finish {:?}]",
        stats.prompt_tokens,
        stats.cached_prompt_tokens,
        stats.prompt_time.as_secs_f64(),
        pp as f64 / stats.prompt_time.as_secs_f64().max(1e-9),
        stats.generated_tokens,
        stats.generation_time.as_secs_f64(),
        stats.generated_tokens as f64 / stats.generation_time.as_secs_f64().max(1e-9),
        stats.finish
    );
}

fn stream_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (e.g. `| head`) ends output silently rather than panicking.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// The engine the command line generates with: one sequence at a time, a KV budget of one
/// context, and the prefix cache reusing a chat's earlier turns — the same path as the server.
fn start_engine(loaded: &Loaded, ctx_size: usize) -> Result<EngineHandle> {
    let model = loaded.model.clone();
    check_ctx(model.as_ref(), ctx_size);
    let per_token = model.new_cache(1).bytes_per_token() as u64;
    let cfg = EngineConfig {
        max_seqs: 1,
        kv_cache_bytes: per_token * (ctx_size as u64).div_ceil(16) * 16,
        block_tokens: 16,
        n_ctx: ctx_size,
        max_batch_tokens: PREFILL_CHUNK,
        max_queue: 1,
    };
    Ok(EngineHandle::start(model, loaded.tokenizer()?.clone(), cfg))
}

/// Sends the engine's events into a channel; cancelled when `cancel` is set (Ctrl-C in chat).
struct CliSink {
    tx: mpsc::Sender<Event>,
    cancel: Arc<AtomicBool>,
}

impl EventSink for CliSink {
    fn send(&mut self, event: Event) -> bool {
        self.tx.send(event).is_ok() && !self.is_closed()
    }

    fn is_closed(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// Generates after `prompt` on `engine`, passing text to `on_text` as it comes; `None` when
/// `cancel` interrupted it.
fn generate(
    engine: &EngineHandle,
    prompt: Vec<u32>,
    params: &GenerateParams,
    cancel: &Arc<AtomicBool>,
    mut on_text: impl FnMut(&str),
) -> Result<Option<GenerateStats>> {
    let n_ctx = engine.info().n_ctx;
    if prompt.len() >= n_ctx {
        anyhow::bail!(
            "the prompt has {} tokens, more than the context size {n_ctx} allows (-c)",
            prompt.len()
        );
    }
    let prompt_tokens = prompt.len();
    // Generation may run until the context is full, as before the engine existed.
    let max_tokens = params.max_tokens.min(n_ctx - prompt_tokens);
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    engine
        .submit(Request {
            prompt,
            max_tokens,
            sampler: params.sampler.clone(),
            stop: params.stop.clone(),
            stop_at_eog: params.stop_at_eog,
            logprobs: None,
            constraint: None,
            sink: Box::new(CliSink {
                tx,
                cancel: cancel.clone(),
            }),
        })
        .context("generation failed")?;
    let mut first: Option<Instant> = None;
    let mut generated = 0;
    for ev in rx {
        match ev {
            Event::Delta(d) => {
                first.get_or_insert_with(Instant::now);
                generated += d.tokens.len();
                on_text(&d.text);
            }
            Event::Done(d) => {
                let t1 = first.unwrap_or_else(Instant::now);
                let finish = if d.finish == FinishReason::Length && max_tokens < params.max_tokens {
                    FinishReason::ContextFull
                } else {
                    d.finish
                };
                return Ok(Some(GenerateStats {
                    prompt_tokens,
                    cached_prompt_tokens: d.usage.cached_tokens,
                    generated_tokens: generated,
                    prompt_time: t1 - t0,
                    generation_time: t1.elapsed(),
                    finish,
                }));
            }
            Event::Error(e) => anyhow::bail!("generation failed: {e}"),
        }
    }
    // The engine dropped the request without an end: it was cancelled.
    Ok(None)
}

/// `baicai run`.
pub fn run(a: RunArgs) -> Result<()> {
    let params = a.sampling.params()?;
    let loaded = load(&a.model)?;
    let tokenizer = loaded.tokenizer()?;
    let prompt = tokenizer.encode(&a.prompt, true, false);
    let engine = start_engine(&loaded, a.sampling.ctx_size)?;
    let never = Arc::new(AtomicBool::new(false));
    let stats = generate(&engine, prompt, &params, &never, stream_stdout)?;
    stream_stdout("\n");
    if let (true, Some(stats)) = (a.verbose, &stats) {
        report(stats);
    }
    if a.moe_stats {
        for line in expert_load_lines(loaded.model.as_ref()) {
            eprintln!("{line}");
        }
    }
    engine.shutdown_and_wait();
    Ok(())
}

/// Arguments of `chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// One user message: answer it and exit (otherwise read turns from stdin).
    #[arg(short = 'p', long = "prompt")]
    pub prompt: Option<String>,
    /// A system message.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print timing to stderr after each answer.
    #[arg(long)]
    pub verbose: bool,
}

/// Ctrl-C in an interactive chat: while an answer is generated it stops that answer and
/// returns to the prompt (as llama.cpp and Ollama do); at the prompt it ends the program.
fn install_ctrl_c(generating: Arc<AtomicBool>, cancel: Arc<AtomicBool>) -> Result<()> {
    ctrlc::set_handler(move || {
        if generating.load(Ordering::SeqCst) {
            cancel.store(true, Ordering::SeqCst);
        } else {
            eprintln!();
            std::process::exit(130);
        }
    })
    .context("cannot install the Ctrl-C handler")
}

/// `baicai chat`.
pub fn chat(a: ChatArgs) -> Result<()> {
    let params = a.sampling.params()?;
    let loaded = load(&a.model)?;
    let tokenizer = loaded.tokenizer()?;
    let template =
        ChatTemplate::for_tokenizer(tokenizer).context("cannot load the chat template")?;
    let engine = start_engine(&loaded, a.sampling.ctx_size)?;
    let mut messages: Vec<ChatMessage> = Vec::new();
    if let Some(s) = &a.system {
        messages.push(ChatMessage {
            role: "system".into(),
            content: s.clone(),
        });
    }
    let interactive = a.prompt.is_none();
    let generating = Arc::new(AtomicBool::new(false));
    let cancel = Arc::new(AtomicBool::new(false));
    if interactive {
        install_ctrl_c(generating.clone(), cancel.clone())?;
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        let user = match &a.prompt {
            Some(p) => p.clone(),
            None => {
                eprint!("> ");
                let _ = std::io::stderr().flush();
                match lines.next() {
                    Some(line) => line.context("cannot read stdin")?,
                    None => break,
                }
            }
        };
        if interactive && (user.trim() == "/exit" || user.trim() == "/quit") {
            break;
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: user,
        });
        let text = template
            .render(&messages, true)
            .context("cannot render the chat template")?;
        // Templates that write the BOS token themselves must not get a second one.
        let bos_in_text = tokenizer
            .bos_id()
            .and_then(|b| tokenizer.token_text(b))
            .is_some_and(|b| !b.is_empty() && text.starts_with(b));
        let prompt = tokenizer.encode(&text, !bos_in_text, true);
        let mut answer = String::new();
        cancel.store(false, Ordering::SeqCst);
        generating.store(true, Ordering::SeqCst);
        let stats = generate(&engine, prompt, &params, &cancel, |t| {
            answer.push_str(t);
            stream_stdout(t);
        });
        generating.store(false, Ordering::SeqCst);
        let stats = stats?;
        stream_stdout("\n");
        match &stats {
            Some(s) if a.verbose => report(s),
            Some(_) => {}
            None => eprintln!("[interrupted]"),
        }
        messages.push(ChatMessage {
            role: "assistant".into(),
            content: answer,
        });
        if !interactive {
            break;
        }
    }
    engine.shutdown_and_wait();
    Ok(())
}
