"""A stopped generation stops in the engine: the in-process vLLM engine drops the request, and a
vLLM server generates no further tokens for it (its own counter); token confidence arrives from
both. The session's embedded engine and vLLM server."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from reasonloom.backends.base import GenerateRequest
from reasonloom.backends.openai import OpenAIBackend
from reasonloom.backends.vllm.embedded import MODEL_NAME
from reasonloom.orchestrator.context import RunContext, RunState
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec
from reasonloom.orchestrator.types import Message

pytestmark = pytest.mark.engine

# A question the 135M model answers at length: it would write all 200 tokens if let run.
REQ = GenerateRequest(messages=(Message(role="user", content="Write a long story about a cat "
                                                             "who sails around the world."),),
                      max_tokens=200, temperature=0.8, seed=5, confidence_k=5)


def context(backend) -> RunContext:
    roles = Roles({"strong": Role(RoleSpec(name="strong", price_out_per_m=1.0), backend)})
    return RunContext(RunState(run_id="t", seed=0, roles=roles), "node")


def stop_after(tokens: int):
    return lambda confidences, text: len(confidences) >= tokens


def metric(base_url: str, name: str) -> float:
    text = httpx.get(base_url.rsplit("/v1", 1)[0] + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def test_a_stopped_generation_leaves_the_in_process_engine(embedded, arun):
    ctx = context(embedded)
    sample = arun(ctx.generate_until("strong", REQ, "story", stop_after(6)))
    engine = arun(embedded.engine())

    async def settled() -> int:   # the abort is sent from the closed generator's cleanup
        for _ in range(50):
            if engine.output_processor.get_num_unfinished_requests() == 0:
                break
            await asyncio.sleep(0.1)
        return engine.output_processor.get_num_unfinished_requests()

    assert arun(settled()) == 0
    assert sample.finish_reason == "cancelled"
    # a busy machine may hand over several steps' tokens in one piece: far below 200 all the same
    assert 6 <= sample.completion_tokens <= 40
    assert len(sample.confidences) == sample.completion_tokens
    assert all(c > 0 for c in sample.confidences)
    assert ctx.state.ledger.report().total.completion_tokens == sample.completion_tokens


def test_generation_confidences_match_between_generate_and_stream(embedded, arun):
    full = arun(embedded.generate(REQ.model_copy(update={"max_tokens": 24, "temperature": 0.0})))
    streamed = arun(context(embedded).generate_until(
        "strong", REQ.model_copy(update={"max_tokens": 24, "temperature": 0.0}), "k",
        lambda c, t: False))
    assert streamed.text == full.samples[0].text
    assert streamed.confidences == pytest.approx(full.samples[0].confidences, abs=1e-3)


def test_a_stopped_generation_stops_the_servers_engine(vllm_server, arun):
    backend = OpenAIBackend(MODEL_NAME, base_url=vllm_server)
    before = metric(vllm_server, "vllm:generation_tokens_total")
    sample = arun(context(backend).generate_until("strong", REQ, "story", stop_after(6)))
    deadline = time.monotonic() + 10
    while metric(vllm_server, "vllm:num_requests_running") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)   # counters are published after each engine step
    generated = metric(vllm_server, "vllm:generation_tokens_total") - before
    assert metric(vllm_server, "vllm:num_requests_running") == 0
    assert sample.finish_reason == "cancelled" and 6 <= sample.completion_tokens <= 40
    # the engine may finish the steps in flight when the connection drops, never the story
    assert sample.completion_tokens <= generated <= sample.completion_tokens + 16
    assert len(sample.confidences) == sample.completion_tokens


@pytest.mark.parametrize("kind", ["generate", "stream", "score", "until"])
def test_every_call_kind_obeys_the_role_timeout_on_the_engine(embedded, arun, kind):
    from reasonloom.backends.errors import Timeout
    from reasonloom.orchestrator.roles import RetryPolicy

    roles = Roles({"strong": Role(RoleSpec(name="strong", timeout_s=0.05,
                                           retry=RetryPolicy(max_attempts=2, base_delay_s=0)),
                                  embedded)})
    ctx = RunContext(RunState(run_id="t", seed=0, roles=roles), "node")
    long_text = "word " * 1500   # a prefill the CPU engine cannot finish in 50 ms
    req = REQ.model_copy(update={"messages": (Message(role="user", content=long_text),)})

    async def call():
        if kind == "generate":
            return await ctx.generate("strong", req, "k")
        if kind == "stream":
            return [d async for d in ctx.stream("strong", req, "k")]
        if kind == "score":
            return await ctx.prompt_logprobs("strong", REQ.messages, long_text, "k")
        return await ctx.generate_until("strong", req, "k", lambda c, t: False)

    with pytest.raises(Timeout):
        arun(call())
    assert [r.ok for r in ctx.state.ledger.records] == [False, False]
    engine = arun(embedded.engine())

    async def settled() -> int:
        for _ in range(100):
            if engine.output_processor.get_num_unfinished_requests() == 0:
                break
            await asyncio.sleep(0.1)
        return engine.output_processor.get_num_unfinished_requests()

    assert arun(settled()) == 0   # timed-out requests were aborted, not left running
