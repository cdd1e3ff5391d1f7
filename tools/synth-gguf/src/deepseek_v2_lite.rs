//! DeepSeek-V2-Lite as llama.cpp's `convert_hf_to_gguf.py` + `llama-quantize Q4_K_M` lay it out:
//! metadata keys, tensor names and ggml-order shapes as `src/models/deepseek2.cpp` loads them
//! (MLA layout with `attn_k_b` / `attn_v_b` split out of `kv_b_proj`), and per-tensor types as
//! `src/llama-quant.cpp` picks them for Q4_K_M.

use baicai_gguf::{GgmlType, TensorSpec, Value};

use crate::fill::Init;

/// Hyper-parameters of DeepSeek-V2-Lite (`config.json` of deepseek-ai/DeepSeek-V2-Lite).
pub struct Hparams {
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
    /// `first_k_dense_replace`.
    pub n_dense_lead: u64,
    pub kv_lora_rank: u64,
    pub qk_nope: u64,
    pub qk_rope: u64,
    pub v_head: u64,
}

impl Hparams {
    /// Query/key head size before absorption: no-RoPE part + RoPE part.
    pub fn qk_head(&self) -> u64 {
        self.qk_nope + self.qk_rope
    }
}

/// DeepSeek-V2-Lite.
pub const HPARAMS: Hparams = Hparams {
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
    n_dense_lead: 1,
    kv_lora_rank: 512,
    qk_nope: 128,
    qk_rope: 64,
    v_head: 128,
};

/// `general.file_type` of `LLAMA_FTYPE_MOSTLY_Q4_K_M`.
const FTYPE_MOSTLY_Q4_K_M: u32 = 15;
/// `LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX` (V2 scores experts with softmax).
const GATING_SOFTMAX: u32 = 1;

/// One tensor to write.
pub struct PlannedTensor {
    pub spec: TensorSpec,
    pub init: Init,
    /// A stack of routed experts (`*_exps`), of which only `n_expert_used` are read per token.
    pub routed: bool,
}

/// Metadata as the converter writes it for DeepSeek-V2-Lite, with a synthetic byte-level
/// tokenizer (see [`tokenizer`]) so that servers can take text and chat requests.
pub fn metadata(h: &Hparams) -> Vec<(String, Value)> {
    let u = |x: u64| Value::U32(x as u32);
    let s = |x: &str| Value::String(x.into());
    let a = |k: &str| format!("deepseek2.{k}");
    vec![
        ("general.architecture".into(), s("deepseek2")),
        ("general.type".into(), s("model")),
        (
            "general.name".into(),
            s("DeepSeek-V2-Lite (synthetic random weights)"),
        ),
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
        (a("expert_gating_func"), Value::U32(GATING_SOFTMAX)),
        (a("leading_dense_block_count"), u(h.n_dense_lead)),
        (a("vocab_size"), u(h.n_vocab)),
        (a("attention.kv_lora_rank"), u(h.kv_lora_rank)),
        // Absorbed MLA: keys are latent + RoPE part, values are the latent.
        (a("attention.key_length"), u(h.kv_lora_rank + h.qk_rope)),
        (a("attention.value_length"), u(h.kv_lora_rank)),
        (a("attention.key_length_mla"), u(h.qk_head())),
        (a("attention.value_length_mla"), u(h.v_head)),
        (a("expert_feed_forward_length"), u(h.n_ff_exp)),
        (a("expert_shared_count"), u(h.n_expert_shared)),
        (a("expert_weights_scale"), Value::F32(1.0)),
        (a("expert_weights_norm"), Value::Bool(false)),
        (a("rope.dimension_count"), u(h.qk_rope)),
        (a("rope.scaling.type"), s("yarn")),
        (a("rope.scaling.factor"), Value::F32(40.0)),
        (a("rope.scaling.original_context_length"), u(4096)),
        (a("rope.scaling.yarn_beta_fast"), Value::F32(32.0)),
        (a("rope.scaling.yarn_beta_slow"), Value::F32(1.0)),
        // The converter writes 0.1 · mscale_all_dim (0.707); llama.cpp divides the 0.1 back out.
        (
            a("rope.scaling.yarn_log_multiplier"),
            Value::F32(0.1 * 0.707),
        ),
    ]
    .into_iter()
    .chain(tokenizer(h.n_vocab))
    .collect()
}

/// A byte-level BPE vocabulary of `n_vocab` tokens that both engines load: the 256 byte tokens
/// (GPT-2's byte-to-character mapping), one merge (two spaces), the ChatML control tokens and a
/// ChatML template, then filler tokens `<|synth_N|>`. Text tokenizes to about a token per byte;
/// the random weights generate fillers, which detokenize to their names.
fn tokenizer(n_vocab: u64) -> Vec<(String, Value)> {
    const NORMAL: i32 = 1;
    const CONTROL: i32 = 3;
    let mut tokens: Vec<String> = byte_chars().into_iter().map(String::from).collect();
    let mut types = vec![NORMAL; tokens.len()];
    tokens.push("\u{120}\u{120}".into());
    types.push(NORMAL);
    let special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let first_special = tokens.len() as u32;
    for t in special {
        tokens.push(t.into());
        types.push(CONTROL);
    }
    while (tokens.len() as u64) < n_vocab {
        tokens.push(format!("<|synth_{}|>", tokens.len()));
        types.push(NORMAL);
    }
    let s = |x: &str| Value::String(x.into());
    let template = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + \
                    message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}\
                    {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    vec![
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("default")),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![s("\u{120} \u{120}")]),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(first_special),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(first_special + 2),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), s(template)),
    ]
}

/// GPT-2's printable stand-ins for the 256 byte values, in byte order.
fn byte_chars() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("printable byte")
            } else {
                extra += 1;
                char::from_u32(255 + extra).expect("stand-in char")
            }
        })
        .collect()
}

