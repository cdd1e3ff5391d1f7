#!/usr/bin/env python3
"""Exact reference for the real test models: their GGUF weights dequantized and run in float64.

transformers reads a GGUF file by dequantizing every tensor to float32 (through the `gguf`
package); this script then runs the model in float64, teacher-forced over each text in
fixtures/exact/*.txt, and writes each position's next-token distribution as a baicai logprob file
(top-20 logprobs, the log of the rest's mass, the next token's logprob; the format is documented
in crates/baicai-cli/src/logprobs.rs) to fixtures/exact/<model>.<text>.lp. The dequantized weights
are exactly representable in float64, so what is left is float64 rounding: the quantized model's
exact math, against which an engine's own roundings (8-bit activations before each matmul, an f16
KV cache, …) can be measured.

Where transformers rounds to float32 on purpose (RMSNorm upcasts to float32, rotary angles are
computed in float32, eager attention's softmax runs in float32), those pieces are replaced here by
float64 versions of the same formulas, and attention runs through SDPA, which keeps float64.

    python3 -m venv /tmp/exact-venv
    /tmp/exact-venv/bin/pip install -r tools/requirements-exact.txt
    bash scripts/fetch-models.sh
    PYTHONPATH=$LLAMA_CPP_PYTHON_SRC /tmp/exact-venv/bin/python tools/exact_reference.py \
        --llama-lib $LLAMA_CPP/build-avx2/bin

The texts are tokenized by llama.cpp (see `tokenize`), through llama-cpp-python's bindings over the
shared libraries of a llama.cpp build (--llama-lib; the bindings' source tree on PYTHONPATH, or
the package installed). With --measure-llamacpp the script instead evaluates the same tokens with
llama.cpp (all logits) and prints llama.cpp's mean KL-divergence
and top-1 agreement against the reference files, computed as baicai's test computes its own
(crates/baicai-cli/tests/exact_reference.rs); see fixtures/exact/README.md.
"""

