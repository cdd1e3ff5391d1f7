//! The one error type of the HTTP side and its OpenAI-shaped response.
//!
//! Every failure a client can see — bad JSON, a value out of range, an unknown model, a full
//! queue, a bad API key — is an [`ApiError`], and [`IntoResponse`] turns it into OpenAI's error
//! object `{"error": {"message", "type", "param", "code"}}` with the matching status, so no
//! handler builds an error body of its own.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A request that failed, as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status of the response.
    pub status: StatusCode,
    /// What went wrong, naming the field and the limit where there is one.
    pub message: String,
    /// The request field at fault (`messages[1].role`), when one is.
    pub param: Option<String>,
    /// OpenAI's machine-readable code (`model_not_found`, `invalid_api_key`), when one applies.
    pub code: Option<&'static str>,
    /// Seconds after which a retry may succeed (sent as `Retry-After`).
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400: a value of field `param` is wrong; `message` says why and names the limit.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.into()),
            ..ApiError::new(StatusCode::BAD_REQUEST, message)
        }
    }

    /// 400 about the request as a whole (no single field at fault).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 `model_not_found`, in OpenAI's words.
    pub fn model_not_found(model: &str) -> ApiError {
        ApiError {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                format!("The model `{model}` does not exist or you do not have access to it."),
            )
        }
    }

    /// 401 `invalid_api_key`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError {
            code: Some("invalid_api_key"),
            ..ApiError::new(StatusCode::UNAUTHORIZED, message)
        }
    }

    /// 404 for a path the server does not have.
    pub fn unknown_path(method: &str, path: &str) -> ApiError {
        ApiError {
            code: Some("unknown_url"),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Invalid URL ({method} {path})"),
            )
        }
    }

    /// 405 for a known path asked with the wrong method.
    pub fn method_not_allowed(method: &str, path: &str) -> ApiError {
        ApiError {
            code: Some("method_not_allowed"),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("Method {method} is not allowed for {path}"),
            )
        }
    }

    /// 413: the body is larger than `limit` bytes.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError {
            code: Some("request_too_large"),
            ..ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("The request body exceeds the limit of {limit} bytes (--max-body-bytes)"),
            )
        }
    }

    /// 408: the body did not arrive within `secs` seconds.
    pub fn body_timeout(secs: f64) -> ApiError {
        ApiError {
            code: Some("request_timeout"),
            ..ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!("The request body did not arrive within {secs} s (--body-timeout)"),
            )
        }
    }

    /// 429 with `Retry-After`: too many requests are waiting.
    pub fn queue_full(waiting: usize, limit: usize) -> ApiError {
        ApiError {
            code: Some("rate_limit_exceeded"),
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "The server is busy: {waiting} requests are waiting (limit {limit}, \
                     --max-queue); retry later"
                ),
            )
        }
    }

    /// 503: the model is still loading, or the server is shutting down.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    /// 500: the engine failed on this request.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// OpenAI's error `type` for this status.
    pub fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 if self.code == Some("model_not_found") => "invalid_request_error",
            404 => "not_found_error",
            408 => "timeout_error",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The JSON error object, `{"error": {...}}`.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                kind: self.kind(),
                param: self.param.as_deref(),
                code: self.code,
            },
        }
    }
}

/// OpenAI's error envelope.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    /// The error itself.
    pub error: ErrorDetail<'a>,
}

/// OpenAI's error object; `param` and `code` are `null` when they do not apply.
#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    /// Human-readable description.
    pub message: &'a str,
    /// Error class (`invalid_request_error`, …).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The field at fault.
    pub param: Option<&'a str>,
    /// Machine-readable code.
    pub code: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(s) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
