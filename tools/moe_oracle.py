#!/usr/bin/env python3
"""Reference oracle for the Mixture-of-Experts models: builds tiny seeded random models with Hugging Face
transformers and writes, per model, a fixture folder fixtures/moe/<name>/ holding

- the Hugging Face checkpoint: config.json, generation_config.json, model.safetensors (F32),
  tokenizer.json and tokenizer_config.json (a byte-level BPE trained here, ChatML template);
- model-f32.gguf: the same weights converted by llama.cpp's own convert_hf_to_gguf.py (--outtype f32);
- model-f32-kv_b.gguf (models that ask for it, with --llama-cpp-kv-b): the conversion by an older
  converter that keeps DeepSeek's kv_b_proj fused as attn_kv_b;
- gguf-summary.txt: the GGUFs' metadata and tensor lists, for reading without tools;
- reference.json: logits at every prompt position and a greedy continuation for three prompts,
  computed in float32 with the eager attention path, the experts the router picked, and a chat
  template example.

Run by developers, not CI (it needs torch, transformers and a llama.cpp source tree):

    python3 -m venv /tmp/oracle && /tmp/oracle/bin/pip install -r tools/requirements-oracle.txt
    /tmp/oracle/bin/python tools/moe_oracle.py --llama-cpp PATH/TO/llama.cpp \
        [--llama-cpp-kv-b PATH/TO/older/llama.cpp] [--only deepseek-v3 ...]

See fixtures/moe/README.md for what each model exercises. Models are defined in tools/moe_oracle_models.py.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from moe_oracle_models import HIDDEN, MODELS, VOCAB_SIZE  # noqa: E402

DEFAULT_LLAMA_CPP = "/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp"
PROMPT_LENGTHS = (5, 9, 13)
GREEDY_STEPS = 8
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# The byte-level BPE is trained on this text only; its merges are what the vocabulary beyond the
# 256 byte tokens and the 3 specials holds.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.",
    "Mixture of experts models route every token to a few experts out of many.",
    "DeepSeek uses multi-head latent attention: the key and value cache holds a compressed latent.",
    "The router scores each expert, picks the top ones, and weights their outputs.",
    "In the beginning there was the token, and the token was embedded, normalised and attended.",
    "def forward(self, x):\n    return self.down(self.act(self.gate(x)) * self.up(x))\n",
    "Numbers like 12345 and 3.14159 appear too, as do questions? And answers!",
]
# The pre-tokenizer above is GPT-2's (ByteLevel with its regex); llama.cpp's converter only names
# pre-tokenizers by the hash of a known model's output, so the name is given to it explicitly.
GGUF_PRE_TOKENIZER = "gpt-2"


def build_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, s
    return tok


def write_tokenizer(tok, out: Path):
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(i): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, s in enumerate(SPECIAL_TOKENS)
    }
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "bos_token": "<|endoftext|>",
        "chat_template": CHATML,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "model_max_length": 4096,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def drop_config_keys(path: Path, keys):
    """Removes keys that transformers derives and writes but the family's own config.json lacks, so
    that the fixture reads like a real checkpoint (the model recomputes them when it loads)."""
    config = json.loads(path.read_text())
    for k in keys:
        config.pop(k, None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def init_weights(model, spec):
    """Seeded weights at unit activation scale; router weights wider so that top-k varies per token."""
    g = torch.Generator().manual_seed(spec["seed"])
    router_std = spec["router_std"] / HIDDEN**0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".gate.weight"):
                p.copy_(router_std * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                # Non-negative, so that biased scores stay > 0: transformers masks the experts of
                # unselected groups with 0.0 where DeepSeek's reference code uses -inf; the two
                # agree only while every biased score is positive.
                b.copy_(spec["bias_max"] * torch.rand(b.shape, generator=g))


def prompts_for(spec):
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    n_special = len(SPECIAL_TOKENS)
    return [torch.randint(n_special, VOCAB_SIZE, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


class RouterRecorder:
    """Forward hooks that record, per MoE layer and token, the selected experts and their weights."""

    def __init__(self, model):
        self.records = {}
        self.handles = []
        for name, module in model.named_modules():
            kind = type(module).__name__
            if kind in ("DeepseekV3TopkRouter", "DeepseekV2MoEGate"):
                self.handles.append(module.register_forward_hook(self._deepseek(_layer_of(name))))
            elif kind in ("Qwen2MoeSparseMoeBlock", "Qwen3MoeSparseMoeBlock", "MixtralSparseMoeBlock"):
                hook = self._softmax_topk(_layer_of(name), module.top_k, getattr(module, "norm_topk_prob", True))
                self.handles.append(module.register_forward_hook(hook))
            elif name.endswith("mlp.shared_expert_gate"):
                self.handles.append(module.register_forward_hook(self._shared_gate(_layer_of(name))))

    def _deepseek(self, layer):
        def hook(module, inputs, output):
            idx, w = output
            self._store(layer, idx, w)
            x = inputs[0].reshape(-1, inputs[0].shape[-1])
            self.records[layer]["_ablations"] = deepseek_ablations(module, x, idx)

        return hook

    def _softmax_topk(self, layer, top_k, renorm):
        # Recomputes the selection from the router logits the block returns, with the same ops.
        def hook(_module, _inputs, output):
            probs = torch.softmax(output[1], dim=1, dtype=torch.float)
            w, idx = torch.topk(probs, top_k, dim=-1)
            if renorm:
                w = w / w.sum(dim=-1, keepdim=True)
            self._store(layer, idx, w)

        return hook

    def _shared_gate(self, layer):
        def hook(_module, _inputs, output):
            self.records.setdefault(layer, {})["shared_expert_gate"] = torch.sigmoid(output).reshape(-1).tolist()

        return hook

    def _store(self, layer, idx, w):
        order = torch.argsort(w, dim=-1, descending=True, stable=True)
        rec = self.records.setdefault(layer, {})
        rec["experts"] = torch.gather(idx, 1, order).tolist()
        rec["weights"] = torch.gather(w, 1, order).tolist()

    def take(self):
        out, self.records = self.records, {}
        return out

    def remove(self):
        for h in self.handles:
            h.remove()


def deepseek_ablations(gate, x, chosen):
    """How many tokens' expert sets would change under a plausible misreading of the router: proof that
    the fixture tells the variants apart. Recomputed from the gate's input with its own weights."""
    cfg = gate.config
    logits = torch.nn.functional.linear(x.float(), gate.weight.float())
    if type(gate).__name__ == "DeepseekV3TopkRouter":
        scores = logits.sigmoid()
        bias = gate.e_score_correction_bias
        variants = {
            "without_e_score_correction_bias": select(scores, cfg, "top2_sum"),
            "without_group_limit": select(scores + bias, cfg, None),
            "with_group_score_max": select(scores + bias, cfg, "max"),
        }
    elif cfg.topk_method == "group_limited_greedy":
        scores = logits.softmax(dim=-1)
        variants = {
            "without_group_limit": select(scores, cfg, None),
            "with_group_score_top2_sum": select(scores, cfg, "top2_sum"),
        }
    else:
        return {}
    chosen = [set(t.tolist()) for t in chosen]
    return {k: sum(set(t.tolist()) != c for t, c in zip(v, chosen)) for k, v in variants.items()}


