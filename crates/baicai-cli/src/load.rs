//! Opening models and the options shared by commands.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use baicai_engine::load::LoadOptions;
pub use baicai_engine::load::{larger_than_memory, mapped_note, Loaded};
use baicai_gguf::Gguf;
use clap::Args;

/// Model and threads, shared by every command.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Path to a GGUF model file (the first part of a split model is enough) or a Hugging Face
    /// checkpoint folder (`config.json`, safetensors shards, `tokenizer.json`).
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
    /// Repack Q8_0, Q5_0, Q4_0, IQ4_NL, MXFP4, Q4_K, Q5_K and Q6_K matrices at load into groups of 8 interleaved rows for the packed
    /// kernels (faster prompts and batches; as many bytes as the file's, in memory of their
    /// own): `auto` (default) unless the model is larger than the memory it may use, `on`, `off`.
    #[arg(long = "repack", value_enum, default_value_t = Repack::Auto)]
    pub repack: Repack,
}

/// See [`ModelArgs::repack`].
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repack {
    Auto,
    On,
    Off,
}

/// See [`ModelArgs::load`].
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    Mmap,
    Ram,
}

impl ModelArgs {
    /// The loading policy these flags ask for.
    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            threads: self.threads,
            mode: match self.load {
                LoadMode::Mmap => baicai_engine::load::LoadMode::Mmap,
                LoadMode::Ram => baicai_engine::load::LoadMode::Ram,
            },
            no_avx512: self.no_avx512,
            repack: match self.repack {
                Repack::Auto => baicai_engine::load::Repack::Auto,
                Repack::On => baicai_engine::load::Repack::On,
                Repack::Off => baicai_engine::load::Repack::Off,
            },
        }
    }
}

/// Opens the GGUF file with a message that names it.
pub fn open_gguf(path: &Path) -> Result<Arc<Gguf>> {
    Ok(baicai_engine::load::open_gguf(path)?)
}

/// Loads a model (a GGUF file, or a Hugging Face checkpoint folder) and its tokenizer.
pub fn load(args: &ModelArgs) -> Result<Loaded> {
    Ok(baicai_engine::load::load(&args.model, &args.options())?)
}

/// Arguments of `tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Path to a GGUF model file or a Hugging Face checkpoint folder (its `tokenizer.json`).
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
    let tok = baicai_engine::load::load_tokenizer(&a.model)?;
    let ids = tok.encode(&a.text, a.special, a.special);
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
