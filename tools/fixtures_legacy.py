#!/usr/bin/env python3
"""Generates crates/baicai-kernels/tests/data/legacy_gguf.json: dequantization (and Q8_0/BF16/F16
quantization) reference values from the `gguf` Python package, for the legacy block formats.

    python3 tools/fixtures_legacy.py [--model models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf]

Contents, all seeded and regenerable:
- per type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, F16, BF16): random blocks (random code bytes,
  finite moderate f16 scales/minimums) and `gguf.quants.dequantize` of them;
- a few real rows from the model's Q5_0 and Q8_0 tensors (skipped if the model is absent);
- `gguf.quants.quantize` of random f32 rows into Q8_0, BF16 and F16.

Byte strings are hex; float arrays are hex of little-endian f32, so values round-trip exactly.
"""

import argparse
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

OUT = "crates/baicai-kernels/tests/data/legacy_gguf.json"
SEED = 20240611

# Byte offsets of the f16 scale/minimum fields in one block.
F16_FIELDS = {
    Q.Q4_0: [0],
    Q.Q4_1: [0, 2],
    Q.Q5_0: [0],
    Q.Q5_1: [0, 2],
    Q.Q8_0: [0],
    Q.IQ4_NL: [0],
}

REAL_ROWS = [
    ("blk.0.ffn_gate.weight", [0, 1, 4863]),
    ("blk.0.attn_v.weight", [0, 127]),
    ("output.weight", [0, 151935]),
]


def f32_hex(values: np.ndarray) -> str:
    return np.ascontiguousarray(values, dtype="<f4").tobytes().hex()


def random_blocks(rng: np.random.Generator, qtype: Q, n_blocks: int) -> np.ndarray:
    block_len, block_bytes = GGML_QUANT_SIZES[qtype]
    if qtype == Q.F16:
        return rng.uniform(-4, 4, n_blocks).astype("<f2").view(np.uint8)
    if qtype == Q.BF16:
        x = rng.uniform(-4, 4, n_blocks).astype(np.float32)
        return quantize(x, Q.BF16).view(np.uint8)
    data = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        scale = rng.uniform(-0.1, 0.1, n_blocks).astype("<f2")
        data[:, off : off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return data.reshape(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()

    rng = np.random.default_rng(SEED)
    dequant = []
    for qtype in [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.IQ4_NL, Q.F16, Q.BF16]:
        block_len, _ = GGML_QUANT_SIZES[qtype]
        n = 512  # values
        data = random_blocks(rng, qtype, n // block_len)
        values = dequantize(data, qtype).reshape(-1)
        assert values.shape == (n,)
        dequant.append(
            {"source": "random", "type": qtype.name, "n": n, "bytes": data.tobytes().hex(),
             "values": f32_hex(values)}
        )

    if os.path.exists(args.model):
        reader = GGUFReader(args.model)
        tensors = {t.name: t for t in reader.tensors}
        for name, rows in REAL_ROWS:
            t = tensors[name]
            for r in rows:
                row = np.asarray(t.data[r]).reshape(-1)
                values = dequantize(row, t.tensor_type).reshape(-1)
                dequant.append(
                    {"source": f"{os.path.basename(args.model)}:{name}[{r}]",
                     "type": t.tensor_type.name, "n": int(values.shape[0]),
                     "bytes": row.tobytes().hex(), "values": f32_hex(values)}
                )
    else:
        print(f"warning: {args.model} not found; no real rows")

    quant = []
    for qtype in [Q.Q8_0, Q.BF16, Q.F16]:
        for scale in [1.0, 1e-3, 300.0]:
            x = (rng.standard_normal(256) * scale).astype(np.float32)
            # Exact ties after scaling: with a lone 127 maximum, d = 1 and k + 0.5 values tie.
            if scale == 1.0 and qtype == Q.Q8_0:
                x[:32] = np.arange(32, dtype=np.float32) - 16.5
                x[0] = 127.0
            if qtype == Q.F16:
                q = x.astype("<f2").view(np.uint8)
            else:
                q = quantize(x, qtype).view(np.uint8)
            quant.append({"type": qtype.name, "input": f32_hex(x), "bytes": q.tobytes().hex()})

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"generator": "tools/fixtures_legacy.py", "seed": SEED, "dequantize": dequant,
                   "quantize": quant}, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
