//! The DeepSeek MLA + DeepSeekMoE family (V2-Lite, V3.2) as llama.cpp's `convert_hf_to_gguf.py`
//! and then `llama-quantize Q4_K_M` lay it out: metadata keys, tensor names and ggml-order
//! shapes as `src/models/deepseek2.cpp` / `deepseek32.cpp` load them (MLA layout with
//! `attn_k_b` / `attn_v_b` split out of `kv_b_proj`), and per-tensor types as
//! `src/llama-quant.cpp` picks them. The models differ only in their [`Hparams`]: V3 adds the
//! compressed query (`q_lora_rank`) and grouped sigmoid routing with a selection bias, V3.2 the
//! lightning indexer.

use baicai_gguf::{GgmlType, TensorSpec, Value};

use crate::fill::Init;
use crate::llama_quant::{ffn_down_type, fit_rows, FTYPE_MOSTLY_Q4_K_M};
use crate::tokenizer::tokenizer;

/// Hyper-parameters, named after the model's `config.json`.
pub struct Hparams {
    /// `general.architecture`: `deepseek2` or `deepseek32`.
    pub arch: &'static str,
    /// `general.name`.
    pub name: String,
    pub n_embd: u64,
    pub n_layer: u64,
    pub n_head: u64,
    pub n_vocab: u64,
    pub n_ctx_train: u64,
    /// `intermediate_size`: the dense FFN of the leading layers.
    pub n_ff: u64,
    /// `moe_intermediate_size`: one expert's FFN.
    pub n_ff_exp: u64,
    pub n_expert: u64,
    pub n_expert_used: u64,
    pub n_expert_shared: u64,
    /// `n_group` and `topk_group` of grouped routing (V3), if any.
    pub expert_groups: Option<(u64, u64)>,
    pub gating: Gating,
    /// `routed_scaling_factor`.
    pub expert_weights_scale: f32,
    /// `norm_topk_prob`.
    pub expert_weights_norm: bool,
    /// `first_k_dense_replace`.
    pub n_dense_lead: u64,
    /// `q_lora_rank`: queries through a compressed latent (`attn_q_a` / `attn_q_b`), if any;
    /// V2-Lite has `attn_q` directly.
    pub q_lora_rank: Option<u64>,
    pub kv_lora_rank: u64,
    pub qk_nope: u64,
    pub qk_rope: u64,
    pub v_head: u64,
    /// `rope_scaling.mscale_all_dim` (YaRN over 4096 positions, factor 40, in every model here).
    pub mscale_all_dim: f32,
    /// DeepSeek Sparse Attention's lightning indexer (V3.2), if any.
    pub indexer: Option<IndexerHparams>,
}

/// The lightning indexer of DeepSeek-V3.2 (`index_*` in `config.json`).
pub struct IndexerHparams {
    pub n_head: u64,
    pub head_dim: u64,
    pub top_k: u64,
}

/// How the router scores experts (`LLAMA_EXPERT_GATING_FUNC_TYPE_*`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Gating {
    /// V2: softmax over the experts.
    Softmax = 1,
    /// V3: sigmoid, experts picked by score + `exp_probs_b` (`e_score_correction_bias`).
    Sigmoid = 2,
}

impl Hparams {
    /// Query/key head size before absorption: no-RoPE part + RoPE part.
    pub fn qk_head(&self) -> u64 {
        self.qk_nope + self.qk_rope
    }
}

/// One tensor to write.
pub struct PlannedTensor {
    pub spec: TensorSpec,
    pub init: Init,
    /// A stack of routed experts (`*_exps`), of which only `n_expert_used` are read per token.
    pub routed: bool,
}

impl PlannedTensor {
    /// Number of weights.
    pub fn n_elements(&self) -> u64 {
        self.spec.shape.iter().product()
    }
}

