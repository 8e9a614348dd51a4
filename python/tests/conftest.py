"""Shared fixtures: the bundled kernels (built by scripts/setup.sh) and
helpers to watch real worker processes."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

KERNELS = Path(os.environ.get("WPOOL_KERNELS", Path(__file__).resolve().parents[2] / "target" / "kernels"))


def kernel(name: str, build: str = "wasip2") -> str:
    path = KERNELS / build / f"{name}.wasm"
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/setup.sh first")
    return str(path)


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_gone(pids, within: float = 10.0) -> list:
    """Waits (a hang guard, not a speed check) until no pid is alive;
    returns those still alive."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.02)
    return [p for p in pids if alive(p)]


def all_pids(pool, within: float = 60.0) -> list:
    """The pids of all `pool.processes` workers: a pool starts work as soon
    as one is ready, so right after construction it may list fewer (a hang
    guard, not a speed check)."""
    deadline = time.monotonic() + within
    while len(pids := pool.worker_pids()) < pool.processes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(pids) == pool.processes, f"{pids} after {within} s, expected {pool.processes} workers"
    return pids


def run_python(code: str, **kw) -> subprocess.Popen:
    """Starts this venv's interpreter on `code` (a child process, so that
    signals and interpreter exit are real)."""
    env = dict(os.environ, WPOOL_KERNELS=str(KERNELS), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )
