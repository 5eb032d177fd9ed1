"""The opt-in call cache and run state: one SQLite file per run under $REASONLOOM_HOME/runs/,
and optionally a shared call cache that many runs and processes read and write.

Key = role's model id + engine-config hash + full request + sample index + seed, so a
different engine or a different sample never reads another's result.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator

from reasonloom.orchestrator.types import FrozenModel

# off: nothing; record: write this run's calls (what --resume reads) without reading;
# read_write: reuse any recorded call; replay: recorded calls only, a miss is an error.
CacheMode = Literal["off", "record", "read_write", "replay"]


def reasonloom_home() -> Path:
    return Path(os.environ.get("REASONLOOM_HOME", Path.home() / ".cache" / "reasonloom"))


def default_shared_cache() -> Path:
    """Where `--cache` with no path and `reasonloom cache` look."""
    return reasonloom_home() / "cache.sqlite"


class CacheSpec(FrozenModel):
    """A recipe's `cache:`: a mode alone (`cache: read_write`: the run's own file), or
    `{mode, path}`: a store shared by every run and process that names the same path."""

    mode: CacheMode = "off"
    path: str | None = None

    @field_validator("path")
    @classmethod
    def _expanded(cls, value: str | None) -> str | None:
        return None if value is None else str(Path(value).expanduser())

    @classmethod
    def of(cls, value: "CacheSpec | str | dict") -> "CacheSpec":
        return value if isinstance(value, CacheSpec) else (
            cls(mode=value) if isinstance(value, str) else cls.model_validate(value))

    def shared(self, path: str | Path | None = None) -> "CacheSpec":
        """This spec pointed at a shared store; a mode that never reads becomes read_write."""
        mode = self.mode if self.mode in ("read_write", "replay") else "read_write"
        return CacheSpec(mode=mode, path=str(path or self.path or default_shared_cache()))


def runs_dir() -> Path:
    path = reasonloom_home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(model_id: str, config_hash: str, request: dict[str, Any], sample_index: int,
              seed: int | None) -> str:
    body = json.dumps({"model": model_id, "engine": config_hash, "request": request,
                       "sample": sample_index, "seed": seed}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


class CacheMiss(Exception):
    """Replay mode met a call it has no record of."""


class RunStore:
    """SQLite file holding the call cache and finished node outputs of one run.

    Every write is its own committed transaction, so a killed process leaves a consistent file.
    """

    def __init__(self, path: Path, mode: CacheMode = "read_write"):
        self.path = Path(path)
        self.mode = mode
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=30)   # other processes may hold the write lock
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, value TEXT)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS node_outputs (node TEXT PRIMARY KEY, value TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")

    @classmethod
    def for_run(cls, run_id: str, mode: CacheMode = "read_write") -> "RunStore":
        return cls(runs_dir() / f"{run_id}.sqlite", mode)

    @property
    def reads(self) -> bool:
        return self.mode in ("read_write", "replay")

    def get(self, key: str) -> dict[str, Any] | None:
        if not self.reads:
            return None
        with self._lock:
            row = self._db.execute("SELECT value FROM calls WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        if self.mode == "replay":
            return
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO calls VALUES (?, ?)",
                             (key, json.dumps(value)))

    def put_node_output(self, node: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO node_outputs VALUES (?, ?)",
                             (node, json.dumps(value)))

    def node_outputs(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT node, value FROM node_outputs").fetchall()
        return {node: json.loads(value) for node, value in rows}

    def set_meta(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                             (key, json.dumps(value)))

    def get_meta(self, key: str) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def count_calls(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SharedCache(RunStore):
    """A call cache shared by many runs and processes (`--cache PATH`): one pool of samples
    feeds every strategy that asks for the same requests. It holds calls only; each run's node
    outputs stay in that run's own file."""

    def __init__(self, path: Path, mode: CacheMode = "read_write"):
        super().__init__(path, mode)
        os.chmod(self.path, 0o600)

    def put_node_output(self, node: str, value: dict[str, Any]) -> None:
        return None


class TieredStore:
    """A run's own file in front of a shared call cache. The run's file keeps what `--resume`
    reads (its calls and node outputs); a call is looked up in the run's file, then in the
    shared cache, and written to both."""

    def __init__(self, own: RunStore, shared: RunStore):
        self.own, self.shared = own, shared
        self.mode: CacheMode = "replay" if "replay" in (own.mode, shared.mode) else shared.mode

    @property
    def reads(self) -> bool:
        return self.own.reads or self.shared.reads

    def get(self, key: str) -> dict[str, Any] | None:
        hit = self.own.get(key)
        return hit if hit is not None else self.shared.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.own.put(key, value)
        self.shared.put(key, value)

    def put_node_output(self, node: str, value: dict[str, Any]) -> None:
        self.own.put_node_output(node, value)

    def close(self) -> None:   # the shared cache's owner closes it
        self.own.close()


def cache_stats(path: Path) -> dict[str, Any]:
    """Entries by model and kind, and the file's size: what `reasonloom cache stats` prints."""
    if not path.exists():
        return {"path": str(path), "exists": False, "calls": 0, "bytes": 0, "by_model": {}}
    store = RunStore(path, "read_write")
    try:
        with store._lock:
            rows = store._db.execute(
                "SELECT COALESCE(json_extract(value, '$.model'), '(not recorded)'), COUNT(*) FROM calls "
                "GROUP BY 1 ORDER BY 2 DESC").fetchall()
    finally:
        store.close()
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return {"path": str(path), "exists": True, "calls": sum(n for _, n in rows), "bytes": size,
            "by_model": {model: n for model, n in rows}}


def clear_cache(path: Path) -> int:
    """Delete every cached call; returns how many there were. Other processes may keep using
    the file (SQLite's locking): they simply miss from now on."""
    if not path.exists():
        return 0
    store = RunStore(path, "read_write")
    try:
        with store._lock:
            count = store._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
            store._db.execute("DELETE FROM calls")
            store._db.execute("VACUUM")
    finally:
        store.close()
    return count
