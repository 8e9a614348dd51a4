#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, doc,
# integration with real worker processes and real wasm).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# Test traffic stays on loopback: a pool whose launched workers would dial
# back to anything else fails to build (see README, Scale-out).
export WPOOL_LOOPBACK_ONLY=1
# A fresh clone builds once: incremental state would only cost disk (~1 GB).
[ "${CI:-}" = "true" ] && export CARGO_INCREMENTAL=0

# Every check that could not run here, with why: printed again at the very
# end, so that a skip is never hidden in a summary of passes.
skipped=()
report_skips() {
  if [ ${#skipped[@]} -eq 0 ]; then
    echo "== skipped checks: none" >&2
  else
    echo "== skipped checks: ${#skipped[@]}" >&2
    printf '  SKIPPED: %s\n' "${skipped[@]}" >&2
  fi
}

scripts/setup.sh

echo "== fmt" >&2
cargo fmt --all -- --check
(cd guest-kernels && cargo fmt --all -- --check)

echo "== clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
(cd guest-kernels && cargo clippy --workspace --target wasm32-wasip2 --target-dir ../target/guest --locked -- -D warnings)

echo "== dependencies" >&2
if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "test: installing cargo-deny (a few minutes, once)" >&2
  cargo install --locked cargo-deny
fi
cargo deny --locked check bans licenses sources
# Advisories need the RustSec database, cloned from GitHub, which these
# machines cannot reach: check against a local copy when there is one.
if compgen -G "${CARGO_HOME:-${HOME:-/root}/.cargo}/advisory-dbs/advisory-db-*/crates" >/dev/null; then
  cargo deny --offline --locked check advisories
else
  skipped+=("cargo deny check advisories: no RustSec database in ~/.cargo/advisory-dbs (github.com unreachable)")
  echo "SKIPPED: ${skipped[-1]}" >&2
fi

echo "== build" >&2
# Every target, benches included (they must compile; they are run by hand).
cargo build --workspace --all-targets --locked

echo "== comparison, quick" >&2
# The side-by-side comparison runs end to end (debug build, small sizes:
# its figures mean nothing here; see the README for real ones).
"${CARGO_TARGET_DIR:-target}/debug/compare" --quick --reps 1

echo "== test services" >&2
# The launched-worker tests need a Slurm cluster (../shared/slurm, two slurmd
# nodes on this machine) and an sshd on 127.0.0.1. Started here, stopped when
# this script exits; a machine that cannot run them skips those tests, loudly.
stop_services() {
  [ -n "${started_slurm:-}" ] && "$slurm_dir/stop-slurm.sh" >&2 || true
  [ -n "${started_sshd:-}" ] && scripts/sshd.sh stop >&2 || true
  report_skips
}
trap stop_services EXIT
slurm_dir=$(cd .. && pwd)/shared/slurm
if [ ! -x "$slurm_dir/start-slurm.sh" ]; then
  export WPOOL_SLURM_SKIP="no $slurm_dir/start-slurm.sh (../shared beside the clone)"
elif out=$("$slurm_dir/start-slurm.sh"); then
  eval "$out"
  started_slurm=1
else
  export WPOOL_SLURM_SKIP="start-slurm.sh failed (see above)"
fi
if out=$(scripts/sshd.sh start); then
  eval "$out"
  started_sshd=1
else
  export WPOOL_SSH_SKIP="scripts/sshd.sh start failed (see above)"
fi
n_slurm=$(grep -c 'slurm_cluster(' tests/tests/remote.rs)
n_ssh=$(grep -c 'ssh_launcher(' tests/tests/remote.rs)
[ -n "${WPOOL_SLURM_SKIP:-}" ] && skipped+=("$n_slurm Slurm tests: $WPOOL_SLURM_SKIP")
[ -n "${WPOOL_SSH_SKIP:-}" ] && skipped+=("$n_ssh ssh tests: $WPOOL_SSH_SKIP")
for s in "${skipped[@]}"; do
  printf '\n!!!!!!!!\nSKIPPED: %s\n!!!!!!!!\n\n' "$s" >&2
done

echo "== tests" >&2
profile=default
[ "${CI:-}" = "true" ] && profile=ci
cargo test --workspace --doc --locked
cargo nextest run --workspace --locked --profile "$profile" --no-fail-fast

echo "== python" >&2
# The Python package, built into a wheel and installed into a fresh venv as
# a user would, then its pytest suite (real workers, real signals).
scripts/python.sh --debug --test
# Its benchmark runs end to end (debug build, small sizes: figures mean
# nothing here; see the README's Performance section).
"${CARGO_TARGET_DIR:-target}/python/venv/bin/python" python/bench/bench.py --quick >/dev/null
