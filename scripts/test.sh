#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the test models (idempotent), then every crate's
# tests with optimisation on (models run inside them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-models.sh
cargo test --release --workspace
# The HTTP server end to end (openai client, bad input, load), in a Python venv under target/.
bash scripts/server-tests.sh
