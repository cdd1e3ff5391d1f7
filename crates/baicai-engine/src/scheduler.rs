//! The continuous-batching scheduler, as plain data: sequences in, a [`Plan`] out.
//!
//! There is no prefill or decode mode. A sequence holds `len` tokens (prompt plus generated) of
//! which `computed` have keys and values in its cache; each step it computes some of the rest
//! (vLLM v1's rule: a request's computed tokens catch up with its tokens). A running sequence
//! that has caught up but for its newest token gets one decode token; one still processing its
//! prompt gets a chunk. Running sequences come first, oldest first, under a token budget per step,
//! so a long prompt is cut into chunks and never stalls the streams already running (while any
//! sequence decodes, prompt tokens per step are further capped, by the engine, to what keeps a
//! step short: [`Scheduler::set_prefill_cap`]); waiting
//! sequences are admitted in arrival order while the budget, the sequence limit and the KV
//! blocks allow.
//!
//! KV memory is counted in blocks of `block_tokens` tokens. When a running sequence needs a
//! block and none is free, the host is first asked to reclaim idle blocks (the prefix cache's);
//! if that is not enough, the newest running sequence is preempted: its blocks are freed, it goes
//! back to the front of the queue and is recomputed when it is admitted again. A sequence that
//! fits in the whole budget alone therefore always completes.

use std::collections::{HashMap, VecDeque};

/// Identifies a sequence.
pub type SeqId = u64;

/// What the scheduler knows of a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeqState {
    /// Tokens the sequence holds (prompt plus generated).
    pub len: usize,
    /// Tokens whose keys and values are in its cache.
    pub computed: usize,
    /// KV blocks it holds.
    pub blocks: usize,
}

/// Limits of the scheduler.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    pub max_seqs: usize,
    pub max_batch_tokens: usize,
    pub block_tokens: usize,
    pub total_blocks: usize,
}

/// One step's work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sequences to run and how many of their tokens (from `computed` on), in batch order.
    pub items: Vec<(SeqId, usize)>,
    /// Sequences preempted this step (their caches must be dropped; they will be recomputed).
    pub preempted: Vec<SeqId>,
    /// Sequences admitted from the queue this step (their caches must be created).
    pub admitted: Vec<SeqId>,
}

/// What the scheduler asks of its host.
pub trait Host {
    /// Frees up to `blocks` idle blocks (e.g. evicts prefix-cache entries), returning how many
    /// were freed.
    fn reclaim(&mut self, blocks: usize) -> usize;
    /// On admission: how many of the sequence's first tokens the host can provide from a cache
    /// (at most `len - 1`, so at least one token is computed to produce logits); the blocks
    /// they need are taken by the scheduler.
    fn cached_prefix(&mut self, id: SeqId) -> usize;
}

