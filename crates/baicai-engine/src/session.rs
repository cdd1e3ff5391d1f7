//! One sequence's state and the generation loop: feed tokens, sample, stream text.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baicai_models::{CausalLm, KvCache, Logits, ModelError};
use baicai_tokenizer::Tokenizer;

use crate::generation::{Generation, GenerationSpec};
use crate::sampler::SamplerConfig;

/// Tokens run through the model in one forward call during prompt processing; bounds the
/// activation memory of long prompts.
pub const PREFILL_CHUNK: usize = 512;

/// Settings of one generation.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Generation ends before any of these strings; they are not emitted.
    pub stop: Vec<String>,
    /// Whether end-of-generation tokens end generation (off for benchmarks).
    pub stop_at_eog: bool,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The context is full.
    ContextFull,
}

/// Counters of one generation.
#[derive(Debug, Clone)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    /// Prompt tokens found in the cache from an earlier turn and not recomputed.
    pub cached_prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_time: Duration,
    pub generation_time: Duration,
    pub finish: FinishReason,
}

/// A sequence: the model, its KV cache and the tokens the cache holds.
pub struct Session {
    model: Arc<dyn CausalLm>,
    cache: KvCache,
    tokens: Vec<u32>,
}

/// Errors of a generation.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the prompt has {prompt} tokens, more than the context size {n_ctx}")]
    PromptTooLong { prompt: usize, n_ctx: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
}

impl Session {
    /// A session with a context of `n_ctx` tokens.
    pub fn new(model: Arc<dyn CausalLm>, n_ctx: usize) -> Session {
        let cache = model.new_cache(n_ctx);
        Session {
            model,
            cache,
            tokens: Vec::new(),
        }
    }

    /// Tokens currently held in the cache.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The context size.
    pub fn n_ctx(&self) -> usize {
        self.cache.capacity()
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        self.cache.truncate(0);
        self.tokens.clear();
    }

    /// Makes the cache hold exactly `prompt` and returns the logits after its last token and the
    /// number of prompt tokens that were already cached. Reuses the longest common prefix with
    /// what the cache holds (multi-turn chat), and always recomputes at least one token.
    ///
    /// # Errors
    /// Empty or too long prompt, model errors.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<(Vec<f32>, usize), EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt.len() > self.n_ctx() {
            return Err(EngineError::PromptTooLong {
                prompt: prompt.len(),
                n_ctx: self.n_ctx(),
            });
        }
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let reuse = common.min(prompt.len() - 1);
        self.cache.truncate(reuse);
        self.tokens.truncate(reuse);
        let mut logits = Vec::new();
        for chunk in prompt[reuse..].chunks(PREFILL_CHUNK) {
            logits = self.model.forward(chunk, &mut self.cache, Logits::Last)?;
            self.tokens.extend_from_slice(chunk);
        }
        Ok((logits, reuse))
    }

    /// Appends one token and returns the logits after it.
    ///
    /// # Errors
    /// Context full, model errors.
    pub fn step(&mut self, token: u32) -> Result<Vec<f32>, EngineError> {
        let logits = self
            .model
            .forward(&[token], &mut self.cache, Logits::Last)?;
        self.tokens.push(token);
        Ok(logits)
    }

    /// Runs `prompt`, then samples up to `params.max_tokens` tokens, passing each piece of
    /// complete UTF-8 text to `on_text` as it is produced.
    ///
    /// # Errors
    /// Prompt errors and model errors.
    pub fn generate(
        &mut self,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_text: impl FnMut(&str),
    ) -> Result<GenerateStats, EngineError> {
        let t0 = Instant::now();
        let (mut logits, cached) = self.prefill(prompt)?;
        let prompt_time = t0.elapsed();
        let t1 = Instant::now();
        let spec = GenerationSpec {
            sampler: params.sampler.clone(),
            max_tokens: params.max_tokens,
            stop: params.stop.clone(),
            stop_at_eog: params.stop_at_eog,
            logprobs: None,
        };
        let mut gen = Generation::new(spec, prompt);
        let finish = loop {
            if params.max_tokens == 0 {
                break FinishReason::Length;
            }
            let room = self.cache.reserve(1).is_ok();
            let out = gen.step(tokenizer, &mut logits, room);
            on_text(&out.text);
            match (out.finish, out.token) {
                (None, Some(token)) => logits = self.step(token.id)?,
                (finish, _) => {
                    on_text(&gen.flush());
                    break finish.unwrap_or(FinishReason::Stop);
                }
            }
        };
        let generated = gen.generated();
        Ok(GenerateStats {
            prompt_tokens: prompt.len(),
            cached_prompt_tokens: cached,
            generated_tokens: generated,
            prompt_time,
            generation_time: t1.elapsed(),
            finish,
        })
    }
}
