"""Where `reasonloom chat` gets its answers: a recipe run in this process, or a served model
over HTTP. Both yield the same `ChatEvent`s: progress, answer tokens, then one summary."""
from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Literal

from pydantic import BaseModel, Field

from reasonloom.orchestrator.types import Message, Problem

PROGRESS = {"run_started", "node_started", "node_finished", "node_failed", "partial_output",
            "call_finished", "error"}


class TurnSummary(BaseModel):
    """One answered turn: the text and what it cost (the ledger of its run)."""

    run_id: str = ""
    text: str = ""
    status: str = "ok"
    final_stage: str = "stream"        # stream | selection (the answer came in one piece)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    by_model: dict[str, dict[str, Any]] = Field(default_factory=dict)
    by_node: dict[str, dict[str, Any]] = Field(default_factory=dict)
    ttft_s: float | None = None
    wall_s: float | None = None
    events: list[dict[str, Any]] = Field(default_factory=list)


class ChatEvent(BaseModel):
    kind: Literal["progress", "token", "done", "error"]
    text: str = ""
    progress: dict[str, Any] | None = None
    summary: TurnSummary | None = None


def spent_so_far(calls: list[dict[str, Any]]) -> TurnSummary:
    """A turn cut short (Ctrl-C): what its finished and cancelled calls cost, from their
    `call_finished` events (a cancelled call is billed for what it generated)."""
    fields = ("calls", "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "cost_usd")
    by_model: dict[str, dict[str, Any]] = {}
    by_node: dict[str, dict[str, Any]] = {}
    for call in calls:
        for table, key in ((by_model, call.get("role") or "?"),
                           (by_node, call.get("node") or "?")):
            row = table.setdefault(key, dict.fromkeys(fields, 0))
            row["calls"] += 1
            for name in fields[1:]:
                row[name] += call.get(name) or 0
    return TurnSummary(status="interrupted", calls=len(calls), by_model=by_model,
                       by_node=by_node,
                       prompt_tokens=sum(c.get("prompt_tokens") or 0 for c in calls),
                       completion_tokens=sum(c.get("completion_tokens") or 0 for c in calls),
                       cost_usd=sum(c.get("cost_usd") or 0.0 for c in calls))


class LocalSource:
    """Runs the recipe here; engines start on the first turn and serve every later one."""

    def __init__(self, recipe: Any):
        self.recipe = recipe
        self.roles = recipe.build_roles()
        self.label = recipe.name
        self.calls: list[dict[str, Any]] = []   # the current turn's call_finished events

    async def start(self) -> None:
        """Start the recipe's in-process engines before the first question, so it is not
        the one that waits for them (tens of seconds on a CPU)."""
        for name in self.roles:
            start = getattr(self.roles[name].backend, "engine", None)   # vLLM in-process
            if start is not None:
                await start()

    async def turn(self, messages: list[Message]) -> AsyncIterator[ChatEvent]:
        from reasonloom.orchestrator.budget import BudgetExceeded
        from reasonloom.orchestrator.result import RunFailed

        output_node = self.recipe.graph.output.node
        queue: asyncio.Queue = asyncio.Queue()
        problem = Problem(messages=tuple(messages))
        task = asyncio.ensure_future(self.recipe.arun(problem, roles=self.roles,
                                                      subscribers=[queue.put_nowait]))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        streamed, events, cost = [], [], 0.0
        self.calls = []
        try:
            while (event := await queue.get()) is not None:
                if event.kind == "token_delta" and event.data.get("answer") \
                        and event.node == output_node:
                    streamed.append(event.data.get("text", ""))
                    yield ChatEvent(kind="token", text=event.data.get("text", ""))
                elif event.kind in PROGRESS:
                    cost += event.data.get("cost_usd", 0.0) if event.kind == "call_finished" else 0
                    body = {**event.to_json(), "run_cost_usd": cost}
                    if event.kind == "call_finished":
                        self.calls.append(body)
                    events.append(body)
                    yield ChatEvent(kind="progress", progress=body)
        finally:
            # wait for the run to unwind here, in its own context: a run left pending is
            # destroyed at exit ("Task was destroyed but it is pending!", ContextVar errors)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            while not queue.empty():   # calls billed while the run unwound (a cut stream)
                late = queue.get_nowait()
                if late is not None and late.kind == "call_finished":
                    self.calls.append(late.to_json())
        try:
            result = task.result()
            status, answer = "ok", result.answer.text if result.answer else ""
        except BudgetExceeded as exc:
            result, status = exc.partial, "budget_exceeded"
            answer = exc.best.text if exc.best else "".join(streamed)
        except RunFailed as exc:
            yield ChatEvent(kind="error", text=str(exc))
            return
        summary = TurnSummary(run_id=result.run_id if result else "", text=answer,
                              status=status, events=events,
                              final_stage="stream" if streamed else "selection")
        if result is not None:
            total = result.usage.total
            summary = summary.model_copy(update=dict(
                prompt_tokens=total.prompt_tokens, completion_tokens=total.completion_tokens,
                cost_usd=total.cost_usd, calls=total.calls, ttft_s=result.ttft_s,
                wall_s=result.wall_s,
                by_model={k: v.model_dump() for k, v in result.usage.by_model.items()},
                by_node={k: v.model_dump() for k, v in result.usage.by_node.items()}))
        if not streamed and answer:
            yield ChatEvent(kind="token", text=answer)
        yield ChatEvent(kind="done", summary=summary)

    def interrupted(self) -> TurnSummary:
        """What the turn Ctrl-C stopped had cost (exact: the run's own calls)."""
        return spent_so_far(self.calls)

    async def aclose(self) -> None:
        return None


class RemoteSource:
    """A model of `reasonloom serve` (or any OpenAI-compatible server: progress then stays
    empty, since only our server sends it as SSE comments)."""

    def __init__(self, url: str, model: str, api_key: str | None = None):
        import httpx

        self.url = url.rstrip("/")
        self.model = model
        self.label = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(None,
                                                                               connect=10))
        self.calls: list[dict[str, Any]] = []   # the current turn's call_finished progress

    async def turn(self, messages: list[Message]) -> AsyncIterator[ChatEvent]:
        import httpx

        body = {"model": self.model, "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": m.role, "content": m.content} for m in messages]}
        summary, events, text = TurnSummary(), [], []
        self.calls = []
        try:
            async with self.client.stream("POST", f"{self.url}/chat/completions",
                                          json=body) as resp:
                if resp.status_code != 200:
                    raw = await resp.aread()
                    yield ChatEvent(kind="error", text=f"HTTP {resp.status_code}: "
                                    f"{_error_message(raw)}")
                    return
                async for line in resp.aiter_lines():
                    if line.startswith(":"):
                        progress = _json_or_none(line[1:].strip())
                        if isinstance(progress, dict) and "event" in progress:
                            events.append(progress)
                            if progress["event"] == "call_finished":
                                self.calls.append(progress)
                            yield ChatEvent(kind="progress", progress=progress)
                        continue
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    chunk = _json_or_none(payload) or {}
                    if "error" in chunk:
                        yield ChatEvent(kind="error", text=_error_message(payload.encode()))
                        return
                    extra = chunk.get("x_reasonloom") or {}
                    for choice in chunk.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            text.append(piece)
                            yield ChatEvent(kind="token", text=piece)
                    if extra.get("final_stage") == "selection":
                        summary.final_stage = "selection"
                    if extra.get("status"):
                        summary.status = extra["status"]
                    if chunk.get("usage"):
                        summary = _summary_from_usage(summary, chunk["usage"], extra)
        except httpx.ConnectError as exc:
            yield ChatEvent(kind="error", text=f"cannot reach {self.url}: {exc}")
            return
        except httpx.HTTPError as exc:
            yield ChatEvent(kind="error", text=f"{self.url}: {type(exc).__name__}: {exc}")
            return
        summary.text, summary.events = "".join(text), events
        yield ChatEvent(kind="done", summary=summary)

    async def start(self) -> None:
        return None   # the server's engines are its own

    def interrupted(self) -> TurnSummary:
        """What the turn Ctrl-C stopped had cost, as far as the server's progress told us
        before the client hung up (calls it was still making are not in it)."""
        return spent_so_far(self.calls)

    async def aclose(self) -> None:
        await self.client.aclose()


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _error_message(raw: bytes) -> str:
    body = _json_or_none(raw.decode(errors="replace"))
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message"))
    return raw.decode(errors="replace")[:200]


def _summary_from_usage(summary: TurnSummary, usage: dict, extra: dict) -> TurnSummary:
    return summary.model_copy(update=dict(
        run_id=extra.get("run_id", ""), prompt_tokens=usage.get("prompt_tokens", 0),
        completion_tokens=usage.get("completion_tokens", 0),
        cost_usd=extra.get("cost_usd", 0.0), calls=extra.get("calls", 0),
        by_model=extra.get("by_model", {}), by_node=extra.get("by_node", {}),
        ttft_s=extra.get("ttft_s"), wall_s=extra.get("wall_s"),
        status=extra.get("status", summary.status)))
