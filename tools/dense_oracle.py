#!/usr/bin/env python3
"""Dense companion of tools/moe_oracle.py: a tiny seeded Llama (LlamaForCausalLM with GQA and
llama3 RoPE scaling) written as a checkpoint, converted to GGUF by llama.cpp's own converter (which
permutes q/k rows for llama.cpp's interleaved RoPE — the layout every Llama GGUF has), with
transformers' logits at every prompt position and greedy continuations, in fixtures/dense/llama/.

    /work/oracle-venv/bin/python tools/dense_oracle.py [--llama-cpp PATH]
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

SPEC = {
    "seed": 901,
    "config": {
        **COMMON,
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 96,
        "max_position_embeddings": 8192,
        "attention_bias": False,
        "mlp_bias": False,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    },
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", type=Path, default=Path(DEFAULT_LLAMA_CPP))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "fixtures/dense/llama")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tok = build_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "llama"
        config = transformers.AutoConfig.for_model(**SPEC["config"])
        torch.manual_seed(SPEC["seed"])
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
        with torch.no_grad():
            g = torch.Generator().manual_seed(SPEC["seed"])
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.08 * torch.randn(p.shape, generator=g))
        model.save_pretrained(stage, safe_serialization=True)
        write_tokenizer(tok, stage)
        model = transformers.AutoModelForCausalLM.from_pretrained(stage, attn_implementation="eager", dtype=torch.float32)
        model.eval()
        prompts = []
        with torch.no_grad():
            for ids in prompts_for(SPEC) + [list(range(3, 3 + 80))]:
                logits = forward_logits(model, ids)
                steps, _, margins = greedy(model, ids)
                prompts.append({"ids": ids, "logits": [[float(f"{v:.7g}") for v in r] for r in logits.tolist()],
                                "greedy": steps, "greedy_margins": margins})
        ref = {"model": "llama", "vocab_size": SPEC["config"]["vocab_size"],
               "generator": {"script": "tools/dense_oracle.py", "seed": SPEC["seed"], "torch": torch.__version__,
                             "transformers": transformers.__version__,
                             "note": "the last prompt (80 tokens) runs past original_max_position_embeddings=64"},
               "prompts": prompts}
        (stage / "reference.json").write_text(to_json(ref) + "\n")
        convert_to_gguf(args.llama_cpp.resolve(), stage, stage / "model-f32.gguf")
        (stage / "gguf-summary.txt").write_text(gguf_summary(args.llama_cpp.resolve(), stage / "model-f32.gguf"))
        (stage / "model.safetensors").unlink()  # dense checkpoints are tested from GGUF
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.copytree(stage, args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
