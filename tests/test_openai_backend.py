"""OpenAIBackend against a real vLLM OpenAI-compatible server (the session's `vllm_server`):
what only it does, beyond the contract every backend keeps (test_backend_contract.py), and
its one-line errors for what a user can get wrong."""
from __future__ import annotations

import pytest

from reasonloom.backends.base import GenerateRequest
from reasonloom.backends.errors import CapabilityMissing, MissingApiKey, ServerError
from reasonloom.backends.openai import OpenAIBackend
from reasonloom.backends.vllm.embedded import MODEL_NAME, ensure_embedded_model
from reasonloom.orchestrator.types import Message
from tests.support.fault_proxy import FaultProxy, free_port

engine = pytest.mark.engine
QUESTION = (Message(role="user", content="Name three colours of the rainbow."),)
SCORED_TEXT = "Red, orange and yellow are three colours of the rainbow."


@pytest.fixture(scope="module")
def backend(vllm_server):
    return OpenAIBackend(MODEL_NAME, base_url=vllm_server)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ensure_embedded_model())


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"   # nothing listens there


@engine
def test_generations_name_the_server_that_served_them(backend, arun):
    gen = arun(backend.generate(GenerateRequest(messages=QUESTION, max_tokens=4)))
    assert gen.served_by == backend.base_url


@engine
def test_tokenize_matches_the_models_tokenizer(backend, tokenizer, arun):
    assert arun(backend.tokenize(SCORED_TEXT)) == tokenizer.encode(SCORED_TEXT,
                                                                   add_special_tokens=False)


@engine
def test_capabilities_report_the_served_context_window(backend):
    caps = backend.capabilities
    assert caps.context_length == 4096
    assert caps.n and caps.logprobs and caps.prompt_logprobs and caps.tokenize


@engine
def test_server_without_n_gets_one_request_per_sample(vllm_server, arun):
    with FaultProxy(vllm_server.removesuffix("/v1")) as proxy:
        single = OpenAIBackend(MODEL_NAME, base_url=proxy.url + "/v1", n=False)
        assert not single.capabilities.n
        before = proxy.requests
        gen = arun(single.generate(GenerateRequest(messages=QUESTION, n=3, temperature=1.0,
                                                   max_tokens=8, seed=5)))
        assert proxy.requests - before == 3
    assert len(gen.samples) == 3 and len(set(gen.texts)) > 1


@engine
def test_server_errors_and_dropped_connections_are_retryable_server_errors(vllm_server, arun):
    # 429s and cut streams: test_backend_contract.py
    req = GenerateRequest(messages=QUESTION, max_tokens=24, temperature=0.0)
    with FaultProxy(vllm_server.removesuffix("/v1")) as proxy:
        faulty = OpenAIBackend(MODEL_NAME, base_url=proxy.url + "/v1")
        proxy.faults = {"500": 1.0}
        with pytest.raises(ServerError, match="server error 500") as failed:
            arun(faulty.generate(req))
        proxy.faults = {"cut": 1.0}
        with pytest.raises(ServerError, match="connection dropped") as dropped:
            arun(faulty.generate(req))
    assert failed.value.retryable and dropped.value.retryable


def test_missing_api_key_names_the_environment_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(MissingApiKey, match="environment variable OPENAI_API_KEY is not set"):
        OpenAIBackend("gpt-4o-mini")


def test_missing_capabilities_raise_before_any_request():
    import asyncio

    bare = OpenAIBackend(MODEL_NAME, base_url=dead_url(), prompt_logprobs=False,
                         continue_final_message=False, tokenize=False, logprobs=False)
    for call in (bare.prompt_logprobs(QUESTION, "Red."), bare.tokenize("Red."),
                 bare.generate(GenerateRequest(messages=QUESTION, assistant_prefix="Red")),
                 bare.generate(GenerateRequest(messages=QUESTION, logprobs=2))):
        with pytest.raises(CapabilityMissing, match="cannot do"):
            asyncio.run(call)
    with pytest.raises(ValueError, match="unknown options"):
        OpenAIBackend(MODEL_NAME, base_url=dead_url(), temprature=0.5)


@engine
def test_detokenize_inverts_tokenize_on_the_server(backend, tokenizer, arun):
    ids = arun(backend.tokenize(SCORED_TEXT))
    assert arun(backend.detokenize(ids)) == SCORED_TEXT
    assert arun(backend.detokenize(ids[3:9])) == tokenizer.decode(ids[3:9])


def _served_by(monkeypatch, handler) -> list:
    """OpenAIBackend's httpx clients answered by `handler` (httpx's mock transport)."""
    import httpx

    seen: list = []
    real = httpx.AsyncClient

    def answer(request):
        seen.append(request)
        return handler(request)

    monkeypatch.setattr(httpx, "AsyncClient", lambda **kw: real(
        transport=httpx.MockTransport(answer), **kw))
    return seen


def test_detokenize_posts_the_ids_to_the_servers_detokenize_route(monkeypatch):
    import asyncio
    import json

    import httpx

    seen = _served_by(monkeypatch, lambda request: httpx.Response(200, json={"prompt": "Red, or"}))
    backend = OpenAIBackend(MODEL_NAME, base_url="http://10.0.0.9:8000/v1")
    assert asyncio.run(backend.detokenize([49, 50, 51])) == "Red, or"
    assert str(seen[0].url) == "http://10.0.0.9:8000/detokenize"
    assert json.loads(seen[0].content) == {"model": MODEL_NAME, "tokens": [49, 50, 51]}


def test_a_server_without_detokenize_raises_capability_missing_naming_the_route(monkeypatch):
    import asyncio

    import httpx

    _served_by(monkeypatch, lambda request: httpx.Response(404, json={"detail": "Not Found"}))
    backend = OpenAIBackend(MODEL_NAME, base_url="http://10.0.0.9:8000/v1")
    with pytest.raises(CapabilityMissing, match="has no /detokenize endpoint"):
        asyncio.run(backend.detokenize([1, 2]))
    bare = OpenAIBackend(MODEL_NAME, base_url=dead_url(), tokenize=False)
    with pytest.raises(CapabilityMissing, match="cannot do detokenize"):
        asyncio.run(bare.detokenize([1, 2]))
