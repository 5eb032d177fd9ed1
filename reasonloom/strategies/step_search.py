"""What step-level search strategies share: a partial solution, extending it by one reasoning
step (up to a blank line or a token cap), and scoring it with a pointwise judge.

Used by particle_filter.py and beam_search.py. A step ends at a blank line, the way models
already separate reasoning steps; a solution is finished when a step states its final answer,
adds nothing, or the solution reaches its token cap.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Sequence

from pydantic import Field

from reasonloom.backends.base import GenerateRequest
from reasonloom.orchestrator.context import RunContext
from reasonloom.orchestrator.types import Answer, Candidate, Candidates, FrozenModel, Problem
from reasonloom.prompts import DEFAULT_SYSTEM, problem_messages
from reasonloom.verifiers.answers import canonical, extract_answer
from reasonloom.verifiers.judges import PointwiseJudge

STEP_END = "\n\n"
_FINAL = re.compile(r"answer is|\\boxed\{", re.I)


class StepSearchConfig(FrozenModel):
    role: str = "strongest"                 # writes the steps
    judge: str = "strongest"                # scores partial solutions: P(Yes) from log-probs
    particles: int = Field(4, ge=1)         # N
    max_steps: int = Field(8, ge=1)
    step_tokens: int = Field(128, ge=1)     # a step's cap when no blank line comes first
    max_tokens: int = Field(384, ge=1)      # a whole solution's cap
    temperature: float = Field(0.7, ge=0)
    system: str | None = DEFAULT_SYSTEM
    final: str = Field("vote", pattern="^(vote|score)$")   # score-weighted vote, or best score


@dataclass(frozen=True)
class Partial:
    """One partial solution: its text, whether it is finished, its last score, its tokens."""

    text: str = ""
    done: bool = False
    score: float = 0.5
    tokens: int = 0


async def extend(problem: Problem, partial: Partial, cfg: StepSearchConfig, ctx: RunContext,
                 key: str) -> Partial:
    """One more step, written by continuing the partial answer (the model sees its own steps)."""
    if partial.done:
        return partial
    req = GenerateRequest(messages=problem_messages(problem, cfg.system),
                          assistant_prefix=partial.text or None, stop=(STEP_END,),
                          temperature=cfg.temperature,
                          max_tokens=max(1, min(cfg.step_tokens, cfg.max_tokens - partial.tokens)))
    sample = (await ctx.generate(cfg.role, req, key)).samples[0]
    step = sample.text.strip("\n")
    tokens = partial.tokens + sample.completion_tokens
    done = (not step or bool(_FINAL.search(step)) or tokens >= cfg.max_tokens)
    text = partial.text + step + ("" if done else STEP_END)
    return Partial(text=text, done=done, score=partial.score, tokens=tokens)


async def score_all(problem: Problem, partials: Sequence[Partial], cfg: StepSearchConfig,
                    ctx: RunContext, key: str) -> list[Partial]:
    """The judge's P(Yes) that each partial solution is correct so far."""
    judge = PointwiseJudge(role=cfg.judge, mode="logprob")
    texts = list(dict.fromkeys(p.text for p in partials))   # copies of a particle: one call
    scores = await judge.score(problem, [Candidate(text=t) for t in texts], ctx, key)
    by_text = {t: float(s) if s == s else 0.0 for t, s in zip(texts, scores)}
    return [replace(p, score=by_text[p.text]) for p in partials]


def final_answer(partials: Sequence[Partial], cfg: StepSearchConfig, details: dict) -> Answer:
    """Score-weighted vote over the finished solutions' answers, or the best-scored one."""
    cands = Candidates(Candidate(text=p.text, answer=extract_answer(p.text), score=p.score)
                       for p in partials)
    pool = [c for c, p in zip(cands, partials) if p.done] or list(cands)
    if cfg.final == "vote":
        weight: dict[str, float] = {}
        for cand in pool:
            if cand.answer is not None:
                weight[canonical(cand.answer)] = weight.get(canonical(cand.answer), 0.0) + (
                    cand.score or 0.0)
        if weight:
            best_key = max(weight, key=lambda k: weight[k])
            chosen = max((c for c in pool if c.answer is not None
                          and canonical(c.answer) == best_key), key=lambda c: c.score or 0.0)
            return Answer(text=chosen.text, answer=chosen.answer, candidates=list(cands),
                          details=details)
    chosen = max(pool, key=lambda c: c.score or 0.0)
    return Answer(text=chosen.text, answer=chosen.answer, candidates=list(cands), details=details)
