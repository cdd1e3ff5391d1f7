//! `baicai inspect`: what is in a model file and what running it costs in memory, energy and
//! money (an estimate from the bytes read per token and the machine's measured bandwidth).

use anyhow::Result;
use baicai_gguf::Value;
use clap::Args;

use crate::cost::{price_note, CostArgs};
use crate::load::{open_gguf, ModelArgs};

/// Arguments of `inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Context size used to size the KV cache in the memory estimate.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    pub ctx_size: usize,
    /// Omit the tensor table.
    #[arg(long = "no-tensors")]
    pub no_tensors: bool,
    #[command(flatten)]
    pub cost: CostArgs,
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let s: String = s.chars().take(80).collect::<String>().replace('\n', "\\n");
            format!("{s:?}")
        }
        Value::Array(a) => {
            let head: Vec<String> = a.iter().take(4).map(show).collect();
            let more = if a.len() > 4 { ", …" } else { "" };
            format!("[{}{more}] ({} values)", head.join(", "), a.len())
        }
        Value::U8(x) => x.to_string(),
        Value::I8(x) => x.to_string(),
        Value::U16(x) => x.to_string(),
        Value::I16(x) => x.to_string(),
        Value::U32(x) => x.to_string(),
        Value::I32(x) => x.to_string(),
        Value::U64(x) => x.to_string(),
        Value::I64(x) => x.to_string(),
        Value::F32(x) => x.to_string(),
        Value::F64(x) => x.to_string(),
        Value::Bool(x) => x.to_string(),
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// The roofline estimate of decode speed, energy and cost, before anything runs: one stream
/// reads every active weight once per token, so it makes at most bandwidth ÷ bytes tokens per
/// second; the power model at that rate gives joules per token.
fn describe_cost(model: &dyn baicai_models::CausalLm, cost: &CostArgs) -> Result<()> {
    let model_cost = cost.cost_model()?;
    let power = cost.power_model()?;
    let threads = rayon::current_num_threads();
    let bandwidth = baicai_engine::sysinfo::measure_read_bandwidth(threads);
    let bytes = model.weight_bytes_per_token() as f64;
    let tps = bandwidth / bytes.max(1.0);
    let jpt = baicai_engine::cost::joules_per_token(&power, threads, tps, bytes);
    let per_m = model_cost.per_million_tokens(jpt, tps, std::time::SystemTime::now());
    println!(
        "roofline: {:.1} GB/s measured with {threads} threads ÷ {:.1} MiB per token = at most {tps:.1} generated tokens/s per stream",
        bandwidth / 1e9,
        mib(bytes as u64)
    );
    println!(
        "energy and cost (estimate, at the roofline, {threads} threads busy): {jpt:.3} J per generated token, {per_m:.4} {} per million generated tokens at {}",
        model_cost.currency(),
        price_note(&model_cost)
    );
    Ok(())
}

