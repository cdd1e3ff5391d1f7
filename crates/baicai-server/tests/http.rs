//! The HTTP side over a scripted engine: response shapes (JSON and SSE), error objects and
//! statuses, the API key, metrics, and cancellation when the client goes away.

mod common;

use std::sync::Arc;

use baicai_engine::engine::{Event, SubmitError};
use baicai_engine::session::FinishReason;
use baicai_server::server::AppState;
use common::{app, call, delta, done, sse_events, Fake, Script, MODEL_NAME};
use serde_json::Value;

const JSON: (&str, &str) = ("content-type", "application/json");

fn hello() -> Arc<Fake> {
    Fake::new(Script::Reply(vec![
        delta("Hel", 100),
        delta("lo", 101),
        done(FinishReason::Stop, 12, 2),
    ]))
}

fn chat_body(extra: &str) -> String {
    format!(r#"{{"model":"{MODEL_NAME}","messages":[{{"role":"user","content":"Hi"}}]{extra}}}"#)
}

/// Asserts an OpenAI error object with `status`, returning its `error` member.
#[track_caller]
fn error_object(
    status: u16,
    got: (axum::http::StatusCode, axum::http::HeaderMap, String),
) -> Value {
    assert_eq!(got.0.as_u16(), status, "{}", got.2);
    let v: Value = serde_json::from_str(&got.2).expect("error body is JSON");
    let e = v["error"].clone();
    for k in ["message", "type", "param", "code"] {
        assert!(e.get(k).is_some(), "error object lacks {k}: {v}");
    }
    e
}

#[tokio::test]
async fn chat_response_has_openai_shape() {
    let (app, _) = app(hello(), None);
    let (status, headers, body) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        &chat_body(""),
        &[JSON],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL_NAME);
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["message"]["content"], "Hello");
    assert_eq!(c["finish_reason"], "stop");
    assert!(c["logprobs"].is_null());
    assert_eq!(
        v["usage"],
        serde_json::json!({"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14,
                           "prompt_tokens_details": {"cached_tokens": 0},
                           "energy_joules": 0.0, "energy_source": "estimate", "cost": 0.0,
                           "currency": "CNY"})
    );
}

#[tokio::test]
async fn chat_logprobs_and_n_choices() {
    let fake = hello();
    let (app, _) = app(fake.clone(), None);
    let body = chat_body(r#","n":3,"seed":5,"logprobs":true,"top_logprobs":2"#);
    let (status, _, body) = call(&app, "POST", "/v1/chat/completions", &body, &[]).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        let lp = &c["logprobs"]["content"];
        assert_eq!(lp.as_array().unwrap().len(), 2);
        assert_eq!(lp[0]["logprob"], -0.5);
        assert!(lp[0]["token"].is_string() && lp[0]["bytes"].is_array());
        assert_eq!(lp[0]["top_logprobs"].as_array().unwrap().len(), 2);
    }
    // Prompt counted once, completions summed; choice i got seed 5 + i.
    assert_eq!(v["usage"]["prompt_tokens"], 12);
    assert_eq!(v["usage"]["completion_tokens"], 6);
    let seeds: Vec<_> = fake.submitted.lock().unwrap().iter().map(|s| s.2).collect();
    assert_eq!(seeds, vec![Some(5), Some(6), Some(7)]);
}

