//! `baicai serve`: the OpenAI-compatible HTTP server (see the `baicai-server` crate).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use baicai_engine::engine::{EngineConfig, EngineHandle};
use baicai_server::agent::{AgentConfig, Reference, DEFAULT_REFERENCE_PRICE};
use baicai_server::validate::Validator;
use baicai_server::{HttpConfig, Loaded, ServeConfig};
use baicai_tokenizer::ChatTemplate;
use clap::Args;

use crate::cost::CostArgs;
use crate::load::{load, ModelArgs};

/// `baicai serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the real one is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every /v1 route.
    #[arg(long = "api-key")]
    pub api_key: Option<String>,
    /// Sequences decoded together in one step, at most.
    #[arg(long = "max-seqs", default_value_t = 32)]
    pub max_seqs: usize,
    /// MiB of KV cache all sequences share (default: a quarter of the memory available, at
    /// most 4 GiB).
    #[arg(long = "kv-cache-mib")]
    pub kv_cache_mib: Option<u64>,
    /// Requests waiting to be scheduled, at most; more get 429.
    #[arg(long = "max-queue", default_value_t = 256)]
    pub max_queue: usize,
    /// Context of one sequence, prompt and answer (default: the model's training context, at
    /// most 4096).
    #[arg(short = 'c', long = "ctx-size")]
    pub ctx_size: Option<usize>,
    /// Tokens computed in one engine step, at most (decode tokens plus prefill chunks).
    #[arg(long = "max-batch-tokens", default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// The model name clients use (default: the model file's stem).
    #[arg(long = "served-model-name")]
    pub served_model_name: Option<String>,
    /// Request bodies larger than this get 413.
    #[arg(long = "max-body-bytes", default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a request body may take to arrive (then 408); headers get the same.
    #[arg(long = "body-timeout", default_value_t = 30)]
    pub body_timeout: u64,
    /// Seconds a stream's output may wait unread before the request is dropped.
    #[arg(long = "stall-timeout", default_value_t = 30)]
    pub stall_timeout: u64,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long = "shutdown-timeout", default_value_t = 30)]
    pub shutdown_timeout: u64,
    #[command(flatten)]
    pub cost: CostArgs,
    /// Answer HAProxy agent checks on this port (on --host): a weight from the marginal cost
    /// of a token at the tariff in force and from the load, `drain` while loading and shutting
    /// down (0: any free port; the real one is printed).
    #[arg(long = "agent-port", value_name = "PORT")]
    pub agent_port: Option<u16>,
    /// Price per kWh (PUE included) at which a replica without hardware cost gets full agent
    /// weight; dearer replicas get proportionally less.
    #[arg(long = "agent-reference-price", value_name = "PRICE_PER_KWH", default_value_t = DEFAULT_REFERENCE_PRICE, conflicts_with = "agent_reference_cost")]
    pub agent_reference_price: f64,
    /// Cost per million generated tokens that gets full agent weight (instead of
    /// --agent-reference-price; for replicas on different hardware, give all the same value).
    #[arg(long = "agent-reference-cost", value_name = "COST_PER_MTOK")]
    pub agent_reference_cost: Option<f64>,
}

const MIB: u64 = 1 << 20;
const DEFAULT_CTX: usize = 4096;