fn describe_model(model: &dyn baicai_models::CausalLm, file_size: u64, ctx: usize) {
    let c = model.config();
    let kv_per_token = model.new_cache(1).bytes_per_token() as u64;
    println!(
        "architecture: {} ({} layers, d_model {}, {} heads / {} KV heads, head dim {}, vocab {})",
        c.arch_name, c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim_k, c.n_vocab
    );
    if let Some(m) = &c.mla {
        println!(
            "attention: MLA (absorbed), kv_lora_rank {}, rope dims {}, q_lora_rank {:?}; the KV cache holds {} values per token and layer",
            m.kv_lora_rank,
            m.qk_rope_head_dim,
            m.q_lora_rank,
            m.cache_width()
        );
    }
    if let Some(ix) = c.mla.as_ref().and_then(|m| m.indexer) {
        println!(
            "sparse attention (DeepSeek-V3.2): the indexer ({} heads of {}) picks {} cached tokens per query; its key adds {} values per token and layer",
            ix.n_head, ix.head_dim, ix.top_k, ix.head_dim
        );
    }
    if let Some(v4) = &c.v4 {
        let kinds: Vec<String> = v4
            .kinds
            .iter()
            .map(|(k, m)| match k {
                baicai_models::models::deepseek4::AttnKind::Sliding => "sliding".to_string(),
                baicai_models::models::deepseek4::AttnKind::Csa => format!("CSA/{m}"),
                baicai_models::models::deepseek4::AttnKind::Hca => format!("HCA/{m}"),
            })
            .collect();
        println!(
            "attention (DeepSeek-V4): window {}, head dim {} (RoPE {}), per layer {}; indexer {} heads of {}, top {}; {} hyper-connection streams; {} hash-routed layers",
            v4.window,
            v4.head_dim,
            v4.rope_dim,
            kinds.join(" "),
            v4.index.n_head,
            v4.index.head_dim,
            v4.index.top_k,
            v4.hc_mult,
            v4.hash.iter().filter(|&&h| h).count()
        );
    }
    if model.mtp_layers() > 0 {
        println!(
            "multi-token prediction: {} layer(s) kept (not run by generation yet)",
            model.mtp_layers()
        );
    }
    if let Some(moe) = &c.moe {
        println!(
            "experts: {} routed ({} per token), shared width {}, expert width {}, first {} layers dense",
            moe.router.n_expert, moe.router.n_used, moe.n_ff_shared, moe.n_ff_expert, moe.first_dense
        );
    }
    println!(
        "weights read per generated token: {:.1} MiB",
        mib(model.weight_bytes_per_token())
    );
    println!("KV cache: {kv_per_token} bytes per token");
    println!(
        "memory needed at context {ctx}: {:.1} MiB (weights {:.1} MiB + KV cache {:.1} MiB)",
        mib(file_size + kv_per_token * ctx as u64),
        mib(file_size),
        mib(kv_per_token * ctx as u64)
    );
}

/// `baicai inspect`.
pub fn inspect(a: InspectArgs) -> Result<()> {
    if a.model.model.is_dir() {
        let loaded = crate::load::load(&a.model)?;
        println!(
            "checkpoint folder: {} ({:.1} MiB)",
            a.model.model.display(),
            mib(loaded.file_size)
        );
        println!("weights in memory:");
        for h in &loaded.held_in_memory {
            println!("  {h}");
        }
        describe_model(loaded.model.as_ref(), loaded.file_size, a.ctx_size);
        return describe_cost(loaded.model.as_ref(), &a.cost);
    }
    let g = open_gguf(&a.model.model)?;
    println!(
        "file: {} (GGUF v{}, {:.1} MiB)",
        a.model.model.display(),
        g.version(),
        mib(g.file_size())
    );
    println!("\nmetadata ({} keys):", g.metadata().len());
    for (k, v) in g.metadata() {
        println!("  {k} = {}", show(v));
    }
    let mut params: u64 = 0;
    let mut by_type: std::collections::BTreeMap<&str, (usize, u64)> = Default::default();
    if !a.no_tensors {
        println!("\ntensors ({}):", g.tensors().len());
        println!(
            "  {:<40} {:<8} {:>24} {:>12}",
            "name", "type", "shape", "bytes"
        );
    }
    for t in g.tensors() {
        let n: u64 = t.shape.iter().product();
        params += n;
        let e = by_type.entry(t.ggml_type.name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
        if !a.no_tensors {
            let shape = format!("{:?}", t.shape);
            println!(
                "  {:<40} {:<8} {:>24} {:>12}",
                t.name,
                t.ggml_type.name(),
                shape,
                t.n_bytes
            );
        }
    }
    println!("\ntensor types:");
    for (ty, (count, bytes)) in &by_type {
        println!("  {ty:<8} {count:>5} tensors {:>10.1} MiB", mib(*bytes));
    }
    println!("\nparameters: {params} ({:.3} B)", params as f64 / 1e9);
    match baicai_models::load(g.clone()) {
        Ok(model) => {
            // As `run` and `bench` would hold it (`--load mmap`, the default).
            let budget = crate::load::larger_than_memory(g.file_size());
            println!("weights in memory: {}", crate::load::mapped_note(budget));
            describe_model(model.as_ref(), g.file_size(), a.ctx_size);
            describe_cost(model.as_ref(), &a.cost)?;
        }
        Err(e) => println!("architecture: cannot be run: {e}"),
    }
    Ok(())
}
