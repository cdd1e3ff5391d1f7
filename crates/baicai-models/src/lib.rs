//! Model configs, weight loading and forward passes, one file per architecture.
//!
//! A key design decision made in this crate: model code is quant-agnostic. A layer holds
//! [`weights::Linear`] handles that point into the memory-mapped file; their matmul dispatches on
//! the storage type inside `baicai-kernels`, so there are no `quantized_<arch>` twins and the
//! weights are never copied. Small vectors (norm weights, biases) are decoded to f32 at load.
//!
//! Each architecture is one file under [`models`] (`llama.rs`, `qwen2.rs`, `gemma3.rs`, …) that
//! owns its names, tensors and forward pass and reads top to bottom like its paper; the shared
//! pieces (attention, feed-forward, MoE, norms, RoPE) live in [`blocks`]. One registry,
//! [`ARCHITECTURES`], serves both loaders: [`load`] (GGUF) and [`load_hf`] (checkpoint folders)
//! end in the same [`build`].

pub mod blocks;
pub mod config;
mod decoder;
pub mod deepseek2;
pub mod error;
pub mod hf;
mod indexer;
pub mod kv;
pub mod layers;
pub mod models;
pub mod weights;

pub use blocks::moe;

use std::sync::Arc;

use baicai_gguf::Gguf;

pub use config::{Arch, ModelConfig};
pub use error::ModelError;
pub use kv::KvCache;
pub use models::ArchSpec;

/// Which positions of a forward pass produce logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token (generation, prompt processing).
    Last,
    /// Every token (tests, perplexity).
    All,
}

/// Receives named intermediate activations during a forward pass: the name (llama.cpp's graph
/// names: `attn_norm`, `Qcur`, `kqv_out`, `ffn_out`, `l_out`, …), the layer, and the values
/// (`[n_tokens, width]`, row-major). For dumping and diffing against a reference implementation.
pub type Trace = Arc<dyn Fn(&str, usize, &[f32]) + Send + Sync>;

/// One sequence's part of a batched forward pass.
pub struct SeqInput<'a> {
    /// Tokens to run, at positions `cache.len()..cache.len() + tokens.len()`.
    pub tokens: &'a [u32],
    /// The sequence's keys and values; the tokens' are appended.
    pub cache: &'a mut KvCache,
    /// Which of its positions produce logits.
    pub logits: Logits,
}

/// A causal language model: tokens in, logits out, state in a [`KvCache`].
pub trait CausalLm: Send + Sync {
    /// The model's configuration.
    fn config(&self) -> &ModelConfig;

    /// Runs several sequences in one pass: every weight matrix is read once for all their
    /// tokens (for MoE models, tokens are grouped by expert across sequences), while positions,
    /// caches and attention stay per sequence. Returns one logits vector per sequence
    /// (`[n_vocab]` for [`Logits::Last`], `[tokens.len(), n_vocab]` for [`Logits::All`]).
    ///
    /// Batch invariant: each sequence's logits are bit-identical to running it alone.
    ///
    /// # Errors
    /// No sequences or a sequence without tokens, a cache without room for its tokens, a token
    /// id outside the vocabulary; nothing is appended to any cache then.
    fn forward_batch(&self, seqs: &mut [SeqInput]) -> Result<Vec<Vec<f32>>, ModelError>;

    /// Runs `tokens` at positions `cache.len()..cache.len() + tokens.len()`, appends their keys and
    /// values to `cache`, and returns logits (`[n_vocab]` for [`Logits::Last`], or
    /// `[tokens.len(), n_vocab]` for [`Logits::All`]).
    ///
    /// # Errors
    /// When `tokens` is empty, the cache has no room for the tokens or a token id is outside the
    /// vocabulary.
    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        logits: Logits,
    ) -> Result<Vec<f32>, ModelError> {
        let mut seqs = [SeqInput {
            tokens,
            cache,
            logits,
        }];
        let mut out = self.forward_batch(&mut seqs)?;
        out.pop().ok_or(ModelError::EmptyBatch)
    }

    /// A fresh cache for up to `n_ctx` tokens (memory is committed as it fills).
    fn new_cache(&self, n_ctx: usize) -> KvCache {
        let c = self.config();
        KvCache::new(
            c.n_layer,
            n_ctx,
            c.n_head_kv * c.head_dim_k,
            c.n_head_kv * c.head_dim_v,
        )
    }

    /// Multi-token-prediction layers the model file carries and the model keeps (for
    /// speculative decoding); the forward pass does not run them.
    fn mtp_layers(&self) -> usize {
        0
    }

    /// Tokens routed to each expert of each layer so far (MoE models only).
    fn expert_load(&self) -> Option<Vec<moe::ExpertLoad>> {
        None
    }

    /// Installs (or with `None` removes) a [`Trace`] called at the model's named trace points.
    /// Models without trace points ignore it; with none installed a trace point costs one branch.
    fn set_trace(&mut self, _trace: Option<Trace>) {}

    /// Bytes of weights read to produce one token (every tensor except the token embedding,
    /// of which one row is read).
    fn weight_bytes_per_token(&self) -> u64;
}