/// llama-quantize's `use_more_bits`: the first and last eighth of the layers and every third
/// layer between get more bits.
fn use_more_bits(i_layer: u64, n_layer: u64) -> bool {
    let (i, n) = (i_layer as i64, n_layer as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// llama-quantize's `tensor_type_fallback`: a 256-block type whose rows do not fit falls back to
/// a 32-block type of similar size.
fn fit_rows(ty: GgmlType, row: u64) -> GgmlType {
    if row.is_multiple_of(ty.block_len()) {
        return ty;
    }
    match ty {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => panic!("no 32-block fallback for {}", other.name()),
    }
}

/// Q4_K_M's choice for `ffn_down*` in layer `il`: Q6_K where `use_more_bits`, else Q4_K.
fn ffn_down_type(h: &Hparams, il: u64) -> GgmlType {
    if use_more_bits(il, h.n_layer) {
        GgmlType::Q6_K
    } else {
        GgmlType::Q4_K
    }
}

/// All tensors in file order: `token_embd`, the blocks, `output_norm`, `output`.
///
/// Types follow llama-quantize Q4_K_M: 2-D weights Q4_K; `output` Q6_K; every `ffn_down*` Q6_K
/// in the `use_more_bits` layers (13 of 27); rows that are no multiple of 256 fall back (Q4_K →
/// Q5_0, Q6_K → Q8_0): `attn_k_b` (rows of 128), `ffn_down_exps` (1408) and the dense `ffn_down`
/// (10944); norms and the router `ffn_gate_inp` stay F32.
pub fn tensors(h: &Hparams) -> Vec<PlannedTensor> {
    use GgmlType::{F32, Q4_K, Q6_K};
    let mut out = Vec::new();
    let mut add = |name: String, shape: &[u64], ty: GgmlType, init: Init| {
        out.push(PlannedTensor {
            spec: TensorSpec::new(name.clone(), shape, fit_rows(ty, shape[0])),
            init,
            routed: name.ends_with("_exps.weight"),
        });
    };
    let (e, r) = (h.n_embd, Init::Random);
    add("token_embd.weight".into(), &[e, h.n_vocab], Q4_K, r);
    for il in 0..h.n_layer {
        let t = |name: &str| format!("blk.{il}.{name}.weight");
        add(t("attn_norm"), &[e], F32, Init::NearOne);
        add(t("attn_q"), &[e, h.n_head * h.qk_head()], Q4_K, r);
        add(
            t("attn_kv_a_mqa"),
            &[e, h.kv_lora_rank + h.qk_rope],
            Q4_K,
            r,
        );
        add(t("attn_kv_a_norm"), &[h.kv_lora_rank], F32, Init::NearOne);
        add(
            t("attn_k_b"),
            &[h.qk_nope, h.kv_lora_rank, h.n_head],
            Q4_K,
            r,
        );
        add(
            t("attn_v_b"),
            &[h.kv_lora_rank, h.v_head, h.n_head],
            Q4_K,
            r,
        );
        add(t("attn_output"), &[h.n_head * h.v_head, e], Q4_K, r);
        add(t("ffn_norm"), &[e], F32, Init::NearOne);
        let down = ffn_down_type(h, il);
        if il < h.n_dense_lead {
            add(t("ffn_gate"), &[e, h.n_ff], Q4_K, r);
            add(t("ffn_up"), &[e, h.n_ff], Q4_K, r);
            add(t("ffn_down"), &[h.n_ff, e], down, r);
            continue;
        }
        let (x, f_sh) = (h.n_expert, h.n_ff_exp * h.n_expert_shared);
        add(t("ffn_gate_inp"), &[e, x], F32, r);
        add(t("ffn_gate_exps"), &[e, h.n_ff_exp, x], Q4_K, r);
        add(t("ffn_up_exps"), &[e, h.n_ff_exp, x], Q4_K, r);
        add(t("ffn_down_exps"), &[h.n_ff_exp, e, x], down, r);
        add(t("ffn_gate_shexp"), &[e, f_sh], Q4_K, r);
        add(t("ffn_up_shexp"), &[e, f_sh], Q4_K, r);
        add(t("ffn_down_shexp"), &[f_sh, e], down, r);
    }
    add("output_norm.weight".into(), &[e], F32, Init::NearOne);
    add("output.weight".into(), &[e, h.n_vocab], Q6_K, r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n_elements(t: &PlannedTensor) -> u64 {
        t.spec.shape.iter().product()
    }

    #[test]
    fn parameter_count_matches_deepseek_v2_lite() {
        let ts = tensors(&HPARAMS);
        let total: u64 = ts.iter().map(n_elements).sum();
        // DeepSeek-V2 paper, Table 6 / model card: 15.7B total.
        assert_eq!(total, 15_706_484_224);
        assert_eq!(ts.len(), 1 + 27 * 8 + 3 + 26 * 7 + 2);
    }

    #[test]
    fn use_more_bits_marks_13_of_27_layers() {
        let layers: Vec<u64> = (0..27).filter(|&i| use_more_bits(i, 27)).collect();
        assert_eq!(layers, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26]);
    }

    #[test]
    fn rows_that_are_not_whole_super_blocks_fall_back_to_32_blocks() {
        let ts = tensors(&HPARAMS);
        let ty = |name: &str| {
            ts.iter()
                .find(|t| t.spec.name == name)
                .unwrap()
                .spec
                .ggml_type
        };
        assert_eq!(ty("blk.3.attn_k_b.weight"), GgmlType::Q5_0);
        assert_eq!(ty("blk.3.ffn_down_exps.weight"), GgmlType::Q5_0);
        assert_eq!(ty("blk.5.ffn_down_exps.weight"), GgmlType::Q8_0);
        assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q8_0);
        assert_eq!(ty("blk.5.ffn_down_shexp.weight"), GgmlType::Q6_K);
        assert_eq!(ty("blk.3.ffn_down_shexp.weight"), GgmlType::Q4_K);
        for t in &ts {
            assert_eq!(
                t.spec.shape[0] % t.spec.ggml_type.block_len(),
                0,
                "{}",
                t.spec.name
            );
        }
    }
}