def select(scores, cfg, group_score):
    """Top-k expert ids, limited to the topk_group best groups when group_score is given."""
    if group_score is not None:
        grouped = scores.view(scores.shape[0], cfg.n_group, -1)
        if group_score == "max":
            gs = grouped.max(dim=-1).values
        else:
            gs = grouped.topk(2, dim=-1).values.sum(dim=-1)
        keep = torch.zeros_like(gs).scatter_(1, gs.topk(cfg.topk_group, dim=-1).indices, 1.0).bool()
        scores = grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).flatten(1)
    return scores.topk(cfg.num_experts_per_tok, dim=-1).indices


def _layer_of(name):
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1])


def forward_logits(model, ids):
    out = model(torch.tensor([ids]), use_cache=False)
    return out.logits[0].float()  # [n_tokens, vocab]


def greedy(model, prompt):
    ids, steps, step_logits, margins = list(prompt), [], [], []
    for _ in range(GREEDY_STEPS):
        last = forward_logits(model, ids)[-1]
        top2 = torch.topk(last, 2)
        tok = int(top2.indices[0])
        steps.append(tok)
        step_logits.append(last)
        margins.append(float(top2.values[0] - top2.values[1]))
        ids.append(tok)
    return steps, step_logits, margins


def compute_reference(model, spec, name):
    recorder = RouterRecorder(model)
    prompts, routes = [], []
    for ids in prompts_for(spec):
        recorder.take()
        logits = forward_logits(model, ids)
        routes.append(recorder.take())
        steps, step_logits, margins = greedy(model, ids)
        prompts.append(
            {"ids": ids, "logits": logits, "greedy": steps, "greedy_logits": step_logits, "greedy_margins": margins}
        )
    recorder.remove()
    first = routes[0]
    routing = [
        {"layer": layer, **{k: v for k, v in first[layer].items() if not k.startswith("_")}} for layer in sorted(first)
    ]
    return {
        "model": name,
        "architecture": spec["config"]["architectures"][0],
        "generator": {
            "script": "tools/moe_oracle.py",
            "seed": spec["seed"],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "dtype": "float32",
            "attn_implementation": "eager",
            "note": "logits from full forward passes without KV cache; greedy_logits[i] is the row "
            "whose argmax is greedy[i]; greedy_margins[i] = top1 - top2 of that row",
        },
        "vocab_size": VOCAB_SIZE,
        "prompts": prompts,
        "routing_prompt": 0,
        "routing": routing,
        "routing_stats": routing_stats(routes, n_experts(spec["config"])),
    }


