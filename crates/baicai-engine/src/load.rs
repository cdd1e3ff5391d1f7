//! Opening a model (a GGUF file or a Hugging Face checkpoint folder) and its tokenizer, with the
//! loading policy passed in as a [`LoadOptions`] value. The command line and the server load
//! through here, so both hold weights the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use baicai_gguf::{Gguf, Residency};
use baicai_models::{CausalLm, ModelError};
use baicai_tokenizer::{Tokenizer, TokenizerSpec};

/// How GGUF weights are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadMode {
    /// Map the file: nothing is read until used; models larger than RAM run from the page cache.
    #[default]
    Mmap,
    /// Read the file into memory on 2 MiB pages (refused when it does not fit).
    Ram,
}

/// Whether matrices are repacked at load for the packed kernels (groups of 8 interleaved rows:
/// Q8_0 and Q5_0 today), as ik_llama.cpp's `-rtr` and llama.cpp's CPU repack do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Repack {
    /// Repack unless the model is larger than the memory it may use (it then runs from its
    /// memory map, which repacked copies would not be).
    #[default]
    Auto,
    /// Always repack.
    On,
    /// Never repack.
    Off,
}

/// The loading policy.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Repack matrices at load.
    pub repack: Repack,
    /// Threads for matrix multiplication (`None`: all cores). The pool is sized once per
    /// process; later loads keep the first size.
    pub threads: Option<usize>,
    pub mode: LoadMode,
    /// Turn the AVX-512 kernels off (results are identical; for comparisons).
    pub no_avx512: bool,
}

/// Errors of loading, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model file {0} does not exist")]
    NotFound(PathBuf),
    #[error("cannot read {path}: {source}")]
    Gguf {
        path: PathBuf,
        source: baicai_gguf::GgufError,
    },
    #[error("cannot load model {path}: {source}")]
    Model { path: PathBuf, source: ModelError },
    #[error("cannot load checkpoint folder {path}: {source}")]
    Folder { path: PathBuf, source: ModelError },
    #[error(
        "--load ram needs {need_gib:.1} GiB for the weights plus {reserve_gib:.0} GiB to spare, \
         but {have_gib:.1} GiB is available; use --load mmap"
    )]
    RamTooSmall {
        need_gib: f64,
        reserve_gib: f64,
        have_gib: f64,
    },
    #[error("--threads must be at least 1")]
    ZeroThreads,
    #[error("{0}")]
    Tokenizer(String),
}

/// A loaded model and, where it has one, its tokenizer.
pub struct Loaded {
    pub model: Arc<dyn CausalLm>,
    tokenizer: Result<Arc<Tokenizer>, String>,
    /// Bytes of the model file(s).
    pub file_size: u64,
    /// How the weights are held (checkpoint folders: per source type).
    pub held_in_memory: Vec<String>,
}

impl Loaded {
    /// The tokenizer, or the reason there is none.
    ///
    /// # Errors
    /// [`LoadError::Tokenizer`] naming the file and the reason.
    pub fn tokenizer(&self) -> Result<&Arc<Tokenizer>, LoadError> {
        self.tokenizer
            .as_ref()
            .map_err(|e| LoadError::Tokenizer(e.clone()))
    }
}

/// Memory `ram` must leave besides the weights (KV cache, activations, the rest of the system).
const RAM_RESERVE_BYTES: u64 = 1 << 30;

const GIB: f64 = (1u64 << 30) as f64;

/// The residency `mode` asks for, for GGUF files of `file_bytes` in all; `ram` is refused, naming
/// the figures, when the files do not fit in the memory available (cgroup limits included).
fn residency(mode: LoadMode, file_bytes: u64) -> Result<Residency, LoadError> {
    match mode {
        LoadMode::Mmap => Ok(Residency::Mapped),
        LoadMode::Ram => {
            if let Some(budget) = crate::sysinfo::memory_budget_bytes() {
                if file_bytes + RAM_RESERVE_BYTES > budget {
                    return Err(LoadError::RamTooSmall {
                        need_gib: file_bytes as f64 / GIB,
                        reserve_gib: RAM_RESERVE_BYTES as f64 / GIB,
                        have_gib: budget as f64 / GIB,
                    });
                }
            }
            Ok(Residency::Resident)
        }
    }
}

