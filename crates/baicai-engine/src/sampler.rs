//! Token sampling: penalties, truncation (top-k, top-p, min-p), temperature and a seeded draw,
//! plus stop-string matching on the detokenized stream.
//!
//! The chain and its arithmetic follow llama.cpp's default sampler chain
//! (`common/sampling.cpp`: penalties → top-k → top-p → min-p → temperature → dist), so that a
//! setting means the same thing here as in `llama-cli`. Two differences, both deliberate:
//! the random draw uses rand's `StdRng` rather than `std::mt19937` (identical seeds therefore give
//! identical text here, not the same text as llama.cpp), and ties between equal logits are always
//! broken towards the lower token id, so greedy decoding is reproducible.
//!
//! No step sorts the whole vocabulary (150k–260k entries per token): top-k is a streaming
//! selection, and without top-k the candidates are first cut at a logit threshold (the min-p bound,
//! or an adaptively lowered bound holding at least the top-p mass), and only they are sorted.

use std::collections::{HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings. Each filter has a neutral value that turns it off.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; `<= 0` selects greedy decoding (argmax after penalties).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest most-likely set whose probability reaches `top_p`; `>= 1` = off.
    pub top_p: f32,
    /// Drop tokens with probability below `min_p` × the top probability; `<= 0` = off.
    pub min_p: f32,
    /// Divide positive (multiply non-positive) logits of recent tokens by this; 1 = off.
    pub repeat_penalty: f32,
    /// How many of the most recent accepted tokens the penalties look at; 0 = penalties off.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token seen in the window; 0 = off.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit per occurrence in the window; 0 = off.
    pub frequency_penalty: f32,
    /// RNG seed; `None` draws one from the OS entropy source (see [`Sampler::seed`]).
    pub seed: Option<u64>,
}

impl Default for SamplerConfig {
    /// llama.cpp's `common_params_sampling` defaults.
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding: argmax, no penalties.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    fn penalties_active(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }

    fn top_p_active(&self) -> bool {
        self.top_p < 1.0
    }

    fn min_p_active(&self) -> bool {
        self.min_p > 0.0
    }
}

/// One surviving token during filtering.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Candidate {
    id: u32,
    logit: f32,
}

/// Rank order: higher logit first, then lower id. Total on non-NaN logits (NaN never becomes a
/// candidate).
fn rank(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// A sampler for one sequence: its settings, RNG and penalty history.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplerConfig,
    seed: u64,
    rng: StdRng,
    /// The last `repeat_last_n` accepted tokens, oldest first.
    history: VecDeque<u32>,
    /// Occurrences of each token in `history`.
    counts: HashMap<u32, u32>,
    /// Scratch reused across calls so sampling does not allocate per token.
    candidates: Vec<Candidate>,
    /// Unnormalised probabilities of `candidates` at the configured temperature.
    weights: Vec<f32>,
}

impl Sampler {
    /// Creates a sampler; with `cfg.seed == None` the seed is drawn from OS entropy.
    pub fn new(cfg: SamplerConfig) -> Self {
        let seed = cfg.seed.unwrap_or_else(|| StdRng::from_entropy().gen());
        Self {
            rng: StdRng::seed_from_u64(seed),
            seed,
            history: VecDeque::with_capacity(cfg.repeat_last_n.min(4096)),
            counts: HashMap::new(),
            candidates: Vec::new(),
            weights: Vec::new(),
            cfg,
        }
    }

