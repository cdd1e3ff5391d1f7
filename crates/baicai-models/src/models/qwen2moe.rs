//! Qwen1.5-MoE / Qwen2-MoE (`qwen2moe`): Qwen2's attention (q/k/v biases, NeoX RoPE) over
//! softmax-routed experts without renormalization, plus a shared expert scaled by
//! `sigmoid(shared_expert_gate · x)` (Hugging Face's `Qwen2MoeSparseMoeBlock`; llama.cpp's
//! `qwen2moe.cpp`).

use super::llama::{Family, Llama};
use super::ArchSpec;
use crate::blocks::attention::{GqaTensors, Presence};
use crate::config::{Arch, RopeStyle};

pub(crate) const SPEC: ArchSpec = ArchSpec {
    arch: Arch::Qwen2Moe,
    gguf: "qwen2moe",
    hf: &["qwen2_moe"],
    moe: true,
    rope_gguf: RopeStyle::Neox,
    rope_hf: RopeStyle::Neox,
    gguf_norm_topk_prob: Some(false),
    build: |s, cfg| Ok(Box::new(Llama::load(s, cfg, FAMILY)?)),
};

/// An f32 cache, which the F32 oracle fixtures are checked against.
const FAMILY: Family = Family {
    attn: GqaTensors {
        bias: Presence::Required,
        qk_norm: Presence::Absent,
        sinks: Presence::Absent,
    },
    moe: true,
    kv_f16: false,
};
