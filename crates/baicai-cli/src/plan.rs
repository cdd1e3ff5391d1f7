//! `baicai plan`: capacity and cost planning. Given a model, a workload and candidate sites, it
//! predicts each site's throughput per replica, the replicas the workload needs there, and what
//! that costs per day and per million tokens, cheapest first.
//!
//! The throughput model is the batched decode regime of the serving engine (README, "How it
//! runs"): a step computes one token of each of the B running sequences and reads the weights
//! once for all of them. With `tg` the single-stream decode rate (bandwidth-bound: weights
//! streamed plus one token's compute) and `pp` the prompt rate (compute-bound: the weights
//! amortised over a batch), a step of B tokens takes `1/tg + (B−1)/pp`: throughput grows with B
//! until compute dominates. Prompts cost `P/pp` each, in chunks mixed into the steps. In a closed
//! loop of B streams, one round of B requests of P prompt and O output tokens then takes
//! `L(B) = O·(1/tg + (B−1)/pp) + B·P/pp` — each request's latency — and yields B·O output tokens.
//!
//! Small batches do not reach the prompt rate on every CPU (a kernel's efficiency grows with the
//! rows it multiplies), so when the bench file has measured batched decode (`bench
//! --decode-batch 4,16`), the step time at B comes from those rates, interpolated linearly in B,
//! and the formula above only extends it beyond the largest batch measured.
//!
//! `tg` and `pp` come from a `bench --json` file, scaled to each site (tg by memory bandwidth,
//! pp by cores, batched rates by the smaller of the two), or, without one, from the roofline: tg = bandwidth ÷ bytes per token × the
//! fraction of the roofline reached ([`ROOFLINE_FRACTION`]), pp = cores × [`FLOPS_PER_CORE`] ÷
//! 2 FLOPs per active parameter. Each site says which.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use baicai_engine::energy::PowerModel;
use baicai_engine::tariff::{Currency, Tariff, JOULES_PER_KWH};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::load::{load, open_gguf, ModelArgs};

/// Fraction of the bandwidth roofline decode reaches when no bench figures are given (baicai's
/// tg128 on the development machine: 0.55–0.75 by model; BENCHMARKS.md).
pub const ROOFLINE_FRACTION: f64 = 0.6;
/// Effective quantized matrix-multiply rate of one core when no bench figures are given, in
/// FLOP/s (a Zen 4 core with AVX-512 VNNI: Qwen2.5-0.5B Q4_K_M pp512 ≈ 170 tok/s on 2 cores).
pub const FLOPS_PER_CORE: f64 = 80e9;
/// Concurrency levels reported for comparison with `scripts/bench-serve.py`.
const REPORTED_CONCURRENCY: [usize; 6] = [1, 2, 4, 8, 16, 32];

