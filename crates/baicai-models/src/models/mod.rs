//! One file per architecture, as llama.cpp's `src/models/*.cpp`: each owns what its files say
//! about it (its [`ArchSpec`]: the names its GGUF and `config.json` files give it, its RoPE
//! layout, the settings its graph fixes), its tensors and its forward pass, built from
//! [`crate::blocks`]. The registry of these specs is [`crate::ARCHITECTURES`]; adding an
//! architecture is a new file here plus a line there (and an [`Arch`] variant).
//!
//! `deepseek2.rs` stays at the crate root until it moves onto the blocks; its spec is here.

pub mod deepseek4;
pub mod gemma3;
pub mod llama;
pub mod mixtral;
pub mod qwen2;
pub mod qwen2moe;
pub mod qwen3;
pub mod qwen3moe;

use crate::config::{Arch, ModelConfig, RopeStyle};
use crate::weights::WeightStore;
use crate::{CausalLm, ModelError};

/// Builds an architecture's model from tensors under canonical names, whichever file they came
/// from.
pub type Build = fn(WeightStore, ModelConfig) -> Result<Box<dyn CausalLm>, ModelError>;

/// What the loaders need to know of an architecture.
#[derive(Debug, Clone, Copy)]
pub struct ArchSpec {
    pub arch: Arch,
    /// `general.architecture` of its GGUF files.
    pub gguf: &'static str,
    /// `model_type` values of its `config.json` (or of its `text_config`).
    pub hf: &'static [&'static str],
    /// Mixture-of-Experts feed-forward blocks; also what tells apart two architectures whose
    /// GGUF files share a name (Mixtral ships as `llama` with `llama.expert_count` > 0).
    pub moe: bool,
    /// How RoPE pairs dimensions in its GGUF files: llama.cpp's converter permutes Llama-style
    /// q/k weights to adjacent pairs.
    pub rope_gguf: RopeStyle,
    /// How RoPE pairs dimensions in its checkpoints (transformers' `rotate_half` rotates halves;
    /// DeepSeek's code de-interleaves first, i.e. rotates adjacent pairs).
    pub rope_hf: RopeStyle,
    /// Whether routed weights are renormalized over the top-k when the graph fixes it
    /// (llama.cpp's graphs hard-code it for Qwen-MoE and Mixtral); `None`: the GGUF file says
    /// (`expert_weights_norm`).
    pub gguf_norm_topk_prob: Option<bool>,
    pub build: Build,
}

/// DeepSeek-V2/V3 and Kimi K2 ([`crate::deepseek2`]).
pub(crate) const DEEPSEEK2: ArchSpec = ArchSpec {
    arch: Arch::Deepseek2,
    gguf: "deepseek2",
    // Kimi K2 ships the DeepSeek-V3 architecture under its own model_type.
    hf: &["deepseek_v2", "deepseek_v3", "kimi_k2"],
    moe: true,
    rope_gguf: RopeStyle::Interleaved,
    rope_hf: RopeStyle::Interleaved,
    gguf_norm_topk_prob: None,
    build: |s, cfg| Ok(Box::new(crate::deepseek2::Deepseek2::load(s, cfg)?)),
};

/// DeepSeek-V3.2: V3 plus DeepSeek Sparse Attention's lightning indexer ([`crate::deepseek2`],
/// [`crate::indexer`]).
pub(crate) const DEEPSEEK32: ArchSpec = ArchSpec {
    gguf: "deepseek32",
    hf: &["deepseek_v32"],
    ..DEEPSEEK2
};

/// The number of distinct GGUF names in `specs`.
pub(crate) const fn n_gguf_names(specs: &[ArchSpec]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < specs.len() {
        if first_with_name(specs, i) {
            n += 1;
        }
        i += 1;
    }
    n
}

/// The distinct GGUF names of `specs`, in registry order.
pub(crate) const fn gguf_names<const N: usize>(specs: &[ArchSpec]) -> [&'static str; N] {
    let mut out = [""; N];
    let (mut n, mut i) = (0, 0);
    while i < specs.len() {
        if first_with_name(specs, i) {
            out[n] = specs[i].gguf;
            n += 1;
        }
        i += 1;
    }
    out
}

/// Whether no spec before `specs[i]` has its GGUF name.
const fn first_with_name(specs: &[ArchSpec], i: usize) -> bool {
    let mut j = 0;
    while j < i {
        if str_eq(specs[j].gguf, specs[i].gguf) {
            return false;
        }
        j += 1;
    }
    true
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    /// Every name of every registered architecture leads back to it, and the GGUF names are
    /// listed once each.
    #[test]
    fn registry_names_resolve_to_their_architectures() {
        let gguf = [
            "llama",
            "qwen2",
            "qwen3",
            "gemma3",
            "deepseek2",
            "deepseek32",
            "deepseek4",
            "qwen2moe",
            "qwen3moe",
        ];
        assert_eq!(crate::SUPPORTED_ARCHITECTURES, gguf);
        for s in crate::ARCHITECTURES {
            // Architectures with several file names (DeepSeek-V3.2 is V3's code) share one
            // spec's settings.
            let first = crate::spec(s.arch);
            assert_eq!(
                (first.arch, first.rope_gguf, first.rope_hf, first.moe),
                (s.arch, s.rope_gguf, s.rope_hf, s.moe)
            );
            for t in s.hf {
                assert_eq!(crate::spec_by_hf(t).map(|h| h.arch), Some(s.arch), "{t}");
            }
            let by_gguf = crate::spec_by_gguf(s.gguf, || Ok(s.moe)).unwrap();
            assert_eq!(by_gguf.map(|g| g.arch), Some(s.arch), "{}", s.gguf);
        }
    }
}
