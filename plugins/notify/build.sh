#!/usr/bin/env bash
# Builds the Python `notify` plugin into target/wasm32-wasip2/release/simrelay_notify.wasm.
#
# componentize-py comes from PyPI into a virtual environment under target/, made once and
# kept; it generates the bindings from wit/ (world `plugin`) and bundles app.py with a
# CPython interpreter into one component.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

# Pinned: 0.25.1 builds components for WASI 0.2 that wasmtime 48 runs.
COMPONENTIZE_PY_VERSION=0.25.1
venv="${CARGO_TARGET_DIR:-target}/python-venv"
out="${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/simrelay_notify.wasm"

if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -qx "componentize-py $COMPONENTIZE_PY_VERSION"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi
mkdir -p "$(dirname "$out")"
"$venv/bin/componentize-py" -d wit -w plugin componentize -p plugins/notify app -o "$out"
