"""Type stubs of the extension module (the Rust half of `wpool`)."""

from typing import Any, Iterable, List, Optional, Tuple

__version__: str

class PoolFailure(Exception):
    """args: (kind, message)"""

# (kind, message, index, attempts, worker, stderr, detail, stage)
RawTaskError = Tuple[str, str, int, int, Optional[int], bytes, Optional[str], Optional[int]]

class RawRun:
    def next_results(self) -> Optional[Tuple[List[Any], List[Tuple[int, RawTaskError]], List[int]]]: ...
    def close(self) -> None: ...

class RawPool:
    def __init__(
        self,
        kernel: str,
        worker_program: str,
        processes: Optional[int] = None,
        timeout: Optional[float] = None,
        memory: Optional[int] = None,
        fuel: Optional[int] = None,
        max_item_size: Optional[int] = None,
        retries: Optional[int] = None,
        init: Optional[bytes] = None,
        data: Optional[str] = None,
        max_items_per_instance: Optional[int] = None,
        batch: bool = True,
        require_sandbox: bool = False,
    ) -> None: ...
    @property
    def processes(self) -> int: ...
    def run(self, items: Iterable[Any], ordered: bool, chunksize: Optional[int] = None, text: bool = False) -> RawRun: ...
    def worker_pids(self) -> List[int]: ...
    def stats(self) -> List[int]: ...
    def is_running(self) -> bool: ...
    def terminate(self) -> None: ...
    def join(self) -> None: ...

class RawPipeline:
    def __init__(
        self,
        stages: List[Tuple[str, Optional[int]]],
        worker_program: str,
        timeout: Optional[float] = None,
        memory: Optional[int] = None,
        retries: Optional[int] = None,
    ) -> None: ...
    def run(self, items: Iterable[Any], text: bool = False) -> RawRun: ...

def mapreduce(
    map_kernel: str,
    reduce_kernel: str,
    items: Iterable[Any],
    worker_program: str,
    processes: Optional[int] = None,
    timeout: Optional[float] = None,
    memory: Optional[int] = None,
) -> Tuple[List[Tuple[bytes, Optional[bytes]]], List[RawTaskError]]: ...
def inspect(path: str) -> Tuple[int, str, List[str], List[str], List[str], Optional[Tuple[str, str]]]: ...
def parse_size(s: str) -> int: ...
