//! Mixtral (`llama` with `llama.expert_count` > 0 in GGUF, `mixtral` in checkpoints): Llama's
//! attention over experts weighted by a softmax over the top-k router logits, i.e. softmax
//! routing renormalized over the top-k (Hugging Face's `MixtralSparseMoeBlock`).

use super::llama::{Family, Llama};
use super::ArchSpec;
use crate::blocks::attention::{GqaTensors, Presence};
use crate::config::{Arch, RopeStyle};

pub(crate) const SPEC: ArchSpec = ArchSpec {
    arch: Arch::Mixtral,
    gguf: "llama",
    hf: &["mixtral"],
    moe: true,
    rope_gguf: RopeStyle::Interleaved,
    rope_hf: RopeStyle::Neox,
    gguf_norm_topk_prob: Some(true),
    build: |s, cfg| Ok(Box::new(Llama::load(s, cfg, FAMILY)?)),
};

/// An f32 cache, which the F32 oracle fixtures are checked against.
const FAMILY: Family = Family {
    attn: GqaTensors {
        bias: Presence::Absent,
        qk_norm: Presence::Absent,
        sinks: Presence::Absent,
    },
    moe: true,
    kv_f16: false,
};
