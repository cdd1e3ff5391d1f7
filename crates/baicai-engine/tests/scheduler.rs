//! The scheduler as plain data, without a model (vLLM v1's scheduler tests): feed it sequences
//! and a block budget, assert the plans it returns.

use std::collections::HashMap;

use baicai_engine::scheduler::{Host, Plan, Scheduler, SchedulerConfig, SeqId, SeqState};

/// A host with `idle` reclaimable blocks and fixed cached prefixes.
#[derive(Default)]
struct FakeHost {
    idle: usize,
    prefixes: HashMap<SeqId, usize>,
}

impl Host for FakeHost {
    fn reclaim(&mut self, blocks: usize) -> usize {
        let n = blocks.min(self.idle);
        self.idle -= n;
        n
    }
    fn cached_prefix(&mut self, id: SeqId) -> usize {
        self.prefixes.get(&id).copied().unwrap_or(0)
    }
}

fn sched(max_seqs: usize, budget: usize, blocks: usize) -> Scheduler {
    Scheduler::new(SchedulerConfig {
        max_seqs,
        max_batch_tokens: budget,
        block_tokens: 4,
        total_blocks: blocks,
    })
}

fn add(s: &mut Scheduler, seqs: &mut HashMap<SeqId, SeqState>, id: SeqId, len: usize) {
    seqs.insert(
        id,
        SeqState {
            len,
            ..Default::default()
        },
    );
    s.add(id);
}

/// Applies a plan as the engine does: computed tokens advance; a sequence that caught up gets
/// one more token (a decode step).
fn run(plan: &Plan, seqs: &mut HashMap<SeqId, SeqState>) {
    for &(id, n) in &plan.items {
        let st = seqs.get_mut(&id).unwrap();
        st.computed += n;
        if st.computed == st.len {
            st.len += 1;
        }
    }
}

#[test]
fn long_prompts_are_chunked_and_running_decodes_go_first() {
    let (mut s, mut seqs, mut host) = (sched(8, 16, 100), HashMap::new(), FakeHost::default());
    add(&mut s, &mut seqs, 1, 3);
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.items, vec![(1, 3)]);
    assert_eq!(p.admitted, vec![1]);
    run(&p, &mut seqs);
    add(&mut s, &mut seqs, 2, 40);
    // Sequence 1 decodes one token; sequence 2's prompt gets the rest of the budget.
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.items, vec![(1, 1), (2, 15)]);
    run(&p, &mut seqs);
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.items, vec![(1, 1), (2, 15)]);
    run(&p, &mut seqs);
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.items, vec![(1, 1), (2, 10)]);
    run(&p, &mut seqs);
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.items, vec![(1, 1), (2, 1)]);
}

#[test]
fn the_sequence_limit_holds_requests_in_the_queue() {
    let (mut s, mut seqs, mut host) = (sched(2, 64, 100), HashMap::new(), FakeHost::default());
    for id in 0..4 {
        add(&mut s, &mut seqs, id, 5);
    }
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.items, vec![(0, 5), (1, 5)]);
    assert_eq!((s.running(), s.waiting()), (2, 2));
    s.remove(0, &mut seqs);
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.admitted, vec![2]);
}

#[test]
fn out_of_blocks_the_newest_is_preempted_and_its_blocks_freed() {
    // 4 blocks of 4 tokens: two sequences of 8 tokens take 2 blocks each.
    let (mut s, mut seqs, mut host) = (sched(8, 64, 4), HashMap::new(), FakeHost::default());
    add(&mut s, &mut seqs, 1, 8);
    add(&mut s, &mut seqs, 2, 8);
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.items, vec![(1, 8), (2, 8)]);
    assert_eq!(s.free_blocks(), 0);
    run(&p, &mut seqs);
    // Each now needs a third block for its 9th token.
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.preempted, vec![2]);
    assert_eq!(p.items, vec![(1, 1)]);
    assert_eq!(
        seqs[&2],
        SeqState {
            len: 9,
            computed: 0,
            blocks: 0
        }
    );
    assert_eq!(s.preemptions(), 1);
    // The preempted sequence waits at the front and is recomputed once blocks are free.
    s.remove(1, &mut seqs);
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.items, vec![(2, 9)]);
    assert_eq!(p.admitted, vec![2]);
}

#[test]
fn idle_blocks_are_reclaimed_before_anything_is_preempted() {
    let (mut s, mut seqs) = (sched(8, 64, 4), HashMap::new());
    let mut host = FakeHost {
        idle: 2,
        ..Default::default()
    };
    assert!(s.take_blocks(2)); // held by the prefix cache
    add(&mut s, &mut seqs, 1, 16);
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.items, vec![(1, 16)]);
    assert!(p.preempted.is_empty());
    assert_eq!(host.idle, 0);
}

#[test]
fn admission_uses_a_cached_prefix_but_computes_at_least_one_token() {
    let (mut s, mut seqs, mut host) = (sched(8, 64, 100), HashMap::new(), FakeHost::default());
    host.prefixes.insert(1, 12);
    host.prefixes.insert(2, 50);
    add(&mut s, &mut seqs, 1, 20);
    add(&mut s, &mut seqs, 2, 10);
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.items, vec![(1, 8), (2, 1)]);
    assert_eq!(seqs[&1].computed, 12);
    assert_eq!(seqs[&2].computed, 9);
}

#[test]
fn admission_never_preempts_and_waits_for_blocks() {
    let (mut s, mut seqs, mut host) = (sched(8, 64, 3), HashMap::new(), FakeHost::default());
    add(&mut s, &mut seqs, 1, 8);
    add(&mut s, &mut seqs, 2, 8);
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.items, vec![(1, 8)]);
    assert!(p.preempted.is_empty());
    assert_eq!((s.running(), s.waiting()), (1, 1));
    assert_eq!(seqs[&2].blocks, 0);
}

#[test]
fn while_sequences_decode_prompts_get_only_the_prefill_cap() {
    let (mut s, mut seqs, mut host) = (sched(8, 64, 100), HashMap::new(), FakeHost::default());
    s.set_prefill_cap(10);
    // Nothing decodes yet: a prompt gets the whole budget.
    add(&mut s, &mut seqs, 1, 40);
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.items, vec![(1, 40)]);
    run(&p, &mut seqs);
    // Sequence 1 decodes: the new prompts share 10 tokens a step.
    add(&mut s, &mut seqs, 2, 25);
    add(&mut s, &mut seqs, 3, 5);
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.items, vec![(1, 1), (2, 10)]);
    run(&p, &mut seqs);
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.items, vec![(1, 1), (2, 10)]);
    run(&p, &mut seqs);
    let p = s.schedule(&mut seqs, &mut host);
    assert_eq!(p.items, vec![(1, 1), (2, 5), (3, 5)]);
}
