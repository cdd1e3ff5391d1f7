#!/usr/bin/env bash
# Side-by-side benchmark: llama.cpp's llama-bench and `baicai bench` on the same GGUF files, same
# thread count, in one run; prints a Markdown table with the ratios (baicai / llama.cpp).
#
#   LLAMA_BENCH=/path/to/llama-bench scripts/bench-vs-llamacpp.sh [-t 2] [-p 512] [-n 128] [-r 3] MODEL.gguf...
#
# llama-bench is not part of this repository: build it from the llama-cpp-python source package
# (see BENCHMARKS.md). llama.cpp's peak RSS is read with /usr/bin/time -v; baicai reports its own,
# read before its in-process bandwidth probe (whose 256 MiB buffer /usr/bin/time would count).
set -euo pipefail
threads=2 np=512 ng=128 reps=3
while getopts "t:p:n:r:" o; do
  case $o in t) threads=$OPTARG;; p) np=$OPTARG;; n) ng=$OPTARG;; r) reps=$OPTARG;; *) exit 2;; esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-t T] [-p N] [-n N] [-r R] MODEL.gguf..." >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
llama_bench="${LLAMA_BENCH:?set LLAMA_BENCH to the llama-bench binary}"
baicai="$root/target/release/baicai"
[ -x "$baicai" ] || cargo build --release -p baicai-cli --manifest-path "$root/Cargo.toml" >&2
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

rss_mib() { awk -F: '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$1"; }

echo "| model | engine | pp$np tok/s | tg$ng tok/s | peak RSS MiB |"
echo "|---|---|---:|---:|---:|"
for m in "$@"; do
  name="$(basename "$m")"
  /usr/bin/time -v "$llama_bench" -m "$m" -t "$threads" -p "$np" -n "$ng" -r "$reps" -o json \
    > "$tmp/l.json" 2> "$tmp/l.time"
  /usr/bin/time -v "$baicai" bench -m "$m" -t "$threads" -p "$np" -n "$ng" -r "$reps" --json \
    > "$tmp/b.json" 2> "$tmp/b.time"
  python3 - "$tmp/l.json" "$tmp/b.json" "$name" "$(rss_mib "$tmp/l.time")" "$(rss_mib "$tmp/b.time")" "$np" "$ng" <<'PY'
import json, sys
l = json.load(open(sys.argv[1])); b = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
name, lrss, brss, np_, ng = sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
lpp = next((r["avg_ts"] for r in l if r["n_prompt"] == np_ and r["n_gen"] == 0), float("nan"))
ltg = next((r["avg_ts"] for r in l if r["n_gen"] == ng and r["n_prompt"] == 0), float("nan"))
bpp, btg = b["pp_tokens_per_s"], b["tg_tokens_per_s"]
print(f"| {name} | llama.cpp | {lpp:.2f} | {ltg:.2f} | {lrss} |")
print(f"| {name} | baicai | {bpp:.2f} | {btg:.2f} | {b['peak_rss_mib']:.0f} |")
print(f"| {name} | ratio | {bpp/lpp:.2f}x | {btg/ltg:.2f}x | |")
print(f"<!-- {name}: baicai roofline {b['roofline_fraction']*100:.0f}% of {b['bandwidth_gb_per_s']:.1f} GB/s, "
      f"{b['weight_bytes_per_token']/2**20:.0f} MiB/token -->")
PY
done
