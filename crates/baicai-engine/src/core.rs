//! The engine thread: `step() = schedule → forward → postprocess`, over every live sequence.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use baicai_models::{CausalLm, KvCache, Logits, SeqInput};
use baicai_tokenizer::Tokenizer;

use crate::cost::{split_by_tokens, Accounting, CostModel};
use crate::energy::EnergyMeter;
use crate::engine::{Delta, Done, EngineConfig, Event, Request, Shared, Usage};
use crate::generation::{Generation, GenerationSpec};
use crate::prefix::PrefixCache;
use crate::scheduler::{Host, Plan, Scheduler, SchedulerConfig, SeqId, SeqState};
use crate::session::FinishReason;

/// One request's sequence and its generation state.
struct Seq {
    req: Request,
    /// Prompt followed by the generated tokens.
    tokens: Vec<u32>,
    cache: Option<KvCache>,
    gen: Generation,
    cached_tokens: usize,
    /// This sequence's share of the steps it was in (see [`Core::account`]).
    energy_joules: f64,
    cost: f64,
}

/// The engine thread's state.
pub(crate) struct Core {
    model: Arc<dyn CausalLm>,
    tokenizer: Arc<Tokenizer>,
    cfg: EngineConfig,
    shared: Arc<Shared>,
    sched: Scheduler,
    states: HashMap<SeqId, SeqState>,
    seqs: HashMap<SeqId, Seq>,
    prefix: PrefixCache,
    next_id: SeqId,
    meter: EnergyMeter,
    cost: CostModel,
    /// Seconds per token of recent steps with many tokens (see [`Core::tune_prefill`]).
    secs_per_token: Option<f64>,
}

/// Target duration of the prompt part of a step that also decodes.
const PREFILL_STEP_SECONDS: f64 = 0.5;
/// Steps with at least this many tokens measure the time per prompt token.
const PREFILL_SAMPLE_TOKENS: usize = 32;
/// Prompt chunks are not cut below this (smaller matmul batches lose efficiency).
const MIN_PREFILL_CHUNK: usize = 16;

/// The host side of scheduling: the prefix cache and the sequences' caches.
struct CoreHost<'a> {
    prefix: &'a mut PrefixCache,
    seqs: &'a mut HashMap<SeqId, Seq>,
    model: &'a dyn CausalLm,
    n_ctx: usize,
}

impl Host for CoreHost<'_> {
    fn reclaim(&mut self, blocks: usize) -> usize {
        self.prefix.evict(blocks)
    }

    fn cached_prefix(&mut self, id: SeqId) -> usize {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return 0;
        };
        let cap = cache_capacity(&seq.req, seq.tokens.len(), self.n_ctx);
        let mut cache = self.model.new_cache(cap);
        let limit = seq.tokens.len().saturating_sub(1);
        let n = self.prefix.copy_longest(&seq.tokens[..limit], &mut cache);
        if n > 0 {
            seq.cache = Some(cache);
        }
        n
    }
}

/// Positions a sequence's cache is created for: its prompt and every token it may generate,
/// within the context.
fn cache_capacity(req: &Request, len: usize, n_ctx: usize) -> usize {
    (req.prompt.len() + req.max_tokens).max(len).min(n_ctx)
}

impl Core {
    pub(crate) fn new(
        model: Arc<dyn CausalLm>,
        tokenizer: Arc<Tokenizer>,
        cfg: EngineConfig,
        shared: Arc<Shared>,
        accounting: Accounting,
    ) -> Core {
        let kv_bytes_per_token = model.new_cache(1).bytes_per_token().max(1);
        let block_bytes = (kv_bytes_per_token * cfg.block_tokens.max(1)) as u64;
        let total_blocks = (cfg.kv_cache_bytes / block_bytes).max(1) as usize;
        let sched = Scheduler::new(SchedulerConfig {
            max_seqs: cfg.max_seqs.max(1),
            max_batch_tokens: cfg.max_batch_tokens.max(1),
            block_tokens: cfg.block_tokens.max(1),
            total_blocks,
        });
        Core {
            model,
            tokenizer,
            prefix: PrefixCache::new(cfg.block_tokens.max(1)),
            cfg,
            shared,
            sched,
            states: HashMap::new(),
            seqs: HashMap::new(),
            next_id: 0,
            meter: EnergyMeter::new(accounting.energy),
            cost: accounting.cost,
            secs_per_token: None,
        }
    }

