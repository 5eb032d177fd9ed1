"""LLM judges: a pointwise judge (P(yes) from log-probs, else a parsed 1-10 rating), V1's
pairwise judge (both candidates shown, each rated 1-10; arXiv 2603.04304) and the mean token
log-prob of a candidate (a confidence verifier Weaver can use).

Every call goes through the RunContext. A verdict the judge did not give (unparseable reply)
is NaN, never a made-up number: selection code treats NaN as "no information".

Example:
    >>> judge = PairwiseJudge(role="strong", reasoning=False)
    >>> r_a, r_b = await judge.compare(problem, a, b, ctx, call_key="r1/3v7")
"""
from __future__ import annotations

import asyncio
import math
import re
from typing import TYPE_CHECKING, Literal

from reasonloom.backends.base import GenerateRequest
from reasonloom.orchestrator.types import Candidate, Message, Problem
from reasonloom.prompts import DEFAULT_SYSTEM, problem_messages, with_candidates, with_sections
from reasonloom.verifiers.base import PerCandidateVerifier

if TYPE_CHECKING:
    from reasonloom.orchestrator.context import RunContext

JUDGE_SYSTEM = ("You are a rigorous grader of solutions to problems. Check every step, every "
                "calculation and the final answer.")
POINTWISE_QUESTION = "Is the proposed solution correct? Answer Yes or No."
POINTWISE_RATING = ("Is the proposed solution correct? Check it, then end with one line "
                    "'Rating: N' where N is 1 (certainly wrong) to 10 (certainly correct).")
PAIRWISE_INSTRUCTION = ("Compare Solution A and Solution B. {how}Rate each solution from 1 "
                        "(certainly wrong) to 10 (certainly correct), ending with exactly two "
                        "lines:\nRating A: <1-10>\nRating B: <1-10>")
_THINK = "Check the steps and the final answer of each, then decide. "
PAIRWISE_CHOICE = "Which solution is correct, A or B? Answer with the letter only."
NAN = float("nan")

