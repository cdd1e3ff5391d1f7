//! Shared helpers: the Qwen2.5 tokenizer (fetched by `scripts/fetch-models.sh`), a validator
//! over it, and a scripted engine so the HTTP side can be tested without running a model.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode};
use axum::Router;
use baicai_engine::engine::{
    Delta, Done, EngineStats, Event, Request, SubmitError, TokenOut, Usage,
};
use baicai_engine::session::FinishReason;
use baicai_server::server::AppState;
use baicai_server::validate::Validator;
use baicai_server::{Backend, HttpConfig, Loaded};
use baicai_tokenizer::{ChatTemplate, Tokenizer};
use http_body_util::BodyExt;
use tower::ServiceExt;

pub const MODEL_NAME: &str = "qwen-test";
pub const N_CTX: usize = 256;

pub fn model_path() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    p
}

/// The Qwen2.5 tokenizer, loaded once per test binary.
pub fn tokenizer() -> Arc<Tokenizer> {
    static T: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        let g = baicai_gguf::Gguf::open(&model_path()).expect("open the test model");
        Arc::new(Tokenizer::from_gguf(&g).expect("tokenizer"))
    })
    .clone()
}

pub fn validator(n_ctx: usize) -> Validator {
    let tok = tokenizer();
    let template = ChatTemplate::for_tokenizer(&tok).expect("template");
    let n_vocab = tok.vocab_size();
    Validator::new(tok, template, n_ctx, n_vocab, MODEL_NAME.into())
}

/// What the scripted engine does with a request.
pub enum Script {
    /// Sends these events at once (token ids are the choice's seed, so tests see which choice
    /// got which sampler).
    Reply(Vec<Event>),
    /// Keeps the request; the test inspects or drives its sink.
    Hold,
    /// Refuses it.
    Refuse(SubmitError),
}

/// What the engine was asked: prompt, max_tokens, seed.
pub type Submitted = (Vec<u32>, usize, Option<u64>);

pub struct Fake {
    pub script: Script,
    pub held: Mutex<Vec<Request>>,
    pub submitted: Mutex<Vec<Submitted>>,
}

impl Fake {
    pub fn new(script: Script) -> Arc<Fake> {
        Arc::new(Fake {
            script,
            held: Mutex::new(Vec::new()),
            submitted: Mutex::new(Vec::new()),
        })
    }
}

pub fn delta(text: &str, id: u32) -> Event {
    Event::Delta(Delta {
        text: text.into(),
        tokens: vec![TokenOut {
            id,
            logprob: Some(-0.5),
            top: vec![(id, -0.5), (id + 1, -1.5)],
        }],
    })
}

pub fn done(finish: FinishReason, prompt: usize, completion: usize) -> Event {
    Event::Done(Done {
        finish,
        usage: Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: 0,
            ..Usage::default()
        },
    })
}

impl Backend for Fake {
    fn submit(&self, mut req: Request) -> Result<(), SubmitError> {
        self.submitted
            .lock()
            .unwrap()
            .push((req.prompt.clone(), req.max_tokens, req.sampler.seed));
        match &self.script {
            Script::Reply(events) => {
                for e in events {
                    assert!(req.sink.send(e.clone()), "sink refused an event");
                }
                Ok(())
            }
            Script::Hold => {
                self.held.lock().unwrap().push(req);
                Ok(())
            }
            Script::Refuse(e) => Err(e.clone()),
        }
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            running: 3,
            kv_blocks_total: 100,
            kv_blocks_used: 7,
            expert_load: Some(vec![vec![1, 2], vec![3, 4]]),
            ..EngineStats::default()
        }
    }

    fn begin_shutdown(&self) {}
}

pub fn http_config(api_key: Option<&str>) -> HttpConfig {
    HttpConfig {
        model_name: MODEL_NAME.into(),
        api_key: api_key.map(str::to_owned),
        max_body_bytes: 4096,
        body_timeout: std::time::Duration::from_secs(5),
        stall_timeout: std::time::Duration::from_secs(5),
    }
}

/// The router over a ready server state with `fake` as its engine.
pub fn app(fake: Arc<Fake>, api_key: Option<&str>) -> (Router, Arc<AppState>) {
    let state = AppState::new(http_config(api_key));
    state.set_ready(Loaded {
        backend: fake,
        validator: validator(N_CTX),
    });
    (baicai_server::routes::router(state.clone()), state)
}

/// Sends one request; the status, the headers and the whole body.
pub async fn call(
    app: &Router,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut req = HttpRequest::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

/// The `data:` payloads of an SSE body.
pub fn sse_events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data line: {e:?}"))
                .to_owned()
        })
        .collect()
}
