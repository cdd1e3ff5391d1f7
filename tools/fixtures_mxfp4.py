#!/usr/bin/env python3
"""Generates crates/baicai-kernels/tests/data/mxfp4.json: MXFP4 reference values from gguf-py,
Hugging Face transformers and llama.cpp's converter.

    python3 tools/fixtures_mxfp4.py --llamacpp PATH/TO/llama.cpp

Needs numpy, `gguf` (0.19.0), torch and transformers (integrations/mxfp4.py); `--llamacpp` is a
llama.cpp checkout whose `conversion/` package holds the converter (`convert_hf_to_gguf.py`'s
model classes). Contents, all seeded and regenerable:

- `gguf`: GGUF `block_mxfp4` bytes and `gguf.quants.dequantize` of them: random blocks with
  moderate scales, and one block per E8M0 scale byte 0..=255 whose 32 codes cover all 16 in both
  nibble halves (the extremes: subnormal scales at e = 0, 1; infinities from e = 254).
- `checkpoint`: gpt-oss style `*_blocks` `[experts, rows, cols/32, 16]` and `*_scales`
  `[experts, rows, cols/32]` (random codes, random scales plus 0, 1, 254 and 255), with
  - `values`: transformers' `convert_moe_packed_tensors` (float32), transposed back from its
    `[experts, cols, rows]` to `[experts, rows, cols]`;
  - `gguf_bytes`: llama.cpp's `ModelBase.repack_mxfp4_blocks` of each expert (checked equal to
    gpt-oss's `GptOssModel.transform_nibble_layout`), the GGUF MXFP4 tensor's bytes;
  - `gguf_values`: `gguf.quants.dequantize` of `gguf_bytes`.

Byte strings are hex; float arrays are hex of little-endian f32, so values round-trip exactly
(infinities included).
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

OUT = "crates/baicai-kernels/tests/data/mxfp4.json"
SEED = 20260501
BLOCK_BYTES = 17


def f32_hex(values: np.ndarray) -> str:
    return np.ascontiguousarray(values, dtype="<f4").tobytes().hex()


def gguf_dequant(data: np.ndarray) -> np.ndarray:
    # Large scales overflow to infinity on purpose (the e = 254, 255 blocks).
    with np.errstate(over="ignore"):
        return dequantize(data.reshape(-1), Q.MXFP4).reshape(-1)


def gguf_cases(rng: np.random.Generator) -> list[dict]:
    cases = []
    random = rng.integers(0, 256, (16, BLOCK_BYTES), dtype=np.uint8)
    random[:, 0] = rng.integers(100, 157, 16, dtype=np.uint8)
    every_scale = np.zeros((256, BLOCK_BYTES), dtype=np.uint8)
    every_scale[:, 0] = np.arange(256, dtype=np.uint8)
    codes = np.arange(16, dtype=np.uint8)
    every_scale[:, 1:] = codes | ((15 - codes) << 4)
    for name, data in [("random", random), ("every_scale", every_scale)]:
        values = gguf_dequant(data)
        cases.append({"name": name, "n": int(values.shape[0]), "bytes": data.tobytes().hex(),
                      "values": f32_hex(values)})
    return cases


def checkpoint_case(rng: np.random.Generator, llamacpp: str) -> dict:
    sys.path.insert(0, llamacpp)
    from conversion.base import ModelBase
    from conversion.gpt_oss import GptOssModel

    experts, rows, groups = 2, 3, 4
    cols = groups * 32
    blocks = rng.integers(0, 256, (experts, rows, groups, 16), dtype=np.uint8)
    scales = rng.integers(110, 141, (experts, rows, groups), dtype=np.uint8)
    scales[0, 0, :] = [0, 1, 254, 255]

    tb, ts = torch.from_numpy(blocks), torch.from_numpy(scales)
    values = convert_moe_packed_tensors(tb, ts, dtype=torch.float32)  # [experts, cols, rows]
    values = values.transpose(1, 2).contiguous().numpy()  # [experts, rows, cols]

    packed = [ModelBase.repack_mxfp4_blocks(tb[e].reshape(rows, cols // 2), ts[e])
              for e in range(experts)]
    gguf_bytes = np.stack(packed).astype(np.uint8)  # [experts, rows, groups * 17]
    gpt_oss = GptOssModel.transform_nibble_layout(None, tb).numpy()
    assert (gguf_bytes.reshape(experts, rows, groups, 17)[..., 1:] == gpt_oss).all(), \
        "the two converter paths disagree"

    return {"experts": experts, "rows": rows, "cols": cols,
            "blocks": blocks.tobytes().hex(), "scales": scales.tobytes().hex(),
            "values": f32_hex(values), "gguf_bytes": gguf_bytes.tobytes().hex(),
            "gguf_values": f32_hex(gguf_dequant(gguf_bytes))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llamacpp", required=True, help="a llama.cpp checkout (its conversion/)")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()

    rng = np.random.default_rng(SEED)
    fixture = {"generator": "tools/fixtures_mxfp4.py", "seed": SEED, "gguf": gguf_cases(rng),
               "checkpoint": checkpoint_case(rng, args.llamacpp)}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
