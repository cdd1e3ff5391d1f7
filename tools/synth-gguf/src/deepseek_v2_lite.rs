//! DeepSeek-V2-Lite (15.7B parameters, 2.4B active): MLA with full-rank queries and a 64-expert
//! softmax-routed MoE, as the `deepseek2` architecture.

use crate::deepseek::{Gating, Hparams};

/// Hyper-parameters of DeepSeek-V2-Lite (`config.json` of deepseek-ai/DeepSeek-V2-Lite).
pub fn hparams() -> Hparams {
    Hparams {
        arch: "deepseek2",
        name: "DeepSeek-V2-Lite (synthetic random weights)".into(),
        n_embd: 2048,
        n_layer: 27,
        n_head: 16,
        n_vocab: 102_400,
        n_ctx_train: 163_840,
        n_ff: 10_944,
        n_ff_exp: 1408,
        n_expert: 64,
        n_expert_used: 6,
        n_expert_shared: 2,
        expert_groups: None,
        gating: Gating::Softmax,
        expert_weights_scale: 1.0,
        expert_weights_norm: false,
        n_dense_lead: 1,
        // No `q_lora_rank`: llama.cpp treats 27-layer deepseek2 files as "lite" and reads
        // `attn_q` directly.
        q_lora_rank: None,
        kv_lora_rank: 512,
        qk_nope: 128,
        qk_rope: 64,
        v_head: 128,
        mscale_all_dim: 0.707,
        indexer: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deepseek::testing::{assert_consistent, type_of};
    use crate::deepseek::{tensors, PlannedTensor};
    use baicai_gguf::GgmlType;

    #[test]
    fn parameter_count_matches_deepseek_v2_lite() {
        let ts = tensors(&hparams());
        let total: u64 = ts.iter().map(PlannedTensor::n_elements).sum();
        // DeepSeek-V2 paper, Table 6 / model card: 15.7B total.
        assert_eq!(total, 15_706_484_224);
        assert_eq!(ts.len(), 1 + 27 * 8 + 3 + 26 * 7 + 2);
    }

    #[test]
    fn rows_that_are_not_whole_super_blocks_fall_back_to_32_blocks() {
        let ts = tensors(&hparams());
        let ty = |name: &str| type_of(&ts, name);
        assert_eq!(ty("blk.3.attn_k_b.weight"), GgmlType::Q5_0);
        assert_eq!(ty("blk.3.ffn_down_exps.weight"), GgmlType::Q5_0);
        assert_eq!(ty("blk.5.ffn_down_exps.weight"), GgmlType::Q8_0);
        assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q8_0);
        assert_eq!(ty("blk.5.ffn_down_shexp.weight"), GgmlType::Q6_K);
        assert_eq!(ty("blk.3.ffn_down_shexp.weight"), GgmlType::Q4_K);
        assert_consistent(&ts);
    }
}
