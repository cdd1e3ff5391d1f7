//! `baicai bench`: prompt processing (ppN) and generation (tgN) speed with the same meaning as
//! llama-bench's pp512/tg128 (and, with `--depth D`, its `pp512 @ dD` / `tg128 @ dD`), peak RSS, the fraction of the memory-bandwidth roofline reached
//! in generation, and the energy and cost of a token (measured by RAPL or estimated, labelled).

use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use baicai_engine::sysinfo;
use baicai_models::{Logits, SeqInput};
use clap::Args;

use crate::cost::{price_note, source_note, CostArgs};
use crate::load::{load, ModelArgs};

/// Arguments of `bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens processed in one batch (0 skips the test).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Tokens generated one at a time (0 skips the test).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Tokens of context already in the cache when each test starts, as llama-bench's `-d`:
    /// before every prompt and generation test a fresh cache is filled with this many tokens
    /// (timed apart and reported as the fill rate), so `-p 0 -n 16 -d 4096` measures decode
    /// at 4096 tokens of context.
    #[arg(short = 'd', long = "depth", default_value_t = 0)]
    pub depth: usize,
    /// Repetitions; the mean is reported.
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    pub repetitions: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also measure batched decode: for each B, B sequences each decoding one token per forward
    /// pass, as the serving engine runs them (`baicai plan` predicts serving throughput from
    /// these figures).
    #[arg(long = "decode-batch", value_name = "B,…", value_delimiter = ',')]
    pub decode_batch: Vec<usize>,
    #[command(flatten)]
    pub cost: CostArgs,
}

/// Decode steps timed per batch size in [`decode_batch_rate`].
const DECODE_BATCH_STEPS: usize = 64;
/// Context each sequence of [`decode_batch_rate`] has before its timed steps (the serving
/// benchmark's prompts are ~100 tokens).
const DECODE_BATCH_CONTEXT: usize = 96;

/// Generated tokens per second of `b` sequences decoding together: each step is one forward
/// pass over one new token of every sequence (weights read once for all of them).
fn decode_batch_rate(model: &dyn baicai_models::CausalLm, b: usize) -> Result<f64> {
    let n_vocab = model.config().n_vocab;
    let mut caches: Vec<_> = (0..b)
        .map(|_| model.new_cache(DECODE_BATCH_CONTEXT + DECODE_BATCH_STEPS))
        .collect();
    let prompt = tokens(DECODE_BATCH_CONTEXT, n_vocab);
    for c in caches.iter_mut() {
        model
            .forward(&prompt, c, Logits::Last)
            .context("decode batch prompt")?;
    }
    let mut next: Vec<u32> = vec![prompt[0]; b];
    let t = Instant::now();
    for _ in 0..DECODE_BATCH_STEPS {
        let mut inputs: Vec<SeqInput> = caches
            .iter_mut()
            .zip(&next)
            .map(|(cache, tok)| SeqInput {
                tokens: std::slice::from_ref(tok),
                cache,
                logits: Logits::Last,
            })
            .collect();
        let logits = model.forward_batch(&mut inputs).context("decode batch")?;
        next = logits.iter().map(|l| argmax(l)).collect();
    }
    Ok((b * DECODE_BATCH_STEPS) as f64 / t.elapsed().as_secs_f64())
}

/// Weight values per byte of the model's matrices (tensors of two or more dimensions) in a GGUF
/// file, to turn the bytes a token reads into the multiply-adds it does; `None` for folders or
/// files that cannot be read.
fn weight_values_per_byte(path: &std::path::Path) -> Option<f64> {
    let gguf = crate::load::open_gguf(path).ok()?;
    let (values, bytes) = gguf
        .tensors()
        .iter()
        .filter(|t| t.shape.len() >= 2)
        .fold((0u64, 0u64), |(v, b), t| {
            (v + t.shape.iter().product::<u64>(), b + t.n_bytes)
        });
    (bytes > 0).then(|| values as f64 / bytes as f64)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn stddev(v: &[f64]) -> f64 {
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

/// Tokens of the warm-up pass (see [`bench`]).
const WARMUP_TOKENS: usize = 64;

/// Deterministic pseudo-random token ids (llama-bench also feeds random tokens).
fn tokens(n: usize, n_vocab: usize) -> Vec<u32> {
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % n_vocab as u64) as u32
        })
        .collect()
}

