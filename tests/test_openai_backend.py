"""OpenAIBackend against a real vLLM OpenAI-compatible server (the session's `vllm_server`),
and its one-line errors for what a user can get wrong."""
from __future__ import annotations

import pytest

from reasonloom.backends.base import GenerateRequest
from reasonloom.backends.errors import (BadRequest, CapabilityMissing, ContextTooLong,
                                        RateLimited, ServerError, StreamCut, Unreachable)
from reasonloom.backends.errors import MissingApiKey
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


async def collect(stream):
    deltas = [d async for d in stream]
    return deltas, next(d for d in deltas if d.prompt_tokens is not None)


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"   # nothing listens there


@engine
def test_n_samples_are_distinct_and_reproducible_for_one_seed(backend, arun):
    req = GenerateRequest(messages=QUESTION, n=4, temperature=1.0, max_tokens=16, seed=11)
    first = arun(backend.generate(req))
    assert len(first.samples) == 4 and len(set(first.texts)) > 1
    assert arun(backend.generate(req)).texts == first.texts
    assert arun(backend.generate(req.model_copy(update={"seed": 12}))).texts != first.texts
    assert first.served_by == backend.base_url
    assert sum(s.completion_tokens for s in first.samples) == first.completion_tokens > 0


@engine
def test_logprobs_cover_every_generated_token_with_sorted_top_k(backend, arun):
    req = GenerateRequest(messages=QUESTION, max_tokens=16, temperature=0.8, seed=3, logprobs=3)
    sample = arun(backend.generate(req)).samples[0]
    assert "".join(t.token for t in sample.logprobs) == sample.text
    for tok in sample.logprobs:
        assert len(tok.top) == 3 and list(tok.top) == sorted(tok.top, reverse=True)
        assert tok.top[0] >= tok.logprob - 1e-6 and tok.logprob <= 0


@engine
def test_stream_deltas_join_to_the_full_text_with_the_same_usage(backend, arun):
    req = GenerateRequest(messages=QUESTION, max_tokens=24, temperature=0.0)
    deltas, final = arun(collect(backend.stream(req)))
    full = arun(backend.generate(req))
    assert len([d for d in deltas if d.text]) > 3
    assert "".join(d.text for d in deltas) == full.texts[0]
    assert (final.prompt_tokens, final.completion_tokens) == (full.prompt_tokens,
                                                              full.completion_tokens)


@engine
def test_usage_counts_match_the_models_tokenizer(backend, tokenizer, arun):
    gen = arun(backend.generate(GenerateRequest(messages=QUESTION, max_tokens=16)))
    prompt_ids = tokenizer.apply_chat_template([m.model_dump() for m in QUESTION],
                                               tokenize=True, add_generation_prompt=True)
    if not isinstance(prompt_ids, list):
        prompt_ids = prompt_ids["input_ids"]
    assert gen.prompt_tokens == len(prompt_ids)
    eos = 1 if gen.samples[0].finish_reason == "stop" else 0   # counted, not in the text
    assert gen.completion_tokens == len(tokenizer.encode(gen.texts[0],
                                                         add_special_tokens=False)) + eos
    assert arun(backend.tokenize(SCORED_TEXT)) == tokenizer.encode(SCORED_TEXT,
                                                                   add_special_tokens=False)


@engine
def test_prompt_logprobs_equal_the_in_process_engines(backend, embedded, arun):
    greedy = arun(backend.generate(GenerateRequest(messages=QUESTION, max_tokens=16))).texts[0]
    for text in (SCORED_TEXT, greedy):
        served = arun(backend.prompt_logprobs(QUESTION, text, top_k=5))
        local = arun(embedded.prompt_logprobs(QUESTION, text, top_k=5))
        assert len(served) == len(local) >= 8
        assert served.prompt_tokens == local.prompt_tokens
        for got, want in zip(served, local):
            assert got.token == want.token
            assert got.logprob == pytest.approx(want.logprob, abs=1e-3)
            assert got.top == pytest.approx(want.top, abs=1e-3)


@engine
def test_assistant_prefix_continues_a_partial_answer(backend, arun):
    req = GenerateRequest(messages=QUESTION, max_tokens=24, temperature=0.0)
    full = arun(backend.generate(req)).texts[0]
    words = full.split(" ")
    prefix = " ".join(words[: max(2, len(words) // 2)])
    cont = arun(backend.generate(req.model_copy(update={"assistant_prefix": prefix})))
    assert (prefix + cont.texts[0]).strip()[:60] == full.strip()[:60]


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
def test_unknown_model_is_a_one_line_bad_request(vllm_server, arun):
    with pytest.raises(BadRequest, match=r"unknown model 'no-such-model' at http://127") as err:
        arun(OpenAIBackend("no-such-model", base_url=vllm_server).generate(
            GenerateRequest(messages=QUESTION, max_tokens=4)))
    assert "\n" not in str(err.value) and not err.value.retryable


@engine
def test_prompt_over_the_context_window_is_context_too_long(backend, arun):
    long = (Message(role="user", content="word " * 5000),)
    with pytest.raises(ContextTooLong, match="maximum context length is 4096"):
        arun(backend.generate(GenerateRequest(messages=long, max_tokens=4)))


@engine
def test_injected_faults_map_to_typed_retryable_errors(vllm_server, arun):
    req = GenerateRequest(messages=QUESTION, max_tokens=24, temperature=0.0)
    with FaultProxy(vllm_server.removesuffix("/v1"), retry_after=0.75) as proxy:
        faulty = OpenAIBackend(MODEL_NAME, base_url=proxy.url + "/v1")
        proxy.faults = {"429": 1.0}
        with pytest.raises(RateLimited) as limited:
            arun(faulty.generate(req))
        assert limited.value.retry_after == pytest.approx(0.75)
        proxy.faults = {"500": 1.0}
        with pytest.raises(ServerError, match="server error 500"):
            arun(faulty.generate(req))
        proxy.faults = {"cut": 1.0}
        with pytest.raises(ServerError, match="connection dropped"):
            arun(faulty.generate(req))
        with pytest.raises(StreamCut) as cut:
            arun(collect(faulty.stream(req)))
        proxy.faults = {}
        full = arun(faulty.generate(req)).texts[0]
    assert full.startswith(cut.value.partial) and len(cut.value.partial) < len(full)
    assert all(e.retryable for e in (limited.value, cut.value))


def test_unreachable_server_names_the_url_and_what_was_tried():
    import asyncio

    url = dead_url()
    with pytest.raises(Unreachable) as err:
        asyncio.run(OpenAIBackend(MODEL_NAME, base_url=url).generate(
            GenerateRequest(messages=QUESTION, max_tokens=4)))
    assert f"cannot reach {url}" in str(err.value)
    assert "POST" in str(err.value) and "/chat/completions" in str(err.value)
    assert "\n" not in str(err.value)


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


def test_a_server_that_never_answers_times_out():
    import asyncio
    import socket

    from reasonloom.backends.errors import Timeout

    with socket.socket() as silent:   # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        with pytest.raises(Timeout, match=f"{url}: no answer"):
            asyncio.run(OpenAIBackend(MODEL_NAME, base_url=url, timeout_s=0.3).generate(
                GenerateRequest(messages=QUESTION, max_tokens=4)))
