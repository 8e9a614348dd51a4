"""wpool: ``multiprocessing.Pool``'s API for sandboxed WebAssembly kernels.

Map a kernel (a WebAssembly component of world ``wpool:kernel/kernel``) over
many items on every core. Each worker is an isolated OS process hosting
wasmtime; a kernel that traps, loops, runs out of memory or crashes its
worker fails *that item* with a typed exception, and the pool goes on.

    import wpool
    with wpool.Pool("primes.wasm", processes=2, timeout=2.0) as pool:
        counts = pool.map(["100", "1000"])          # [b"25", b"168"]

No ``if __name__ == "__main__"`` guard is needed: workers are the bundled
``wpool`` executable, not a re-run of your script.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import weakref
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from . import _wpool

__version__ = _wpool.__version__

__all__ = [
    "Pool",
    "Pipeline",
    "Kernel",
    "KernelInfo",
    "mapreduce",
    "worker_program",
    # task errors
    "WpoolError",
    "TaskError",
    "KernelError",
    "Trap",
    "Timeout",
    "OutOfFuel",
    "MemoryLimit",
    "StackOverflow",
    "KernelExit",
    "WorkerCrashed",
    "ItemTooLarge",
    "ProtocolError",
    # pool errors
    "PoolError",
    "KernelNotFound",
    "KernelRead",
    "NotWasm",
    "CoreModule",
    "InvalidKernel",
    "WorldMismatch",
    "UnsatisfiedImports",
    "NoInit",
    "InitFailed",
    "InitTooLarge",
    "CacheError",
    "DataFileError",
    "ConfigError",
    "WorkerStartup",
    "RestartIntensity",
    "SandboxUnavailable",
    "Cancelled",
]

Item = Union[bytes, bytearray, memoryview, str]


# --------------------------------------------------------------------------
# Errors


class WpoolError(Exception):
    """Base class of every wpool exception."""


class TaskError(WpoolError):
    """One item failed. The pool goes on with the others.

    Attributes: ``index`` (the item's position in the input, from 0),
    ``kind`` (a stable name: ``"trap"``, ``"timeout"``, ...), ``message``,
    ``attempts`` (how many times the item was started; more than 1 when its
    worker died and it was retried), ``worker`` (the worker slot that ran
    the last attempt, or ``None``), ``stderr`` (the last bytes the kernel
    wrote to its stderr while running the item) and ``stage`` (for a
    pipeline: the stage that failed it; for ``mapreduce``: 0 map, 1 reduce).
    """

    kind = "task"

    def __init__(
        self,
        message: str,
        *,
        index: int = 0,
        attempts: int = 0,
        worker: Optional[int] = None,
        stderr: bytes = b"",
        detail: Optional[str] = None,
        stage: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.index = index
        self.attempts = attempts
        self.worker = worker
        self.stderr = stderr
        self.detail = detail
        self.stage = stage

    def __str__(self) -> str:
        s = f"item {self.index}: {self.kind}: {self.message}"
        if self.worker is not None:
            s += f" (worker {self.worker}"
            if self.attempts > 1:
                s += f", {self.attempts} attempts"
            s += ")"
        return s

    def __repr__(self) -> str:
        return f"{type(self).__name__}(index={self.index}, message={self.message!r}, attempts={self.attempts}, worker={self.worker})"

    def __reduce__(self):  # picklable, like any exception should be
        return (
            _rebuild_task_error,
            (type(self), self.message, self.index, self.attempts, self.worker, self.stderr, self.detail, self.stage),
        )


def _rebuild_task_error(cls, message, index, attempts, worker, stderr, detail, stage):
    return cls(message, index=index, attempts=attempts, worker=worker, stderr=stderr, detail=detail, stage=stage)


class KernelError(TaskError):
    """The kernel's ``map`` returned an error (``Err(message)``)."""

    kind = "kernel"


class Trap(TaskError):
    """The kernel trapped: a panic, ``unreachable``, an out-of-bounds access."""

    kind = "trap"


class Timeout(TaskError):
    """The item ran past the pool's ``timeout``."""

    kind = "timeout"


class OutOfFuel(TaskError):
    """The item used up its ``fuel``."""

    kind = "out_of_fuel"


class MemoryLimit(TaskError):
    """The kernel tried to grow its memory past the pool's ``memory`` cap."""

    kind = "memory_limit"


class StackOverflow(TaskError):
    """The kernel recursed past the wasm stack limit."""

    kind = "stack_overflow"


class KernelExit(TaskError):
    """The kernel called ``exit``; ``detail`` is its status."""

    kind = "kernel_exit"


class WorkerCrashed(TaskError):
    """The worker process died under this item on every attempt; ``detail``
    says how it ended (``killed by signal 9 (SIGKILL)``)."""

    kind = "worker_crashed"


class ItemTooLarge(TaskError):
    """The item, or its result, is over the pool's ``max_item_size``."""

    kind = "item_too_large"


class ProtocolError(TaskError):
    """A worker broke the protocol while it held this item."""

    kind = "protocol"


_TASK_ERRORS = {
    cls.kind: cls
    for cls in (
        KernelError,
        Trap,
        Timeout,
        OutOfFuel,
        MemoryLimit,
        StackOverflow,
        KernelExit,
        WorkerCrashed,
        ItemTooLarge,
        ProtocolError,
    )
}


def _task_error(raw: tuple) -> TaskError:
    kind, message, index, attempts, worker, stderr, detail, stage = raw
    cls = _TASK_ERRORS.get(kind, TaskError)
    return cls(message, index=index, attempts=attempts, worker=worker, stderr=stderr, detail=detail, stage=stage)


class PoolError(WpoolError):
    """The pool itself failed: the kernel could not be loaded, workers could
    not start, the configuration is wrong. Raised when the pool is built (or
    when a run cannot go on); ``message`` says what and where."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class KernelNotFound(PoolError, FileNotFoundError):
    """The kernel file does not exist."""


class KernelRead(PoolError):
    """The kernel file exists but cannot be read."""


class NotWasm(PoolError):
    """The file is not WebAssembly at all."""


class CoreModule(PoolError):
    """A core WebAssembly module where a component is expected."""


class InvalidKernel(PoolError):
    """The component is malformed: truncated, corrupt, fails validation."""


class WorldMismatch(PoolError):
    """The component does not export ``map`` with the contract's type."""


class UnsatisfiedImports(PoolError):
    """The component imports what wpool does not provide (only WASI 0.2)."""


class NoInit(PoolError):
    """``init=`` was given for a kernel without an ``init`` export."""


class InitFailed(PoolError):
    """The kernel's ``init`` failed."""


class InitTooLarge(PoolError):
    """The ``init`` configuration is over the size a worker takes."""


class CacheError(PoolError):
    """The compiled-artifact cache cannot be used."""


class DataFileError(PoolError):
    """The shared ``data`` file cannot be read."""


class ConfigError(PoolError, ValueError):
    """An option is out of range (``processes=0``, ``chunksize=0``, ...)."""


class WorkerStartup(PoolError):
    """Worker processes fail at start-up."""


class RestartIntensity(PoolError):
    """Workers die faster than the pool restarts them; it gave up."""


class SandboxUnavailable(PoolError):
    """``require_sandbox=True`` and the worker sandbox is not fully available."""


class Cancelled(PoolError):
    """The pool was terminated while this run went on."""


_POOL_ERRORS = {
    cls.__name__: cls
    for cls in (
        KernelNotFound,
        KernelRead,
        NotWasm,
        CoreModule,
        InvalidKernel,
        WorldMismatch,
        UnsatisfiedImports,
        NoInit,
        InitFailed,
        InitTooLarge,
        CacheError,
        DataFileError,
        ConfigError,
        WorkerStartup,
        RestartIntensity,
        SandboxUnavailable,
        Cancelled,
    )
}


def _pool_error(e: _wpool.PoolFailure) -> PoolError:
    kind, message = e.args
    return _POOL_ERRORS.get(kind, PoolError)(message)


# --------------------------------------------------------------------------
# The worker program


def worker_program() -> str:
    """The ``wpool`` executable that worker processes run: ``$WPOOL_WORKER``
    if set, else the one bundled in this package."""
    env = os.environ.get("WPOOL_WORKER")
    if env:
        return env
    return str(Path(__file__).resolve().parent / "_bin" / "wpool")


def _checked_worker_program(path: Optional[str]) -> str:
    program = path or worker_program()
    if not os.access(program, os.X_OK):
        raise WorkerStartup(
            f"worker program {program} is missing or not executable (the wheel bundles it; "
            "set WPOOL_WORKER or worker_program= to a `wpool` executable)"
        )
    return program


def _size(value: Union[int, str, None], name: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number of bytes or a size such as '256MiB'")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{name} must be positive, not {value}")
        return value
    if isinstance(value, str):
        return _wpool.parse_size(value)
    raise TypeError(f"{name} must be a number of bytes or a size such as '256MiB', not {type(value).__name__}")


def _path(p: Union[str, "os.PathLike[str]"]) -> str:
    return os.fspath(p)


# --------------------------------------------------------------------------
# Pools

# Every live pool, so that interpreter exit ends their workers even when a
# pool was never closed (workers also die with this process: PDEATHSIG).
_LIVE: "weakref.WeakSet[Pool]" = weakref.WeakSet()


@atexit.register
def _terminate_all() -> None:
    for pool in list(_LIVE):
        try:
            pool.terminate()
        except Exception:
            pass


class _Turn:
    """A run's place on its pool: a pool runs one run at a time (others wait
    for it), so a thread that starts a second run while its own first one is
    still open would wait for itself forever."""

    __slots__ = ("started", "done")

    def __init__(self) -> None:
        self.started = False
        self.done = False


def _batches(run: _wpool.RawRun, return_exceptions: bool, owner: Optional["Pool"] = None) -> Iterator[Tuple[list, list]]:
    """Yields a run's results as they come, a list at a time: ``(values,
    indices)``, ``indices`` only for an unordered run. A failed item raises
    its :class:`TaskError` after the results before it were yielded (or,
    with ``return_exceptions``, takes its place). The run starts on the
    first ``next()``."""
    turn = _Turn()
    try:
        if owner is not None:
            owner._take_turn(turn)
        while True:
            try:
                got = run.next_results()
            except _wpool.PoolFailure as e:
                raise _pool_error(e) from None
            if got is None:
                return
            values, errors, indices = got
            for pos, raw in errors:
                err = _task_error(raw)
                if not return_exceptions:
                    yield values[:pos], indices[:pos]
                    run.close()
                    raise err
                values[pos] = err
            yield values, indices
    finally:
        turn.done = True
        run.close()


def _results(run: _wpool.RawRun, return_exceptions: bool, with_index: bool, owner: Optional["Pool"] = None) -> Iterator[Any]:
    """Yields a run's results one by one (see :func:`_batches`)."""
    for values, indices in _batches(run, return_exceptions, owner):
        if with_index:
            yield from zip(indices, values)
        else:
            yield from values


class Pool:
    """A pool of sandboxed worker processes running one WebAssembly kernel.

    ``kernel`` is the path of a component of world ``wpool:kernel/kernel``
    (``wpool inspect`` tells). Options, all optional:

    - ``processes``: worker processes (default: one per core).
    - ``timeout``: seconds one item may run; past it the item fails with
      :class:`Timeout` and the worker goes on.
    - ``memory``: a kernel instance's memory cap (bytes or ``"256MiB"``);
      default: half the machine's RAM shared by the workers.
    - ``fuel``: instructions (roughly) one item may run.
    - ``init``: bytes given once to the kernel's ``init`` export.
    - ``data``: a file every worker may read as ``/data`` (read-only).
    - ``retries``: how many times an item is retried when its worker dies
      under it (default 2); then it fails with :class:`WorkerCrashed`.
    - ``max_item_size``: largest item and result (default 64 MiB).
    - ``maxtasksperchild``: a fresh kernel instance after this many items.
    - ``batch``: give a kernel several fast items per call (default on).
    - ``require_sandbox``: fail unless workers fully confine themselves.
    - ``text``: results as ``str`` (UTF-8) instead of ``bytes``.

    Leaving a ``with`` block terminates the pool, as ``multiprocessing.Pool``
    does; every worker process has ended when it returns.
    """

    def __init__(
        self,
        kernel: Union[str, "os.PathLike[str]"],
        processes: Optional[int] = None,
        *,
        timeout: Optional[float] = None,
        memory: Union[int, str, None] = None,
        fuel: Optional[int] = None,
        init: Optional[bytes] = None,
        data: Union[str, "os.PathLike[str]", None] = None,
        retries: Optional[int] = None,
        max_item_size: Union[int, str, None] = None,
        maxtasksperchild: Optional[int] = None,
        batch: bool = True,
        require_sandbox: bool = False,
        text: bool = False,
        worker_program: Optional[str] = None,
    ) -> None:
        if processes is not None and processes < 1:
            raise ConfigError("Number of processes must be at least 1")
        if isinstance(init, str):
            init = init.encode()
        self._text = text
        self._kernel = _path(kernel)
        self._closed = False
        try:
            self._raw = _wpool.RawPool(
                self._kernel,
                _checked_worker_program(worker_program),
                processes=processes,
                timeout=timeout,
                memory=_size(memory, "memory"),
                fuel=fuel,
                max_item_size=_size(max_item_size, "max_item_size"),
                retries=retries,
                init=init,
                data=None if data is None else _path(data),
                max_items_per_instance=maxtasksperchild,
                batch=batch,
                require_sandbox=require_sandbox,
            )
        except _wpool.PoolFailure as e:
            raise _pool_error(e) from None
        self._lock = threading.Lock()
        self._turns: Dict[int, _Turn] = {}
        _LIVE.add(self)

    # -- multiprocessing.Pool's API -------------------------------------

    def map(
        self,
        iterable: Iterable[Item],
        chunksize: Optional[int] = None,
        *,
        return_exceptions: bool = False,
    ) -> List[Any]:
        """The results of every item, in order. The first failed item raises
        its :class:`TaskError` (after the run stopped); with
        ``return_exceptions=True`` the exception takes the item's place."""
        out: List[Any] = []
        for values, _ in _batches(self._run(iterable, True, chunksize), return_exceptions, self):
            out.extend(values)
        return out

    def imap(
        self,
        iterable: Iterable[Item],
        chunksize: Optional[int] = 1,
        *,
        return_exceptions: bool = False,
    ) -> Iterator[Any]:
        """Results in input order, lazily: items are pulled from ``iterable``
        only as workers take them (an endless generator is fine), and the
        first result comes as soon as it is ready. ``chunksize=None`` sizes
        chunks from the measured time per item."""
        return _results(self._run(iterable, True, chunksize), return_exceptions, False, self)

    def imap_unordered(
        self,
        iterable: Iterable[Item],
        chunksize: Optional[int] = 1,
        *,
        return_exceptions: bool = False,
        with_index: bool = False,
    ) -> Iterator[Any]:
        """Like :meth:`imap`, in the order items finish. ``with_index=True``
        yields ``(index, result)`` pairs."""
        return _results(self._run(iterable, False, chunksize), return_exceptions, with_index, self)

    def apply(self, item: Item) -> Any:
        """The result of one item (raises its :class:`TaskError`)."""
        return self.map([item])[0]

    def close(self) -> None:
        """No more work will be submitted; :meth:`join` then waits."""
        self._closed = True

    def join(self) -> None:
        """Waits until the pool's run ends and every worker has exited
        (after :meth:`close`)."""
        if not self._closed:
            raise ValueError("Pool is still running (call close() first)")
        self._raw.join()

    def terminate(self) -> None:
        """Stops at once; every worker process has ended when it returns."""
        self._closed = True
        self._raw.terminate()
        _LIVE.discard(self)

    def __enter__(self) -> "Pool":
        self._check()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()

    def __del__(self) -> None:
        raw = getattr(self, "_raw", None)
        if raw is not None:
            raw.terminate()

    # -- beyond Pool ----------------------------------------------------

    @property
    def processes(self) -> int:
        """Number of worker processes."""
        return self._raw.processes

    def worker_pids(self) -> List[int]:
        """Process ids of the live worker processes. A pool starts work as
        soon as one worker is ready: the others appear here as they start
        (within tens of milliseconds of it)."""
        self._check()
        return self._raw.worker_pids()

    def stats(self) -> Dict[str, int]:
        """Counters over the pool's life: workers spawned, worker deaths,
        retried items, items run batched, failed batches, and chunks a
        worker gave back unstarted for an idle one to run."""
        self._check()
        spawned, deaths, retried, batched, fallbacks, reclaimed, workers = self._raw.stats()
        return {
            "workers": workers,
            "spawned": spawned,
            "worker_deaths": deaths,
            "retried_items": retried,
            "batched_items": batched,
            "batch_fallbacks": fallbacks,
            "reclaimed_chunks": reclaimed,
        }

    def __repr__(self) -> str:
        state = "running" if self._raw.is_running() and not self._closed else "closed"
        return f"<wpool.Pool {self._kernel!r} processes={self.processes} {state}>"

    def _take_turn(self, turn: _Turn) -> None:
        me = threading.get_ident()
        with self._lock:
            prev = self._turns.get(me)
            if prev is not None and prev.started and not prev.done:
                raise RuntimeError(
                    "this thread has an unfinished imap/imap_unordered of this pool: a pool runs one run at a "
                    "time, so finish that iterator (or call its close()) before starting another"
                )
            turn.started = True
            self._turns[me] = turn

    def _check(self) -> None:
        if self._closed or not self._raw.is_running():
            raise ValueError("Pool not running")

    def _run(self, iterable: Iterable[Item], ordered: bool, chunksize: Optional[int]) -> _wpool.RawRun:
        self._check()
        if chunksize is not None and chunksize < 1:
            raise ConfigError("chunksize must be at least 1")
        try:
            return self._raw.run(iterable, ordered, chunksize=chunksize, text=self._text)
        except _wpool.PoolFailure as e:
            raise _pool_error(e) from None


# --------------------------------------------------------------------------
# Pipelines and MapReduce


class Pipeline:
    """Stages of pools, each with its own kernel, that items stream through
    at once (a slow stage holds back the ones before it).

        p = wpool.Pipeline(["validate.wasm", ("primes.wasm", 2)], timeout=5)
        for r in p.imap(lines): ...

    A stage is a kernel path or ``(kernel, processes)``. An item that a
    stage fails raises (or, with ``return_exceptions=True``, yields) its
    :class:`TaskError`, whose ``stage`` says which.
    """

    def __init__(
        self,
        stages: Sequence[Union[str, "os.PathLike[str]", Tuple[Union[str, "os.PathLike[str]"], Optional[int]]]],
        *,
        timeout: Optional[float] = None,
        memory: Union[int, str, None] = None,
        retries: Optional[int] = None,
        text: bool = False,
        worker_program: Optional[str] = None,
    ) -> None:
        norm = []
        for s in stages:
            if isinstance(s, tuple):
                norm.append((_path(s[0]), s[1]))
            else:
                norm.append((_path(s), None))
        self._text = text
        try:
            self._raw = _wpool.RawPipeline(
                norm, _checked_worker_program(worker_program), timeout=timeout, memory=_size(memory, "memory"), retries=retries
            )
        except _wpool.PoolFailure as e:
            raise _pool_error(e) from None

    def imap(self, iterable: Iterable[Item], *, return_exceptions: bool = False) -> Iterator[Any]:
        """Results of the last stage, in input order, lazily. The stages'
        pools start with the run and end with it."""
        try:
            run = self._raw.run(iterable, text=self._text)
        except _wpool.PoolFailure as e:
            raise _pool_error(e) from None
        return _results(run, return_exceptions, with_index=False)

    def map(self, iterable: Iterable[Item], *, return_exceptions: bool = False) -> List[Any]:
        """Every result of the last stage, in input order."""
        return list(self.imap(iterable, return_exceptions=return_exceptions))


def mapreduce(
    map_kernel: Union[str, "os.PathLike[str]"],
    reduce_kernel: Union[str, "os.PathLike[str]"],
    iterable: Iterable[Item],
    *,
    processes: Optional[int] = None,
    timeout: Optional[float] = None,
    memory: Union[int, str, None] = None,
    text: bool = False,
    return_exceptions: bool = False,
) -> Dict[Any, Any]:
    """MapReduce: maps every item with ``map_kernel`` (results are
    ``key<TAB>value`` lines), groups the values by key, reduces each key's
    values with ``reduce_kernel`` (world ``reducer``). Returns ``{key:
    value}`` sorted by key. A failed map item or key raises its
    :class:`TaskError` (``stage`` 0 or 1); with ``return_exceptions=True``
    failed keys map to their exception and failed map items are skipped.

        counts = wpool.mapreduce("wordcount.wasm", "sum.wasm", lines, text=True)
    """
    try:
        pairs, errors = _wpool.mapreduce(
            _path(map_kernel),
            _path(reduce_kernel),
            iterable,
            _checked_worker_program(None),
            processes=processes,
            timeout=timeout,
            memory=_size(memory, "memory"),
        )
    except _wpool.PoolFailure as e:
        raise _pool_error(e) from None
    errs = [_task_error(e) for e in errors]
    if errs and not return_exceptions:
        raise errs[0]
    reduce_errors = iter([e for e in errs if e.stage == 1])
    out: Dict[Any, Any] = {}
    for key, value in pairs:
        k = key.decode("utf-8", "replace") if text else key
        if value is None:
            out[k] = next(reduce_errors)
        else:
            out[k] = value.decode("utf-8", "replace") if text else value
    return out


# --------------------------------------------------------------------------
# Kernels


class KernelInfo:
    """What ``wpool inspect`` says about a kernel."""

    def __init__(self, raw: tuple) -> None:
        size, fmt, imports, exports, worlds, rejection = raw
        self.size: int = size
        self.format: str = fmt
        self.imports: List[str] = list(imports)
        self.exports: List[str] = list(exports)
        self.worlds: List[str] = list(worlds)
        self.accepted: bool = rejection is None
        self.rejection: Optional[PoolError] = None if rejection is None else _POOL_ERRORS.get(rejection[0], PoolError)(rejection[1])

    def __repr__(self) -> str:
        return f"<KernelInfo {self.format} {self.size} bytes worlds={self.worlds} accepted={self.accepted}>"


class Kernel:
    """A kernel file. ``Kernel(path).info()`` inspects it without running it."""

    def __init__(self, path: Union[str, "os.PathLike[str]"]) -> None:
        self.path = _path(path)

    def info(self) -> KernelInfo:
        """Its format, imports, exports and the worlds it satisfies; raises
        :class:`KernelNotFound` for a missing file."""
        try:
            return KernelInfo(_wpool.inspect(self.path))
        except _wpool.PoolFailure as e:
            raise _pool_error(e) from None

    def pool(self, processes: Optional[int] = None, **options: Any) -> Pool:
        """A :class:`Pool` running this kernel."""
        return Pool(self.path, processes, **options)

    def __repr__(self) -> str:
        return f"wpool.Kernel({self.path!r})"
