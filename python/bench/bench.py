#!/usr/bin/env python3
"""wpool from Python on the workloads of ../shared/bench/peers.py.

Same sizes, same items, same 2 workers, pools started and warmed before
timing (as peers.py does), timeouts on (``timeout=10``). One JSON object
per line on stdout, like peers.py --json:
``{"peer": "wpool-python", "workload", "metric", "unit", "value", "params"}``.

    target/python/venv/bin/python python/bench/bench.py [--quick] [--jobs 2] [--kernels DIR]

`compare` runs it (when the package is installed, scripts/python.sh) and
sets each row beside multiprocessing.Pool's figure from peers.py.
"""

import argparse
import json
import os
import statistics
import sys
import time

import wpool

SIZES = {
    "full": dict(reps=5, noop1_n=20_000, noop_auto_n=1_000_000, primes_items=16, primes_n=120_000, primes_reps=3,
                 bulk_items=64, bulk_size=1 << 20, bulk_reps=10),
    "quick": dict(reps=3, noop1_n=5_000, noop_auto_n=200_000, primes_items=8, primes_n=30_000, primes_reps=1,
                  bulk_items=16, bulk_size=1 << 20, bulk_reps=3),
}


def timed(reps, f, check):
    """Median and best wall time of `f()`; `check` verifies each result
    outside the timed part (as peers.py does)."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
        check(out)
        del out
    return statistics.median(times), min(times)


def equal_to(want):
    def check(out):
        assert out == want, "results differ"
    return check


def emit(workload, metric, unit, value, **params):
    print(json.dumps({"peer": "wpool-python", "workload": workload, "metric": metric, "unit": unit,
                      "value": value, "params": params}), flush=True)


def pi_sieve(n):
    sieve = bytearray([1]) * n
    sieve[:2] = b"\0\0"
    for i in range(2, int((n - 1) ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytes(len(range(i * i, n, i)))
    return sum(sieve)


def warm(pool, workers):
    """Warm as peers.py warms its pools, as far as the API shows workers:
    every worker process started, then items of about a millisecond each,
    one per chunk, four per worker, so that each worker runs some."""
    deadline = time.monotonic() + 30
    while len(pool.worker_pids()) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError("only %d of %d workers started" % (len(pool.worker_pids()), workers))
        time.sleep(0.005)
    pool.map([b"30000"] * (4 * workers), chunksize=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--kernels", default=os.path.join(os.path.dirname(__file__), "..", "..", "target", "kernels", "wasip2"))
    a = ap.parse_args()
    s = SIZES["quick" if a.quick else "full"]
    k = lambda name: os.path.join(a.kernels, name + ".wasm")
    jobs = a.jobs

    with wpool.Pool(k("echo"), jobs, timeout=10.0) as pool:
        pool.map([b"warm"] * 1000)
        items = [b"%08d" % i for i in range(s["noop1_n"])]

        med, best = timed(s["reps"], lambda: pool.map(items, chunksize=1), equal_to(items))
        emit("noop-chunk1", "items_per_s", "items/s", len(items) / med, n=len(items), chunksize=1, jobs=jobs,
             best=len(items) / best)

        items = [b"%08d" % i for i in range(s["noop_auto_n"])]

        med, best = timed(s["reps"], lambda: pool.map(items), equal_to(items))
        emit("noop-auto", "items_per_s", "items/s", len(items) / med, n=len(items), chunksize="auto", jobs=jobs,
             best=len(items) / best)

        blobs = [os.urandom(s["bulk_size"]) for _ in range(s["bulk_items"])]

        med, best = timed(s["bulk_reps"], lambda: pool.map(blobs, chunksize=1), equal_to(blobs))
        mb = 2 * s["bulk_items"] * s["bulk_size"] / 1e6
        emit("bulk-echo", "mb_per_s", "MB/s in+out", mb / med, n=s["bulk_items"], size=s["bulk_size"], jobs=jobs,
             best=mb / best)

    want = str(pi_sieve(s["primes_n"])).encode()
    items = [str(s["primes_n"]).encode()] * s["primes_items"]
    per_jobs = {}
    for j in (1, jobs):
        with wpool.Pool(k("primes"), j, timeout=30.0) as pool:
            warm(pool, j)

            per_jobs[j], _ = timed(s["primes_reps"], lambda: pool.map(items, chunksize=1), equal_to([want] * len(items)))
            emit("primes-scaling", "seconds", "s", per_jobs[j], jobs=j, n=s["primes_n"], items=len(items))
    emit("primes-scaling", "speedup", "x", per_jobs[1] / per_jobs[jobs], jobs=jobs)


if __name__ == "__main__":
    sys.exit(main())
