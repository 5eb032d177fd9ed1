"""The ledger: one record per model-call attempt, with totals per node, per role, overall."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from reasonloom.orchestrator.types import Usage

CallKind = Literal["generate", "stream", "score"]


class CallRecord(BaseModel):
    node: str
    role: str
    model: str
    kind: CallKind
    call_key: str
    attempt: int = 1
    ok: bool = True
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    wasted_completion_tokens: int = 0   # tokens of a failed attempt (a cut stream): not output
    cost_usd: float = 0.0
    latency_s: float = 0.0
    ttft_s: float | None = None
    cache_hit: bool = False
    served_by: str | None = None
    seed: int | None = None
    n: int = 1

    def usage(self) -> Usage:
        return Usage(calls=1, prompt_tokens=self.prompt_tokens,
                     completion_tokens=self.completion_tokens,
                     cached_prompt_tokens=self.cached_prompt_tokens, cost_usd=self.cost_usd)


class UsageReport(BaseModel):
    total: Usage
    by_model: dict[str, Usage]   # keyed by ROLE name: two roles may share one model
    by_node: dict[str, Usage]


class Ledger:
    """Append-only record of every attempt; totals are derived, never kept separately."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def record(self, rec: CallRecord) -> None:
        self.records.append(rec)

    def report(self) -> UsageReport:
        total, by_role, by_node = Usage(), {}, {}
        for rec in self.records:
            u = rec.usage()
            total.add(u)
            by_role.setdefault(rec.role, Usage()).add(u)
            by_node.setdefault(rec.node, Usage()).add(u)
        return UsageReport(total=total, by_model=by_role, by_node=by_node)

    @property
    def cost_usd(self) -> float:
        return sum(r.cost_usd for r in self.records)
