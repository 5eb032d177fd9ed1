"""What a durable run keeps for `reasonloom report`: the graph it ran, the problem, every event
except token deltas (node start/finish/failure, each call, the strategies' own decision events),
every ledger record, and its summary (status, answer, time, tokens, dollars). Saved once,
when the run ends (ok, failed, over budget or cancelled), in the run's own SQLite file (meta
key `run_record`); a run without a run file (`cache="off"`, the Python API's default) keeps
nothing."""
from __future__ import annotations

import json
from typing import Any

from reasonloom.orchestrator.events import Event
from reasonloom.orchestrator.graph import Graph, Source
from reasonloom.orchestrator.ledger import Ledger
from reasonloom.orchestrator.result import RunResult
from reasonloom.orchestrator.types import Problem

RECORD_KEY = "run_record"


def _source(ref: Source | list[Source]) -> str | list[str]:
    if isinstance(ref, list):
        return [f"{s.node}.{s.port}" for s in ref]
    return f"{ref.node}.{ref.port}"


def graph_outline(graph: Graph) -> dict[str, Any]:
    """Each node's type, its parameters and where its inputs come from; the output port."""
    nodes = {name: {"type": spec.type.name,
                    "params": spec.config.model_dump(mode="json"),
                    "inputs": {port: _source(ref) for port, ref in spec.inputs.items()}}
             for name, spec in graph.nodes.items()}
    out = graph.output
    return {"nodes": nodes, "output": f"{out.node}.{out.port}" if out else None}


class RunRecorder:
    """An event subscriber that keeps what a report explains (token deltas are dropped: a
    streamed answer is in the outputs already)."""

    def __init__(self, run_id: str, graph: Graph, problem: Problem):
        self.run_id = run_id
        self.graph = graph   # outlined when the run ends: validation fills omitted ports
        self.problem = problem.model_dump(mode="json")
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: Event) -> None:
        if event.kind != "token_delta":
            self.events.append(event.to_json())

    def record(self, result: RunResult, ledger: Ledger) -> dict[str, Any]:
        """What the run file keeps: the run's summary (the same one a notebook shows for the
        result) beside the graph, the problem, the events and every call."""
        record = {"run_id": self.run_id, "problem": self.problem,
                  "graph": graph_outline(self.graph),
                  "summary": result.summary().model_dump(mode="json"),
                  "events": self.events, "calls": [rec.to_json() for rec in ledger.records]}
        # a strategy's event may carry a value JSON cannot hold: kept as its str()
        return json.loads(json.dumps(record, default=str))
