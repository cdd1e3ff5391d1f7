//! `baicai inspect`: what is in a model file and what running it costs in memory.

use anyhow::Result;
use baicai_gguf::Value;
use clap::Args;

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

/// `baicai inspect`.
pub fn inspect(a: InspectArgs) -> Result<()> {
    let g = open_gguf(&a.model.model)?;
    println!("file: {} (GGUF v{}, {:.1} MiB)", a.model.model.display(), g.version(), mib(g.file_size()));
    println!("\nmetadata ({} keys):", g.metadata().len());
    for (k, v) in g.metadata() {
        println!("  {k} = {}", show(v));
    }
    let mut params: u64 = 0;
    let mut by_type: std::collections::BTreeMap<&str, (usize, u64)> = Default::default();
    if !a.no_tensors {
        println!("\ntensors ({}):", g.tensors().len());
        println!("  {:<40} {:<8} {:>24} {:>12}", "name", "type", "shape", "bytes");
    }
    for t in g.tensors() {
        let n: u64 = t.shape.iter().product();
        params += n;
        let e = by_type.entry(t.ggml_type.name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
        if !a.no_tensors {
            let shape = format!("{:?}", t.shape);
            println!("  {:<40} {:<8} {:>24} {:>12}", t.name, t.ggml_type.name(), shape, t.n_bytes);
        }
    }
    println!("\ntensor types:");
    for (ty, (count, bytes)) in &by_type {
        println!("  {ty:<8} {count:>5} tensors {:>10.1} MiB", mib(*bytes));
    }
    println!("\nparameters: {params} ({:.3} B)", params as f64 / 1e9);
    match baicai_models::load(g.clone()) {
        Ok(model) => {
            let c = model.config();
            let kv_per_token = (c.n_layer * (c.k_dim() + c.v_dim()) * 4) as u64;
            println!(
                "architecture: {} ({} layers, d_model {}, {} heads / {} KV heads, head dim {}, vocab {})",
                c.arch_name, c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim_k, c.n_vocab
            );
            println!("weights in memory: memory-mapped from the file, not copied");
            println!("weights read per generated token: {:.1} MiB", mib(model.weight_bytes_per_token()));
            println!("KV cache: f32, {kv_per_token} bytes per token");
            println!(
                "memory needed at context {}: {:.1} MiB (weights {:.1} MiB + KV cache {:.1} MiB)",
                a.ctx_size,
                mib(g.file_size() + kv_per_token * a.ctx_size as u64),
                mib(g.file_size()),
                mib(kv_per_token * a.ctx_size as u64)
            );
        }
        Err(e) => println!("architecture: cannot be run: {e}"),
    }
    Ok(())
}
