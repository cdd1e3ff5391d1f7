#!/usr/bin/env python3
"""Reference oracle for the DeepSeek-family fixtures that need transformers 5.x: DeepSeek-V3.2 (sparse
attention with the lightning indexer), Kimi K2 (DeepSeek-V3 layout with Moonshot's config) and
DeepSeek-V4 (hyper-connections, sliding/CSA/HCA attention, hash and top-k MoE). Per model
it writes fixtures/moe/<name>/ as tools/moe_oracle.py does (whose helpers it reuses):

- the checkpoint: config.json (the keys of the family's real config.json, written by this script and
  checked to load back to the same model), generation_config.json, model.safetensors (F32),
  tokenizer.json and tokenizer_config.json (the shared byte-level BPE);
- model-f32.gguf and gguf-summary.txt: llama.cpp's convert_hf_to_gguf.py --outtype f32;
- reference.json: logits at every prompt position, greedy continuations (full-prefix forwards, checked
  against the KV-cached decode), the experts the routers picked, and for DeepSeek-V3.2 the key
  positions the indexer selected at every layer and query position.

It also writes fixtures/moe/deepseek-v4-release/: DeepSeek-V4's model in DeepSeek's release layout (FP8
with E8M0 block scales, MXFP4 experts, BF16 compressor projections) with a reference computed from the
values that file decodes to (build_v4_release).

Run by developers, not CI:

    python3 -m venv /work/tf5-venv && /work/tf5-venv/bin/pip install -r tools/requirements-oracle-tf5.txt
    /work/tf5-venv/bin/python tools/deepseek_oracle.py [--llama-cpp PATH/TO/llama.cpp] [--only NAME ...]

See fixtures/moe/README.md for what each model exercises, fixtures/moe/deepseek-v32/SPEC.md for the
indexer and fixtures/moe/deepseek-v4/SPEC.md for DeepSeek-V4.
"""

import argparse
import copy
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moe_oracle import (  # noqa: E402
    DEFAULT_LLAMA_CPP, GREEDY_STEPS, SPECIAL_TOKENS, build_tokenizer, chat_example, convert_to_gguf, gguf_summary,
    select, to_json, write_tokenizer)
from moe_oracle_models import COMMON, HIDDEN, MLA, VOCAB_SIZE  # noqa: E402

# YaRN as DeepSeek-V3 and V3.2 ship it (factor 40 there; 4 here, as in the deepseek-v3 fixture).
DEEPSEEK_YARN = {
    "type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 4096,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "beta_fast": 32,
    "beta_slow": 1,
}

MODELS = {
    # DeepSeek-V3.2: V3 (MLA with q LoRA, sigmoid noaux_tc router with groups, first layer dense, YaRN)
    # plus the DSA lightning indexer in every layer. index_topk 4 with prompts up to 40 tokens, so that
    # the selection is sparse for most query positions.
    "deepseek-v32": {
        "seed": 3212,
        "prompt_lengths": (6, 13, 24, 40),
        "indexer_prompt": 3,
        "router_std": 3.0,
        "bias_max": 0.4,
        # llama.cpp's DeepseekV32 conversion asserts tokenizer.add_bos_token, which (under the
        # transformers 4.57.6 it pins) only LlamaTokenizerFast exposes; the real V3.2
        # tokenizer_config.json names that class and sets add_bos_token. add_prefix_space is dropped:
        # with it LlamaTokenizerFast insists on converting from a sentencepiece model.
        "tokenizer_config": {"add_bos_token": True, "tokenizer_class": "LlamaTokenizerFast"},
        "tokenizer_config_drop": ["add_prefix_space"],
        "config": {
            **COMMON,
            **MLA,
            "architectures": ["DeepseekV32ForCausalLM"],
            "model_type": "deepseek_v32",
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
            "moe_layer_freq": 1,
            "ep_size": 1,
            "index_n_heads": 4,
            "index_head_dim": 16,
            "index_topk": 4,
            "max_position_embeddings": 16384,
            "rope_scaling": DEEPSEEK_YARN,
        },
    },
    # Kimi K2 (moonshotai/Kimi-K2-Instruct, July 2025 release): DeepSeek-V3 code with its own config:
    # one expert group, many experts per token, routed_scaling_factor 2.827, YaRN factor 32 with
    # beta_fast = beta_slow = 1, rope_theta 50000, model_type kimi_k2 (unregistered in transformers).
    "kimi-k2": {
        "seed": 2701,
        "prompt_lengths": (5, 9, 13),
        "router_std": 3.0,
        "bias_max": 0.4,
        "model_class": "DeepseekV3ForCausalLM",
        "config": {
            **COMMON,
            **MLA,
            "architectures": ["DeepseekV3ForCausalLM"],
            "model_type": "kimi_k2",
            "auto_map": {
                "AutoConfig": "configuration_deepseek.DeepseekV3Config",
                "AutoModel": "modeling_deepseek.DeepseekV3Model",
                "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM",
            },
            "aux_loss_alpha": 0.001,
            "seq_aux": True,
            "ep_size": 1,
            "moe_layer_freq": 1,
            "pretraining_tp": 1,
            "num_nextn_predict_layers": 0,
            "num_hidden_layers": 3,
            "q_lora_rank": 24,
            "intermediate_size": 64,
            "moe_intermediate_size": 8,
            "n_routed_experts": 16,
            "num_experts_per_tok": 8,
            "n_group": 1,
            "topk_group": 1,
            "topk_method": "noaux_tc",
            "scoring_func": "sigmoid",
            "norm_topk_prob": True,
            "routed_scaling_factor": 2.827,
            "n_shared_experts": 1,
            "first_k_dense_replace": 1,
            "rope_theta": 50000.0,
            "max_position_embeddings": 131072,
            "rope_scaling": {
                "type": "yarn",
                "factor": 32.0,
                "original_max_position_embeddings": 4096,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
                "beta_fast": 1.0,
                "beta_slow": 1.0,
            },
        },
    },
    # DeepSeek-V4: mHC residual streams, sliding-window MQA with sinks, CSA (overlapping compressed keys
    # picked by a lightning indexer) and HCA (heavily compressed keys) layers, hash-routed and top-k
    # routed MoE with clamped SwiGLU. CSA rate 4 because llama.cpp tells CSA from HCA by `ratio == 4`;
    # HCA 8 (128 in the release). Routed expert weights are exactly representable in MXFP4, the format
    # of the release's experts, which is what llama.cpp's converter takes. See deepseek-v4/SPEC.md.
    "deepseek-v4": {
        "seed": 4001,
        "family": "deepseek_v4",
        "prompt_lengths": (5, 9, 24, 40),
        "indexer_prompt": 3,
        "router_std": 3.0,
        "bias_max": 0.3,
        "config": {
            **COMMON,
            "architectures": ["DeepseekV4ForCausalLM"],
            "model_type": "deepseek_v4",
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "qk_rope_head_dim": 8,
            "q_lora_rank": 24,
            "o_groups": 2,
            "o_lora_rank": 16,
            "sliding_window": 4,
            # transformers' keys and the release's keys for the same schedule (transformers maps legacy
            # compress_ratios only through {0, 4, 128}, so it needs layer_types + compress_rates here;
            # llama.cpp's converter reads compress_ratios and num_hash_layers)
            "layer_types": ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention",
                            "compressed_sparse_attention"],
            "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
            "compress_ratios": [0, 4, 8, 4],
            "mlp_layer_types": ["hash_moe", "hash_moe", "moe", "moe"],
            "num_hash_layers": 2,
            "compress_rope_theta": 160000.0,
            "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096,
                             "beta_fast": 32, "beta_slow": 1},
            "max_position_embeddings": 16384,
            "hc_mult": 4,
            "hc_sinkhorn_iters": 20,
            "hc_eps": 1e-6,
            "index_n_heads": 4,
            "index_head_dim": 16,
            "index_topk": 2,
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
            "n_shared_experts": 1,
            "moe_intermediate_size": 32,
            "scoring_func": "sqrtsoftplus",
            "topk_method": "noaux_tc",
            "norm_topk_prob": True,
            "routed_scaling_factor": 1.5,
            "swiglu_limit": 1.5,
            "num_nextn_predict_layers": 0,
        },
    },
}