    /// The settings this sampler was built with.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// The seed in use (the drawn one when the config left it `None`), so a run can be repeated.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Records a token (prompt or generated) in the penalty window. [`Sampler::sample`] does not
    /// record its own result: the caller accepts it, as with llama.cpp's `common_sampler_accept`,
    /// and decides whether prompt tokens count.
    pub fn accept(&mut self, token: u32) {
        let n = self.cfg.repeat_last_n;
        if n == 0 {
            return;
        }
        if self.history.len() == n {
            if let Some(old) = self.history.pop_front() {
                if let Some(c) = self.counts.get_mut(&old) {
                    *c -= 1;
                    if *c == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
        self.history.push_back(token);
        *self.counts.entry(token).or_insert(0) += 1;
    }

    /// Forgets the penalty history (the RNG state is kept).
    pub fn clear_history(&mut self) {
        self.history.clear();
        self.counts.clear();
    }

    /// Picks the next token from one row of logits (one entry per vocabulary id).
    ///
    /// The penalties are applied to `logits` in place; the rest of the chain works on a candidate
    /// list and leaves `logits` as penalised. Logits of `-inf` (masked tokens) and NaN are never
    /// chosen, unless every logit is such, in which case the result is token 0.
    ///
    /// # Panics
    /// If `logits` is empty or longer than `u32::MAX`.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        assert!(!logits.is_empty(), "sample: empty logits");
        assert!(
            u32::try_from(logits.len()).is_ok(),
            "sample: vocabulary exceeds u32"
        );
        self.apply_penalties(logits);
        if self.cfg.temperature <= 0.0 {
            return argmax(logits);
        }
        let Some(max) = max_logit(logits) else {
            return 0;
        };
        self.filter(logits, max);
        self.draw()
    }

    /// llama.cpp `llama_sampler_penalties_apply`: for each token in the window with count `c`,
    /// `logit = logit <= 0 ? logit * repeat : logit / repeat`, then
    /// `logit -= c * frequency + (c > 0) * presence`.
    fn apply_penalties(&self, logits: &mut [f32]) {
        if !self.cfg.penalties_active() {
            return;
        }
        for (&token, &count) in &self.counts {
            let Some(l) = logits.get_mut(token as usize) else {
                continue;
            };
            if *l <= 0.0 {
                *l *= self.cfg.repeat_penalty;
            } else {
                *l /= self.cfg.repeat_penalty;
            }
            *l -= count as f32 * self.cfg.frequency_penalty + self.cfg.presence_penalty;
        }
    }

    /// Fills `self.candidates` with the tokens that survive top-k, top-p and min-p, sorted by
    /// [`rank`] whenever top-k or top-p is active. `max` is the largest logit.
    fn filter(&mut self, logits: &[f32], max: f32) {
        let cfg = &self.cfg;
        let c = &mut self.candidates;
        // min-p as a logit bound: p >= min_p * p_max  <=>  logit >= max + ln(min_p).
        let min_p_floor = if cfg.min_p_active() {
            max + cfg.min_p.ln()
        } else {
            f32::MIN
        };
        if cfg.top_k > 0 && cfg.top_k < logits.len() {
            top_k_into(logits, cfg.top_k, c);
            if cfg.top_p_active() {
                // top-p sees the distribution over the top-k set, as in llama.cpp.
                let z = sum_exp(c.iter().map(|x| x.logit), max);
                cut_top_p(c, cfg.top_p, max, z);
            }
        } else if cfg.top_p_active() {
            let z = sum_exp(logits.iter().copied(), max);
            collect_top_p_superset(logits, max, z, cfg.top_p, min_p_floor, c);
            c.sort_unstable_by(rank);
            cut_top_p(c, cfg.top_p, max, z);
        } else {
            collect_above(logits, min_p_floor, c);
        }
        // min-p last: candidates never lose the max, so the bound above is the bound here too.
        c.retain(|x| x.logit >= min_p_floor);
    }

    /// Temperature, softmax over the candidates and a draw from the seeded RNG.
    fn draw(&mut self) -> u32 {
        let c = &self.candidates;
        let max = c.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.logit));
        let inv_t = 1.0 / self.cfg.temperature;
        self.weights.clear();
        self.weights
            .extend(c.iter().map(|x| ((x.logit - max) * inv_t).exp()));
        let total: f64 = self.weights.iter().map(|&w| w as f64).sum();
        let r = self.rng.gen::<f64>() * total;
        let mut acc = 0.0;
        for (x, &w) in c.iter().zip(&self.weights) {
            acc += w as f64;
            if r < acc {
                return x.id;
            }
        }
        // Rounding can leave r at the very top; the last candidate with weight owns that end.
        let last = self.weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
        c[last].id
    }
}

/// Largest non-NaN logit, or `None` if there is none above `-inf`.
fn max_logit(logits: &[f32]) -> Option<f32> {
    let m = logits
        .iter()
        .fold(f32::NEG_INFINITY, |m, &l| if l > m { l } else { m });
    (m > f32::NEG_INFINITY).then_some(m)
}

/// Index of the largest logit, ties to the lowest id; 0 if all are NaN or `-inf`.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_l = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_l {
            best = i;
            best_l = l;
        }
    }
    best as u32
}

/// `Σ exp(l − max)` in f64, skipping NaN.
fn sum_exp(logits: impl Iterator<Item = f32>, max: f32) -> f64 {
    logits
        .filter(|l| !l.is_nan())
        .map(|l| (l as f64 - max as f64).exp())
        .sum()
}

