//! `synth-gguf`: writes a random-weight GGUF with exactly the tensor names, shapes, types and
//! metadata of a real quantized model, so speed and memory can be benchmarked at full size
//! without downloading the model.
//!
//! A key design decision made in this tool: nothing is ever held whole in memory. The header is
//! written from the plan, then every tensor is generated block by block into one reusable buffer
//! of a few MiB and streamed to [`baicai_gguf::GgufWriter`], so a 10 GB file costs a few MiB of
//! RSS. Each tensor draws from its own seeded stream ([`fill::Rng::for_stream`]), so the output
//! is a pure function of `--seed`.

mod deepseek;
mod deepseek_v2_lite;
mod deepseek_v32;
mod deepseek_v4;
mod fill;
mod llama_quant;
mod tokenizer;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use baicai_gguf::GgufWriter;
use clap::{Parser, Subcommand};

use baicai_gguf::Value;
use deepseek::PlannedTensor;
use fill::{Filler, Rng};

/// Bytes generated per write.
const CHUNK_BYTES: usize = 4 << 20;

const GIB: f64 = (1u64 << 30) as f64;

#[derive(Parser)]
#[command(about = "Writes random-weight GGUF files shaped like real models, for benchmarks")]
struct Cli {
    #[command(subcommand)]
    model: Model,
}

#[derive(Subcommand)]
enum Model {
    /// DeepSeek-V2-Lite (15.7B total, 2.4B active; MLA + 64-expert MoE) quantized like Q4_K_M.
    DeepseekV2Lite(Args),
    /// DeepSeek-V3.2 (MLA + lightning indexer + 256-expert MoE) at full width but few layers,
    /// quantized like Q4_K_M.
    DeepseekV32 {
        #[command(flatten)]
        args: Args,
        /// Layers to write: the first dense, the rest MoE (the full model has 61).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=61))]
        layers: u64,
    },
    /// DeepSeek-V4-Flash (hyper-connections, sliding window + CSA/HCA compressed attention,
    /// 256-expert MoE with MXFP4 experts) at full width but few layers; other tensors quantized
    /// like Q4_K_M.
    DeepseekV4 {
        #[command(flatten)]
        args: Args,
        /// Layers to write: window-only first, then CSA and HCA alternating (the full model has
        /// 43; the default 3 holds one of each kind, the first hash-routed).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=43))]
        layers: u64,
    },
}

/// What to write: metadata, tensors, and what the summary needs to count active parameters.
pub struct Plan {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<PlannedTensor>,
    /// Weights of `token_embd` (a row lookup per token, not a matmul).
    pub embd_params: u64,
    pub n_expert: u64,
    pub n_expert_used: u64,
}

#[derive(clap::Args)]
struct Args {
    /// Output file.
    #[arg(short, long, required_unless_present = "plan")]
    output: Option<PathBuf>,
    /// Seed of the random weights; the same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print every tensor's name, shape and type, and write nothing.
    #[arg(long)]
    plan: bool,
}

