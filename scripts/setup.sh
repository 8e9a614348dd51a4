#!/usr/bin/env bash
# Installs what wpool needs on a fresh machine and builds the guest kernels.
# Idempotent: safe to run again; does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

need_targets=(wasm32-wasip2 wasm32-unknown-unknown)
installed=$(rustup target list --installed)
for t in "${need_targets[@]}"; do
  if ! grep -qx "$t" <<<"$installed"; then
    echo "setup: adding rust target $t" >&2
    rustup target add "$t"
  fi
done

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

# The fixture and example kernels, for both build paths.
cargo xtask kernels >&2
