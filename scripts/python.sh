#!/usr/bin/env bash
# Builds the Python package `wpool` (one wheel: the extension module and the
# `wpool` executable its workers run) and installs it into a fresh venv,
# target/python/venv. Idempotent.
#
#   scripts/python.sh            release build (what a user installs)
#   scripts/python.sh --debug    debug build (the test command's: quicker)
#   scripts/python.sh --test     ... then run the pytest suite against it
#                                (arguments after `--` go to pytest)
#
# Then: target/python/venv/bin/python -c 'import wpool; ...'
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}
profile=release
run_tests=
while [ $# -gt 0 ]; do
  case $1 in
    --debug) profile=debug ;;
    --test) run_tests=1 ;;
    --) shift; break ;;
    *) echo "usage: scripts/python.sh [--debug] [--test] [-- PYTEST_ARGS...]" >&2; exit 2 ;;
  esac
  shift
done
cargo_profile=(--release)
[ "$profile" = debug ] && cargo_profile=()

# maturin (the build backend), in a private venv of build tools.
tools="$target_dir/python/tools"
if [ ! -x "$tools/bin/maturin" ]; then
  echo "python: installing maturin into $tools" >&2
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check maturin==1.16.0
fi

# The executable the workers run, bundled in the wheel (debug info stripped:
# the wheel ships code, not line tables).
cargo build "${cargo_profile[@]}" --locked -p wpool-cli >&2
mkdir -p python/wpool/_bin
objcopy --strip-debug "$target_dir/$profile/wpool" python/wpool/_bin/wpool.tmp
chmod 755 python/wpool/_bin/wpool.tmp
mv python/wpool/_bin/wpool.tmp python/wpool/_bin/wpool

rm -rf "$target_dir/python/wheels"
"$tools/bin/maturin" build "${cargo_profile[@]}" --locked --quiet -m python/Cargo.toml \
  --interpreter python3 --out "$target_dir/python/wheels" >&2
wheel=$(ls "$target_dir"/python/wheels/wpool-*.whl)

# A fresh venv, the wheel installed into it as a user would (not an
# editable tree): what the tests import is what `pip install` gives.
venv="$target_dir/python/venv"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "$wheel"
echo "python: installed $(basename "$wheel") into $venv" >&2

if [ -n "$run_tests" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check pytest==8.3.4 pytest-timeout==2.3.1
  # The tests find the kernels under target/kernels (scripts/setup.sh).
  WPOOL_KERNELS="$(pwd)/$target_dir/kernels" "$venv/bin/python" -m pytest -q -p no:cacheprovider --timeout 300 python/tests "$@"
fi
