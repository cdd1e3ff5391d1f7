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
use crate::Plan;

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
    /// V4: `sqrt(softplus(x))`, picked like V3 (`scoring_func = "sqrtsoftplus"`).
    SqrtSoftplus = 4,
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
    let mut m = Meta::new(h.arch, &h.name);
    m.u("block_count", h.n_layer);
    m.u("context_length", h.n_ctx_train);
    m.u("embedding_length", h.n_embd);
    m.u("feed_forward_length", h.n_ff);
    m.u("attention.head_count", h.n_head);
    // MLA runs as multi-query attention over the latent: one KV head.
    m.u("attention.head_count_kv", 1);
    m.f("rope.freq_base", 10_000.0);
    m.f("attention.layer_norm_rms_epsilon", 1e-6);
    m.u("expert_count", h.n_expert);
    m.u("expert_used_count", h.n_expert_used);
    if let Some((n_group, topk_group)) = h.expert_groups {
        m.u("expert_group_count", n_group);
        m.u("expert_group_used_count", topk_group);
    }
    m.u("expert_gating_func", h.gating as u64);
    m.u("leading_dense_block_count", h.n_dense_lead);
    m.u("vocab_size", h.n_vocab);
    if let Some(q_lora_rank) = h.q_lora_rank {
        m.u("attention.q_lora_rank", q_lora_rank);
    }
    m.u("attention.kv_lora_rank", h.kv_lora_rank);
    // Absorbed MLA: keys are latent + RoPE part, values are the latent.
    m.u("attention.key_length", h.kv_lora_rank + h.qk_rope);
    m.u("attention.value_length", h.kv_lora_rank);
    m.u("attention.key_length_mla", h.qk_head());
    m.u("attention.value_length_mla", h.v_head);
    m.u("expert_feed_forward_length", h.n_ff_exp);
    m.u("expert_shared_count", h.n_expert_shared);
    m.f("expert_weights_scale", h.expert_weights_scale);
    m.put("expert_weights_norm", Value::Bool(h.expert_weights_norm));
    m.u("rope.dimension_count", h.qk_rope);
    m.yarn(40.0, 4096);
    // The converter writes 0.1 · mscale_all_dim; llama.cpp divides the 0.1 back out.
    m.f("rope.scaling.yarn_log_multiplier", 0.1 * h.mscale_all_dim);
    if let Some(ix) = &h.indexer {
        m.indexer(ix);
    }
    m.finish(h.n_vocab)
}

/// Metadata under construction: the `general.*` keys, then keys under the architecture's
/// prefix in the order they are added, then the tokenizer.
pub struct Meta {
    arch: &'static str,
    kv: Vec<(String, Value)>,
}

impl Meta {
    /// The `general.*` keys of a Q4_K_M file (`general.file_type` as llama-quantize sets it).
    pub fn new(arch: &'static str, name: &str) -> Meta {
        let s = |x: &str| Value::String(x.into());
        Meta {
            arch,
            kv: vec![
                ("general.architecture".into(), s(arch)),
                ("general.type".into(), s("model")),
                ("general.name".into(), s(name)),
                ("general.file_type".into(), Value::U32(FTYPE_MOSTLY_Q4_K_M)),
                ("general.quantization_version".into(), Value::U32(2)),
            ],
        }
    }

    /// `{arch}.{key}` = `value`.
    pub fn put(&mut self, key: &str, value: Value) {
        self.kv.push((format!("{}.{key}", self.arch), value));
    }

    /// An unsigned key, which gguf-py writes as u32.
    pub fn u(&mut self, key: &str, x: u64) {
        self.put(key, Value::U32(x as u32));
    }

    /// A float key (f32).
    pub fn f(&mut self, key: &str, x: f32) {
        self.put(key, Value::F32(x));
    }

    /// YaRN as `rope_scaling` gives it (`beta_fast` 32, `beta_slow` 1 in every model here).
    pub fn yarn(&mut self, factor: f32, original_context: u64) {
        self.put("rope.scaling.type", Value::String("yarn".into()));
        self.f("rope.scaling.factor", factor);
        self.u("rope.scaling.original_context_length", original_context);
        self.f("rope.scaling.yarn_beta_fast", 32.0);
        self.f("rope.scaling.yarn_beta_slow", 1.0);
    }

    /// The lightning indexer's `index_n_heads`, `index_head_dim`, `index_topk`.
    pub fn indexer(&mut self, ix: &IndexerHparams) {
        self.u("attention.indexer.head_count", ix.n_head);
        self.u("attention.indexer.key_length", ix.head_dim);
        self.u("attention.indexer.top_k", ix.top_k);
    }

    /// All keys, the tokenizer's last.
    pub fn finish(mut self, n_vocab: u64) -> Vec<(String, Value)> {
        self.kv.extend(tokenizer(n_vocab));
        self.kv
    }
}

/// Appends tensors to a plan, applying llama-quantize's row fallback to each type.
#[derive(Default)]
pub struct Planner(pub Vec<PlannedTensor>);

impl Planner {
    /// Appends tensor `name` of `shape` (ggml order) as type `ty`, or its row fallback.
    pub fn add(&mut self, name: String, shape: &[u64], ty: GgmlType, init: Init) {
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
    let mut p = Planner::default();
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

/// The plan `main` writes.
pub fn plan(h: &Hparams) -> Plan {
    Plan {
        metadata: metadata(h),
        tensors: tensors(h),
        embd_params: h.n_embd * h.n_vocab,
        n_expert: h.n_expert,
        n_expert_used: h.n_expert_used,
    }
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

    /// Every tensor of `names` has type `ty`.
    pub fn assert_types(ts: &[PlannedTensor], names: &[&str], ty: GgmlType) {
        for name in names {
            assert_eq!(type_of(ts, name), ty, "{name}");
        }
    }

    /// The shape of tensor `name` in `ts`.
    ///
    /// # Panics
    /// When `ts` has no tensor `name`.
    pub fn shape_of<'a>(ts: &'a [PlannedTensor], name: &str) -> &'a [u64] {
        &ts.iter()
            .find(|t| t.spec.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
            .spec
            .shape
    }

    /// The value of metadata key `key`.
    ///
    /// # Panics
    /// When `m` has no key `key`.
    pub fn value_of(m: &[(String, Value)], key: &str) -> Value {
        m.iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no {key}"))
            .1
            .clone()
    }

    /// No metadata key repeats.
    pub fn assert_keys_unique(m: &[(String, Value)]) {
        let mut keys: Vec<_> = m.iter().map(|(k, _)| k).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), m.len(), "a key repeats");
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
