//! DeepSeek-V3.2 (`deepseek32`): DeepSeek-V3's MLA with compressed queries and its 256-expert
//! sigmoid-routed MoE, plus DeepSeek Sparse Attention's lightning indexer in every layer, at the
//! real per-layer shapes but with fewer layers (the full model has 61 and 671.9B parameters).

use crate::deepseek::{Gating, Hparams, IndexerHparams};

/// Layers of the released model (`num_hidden_layers`; the MTP layer is not written).
pub const FULL_LAYERS: u64 = 61;

/// Hyper-parameters of DeepSeek-V3.2 (`config.json` of deepseek-ai/DeepSeek-V3.2-Exp) with
/// `n_layer` layers, the first dense and the rest MoE (the model has 3 dense of 61).
///
/// # Panics
/// When `n_layer` is 0.
pub fn hparams(n_layer: u64) -> Hparams {
    assert!(n_layer > 0, "DeepSeek-V3.2 needs at least one layer");
    Hparams {
        arch: "deepseek32",
        name: format!(
            "DeepSeek-V3.2-Exp (synthetic random weights, {n_layer} of {FULL_LAYERS} layers)"
        ),
        n_embd: 7168,
        n_layer,
        n_head: 128,
        n_vocab: 129_280,
        n_ctx_train: 163_840,
        n_ff: 18_432,
        n_ff_exp: 2048,
        n_expert: 256,
        n_expert_used: 8,
        n_expert_shared: 1,
        expert_groups: Some((8, 4)),
        gating: Gating::Sigmoid,
        expert_weights_scale: 2.5,
        expert_weights_norm: true,
        n_dense_lead: 1,
        q_lora_rank: Some(1536),
        kv_lora_rank: 512,
        qk_nope: 128,
        qk_rope: 64,
        v_head: 128,
        mscale_all_dim: 1.0,
        indexer: Some(IndexerHparams {
            n_head: 64,
            head_dim: 128,
            top_k: 2048,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deepseek::testing::{
        assert_consistent, assert_keys_unique, assert_types, shape_of, type_of, value_of,
    };
    use crate::deepseek::{metadata, tensors, PlannedTensor};
    use baicai_gguf::{GgmlType, Value};

    /// Parameters of one layer's attention (MLA with `kv_b` split in two) and norms.
    const ATTN: u64 = 7168 * 1536 + 1536 + 1536 * 128 * 192 // q_a, q_a_norm, q_b
        + 7168 * 576 + 512 // kv_a_mqa, kv_a_norm
        + 128 * 512 * 128 + 512 * 128 * 128 // k_b, v_b
        + 128 * 128 * 7168 // output
        + 2 * 7168; // attn_norm, ffn_norm
    /// The indexer: `wq_b`, `wk`, `k_norm` weight and bias, `weights_proj`.
    const INDEXER: u64 = 1536 * 64 * 128 + 7168 * 128 + 2 * 128 + 7168 * 64;
    const DENSE_FFN: u64 = 3 * 7168 * 18_432;
    /// Router, selection bias, 256 routed and 1 shared expert.
    const MOE_FFN: u64 = 7168 * 256 + 256 + 257 * 3 * 7168 * 2048;
    /// `token_embd`, `output`, `output_norm`.
    const OUTSIDE: u64 = 2 * 7168 * 129_280 + 7168;

    fn total(n_layer: u64) -> u64 {
        tensors(&hparams(n_layer))
            .iter()
            .map(PlannedTensor::n_elements)
            .sum()
    }

    #[test]
    fn parameter_count_matches_the_per_layer_formula() {
        for n in [1, 2, 5] {
            let want = OUTSIDE + n * (ATTN + INDEXER) + DENSE_FFN + (n - 1) * MOE_FFN;
            assert_eq!(total(n), want, "{n} layers");
        }
        // Default file: 1 dense + 1 MoE layer.
        assert_eq!(total(2), 13_972_053_760);
    }

    #[test]
    fn full_depth_with_three_dense_layers_is_deepseek_v3_plus_the_indexers() {
        // DeepSeek-V3's main model (3 dense + 58 MoE layers, no MTP) has 671,026,419,200
        // parameters; V3.2 adds the indexer to each of the 61 layers. Our files lead with one
        // dense layer, so move two layers from MoE to dense.
        let v3 = 671_026_419_200;
        assert_eq!(
            total(FULL_LAYERS) + 2 * DENSE_FFN - 2 * MOE_FFN,
            v3 + FULL_LAYERS * INDEXER
        );
    }

    #[test]
    fn tensor_list_has_the_indexer_and_v3_router_in_every_layer() {
        let ts = tensors(&hparams(3));
        // token_embd; per layer 9 attention + 5 indexer + 1 ffn_norm; dense 3, MoE 8;
        // output_norm, output.
        assert_eq!(ts.len(), 1 + 3 * 15 + 3 + 2 * 8 + 2);
        assert_consistent(&ts);
        let shape = |name: &str| shape_of(&ts, name);
        assert_eq!(shape("blk.1.indexer.attn_q_b.weight"), &[1536, 8192]);
        assert_eq!(shape("blk.1.indexer.attn_k.weight"), &[7168, 128]);
        assert_eq!(shape("blk.1.indexer.proj.weight"), &[7168, 64]);
        assert_eq!(shape("blk.1.indexer.k_norm.bias"), &[128]);
        assert_eq!(shape("blk.2.exp_probs_b.bias"), &[256]);
        assert_eq!(shape("blk.2.attn_q_b.weight"), &[1536, 24_576]);
        assert_eq!(shape("blk.2.ffn_down_exps.weight"), &[2048, 7168, 256]);
        assert!(ts.iter().all(|t| !t.spec.name.contains("attn_q.weight")));
        assert!(ts.iter().all(|t| t.spec.name != "blk.0.exp_probs_b.bias"));
    }

    #[test]
    fn types_follow_llama_quantize_q4_k_m() {
        let ts = tensors(&hparams(2));
        let ty = |name: &str| type_of(&ts, name);
        // Rows of 128: Q4_K's fallback.
        assert_eq!(ty("blk.1.attn_k_b.weight"), GgmlType::Q5_0);
        // `use_more_bits` on 2 layers marks layer 1 only.
        assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.1.ffn_down_exps.weight"), GgmlType::Q6_K);
        assert_eq!(ty("blk.1.ffn_down_shexp.weight"), GgmlType::Q6_K);
        assert_eq!(ty("blk.1.indexer.proj.weight"), GgmlType::Q4_K);
        assert_eq!(ty("blk.1.indexer.attn_k.weight"), GgmlType::Q4_K);
        let small = [
            "blk.1.ffn_gate_inp.weight",
            "blk.1.exp_probs_b.bias",
            "blk.1.indexer.k_norm.weight",
            "blk.1.indexer.k_norm.bias",
            "blk.1.attn_q_a_norm.weight",
        ];
        assert_types(&ts, &small, GgmlType::F32);
        assert_eq!(ty("output.weight"), GgmlType::Q6_K);
    }

    #[test]
    fn metadata_has_the_deepseek32_keys_llama_cpp_reads() {
        let m = metadata(&hparams(2));
        let get = |k: &str| value_of(&m, k);
        let u = |k: &str| get(k).to_u64().unwrap();
        assert_eq!(get("general.architecture").as_str(), Some("deepseek32"));
        assert_eq!(u("deepseek32.block_count"), 2);
        assert_eq!(u("deepseek32.leading_dense_block_count"), 1);
        assert_eq!(u("deepseek32.attention.q_lora_rank"), 1536);
        assert_eq!(u("deepseek32.expert_group_count"), 8);
        assert_eq!(u("deepseek32.expert_group_used_count"), 4);
        assert_eq!(u("deepseek32.expert_gating_func"), 2);
        assert_eq!(u("deepseek32.attention.indexer.head_count"), 64);
        assert_eq!(u("deepseek32.attention.indexer.key_length"), 128);
        assert_eq!(u("deepseek32.attention.indexer.top_k"), 2048);
        assert!(matches!(
            get("deepseek32.expert_weights_norm"),
            Value::Bool(true)
        ));
        assert!(matches!(
            get("deepseek32.rope.scaling.yarn_log_multiplier"),
            Value::F32(x) if x == 0.1
        ));
        assert!(matches!(get("deepseek32.expert_weights_scale"), Value::F32(x) if x == 2.5));
        assert_keys_unique(&m);
    }
}
