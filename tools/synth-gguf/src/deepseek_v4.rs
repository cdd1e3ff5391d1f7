//! DeepSeek-V4-Flash (`deepseek4`): manifold-constrained hyper-connections around every block,
//! one-head MQA over a sliding window plus compressed attention (CSA with a lightning indexer,
//! HCA), a grouped low-rank output projection, and a 256-expert MoE with sqrt-softplus routing,
//! the first layers hash-routed by token id, at the real per-layer shapes but with fewer layers
//! (the release has 43 and 284B parameters).
//!
//! Laid out as llama.cpp's converter (`conversion/deepseek.py`, `DeepseekV4Model`) writes the
//! release and `src/models/deepseek4.cpp` loads it: the hash tables `ffn_gate_tid2eid` (I32)
//! first, then every layer's routed experts in the checkpoint's own MXFP4, stacked, then the
//! rest in checkpoint order. Other tensors are typed as `llama-quantize --allow-requantize
//! --tensor-type _exps=mxfp4 … Q4_K_M` makes them (`src/llama-quant.cpp`): every 2-D weight
//! Q4_K — the hyper-connection projections and the compressors' `ape` included, which only
//! `glm5-next` exempts — `ffn_down_shexp` Q6_K in the `use_more_bits` layers, `output` Q6_K;
//! 1-D tensors, the router `ffn_gate_inp` and the hash tables as the converter writes them.

use baicai_gguf::{GgmlType, Value};

use crate::deepseek::{Gating, IndexerHparams, Meta, Planner};
use crate::fill::Init;
use crate::llama_quant::ffn_down_type;
use crate::Plan;

/// Layers of the released model (`num_hidden_layers`; the MTP layer is not written, as the
/// converter skips it by default).
pub const FULL_LAYERS: u64 = 43;

/// `compress_rates`: compressed sparse attention pools 4 tokens an entry, heavily compressed
/// attention 128.
pub const CSA: u64 = 4;
pub const HCA: u64 = 128;

/// Hyper-parameters, named after the model's `config.json`.
pub struct Hparams {
    pub name: String,
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_head: u64,
    /// `head_dim`: one head's query, key and value width (K = V).
    pub head_dim: u64,
    pub qk_rope: u64,
    pub q_lora_rank: u64,
    pub o_groups: u64,
    pub o_lora_rank: u64,
    pub n_vocab: u64,
    pub n_ctx_train: u64,
    pub n_ff_exp: u64,
    pub n_expert: u64,
    pub n_expert_used: u64,
    pub n_expert_shared: u64,
    pub expert_weights_scale: f32,
    pub swiglu_limit: f32,
    pub sliding_window: u64,
    /// Per layer: 0 (window only), [`CSA`] or [`HCA`].
    pub compress_ratios: Vec<u64>,
    pub compress_rope_theta: f32,
    /// `rope_scaling`: YaRN factor and `original_max_position_embeddings`.
    pub yarn: (f32, u64),
    pub hc_mult: u64,
    pub hc_sinkhorn_iters: u64,
    pub hc_eps: f32,
    pub indexer: IndexerHparams,
    /// `num_hash_layers`: the first layers route by `tid2eid[token]`.
    pub n_hash: u64,
}

/// The release's layer pattern cut to `n_layer`: window-only layers first (2 in the release;
/// 1 when there are at most 3 layers, so that 3 layers hold one of each kind), then CSA and HCA
/// alternating (`compress_ratios` of DeepSeek-V4-Flash: `[0, 0, 4, 128, 4, 128, …, 4]`).
pub fn compress_ratios(n_layer: u64) -> Vec<u64> {
    let n_window = n_layer.saturating_sub(2).clamp(1, 2);
    (0..n_layer)
        .map(|il| match il.checked_sub(n_window) {
            None => 0,
            Some(i) if i % 2 == 0 => CSA,
            Some(_) => HCA,
        })
        .collect()
}

/// Hyper-parameters of DeepSeek-V4-Flash (transformers' `DeepseekV4Config` defaults, which are
/// V4-Flash's `config.json`) with `n_layer` layers: [`compress_ratios`], and the first
/// `clamp(n_layer − 2, 1, 3)` layers hash-routed (3 in the release).
///
/// # Panics
/// When `n_layer` is 0.
pub fn hparams(n_layer: u64) -> Hparams {
    assert!(n_layer > 0, "DeepSeek-V4 needs at least one layer");
    Hparams {
        name: format!(
            "DeepSeek-V4-Flash (synthetic random weights, {n_layer} of {FULL_LAYERS} layers)"
        ),
        n_layer,
        n_embd: 4096,
        n_head: 64,
        head_dim: 512,
        qk_rope: 64,
        q_lora_rank: 1024,
        o_groups: 8,
        o_lora_rank: 1024,
        n_vocab: 129_280,
        n_ctx_train: 1_048_576,
        n_ff_exp: 2048,
        n_expert: 256,
        n_expert_used: 6,
        n_expert_shared: 1,
        expert_weights_scale: 1.5,
        swiglu_limit: 10.0,
        sliding_window: 128,
        compress_ratios: compress_ratios(n_layer),
        compress_rope_theta: 160_000.0,
        // V4-Flash's `rope_scaling` (transformers applies it to the compress RoPE only).
        yarn: (16.0, 65_536),
        hc_mult: 4,
        hc_sinkhorn_iters: 20,
        hc_eps: 1e-6,
        indexer: IndexerHparams {
            n_head: 64,
            head_dim: 128,
            top_k: 512,
        },
        n_hash: n_layer.saturating_sub(2).clamp(1, 3),
    }
}

/// Metadata as `DeepseekV4Model.set_gguf_parameters` writes it, in its order.
pub fn metadata(h: &Hparams) -> Vec<(String, Value)> {
    let mut m = Meta::new("deepseek4", &h.name);
    m.u("block_count", h.n_layer);
    m.u("context_length", h.n_ctx_train);
    m.u("embedding_length", h.n_embd);
    m.u("attention.head_count", h.n_head);
    m.u("attention.head_count_kv", 1);
    m.yarn(h.yarn.0, h.yarn.1);
    m.f("rope.freq_base", 10_000.0);
    m.f("attention.layer_norm_rms_epsilon", 1e-6);
    m.u("expert_count", h.n_expert);
    m.u("expert_used_count", h.n_expert_used);
    m.u("expert_gating_func", Gating::SqrtSoftplus as u64);
    m.u("attention.key_length", h.head_dim);
    m.u("attention.value_length", h.head_dim);
    m.u("rope.dimension_count", h.qk_rope);
    m.u("attention.q_lora_rank", h.q_lora_rank);
    m.u("attention.sliding_window", h.sliding_window);
    m.u("expert_feed_forward_length", h.n_ff_exp);
    m.u("expert_shared_count", h.n_expert_shared);
    m.f("expert_weights_scale", h.expert_weights_scale);
    m.put("expert_weights_norm", Value::Bool(true));
    let per_layer = || Value::Array(vec![Value::F32(h.swiglu_limit); h.n_layer as usize]);
    m.put("swiglu_clamp_exp", per_layer());
    m.put("swiglu_clamp_shexp", per_layer());
    m.indexer(&h.indexer);
    m.u("attention.output_group_count", h.o_groups);
    m.u("attention.output_lora_rank", h.o_lora_rank);
    // gguf-py writes a list of Python ints as an i32 array.
    let ratios = h.compress_ratios.iter().map(|&r| Value::I32(r as i32));
    m.put("attention.compress_ratios", Value::Array(ratios.collect()));
    m.f("attention.compress_rope_freq_base", h.compress_rope_theta);
    m.u("hyper_connection.count", h.hc_mult);
    m.u("hyper_connection.sinkhorn_iterations", h.hc_sinkhorn_iters);
    m.f("hyper_connection.epsilon", h.hc_eps);
    m.u("hash_layer_count", h.n_hash);
    m.u("embedding_length_out", h.n_embd * h.hc_mult);
    m.finish(h.n_vocab)
}

