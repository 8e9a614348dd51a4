"""map / imap / imap_unordered against a Python reference, laziness,
threads, the Python-written kernel, close/join/terminate."""

import itertools
import threading
from pathlib import Path

import pytest
import wpool

from conftest import all_pids, kernel

N = 10_000


def reference_upper(items):
    return [s.encode().upper() for s in items]  # the kernel is ASCII-only


@pytest.fixture(scope="module")
def upper():
    with wpool.Pool(kernel("upper"), processes=2, timeout=10.0) as pool:
        yield pool


@pytest.mark.parametrize("chunksize", [None, 1, 7, 500])
def test_map_imap_imap_unordered_equal_python_on_10000_items(upper, chunksize):
    items = [f"item {i} ünïcode" for i in range(N)]
    want = reference_upper(items)
    assert upper.map(items, chunksize) == want
    assert list(upper.imap(iter(items), chunksize)) == want
    got = dict(upper.imap_unordered(items, chunksize, with_index=True))
    assert sorted(got) == list(range(N))
    assert [got[i] for i in range(N)] == want
    assert sorted(upper.imap_unordered(items, chunksize)) == sorted(want)


def test_items_may_be_bytes_or_str_and_text_returns_str():
    with wpool.Pool(kernel("upper"), processes=1, text=True) as pool:
        assert pool.map([b"ab", "cd", bytearray(b"ef"), memoryview(b"gh")]) == ["AB", "CD", "EF", "GH"]
        with pytest.raises(TypeError, match="item 1: expected bytes or str, got int"):
            pool.map(["ok", 5])


def test_primes_as_in_the_seed(tmp_path):
    def count(n):
        sieve = bytearray([1]) * n
        sieve[0:2] = b"\0\0"
        for i in range(2, int(n**0.5) + 1):
            if sieve[i]:
                sieve[i * i :: i] = bytearray(len(sieve[i * i :: i]))
        return sum(sieve)

    limits = [12_500 * k for k in range(1, 17)]
    with wpool.Pool(kernel("primes"), processes=2, timeout=30.0, memory="256MiB") as pool:
        assert pool.map([str(n) for n in limits]) == [str(count(n)).encode() for n in limits]


def test_imap_pulls_an_endless_generator_lazily():
    pulled = 0

    def endless():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield str(i)

    with wpool.Pool(kernel("echo"), processes=2) as pool:
        it = pool.imap(endless(), chunksize=None)
        assert next(it) == b"0"
        first = []
        for r in it:
            first.append(r)
            if len(first) == 50_000:
                break
        assert first == [str(i).encode() for i in range(1, 50_001)]
        it.close()
        # Bounded read-ahead: the scheduler's window and one batch, not the
        # whole (endless) input.
        assert pulled < 50_001 + 20_000, pulled
        # The pool is usable after an abandoned run.
        assert pool.map(["x"]) == [b"x"]


def test_a_generator_that_raises_stops_the_run_and_raises_here():
    def gen():
        yield "a"
        yield "b"
        raise RuntimeError("source broke")

    with wpool.Pool(kernel("echo"), processes=1) as pool:
        with pytest.raises(RuntimeError, match="source broke"):
            pool.map(gen())
        assert pool.map(["still", "works"]) == [b"still", b"works"]


def test_threads_calling_one_pool():
    errors = []
    results = {}
    with wpool.Pool(kernel("upper"), processes=2) as pool:

        def worker(t):
            try:
                items = [f"t{t}-{i}" for i in range(2000)]
                results[t] = pool.map(items, None) == reference_upper(items)
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not [t for t in threads if t.is_alive()], "a thread hung"
    assert errors == []
    assert results == {0: True, 1: True, 2: True, 3: True}


def test_a_kernel_written_in_python():
    with wpool.Pool(kernel("reverse", build="python"), processes=2, timeout=30.0, text=True) as pool:
        items = ["hello wpool", "a b c", "one", ""]
        assert pool.map(items) == [" ".join(reversed(s.split())) for s in items]