/// Every architecture this crate can run, one line each.
pub const ARCHITECTURES: &[ArchSpec] = &[
    models::llama::SPEC,
    models::qwen2::SPEC,
    models::qwen3::SPEC,
    models::gemma3::SPEC,
    models::DEEPSEEK2,
    models::DEEPSEEK32,
    models::deepseek4::SPEC,
    models::qwen2moe::SPEC,
    models::qwen3moe::SPEC,
    models::mixtral::SPEC,
];

const N_GGUF_NAMES: usize = models::n_gguf_names(ARCHITECTURES);

/// Architectures this crate can run (`general.architecture` values).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &models::gguf_names::<N_GGUF_NAMES>(ARCHITECTURES);

/// The registered spec of `arch`.
///
/// # Panics
/// If `arch` has no line in [`ARCHITECTURES`] (a bug: every [`Arch`] has one).
pub fn spec(arch: Arch) -> &'static ArchSpec {
    ARCHITECTURES
        .iter()
        .find(|s| s.arch == arch)
        .expect("every architecture is registered")
}

/// The architecture of a GGUF file whose `general.architecture` is `name`; `has_experts` is
/// asked only where two architectures share the name.
///
/// # Errors
/// As `has_experts`.
pub(crate) fn spec_by_gguf(
    name: &str,
    has_experts: impl FnOnce() -> Result<bool, ModelError>,
) -> Result<Option<&'static ArchSpec>, ModelError> {
    let named: Vec<&ArchSpec> = ARCHITECTURES.iter().filter(|s| s.gguf == name).collect();
    if named.len() < 2 {
        return Ok(named.first().copied());
    }
    let moe = has_experts()?;
    Ok(named
        .iter()
        .find(|s| s.moe == moe)
        .or(named.first())
        .copied())
}

/// The architecture of a `config.json` whose `model_type` is `model_type`.
pub(crate) fn spec_by_hf(model_type: &str) -> Option<&'static ArchSpec> {
    ARCHITECTURES.iter().find(|s| s.hf.contains(&model_type))
}

/// Loads the model in `gguf`, choosing the architecture from `general.architecture`.
///
/// # Errors
/// An unsupported architecture, a missing tensor, a wrong shape or an unsupported tensor type,
/// each named.
pub fn load(gguf: Arc<Gguf>) -> Result<Box<dyn CausalLm>, ModelError> {
    // Packed where the format allows: see `load_with`.
    load_with(gguf, true)
}

/// [`load`], packing the matrices of formats with a packed layout at load (`pack`, as
/// [`weights::WeightStore::set_packing`] says) or leaving every tensor where it is (a model
/// larger than memory runs from its memory map).
///
/// # Errors
/// As [`load`].
pub fn load_with(gguf: Arc<Gguf>, pack: bool) -> Result<Box<dyn CausalLm>, ModelError> {
    let cfg = ModelConfig::from_gguf(&gguf)?;
    let mut store = weights::WeightStore::new(gguf);
    store.set_packing(pack);
    build(store, cfg)
}

/// Loads a Hugging Face checkpoint folder (`config.json` + safetensors).
///
/// # Errors
/// As [`hf::HfModel::open`], and missing tensors or wrong shapes, each named.
pub fn load_hf(dir: &std::path::Path) -> Result<(Box<dyn CausalLm>, hf::HfModel), ModelError> {
    load_hf_with(dir, true)
}

/// [`load_hf`], packing as [`load_with`] says.
///
/// # Errors
/// As [`load_hf`].
pub fn load_hf_with(
    dir: &std::path::Path,
    pack: bool,
) -> Result<(Box<dyn CausalLm>, hf::HfModel), ModelError> {
    let mut m = hf::HfModel::open(dir)?;
    let mut store = std::mem::replace(
        &mut m.store,
        weights::WeightStore::from_entries(Default::default()),
    );
    store.set_packing(pack);
    let model = build(store, m.config.clone())?;
    Ok((model, m))
}

/// Builds the model of `cfg.arch` from tensors under canonical names, whichever file they came
/// from.
///
/// # Errors
/// A missing tensor, a wrong shape or an unsupported tensor type, each named.
pub fn build(
    store: weights::WeightStore,
    cfg: ModelConfig,
) -> Result<Box<dyn CausalLm>, ModelError> {
    (spec(cfg.arch).build)(store, cfg)
}
