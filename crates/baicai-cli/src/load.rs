//! Opening models and the options shared by commands.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use baicai_gguf::Gguf;
use baicai_models::CausalLm;
use baicai_tokenizer::Tokenizer;
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
    rayon::ThreadPoolBuilder::new().num_threads(n).build_global().ok();
    Ok(n)
}

/// A loaded model and its tokenizer.
pub struct Loaded {
    pub gguf: Arc<Gguf>,
    pub model: Arc<dyn CausalLm>,
    pub tokenizer: Tokenizer,
}

/// Loads model and tokenizer.
pub fn load(args: &ModelArgs) -> Result<Loaded> {
    init_threads(args.threads)?;
    let gguf = open_gguf(&args.model)?;
    let model: Arc<dyn CausalLm> = baicai_models::load(gguf.clone())
        .with_context(|| format!("cannot load model {}", args.model.display()))?
        .into();
    let tokenizer = Tokenizer::from_gguf(&gguf)
        .with_context(|| format!("cannot load the tokenizer of {}", args.model.display()))?;
    Ok(Loaded { gguf, model, tokenizer })
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