def init_weights(model, spec):
    """Seeded weights at unit activation scale, as tools/moe_oracle.py makes them, with the fan-in read
    from the last dimension so that transformers 5's stacked experts ([n_expert, out, in]) get the same
    scale as per-expert matrices. LayerNorm biases (the indexer's k_norm) are small, not around 1."""
    g = torch.Generator().manual_seed(spec["seed"])
    router_std = spec["router_std"] / HIDDEN**0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".gate.weight"):
                p.copy_(router_std * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(spec["bias_max"] * torch.rand(b.shape, generator=g))
        for name, module in model.named_modules():
            if type(module).__name__ == "DeepseekV32Indexer":
                # Indexer head 1's query is head 0's negated: for every key one of the two has
                # ReLU(q.k) > 0, so no key scores exactly 0. With independent heads, keys whose q.k is
                # negative for all heads tie at 0.0 and the top-k often has to break such a tie, which
                # transformers leaves to torch.topk (unspecified order) - see SPEC.md §2 step 9.
                d = module.head_dim
                module.wq_b.weight[d : 2 * d] = -module.wq_b.weight[:d]


def prompts_for(spec):
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    n_special = len(SPECIAL_TOKENS)
    return [torch.randint(n_special, VOCAB_SIZE, (n,), generator=g).tolist() for n in spec["prompt_lengths"]]


def _layer_of(name):
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1])


class RouterRecorder:
    """Forward hooks on transformers 5's DeepSeek routers, which return (logits, weights, indices)."""

    def __init__(self, model):
        self.records, self.handles, self.config = {}, [], model.config
        for name, module in model.named_modules():
            if type(module).__name__.endswith("TopkRouter"):
                self.handles.append(module.register_forward_hook(self._hook(_layer_of(name))))

    def _hook(self, layer):
        def hook(module, inputs, output):
            _, w, idx = output
            order = torch.argsort(w, dim=-1, descending=True, stable=True)
            chosen = torch.gather(idx, 1, order)
            rec = self.records.setdefault(layer, {})
            rec["experts"] = chosen.tolist()
            rec["weights"] = torch.gather(w, 1, order).tolist()
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
            scores = torch.nn.functional.linear(x, module.weight.float()).sigmoid()
            bias = module.e_score_correction_bias
            variants = {"without_e_score_correction_bias": select(scores, self.config, "top2_sum")}
            if self.config.n_group > 1:
                variants["without_group_limit"] = select(scores + bias, self.config, None)
                variants["with_group_score_max"] = select(scores + bias, self.config, "max")
            sets = [set(t.tolist()) for t in chosen]
            rec["_ablations"] = {k: sum(set(t.tolist()) != c for t, c in zip(v, sets)) for k, v in variants.items()}

        return hook

    def take(self):
        out, self.records = self.records, {}
        return out

    def remove(self):
        for h in self.handles:
            h.remove()


def indexer_scores(module, hidden_states, q_resid, cos, sin, variant=None):
    """index_score [S, T] recomputed from the indexer's inputs as DeepseekV32Indexer.forward does
    (modeling_deepseek_v32.py l. 210-232), or under one misreading of it (`variant`)."""
    m = sys.modules[type(module).__module__]
    n_heads, d, r = module.n_heads, module.head_dim, module.qk_rope_head_dim
    x = hidden_states[0]
    q = module.wq_b(q_resid[0]).view(-1, n_heads, d)  # [S, H, D]
    k = module.wk(x)  # [S, D]
    if variant == "k_norm_as_rmsnorm":
        k = k * torch.rsqrt(k.pow(2).mean(-1, keepdim=True) + 1e-6) * module.k_norm.weight
    else:
        k = module.k_norm(k)
    k = k.unsqueeze(1)  # [S, 1, D]
    if variant == "rope_layout_nope_first":
        q_pass, q_rot = torch.split(q, [d - r, r], dim=-1)
        k_pass, k_rot = torch.split(k, [d - r, r], dim=-1)
    else:
        q_rot, q_pass = torch.split(q, [r, d - r], dim=-1)
        k_rot, k_pass = torch.split(k, [r, d - r], dim=-1)
    if variant == "rope_interleaved":
        q_rot, k_rot = m.apply_rotary_pos_emb_interleave(q_rot, k_rot, cos[0], sin[0], unsqueeze_dim=1)
    else:
        q_rot, k_rot = m.apply_rotary_pos_emb(q_rot, k_rot, cos[0], sin[0], unsqueeze_dim=1)
    q = torch.cat([q_rot, q_pass], dim=-1)  # [S, H, D]
    k = torch.cat([k_rot, k_pass], dim=-1)[:, 0]  # [T, D]
    s = torch.einsum("shd,td->sht", q.float(), k.float()) * module.softmax_scale
    if variant != "without_relu":
        s = torch.relu(s)
    w = module.weights_proj(x).float() * n_heads**-0.5  # [S, H]
    if variant == "uniform_head_weights":
        w = torch.ones_like(w)
    return torch.einsum("sh,sht->st", w, s), s, w


INDEXER_VARIANTS = ["rope_interleaved", "rope_layout_nope_first", "without_relu", "k_norm_as_rmsnorm",
                    "uniform_head_weights"]


def causal_topk_sets(scores, topk):
    """Per query position p: the sorted key positions among 0..p with the top-`topk` scores."""
    out = []
    for p in range(scores.shape[0]):
        row = scores[p, : p + 1]
        out.append(sorted(row.topk(min(topk, p + 1)).indices.tolist()))
    return out


