//! Time of one batched decode step (B sequences, one token each, at a context of P tokens) for
//! B = 1, 2, 4, 8, 16: what a serving step costs as the batch grows.
//!
//! `cargo run --release -p baicai-models --example batch_decode -- MODEL [P]`

use std::sync::Arc;
use std::time::Instant;

use baicai_models::{KvCache, Logits, SeqInput};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: batch_decode MODEL [P]");
    let p: usize = args.get(2).map_or(100, |s| s.parse().expect("context"));
    let g = Arc::new(baicai_gguf::Gguf::open(std::path::Path::new(path)).expect("open"));
    let m = baicai_models::load(g).expect("load");
    let prompt: Vec<u32> = (0..p as u32).map(|i| i * 31 % 1000 + 10).collect();
    for b in [1usize, 2, 4, 8, 16] {
        let mut caches: Vec<KvCache> = (0..b)
            .map(|_| {
                let mut c = m.new_cache(p + 64);
                m.forward(&prompt, &mut c, Logits::Last).expect("prefill");
                c
            })
            .collect();
        let steps = 16;
        let t0 = Instant::now();
        for s in 0..steps {
            let toks: Vec<[u32; 1]> = (0..b).map(|i| [(s * 7 + i) as u32 + 20]).collect();
            let mut seqs: Vec<SeqInput> = caches
                .iter_mut()
                .zip(&toks)
                .map(|(c, t)| SeqInput {
                    tokens: t,
                    cache: c,
                    logits: Logits::Last,
                })
                .collect();
            m.forward_batch(&mut seqs).expect("step");
        }
        let per_step = t0.elapsed().as_secs_f64() / steps as f64;
        println!(
            "batch {b:>2}: {:.1} ms per step, {:.1} tok/s",
            per_step * 1e3,
            b as f64 / per_step
        );
    }
}
