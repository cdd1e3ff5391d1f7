//! Qwen3 dense (`qwen3`): the Llama graph with an RMSNorm over each query and key head before
//! RoPE, no q/k/v biases, NeoX RoPE (llama.cpp's `qwen3.cpp`).

use super::llama::{Family, Llama};
use super::ArchSpec;
use crate::blocks::attention::{GqaTensors, Presence};
use crate::config::{Arch, RopeStyle};

pub(crate) const SPEC: ArchSpec = ArchSpec {
    arch: Arch::Qwen3,
    gguf: "qwen3",
    hf: &["qwen3"],
    moe: false,
    rope_gguf: RopeStyle::Neox,
    rope_hf: RopeStyle::Neox,
    gguf_norm_topk_prob: None,
    build: |s, cfg| Ok(Box::new(Llama::load(s, cfg, FAMILY)?)),
};

/// The QK-norm defines the family: a file without it is another model.
const FAMILY: Family = Family {
    attn: GqaTensors {
        bias: Presence::Optional,
        qk_norm: Presence::Required,
        sinks: Presence::Absent,
    },
    moe: false,
    kv_f16: true,
};
