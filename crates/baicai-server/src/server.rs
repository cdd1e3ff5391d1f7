//! Running the server: bind first, load the model on a blocking thread while `/health` says
//! `loading`, serve connections, and shut down gracefully on SIGTERM/SIGINT.
//!
//! Connections are served by hyper directly (not `axum::serve`) so that headers have a read
//! timeout: a client sending its headers a byte a second is disconnected after
//! [`ServeConfig::header_timeout`], and one sending its body slowly gets a 408 after
//! [`HttpConfig::body_timeout`]. Neither ever reaches the engine.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};

use crate::agent::AgentConfig;
use crate::error::ApiError;
use crate::metrics::{BackendSlot, Metrics};
use crate::validate::Validator;
use crate::Backend;

/// Settings the handlers use.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The name clients address the model by (`/v1/models`, `model` fields).
    pub model_name: String,
    /// `Some`: every `/v1` route needs `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Request bodies larger than this get 413.
    pub max_body_bytes: usize,
    /// A request body must arrive within this, else 408.
    pub body_timeout: Duration,
    /// A request whose events wait this long unread (a client that stopped reading its
    /// stream) is cancelled.
    pub stall_timeout: Duration,
}

/// Settings of [`serve`].
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to bind (port 0: any free port; the real one is printed).
    pub addr: SocketAddr,
    /// Settings of the handlers.
    pub http: HttpConfig,
    /// A connection's request headers must arrive within this.
    pub header_timeout: Duration,
    /// After SIGTERM/SIGINT, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
    /// `Some`: answer HAProxy's agent checks (see [`crate::agent`]).
    pub agent: Option<AgentConfig>,
}

/// A loaded model, ready to serve.
pub struct Loaded {
    /// The running engine.
    pub backend: Arc<dyn Backend>,
    /// Validation against the model's tokenizer, template and context.
    pub validator: Validator,
}

/// State shared by all handlers.
pub struct AppState {
    /// Handler settings.
    pub config: HttpConfig,
    /// The engine, once loaded (also read by the metrics collector).
    pub backend: BackendSlot,
    validator: OnceLock<Validator>,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// When the server started, Unix seconds (`created` of `/v1/models`).
    pub started_unix: u64,
    /// Turns `true` when the shutdown grace period is over: requests still running end now.
    closing: tokio::sync::watch::Sender<bool>,
}

