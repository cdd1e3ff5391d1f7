//! The routes and their handlers. Each handler is a few calls into the stages: read the body,
//! [`protocol::parse`], validate, [`queue::submit`], then answer as JSON or as a stream.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;

use crate::error::ApiError;
use crate::protocol::{self, ChatCompletionRequest, CompletionRequest, ModelCard, ModelList};
use crate::queue;
use crate::response::{Choices, Meta, Update};
use crate::server::{AppState, HttpConfig};
use crate::stream;
use crate::validate::{Endpoint, ValidRequest};

/// The server's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/", get(chat_page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(v1)
        .fallback(unknown_path)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// A JSON response with `status`.
fn json(status: StatusCode, value: &impl Serialize) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The chat page: one self-contained file, compiled in.
const CHAT_PAGE: &str = include_str!("chat.html");

/// `GET /`: the chat page. It uses the public API like any client; the policy header keeps it
/// from loading anything from elsewhere.
async fn chat_page() -> Response {
    let mut resp = CHAT_PAGE.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self'",
        ),
    );
    resp
}

/// `GET /health`: 503 `{"status":"loading"}` until the model is ready, then 200.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.is_ready() {
        json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "loading"}),
        )
    }
}

/// `GET /metrics`.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut resp = state.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// `GET /v1/models`: the one served model.
async fn models(State(state): State<Arc<AppState>>) -> Response {
    let list = ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.config.model_name.clone(),
            object: "model",
            created: state.started_unix,
            owned_by: "baicai",
        }],
    };
    json(StatusCode::OK, &list)
}

/// `POST /v1/chat/completions`.
async fn chat_completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    generate(&state, Endpoint::Chat, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/completions`.
async fn completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    generate(&state, Endpoint::Completion, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Both generation endpoints: body → parse → validate → submit → JSON or stream.
async fn generate(
    state: &AppState,
    endpoint: Endpoint,
    req: Request,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let (validator, backend) = state.ready()?;
    let (parts, body) = req.into_parts();
    let body = read_body(&state.config, &parts.headers, body).await?;
    let valid = match endpoint {
        Endpoint::Chat => validator.chat(&protocol::parse::<ChatCompletionRequest>(&body)?)?,
        Endpoint::Completion => {
            validator.completion(&protocol::parse::<CompletionRequest>(&body)?)?
        }
    };
    let sub = queue::submit(backend.as_ref(), &valid, state.config.stall_timeout)?;
    let meta = Meta::new(endpoint, validator.model_name(), arrived);
    log_request(&meta, &valid);
    let valid = Arc::new(valid);
    let choices = Choices::new(
        valid.clone(),
        validator.tokenizer().clone(),
        state.metrics.clone(),
        meta,
    );
    if valid.stream {
        return Ok(stream::response(
            state.closing(),
            choices,
            sub,
            endpoint,
            valid.include_usage,
        ));
    }
    tokio::select! {
        r = collect(choices, sub, endpoint) => r,
        () = state.closing() => Err(ApiError::unavailable("The server is shutting down")),
    }
}

/// Waits for every choice to end and answers with the whole response. Dropping this future (the
/// client disconnected) drops the receiver, which cancels the request in the engine.
async fn collect(
    mut choices: Choices,
    mut sub: queue::Submitted,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    while !choices.all_done() {
        let Some((index, ev)) = sub.rx.recv().await else {
            return Err(ApiError::internal("the engine dropped the request"));
        };
        sub.clock.read();
        if let Update::Error(msg) = choices.apply(index, ev) {
            return Err(ApiError::internal(msg));
        }
    }
    Ok(match endpoint {
        Endpoint::Chat => json(StatusCode::OK, &choices.chat_response()),
        Endpoint::Completion => json(StatusCode::OK, &choices.completion_response()),
    })
}

/// One line per accepted request on stderr, with the client's `user` field.
fn log_request(meta: &Meta, req: &ValidRequest) {
    let prompt_tokens: usize = req.prompts.iter().map(|p| p.tokens.len()).sum();
    eprintln!(
        "{} {} prompt_tokens={prompt_tokens} choices={} stream={} user={}",
        meta.id,
        req.endpoint.name(),
        req.choices(),
        req.stream,
        req.user.as_deref().unwrap_or("-"),
    );
}

/// The whole body, within the size limit and the time limit.
async fn read_body(cfg: &HttpConfig, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cfg.max_body_bytes as u64) {
        return Err(ApiError::too_large(cfg.max_body_bytes));
    }
    let limited = Limited::new(body, cfg.max_body_bytes);
    match tokio::time::timeout(cfg.body_timeout, limited.collect()).await {
        Err(_) => Err(ApiError::body_timeout(cfg.body_timeout.as_secs_f64())),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::too_large(cfg.max_body_bytes))
        }
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "cannot read the request body: {e}"
        ))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// `--api-key` on the `/v1` routes.
async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match crate::auth::check(state.config.api_key.as_deref(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Counts every answered request by endpoint and status.
async fn count_requests(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = match req.uri().path() {
        "/v1/chat/completions" => "chat_completions",
        "/v1/completions" => "completions",
        "/v1/models" => "models",
        "/" => "chat_page",
        "/health" => "health",
        "/metrics" => "metrics",
        _ => "other",
    };
    let resp = next.run(req).await;
    state.metrics.request(endpoint, resp.status().as_u16());
    resp
}

/// 404 for any other path.
async fn unknown_path(method: Method, uri: Uri) -> ApiError {
    ApiError::unknown_path(method.as_str(), uri.path())
}

/// 405 for a known path with another method.
async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}