/// `baicai serve`.
pub fn serve(a: ServeArgs) -> Result<()> {
    let addr: SocketAddr = (a.host.as_str(), a.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve --host {}", a.host))?
        .next()
        .with_context(|| format!("--host {} has no address", a.host))?;
    if a.max_seqs == 0 || a.max_queue == 0 || a.max_batch_tokens == 0 {
        anyhow::bail!("--max-seqs, --max-queue and --max-batch-tokens must be at least 1");
    }
    let model_name = match &a.served_model_name {
        Some(n) => n.clone(),
        None => model_stem(&a.model.model),
    };
    let cfg = ServeConfig {
        addr,
        http: HttpConfig {
            model_name: model_name.clone(),
            api_key: a.api_key.clone(),
            max_body_bytes: a.max_body_bytes,
            body_timeout: Duration::from_secs(a.body_timeout),
            stall_timeout: Duration::from_secs(a.stall_timeout),
        },
        header_timeout: Duration::from_secs(a.body_timeout),
        shutdown_grace: Duration::from_secs(a.shutdown_timeout),
        agent: agent_config(&a, addr)?,
    };
    baicai_server::run(cfg, 2, move || {
        start_engine(&a, model_name).map_err(|e| format!("{e:#}"))
    })
    .map_err(|e| anyhow::anyhow!(e))
}

/// Loads the model and starts the engine (on the loading thread, while `/health` says loading).
fn start_engine(a: &ServeArgs, model_name: String) -> Result<Loaded> {
    let loaded = load(&a.model)?;
    let tokenizer = loaded.tokenizer()?.clone();
    let template =
        ChatTemplate::for_tokenizer(&tokenizer).context("cannot load the chat template")?;
    let train = loaded.model.config().n_ctx_train;
    let n_ctx = a.ctx_size.unwrap_or(DEFAULT_CTX.min(train));
    if n_ctx > train {
        eprintln!("warning: --ctx-size {n_ctx} exceeds the model's training context {train}");
    }
    let kv_cache_bytes = match a.kv_cache_mib {
        Some(m) => m * MIB,
        None => default_kv_bytes(),
    };
    let handle = EngineHandle::start_with(
        loaded.model.clone(),
        tokenizer.clone(),
        EngineConfig {
            max_seqs: a.max_seqs,
            kv_cache_bytes,
            n_ctx,
            max_batch_tokens: a.max_batch_tokens,
            max_queue: a.max_queue,
            ..EngineConfig::default()
        },
        a.cost.accounting(rayon::current_num_threads())?,
    );
    let info = handle.info().clone();
    eprintln!(
        "engine: context {} tokens, {} KV blocks of {} tokens ({} MiB), up to {} sequences",
        info.n_ctx,
        info.kv_blocks_total,
        info.block_tokens,
        kv_cache_bytes / MIB,
        info.max_seqs
    );
    let validator = Validator::new(tokenizer, template, info.n_ctx, info.n_vocab, model_name);
    Ok(Loaded {
        backend: Arc::new(handle),
        validator,
    })
}

/// The agent check's settings, when --agent-port is given.
///
/// # Errors
/// Invalid cost flags (a tariff file's error names the line) or reference.
fn agent_config(a: &ServeArgs, http: SocketAddr) -> Result<Option<AgentConfig>> {
    // Checked before binding, with or without an agent: a bad tariff stops the server at once.
    let cost = a.cost.cost_model()?;
    let Some(port) = a.agent_port else {
        return Ok(None);
    };
    let reference = match a.agent_reference_cost {
        Some(c) if c.is_finite() && c > 0.0 => Reference::CostPerMillionTokens(c),
        Some(c) => anyhow::bail!("--agent-reference-cost {c} must be > 0"),
        None if a.agent_reference_price.is_finite() && a.agent_reference_price > 0.0 => {
            Reference::PricePerKwh(a.agent_reference_price)
        }
        None => anyhow::bail!(
            "--agent-reference-price {} must be > 0",
            a.agent_reference_price
        ),
    };
    // The power model at full load on the engine's threads, until the engine measures its own.
    let threads = a.model.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let busy_watts_prior = a
        .cost
        .power_model()?
        .joules(1.0, threads as f64, threads, 0);
    Ok(Some(AgentConfig {
        addr: SocketAddr::new(http.ip(), port),
        cost,
        busy_watts_prior,
        reference,
        max_queue: a.max_queue,
    }))
}

/// A quarter of the memory available, between 256 MiB and 4 GiB (1 GiB when unknown).
fn default_kv_bytes() -> u64 {
    baicai_engine::sysinfo::memory_budget_bytes()
        .map_or(1 << 30, |b| (b / 4).clamp(256 * MIB, 4096 * MIB))
}

/// `models/qwen2.5-0.5b.gguf` → `qwen2.5-0.5b`; the first part of a split model loses its
/// `-00001-of-00003` too.
fn model_stem(path: &Path) -> String {
    let stem = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    let stem = stem.map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    match stem.rsplit_once("-of-") {
        Some((head, tail)) if tail.chars().all(|c| c.is_ascii_digit()) => {
            head.rsplit_once('-').map_or(head, |(h, _)| h).to_owned()
        }
        _ => stem,
    }
}
