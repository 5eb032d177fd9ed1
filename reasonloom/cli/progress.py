"""The rich progress display: an event subscriber (the runtime itself knows no screen)."""
from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.live import Live
from rich.text import Text

from reasonloom.orchestrator.events import Event


class ProgressDisplay:
    """Nodes running/done, calls in flight, tokens and dollars, on stderr when it is a terminal."""

    def __init__(self, label: str = "", enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.label = label
        self.running: set[str] = set()
        self.done = 0
        self.calls = 0
        self.tokens = 0
        self.dollars = 0.0
        self.answer_chars = 0
        self.started = time.time()
        self._live: Live | None = None

    def __enter__(self) -> "ProgressDisplay":
        if self.enabled:
            self._live = Live(self._render(), console=Console(stderr=True),
                              refresh_per_second=8, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def __call__(self, event: Event) -> None:
        kind = event.kind
        if kind == "node_started" and event.node:
            self.running.add(event.node)
        elif kind in ("node_finished", "node_failed") and event.node:
            self.running.discard(event.node)
            self.done += 1
        elif kind == "call_finished":
            self.calls += 1
            self.tokens += event.data.get("prompt_tokens", 0) + event.data.get(
                "completion_tokens", 0)
            self.dollars += event.data.get("cost_usd", 0.0)
        elif kind == "token_delta" and event.data.get("answer"):
            self.answer_chars += len(event.data.get("text", ""))
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Text:
        running = ", ".join(sorted(self.running)) or "-"
        return Text(f"{self.label} running: {running} | nodes done {self.done} | calls "
                    f"{self.calls} | tokens {self.tokens} | ${self.dollars:.6f} | "
                    f"{time.time() - self.started:.1f}s", style="cyan")
