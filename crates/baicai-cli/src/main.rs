//! `baicai`: run, chat with, inspect and benchmark GGUF models on the CPU.
//!
//! Standard output carries only what the command produces (generated text, JSON); status and
//! errors go to standard error. Every error is one line and a non-zero exit.

mod bench;
mod cost;
mod generate;
mod inspect;
mod load;
mod perplexity;
mod plan;
mod serve;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Run large language models on ordinary CPUs at the lowest cost per token.
#[derive(Parser)]
#[command(
    name = "baicai",
    version,
    about = "Run large language models on ordinary CPUs at the lowest cost per token (GGUF, quantized, streaming)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Raw completion of a prompt (no chat template), streamed to stdout.
    Run(generate::RunArgs),
    /// Interactive multi-turn chat with the model's chat template (`-p` for one turn).
    Chat(generate::ChatArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(load::TokenizeArgs),
    /// Print metadata, tensors, parameter count and memory needed.
    Inspect(inspect::InspectArgs),
    /// Measure prompt processing and generation speed (like llama-bench's pp/tg).
    Bench(bench::BenchArgs),
    /// Serve the OpenAI HTTP API (chat and text completions, streaming, metrics).
    Serve(serve::ServeArgs),
    /// Perplexity of a text over windows (as llama-perplexity), KL-divergence against saved runs.
    Perplexity(perplexity::PerplexityArgs),
    /// Capacity and cost planning: replicas and cost per day of a workload at candidate sites.
    Plan(plan::PlanArgs),
}

/// Keeps freed memory in the process (glibc): by default every buffer over 128 KiB is its own
/// `mmap`, so the per-layer activation buffers of a forward pass were mapped, zeroed by the
/// kernel, unmapped and their TLB entries shot down on both cores, over and over — about 6% of
/// DeepSeek-V2-Lite's prompt processing in `perf`. Buffers up to the largest threshold glibc
/// accepts (32 MiB) now come from the heap, which is not trimmed back.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Run(a) => generate::run(a),
        Command::Chat(a) => generate::chat(a),
        Command::Tokenize(a) => load::tokenize(a),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Bench(a) => bench::bench(a),
        Command::Serve(a) => serve::serve(a),
        Command::Perplexity(a) => perplexity::perplexity(a),
        Command::Plan(a) => plan::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}
