"""Model roles: a named backend + model + prices + limits + retry policy (DESIGN.md, "Role")."""
from __future__ import annotations

import asyncio
import collections
import random
from typing import Iterator, Mapping

from asyncio_throttle import Throttler
from pydantic import Field

from reasonloom.backends.base import Backend
from reasonloom.orchestrator.types import FrozenModel


class RetryPolicy(FrozenModel):
    """Exponential backoff with jitter on retryable errors (429, 5xx, timeouts, cut streams)."""

    max_attempts: int = Field(4, ge=1)
    base_delay_s: float = Field(0.5, ge=0)
    max_delay_s: float = Field(20.0, ge=0)
    jitter: float = Field(0.25, ge=0, le=1)   # +- fraction of the delay

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before attempt `attempt + 1`; a server's Retry-After wins if longer."""
        backoff = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        backoff *= 1 + self.jitter * (2 * rng.random() - 1)
        return max(backoff, retry_after or 0.0)


class RoleTerms(FrozenModel):
    """What a role's calls cost and how hard the role may be pushed (a recipe's `models:`
    entry adds these to its backend spec)."""

    price_in_per_m: float = Field(0.0, ge=0)    # dollars per million prompt tokens
    price_out_per_m: float = Field(0.0, ge=0)   # dollars per million completion tokens
    concurrency: int = Field(64, ge=1)          # calls in flight at once
    rate_limit: float | None = Field(None, gt=0)  # calls per second
    retry: RetryPolicy = RetryPolicy()
    timeout_s: float | None = Field(None, gt=0)

    def terms(self) -> dict:
        """These terms as keyword arguments (a RoleSpec built from a recipe's RoleConfig)."""
        return {name: getattr(self, name) for name in RoleTerms.model_fields}

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_in_per_m
                + completion_tokens * self.price_out_per_m) / 1e6


class RoleSpec(RoleTerms):
    name: str
    model: str = ""


class ConcurrencyLimiter:
    """FIFO limit on calls in flight. A plain counter on the fast path: asyncio.Semaphore's
    fairness check costs more than the rest of a scripted call (benchmarks/overhead.py)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self) -> None:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut   # release() hands its slot over: in_flight is already counted
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()   # the slot arrived as we were cancelled: pass it on
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.in_flight -= 1


class Role:
    """A role at run time: its spec, its backend and the limiters shared by every node."""

    def __init__(self, spec: RoleSpec, backend: Backend):
        self.spec = spec
        self.backend = backend
        self.name = spec.name
        self._semaphore = ConcurrencyLimiter(spec.concurrency)
        self._throttler = Throttler(rate_limit=spec.rate_limit) if spec.rate_limit else None

    @property
    def model_id(self) -> str:
        return self.spec.model or self.backend.model

    async def __aenter__(self) -> "Role":
        await self._semaphore.acquire()
        if self._throttler is not None:
            try:
                await self._throttler.acquire()
            except BaseException:
                self._semaphore.release()
                raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._semaphore.release()

    def __repr__(self) -> str:
        return f"Role({self.name!r}, model={self.model_id!r})"


class Roles(Mapping[str, Role]):
    """The recipe's roles: `order` lists the ranked ones strongest -> cheapest; others are named
    (`scorer`, `judge`, `aggregator` ...) and fall back to a ranked role when absent."""

    def __init__(self, roles: Mapping[str, Role], order: list[str] | None = None):
        self._roles = dict(roles)
        self.order = list(order) if order is not None else list(self._roles)
        unknown = [name for name in self.order if name not in self._roles]
        if unknown:
            raise KeyError(f"role order names unknown roles: {unknown}")

    def __getitem__(self, name: str) -> Role:
        if name not in self._roles:
            raise KeyError(f"unknown role {name!r} (roles: {', '.join(self._roles)})")
        return self._roles[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._roles)

    def __len__(self) -> int:
        return len(self._roles)

    @property
    def by_strength(self) -> list[Role]:
        return [self._roles[name] for name in self.order]

    @property
    def strongest(self) -> Role:
        return self._roles[self.order[0]]

    @property
    def cheapest(self) -> Role:
        return self._roles[self.order[-1]]

    def pick(self, name: str | None, default: str = "strongest") -> Role:
        """A named role if the recipe has it, else the strongest (or cheapest) ranked one."""
        if name and name in self._roles:
            return self._roles[name]
        if name and name not in ("strongest", "cheapest"):
            raise KeyError(f"unknown role {name!r} (roles: {', '.join(self._roles)})")
        return self.cheapest if (name or default) == "cheapest" else self.strongest
