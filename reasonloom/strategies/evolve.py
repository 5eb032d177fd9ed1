"""Squeeze Evolve (arXiv 2604.07725): verifier-free evolution with multi-model routing.

Loop 1 writes a population of N candidates with the strongest role. Every later loop draws N
groups of k distinct candidates, reads each group's fitness without a verifier (a cheap
scorer's confidence in its members, or, with no log-probs, how much they disagree), and sends
each group to ONE role for recombination into one new candidate: the least confident groups to
the strongest role, the most confident to the cheapest. The new population replaces the old;
the final answer is a majority vote over the last population's extracted answers.
The single-model baseline (RSA) is the same node with one role.

Example:
    >>> import asyncio
    >>> from reasonloom import Graph, Role, Roles, RoleSpec, run
    >>> from reasonloom.backends.scripted import ScriptedBackend
    >>> roles = Roles({"strong": Role(RoleSpec(name="strong", price_out_per_m=8.0), ScriptedBackend()),
    ...                "cheap": Role(RoleSpec(name="cheap", price_out_per_m=1.0), ScriptedBackend())})
    >>> g = Graph().add("evolve", "evolve", {"population": 4, "group_size": 2, "loops": 2,
    ...                                      "cut_points": [50]}).set_output("evolve")
    >>> result = asyncio.run(run(g, "What is 2 + 3?", roles, seed=0))
    >>> sum(result.answer.details["routing"].values())   # loop 2: one recombination per group
    4
"""
from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from reasonloom.backends.base import GenerateRequest
from reasonloom.orchestrator.context import RunContext
from reasonloom.orchestrator.registry import register_node
from reasonloom.orchestrator.roles import Role
from reasonloom.orchestrator.types import Answer, Candidate, Candidates, FrozenModel, Problem
from reasonloom.strategies.evolve_fitness import (Member, candidate_confidences,
                                                  diversity_fitness, form_groups,
                                                  group_confidence, member_answer, needs_fitness,
                                                  percentile_thresholds, route_by_percentile)
from reasonloom.prompts import DEFAULT_SYSTEM, canonical_order, problem_messages, with_candidates
from reasonloom.strategies.sampling import SampleConfig, sample_candidates
from reasonloom.verifiers.answers import canonical, extract_answer, majority_answer

Fitness = Literal["confidence", "diversity"]

RECOMBINE = ("Above are {k} candidate solutions to this problem; some of them may be wrong. "
             "Check each against the problem, keep the sound steps, fix or drop the mistakes, and "
             "where they disagree work out which one is right; if all are wrong, solve it another "
             "way. Write one improved, complete solution, and give the final answer on the last "
             "line as 'The answer is X.'")
REFINE = ("Above is a candidate solution to this problem; it may be wrong. Check it against the "
          "problem, fix its mistakes or start over if it is wrong. Write one improved, complete "
          "solution, and give the final answer on the last line as 'The answer is X.'")


class EvolveConfig(FrozenModel):
    """Squeeze Evolve's hyper-parameters; defaults are the paper's unless noted."""

    population: int = Field(16, ge=1)        # N: candidates per loop, and groups per loop
    group_size: int = Field(4, ge=1)         # k: distinct members per group
    loops: int = Field(10, ge=1)             # T, counting the first (the initial population)
    cut_points: tuple[float, ...] = (10.0,)
    """Percentiles of a loop's group fitness, one fewer than `roles`, non-decreasing: groups at
    or below the first go to the strongest role, ... above the last to the cheapest. (0,) =
    the strong role only writes loop 1. Unused with a single role."""
    roles: tuple[str, ...] | None = None
    """The roles recombinations are routed to, strongest first (default: the recipe's ranking)."""
    scorer: str = "cheapest"                 # reads confidences; the paper's cross-model scorer
    initial_role: str = "strongest"          # writes loop 1: the strongest predictor of accuracy
    fitness: Fitness = "confidence"          # falls back to diversity without log-probs
    top_k: int = Field(20, ge=1, le=20)      # prompt log-probs per token for the confidence
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(8192, ge=1)      # the reference code's default
    system: str | None = DEFAULT_SYSTEM

    @field_validator("cut_points")
    @classmethod
    def _percentiles(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 <= p <= 100 for p in v) or list(v) != sorted(v):
            raise ValueError(f"cut points must be non-decreasing percentiles in [0, 100], got {v}")
        return v

    @model_validator(mode="after")
    def _groups_fit(self) -> "EvolveConfig":
        if self.group_size > self.population:
            raise ValueError(f"group_size {self.group_size} exceeds population "
                             f"{self.population}: a group holds k DISTINCT candidates")
        return self


