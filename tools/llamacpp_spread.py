#!/usr/bin/env python3
"""llama.cpp's own spread on the tiny DeepSeek-V3.2 and V4 fixtures (fixtures/moe/llamacpp-spread.json).

For each model: quantizes `model-f32.gguf` to `model-q8_0.gguf` with llama.cpp's `llama-quantize`
(V4's routed experts are already MXFP4 and stay so: `--tensor-type _exps=mxfp4`, because
llama-quantize refuses to requantize them), then runs both GGUFs through llama.cpp teacher-forced
(tools/llamacpp_fixture_logits.cpp) on `reference.json`'s prompts and records, per prompt and
position, KL(reference || llama.cpp) over the full vocabulary (softmax in float64; the reference is
transformers' float32 logits) and whether the top tokens agree. A model llama.cpp cannot load or run
gets its exit status and error line instead.

    /work/tf5-venv/bin/python tools/llamacpp_spread.py \
        --llama-cpp /work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp --build build-native
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
MODELS = ["deepseek-v32", "deepseek-v4"]
THREADS = 2


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(reference_rows, engine_rows):
    """Per position KL(reference || engine) and top-1 agreement."""
    lp = log_softmax(np.asarray(reference_rows, dtype=np.float32))
    lq = log_softmax(np.asarray(engine_rows, dtype=np.float32))
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    same = lp.argmax(axis=-1) == lq.argmax(axis=-1)
    return [float(v) for v in kl], "".join("1" if s else "0" for s in same)


def quantize(bin_dir, src, dst):
    cmd = [os.path.join(bin_dir, "llama-quantize")]
    if "deepseek-v4" in src:
        cmd += ["--tensor-type", "_exps=mxfp4"]
    cmd += [src, dst, "Q8_0", str(THREADS)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Why llama.cpp 0c1e570 stops on these fixtures (read in its source; keyed by the error line).
WHY = {
    "ggml_can_mul_mat": "the V3.2 lightning indexer's keys and queries always get a Hadamard "
    "rotation (llama-kv-cache.cpp: attn_rot_k forced on for deepseek32 when the indexer head size "
    "equals n_embd_head_k_full; LLAMA_ATTN_ROT_DISABLE does not reach that branch) whose size "
    "build_input_k_rot starts at 64 and doubles while it divides the head size, so it is never "
    "below 64: a 16-wide indexer head (the real model's is 128) meets a 64x64 matrix; the assertion "
    "fires in "
    "llama_model_deepseek32::graph (src/models/deepseek32.cpp: ggml_mul_mat(self_k_rot_lid, "
    "indexer_q)) while the context reserves its graphs",
    "compression ratios": "src/models/deepseek4.cpp accepts only compress ratios 0 (sliding), 4 "
    "(CSA) and 128 (HCA); the fixture's HCA layer uses 8 so that its windows close within the "
    "prompts (fixtures/moe/README.md)",
}


def error_line(stderr):
    """The line of llama.cpp's log that says why it stopped, without the build's folder."""
    lines = [l for l in stderr.splitlines() if re.search(r"error|GGML_ASSERT|failed", l)]
    line = lines[0] if lines else stderr.strip().splitlines()[-1]
    return re.sub(r"^\S*/llama\.cpp/", "", line)


def run_engine(tool, gguf, prompts):
    stdin = "\n".join(" ".join(str(t) for t in p["ids"]) for p in prompts) + "\n"
    r = subprocess.run([tool, gguf, str(THREADS)], input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        err = {"exit_status": r.returncode, "error": error_line(r.stderr)}
        err["why"] = next((w for k, w in WHY.items() if k in err["error"]), "")
        return None, err
    return json.loads(r.stdout)["prompts"], None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", required=True, help="llama.cpp source tree")
    ap.add_argument("--build", default="build-native", help="its build folder (shared libraries)")
    args = ap.parse_args()
    bin_dir = os.path.join(args.llama_cpp, args.build, "bin")
    tmp = tempfile.mkdtemp()
    tool = os.path.join(tmp, "llamacpp_fixture_logits")
    subprocess.run(
        ["g++", "-O2", "-std=c++17", os.path.join(ROOT, "tools/llamacpp_fixture_logits.cpp"),
         "-I" + os.path.join(args.llama_cpp, "include"),
         "-I" + os.path.join(args.llama_cpp, "ggml/include"),
         "-L" + bin_dir, "-lllama", "-lggml", "-lggml-base", "-Wl,-rpath," + bin_dir, "-o", tool],
        check=True)
    out = {
        "how": "tools/llamacpp_spread.py: llama.cpp build 0c1e570 (build-native), CPU, "
               f"{THREADS} threads, one batch per prompt, logits at every position, flash attention "
               "off, F16 KV cache (llama.cpp's default); KL(reference || llama.cpp) over the full "
               "vocabulary with softmax in float64; reference = transformers' float32 logits "
               "(reference.json); same_top: '1' where the argmaxes agree, one character per position",
        "models": {},
    }
    for m in MODELS:
        d = os.path.join(ROOT, "fixtures/moe", m)
        quantize(bin_dir, os.path.join(d, "model-f32.gguf"), os.path.join(d, "model-q8_0.gguf"))
        prompts = json.load(open(os.path.join(d, "reference.json")))["prompts"]
        out["models"][m] = {}
        for g in ["model-f32.gguf", "model-q8_0.gguf"]:
            got, err = run_engine(tool, os.path.join(d, g), prompts)
            if err:
                print(f"{m} {g}: llama.cpp failed: {err['error']}", file=sys.stderr)
                out["models"][m][g] = err
                continue
            per_prompt = []
            for p, e in zip(prompts, got):
                assert p["ids"] == e["ids"]
                kl, same = compare(p["logits"], e["logits"])
                per_prompt.append({"kld": kl, "same_top": same})
            all_kl = [v for p in per_prompt for v in p["kld"]]
            all_top = "".join(p["same_top"] for p in per_prompt)
            out["models"][m][g] = {
                "mean_kld": float(np.mean(all_kl)),
                "same_top": all_top.count("1") / len(all_top),
                "prompts": per_prompt,
            }
            print(f"{m} {g}: mean KL {np.mean(all_kl):.3g}, top-1 {all_top.count('1')}/{len(all_top)}",
                  file=sys.stderr)
    with open(os.path.join(ROOT, "fixtures/moe/llamacpp-spread.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
