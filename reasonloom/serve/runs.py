"""One request = one recipe run in its own task. Streaming forwards the output node's answer
deltas as chunks and the other events as SSE comments; whatever ends the response (the run,
a client that hangs up, server shutdown) cancels the run task, and with it every model call
(a cancelled vLLM generator aborts its engine request)."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from reasonloom.orchestrator.budget import BudgetExceeded
from reasonloom.orchestrator.events import Event
from reasonloom.orchestrator.ledger import UsageReport
from reasonloom.orchestrator.result import RunFailed, RunResult
from reasonloom.serve.catalog import ServedRecipe
from reasonloom.serve.limits import error_kind, public_event
from reasonloom.serve.protocol import (ApiError, ChatRequest, ChunkWriter, comment_frame,
                                       completion_json, data_frame, to_problem)

log = logging.getLogger("reasonloom.serve")

# Events forwarded to streaming clients as `: {json}` progress comments.
PROGRESS_EVENTS = {"run_started", "node_started", "node_finished", "node_failed",
                   "partial_output", "call_finished", "error"}
# A run error whose type says the request itself was wrong (no retry can help): 400, not 500.
CLIENT_ERRORS = {"ContextTooLong": "context_length_exceeded", "BadRequest": "bad_request",
                 "CapabilityMissing": "unsupported_parameter"}
_DONE = object()


@dataclass
class Outcome:
    text: str
    finish_reason: str            # stop | length (a budget ended the run)
    usage: UsageReport | None
    status: str                   # ok | budget_exceeded
    ttft_s: float | None = None
    wall_s: float | None = None

    def extra(self) -> dict[str, Any]:
        return {"status": self.status, "ttft_s": self.ttft_s, "wall_s": self.wall_s}


class RunHandle:
    """A started run: its task, and (streaming) the queue its events arrive on."""

    def __init__(self, served: ServedRecipe, req: ChatRequest, counter: "RunCounter",
                 stream: bool, key_id: str = "anonymous"):
        self.run_id = uuid.uuid4().hex[:12]
        self.served = served
        self.req = req
        self.created = int(time.time())
        self.queue: asyncio.Queue = asyncio.Queue()
        recipe = served.for_request(req)   # raises ApiError(400) before anything runs
        problem = to_problem(req.messages, self.run_id)
        # no per-request cache: a cached recipe would leave one run file per request forever
        kwargs: dict[str, Any] = {"budget": served.budget_for(req), "cache": "off"}
        if req.seed is not None:
            kwargs["seed"] = req.seed
        counter.admit(key_id)
        subscribers = [self.queue.put_nowait] if stream else []
        self.task = asyncio.ensure_future(recipe.arun(
            problem, roles=served.roles, run_id=self.run_id, subscribers=subscribers, **kwargs))
        self.task.add_done_callback(lambda _: counter.release(key_id))
        self.task.add_done_callback(lambda _: self.queue.put_nowait(_DONE))

    def cancel(self) -> None:
        if not self.task.done():
            self.task.cancel()

    def outcome(self, streamed: str = "") -> Outcome:
        """The finished run as text + usage, or the ApiError the client should get."""
        if self.task.cancelled():
            raise ApiError(500, f"run {self.run_id} was cancelled (server shutting down)")
        try:
            result: RunResult = self.task.result()
        except BudgetExceeded as exc:
            partial = exc.partial
            text = exc.best.text if exc.best is not None else streamed
            if not text:
                raise ApiError(400, f"budget exhausted before any answer: {exc}",
                               code="budget_exceeded") from None
            return Outcome(text, "length", partial.usage if partial else None,
                           "budget_exceeded", partial.ttft_s if partial else None,
                           partial.wall_s if partial else None)
        except RunFailed as exc:
            raise self._failure(exc) from None
        except ApiError:
            raise
        except Exception as exc:
            log.error("run %s of %s: %s: %s", self.run_id, self.served.name,
                      type(exc).__name__, str(exc)[:300])
            raise ApiError(500, f"internal error in run {self.run_id}") from None
        text = result.answer.text if result.answer is not None else ""
        return Outcome(text, "stop", result.usage, "ok", result.ttft_s, result.wall_s)

    def _failure(self, exc: RunFailed) -> ApiError:
        failures = [f for f in exc.result.failures if f.cancelled_because is None]
        # the client learns the kind of error; the upstream's address and text stay in the log
        log.error("run %s of %s failed: %s", self.run_id, self.served.name, str(exc)[:300])
        for f in failures:
            kind = error_kind(f.error)
            if kind in CLIENT_ERRORS:
                return ApiError(400, f"node {f.node}: {kind} (the request does not fit the "
                                f"recipe's model)", code=CLIENT_ERRORS[kind])
        where = ", ".join(f"{f.node} ({error_kind(f.error)})" for f in failures[:3])
        return ApiError(500, f"run {self.run_id} failed in {where or 'the recipe'}")


class RunCounter:
    """Runs in progress, against --max-running and --max-running-per-key: past either, a request
    gets 429 at once (one client cannot take every slot of a shared server)."""

    def __init__(self, limit: int, per_key: int | None = None):
        self.limit = limit
        self.per_key = per_key
        self.running = 0
        self.by_key: dict[str, int] = {}

    def admit(self, key_id: str = "anonymous") -> None:
        if self.running >= self.limit:
            raise ApiError(429, f"{self.running} runs are in progress (the server's limit); "
                           f"retry later", code="too_many_runs")
        mine = self.by_key.get(key_id, 0)
        if self.per_key is not None and mine >= self.per_key:
            raise ApiError(429, f"{mine} runs of this API key are in progress (the per-key "
                           f"limit); retry later", code="too_many_runs_for_key")
        self.running += 1
        self.by_key[key_id] = mine + 1

    def release(self, key_id: str = "anonymous") -> None:
        self.running -= 1
        left = self.by_key.get(key_id, 1) - 1
        if left > 0:
            self.by_key[key_id] = left
        else:
            self.by_key.pop(key_id, None)


async def wait_disconnect(receive: Any) -> None:
    """Returns when the client hangs up (the request body has been read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def complete(handle: RunHandle, receive: Any) -> dict[str, Any] | None:
    """A non-streaming completion; None when the client left (its run is cancelled)."""
    watcher = asyncio.ensure_future(wait_disconnect(receive))
    try:
        await asyncio.wait({handle.task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not handle.task.done():   # the client left (or the server is stopping)
            handle.cancel()
    if not handle.task.done() or handle.task.cancelled():
        return None
    outcome = handle.outcome()
    return completion_json(handle.run_id, handle.served.name, handle.created, outcome.text,
                           outcome.finish_reason, outcome.usage, outcome.extra())


def _progress(event: Event, cost: float) -> dict[str, Any]:
    body = event.to_json()
    body["run_cost_usd"] = cost
    return body


async def stream_frames(handle: RunHandle) -> AsyncIterator[bytes]:
    """SSE frames of one run. Frames that are ready together go out in one write."""
    writer = ChunkWriter(handle.run_id, handle.served.name, handle.created)
    output_node = handle.served.output_node
    stamps = handle.req.x_reasonloom_timestamps
    streamed: list[str] = []
    cost = 0.0
    try:
        yield writer.chunk({"role": "assistant", "content": ""})
        done = False
        while not done:
            batch = [await handle.queue.get()]
            while not handle.queue.empty():
                batch.append(handle.queue.get_nowait())
            frames = []
            for item in batch:
                if item is _DONE:
                    done = True
                    break
                event: Event = item
                if event.kind == "token_delta" and event.data.get("answer") \
                        and event.node == output_node:
                    text = event.data.get("text") or ""
                    if text:
                        streamed.append(text)
                        frames.append(writer.chunk({"content": text}, extra={"t": event.t}
                                                   if stamps else None))
                elif event.kind in PROGRESS_EVENTS:
                    if event.kind == "call_finished":
                        cost += event.data.get("cost_usd", 0.0)
                    elif event.kind in ("node_failed", "error"):
                        log.warning("run %s: %s %s: %s", handle.run_id, event.kind, event.node,
                                    str(event.data.get("error"))[:300])
                    frames.append(comment_frame(public_event(_progress(event, cost))))
            if frames:
                yield b"".join(frames)
        try:
            outcome = handle.outcome("".join(streamed))
        except ApiError as exc:
            yield data_frame(exc.body())
            yield data_frame("[DONE]")
            return
        yield b"".join(_closing_frames(writer, handle, outcome, "".join(streamed)))
    finally:
        # A client that hung up lands here through cancellation: stop its run and model calls.
        handle.cancel()


def _closing_frames(writer: ChunkWriter, handle: RunHandle, outcome: Outcome,
                    streamed: str) -> list[bytes]:
    frames = []
    if not streamed and outcome.text:
        # The last node selected rather than generated: its choice arrives in one piece.
        frames.append(writer.chunk({"content": outcome.text},
                                   extra={"final_stage": "selection"}))
    elif outcome.text != streamed:
        if outcome.text.startswith(streamed):
            frames.append(writer.chunk({"content": outcome.text[len(streamed):]}))
        else:   # the recipe's answer is not what it streamed: say so, never hide it
            log.warning("run %s: answer differs from its streamed deltas", handle.run_id)
            frames.append(writer.chunk({}, extra={"final_stage": "selection",
                                                  "answer": outcome.text}))
    frames.append(writer.chunk({}, finish_reason=outcome.finish_reason,
                               extra={"status": outcome.status}))
    if handle.req.include_usage:
        frames.append(writer.usage_chunk(outcome.usage, {"run_id": handle.run_id,
                                                         **outcome.extra()}))
    frames.append(data_frame("[DONE]"))
    return frames