_RATING = re.compile(r"rating\s*[:=]?\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def _side(letter: str, strict: bool) -> re.Pattern[str]:
    # strict: "Rating A: 7", "rating_A = 7", "Rating for Solution A: 7/10";
    # loose (only when a side has no strict match): "Solution A: 7", "A: 7" at a line start
    label = (rf"rating[\s_]*(?:for\s+)?(?:solution\s+)?{letter}" if strict
             else rf"(?:solution\s+{letter}(?:\s+rating)?|^\s*{letter})")
    return re.compile(rf"{label}\s*(?:\*\*)?\s*[:=\-]?\s*(?:\*\*)?\s*(\d+(?:\.\d+)?)",
                      re.IGNORECASE | re.MULTILINE)


_SIDES = {(letter, strict): _side(letter, strict) for letter in "AB" for strict in (True, False)}


def _last_rating(text: str, letter: str) -> float:
    found = _SIDES[letter, True].findall(text) or _SIDES[letter, False].findall(text)
    return _clamp(float(found[-1])) if found else NAN


def _clamp(value: float) -> float:
    return min(10.0, max(1.0, value))


def parse_pair_ratings(text: str) -> tuple[float, float]:
    """The LAST "Rating A: x" and "Rating B: y" of a judge reply, clamped to 1-10; NaN for a
    side the reply never rates (a reasoning judge may quote ratings before its verdict)."""
    return _last_rating(text, "A"), _last_rating(text, "B")


def parse_rating(text: str) -> float:
    """The last "Rating: N" (1-10) of a pointwise reply, clamped; NaN if none."""
    found = _RATING.findall(text)
    return _clamp(float(found[-1])) if found else NAN


def pair_messages(problem: Problem, a: str, b: str, instruction: str,
                  system: str | None = JUDGE_SYSTEM) -> tuple[Message, ...]:
    """Problem, Solution A, Solution B, instruction: the problem prefix is shared by every
    comparison of a tournament, so the engine's prefix cache serves it."""
    return with_sections(problem, [("Solution A", a), ("Solution B", b)], instruction, system)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0


class PointwiseJudge(PerCandidateVerifier):
    """P(yes): the judge's probability that a candidate is correct.

    mode "logprob": two prefill-only scoring calls per candidate (" Yes" and " No" as the
    first assistant token; the shared prefix is cached), P = softmax over the two. mode
    "rating": one generation ending "Rating: N", P = (N - 1) / 9. "auto" picks log-probs
    where the role's backend has prompt log-probs.
    """

    name = "judge"

    def __init__(self, role: str = "strongest", mode: Literal["auto", "logprob", "rating"] = "auto",
                 max_tokens: int = 512, temperature: float = 0.0,
                 system: str | None = JUDGE_SYSTEM, yes: str = "Yes", no: str = "No"):
        self.role, self.mode, self.max_tokens = role, mode, max_tokens
        self.temperature, self.system, self.yes, self.no = temperature, system, yes, no

    def resolved_mode(self, ctx: RunContext) -> str:
        if self.mode != "auto":
            return self.mode
        return "logprob" if ctx.roles.pick(self.role).backend.capabilities.prompt_logprobs \
            else "rating"

    async def score_one(self, problem: Problem, candidate: Candidate, ctx: RunContext,
                        call_key: str) -> float:
        role = ctx.roles.pick(self.role)
        if self.resolved_mode(ctx) == "logprob":
            messages = with_candidates(problem, [candidate.text], POINTWISE_QUESTION,
                                       label="Proposed solution", system=self.system)
            yes, no = await asyncio.gather(
                ctx.prompt_logprobs(role, messages, self.yes, f"{call_key}/yes"),
                ctx.prompt_logprobs(role, messages, self.no, f"{call_key}/no"))
            return _sigmoid(sum(t.logprob for t in yes) - sum(t.logprob for t in no))
        messages = with_candidates(problem, [candidate.text], POINTWISE_RATING,
                                   label="Proposed solution", system=self.system)
        gen = await ctx.generate(role, GenerateRequest(messages=messages,
                                                       max_tokens=self.max_tokens,
                                                       temperature=self.temperature), call_key)
        rating = parse_rating(gen.texts[0])
        return (rating - 1.0) / 9.0 if not math.isnan(rating) else NAN


class PairwiseJudge:
    """V1's pairwise self-verification judge: sees A then B, rates each 1-10.

    `reasoning=True` (the paper's setting) lets the judge think before the two rating lines.
    `reasoning=False` asks for the ratings only and, where the backend can continue an
    assistant message, starts the reply with "Rating A:" so even a small model answers in
    the format (a handful of output tokens per comparison).
    `mode="logprob"` generates nothing: two prefill-only calls read P("A") against P("B") as
    the first token of the reply to "which is correct?" (the shared prefix is cached), and
    the verdict goes on the rating scale as 1 + 9 p and 1 + 9 (1 - p), so V1's weight, the
    rating gap over 9, is |2p - 1|. For small models that write every rating alike (or copy
    the template) instead of judging.
    """

    name = "pairwise_judge"

    def __init__(self, role: str = "strongest", reasoning: bool = True, max_tokens: int = 1024,
                 temperature: float = 0.0, system: str | None = JUDGE_SYSTEM,
                 mode: Literal["rating", "logprob"] = "rating"):
        self.role, self.reasoning, self.max_tokens = role, reasoning, max_tokens
        self.temperature, self.system, self.mode = temperature, system, mode

    async def compare(self, problem: Problem, a: Candidate, b: Candidate, ctx: RunContext,
                      call_key: str = "pair") -> tuple[float, float]:
        role = ctx.roles.pick(self.role)
        if self.mode == "logprob":
            messages = pair_messages(problem, a.text, b.text, PAIRWISE_CHOICE, self.system)
            first, second = await asyncio.gather(
                ctx.prompt_logprobs(role, messages, "A", f"{call_key}/A"),
                ctx.prompt_logprobs(role, messages, "B", f"{call_key}/B"))
            p_first = _sigmoid(sum(t.logprob for t in first) - sum(t.logprob for t in second))
            return 1.0 + 9.0 * p_first, 1.0 + 9.0 * (1.0 - p_first)
        instruction = PAIRWISE_INSTRUCTION.format(how=_THINK if self.reasoning else "")
        prefix = None
        if not self.reasoning and role.backend.capabilities.continue_final_message:
            prefix = "Rating A: "   # a trailing space: small models then write the digit
        req = GenerateRequest(messages=pair_messages(problem, a.text, b.text, instruction,
                                                     self.system),
                              max_tokens=self.max_tokens, temperature=self.temperature,
                              assistant_prefix=prefix)
        gen = await ctx.generate(role, req, call_key)
        return parse_pair_ratings((prefix or "") + gen.texts[0])


class MeanLogprobVerifier(PerCandidateVerifier):
    """The mean log-prob of a candidate's tokens given the problem (prefill only): how
    confident the scoring model is in the text. NaN for an empty candidate."""

    name = "logprob"

    def __init__(self, role: str = "cheapest", system: str | None = DEFAULT_SYSTEM):
        self.role, self.system = role, system

    async def score_one(self, problem: Problem, candidate: Candidate, ctx: RunContext,
                        call_key: str) -> float:
        if not candidate.text.strip():
            return NAN
        scored = await ctx.prompt_logprobs(self.role, problem_messages(problem, self.system),
                                           candidate.text, call_key)
        return sum(t.logprob for t in scored) / len(scored) if scored else NAN