/// Metadata as the converter writes it (then `general.file_type` Q4_K_M as llama-quantize
/// sets it), with a synthetic byte-level tokenizer (see [`tokenizer`]) so that servers can take
/// text and chat requests.
pub fn metadata(h: &Hparams) -> Vec<(String, Value)> {
    let u = |x: u64| Value::U32(x as u32);
    let s = |x: &str| Value::String(x.into());
    let a = |k: &str| format!("{}.{k}", h.arch);
    let mut m = vec![
        ("general.architecture".into(), s(h.arch)),
        ("general.type".into(), s("model")),
        ("general.name".into(), s(&h.name)),
        ("general.file_type".into(), Value::U32(FTYPE_MOSTLY_Q4_K_M)),
        ("general.quantization_version".into(), Value::U32(2)),
        (a("block_count"), u(h.n_layer)),
        (a("context_length"), u(h.n_ctx_train)),
        (a("embedding_length"), u(h.n_embd)),
        (a("feed_forward_length"), u(h.n_ff)),
        (a("attention.head_count"), u(h.n_head)),
        // MLA runs as multi-query attention over the latent: one KV head.
        (a("attention.head_count_kv"), u(1)),
        (a("rope.freq_base"), Value::F32(10_000.0)),
        (a("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (a("expert_count"), u(h.n_expert)),
        (a("expert_used_count"), u(h.n_expert_used)),
    ];
    if let Some((n_group, topk_group)) = h.expert_groups {
        m.push((a("expert_group_count"), u(n_group)));
        m.push((a("expert_group_used_count"), u(topk_group)));
    }
    m.push((a("expert_gating_func"), Value::U32(h.gating as u32)));
    m.push((a("leading_dense_block_count"), u(h.n_dense_lead)));
    m.push((a("vocab_size"), u(h.n_vocab)));
    if let Some(q_lora_rank) = h.q_lora_rank {
        m.push((a("attention.q_lora_rank"), u(q_lora_rank)));
    }
    m.extend([
        (a("attention.kv_lora_rank"), u(h.kv_lora_rank)),
        // Absorbed MLA: keys are latent + RoPE part, values are the latent.
        (a("attention.key_length"), u(h.kv_lora_rank + h.qk_rope)),
        (a("attention.value_length"), u(h.kv_lora_rank)),
        (a("attention.key_length_mla"), u(h.qk_head())),
        (a("attention.value_length_mla"), u(h.v_head)),
        (a("expert_feed_forward_length"), u(h.n_ff_exp)),
        (a("expert_shared_count"), u(h.n_expert_shared)),
        (
            a("expert_weights_scale"),
            Value::F32(h.expert_weights_scale),
        ),
        (a("expert_weights_norm"), Value::Bool(h.expert_weights_norm)),
        (a("rope.dimension_count"), u(h.qk_rope)),
        (a("rope.scaling.type"), s("yarn")),
        (a("rope.scaling.factor"), Value::F32(40.0)),
        (a("rope.scaling.original_context_length"), u(4096)),
        (a("rope.scaling.yarn_beta_fast"), Value::F32(32.0)),
        (a("rope.scaling.yarn_beta_slow"), Value::F32(1.0)),
        // The converter writes 0.1 · mscale_all_dim; llama.cpp divides the 0.1 back out.
        (
            a("rope.scaling.yarn_log_multiplier"),
            Value::F32(0.1 * h.mscale_all_dim),
        ),
    ]);
    if let Some(ix) = &h.indexer {
        m.push((a("attention.indexer.head_count"), u(ix.n_head)));
        m.push((a("attention.indexer.key_length"), u(ix.head_dim)));
        m.push((a("attention.indexer.top_k"), u(ix.top_k)));
    }
    m.extend(tokenizer(h.n_vocab));
    m
}

/// Appends tensors to a plan, applying llama-quantize's row fallback to each type.
struct Planner(Vec<PlannedTensor>);

impl Planner {
    fn add(&mut self, name: String, shape: &[u64], ty: GgmlType, init: Init) {
        self.0.push(PlannedTensor {
            routed: name.ends_with("_exps.weight"),
            spec: TensorSpec::new(name, shape, fit_rows(ty, shape[0])),
            init,
        });
    }
}

/// All tensors in file order: `token_embd`, the blocks, `output_norm`, `output`.
///
/// Types follow llama-quantize Q4_K_M: 2-D and 3-D weights Q4_K; `output` Q6_K; every
/// `ffn_down*` Q6_K in the `use_more_bits` layers; rows that are no multiple of 256 fall back
/// (Q4_K → Q5_0, Q6_K → Q8_0). 1-D tensors (norms, biases) and the router `ffn_gate_inp` stay
/// F32 as the converter writes them. The indexer's `proj`, which the converter writes F32, is
/// quantized like any other 2-D weight (llama-quantize exempts it only for glm5-next).
pub fn tensors(h: &Hparams) -> Vec<PlannedTensor> {
    use GgmlType::{F32, Q4_K, Q6_K};
    let mut p = Planner(Vec::new());
    let (e, r, one) = (h.n_embd, Init::Random, Init::NearOne);
    p.add("token_embd.weight".into(), &[e, h.n_vocab], Q4_K, r);
    for il in 0..h.n_layer {
        let t = |name: &str| format!("blk.{il}.{name}.weight");
        p.add(t("attn_norm"), &[e], F32, one);
        let q = h.n_head * h.qk_head();
        match h.q_lora_rank {
            Some(rank) => {
                p.add(t("attn_q_a"), &[e, rank], Q4_K, r);
                p.add(t("attn_q_a_norm"), &[rank], F32, one);
                p.add(t("attn_q_b"), &[rank, q], Q4_K, r);
            }
            None => p.add(t("attn_q"), &[e, q], Q4_K, r),
        }
        let kv = h.kv_lora_rank;
        p.add(t("attn_kv_a_mqa"), &[e, kv + h.qk_rope], Q4_K, r);
        p.add(t("attn_kv_a_norm"), &[kv], F32, one);
        p.add(t("attn_k_b"), &[h.qk_nope, kv, h.n_head], Q4_K, r);
        p.add(t("attn_v_b"), &[kv, h.v_head, h.n_head], Q4_K, r);
        p.add(t("attn_output"), &[h.n_head * h.v_head, e], Q4_K, r);
        if let (Some(ix), Some(rank)) = (&h.indexer, h.q_lora_rank) {
            let d = ix.head_dim;
            p.add(t("indexer.attn_q_b"), &[rank, ix.n_head * d], Q4_K, r);
            p.add(t("indexer.attn_k"), &[e, d], Q4_K, r);
            p.add(t("indexer.k_norm"), &[d], F32, one);
            p.add(format!("blk.{il}.indexer.k_norm.bias"), &[d], F32, r);
            p.add(t("indexer.proj"), &[e, ix.n_head], Q4_K, r);
        }
        p.add(t("ffn_norm"), &[e], F32, one);
        let down = ffn_down_type(il, h.n_layer);
        if il < h.n_dense_lead {
            p.add(t("ffn_gate"), &[e, h.n_ff], Q4_K, r);
            p.add(t("ffn_up"), &[e, h.n_ff], Q4_K, r);
            p.add(t("ffn_down"), &[h.n_ff, e], down, r);
            continue;
        }
        let (x, f_sh) = (h.n_expert, h.n_ff_exp * h.n_expert_shared);
        p.add(t("ffn_gate_inp"), &[e, x], F32, r);
        if h.gating == Gating::Sigmoid {
            p.add(format!("blk.{il}.exp_probs_b.bias"), &[x], F32, r);
        }
        p.add(t("ffn_gate_exps"), &[e, h.n_ff_exp, x], Q4_K, r);
        p.add(t("ffn_up_exps"), &[e, h.n_ff_exp, x], Q4_K, r);
        p.add(t("ffn_down_exps"), &[h.n_ff_exp, e, x], down, r);
        p.add(t("ffn_gate_shexp"), &[e, f_sh], Q4_K, r);
        p.add(t("ffn_up_shexp"), &[e, f_sh], Q4_K, r);
        p.add(t("ffn_down_shexp"), &[f_sh, e], down, r);
    }
    p.add("output_norm.weight".into(), &[e], F32, one);
    p.add("output.weight".into(), &[e, h.n_vocab], Q6_K, r);
    p.0
}

/// Test helpers shared by the models' tests.
#[cfg(test)]
pub mod testing {
    use super::*;

    /// The type of tensor `name` in `ts`.
    ///
    /// # Panics
    /// When `ts` has no tensor `name`.
    pub fn type_of(ts: &[PlannedTensor], name: &str) -> GgmlType {
        ts.iter()
            .find(|t| t.spec.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
            .spec
            .ggml_type
    }

    /// Every row is whole blocks of its type, and no name repeats.
    pub fn assert_consistent(ts: &[PlannedTensor]) {
        let mut names = std::collections::HashSet::new();
        for t in ts {
            assert!(names.insert(&t.spec.name), "{} twice", t.spec.name);
            assert_eq!(
                t.spec.shape[0] % t.spec.ggml_type.block_len(),
                0,
                "{}",
                t.spec.name
            );
        }
    }
}
