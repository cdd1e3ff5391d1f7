//! Hugging Face tensor names onto the canonical (GGUF) names the model code asks for.

use crate::config::Arch;

/// HF name → canonical name. `None` for tensors the engine does not use. The text model of a
/// multimodal checkpoint (`model.language_model.…` as transformers 5.x saves it,
/// `language_model.model.…` as 4.x did) is read as a text-only one; its vision tower is unused.
pub(super) fn canonical_name(arch: Arch, name: &str) -> Option<String> {
    if arch == Arch::Deepseek4 {
        return crate::models::deepseek4::canonical_name(name);
    }
    let name = match name
        .strip_prefix("model.language_model.")
        .or_else(|| name.strip_prefix("language_model.model."))
    {
        Some(rest) => format!("model.{rest}"),
        None => name
            .strip_prefix("language_model.")
            .unwrap_or(name)
            .to_string(),
    };
    let name = name.as_str();
    let fixed = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (il, rest) = rest.split_once('.')?;
    let il: usize = il.parse().ok()?;
    let map = |s: &str| Some(format!("blk.{il}.{s}"));
    if let Some(r) = rest
        .strip_prefix("mlp.experts.")
        .or_else(|| rest.strip_prefix("block_sparse_moe.experts."))
    {
        // Experts keep their index: blk.N.ffn_{gate,up,down}_exps.E.weight
        let (e, w) = r.split_once('.')?;
        let kind = match w {
            "gate_proj.weight" | "w1.weight" => "gate",
            "up_proj.weight" | "w3.weight" => "up",
            "down_proj.weight" | "w2.weight" => "down",
            "gate_proj.weight_scale_inv" => return map(&format!("ffn_gate_exps.{e}.scale_inv")),
            "up_proj.weight_scale_inv" => return map(&format!("ffn_up_exps.{e}.scale_inv")),
            "down_proj.weight_scale_inv" => return map(&format!("ffn_down_exps.{e}.scale_inv")),
            _ => return None,
        };
        return map(&format!("ffn_{kind}_exps.{e}.weight"));
    }
    let (base, suffix) = match rest.strip_suffix(".weight_scale_inv") {
        Some(b) => (b, "scale_inv"),
        None => match rest.rsplit_once('.') {
            Some((b, s)) => (b, s),
            None => return None,
        },
    };
    let canon = match base {
        "input_layernorm" => "attn_norm",
        // Gemma normalizes the attention's output with it, and the feed-forward block's input
        // with `pre_feedforward_layernorm`; the others normalize the feed-forward input with it.
        "post_attention_layernorm" if arch == Arch::Gemma3 => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "self_attn.q_a_proj" => "attn_q_a",
        "self_attn.q_a_layernorm" => "attn_q_a_norm",
        "self_attn.q_b_proj" => "attn_q_b",
        "self_attn.kv_a_proj_with_mqa" => "attn_kv_a_mqa",
        "self_attn.kv_a_layernorm" => "attn_kv_a_norm",
        "self_attn.kv_b_proj" => "attn_kv_b",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "mlp.gate" | "block_sparse_moe.gate" => {
            if suffix == "e_score_correction_bias" {
                return map("exp_probs_b.bias");
            }
            "ffn_gate_inp"
        }
        "mlp.shared_experts.gate_proj" | "mlp.shared_expert.gate_proj" => "ffn_gate_shexp",
        "mlp.shared_experts.up_proj" | "mlp.shared_expert.up_proj" => "ffn_up_shexp",
        "mlp.shared_experts.down_proj" | "mlp.shared_expert.down_proj" => "ffn_down_shexp",
        "mlp.shared_expert_gate" => "ffn_gate_inp_shexp",
        // DeepSeek-V3/V3.2's multi-token-prediction layer (past the trunk; llama.cpp's names).
        "eh_proj" => "nextn.eh_proj",
        "enorm" => "nextn.enorm",
        "hnorm" => "nextn.hnorm",
        "shared_head.norm" => "nextn.shared_head_norm",
        "shared_head.head" => "nextn.shared_head_head",
        "embed_tokens" => "nextn.embed_tokens",
        // DeepSeek-V3.2's lightning indexer (llama.cpp's names).
        "self_attn.indexer.wq_b" => "indexer.attn_q_b",
        "self_attn.indexer.wk" => "indexer.attn_k",
        "self_attn.indexer.k_norm" => "indexer.k_norm",
        "self_attn.indexer.weights_proj" => "indexer.proj",
        _ => return None,
    };
    map(&format!("{canon}.{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_map_onto_gguf_names() {
        let m = |s: &str| canonical_name(Arch::Deepseek2, s);
        assert_eq!(
            m("model.layers.3.self_attn.kv_a_proj_with_mqa.weight").as_deref(),
            Some("blk.3.attn_kv_a_mqa.weight")
        );
        assert_eq!(
            m("model.layers.1.mlp.experts.7.down_proj.weight").as_deref(),
            Some("blk.1.ffn_down_exps.7.weight")
        );
        assert_eq!(
            m("model.layers.1.block_sparse_moe.experts.2.w3.weight").as_deref(),
            Some("blk.1.ffn_up_exps.2.weight")
        );
        assert_eq!(
            m("model.layers.2.mlp.gate.e_score_correction_bias").as_deref(),
            Some("blk.2.exp_probs_b.bias")
        );
        assert_eq!(
            m("model.layers.0.mlp.shared_expert_gate.weight").as_deref(),
            Some("blk.0.ffn_gate_inp_shexp.weight")
        );
        assert_eq!(m("model.layers.0.self_attn.rotary_emb.inv_freq"), None);
        let g = |s: &str| canonical_name(Arch::Gemma3, s);
        assert_eq!(
            g("model.layers.0.post_attention_layernorm.weight").as_deref(),
            Some("blk.0.post_attention_norm.weight")
        );
        assert_eq!(
            g("model.language_model.layers.1.pre_feedforward_layernorm.weight").as_deref(),
            Some("blk.1.ffn_norm.weight")
        );
        assert_eq!(
            g("language_model.model.norm.weight").as_deref(),
            Some("output_norm.weight")
        );
        assert_eq!(
            g("language_model.lm_head.weight").as_deref(),
            Some("output.weight")
        );
        assert_eq!(
            g("model.vision_tower.vision_model.post_layernorm.weight"),
            None
        );
    }
}