/// All tensors in the converter's order (see the module docs).
pub fn tensors(h: &Hparams) -> Planner {
    use GgmlType::{F32, I32, MXFP4, Q4_K, Q6_K};
    let mut p = Planner::default();
    let (e, r, one) = (h.n_embd, Init::Random, Init::NearOne);
    let t = |il: u64, name: &str| format!("blk.{il}.{name}.weight");
    let ids = Init::ExpertIds {
        n_expert: h.n_expert as u32,
        per_token: h.n_expert_used as u32,
    };
    for il in 0..h.n_hash {
        let shape = [h.n_expert_used, h.n_vocab];
        p.add(t(il, "ffn_gate_tid2eid"), &shape, I32, ids);
    }
    let (ff, x) = (h.n_ff_exp, h.n_expert);
    for il in 0..h.n_layer {
        p.add(t(il, "ffn_gate_exps"), &[e, ff, x], MXFP4, r);
        p.add(t(il, "ffn_down_exps"), &[ff, e, x], MXFP4, r);
        p.add(t(il, "ffn_up_exps"), &[e, ff, x], MXFP4, r);
    }
    let (n_hc, hc_dim) = (h.hc_mult, h.hc_mult * e);
    // Per block, the hyper-connection projection gives `pre`, `post` (n each) and `comb` (n²).
    let hc_mix = (2 + n_hc) * n_hc;
    p.add("token_embd.weight".into(), &[e, h.n_vocab], Q4_K, r);
    p.add("output_hc_base.weight".into(), &[n_hc], F32, r);
    p.add("output_hc_fn.weight".into(), &[hc_dim, n_hc], Q4_K, r);
    p.add("output_hc_scale.weight".into(), &[1], F32, r);
    p.add("output.weight".into(), &[e, h.n_vocab], Q6_K, r);
    let (hd, ix) = (h.head_dim, &h.indexer);
    for (il, &ratio) in (0..h.n_layer).zip(&h.compress_ratios) {
        let t = |name: &str| t(il, name);
        p.add(t("attn_sinks"), &[h.n_head], F32, r);
        if ratio != 0 {
            // CSA pools overlapping windows: two projections a token.
            let width = if ratio == CSA { 2 * hd } else { hd };
            p.add(t("attn_compressor_ape"), &[width, ratio], Q4_K, r);
            p.add(t("attn_compressor_norm"), &[hd], F32, one);
            p.add(t("attn_compressor_gate"), &[e, width], Q4_K, r);
            p.add(t("attn_compressor_kv"), &[e, width], Q4_K, r);
        }
        if ratio == CSA {
            let d = ix.head_dim;
            p.add(t("indexer_compressor_ape"), &[2 * d, ratio], Q4_K, r);
            p.add(t("indexer_compressor_norm"), &[d], F32, one);
            p.add(t("indexer_compressor_gate"), &[e, 2 * d], Q4_K, r);
            p.add(t("indexer_compressor_kv"), &[e, 2 * d], Q4_K, r);
            p.add(t("indexer.proj"), &[e, ix.n_head], Q4_K, r);
            p.add(
                t("indexer.attn_q_b"),
                &[h.q_lora_rank, ix.n_head * d],
                Q4_K,
                r,
            );
        }
        p.add(t("attn_kv_a_norm"), &[hd], F32, one);
        p.add(t("attn_q_a_norm"), &[h.q_lora_rank], F32, one);
        p.add(t("attn_kv"), &[e, hd], Q4_K, r);
        let o_rank = h.o_groups * h.o_lora_rank;
        p.add(
            t("attn_output_a"),
            &[h.n_head * hd / h.o_groups, o_rank],
            Q4_K,
            r,
        );
        p.add(t("attn_output_b"), &[o_rank, e], Q4_K, r);
        p.add(t("attn_q_a"), &[e, h.q_lora_rank], Q4_K, r);
        p.add(t("attn_q_b"), &[h.q_lora_rank, h.n_head * hd], Q4_K, r);
        p.add(t("attn_norm"), &[e], F32, one);
        if il >= h.n_hash {
            // Hash layers' `gate.bias` is unused, and the converter drops it.
            p.add(format!("blk.{il}.exp_probs_b.bias"), &[x], F32, r);
        }
        p.add(t("ffn_gate_inp"), &[e, x], F32, r);
        let f_sh = ff * h.n_expert_shared;
        p.add(t("ffn_gate_shexp"), &[e, f_sh], Q4_K, r);
        p.add(
            t("ffn_down_shexp"),
            &[f_sh, e],
            ffn_down_type(il, h.n_layer),
            r,
        );
        p.add(t("ffn_up_shexp"), &[e, f_sh], Q4_K, r);
        p.add(t("ffn_norm"), &[e], F32, one);
        for block in ["hc_attn", "hc_ffn"] {
            p.add(t(&format!("{block}_base")), &[hc_mix], F32, r);
            p.add(t(&format!("{block}_fn")), &[hc_dim, hc_mix], Q4_K, r);
            p.add(t(&format!("{block}_scale")), &[3], F32, r);
        }
    }
    p.add("output_norm.weight".into(), &[e], F32, one);
    p
}