class IndexerRecorder:
    """Forward hooks on DeepseekV32Indexer: the key positions each query position selected, and checks
    on the selection (boundary gap, how often it differs from the most recent keys, ablations)."""

    def __init__(self, model):
        self.records, self.handles = {}, []
        for name, module in model.named_modules():
            if type(module).__name__ == "DeepseekV32Indexer":
                self.handles.append(module.register_forward_hook(self._hook(_layer_of(name)), with_kwargs=True))

    def _hook(self, layer):
        def hook(module, args, kwargs, output):
            if kwargs.get("cache") is not None:
                return  # cached decode (greedy_cached): the full-sequence forwards are what is recorded
            hs, q_resid, (cos, sin) = args[0], args[1], args[2]
            topk = module.index_topk
            n = hs.shape[1]
            # Causal keys only; future keys picked to fill top-k are masked in attention (SPEC.md §3).
            selected = [sorted(i for i in output[0, p].tolist() if i <= p) for p in range(n)]
            scores, s, w = indexer_scores(module, hs, q_resid, cos, sin)
            mine = causal_topk_sets(scores, topk)
            assert mine == selected, f"layer {layer}: recomputed selection differs: " + str(
                [(p, a, b, scores[p, : p + 1].tolist()) for p, (a, b) in enumerate(zip(mine, selected)) if a != b])
            sparse = [p for p in range(n) if p + 1 > topk]
            gaps = []
            for p in sparse:
                top = scores[p, : p + 1].topk(topk + 1).values
                gaps.append(float(top[topk - 1] - top[topk]))
            recent = sum(selected[p] != list(range(p + 1 - topk, p + 1)) for p in sparse)
            # per head: does each head on its own (w_h * s_h) pick the same set?
            heads_disagree = 0
            for p in sparse:
                per_head = {tuple(sorted((w[p, h] * s[p, h, : p + 1]).topk(topk).indices.tolist()))
                            for h in range(module.n_heads)}
                heads_disagree += len(per_head) > 1
            ablations = {}
            for v in INDEXER_VARIANTS:
                alt = causal_topk_sets(indexer_scores(module, hs, q_resid, cos, sin, v)[0], topk)
                ablations[v] = sum(alt[p] != selected[p] for p in sparse)
            self.records[layer] = {
                "selected": selected,
                "_stats": {
                    "sparse_queries": len(sparse),
                    "not_the_most_recent": recent,
                    "heads_disagree": heads_disagree,
                    "min_boundary_gap": min(gaps) if gaps else None,
                    "ablations": ablations,
                },
            }

        return hook

    def take(self):
        out, self.records = self.records, {}
        return out

    def remove(self):
        for h in self.handles:
            h.remove()


def forward_logits(model, ids):
    return model(torch.tensor([ids]), use_cache=False).logits[0].float()  # [n_tokens, vocab]


def greedy(model, prompt):
    """Each step a full forward over the prefix, no cache (as tools/moe_oracle.py)."""
    ids, steps, step_logits, margins = list(prompt), [], [], []
    for _ in range(GREEDY_STEPS):
        last = forward_logits(model, ids)[-1]
        top2 = torch.topk(last, 2)
        steps.append(int(top2.indices[0]))
        step_logits.append(last)
        margins.append(float(top2.values[0] - top2.values[1]))
        ids.append(steps[-1])
    return steps, step_logits, margins


def greedy_cached(model, prompt):
    """The same continuation decoded one token at a time with transformers' DynamicCache."""
    out = model(torch.tensor([prompt]), use_cache=True)
    cache, last = out.cache, out.logits[0, -1].float()
    steps, step_logits = [], []
    for _ in range(GREEDY_STEPS):
        steps.append(int(last.argmax()))
        step_logits.append(last)
        out = model(torch.tensor([[steps[-1]]]), cache=cache, use_cache=True)
        cache, last = out.cache, out.logits[0, -1].float()
    return steps, step_logits


def run_prompts(model, spec, routers, indexers):
    """Every prompt of `spec`: logits of a full forward, the greedy continuation computed by
    full-prefix forwards and with transformers' cache (and whether they agree), and what the
    recorders saw during the full forward."""
    prompts, routes, selections, cached = [], [], [], []
    for ids in prompts_for(spec):
        routers.take()
        indexers.take()
        logits = forward_logits(model, ids)
        routes.append(routers.take())
        selections.append(indexers.take())
        steps, step_logits, margins = greedy(model, ids)
        c_steps, c_logits = greedy_cached(model, ids)
        n_same = next((i for i, (a, b) in enumerate(zip(steps, c_steps)) if a != b), len(steps))
        diff = max(float((a - b).abs().max()) for a, b in zip(step_logits[:n_same], c_logits[:n_same]))
        cached.append({"same_tokens": c_steps == steps, "greedy": c_steps, "max_abs_logit_diff": diff})
        prompts.append(
            {"ids": ids, "logits": logits, "greedy": steps, "greedy_logits": step_logits, "greedy_margins": margins}
        )
    return prompts, routes, selections, cached


def compute_reference(model, spec, name):
    routers, indexers = RouterRecorder(model), IndexerRecorder(model)
    prompts, routes, selections, cached = run_prompts(model, spec, routers, indexers)
    routers.remove()
    indexers.remove()
    first = routes[0]
    ref = {
        "model": name,
        "architecture": spec["config"]["architectures"][0],
        "generator": {
            "script": "tools/deepseek_oracle.py",
            "seed": spec["seed"],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "dtype": "float32",
            "attn_implementation": "eager",
            "note": "logits from full forward passes without KV cache; greedy_logits[i] is the row "
            "whose argmax is greedy[i]; greedy_margins[i] = top1 - top2 of that row; cached_greedy: "
            "the same continuation decoded with transformers' DynamicCache, compared with the full-prefix one",
        },
        "vocab_size": VOCAB_SIZE,
        "prompts": prompts,
        "cached_greedy": cached,
        "routing_prompt": 0,
        "routing": [
            {"layer": layer, **{k: v for k, v in first[layer].items() if not k.startswith("_")}}
            for layer in sorted(first)
        ],
        "routing_stats": routing_stats(routes, spec["config"]["n_routed_experts"]),
    }
    if selections[0]:
        p = spec["indexer_prompt"]
        ref["indexer_prompt"] = p
        ref["indexer_topk"] = {str(layer): rec["selected"] for layer, rec in sorted(selections[p].items())}
        ref["indexer_stats"] = indexer_stats(selections)
        ref["max_abs_logit_diff_if_dense"] = dense_logit_diff(model, prompts[p]["ids"], prompts[p]["logits"])
    return ref


def dense_logit_diff(model, ids, logits):
    """How far the prompt's logits move when the indexer keeps every key: proof that the fixture's
    logits depend on the sparse selection."""
    indexers = [m for m in model.modules() if type(m).__name__ == "DeepseekV32Indexer"]
    topk = [m.index_topk for m in indexers]
    for m in indexers:
        m.index_topk = len(ids)
    dense = forward_logits(model, ids)
    for m, k in zip(indexers, topk):
        m.index_topk = k
    return float((dense - logits).abs().max())


def routing_stats(routes, n_experts):
    per_layer = {}
    for rec_by_layer in routes:
        for layer, rec in rec_by_layer.items():
            s = per_layer.setdefault(layer, {"sets": set(), "tokens": 0, "counts": [0] * n_experts, "abl": {}})
            for k, n in rec["_ablations"].items():
                s["abl"][k] = s["abl"].get(k, 0) + n
            for experts in rec["experts"]:
                s["sets"].add(tuple(sorted(experts)))
                s["tokens"] += 1
                for e in experts:
                    s["counts"][e] += 1
    return [
        {
            "layer": layer,
            "tokens": s["tokens"],
            "distinct_expert_sets": len(s["sets"]),
            "expert_use": s["counts"],
            "tokens_whose_selection_changes": s["abl"],
        }
        for layer, s in sorted(per_layer.items())
    ]