def n_experts(config):
    return config.get("n_routed_experts") or config.get("num_experts") or config["num_local_experts"]


def routing_stats(routes, n_experts):
    """Distinct expert sets per MoE layer over all prompt tokens (greedy steps not included)."""
    per_layer = {}
    for rec_by_layer in routes:
        for layer, rec in rec_by_layer.items():
            sets = per_layer.setdefault(layer, {"sets": set(), "tokens": 0, "counts": {}, "ablations": {}})
            for k, n in rec.get("_ablations", {}).items():
                sets["ablations"][k] = sets["ablations"].get(k, 0) + n
            for experts in rec["experts"]:
                sets["sets"].add(tuple(sorted(experts)))
                sets["tokens"] += 1
                for e in experts:
                    sets["counts"][e] = sets["counts"].get(e, 0) + 1
    out = []
    for layer in sorted(per_layer):
        s = per_layer[layer]
        out.append(
            {
                "layer": layer,
                "tokens": s["tokens"],
                "distinct_expert_sets": len(s["sets"]),
                "expert_use": [s["counts"].get(e, 0) for e in range(n_experts)],
            }
        )
        if s["ablations"]:
            out[-1]["tokens_whose_selection_changes"] = s["ablations"]
    return out


def fmt(x):
    """Shortest text that reads back as the same float32."""
    v = np.float32(x)
    assert np.isfinite(v), x
    return str(v)


def to_json(obj, indent=0):
    """JSON with float32-exact numbers and one line per numeric row, so diffs stay readable."""
    pad = " " * indent
    if isinstance(obj, torch.Tensor):
        obj = obj.tolist()
    if isinstance(obj, dict):
        items = [f'{pad}  {json.dumps(k)}: {to_json(v, indent + 2).lstrip()}' for k, v in obj.items()]
        return pad + "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(isinstance(v, (int, float, bool)) and not isinstance(v, bool) for v in obj):
            return pad + "[" + ", ".join(fmt(v) if isinstance(v, float) else str(v) for v in obj) + "]"
        if not obj:
            return pad + "[]"
        return pad + "[\n" + ",\n".join(to_json(v, indent + 2) for v in obj) + "\n" + pad + "]"
    if isinstance(obj, float):
        return pad + fmt(obj)
    return pad + json.dumps(obj)


