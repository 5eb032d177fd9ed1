"""Prompt layout shared by every strategy: shared content first, in a canonical order
(system prompt, problem, shared candidates, then what differs), so the engine's prefix cache
serves what requests have in common."""
from __future__ import annotations

from typing import Sequence

from reasonloom.orchestrator.types import Message, Problem

DEFAULT_SYSTEM = ("You are a careful problem solver. Think step by step, then give the final "
                  "answer on the last line as 'The answer is X.'")


def problem_messages(problem: Problem, system: str | None = DEFAULT_SYSTEM) -> tuple[Message, ...]:
    """The problem's own messages, with our system prompt first unless it brings one."""
    if system and not any(m.role == "system" for m in problem.messages):
        return (Message(role="system", content=system), *problem.messages)
    return tuple(problem.messages)


def with_candidates(problem: Problem, candidates: Sequence[str], instruction: str,
                    label: str = "Solution", system: str | None = DEFAULT_SYSTEM
                    ) -> tuple[Message, ...]:
    """Problem, then numbered candidate texts, then the instruction that differs per call."""
    base = problem_messages(problem, system)
    shown = "\n\n".join(f"### {label} {i + 1}\n{text.strip()}" for i, text in enumerate(candidates))
    question = base[-1].content if base[-1].role == "user" else problem.question
    body = f"{question}\n\n{shown}\n\n{instruction}"
    return (*base[:-1], Message(role="user", content=body))
