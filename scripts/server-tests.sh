#!/usr/bin/env bash
# End-to-end tests of `baicai serve` (tests/server: the official openai client, bad input, load,
# placement behind HAProxy)
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
        (export DEBIAN_FRONTEND=noninteractive
         apt-get install -y "python${ver}-venv" || apt-get install -y python3-venv ||
            { apt-get update && apt-get install -y "python${ver}-venv"; } ||
            apt-get install -y python3-venv) >&2 || true
        if "$PY" -m venv "$VENV" >/dev/null 2>&1; then return 0; fi
        rm -rf "$VENV"
    fi
    echo "server-tests: bootstrapping pip $PIP_BOOTSTRAP_VERSION into a venv without pip" >&2
    "$PY" -m venv --without-pip "$VENV"
    local whl="$VENV/pip-$PIP_BOOTSTRAP_VERSION-py3-none-any.whl"
    "$VENV/bin/python" - "$PIP_BOOTSTRAP_VERSION" "$whl" "${PIP_INDEX_URL:-https://pypi.org/simple}" <<'PYEOF'
# pip's wheel from the package index's simple page, checked against the sha256 the index gives.
import hashlib, re, sys, urllib.parse, urllib.request
version, dest, index = sys.argv[1], sys.argv[2], sys.argv[3].rstrip("/")
page_url = f"{index}/pip/"
page = urllib.request.urlopen(page_url, timeout=60).read().decode()
name = f"pip-{version}-py3-none-any.whl"
href = next(h for h in re.findall(r'href="([^"]+)"', page) if name in h)
url, _, frag = urllib.parse.urljoin(page_url, href.replace("&amp;", "&")).partition("#")
data = urllib.request.urlopen(url, timeout=120).read()
if frag.startswith("sha256=") and hashlib.sha256(data).hexdigest() != frag[7:]:
    sys.exit(f"{name}: sha256 mismatch")
open(dest, "wb").write(data)
PYEOF
    # a pip wheel runs itself: install it into the environment
    "$VENV/bin/python" "$whl/pip" install -q "$whl"
    rm -f "$whl"
}

if ! cmp -s "$REQS" "$VENV/requirements.installed" || ! "$VENV/bin/python" -c 'import openai, httpx, pytest' 2>/dev/null; then
    make_venv
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"
    cp "$REQS" "$VENV/requirements.installed"
fi

# HAProxy for the placement tests (tests/server/test_placement.py, which skip, saying why, only
# where it cannot be installed): Debian's package, when we may install it.
if ! command -v haproxy >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "server-tests: installing haproxy" >&2
        (export DEBIAN_FRONTEND=noninteractive
         apt-get install -y haproxy || { apt-get update && apt-get install -y haproxy; }) >&2 ||
            echo "server-tests: could not install haproxy; the placement tests will skip" >&2
    else
        echo "server-tests: haproxy missing and not root with apt-get; the placement tests will skip" >&2
    fi
fi

[ -f models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf ] || bash scripts/fetch-models.sh
# After `cargo test --release --workspace` (scripts/test.sh) this is a no-op; it also keeps a stale
# binary from being tested.
cargo build --release -p baicai-cli

# The suite bounds its own waits; this only keeps a hung server from holding CI forever.
exec timeout --signal=INT --kill-after=30 900 \
    "$VENV/bin/python" -m pytest tests/server -q -ra -p no:cacheprovider --durations=8 "$@"
