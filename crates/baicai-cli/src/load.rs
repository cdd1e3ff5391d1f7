//! Opening models and the options shared by commands.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use baicai_gguf::Gguf;
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
    let gguf = open_gguf(path)?;
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
        held_in_memory: vec!["all tensors: memory-mapped from the file, not copied".into()],
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
