"""Shared types every node speaks (DESIGN.md, "Shared types"). `FrozenModel` and `Message` live
on the ground floor (reasonloom/types.py, which backends import too) and are re-exported here."""
from __future__ import annotations

from typing import Any, Iterable

from pydantic import BaseModel, Field

from reasonloom.types import FrozenModel, Message

__all__ = ["Answer", "Candidate", "Candidates", "FrozenModel", "Message", "Problem", "Usage"]


class Usage(BaseModel):
    """Token and dollar totals of a set of calls."""

    calls: int = 0
    cached_calls: int = 0          # answered from the run's call cache (resume, replay)
    failed_calls: int = 0          # attempts that failed (and were retried or raised)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cost_usd: float = 0.0
    # Calls answered from the call cache cost nothing now, but a shared sample pool is not free
    # for the strategy that reads it: what those calls cost when they were made.
    replayed_prompt_tokens: int = 0
    replayed_completion_tokens: int = 0
    replayed_cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: "Usage") -> None:
        self.calls += other.calls
        self.cached_calls += other.cached_calls
        self.failed_calls += other.failed_calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_prompt_tokens += other.cached_prompt_tokens
        self.cost_usd += other.cost_usd
        self.replayed_prompt_tokens += other.replayed_prompt_tokens
        self.replayed_completion_tokens += other.replayed_completion_tokens
        self.replayed_cost_usd += other.replayed_cost_usd


class Problem(FrozenModel):
    """The run input: chat messages, an optional long document, an optional gold answer."""

    id: str | int = "0"
    messages: tuple[Message, ...]
    context: str | None = None
    gold: str | None = None

    @classmethod
    def from_text(cls, question: str, *, id: str | int = "0", context: str | None = None,
                  gold: str | None = None, system: str | None = None) -> "Problem":
        messages = ([Message(role="system", content=system)] if system else []) + [
            Message(role="user", content=question)]
        return cls(id=id, messages=tuple(messages), context=context, gold=gold)

    @property
    def question(self) -> str:
        """The last user message: what the strategies are asked to answer."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return ""


class Candidate(BaseModel):
    """One candidate solution; `answer` is the extracted final answer, `score` a verifier's view."""

    text: str
    answer: str | None = None
    score: float | None = None
    role: str | None = None
    usage: Usage = Field(default_factory=Usage)
    details: dict[str, Any] = Field(default_factory=dict)


class Candidates(list[Candidate]):
    """A list of candidates with the helpers selection code keeps needing."""

    def texts(self) -> list[str]:
        return [c.text for c in self]

    def answers(self) -> list[str | None]:
        return [c.answer for c in self]

    def best(self) -> Candidate:
        if not self:
            raise ValueError("no candidates to choose from")
        return max(self, key=lambda c: float("-inf") if c.score is None else c.score)

    def top(self, k: int) -> "Candidates":
        ranked = sorted(self, key=lambda c: float("-inf") if c.score is None else c.score,
                        reverse=True)
        return Candidates(ranked[:k])

    @classmethod
    def of(cls, items: Iterable[Candidate]) -> "Candidates":
        return cls(items)


class Answer(BaseModel):
    """A node's final answer: the text shown to the user plus its extracted answer."""

    text: str
    answer: str | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)

