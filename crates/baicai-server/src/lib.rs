//! baicai's OpenAI-compatible HTTP server: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/models`, `/health` and `/metrics` over the serving engine.
//!
//! A key design decision made in this crate: async stops at the engine's edge. tokio and axum
//! own sockets, bodies and streams on one or two worker threads; the engine runs on its own
//! thread, and each request talks to it only through the [`Backend`] trait — a non-blocking
//! `submit` carrying a sink that feeds one bounded channel per request. A slow or vanished
//! client therefore never stalls a decode step: its channel fills or closes, the sink says so,
//! and the engine drops the sequence. A request goes through named stages, each its own module:
//! [`protocol`] (parse the OpenAI schema), [`validate`] (into a checked [`validate::ValidRequest`]),
//! [`queue`] (submit one engine request per choice), then [`response`] / [`stream`] (JSON or
//! server-sent events); every failure on the way is one [`error::ApiError`].

#![warn(missing_docs)]

pub mod agent;
pub mod auth;
pub mod error;
pub mod metrics;
pub mod output;
pub mod protocol;
pub mod queue;
pub mod response;
pub mod routes;
pub mod server;
pub mod stream;
pub mod structured;
pub mod tools;
pub mod validate;

use baicai_engine::engine::{EngineHandle, EngineStats, Request, SubmitError};

pub use server::{listen, run, serve, serve_on, HttpConfig, Loaded, ServeConfig};

/// What the HTTP side needs from an engine. [`EngineHandle`] is the real one; tests drive the
/// server with scripted ones.
pub trait Backend: Send + Sync + 'static {
    /// Queues a request without blocking; its events go to `req.sink`.
    ///
    /// # Errors
    /// The queue is full, the engine is shutting down, or the request cannot run.
    fn submit(&self, req: Request) -> Result<(), SubmitError>;
    /// A snapshot of the engine's counters and gauges.
    fn stats(&self) -> EngineStats;
    /// Refuses new requests from now on; submitted ones run to their end.
    fn begin_shutdown(&self);
}

impl Backend for EngineHandle {
    fn submit(&self, req: Request) -> Result<(), SubmitError> {
        EngineHandle::submit(self, req)
    }

    fn stats(&self) -> EngineStats {
        EngineHandle::stats(self)
    }

    fn begin_shutdown(&self) {
        EngineHandle::begin_shutdown(self)
    }
}