/// Arguments of `plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Candidate sites (TOML: [[site]] with name, tariff or electricity_price, cores,
    /// memory_bandwidth_gbps, memory_gib, hardware_cost_per_hour, optional power model).
    #[arg(long, value_name = "FILE")]
    pub sites: PathBuf,
    /// `baicai bench --json` output for this model (default: the bandwidth roofline).
    #[arg(long, value_name = "FILE")]
    pub bench: Option<PathBuf>,
    /// Requests per day.
    #[arg(long = "requests-per-day", default_value_t = 100_000.0)]
    pub requests_per_day: f64,
    /// Prompt tokens per request.
    #[arg(long = "prompt-tokens", default_value_t = 100)]
    pub prompt_tokens: usize,
    /// Generated tokens per request.
    #[arg(long = "output-tokens", default_value_t = 128)]
    pub output_tokens: usize,
    /// Fraction of prompt tokens the prefix cache serves (a shared system prompt, a chat's
    /// earlier turns, repeated prompts), 0 to 1; they cost no compute.
    #[arg(long = "prompt-cache-hit", default_value_t = 0.0)]
    pub prompt_cache_hit: f64,
    /// Seconds a request may take end to end, at most.
    #[arg(long = "latency-target", default_value_t = 30.0)]
    pub latency_target: f64,
    /// Busiest hour's rate ÷ the day's mean rate (replicas are sized for the peak).
    #[arg(long = "peak-factor", default_value_t = 1.0)]
    pub peak_factor: f64,
    /// Sequences a replica decodes together, at most (`serve --max-seqs`).
    #[arg(long = "max-seqs", default_value_t = 32)]
    pub max_seqs: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One candidate site as its file gives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    pub name: String,
    /// Tariff file, relative to the sites file.
    pub tariff: Option<PathBuf>,
    /// Flat price per kWh when no tariff file is given.
    pub electricity_price: Option<f64>,
    /// Currency of `electricity_price` (default CNY).
    pub currency: Option<String>,
    /// PUE with `electricity_price` (default 1).
    pub pue: Option<f64>,
    pub cores: usize,
    pub memory_bandwidth_gbps: f64,
    pub memory_gib: f64,
    pub hardware_cost_per_hour: f64,
    pub idle_watts: Option<f64>,
    pub watts_per_busy_core: Option<f64>,
    pub dram_watts_per_gbps: Option<f64>,
    /// Effective FLOP/s of one core for the roofline (default [`FLOPS_PER_CORE`]).
    pub flops_per_core: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SitesFile {
    site: Vec<SiteSpec>,
}

/// A site ready for planning.
#[derive(Debug, Clone)]
pub struct Site {
    pub spec: SiteSpec,
    pub tariff: Tariff,
    pub power: PowerModel,
}

/// The figures of `bench --json` that planning uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BenchFigures {
    pub threads: usize,
    pub pp_tokens_per_s: f64,
    pub tg_tokens_per_s: f64,
    pub bandwidth_gb_per_s: f64,
    /// Batched decode rates (`bench --decode-batch`), if measured.
    #[serde(default)]
    pub decode_batch: Vec<BatchRate>,
}

/// Generated tokens per second of `batch` sequences decoding together.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
pub struct BatchRate {
    pub batch: usize,
    pub tokens_per_s: f64,
}

/// What planning needs to know of the model.
#[derive(Debug, Clone, Copy)]
pub struct ModelFacts {
    pub weight_bytes_per_token: f64,
    /// Parameters a token is multiplied with (experts not routed to excluded).
    pub active_params: f64,
    pub file_bytes: f64,
    pub kv_bytes_per_token: f64,
}

/// The workload to place.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Workload {
    pub requests_per_day: f64,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    /// Fraction of prompt tokens served by the prefix cache.
    pub prompt_cache_hit: f64,
    pub latency_target_s: f64,
    pub peak_factor: f64,
    pub max_seqs: usize,
}

/// A replica's speed at one site: single-stream decode and prompt rates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Speed {
    pub tg_tokens_per_s: f64,
    pub pp_tokens_per_s: f64,
    /// Measured batched decode rates (scaled to the site), batch above 1, ascending.
    pub decode_batch: Vec<BatchRate>,
    /// `bench` (scaled to the site; `bench-batched` with batched decode measured) or
    /// `roofline`.
    pub source: &'static str,
}

impl Speed {
    /// Seconds of a step that computes one token of each of `b` sequences.
    pub fn step_seconds(&self, b: usize) -> f64 {
        let b = b.max(1);
        let first = BatchRate {
            batch: 1,
            tokens_per_s: self.tg_tokens_per_s,
        };
        let points: Vec<BatchRate> = std::iter::once(first)
            .chain(self.decode_batch.iter().copied().filter(|p| p.batch > 1))
            .collect();
        if let Some(w) = points
            .windows(2)
            .find(|w| (w[0].batch..=w[1].batch).contains(&b))
        {
            let f = (b - w[0].batch) as f64 / (w[1].batch - w[0].batch) as f64;
            let rate = w[0].tokens_per_s + f * (w[1].tokens_per_s - w[0].tokens_per_s);
            return b as f64 / rate;
        }
        // Beyond the measured points: each further token costs its compute at the prompt rate.
        let last = points[points.len() - 1];
        last.batch as f64 / last.tokens_per_s + (b - last.batch) as f64 / self.pp_tokens_per_s
    }

