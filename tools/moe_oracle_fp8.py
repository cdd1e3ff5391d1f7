#!/usr/bin/env python3
"""FP8 variant of a DeepSeek oracle fixture: takes fixtures/moe/<model> (deepseek-v3, or deepseek-v32
under transformers 5.x), stores every
linear weight of the attention and MLP blocks (experts included; embeddings, norms, router and
lm_head stay F32, as in the official checkpoints) as FP8 E4M3 with 128x128 block scales
(`weight_scale_inv` = block amax / 448, the official DeepSeek-V3/R1 layout), and writes
fixtures/moe/deepseek-v3-fp8/ with reference logits computed by transformers in float32 from the
dequantized weights (fp8 value x scale), i.e. what a loader must reproduce exactly.

    /tmp/oracle/bin/python tools/moe_oracle_fp8.py      (venv of tools/requirements-oracle.txt)
    /work/tf5-venv/bin/python tools/moe_oracle_fp8.py deepseek-v32   (tools/requirements-oracle-tf5.txt)

DeepSeek-V3.2's indexer projections (`wq_b`, `wk`) become FP8 like the attention's; its
`weights_proj` stays F32 (transformers keeps it in float32) and `k_norm` is a vector.
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
MODEL = sys.argv[1] if len(sys.argv) > 1 else "deepseek-v3"
SRC = ROOT / "fixtures/moe" / MODEL
DST = ROOT / "fixtures/moe" / f"{MODEL}-fp8"
FP8_PARTS = ("self_attn.", "mlp.")
KEEP_F32 = ("mlp.gate.weight", "layernorm", "e_score_correction_bias", "indexer.weights_proj")


def quantize(w):
    """[rows, cols] f32 -> (fp8 [rows, cols], scale_inv [ceil(rows/128), ceil(cols/128)] f32)."""
    rows, cols = w.shape
    br, bc = (rows + 127) // 128, (cols + 127) // 128
    scale = torch.zeros(br, bc, dtype=torch.float32)
    q = torch.zeros(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(br):
        for j in range(bc):
            blk = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            s = blk.abs().max().clamp(min=1e-12) / 448.0
            scale[i, j] = s
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = (blk / s).to(torch.float8_e4m3fn)
    return q, scale


def dequantize(q, scale):
    rows, cols = q.shape
    s = scale.repeat_interleave(128, 0)[:rows].repeat_interleave(128, 1)[:, :cols]
    return q.to(torch.float32) * s


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tensors = load_file(str(SRC / "model.safetensors"))
    out, deq = {}, {}
    for name, w in tensors.items():
        fp8 = w.dim() == 2 and any(p in name for p in FP8_PARTS) and not any(k in name for k in KEEP_F32)
        if fp8:
            q, s = quantize(w.float())
            out[name] = q
            out[name.replace(".weight", ".weight_scale_inv")] = s
            deq[name] = dequantize(q, s)
        else:
            out[name] = w
            deq[name] = w
    if DST.exists():
        shutil.rmtree(DST)
    DST.mkdir(parents=True)
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(SRC / f, DST / f)
    cfg = json.loads((SRC / "config.json").read_text())
    cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                  "weight_block_size": [128, 128]}
    (DST / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    save_file(out, str(DST / "model.safetensors"))
    # Reference: the F32 model with the dequantized weights, loaded as a checkpoint (so
    # transformers 5.x fuses per-expert weights as it does for any checkpoint).
    with tempfile.TemporaryDirectory() as tmp:
        for f in ("config.json", "generation_config.json"):
            shutil.copy(SRC / f, Path(tmp) / f)
        save_file({k: v.contiguous() for k, v in deq.items()}, str(Path(tmp) / "model.safetensors"))
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32,
                                                                  attn_implementation="eager")
    model.eval()
    ref = json.loads((SRC / "reference.json").read_text())
    prompts = []
    with torch.no_grad():
        for p in ref["prompts"]:
            ids = torch.tensor([p["ids"]])
            logits = model(ids).logits[0]
            seq, greedy = list(p["ids"]), []
            for _ in range(len(p["greedy"])):
                nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
                greedy.append(nxt)
                seq.append(nxt)
            prompts.append({"ids": p["ids"], "logits": [[float(f"{v:.7g}") for v in row] for row in logits.tolist()],
                            "greedy": greedy})
    n_fp8 = sum(1 for v in out.values() if v.dtype == torch.float8_e4m3fn)
    (DST / "reference.json").write_text(json.dumps({
        "model": f"{MODEL}-fp8", "vocab_size": ref["vocab_size"],
        "generator": {"script": "tools/moe_oracle_fp8.py", "source": f"fixtures/moe/{MODEL}",
                      "torch": torch.__version__, "transformers": transformers.__version__,
                      "fp8_tensors": n_fp8,
                      "note": "logits of the F32 model whose FP8 weights are dequantized as fp8 * scale_inv"},
        "prompts": prompts}) + "\n")
    print(f"wrote {DST} with {n_fp8} FP8 tensors", file=sys.stderr)


if __name__ == "__main__":
    main()