import argparse
import json
import math
import os
import struct
import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "exact"
MODELS = ["qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "gemma-3-270m-q4_k_m.gguf"]
TOP_K = 20
MAGIC = b"BAICAILP"
VERSION = 1


def vocab_hash(tokens):
    """FNV-1a 64 over the count and each token's length-prefixed UTF-8 text (logprobs.rs)."""
    h = 0xCBF29CE484222325

    def eat(b):
        nonlocal h
        for x in b:
            h ^= x
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF

    eat(struct.pack("<I", len(tokens)))
    for t in tokens:
        b = t.encode("utf-8")
        eat(struct.pack("<I", len(b)))
        eat(b)
    return h


def gguf_vocab(path):
    import gguf

    r = gguf.GGUFReader(str(path))
    f = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    add_bos = r.fields.get("tokenizer.ggml.add_bos_token")
    add_bos = bool(add_bos.parts[-1][0]) if add_bos is not None else False
    bos = int(r.fields["tokenizer.ggml.bos_token_id"].parts[-1][0])
    return tokens, add_bos, bos


def summarize(logits, ids):
    """Per position: (target logprob, ln rest mass, [(id, logprob)] top-k), in float64."""
    lp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    out = []
    for pos in range(len(ids) - 1):
        row = lp[pos]
        top = np.argpartition(-row, TOP_K)[:TOP_K]
        top = top[np.lexsort((top, -row[top]))]
        mask = np.ones(row.shape[0], dtype=bool)
        mask[top] = False
        rest = np.logaddexp.reduce(row[mask]) if mask.any() else -np.inf
        out.append((float(row[ids[pos + 1]]), float(rest), [(int(i), float(row[i])) for i in top]))
    return out


def write_lp(path, vhash, n_vocab, ids, dists):
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<IQIIII", VERSION, vhash, n_vocab, TOP_K, len(ids), len(ids)))
        f.write(struct.pack(f"<{len(ids)}I", *ids))
        f.write(struct.pack("<I", len(dists)))
        for pos, (target, rest, top) in enumerate(dists):
            f.write(struct.pack("<Iff", pos, target, rest))
            for i, lp in top:
                f.write(struct.pack("<If", i, lp))


def read_lp(path):
    b = Path(path).read_bytes()
    assert b[:8] == MAGIC, path
    version, vhash, n_vocab, top_k, n_ctx, n_tok = struct.unpack_from("<IQIIII", b, 8)
    at = 8 + struct.calcsize("<IQIIII")
    ids = list(struct.unpack_from(f"<{n_tok}I", b, at))
    at += 4 * n_tok
    (n_rec,) = struct.unpack_from("<I", b, at)
    at += 4
    dists = []
    for _ in range(n_rec):
        pos, target, rest = struct.unpack_from("<Iff", b, at)
        at += 12
        top = [struct.unpack_from("<If", b, at + 8 * j) for j in range(top_k)]
        at += 8 * top_k
        dists.append((pos, target, rest, top))
    return vhash, n_vocab, ids, dists


def compare(dist, logits, target):
    """KL(reference || run) over {top-k, rest}, nll, same top (logprobs.rs `compare`)."""
    _, _, rest, top = dist
    m = logits.max()
    lse = math.log(np.exp((logits - m).astype(np.float32)).astype(np.float64).sum())
    lq = lambda i: float(logits[i] - m) - lse
    mask = np.ones(logits.shape[0], dtype=bool)
    mask[[i for i, _ in top]] = False
    q_rest = math.log(np.exp((logits[mask] - m).astype(np.float32)).astype(np.float64).sum()) - lse
    kld = sum(math.exp(lp) * (lp - lq(i)) for i, lp in top)
    if rest > -math.inf:
        kld += math.exp(rest) * (rest - q_rest)
    return kld, -lq(target), top[0][0] == int(np.argmax(logits))


# float64 versions of the pieces transformers computes in float32 on purpose.


def rms_norm_gemma(self, x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1.0 + self.weight)


def rms_norm_llama(self, x):
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def rotary(self, x, position_ids):
    dim = self.inv_freq.shape[0] * 2
    base = self.config.rope_theta if not getattr(self, "_local", False) else self._local
    inv = 1.0 / (torch.tensor(base, dtype=torch.float64) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = position_ids[:, :, None].double() * inv[None, None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def load_exact(name):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(ROOT / "models"), gguf_file=name, torch_dtype=torch.float32, attn_implementation="sdpa"
    )
    model = model.double().eval()
    cfg = model.config
    for mod_name, mod in model.named_modules():
        cls = type(mod).__name__
        if cls == "Gemma3RMSNorm":
            mod.forward = types.MethodType(rms_norm_gemma, mod)
        elif cls.endswith("RMSNorm"):
            mod.forward = types.MethodType(rms_norm_llama, mod)
        elif cls.endswith("RotaryEmbedding"):
            mod.config = cfg
            if mod_name.endswith("rotary_emb_local"):
                mod._local = cfg.rope_local_base_freq
            assert getattr(cfg, "rope_scaling", None) is None, "rope scaling not handled"
            mod.forward = types.MethodType(rotary, mod)
    return model


def texts():
    return sorted(FIXTURES.glob("*.txt"))


def llama(name, **kw):
    """llama.cpp's model (or with vocab_only=True its tokenizer) through llama-cpp-python."""
    from llama_cpp import Llama

    return Llama(model_path=str(ROOT / "models" / name), verbose=False, **kw)


def tokenize(vocab_model, text, add_bos):
    """llama.cpp's tokens for `text`: transformers' tokenizer rebuilt from the Gemma 3 GGUF splits
    words into far more pieces than the model's own (630 tokens instead of 328 for chat.txt), and
    baicai's tokenizer is what is under test, so the tokens come from llama.cpp, whose tokenizers
    are the golden reference of baicai's tokenizer tests."""
    return vocab_model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)


def make_reference(models):
    for name in models:
        vocab, add_bos, _ = gguf_vocab(ROOT / "models" / name)
        vhash = vocab_hash(vocab)
        vocab_model = llama(name, vocab_only=True)
        model = load_exact(name)
        for t in texts():
            ids = tokenize(vocab_model, t.read_text(), add_bos)
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].double().numpy()
            dists = summarize(logits, ids)
            out = FIXTURES / f"{name.removesuffix('.gguf')}.{t.stem}.lp"
            write_lp(out, vhash, logits.shape[1], ids, dists)
            print(f"{out.name}: {len(ids)} tokens", file=sys.stderr)
        del model


