"""The JSONL trace: an event subscriber that appends one JSON object per event."""
from __future__ import annotations

import json
from pathlib import Path
from typing import IO

from reasonloom.orchestrator.events import Event


class TraceWriter:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("a", encoding="utf-8")

    def __call__(self, event: Event) -> None:
        self._file.write(json.dumps(event.to_json(), default=str) + "\n")
        if event.kind in ("run_finished", "node_finished", "node_failed"):
            self._file.flush()

    def close(self) -> None:
        self._file.close()