/// The `k` best tokens by [`rank`], sorted, into `out`, in one pass over `logits`.
///
/// A buffer of up to `4k` entries is compacted with `select_nth_unstable_by` whenever it fills;
/// after the first compaction only logits above the current k-th best are pushed at all, so most
/// of the vocabulary costs one comparison. Later ids lose ties, so equality is not pushed.
fn top_k_into(logits: &[f32], k: usize, out: &mut Vec<Candidate>) {
    out.clear();
    if k == 0 {
        return;
    }
    let cap = k.saturating_mul(4).max(64);
    let mut threshold = f32::NEG_INFINITY;
    for (i, &logit) in logits.iter().enumerate() {
        if logit > threshold {
            out.push(Candidate {
                id: i as u32,
                logit,
            });
            if out.len() >= cap {
                out.select_nth_unstable_by(k - 1, rank);
                out.truncate(k);
                threshold = out[k - 1].logit;
            }
        }
    }
    if out.len() > k {
        out.select_nth_unstable_by(k - 1, rank);
        out.truncate(k);
    }
    out.sort_unstable_by(rank);
}

/// Every token with `logit >= floor` (never NaN or `-inf`), in id order.
fn collect_above(logits: &[f32], floor: f32, out: &mut Vec<Candidate>) {
    out.clear();
    let floor = floor.max(f32::MIN);
    out.extend(
        logits
            .iter()
            .enumerate()
            .filter(|&(_, &l)| l >= floor)
            .map(|(i, &logit)| Candidate {
                id: i as u32,
                logit,
            }),
    );
}

/// Collects, unsorted, a set of the best tokens that surely contains top-p's answer: all tokens
/// above a bound `max − δ`, with δ doubled until their mass reaches `top_p`, but never below
/// `floor` (tokens under the min-p bound are dropped later anyway).
///
/// Every token outside the set ranks below every token inside it, so the set's sorted order is the
/// start of the full vocabulary's sorted order and top-p can be cut on it exactly.
fn collect_top_p_superset(
    logits: &[f32],
    max: f32,
    z: f64,
    top_p: f32,
    floor: f32,
    out: &mut Vec<Candidate>,
) {
    // A hair of margin so that summing in id order here and in rank order in `cut_top_p` cannot
    // disagree about whether the set suffices.
    let need = top_p as f64 * z * (1.0 + 1e-12);
    let mut delta = 8.0f32;
    loop {
        let bound = (max - delta).max(floor);
        collect_above(logits, bound, out);
        let mass = sum_exp(out.iter().map(|x| x.logit), max);
        if mass >= need || bound <= floor || out.len() == logits.len() {
            return;
        }
        delta *= 2.0;
    }
}

/// llama.cpp `llama_sampler_top_p_apply` on ranked candidates: keep the shortest prefix whose
/// probability (normaliser `z` over the basis distribution) reaches `top_p`.
fn cut_top_p(c: &mut Vec<Candidate>, top_p: f32, max: f32, z: f64) {
    let need = top_p as f64 * z;
    let mut cum = 0.0;
    for i in 0..c.len() {
        cum += (c[i].logit as f64 - max as f64).exp();
        if cum >= need {
            c.truncate(i + 1);
            return;
        }
    }
}

/// The `n` most likely tokens with their log-probabilities under `softmax(logits)`, most likely
/// first, ties to the lower id — the quantity llama.cpp reports as `logprobs`.
pub fn log_softmax_top_n(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let Some(max) = max_logit(logits) else {
        return Vec::new();
    };
    let log_z = max as f64 + sum_exp(logits.iter().copied(), max).ln();
    let mut top = Vec::new();
    top_k_into(logits, n.min(logits.len()), &mut top);
    top.into_iter()
        .map(|x| (x.id, (x.logit as f64 - log_z) as f32))
        .collect()
}

/// What [`StopMatcher::push`] releases.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopResult {
    /// Text that is safe to show: it cannot be part of a stop string.
    pub emit: String,
    /// A stop string was completed; `emit` ends just before it and generation should end.
    pub stopped: bool,
}

