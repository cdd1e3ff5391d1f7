//! Qwen3-MoE (`qwen3moe`): Qwen3's attention (QK-norm, NeoX RoPE) over softmax-routed experts
//! renormalized over the top-k (Hugging Face's `Qwen3MoeSparseMoeBlock`; llama.cpp's
//! `qwen3moe.cpp`).

use super::llama::{Family, Llama};
use super::ArchSpec;
use crate::blocks::attention::{GqaTensors, Presence};
use crate::config::{Arch, RopeStyle};

pub(crate) const SPEC: ArchSpec = ArchSpec {
    arch: Arch::Qwen3Moe,
    gguf: "qwen3moe",
    hf: &["qwen3_moe"],
    moe: true,
    rope_gguf: RopeStyle::Neox,
    rope_hf: RopeStyle::Neox,
    gguf_norm_topk_prob: Some(true),
    build: |s, cfg| Ok(Box::new(Llama::load(s, cfg, FAMILY)?)),
};

/// An f32 cache, which the F32 oracle fixtures are checked against.
const FAMILY: Family = Family {
    attn: GqaTensors {
        bias: Presence::Absent,
        qk_norm: Presence::Required,
        sinks: Presence::Absent,
    },
    moe: true,
    kv_f16: false,
};
