"""Where an engine's own output goes: stderr (the default), or a log file (the command line's
default, `reasonloom -v` keeps stderr); never stdout, which carries answers only.

vLLM writes from three places: its Python logger in this process, the engine-core and worker
processes it spawns (their logger, tqdm bars and C++ warnings all write to fds 1 and 2), and
native code in this process. Redirecting Python logging alone leaves the other two on stdout.
So around an engine start (and the model's one-time conversion) fds 1 and 2 of this process
point at the chosen target: every process spawned then inherits it for its whole life. This
process's vLLM logger is pointed at the same target for good, since it keeps logging after the
start (shutdown, stats).

The redirection is process-wide for the seconds a start takes: whatever else this process
writes to fds 1 or 2 meanwhile lands in the target too, so a caller that shows progress during
the start writes to a duplicate of its terminal's descriptor (reasonloom/cli/console.py).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import IO, Callable, Iterator

# vLLM's logger writes to stdout unless told otherwise; engine processes read this at import.
STREAM_ENV = "VLLM_LOGGING_STREAM"

_LOCK = threading.RLock()
_log_path: Path | None = None
_log_file: IO[str] | None = None
_on_open: Callable[[Path], None] | None = None


def send_engine_output_to(path: Path | None,
                          on_open: Callable[[Path], None] | None = None) -> None:
    """Engines started from now on write their output to `path` (created on the first start,
    appended to; `on_open(path)` is called then, e.g. to show where it is), or to stderr with
    None."""
    global _log_path, _log_file, _on_open
    with _LOCK:
        if _log_file is not None and path != _log_path:
            _log_file.close()
            _log_file = None
        _log_path = Path(path) if path is not None else None
        _on_open = on_open


def engine_log_path() -> Path | None:
    """The file engine output goes to, None when it goes to stderr."""
    return _log_path


def _target() -> IO[str]:
    global _log_file
    if _log_path is None:
        return sys.stderr
    if _log_file is None:
        _log_path.parent.mkdir(parents=True, exist_ok=True)
        _log_file = open(_log_path, "a", buffering=1, encoding="utf-8")
        if _on_open is not None:
            _on_open(_log_path)
    return _log_file


def _point_vllm_logger(stream: IO[str]) -> None:
    """This process's vLLM logger (configured at vLLM's import, with stdout as its stream
    unless STREAM_ENV was set first) writes to `stream`."""
    if "vllm" not in sys.modules:
        return
    for handler in logging.getLogger("vllm").handlers:
        # only vLLM's own handler (its logging config names it "vllm"): others found here,
        # e.g. a test runner's capture handlers, keep their streams
        if handler.get_name() == "vllm" and isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)


def _flush(*streams: IO[str] | None) -> None:
    for stream in streams:
        with contextlib.suppress(Exception):
            stream.flush()   # type: ignore[union-attr]


@contextlib.contextmanager
def engine_output() -> Iterator[None]:
    """Around an engine start: fds 1 and 2 point at the target (log file or stderr), so the
    processes spawned inside inherit it; restored on exit. One start at a time."""
    with _LOCK:
        os.environ.setdefault(STREAM_ENV, "ext://sys.stderr")
        target = _target()
        target_fd = 2 if target is sys.stderr else target.fileno()
        _flush(sys.stdout, sys.stderr, target)
        saved = os.dup(1), os.dup(2)
        # Python-level writes too: sys.stdout/sys.stderr may be proxies that do not write to
        # fds 1 and 2 (a rich live display's), and vLLM's logger takes sys.stderr at import
        saved_streams = sys.stdout, sys.stderr
        try:
            os.dup2(target_fd, 1)
            if target_fd != 2:
                os.dup2(target_fd, 2)
            sys.stdout = sys.stderr = target
            _point_vllm_logger(target)
            try:
                yield
            finally:
                _flush(sys.stdout, sys.stderr)
                sys.stdout, sys.stderr = saved_streams
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                _point_vllm_logger(target)
        finally:
            os.close(saved[0])
            os.close(saved[1])
