"""The tiny Mixture-of-Experts models that tools/moe_oracle.py builds: one entry per fixture.

Each spec holds the Hugging Face config (keys exactly as in the real checkpoints' config.json), the
seed, and the scale of the router weights. Dimensions are chosen so that every fixture folder
(safetensors + GGUF + reference) stays around 1.5 MB; routing features are chosen per model so that
each exercises what its family does differently (see fixtures/moe/README.md).
"""

VOCAB_SIZE = 320
HIDDEN = 64

# Token ids of the special tokens, fixed by the order they are given to the tokenizer trainer.
ENDOFTEXT_ID = 0
IM_START_ID = 1
IM_END_ID = 2

COMMON = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": HIDDEN,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": ENDOFTEXT_ID,
    "eos_token_id": IM_END_ID,
    "pad_token_id": None,
    "torch_dtype": "float32",
    "use_cache": True,
}

# transformers' DeepSeek configs write head_dim (= qk_rope_head_dim) and qk_head_dim into config.json;
# DeepSeek's own config files have neither, and older llama.cpp converters misread head_dim.
DEEPSEEK_DERIVED_KEYS = ["head_dim", "qk_head_dim"]

# MLA dimensions shared by the three DeepSeek fixtures.
MLA = {
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "kv_lora_rank": 32,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "attention_bias": False,
}

MODELS = {
    # DeepSeek-V3: sigmoid scores, e_score_correction_bias for selection only, group-limited
    # selection (group score = sum of the top-2 biased scores), weights normalised then scaled by
    # routed_scaling_factor, one shared expert, the first layer dense, YaRN.
    "deepseek-v3": {
        "seed": 3001,
        "drop_config_keys": DEEPSEEK_DERIVED_KEYS,
        "router_std": 3.0,
        "bias_max": 0.4,
        "config": {
            **COMMON,
            **MLA,
            "architectures": ["DeepseekV3ForCausalLM"],
            "model_type": "deepseek_v3",
            "num_hidden_layers": 3,
            "q_lora_rank": 24,
            "intermediate_size": 64,
            "moe_intermediate_size": 16,
            "n_routed_experts": 8,
            "num_experts_per_tok": 3,
            "n_group": 4,
            "topk_group": 2,
            "topk_method": "noaux_tc",
            "scoring_func": "sigmoid",
            "norm_topk_prob": True,
            "routed_scaling_factor": 2.5,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
            "rope_interleave": True,
            "max_position_embeddings": 16384,
            "rope_scaling": {
                "type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 4096,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
                "beta_fast": 32,
                "beta_slow": 1,
            },
        },
    },
    # DeepSeek-V2-Lite: no q LoRA, softmax scores, plain top-k (no groups), no renormalisation,
    # two shared experts, the first layer dense.
    "deepseek-v2-lite": {
        "seed": 2001,
        "drop_config_keys": DEEPSEEK_DERIVED_KEYS,
        "kv_b_gguf": True,
        "router_std": 3.0,
        "config": {
            **COMMON,
            **MLA,
            "architectures": ["DeepseekV2ForCausalLM"],
            "model_type": "deepseek_v2",
            "num_hidden_layers": 3,
            "q_lora_rank": None,
            "intermediate_size": 32,
            "moe_intermediate_size": 16,
            "n_routed_experts": 8,
            "num_experts_per_tok": 3,
            "n_group": 1,
            "topk_group": 1,
            "topk_method": "greedy",
            "scoring_func": "softmax",
            "norm_topk_prob": False,
            "routed_scaling_factor": 1.0,
            "n_shared_experts": 2,
            "first_k_dense_replace": 1,
            "max_position_embeddings": 4096,
            "rope_scaling": None,
        },
    },
    # DeepSeek-V2: q LoRA, softmax scores, group-limited greedy selection (group score = max score
    # in the group), no renormalisation, weights scaled by routed_scaling_factor.
    "deepseek-v2": {
        "seed": 2002,
        "drop_config_keys": DEEPSEEK_DERIVED_KEYS,
        "router_std": 2.0,
        "config": {
            **COMMON,
            **MLA,
            "architectures": ["DeepseekV2ForCausalLM"],
            "model_type": "deepseek_v2",
            "num_hidden_layers": 3,
            "q_lora_rank": 24,
            "intermediate_size": 64,
            "moe_intermediate_size": 16,
            "n_routed_experts": 8,
            "num_experts_per_tok": 3,
            "n_group": 4,
            "topk_group": 2,
            "topk_method": "group_limited_greedy",
            "scoring_func": "softmax",
            "norm_topk_prob": False,
            "routed_scaling_factor": 4.0,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
            "max_position_embeddings": 4096,
            "rope_scaling": None,
        },
    },
    # Qwen1.5/2-MoE: softmax over all experts, top-k without renormalisation, a shared expert whose
    # output is scaled by sigmoid(shared_expert_gate(x)); q/k/v biases; GQA.
    "qwen2-moe": {
        "seed": 1501,
        "router_std": 3.0,
        "config": {
            **COMMON,
            "architectures": ["Qwen2MoeForCausalLM"],
            "model_type": "qwen2_moe",
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 96,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 32,
            "num_experts": 8,
            "num_experts_per_tok": 4,
            "norm_topk_prob": False,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "qkv_bias": True,
            "use_sliding_window": False,
            "max_position_embeddings": 4096,
            "rope_scaling": None,
        },
    },
    # Qwen3-MoE: softmax, top-k renormalised, per-head q/k RMSNorm, explicit head_dim, GQA.
    "qwen3-moe": {
        "seed": 3501,
        "router_std": 3.0,
        "config": {
            **COMMON,
            "architectures": ["Qwen3MoeForCausalLM"],
            "model_type": "qwen3_moe",
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "intermediate_size": 96,
            "moe_intermediate_size": 16,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "norm_topk_prob": True,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "attention_bias": False,
            "use_sliding_window": False,
            "max_position_embeddings": 4096,
            "rope_scaling": None,
        },
    },
    # Mixtral: softmax over the top-k router logits (= softmax then renormalise), no shared expert.
    "mixtral": {
        "seed": 801,
        "router_std": 3.0,
        "config": {
            **COMMON,
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "intermediate_size": 16,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "sliding_window": None,
            "max_position_embeddings": 4096,
            "rope_scaling": None,
        },
    },
}