def indexer_stats(selections):
    """Per layer over all prompts: query positions with more causal keys than index_topk, how many of
    those select something other than the most recent keys, on how many the heads alone would
    disagree, the smallest score gap at the top-k boundary, and how many selections change under
    each misreading of the indexer."""
    out = []
    for layer in sorted(selections[0]):
        st = [sel[layer]["_stats"] for sel in selections]
        gaps = [s["min_boundary_gap"] for s in st if s["min_boundary_gap"] is not None]
        out.append(
            {
                "layer": layer,
                "sparse_queries": sum(s["sparse_queries"] for s in st),
                "not_the_most_recent": sum(s["not_the_most_recent"] for s in st),
                "heads_disagree": sum(s["heads_disagree"] for s in st),
                "min_boundary_gap": min(gaps),
                "queries_whose_selection_changes": {
                    v: sum(s["ablations"][v] for s in st) for v in INDEXER_VARIANTS
                },
            }
        )
    return out


# ---------------------------------------------------------------------------------------------------
# DeepSeek-V4 (transformers' DeepseekV4ForCausalLM; fixtures/moe/deepseek-v4/SPEC.md)

# E2M1 magnitudes in code order (codes 8-15 are the negatives), as in OCP MX and ggml's kvalues_mxfp4 / 2.
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def mxfp4_quantize(w):
    """Nearest MXFP4 value of every element of w, in blocks of 32 along the last dimension: shared scale
    2^(floor(log2 amax) - 2), E2M1 elements saturating at 6 (OCP MX v1.0). Returns (values as float32,
    4-bit codes [..., cols] uint8, E8M0 scale bytes [..., cols/32] uint8)."""
    blocks = w.reshape(*w.shape[:-1], -1, 32)
    exp = torch.floor(torch.log2(blocks.abs().amax(-1, keepdim=True).clamp_min(2.0**-100))) - 2
    idx = (blocks.abs().div(torch.exp2(exp)).unsqueeze(-1) - E2M1).abs().argmin(-1)
    values = torch.where(blocks < 0, -E2M1[idx], E2M1[idx]) * torch.exp2(exp)
    codes = torch.where((blocks < 0) & (idx > 0), idx + 8, idx).to(torch.uint8)
    return values.reshape(w.shape), codes.reshape(w.shape), (exp + 127).squeeze(-1).to(torch.uint8)