/// The plan `main` writes.
pub fn plan(h: &Hparams) -> Plan {
    Plan {
        metadata: metadata(h),
        tensors: tensors(h).0,
        embd_params: h.n_embd * h.n_vocab,
        n_expert: h.n_expert,
        n_expert_used: h.n_expert_used,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deepseek::testing::{
        assert_consistent, assert_keys_unique, assert_types, shape_of, type_of, value_of,
    };
    use crate::deepseek::PlannedTensor;

    /// Attention common to every layer: sinks, q_a, q_a_norm, q_b, kv, kv_norm, o_a, o_b, and
    /// the attention and FFN norms.
    const ATTN: u64 = 64 + 4096 * 1024 + 1024 + 1024 * 64 * 512 + 4096 * 512 + 512
        + 64 * 512 * 1024 + 8 * 1024 * 4096 // o_a (8 groups of 4096 → 1024), o_b
        + 2 * 4096;
    /// Two hyper-connections: fn `[4·4096, 24]`, base `[24]`, scale `[3]`.
    const HC: u64 = 2 * (4 * 4096 * 24 + 24 + 3);
    /// The CSA compressor (2 × 512 wide) and the indexer with its own compressor.
    const CSA_EXTRA: u64 = 1024 * 4 + 512 + 2 * 4096 * 1024 // ape, norm, gate, kv
        + 256 * 4 + 128 + 2 * 4096 * 256 // indexer compressor
        + 4096 * 64 + 1024 * 64 * 128; // weights_proj, wq_b
    const HCA_EXTRA: u64 = 512 * 128 + 512 + 2 * 4096 * 512;
    /// Router, 256 routed and 1 shared expert.
    const MOE: u64 = 4096 * 256 + 257 * 3 * 4096 * 2048;
    /// `exp_probs_b` of a top-k layer, `tid2eid` of a hash layer.
    const BIAS: u64 = 256;
    const TID2EID: u64 = 6 * 129_280;
    /// `token_embd`, `output`, `output_norm`, the output hyper-connection head.
    const OUTSIDE: u64 = 2 * 4096 * 129_280 + 4096 + 4 * 4096 * 4 + 4 + 1;

    fn total(n_layer: u64) -> u64 {
        tensors(&hparams(n_layer))
            .0
            .iter()
            .map(PlannedTensor::n_elements)
            .sum()
    }

    #[test]
    fn layer_pattern_starts_like_the_release() {
        assert_eq!(compress_ratios(1), [0]);
        assert_eq!(compress_ratios(3), [0, CSA, HCA]);
        assert_eq!(compress_ratios(5), [0, 0, CSA, HCA, CSA]);
        let full = compress_ratios(FULL_LAYERS);
        assert_eq!(full.iter().filter(|&&r| r == 0).count(), 2);
        assert_eq!(full.iter().filter(|&&r| r == CSA).count(), 21);
        assert_eq!(full.iter().filter(|&&r| r == HCA).count(), 20);
        assert_eq!(hparams(3).n_hash, 1);
        assert_eq!(hparams(FULL_LAYERS).n_hash, 3);
    }

    #[test]
    fn parameter_count_matches_the_per_layer_formula() {
        // Default file: window + hash layer, CSA layer, HCA layer.
        let want = OUTSIDE + 3 * (ATTN + HC + MOE) + CSA_EXTRA + HCA_EXTRA + TID2EID + 2 * BIAS;
        assert_eq!(total(3), want);
        let full = OUTSIDE
            + FULL_LAYERS * (ATTN + HC + MOE)
            + 21 * CSA_EXTRA
            + 20 * HCA_EXTRA
            + 3 * TID2EID
            + 40 * BIAS;
        assert_eq!(total(FULL_LAYERS), full);
        // The model card: 284B parameters (the MTP layer, not written here, is not counted).
        assert_eq!(total(FULL_LAYERS) / 100_000_000, 2843);
    }

    #[test]
    fn tensor_list_has_each_layer_kind_as_llama_cpp_loads_it() {
        let ts = tensors(&hparams(3)).0;
        assert_consistent(&ts);
        let shape = |name: &str| shape_of(&ts, name);
        let has = |name: &str| ts.iter().any(|t| t.spec.name == name);
        // Hash tables and experts first, as the converter writes them.
        assert_eq!(ts[0].spec.name, "blk.0.ffn_gate_tid2eid.weight");
        assert_eq!(ts[1].spec.name, "blk.0.ffn_gate_exps.weight");
        assert_eq!(shape("blk.0.ffn_gate_tid2eid.weight"), &[6, 129_280]);
        assert!(!has("blk.1.ffn_gate_tid2eid.weight"));
        assert!(!has("blk.0.exp_probs_b.bias"));
        assert_eq!(shape("blk.1.exp_probs_b.bias"), &[256]);
        assert_eq!(shape("blk.0.ffn_down_exps.weight"), &[2048, 4096, 256]);
        assert_eq!(shape("blk.0.ffn_up_exps.weight"), &[4096, 2048, 256]);
        // Layer 0: window only.
        assert!(!has("blk.0.attn_compressor_kv.weight"));
        // Layer 1: CSA, overlapping compressor and indexer.
        assert_eq!(shape("blk.1.attn_compressor_ape.weight"), &[1024, 4]);
        assert_eq!(shape("blk.1.attn_compressor_kv.weight"), &[4096, 1024]);
        assert_eq!(shape("blk.1.indexer_compressor_ape.weight"), &[256, 4]);
        assert_eq!(shape("blk.1.indexer_compressor_gate.weight"), &[4096, 256]);
        assert_eq!(shape("blk.1.indexer.attn_q_b.weight"), &[1024, 8192]);
        assert_eq!(shape("blk.1.indexer.proj.weight"), &[4096, 64]);
        // Layer 2: HCA, no indexer.
        assert_eq!(shape("blk.2.attn_compressor_ape.weight"), &[512, 128]);
        assert_eq!(shape("blk.2.attn_compressor_gate.weight"), &[4096, 512]);
        assert!(!has("blk.2.indexer.proj.weight"));
        // Every layer.
        assert_eq!(shape("blk.2.attn_q_b.weight"), &[1024, 32_768]);
        assert_eq!(shape("blk.2.attn_kv.weight"), &[4096, 512]);
        assert_eq!(shape("blk.2.attn_output_a.weight"), &[4096, 8192]);
        assert_eq!(shape("blk.2.attn_output_b.weight"), &[8192, 4096]);
        assert_eq!(shape("blk.2.attn_sinks.weight"), &[64]);
        assert_eq!(shape("blk.2.hc_attn_fn.weight"), &[16_384, 24]);
        assert_eq!(shape("blk.2.hc_ffn_scale.weight"), &[3]);
        assert_eq!(shape("output_hc_fn.weight"), &[16_384, 4]);
        assert_eq!(ts.last().unwrap().spec.name, "output_norm.weight");
    }

    #[test]
    fn types_follow_the_converter_and_llama_quantize_q4_k_m() {
        let ts = tensors(&hparams(3)).0;
        let ty = |name: &str| type_of(&ts, name);
        for exps in ["gate", "up", "down"] {
            assert_eq!(
                ty(&format!("blk.2.ffn_{exps}_exps.weight")),
                GgmlType::MXFP4
            );
        }
        assert_eq!(ty("blk.0.ffn_gate_tid2eid.weight"), GgmlType::I32);
        // `use_more_bits` on 3 layers marks layer 2 only.
        assert_eq!(ty("blk.1.ffn_down_shexp.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.2.ffn_down_shexp.weight"), GgmlType::Q6_K);
        let q4k = [
            "token_embd.weight",
            "blk.1.hc_attn_fn.weight",
            "blk.1.attn_compressor_ape.weight",
            "blk.1.indexer_compressor_ape.weight",
            "blk.1.indexer.proj.weight",
            "blk.1.attn_output_a.weight",
            "output_hc_fn.weight",
        ];
        assert_types(&ts, &q4k, GgmlType::Q4_K);
        let f32 = [
            "blk.1.ffn_gate_inp.weight",
            "blk.1.attn_sinks.weight",
            "blk.1.hc_attn_base.weight",
            "blk.1.attn_compressor_norm.weight",
            "output_hc_scale.weight",
        ];
        assert_types(&ts, &f32, GgmlType::F32);
        assert_eq!(ty("output.weight"), GgmlType::Q6_K);
    }

    #[test]
    fn metadata_has_the_deepseek4_keys_llama_cpp_reads() {
        let m = metadata(&hparams(3));
        let get = |k: &str| value_of(&m, k);
        let u = |k: &str| get(&format!("deepseek4.{k}")).to_u64().unwrap();
        assert_eq!(get("general.architecture").as_str(), Some("deepseek4"));
        assert_eq!(u("block_count"), 3);
        assert_eq!(u("expert_gating_func"), 4);
        assert_eq!(u("attention.key_length"), 512);
        assert_eq!(u("attention.sliding_window"), 128);
        assert_eq!(u("attention.output_group_count"), 8);
        assert_eq!(u("attention.indexer.top_k"), 512);
        assert_eq!(u("hash_layer_count"), 1);
        assert_eq!(u("embedding_length_out"), 16_384);
        assert_eq!(u("rope.scaling.original_context_length"), 65_536);
        assert_eq!(
            get("deepseek4.attention.compress_ratios"),
            Value::Array(vec![Value::I32(0), Value::I32(4), Value::I32(128)])
        );
        assert_eq!(
            get("deepseek4.swiglu_clamp_exp"),
            Value::Array(vec![Value::F32(10.0); 3])
        );
        assert_eq!(
            get("deepseek4.attention.compress_rope_freq_base"),
            Value::F32(160_000.0)
        );
        assert_keys_unique(&m);
        // V2/V3 keys that deepseek4 files do not carry.
        for absent in [
            "leading_dense_block_count",
            "feed_forward_length",
            "vocab_size",
        ] {
            assert!(!m.iter().any(|(k, _)| k == &format!("deepseek4.{absent}")));
        }
    }
}
