"""Sampling baselines: best-of-n generation and self-consistency (majority over extracted
answers, Wang et al. 2022)."""
from __future__ import annotations


from typing import Sequence

from pydantic import Field

from reasonloom.backends.base import GenerateRequest, Sample
from reasonloom.orchestrator.context import RunContext
from reasonloom.orchestrator.degrade import gather_tolerant
from reasonloom.orchestrator.registry import register_node
from reasonloom.orchestrator.seeds import derive_seed
from reasonloom.orchestrator.types import (Answer, Candidate, Candidates, FrozenModel, Problem,
                                           Usage)
from reasonloom.prompts import DEFAULT_SYSTEM, problem_messages, use_n_sampling
from reasonloom.verifiers.answers import extract_answer, majority_answer


class SampleConfig(FrozenModel):
    """n samples of one prompt from one role (the backend's `n` where it has it)."""

    role: str = "strongest"
    n: int = Field(4, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    system: str | None = DEFAULT_SYSTEM
    stream_answer: bool = False   # stream the (single) sample as the run's answer
    may_fail: int = Field(0, ge=0)   # samples that may fail (one call each) without failing
    # Samples shared by name: sample i of pool P is one request seeded by (run seed, P, i), so
    # every node (and, through a shared cache, every run) that names P reads the same samples.
    pool: str | None = None
    confidence_k: int | None = Field(None, ge=1, le=20)   # token confidence from the top-k


def sample_request(problem: Problem, cfg: SampleConfig) -> GenerateRequest:
    return GenerateRequest(messages=problem_messages(problem, cfg.system), n=1,
                           temperature=cfg.temperature, top_p=cfg.top_p,
                           max_tokens=cfg.max_tokens, confidence_k=cfg.confidence_k)


def pool_seed(ctx: RunContext, pool: str, index: int) -> int:
    """Sample `index` of a named pool: the same seed in every node that names the pool."""
    return derive_seed(ctx.state.seed, f"pool:{pool}", "samples", index)


async def draw_samples(problem: Problem, cfg: SampleConfig, ctx: RunContext, start: int,
                       count: int, call_key: str = "samples") -> list[Sample]:
    """Samples start .. start+count-1, one request each, sent together (they share the
    prompt, so the engine prefills it once). Indices, not calls, fix each sample's seed, so
    drawing in waves gives the samples one n-request would have given."""
    role = ctx.roles.pick(cfg.role)
    req = sample_request(problem, cfg)

    def seed(i: int) -> int:
        return pool_seed(ctx, cfg.pool, i) if cfg.pool else ctx.seed(call_key, i)

    gens = await gather_tolerant(ctx, {
        f"{call_key}/{i}": ctx.generate(role, req.model_copy(update={"seed": seed(i)}),
                                        f"{call_key}/{i}")
        for i in range(start, start + count)}, may_fail=cfg.may_fail)
    return [gen.samples[0] for gen in gens.values()]


def candidates_of(samples: Sequence[Sample], role: str, start: int = 0) -> Candidates:
    return Candidates(Candidate(text=s.text, answer=extract_answer(s.text), role=role,
                                usage=Usage(calls=1, completion_tokens=s.completion_tokens),
                                details={"sample": start + i})
                      for i, s in enumerate(samples))


async def sample_candidates(problem: Problem, cfg: SampleConfig, ctx: RunContext,
                            call_key: str = "samples") -> Candidates:
    role = ctx.roles.pick(cfg.role)
    if cfg.pool or cfg.confidence_k:
        return candidates_of(await draw_samples(problem, cfg, ctx, 0, cfg.n, call_key),
                             role.name)
    req = GenerateRequest(messages=problem_messages(problem, cfg.system), n=cfg.n,
                          temperature=cfg.temperature, top_p=cfg.top_p,
                          max_tokens=cfg.max_tokens)
    if (role.backend.capabilities.n and use_n_sampling(ctx.shaping)) or cfg.n == 1:
        gen = await ctx.generate(role, req, call_key)
        texts = gen.texts
    else:   # a server without `n` (or shaping off): one recorded call per sample, together
        gens = await gather_tolerant(ctx, {
            f"{call_key}/{i}": ctx.generate(
                role, req.model_copy(update={"n": 1, "seed": ctx.seed(call_key, i)}),
                f"{call_key}/{i}") for i in range(cfg.n)}, may_fail=cfg.may_fail)
        texts = [t for gen in gens.values() for t in gen.texts]
    return Candidates(Candidate(text=t, answer=extract_answer(t), role=role.name) for t in texts)


@register_node("best_of_n", SampleConfig, inputs={"problem": "problem"},
               outputs={"candidates": "candidates"})
async def best_of_n(inputs: dict, cfg: SampleConfig, ctx: RunContext) -> dict:
    return {"candidates": await sample_candidates(inputs["problem"], cfg, ctx)}


@register_node("generate", SampleConfig, inputs={"problem": "problem"},
               outputs={"answer": "answer", "candidates": "candidates"})
async def generate(inputs: dict, cfg: SampleConfig, ctx: RunContext) -> dict:
    """One role answers directly; with `stream_answer` its tokens stream to the caller."""
    problem: Problem = inputs["problem"]
    if cfg.stream_answer and cfg.n == 1:
        req = GenerateRequest(messages=problem_messages(problem, cfg.system), n=1,
                              temperature=cfg.temperature, top_p=cfg.top_p,
                              max_tokens=cfg.max_tokens)
        text = ""
        async for delta in ctx.stream(ctx.roles.pick(cfg.role), req, "answer", answer=True):
            text += delta.text
        cands = Candidates([Candidate(text=text, answer=extract_answer(text), role=cfg.role)])
    else:
        cands = await sample_candidates(problem, cfg, ctx)
    first = cands[0]
    return {"answer": Answer(text=first.text, answer=first.answer, candidates=list(cands)),
            "candidates": cands}


class MajorityConfig(FrozenModel):
    """Self-consistency's selection step: the most frequent extracted answer wins."""


def majority_pick(candidates: Candidates) -> Answer:
    answer, supporters = majority_answer(candidates)
    chosen = supporters[0] if supporters else candidates[0]
    return Answer(text=chosen.text, answer=answer, candidates=list(candidates),
                  details={"votes": len(supporters), "samples": len(candidates)})


@register_node("majority", MajorityConfig, inputs={"candidates": "candidates"},
               outputs={"answer": "answer"})
async def majority(inputs: dict, cfg: MajorityConfig, ctx: RunContext) -> dict:
    return {"answer": majority_pick(Candidates(inputs["candidates"]))}


@register_node("self_consistency", SampleConfig, inputs={"problem": "problem"},
               outputs={"answer": "answer", "candidates": "candidates"})
async def self_consistency(inputs: dict, cfg: SampleConfig, ctx: RunContext) -> dict:
    cands = await sample_candidates(inputs["problem"], cfg, ctx)
    return {"answer": majority_pick(cands), "candidates": cands}