class LoopRecord(BaseModel):
    """What one loop did: its groups, their fitness and where each one was sent."""

    loop: int
    groups: list[list[int]] = Field(default_factory=list)   # member indices in the previous loop
    fitness: list[float] | None = None   # None: the cut points fixed the routing, nothing scored
    fitness_kind: Fitness | None = None
    thresholds: list[float] = Field(default_factory=list)
    routes: list[str] = Field(default_factory=list)         # the role of each group (loop 1: writers)


class EvolveResult(BaseModel):
    answer: Answer
    population: list[Candidate]
    loops: list[LoopRecord]
    routing: dict[str, int]                 # role -> recombinations it made


async def evolve(problem: Problem, cfg: EvolveConfig, ctx: RunContext) -> EvolveResult:
    ranked = _ranked_roles(cfg, ctx)
    cut_points = cfg.cut_points if len(ranked) > 1 else ()
    scorer = _pick(cfg.scorer, ranked, ctx)
    kind: Fitness = cfg.fitness
    population = await initial_population(problem, _pick(cfg.initial_role, ranked, ctx), cfg, ctx)
    history = [LoopRecord(loop=1, routes=[m.candidate.role or "" for m in population])]
    ctx.publish_best(vote(population))
    for loop in range(2, cfg.loops + 1):
        groups = form_groups(len(population), cfg.group_size, cfg.population, ctx.rng)
        fitness: list[float] | None = None
        if needs_fitness(cut_points):
            fitness, kind = await group_fitness(population, groups, scorer, kind, cfg, ctx, loop)
        routes = route_by_percentile(fitness or [0.0] * len(groups), ranked, cut_points)
        population = await recombine_all(problem, population, groups, routes, cfg, ctx, loop)
        history.append(LoopRecord(
            loop=loop, groups=[list(g) for g in groups], fitness=fitness,
            fitness_kind=kind if fitness is not None else None, routes=[r.name for r in routes],
            thresholds=percentile_thresholds(fitness, cut_points) if fitness else []))
        ctx.emit("evolve_loop", loop=loop, routes=history[-1].routes)
        ctx.publish_best(vote(population))
    if kind == "confidence":
        await score_tied_leaders(population, scorer, cfg, ctx)
    routing = {r.name: sum(rec.routes.count(r.name) for rec in history[1:]) for r in ranked}
    answer = vote(population)
    answer.details.update(routing=routing, loops=[rec.model_dump() for rec in history],
                          fitness=kind, initial_role=history[0].routes[0] if population else None)
    return EvolveResult(answer=answer, population=answer.candidates, loops=history,
                        routing=routing)


async def initial_population(problem: Problem, role: Role, cfg: EvolveConfig,
                             ctx: RunContext) -> list[Member]:
    """Loop 1: N independent samples of the plain problem, one n-sampling request."""
    sampling = SampleConfig(role=role.name, n=cfg.population, temperature=cfg.temperature,
                            top_p=cfg.top_p, max_tokens=cfg.max_tokens, system=cfg.system)
    candidates = await sample_candidates(problem, sampling, ctx, call_key="loop1/initial")
    prompt = problem_messages(problem, cfg.system)
    for c in candidates:
        c.details["loop"] = 1
    return [Member(c, prompt) for c in candidates]


async def group_fitness(population: list[Member], groups: list[tuple[int, ...]], scorer: Role,
                        kind: Fitness, cfg: EvolveConfig, ctx: RunContext, loop: int
                        ) -> tuple[list[float], Fitness]:
    """Each group's fitness (higher = more confident), and the fitness actually used: a scorer
    without log-probs switches the run to the diversity fallback for good."""
    if kind == "confidence":
        members = sorted({i for g in groups for i in g})   # each candidate is scored once
        conf = await candidate_confidences(ctx, scorer, population, members, f"loop{loop}",
                                           cfg.top_k)
        if conf is not None:
            for i, value in conf.items():
                population[i].candidate.score = value
            return [group_confidence([conf[i] for i in g]) for g in groups], kind
        ctx.emit("evolve_fallback", loop=loop, scorer=scorer.name,
                 reason="scorer has no prompt log-probs: diversity fitness")
    return [diversity_fitness([member_answer(population[i]) for i in g]) for g in groups], \
        "diversity"