    /// Latency of each request, and output tokens per second, of `b` streams in a closed loop.
    pub fn at_concurrency(&self, b: usize, w: &Workload) -> (f64, f64) {
        let b = b.max(1);
        let computed_prompt = w.prompt_tokens as f64 * (1.0 - w.prompt_cache_hit);
        let latency = w.output_tokens as f64 * self.step_seconds(b)
            + b as f64 * computed_prompt / self.pp_tokens_per_s;
        (latency, (b * w.output_tokens) as f64 / latency)
    }
}

/// Throughput at one concurrency.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    pub concurrency: usize,
    pub output_tokens_per_s: f64,
    pub latency_s: f64,
}

/// One site's placement.
#[derive(Debug, Clone, Serialize)]
pub struct Placement {
    pub site: String,
    pub feasible: bool,
    /// Why the site cannot serve the workload, when it cannot.
    pub reason: Option<String>,
    pub speed: Speed,
    /// Sequences decoded together per replica at the operating point.
    pub concurrency: usize,
    pub latency_s: f64,
    pub output_tokens_per_s_per_replica: f64,
    pub requests_per_s_per_replica: f64,
    pub replicas: usize,
    pub energy_kwh_per_day: f64,
    /// Joules per token (prompt and output) at the operating point; an estimate.
    pub joules_per_token: f64,
    pub energy_source: &'static str,
    pub price_per_kwh: f64,
    pub energy_cost_per_day: f64,
    pub hardware_cost_per_day: f64,
    pub cost_per_day: f64,
    pub cost_per_million_tokens: f64,
    pub cost_per_million_output_tokens: f64,
    pub currency: String,
    pub by_concurrency: Vec<Point>,
}

/// The replica speed at `site`: bench figures scaled to it, or the roofline.
pub fn site_speed(site: &SiteSpec, model: &ModelFacts, bench: Option<&BenchFigures>) -> Speed {
    match bench {
        Some(b) => {
            let bw = site.memory_bandwidth_gbps / b.bandwidth_gb_per_s;
            let cores = site.cores as f64 / b.threads.max(1) as f64;
            let mut decode_batch: Vec<BatchRate> = b
                .decode_batch
                .iter()
                .filter(|p| p.batch > 1 && p.tokens_per_s > 0.0)
                .map(|p| BatchRate {
                    batch: p.batch,
                    tokens_per_s: p.tokens_per_s * bw.min(cores),
                })
                .collect();
            decode_batch.sort_by_key(|p| p.batch);
            decode_batch.dedup_by_key(|p| p.batch);
            Speed {
                tg_tokens_per_s: b.tg_tokens_per_s * bw,
                pp_tokens_per_s: b.pp_tokens_per_s * cores,
                source: if decode_batch.is_empty() {
                    "bench"
                } else {
                    "bench-batched"
                },
                decode_batch,
            }
        }
        None => Speed {
            tg_tokens_per_s: site.memory_bandwidth_gbps * 1e9 / model.weight_bytes_per_token
                * ROOFLINE_FRACTION,
            pp_tokens_per_s: site.cores as f64 * site.flops_per_core.unwrap_or(FLOPS_PER_CORE)
                / (2.0 * model.active_params),
            decode_batch: Vec::new(),
            source: "roofline",
        },
    }
}