#[tokio::test]
async fn chat_stream_has_role_deltas_finish_usage_done() {
    let (app, _) = app(hello(), None);
    let body = chat_body(r#","stream":true,"n":2,"stream_options":{"include_usage":true}"#);
    let (status, headers, body) = call(&app, "POST", "/v1/chat/completions", &body, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    let events = sse_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(chunks
        .iter()
        .all(|c| c["id"] == id && c["object"] == "chat.completion.chunk"));
    for i in 0..2 {
        let mine: Vec<&Value> = chunks
            .iter()
            .filter(|c| c["choices"].get(0).is_some_and(|ch| ch["index"] == i))
            .collect();
        assert_eq!(mine[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = mine
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello");
        let last = mine.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
    }
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn completion_choices_are_indexed_by_prompt_then_n() {
    let fake = hello();
    let (app, _) = app(fake.clone(), None);
    let body = r#"{"prompt":["ab", "cd"],"n":2,"echo":true,"logprobs":1}"#;
    let (status, _, body) = call(&app, "POST", "/v1/completions", body, &[]).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    let texts: Vec<&str> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["abHello", "abHello", "cdHello", "cdHello"]);
    let lp = &v["choices"][2]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 2);
    assert_eq!(lp["token_logprobs"][0], -0.5);
    assert_eq!(lp["text_offset"][0], 2, "offsets count the echoed prompt");
    assert_eq!(v["usage"]["prompt_tokens"], 24);
    let prompts: Vec<_> = fake
        .submitted
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.0.clone())
        .collect();
    assert_eq!(prompts[0], prompts[1]);
    assert_ne!(prompts[1], prompts[2]);
}

#[tokio::test]
async fn completion_stream_echo_then_text_then_done() {
    let (app, _) = app(hello(), None);
    let body = r#"{"prompt":"ab","stream":true,"echo":true}"#;
    let (_, _, body) = call(&app, "POST", "/v1/completions", body, &[]).await;
    let events = sse_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "abHello");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
}

#[tokio::test]
async fn engine_error_is_500_or_an_sse_error_then_done() {
    let fake = Fake::new(Script::Reply(vec![
        delta("a", 1),
        Event::Error("model exploded".into()),
    ]));
    let (app, _) = app(fake, None);
    let e = error_object(
        500,
        call(&app, "POST", "/v1/chat/completions", &chat_body(""), &[]).await,
    );
    assert_eq!(e["type"], "server_error");
    let (status, _, body) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        &chat_body(r#","stream":true"#),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let events = sse_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let err: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(err["error"]["message"], "model exploded");
}

#[tokio::test]
async fn full_queue_is_429_with_retry_after() {
    let fake = Fake::new(Script::Refuse(SubmitError::QueueFull {
        waiting: 4,
        limit: 4,
    }));
    let (app, _) = app(fake, None);
    let got = call(&app, "POST", "/v1/chat/completions", &chat_body(""), &[]).await;
    assert_eq!(got.1["retry-after"], "1");
    let e = error_object(429, got);
    assert!(e["message"].as_str().unwrap().contains("--max-queue"));
}

#[tokio::test]
async fn api_key_guards_v1_only() {
    let (app, _) = app(hello(), Some("sekrit"));
    for auth in [None, Some("Bearer wrong"), Some("sekrit")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let got = call(
            &app,
            "POST",
            "/v1/chat/completions",
            &chat_body(""),
            &headers,
        )
        .await;
        let e = error_object(401, got);
        assert_eq!(e["code"], "invalid_api_key");
        let got = call(&app, "GET", "/v1/models", "", &headers).await;
        assert_eq!(got.0, 401);
    }
    let ok = [("authorization", "Bearer sekrit")];
    assert_eq!(
        call(&app, "POST", "/v1/chat/completions", &chat_body(""), &ok)
            .await
            .0,
        200
    );
    let (status, _, body) = call(&app, "GET", "/v1/models", "", &ok).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["id"], MODEL_NAME);
    assert_eq!(v["object"], "list");
    assert_eq!(call(&app, "GET", "/health", "", &[]).await.0, 200);
    assert_eq!(call(&app, "GET", "/metrics", "", &[]).await.0, 200);
}

#[tokio::test]
async fn wrong_method_unknown_path_and_big_body_are_error_objects() {
    let (app, _) = app(hello(), None);
    let e = error_object(
        405,
        call(&app, "GET", "/v1/chat/completions", "", &[]).await,
    );
    assert!(e["message"].as_str().unwrap().contains("GET"));
    error_object(405, call(&app, "DELETE", "/v1/models", "", &[]).await);
    let e = error_object(404, call(&app, "POST", "/v1/nothing-here", "{}", &[]).await);
    assert!(e["message"].as_str().unwrap().contains("/v1/nothing-here"));
    error_object(404, call(&app, "GET", "/nothing", "", &[]).await);
    // The test config's limit is 4096 bytes.
    let big = chat_body(&format!(r#","user":"{}""#, "a".repeat(5000)));
    let e = error_object(
        413,
        call(&app, "POST", "/v1/chat/completions", &big, &[]).await,
    );
    assert!(e["message"].as_str().unwrap().contains("4096 bytes"));
    let e = error_object(
        400,
        call(&app, "POST", "/v1/chat/completions", "{", &[]).await,
    );
    assert!(e["message"].as_str().unwrap().contains("not valid JSON"));
}

#[tokio::test]
async fn health_is_503_loading_until_ready() {
    let state = AppState::new(common::http_config(None));
    let app = baicai_server::routes::router(state.clone());
    let (status, _, body) = call(&app, "GET", "/health", "", &[]).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (503, r#"{"status":"loading"}"#)
    );
    error_object(
        503,
        call(&app, "POST", "/v1/chat/completions", &chat_body(""), &[]).await,
    );
    state.set_ready(baicai_server::Loaded {
        backend: hello(),
        validator: common::validator(common::N_CTX),
    });
    assert_eq!(call(&app, "GET", "/health", "", &[]).await.0, 200);
}

#[tokio::test]
async fn metrics_count_requests_and_read_engine_stats() {
    let (app, _) = app(hello(), None);
    call(&app, "POST", "/v1/chat/completions", &chat_body(""), &[]).await;
    call(&app, "POST", "/v1/chat/completions", "{", &[]).await;
    let (_, _, text) = call(&app, "GET", "/metrics", "", &[]).await;
    for line in [
        r#"baicai_requests_total{endpoint="chat_completions",status="200"} 1"#,
        r#"baicai_requests_total{endpoint="chat_completions",status="400"} 1"#,
        "baicai_requests_running 3",
        "baicai_kv_cache_blocks_used 7",
        "baicai_kv_cache_blocks_total 100",
        r#"baicai_moe_expert_tokens_total{layer="1",expert="0"} 3"#,
        "baicai_time_to_first_token_seconds_count 1",
        "baicai_inter_token_latency_seconds_count 1",
        "baicai_e2e_request_latency_seconds_count 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in\n{text}"
        );
    }
}

#[tokio::test]
async fn dropping_the_response_cancels_every_choice() {
    let fake = Fake::new(Script::Hold);
    let (app, _) = app(fake.clone(), None);
    // Non-streaming: the handler future is dropped (as hyper does when the client goes).
    let body = chat_body(r#","n":2"#);
    let req = call(&app, "POST", "/v1/chat/completions", &body, &[]);
    let _ = tokio::time::timeout(std::time::Duration::from_millis(200), req).await;
    let held = std::mem::take(&mut *fake.held.lock().unwrap());
    assert_eq!(held.len(), 2);
    assert!(held.iter().all(|r| r.sink.is_closed()));
    // Streaming: the body is dropped unread.
    use tower::ServiceExt;
    let req = axum::http::Request::post("/v1/chat/completions")
        .body(axum::body::Body::from(chat_body(r#","stream":true"#)))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let mut held = std::mem::take(&mut *fake.held.lock().unwrap());
    assert!(!held[0].sink.is_closed());
    assert!(held[0].sink.send(delta("x", 1)));
    drop(resp);
    assert!(held[0].sink.is_closed());
    assert!(!held[0].sink.send(delta("y", 2)));
}

#[tokio::test]
async fn closing_ends_streams_with_an_error_then_done_and_plain_requests_with_503() {
    let fake = Fake::new(Script::Hold);
    let (app, state) = app(fake.clone(), None);
    let body = chat_body(r#","stream":true"#);
    let stream = call(&app, "POST", "/v1/chat/completions", &body, &[]);
    let plain_body = chat_body("");
    let plain = call(&app, "POST", "/v1/chat/completions", &plain_body, &[]);
    let closer = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        state.close_requests();
    };
    let ((status, _, body), plain, ()) = tokio::join!(stream, plain, closer);
    assert_eq!(status, 200);
    let events = sse_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let err: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("shutting down"));
    error_object(503, plain);
    // Both requests' receivers are gone: the engine would drop their sequences.
    assert!(fake.held.lock().unwrap().iter().all(|r| r.sink.is_closed()));
}
