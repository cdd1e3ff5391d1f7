#!/usr/bin/env python3
"""Dense Hugging Face checkpoint folders as transformers saves them today: tiny seeded Llama, Mistral,
Qwen2, Qwen3 and Gemma 3 models written by `save_pretrained` in BF16, F16 or F32, with transformers'
logits at every prompt position and greedy continuations, in fixtures/hf/<name>/. Run once under
transformers 5.x (config.json with `rope_parameters`, `dtype`) and once under 4.x (`rope_theta`,
`rope_scaling`, `torch_dtype`); each model says which release writes it. The 4.x Qwen3 folder is
also converted to GGUF by llama.cpp's converter (the `qwen3` GGUF fixture).

    /tmp/tf5-venv/bin/python tools/hf_oracle.py --major 5
    /tmp/exact-venv/bin/python tools/hf_oracle.py --major 4 [--llama-cpp PATH]
"""
import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moe_oracle import (  # noqa: E402
    DEFAULT_LLAMA_CPP, build_tokenizer, convert_to_gguf, forward_logits, greedy, gguf_summary, prompts_for,
    to_json, write_tokenizer)
from moe_oracle_models import COMMON  # noqa: E402

BASE = {**COMMON, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 96, "max_position_embeddings": 4096}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
# name: (transformers major version that writes it, dtype of the shards, seed, config)
MODELS = {
    "llama-tf5": (5, torch.bfloat16, 1101, {
        **BASE, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "head_dim": 16,
        "rope_theta": 500000.0, "rope_scaling": LLAMA3}),
    "mistral-tf5": (5, torch.float16, 1102, {
        **BASE, "architectures": ["MistralForCausalLM"], "model_type": "mistral", "head_dim": None,
        "rope_theta": 1000000.0, "sliding_window": 8}),
    "qwen2-tf5": (5, torch.bfloat16, 1103, {
        **BASE, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "rope_theta": 1000000.0,
        "tie_word_embeddings": True, "use_sliding_window": False}),
    "qwen3-tf5": (5, torch.bfloat16, 1104, {
        **BASE, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": 32,
        "rope_theta": 1000000.0, "attention_bias": False}),
    "gemma3-tf5": (5, torch.bfloat16, 1105, {
        **BASE, "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "num_hidden_layers": 4,
        "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 4, "sliding_window_pattern": 2,
        "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "hidden_activation": "gelu_pytorch_tanh",
        "hidden_act": "gelu_pytorch_tanh", "tie_word_embeddings": True}),
    "mistral-tf4": (4, torch.float16, 1201, {
        **BASE, "architectures": ["MistralForCausalLM"], "model_type": "mistral", "head_dim": None,
        "rope_theta": 1000000.0, "sliding_window": 8}),
    "gemma3-tf4": (4, torch.float32, 1202, {
        **BASE, "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "num_hidden_layers": 4,
        "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 4, "sliding_window_pattern": 2,
        "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "hidden_activation": "gelu_pytorch_tanh",
        "hidden_act": "gelu_pytorch_tanh", "tie_word_embeddings": True}),
    # F32 and converted to GGUF: the qwen3 GGUF fixture.
    "qwen3-tf4": (4, torch.float32, 1203, {
        **BASE, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": 32,
        "rope_theta": 1000000.0, "attention_bias": False}),
}


def init_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def build(name, out_root: Path, llama_cpp: Path, tok):
    major, dtype, seed, cfg = MODELS[name]
    spec = {"seed": seed}
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / name
        if name.startswith("gemma3") and major == 5:
            # 5.x derives layer_types from the pattern given at construction.
            cfg = {**cfg, "layer_types": ["sliding_attention", "full_attention"] * 2}
        config = transformers.AutoConfig.for_model(**cfg)
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
        init_weights(model, seed)
        model.to(dtype).save_pretrained(stage, safe_serialization=True)
        write_tokenizer(tok, stage)
        # The reference runs the stored (rounded) weights in float32.
        model = transformers.AutoModelForCausalLM.from_pretrained(stage, attn_implementation="eager",
                                                                  dtype=torch.float32)
        model.eval()
        prompts = []
        with torch.no_grad():
            for ids in prompts_for(spec) + [list(range(3, 3 + 40))]:
                logits = forward_logits(model, ids)
                steps, _, margins = greedy(model, ids)
                prompts.append({"ids": ids, "logits": [[float(f"{v:.6g}") for v in r] for r in logits.tolist()],
                                "greedy": steps, "greedy_margins": margins})
        ref = {"model": name, "architecture": cfg["architectures"][0], "vocab_size": cfg["vocab_size"],
               "generator": {"script": "tools/hf_oracle.py", "seed": seed, "torch": torch.__version__,
                             "transformers": transformers.__version__, "weights": str(dtype),
                             "note": "float32 eager forward passes over the stored weights, no KV cache"},
               "prompts": prompts}
        (stage / "reference.json").write_text(to_json(ref) + "\n")
        if name == "qwen3-tf4":
            convert_to_gguf(llama_cpp.resolve(), stage, stage / "model-f32.gguf")
            (stage / "gguf-summary.txt").write_text(gguf_summary(llama_cpp.resolve(), stage / "model-f32.gguf"))
        out = out_root / name
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(stage, out)
    print(f"wrote {out}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--major", type=int, required=True, help="build the models this transformers major writes")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--llama-cpp", type=Path, default=Path(DEFAULT_LLAMA_CPP))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "fixtures/hf")
    args = ap.parse_args()
    have = int(transformers.__version__.split(".")[0])
    if have != args.major:
        sys.exit(f"transformers {transformers.__version__} is not {args.major}.x")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tok = build_tokenizer()
    for name, (major, *_rest) in MODELS.items():
        if major == args.major and (not args.only or name in args.only):
            build(name, args.out, args.llama_cpp, tok)


if __name__ == "__main__":
    main()