/// Plans the workload at one site.
pub fn place(
    site: &Site,
    model: &ModelFacts,
    bench: Option<&BenchFigures>,
    w: &Workload,
) -> Placement {
    let speed = site_speed(&site.spec, model, bench);
    let by_concurrency: Vec<Point> = REPORTED_CONCURRENCY
        .iter()
        .map(|&c| {
            let (latency_s, output_tokens_per_s) = speed.at_concurrency(c, w);
            Point {
                concurrency: c,
                output_tokens_per_s,
                latency_s,
            }
        })
        .collect();
    let memory = site.spec.memory_gib * (1u64 << 30) as f64;
    let seq_bytes = (w.prompt_tokens + w.output_tokens) as f64 * model.kv_bytes_per_token;
    let fits = |b: usize| model.file_bytes + b as f64 * seq_bytes <= memory;
    let meets = |b: usize| speed.at_concurrency(b, w).0 <= w.latency_target_s;
    let best = (1..=w.max_seqs.max(1)).rev().find(|&b| fits(b) && meets(b));
    let reason = match best {
        Some(_) => None,
        None if !fits(1) => Some(format!(
            "the model and one sequence's KV cache need {:.1} GiB; the site has {} GiB",
            (model.file_bytes + seq_bytes) / (1u64 << 30) as f64,
            site.spec.memory_gib
        )),
        None => Some(format!(
            "a request takes {:.1} s even alone; the target is {} s",
            speed.at_concurrency(1, w).0,
            w.latency_target_s
        )),
    };
    let b = best.unwrap_or(1);
    let (latency_s, out_tps) = speed.at_concurrency(b, w);
    let req_per_s = b as f64 / latency_s;
    let demand = w.requests_per_day / 86_400.0 * w.peak_factor;
    let replicas = ((demand / req_per_s).ceil() as usize).max(1);
    // A replica owns its machine: idle draw all day; while computing, every core is busy and
    // the weights stream once per step.
    let cores = site.spec.cores.max(1);
    let busy_s_per_request = latency_s / b as f64;
    let bytes_per_request = model.weight_bytes_per_token * w.output_tokens as f64 / b as f64;
    let busy_j_per_request = site.power.watts_per_busy_core * cores as f64 * busy_s_per_request
        + site.power.dram_watts_per_gbps * bytes_per_request / 1e9;
    let idle_j = replicas as f64 * site.power.idle_watts * 86_400.0;
    let energy_j = idle_j + w.requests_per_day * busy_j_per_request;
    let tokens_per_day = w.requests_per_day * (w.prompt_tokens + w.output_tokens) as f64;
    let output_per_day = w.requests_per_day * w.output_tokens as f64;
    let price = site.tariff.mean_price();
    let energy_cost = energy_j / JOULES_PER_KWH * price;
    let hardware_cost = replicas as f64 * site.spec.hardware_cost_per_hour * 24.0;
    let cost = energy_cost + hardware_cost;
    Placement {
        site: site.spec.name.clone(),
        feasible: best.is_some(),
        reason,
        speed,
        concurrency: b,
        latency_s,
        output_tokens_per_s_per_replica: out_tps,
        requests_per_s_per_replica: req_per_s,
        replicas,
        energy_kwh_per_day: energy_j / JOULES_PER_KWH,
        joules_per_token: energy_j / tokens_per_day.max(1.0),
        energy_source: "estimate",
        price_per_kwh: price,
        energy_cost_per_day: energy_cost,
        hardware_cost_per_day: hardware_cost,
        cost_per_day: cost,
        cost_per_million_tokens: cost / tokens_per_day.max(1.0) * 1e6,
        cost_per_million_output_tokens: cost / output_per_day.max(1.0) * 1e6,
        currency: site.tariff.currency.code().to_string(),
        by_concurrency,
    }
}

/// Plans every site; feasible ones cheapest first, then the rest.
///
/// # Errors
/// Sites price in different currencies (their costs cannot be ordered).
pub fn plan(
    sites: &[Site],
    model: &ModelFacts,
    bench: Option<&BenchFigures>,
    w: &Workload,
) -> Result<Vec<Placement>> {
    if let Some(first) = sites.first() {
        if let Some(other) = sites
            .iter()
            .find(|s| s.tariff.currency != first.tariff.currency)
        {
            anyhow::bail!(
                "site {} prices in {} and site {} in {}: plan compares sites in one currency",
                first.spec.name,
                first.tariff.currency,
                other.spec.name,
                other.tariff.currency
            );
        }
    }
    let mut out: Vec<Placement> = sites.iter().map(|s| place(s, model, bench, w)).collect();
    out.sort_by(|a, b| {
        b.feasible
            .cmp(&a.feasible)
            .then(a.cost_per_day.total_cmp(&b.cost_per_day))
    });
    Ok(out)
}

