"""A generation its node can stop: one sample streamed through the run's call pipeline (cache,
replay, budget, the role's throttle and timeout, retries, ledger, events), with a stop rule read
after every piece. Stopping, or cancelling the task that awaits the call, closes the backend's
stream, which aborts the engine's request (vLLM in process: AsyncLLM.abort; a vLLM server: the
dropped connection), and the ledger bills the tokens generated until then.

DeepConf's online mode is the reason it exists: a trace whose windowed confidence falls below the
warm-up threshold is stopped the moment it does.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, AsyncIterator, Callable, Sequence

from reasonloom.backends.base import Delta, GenerateRequest, Sample
from reasonloom.backends.errors import StreamCut
from reasonloom.orchestrator.pipeline import CANCELLED, Outcome, Progress, call_pipeline

if TYPE_CHECKING:
    from reasonloom.orchestrator.context import RunContext
    from reasonloom.orchestrator.roles import Role

# (token confidences so far, text so far) -> True to stop the generation now
StopRule = Callable[[Sequence[float], str], bool]

__all__ = ["CANCELLED", "StopRule", "generate_until"]


async def read_until(stream: AsyncIterator[Delta], stop: StopRule, progress: Progress
                     ) -> tuple[Sample, Delta | None]:
    """Consume the stream until it ends (its usage delta comes back) or `stop` says so (None).
    The stream is closed either way, so an unfinished request is aborted at once."""
    t0, text, confidences = time.monotonic(), "", []
    try:
        async for delta in stream:
            if delta.prompt_tokens is not None:
                return Sample(text=text, completion_tokens=delta.completion_tokens
                              or progress.tokens, finish_reason=delta.finish_reason,
                              confidences=confidences or None), delta
            if progress.ttft_s is None and delta.text:
                progress.ttft_s = time.monotonic() - t0
            text += delta.text
            confidences.extend(delta.confidences or ())
            progress.tokens += delta.tokens if delta.tokens is not None else (
                len(delta.confidences) if delta.confidences else int(bool(delta.text)))
            if stop(confidences, text):
                return Sample(text=text, completion_tokens=progress.tokens,
                              finish_reason=CANCELLED, confidences=confidences or None), None
        raise StreamCut("stream ended without its usage", partial=text)
    finally:
        await stream.aclose()   # type: ignore[attr-defined]


async def generate_until(ctx: "RunContext", role: "Role", req: GenerateRequest, call_key: str,
                         stop: StopRule, stop_key: str = "") -> Sample:
    """One sample that `stop` may end early (finish_reason "cancelled"). `stop_key` names the
    rule's settings (e.g. its threshold): it enters the cache key, since another rule would
    have stopped elsewhere."""
    req = req.model_copy(update={"n": 1, "seed": req.seed if req.seed is not None
                                 else ctx.seed(call_key)})
    key, hit = ctx._cached(role, {**req.model_dump(mode="json"), "kind": "watched",
                                  "stop_rule": stop_key}, req.seed)
    if hit is not None:
        sample = Sample.model_validate(hit["sample"])
        ctx._record_hit(role, "stream", call_key, hit["prompt_tokens"], sample.completion_tokens,
                        req.seed)
        return sample
    ctx._check_replay(call_key)
    prompt_estimate = ctx._prompt_estimate(role, req)

    async def attempt(progress: Progress) -> tuple[Sample, Outcome]:
        sample, final = await read_until(role.backend.stream(req), stop, progress)
        # A stopped stream has no usage delta: its prompt is the estimate (the engine's own
        # tokenizer for in-process vLLM), its output the tokens read before the stop.
        if final is None:
            return sample, Outcome(prompt_estimate, sample.completion_tokens,
                                   ttft_s=progress.ttft_s)
        return sample, Outcome(final.prompt_tokens or 0, sample.completion_tokens,
                               final.cached_prompt_tokens or 0, final.served_by, progress.ttft_s)

    sample = await call_pipeline(ctx, role, "stream", call_key, attempt,
                                 prompt_estimate=prompt_estimate, max_out=req.max_tokens,
                                 record={"seed": req.seed})
    if key is not None:
        ctx.state.store.put(key, {"sample": sample.model_dump(mode="json"),
                                  "prompt_tokens": prompt_estimate, "model": role.model_id})
    return sample
