#!/usr/bin/env python3
"""Regenerates crates/baicai-kernels/tests/data/kquants_dequant.json, the dequantization fixture
of the K-quants (Q2_K..Q6_K, Q8_K) and IQ4_XS, from the `gguf` Python package (gguf-py).

Two kinds of cases:
  * synthetic: seeded random blocks (random bytes, then finite f16 scales in +-[1e-3, 1]),
    dequantized by `gguf.quants.dequantize`. gguf-py has no Q8_K, so its values are computed here
    as ggml's `dequantize_row_q8_K` defines them: d * q in float32.
  * real: the first two rows of a Q6_K and a Q4_K tensor of Qwen2.5-Coder-0.5B-Instruct Q4_K_M
    (scripts/fetch-models.sh puts it under models/).

Bytes and values are stored as hex (values as little-endian f32 bits) so the test compares
bit patterns. Usage: python3 tools/fixtures_kquants.py [--model PATH] [--out PATH]
"""

import argparse
import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from gguf.quants import dequantize

ROOT = Path(__file__).resolve().parent.parent
SEED = 20240601
BLOCKS = 4

# type -> (block bytes, byte offsets of f16 scales)
F16_SCALES = {
    "Q2_K": (84, [80, 82]),
    "Q3_K": (110, [108]),
    "Q4_K": (144, [0, 2]),
    "Q5_K": (176, [0, 2]),
    "Q6_K": (210, [208]),
    "IQ4_XS": (136, [0]),
}

REAL_ROWS = [("blk.0.ffn_down.weight", "Q6_K"), ("blk.2.ffn_down.weight", "Q4_K")]


def random_scale(rng: np.random.Generator) -> float:
    return float(rng.choice([-1.0, 1.0]) * 10.0 ** rng.uniform(-3.0, 0.0))


def synthetic_case(rng: np.random.Generator, name: str) -> dict:
    if name == "Q8_K":
        blocks = []
        for _ in range(BLOCKS):
            qs = rng.integers(-127, 128, size=256).astype(np.int8)
            bsums = qs.astype(np.int16).reshape(16, 16).sum(axis=1).astype("<i2")
            d = np.float32(random_scale(rng))
            blocks.append(d.astype("<f4").tobytes() + qs.tobytes() + bsums.tobytes())
        data = b"".join(blocks)
        values = np.concatenate(
            [
                np.frombuffer(b[:4], "<f4")[0] * np.frombuffer(b[4:260], np.int8).astype(np.float32)
                for b in blocks
            ]
        )
        source = "ggml dequantize_row_q8_K (d * q, float32), gguf-py lacks Q8_K"
    else:
        size, offsets = F16_SCALES[name]
        raw = rng.integers(0, 256, size=(BLOCKS, size), dtype=np.uint8)
        for block in raw:
            for off in offsets:
                block[off : off + 2] = np.frombuffer(
                    np.float16(random_scale(rng)).astype("<f2").tobytes(), np.uint8
                )
        data = raw.tobytes()
        values = dequantize(raw.reshape(-1), Q[name]).astype(np.float32)
        source = "gguf.quants.dequantize"
    return case(f"random_{name.lower()}", name, data, values, source)


def real_cases(model: Path) -> list:
    reader = GGUFReader(model)
    tensors = {t.name: t for t in reader.tensors}
    out = []
    for name, qtype in REAL_ROWS:
        t = tensors[name]
        assert t.tensor_type.name == qtype, (name, t.tensor_type.name)
        for row in range(2):
            data = np.asarray(t.data[row], dtype=np.uint8)
            values = dequantize(data, Q[qtype]).astype(np.float32)
            label = f"{model.name}:{name}[{row}]"
            out.append(case(label, qtype, data.tobytes(), values, "gguf.quants.dequantize"))
    return out


def case(name: str, qtype: str, data: bytes, values: np.ndarray, source: str) -> dict:
    return {
        "name": name,
        "type": qtype,
        "n": int(values.size),
        "source": source,
        "bytes": data.hex(),
        "values_f32le": values.astype("<f4").tobytes().hex(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", type=Path, default=ROOT / "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    )
    ap.add_argument(
        "--out", type=Path, default=ROOT / "crates/baicai-kernels/tests/data/kquants_dequant.json"
    )
    args = ap.parse_args()
    rng = np.random.default_rng(SEED)
    names = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ4_XS"]
    cases = [synthetic_case(rng, n) for n in names] + real_cases(args.model)
    doc = {
        "generator": "tools/fixtures_kquants.py",
        "seed": SEED,
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(cases)} cases, {args.out.stat().st_size} bytes to {args.out}")


if __name__ == "__main__":
    main()
