"""Progress of a run's nodes, an event subscriber (the runtime itself knows no screen): on a
terminal a live view of the running nodes (rich), and on any stderr one line per finished
node with its answer, calls, tokens and time."""
from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from reasonloom.orchestrator.events import Event


@dataclass
class NodeProgress:
    type: str
    started: float
    calls: int = 0
    tokens: int = 0
    finished: float | None = None


class ProgressDisplay:
    """Writes to `console` (stderr's status console, reasonloom/cli/console.py)."""

    def __init__(self, console: Console, label: str = "", live: bool | None = None):
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.label = f"{label} " if label else ""
        self.nodes: dict[str, NodeProgress] = {}
        self._live: Live | None = None

    def __enter__(self) -> "ProgressDisplay":
        if self.live:
            self._live = Live(self._render(), console=self.console, refresh_per_second=8,
                              transient=True, redirect_stdout=False, redirect_stderr=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def __call__(self, event: Event) -> None:
        node = self.nodes.get(event.node or "")
        if event.kind == "node_started" and event.node:
            self.nodes[event.node] = NodeProgress(event.data.get("type", "?"), event.t)
        elif event.kind == "call_finished" and node is not None:
            node.calls += 1
            node.tokens += event.data.get("prompt_tokens", 0) + event.data.get(
                "completion_tokens", 0)
        elif event.kind in ("node_finished", "node_failed") and node is not None:
            node.finished = event.t
            self.console.print(self.finished_line(event.node or "", node, event))
        if self._live is not None:
            self._live.update(self._render())

    def finished_line(self, name: str, node: NodeProgress, event: Event) -> str:
        took = f"{node.calls} call{'s' * (node.calls != 1)}, {node.tokens} tokens, " \
               f"{(node.finished or event.t) - node.started:.1f} s"
        if event.kind == "node_failed":
            return f"{self.label}  x {name} ({node.type}) failed after {took}: " \
                   f"{str(event.data.get('error', ''))[:120]}"
        answer = event.data.get("answer")
        details = event.data.get("answer_details") or {}
        said = "" if answer is None else f"answer {answer}"
        if said and "votes" in details and "samples" in details:
            said += f" ({details['votes']} of {details['samples']} votes)"
        return f"{self.label}  - {name} ({node.type}): {said + ' | ' if said else ''}{took}"

    def _render(self) -> Group:
        now = time.time()
        rows = [Spinner("dots", Text(f"{self.label}{name} ({node.type}): {node.calls} calls, "
                                     f"{node.tokens} tokens, {now - node.started:.0f} s",
                                     style="cyan"))
                for name, node in self.nodes.items() if node.finished is None]
        return Group(*rows)
