//! Qwen2 / Qwen2.5 / DeepSeek-R1-Distill-Qwen (`qwen2`): the Llama graph with q/k/v biases and
//! NeoX RoPE (llama.cpp's `qwen2.cpp`).

use super::llama::{Family, Llama};
use super::ArchSpec;
use crate::blocks::attention::{GqaTensors, Presence};
use crate::config::{Arch, RopeStyle};

pub(crate) const SPEC: ArchSpec = ArchSpec {
    arch: Arch::Qwen2,
    gguf: "qwen2",
    hf: &["qwen2"],
    moe: false,
    rope_gguf: RopeStyle::Neox,
    rope_hf: RopeStyle::Neox,
    gguf_norm_topk_prob: None,
    build: |s, cfg| Ok(Box::new(Llama::load(s, cfg, FAMILY)?)),
};

/// The q/k/v biases define the family: a file without them is another model.
const FAMILY: Family = Family {
    attn: GqaTensors {
        bias: Presence::Required,
        qk_norm: Presence::Optional,
        sinks: Presence::Absent,
    },
    moe: false,
    kv_f16: true,
};