def chat_example(model_dir: Path, tokenizer_class=None):
    """The tokenizer and chat template as transformers applies them, for tests of the same folder
    (`tokenizer_class`: a class to load it with where AutoTokenizer cannot find it)."""
    tok = (tokenizer_class or transformers.AutoTokenizer).from_pretrained(model_dir)
    messages = [
        {"role": "system", "content": "You route tokens."},
        {"role": "user", "content": "Which experts? 12345, 3.14!"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return {"messages": messages, "add_generation_prompt": True, "text": text, "ids": tok(text)["input_ids"]}


def convert_to_gguf(llama_cpp: Path, model_dir: Path, outfile: Path, python_path=()):
    """Runs llama.cpp's convert_hf_to_gguf.py unchanged, except that the BPE pre-tokenizer name is
    supplied: the converter recognises pre-tokenizers only by hashing a known model's tokens.
    Works with the single-file converter of older trees and the `conversion/` package of newer ones.
    `python_path`: folders put before gguf-py on the converter's PYTHONPATH (e.g. the transformers
    release llama.cpp pins, when this script itself runs under another)."""
    script = llama_cpp / "convert_hf_to_gguf.py"
    code = (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(llama_cpp)!r})\n"
        f"sys.argv = ['convert_hf_to_gguf.py', {str(model_dir)!r}, '--outtype', 'f32', '--outfile', {str(outfile)!r}]\n"
        f"spec = importlib.util.spec_from_file_location('convert_hf_to_gguf', {str(script)!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "sys.modules['convert_hf_to_gguf'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "try:\n"
        "    from conversion.base import TextModel as Base\n"
        "except ImportError:\n"
        "    Base = getattr(mod, 'TextModel', None) or mod.Model\n"
        f"Base.get_vocab_base_pre = lambda self, tokenizer: {GGUF_PRE_TOKENIZER!r}\n"
        "mod.main()\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, python_path), str(llama_cpp / "gguf-py")]), NO_LOCAL_GGUF="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise RuntimeError(f"{script} failed for {model_dir}")


def gguf_summary(llama_cpp: Path, path: Path) -> str:
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    from gguf import GGUFReader

    reader = GGUFReader(path)
    lines = [f"# {path.name}: metadata and tensors, as read by llama.cpp's gguf-py", "", "## metadata"]
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue
        value = field.contents()
        if isinstance(value, list) and len(value) > 8:
            value = f"[{len(value)} items: {', '.join(map(repr, value[:4]))}, ...]"
        elif isinstance(value, str) and len(value) > 120:
            value = repr(value[:100]) + f"... ({len(value)} chars)"
        else:
            value = repr(value)
        lines.append(f"{field.name} = {value}")
    lines += ["", "## tensors (name, type, GGUF shape [ne0, ne1, ...])"]
    for t in reader.tensors:
        lines.append(f"{t.name}  {t.tensor_type.name}  {list(map(int, t.shape))}")
    return "\n".join(lines) + "\n"


def build(name, spec, out_root: Path, llama_cpp: Path, llama_cpp_kv_b, tok):
    out = out_root / name
    print(f"== {name}")
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / name
        config = transformers.AutoConfig.for_model(**spec["config"])
        torch.manual_seed(spec["seed"])
        model = transformers.AutoModelForCausalLM.from_config(
            config, attn_implementation="eager", dtype=torch.float32
        )
        init_weights(model, spec)
        model.save_pretrained(stage, safe_serialization=True)
        drop_config_keys(stage / "config.json", spec.get("drop_config_keys", []))
        write_tokenizer(tok, stage)

        # The reference comes from the checkpoint as written, loaded back the usual way.
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            stage, attn_implementation="eager", dtype=torch.float32, output_loading_info=True
        )
        bad = {k: v for k, v in info.items() if v}
        assert not bad, f"{name}: loading the saved checkpoint reported {bad}"
        model.eval()
        with torch.no_grad():
            ref = compute_reference(model, spec, name)
        ref["chat_example"] = chat_example(stage)
        (stage / "reference.json").write_text(to_json(ref) + "\n")

        convert_to_gguf(llama_cpp, stage, stage / "model-f32.gguf")
        summary = gguf_summary(llama_cpp, stage / "model-f32.gguf")
        if spec.get("kv_b_gguf") and llama_cpp_kv_b is not None:
            # The layout of GGUFs converted before llama.cpp split kv_b_proj into attn_k_b and
            # attn_v_b for the absorbed MLA path: one attn_kv_b per layer, other attention metadata.
            convert_to_gguf(llama_cpp_kv_b, stage, stage / "model-f32-kv_b.gguf")
            summary += "\n" + gguf_summary(llama_cpp, stage / "model-f32-kv_b.gguf")
        (stage / "gguf-summary.txt").write_text(summary)

        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(stage, out)

    n_params = sum(p.numel() for p in model.parameters())
    sizes = {f.name: f.stat().st_size for f in sorted(out.iterdir())}
    print(f"  params {n_params}, folder {sum(sizes.values()) / 1e6:.2f} MB: {sizes}")
    for s in ref["routing_stats"]:
        print(
            f"  layer {s['layer']}: {s['distinct_expert_sets']} distinct expert sets over {s['tokens']} tokens, "
            f"use {s['expert_use']}, {s.get('tokens_whose_selection_changes', '')}"
        )
    for p in ref["prompts"]:
        print(f"  prompt {len(p['ids'])} tokens -> greedy {p['greedy']} (min margin {min(p['greedy_margins']):.3f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama-cpp", type=Path, default=Path(DEFAULT_LLAMA_CPP), help="llama.cpp source tree")
    ap.add_argument(
        "--llama-cpp-kv-b",
        type=Path,
        help="an older llama.cpp tree whose converter writes DeepSeek's fused attn_kv_b "
        "(e.g. llama-cpp-python 0.3.8's vendor/llama.cpp); adds model-f32-kv_b.gguf where the model asks for it",
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "fixtures" / "moe")
    ap.add_argument("--only", nargs="*", choices=sorted(MODELS), help="build only these models")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    tok = build_tokenizer()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or MODELS:
        kv_b = args.llama_cpp_kv_b.resolve() if args.llama_cpp_kv_b else None
        build(name, MODELS[name], args.out, args.llama_cpp.resolve(), kv_b, tok)


if __name__ == "__main__":
    main()
