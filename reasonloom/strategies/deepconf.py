"""DeepConf (Fu et al., arXiv 2508.15260): self-consistency that trusts confident traces and
stops the others while they are still being written.

Offline: sample n traces, score each by its lowest group confidence (trace_confidence.py), keep
the top eta share, and take the confidence-weighted majority of the kept traces.

Online (the paper's Algorithm 2):
    warm-up: N_init full traces; threshold s = Percentile_(100-eta) of their lowest group confidence
    while traces < n and the weighted vote's leader holds < tau of the weight:
        start the next traces; stop each one the moment a window's confidence falls below s
        (the engine request is aborted; only the generated tokens are billed);
        a trace that finishes votes with weight = its lowest group confidence
    once the leader holds tau, traces still running are cancelled too.

Example:
    >>> graph = Graph().add("vote", "deepconf", {"mode": "online", "n": 16, "warmup": 4})
"""
from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import Field

from reasonloom.backends.base import Sample
from reasonloom.orchestrator.context import RunContext
from reasonloom.orchestrator.registry import register_node
from reasonloom.orchestrator.types import Answer, Candidate, Candidates, Problem, Usage
from reasonloom.orchestrator.watched import CANCELLED
from reasonloom.strategies.sampling import (SampleConfig, candidates_of, draw_samples, pool_seed,
                                            sample_request)
from reasonloom.strategies.trace_confidence import (WindowWatch, keep_threshold,
                                                    lowest_group_confidence, most_confident,
                                                    weighted_vote)
from reasonloom.verifiers.answers import canonical, extract_answer


class DeepConfConfig(SampleConfig):
    """Defaults follow the paper's DeepConf-low except the sizes, scaled to short traces and a
    budget of 16 (the paper: window 2048 tokens, N_init 16 of a budget of 512)."""

    n: int = Field(16, ge=1)                 # trace budget (offline: all of them are sampled)
    mode: Literal["offline", "online"] = "online"
    confidence_k: int | None = Field(5, ge=1, le=20)   # top-k log-probs per token confidence
    window: int = Field(64, ge=1)            # tokens per group
    keep_share: float = Field(0.1, gt=0, le=1)   # eta: 0.1 = DeepConf-low, 0.9 = DeepConf-high
    warmup: int = Field(4, ge=1)             # online: N_init
    consensus: float = Field(0.95, gt=0, le=1)   # online: tau
    parallel: int = Field(4, ge=1)           # online: traces in flight after the warm-up


def trace_score(sample: Sample, window: int) -> float:
    return lowest_group_confidence(sample.confidences or [0.0], window)


def confident_candidates(samples: list[Sample], role: str, window: int, start: int = 0
                         ) -> Candidates:
    cands = candidates_of(samples, role, start)
    for cand, sample in zip(cands, samples):
        cand.score = trace_score(sample, window)
    return cands


def vote_answer(voters: Candidates, everyone: Candidates, details: dict) -> Answer:
    keys = [canonical(c.answer) if c.answer is not None else None for c in voters]
    leader, share = weighted_vote(keys, [c.score or 0.0 for c in voters])
    chosen = next((c for c, k in zip(voters, keys) if k == leader and leader is not None),
                  voters[0] if voters else everyone[0])
    return Answer(text=chosen.text, answer=chosen.answer, candidates=list(everyone),
                  details={**details, "weighted_share": round(share, 4)})


async def deepconf_offline(problem: Problem, cfg: DeepConfConfig, ctx: RunContext) -> dict:
    role = ctx.roles.pick(cfg.role).name
    cands = confident_candidates(await draw_samples(problem, cfg, ctx, 0, cfg.n), role,
                                 cfg.window)
    kept = Candidates(cands[i] for i in most_confident([c.score for c in cands], cfg.keep_share))
    answer = vote_answer(kept, cands, {"mode": "offline", "traces": len(cands),
                                       "kept": len(kept)})
    return {"answer": answer, "candidates": kept}


async def deepconf_online(problem: Problem, cfg: DeepConfConfig, ctx: RunContext) -> dict:
    role = ctx.roles.pick(cfg.role)
    warmup = min(cfg.warmup, cfg.n)
    warm = confident_candidates(await draw_samples(problem, cfg, ctx, 0, warmup),
                                role.name, cfg.window)
    threshold = keep_threshold([c.score for c in warm], cfg.keep_share)
    voters, stopped = Candidates(warm), Candidates()
    req = sample_request(problem, cfg)

    async def trace(i: int) -> Candidate:
        seed = pool_seed(ctx, cfg.pool, i) if cfg.pool else ctx.seed("samples", i)
        sample = await ctx.generate_until(role, req.model_copy(update={"seed": seed}),
                                          f"samples/{i}", WindowWatch(threshold, cfg.window),
                                          stop_key=f"window={cfg.window},s={threshold:.4f}")
        cand = Candidate(text=sample.text, answer=None if sample.finish_reason == CANCELLED
                         else extract_answer(sample.text), role=role.name,
                         score=trace_score(sample, cfg.window),
                         usage=Usage(calls=1, completion_tokens=sample.completion_tokens),
                         details={"sample": i, "stopped": sample.finish_reason == CANCELLED})
        return cand

    def decided() -> bool:
        keys = [canonical(c.answer) if c.answer is not None else None for c in voters]
        return weighted_vote(keys, [c.score or 0.0 for c in voters])[1] >= cfg.consensus

    next_index, running = warmup, set()
    try:
        while not decided() and (running or next_index < cfg.n):
            while len(running) < cfg.parallel and next_index < cfg.n:
                running.add(asyncio.ensure_future(trace(next_index)))
                next_index += 1
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                cand = task.result()
                (stopped if cand.details["stopped"] else voters).append(cand)
    finally:   # decided (or failed): traces still being written are cancelled and billed
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    answer = vote_answer(voters, Candidates([*voters, *stopped]),
                         {"mode": "online", "threshold": round(threshold, 4),
                          "traces": len(voters) + len(stopped) + len(running),
                          "stopped": len(stopped), "cancelled_at_consensus": len(running)})
    return {"answer": answer, "candidates": voters}


@register_node("deepconf", DeepConfConfig, inputs={"problem": "problem"},
               outputs={"answer": "answer", "candidates": "candidates"})
async def deepconf(inputs: dict, cfg: DeepConfConfig, ctx: RunContext) -> dict:
    run = deepconf_online if cfg.mode == "online" else deepconf_offline
    return await run(inputs["problem"], cfg, ctx)
