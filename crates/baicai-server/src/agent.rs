//! HAProxy's agent check: a second TCP port on which each replica tells the balancer how much
//! traffic it wants, from what a token costs here now and how loaded it is (DESIGN.md, "Cost").
//!
//! HAProxy connects to `agent-port` every `agent-inter`, may send a string (`agent-send`), and
//! reads one line of words (HAProxy configuration manual, `agent-check`). This agent answers,
//! whatever it was sent:
//!
//! - `NN% maxconn:M ready` while serving. `NN%` scales the server's configured weight (HAProxy
//!   2.6; configure `weight 100`, since with `weight 1` anything under 100% rounds to 0 and
//!   drains the server). `M` = the engine's queue limit: HAProxy sends a replica no more requests
//!   at once than its queue holds even before any runs (a request counts as waiting until the
//!   engine's next step takes it in, so running + queue would race into 429s), and spills the
//!   rest to the next server. `ready` undoes a `drain` this agent
//!   (or an earlier process on this port) set; only the agent can.
//! - `drain` while the model loads and once shutdown has begun: no new requests, the running
//!   ones finish.
//!
//! The weight is `100% × price share × load share`, at least 1% while serving:
//!
//! - price share: the marginal cost of a token, `price now × J/token + hardware cost/h ÷
//!   tokens/h`, against a reference. Both terms are proportional to the busy seconds a token
//!   takes (J/token = busy watts × s/token), so against the default reference — the same work's
//!   energy at [`DEFAULT_REFERENCE_PRICE`] per kWh — the share is `ref × W / (price × W + 1000 ×
//!   hardware/h)` and needs no throughput: a replica paying 0.2/kWh with no hardware cost gets
//!   100%, one paying 0.6 a third. Replicas on different hardware are compared by an absolute
//!   reference, a cost per million tokens, against this replica's measured seconds per token.
//! - load share: the smaller of the queue's free fraction and the KV cache's free fraction.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use baicai_engine::cost::CostModel;
use baicai_engine::engine::EngineStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::metrics::BackendSlot;

/// Per kWh, PUE included: the default reference price (a West-China data-centre rate, as
/// `baicai_engine::cost::DEFAULT_PRICE_PER_KWH`), at which a replica without hardware cost gets
/// full weight.
pub const DEFAULT_REFERENCE_PRICE: f64 = baicai_engine::cost::DEFAULT_PRICE_PER_KWH;

/// Generated tokens before seconds per token is taken from the engine's own figures.
const MIN_TOKENS_MEASURED: u64 = 32;
/// Busy seconds before the engine's measured power replaces the power model's.
const MIN_BUSY_SECONDS: f64 = 1.0;
/// Connections answered at once; more are closed unanswered (HAProxy opens one per check).
const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to be answered and closed, whatever the peer does.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes read (and ignored) from a peer before closing, so that its `agent-send` string does
/// not turn the close into a reset that could discard the reply.
const MAX_INPUT_BYTES: usize = 4096;

/// What the weight is measured against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reference {
    /// The same work's energy at this price per kWh (PUE included), without hardware cost,
    /// gets full weight.
    PricePerKwh(f64),
    /// A token costing this much per million tokens gets full weight.
    CostPerMillionTokens(f64),
}

/// Settings of the agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Address of the agent's listener (port 0: any free port; the real one is printed).
    pub addr: SocketAddr,
    /// The site's tariff and the machine's hardware cost.
    pub cost: CostModel,
    /// Watts the engine draws while it computes, before it has measured its own (the power
    /// model at full load on the engine's threads).
    pub busy_watts_prior: f64,
    /// What the weight is measured against.
    pub reference: Reference,
    /// The engine's queue limit (requests waiting to be scheduled), reported as `maxconn`.
    pub max_queue: usize,
}

/// What the weight is computed from, at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    /// Price per kWh in force now, PUE included.
    pub price_per_kwh: f64,
    /// Amortised hardware cost per hour.
    pub hardware_cost_per_hour: f64,
    /// Watts while computing (measured, or the prior).
    pub busy_watts: f64,
    /// Busy seconds per generated token, once measured.
    pub seconds_per_token: Option<f64>,
    /// Requests waiting to be scheduled.
    pub waiting: usize,
    /// The queue's limit.
    pub max_queue: usize,
    /// KV blocks held by live sequences.
    pub kv_blocks_used: usize,
    /// KV blocks in the budget.
    pub kv_blocks_total: usize,
}

/// A computed weight and the figures behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weight {
    /// Percent of the configured weight, 1–100.
    pub percent: u32,
    /// 0–1: the reference cost over this replica's marginal cost.
    pub price_share: f64,
    /// 0–1: the smaller of the queue's and the KV cache's free fractions.
    pub load_share: f64,
    /// Marginal cost per million tokens, once seconds per token is known.
    pub cost_per_million_tokens: Option<f64>,
}

