"""Particle filtering over reasoning steps (Puri et al., arXiv 2502.01618): treat the judge's
score of a partial solution as a likelihood and let N particles follow it.

    particles <- N empty solutions
    for t = 1 .. T, while some particle is unfinished:
        extend every unfinished particle by one step
        r_i <- judge(particle_i)                      P(Yes) from prompt log-probs
        w_i <- softmax(logit(r_i) / temperature)
        particles <- N draws from particles with probabilities w    (multinomial resampling)
    answer <- score-weighted vote over the finished particles (or the best-scored one)

Copies of one particle diverge again at the next step: each copy's step has its own seed.
A token budget stops the search between calls; the best answer so far is published each step.

Example:
    >>> graph = Graph().add("pf", "particle_filter", {"particles": 4, "max_steps": 6})
"""
from __future__ import annotations

import asyncio
import math

import numpy as np
from pydantic import Field

from reasonloom.orchestrator.context import RunContext
from reasonloom.orchestrator.registry import register_node
from reasonloom.strategies.step_search import (Partial, StepSearchConfig, extend, final_answer,
                                               score_all)


class ParticleFilterConfig(StepSearchConfig):
    resample_temperature: float = Field(1.0, gt=0)


def resampling_weights(scores: list[float], temperature: float) -> np.ndarray:
    """softmax(logit(r) / temperature); scores are clipped away from 0 and 1."""
    r = np.clip(np.asarray(scores, dtype=float), 1e-4, 1 - 1e-4)
    logits = np.log(r / (1 - r)) / temperature
    w = np.exp(logits - logits.max())
    return w / w.sum()


def resample(particles: list[Partial], weights: np.ndarray, rng) -> list[Partial]:
    """N multinomial draws (the run's seeded RNG, so a rerun resamples the same way)."""
    return [particles[i] for i in rng.choices(range(len(particles)), weights=list(weights),
                                              k=len(particles))]


@register_node("particle_filter", ParticleFilterConfig, inputs={"problem": "problem"},
               outputs={"answer": "answer", "candidates": "candidates"})
async def particle_filter(inputs: dict, cfg: ParticleFilterConfig, ctx: RunContext) -> dict:
    problem = inputs["problem"]
    particles = [Partial() for _ in range(cfg.particles)]
    steps = 0
    for step in range(cfg.max_steps):
        if all(p.done for p in particles):
            break
        steps = step + 1
        particles = list(await asyncio.gather(*(
            extend(problem, p, cfg, ctx, f"step{step}/particle{i}")
            for i, p in enumerate(particles))))
        particles = await score_all(problem, particles, cfg, ctx, f"step{step}/score")
        ctx.publish_best(final_answer(particles, cfg, {"steps": steps}))
        if step + 1 < cfg.max_steps and not all(p.done for p in particles):
            weights = resampling_weights([p.score for p in particles], cfg.resample_temperature)
            particles = resample(particles, weights, ctx.rng)
    answer = final_answer(particles, cfg, {
        "steps": steps, "finished": sum(p.done for p in particles),
        "distinct_particles": len({p.text for p in particles}),
        "mean_score": round(float(np.mean([p.score for p in particles])), 4)
        if particles else math.nan})
    return {"answer": answer, "candidates": answer.candidates}
