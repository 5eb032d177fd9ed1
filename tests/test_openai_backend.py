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