/// Reads a sites file; tariff paths are relative to it.
///
/// # Errors
/// Not readable, invalid TOML (naming the line), an invalid tariff, a site without a price, or
/// non-positive hardware figures.
pub fn read_sites(path: &Path) -> Result<Vec<Site>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read sites file {}", path.display()))?;
    let file: SitesFile = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map_or(1, |s| 1 + text[..s.start].matches('\n').count());
        anyhow::anyhow!("{}, line {line}: {}", path.display(), e.message().trim())
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    file.site
        .into_iter()
        .map(|spec| {
            let name = spec.name.clone();
            let tariff = match (&spec.tariff, spec.electricity_price) {
                (Some(t), None) => Tariff::from_file(&dir.join(t))?,
                (None, Some(p)) if p.is_finite() && p >= 0.0 => {
                    let code = spec.currency.as_deref().unwrap_or("CNY");
                    let currency = Currency::from_code(code).with_context(|| {
                        format!("site {name}: unknown currency code {code:?}")
                    })?;
                    let pue = spec.pue.unwrap_or(1.0);
                    if !(pue.is_finite() && pue >= 1.0) {
                        anyhow::bail!("site {name}: pue {pue} must be at least 1");
                    }
                    Tariff::flat(currency, p, pue)
                }
                (None, Some(p)) => anyhow::bail!("site {name}: electricity_price {p} must be ≥ 0"),
                _ => anyhow::bail!("site {name}: give either tariff or electricity_price"),
            };
            let positive = |v: f64| v.is_finite() && v > 0.0;
            let valid = spec.cores > 0
                && positive(spec.memory_bandwidth_gbps)
                && positive(spec.memory_gib)
                && spec.hardware_cost_per_hour.is_finite()
                && spec.hardware_cost_per_hour >= 0.0;
            if !valid {
                anyhow::bail!(
                    "site {name}: cores, memory_bandwidth_gbps and memory_gib must be positive, hardware_cost_per_hour ≥ 0"
                );
            }
            let d = PowerModel::default();
            let power = PowerModel {
                idle_watts: spec.idle_watts.unwrap_or(d.idle_watts),
                cores: spec.cores,
                watts_per_busy_core: spec.watts_per_busy_core.unwrap_or(d.watts_per_busy_core),
                dram_watts_per_gbps: spec.dram_watts_per_gbps.unwrap_or(d.dram_watts_per_gbps),
            };
            Ok(Site {
                spec,
                tariff,
                power,
            })
        })
        .collect()
}

