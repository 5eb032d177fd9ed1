"""The ledger: one record per model-call attempt, with totals per node, per role, overall."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from pydantic import BaseModel

from reasonloom.orchestrator.types import Usage

CallKind = Literal["generate", "stream", "score"]


@dataclass(slots=True)
class CallRecord:
    """One attempt. A slotted dataclass, not a pydantic model: it is built on the hot path of
    every call (see benchmarks/overhead.py)."""

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
    replayed_prompt_tokens: int = 0       # a cache hit: the tokens the original call used
    replayed_completion_tokens: int = 0
    replayed_cost_usd: float = 0.0    # and what it cost
    served_by: str | None = None
    seed: int | None = None
    n: int = 1

    def usage(self) -> Usage:
        return Usage(calls=1, prompt_tokens=self.prompt_tokens,
                     completion_tokens=self.completion_tokens,
                     cached_prompt_tokens=self.cached_prompt_tokens, cost_usd=self.cost_usd)

    def to_json(self) -> dict:
        return asdict(self)


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
        # plain lists while summing: this runs over every record of big graphs
        zero = [0, 0, 0, 0, 0, 0, 0.0, 0, 0, 0.0]
        total = list(zero)
        by_role: dict[str, list] = {}
        by_node: dict[str, list] = {}
        for rec in self.records:
            row = (1, int(rec.cache_hit), int(not rec.ok), rec.prompt_tokens,
                   rec.completion_tokens, rec.cached_prompt_tokens, rec.cost_usd,
                   rec.replayed_prompt_tokens, rec.replayed_completion_tokens,
                   rec.replayed_cost_usd)
            for acc in (total, by_role.setdefault(rec.role, list(zero)),
                        by_node.setdefault(rec.node, list(zero))):
                for i, value in enumerate(row):
                    acc[i] += value

        def usage(acc: list) -> Usage:
            return Usage(calls=acc[0], cached_calls=acc[1], failed_calls=acc[2],
                         prompt_tokens=acc[3], completion_tokens=acc[4],
                         cached_prompt_tokens=acc[5], cost_usd=acc[6],
                         replayed_prompt_tokens=acc[7], replayed_completion_tokens=acc[8],
                         replayed_cost_usd=acc[9])

        return UsageReport(total=usage(total),
                           by_model={k: usage(v) for k, v in by_role.items()},
                           by_node={k: usage(v) for k, v in by_node.items()})

    @property
    def cost_usd(self) -> float:
        return sum(r.cost_usd for r in self.records)
