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
    /// How GGUF weights are held: `ram` reads the file into memory on 2 MiB pages (faster
    /// generation, needs memory for the whole file), `mmap` maps it (nothing read until used;
    /// models larger than RAM run from the page cache), `auto` reads it when it fits in the
    /// memory available (cgroup limits included) with room to spare, and maps it otherwise.
    #[arg(long = "load", value_enum, default_value_t = LoadMode::Auto)]
    pub load: LoadMode,
}

/// See [`ModelArgs::load`].
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    Auto,
    Mmap,
    Ram,
}

/// Memory `auto` leaves besides the weights (KV cache, activations, the rest of the system).
const AUTO_RESERVE_BYTES: u64 = 2 << 30;

/// The residency `mode` means for GGUF files of `file_bytes` in all.
fn residency(mode: LoadMode, file_bytes: u64) -> Residency {
    match mode {
        LoadMode::Mmap => Residency::Mapped,
        LoadMode::Ram => Residency::Resident,
        LoadMode::Auto => match baicai_engine::sysinfo::memory_budget_bytes() {
            Some(budget) if file_bytes + AUTO_RESERVE_BYTES <= budget / 10 * 9 => {
                Residency::Resident
            }
            _ => Residency::Mapped,
        },
    }
}

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
        return Ok(Loaded {
            model: model.into(),
            tokenizer,
            tokenizer_error,
            file_size: hf.file_size,
            held_in_memory: hf.held_in_memory,
        });
    }
    // The mapping costs nothing, and gives the size of every part of a split model.
    let size = open_gguf(path)?.file_size();
    let gguf = match residency(args.load, size) {
        Residency::Mapped => open_gguf(path)?,
        Residency::Resident => Arc::new(
            Gguf::open_with(path, Residency::Resident)
                .with_context(|| format!("cannot read {} into memory", path.display()))?,
        ),
    };
    let model: Arc<dyn CausalLm> = baicai_models::load(gguf.clone())
        .with_context(|| format!("cannot load model {}", path.display()))?
        .into();
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
            Residency::Mapped => "all tensors: memory-mapped from the file, not copied".into(),
            Residency::Resident => {
                "all tensors: read into memory once (2 MiB pages where the OS grants them)".into()
            }
        }],
    })
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
