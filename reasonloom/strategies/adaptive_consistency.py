"""Adaptive-Consistency (Aggarwal et al., EMNLP 2023): self-consistency that stops sampling once
the vote is decided.

    samples <- []
    while |samples| < n_max:
        samples += a wave of w samples (one request each, sharing the prompt's prefix)
        v1, v2 <- the two largest answer counts
        if P(p1 > p2 | votes) >= threshold: stop       (Beta(v1 + 1, v2 + 1) posterior)
    return the majority answer

P(p1 > p2) is P(X > 1/2) for X ~ Beta(v1 + 1, v2 + 1), which for whole counts equals
P(Binomial(v1 + v2 + 1, 1/2) <= v1): exact, no sampling.

Example:
    >>> graph = Graph().add("vote", "adaptive_consistency", {"n": 16, "wave": 4})
"""
from __future__ import annotations

import math
from collections import Counter

from pydantic import Field

from reasonloom.orchestrator.context import RunContext
from reasonloom.orchestrator.registry import register_node
from reasonloom.orchestrator.types import Candidates
from reasonloom.strategies.sampling import SampleConfig, candidates_of, draw_samples, majority_pick
from reasonloom.verifiers.answers import canonical


class AdaptiveConsistencyConfig(SampleConfig):
    """Defaults: the paper's Beta criterion at 0.95; n is n_max."""

    n: int = Field(16, ge=1)              # n_max
    wave: int = Field(4, ge=1)            # samples drawn together before each check
    threshold: float = Field(0.95, gt=0.5, lt=1)


def beta_win_probability(leader_votes: int, runner_up_votes: int) -> float:
    """P(p1 > p2) under a uniform prior on the two leading answers' shares."""
    trials = leader_votes + runner_up_votes + 1
    return sum(math.comb(trials, j) for j in range(leader_votes + 1)) / 2 ** trials


def vote_decided(candidates: Candidates, threshold: float) -> tuple[bool, float]:
    counts = Counter(canonical(c.answer) for c in candidates if c.answer is not None)
    top = [v for _, v in counts.most_common(2)] + [0, 0]
    p_win = beta_win_probability(top[0], top[1])
    return p_win >= threshold, p_win


def representatives(candidates: Candidates) -> Candidates:
    """One candidate per distinct answer (its first sample), with the answer's vote count:
    what a pairwise selector downstream needs to compare."""
    first: dict[str, object] = {}
    votes: Counter = Counter()
    for cand in candidates:
        if cand.answer is None:
            continue
        key = canonical(cand.answer)
        votes[key] += 1
        first.setdefault(key, cand)
    reps = Candidates()
    for key, cand in first.items():
        reps.append(cand.model_copy(update={"details": {**cand.details, "votes": votes[key]}}))
    return reps


@register_node("adaptive_consistency", AdaptiveConsistencyConfig, inputs={"problem": "problem"},
               outputs={"answer": "answer", "candidates": "candidates",
                        "representatives": "candidates"})
async def adaptive_consistency(inputs: dict, cfg: AdaptiveConsistencyConfig,
                               ctx: RunContext) -> dict:
    problem = inputs["problem"]
    role = ctx.roles.pick(cfg.role).name
    cands, decided, p_win = Candidates(), False, 0.0
    while len(cands) < cfg.n and not decided:
        wave = min(cfg.wave, cfg.n - len(cands))
        cands.extend(candidates_of(await draw_samples(problem, cfg, ctx, len(cands), wave),
                                   role, len(cands)))
        decided, p_win = vote_decided(cands, cfg.threshold)
    answer = majority_pick(cands)
    answer.details.update({"p_win": round(p_win, 4), "stopped_early": len(cands) < cfg.n})
    return {"answer": answer, "candidates": cands, "representatives": representatives(cands)}
