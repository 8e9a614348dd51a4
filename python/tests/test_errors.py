"""Every exception class, from real kernels in real worker processes."""

import pickle

import pytest
import wpool

from conftest import kernel


@pytest.fixture(scope="module")
def hostile():
    with wpool.Pool(kernel("hostile"), processes=2, timeout=1.0, memory="256MiB", retries=1) as pool:
        yield pool


@pytest.mark.parametrize(
    "item, cls, kind, message",
    [
        ("err:no thanks", wpool.KernelError, "kernel", "no thanks"),
        ("panic:boom", wpool.Trap, "trap", "unreachable"),
        ("oob", wpool.Trap, "trap", "out of bounds"),
        ("spin", wpool.Timeout, "timeout", "timeout"),
        ("oom", wpool.MemoryLimit, "memory_limit", ""),
        ("recurse", wpool.StackOverflow, "stack_overflow", ""),
        ("exit:3", wpool.KernelExit, "kernel_exit", ""),
        ("result:65", wpool.ItemTooLarge, "item_too_large", ""),
    ],
)
def test_each_task_error_class(hostile, item, cls, kind, message):
    items = ["first", item, "last"]
    with pytest.raises(cls) as info:
        hostile.map(items)
    e = info.value
    assert isinstance(e, wpool.TaskError) and isinstance(e, wpool.WpoolError)
    assert (e.index, e.kind) == (1, kind)
    assert message in e.message
    assert e.attempts == 1 and e.worker in (1, 2)
    assert str(e).startswith(f"item 1: {kind}: ")
    # In place, with return_exceptions: the other items are not lost.
    out = hostile.map(items, return_exceptions=True)
    assert out[0] == b"first" and out[2] == b"last"
    assert type(out[1]) is cls and out[1].index == 1
    # Exceptions survive pickling (to send them on with multiprocessing).
    again = pickle.loads(pickle.dumps(e))
    assert (type(again), again.index, again.kind, again.message) == (cls, 1, kind, e.message)


def test_kernel_stderr_and_imap_raises_at_the_failing_item(hostile):
    with pytest.raises(wpool.Trap) as info:
        hostile.map(["stderr:2"])
    assert b"diagnostic line 1 of 2" in info.value.stderr
    got = []
    with pytest.raises(wpool.KernelError) as info:
        for r in hostile.imap(["a", "b", "err:third", "d"]):
            got.append(r)
    assert got == [b"a", b"b"] and info.value.index == 2
    assert hostile.map(["after"]) == [b"after"]


def test_out_of_fuel():
    with wpool.Pool(kernel("hostile"), processes=1, fuel=1_000_000) as pool:
        with pytest.raises(wpool.OutOfFuel) as info:
            pool.map(["ok", "spin"])
        assert info.value.index == 1


def test_item_too_large_on_input():
    with wpool.Pool(kernel("echo"), processes=1, max_item_size="1KiB") as pool:
        out = pool.map(["x" * 1024, "x" * 1025], return_exceptions=True)
        assert out[0] == b"x" * 1024
        assert isinstance(out[1], wpool.ItemTooLarge) and out[1].attempts == 0


@pytest.mark.parametrize(
    "path, cls, text",
    [
        ("/nonexistent/k.wasm", wpool.KernelNotFound, "kernel not found: /nonexistent/k.wasm"),
        ("/etc/passwd", wpool.NotWasm, "not a WebAssembly component"),
        ("wrong-world", wpool.WorldMismatch, "not a component of world"),
        ("needs-import", wpool.UnsatisfiedImports, "imports that wpool does not provide"),
        ("core.wasm", wpool.CoreModule, "a core WebAssembly module"),
        ("truncated.wasm", wpool.InvalidKernel, "invalid WebAssembly component"),
    ],
)
def test_pool_errors_at_construction(tmp_path, path, cls, text):
    if path == "core.wasm":
        path = tmp_path / path
        path.write_bytes(b"\0asm\x01\0\0\0")  # the smallest core module
    elif path == "truncated.wasm":
        with open(kernel("echo"), "rb") as f:
            whole = f.read()
        path = tmp_path / path
        path.write_bytes(whole[: len(whole) // 2])
    elif not path.startswith("/"):
        path = kernel(path)
    with pytest.raises(cls) as info:
        wpool.Pool(path, processes=1)
    assert isinstance(info.value, wpool.PoolError)
    assert text in str(info.value)


def test_configuration_errors():
    with pytest.raises(wpool.NoInit):
        wpool.Pool(kernel("echo"), processes=1, init=b"cfg")
    with pytest.raises(wpool.ConfigError):
        wpool.Pool(kernel("echo"), processes=0)
    with pytest.raises(ValueError, match="not a size"):
        wpool.Pool(kernel("echo"), memory="lots")
    with pytest.raises(ValueError, match="timeout"):
        wpool.Pool(kernel("echo"), timeout=-1)
    with wpool.Pool(kernel("echo"), processes=1) as pool:
        with pytest.raises(wpool.ConfigError):
            pool.map(["a"], chunksize=0)
    with pytest.raises(wpool.WorkerStartup, match="not executable"):
        wpool.Pool(kernel("echo"), worker_program="/nonexistent/wpool")
