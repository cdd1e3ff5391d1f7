#!/usr/bin/env bash
# Side-by-side benchmark: llama.cpp's llama-bench and `baicai bench` on the same GGUF files, same
# thread count, in one run; prints a Markdown table with the ratios (baicai / llama.cpp).
#
#   LLAMA_BENCH=/path/to/llama-bench scripts/bench-vs-llamacpp.sh [-t 2] [-p 512] [-n 128] [-r 3] [-R 1] MODEL.gguf...
#
# -r is repetitions inside each tool (their mean is taken); -R is rounds that alternate the two
# tools: figures are the medians over rounds, the ratio the median of the per-round ratios.
#
# llama-bench is not part of this repository: build it from the llama-cpp-python source package
# (see BENCHMARKS.md). llama.cpp's peak RSS is read with /usr/bin/time -v; baicai reports its own,
# read before its in-process bandwidth probe (whose 256 MiB buffer /usr/bin/time would count).
set -euo pipefail
threads=2 np=512 ng=128 reps=3 rounds=1
while getopts "t:p:n:r:R:" o; do
  case $o in t) threads=$OPTARG;; p) np=$OPTARG;; n) ng=$OPTARG;; r) reps=$OPTARG;; R) rounds=$OPTARG;; *) exit 2;; esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-t T] [-p N] [-n N] [-r R] [-R ROUNDS] MODEL.gguf..." >&2; exit 2; }
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
  # Rounds alternate the two engines, so a burst of load from other tenants of a shared machine
  # hits both; each round's ratio is taken within the round, and the median round is reported.
  for r in $(seq 1 "$rounds"); do
    /usr/bin/time -v "$llama_bench" -m "$m" -t "$threads" -p "$np" -n "$ng" -r "$reps" -o json \
      > "$tmp/l$r.json" 2> "$tmp/l$r.time"
    /usr/bin/time -v "$baicai" bench -m "$m" -t "$threads" -p "$np" -n "$ng" -r "$reps" --json \
      > "$tmp/b$r.json" 2> "$tmp/b$r.time"
    echo "$(rss_mib "$tmp/l$r.time") $(rss_mib "$tmp/b$r.time")" > "$tmp/rss$r"
  done
  python3 - "$tmp" "$rounds" "$name" "$np" "$ng" <<'PY'
import json, statistics, sys
tmp, rounds, name, np_, ng = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
rows = []
for r in range(1, rounds + 1):
    l = json.load(open(f"{tmp}/l{r}.json"))
    b = json.loads(open(f"{tmp}/b{r}.json").read().strip().splitlines()[-1])
    lrss, brss = open(f"{tmp}/rss{r}").read().split()
    lpp = next((x["avg_ts"] for x in l if x["n_prompt"] == np_ and x["n_gen"] == 0), float("nan"))
    ltg = next((x["avg_ts"] for x in l if x["n_gen"] == ng and x["n_prompt"] == 0), float("nan"))
    rows.append(dict(lpp=lpp, ltg=ltg, bpp=b["pp_tokens_per_s"], btg=b["tg_tokens_per_s"],
                     lrss=int(lrss), brss=b["peak_rss_mib"], b=b))
med = lambda k: statistics.median(x[k] for x in rows)
ratio = lambda a, c: statistics.median(x[a] / x[c] for x in rows)
print(f"| {name} | llama.cpp | {med('lpp'):.2f} | {med('ltg'):.2f} | {max(x['lrss'] for x in rows)} |")
print(f"| {name} | baicai | {med('bpp'):.2f} | {med('btg'):.2f} | {max(x['brss'] for x in rows):.0f} |")
print(f"| {name} | ratio | {ratio('bpp', 'lpp'):.2f}x | {ratio('btg', 'ltg'):.2f}x | |")
if rounds > 1:
    pp = ", ".join(f"{x['bpp'] / x['lpp']:.2f}" for x in rows)
    tg = ", ".join(f"{x['btg'] / x['ltg']:.2f}" for x in rows)
    print(f"<!-- {name}: ratios by round: pp {pp}; tg {tg} -->")
# llama.cpp reads the same weights per generated token from the same file (its repacked copy has
# the same bits), so its roofline fraction is its tg speed on the same scale.
roof = lambda x: x["ltg"] * x["b"]["weight_bytes_per_token"] / (x["b"]["bandwidth_gb_per_s"] * 1e9)
if rounds > 1:
    # On a shared machine the bandwidth left by other tenants decides which engine limit shows:
    # near it, both stream at a similar fraction; well under it, computation decides.
    by = ", ".join(f"{x['b']['bandwidth_gb_per_s']:.1f} ({x['b']['roofline_fraction']*100:.0f}% / "
                   f"{roof(x)*100:.0f}%)" for x in rows)
    print(f"<!-- {name}: read bandwidth by round, GB/s (roofline baicai / llama.cpp): {by} -->")
b = rows[-1]["b"]
l_roof = roof(rows[-1])
print(f"<!-- {name}: roofline (last round; weights read per token ÷ baicai's measured read bandwidth) "
      f"baicai {b['roofline_fraction']*100:.0f}%, llama.cpp {l_roof*100:.0f}% of {b['bandwidth_gb_per_s']:.1f} GB/s, "
      f"{b['weight_bytes_per_token']/2**20:.0f} MiB/token; weights: {'; '.join(b.get('weights', []))} -->")
PY
done
