"""The fault proxy itself (against a tiny local upstream), and the orchestrator's retries
surviving its faults over a real vLLM server: same texts as without faults, every attempt in
the ledger."""
from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from pydantic import Field

from reasonloom.backends.base import GenerateRequest
from reasonloom.orchestrator.context import RunContext
from reasonloom.orchestrator.graph import Graph
from reasonloom.orchestrator.registry import register_node
from reasonloom.orchestrator.roles import RetryPolicy, Role, Roles, RoleSpec
from reasonloom.orchestrator.scheduler import run
from reasonloom.orchestrator.types import Candidate, Candidates, FrozenModel, Problem
from tests.support.fault_proxy import FaultProxy

CHAT = "/v1/chat/completions"


class _Upstream(BaseHTTPRequestHandler):
    hits = 0
    body = json.dumps({"answer": "x" * 400}).encode()

    def do_POST(self):
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._reply()

    def do_GET(self):
        self._reply()

    def _reply(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def outcomes(proxy: FaultProxy, requests: int) -> list[str]:
    """What each of `requests` distinct POSTs met: a status code, or `cut`."""
    seen = []
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        for i in range(requests):
            try:
                seen.append(str(client.post(CHAT, json={"call": i}).status_code))
            except httpx.RemoteProtocolError:
                seen.append("cut")
    return seen


def test_faults_are_seeded_and_near_their_set_rates(upstream):
    rates = {"429": 0.1, "500": 0.1, "cut": 0.1}
    with FaultProxy(upstream, rates, seed=1) as proxy:
        first = outcomes(proxy, 300)
    with FaultProxy(upstream, rates, seed=1) as again:
        assert outcomes(again, 300) == first
    with FaultProxy(upstream, rates, seed=2) as other:
        assert outcomes(other, 300) != first
    faults = [o for o in first if o != "200"]
    assert 60 <= len(faults) <= 120            # 30 % of 300, within ~3.5 standard deviations
    assert {o: first.count(o) for o in ("429", "500", "cut")} == dict(proxy.injected)
    assert proxy.faults_injected == len(faults) and proxy.requests == 300


def test_a_429_carries_retry_after_and_never_reaches_upstream(upstream):
    with FaultProxy(upstream, {"429": 1.0}, retry_after=2.5) as proxy:
        before = _Upstream.hits
        resp = httpx.post(proxy.url + CHAT, json={"q": 1})
    assert resp.status_code == 429 and resp.headers["retry-after"] == "2.5"
    assert _Upstream.hits == before


def test_a_cut_answer_stops_short_after_reaching_upstream(upstream):
    with FaultProxy(upstream, {"cut": 1.0}) as proxy:
        before = _Upstream.hits
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete|without sending"):
            httpx.post(proxy.url + CHAT, json={"q": 1})
    assert _Upstream.hits == before + 1 and proxy.injected["cut"] == 1


def test_requests_outside_the_fault_paths_pass_untouched(upstream):
    with FaultProxy(upstream, {"500": 1.0}) as proxy:
        assert httpx.get(proxy.url + "/health").status_code == 200
        assert httpx.post(proxy.url + "/tokenize", json={}).status_code == 200
    assert proxy.faults_injected == 0


# -- the orchestrator over a real server, through the proxy -------------------------------------
class BatchConfig(FrozenModel):
    calls: int = Field(20, ge=1)
    max_tokens: int = 10


@register_node("fault_batch", BatchConfig, inputs={"problem": "problem"},
               outputs={"candidates": "candidates", "records": "any"})
async def fault_batch(inputs: dict, cfg: BatchConfig, ctx: RunContext) -> dict:
    """Concurrent seeded calls, half plain and half streamed; returns the run's ledger too."""
    problem: Problem = inputs["problem"]
    req = GenerateRequest(messages=problem.messages, temperature=0.9, max_tokens=cfg.max_tokens)

    async def call(i: int) -> str:
        if i % 2 == 0:
            return (await ctx.generate("server", req, f"call{i}")).texts[0]
        return "".join([d.text async for d in ctx.stream("server", req, f"call{i}")])

    texts = await asyncio.gather(*(call(i) for i in range(cfg.calls)))
    return {"candidates": Candidates(Candidate(text=t) for t in texts),
            "records": list(ctx.state.ledger.records)}


def batch_run(backend, arun):
    retry = RetryPolicy(max_attempts=12, base_delay_s=0.01, max_delay_s=0.05, jitter=0.2)
    roles = Roles({"server": Role(RoleSpec(name="server", retry=retry), backend)})
    graph = Graph()
    graph.add("batch", "fault_batch", {"calls": 20}, {"problem": "problem"})
    graph.set_output("batch.candidates")
    result = arun(run(graph, Problem.from_text("Name a colour of the rainbow."), roles, seed=7))
    out = result.outputs["batch"]
    return [c.text for c in out["candidates"]], out["records"], result


@pytest.mark.engine
@pytest.mark.parametrize("kind", ["openai", "litellm"])
def test_retries_through_30_percent_faults_give_the_fault_free_texts(kind, vllm_server, arun):
    from reasonloom.backends.vllm.embedded import MODEL_NAME

    def backend(base_url: str):
        if kind == "openai":
            from reasonloom.backends.openai import OpenAIBackend

            return OpenAIBackend(MODEL_NAME, base_url=base_url)
        from reasonloom.backends.litellm import LiteLLMBackend

        return LiteLLMBackend(f"hosted_vllm/{MODEL_NAME}", base_url=base_url)

    clean_texts, clean_records, _ = batch_run(backend(vllm_server), arun)
    assert all(r.ok and r.attempt == 1 for r in clean_records) and len(clean_records) == 20
    assert len(set(clean_texts)) > 5   # seeded sampling, not 20 copies of one greedy answer

    with FaultProxy(vllm_server.removesuffix("/v1"), {"429": 0.1, "500": 0.1, "cut": 0.1},
                    seed=3, retry_after=0.01) as proxy:
        texts, records, result = batch_run(backend(proxy.url + "/v1"), arun)
    assert texts == clean_texts
    assert proxy.faults_injected >= 3   # ~30 % of ~29 requests; each kind's mapping is
    # tested on its own in test_openai_backend / test_litellm_backend
    failed = [r for r in records if not r.ok]
    assert len(failed) == proxy.faults_injected and len(records) == 20 + len(failed)
    assert result.usage.total.calls == len(records)
    assert all(r.error and r.prompt_tokens == 0 for r in failed)
    for key in {r.call_key for r in records}:   # each call: attempts 1..k, only the last ok
        attempts = sorted((r.attempt, r.ok) for r in records if r.call_key == key)
        assert [a for a, _ in attempts] == list(range(1, len(attempts) + 1))
        assert [ok for _, ok in attempts] == [False] * (len(attempts) - 1) + [True]
    clean_tokens = sum(r.completion_tokens for r in clean_records)
    assert sum(r.completion_tokens for r in records if r.ok) == clean_tokens
