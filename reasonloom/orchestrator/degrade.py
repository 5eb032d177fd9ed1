"""Graceful degradation: a strategy declares how many of its independent calls may fail
(e.g. one of 16 samples) and continues with the rest; the result says what was dropped."""
from __future__ import annotations

import asyncio
from typing import Awaitable, Mapping, TypeVar

from reasonloom.backends.errors import BackendError
from reasonloom.orchestrator.context import RunContext

T = TypeVar("T")


class TooManyFailures(RuntimeError):
    pass


async def gather_tolerant(ctx: RunContext, calls: Mapping[str, Awaitable[T]],
                          may_fail: int) -> dict[str, T]:
    """Await every call; up to `may_fail` of them may end in a backend error (after the role's
    own retries). Returns the successes by key, in the given order; failures beyond the
    allowance raise TooManyFailures naming them. Budget stops and cancellation propagate."""
    keys = list(calls)
    results = await asyncio.gather(*calls.values(), return_exceptions=True)
    kept: dict[str, T] = {}
    failed: list[tuple[str, BaseException]] = []
    for key, result in zip(keys, results):
        if isinstance(result, BackendError):
            failed.append((key, result))
        elif isinstance(result, BaseException):
            raise result
        else:
            kept[key] = result
    if len(failed) > may_fail:
        names = ", ".join(f"{k} ({type(e).__name__}: {e})" for k, e in failed)
        raise TooManyFailures(f"{len(failed)} of {len(keys)} calls failed, {may_fail} allowed: "
                              f"{names}")
    for key, exc in failed:
        ctx.state.dropped.append({"node": ctx.node, "call_key": key,
                                  "error": f"{type(exc).__name__}: {exc}"})
        ctx.emit("error", call_key=key, dropped=True, error=f"{type(exc).__name__}: {exc}")
    return kept