def measure_llamacpp(flash_attn):
    figures = {}
    for name in MODELS:
        llm = llama(
            name,
            n_ctx=1024,
            n_batch=1024,
            n_ubatch=1024,
            logits_all=True,
            flash_attn=flash_attn,
            n_threads=2,
        )
        all_c = []
        per_text = {}
        for lp in sorted(FIXTURES.glob(f"{name.removesuffix('.gguf')}.*.lp")):
            _, _, ids, dists = read_lp(lp)
            llm.reset()
            llm.eval(ids)
            scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
            c = [compare(d, scores[d[0]], ids[d[0] + 1]) for d in dists]
            per_text[lp.name.split(".")[-2]] = summary(c)
            all_c += c
        figures[name] = {
            "all": summary(all_c),
            "texts": per_text,
            # Per position, in the order of the sorted reference files, for paired comparisons.
            "kld": [float(f"{x[0]:.4g}") for x in all_c],
            "same_top": "".join("1" if x[2] else "0" for x in all_c),
        }
        del llm
    return figures


def summary(c):
    n = len(c)
    return {
        "positions": n,
        "mean_kld": sum(x[0] for x in c) / n,
        "same_top": sum(1 for x in c if x[2]) / n,
        "ppl": math.exp(sum(x[1] for x in c) / n),
    }


def q8_round(x, block, f16_scale):
    """x with every `block` values rounded to 8 bits against their largest magnitude, as the
    engines' Q8_0 (32 values, f16 scale) and Q8_K (256 values, f32 scale) activations."""
    shape = x.shape
    x = x.reshape(-1, block)
    amax = x.abs().amax(-1, keepdim=True)
    d = amax / 127
    if f16_scale:
        d = d.to(torch.float16).to(x.dtype)
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    return (torch.round(x * inv).clamp(-127, 127) * d).reshape(shape)


HF_TO_GGUF = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}


def simulate_q8(which, models, k_block):
    """Exact math (float32) except the inputs of the chosen matmuls, rounded to 8 bits in the
    blocks the engines use for that weight's type: how much of the engines' divergence 8-bit
    activations alone explain. `which`: all, head (the output matmul only) or layers; `k_block`:
    the block of the k-quants' activations (the engines' Q8_K: 256)."""
    import gguf
    from transformers import AutoModelForCausalLM

    figures = {}
    for name in models:
        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(ROOT / "models" / name)).tensors}
        model = AutoModelForCausalLM.from_pretrained(
            str(ROOT / "models"), gguf_file=name, torch_dtype=torch.float32, attn_implementation="eager"
        ).eval()
        for n, mod in model.named_modules():
            if not isinstance(mod, torch.nn.Linear):
                continue
            is_head = n == "lm_head"
            if (which == "head" and not is_head) or (which == "layers" and is_head):
                continue
            if n == "lm_head":
                g = "output.weight" if "output.weight" in types else "token_embd.weight"
            else:
                g = f"blk.{n.split('.')[2]}.{HF_TO_GGUF[n.split('.')[-1]]}.weight"
            k_quant = types[g].endswith("_K")
            mod.register_forward_pre_hook(
                lambda _m, args, k=k_quant: (q8_round(args[0], k_block if k else 32, not k),)
            )
        all_c = []
        for lp in sorted(FIXTURES.glob(f"{name.removesuffix('.gguf')}.*.lp")):
            _, _, ids, dists = read_lp(lp)
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0].numpy()
            all_c += [compare(d, logits[d[0]], ids[d[0] + 1]) for d in dists]
        figures[name] = summary(all_c)
        del model
    return figures


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-lib", required=True, metavar="DIR", help="llama.cpp's shared libraries (libllama.so)")
    ap.add_argument("--models", nargs="*", default=MODELS, help="only these model files (not with --measure-llamacpp)")
    ap.add_argument("--measure-llamacpp", action="store_true", help="measure llama.cpp against the reference files")
    ap.add_argument("--flash-attn", action="store_true", help="with --measure-llamacpp: flash attention on")
    ap.add_argument(
        "--simulate-q8",
        choices=["all", "head", "layers"],
        help="measure exact math with 8-bit activations before these matmuls against the reference",
    )
    ap.add_argument(
        "--q8k-block", type=int, default=256, help="with --simulate-q8: values per scale for k-quant weights' activations"
    )
    a = ap.parse_args()
    os.environ["LLAMA_CPP_LIB_PATH"] = a.llama_lib
    if a.measure_llamacpp:
        print(json.dumps(measure_llamacpp(a.flash_attn), indent=1))
    else:
        import torch

        torch.set_num_threads(2)
        if a.simulate_q8:
            print(json.dumps(simulate_q8(a.simulate_q8, a.models, a.q8k_block), indent=1))
        else:
            make_reference(a.models)
