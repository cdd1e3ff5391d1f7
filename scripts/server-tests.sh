#!/usr/bin/env bash
# End-to-end tests of `baicai serve` (tests/server: the official openai client, bad input, load)
# against target/release/baicai. Installs the pinned Python packages of
# tests/server/requirements.txt into target/venv-server-tests first (idempotent: only when the
# requirements change). Extra arguments go to pytest, e.g. `-k stop -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/venv-server-tests
REQS=tests/server/requirements.txt
PY=${PYTHON:-python3}
PIP_BOOTSTRAP_VERSION=24.0   # pip wheel used only where the Python has neither ensurepip nor pip

# A virtual environment with pip, by the first way this Python allows: `venv` (with ensurepip);
# Debian's Python without ensurepip: install python3-venv when we may, else an environment without
# pip into which pip's own wheel (fetched from PyPI) installs pip.
make_venv() {
    rm -rf "$VENV"
    if "$PY" -m venv "$VENV" >/dev/null 2>&1; then return 0; fi
    rm -rf "$VENV"
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        local ver
        ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        echo "server-tests: $PY has no working venv; installing python${ver}-venv" >&2
        (apt-get install -y "python${ver}-venv" || apt-get install -y python3-venv ||
            { apt-get update && apt-get install -y "python${ver}-venv"; } ||
            apt-get install -y python3-venv) >&2 || true
        if "$PY" -m venv "$VENV" >/dev/null 2>&1; then return 0; fi
        rm -rf "$VENV"
    fi
    echo "server-tests: bootstrapping pip $PIP_BOOTSTRAP_VERSION into a venv without pip" >&2
    "$PY" -m venv --without-pip "$VENV"
    "$VENV/bin/python" - "$PIP_BOOTSTRAP_VERSION" "$VENV/pip.whl" <<'PYEOF'
import json, sys, urllib.request
version, dest = sys.argv[1], sys.argv[2]
meta = json.load(urllib.request.urlopen(f"https://pypi.org/pypi/pip/{version}/json", timeout=60))
url = next(u["url"] for u in meta["urls"] if u["filename"].endswith("-py3-none-any.whl"))
with open(dest, "wb") as f:
    f.write(urllib.request.urlopen(url, timeout=120).read())
PYEOF
    "$VENV/bin/python" "$VENV/pip.whl/pip" install -q "$VENV/pip.whl"
    rm -f "$VENV/pip.whl"
}

if ! cmp -s "$REQS" "$VENV/requirements.installed" || ! "$VENV/bin/python" -c 'import openai, httpx, pytest' 2>/dev/null; then
    make_venv
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"
    cp "$REQS" "$VENV/requirements.installed"
fi

[ -f models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf ] || bash scripts/fetch-models.sh
# After `cargo test --release --workspace` (scripts/test.sh) this is a no-op; it also keeps a stale
# binary from being tested.
cargo build --release -p baicai-cli

# The suite bounds its own waits; this only keeps a hung server from holding CI forever.
exec timeout --signal=INT --kill-after=30 900 \
    "$VENV/bin/python" -m pytest tests/server -q -ra -p no:cacheprovider --durations=8 "$@"