/// The weight these inputs give against `reference`.
pub fn weight(i: &Inputs, reference: Reference) -> Weight {
    // Cost per busy hour: energy (W × h → kWh × price) plus hardware.
    let per_hour = i.price_per_kwh * i.busy_watts / 1000.0 + i.hardware_cost_per_hour;
    let per_mtok = i.seconds_per_token.map(|s| per_hour / 3600.0 * s * 1e6);
    let price_share = match reference {
        Reference::PricePerKwh(p) => ratio(p * i.busy_watts / 1000.0, per_hour),
        // Unmeasured: full weight, so that the replica gets the traffic that measures it.
        Reference::CostPerMillionTokens(c) => per_mtok.map_or(1.0, |m| ratio(c, m)),
    };
    let queue_free = 1.0 - i.waiting as f64 / i.max_queue.max(1) as f64;
    let kv_free = 1.0 - i.kv_blocks_used as f64 / i.kv_blocks_total.max(1) as f64;
    let load_share = queue_free.min(kv_free).clamp(0.0, 1.0);
    let percent = (100.0 * price_share * load_share).round().clamp(1.0, 100.0) as u32;
    Weight {
        percent,
        price_share,
        load_share,
        cost_per_million_tokens: per_mtok,
    }
}

/// `a / b` clamped to 0–1; a free replica (`b` = 0) gets 1.
fn ratio(a: f64, b: f64) -> f64 {
    if b <= 0.0 {
        1.0
    } else {
        (a / b).clamp(0.0, 1.0)
    }
}

/// What the replica is doing, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Status {
    /// The model is loading.
    Loading,
    /// Serving.
    Serving {
        /// The weight to report.
        weight: Weight,
        /// Requests HAProxy may send at once (the queue limit).
        maxconn: usize,
    },
    /// Shutdown has begun.
    ShuttingDown,
}

/// The agent's reply line for `status` (`\n`-terminated).
pub fn reply(status: &Status) -> String {
    match status {
        Status::Loading | Status::ShuttingDown => "drain\n".into(),
        Status::Serving { weight, maxconn } => {
            format!("{}% maxconn:{maxconn} ready\n", weight.percent)
        }
    }
}

impl AgentConfig {
    /// The inputs of the weight from the engine's stats, now.
    pub fn inputs(&self, s: &EngineStats, now: SystemTime) -> Inputs {
        let busy_watts = if s.busy_seconds >= MIN_BUSY_SECONDS {
            s.energy_joules / s.busy_seconds
        } else {
            self.busy_watts_prior
        };
        Inputs {
            price_per_kwh: self.cost.tariff.price_at(now),
            hardware_cost_per_hour: self.cost.hardware_cost_per_hour,
            busy_watts,
            seconds_per_token: (s.generated_tokens >= MIN_TOKENS_MEASURED)
                .then(|| s.busy_seconds / s.generated_tokens as f64),
            waiting: s.waiting,
            max_queue: self.max_queue,
            kv_blocks_used: s.kv_blocks_used,
            kv_blocks_total: s.kv_blocks_total,
        }
    }

    /// The replica's status now.
    fn status(&self, backend: &BackendSlot, shutting_down: &AtomicBool) -> Status {
        if shutting_down.load(Ordering::SeqCst) {
            return Status::ShuttingDown;
        }
        match backend.get() {
            None => Status::Loading,
            Some(b) => Status::Serving {
                weight: weight(&self.inputs(&b.stats(), SystemTime::now()), self.reference),
                maxconn: self.max_queue,
            },
        }
    }
}

/// Binds the agent's listener.
///
/// # Errors
/// The address cannot be bound.
pub async fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Answers agent checks on `listener` until the task is dropped. Each connection gets one
/// reply line and is closed within [`CONNECTION_TIMEOUT`]; what the peer sends is read and
/// ignored, so bad input cannot change the answer or hold the agent.
pub async fn serve(
    listener: TcpListener,
    cfg: AgentConfig,
    backend: BackendSlot,
    shutting_down: Arc<AtomicBool>,
) {
    let cfg = Arc::new(cfg);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut last = String::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("warning: agent check: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // dropped: closed unanswered
        };
        let status = cfg.status(&backend, &shutting_down);
        let line = reply(&status);
        if line != last {
            eprintln!("agent check: {}", describe(&cfg, &status, &line));
            last = line.clone();
        }
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, answer(stream, &line)).await;
            drop(permit);
        });
    }
}

/// Writes the reply, then reads (and ignores) what the peer sends until it closes.
async fn answer(mut stream: TcpStream, line: &str) -> std::io::Result<()> {
    stream.write_all(line.as_bytes()).await?;
    stream.shutdown().await?;
    let mut buf = [0u8; 512];
    let mut read = 0;
    while read < MAX_INPUT_BYTES {
        match stream.read(&mut buf).await? {
            0 => break,
            n => read += n,
        }
    }
    Ok(())
}

