"""The ledger: one record per model-call attempt, with totals per node, per role, overall."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from pydantic import BaseModel

from reasonloom.orchestrator.types import Usage

# "tokenize": a tokenizer call (encode or decode text), 0 model tokens: recorded and retried
# like the others because a served tokenizer is a network call.
CallKind = Literal["generate", "stream", "score", "tokenize"]


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


def _usage(records: list[CallRecord]) -> Usage:
    """The totals of some records: plain additions in record order (report() runs this over
    every record of big graphs, where pydantic or generic summing costs more than the run)."""
    cached = failed = prompt = completion = cached_prompt = tokenizer = 0
    replayed_prompt = replayed_completion = 0
    cost = replayed_cost = 0.0
    for rec in records:
        if rec.kind == "tokenize":
            tokenizer += 1
            continue
        cached += rec.cache_hit
        failed += not rec.ok
        prompt += rec.prompt_tokens
        completion += rec.completion_tokens
        cached_prompt += rec.cached_prompt_tokens
        cost += rec.cost_usd
        replayed_prompt += rec.replayed_prompt_tokens
        replayed_completion += rec.replayed_completion_tokens
        replayed_cost += rec.replayed_cost_usd
    # a tokenizer call (0 tokens, $0) is in the ledger, with its failed attempts, but it is not
    # a model call: Usage counts model calls only
    return Usage(calls=len(records) - tokenizer, cached_calls=cached, failed_calls=failed,
                 prompt_tokens=prompt, completion_tokens=completion,
                 cached_prompt_tokens=cached_prompt, cost_usd=cost,
                 replayed_prompt_tokens=replayed_prompt,
                 replayed_completion_tokens=replayed_completion, replayed_cost_usd=replayed_cost)


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
        by_role: dict[str, list[CallRecord]] = {}
        by_node: dict[str, list[CallRecord]] = {}
        for rec in self.records:
            by_role.setdefault(rec.role, []).append(rec)
            by_node.setdefault(rec.node, []).append(rec)
        return UsageReport(total=_usage(self.records),
                           by_model={k: _usage(v) for k, v in by_role.items()},
                           by_node={k: _usage(v) for k, v in by_node.items()})

    @property
    def cost_usd(self) -> float:
        return sum(r.cost_usd for r in self.records)
