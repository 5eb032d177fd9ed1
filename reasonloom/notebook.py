"""`Recipe.run` in a Jupyter notebook: a progress bar of the recipe's nodes with the calls,
tokens and dollars so far, drawn with IPython's display updates (a kernel needs no widget
library for them; plain-text frontends get the same line as text)."""
from __future__ import annotations

import sys
import time
from html import escape
from typing import Any

from reasonloom.orchestrator.events import Event


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's kernel shell), false in a terminal IPython or a
    plain interpreter. IPython is only looked at where the caller already imported it."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


class NotebookProgress:
    """Counts a run's events (called on the run's loop thread: it only counts) and is the
    object a cell displays; the caller's thread redraws it (`refresh`) while it waits."""

    def __init__(self, label: str, nodes: int):
        self.label = label
        self.nodes = nodes
        self.finished: list[str] = []
        self.running: dict[str, None] = {}   # insertion-ordered set
        self.totals = {"calls": 0, "tokens": 0, "answer_chars": 0}
        self.dollars = 0.0
        self.status = "running"
        self.t0 = time.monotonic()
        self.elapsed = 0.0
        self._handle: Any = None

    def __call__(self, event: Event) -> None:
        data = event.data
        if event.kind == "node_started":
            self.running[event.node or ""] = None
        elif event.kind in ("node_finished", "node_failed"):
            self.running.pop(event.node or "", None)
            self.finished.append(event.node or "")
        elif event.kind == "call_finished":
            self.totals["calls"] += 1
            self.totals["tokens"] += data.get("prompt_tokens", 0) + data.get(
                "completion_tokens", 0)
            self.dollars += data.get("cost_usd", 0.0)
        elif event.kind == "token_delta" and data.get("answer"):
            self.totals["answer_chars"] += len(data.get("text", ""))
        elif event.kind == "run_finished":
            self.status = data.get("status", "done")

    def line(self) -> str:
        running = ", ".join(self.running) or "-"
        return (f"{self.label}: nodes {len(self.finished)}/{self.nodes} | running {running} | "
                f"calls {self.totals['calls']} | tokens {self.totals['tokens']} | answer "
                f"{self.totals['answer_chars']} chars | ${self.dollars:.6f} | "
                f"{self.elapsed:.1f} s | {self.status}")

    def __repr__(self) -> str:
        return self.line()

    def _repr_html_(self) -> str:
        return (f'<div class="reasonloom-progress"><progress value="{len(self.finished)}" '
                f'max="{max(self.nodes, 1)}" style="width:16em;vertical-align:middle">'
                f"</progress> <code>{escape(self.line())}</code></div>")

    def show(self) -> None:
        from IPython.display import display

        self._handle = display(self, display_id=True)

    def refresh(self, status: str | None = None) -> None:
        self.elapsed = time.monotonic() - self.t0
        if status is not None:
            self.status = status
        if self._handle is not None:
            self._handle.update(self)
