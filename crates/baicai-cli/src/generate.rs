//! `run` (raw completion) and `chat` (templated, multi-turn).

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use baicai_engine::sampler::SamplerConfig;
use baicai_engine::session::{GenerateParams, GenerateStats, Session};
use baicai_tokenizer::{ChatMessage, ChatTemplate};
use clap::Args;

use crate::load::{load, ModelArgs};

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

/// `baicai run`.
pub fn run(a: RunArgs) -> Result<()> {
    let params = a.sampling.params()?;
    let loaded = load(&a.model)?;
    let tokenizer = loaded.tokenizer()?;
    let model = loaded.model.clone();
    let prompt = tokenizer.encode(&a.prompt, true, false);
    check_ctx(model.as_ref(), a.sampling.ctx_size);
    let mut session = Session::new(model, a.sampling.ctx_size);
    let stats = session
        .generate(tokenizer, &prompt, &params, stream_stdout)
        .context("generation failed")?;
    stream_stdout("\n");
    if a.verbose {
        report(&stats);
    }
    if a.moe_stats {
        for line in expert_load_lines(loaded.model.as_ref()) {
            eprintln!("{line}");
        }
    }
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

/// `baicai chat`.
pub fn chat(a: ChatArgs) -> Result<()> {
    let params = a.sampling.params()?;
    let loaded = load(&a.model)?;
    let tokenizer = loaded.tokenizer()?;
    let model = loaded.model.clone();
    let template =
        ChatTemplate::for_tokenizer(tokenizer).context("cannot load the chat template")?;
    check_ctx(model.as_ref(), a.sampling.ctx_size);
    let mut session = Session::new(model, a.sampling.ctx_size);
    let mut messages: Vec<ChatMessage> = Vec::new();
    if let Some(s) = &a.system {
        messages.push(ChatMessage {
            role: "system".into(),
            content: s.clone(),
        });
    }
    let interactive = a.prompt.is_none();
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
        let stats = session
            .generate(tokenizer, &prompt, &params, |t| {
                answer.push_str(t);
                stream_stdout(t);
            })
            .context("generation failed")?;
        stream_stdout("\n");
        if a.verbose {
            report(&stats);
        }
        messages.push(ChatMessage {
            role: "assistant".into(),
            content: answer,
        });
        if !interactive {
            break;
        }
    }
    Ok(())
}