async def recombine_all(problem: Problem, population: list[Member], groups: list[tuple[int, ...]],
                        routes: list[Role], cfg: EvolveConfig, ctx: RunContext,
                        loop: int) -> list[Member]:
    """Every group becomes ONE new candidate, written by its routed role; all at once."""

    async def recombine(g: int, group: tuple[int, ...], role: Role) -> Member:
        # members in one canonical order: groups that share members share a longer prefix
        texts = [population[i].candidate.text for i in canonical_order(group, ctx.shaping)]
        instruction = RECOMBINE.format(k=len(texts)) if len(texts) > 1 else REFINE
        prompt = with_candidates(problem, texts, instruction, system=cfg.system)
        req = GenerateRequest(messages=prompt, n=1, temperature=cfg.temperature,
                              top_p=cfg.top_p, max_tokens=cfg.max_tokens)
        text = (await ctx.generate(role, req, f"loop{loop}/group{g}")).texts[0]
        child = Candidate(text=text, answer=extract_answer(text), role=role.name,
                          details={"loop": loop, "group": g, "parents": list(group)})
        return Member(child, prompt)

    return list(await asyncio.gather(*(recombine(g, group, role) for g, (group, role)
                                       in enumerate(zip(groups, routes)))))


async def score_tied_leaders(population: list[Member], scorer: Role, cfg: EvolveConfig,
                             ctx: RunContext) -> None:
    """The vote's tie-break is mean confidence: score the final candidates only when the top
    answers tie (the last population is otherwise never scored, and need not be)."""
    backers: dict[str, list[int]] = {}
    for i, member in enumerate(population):
        answer = member_answer(member)
        if answer is not None:
            backers.setdefault(canonical(answer), []).append(i)
    top = max((len(v) for v in backers.values()), default=0)
    leaders = [v for v in backers.values() if len(v) == top]
    if len(leaders) < 2:
        return
    tied = [i for v in leaders for i in v]
    conf = await candidate_confidences(ctx, scorer, population, tied, "final", cfg.top_k)
    for i, value in (conf or {}).items():
        population[i].candidate.score = value


def vote(population: list[Member]) -> Answer:
    """Majority over EXTRACTED answers (not whole texts); ties go to the higher mean confidence."""
    candidates = Candidates(m.candidate for m in population)
    answer, backers = majority_answer(candidates, tie_break=_mean_confidence)
    chosen = backers[0] if backers else (candidates[0] if candidates else Candidate(text=""))
    return Answer(text=chosen.text, answer=answer, candidates=list(candidates),
                  details={"votes": len(backers), "population": len(candidates)})


def _mean_confidence(backers: list[Candidate]) -> float:
    scores = [c.score for c in backers if c.score is not None]
    return sum(scores) / len(scores) if scores else float("-inf")


def _ranked_roles(cfg: EvolveConfig, ctx: RunContext) -> list[Role]:
    ranked = [ctx.roles[name] for name in cfg.roles] if cfg.roles else ctx.roles.by_strength
    if not ranked:
        raise ValueError("evolve: no roles to route recombinations to")
    if len(ranked) > 1 and len(cfg.cut_points) != len(ranked) - 1:
        names = ", ".join(r.name for r in ranked)
        raise ValueError(f"evolve: {len(ranked)} roles ({names}) need {len(ranked) - 1} cut "
                         f"points, cut_points has {len(cfg.cut_points)}")
    return ranked


def _pick(name: str, ranked: list[Role], ctx: RunContext) -> Role:
    """"strongest"/"cheapest" mean the ends of THIS node's ranking (a single-cheap baseline
    writes loop 1 with its cheap role); other names are the recipe's roles."""
    if name == "strongest":
        return ranked[0]
    if name == "cheapest":
        return ranked[-1]
    return ctx.roles[name]


@register_node("evolve", EvolveConfig, inputs={"problem": "problem"},
               outputs={"answer": "answer", "candidates": "candidates"})
async def evolve_node(inputs: dict, cfg: EvolveConfig, ctx: RunContext) -> dict:
    result = await evolve(inputs["problem"], cfg, ctx)
    return {"answer": result.answer, "candidates": Candidates(result.population)}
