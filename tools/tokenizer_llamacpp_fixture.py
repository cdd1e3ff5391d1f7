#!/usr/bin/env python3
"""Regenerates crates/baicai-tokenizer/tests/data/llamacpp_<model>.json: llama.cpp's token ids
and detokenized text for a seeded corpus of awkward texts (scripts, combining marks, emoji, odd
whitespace, contractions, digit runs, special-token markup), for each model under models/.

It needs a llama.cpp source tree whose static libraries are built (the reference is the copy
vendored in llama-cpp-python 0.3.36, ggml 0c1e570; see shared/fixtures/README.md):

    python3 tools/tokenizer_llamacpp_fixture.py --llama-cpp /path/to/llama.cpp

The helper tools/tokenizer_llamacpp_dump.cpp is compiled against build/src/libllama.a and the
ggml libraries, then fed the corpus once per model.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["qwen2.5-coder-0.5b-instruct-q4_k_m", "gemma-3-270m-q4_k_m"]
OUT_DIR = os.path.join(ROOT, "crates", "baicai-tokenizer", "tests", "data")

HANDPICKED = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "\r\n",
    " \r\n \n  x",
    "\t\tindented\tcode",
    "trailing space ",
    "trailing spaces   ",
    "   ",
    "a  b   c    d",
    "Hello World",
    "HELLO WORLD",
    "I'm you're he's we've they'll I'd can't DON'T IT'S WE'RE YOU'LL",
    "'s 'S 'll '' ''' 'x",
    "1 12 123 1234 12345 123456 1234567 12345678901234567890",
    "3.14159 -0.5 1e-9 0x1F 1,000,000 ½ ² ³ ⅓ Ⅻ ٣ ४",
    "email@example.com https://example.com/a?b=c&d=e#f",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
    "def f(x):\n\treturn x**2 # comment\n",
    "<html><body class=\"x\">&amp; &lt;</body></html>",
    "naïve café résumé Ångström Zürich façade",
    "e\u0301 a\u0308 n\u0303 combining marks",
    "Привет, мир! Ελληνικά γράμματα. Ünïcödé",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "こんにちは世界、カタカナ・ひらがな。",
    "안녕하세요 세계",
    "深度求索用MoE架构将训练成本压至1/10。",
    "中国的首都是北京，上海是最大的城市。",
    "𠀀𠀁 𪚥 rare CJK extension B",
    "emoji 🚀🥬😀 👍🏽 👩‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️ ☕",
    "math ∑∫√∞≠≤≥ ± × ÷ → ⇒ ∀∃",
    "symbols ~!@#$%^&*()_+`-=[]{}|;:'\",.<>/?\\",
    "~~~ +~= ^^ || && -- ++ ::",
    "nbsp\u00a0here ideographic\u3000space line\u2028sep next\u0085line",
    "zero\u200bwidth joiner\u200dx soft\u00adhyphen",
    "control \u0001\u0002\u0007\u001b chars",
    "private \ue000\uf8ff use",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text<|endoftext|>",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>double<bos>",
    "</s> html strike </s>",
    "<tool_call>{\"a\": 1}</tool_call>",
    "<unused5><unused0> [multimodal] <start_of_image>",
    "<0x41><0x0A> literal byte tokens",
    "<|im_start|<|im_end|>> nested markup",
    "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\nmany newlines",
    "\t" * 40 + "many tabs",
    " " * 40 + "many spaces",
    "ab" * 200,
    # Long runs (regex backtracking, long merge chains).
    " " * 3000 + "a",
    "a" * 2000,
    "\n " * 500,
    "中" * 500,
    "1" * 300,
    "<|im_start|>" * 50,
]

POOLS = {
    "word": ["the", "quick", "brown", "fox", "Tokenizer", "llama", "QWEN", "gemma", "x", "I"],
    "contraction": ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'Re", "'"],
    "digits": None,
    "space": [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\u00a0", "\u3000", "\u2009"],
    "punct": [".", ",", "!", "?", "...", "--", "(", ")", "\"", "«»", "¿", "¡", "、", "。", "・"],
    "symbol": ["$", "+", "<", "=", ">", "^", "`", "|", "~", "€", "©", "°", "∑", "→"],
    "cjk": ["中文", "汉字", "北京", "測試", "日本語", "かな", "カナ", "한국어", "𠀀"],
    "script": ["Привет", "Ελλάδα", "שלום", "مرحبا", "हिन्दी", "ไทย", "ქართული", "Հայերեն"],
    "mark": ["e\u0301", "a\u0308", "\u0301", "\u0903", "n\u0303"],
    "emoji": ["🚀", "🥬", "😀", "👍🏽", "👩‍👩‍👧", "🇫🇷", "❤️", "🫠"],
    "special": ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<start_of_turn>", "<end_of_turn>",
                "</s>", "<tool_call>", "<unused7>", "<bos>", "<eos>"],
}


def random_text(rng):
    parts = []
    for _ in range(rng.randint(1, 14)):
        kind = rng.choice(list(POOLS))
        if kind == "digits":
            parts.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 9))))
        else:
            parts.append(rng.choice(POOLS[kind]))
    return "".join(parts)


def corpus():
    rng = random.Random(20240229)
    return HANDPICKED + [random_text(rng) for _ in range(300)]


def build_dump(llama_cpp, out):
    lib = lambda *p: os.path.join(llama_cpp, "build", *p)
    cmd = ["g++", "-O1", "-std=c++17", os.path.join(ROOT, "tools", "tokenizer_llamacpp_dump.cpp"),
           "-I", os.path.join(llama_cpp, "include"), "-I", os.path.join(llama_cpp, "ggml", "include"),
           lib("src", "libllama.a"), lib("ggml", "src", "libggml.a"),
           lib("ggml", "src", "libggml-cpu.a"), lib("ggml", "src", "libggml-base.a"),
           "-fopenmp", "-lpthread", "-ldl", "-o", out]
    subprocess.run(cmd, check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-cpp", required=True, help="llama.cpp source tree with build/ done")
    args = ap.parse_args()
    texts = corpus()
    assert all("\0" not in t for t in texts)
    stdin = "\0".join(texts).encode("utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "tokenizer_llamacpp_dump")
        build_dump(args.llama_cpp, exe)
        os.makedirs(OUT_DIR, exist_ok=True)
        for model in MODELS:
            path = os.path.join(ROOT, "models", model + ".gguf")
            if not os.path.exists(path):
                print(f"skipping {model}: {path} missing (scripts/fetch-models.sh)", file=sys.stderr)
                continue
            out = subprocess.run([exe, path], input=stdin, capture_output=True, check=True).stdout
            lines = out.decode("utf-8").splitlines()
            header = json.loads(lines[0])
            cases = []
            for text, line in zip(texts, lines[1:], strict=True):
                row = json.loads(line)
                case = {"text": text}
                for key in ("plain", "parsed", "with_special"):
                    case[key] = row[key]
                for key in ("decoded", "decoded_skip"):
                    case[key] = bytes.fromhex(row[key]).decode("utf-8")
                cases.append(case)
            doc = {
                "model": model + ".gguf",
                "reference": "llama.cpp vendored in llama-cpp-python 0.3.36 (ggml 0c1e570)",
                "made_by": "tools/tokenizer_llamacpp_fixture.py",
                **header,
                "cases": cases,
            }
            dest = os.path.join(OUT_DIR, f"llamacpp_{model}.json")
            # One case per line: reviewable diffs, small file.
            head = json.dumps({k: v for k, v in doc.items() if k != "cases"}, ensure_ascii=False)
            with open(dest, "w", encoding="utf-8") as f:
                f.write(head[:-1] + ', "cases": [\n')
                f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in cases))
                f.write("\n]}\n")
            print(f"wrote {dest}: {len(cases)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