/// `baicai plan`.
pub fn run(a: PlanArgs) -> Result<()> {
    if !(a.requests_per_day > 0.0 && a.latency_target > 0.0 && a.peak_factor >= 1.0)
        || a.output_tokens == 0
        || a.max_seqs == 0
        || !(0.0..=1.0).contains(&a.prompt_cache_hit)
    {
        anyhow::bail!("--requests-per-day, --latency-target, --output-tokens and --max-seqs must be positive, --peak-factor at least 1, --prompt-cache-hit from 0 to 1");
    }
    let sites = read_sites(&a.sites)?;
    let bench: Option<BenchFigures> = match &a.bench {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read bench file {}", p.display()))?;
            let b: BenchFigures = serde_json::from_str(&text).with_context(|| {
                format!("{} is not the JSON of baicai bench --json", p.display())
            })?;
            if !(b.tg_tokens_per_s > 0.0 && b.pp_tokens_per_s > 0.0 && b.bandwidth_gb_per_s > 0.0) {
                anyhow::bail!(
                    "{}: bench figures need pp and tg runs (-p and -n above 0)",
                    p.display()
                );
            }
            Some(b)
        }
        None => None,
    };
    let loaded = load(&a.model)?;
    let m = loaded.model.as_ref();
    let bytes = m.weight_bytes_per_token() as f64;
    // Parameters per byte of the whole file, applied to the bytes a token reads; checkpoint
    // folders hold 16-bit weights.
    let params_per_byte = if a.model.model.is_dir() {
        0.5
    } else {
        let g = open_gguf(&a.model.model)?;
        let params: u64 = g
            .tensors()
            .iter()
            .map(|t| t.shape.iter().product::<u64>())
            .sum();
        params as f64 / g.file_size().max(1) as f64
    };
    let facts = ModelFacts {
        weight_bytes_per_token: bytes,
        active_params: bytes * params_per_byte,
        file_bytes: loaded.file_size as f64,
        kv_bytes_per_token: m.new_cache(1).bytes_per_token() as f64,
    };
    let w = Workload {
        requests_per_day: a.requests_per_day,
        prompt_tokens: a.prompt_tokens,
        output_tokens: a.output_tokens,
        prompt_cache_hit: a.prompt_cache_hit,
        latency_target_s: a.latency_target,
        peak_factor: a.peak_factor,
        max_seqs: a.max_seqs,
    };
    let placements = plan(&sites, &facts, bench.as_ref(), &w)?;
    if a.json {
        let j = serde_json::json!({
            "model": a.model.model.display().to_string(),
            "weight_bytes_per_token": bytes,
            "workload": w,
            "placements": placements,
        });
        println!("{j}");
        return Ok(());
    }
    print_table(&a, &w, bytes, &placements);
    Ok(())
}

