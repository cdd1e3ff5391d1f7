//! Opening models and the options shared by commands.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use baicai_gguf::{Gguf, Residency};
use baicai_models::CausalLm;
use baicai_tokenizer::{Tokenizer, TokenizerSpec};
use clap::Args;

/// Model and threads, shared by every command.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Path to a GGUF model file (the first part of a split model is enough).
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Threads for matrix multiplication (default: all cores).
    #[arg(short = 't', long = "threads")]
    pub threads: Option<usize>,
    /// How GGUF weights are held: `mmap` (default) maps the file (nothing read until used;
    /// models larger than RAM run from the page cache); `ram` reads it into memory on 2 MiB
    /// pages (faster generation where the page cache holds the file in 4 KiB pages; needs memory
    /// for the whole file and time to read it).
    #[arg(long = "load", value_enum, default_value_t = LoadMode::Mmap)]
    pub load: LoadMode,
    /// Do not use the AVX-512 kernels even where the CPU has them (results are identical; for
    /// comparing against the AVX2 kernels).
    #[arg(long = "no-avx512")]
    pub no_avx512: bool,
}

/// See [`ModelArgs::load`].
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    Mmap,
    Ram,
}

/// Memory `ram` must leave besides the weights (KV cache, activations, the rest of the system).
const RAM_RESERVE_BYTES: u64 = 1 << 30;

/// The residency `mode` asks for, for GGUF files of `file_bytes` in all; `ram` is refused, naming
/// the figures, when the files do not fit in the memory available (cgroup limits included).
fn residency(mode: LoadMode, file_bytes: u64) -> Result<Residency> {
    match mode {
        LoadMode::Mmap => Ok(Residency::Mapped),
        LoadMode::Ram => {
            if let Some(budget) = baicai_engine::sysinfo::memory_budget_bytes() {
                if file_bytes + RAM_RESERVE_BYTES > budget {
                    anyhow::bail!(
                        "--load ram needs {:.1} GiB for the weights plus {:.0} GiB to spare, but \
                         {:.1} GiB is available; use --load mmap",
                        file_bytes as f64 / GIB,
                        RAM_RESERVE_BYTES as f64 / GIB,
                        budget as f64 / GIB
                    );
                }
            }
            Ok(Residency::Resident)
        }
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// Opens the GGUF file with a message that names it.
pub fn open_gguf(path: &Path) -> Result<Arc<Gguf>> {
    if !path.exists() {
        anyhow::bail!("model file {} does not exist", path.display());
    }
    let g = Gguf::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Arc::new(g))
}

/// Sets the thread pool size once.
pub fn init_threads(threads: Option<usize>) -> Result<usize> {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if n == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .ok();
    Ok(n)
}

/// A loaded model and, where it has one, its tokenizer.
pub struct Loaded {
    pub model: Arc<dyn CausalLm>,
    tokenizer: Option<Tokenizer>,
    tokenizer_error: String,
    /// Bytes of the model file(s).
    pub file_size: u64,
    /// How the weights are held (checkpoint folders: per source type).
    pub held_in_memory: Vec<String>,
}

impl Loaded {
    /// The tokenizer, or the reason there is none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("{}", self.tokenizer_error))
    }
}

/// Loads a model (a GGUF file, or a Hugging Face checkpoint folder) and its tokenizer.
pub fn load(args: &ModelArgs) -> Result<Loaded> {
    init_threads(args.threads)?;
    if args.no_avx512 {
        baicai_kernels::dispatch::disable_avx512();
    }
    let path = &args.model;
    if path.is_dir() {
        let (model, hf) = baicai_models::load_hf(path)
            .with_context(|| format!("cannot load checkpoint folder {}", path.display()))?;
        let tok = TokenizerSpec::from_hf_dir(path).and_then(Tokenizer::from_spec);
        let (tokenizer, tokenizer_error) = match tok {
            Ok(t) => (Some(t), String::new()),
            Err(e) => (
                None,
                format!("cannot load the tokenizer of {}: {e}", path.display()),
            ),
        };
        // As for GGUF files below (weights held in memory rather than mapped are only advised
        // in vain).
        let budget = larger_than_memory(hf.file_size);
        baicai_models::moe::set_expert_readahead(budget.is_some());
        let mut held_in_memory = hf.held_in_memory;
        if let Some(b) = budget {
            held_in_memory.push(readahead_note(b));
        }
        return Ok(Loaded {
            model: model.into(),
            tokenizer,
            tokenizer_error,
            file_size: hf.file_size,
            held_in_memory,
        });
    }
    // The mapping costs nothing, and gives the size of every part of a split model.
    let mapped = open_gguf(path)?;
    let gguf = match residency(args.load, mapped.file_size())? {
        Residency::Mapped => mapped,
        Residency::Resident => Arc::new(
            Gguf::open_with(path, Residency::Resident)
                .with_context(|| format!("cannot read {} into memory", path.display()))?,
        ),
    };
    let model: Arc<dyn CausalLm> = baicai_models::load(gguf.clone())
        .with_context(|| format!("cannot load model {}", path.display()))?
        .into();
    // A mapped model larger than the memory it may use runs from disk: start reading each
    // layer's selected experts as soon as they are known.
    let budget =
        larger_than_memory(gguf.file_size()).filter(|_| gguf.residency() == Residency::Mapped);
    baicai_models::moe::set_expert_readahead(budget.is_some());
    let (tokenizer, tokenizer_error) = match Tokenizer::from_gguf(&gguf) {
        Ok(t) => (Some(t), String::new()),
        Err(e) => (
            None,
            format!("cannot load the tokenizer of {}: {e}", path.display()),
        ),
    };
    Ok(Loaded {
        model,
        tokenizer,
        tokenizer_error,
        file_size: gguf.file_size(),
        held_in_memory: vec![match gguf.residency() {
            Residency::Mapped => mapped_note(budget),
            Residency::Resident => {
                "all tensors: read into memory once (2 MiB pages where the OS grants them)".into()
            }
        }],
    })
}

/// What `held_in_memory` says of a memory-mapped GGUF file; `budget` is
/// [`larger_than_memory`]'s answer for it (experts are then read ahead).
pub(crate) fn mapped_note(budget: Option<u64>) -> String {
    match budget {
        None => "all tensors: memory-mapped from the file, not copied".into(),
        Some(b) => format!(
            "all tensors: memory-mapped from the file, not copied; {}",
            readahead_note(b)
        ),
    }
}

/// The memory budget (cgroup limits included) when a model of `file_bytes` is larger than it.
pub(crate) fn larger_than_memory(file_bytes: u64) -> Option<u64> {
    baicai_engine::sysinfo::memory_budget_bytes().filter(|&b| file_bytes > b)
}

/// What `held_in_memory` says when experts are read ahead.
fn readahead_note(budget: u64) -> String {
    format!(
        "the model is larger than the {:.1} GiB of memory available, so experts are read ahead \
         as they are routed",
        budget as f64 / GIB
    )
}

/// Arguments of `tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Path to a GGUF model file.
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// The text to tokenize.
    pub text: String,
    /// Parse special tokens written in the text (e.g. `<|im_start|>`) and add the model's
    /// automatic BOS/EOS tokens.
    #[arg(long)]
    pub special: bool,
}

/// `baicai tokenize`.
pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let gguf = open_gguf(&a.model)?;
    let tok = Tokenizer::from_gguf(&gguf)
        .with_context(|| format!("cannot load the tokenizer of {}", a.model.display()))?;
    let ids = tok.encode(&a.text, a.special, a.special);
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