fn main() -> Result<()> {
    let (args, plan) = match Cli::parse().model {
        Model::DeepseekV2Lite(args) => (args, deepseek::plan(&deepseek_v2_lite::hparams())),
        Model::DeepseekV32 { args, layers } => {
            (args, deepseek::plan(&deepseek_v32::hparams(layers)))
        }
        Model::DeepseekV4 { args, layers } => {
            (args, deepseek_v4::plan(&deepseek_v4::hparams(layers)))
        }
    };
    let tensors = &plan.tensors;
    let mut out = std::io::stdout().lock();
    let printed = if args.plan {
        print_plan(&mut out, tensors).and_then(|()| print_summary(&mut out, &plan))
    } else {
        let path = args
            .output
            .as_deref()
            .expect("clap requires -o without --plan");
        let started = Instant::now();
        write(path, &plan.metadata, tensors, args.seed)?;
        let secs = started.elapsed().as_secs_f64();
        let size = std::fs::metadata(path)
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
        print_summary(&mut out, &plan).and_then(|()| {
            writeln!(out, "wrote {}", path.display())?;
            writeln!(
                out,
                "file size: {size} bytes ({:.2} GiB) in {secs:.1} s ({:.0} MiB/s)",
                size as f64 / GIB,
                size as f64 / (1 << 20) as f64 / secs
            )
        })
    };
    match printed {
        // A closed pipe (`--plan | head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// Writes the header, then each tensor in order, generated chunk by chunk.
fn write(
    path: &Path,
    metadata: &[(String, baicai_gguf::Value)],
    tensors: &[PlannedTensor],
    seed: u64,
) -> Result<()> {
    let specs: Vec<_> = tensors.iter().map(|t| t.spec.clone()).collect();
    let mut w = GgufWriter::create(path, metadata, &specs)
        .with_context(|| format!("writing the header of {}", path.display()))?;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut done = 0u64;
    let total: u64 = specs.iter().map(tensor_bytes).sum();
    let mut next_report = GIB as u64;
    for (i, t) in tensors.iter().enumerate() {
        let ty = t.spec.ggml_type;
        let filler = Filler::new(ty, t.init);
        let mut rng = Rng::for_stream(seed, i as u64);
        let unit = filler.unit_bytes();
        let mut left = tensor_bytes(&t.spec);
        while left > 0 {
            let n = (left.min((CHUNK_BYTES / unit * unit) as u64)) as usize;
            filler.fill(&mut rng, &mut buf[..n]);
            w.write_tensor_data(&t.spec.name, &buf[..n])?;
            left -= n as u64;
            done += n as u64;
        }
        if done >= next_report {
            eprintln!(
                "  {:5.2} / {:.2} GiB ({})",
                done as f64 / GIB,
                total as f64 / GIB,
                t.spec.name
            );
            next_report += GIB as u64;
        }
    }
    w.finish()?;
    Ok(())
}

fn tensor_bytes(spec: &baicai_gguf::TensorSpec) -> u64 {
    spec.ggml_type
        .tensor_bytes(&spec.shape)
        .expect("the plan has only whole-block rows")
}

fn print_plan(out: &mut impl Write, tensors: &[PlannedTensor]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:32} {:>20} {:5} {:>12}",
        "tensor", "shape", "type", "bytes"
    )?;
    for t in tensors {
        let shape: Vec<String> = t.spec.shape.iter().map(u64::to_string).collect();
        writeln!(
            out,
            "{:32} {:>20} {:5} {:>12}",
            t.spec.name,
            format!("[{}]", shape.join(", ")),
            t.spec.ggml_type.name(),
            tensor_bytes(&t.spec)
        )?;
    }
    Ok(())
}

/// Tensor and parameter counts per type, total and active per token.
fn print_summary(out: &mut impl Write, plan: &Plan) -> std::io::Result<()> {
    let tensors = &plan.tensors;
    let mut by_type: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for t in tensors.iter() {
        let e = by_type.entry(t.spec.ggml_type.name()).or_default();
        e.0 += 1;
        e.1 += t.n_elements();
        e.2 += tensor_bytes(&t.spec);
    }
    writeln!(out, "{} tensors:", tensors.len())?;
    writeln!(out, "  type   tensors  parameters        bytes")?;
    for (name, (n, params, bytes)) in &by_type {
        writeln!(
            out,
            "  {name:5} {n:8} {params:>14} {bytes:>14} ({:.2} GiB)",
            *bytes as f64 / GIB
        )?;
    }
    let total: u64 = tensors.iter().map(PlannedTensor::n_elements).sum();
    let routed: u64 = tensors
        .iter()
        .filter(|t| t.routed)
        .map(PlannedTensor::n_elements)
        .sum();
    let active = total - routed + routed / plan.n_expert * plan.n_expert_used;
    let embd = plan.embd_params;
    writeln!(
        out,
        "parameters: {total} total ({:.2} B)",
        total as f64 / 1e9
    )?;
    writeln!(
        out,
        "active per token: {active} ({:.2} B; {:.2} B without the token_embd lookup)",
        active as f64 / 1e9,
        (active - embd) as f64 / 1e9
    )
}
