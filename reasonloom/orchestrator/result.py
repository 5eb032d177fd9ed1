"""The result of a run (DESIGN.md, "What the runtime guarantees")."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from reasonloom.orchestrator.ledger import UsageReport
from reasonloom.orchestrator.run_summary import NodeCost, RunSummary, summary_html
from reasonloom.orchestrator.types import Answer


class NodeFailure(BaseModel):
    node: str
    error: str
    cancelled_because: str | None = None   # the upstream node whose failure cancelled this one


class RunResult(BaseModel):
    run_id: str
    recipe: str | None = None              # the recipe's name, where a recipe ran
    answer: Answer | None
    outputs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    usage: UsageReport
    wall_s: float
    ttft_s: float | None = None
    events: list[dict[str, Any]] = Field(default_factory=list)
    status: str = "ok"                     # ok | failed | budget_exceeded
    failures: list[NodeFailure] = Field(default_factory=list)
    dropped: list[dict[str, Any]] = Field(default_factory=list)   # calls a strategy let fail

    def summary_json(self) -> dict[str, Any]:
        """What the CLI's --json prints: everything but the raw outputs and events."""
        return self.model_dump(mode="json", exclude={"outputs", "events"})

    def summary(self) -> RunSummary:
        """Recipe, answer, status, time, calls, tokens and dollars per node (run_summary.py)."""
        answer = self.answer
        return RunSummary(
            run_id=self.run_id, recipe=self.recipe, status=self.status,
            answer=answer.answer if answer else None, answer_text=answer.text if answer else "",
            wall_s=self.wall_s, ttft_s=self.ttft_s, total=self.usage.total,
            nodes=tuple(NodeCost(node=name, usage=usage)
                        for name, usage in self.usage.by_node.items()),
            failures=tuple(f"{f.node}: {f.error}" for f in self.failures
                           if f.cancelled_because is None))

    def _repr_html_(self) -> str:   # Jupyter shows this for a cell whose value is a result
        return summary_html(self.summary())


class RunFailed(Exception):
    """A node the answer depends on failed; `result` keeps every finished output."""

    def __init__(self, message: str, result: RunResult):
        super().__init__(message)
        self.result = result
