//! The whole server over the real engine and Qwen2.5-Coder-0.5B (fetched by
//! `scripts/fetch-models.sh`), on a free loopback port: a chat request, the same request
//! streamed (same greedy text), bad inputs next to it, and a graceful shutdown.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use baicai_engine::engine::{EngineConfig, EngineHandle};
use baicai_engine::load::LoadOptions;
use baicai_server::validate::Validator;
use baicai_server::{Loaded, ServeConfig};
use baicai_tokenizer::ChatTemplate;
use serde_json::Value;

const N_CTX: usize = 512;

fn load() -> Result<Loaded, String> {
    let loaded = baicai_engine::load::load(&common::model_path(), &LoadOptions::default())
        .map_err(|e| e.to_string())?;
    let tokenizer = loaded.tokenizer().map_err(|e| e.to_string())?.clone();
    let template = ChatTemplate::for_tokenizer(&tokenizer).map_err(|e| e.to_string())?;
    let engine = EngineHandle::start(
        loaded.model.clone(),
        tokenizer.clone(),
        EngineConfig {
            n_ctx: N_CTX,
            max_seqs: 4,
            kv_cache_bytes: 64 << 20,
            ..EngineConfig::default()
        },
    );
    let n_vocab = engine.info().n_vocab;
    Ok(Loaded {
        backend: Arc::new(engine),
        validator: Validator::new(tokenizer, template, N_CTX, n_vocab, "qwen".into()),
    })
}

/// One HTTP/1.0 request (the server closes after the response); status and body.
fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

fn wait_ready(addr: SocketAddr) {
    for _ in 0..1200 {
        if request(addr, "GET", "/health", "").0 == 200 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the server never became ready");
}

#[test]
fn serves_chat_streams_refuses_bad_input_and_shuts_down() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(async { baicai_server::listen("127.0.0.1:0".parse().unwrap()) })
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = ServeConfig {
        addr,
        http: baicai_server::HttpConfig {
            max_body_bytes: 1 << 20,
            ..common::http_config(None)
        },
        header_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(10),
        agent: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(baicai_server::serve_on(listener, cfg, load, async {
        let _ = stopped.await;
    }));
    wait_ready(addr);

    let chat = r#"{"messages":[{"role":"user","content":"List the first five prime numbers."}],
                   "max_tokens":16,"temperature":0"#;
    let (status, body) = request(addr, "POST", "/v1/chat/completions", &format!("{chat}}}"));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains('2') && text.contains('3'), "{text:?}");
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert_eq!(v["choices"][0]["finish_reason"], "length");

    let (status, body) = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &format!(r#"{chat},"stream":true,"stream_options":{{"include_usage":true}}}}"#),
    );
    assert_eq!(status, 200);
    let events = common::sse_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"].get(0)?["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        streamed, text,
        "greedy streamed text differs from the plain answer"
    );

    let bad: &[(&str, String, u16)] = &[
        ("/v1/chat/completions", "{\"messages\": [".into(), 400),
        (
            "/v1/chat/completions",
            format!(r#"{chat},"model":"gpt-9"}}"#),
            404,
        ),
        (
            "/v1/chat/completions",
            format!(r#"{chat},"temperature":3}}"#),
            400,
        ),
        (
            "/v1/completions",
            format!(r#"{{"prompt":"{}"}}"#, "cabbage ".repeat(N_CTX)),
            400,
        ),
        (
            "/v1/completions",
            r#"{"prompt":[9707, 10000000]}"#.into(),
            400,
        ),
        (
            "/v1/completions",
            r#"{"prompt":"def f():","max_tokens":1000}"#.into(),
            400,
        ),
    ];
    for (path, body, status) in bad {
        let (got, text) = request(addr, "POST", path, body);
        assert_eq!(got, *status, "{path} {body:.80}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["error"]["message"].is_string(), "{text}");
    }

    // The engine publishes its gauges after its step; give it a moment.
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = request(addr, "GET", "/metrics", "").1;
        if metrics.lines().any(|l| l == "baicai_requests_running 0") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        metrics.lines().any(|l| l == "baicai_requests_running 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"baicai_requests_total{endpoint="chat_completions",status="200"} 2"#)
    );

    stop.send(()).unwrap();
    let result = rt.block_on(server).unwrap();
    assert_eq!(result, Ok(()));
}
