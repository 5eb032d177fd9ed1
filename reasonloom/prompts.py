"""Prompt layout shared by every strategy and judge: shared content first, in a canonical order
(system prompt, problem, shared candidates, then what differs), so the engine's prefix cache
serves what requests have in common.

The run-level switch `shaping` (RunContext.shaping; a recipe's `shaping: on | off`) turns the
layout off for comparison: candidates first in the order each call drew them, then the problem
and the instruction, and n separate requests instead of one n-sampling request. Helpers read
the run's setting unless a caller passes `shaping=` explicitly.
"""
from __future__ import annotations

from typing import Sequence, TypeVar

from reasonloom.orchestrator.context import shaping_enabled
from reasonloom.orchestrator.types import Message, Problem

DEFAULT_SYSTEM = ("You are a careful problem solver. Think step by step, then give the final "
                  "answer on the last line as 'The answer is X.'")

T = TypeVar("T")


def shaping_on(shaping: bool | None = None) -> bool:
    """The caller's explicit choice, else the current run's `shaping` (default on)."""
    return shaping_enabled() if shaping is None else shaping


def problem_messages(problem: Problem, system: str | None = DEFAULT_SYSTEM) -> tuple[Message, ...]:
    """The problem's own messages, with our system prompt first unless it brings one."""
    if system and not any(m.role == "system" for m in problem.messages):
        return (Message(role="system", content=system), *problem.messages)
    return tuple(problem.messages)


def with_sections(problem: Problem, sections: Sequence[tuple[str, str]], instruction: str,
                  system: str | None = DEFAULT_SYSTEM, shaping: bool | None = None,
                  preamble: str | None = None, question_title: str | None = None
                  ) -> tuple[Message, ...]:
    """Problem, then titled texts ("### Title\\ntext"), then the instruction that differs per
    call. Shaping off: the texts come first, then the problem (nothing past the chat header
    is shared between calls that show different texts).

    `preamble`: a text that is the same for every problem (a strategy's standing instruction),
    put before the problem so that it is a prefix-cache hit across problems, not only across
    the calls of one problem; `question_title` then titles the problem like the texts. Shaping
    off puts it after the problem, with the instruction."""
    base = problem_messages(problem, system)
    shown = "\n\n".join(f"### {title}\n{text.strip()}" for title, text in sections)
    question = base[-1].content if base[-1].role == "user" else problem.question
    if question_title:
        question = f"### {question_title}\n{question}"
    if shaping_on(shaping):
        head = f"{preamble}\n\n{question}" if preamble else question
        body = f"{head}\n\n{shown}\n\n{instruction}"
    else:
        tail = f"{preamble}\n\n{instruction}" if preamble else instruction
        body = f"{shown}\n\n{question}\n\n{tail}"
    return (*base[:-1], Message(role="user", content=body))


def with_candidates(problem: Problem, candidates: Sequence[str], instruction: str,
                    label: str = "Solution", system: str | None = DEFAULT_SYSTEM,
                    shaping: bool | None = None, preamble: str | None = None,
                    question_title: str | None = None) -> tuple[Message, ...]:
    """Problem, then numbered candidate texts, then the instruction that differs per call
    (a standing `preamble` goes first: see `with_sections`)."""
    return with_sections(problem, [(f"{label} {i + 1}", text) for i, text in enumerate(candidates)],
                         instruction, system, shaping, preamble, question_title)


def canonical_order(members: Sequence[T], shaping: bool | None = None) -> list[T]:
    """Shared candidates in one canonical (sorted) order, so calls that show overlapping sets
    share their longest common prefix; shaping off keeps each call's own draw order."""
    return sorted(members) if shaping_on(shaping) else list(members)


def use_n_sampling(shaping: bool | None = None) -> bool:
    """Repeated samples of one prompt as ONE request with `n` (shaping on) or n requests."""
    return shaping_on(shaping)