/// Opens a GGUF file (memory-mapped) with an error that names it.
///
/// # Errors
/// A missing or unreadable file.
pub fn open_gguf(path: &Path) -> Result<Arc<Gguf>, LoadError> {
    if !path.exists() {
        return Err(LoadError::NotFound(path.to_path_buf()));
    }
    let g = Gguf::open(path).map_err(|source| LoadError::Gguf {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Arc::new(g))
}

/// Sizes the thread pool (once per process); returns the threads asked for.
///
/// # Errors
/// Zero threads.
pub fn init_threads(threads: Option<usize>) -> Result<usize, LoadError> {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if n == 0 {
        return Err(LoadError::ZeroThreads);
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .ok();
    Ok(n)
}

/// The tokenizer of a GGUF file or a checkpoint folder.
///
/// # Errors
/// The file cannot be read or has no usable tokenizer.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, LoadError> {
    let t = if path.is_dir() {
        TokenizerSpec::from_hf_dir(path).and_then(Tokenizer::from_spec)
    } else {
        Tokenizer::from_gguf(&*open_gguf(path)?)
    };
    t.map_err(|e| {
        LoadError::Tokenizer(format!(
            "cannot load the tokenizer of {}: {e}",
            path.display()
        ))
    })
}

/// Loads a model (a GGUF file, or a Hugging Face checkpoint folder) and its tokenizer.
///
/// # Errors
/// A missing or unreadable file, an unsupported or inconsistent model, `ram` without the memory.
/// A missing tokenizer is not an error here (see [`Loaded::tokenizer`]).
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Loaded, LoadError> {
    init_threads(opts.threads)?;
    if opts.no_avx512 {
        baicai_kernels::dispatch::disable_avx512();
    }
    let tokenizer = |path: &Path| {
        load_tokenizer(path)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    };
    let pack = |file_bytes: u64| match opts.repack {
        Repack::On => true,
        Repack::Off => false,
        Repack::Auto => larger_than_memory(file_bytes).is_none(),
    };
    if path.is_dir() {
        let pack = pack(safetensors_bytes(path));
        let (model, hf) =
            baicai_models::load_hf_with(path, pack).map_err(|source| LoadError::Folder {
                path: path.to_path_buf(),
                source,
            })?;
        // As for GGUF files below (weights held in memory rather than mapped are only advised
        // in vain).
        let budget = larger_than_memory(hf.file_size);
        baicai_models::moe::set_expert_readahead(budget.is_some());
        let mut held_in_memory = hf.held_in_memory;
        if pack {
            held_in_memory.push(PACKED_NOTE.into());
        }
        if let Some(b) = budget {
            held_in_memory.push(readahead_note(b));
        }
        return Ok(Loaded {
            model: model.into(),
            tokenizer: tokenizer(path),
            file_size: hf.file_size,
            held_in_memory,
        });
    }
    // The mapping costs nothing, and gives the size of every part of a split model.
    let mapped = open_gguf(path)?;
    let gguf = match residency(opts.mode, mapped.file_size())? {
        Residency::Mapped => mapped,
        Residency::Resident => Arc::new(Gguf::open_with(path, Residency::Resident).map_err(
            |source| LoadError::Gguf {
                path: path.to_path_buf(),
                source,
            },
        )?),
    };
    let packing = pack(gguf.file_size());
    let model: Arc<dyn CausalLm> = baicai_models::load_with(gguf.clone(), packing)
        .map_err(|source| LoadError::Model {
            path: path.to_path_buf(),
            source,
        })?
        .into();
    // A mapped model larger than the memory it may use runs from disk: start reading each
    // layer's selected experts as soon as they are known.
    let budget =
        larger_than_memory(gguf.file_size()).filter(|_| gguf.residency() == Residency::Mapped);
    baicai_models::moe::set_expert_readahead(budget.is_some());
    let tokenizer = Tokenizer::from_gguf(&gguf)
        .map(Arc::new)
        .map_err(|e| format!("cannot load the tokenizer of {}: {e}", path.display()));
    Ok(Loaded {
        model,
        tokenizer,
        file_size: gguf.file_size(),
        held_in_memory: [match gguf.residency() {
            Residency::Mapped => mapped_note(budget),
            Residency::Resident => {
                "all tensors: read into memory once (2 MiB pages where the OS grants them)".into()
            }
        }]
        .into_iter()
        .chain(packing.then(|| PACKED_NOTE.to_string()))
        .collect(),
    })
}

/// What `held_in_memory` says when matrices were repacked.
const PACKED_NOTE: &str =
    "Q8_0, Q5_0, Q4_0, IQ4_NL, MXFP4, Q4_K, Q5_K and Q6_K matrices: repacked at load into \
     groups of 8 rows, in memory of their own";

/// Bytes of the safetensors files in a checkpoint folder (0 where it cannot be listed: loading
/// then says what is wrong).
fn safetensors_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// What `held_in_memory` says of a memory-mapped GGUF file; `budget` is
/// [`larger_than_memory`]'s answer for it (experts are then read ahead).
pub fn mapped_note(budget: Option<u64>) -> String {
    match budget {
        None => "all tensors: memory-mapped from the file, not copied".into(),
        Some(b) => format!(
            "all tensors: memory-mapped from the file, not copied; {}",
            readahead_note(b)
        ),
    }
}

/// The memory budget (cgroup limits included) when a model of `file_bytes` is larger than it.
pub fn larger_than_memory(file_bytes: u64) -> Option<u64> {
    crate::sysinfo::memory_budget_bytes().filter(|&b| file_bytes > b)
}

/// What `held_in_memory` says when experts are read ahead.
fn readahead_note(budget: u64) -> String {
    format!(
        "the model is larger than the {:.1} GiB of memory available, so experts are read ahead \
         as they are routed",
        budget as f64 / GIB
    )
}
