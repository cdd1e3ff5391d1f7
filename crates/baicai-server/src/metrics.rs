//! `/metrics`: Prometheus (OpenMetrics text) counters, gauges and latency histograms.
//!
//! Two sources: what the HTTP side sees (requests by endpoint and status; time to first token,
//! inter-token and end-to-end latency, measured when each event reaches the handler) lives in
//! `prometheus-client` metrics updated as requests run; what the engine knows (queue depth,
//! running sequences, KV blocks, prefix-cache hits, preemptions, token totals, MoE expert load,
//! joules and cost by model) is read from [`crate::Backend::stats`] at scrape time by a [`Collector`], so it is never stale
//! and the engine thread never touches a metric.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use baicai_engine::engine::EngineStats;

use crate::Backend;

/// Labels of `baicai_requests_total`: the endpoint and the response status.
type RequestLabels = [(&'static str, String); 2];

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Where the engine's stats come from once the model has loaded.
pub type BackendSlot = Arc<OnceLock<Arc<dyn Backend>>>;

impl Metrics {
    /// Registers every metric; engine stats are read from `backend` once it is set, and the
    /// energy and cost metrics are labelled with `model`.
    pub fn new(backend: BackendSlot, model: &str) -> Metrics {
        let mut registry = Registry::with_prefix("baicai");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests answered, by endpoint and status",
            requests.clone(),
        );
        let ttft = Histogram::new([
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ]);
        registry.register(
            "time_to_first_token_seconds",
            "Time from the request's arrival to its first generated token",
            ttft.clone(),
        );
        let itl = Histogram::new([
            0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
        ]);
        registry.register(
            "inter_token_latency_seconds",
            "Time between consecutive generated tokens of a sequence",
            itl.clone(),
        );
        let e2e = Histogram::new([
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0,
        ]);
        registry.register(
            "e2e_request_latency_seconds",
            "Time from the request's arrival to its last event",
            e2e.clone(),
        );
        registry.register_collector(Box::new(EngineCollector {
            backend,
            model: model.to_owned(),
        }));
        Metrics {
            registry,
            requests,
            ttft,
            itl,
            e2e,
        }
    }

    /// Counts one answered request.
    pub fn request(&self, endpoint: &'static str, status: u16) {
        self.requests
            .get_or_create(&[
                ("endpoint", endpoint.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
    }

    /// Records a sequence's time to first token.
    pub fn ttft(&self, d: Duration) {
        self.ttft.observe(d.as_secs_f64());
    }

    /// Records the time between two tokens of a sequence.
    pub fn inter_token(&self, d: Duration) {
        self.itl.observe(d.as_secs_f64());
    }

    /// Records a request's end-to-end latency.
    pub fn e2e(&self, d: Duration) {
        self.e2e.observe(d.as_secs_f64());
    }

    /// The metrics in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Reads the engine's stats at scrape time.
struct EngineCollector {
    backend: BackendSlot,
    model: String,
}

impl std::fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineCollector").finish_non_exhaustive()
    }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

impl EngineCollector {
    /// Joules and cost counters and the joules-per-token gauge, labelled by model (and by the
    /// energy's source, measured or estimated, and the cost's currency).
    fn encode_cost(&self, e: &mut DescriptorEncoder, s: &EngineStats) -> std::fmt::Result {
        let source = [
            ("model", self.model.clone()),
            ("source", s.energy_source.as_str().to_owned()),
        ];
        let currency = [
            ("model", self.model.clone()),
            ("currency", s.currency.code().to_owned()),
        ];
        let c = ConstCounter::new(s.energy_joules);
        c.encode(
            e.encode_descriptor(
                "energy_joules",
                "Energy of all engine steps (measured by RAPL or estimated; see the source label)",
                None,
                c.metric_type(),
            )?
            .encode_family(&source)?,
        )?;
        let c = ConstCounter::new(s.cost);
        c.encode(
            e.encode_descriptor(
                "cost",
                "Cost of all engine steps: energy at the tariff in force plus hardware time",
                None,
                c.metric_type(),
            )?
            .encode_family(&currency)?,
        )?;
        let g = ConstGauge::new(joules_per_token(s));
        g.encode(
            e.encode_descriptor(
                "energy_joules_per_token",
                "Joules per generated token since start (prompt work included)",
                None,
                g.metric_type(),
            )?
            .encode_family(&source)?,
        )
    }
}

/// Joules per generated token since start, prompt work included (0 before the first token).
pub fn joules_per_token(s: &EngineStats) -> f64 {
    if s.generated_tokens == 0 {
        0.0
    } else {
        s.energy_joules / s.generated_tokens as f64
    }
}

impl Collector for EngineCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let Some(backend) = self.backend.get() else {
            return Ok(());
        };
        let s = backend.stats();
        let e = &mut enc;
        gauge(
            e,
            "requests_waiting",
            "Requests queued, not yet scheduled",
            s.waiting as i64,
        )?;
        gauge(
            e,
            "requests_running",
            "Sequences being computed",
            s.running as i64,
        )?;
        gauge(
            e,
            "kv_cache_blocks_used",
            "KV cache blocks in use",
            s.kv_blocks_used as i64,
        )?;
        gauge(
            e,
            "kv_cache_blocks_total",
            "KV cache blocks in the budget",
            s.kv_blocks_total as i64,
        )?;
        counter(
            e,
            "prompt_tokens",
            "Prompt tokens computed",
            s.prompt_tokens,
        )?;
        counter(
            e,
            "generation_tokens",
            "Tokens generated",
            s.generated_tokens,
        )?;
        counter(
            e,
            "prefix_cache_hit_tokens",
            "Prompt tokens whose KV came from the prefix cache",
            s.prefix_hit_tokens,
        )?;
        counter(
            e,
            "preemptions",
            "Sequences preempted for recompute",
            s.preemptions,
        )?;
        counter(e, "engine_steps", "Engine steps run", s.steps)?;
        self.encode_cost(e, &s)?;
        if let Some(load) = &s.expert_load {
            let mut m = e.encode_descriptor(
                "moe_expert_tokens",
                "Tokens routed to each expert of each MoE layer",
                None,
                MetricType::Counter,
            )?;
            for (layer, experts) in load.iter().enumerate() {
                for (expert, &n) in experts.iter().enumerate() {
                    let labels = [("layer", layer.to_string()), ("expert", expert.to_string())];
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}
