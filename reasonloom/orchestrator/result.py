"""The result of a run (DESIGN.md, "What the runtime guarantees")."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from reasonloom.orchestrator.ledger import UsageReport
from reasonloom.orchestrator.types import Answer


class NodeFailure(BaseModel):
    node: str
    error: str
    cancelled_because: str | None = None   # the upstream node whose failure cancelled this one


class RunResult(BaseModel):
    run_id: str
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


class RunFailed(Exception):
    """A node the answer depends on failed; `result` keeps every finished output."""

    def __init__(self, message: str, result: RunResult):
        super().__init__(message)
        self.result = result
