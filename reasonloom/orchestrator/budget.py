"""Budgets: tokens, dollars and seconds, checked BEFORE a call by reserving its worst case."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pydantic import Field

from reasonloom.orchestrator.types import Answer, FrozenModel

if TYPE_CHECKING:
    from reasonloom.orchestrator.result import RunResult


class BudgetSpec(FrozenModel):
    tokens: int | None = Field(None, gt=0)
    dollars: float | None = Field(None, gt=0)
    seconds: float | None = Field(None, gt=0)


class BudgetExceeded(Exception):
    """Raised instead of a call that would break the budget; carries what the run had."""

    def __init__(self, message: str, partial: "RunResult | None" = None,
                 best: Answer | None = None):
        super().__init__(message)
        self.partial = partial
        self.best = best


class Reservation:
    __slots__ = ("tokens", "dollars")

    def __init__(self, tokens: int, dollars: float):
        self.tokens = tokens
        self.dollars = dollars


class Budget:
    def __init__(self, spec: BudgetSpec | None = None):
        self.spec = spec or BudgetSpec()
        self.started = time.monotonic()
        self.spent_tokens = 0
        self.spent_dollars = 0.0
        self._reserved_tokens = 0
        self._reserved_dollars = 0.0

    @property
    def unlimited(self) -> bool:
        s = self.spec
        return s.tokens is None and s.dollars is None and s.seconds is None

    def reserve(self, tokens: int, dollars: float, what: str) -> Reservation:
        s = self.spec
        if s.seconds is not None and time.monotonic() - self.started > s.seconds:
            raise BudgetExceeded(f"time budget of {s.seconds:g}s spent before {what}")
        if s.tokens is not None and (
                self.spent_tokens + self._reserved_tokens + tokens > s.tokens):
            raise BudgetExceeded(
                f"token budget {s.tokens} would be exceeded by {what} "
                f"(spent {self.spent_tokens}, in flight {self._reserved_tokens}, "
                f"this call up to {tokens})")
        if s.dollars is not None and (
                self.spent_dollars + self._reserved_dollars + dollars > s.dollars):
            raise BudgetExceeded(
                f"dollar budget ${s.dollars:g} would be exceeded by {what} "
                f"(spent ${self.spent_dollars:.6f}, this call up to ${dollars:.6f})")
        self._reserved_tokens += tokens
        self._reserved_dollars += dollars
        return Reservation(tokens, dollars)

    def settle(self, reservation: Reservation, tokens: int, dollars: float) -> None:
        self._reserved_tokens -= reservation.tokens
        self._reserved_dollars -= reservation.dollars
        self.spent_tokens += tokens
        self.spent_dollars += dollars

    def status(self) -> dict[str, Any]:
        return {"tokens": self.spent_tokens, "dollars": self.spent_dollars,
                "seconds": time.monotonic() - self.started}
