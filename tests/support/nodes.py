"""Node types used only by the runtime's own tests and benchmarks."""
from __future__ import annotations

import asyncio
import time

from reasonloom.backends.base import GenerateRequest
from reasonloom.orchestrator.context import RunContext
from reasonloom.orchestrator.registry import register_node
from reasonloom.orchestrator.types import Answer, Candidate, Candidates, FrozenModel, Message

TIMELINE: dict[str, tuple[float, float]] = {}


class CallConfig(FrozenModel):
    role: str = "strongest"
    calls: int = 1
    fail: bool = False
    max_tokens: int = 16
    publish_partials: int = 0
    partial_delay_s: float = 0.0


def _request(text: str, cfg: CallConfig) -> GenerateRequest:
    return GenerateRequest(messages=(Message(role="user", content=text),),
                           max_tokens=cfg.max_tokens, temperature=0.7)


@register_node("test_call", CallConfig, inputs={"problem": "problem", "upstream": "any"},
               outputs={"candidates": "candidates"}, optional_inputs=("upstream",))
async def test_call(inputs: dict, cfg: CallConfig, ctx: RunContext) -> dict:
    start = time.perf_counter()
    if cfg.fail:
        raise RuntimeError(f"{ctx.node} was told to fail")
    for i in range(cfg.publish_partials):
        ctx.publish("candidates", Candidates([Candidate(text=f"partial {i}")]))
        await asyncio.sleep(cfg.partial_delay_s)
    out = Candidates()
    for i in range(cfg.calls):
        gen = await ctx.generate(cfg.role, _request(f"{ctx.node}", cfg), f"call{i}")
        out.append(Candidate(text=gen.texts[0]))
    TIMELINE[ctx.node] = (start, time.perf_counter())
    return {"candidates": out}


class JoinConfig(FrozenModel):
    pass


@register_node("test_join", JoinConfig, inputs={"a": "any", "b": "any", "c": "any"},
               outputs={"candidates": "candidates"}, optional_inputs=("a", "b", "c"))
async def test_join(inputs: dict, cfg: JoinConfig, ctx: RunContext) -> dict:
    start = time.perf_counter()
    out = Candidates()
    for value in inputs.values():
        out.extend(value)
    TIMELINE[ctx.node] = (start, time.perf_counter())
    return {"candidates": out}


class WatchConfig(FrozenModel):
    stream_inputs: tuple[str, ...] = ("candidates",)


@register_node("test_watch", WatchConfig, inputs={"candidates": "candidates"},
               outputs={"answer": "answer"})
async def test_watch(inputs: dict, cfg: WatchConfig, ctx: RunContext) -> dict:
    """Consumes its input as a stream of partial values."""
    seen = []
    async for value in ctx.partial_inputs("candidates"):
        seen.append((time.perf_counter(), len(value), value[0].text if value else ""))
    return {"answer": Answer(text=seen[-1][2], details={"seen": seen})}
