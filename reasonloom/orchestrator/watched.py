"""A generation its node can stop: one sample streamed through the run's call path (cache,
replay, budget, the role's throttle and timeout, retries, ledger, events), with a stop rule read
after every piece. Stopping, or cancelling the task that awaits the call, closes the backend's
stream, which aborts the engine's request (vLLM in process: AsyncLLM.abort; a vLLM server: the
dropped connection), and the ledger bills the tokens generated until then.

DeepConf's online mode is the reason it exists: a trace whose windowed confidence falls below the
warm-up threshold is stopped the moment it does.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Callable, Sequence

from reasonloom.backends.base import Delta, GenerateRequest, Sample
from reasonloom.backends.errors import BackendError, StreamCut, Timeout

if TYPE_CHECKING:
    from reasonloom.orchestrator.context import RunContext
    from reasonloom.orchestrator.roles import Role

# (token confidences so far, text so far) -> True to stop the generation now
StopRule = Callable[[Sequence[float], str], bool]

CANCELLED = "cancelled"   # finish_reason of a sample its stop rule (or its node) ended


@dataclass
class Progress:
    """What one attempt has generated so far."""

    text: str = ""
    tokens: int = 0
    confidences: list[float] = field(default_factory=list)
    ttft_s: float | None = None

    def add(self, delta: Delta, t0: float) -> None:
        if self.ttft_s is None and delta.text:
            self.ttft_s = time.monotonic() - t0
        self.text += delta.text
        self.confidences.extend(delta.confidences or ())
        self.tokens += delta.tokens if delta.tokens is not None else (
            len(delta.confidences) if delta.confidences else int(bool(delta.text)))


async def _read_until(stream: AsyncIterator[Delta], stop: StopRule, progress: Progress,
                      t0: float) -> Delta | None:
    """Consume the stream until it ends (its usage delta is returned) or `stop` says so (None).
    The stream is closed either way, so an unfinished request is aborted at once."""
    try:
        async for delta in stream:
            if delta.prompt_tokens is not None:
                return delta
            progress.add(delta, t0)
            if stop(progress.confidences, progress.text):
                return None
        raise StreamCut("stream ended without its usage", partial=progress.text)
    finally:
        await stream.aclose()   # type: ignore[attr-defined]


async def generate_until(ctx: "RunContext", role: "Role", req: GenerateRequest, call_key: str,
                         stop: StopRule, stop_key: str = "") -> Sample:
    """One sample that `stop` may end early (finish_reason "cancelled"). `stop_key` names the
    rule's settings (e.g. its threshold): it enters the cache key, since another rule would
    have stopped elsewhere."""
    req = req.model_copy(update={"n": 1, "seed": req.seed if req.seed is not None
                                 else ctx.seed(call_key)})
    body = {**req.model_dump(mode="json"), "kind": "watched", "stop_rule": stop_key}
    key, hit = ctx._cached(role, body, req.seed)
    if hit is not None:
        sample = Sample.model_validate(hit["sample"])
        ctx._record_hit(role, "stream", call_key, hit["prompt_tokens"], sample.completion_tokens,
                        req.seed)
        return sample
    ctx._check_replay(call_key)
    prompt_est = ctx._prompt_estimate(role, req)
    reservation = ctx._reserve(role, prompt_est, req.max_tokens, f"{ctx.node}/{call_key}")
    spent_tokens, spent_dollars = 0, 0.0
    try:
        attempt = 0
        while True:
            attempt += 1
            progress, t0 = Progress(), time.monotonic()
            try:
                async with role:
                    t0 = time.monotonic()
                    async with asyncio.timeout(role.spec.timeout_s):
                        final = await _read_until(role.backend.stream(req), stop, progress, t0)
            except TimeoutError:
                exc: BackendError = Timeout(f"no answer within {role.spec.timeout_s}s")
                if not ctx._retry_or_raise(role, call_key, attempt, t0, exc, req.seed, "stream",
                                           progress.tokens):
                    raise exc from None
                await ctx._wait_retry(role, attempt, exc)
                continue
            except BackendError as exc:
                if not ctx._retry_or_raise(role, call_key, attempt, t0, exc, req.seed, "stream",
                                           progress.tokens):
                    raise
                await ctx._wait_retry(role, attempt, exc)
                continue
            except asyncio.CancelledError:   # the node cancelled it: bill what was generated
                spent_tokens = prompt_est + progress.tokens
                spent_dollars = role.spec.cost(prompt_est, progress.tokens)
                ctx._record(role, "stream", call_key, attempt, t0, prompt_tokens=prompt_est,
                            completion_tokens=progress.tokens, cost_usd=spent_dollars,
                            ttft_s=progress.ttft_s, seed=req.seed, error=CANCELLED)
                raise
            # A stopped stream has no usage delta: its prompt is the estimate (the engine's
            # tokenizer for in-process vLLM), its output the tokens read before the stop.
            prompt_tokens = final.prompt_tokens or 0 if final else prompt_est
            completion = final.completion_tokens or progress.tokens if final else progress.tokens
            spent_tokens = prompt_tokens + completion
            spent_dollars = role.spec.cost(prompt_tokens, completion)
            ctx._record(role, "stream", call_key, attempt, t0, prompt_tokens=prompt_tokens,
                        completion_tokens=completion, cost_usd=spent_dollars,
                        cached_prompt_tokens=(final.cached_prompt_tokens or 0) if final else 0,
                        ttft_s=progress.ttft_s, seed=req.seed,
                        served_by=final.served_by if final else None)
            sample = Sample(text=progress.text, completion_tokens=completion,
                            finish_reason=(final.finish_reason if final else CANCELLED),
                            confidences=progress.confidences or None)
            if key is not None:
                ctx.state.store.put(key, {"sample": sample.model_dump(mode="json"),
                                          "prompt_tokens": prompt_tokens})
            return sample
    finally:
        ctx.state.budget.settle(reservation, spent_tokens, spent_dollars)
