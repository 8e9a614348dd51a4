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

# componentize-py, for the Python example kernel (a private venv under target/).
target_dir=${CARGO_TARGET_DIR:-target}
if [ ! -x "$target_dir/pyenv/bin/componentize-py" ]; then
  echo "setup: installing componentize-py into $target_dir/pyenv" >&2
  python3 -m venv "$target_dir/pyenv"
  "$target_dir/pyenv/bin/pip" install --quiet --disable-pip-version-check componentize-py==0.25.1
fi

# The fixture and example kernels: Rust for both build paths, and Python.
cargo xtask kernels >&2
