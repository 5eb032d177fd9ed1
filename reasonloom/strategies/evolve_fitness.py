"""Squeeze Evolve's selection, fitness and routing (arXiv 2604.07725, steps 1-4 of each loop).

Fitness is read so that HIGHER always means MORE CONFIDENT: the confidence fitness already is;
the diversity fallback is negated (more distinct answers = less confident). Routing then has
one direction for both: the least fit groups go to the strongest role.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Sequence, TypeVar

import numpy as np

from reasonloom.backends.base import TokenLogprob
from reasonloom.backends.errors import CapabilityMissing
from reasonloom.orchestrator.context import RunContext
from reasonloom.orchestrator.roles import Role
from reasonloom.orchestrator.types import Candidate, Message
from reasonloom.verifiers.answers import answer_of, canonical

R = TypeVar("R")


@dataclass(frozen=True)
class Member:
    """A candidate of the population and the prompt that produced it (what the scorer reads)."""

    candidate: Candidate
    prompt: tuple[Message, ...]


# -- selection -----------------------------------------------------------------------------
def form_groups(population_size: int, group_size: int, count: int,
                rng: random.Random) -> list[tuple[int, ...]]:
    """`count` groups of `group_size` DISTINCT members, each an independent uniform draw
    (the paper's `uniform` selection: a candidate may sit in several groups, or in none)."""
    if not 1 <= group_size <= population_size:
        raise ValueError(f"evolve: group_size {group_size} must be between 1 and the "
                         f"population size {population_size}")
    members = range(population_size)
    return [tuple(rng.sample(members, group_size)) for _ in range(count)]


# -- fitness -------------------------------------------------------------------------------
def token_confidence(top: Sequence[float]) -> float:
    """A token's confidence: the negated mean of its top-k log-probs (high = peaked)."""
    return -sum(top) / len(top) if top else 0.0


def candidate_confidence(tokens: Sequence[TokenLogprob]) -> float:
    """C(candidate) = mean over its tokens of the token confidence (-mean of the top-k
    log-probs, DeepConf-style). An empty candidate has no evidence: 0, the floor."""
    if not tokens:
        return 0.0
    return sum(token_confidence(t.top) for t in tokens) / len(tokens)


def group_confidence(member_confidences: Sequence[float]) -> float:
    """GC(group) = the mean of its members' confidences."""
    return sum(member_confidences) / len(member_confidences)


def distinct_answers(answers: Sequence[str | None]) -> int:
    """D(group): how many different extracted answers the group holds. A member without an
    answer agrees with nobody, so each one counts on its own."""
    keys = {canonical(a) for a in answers if a is not None}
    return len(keys) + sum(1 for a in answers if a is None)


def diversity_fitness(answers: Sequence[str | None]) -> float:
    """The no-log-probs fallback: -D(group). The reference code routes raw D low -> expensive,
    which sends consensus (easy) groups to the strongest model; negating D fixes the direction:
    MORE distinct answers = LESS confident = stronger role."""
    return -float(distinct_answers(answers))


async def candidate_confidences(ctx: RunContext, scorer: Role, population: Sequence[Member],
                                indices: Sequence[int], call_prefix: str, top_k: int = 20
                                ) -> dict[int, float] | None:
    """Each listed member's confidence, read by `scorer` through prefill-only top-k prompt
    log-probs of the candidate's text, conditioned on the prompt that produced it.
    None when the scorer cannot return log-probs (the caller falls back to diversity)."""
    if not scorer.backend.capabilities.prompt_logprobs:
        return None

    async def score(i: int) -> float:
        member = population[i]
        tokens = await ctx.prompt_logprobs(scorer, member.prompt, member.candidate.text,
                                           f"{call_prefix}/score{i}", top_k=top_k)
        return candidate_confidence(tokens)

    scored = await asyncio.gather(*(score(i) for i in indices), return_exceptions=True)
    for outcome in scored:
        if isinstance(outcome, CapabilityMissing):
            return None
        if isinstance(outcome, BaseException):
            raise outcome
    return dict(zip(indices, scored))


def member_answer(member: Member) -> str | None:
    return answer_of(member.candidate)


# -- routing -------------------------------------------------------------------------------
def percentile_thresholds(fitness: Sequence[float], cut_points: Sequence[float]) -> list[float]:
    """Each cut point as a threshold on THIS problem's group fitnesses. A cut point <= 0 lies
    below every group (its role gets none), one >= 100 above every group (it takes the rest)."""
    values = np.asarray(fitness, dtype=float)
    out = []
    for p in cut_points:
        if p <= 0:
            out.append(float("-inf"))
        elif p >= 100:
            out.append(float("inf"))
        else:
            out.append(float(np.percentile(values, p)))
    return out


def route_by_percentile(fitness: Sequence[float], roles: Sequence[R],
                        cut_points: Sequence[float]) -> list[R]:
    """The role of each group. `roles` are ranked strongest -> cheapest and `cut_points`
    (one fewer, non-decreasing percentiles) split the fitness range into bands: a group with
    fitness <= the first threshold goes to roles[0], <= the second to roles[1], ..., above all
    thresholds to the cheapest. With cut points (10,), about the 10% least confident groups
    go to the strong role; with (0,), none do (the strong role only writes the first loop)."""
    if len(cut_points) != len(roles) - 1:
        raise ValueError(f"evolve: {len(roles)} roles need {len(roles) - 1} cut points, "
                         f"got {len(cut_points)}")
    if list(cut_points) != sorted(cut_points):
        raise ValueError(f"evolve: cut_points must not decrease, got {tuple(cut_points)}")
    if not fitness:
        return []
    thresholds = percentile_thresholds(fitness, cut_points)
    routes = []
    for f in fitness:
        band = next((i for i, t in enumerate(thresholds) if f <= t), len(thresholds))
        routes.append(roles[band])
    return routes


def needs_fitness(cut_points: Sequence[float]) -> bool:
    """Whether routing depends on fitness at all: cut points of only 0 and 100 fix every
    group's role in advance, so scoring calls would buy nothing."""
    return any(0 < p < 100 for p in cut_points)
