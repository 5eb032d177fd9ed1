"""Mixture-of-Agents with staircase streaming on the real embedded vLLM engine."""
from __future__ import annotations

from typing import AsyncIterator, Sequence

import pytest

from reasonloom.backends.base import Backend, Capabilities, Delta, GenerateRequest
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.roles import Role, Roles, RoleSpec
from reasonloom.orchestrator.scheduler import run

pytestmark = pytest.mark.engine

QUESTION = "Write a short story about a lighthouse keeper who finds a message in a bottle."


class Spy(Backend):
    """Passes every call to the engine and records what the aggregator was sent, together
    with the answer text the caller had received by then."""

    def __init__(self, inner: Backend, shown: list[str]):
        self.inner, self.shown = inner, shown
        self.name, self.model = inner.name, inner.model
        self.sent: list[tuple[GenerateRequest, str]] = []

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    def estimate_tokens(self, text: str) -> int:
        return self.inner.estimate_tokens(text)

    async def generate(self, req: GenerateRequest):
        self.sent.append((req, "".join(self.shown)))
        return await self.inner.generate(req)

    async def stream(self, req: GenerateRequest) -> AsyncIterator[Delta]:
        self.sent.append((req, "".join(self.shown)))
        async for delta in self.inner.stream(req):
            yield delta

    async def prompt_logprobs(self, messages: Sequence, text: str, top_k: int = 0):
        return await self.inner.prompt_logprobs(messages, text, top_k)


def staircase_graph(mode: str) -> Graph:
    # proposers on `cheap`, the aggregator on `strong`: call_finished events say which is which
    g = Graph()
    g.add("moa", "moa", {
        "mode": mode, "system": None, "first_chunk_tokens": 16, "segment_tokens": 16,
        "layers": [[{"role": "cheap", "temperature": t, "max_tokens": 96}
                    for t in (0.6, 0.8, 1.0)]],
        "aggregator": {"role": "strong", "temperature": 0.3, "max_tokens": 64}},
        {"problem": "problem"})
    g.set_output("moa")
    return g


def run_moa(mode: str, embedded, arun):
    shown: list[str] = []
    spy = Spy(embedded, shown)
    roles = Roles({"strong": Role(RoleSpec(name="strong", price_in_per_m=0.8,
                                           price_out_per_m=3.2), spy),
                   "cheap": Role(RoleSpec(name="cheap", price_in_per_m=0.1,
                                          price_out_per_m=0.4), embedded)},
                  order=["strong", "cheap"])
    events = []

    def collect(event) -> None:
        events.append(event)
        if event.kind == "token_delta" and event.data.get("answer"):
            shown.append(event.data["text"])

    result = arun(run(staircase_graph(mode), QUESTION, roles, seed=5, subscribers=[collect]))
    return result, events, spy


def test_staircase_streams_the_answer_before_the_proposers_finish_and_never_retracts(
        embedded, arun):
    result, events, spy = run_moa("staircase", embedded, arun)
    deltas = [e for e in events if e.kind == "token_delta" and e.data.get("answer")]
    proposer_done = [e.t for e in events if e.kind == "call_finished" and e.data["role"] == "cheap"]
    assert len(proposer_done) == 3 and deltas
    # the first answer token reached the caller while a proposer was still writing
    assert deltas[0].t < max(proposer_done)
    # the answer deltas join to the final text
    assert "".join(e.data["text"] for e in deltas) == result.answer.text
    # every aggregator call continued exactly what the caller had seen: nothing taken back
    details = result.answer.details
    assert len(spy.sent) == details["aggregator_calls"] >= 2
    for req, seen in spy.sent:
        assert (req.assistant_prefix or "") == seen
    # the last aggregator prompt held every proposal complete
    assert details["final_prompt_saw_full_proposals"] is True
    last_prompt = spy.sent[-1][0].messages[-1].content
    for cand in result.answer.candidates:
        assert cand.text.strip() in last_prompt
    # the ledger holds every proposer call and every aggregator call, and its totals add up
    calls = [e for e in events if e.kind == "call_finished"]
    usage = result.usage
    assert usage.total.calls == len(calls) == 3 + details["aggregator_calls"]
    assert usage.by_model["cheap"].calls == 3
    assert usage.by_model["strong"].calls == details["aggregator_calls"]
    assert usage.total.prompt_tokens == sum(e.data["prompt_tokens"] for e in calls)
    assert usage.total.completion_tokens == sum(e.data["completion_tokens"] for e in calls)
    assert usage.by_node["moa"] == usage.total
    assert usage.total.completion_tokens == (sum(c.usage.completion_tokens
                                                 for c in result.answer.candidates)
                                             + sum(s["completion_tokens"]
                                                   for s in details["segments"]))


def test_vanilla_streams_the_answer_only_after_every_proposer_finished(embedded, arun):
    result, events, spy = run_moa("vanilla", embedded, arun)
    deltas = [e for e in events if e.kind == "token_delta" and e.data.get("answer")]
    proposer_done = [e.t for e in events if e.kind == "call_finished" and e.data["role"] == "cheap"]
    assert len(proposer_done) == 3 and deltas
    assert deltas[0].t > max(proposer_done)
    assert "".join(e.data["text"] for e in deltas) == result.answer.text
    assert len(spy.sent) == 1 and spy.sent[0][0].assistant_prefix is None
    assert result.usage.total.calls == 4