def init_weights_v4(model, spec):
    """Seeded weights for DeepSeek-V4 at unit activation scale (as init_weights), plus: sinks N(0,1);
    compressor position biases 0.5·N(0,1); hyper-connection scales 1 + 0.25·N(0,1) and biases
    0.5·N(0,1), so the pre/post/comb mixes vary per token; routed expert weights rounded to MXFP4;
    e_score_correction_bias uniform in ±bias_max; tid2eid rows of distinct random experts; indexer
    heads in antithetic pairs (head 2i+1's query = −head 2i's: no key scores exactly 0, see init_weights)."""
    g = torch.Generator().manual_seed(spec["seed"])
    router_std = spec["router_std"] / HIDDEN**0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "sinks":
                p.copy_(torch.randn(p.shape, generator=g))
            elif leaf == "position_bias":
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif leaf in ("scale", "hc_scale"):
                p.copy_(1.0 + 0.25 * torch.randn(p.shape, generator=g))
            elif leaf in ("base", "hc_base"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1 and "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".gate.weight"):
                p.copy_(router_std * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith(("experts.gate_up_proj", "experts.down_proj")) and "shared" not in name:
                p.copy_(mxfp4_quantize(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)[0])
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(spec["bias_max"] * (2 * torch.rand(b.shape, generator=g) - 1))
            elif name.endswith("tid2eid"):
                n_experts = spec["config"]["n_routed_experts"]
                b.copy_(torch.stack([torch.randperm(n_experts, generator=g)[: b.shape[1]] for _ in range(b.shape[0])]))
        for module in model.modules():
            if type(module).__name__ == "DeepseekV4Indexer":
                d, w = module.head_dim, module.q_b_proj.weight
                for h in range(0, module.num_heads - 1, 2):
                    w[(h + 1) * d : (h + 2) * d] = -w[h * d : (h + 1) * d]


def sqrtsoftplus(x):
    return torch.nn.functional.softplus(x).sqrt()


class V4RouterRecorder:
    """Forward hooks on DeepseekV4TopKRouter and DeepseekV4HashRouter (both return (logits, weights,
    indices)): the experts and weights per token, and how many tokens' expert sets change under a
    misreading (bias ignored, sigmoid instead of sqrt-softplus, top-k instead of the hash table)."""

    def __init__(self, model):
        self.records, self.handles = {}, []
        for name, module in model.named_modules():
            kind = {"DeepseekV4TopKRouter": "topk", "DeepseekV4HashRouter": "hash"}.get(type(module).__name__)
            if kind:
                self.handles.append(module.register_forward_hook(self._hook(_layer_of(name), kind)))

    def _hook(self, layer, kind):
        def hook(module, inputs, output):
            logits, w, idx = output
            order = torch.argsort(w, dim=-1, descending=True, stable=True)
            chosen = torch.gather(idx, 1, order)
            sets = [set(t.tolist()) for t in chosen]
            k = idx.shape[1]
            s = sqrtsoftplus(logits.float())
            if kind == "topk":
                bias = module.e_score_correction_bias
                variants = {
                    "without_e_score_correction_bias": s.topk(k).indices,
                    "sigmoid_instead_of_sqrtsoftplus": (logits.float().sigmoid() + bias).topk(k).indices,
                }
            else:
                variants = {"topk_instead_of_tid2eid": s.topk(k).indices}
            self.records[layer] = {
                "router": kind,
                "experts": chosen.tolist(),
                "weights": torch.gather(w, 1, order).tolist(),
                "_ablations": {n: sum(set(t.tolist()) != c for t, c in zip(v, sets)) for n, v in variants.items()},
            }

        return hook

    def take(self):
        out, self.records = self.records, {}
        return out

    def remove(self):
        for h in self.handles:
            h.remove()


class V4IndexerRecorder:
    """Forward hooks on DeepseekV4Indexer (and its scorer, for the raw scores): per query position the
    compressed-entry indices it kept (−1 sentinels dropped), checked against a recomputation from the
    scores with the causal threshold (t+1)//m; the smallest score gap at the top-k boundary; how
    often the selection is not simply the most recent entries. Cached decode calls are not recorded."""

    def __init__(self, model):
        self.records, self.handles, self.scores = {}, [], {}
        for name, module in model.named_modules():
            if type(module).__name__ == "DeepseekV4Indexer":
                layer = _layer_of(name)
                self.handles.append(module.register_forward_hook(self._hook(layer)))
                self.handles.append(module.scorer.register_forward_hook(self._score_hook(layer)))

    def _score_hook(self, layer):
        def hook(module, inputs, output):
            self.scores[layer] = output[0].detach()  # [S, T]

        return hook

    def _hook(self, layer):
        def hook(module, args, output):
            if args[3] is not None:
                return  # cached decode
            scores, m, k = self.scores.pop(layer), module.compress_rate, module.index_topk
            n = scores.shape[0]
            selected = [sorted(i for i in output[0, t].tolist() if i >= 0) for t in range(n)]
            mine, gaps, recent, sparse = [], [], 0, 0
            for t in range(n):
                row = scores[t, : (t + 1) // m]
                mine.append(sorted(row.topk(min(k, row.numel())).indices.tolist()))
                if row.numel() > k:
                    sparse += 1
                    top = row.topk(k + 1).values
                    gaps.append(float(top[k - 1] - top[k]))
                    recent += selected[t] != list(range(row.numel() - k, row.numel()))
            assert mine == selected, f"layer {layer}: recomputed indexer selection differs"
            self.records[layer] = {
                "selected": selected,
                "_stats": {"entries": scores.shape[1], "sparse_queries": sparse, "not_the_most_recent": recent,
                           "min_boundary_gap": min(gaps) if gaps else None},
            }

        return hook

    def take(self):
        out, self.records = self.records, {}
        return out

    def remove(self):
        for h in self.handles:
            h.remove()


class ClampCounter:
    """Counts the SwiGLU inputs that swiglu_limit clamps (gate > limit; |up| > limit), routed experts
    (DeepseekV4Experts._apply_gate) and shared experts (their gate_proj/up_proj outputs) per layer."""

    def __init__(self, model):
        self.counts, self.handles, self.patched = {}, [], []
        self.limit = model.config.swiglu_limit
        for name, module in model.named_modules():
            kind = type(module).__name__
            if kind == "DeepseekV4Experts":
                self.patched.append(module)
                module._apply_gate = self._wrap(module._apply_gate, _layer_of(name))
            elif kind == "DeepseekV4MLP":
                layer = _layer_of(name)
                self.handles.append(module.gate_proj.register_forward_hook(self._hook(layer, "shared_gate", True)))
                self.handles.append(module.up_proj.register_forward_hook(self._hook(layer, "shared_up", False)))

    def _add(self, layer, key, x, one_sided):
        over = (x > self.limit) if one_sided else (x.abs() > self.limit)
        c = self.counts.setdefault(layer, {})
        n, tot = c.get(key, (0, 0))
        c[key] = (n + int(over.sum()), tot + x.numel())

    def _wrap(self, fn, layer):
        def apply_gate(gate_up):
            gate, up = gate_up.chunk(2, dim=-1)
            self._add(layer, "routed_gate", gate, True)
            self._add(layer, "routed_up", up, False)
            return fn(gate_up)

        return apply_gate

    def _hook(self, layer, key, one_sided):
        def hook(module, inputs, output):
            self._add(layer, key, output, one_sided)

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()
        for module in self.patched:
            del module._apply_gate


class HyperConnectionRecorder:
    """Forward hooks on every DeepseekV4HyperConnection (returns post, comb, collapsed): the range of
    post and comb entries and how far comb's row and column sums are from 1 after Sinkhorn."""

    def __init__(self, model):
        self.records, self.handles = {}, []
        for name, module in model.named_modules():
            if type(module).__name__ == "DeepseekV4HyperConnection":
                key = f"{_layer_of(name)}.{name.rsplit('.', 1)[-1]}"
                self.handles.append(module.register_forward_hook(self._hook(key)))

    def _hook(self, key):
        def hook(module, inputs, output):
            post, comb, _ = output
            self.records[key] = {
                "post_range": [float(post.min()), float(post.max())],
                "comb_range": [float(comb.min()), float(comb.max())],
                "max_abs_row_sum_minus_1": float((comb.sum(-1) - 1).abs().max()),
                "max_abs_col_sum_minus_1": float((comb.sum(-2) - 1).abs().max()),
                "comb_token0": comb[0, 0].tolist(),
            }

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def v4_dense_logit_diff(model, ids, logits):
    """How far the prompt's logits move when every CSA indexer keeps all causal entries."""
    indexers = [m for m in model.modules() if type(m).__name__ == "DeepseekV4Indexer"]
    topk = [m.index_topk for m in indexers]
    for m in indexers:
        m.index_topk = len(ids)
    dense = forward_logits(model, ids)
    for m, k in zip(indexers, topk):
        m.index_topk = k
    return float((dense - logits).abs().max())


def compute_reference_v4(model, spec, name):
    routers, indexers, clamps = V4RouterRecorder(model), V4IndexerRecorder(model), ClampCounter(model)
    prompts, routes, selections, cached = run_prompts(model, spec, routers, indexers)
    routers.remove()
    indexers.remove()
    clamps.remove()
    p = spec["indexer_prompt"]
    ids = prompts[p]["ids"]
    hc = HyperConnectionRecorder(model)
    out = model(torch.tensor([ids]), use_cache=False, output_attentions=True)
    hc.remove()
    sinks = {}
    for layer, (attn, mod) in enumerate(zip(out.attentions, model.model.layers)):
        mass = 1 - attn[0].sum(-1)  # [H, S]: the softmax mass the sink took
        sinks[str(layer)] = {"sinks": mod.self_attn.sinks.tolist(),
                             "sink_mass_range": [float(mass.min()), float(mass.max())],
                             "sink_mass_mean": float(mass.mean())}
    cfg = spec["config"]
    first = routes[0]
    ref = {
        "model": name,
        "architecture": cfg["architectures"][0],
        "generator": {
            "script": "tools/deepseek_oracle.py",
            "seed": spec["seed"],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "dtype": "float32",
            "attn_implementation": "eager",
            "note": "logits from full forward passes without cache; greedy_logits[i] is the row whose argmax "
            "is greedy[i]; greedy_margins[i] = top1 - top2 of that row; cached_greedy: the same continuation "
            "decoded with transformers' cache (DeepseekV4HCACache/CSACache per layer), compared with the "
            "full-prefix one",
        },
        "vocab_size": VOCAB_SIZE,
        "prompts": prompts,
        "cached_greedy": cached,
        "routing_prompt": 0,
        "routing": [
            {"layer": layer, **{k: v for k, v in first[layer].items() if not k.startswith("_")}}
            for layer in sorted(first)
        ],
        "routing_stats": routing_stats(routes, cfg["n_routed_experts"]),
        "indexer_prompt": p,
        "indexer_topk": {str(layer): rec["selected"] for layer, rec in sorted(selections[p].items())},
        "indexer_stats": [
            {
                "layer": layer,
                **{k: sum(sel[layer]["_stats"][k] for sel in selections)
                   for k in ("sparse_queries", "not_the_most_recent")},
                "min_boundary_gap": min(g for sel in selections
                                        if (g := sel[layer]["_stats"]["min_boundary_gap"]) is not None),
            }
            for layer in sorted(selections[0])
        ],
        "max_abs_logit_diff_if_dense": v4_dense_logit_diff(model, ids, prompts[p]["logits"]),
        "clamp_stats": {
            str(layer): {k: {"clamped": n, "of": tot} for k, (n, tot) in sorted(c.items())}
            for layer, c in sorted(clamps.counts.items())
        },
        "sink_stats": sinks,
        "hc_stats": hc.records,
    }
    return ref


# transformers' module names -> the names of DeepSeek's release checkpoint, which llama.cpp's converter
# reads (transformers' conversion_mapping.py "deepseek_v4" read backwards; its save_pretrained writes a
# mix, see README)
V4_RELEASE_ROOT = {
    "model.embed_tokens.weight": "embed.weight",
    "lm_head.weight": "head.weight",
    "model.norm.weight": "norm.weight",
    "model.hc_head.hc_fn": "hc_head_fn",
    "model.hc_head.hc_base": "hc_head_base",
    "model.hc_head.hc_scale": "hc_head_scale",
}
V4_RELEASE_LAYER = {
    "self_attn.sinks": "attn.attn_sink",
    "self_attn.q_a_proj.weight": "attn.wq_a.weight",
    "self_attn.q_a_norm.weight": "attn.q_norm.weight",
    "self_attn.q_b_proj.weight": "attn.wq_b.weight",
    "self_attn.kv_proj.weight": "attn.wkv.weight",
    "self_attn.kv_norm.weight": "attn.kv_norm.weight",
    "self_attn.o_a_proj.weight": "attn.wo_a.weight",
    "self_attn.o_b_proj.weight": "attn.wo_b.weight",
    "self_attn.compressor.position_bias": "attn.compressor.ape",
    "self_attn.compressor.kv_proj.weight": "attn.compressor.wkv.weight",
    "self_attn.compressor.gate_proj.weight": "attn.compressor.wgate.weight",
    "self_attn.compressor.kv_norm.weight": "attn.compressor.norm.weight",
    "self_attn.compressor.indexer.position_bias": "attn.indexer.compressor.ape",
    "self_attn.compressor.indexer.kv_proj.weight": "attn.indexer.compressor.wkv.weight",
    "self_attn.compressor.indexer.gate_proj.weight": "attn.indexer.compressor.wgate.weight",
    "self_attn.compressor.indexer.kv_norm.weight": "attn.indexer.compressor.norm.weight",
    "self_attn.compressor.indexer.q_b_proj.weight": "attn.indexer.wq_b.weight",
    "self_attn.compressor.indexer.scorer.weights_proj.weight": "attn.indexer.weights_proj.weight",
    "mlp.gate.weight": "ffn.gate.weight",
    "mlp.gate.e_score_correction_bias": "ffn.gate.bias",
    "mlp.gate.tid2eid": "ffn.gate.tid2eid",
    "mlp.shared_experts.gate_proj.weight": "ffn.shared_experts.w1.weight",
    "mlp.shared_experts.up_proj.weight": "ffn.shared_experts.w3.weight",
    "mlp.shared_experts.down_proj.weight": "ffn.shared_experts.w2.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "attn_hc.fn": "hc_attn_fn",
    "attn_hc.base": "hc_attn_base",
    "attn_hc.scale": "hc_attn_scale",
    "ffn_hc.fn": "hc_ffn_fn",
    "ffn_hc.base": "hc_ffn_base",
    "ffn_hc.scale": "hc_ffn_scale",
}


def v4_release_tensors(model):
    """The model's tensors under DeepSeek's release names and layout: routed experts one per
    `layers.N.ffn.experts.E.w{1,2,3}` as MXFP4 (`.weight` uint8 [rows, cols/2], element 2i in the low
    nibble; `.scale` uint8 E8M0 [rows, cols/32]), w1 = gate rows, w3 = up rows of gate_up_proj; all else
    F32 (tid2eid int64) as transformers holds it."""
    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().contiguous()
        if name in V4_RELEASE_ROOT:
            out[V4_RELEASE_ROOT[name]] = t
            continue
        layer = _layer_of(name)
        suffix = name.split(f"layers.{layer}.", 1)[1]
        if suffix in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
            for e in range(t.shape[0]):
                half = t.shape[1] // 2
                halves = {"w1": t[e, :half], "w3": t[e, half:]} if "gate_up" in suffix else {"w2": t[e]}
                for w, mat in halves.items():
                    values, codes, scale = mxfp4_quantize(mat)
                    assert torch.equal(values, mat), f"{name}: expert {e} is not exactly MXFP4"
                    base = f"layers.{layer}.ffn.experts.{e}.{w}"
                    out[f"{base}.weight"] = (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()
                    out[f"{base}.scale"] = scale.contiguous()
            continue
        out[f"layers.{layer}.{V4_RELEASE_LAYER[suffix]}"] = t
    return out


def gguf_convert_v4(llama_cpp: Path, stage: Path, model, notes, converter_path):
    """llama.cpp's DeepseekV4Model converter reads DeepSeek's release checkpoint (its names; experts in
    MXFP4 with E8M0 scales, which it repacks into GGUF MXFP4), not what transformers writes: convert
    a copy of the folder whose model.safetensors holds the release layout (v4_release_tensors)."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / stage.name
        copy.mkdir()
        for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(stage / f, copy / f)
        save_file(v4_release_tensors(model), copy / "model.safetensors", metadata={"format": "pt"})
        convert_to_gguf(llama_cpp, copy, stage / "model-f32.gguf", converter_path)
    notes.append("GGUF converted from a copy in DeepSeek's release layout (tensor names of the release, routed "
                 "experts as MXFP4 weight + E8M0 scale), which is what llama.cpp's DeepseekV4Model converter reads; "
                 "the expert weights are exactly MXFP4 values, so the GGUF's MXFP4 experts equal the F32 checkpoint")


# ---------------------------------------------------------------------------------------------------
# DeepSeek-V4 in DeepSeek's release layout (fixtures/moe/deepseek-v4-release): the deepseek-v4 model
# stored as the release stores its weights, with a reference from the values the file decodes to.

# Release names of the matrices the release stores as FP8 E4M3 with 128x128 E8M0 block scales
# (`.scale`). The compressor and indexer-compressor projections and the indexer's weights_proj
# ship in BF16 instead (transformers' DeepseekV4PreTrainedModel._keep_in_fp32_modules says so:
# "DeepSeek-V4-Flash checkpoints mix FP8 and BF16 in the attention compressor / indexer branch").
V4_RELEASE_FP8 = ("attn.wq_a.weight", "attn.wq_b.weight", "attn.wkv.weight", "attn.wo_a.weight", "attn.wo_b.weight",
                  "attn.indexer.wq_b.weight", "ffn.shared_experts.w1.weight", "ffn.shared_experts.w2.weight",
                  "ffn.shared_experts.w3.weight")
V4_RELEASE_BF16 = ("attn.compressor.wkv.weight", "attn.compressor.wgate.weight", "attn.indexer.compressor.wkv.weight",
                   "attn.indexer.compressor.wgate.weight", "attn.indexer.weights_proj.weight")
# As in DeepSeek-V3's release config.json, plus V4's power-of-two scales.
V4_RELEASE_QUANT = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "scale_fmt": "ue8m0",
                    "weight_block_size": [128, 128]}
RELEASE = "deepseek-v4-release"
V4_RELEASE_PROMPTS = (1, 3)  # of prompts_for(deepseek-v4): 9 and 40 tokens, to keep reference.json small


def fp8_e8m0_quantize(w, block=128):
    """[rows, cols] f32 -> (E4M3 [rows, cols], E8M0 scales [ceil(rows/block), ceil(cols/block)]): per tile the
    power-of-two scale 2^ceil(log2(amax / 448)), so that every value / scale fits E4M3's range (DeepSeek's
    ue8m0 scale format); values / scale rounded to nearest by torch's float8_e4m3fn cast."""
    rows, cols = w.shape
    tiles = torch.nn.functional.pad(w, (0, -cols % block, 0, -rows % block))
    tiles = tiles.reshape(tiles.shape[0] // block, block, tiles.shape[1] // block, block)
    amax = tiles.abs().amax(dim=(1, 3)).clamp_min(2.0**-100)
    exp = torch.ceil(torch.log2(amax / 448.0))
    s = torch.exp2(exp).repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return (w / s).to(torch.float8_e4m3fn), (exp + 127).to(torch.uint8).view(torch.float8_e8m0fnu)


def fp8_dequantize(q, scale, block=128):
    rows, cols = q.shape
    s = scale.float().repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return q.float() * s


def mxfp4_dequantize(packed, scale):
    """The checkpoint's packed MXFP4 (element 2i low nibble) with E8M0 bytes, to f32 [rows, cols]."""
    codes = torch.stack((packed & 0x0F, packed >> 4), dim=-1).reshape(packed.shape[0], -1).long()
    values = torch.where(codes >= 8, -E2M1[codes & 7], E2M1[codes & 7])
    return values * torch.exp2(scale.float() - 127).repeat_interleave(32, 1)


def v4_release_quantized(model):
    """v4_release_tensors with the release's dtypes: V4_RELEASE_FP8 as E4M3 + `.scale` (F8_E8M0 in the
    safetensors header), V4_RELEASE_BF16 as BF16; routed experts MXFP4 (U8 weight and scale); the rest F32."""
    out = {}
    for name, t in v4_release_tensors(model).items():
        leaf = name.split(".", 2)[2] if name.startswith("layers.") else name
        if leaf in V4_RELEASE_FP8:
            out[name], out[name.removesuffix(".weight") + ".scale"] = fp8_e8m0_quantize(t)
        elif leaf in V4_RELEASE_BF16:
            out[name] = t.to(torch.bfloat16)
        else:
            out[name] = t
    return out


def v4_release_decoded(tensors):
    """What a loader must make of the release file: every tensor as f32 under its release name, FP8 weights
    times their block scales, MXFP4 experts decoded, BF16 widened; `.scale` companions consumed."""
    out = {}
    for name, t in tensors.items():
        if name.endswith(".scale"):
            continue
        scale = tensors.get(name.removesuffix(".weight") + ".scale")
        if t.dtype == torch.float8_e4m3fn:
            out[name] = fp8_dequantize(t, scale)
        elif t.dtype == torch.uint8:
            out[name] = mxfp4_dequantize(t, scale)
        elif t.dtype == torch.bfloat16:
            out[name] = t.float()
        else:
            out[name] = t
    return out


def compute_reference_release(model, spec, name, counts):
    """The reference of the release folder, kept small: logits at every position and the greedy continuation
    (checked against the cached decode) for two of deepseek-v4's prompts."""
    prompts, all_prompts = [], prompts_for(spec)
    for i in V4_RELEASE_PROMPTS:
        ids = all_prompts[i]
        steps, _, margins = greedy(model, ids)
        c_steps, _ = greedy_cached(model, ids)
        assert c_steps == steps, f"{name}: prompt {i}: cached greedy {c_steps} differs from {steps}"
        prompts.append({"ids": ids, "logits": forward_logits(model, ids), "greedy": steps, "greedy_margins": margins})
    return {
        "model": name,
        "architecture": spec["config"]["architectures"][0],
        "generator": {
            "script": "tools/deepseek_oracle.py",
            "source": "the deepseek-v4 fixture's model (same seed), stored in DeepSeek's release layout",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "dtype": "float32",
            "attn_implementation": "eager",
            "tensors_by_stored_dtype": counts,
            "note": "transformers in float32 on the values the release file decodes to (FP8 x E8M0 block scale, "
            "MXFP4 codes x E8M0 scale, BF16 widened), loaded by from_pretrained under the release names; "
            "logits from full forward passes; greedy equal to the cached decode's; greedy_margins[i] = top1 - "
            "top2 of the row whose argmax is greedy[i]",
        },
        "vocab_size": VOCAB_SIZE,
        "prompts": prompts,
    }


def build_v4_release(spec, out_root: Path, tok, name):
    """fixtures/moe/deepseek-v4-release: config.json with the release's keys (compress_ratios, num_hash_layers,
    qk_rope_head_dim, rope_scaling, quantization_config; plus layer_types and compress_rates, without which
    transformers cannot express the HCA rate 8), model.safetensors as v4_release_quantized writes it, and
    reference.json from transformers on the decoded values (compute_reference_release)."""
    from safetensors.torch import save_file

    out = out_root / name
    print(f"== {name}")
    torch.manual_seed(spec["seed"])
    model = make_model(spec)
    init_weights_v4(model, spec)
    tensors = v4_release_quantized(model)
    counts = {}
    for t in tensors.values():
        counts[str(t.dtype).removeprefix("torch.")] = counts.get(str(t.dtype).removeprefix("torch."), 0) + 1
    config = {k: v for k, v in spec["config"].items() if k != "mlp_layer_types"}
    config["quantization_config"] = V4_RELEASE_QUANT
    config["torch_dtype"] = "bfloat16"
    with tempfile.TemporaryDirectory() as tmp:
        stage, decoded = Path(tmp) / name, Path(tmp) / "decoded"
        stage.mkdir()
        decoded.mkdir()
        (stage / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        model.generation_config.save_pretrained(stage)
        write_tokenizer(tok, stage)
        save_file(tensors, stage / "model.safetensors", metadata={"format": "pt"})
        # transformers reads the release names itself (conversion_mapping "deepseek_v4"); it gets the decoded
        # values in F32 and a config without quantization_config, from which it would quantize the model.
        from safetensors.torch import load_file
        save_file(v4_release_decoded(load_file(stage / "model.safetensors")), decoded / "model.safetensors")
        plain = {k: v for k, v in config.items() if k != "quantization_config"}
        (decoded / "config.json").write_text(json.dumps({**plain, "torch_dtype": "float32"}))
        loaded, info = transformers.AutoModelForCausalLM.from_pretrained(
            decoded, attn_implementation="eager", dtype=torch.float32, output_loading_info=True)
        bad = {k: v for k, v in info.items() if v}
        assert not bad, f"{name}: loading the decoded release tensors reported {bad}"
        for k in ("layer_types", "mlp_layer_types", "compress_rates", "partial_rotary_factor"):
            assert getattr(loaded.config, k) == getattr(model.config, k), f"{name}: config.{k} differs"
        loaded.eval()
        with torch.no_grad():
            ref = compute_reference_release(loaded, spec, name, counts)
            ref["max_abs_logit_diff_from_f32_checkpoint"] = max(
                float((forward_logits(model, p["ids"]) - p["logits"]).abs().max()) for p in ref["prompts"])
        (stage / "reference.json").write_text(to_json(ref) + "\n")
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(stage, out)
    sizes = {f.name: f.stat().st_size for f in sorted(out.iterdir())}
    print(f"  folder {sum(sizes.values()) / 1e6:.2f} MB: {sizes}; stored dtypes {counts}")
    for p in ref["prompts"]:
        print(f"  prompt {len(p['ids'])} -> greedy {p['greedy']} (min margin {min(p['greedy_margins']):.3f})")
    print(f"  max |logit - F32 checkpoint's| {ref['max_abs_logit_diff_from_f32_checkpoint']:.3f}")


def write_config(spec, path: Path):
    """config.json with the keys of the family's real checkpoint (rope_scaling, not transformers 5's
    rope_parameters; no derived head_dim/qk_head_dim/layer_types), for a loader to read as it would read
    the real file. The caller checks that transformers loads it back to the same model."""
    config = dict(spec["config"])
    config["torch_dtype"] = config.pop("torch_dtype", "float32")
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def model_class(spec):
    return getattr(transformers, spec["model_class"]) if "model_class" in spec else transformers.AutoModelForCausalLM


def make_model(spec):
    cfg = {k: v for k, v in spec["config"].items() if k not in ("architectures", "auto_map")}
    if spec.get("family") == "deepseek_v4":
        # transformers adds rope_type and rope_theta to the rope_scaling dict it is handed; keep the spec's
        # (written as config.json) as the release writes it. The older entries predate this and their
        # config.json files carry the two added keys.
        cfg = copy.deepcopy(cfg)
    if "model_class" in spec:
        cls = getattr(transformers, spec["model_class"])
        cfg.pop("model_type")
        config = cls.config_class(**cfg)
        return cls._from_config(config, attn_implementation="eager", dtype=torch.float32)
    config = transformers.AutoConfig.for_model(**cfg)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)


def gguf_convert(llama_cpp: Path, stage: Path, spec, notes, converter_path):
    """llama.cpp's converter on the folder as written; if it refuses the config's model_type, on a copy
    whose config says deepseek_v3 (recorded in notes)."""
    try:
        convert_to_gguf(llama_cpp, stage, stage / "model-f32.gguf", converter_path)
        return
    except RuntimeError:
        if spec["config"]["model_type"] == "deepseek_v3" or "model_class" not in spec:
            raise
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / stage.name
        shutil.copytree(stage, copy)
        config = json.loads((copy / "config.json").read_text())
        config["model_type"] = "deepseek_v3"
        config.pop("auto_map", None)
        (copy / "config.json").write_text(json.dumps(config, indent=2))
        convert_to_gguf(llama_cpp, copy, stage / "model-f32.gguf", converter_path)
    notes.append("converted from a copy whose config.json says model_type deepseek_v3 without auto_map")


def build(name, spec, out_root: Path, llama_cpp: Path, tok, converter_path):
    out = out_root / name
    print(f"== {name}")
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / name
        torch.manual_seed(spec["seed"])
        model = make_model(spec)
        v4 = spec.get("family") == "deepseek_v4"
        (init_weights_v4 if v4 else init_weights)(model, spec)
        model.eval()
        model.save_pretrained(stage, safe_serialization=True)
        write_config(spec, stage / "config.json")
        write_tokenizer(tok, stage)
        if spec.get("tokenizer_config"):
            path = stage / "tokenizer_config.json"
            config = {**json.loads(path.read_text()), **spec["tokenizer_config"]}
            for k in spec.get("tokenizer_config_drop", []):
                config.pop(k)
            path.write_text(json.dumps(config, indent=2) + "\n")

        # The reference comes from the checkpoint as written, loaded back the usual way; its logits must
        # equal those of the model built in memory (so config.json says what the model is).
        cls = model_class(spec)
        model_type = spec["config"]["model_type"]
        if "model_class" in spec and get_checkpoint_conversion_mapping(model_type) is None:
            # transformers 5 fuses per-expert checkpoint weights into its stacked experts through a
            # conversion table looked up by config.model_type; an unregistered type (kimi_k2) has none,
            # and loading reports every expert weight missing. Give it the class's own table.
            register_checkpoint_conversion_mapping(
                model_type, get_checkpoint_conversion_mapping(cls.config_class.model_type)
            )
            notes.append(f"transformers {transformers.__version__} loads this folder only after "
                         f"register_checkpoint_conversion_mapping({model_type!r}, <{cls.config_class.model_type}'s>)")
        loaded, info = cls.from_pretrained(
            stage, attn_implementation="eager", dtype=torch.float32, output_loading_info=True
        )
        bad = {k: v for k, v in info.items() if v}
        assert not bad, f"{name}: loading the saved checkpoint reported {bad}"
        loaded.eval()
        with torch.no_grad():
            probe = prompts_for(spec)[-1]
            assert torch.equal(forward_logits(model, probe), forward_logits(loaded, probe)), f"{name}: reload differs"
            ref = (compute_reference_v4 if v4 else compute_reference)(loaded, spec, name)
        try:
            ref["chat_example"] = chat_example(stage)
        except AttributeError as e:
            # AutoTokenizer reads config.json first; for an unregistered model_type it builds a bare
            # PreTrainedConfig, whose RoPE standardisation then fails on rope_scaling.
            notes.append(f"AutoTokenizer.from_pretrained fails on this folder under transformers "
                         f"{transformers.__version__} ({e}); chat_example used PreTrainedTokenizerFast")
            ref["chat_example"] = chat_example(stage, transformers.PreTrainedTokenizerFast)
        if v4:
            gguf_convert_v4(llama_cpp, stage, loaded, notes, converter_path)
        else:
            gguf_convert(llama_cpp, stage, spec, notes, converter_path)
        if notes:
            ref["notes"] = notes
        (stage / "reference.json").write_text(to_json(ref) + "\n")
        (stage / "gguf-summary.txt").write_text(gguf_summary(llama_cpp, stage / "model-f32.gguf"))

        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(stage.iterdir()):
            shutil.copy2(f, out / f.name)

    sizes = {f.name: f.stat().st_size for f in sorted(out.iterdir())}
    print(f"  folder {sum(sizes.values()) / 1e6:.2f} MB: {sizes}")
    for s in ref["routing_stats"]:
        print(f"  moe layer {s['layer']}: {s['distinct_expert_sets']} sets / {s['tokens']} tokens, "
              f"use {s['expert_use']}, {s['tokens_whose_selection_changes']}")
    for s in ref.get("indexer_stats", []):
        print(f"  indexer layer {s['layer']}: {s}")
    for p, c in zip(ref["prompts"], ref["cached_greedy"]):
        print(f"  prompt {len(p['ids'])} -> greedy {p['greedy']} (min margin {min(p['greedy_margins']):.3f}); "
              f"cached same {c['same_tokens']}, max diff {c['max_abs_logit_diff']:.2e}")
    for n in notes:
        print(f"  note: {n}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-cpp", type=Path, default=Path(DEFAULT_LLAMA_CPP), help="llama.cpp source tree")
    ap.add_argument(
        "--converter-path",
        type=Path,
        action="append",
        default=[],
        help="folder put first on the converter's PYTHONPATH: transformers 4.57.6 as llama.cpp pins it "
        "(pip install --target DIR --no-deps transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2); "
        "under transformers 5 the DeepSeek-V3.2 converter's add_bos_token check cannot pass",
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "fixtures" / "moe")
    ap.add_argument("--only", nargs="*", choices=sorted(MODELS) + [RELEASE], help="build only these models")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tok = build_tokenizer()
    for name in args.only or [*MODELS, RELEASE]:
        if name == RELEASE:
            build_v4_release(MODELS["deepseek-v4"], args.out, tok, name)
        else:
            build(name, MODELS[name], args.out, args.llama_cpp.resolve(), tok, args.converter_path)


if __name__ == "__main__":
    main()