impl AppState {
    /// State of a server whose model has not loaded yet.
    pub fn new(config: HttpConfig) -> Arc<AppState> {
        let backend: BackendSlot = Arc::new(OnceLock::new());
        let metrics = Arc::new(Metrics::new(backend.clone(), &config.model_name));
        Arc::new(AppState {
            config,
            metrics,
            backend,
            validator: OnceLock::new(),
            closing: tokio::sync::watch::Sender::new(false),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }

    /// Marks the model loaded: `/health` turns 200 and `/v1` routes serve.
    pub fn set_ready(&self, loaded: Loaded) {
        // Structured output's view of the vocabulary is built here, not at the first request.
        loaded.validator.warm_grammars();
        // Validator first: `is_ready` looks at the backend.
        let _ = self.validator.set(loaded.validator);
        let _ = self.backend.set(loaded.backend);
    }

    /// Whether the model has loaded.
    pub fn is_ready(&self) -> bool {
        self.backend.get().is_some()
    }

    /// Resolves when requests still running must end (the shutdown grace period is over, or
    /// the server is gone).
    pub fn closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Ends every running request: streams send an error event and `[DONE]`, plain requests
    /// answer 503.
    pub fn close_requests(&self) {
        self.closing.send_replace(true);
    }

    /// The validator and engine.
    ///
    /// # Errors
    /// 503 while the model is loading.
    pub fn ready(&self) -> Result<(&Validator, &Arc<dyn Backend>), ApiError> {
        match (self.validator.get(), self.backend.get()) {
            (Some(v), Some(b)) => Ok((v, b)),
            _ => Err(ApiError::unavailable(
                "The model is still loading; retry shortly",
            )),
        }
    }
}

/// How long ended requests get to write their last bytes at shutdown.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Socket send buffer of each connection. Small on purpose: a client that stops reading its
/// stream must stop the stream's polling soon, so that its events back up in the request's
/// channel and the stall timeout can drop it; with the kernel's autotuned buffers (megabytes on
/// loopback) thousands of tokens would vanish into the socket first. 64 KiB still holds
/// hundreds of chunks, far more than a reading client ever has in flight.
const SEND_BUFFER_BYTES: u32 = 64 << 10;

/// A listening socket on `addr` whose connections inherit a small send buffer (see
/// `SEND_BUFFER_BYTES`).
///
/// # Errors
/// The address cannot be bound.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_send_buffer_size(SEND_BUFFER_BYTES)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Binds `cfg.addr`, prints `listening on http://HOST:PORT` to stderr, and runs
/// [`serve_on`] until SIGTERM/SIGINT.
///
/// # Errors
/// The address cannot be bound, or `load` fails (its message is returned).
pub async fn serve<F>(cfg: ServeConfig, load: F) -> Result<(), String>
where
    F: FnOnce() -> Result<Loaded, String> + Send + 'static,
{
    let listener = listen(cfg.addr).map_err(|e| format!("cannot listen on {}: {e}", cfg.addr))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    eprintln!("listening on http://{local}");
    serve_on(listener, cfg, load, shutdown_signal()).await
}

/// Serves connections from `listener`: loads the model with `load` on a blocking thread (the
/// server answers `/health` with 503 meanwhile), and when `shutdown` resolves refuses new
/// requests, gives in-flight ones `cfg.shutdown_grace` to finish, and returns `Ok`.
///
/// # Errors
/// `load` fails (its message is returned).
pub async fn serve_on<F>(
    listener: TcpListener,
    cfg: ServeConfig,
    load: F,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String>
where
    F: FnOnce() -> Result<Loaded, String> + Send + 'static,
{
    let state = AppState::new(cfg.http.clone());
    let app = crate::routes::router(state.clone());
    let shutting_down = Arc::new(AtomicBool::new(false));
    let _agent = match &cfg.agent {
        Some(a) => Some(start_agent(a, &state, &shutting_down).await?),
        None => None,
    };

    let mut loading = tokio::task::spawn_blocking(load);
    let mut loaded = false;
    tokio::pin!(shutdown);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let stream = match conn {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin or exit.
                        eprintln!("warning: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Stream chunks are small; do not let Nagle hold them back.
                let _ = stream.set_nodelay(true);
                let svc = TowerToHyperService::new(app.clone());
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(cfg.header_timeout)
                    .serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            done = &mut loading, if !loaded => {
                loaded = true;
                match done {
                    Ok(Ok(l)) => {
                        state.set_ready(l);
                        eprintln!("model loaded; serving {}", cfg.http.model_name);
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(format!("loading the model failed: {e}")),
                }
            }
            _ = &mut shutdown => break,
        }
    }
    eprintln!("shutting down: finishing in-flight requests");
    shutting_down.store(true, Ordering::SeqCst);
    drop(listener);
    if let Some(b) = state.backend.get() {
        b.begin_shutdown();
    }
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    tokio::select! {
        _ = &mut drained => return Ok(()),
        _ = tokio::time::sleep(cfg.shutdown_grace) => {}
    }
    eprintln!(
        "shutting down: requests still running after {:?}; ending them",
        cfg.shutdown_grace
    );
    state.close_requests();
    // Ended requests write their last bytes and their connections close; do not wait forever
    // on a client that does not read them.
    if tokio::time::timeout(CLOSE_WAIT, drained).await.is_err() {
        eprintln!("shutting down: connections still open; closing them");
    }
    Ok(())
}

/// Ends a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds the agent-check port, prints `agent checks on HOST:PORT` to stderr, and answers agent
/// checks until the returned guard is dropped.
async fn start_agent(
    cfg: &AgentConfig,
    state: &AppState,
    shutting_down: &Arc<AtomicBool>,
) -> Result<AbortOnDrop, String> {
    let listener = crate::agent::listen(cfg.addr)
        .await
        .map_err(|e| format!("cannot listen for agent checks on {}: {e}", cfg.addr))?;
    if let Ok(local) = listener.local_addr() {
        eprintln!("agent checks on {local}");
    }
    let task = crate::agent::serve(
        listener,
        cfg.clone(),
        state.backend.clone(),
        shutting_down.clone(),
    );
    Ok(AbortOnDrop(tokio::spawn(task)))
}

/// [`serve`] on its own tokio runtime of `worker_threads` threads (1–2 are plenty: handlers only
/// move JSON and SSE bytes; the engine computes on its own threads), for callers without one.
///
/// # Errors
/// As [`serve`], or the runtime cannot start.
pub fn run<F>(cfg: ServeConfig, worker_threads: usize, load: F) -> Result<(), String>
where
    F: FnOnce() -> Result<Loaded, String> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .thread_name("baicai-http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the HTTP runtime: {e}"))?;
    let result = rt.block_on(serve(cfg, load));
    // A model still loading (SIGTERM during load) is not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}