def test_close_join_terminate_and_use_after():
    pool = wpool.Pool(kernel("echo"), processes=2)
    pids = all_pids(pool)  # asserts there are 2
    assert pool.map(["a"]) == [b"a"]
    with pytest.raises(ValueError, match="close"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(["b"])
    pool.join()
    from conftest import wait_gone

    assert wait_gone(pids) == []
    pool.terminate()  # idempotent


def test_apply_stats_and_kernel_info():
    with wpool.Pool(kernel("echo"), processes=1) as pool:
        assert pool.apply("one") == b"one"
        pool.map([str(i) for i in range(5000)], None)
        s = pool.stats()
        assert s["workers"] == 1 and s["spawned"] == 1 and s["worker_deaths"] == 0
        assert s["batched_items"] > 0  # the SDK kernel's map-batch was used
        assert s["reclaimed_chunks"] == 0  # one worker: nobody to give a chunk to
    info = wpool.Kernel(kernel("echo")).info()
    assert info.accepted and info.format == "component"
    assert "wpool:kernel/kernel" in info.worlds
    assert any(e.startswith("map:") for e in info.exports)
    bad = wpool.Kernel(kernel("wrong-world")).info()
    assert not bad.accepted and isinstance(bad.rejection, wpool.WorldMismatch)


def test_pipeline_and_the_cli_from_the_wheel():
    p = wpool.Pipeline([kernel("validate"), (kernel("primes"), 2)], timeout=10.0)
    out = p.map(["10", "oops", "100"], return_exceptions=True)
    assert out[0] == b"4" and out[2] == b"25"
    assert isinstance(out[1], wpool.KernelError) and out[1].stage == 0 and out[1].index == 1
    with pytest.raises(wpool.KernelError):
        p.map(["oops"])

    import subprocess
    import sys
    from pathlib import Path

    cli = Path(sys.executable).parent / "wpool"
    assert cli.exists(), "the wheel installs the `wpool` command"
    r = subprocess.run([str(cli), "map", "-j", "1", kernel("upper")], input="abc\n", capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "ABC\n"), r.stderr


def test_a_second_run_in_the_thread_of_an_open_one_raises_instead_of_hanging():
    with wpool.Pool(kernel("echo"), processes=1) as pool:
        it = pool.imap(["a", "b", "c"])
        assert next(it) == b"a"
        # A pool runs one run at a time: this one would wait for `it`, which
        # only this thread can finish.
        with pytest.raises(RuntimeError, match="unfinished imap"):
            pool.map(["x"])
        assert list(it) == [b"b", b"c"]
        assert pool.map(["x"]) == [b"x"]
        unused = pool.imap(["never"])  # made, never iterated: holds nothing
        assert pool.map(["y"]) == [b"y"]
        del unused
        it = pool.imap(["p", "q"])
        assert next(it) == b"p"
        it.close()  # closed early: the pool is free again
        assert pool.map(["z"]) == [b"z"]


def test_init_and_data_reach_the_kernel():
    root = Path(__file__).resolve().parents[2]
    table = (root / "examples" / "uk-us.tsv").read_bytes()
    lines = (root / "examples" / "uk.txt").read_text().splitlines()
    want = ["my favorite color", "the neighbor went to the theater", "nothing to change"]
    with wpool.Pool(kernel("dict"), processes=2, init=table, text=True) as pool:
        assert pool.map(lines)[:3] == want
    with wpool.Pool(kernel("dict"), processes=2, data=root / "examples" / "uk-us.tsv", text=True) as pool:
        assert pool.map(lines)[:3] == want


def test_the_gil_is_released_while_waiting_for_results():
    import time

    counted = 0
    stop = threading.Event()

    def count():
        nonlocal counted
        while not stop.is_set():
            counted += 1

    t = threading.Thread(target=count)
    with wpool.Pool(kernel("hostile"), processes=1, timeout=30.0) as pool:
        t.start()
        time.sleep(0.1)  # the counter's rate with this thread idle
        rate = counted / 0.1
        before, t0 = counted, time.monotonic()
        # Kernel work of a few hundred ms, during which this thread only waits.
        assert pool.map(["spin:300:x"]) == [b"spin:300:x"]
        elapsed, during = time.monotonic() - t0, counted - before
        stop.set()
        t.join()
    assert elapsed > 0.05, "the item was too quick to tell"
    # Had the wait held the GIL, the counter would have run for at most a
    # switch interval or two (5 ms each), not for a fifth of the wait.
    assert during > rate * elapsed * 0.2, (during, rate, elapsed)
