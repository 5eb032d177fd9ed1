"""LiteLLMBackend (provider `hosted_vllm`) against the session's real vLLM server, and its
one-line errors for what a user can get wrong."""
from __future__ import annotations

import asyncio

import pytest

from reasonloom.backends.base import GenerateRequest
from reasonloom.backends.errors import (BadRequest, MissingApiKey, RateLimited, StreamCut,
                                        Unreachable)
from reasonloom.backends.factory import BackendSpec, build_backend
from reasonloom.backends.litellm import LiteLLMBackend
from reasonloom.backends.openai import OpenAIBackend
from reasonloom.backends.vllm.embedded import MODEL_NAME, ensure_embedded_model
from reasonloom.orchestrator.types import Message
from tests.support.fault_proxy import FaultProxy, free_port

engine = pytest.mark.engine
QUESTION = (Message(role="user", content="Name three colours of the rainbow."),)
HOSTED = f"hosted_vllm/{MODEL_NAME}"


@pytest.fixture(scope="module")
def backend(vllm_server):
    return build_backend(BackendSpec(backend="litellm", model=HOSTED, base_url=vllm_server))


async def collect(stream):
    deltas = [d async for d in stream]
    return deltas, next(d for d in deltas if d.prompt_tokens is not None)


@engine
def test_seeded_samples_and_logprobs_match_the_openai_backend(backend, vllm_server, arun):
    assert isinstance(backend, LiteLLMBackend)
    req = GenerateRequest(messages=QUESTION, n=3, temperature=1.0, max_tokens=12, seed=21,
                          logprobs=2)
    via_litellm = arun(backend.generate(req))
    via_openai = arun(OpenAIBackend(MODEL_NAME, base_url=vllm_server).generate(req))
    assert len(set(via_litellm.texts)) > 1
    assert via_litellm.texts == via_openai.texts
    assert (via_litellm.prompt_tokens, via_litellm.completion_tokens) == (
        via_openai.prompt_tokens, via_openai.completion_tokens)
    for sample in via_litellm.samples:
        assert "".join(t.token for t in sample.logprobs) == sample.text
        assert all(len(t.top) == 2 and t.top[0] >= t.top[1] for t in sample.logprobs)


@engine
def test_stream_deltas_join_to_the_full_text_with_usage_from_the_tokenizer(backend, arun):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ensure_embedded_model())
    req = GenerateRequest(messages=QUESTION, max_tokens=20, temperature=0.0)
    deltas, final = arun(collect(backend.stream(req)))
    text = "".join(d.text for d in deltas)
    assert len([d for d in deltas if d.text]) > 3
    assert text == arun(backend.generate(req)).texts[0]
    prompt_ids = tokenizer.apply_chat_template([m.model_dump() for m in QUESTION],
                                               tokenize=True, add_generation_prompt=True)
    if not isinstance(prompt_ids, list):
        prompt_ids = prompt_ids["input_ids"]
    eos = 1 if final.finish_reason == "stop" else 0
    assert final.prompt_tokens == len(prompt_ids)
    assert final.completion_tokens == len(tokenizer.encode(text, add_special_tokens=False)) + eos


@engine
def test_prompt_logprobs_equal_the_in_process_engines(backend, embedded, arun):
    text = "Red, orange and yellow are three colours of the rainbow."
    served = arun(backend.prompt_logprobs(QUESTION, text, top_k=4))
    local = arun(embedded.prompt_logprobs(QUESTION, text, top_k=4))
    assert len(served) == len(local) >= 8
    for got, want in zip(served, local):
        assert got.token == want.token
        assert got.logprob == pytest.approx(want.logprob, abs=1e-3)
        assert got.top == pytest.approx(want.top, abs=1e-3)


@engine
def test_unknown_model_is_a_one_line_bad_request(vllm_server, arun):
    with pytest.raises(BadRequest, match=r"unknown model 'hosted_vllm/no-such-model' at http"):
        arun(LiteLLMBackend("hosted_vllm/no-such-model", base_url=vllm_server).generate(
            GenerateRequest(messages=QUESTION, max_tokens=4)))


@engine
def test_rate_limits_and_cut_streams_map_to_typed_errors(vllm_server, arun):
    req = GenerateRequest(messages=QUESTION, max_tokens=20, temperature=0.0)
    with FaultProxy(vllm_server.removesuffix("/v1"), retry_after=1.5) as proxy:
        faulty = LiteLLMBackend(HOSTED, base_url=proxy.url + "/v1")
        proxy.faults = {"429": 1.0}
        with pytest.raises(RateLimited) as limited:
            arun(faulty.generate(req))
        assert limited.value.retry_after == pytest.approx(1.5)
        proxy.faults = {"cut": 1.0}
        with pytest.raises(StreamCut) as cut:
            arun(collect(faulty.stream(req)))
        proxy.faults = {}
        full = arun(faulty.generate(req)).texts[0]
    assert full.startswith(cut.value.partial) and len(cut.value.partial) < len(full)


def test_unreachable_server_names_the_url_and_what_was_tried():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(Unreachable) as err:
        asyncio.run(LiteLLMBackend(HOSTED, base_url=url).generate(
            GenerateRequest(messages=QUESTION, max_tokens=4)))
    assert f"cannot reach {url}" in str(err.value) and "litellm.acompletion" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_api_key_names_the_providers_environment_variable(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(MissingApiKey, match="environment variable ANTHROPIC_API_KEY is not set"):
        LiteLLMBackend("anthropic/claude-3-5-sonnet-20241022")


def test_provider_capabilities_come_from_litellm():
    monkey_key = "sk-test-not-used"
    claude = LiteLLMBackend("anthropic/claude-3-5-sonnet-20241022", api_key=monkey_key)
    caps = claude.capabilities
    assert not caps.n and not caps.prompt_logprobs and not caps.tokenize
    with pytest.raises(ValueError, match="no provider for model 'made-up-model'"):
        LiteLLMBackend("made-up-model")


def test_a_server_that_never_answers_times_out():
    import socket

    from reasonloom.backends.errors import Timeout

    with socket.socket() as silent:   # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        with pytest.raises(Timeout, match="no answer"):
            asyncio.run(LiteLLMBackend(HOSTED, base_url=url, timeout_s=0.3).generate(
                GenerateRequest(messages=QUESTION, max_tokens=4)))