/// One log line for a new reply: the reply and, while serving, what it comes from.
fn describe(cfg: &AgentConfig, status: &Status, line: &str) -> String {
    let line = line.trim_end();
    match status {
        Status::Serving { weight: w, .. } => {
            let cur = cfg.cost.currency();
            let per_mtok = w
                .cost_per_million_tokens
                .map_or("unmeasured".into(), |c| format!("{c:.4} {cur}"));
            format!(
                "{line} (price {:.3} {cur}/kWh, cost per million tokens {per_mtok}, price share {:.2}, load share {:.2})",
                cfg.cost.tariff.price_at(SystemTime::now()),
                w.price_share,
                w.load_share
            )
        }
        Status::Loading => format!("{line} (model loading)"),
        Status::ShuttingDown => format!("{line} (shutting down)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(price: f64) -> Inputs {
        Inputs {
            price_per_kwh: price,
            hardware_cost_per_hour: 0.0,
            busy_watts: 40.0,
            seconds_per_token: None,
            waiting: 0,
            max_queue: 16,
            kv_blocks_used: 0,
            kv_blocks_total: 100,
        }
    }

    const REF: Reference = Reference::PricePerKwh(0.2);

    #[test]
    fn weight_is_inverse_to_the_price_in_force() {
        assert_eq!(weight(&idle(0.2), REF).percent, 100);
        assert_eq!(weight(&idle(0.1), REF).percent, 100, "capped at 100%");
        assert_eq!(weight(&idle(0.4), REF).percent, 50);
        assert_eq!(weight(&idle(0.6), REF).percent, 33);
        assert_eq!(weight(&idle(1.2), REF).percent, 17);
        // Never 0% while serving: HAProxy shows 0 as DRAIN.
        assert_eq!(weight(&idle(1000.0), REF).percent, 1);
        // A free replica (no price, no hardware cost) gets full weight.
        assert_eq!(weight(&idle(0.0), REF).percent, 100);
    }

    #[test]
    fn hardware_cost_lowers_the_weight_as_energy_does() {
        // 40 W at 0.2/kWh = 0.008/h of energy; 0.008/h of hardware doubles the cost.
        let i = Inputs {
            hardware_cost_per_hour: 0.008,
            ..idle(0.2)
        };
        let w = weight(&i, REF);
        assert_eq!(w.percent, 50);
        assert!((w.price_share - 0.5).abs() < 1e-12);
    }

    #[test]
    fn absolute_reference_uses_the_measured_seconds_per_token() {
        // 40 W at 0.5/kWh + 0.02/h hardware = 0.04/h; 0.01 s/token → 0.04/3600 × 0.01 × 1e6.
        let i = Inputs {
            price_per_kwh: 0.5,
            hardware_cost_per_hour: 0.02,
            seconds_per_token: Some(0.01),
            ..idle(0.5)
        };
        let per_mtok = 0.04 / 3600.0 * 0.01 * 1e6;
        let w = weight(&i, Reference::CostPerMillionTokens(per_mtok / 4.0));
        assert!((w.cost_per_million_tokens.unwrap() - per_mtok).abs() < 1e-12);
        assert_eq!(w.percent, 25);
        // Not measured yet: full weight, so traffic comes to measure it.
        let w = weight(
            &Inputs {
                seconds_per_token: None,
                ..i
            },
            Reference::CostPerMillionTokens(per_mtok / 4.0),
        );
        assert_eq!(w.percent, 100);
    }

    #[test]
    fn a_filling_queue_or_kv_cache_lowers_the_weight() {
        let half_queue = Inputs {
            waiting: 8,
            ..idle(0.2)
        };
        assert_eq!(weight(&half_queue, REF).percent, 50);
        let kv = Inputs {
            kv_blocks_used: 75,
            ..idle(0.4)
        };
        assert_eq!(weight(&kv, REF).percent, 13, "50% × 25%");
        // A full queue: the lowest weight, never drain.
        let full = Inputs {
            waiting: 20,
            ..idle(0.2)
        };
        let w = weight(&full, REF);
        assert_eq!((w.percent, w.load_share), (1, 0.0));
    }

    #[test]
    fn replies_follow_haproxys_agent_syntax() {
        let w = weight(&idle(0.4), REF);
        assert_eq!(
            reply(&Status::Serving {
                weight: w,
                maxconn: 40
            }),
            "50% maxconn:40 ready\n"
        );
        assert_eq!(reply(&Status::Loading), "drain\n");
        assert_eq!(reply(&Status::ShuttingDown), "drain\n");
    }

    #[test]
    fn inputs_use_measured_power_and_speed_once_there_are_enough() {
        let cfg = AgentConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            cost: CostModel::default(),
            busy_watts_prior: 30.0,
            reference: REF,
            max_queue: 8,
        };
        let mut s = EngineStats {
            kv_blocks_total: 10,
            ..EngineStats::default()
        };
        let i = cfg.inputs(&s, SystemTime::now());
        assert_eq!((i.busy_watts, i.seconds_per_token), (30.0, None));
        s.busy_seconds = 2.0;
        s.energy_joules = 100.0;
        s.generated_tokens = 200;
        let i = cfg.inputs(&s, SystemTime::now());
        assert_eq!((i.busy_watts, i.seconds_per_token), (50.0, Some(0.01)));
        assert_eq!(i.price_per_kwh, 0.2);
    }
}
