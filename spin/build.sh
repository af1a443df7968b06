#!/bin/sh
# `spin build` runs this for each component of spin.toml: it builds the Spin bridge and the
# plugins named as arguments (e.g. `ejoin`) for wasm32-wasip2, in release mode, adding the
# target first when rustup lacks it.
set -eu
cd "$(dirname "$0")/.."
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
packages="-p simrelay-spin-bridge"
for plugin in "$@"; do
  packages="$packages -p simrelay-$plugin"
done
# shellcheck disable=SC2086 # one word per package flag
exec "${CARGO:-cargo}" build --release --target wasm32-wasip2 $packages