/// A fresh cache with room for `depth + room` tokens, holding `depth` tokens of context, and
/// the seconds the fill took (in prefill chunks, as a served prompt is).
fn cache_at_depth(
    model: &dyn baicai_models::CausalLm,
    depth: usize,
    room: usize,
) -> Result<(baicai_models::KvCache, f64)> {
    let mut cache = model.new_cache(depth + room);
    let t = Instant::now();
    for chunk in tokens(depth, model.config().n_vocab).chunks(baicai_engine::session::PREFILL_CHUNK)
    {
        model
            .forward(chunk, &mut cache, Logits::Last)
            .with_context(|| format!("filling the cache to --depth {depth}"))?;
    }
    Ok((cache, t.elapsed().as_secs_f64()))
}

/// `baicai bench`.
pub fn bench(a: BenchArgs) -> Result<()> {
    if a.repetitions == 0 {
        anyhow::bail!("--repetitions must be at least 1");
    }
    let cost = a.cost.cost_model()?;
    let loaded = load(&a.model)?;
    let threads = rayon::current_num_threads();
    let meter = a.cost.meter(threads)?;
    let model = loaded.model;
    let bytes_per_token = model.weight_bytes_per_token();
    // Joules per token of each repetition: the weights are read once per forward pass.
    let mut pp_j = Vec::new();
    let mut tg_j = Vec::new();
    let cfg = model.config().clone();
    let n_ctx = a.n_prompt.max(a.n_gen).max(1);
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    // Seconds of each fill to `--depth`.
    let mut fills = Vec::new();
    // A warm-up pass pages the weights in and maps them, as llama-bench's warm-up run does. It
    // is a batch of tokens, not one: a single token touches only the experts it is routed to,
    // and the first touch of every other expert (mapping its pages) then fell inside the timed
    // generation when no prompt test ran before it (DeepSeek-V2-Lite tg128: 15.5-15.8 against
    // 16.3-17.2 tok/s after a 64-token prompt). With 64 tokens × 6 of 64 experts a layer, an
    // expert is left untouched with probability (58/64)^64 ≈ 0.2%.
    {
        let mut cache = model.new_cache(WARMUP_TOKENS);
        for chunk in
            tokens(WARMUP_TOKENS, cfg.n_vocab).chunks(baicai_engine::session::PREFILL_CHUNK)
        {
            model.forward(chunk, &mut cache, Logits::Last)?;
        }
    }
    for _ in 0..a.repetitions {
        if a.n_prompt > 0 {
            let (mut cache, fill) = cache_at_depth(model.as_ref(), a.depth, n_ctx)?;
            fills.push(fill);
            let prompt = tokens(a.n_prompt, cfg.n_vocab);
            let mark = meter.start();
            let t = Instant::now();
            let chunks = prompt.chunks(baicai_engine::session::PREFILL_CHUNK);
            let passes = chunks.len() as u64;
            for chunk in chunks {
                model
                    .forward(chunk, &mut cache, Logits::Last)
                    .context("prompt processing")?;
            }
            pp.push(a.n_prompt as f64 / t.elapsed().as_secs_f64());
            let e = meter.finish(&mark, passes * bytes_per_token);
            pp_j.push(e.joules / a.n_prompt as f64);
        }
        if a.n_gen > 0 {
            let (mut cache, fill) = cache_at_depth(model.as_ref(), a.depth, n_ctx)?;
            fills.push(fill);
            let mut tok = tokens(1, cfg.n_vocab)[0];
            let mark = meter.start();
            let t = Instant::now();
            for _ in 0..a.n_gen {
                let logits = model
                    .forward(&[tok], &mut cache, Logits::Last)
                    .context("generation")?;
                tok = argmax(&logits);
            }
            tg.push(a.n_gen as f64 / t.elapsed().as_secs_f64());
            let e = meter.finish(&mark, a.n_gen as u64 * bytes_per_token);
            tg_j.push(e.joules / a.n_gen as f64);
        }
    }
    let mut decode_batch = Vec::new();
    for &b in &a.decode_batch {
        if b == 0 {
            anyhow::bail!("--decode-batch sizes must be at least 1");
        }
        decode_batch.push((b, decode_batch_rate(model.as_ref(), b)?));
    }
    // Peak RSS is read before the bandwidth probe, whose buffer would otherwise count.
    let peak_rss = sysinfo::peak_rss_bytes().unwrap_or(0);
    let huge_pages = sysinfo::huge_page_mapped_bytes().unwrap_or(0);
    let bandwidth = sysinfo::measure_read_bandwidth(threads);
    // The batched-decode roofline: a step streams the weights once and does B tokens' work.
    let batch_bounds = if decode_batch.is_empty() {
        Vec::new()
    } else {
        let peak = baicai_kernels::roofline::int8_peak(threads);
        let peak = peak.best(a.model.no_avx512).unwrap_or(0.0);
        let values = weight_values_per_byte(&a.model.model);
        decode_batch
            .iter()
            .map(|&(b, rate)| {
                let step = b as f64 / rate;
                let macs = values.map(|v| v * bytes_per_token as f64 * b as f64);
                let (limit, kind) = match macs {
                    Some(m) if peak > 0.0 => {
                        baicai_kernels::roofline::bound(bytes_per_token as f64, m, bandwidth, peak)
                    }
                    _ => (
                        bytes_per_token as f64 / bandwidth,
                        baicai_kernels::roofline::Limit::Bytes,
                    ),
                };
                let kind = match kind {
                    baicai_kernels::roofline::Limit::Bytes => "memory",
                    baicai_kernels::roofline::Limit::Arithmetic => "int8",
                };
                (limit / step, kind, peak)
            })
            .collect()
    };
    let tg_mean = mean(&tg);
    let now = SystemTime::now();
    let (pp_jpt, tg_jpt) = (mean(&pp_j), mean(&tg_j));
    let pp_cost = cost.per_million_tokens(pp_jpt, mean(&pp), now);
    let tg_cost = cost.per_million_tokens(tg_jpt, tg_mean, now);
    let roofline = if bandwidth > 0.0 {
        tg_mean * bytes_per_token as f64 / bandwidth
    } else {
        0.0
    };
    let file = loaded.file_size;
    let fill_rate = if a.depth > 0 {
        a.depth as f64 / mean(&fills)
    } else {
        0.0
    };
    let at_depth = if a.depth > 0 {
        format!(" @ d{}", a.depth)
    } else {
        String::new()
    };
    if a.json {
        let j = serde_json::json!({
            "model": a.model.model.display().to_string(),
            "architecture": cfg.arch_name,
            "threads": threads,
            "n_prompt": a.n_prompt,
            "n_gen": a.n_gen,
            "depth": a.depth,
            "depth_fill_s": mean(&fills),
            "depth_fill_tokens_per_s": fill_rate,
            "repetitions": a.repetitions,
            "pp_tokens_per_s": mean(&pp),
            "pp_stddev": stddev(&pp),
            "tg_tokens_per_s": tg_mean,
            "tg_stddev": stddev(&tg),
            "peak_rss_mib": peak_rss as f64 / 1048576.0,
            "file_mib": file as f64 / 1048576.0,
            "weights": loaded.held_in_memory,
            "huge_pages_mib": huge_pages as f64 / 1048576.0,
            "weight_bytes_per_token": bytes_per_token,
            "bandwidth_gb_per_s": bandwidth / 1e9,
            "roofline_fraction": roofline,
            "kv_bytes_per_token": model.new_cache(1).bytes_per_token(),
            "energy_source": meter.source().as_str(),
            "pp_joules_per_token": pp_jpt,
            "tg_joules_per_token": tg_jpt,
            "currency": cost.currency().code(),
            "electricity_price_per_kwh": cost.tariff.price_at(now),
            "hardware_cost_per_hour": cost.hardware_cost_per_hour,
            "pp_cost_per_million_tokens": pp_cost,
            "tg_cost_per_million_tokens": tg_cost,
            "decode_batch": decode_batch.iter().zip(&batch_bounds).map(|(&(b, r), &(f, kind, peak))| serde_json::json!({"batch": b, "tokens_per_s": r, "bound_fraction": f, "bound": kind, "int8_peak_gops": peak / 1e9})).collect::<Vec<_>>(),
            "expert_load": model.expert_load().map(|l| l.iter().map(|x| x.tokens.clone()).collect::<Vec<_>>()),
        });
        println!("{j}");
    } else {
        println!(
            "model: {} ({}), threads {threads}",
            a.model.model.display(),
            cfg.arch_name
        );
        for h in &loaded.held_in_memory {
            println!(
                "weights: {h}; {:.0} MiB on 2 MiB pages",
                huge_pages as f64 / 1048576.0
            );
        }
        if a.depth > 0 {
            println!(
                "depth {}: each of {} fills took {:.2} s ({fill_rate:.2} tok/s)",
                a.depth,
                fills.len(),
                mean(&fills)
            );
        }
        if a.n_prompt > 0 {
            println!(
                "{:<8} {:>8.2} ± {:.2} tok/s",
                format!("pp{}{at_depth}", a.n_prompt),
                mean(&pp),
                stddev(&pp)
            );
        }
        if a.n_gen > 0 {
            println!(
                "{:<8} {:>8.2} ± {:.2} tok/s",
                format!("tg{}{at_depth}", a.n_gen),
                tg_mean,
                stddev(&tg)
            );
        }
        let one = decode_batch.iter().find(|&&(b, _)| b == 1).map(|&(_, r)| r);
        for (&(b, r), &(f, kind, _)) in decode_batch.iter().zip(&batch_bounds) {
            // A step of B sequences against a step of one.
            let pass = one.map_or(String::new(), |one| {
                format!(", a pass {:.2}× one sequence's", b as f64 * one / r)
            });
            println!(
                "decode ×{b:<4} {r:>8.2} tok/s (batched, {b} sequences{pass}; {:.0}% of the {kind} bound)",
                100.0 * f
            );
        }
        if let Some(&(_, _, peak)) = batch_bounds.first() {
            println!(
                "decode bounds: weights streamed once per step at {:.1} GB/s, multiply-adds at the int8 peak {:.0} GOP/s (from the weights' average values per byte)",
                bandwidth / 1e9,
                peak / 1e9
            );
        }
        println!(
            "peak RSS: {:.1} MiB (file {:.1} MiB)",
            peak_rss as f64 / 1048576.0,
            file as f64 / 1048576.0
        );
        println!(
            "roofline: {:.1} MiB read per token, bandwidth {:.1} GB/s, {:.0}% of the limit reached",
            bytes_per_token as f64 / 1048576.0,
            bandwidth / 1e9,
            roofline * 100.0
        );
        println!(
            "KV cache: {} bytes per token",
            model.new_cache(1).bytes_per_token()
        );
        println!("energy: {}", source_note(&meter));
        let cur = cost.currency();
        if a.n_prompt > 0 {
            println!(
                "  prompt:     {pp_jpt:.4} J/token, {pp_cost:.4} {cur} per million tokens at {}",
                price_note(&cost)
            );
        }
        if a.n_gen > 0 {
            println!(
                "  generation: {tg_jpt:.4} J/token, {tg_cost:.4} {cur} per million tokens at {}",
                price_note(&cost)
            );
        }
        if model.expert_load().is_some() {
            println!("expert load over the whole run:");
            for line in crate::generate::expert_load_lines(model.as_ref()) {
                println!("  {line}");
            }
        }
    }
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