/// Finds stop strings in streamed text without ever showing them.
///
/// Text that might be the beginning of a stop string is held back until the next chunk decides it;
/// when a stop string completes, everything before it is released and the rest dropped. At the end
/// of a generation that did not stop, [`StopMatcher::finish`] releases what is still held.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored.
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has been seen; afterwards every push emits nothing.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Feeds the next piece of decoded text.
    pub fn push(&mut self, text: &str) -> StopResult {
        if self.stopped {
            return StopResult {
                emit: String::new(),
                stopped: true,
            };
        }
        self.held.push_str(text);
        // The earliest complete stop string wins.
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            self.held.truncate(at);
            self.stopped = true;
            return StopResult {
                emit: std::mem::take(&mut self.held),
                stopped: true,
            };
        }
        let keep = self.partial_suffix_len();
        let emit = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        StopResult {
            emit,
            stopped: false,
        }
    }

    /// Releases any held text at the end of a generation (nothing if a stop string was found).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop string. The
    /// suffix starts on a char boundary because a stop string's first byte is a UTF-8 lead byte.
    fn partial_suffix_len(&self) -> usize {
        let held = self.held.as_bytes();
        let longest = self.stops.iter().map(|s| s.len() - 1).max().unwrap_or(0);
        (1..=longest.min(held.len()))
            .rev()
            .find(|&n| {
                let tail = &held[held.len() - n..];
                self.stops.iter().any(|s| s.as_bytes().starts_with(tail))
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference filter: full sort, then top-k, top-p, min-p exactly as llama.cpp words them.
    fn reference_filter(logits: &[f32], cfg: &SamplerConfig) -> Vec<u32> {
        let mut c: Vec<Candidate> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| **l > f32::NEG_INFINITY)
            .map(|(i, &logit)| Candidate {
                id: i as u32,
                logit,
            })
            .collect();
        c.sort_by(rank);
        if cfg.top_k > 0 {
            c.truncate(cfg.top_k);
        }
        let max = c[0].logit;
        if cfg.top_p < 1.0 {
            let z = sum_exp(c.iter().map(|x| x.logit), max);
            cut_top_p(&mut c, cfg.top_p, max, z);
        }
        if cfg.min_p > 0.0 {
            let floor = max + cfg.min_p.ln();
            c.retain(|x| x.logit >= floor);
        }
        let mut ids: Vec<u32> = c.iter().map(|x| x.id).collect();
        ids.sort_unstable();
        ids
    }

    fn random_logits(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
    }

    #[test]
    fn filter_matches_full_sort_reference() {
        let mut rng = StdRng::seed_from_u64(7);
        for trial in 0..300 {
            let n = [5, 50, 1000, 5000][trial % 4];
            let scale = [1.0, 4.0, 20.0][trial % 3];
            let mut logits = random_logits(&mut rng, n, scale);
            if trial % 5 == 0 {
                // Ties and masked tokens.
                for l in logits.iter_mut().step_by(3) {
                    *l = (*l).round();
                }
                logits[n / 2] = f32::NEG_INFINITY;
            }
            let cfg = SamplerConfig {
                top_k: [0, 1, 3, 40, 10_000][trial % 5],
                top_p: [1.0, 0.95, 0.5, 0.1, 0.999][trial % 7 % 5],
                min_p: [0.0, 0.05, 0.3][trial % 11 % 3],
                seed: Some(0),
                ..SamplerConfig::default()
            };
            let mut s = Sampler::new(cfg.clone());
            let max = max_logit(&logits).unwrap();
            s.filter(&logits, max);
            let mut got: Vec<u32> = s.candidates.iter().map(|x| x.id).collect();
            got.sort_unstable();
            assert_eq!(
                got,
                reference_filter(&logits, &cfg),
                "trial {trial}, {cfg:?}"
            );
        }
    }

    #[test]
    fn top_k_selection_keeps_best_with_low_id_ties() {
        let logits = [1.0, 3.0, 3.0, 2.0, 3.0, f32::NAN, 0.5];
        let mut out = Vec::new();
        top_k_into(&logits, 2, &mut out);
        assert_eq!(out.iter().map(|x| x.id).collect::<Vec<_>>(), [1, 2]);
        // Large vocab with the buffer compacting many times.
        let big: Vec<f32> = (0..100_000)
            .map(|i| ((i * 7919) % 100_003) as f32)
            .collect();
        top_k_into(&big, 5, &mut out);
        let mut sorted: Vec<(usize, f32)> = big.iter().copied().enumerate().collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let want: Vec<u32> = sorted[..5].iter().map(|x| x.0 as u32).collect();
        assert_eq!(out.iter().map(|x| x.id).collect::<Vec<_>>(), want);
    }
}
