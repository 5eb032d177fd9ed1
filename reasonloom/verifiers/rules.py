"""Rule verifiers: no model calls. Equivalence against a reference answer (math, numeric,
exact), the answer-frequency verifier Weaver adds to every ensemble, and unit tests run in
the code sandbox.

Example:
    >>> await ReferenceVerifier(mode="math").score(problem_with_gold, candidates, ctx)
    [1.0, 0.0, 1.0]
"""
from __future__ import annotations

import asyncio
from fractions import Fraction
from typing import TYPE_CHECKING, Literal, Sequence

from reasonloom.orchestrator.types import Candidate, Problem
from reasonloom.verifiers.answers import answer_of, answers_equal, as_number, canonical
from reasonloom.verifiers.sandbox import SandboxLimits, arun_code, extract_code

if TYPE_CHECKING:
    from reasonloom.orchestrator.context import RunContext

EquivalenceMode = Literal["math", "numeric", "exact"]


def numeric_equal(a: str | None, b: str | None, rel_tol: float = 1e-6) -> bool:
    """Both parse as numbers (fractions, separators, units) and agree to `rel_tol`."""
    if a is None or b is None:
        return False
    na, nb = as_number(a), as_number(b)
    if na is None or nb is None:
        return False
    if na == nb:
        return True
    return abs(na - nb) <= Fraction(rel_tol) * max(abs(na), abs(nb))


def plain_text(text: str) -> str:
    """Whitespace runs folded, case folded, a closing full stop dropped: "Paris." -> "paris"."""
    return " ".join(text.split()).lower().rstrip(".")


def exact_equal(a: str | None, b: str | None) -> bool:
    """Equal as plain text (multiple-choice letters, names, codes)."""
    return a is not None and b is not None and plain_text(a) == plain_text(b)


def equivalent(a: str | None, b: str | None, mode: EquivalenceMode = "math") -> bool:
    if mode == "exact":
        return exact_equal(a, b)
    if mode == "numeric":
        return numeric_equal(a, b)
    return answers_equal(a, b)


class ReferenceVerifier:
    """1.0 when a candidate's extracted answer equals the reference (default: problem.gold)."""

    name = "reference"

    def __init__(self, reference: str | None = None, mode: EquivalenceMode = "math"):
        self.reference = reference
        self.mode = mode

    async def score(self, problem: Problem, candidates: Sequence[Candidate], ctx: RunContext,
                    call_key: str = "score") -> list[float]:
        reference = self.reference if self.reference is not None else problem.gold
        if reference is None:
            raise ValueError(f"problem {problem.id!r}: the reference verifier needs a gold "
                             "answer (Problem.gold) or an explicit reference")
        # math-verify may take a while on odd answers: keep it off the event loop
        return await asyncio.to_thread(lambda: [
            float(equivalent(answer_of(c), reference, self.mode)) for c in candidates])


def answer_frequencies(answers: Sequence[str | None],
                       problem_index: Sequence[int] | None = None) -> list[float]:
    """For each answer, the share of its problem's answers that agree with it (0 without one).
    `problem_index` says which problem each answer belongs to (default: all to one)."""
    keys = [canonical(a) if a is not None else None for a in answers]
    problems = list(problem_index) if problem_index is not None else [0] * len(keys)
    counts: dict[tuple[int, str], int] = {}
    sizes: dict[int, int] = {}
    for problem, key in zip(problems, keys):
        sizes[problem] = sizes.get(problem, 0) + 1
        if key is not None:
            counts[problem, key] = counts.get((problem, key), 0) + 1
    return [counts[p, k] / sizes[p] if k is not None else 0.0 for p, k in zip(problems, keys)]


class AnswerFrequencyVerifier:
    """Weaver's majority-vote verifier: how many samples agree with this one's answer."""

    name = "frequency"

    async def score(self, problem: Problem, candidates: Sequence[Candidate], ctx: RunContext,
                    call_key: str = "score") -> list[float]:
        return answer_frequencies([answer_of(c) for c in candidates])


class CodeTestVerifier:
    """1.0 when the candidate's code passes the tests in the sandbox.

    `tests` defaults to problem.gold; `prefix` is prepended to the candidate's code (a
    HumanEval prompt: the signature and docstring the completion continues).
    """

    name = "code_tests"

    def __init__(self, tests: str | None = None, prefix: str = "",
                 limits: SandboxLimits = SandboxLimits(), concurrency: int = 2):
        self.tests = tests
        self.prefix = prefix
        self.limits = limits
        self._slots = asyncio.Semaphore(concurrency)   # one interpreter per core

    async def _run(self, code: str, tests: str) -> float:
        async with self._slots:
            return float((await arun_code(self.prefix + code, tests, self.limits)).passed)

    async def score(self, problem: Problem, candidates: Sequence[Candidate], ctx: RunContext,
                    call_key: str = "score") -> list[float]:
        tests = self.tests if self.tests is not None else problem.gold
        if not tests:
            raise ValueError(f"problem {problem.id!r}: the code verifier needs tests "
                             "(Problem.gold or tests=...)")
        return list(await asyncio.gather(*(self._run(extract_code(c.text), tests)
                                           for c in candidates)))
