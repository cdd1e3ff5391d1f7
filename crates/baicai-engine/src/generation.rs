//! One sequence's postprocess step, shared by the serving engine and [`crate::session::Session`]:
//! logits → (logprobs) → sampled token → end-of-generation check → streamed text with stop
//! strings held back → finish reason. A sequence with a [`TokenConstraint`] has its logits
//! masked before sampling and the chosen token committed to the constraint after.

use baicai_tokenizer::{StreamDecoder, Tokenizer};

use crate::constraint::{TokenConstraint, TokenMask};
use crate::engine::TokenOut;
use crate::sampler::{log_softmax_top_n, Sampler, SamplerConfig, StopMatcher};
use crate::session::FinishReason;

/// What a generation is asked to do.
#[derive(Debug, Clone)]
pub struct GenerationSpec {
    pub sampler: SamplerConfig,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub stop_at_eog: bool,
    /// `Some(k)`: logprobs of each token and of its `k` likeliest alternatives.
    pub logprobs: Option<usize>,
}

/// The state of one generation.
pub struct Generation {
    spec: GenerationSpec,
    sampler: Sampler,
    decoder: StreamDecoder,
    stops: StopMatcher,
    generated: usize,
    /// The constraint and its mask buffer (reused every step).
    constraint: Option<(Box<dyn TokenConstraint>, TokenMask)>,
}

/// What one step produced.
#[derive(Debug, Default)]
pub struct StepOut {
    /// The generated token (none when an end-of-generation token ended the sequence).
    pub token: Option<TokenOut>,
    /// Text that became final.
    pub text: String,
    /// Set when the generation ended with this step.
    pub finish: Option<FinishReason>,
}

impl Generation {
    /// A generation after `prompt` (whose tokens the penalties see).
    pub fn new(spec: GenerationSpec, prompt: &[u32]) -> Generation {
        let mut sampler = Sampler::new(spec.sampler.clone());
        for &t in prompt {
            sampler.accept(t);
        }
        Generation {
            stops: StopMatcher::new(spec.stop.clone()),
            sampler,
            decoder: StreamDecoder::new(true),
            generated: 0,
            spec,
            constraint: None,
        }
    }

    /// Constrains the tokens this generation may sample.
    pub fn with_constraint(mut self, constraint: Option<Box<dyn TokenConstraint>>) -> Generation {
        self.constraint = constraint.map(|c| (c, TokenMask::default()));
        self
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Samples from `logits` (which the sampler modifies). `room` says whether the context has
    /// space for another token after this one.
    pub fn step(&mut self, tokenizer: &Tokenizer, logits: &mut [f32], room: bool) -> StepOut {
        // Logprobs are of the model's raw distribution, before the sampler changes `logits`.
        let raw = self
            .spec
            .logprobs
            .map(|k| (log_softmax_top_n(logits, k.max(1)), logits.to_vec()));
        if let Some((c, mask)) = &mut self.constraint {
            mask.reset(tokenizer.vocab_size());
            c.mask(mask);
            mask.apply(logits);
        }
        let token = self.sampler.sample(logits);
        self.sampler.accept(token);
        if self.spec.stop_at_eog && tokenizer.is_eog(token) {
            return StepOut {
                finish: Some(FinishReason::Stop),
                ..StepOut::default()
            };
        }
        let constraint_done = self.constraint.as_mut().is_some_and(|(c, _)| {
            c.commit(token);
            c.is_done()
        });
        let (logprob, top) = match raw {
            Some((top, raw)) => {
                // Every logprob shares log Z: lp(token) = logit(token) - logit(best) + lp(best).
                let lp = top.first().map(|&(best, lp)| {
                    (raw[token as usize] as f64 - raw[best as usize] as f64 + lp as f64) as f32
                });
                let k = self.spec.logprobs.unwrap_or(0);
                (lp, top.into_iter().take(k).collect())
            }
            None => (None, Vec::new()),
        };
        self.generated += 1;
        let r = self.stops.push(&self.decoder.push(tokenizer, token));
        let finish = if r.stopped || constraint_done {
            Some(FinishReason::Stop)
        } else if self.generated >= self.spec.max_tokens {
            Some(FinishReason::Length)
        } else if !room {
            Some(FinishReason::ContextFull)
        } else {
            None
        };
        StepOut {
            token: Some(TokenOut {
                id: token,
                logprob,
                top,
            }),
            text: r.emit,
            finish,
        }
    }

    /// Text still held back at the end of a generation that ended for `finish` (incomplete
    /// UTF-8, a possible stop-string start); nothing after a stop string.
    pub fn flush(&mut self) -> String {
        if self.stops.is_stopped() {
            return String::new();
        }
        let tail = self.decoder.flush();
        let mut text = self.stops.push(&tail).emit;
        text.push_str(&self.stops.finish());
        text
    }
}
