"""The one path a model call takes after the cache: budget reservation, the role's throttle and
timeout, the retry policy, the ledger (with its events), and the budget's settlement.

`generate`, `stream`, `prompt_logprobs`, `tokenize` and the stoppable generation (watched.py)
are thin adapters that hand it one attempt (a stream's attempt passes its pieces to the caller
through a queue). A call cancelled by its node is recorded with the tokens its attempt had
read, so the ledger bills what was generated.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, TypeVar

from reasonloom.backends.errors import BackendError, Timeout

if TYPE_CHECKING:
    from reasonloom.orchestrator.context import RunContext
    from reasonloom.orchestrator.roles import Role

T = TypeVar("T")
CANCELLED = "cancelled"   # the error text of a call its node cancelled (billed, not failed)


@dataclass
class Progress:
    """What the current attempt has produced so far (read when it is cancelled or fails)."""

    tokens: int = 0
    ttft_s: float | None = None


@dataclass
class Outcome:
    """What a finished attempt cost, for the ledger."""

    prompt_tokens: int
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    served_by: str | None = None
    ttft_s: float | None = None


Attempt = Callable[[Progress], Awaitable["tuple[T, Outcome]"]]


def timed_out(role: "Role") -> Timeout:
    return Timeout(f"no answer within {role.spec.timeout_s}s")


async def paced(stream: AsyncIterator[T], timeout_s: float | None) -> AsyncIterator[T]:
    """A stream's pieces, each due within the role's timeout of the one before: a stalled
    stream raises Timeout (retryable) instead of hanging its node."""
    try:
        while True:
            try:
                async with asyncio.timeout(timeout_s):
                    piece = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise Timeout(f"stream stalled: no piece within {timeout_s}s") from None
            yield piece
    finally:
        await stream.aclose()   # type: ignore[attr-defined]


async def call_pipeline(ctx: "RunContext", role: "Role", kind: str, call_key: str,
                        attempt: Attempt, *, prompt_estimate: int, max_out: int,
                        record: dict[str, Any] | None = None,
                        whole_call_timeout: bool = True) -> T:
    """Run `attempt` until it succeeds or the retry policy gives up; `record` adds fields to
    every ledger record (seed, n). A stream's attempt paces its own pieces (`paced`), so a
    long answer that keeps coming is not cut: it passes whole_call_timeout=False."""
    fields = record or {}
    reservation = ctx._reserve(role, prompt_estimate, max_out, f"{ctx.node}/{call_key}")
    spent_tokens, spent_dollars = 0, 0.0
    try:
        number = 0
        while True:
            number += 1
            progress, t0 = Progress(), time.monotonic()
            try:
                async with role:
                    t0 = time.monotonic()
                    if role.spec.timeout_s is None or not whole_call_timeout:   # no timer
                        result, out = await attempt(progress)
                    else:
                        async with asyncio.timeout(role.spec.timeout_s):
                            result, out = await attempt(progress)
            except TimeoutError:
                exc: BackendError = timed_out(role)
                if not ctx._retry_or_raise(role, call_key, number, t0, exc, fields.get("seed"),
                                           kind, progress.tokens):
                    raise exc from None
                await ctx._wait_retry(role, number, exc)
                continue
            except BackendError as exc:
                if not ctx._retry_or_raise(role, call_key, number, t0, exc, fields.get("seed"),
                                           kind, progress.tokens):
                    raise
                await ctx._wait_retry(role, number, exc)
                continue
            except asyncio.CancelledError:   # its node stopped it: bill what was generated
                spent_tokens = prompt_estimate + progress.tokens
                spent_dollars = role.spec.cost(prompt_estimate, progress.tokens)
                ctx._record(role, kind, call_key, number, t0, prompt_tokens=prompt_estimate,
                            completion_tokens=progress.tokens, cost_usd=spent_dollars,
                            ttft_s=progress.ttft_s, error=CANCELLED, **fields)
                raise
            spent_tokens = out.prompt_tokens + out.completion_tokens
            spent_dollars = role.spec.cost(out.prompt_tokens, out.completion_tokens)
            ctx._record(role, kind, call_key, number, t0, prompt_tokens=out.prompt_tokens,
                        completion_tokens=out.completion_tokens, cost_usd=spent_dollars,
                        cached_prompt_tokens=out.cached_prompt_tokens, served_by=out.served_by,
                        ttft_s=out.ttft_s, **fields)
            return result
    finally:
        ctx.state.budget.settle(reservation, spent_tokens, spent_dollars)
