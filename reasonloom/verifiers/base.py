"""The Verifier seam (DESIGN.md, "The seams"): pointwise scores or pairwise comparisons.

A verifier never talks to a backend: its model calls go through the RunContext, so the ledger,
budget, cache, throttles and retries see every one. `call_key` is the logical label a call is
seeded from ("cand3", "r2/5v9"): the same comparison asked twice gets the same seed.

Example:
    >>> scores = await verifier.score(problem, candidates, ctx)      # PointwiseVerifier
    >>> r_a, r_b = await judge.compare(problem, cand_a, cand_b, ctx)  # PairwiseVerifier
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

from reasonloom.orchestrator.types import Answer, Candidate, Candidates, Problem
from reasonloom.verifiers.answers import answer_of

if TYPE_CHECKING:
    from reasonloom.orchestrator.context import RunContext


@runtime_checkable
class PointwiseVerifier(Protocol):
    """Scores each candidate on its own; higher = more likely correct (any scale)."""

    name: str

    async def score(self, problem: Problem, candidates: Sequence[Candidate], ctx: RunContext,
                    call_key: str = "score") -> list[float]: ...


@runtime_checkable
class PairwiseVerifier(Protocol):
    """Sees two candidates at once (`a` shown first) and rates each; higher = better.

    V1's judge rates on 1-10. One `compare` is one judge call: one comparison of a budget.
    """

    name: str

    async def compare(self, problem: Problem, a: Candidate, b: Candidate, ctx: RunContext,
                      call_key: str = "pair") -> tuple[float, float]: ...


Verifier = PointwiseVerifier | PairwiseVerifier


class PerCandidateVerifier:
    """Base for pointwise verifiers that look at one candidate at a time: the calls for all
    candidates go out concurrently (the role's throttle is the only limit)."""

    name = "per_candidate"

    async def score_one(self, problem: Problem, candidate: Candidate, ctx: RunContext,
                        call_key: str) -> float:
        raise NotImplementedError

    async def score(self, problem: Problem, candidates: Sequence[Candidate], ctx: RunContext,
                    call_key: str = "score") -> list[float]:
        return list(await asyncio.gather(*(
            self.score_one(problem, cand, ctx, f"{call_key}/{self.name}/c{i}")
            for i, cand in enumerate(candidates))))


def _rank_key(score: float | None) -> float:
    return float("-inf") if score is None or score != score else score   # NaN ranks last


def selection_outputs(candidates: Sequence[Candidate], scores: Sequence[float],
                      top_k: int | None = None, details: dict[str, Any] | None = None,
                      best: int | None = None) -> dict[str, Any]:
    """What every selecting node returns: `answer` (the best candidate; `best` overrides the
    argmax when a method has its own tie-break) and `candidates`: copies ranked by score
    (ties keep their order), the top `top_k` of them when given, each carrying its score."""
    if not candidates:
        raise ValueError("no candidates to select from")
    # `input_index`: where the candidate stood in the input (what a method's own log, e.g. V1's
    # comparisons, refers to) once the list is re-ranked
    scored = [c.model_copy(update={
        "score": float(s), "answer": answer_of(c), "details": {**c.details, "input_index": i}})
        for i, (c, s) in enumerate(zip(candidates, scores))]
    order = sorted(range(len(scored)), key=lambda i: -_rank_key(scored[i].score))
    if best is not None:
        order.remove(best)
        order.insert(0, best)
    ranked = Candidates(scored[i] for i in order)
    chosen = ranked[0]
    answer = Answer(text=chosen.text, answer=chosen.answer, candidates=list(ranked),
                    details={"index": order[0], **(details or {})})
    return {"answer": answer, "candidates": ranked if top_k is None else Candidates(ranked[:top_k])}
