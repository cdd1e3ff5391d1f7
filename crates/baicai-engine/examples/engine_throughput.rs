//! Aggregate generation throughput of the serving engine without HTTP: C concurrent greedy
//! requests of a fixed prompt length and generated length, for each C given.
//!
//! `cargo run --release -p baicai-engine --example engine_throughput -- MODEL [C,C,...] [PROMPT] [GEN]`

use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use baicai_engine::engine::{EngineConfig, EngineHandle, Event, EventSink, Request};
use baicai_engine::load::{load, LoadOptions};
use baicai_engine::sampler::SamplerConfig;

/// Sends events with the instant they were produced.
struct Sink(mpsc::Sender<(Instant, Event)>);

impl EventSink for Sink {
    fn send(&mut self, event: Event) -> bool {
        self.0.send((Instant::now(), event)).is_ok()
    }
    fn is_closed(&self) -> bool {
        false
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .expect("usage: engine_throughput MODEL [C,C,...] [PROMPT] [GEN]");
    let levels: Vec<usize> = args
        .get(2)
        .map_or("1,4,16", String::as_str)
        .split(',')
        .map(|c| c.parse().expect("concurrency"))
        .collect();
    let prompt_len: usize = args
        .get(3)
        .map_or(100, |s| s.parse().expect("prompt length"));
    let gen: usize = args
        .get(4)
        .map_or(128, |s| s.parse().expect("generated tokens"));
    let loaded = load(Path::new(path), &LoadOptions::default()).expect("load");
    let tok = loaded.tokenizer().expect("tokenizer").clone();
    let engine = EngineHandle::start(
        loaded.model.clone(),
        tok,
        EngineConfig {
            max_seqs: 64,
            n_ctx: 1024,
            ..EngineConfig::default()
        },
    );
    let vocab = engine.info().n_vocab as u32;
    for c in levels {
        let t0 = Instant::now();
        let rxs: Vec<_> = (0..c)
            .map(|i| {
                let (tx, rx) = mpsc::channel();
                let prompt = (0..prompt_len as u32)
                    .map(|j| (j * 7919 + i as u32 * 104729) % (vocab - 100) + 50)
                    .collect();
                engine
                    .submit(Request {
                        prompt,
                        max_tokens: gen,
                        sampler: SamplerConfig::greedy(),
                        stop: Vec::new(),
                        stop_at_eog: false,
                        logprobs: None,
                        constraint: None,
                        sink: Box::new(Sink(tx)),
                    })
                    .expect("submit");
                rx
            })
            .collect();
        let mut ttft = Vec::new();
        let mut tokens = 0;
        for rx in rxs {
            let mut first = None;
            for (at, ev) in rx {
                match ev {
                    Event::Delta(d) => {
                        first.get_or_insert_with(|| at - t0);
                        tokens += d.tokens.len();
                    }
                    Event::Done(_) => break,
                    Event::Error(e) => panic!("{e}"),
                }
            }
            ttft.push(first.unwrap_or_default().as_secs_f64());
        }
        let secs = t0.elapsed().as_secs_f64();
        ttft.sort_by(f64::total_cmp);
        println!(
            "concurrency {c:>3}: {tokens} tokens in {secs:.2} s = {:.1} tok/s, TTFT p50 {:.2} s max {:.2} s",
            tokens as f64 / secs,
            ttft[ttft.len() / 2],
            ttft[ttft.len() - 1]
        );
    }
    engine.shutdown_and_wait();
}
