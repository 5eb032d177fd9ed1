"""Python's cyclic garbage collector while runs are active.

CPython starts a young-generation pass every 700 net new container objects, and a pass over
older generations as survivors pile up. A run keeps every node's task, outputs and ledger
record alive until it ends, so with the default thresholds the collector re-scans the same
live objects over and over: about half the runtime's own cost per node
(benchmarks/overhead.py). While any run is active the young threshold is raised; the
thresholds the process had come back when the last active run ends. Cycles are still
collected, in fewer, larger passes.
"""
from __future__ import annotations

import functools
import gc
import threading
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Iterator, TypeVar

# new container objects between young passes while a run is active (CPython's default: 700)
RUN_YOUNG_THRESHOLD = 50_000

T = TypeVar("T")
_lock = threading.Lock()
_active_runs = 0
_saved_thresholds: tuple[int, ...] = ()


@contextmanager
def run_gc_thresholds() -> Iterator[None]:
    """Raise the young threshold for the span of a run (runs may overlap, in any threads)."""
    global _active_runs, _saved_thresholds
    with _lock:
        if _active_runs == 0:
            _saved_thresholds = gc.get_threshold()
            young, *older = _saved_thresholds
            if 0 < young < RUN_YOUNG_THRESHOLD:   # 0: collection is off; higher: the owner's
                gc.set_threshold(RUN_YOUNG_THRESHOLD, *older)
        _active_runs += 1
    try:
        yield
    finally:
        with _lock:
            _active_runs -= 1
            if _active_runs == 0:
                gc.set_threshold(*_saved_thresholds)


def during_a_run(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Decorates a coroutine function: the raised threshold spans every await of its call."""
    @functools.wraps(fn)
    async def wrapped(*args: Any, **kwargs: Any) -> T:
        with run_gc_thresholds():
            return await fn(*args, **kwargs)
    return wrapped
