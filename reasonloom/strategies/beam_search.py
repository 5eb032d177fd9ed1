"""Verifier-guided beam search over reasoning steps (as in Snell et al., arXiv 2408.03314):
keep the best-scored partial solutions and expand only those.

    beams <- N empty solutions
    for t = 1 .. T, while some beam is unfinished:
        extend every unfinished beam by one step; score each with the judge
        keep the N / M best; each kept unfinished beam is copied M times (own seeds next step)
    answer <- score-weighted vote over the finished beams (or the best-scored one)

Example:
    >>> graph = Graph().add("beam", "beam_search", {"particles": 4, "beam_width": 2})
"""
from __future__ import annotations

import asyncio

from pydantic import Field

from reasonloom.orchestrator.context import RunContext
from reasonloom.orchestrator.registry import register_node
from reasonloom.strategies.step_search import (Partial, StepSearchConfig, extend, final_answer,
                                               score_all)


class BeamSearchConfig(StepSearchConfig):
    beam_width: int = Field(2, ge=1)   # M: continuations per kept beam


def keep_best(beams: list[Partial], n: int, width: int) -> list[Partial]:
    """The n // width best beams, each unfinished one copied `width` times (finished kept once
    per copy too, so the population size stays n)."""
    keep = max(1, n // width)
    best = sorted(beams, key=lambda b: -b.score)[:keep]
    return [b for b in best for _ in range(width)][:n]


@register_node("beam_search", BeamSearchConfig, inputs={"problem": "problem"},
               outputs={"answer": "answer", "candidates": "candidates"})
async def beam_search(inputs: dict, cfg: BeamSearchConfig, ctx: RunContext) -> dict:
    problem = inputs["problem"]
    beams = [Partial() for _ in range(cfg.particles)]
    steps = 0
    for step in range(cfg.max_steps):
        if all(b.done for b in beams):
            break
        steps = step + 1
        beams = list(await asyncio.gather(*(extend(problem, b, cfg, ctx, f"step{step}/beam{i}")
                                             for i, b in enumerate(beams))))
        beams = await score_all(problem, beams, cfg, ctx, f"step{step}/score")
        ctx.publish_best(final_answer(beams, cfg, {"steps": steps}))
        if step + 1 < cfg.max_steps:
            beams = keep_best(beams, cfg.particles, cfg.beam_width)
    answer = final_answer(beams, cfg, {"steps": steps, "finished": sum(b.done for b in beams)})
    return {"answer": answer, "candidates": answer.candidates}