    /// KV blocks in the budget.
    pub(crate) fn blocks_total(&self) -> usize {
        self.sched.free_blocks()
    }

    /// Limits the context to what the KV budget holds, so that every request that fits the
    /// context fits the budget alone; returns the context.
    pub(crate) fn clamp_ctx(&mut self) -> usize {
        let tokens = self.sched.free_blocks() * self.cfg.block_tokens.max(1);
        self.cfg.n_ctx = self.cfg.n_ctx.min(tokens).max(1);
        self.cfg.n_ctx
    }

    /// Runs until shutdown is requested and every submitted request has ended.
    pub(crate) fn run(mut self, rx: Receiver<Request>) {
        loop {
            if self.sched.is_idle() {
                if self.shared.shutting_down.load(Ordering::SeqCst)
                    && self.shared.waiting.load(Ordering::SeqCst) == 0
                {
                    break;
                }
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(req) => self.admit(req),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            while let Ok(req) = rx.try_recv() {
                self.admit(req);
            }
            // A bug on a data path must not take the server down: the requests of a step that
            // panicked end with an error, and the engine goes on serving new ones.
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()));
            if stepped.is_err() {
                let live: Vec<SeqId> = self.seqs.keys().copied().collect();
                for id in live {
                    self.finish(
                        id,
                        Some(Err(
                            "internal error in the engine; the request was ended".into()
                        )),
                    );
                }
            }
        }
    }

    /// Takes a submitted request in as a waiting sequence.
    fn admit(&mut self, mut req: Request) {
        self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
        let id = self.next_id;
        self.next_id += 1;
        let spec = GenerationSpec {
            sampler: req.sampler.clone(),
            max_tokens: req.max_tokens,
            stop: req.stop.clone(),
            stop_at_eog: req.stop_at_eog,
            logprobs: req.logprobs,
        };
        let seq = Seq {
            tokens: req.prompt.clone(),
            cache: None,
            gen: Generation::new(spec, &req.prompt).with_constraint(req.constraint.take()),
            cached_tokens: 0,
            energy_joules: 0.0,
            cost: 0.0,
            req,
        };
        self.states.insert(
            id,
            SeqState {
                len: seq.tokens.len(),
                ..SeqState::default()
            },
        );
        self.seqs.insert(id, seq);
        self.sched.add(id);
    }

    /// One step: drop cancelled sequences, plan, run the model, sample and stream.
    fn step(&mut self) {
        let cancelled: Vec<SeqId> = self
            .seqs
            .iter()
            .filter(|(_, s)| s.req.sink.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in cancelled {
            self.finish(id, None);
        }
        let mut host = CoreHost {
            prefix: &mut self.prefix,
            seqs: &mut self.seqs,
            model: self.model.as_ref(),
            n_ctx: self.cfg.n_ctx,
        };
        let plan = self.sched.schedule(&mut self.states, &mut host);
        self.apply_plan_caches(&plan);
        if !plan.items.is_empty() {
            self.run_plan(&plan);
        }
        self.publish_stats();
    }

    /// Drops the caches of preempted sequences (and of queued ones whose prefix was not used),
    /// and creates those of newly admitted ones.
    fn apply_plan_caches(&mut self, plan: &Plan) {
        for id in &plan.preempted {
            if let Some(s) = self.seqs.get_mut(id) {
                s.cache = None;
            }
        }
        for (id, s) in self.seqs.iter_mut() {
            let st = self.states[id];
            if st.computed == 0 && st.blocks == 0 {
                s.cache = None;
            }
        }
        for id in &plan.admitted {
            let st = self.states[id];
            let n_ctx = self.cfg.n_ctx;
            if let Some(s) = self.seqs.get_mut(id) {
                if s.cache.is_none() {
                    let cap = cache_capacity(&s.req, s.tokens.len(), n_ctx);
                    s.cache = Some(self.model.new_cache(cap));
                }
                if st.computed > 0 {
                    s.cached_tokens = s.cached_tokens.max(st.computed.min(s.req.prompt.len()));
                    let mut g = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                    g.prefix_hit_tokens += st.computed as u64;
                }
            }
        }
    }

    /// Runs the plan's tokens in one forward pass and postprocesses every sequence in it.
    fn run_plan(&mut self, plan: &Plan) {
        let mut caches: Vec<(SeqId, usize, KvCache)> = Vec::with_capacity(plan.items.len());
        let mut prompt_tokens = 0u64;
        for &(id, n) in &plan.items {
            let s = self.seqs.get_mut(&id).expect("planned sequence exists");
            let cache = s.cache.take().expect("planned sequence has a cache");
            // Of tokens from..from + n, those inside the prompt.
            let from = cache.len();
            prompt_tokens += s.req.prompt.len().saturating_sub(from).min(n) as u64;
            caches.push((id, n, cache));
        }
        let mark = self.meter.start();
        let started = Instant::now();
        let result = {
            let mut inputs: Vec<SeqInput> = Vec::with_capacity(caches.len());
            for (id, n, cache) in caches.iter_mut() {
                let s = &self.seqs[id];
                let from = cache.len();
                inputs.push(SeqInput {
                    tokens: &s.tokens[from..from + *n],
                    cache,
                    logits: Logits::Last,
                });
            }
            self.model.forward_batch(&mut inputs)
        };
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                for (id, _, cache) in caches {
                    if let Some(s) = self.seqs.get_mut(&id) {
                        s.cache = Some(cache);
                    }
                    self.finish(id, Some(Err(format!("model error: {e}"))));
                }
                return;
            }
        };
        self.account(plan, &mark);
        self.tune_prefill(plan, started.elapsed());
        {
            let mut g = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
            g.prompt_tokens += prompt_tokens;
            g.steps += 1;
        }
        for ((id, n, cache), mut lg) in caches.into_iter().zip(logits) {
            let len = cache.len();
            if let Some(st) = self.states.get_mut(&id) {
                st.computed += n;
            }
            let caught_up = {
                let s = self.seqs.get_mut(&id).expect("planned sequence exists");
                s.cache = Some(cache);
                len == s.tokens.len()
            };
            if caught_up {
                self.sample(id, &mut lg);
            }
        }
    }

    /// Charges the forward pass begun at `mark` to the plan's sequences, split by the tokens
    /// each computed, and adds it to the totals. The weights are read once per step.
    fn account(&mut self, plan: &Plan, mark: &crate::energy::Mark) {
        let energy = self.meter.finish(mark, self.model.weight_bytes_per_token());
        let cost = self.cost.cost(&energy, SystemTime::now());
        let tokens: Vec<usize> = plan.items.iter().map(|&(_, n)| n).collect();
        let shares = split_by_tokens(1.0, &tokens);
        for (&(id, _), share) in plan.items.iter().zip(shares) {
            if let Some(s) = self.seqs.get_mut(&id) {
                s.energy_joules += energy.joules * share;
                s.cost += cost * share;
            }
        }
        let mut g = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        g.energy_joules += energy.joules;
        g.cost += cost;
        g.busy_seconds += energy.seconds;
    }

    /// Sizes the prompt tokens of a step that also decodes from the time per token of steps with
    /// many tokens (compute bound, as prompt processing is), so that such a step takes about
    /// [`PREFILL_STEP_SECONDS`]: a long prompt is then spread over steps that keep the streams
    /// flowing (on a CPU a 512-token chunk takes seconds: 17 s for DeepSeek-V2-Lite here).
    fn tune_prefill(&mut self, plan: &Plan, elapsed: Duration) {
        let tokens: usize = plan.items.iter().map(|&(_, n)| n).sum();
        if tokens < PREFILL_SAMPLE_TOKENS {
            return;
        }
        let per_token = elapsed.as_secs_f64() / tokens as f64;
        self.secs_per_token = Some(match self.secs_per_token {
            Some(s) => 0.7 * s + 0.3 * per_token,
            None => per_token,
        });
        if let Some(s) = self.secs_per_token {
            let cap = (PREFILL_STEP_SECONDS / s.max(1e-6)) as usize;
            self.sched.set_prefill_cap(cap.max(MIN_PREFILL_CHUNK));
        }
    }

    /// Samples the next token of `id` from `logits`, streams it, and ends the sequence when it
    /// is done.
    fn sample(&mut self, id: SeqId, logits: &mut [f32]) {
        let s = self.seqs.get_mut(&id).expect("sampled sequence exists");
        let room = s.tokens.len() + 1 < self.cfg.n_ctx;
        let out = s.gen.step(&self.tokenizer, logits, room);
        let mut open = true;
        if let Some(t) = out.token {
            s.tokens.push(t.id);
            if let Some(st) = self.states.get_mut(&id) {
                st.len += 1;
            }
            let delta = Delta {
                text: out.text,
                tokens: vec![t],
            };
            open = s.req.sink.send(Event::Delta(delta));
            let mut g = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
            g.generated_tokens += 1;
        }
        match (open, out.finish) {
            (false, _) => self.finish(id, None),
            (true, Some(f)) => self.finish(id, Some(Ok(f))),
            (true, None) => {}
        }
    }

    /// Ends a sequence: flushes held-back text, sends `Done` (or the error; nothing when
    /// cancelled), frees its blocks and offers its cache to the prefix cache.
    fn finish(&mut self, id: SeqId, outcome: Option<Result<FinishReason, String>>) {
        let Some(mut s) = self.seqs.remove(&id) else {
            return;
        };
        self.sched.remove(id, &mut self.states);
        self.states.remove(&id);
        match outcome {
            Some(Ok(finish)) => {
                let text = s.gen.flush();
                if !text.is_empty() {
                    s.req.sink.send(Event::Delta(Delta {
                        text,
                        tokens: Vec::new(),
                    }));
                }
                s.req.sink.send(Event::Done(Done {
                    finish,
                    usage: Usage {
                        prompt_tokens: s.req.prompt.len(),
                        completion_tokens: s.gen.generated(),
                        cached_tokens: s.cached_tokens,
                        energy_joules: s.energy_joules,
                        energy_source: self.meter.source(),
                        cost: s.cost,
                        currency: self.cost.currency(),
                    },
                }));
            }
            Some(Err(msg)) => {
                s.req.sink.send(Event::Error(msg));
            }
            None => {}
        }
        if let Some(cache) = s.cache.take() {
            let n = cache.len();
            let blocks = self.sched.blocks_for(n);
            if n >= self.cfg.block_tokens && self.sched.take_blocks(blocks) {
                let freed = self.prefix.insert(s.tokens[..n].to_vec(), cache, blocks);
                self.sched.give_blocks(freed);
            }
        }
    }

    /// Publishes gauges for [`crate::engine::EngineHandle::stats`].
    fn publish_stats(&mut self) {
        let used: usize = self.states.values().map(|s| s.blocks).sum();
        let expert_load = self
            .model
            .expert_load()
            .map(|l| l.into_iter().map(|e| e.tokens).collect());
        let mut g = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        g.running = self.sched.running();
        g.kv_blocks_used = used;
        g.prefix_cache_blocks = self.prefix.blocks();
        g.kv_blocks_total = used + self.prefix.blocks() + self.sched.free_blocks();
        g.preemptions = self.sched.preemptions();
        g.waiting = self.sched.waiting();
        g.energy_source = self.meter.source();
        g.currency = self.cost.currency();
        self.shared
            .queued
            .store(self.sched.waiting(), Ordering::SeqCst);
        if expert_load.is_some() {
            g.expert_load = expert_load;
        }
    }
}
