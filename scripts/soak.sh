#!/usr/bin/env bash
# A soak of the CLI (not part of the test command): `wpool map --isolate`
# over N items again and again for DURATION seconds, while a chaos loop
# SIGKILLs a random worker, or SIGSTOPs it for a second, every 2-5 s.
# Samples the host's RSS, open fds and threads every 5 s; checks every
# run's output byte for byte against the reference.
#
#   scripts/soak.sh [DURATION_S=3600] [N_ITEMS=10000000]
#
# Prints one line per run and a summary; exits 1 on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-3600}
n=${2:-10000000}
target_dir=${CARGO_TARGET_DIR:-target}
cargo build -q --release -p wpool-cli
kernel="$target_dir/kernels/wasip2/upper.wasm"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# A copy: a build during the soak must not swap the binary between runs.
cp "$target_dir/release/wpool" "$work/wpool"
wpool="$work/wpool"
echo "soak: wpool $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+changes')" >&2
seq -f 'item %.0f' 1 "$n" > "$work/input"
tr 'a-z' 'A-Z' < "$work/input" > "$work/expected"
echo "soak: $n items per run, for ${duration}s" >&2
echo "t,run,rss_kib,fds,threads" > "$work/samples.csv"

chaos() { # $1: host pid
  while kill -0 "$1" 2>/dev/null; do
    sleep "$((2 + RANDOM % 4))"
    mapfile -t workers < <(pgrep -P "$1" || true)
    [ ${#workers[@]} -gt 0 ] || continue
    w=${workers[RANDOM % ${#workers[@]}]}
    if ((RANDOM % 2)); then
      kill -KILL "$w" 2>/dev/null && echo kill >> "$work/events" || true
    else
      kill -STOP "$w" 2>/dev/null && { sleep 1; kill -CONT "$w" 2>/dev/null; echo stop >> "$work/events"; } || true
    fi
  done
}
sample() { # $1: host pid, $2: run
  while kill -0 "$1" 2>/dev/null; do
    if [ -r "/proc/$1/status" ]; then
      rss=$(awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || true)
      threads=$(awk '/^Threads/ {print $2}' "/proc/$1/status" 2>/dev/null || true)
      fds=$(ls "/proc/$1/fd" 2>/dev/null | wc -l)
      [ -n "$rss" ] && echo "$(($(date +%s) - start)),$2,$rss,$fds,$threads" >> "$work/samples.csv"
    fi
    sleep 5
  done
}

start=$(date +%s)
run=0
failed=0
: > "$work/events"
while [ $(($(date +%s) - start)) -lt "$duration" ]; do
  run=$((run + 1))
  t0=$(date +%s)
  "$wpool" map --isolate -j 2 "$kernel" "$work/input" > "$work/out" 2> "$work/err" &
  host=$!
  chaos "$host" &
  sample "$host" "$run" &
  status=0
  wait "$host" || status=$?
  if [ "$status" -eq 0 ] && cmp -s "$work/out" "$work/expected"; then
    verdict=identical
  else
    verdict="DIFFERENT (exit $status; $(head -c 300 "$work/err"))"
    failed=1
  fi
  peaks=$(awk -F, -v r="$run" '$2 == r { if ($3 > m) m = $3; if ($4 > f) f = $4; if ($5 > t) t = $5 }
    END { printf "peak RSS %d KiB, fds %d, threads %d", m, f, t }' "$work/samples.csv")
  echo "soak: run $run: ${n} items in $(($(date +%s) - t0))s, output $verdict; $peaks" >&2
  wait 2>/dev/null || true
done
kills=$(grep -c kill "$work/events" || true)
stops=$(grep -c stop "$work/events" || true)
# Per run, the host's peak RSS, fds and threads: flat means the last run's
# peaks are no higher than the first's.
summary=$(awk -F, 'NR > 1 {
    if ($3 > rss[$2]) rss[$2] = $3; if ($4 > fd[$2]) fd[$2] = $4; if ($5 > th[$2]) th[$2] = $5;
    if (first == "") first = $2; last = $2; n++ }
  END { printf "%d samples; host peaks in the first and the last run: RSS %d / %d KiB, fds %d / %d, threads %d / %d",
        n, rss[first], rss[last], fd[first], fd[last], th[first], th[last] }' "$work/samples.csv")
echo "soak: $run runs in $(($(date +%s) - start))s, $kills worker SIGKILLs, $stops SIGSTOP/SIGCONT; $summary" >&2
mkdir -p "$target_dir/soak"
cp "$work/samples.csv" "$target_dir/soak/samples.csv"
echo "soak: samples kept in $target_dir/soak/samples.csv" >&2
exit "$failed"
