//! The serving engine end to end on real and fixture models: greedy outputs under load equal the
//! outputs of each request alone (batch invariance through the scheduler, for a dense and a MoE
//! model), preemption when KV blocks run out, cancellation freeing blocks, prefix-cache reuse.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use baicai_engine::engine::{
    Done, EngineConfig, EngineHandle, Event, EventSink, Request, SubmitError,
};
use baicai_engine::sampler::SamplerConfig;
use baicai_engine::session::FinishReason;
use baicai_tokenizer::Tokenizer;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn start(path: &Path, cfg: EngineConfig) -> EngineHandle {
    let g = Arc::new(baicai_gguf::Gguf::open(path).unwrap());
    let tok = Arc::new(Tokenizer::from_gguf(&g).unwrap());
    let model = baicai_models::load(g).unwrap();
    EngineHandle::start(model.into(), tok, cfg)
}

/// A sink into a channel; closes itself after `close_after` deltas when set.
struct ChanSink {
    tx: mpsc::Sender<Event>,
    closed: Arc<AtomicBool>,
    close_after: Option<usize>,
    seen: usize,
}

impl EventSink for ChanSink {
    fn send(&mut self, event: Event) -> bool {
        if let Event::Delta(_) = event {
            self.seen += 1;
            if self.close_after.is_some_and(|n| self.seen >= n) {
                self.closed.store(true, Ordering::SeqCst);
            }
        }
        self.tx.send(event).is_ok() && !self.is_closed()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

struct Output {
    tokens: Vec<u32>,
    text: String,
    done: Option<Done>,
}

fn request(
    prompt: Vec<u32>,
    max_tokens: usize,
    close_after: Option<usize>,
) -> (Request, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let req = Request {
        prompt,
        max_tokens,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        stop_at_eog: false,
        logprobs: Some(2),
        constraint: None,
        sink: Box::new(ChanSink {
            tx,
            closed: Arc::new(AtomicBool::new(false)),
            close_after,
            seen: 0,
        }),
    };
    (req, rx)
}

fn collect(rx: mpsc::Receiver<Event>) -> Output {
    let mut out = Output {
        tokens: Vec::new(),
        text: String::new(),
        done: None,
    };
    while let Ok(ev) = rx.recv_timeout(Duration::from_secs(120)) {
        match ev {
            Event::Delta(d) => {
                out.text.push_str(&d.text);
                for t in d.tokens {
                    assert!(
                        t.logprob.is_some_and(|l| l <= 0.0),
                        "logprob {:?}",
                        t.logprob
                    );
                    assert_eq!(t.top.len(), 2);
                    assert!(t.top[0].1 >= t.top[1].1);
                    out.tokens.push(t.id);
                }
            }
            Event::Done(d) => {
                out.done = Some(d);
                break;
            }
            Event::Error(e) => panic!("engine error: {e}"),
        }
    }
    out
}

/// Prompts of different lengths (ids below `vocab`).
fn prompts(n: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| {
            (0..(3 + i * 7 % 40))
                .map(|j| ((j * 31 + i * 97 + 11) % (vocab - 10)) as u32 + 5)
                .collect()
        })
        .collect()
}

fn wait_idle(h: &EngineHandle) -> baicai_engine::engine::EngineStats {
    for _ in 0..200 {
        let s = h.stats();
        if s.running == 0 && s.waiting == 0 {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("engine did not become idle: {:?}", h.stats());
}

/// Each prompt alone (one sequence at a time), then all of them at once: identical tokens.
fn check_invariance(path: &Path, n: usize, max_tokens: usize, cfg: EngineConfig) -> u64 {
    let alone_engine = start(
        path,
        EngineConfig {
            max_seqs: 1,
            ..cfg.clone()
        },
    );
    let vocab = alone_engine.info().n_vocab.min(4000);
    let ps = prompts(n, vocab);
    let alone: Vec<Vec<u32>> = ps
        .iter()
        .map(|p| {
            let (req, rx) = request(p.clone(), max_tokens, None);
            alone_engine.submit(req).unwrap();
            collect(rx).tokens
        })
        .collect();
    alone_engine.shutdown_and_wait();
    let engine = start(path, cfg);
    let rxs: Vec<_> = ps
        .iter()
        .map(|p| {
            let (req, rx) = request(p.clone(), max_tokens, None);
            engine.submit(req).unwrap();
            rx
        })
        .collect();
    for (i, rx) in rxs.into_iter().enumerate() {
        let out = collect(rx);
        let done = out.done.expect("finished");
        assert_eq!(done.finish, FinishReason::Length);
        assert_eq!(done.usage.completion_tokens, max_tokens);
        assert_eq!(
            out.tokens,
            alone[i],
            "{}: request {i} differs under load from alone",
            path.display()
        );
    }
    let stats = wait_idle(&engine);
    assert_eq!(stats.kv_blocks_used, 0, "blocks leaked: {stats:?}");
    engine.shutdown_and_wait();
    stats.preemptions
}

#[test]
fn greedy_outputs_under_load_equal_alone_dense_and_moe() {
    let cfg = EngineConfig {
        max_seqs: 16,
        kv_cache_bytes: 64 << 20,
        n_ctx: 256,
        max_batch_tokens: 64,
        ..EngineConfig::default()
    };
    check_invariance(
        &root().join("fixtures/moe/qwen2-moe/model-f32.gguf"),
        16,
        12,
        cfg.clone(),
    );
    check_invariance(
        &root().join("fixtures/moe/deepseek-v2-lite/model-f32.gguf"),
        16,
        12,
        cfg.clone(),
    );
    let qwen = root().join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    if qwen.exists() {
        check_invariance(&qwen, 16, 16, cfg);
    }
}

/// Today's DeepSeek under the serving engine: V3.2 (sparse attention over the latent cache and
/// the indexer keys beside it) and V4 (hyper-connections, window + compressed entries whose
/// windows close across prefill chunks and decode steps, MXFP4 experts): 16 concurrent greedy
/// requests give each one's tokens alone.
#[test]
fn greedy_outputs_under_load_equal_alone_deepseek_v32_and_v4() {
    let cfg = EngineConfig {
        max_seqs: 16,
        kv_cache_bytes: 64 << 20,
        n_ctx: 256,
        max_batch_tokens: 64,
        ..EngineConfig::default()
    };
    for name in ["deepseek-v32", "deepseek-v4"] {
        let path = root()
            .join("fixtures/moe")
            .join(name)
            .join("model-f32.gguf");
        check_invariance(&path, 16, 12, cfg.clone());
    }
}

#[test]
fn preemption_when_blocks_run_out_keeps_outputs() {
    preempted_outputs_equal_alone("fixtures/moe/qwen2-moe/model-f32.gguf");
}

/// DeepSeek-V4 preempted and recomputed (its cache rows hold the window keys, the compressed
/// entries and the compressors' pending projections) gives the same tokens.
#[test]
fn preemption_keeps_deepseek_v4_outputs() {
    preempted_outputs_equal_alone("fixtures/moe/deepseek-v4/model-f32.gguf");
}

fn preempted_outputs_equal_alone(model: &str) {
    // Room for about two sequences' blocks: the others wait or are preempted and recomputed.
    let path = root().join(model);
    let probe = start(&path, EngineConfig::default());
    let blocks_per_mib = probe.info().kv_blocks_total as f64 / 1024.0;
    probe.shutdown_and_wait();
    let bytes_per_block = (1u64 << 20) as f64 / blocks_per_mib;
    let cfg = EngineConfig {
        max_seqs: 8,
        kv_cache_bytes: (bytes_per_block * 9.0) as u64,
        block_tokens: 16,
        n_ctx: 64,
        max_batch_tokens: 64,
        ..EngineConfig::default()
    };
    let preempted = check_invariance(&path, 8, 20, cfg);
    assert!(preempted > 0, "the test did not exercise preemption");
}

#[test]
fn cancelled_requests_free_their_blocks() {
    let path = root().join("fixtures/moe/qwen2-moe/model-f32.gguf");
    let engine = start(&path, EngineConfig::default());
    let vocab = engine.info().n_vocab.min(4000);
    let rxs: Vec<_> = prompts(6, vocab)
        .into_iter()
        .map(|p| {
            let (req, rx) = request(p, 200, Some(3));
            engine.submit(req).unwrap();
            rx
        })
        .collect();
    for rx in rxs {
        let out = collect(rx);
        assert!(out.done.is_none(), "a cancelled request finished");
        assert!(out.tokens.len() <= 4);
    }
    let stats = wait_idle(&engine);
    assert_eq!(stats.kv_blocks_used, 0, "{stats:?}");
    engine.shutdown_and_wait();
}

#[test]
fn a_repeated_prompt_reuses_the_prefix_cache() {
    let path = root().join("fixtures/moe/qwen2-moe/model-f32.gguf");
    let engine = start(&path, EngineConfig::default());
    let vocab = engine.info().n_vocab.min(4000);
    let p: Vec<u32> = prompts(6, vocab).pop().unwrap();
    let run = || {
        let (req, rx) = request(p.clone(), 8, None);
        engine.submit(req).unwrap();
        collect(rx)
    };
    let (a, b) = (run(), run());
    assert_eq!(a.done.as_ref().unwrap().usage.cached_tokens, 0);
    let cached = b.done.as_ref().unwrap().usage.cached_tokens;
    assert!(
        cached >= 16 && cached < p.len(),
        "cached {cached} of {}",
        p.len()
    );
    assert_eq!(a.tokens, b.tokens);
    assert!(engine.stats().prefix_hit_tokens >= cached as u64);
    engine.shutdown_and_wait();
}

#[test]
fn bad_requests_are_refused_at_submit() {
    let path = root().join("fixtures/moe/qwen2-moe/model-f32.gguf");
    let engine = start(
        &path,
        EngineConfig {
            n_ctx: 32,
            max_queue: 0,
            ..EngineConfig::default()
        },
    );
    let n_vocab = engine.info().n_vocab;
    let (req, _rx) = request(vec![], 4, None);
    assert_eq!(engine.submit(req), Err(SubmitError::EmptyPrompt));
    let (req, _rx) = request(vec![n_vocab as u32], 4, None);
    assert!(matches!(
        engine.submit(req),
        Err(SubmitError::BadToken { .. })
    ));
    let (req, _rx) = request(vec![5; 30], 4, None);
    assert!(matches!(
        engine.submit(req),
        Err(SubmitError::TooLong { .. })
    ));
    let (req, _rx) = request(vec![5; 3], 4, None);
    assert!(matches!(
        engine.submit(req),
        Err(SubmitError::QueueFull { .. })
    ));
    engine.shutdown_and_wait();
    let (req, _rx) = request(vec![5; 3], 4, None);
    assert_eq!(engine.submit(req), Err(SubmitError::ShuttingDown));
}

/// A model that panics when a batch holds the token [`POISON`] (a stand-in for a bug on a data
/// path), and otherwise is the fixture model.
struct Poisoned(Box<dyn baicai_models::CausalLm>);

const POISON: u32 = 77;

impl baicai_models::CausalLm for Poisoned {
    fn config(&self) -> &baicai_models::ModelConfig {
        self.0.config()
    }
    fn forward_batch(
        &self,
        seqs: &mut [baicai_models::SeqInput],
    ) -> Result<Vec<Vec<f32>>, baicai_models::ModelError> {
        assert!(
            !seqs.iter().any(|s| s.tokens.contains(&POISON)),
            "poisoned batch"
        );
        self.0.forward_batch(seqs)
    }
    fn new_cache(&self, n_ctx: usize) -> baicai_models::KvCache {
        self.0.new_cache(n_ctx)
    }
    fn weight_bytes_per_token(&self) -> u64 {
        self.0.weight_bytes_per_token()
    }
}

#[test]
fn a_panicking_step_ends_its_requests_with_an_error_and_the_engine_serves_on() {
    let path = root().join("fixtures/moe/qwen2-moe/model-f32.gguf");
    let g = Arc::new(baicai_gguf::Gguf::open(&path).unwrap());
    let tok = Arc::new(Tokenizer::from_gguf(&g).unwrap());
    let model = Poisoned(baicai_models::load(g).unwrap());
    let engine = EngineHandle::start(Arc::new(model), tok, EngineConfig::default());
    let (req, rx) = request(vec![5, 6, POISON, 8], 4, None);
    engine.submit(req).unwrap();
    let mut errored = false;
    while let Ok(ev) = rx.recv_timeout(Duration::from_secs(60)) {
        match ev {
            Event::Error(e) => {
                assert!(e.contains("internal error"), "{e}");
                errored = true;
            }
            Event::Done(_) => panic!("a poisoned request finished"),
            Event::Delta(_) => {}
        }
    }
    assert!(errored, "no error event for the poisoned request");
    let (req, rx) = request(vec![5, 6, 7, 8], 4, None);
    engine.submit(req).unwrap();
    let out = collect(rx);
    assert_eq!(
        out.done
            .expect("served after the panic")
            .usage
            .completion_tokens,
        4
    );
    assert_eq!(wait_idle(&engine).kv_blocks_used, 0);
    engine.shutdown_and_wait();
}