/// The scheduler's queues and block count.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    free_blocks: usize,
    waiting: VecDeque<SeqId>,
    running: Vec<SeqId>,
    preemptions: u64,
    /// Prompt tokens per step while some sequence decodes (see [`Scheduler::set_prefill_cap`]).
    prefill_cap: usize,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Scheduler {
        Scheduler {
            cfg,
            free_blocks: cfg.total_blocks,
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemptions: 0,
            prefill_cap: cfg.max_batch_tokens,
        }
    }

    /// Limits the prompt tokens computed in a step while some sequence is decoding (by default
    /// the whole token budget); with no sequence decoding, prompts get the whole budget.
    pub fn set_prefill_cap(&mut self, tokens: usize) {
        self.prefill_cap = tokens.clamp(1, self.cfg.max_batch_tokens.max(1));
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.cfg.block_tokens)
    }

    /// Queues a new sequence (its state must be in the map passed to [`Scheduler::schedule`]).
    pub fn add(&mut self, id: SeqId) {
        self.waiting.push_back(id);
    }

    /// Removes a sequence (finished or cancelled), freeing its blocks.
    pub fn remove(&mut self, id: SeqId, seqs: &mut HashMap<SeqId, SeqState>) {
        self.waiting.retain(|&w| w != id);
        self.running.retain(|&r| r != id);
        if let Some(s) = seqs.get_mut(&id) {
            self.free_blocks += s.blocks;
            s.blocks = 0;
        }
    }

    /// Takes `n` blocks for an idle holder (the prefix cache); `false` when fewer are free.
    pub fn take_blocks(&mut self, n: usize) -> bool {
        if n > self.free_blocks {
            return false;
        }
        self.free_blocks -= n;
        true
    }

    /// Returns `n` blocks taken with [`Scheduler::take_blocks`] or moved from a sequence.
    pub fn give_blocks(&mut self, n: usize) {
        self.free_blocks += n;
    }

    pub fn free_blocks(&self) -> usize {
        self.free_blocks
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Grows `id` to hold `tokens` tokens' blocks, reclaiming idle blocks if needed.
    fn grow(&mut self, st: &mut SeqState, tokens: usize, host: &mut dyn Host) -> bool {
        let need = self.blocks_for(tokens).saturating_sub(st.blocks);
        if need > self.free_blocks {
            let freed = host.reclaim(need - self.free_blocks);
            self.free_blocks += freed;
        }
        if need > self.free_blocks {
            return false;
        }
        self.free_blocks -= need;
        st.blocks += need;
        true
    }

    /// Plans one step.
    pub fn schedule(&mut self, seqs: &mut HashMap<SeqId, SeqState>, host: &mut dyn Host) -> Plan {
        let mut plan = Plan::default();
        let mut budget = self.cfg.max_batch_tokens;
        // While any sequence is decoding, prompt tokens are limited per step, so that a long
        // prompt is spread over steps short enough not to stall the streams.
        let decoding = self.running.iter().any(|id| {
            let s = seqs[id];
            s.len - s.computed == 1
        });
        let mut prefill_left = if decoding {
            self.prefill_cap.max(1)
        } else {
            usize::MAX
        };
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let mut st = seqs[&id];
            let want = st.len - st.computed;
            let n = if want > 1 {
                want.min(budget).min(prefill_left)
            } else {
                want.min(budget)
            };
            if n == 0 {
                i += 1;
                continue;
            }
            // Preempt the newest sequences until this one's blocks fit (or it is the newest).
            let target = st.computed + n;
            let mut fits = self.grow(&mut st, target, host);
            while !fits && self.running.len() > i + 1 {
                let victim = self.running.pop().expect("non-empty");
                self.preempt(victim, seqs, &mut plan);
                fits = self.grow(&mut st, target, host);
            }
            if !fits {
                // Even alone it does not fit now: preempt it too and retry later.
                seqs.insert(id, st);
                self.running.remove(i);
                self.preempt(id, seqs, &mut plan);
                continue;
            }
            seqs.insert(id, st);
            plan.items.push((id, n));
            budget -= n;
            if want > 1 {
                prefill_left -= n;
            }
            i += 1;
        }
        while budget > 0 && prefill_left > 0 && self.running.len() < self.cfg.max_seqs {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let mut st = seqs[&id];
            if st.computed == 0 && st.blocks == 0 {
                let cached = host.cached_prefix(id).min(st.len.saturating_sub(1));
                if cached > 0 && self.grow(&mut st, cached, host) {
                    st.computed = cached;
                }
            }
            let n = (st.len - st.computed).min(budget).min(prefill_left);
            let target = st.computed + n;
            if !self.grow(&mut st, target, host) {
                // Admission never preempts a running sequence; the host drops any prefix it
                // provided when the sequence is admitted later (it asks again).
                self.free_blocks += st.blocks;
                st.blocks = 0;
                st.computed = 0;
                seqs.insert(id, st);
                break;
            }
            self.waiting.pop_front();
            seqs.insert(id, st);
            self.running.push(id);
            plan.admitted.push(id);
            plan.items.push((id, n));
            budget -= n;
            prefill_left -= n;
        }
        plan
    }

    fn preempt(&mut self, id: SeqId, seqs: &mut HashMap<SeqId, SeqState>, plan: &mut Plan) {
        if let Some(s) = seqs.get_mut(&id) {
            self.free_blocks += s.blocks;
            s.blocks = 0;
            s.computed = 0;
        }
        plan.items.retain(|&(i, _)| i != id);
        plan.admitted.retain(|&i| i != id);
        plan.preempted.push(id);
        self.waiting.push_front(id);
        self.preemptions += 1;
    }
}