fn print_table(a: &PlanArgs, w: &Workload, bytes: f64, placements: &[Placement]) {
    println!(
        "model: {} ({:.1} MiB read per token); workload: {} requests/day of {} prompt + {} output tokens, latency ≤ {} s, peak ×{}",
        a.model.model.display(),
        bytes / 1048576.0,
        w.requests_per_day,
        w.prompt_tokens,
        w.output_tokens,
        w.latency_target_s,
        w.peak_factor
    );
    println!(
        "{:<16} {:<8} {:>9} {:>9} {:>6} {:>9} {:>9} {:>9} {:>8} {:>11} {:>12} {:>12}",
        "site",
        "speed",
        "tg tok/s",
        "pp tok/s",
        "batch",
        "latency",
        "out tok/s",
        "replicas",
        "J/token",
        "kWh/day",
        "cost/day",
        "per Mtok"
    );
    for p in placements {
        println!(
            "{:<16} {:<8} {:>9.1} {:>9.1} {:>6} {:>8.1}s {:>9.1} {:>9} {:>8.3} {:>11.2} {:>8.2} {} {:>8.4} {}{}",
            p.site,
            p.speed.source,
            p.speed.tg_tokens_per_s,
            p.speed.pp_tokens_per_s,
            p.concurrency,
            p.latency_s,
            p.output_tokens_per_s_per_replica,
            p.replicas,
            p.joules_per_token,
            p.energy_kwh_per_day,
            p.cost_per_day,
            p.currency,
            p.cost_per_million_tokens,
            p.currency,
            p.reason
                .as_ref()
                .map_or(String::new(), |r| format!("  (cannot: {r})"))
        );
    }
    println!("energy figures are estimates (power model of each site); speed: `bench` figures scaled to the site, or the bandwidth roofline");
    if let Some(p) = placements.first() {
        let pts: Vec<String> = p
            .by_concurrency
            .iter()
            .map(|x| format!("{}: {:.1}", x.concurrency, x.output_tokens_per_s))
            .collect();
        println!(
            "{}: output tokens/s per replica by concurrency: {}",
            p.site,
            pts.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str, price: f64, cores: usize, bw: f64, hw: f64) -> Site {
        Site {
            spec: SiteSpec {
                name: name.into(),
                tariff: None,
                electricity_price: Some(price),
                currency: None,
                pue: None,
                cores,
                memory_bandwidth_gbps: bw,
                memory_gib: 64.0,
                hardware_cost_per_hour: hw,
                idle_watts: Some(100.0),
                watts_per_busy_core: Some(5.0),
                dram_watts_per_gbps: Some(0.0),
                flops_per_core: None,
            },
            tariff: Tariff::flat(Currency::CNY, price, 1.0),
            power: PowerModel {
                idle_watts: 100.0,
                cores,
                watts_per_busy_core: 5.0,
                dram_watts_per_gbps: 0.0,
            },
        }
    }

    const MODEL: ModelFacts = ModelFacts {
        weight_bytes_per_token: 4e8,
        active_params: 5e8,
        file_bytes: 4e8,
        kv_bytes_per_token: 12288.0,
    };

    fn workload() -> Workload {
        Workload {
            requests_per_day: 86_400.0,
            prompt_tokens: 100,
            output_tokens: 100,
            prompt_cache_hit: 0.0,
            latency_target_s: 60.0,
            peak_factor: 1.0,
            max_seqs: 4,
        }
    }

    #[test]
    fn batched_decode_reads_weights_once_per_step() {
        let s = Speed {
            tg_tokens_per_s: 50.0,
            pp_tokens_per_s: 200.0,
            decode_batch: Vec::new(),
            source: "bench",
        };
        let w = workload();
        // B = 1: 100 × 1/50 + 100/200 = 2.5 s; 40 output tokens/s.
        let (l1, x1) = s.at_concurrency(1, &w);
        assert!((l1 - 2.5).abs() < 1e-12 && (x1 - 40.0).abs() < 1e-12);
        // B = 4: step 1/50 + 3/200 = 0.035 s; 100 × 0.035 + 4 × 0.5 = 5.5 s; 400/5.5 tok/s.
        let (l4, x4) = s.at_concurrency(4, &w);
        assert!((l4 - 5.5).abs() < 1e-12 && (x4 - 400.0 / 5.5).abs() < 1e-9);
        // Throughput grows with B towards the compute bound pp × O/(O+P) = 100 tok/s.
        let (_, x64) = s.at_concurrency(64, &w);
        assert!(x4 > x1 && x64 > x4 && x64 < 100.0);
        // Prompts served by the prefix cache cost nothing: 100 × 1/50 + 0.2 × 100/200.
        let cached = Workload {
            prompt_cache_hit: 0.8,
            ..w
        };
        assert!((s.at_concurrency(1, &cached).0 - 2.1).abs() < 1e-12);
    }

    #[test]
    fn measured_batched_decode_is_interpolated_then_extended_at_the_prompt_rate() {
        let s = Speed {
            tg_tokens_per_s: 20.0,
            pp_tokens_per_s: 100.0,
            decode_batch: vec![
                BatchRate {
                    batch: 4,
                    tokens_per_s: 24.0,
                },
                BatchRate {
                    batch: 16,
                    tokens_per_s: 48.0,
                },
            ],
            source: "bench-batched",
        };
        assert!((s.step_seconds(1) - 0.05).abs() < 1e-12);
        assert!((s.step_seconds(4) - 4.0 / 24.0).abs() < 1e-12);
        // Halfway from 4 to 16: 36 tok/s.
        assert!((s.step_seconds(10) - 10.0 / 36.0).abs() < 1e-12);
        // Past 16: 16/48 s plus 4 tokens at 100 tok/s.
        assert!((s.step_seconds(20) - (16.0 / 48.0 + 0.04)).abs() < 1e-12);
    }

    #[test]
    fn bench_figures_scale_by_bandwidth_and_cores_roofline_by_bytes() {
        let b = BenchFigures {
            threads: 2,
            pp_tokens_per_s: 170.0,
            tg_tokens_per_s: 50.0,
            bandwidth_gb_per_s: 30.0,
            decode_batch: Vec::new(),
        };
        let s = site("x", 0.2, 16, 120.0, 1.0);
        let sp = site_speed(&s.spec, &MODEL, Some(&b));
        assert_eq!(sp.source, "bench");
        assert!((sp.tg_tokens_per_s - 200.0).abs() < 1e-9);
        assert!((sp.pp_tokens_per_s - 1360.0).abs() < 1e-9);
        let r = site_speed(&s.spec, &MODEL, None);
        assert_eq!(r.source, "roofline");
        assert!((r.tg_tokens_per_s - 120e9 / 4e8 * ROOFLINE_FRACTION).abs() < 1e-9);
        assert!((r.pp_tokens_per_s - 16.0 * FLOPS_PER_CORE / 1e9).abs() < 1e-9);
    }

    #[test]
    fn replicas_energy_and_cost_add_up() {
        let b = BenchFigures {
            threads: 2,
            pp_tokens_per_s: 200.0,
            tg_tokens_per_s: 50.0,
            bandwidth_gb_per_s: 30.0,
            decode_batch: Vec::new(),
        };
        let s = site("x", 0.5, 2, 30.0, 2.0);
        let w = workload();
        let p = place(&s, &MODEL, Some(&b), &w);
        assert_eq!(p.speed.source, "bench");
        // B = 4 meets 60 s: 5.5 s per round of 4 → 0.727 req/s per replica; 1 req/s → 2.
        assert!(p.feasible && p.concurrency == 4, "{p:?}");
        assert_eq!(p.replicas, 2);
        // Energy: 2 × 100 W all day + 86 400 requests × 2 cores × 5 W × 5.5/4 s.
        let j = 2.0 * 100.0 * 86_400.0 + 86_400.0 * 10.0 * 5.5 / 4.0;
        assert!((p.energy_kwh_per_day - j / 3.6e6).abs() < 1e-9);
        let cost = j / 3.6e6 * 0.5 + 2.0 * 2.0 * 24.0;
        assert!((p.cost_per_day - cost).abs() < 1e-9);
        let per_m = cost / (86_400.0 * 200.0) * 1e6;
        assert!((p.cost_per_million_tokens - per_m).abs() < 1e-9);
        // A tighter target lowers the batch; an impossible one is reported, not hidden.
        let tight = place(
            &s,
            &MODEL,
            Some(&b),
            &Workload {
                latency_target_s: 3.0,
                ..w
            },
        );
        assert_eq!(tight.concurrency, 1);
        let never = place(
            &s,
            &MODEL,
            Some(&b),
            &Workload {
                latency_target_s: 1.0,
                ..w
            },
        );
        assert!(!never.feasible && never.reason.unwrap().contains("2.5 s"));
    }

    #[test]
    fn sites_are_ordered_cheapest_first_infeasible_last_one_currency() {
        let w = workload();
        let sites = vec![
            site("east-peak", 1.2, 16, 200.0, 3.0),
            site("west", 0.2, 16, 200.0, 3.0),
            site("tiny", 0.1, 16, 200.0, 0.1),
            site("dear-hw", 0.2, 16, 200.0, 30.0),
        ];
        let mut sites = sites;
        sites[2].spec.memory_gib = 0.1;
        let out = plan(&sites, &MODEL, None, &w).unwrap();
        let order: Vec<&str> = out.iter().map(|p| p.site.as_str()).collect();
        assert_eq!(order, ["west", "east-peak", "dear-hw", "tiny"]);
        assert!(!out[3].feasible && out[3].reason.as_ref().unwrap().contains("GiB"));
        sites[1].tariff.currency = Currency::from_code("USD").unwrap();
        let e = plan(&sites, &MODEL, None, &w).unwrap_err().to_string();
        assert!(e.contains("USD") && e.contains("CNY"), "{e}");
    }
}
