"""Where the command line writes: answers (or JSON lines) on stdout and nothing else; status,
progress and cost on stderr; the engines' own output in a log file under
`$REASONLOOM_HOME/logs/` (path shown once, when the first engine starts), or on stderr with -v.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner

from reasonloom.backends.vllm.embedded import MODEL_NAME
from reasonloom.backends.vllm.engine_output import engine_log_path, send_engine_output_to
from reasonloom.orchestrator.cache import reasonloom_home

_STATUS: IO[str] | None = None
_SHOWN: set[Path] = set()


def route_engine_output(verbose: bool) -> Path | None:
    """The engine log of this command (None with -v: the engines write to stderr)."""
    path = None if verbose else reasonloom_home() / "logs" / (
        f"engine-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    status_stream()   # duplicated now, while fd 2 is still the terminal
    send_engine_output_to(path, on_open=show_engine_log)
    return path


def show_engine_log(path: Path | None = None) -> None:
    """One line with the engine log's path, the first time only."""
    path = path or engine_log_path()
    if path is not None and path not in _SHOWN:
        _SHOWN.add(path)
        print(f"engine log: {path}", file=status_stream(), flush=True)


def status_stream() -> IO[str]:
    """stderr for status and progress, as a duplicate of fd 2 taken before any engine starts:
    while an engine starts, fd 2 itself points at the engine's log (engine_output.py)."""
    global _STATUS
    if _STATUS is None:
        try:
            fd = os.dup(sys.stderr.fileno())
        except (AttributeError, OSError, ValueError):   # no real stderr (embedded, captured)
            return sys.stderr
        _STATUS = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace")
    return _STATUS


def status_console() -> Console:
    return Console(file=status_stream(), highlight=False, markup=False, soft_wrap=True)


def local_engines(roles: Any) -> list[tuple[str, Any]]:
    """(role, backend) for each distinct backend that starts an engine in this process."""
    seen: set[int] = set()
    found = []
    for name in roles:
        backend = roles[name].backend
        starter = getattr(backend, "engine", None)
        if id(backend) in seen or not asyncio.iscoroutinefunction(starter):
            continue
        seen.add(id(backend))
        found.append((name, backend))
    return found


async def start_engines(roles: Any, console: Console) -> None:
    """Start the roles' local engines before the graph runs: the log's path (once), then a
    status line per engine counting seconds on a terminal, and the time it took."""
    for role, backend in local_engines(roles):
        show_engine_log()   # before the status line, which the log's opening would break
        kind = "embedded" if backend.model == MODEL_NAME else "vLLM"
        label = f"starting the {kind} engine ({backend.model}, role {role})"
        t0 = time.monotonic()
        task = asyncio.ensure_future(backend.engine())
        if console.is_terminal:
            spinner = Spinner("dots", f"{label} ...")
            # no redirection of sys.stdout/stderr into the display: the engine's prints must
            # reach its log (engine_output.py), not the terminal
            with Live(spinner, console=console, transient=True, redirect_stdout=False,
                      redirect_stderr=False):
                while not task.done():
                    await asyncio.wait({task}, timeout=1)
                    spinner.update(text=f"{label} ... {time.monotonic() - t0:.0f} s")
        await task
        console.print(f"{label}: ready in {time.monotonic() - t0:.0f} s")
