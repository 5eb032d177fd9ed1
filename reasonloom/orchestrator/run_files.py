"""The files of a durable run under $REASONLOOM_HOME/runs/: checked ids, one process per run,
atomic private writes, and one-line reports of corrupt files.

A run id becomes a file name, so it may hold no path characters: `--resume ../../x` or an
absolute path never leaves `runs/`. Two processes resuming one run would both re-send its
unfinished calls (double spend): an exclusive POSIX lock on `RUN_ID.lock`, held while the
run lives, lets only the first in; the kernel drops it when that process dies, so a killed run
can always be resumed. A POSIX lock, not `flock`: a forked child (the engine core, started
mid-run) does not inherit it, so the lock never outlives the run.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from reasonloom.orchestrator.cache import runs_dir

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_TABLES = {"calls", "node_outputs", "meta"}


class RunFileError(ValueError):
    """One line: what is wrong with a run's id or files, and what to do."""


def check_run_id(run_id: str) -> str:
    if not RUN_ID.fullmatch(run_id):
        raise RunFileError(f"--resume {run_id[:80]!r}: not a run id (letters, digits, - and _ "
                           f"only, as printed by `reasonloom run`)")
    return run_id


class RunLock:
    """`with RunLock(run_id):` the run is this process's until the block ends (or it dies)."""

    def __init__(self, run_id: str):
        self.path = runs_dir() / f"{check_run_id(run_id)}.lock"
        self.run_id = run_id
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunFileError(f"run {self.run_id} is in progress in another process (pid "
                               f"{holder}); wait for it to end, or stop it and resume") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing releases the lock; the file stays (harmless)
            self._fd = None


def write_json(path: Path, data: Any) -> None:
    """Atomic and private: a unique temp file (0600) in the same folder, then a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _start_over(run_id: str) -> str:
    return f"start over with `reasonloom run RECIPE ...` (or delete {runs_dir()}/{run_id}.*)"


def read_manifest(run_id: str) -> dict[str, Any]:
    """The manifest of a run to resume, checked field by field."""
    path = runs_dir() / f"{check_run_id(run_id)}.json"
    if not path.exists():
        raise RunFileError(f"--resume: no run {run_id!r} under {path.parent}")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:
        raise RunFileError(f"{path}: corrupt run file (not JSON: {str(exc)[:60]}); "
                           f"{_start_over(run_id)}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise RunFileError(f"{path}: corrupt run file ({problem}); {_start_over(run_id)}")
    return manifest


def _manifest_problem(m: Any) -> str | None:
    if not isinstance(m, dict):
        return "not a JSON object"
    expected = {"recipe": str, "overrides": list, "rows": list, "finished": dict}
    for key, kind in expected.items():
        if not isinstance(m.get(key), kind):
            return f"{key!r} missing or not a {kind.__name__}"
    if not all(isinstance(o, str) for o in m["overrides"]):
        return "'overrides' must be strings"
    for i, row in enumerate(m["rows"]):
        if not (isinstance(row, dict) and "answer" in row and isinstance(row.get("question"), str)
                and isinstance(row.get("id"), (str, int))
                and isinstance(row.get("context"), (str, type(None)))):
            return f"rows[{i}] is not a question row"
    if not all(isinstance(v, dict) and isinstance(v.get("answer"), (dict, type(None)))
               for v in m["finished"].values()):
        return "'finished' holds a row that is not a result"
    return None


def check_stores(run_id: str) -> None:
    """Each call-cache file of the run opens and has its tables (SQLite's quick check)."""
    folder = runs_dir()
    for path in [folder / f"{run_id}.sqlite", *folder.glob(f"{run_id}.*.sqlite")]:
        if not path.exists():
            continue
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                ok = db.execute("PRAGMA quick_check").fetchone()[0]
                tables = {r[0] for r in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")}
            finally:
                db.close()
        except sqlite3.Error as exc:
            ok, tables = str(exc), _TABLES
        if ok != "ok" or not _TABLES <= tables:
            what = ok if ok != "ok" else "tables missing"
            raise RunFileError(f"{path}: corrupt run file ({what[:80]}); {_start_over(run_id)}")
